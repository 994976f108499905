//! IKE_SA_INIT floods against the responder core (no I/O): half-open state
//! stays under its caps and the real gateway still gets its tunnel.
//! Prints its figures (`cargo test -p vpnnat-ike --test flood -- --nocapture`).

#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use vpnnat_ike::codec::{encode_message, Message};
use vpnnat_ike::{Error, Initiator, InitiatorConfig, Output, ResponderConfig};

const SPOOFED: u64 = 20_000;

/// A valid IKE_SA_INIT request of our own initiator, as a template.
fn init_template(net: &mut Net) -> (SocketAddr, SocketAddr, Message) {
    let mut gw = Initiator::new(InitiatorConfig {
        local: addr(GW),
        peer: addr(RT),
        sa: gw_sa(PSK),
    });
    gw.connect(net.now, &net.rng).unwrap();
    let Some(Output::Send(d)) = gw.poll_output() else {
        panic!("no IKE_SA_INIT")
    };
    (d.src, d.dst, Message::parse(&d.payload).unwrap())
}

#[test]
fn spoofed_init_flood_keeps_half_open_under_the_cap_and_the_gateway_gets_in() {
    let mut net = Net::default_pair();
    let (src, dst, template) = init_template(&mut net);
    let mut cookies = 0u64;
    let mut other = 0u64;
    let mut max_half_open = 0usize;
    let started = Instant::now();
    for i in 0..SPOOFED {
        // The gateway's address (the only one accepted) with a fresh SPI
        // and source port each time, as a blind spoofer would send.
        let mut m = template.clone();
        m.header.spi_i = 0x5350_4f4f_0000_0000 | i;
        let bytes = encode_message(&m.header, &m.payloads).unwrap();
        let from = SocketAddr::new(src.ip(), 1024 + u16::try_from(i % 60_000).unwrap());
        match net.rt.handle_datagram(net.now, from, dst, &bytes, &net.rng) {
            Err(Error::CookieRequired) => cookies += 1,
            Ok(()) => {}
            Err(_) => other += 1,
        }
        // The answers go to the spoofed address: nobody returns them.
        while net.rt.poll_output().is_some() {}
        max_half_open = max_half_open.max(net.rt.half_open());
    }
    let per_init = started.elapsed() / u32::try_from(SPOOFED).unwrap();
    let cfg = ResponderConfig::new(addr(GW).ip(), rt_sa(PSK));
    assert!(max_half_open <= cfg.cookie_threshold, "{max_half_open}");
    assert_eq!(cookies + u64::try_from(max_half_open).unwrap(), SPOOFED);
    assert_eq!(other, 0);
    // The real gateway: answered with a cookie, returns it, gets its SAs.
    established(&mut net);
    assert!(net.rt.is_established());
    println!(
        "ike flood (spoofed SPIs): {SPOOFED} IKE_SA_INIT -> {cookies} answered with a cookie (no state), \
         half-open peak {max_half_open} (cookie threshold {}, cap {}), {per_init:?} per request; \
         real initiator established after the flood: yes",
        cfg.cookie_threshold, cfg.max_half_open
    );
}

#[test]
fn cookie_returning_flood_is_capped_and_the_gateway_gets_in_after_the_time_out() {
    let mut net = Net::default_pair();
    let cfg = ResponderConfig::new(addr(GW).ip(), rt_sa(PSK));
    let attackers = 200u16;
    let mut dropped = 0u32;
    // Initiators at the gateway's address that do see and return cookies
    // (an on-path attacker, or a confused gateway).
    for port in 0..attackers {
        let mut a = Initiator::new(InitiatorConfig {
            local: SocketAddr::new(addr(GW).ip(), 2000 + port),
            peer: addr(RT),
            sa: gw_sa(PSK),
        });
        a.connect(net.now, &net.rng).unwrap();
        // INIT, COOKIE, INIT with cookie; the responder's answer to that is
        // never continued (no IKE_AUTH): a half-open SA.
        for _ in 0..2 {
            let Some(Output::Send(d)) = a.poll_output() else { break };
            match net.rt.handle_datagram(net.now, d.src, d.dst, &d.payload, &net.rng) {
                Err(Error::TooManyHalfOpen(n)) => {
                    assert_eq!(n, cfg.max_half_open);
                    dropped += 1;
                    break;
                }
                Err(Error::CookieRequired) => {
                    let Some(Output::Send(back)) = net.rt.poll_output() else {
                        break;
                    };
                    let _ = a.handle_datagram(net.now, back.src, back.dst, &back.payload, &net.rng);
                }
                Ok(()) => break,
                Err(e) => panic!("attacker {port}: {e}"),
            }
        }
        while net.rt.poll_output().is_some() {}
        assert!(net.rt.half_open() <= cfg.max_half_open);
    }
    let held = net.rt.half_open();
    assert_eq!(held, cfg.max_half_open);
    assert_eq!(dropped, u32::from(attackers) - u32::try_from(held).unwrap());
    // While the cap holds, the real gateway is refused too...
    net.connect();
    assert!(net.rt_errors.iter().any(|e| matches!(e, Error::TooManyHalfOpen(_))));
    assert!(!net.rt.is_established());
    // ...and gets in once the half-open SAs have timed out.
    let timeout = rt_sa(PSK).half_open_timeout;
    net.now += timeout + Duration::from_secs(1);
    net.rt.poll_timers(net.now);
    while net.rt.poll_output().is_some() {}
    assert_eq!(net.rt.half_open(), 0);
    net.rt_errors.clear();
    net.gw = Initiator::new(InitiatorConfig {
        local: addr(GW),
        peer: addr(RT),
        sa: gw_sa(PSK),
    });
    net.take_events();
    established(&mut net);
    println!(
        "ike flood (cookie-returning): {attackers} initiators -> {held} half-open held (cap {}), {dropped} dropped; \
         real initiator established after the {timeout:?} half-open time-out: yes",
        cfg.max_half_open
    );
}
