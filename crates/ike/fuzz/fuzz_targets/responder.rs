//! Arbitrary datagrams (split on a marker) into a Responder: it must never
//! panic, whatever it is fed.
#![no_main]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use ring::rand::SystemRandom;
use vpnnat_ike::{Identity, Responder, ResponderConfig, SaConfig, Secret, TrafficSelector};

fuzz_target!(|data: &[u8]| {
    let rng = SystemRandom::new();
    let now = Instant::now();
    let sa = SaConfig::new(
        Secret::from_slice(b"fuzz psk"),
        Identity::key_id(b"router"),
        vec![TrafficSelector::subnet("100.64.0.0".parse().unwrap(), 24)],
        vec![TrafficSelector::subnet("10.0.0.0".parse().unwrap(), 8)],
    );
    let gw: SocketAddr = "203.0.113.1:500".parse().unwrap();
    let mut cfg = ResponderConfig::new(gw.ip(), sa);
    cfg.cookie_threshold = 2;
    let Ok(mut r) = Responder::new(cfg, now, &rng) else { return };
    // Datagrams separated by "\xff\xfe\xfd\xfc"; the first byte of each
    // picks port 500 or 4500.
    for (i, chunk) in split(data).into_iter().enumerate() {
        let Some((&sel, body)) = chunk.split_first() else { continue };
        let port = if sel & 1 == 0 { 500 } else { 4500 };
        let src = SocketAddr::new(gw.ip(), port);
        let dst: SocketAddr = SocketAddr::new("198.51.100.2".parse().unwrap(), port);
        let t = now + Duration::from_secs(i as u64);
        let _ = r.handle_datagram(t, src, dst, body, &rng);
        r.poll_timers(t);
        while r.poll_output().is_some() {}
    }
});

fn split(data: &[u8]) -> Vec<&[u8]> {
    const SEP: &[u8] = &[0xff, 0xfe, 0xfd, 0xfc];
    let mut out = Vec::new();
    let mut rest = data;
    while let Some(pos) = rest.windows(SEP.len()).position(|w| w == SEP) {
        out.push(&rest[..pos]);
        rest = &rest[pos + SEP.len()..];
    }
    out.push(rest);
    out
}
