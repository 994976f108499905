//! centerd's DNS server on arbitrary datagrams: parsing and answering must
//! never panic, and every answer carries the query's ID, has QR set and
//! fits in 512 bytes. `cargo fuzz run dns_message` from `center/`.
#![no_main]

use std::net::Ipv4Addr;

use libfuzzer_sys::fuzz_target;
use vpnnat_center::dns::{respond, Lookup, Zone, ZoneName};

fuzz_target!(|data: &[u8]| {
    let Ok(zone) = Zone::new("vpn.center.example", 5) else {
        return;
    };
    let _ = vpnnat_center::dns::parse_query(data);
    let answer = respond(data, &zone, |n| match n {
        ZoneName::Grant { terminal_name, .. } if terminal_name.len() % 2 == 0 => {
            Lookup::Address(Ipv4Addr::new(10, 0, 0, 1))
        }
        ZoneName::Router { .. } => Lookup::Failed,
        _ => Lookup::NoSuchName,
    });
    if let Some(a) = answer {
        assert!(a.len() <= 512);
        assert_eq!(a.get(..2), data.get(..2));
        assert_eq!(a.get(2).map(|f| f & 0x80), Some(0x80));
    }
});
