//! Fuzz harnesses for the IKEv2 implementation. Each `pub fn` is one
//! cargo-fuzz target (`fuzz_targets/<name>.rs` calls it) and is replayed
//! over the checked-in corpus by `crates/ike/tests/fuzz_corpus.rs`.
//! Assertions are the invariants: a panic is a finding.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use ring::rand::SystemRandom;
use vpnnat_ike::codec::{encode_message, parse_payloads, Message};
use vpnnat_ike::{
    Identity, Initiator, InitiatorConfig, Output, Responder, ResponderConfig, SaConfig, Secret, TrafficSelector,
};

/// The message parser must be total, and what it accepts must survive an
/// encode/parse round trip unchanged.
pub fn parse_message(data: &[u8]) {
    if let Ok(m) = Message::parse(data) {
        if let Ok(bytes) = encode_message(&m.header, &m.payloads) {
            let again = Message::parse(&bytes).expect("re-parse of our own encoding");
            assert_eq!(again.payloads, m.payloads);
        }
        if let Some(sk) = m.sk() {
            // Treat the SK body as if it were decrypted inner payloads.
            let _ = parse_payloads(sk.first_inner, &sk.body, false);
        }
    }
    if let Some((&first, rest)) = data.split_first() {
        let _ = parse_payloads(first, rest, true);
    }
}

/// Arbitrary datagrams (split on a marker) into a Responder: it must never
/// panic, whatever it is fed.
pub fn responder(data: &[u8]) {
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
    let Ok(mut r) = Responder::new(cfg, now, &rng) else {
        return;
    };
    // Datagrams separated by "\xff\xfe\xfd\xfc"; the first byte of each
    // picks port 500 or 4500.
    for (i, chunk) in split(data).into_iter().enumerate() {
        let Some((&sel, body)) = chunk.split_first() else {
            continue;
        };
        let port = if sel & 1 == 0 { 500 } else { 4500 };
        let src = SocketAddr::new(gw.ip(), port);
        let dst: SocketAddr = SocketAddr::new("198.51.100.2".parse().unwrap(), port);
        let t = now + Duration::from_secs(i as u64);
        let _ = r.handle_datagram(t, src, dst, body, &rng);
        r.poll_timers(t);
        while r.poll_output().is_some() {}
    }
}

const SEP: &[u8] = &[0xff, 0xfe, 0xfd, 0xfc];

fn split(data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = data;
    while let Some(pos) = rest.windows(SEP.len()).position(|w| w == SEP) {
        out.push(&rest[..pos]);
        rest = &rest[pos + SEP.len()..];
    }
    out.push(rest);
    out
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

const GW: &str = "203.0.113.1:500";
const ROUTER: &str = "198.51.100.2:500";

/// The gateway's side (the initiator) as centerd's gatewayd runs it.
fn initiator_config() -> InitiatorConfig {
    let mut sa = SaConfig::new(
        Secret::from_slice(b"fuzz psk"),
        Identity::fqdn("gw1.center.example"),
        vec![TrafficSelector::subnet(ip("10.0.0.0"), 8)],
        vec![TrafficSelector::host(ip("100.64.0.5"))],
    );
    sa.remote_id = Some(Identity::key_id(b"router-17"));
    InitiatorConfig {
        local: GW.parse().unwrap(),
        peer: ROUTER.parse().unwrap(),
        sa,
    }
}

/// The router's side, to make seeds from its real answers.
fn router_config() -> ResponderConfig {
    let mut sa = SaConfig::new(
        Secret::from_slice(b"fuzz psk"),
        Identity::key_id(b"router-17"),
        vec![TrafficSelector::subnet(ip("100.64.0.0"), 24)],
        vec![TrafficSelector::subnet(ip("10.0.0.0"), 8)],
    );
    sa.remote_id = Some(Identity::fqdn("gw1.center.example"));
    ResponderConfig::new(IpAddr::V4(ip("203.0.113.1")), sa)
}

/// Drains an endpoint's output; returns the datagrams.
fn sent(mut next: impl FnMut() -> Option<Output>) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(o) = next() {
        if let Output::Send(d) = o {
            out.push(d.payload);
        }
    }
    out
}

/// Answers from "the router" to an Initiator that has sent IKE_SA_INIT:
/// datagrams split on a marker, the first byte of each picks port 500 or
/// 4500. The harness writes the initiator's own SPI into each answer's
/// header (a peer sees it in the request), so answers get past the SPI
/// lookup into the IKE_SA_INIT response handling (proposal, KE, nonce,
/// cookies, INVALID_KE_PAYLOAD, NAT detection) and IKE_AUTH decryption.
///
/// Invariant: never established, since the answers cannot know the
/// keys (DH with our fresh secret) and the PSK-based AUTH; never a panic.
pub fn initiator(data: &[u8]) {
    let rng = SystemRandom::new();
    let now = Instant::now();
    let cfg = initiator_config();
    let (local, peer) = (cfg.local, cfg.peer);
    let mut ini = Initiator::new(cfg);
    if ini.connect(now, &rng).is_err() {
        return;
    }
    let Some(init) = sent(|| ini.poll_output()).into_iter().next() else {
        return;
    };
    let spi: [u8; 8] = init[..8].try_into().unwrap();
    for (i, chunk) in split(data).into_iter().enumerate() {
        let Some((&sel, body)) = chunk.split_first() else {
            continue;
        };
        let port = if sel & 1 == 0 { 500 } else { 4500 };
        let mut body = body.to_vec();
        // Past the non-ESP marker on 4500.
        let at = if port == 4500 { 4 } else { 0 };
        if let Some(h) = body.get_mut(at..at + 8) {
            h.copy_from_slice(&spi);
        }
        let src = SocketAddr::new(peer.ip(), port);
        let dst = SocketAddr::new(local.ip(), port);
        let t = now + Duration::from_millis(100 * i as u64);
        let _ = ini.handle_datagram(t, src, dst, &body, &rng);
        ini.poll_timers(t);
        while ini.poll_output().is_some() {}
        assert!(
            !ini.is_established(),
            "established with answers that cannot know the keys"
        );
    }
}

/// Seed inputs made of real messages: `(target, name, bytes)`.
/// `crates/ike/tests/fuzz_corpus.rs` runs them through the harnesses and,
/// with `VPNNAT_WRITE_FUZZ_SEEDS=1`, writes them to `corpus/<target>/`.
pub fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let rng = SystemRandom::new();
    let now = Instant::now();
    let mut ini = Initiator::new(initiator_config());
    let mut resp = Responder::new(router_config(), now, &rng).unwrap();
    ini.connect(now, &rng).unwrap();
    let gw: SocketAddr = GW.parse().unwrap();
    let rt: SocketAddr = ROUTER.parse().unwrap();
    // A real exchange: IKE_SA_INIT, then IKE_AUTH, answers kept.
    let mut answers = Vec::new();
    for _ in 0..2 {
        for req in sent(|| ini.poll_output()) {
            resp.handle_datagram(now, gw, rt, &req, &rng).unwrap();
            for a in sent(|| resp.poll_output()) {
                answers.push(a.clone());
                ini.handle_datagram(now, rt, gw, &a, &rng).unwrap();
            }
        }
    }
    assert!(ini.is_established(), "the seed exchange must succeed");
    let mut both = vec![0u8];
    both.extend_from_slice(&answers[0]);
    both.extend_from_slice(SEP);
    both.push(0);
    both.extend_from_slice(&answers[1]);
    let mut out = vec![("initiator", "seed-init".to_owned(), [&[0u8][..], &answers[0]].concat())];
    out.push(("initiator", "seed-init-auth".to_owned(), both));
    for (i, a) in answers.iter().enumerate() {
        out.push(("parse_message", format!("seed-answer{i}"), a.clone()));
    }
    out
}
