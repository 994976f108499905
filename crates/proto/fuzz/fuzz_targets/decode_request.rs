//! Feeds arbitrary bytes to `decode_request` for every command.
//!
//! Input: byte 0 selects the command (low 4 bits) and whether the harness
//! signs the rest validly (bit 4: then the body reaches the JSON parser and
//! validators, which an attacker without the key never reaches). Without a
//! valid signature the input is split on '\n' into the four auth headers and
//! the body.
//!
//! Checked invariants: no panic; the nonce store grows by one exactly when a
//! message is accepted; an accepted command re-serializes and parses back
//! to itself.
#![no_main]

use std::fmt::Debug;

use libfuzzer_sys::fuzz_target;
use ring::rand::SystemRandom;
use vpnnat_proto::auth::{self, AuthHeaders, MemoryNonceStore, ReplayConfig, ReplayGuard};
use vpnnat_proto::decode::Principal;
use vpnnat_proto::keys::{SecretBytes, SecretId2};
use vpnnat_proto::messages::*;
use vpnnat_proto::{decode_request, Command, ProtoError};

const NOW: u64 = 1_800_000_000;

fn run<C: Command + PartialEq + Debug>(signed: bool, data: &[u8]) {
    let key = SecretId2::from_array([7; 32]).mac_key();
    let principal = match C::Principal::parse("fuzz-1") {
        Ok(p) => p,
        Err(_) => return,
    };
    let (headers, body) = if signed {
        let h = match auth::sign_request(
            &key,
            C::DIRECTION,
            principal.as_ref(),
            C::PATH,
            data,
            NOW,
            &SystemRandom::new(),
        ) {
            Ok(h) => h,
            Err(_) => return,
        };
        (h, data)
    } else {
        let mut parts = data.splitn(5, |b| *b == b'\n');
        let mut next = || String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
        let h = AuthHeaders {
            principal: next(),
            timestamp: next(),
            nonce: next(),
            mac: next(),
        };
        let used: usize = [&h.principal, &h.timestamp, &h.nonce, &h.mac]
            .iter()
            .map(|s| s.len() + 1)
            .sum();
        (h, data.get(used.min(data.len())..).unwrap_or_default())
    };
    let mut guard = ReplayGuard::new(MemoryNonceStore::new(16), ReplayConfig::default());
    let r: Result<vpnnat_proto::Verified<C>, ProtoError> =
        decode_request(&mut guard, C::PATH, &headers, body, NOW, |_, _| Some(key.clone()));
    match r {
        Ok(v) => {
            assert_eq!(guard.store().len(), 1);
            let again = serde_json::to_vec(v.command()).expect("serializes");
            let back: C = serde_json::from_slice(&again).expect("round trip parses");
            assert_eq!(&back, v.command());
        }
        Err(e) => {
            assert!(guard.store().is_empty(), "store changed on {e:?}");
            let _ = e.http_status();
            let _ = e.to_string();
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let signed = sel & 0x10 != 0;
    match sel & 0x0f {
        0 => run::<InstallRequest>(signed, rest),
        1 => run::<FailureNotice>(signed, rest),
        2 => run::<GatewayAddressRequest>(signed, rest),
        3 => run::<MaintenanceRequest>(signed, rest),
        4 => run::<EndCommand>(signed, rest),
        5 => run::<ReleaseCommand>(signed, rest),
        6 => run::<VpnEndCommand>(signed, rest),
        7 => run::<SetupTunnel>(signed, rest),
        8 => run::<AddAddresses>(signed, rest),
        9 => run::<RemoveAddresses>(signed, rest),
        10 => run::<TearDown>(signed, rest),
        11 => run::<ReportState>(signed, rest),
        12 => run::<TunnelEvent>(signed, rest),
        _ => {}
    }
});
