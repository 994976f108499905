//! Feeds arbitrary bytes to the parsers that run after a MAC or AEAD check:
//! sealed payloads, responses, sealed/encrypted containers, CIDRs and the
//! opening of fuzzed boxes. Byte 0 selects the parser.
#![no_main]

use std::fmt::Debug;

use libfuzzer_sys::fuzz_target;
use ring::rand::SystemRandom;
use serde::de::DeserializeOwned;
use serde::Serialize;
use vpnnat_proto::keys::{SecretBytes, SecretId2};
use vpnnat_proto::messages::*;
use vpnnat_proto::seal::{EncryptedField, FieldKey, FieldPurpose, ReplyKeyPair, SealPurpose, SealedBox};
use vpnnat_proto::types::{Ipv4Cidr, TerminalId};

/// Parses; if it parses, serializing and parsing again gives the same value.
fn round_trip<T: DeserializeOwned + Serialize + PartialEq + Debug>(data: &[u8]) {
    if let Ok(v) = serde_json::from_slice::<T>(data) {
        let again = serde_json::to_vec(&v).expect("serializes");
        let back: T = serde_json::from_slice(&again).expect("round trip parses");
        assert_eq!(back, v);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let Ok(tid) = TerminalId::new("fuzz-1") else {
        return;
    };
    match sel % 10 {
        0 => {
            // Secrets have no Serialize; parse only.
            let _ = serde_json::from_slice::<InstallSecrets>(rest);
        }
        1 => round_trip::<GatewayInfo>(rest),
        2 => round_trip::<Grants>(rest),
        3 => round_trip::<MaintenanceDetails>(rest),
        4 => round_trip::<StateReport>(rest),
        5 => round_trip::<MaintenanceResponse>(rest),
        6 => {
            if let Ok(b) = serde_json::from_slice::<SealedBox>(rest) {
                if let Ok(kp) = ReplyKeyPair::generate(&SystemRandom::new()) {
                    assert!(kp.open(&tid, SealPurpose::InstallResponse, &b).is_err());
                }
            }
        }
        7 => {
            if let Ok(f) = serde_json::from_slice::<EncryptedField>(rest) {
                if let Ok(k) = FieldKey::for_router(&SecretId2::from_array([7; 32]), &tid) {
                    let _ = k.decrypt(FieldPurpose::MaintenanceRequest, "", &f);
                }
            }
        }
        8 => {
            if let Ok(s) = std::str::from_utf8(rest) {
                if let Ok(c) = s.parse::<Ipv4Cidr>() {
                    assert_eq!(c.to_string().parse::<Ipv4Cidr>().ok(), Some(c));
                    assert!(c.contains(c.addr()));
                }
            }
        }
        _ => {
            // Valid encryption of fuzzed plaintext: exercises the details
            // parser behind a successful decryption.
            let rng = SystemRandom::new();
            if let Ok(k) = FieldKey::for_router(&SecretId2::from_array([7; 32]), &tid) {
                if let Ok(f) = k.encrypt(&rng, FieldPurpose::MaintenanceRequest, "", rest) {
                    let plain = k.decrypt(FieldPurpose::MaintenanceRequest, "", &f);
                    assert_eq!(plain.as_deref().map(|p| &p[..]), Ok(rest));
                    let _ = k.decrypt_json::<MaintenanceDetails>(FieldPurpose::MaintenanceRequest, "", &f);
                }
            }
        }
    }
});
