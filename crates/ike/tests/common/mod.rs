//! Test harness: our initiator against our responder, entirely in memory.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use ring::rand::SystemRandom;
use vpnnat_ike::{
    ChildSa, Datagram, DownReason, Error, Event, Identity, Initiator, InitiatorConfig, Output, Responder,
    ResponderConfig, SaConfig, Secret, TrafficSelector,
};

pub const GW: &str = "203.0.113.1:500";
pub const RT: &str = "198.51.100.2:500";
pub const PSK: &[u8] = b"router-17 pre-shared key, 32 by!";

pub fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

pub fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

pub fn gw_sa(psk: &[u8]) -> SaConfig {
    let mut c = SaConfig::new(
        Secret::from_slice(psk),
        Identity::fqdn("gw1.center.example"),
        vec![TrafficSelector::subnet(ip("10.0.0.0"), 8)],
        vec![
            TrafficSelector::host(ip("100.64.0.5")),
            TrafficSelector::host(ip("100.64.0.6")),
        ],
    );
    c.remote_id = Some(Identity::key_id(b"router-17"));
    c
}

pub fn rt_sa(psk: &[u8]) -> SaConfig {
    let mut c = SaConfig::new(
        Secret::from_slice(psk),
        Identity::key_id(b"router-17"),
        vec![TrafficSelector::subnet(ip("100.64.0.0"), 24)],
        vec![TrafficSelector::subnet(ip("10.1.0.0"), 16)],
    );
    c.remote_id = Some(Identity::fqdn("gw1.center.example"));
    c
}

/// Rewrites addresses like a NAT in front of the gateway would.
#[derive(Clone, Copy)]
pub struct Nat {
    pub inside: IpAddr,
    pub outside: IpAddr,
    pub port_offset: u16,
}

pub struct Net {
    pub gw: Initiator,
    pub rt: Responder,
    pub now: Instant,
    pub rng: SystemRandom,
    pub nat: Option<Nat>,
    pub gw_events: Vec<Event>,
    pub rt_events: Vec<Event>,
    pub gw_errors: Vec<Error>,
    pub rt_errors: Vec<Error>,
    /// Datagrams seen on the wire, gateway -> router.
    pub to_rt: Vec<Datagram>,
    /// Datagrams seen on the wire, router -> gateway.
    pub to_gw: Vec<Datagram>,
    /// Drop everything while set.
    pub cut: bool,
}

impl Net {
    pub fn new(gw: SaConfig, rt: ResponderConfig) -> Self {
        Self::with_local(gw, rt, addr(GW), None)
    }

    pub fn with_local(gw: SaConfig, rt: ResponderConfig, gw_local: SocketAddr, nat: Option<Nat>) -> Self {
        let rng = SystemRandom::new();
        let now = Instant::now();
        Self {
            gw: Initiator::new(InitiatorConfig {
                local: gw_local,
                peer: addr(RT),
                sa: gw,
            }),
            rt: Responder::new(rt, now, &rng).unwrap(),
            now,
            rng,
            nat,
            gw_events: vec![],
            rt_events: vec![],
            gw_errors: vec![],
            rt_errors: vec![],
            to_rt: vec![],
            to_gw: vec![],
            cut: false,
        }
    }

    pub fn default_pair() -> Self {
        Self::new(gw_sa(PSK), ResponderConfig::new(addr(GW).ip(), rt_sa(PSK)))
    }

    pub fn outbound(&self, mut d: Datagram) -> Datagram {
        if let Some(n) = self.nat {
            if d.src.ip() == n.inside {
                d.src = SocketAddr::new(n.outside, d.src.port() + n.port_offset);
            }
        }
        d
    }

    pub fn inbound(&self, mut d: Datagram) -> Datagram {
        if let Some(n) = self.nat {
            if d.dst.ip() == n.outside {
                d.dst = SocketAddr::new(n.inside, d.dst.port() - n.port_offset);
            }
        }
        d
    }

    /// Moves datagrams until both sides are quiet.
    pub fn run(&mut self) {
        loop {
            let mut moved = false;
            while let Some(o) = self.gw.poll_output() {
                match o {
                    Output::Event(e) => self.gw_events.push(e),
                    Output::Send(d) => {
                        moved = true;
                        let d = self.outbound(d);
                        self.to_rt.push(d.clone());
                        if !self.cut {
                            if let Err(e) = self.rt.handle_datagram(self.now, d.src, d.dst, &d.payload, &self.rng) {
                                self.rt_errors.push(e);
                            }
                        }
                    }
                }
            }
            while let Some(o) = self.rt.poll_output() {
                match o {
                    Output::Event(e) => self.rt_events.push(e),
                    Output::Send(d) => {
                        moved = true;
                        self.to_gw.push(d.clone());
                        let d = self.inbound(d);
                        if !self.cut {
                            if let Err(e) = self.gw.handle_datagram(self.now, d.src, d.dst, &d.payload, &self.rng) {
                                self.gw_errors.push(e);
                            }
                        }
                    }
                }
            }
            if !moved {
                break;
            }
        }
    }

    pub fn connect(&mut self) {
        self.gw.connect(self.now, &self.rng).unwrap();
        self.run();
    }

    pub fn advance(&mut self, d: Duration) {
        self.now += d;
        self.gw.poll_timers(self.now);
        self.rt.poll_timers(self.now);
        self.run();
    }

    pub fn take_events(&mut self) -> (Vec<Event>, Vec<Event>) {
        (std::mem::take(&mut self.gw_events), std::mem::take(&mut self.rt_events))
    }
}

pub fn child_ups(ev: &[Event]) -> Vec<ChildSa> {
    ev.iter()
        .filter_map(|e| match e {
            Event::ChildSaUp(c) => Some(c.clone()),
            _ => None,
        })
        .collect()
}

pub fn downs(ev: &[Event]) -> Vec<(u32, u32)> {
    ev.iter()
        .filter_map(|e| match e {
            Event::ChildSaDown {
                inbound_spi,
                outbound_spi,
            } => Some((*inbound_spi, *outbound_spi)),
            _ => None,
        })
        .collect()
}

pub fn tunnel_down(ev: &[Event]) -> Option<DownReason> {
    ev.iter().find_map(|e| match e {
        Event::TunnelDown { reason, .. } => Some(*reason),
        _ => None,
    })
}

pub fn assert_pair(a: &ChildSa, b: &ChildSa) {
    assert_eq!(a.inbound_spi, b.outbound_spi);
    assert_eq!(a.outbound_spi, b.inbound_spi);
    assert_eq!(a.inbound_key, b.outbound_key);
    assert_eq!(a.outbound_key, b.inbound_key);
    assert_ne!(a.inbound_key, a.outbound_key);
    assert_eq!(a.encr, b.encr);
    assert_eq!(a.inbound_key.len(), a.encr.keymat_len());
}

pub fn established(net: &mut Net) -> (ChildSa, ChildSa) {
    net.connect();
    assert!(net.gw_errors.is_empty(), "{:?}", net.gw_errors);
    // INVALID_KE and COOKIE answers are rejections from the responder's view
    net.rt_errors
        .retain(|e| !matches!(e, Error::InvalidKe { .. } | Error::CookieRequired));
    assert!(net.rt_errors.is_empty(), "{:?}", net.rt_errors);
    let (g, r) = net.take_events();
    let (gc, rc) = (child_ups(&g), child_ups(&r));
    assert_eq!((gc.len(), rc.len()), (1, 1), "{g:?} {r:?}");
    assert!(matches!(g.last(), Some(Event::TunnelUp { .. })));
    assert!(matches!(r.last(), Some(Event::TunnelUp { .. })));
    assert_pair(&gc[0], &rc[0]);
    (gc[0].clone(), rc[0].clone())
}
