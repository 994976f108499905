//! Fuzz harnesses for the protocol decoders. Each `pub fn` is one
//! cargo-fuzz target (`fuzz_targets/<name>.rs` calls it) and is replayed
//! over the checked-in corpus by `crates/proto/tests/fuzz_corpus.rs`.
//! Assertions are the invariants: a panic is a finding.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

pub use payloads::payloads;
pub use request::decode_request;
pub use response::decode_response;

mod request {
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

    use std::fmt::Debug;

    use ring::rand::SystemRandom;
    use vpnnat_proto::auth::{self, AuthHeaders, MemoryNonceStore, ReplayConfig, ReplayGuard};
    use vpnnat_proto::decode::Principal;
    use vpnnat_proto::keys::{SecretBytes, SecretId2};
    use vpnnat_proto::messages::*;
    use vpnnat_proto::{decode_request as decode, Command, ProtoError};

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
            decode(&mut guard, C::PATH, &headers, body, NOW, |_, _| Some(key.clone()));
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

    pub fn decode_request(data: &[u8]) {
        let Some((&sel, rest)) = data.split_first() else {
            return;
        };
        let signed = sel & 0x10 != 0;
        // bit 0x40 selects the second 16 commands
        match (sel & 0x0f) | ((sel & 0x40) >> 2) {
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
            13 => run::<TunnelLostNotice>(signed, rest),
            14 => run::<RestartTunnel>(signed, rest),
            15 => run::<SiteEndRequest>(signed, rest),
            16 => run::<RequestStatesQuery>(signed, rest),
            _ => {}
        }
    }
}

mod payloads {
    //! Feeds arbitrary bytes to the parsers that run after a MAC or AEAD check:
    //! sealed payloads, responses, sealed/encrypted containers, CIDRs and the
    //! opening of fuzzed boxes. Byte 0 selects the parser.

    use std::fmt::Debug;

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

    pub fn payloads(data: &[u8]) {
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
    }
}

mod response {
    //! The answers the sending side decodes: the router opening the
    //! center's answers, centerd the gateways' answers, for every command.
    //!
    //! Byte 0: low 4 bits the command, bits 4-5 the shape of the answer:
    //! 0 headers and body from the input (no valid MAC: must never be
    //! accepted), 1 the body with a valid MAC (reaches the JSON parser), 2
    //! the rest sealed to a reply key (reaches the parsers of the sealed
    //! installation secrets, gateway information and grants).
    //!
    //! Invariants: an unsigned answer is refused; an accepted answer
    //! serializes to JSON that parses back to the same JSON; a sealed
    //! payload that opens re-seals and opens to the same value.

    use ring::rand::SystemRandom;
    use serde::de::DeserializeOwned;
    use serde::Serialize;
    use vpnnat_proto::auth::{self, AuthHeaders};
    use vpnnat_proto::decode::Principal;
    use vpnnat_proto::keys::{SecretBytes, SecretId2};
    use vpnnat_proto::messages::*;
    use vpnnat_proto::seal::{self, ReplyKeyPair, SealPurpose};
    use vpnnat_proto::types::TerminalId;
    use vpnnat_proto::{decode_response as decode, Command, Outgoing};

    const NOW: u64 = 1_800_000_000;

    /// JSON of `v`, parsed back and serialized again, is the same JSON.
    fn same_json<T: Serialize + DeserializeOwned>(v: &T) {
        let a = serde_json::to_vec(v).expect("serializes");
        let back: T = serde_json::from_slice(&a).expect("own JSON parses");
        assert_eq!(serde_json::to_vec(&back).expect("serializes"), a);
    }

    fn run<C: Command>(signed: bool, data: &[u8]) {
        let rng = SystemRandom::new();
        let key = SecretId2::from_array([7; 32]).mac_key();
        let Ok(principal) = C::Principal::parse("fuzz-1") else {
            return;
        };
        // The request it answers: any body will do, its MAC is what the
        // answer's MAC covers.
        let request_body = b"{}".to_vec();
        let Ok(headers) = auth::sign_request(
            &key,
            C::DIRECTION,
            principal.as_ref(),
            C::PATH,
            &request_body,
            NOW,
            &rng,
        ) else {
            return;
        };
        let request = Outgoing {
            path: C::PATH,
            headers,
            body: request_body,
        };
        let (headers, body) = if signed {
            let mac = auth::Tag::from_hex(&request.headers.mac).expect("own MAC");
            let h = auth::sign_response(&key, C::DIRECTION, principal.as_ref(), C::PATH, &mac, data, NOW, &rng)
                .expect("signs");
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
            (h, parts.next().unwrap_or_default())
        };
        match decode::<C>(&request, &key, &headers, body) {
            Ok(r) => {
                assert!(signed, "an answer without a valid MAC was accepted");
                same_json(&r);
            }
            Err(e) => {
                let _ = e.http_status();
                let _ = e.to_string();
            }
        }
    }

    /// Seals `data` to a fresh reply key and opens it as a `T`.
    fn sealed<T: DeserializeOwned>(purpose: SealPurpose, data: &[u8]) -> Option<(T, TerminalId)> {
        let rng = SystemRandom::new();
        let tid = TerminalId::new("fuzz-1").ok()?;
        let kp = ReplyKeyPair::generate(&rng).ok()?;
        let boxed = seal::seal(&rng, &kp.public_key(), &tid, purpose, data).ok()?;
        kp.open_json::<T>(&tid, purpose, &boxed).ok().map(|v| (v, tid))
    }

    /// `open(seal(v))` of a payload that opened gives `v` back.
    fn reseal<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(
        purpose: SealPurpose,
        v: &T,
        tid: &TerminalId,
    ) {
        let rng = SystemRandom::new();
        let kp = ReplyKeyPair::generate(&rng).expect("key");
        let boxed = seal::seal_json(&rng, &kp.public_key(), tid, purpose, v).expect("seals");
        let back: T = kp.open_json(tid, purpose, &boxed).expect("opens");
        assert_eq!(&back, v);
    }

    fn payload(which: u8, data: &[u8]) {
        match which % 3 {
            0 => {
                if let Some((s, tid)) = sealed::<InstallSecrets>(SealPurpose::InstallResponse, data) {
                    assert_ne!(s.server_part_vpnnat(), s.router_part_vpnnat());
                    assert_ne!(s.psk().expose_secret(), s.secret_id2().expose_secret());
                    let rng = SystemRandom::new();
                    let kp = ReplyKeyPair::generate(&rng).expect("key");
                    let resp = s.seal(&rng, &tid, &kp.public_key()).expect("seals");
                    let back = resp.open(kp, &tid).expect("opens");
                    assert_eq!(back.psk().expose_secret(), s.psk().expose_secret());
                    assert_eq!(back.secret_id2().expose_secret(), s.secret_id2().expose_secret());
                    assert_eq!(back.server_part_vpnnat(), s.server_part_vpnnat());
                    assert_eq!(back.router_part_vpnnat(), s.router_part_vpnnat());
                }
            }
            1 => {
                if let Some((g, tid)) = sealed::<GatewayInfo>(SealPurpose::GatewayAddressResponse, data) {
                    reseal(SealPurpose::GatewayAddressResponse, &g, &tid);
                }
            }
            _ => {
                if let Some((g, tid)) = sealed::<Grants>(SealPurpose::MaintenanceResponse, data) {
                    reseal(SealPurpose::MaintenanceResponse, &g, &tid);
                }
            }
        }
    }

    pub fn decode_response(data: &[u8]) {
        let Some((&sel, rest)) = data.split_first() else {
            return;
        };
        let shape = (sel >> 4) & 3;
        if shape >= 2 {
            return payload(sel & 0x0f, rest);
        }
        let signed = shape == 1;
        // bit 0x40 selects the second 16 commands
        match (sel & 0x0f) | ((sel & 0x40) >> 2) {
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
            13 => run::<TunnelLostNotice>(signed, rest),
            14 => run::<RestartTunnel>(signed, rest),
            15 => run::<SiteEndRequest>(signed, rest),
            16 => run::<RequestStatesQuery>(signed, rest),
            _ => {}
        }
    }
}

/// Seed inputs made of real messages, per target: `(target, name, bytes)`.
/// `crates/proto/tests/fuzz_corpus.rs` runs them through the harnesses and,
/// with `VPNNAT_WRITE_FUZZ_SEEDS=1`, writes them to `corpus/<target>/seed-*`.
pub fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    use ring::rand::SystemRandom;
    use vpnnat_proto::auth;
    use vpnnat_proto::keys::{MaintenancePassword, Psk, SecretBytes, SecretId2};
    use vpnnat_proto::messages::*;
    use vpnnat_proto::seal::{ReplyKeyPair, SealPurpose};
    use vpnnat_proto::types::{BoundedSet, IkeIdentity, TerminalId, TerminalName, UnicastAddr};

    let rng = SystemRandom::new();
    let tid = TerminalId::new("fuzz-1").unwrap();
    let ip = |d| UnicastAddr::new(std::net::Ipv4Addr::new(100, 64, 0, d)).unwrap();
    let secrets = InstallSecrets::new(
        Psk::from_array([3; 32]),
        SecretId2::from_array([2; 32]),
        MaintenancePassword::new("maintenance-pw").unwrap(),
        ip(1),
        ip(2),
    )
    .unwrap();
    let info = GatewayInfo {
        gateway_ip: UnicastAddr::new(std::net::Ipv4Addr::new(198, 51, 100, 10)).unwrap(),
        gateway_ike_id: IkeIdentity::new("gw-a.center.example").unwrap(),
        center_networks: BoundedSet::new(vec!["10.64.0.0/16".parse().unwrap()]).unwrap(),
        initiation: Default::default(),
    };
    let grants = Grants::new(vec![
        Grant {
            terminal_name: TerminalName::new("pc1").unwrap(),
            vpnnat_addr: ip(10),
        },
        Grant {
            terminal_name: TerminalName::new("printer").unwrap(),
            vpnnat_addr: ip(11),
        },
    ])
    .unwrap();
    let kp = ReplyKeyPair::generate(&rng).unwrap();
    let install = serde_json::to_vec(&secrets.seal(&rng, &tid, &kp.public_key()).unwrap()).unwrap();
    // The sealed installation secrets' plaintext, as the router opens it.
    let install_plain = {
        let r: InstallResponse = serde_json::from_slice(&install).unwrap();
        kp.open(&tid, SealPurpose::InstallResponse, &r.sealed).unwrap().to_vec()
    };
    let kp = ReplyKeyPair::generate(&rng).unwrap();
    let gateway = serde_json::to_vec(&info.seal(&rng, &tid, &kp.public_key()).unwrap()).unwrap();
    let kp = ReplyKeyPair::generate(&rng).unwrap();
    let number = vpnnat_proto::types::AcceptanceNumber::new(7).unwrap();
    let maintenance = serde_json::to_vec(&grants.seal(&rng, &tid, &kp.public_key(), number).unwrap()).unwrap();
    // The same answer telling the router when the request ends (issue 19,
    // item 8), and the request that asks for it.
    let maintenance_ends_at = serde_json::to_vec(
        &grants
            .seal(&rng, &tid, &kp.public_key(), number)
            .unwrap()
            .with_ends_at(Some(1_800_014_400)),
    )
    .unwrap();
    // ... and its idle limit (the center's `idle_timeout_secs`).
    let maintenance_idle = serde_json::to_vec(
        &grants
            .seal(&rng, &tid, &kp.public_key(), number)
            .unwrap()
            .with_ends_at(Some(1_800_014_400))
            .with_idle_timeout(Some(1_800)),
    )
    .unwrap();
    let maintenance_request = serde_json::to_vec(
        &MaintenanceRequest::new(
            &rng,
            &SecretId2::from_array([7; 32]),
            &tid,
            kp.public_key(),
            vpnnat_proto::types::ClaimantLevel::General,
            vpnnat_proto::types::Urgency::Normal,
            &MaintenanceDetails {
                claimant_name: vpnnat_proto::types::ClaimantName::new("Taro").unwrap(),
                terminal_names: vpnnat_proto::types::TerminalNames::new(vec![TerminalName::new("pc1").unwrap()])
                    .unwrap(),
                phone: vpnnat_proto::types::Phone::new("+81 3-1234-5678").unwrap(),
                content: vpnnat_proto::types::RequestContent::new("printer offline").unwrap(),
            },
        )
        .unwrap(),
    )
    .unwrap();

    let with = |sel: u8, body: &[u8]| {
        let mut v = vec![sel];
        v.extend_from_slice(body);
        v
    };
    let key = SecretId2::from_array([7; 32]).mac_key();
    let unsigned = auth::sign_request(&key, auth::Direction::RouterToCenter, "fuzz-1", "/x", b"{}", 1, &rng).unwrap();
    let raw = format!(
        "{}\n{}\n{}\n{}\n{{}}",
        unsigned.principal, unsigned.timestamp, unsigned.nonce, unsigned.mac
    );
    let mut out = vec![
        ("decode_response", "seed-install".into(), with(0x10, &install)),
        ("decode_response", "seed-gateway".into(), with(0x12, &gateway)),
        ("decode_response", "seed-maintenance".into(), with(0x13, &maintenance)),
        (
            "decode_response",
            "seed-maintenance-ends-at".into(),
            with(0x13, &maintenance_ends_at),
        ),
        (
            "payloads",
            "seed-maintenance-ends-at".into(),
            with(5, &maintenance_ends_at),
        ),
        (
            "decode_request",
            "seed-maintenance-wants-ends-at".into(),
            with(0x13, &maintenance_request),
        ),
        (
            "decode_response",
            "seed-maintenance-idle".into(),
            with(0x13, &maintenance_idle),
        ),
        ("payloads", "seed-maintenance-idle".into(), with(5, &maintenance_idle)),
        ("decode_response", "seed-secrets".into(), with(0x20, &install_plain)),
        (
            "decode_response",
            "seed-gateway-info".into(),
            with(0x21, &serde_json::to_vec(&info).unwrap()),
        ),
        (
            "decode_response",
            "seed-grants".into(),
            with(0x22, &serde_json::to_vec(&grants).unwrap()),
        ),
    ];
    // The site end (issue 19, item 7): a real request and its answer.
    let site_end = serde_json::to_vec(&SiteEndRequest {
        acceptance_number: number,
    })
    .unwrap();
    let site_end_answer = serde_json::to_vec(&SiteEndAnswer {
        outcome: SiteEndOutcome::AlreadyEnded,
    })
    .unwrap();
    out.push(("decode_request", "seed-site-end".into(), with(0x1f, &site_end)));
    out.push(("decode_response", "seed-site-end".into(), with(0x1f, &site_end_answer)));
    // Request states (issue 19, item 1): a real query and its answer.
    let two = vpnnat_proto::types::BoundedSet::new(vec![
        number,
        vpnnat_proto::types::AcceptanceNumber::new(number.get() + 1).unwrap(),
    ])
    .unwrap();
    let states = serde_json::to_vec(&RequestStatesQuery { open: two.clone() }).unwrap();
    let states_answer = serde_json::to_vec(&RequestStatesAnswer {
        ended: vpnnat_proto::types::BoundedSet::new(two.into_vec()).unwrap(),
    })
    .unwrap();
    out.push(("decode_request", "seed-request-states".into(), with(0x50, &states)));
    out.push((
        "decode_response",
        "seed-request-states".into(),
        with(0x50, &states_answer),
    ));
    for i in 0..13u8 {
        out.push(("decode_response", format!("seed-ack-{i:02}"), with(0x10 | i, b"{}")));
        out.push(("decode_response", format!("seed-raw-{i:02}"), with(i, raw.as_bytes())));
    }
    out
}
