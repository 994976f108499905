//! Issue 17: routers behind NATs dial into the gateway. One responder (the
//! gateway) serves many initiators (routers), each known by its IKE
//! identity and authenticated with its own PSK, several of them behind one
//! carrier NAT address. In memory, with a NAT that rewrites addresses and
//! ports the way a masquerading NAT does.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use ring::rand::SystemRandom;
use vpnnat_ike::codec::notify_type;
use vpnnat_ike::{
    Error, Event, Identity, Initiator, InitiatorConfig, Output, PeerLookup, Responder, ResponderConfig, SaConfig,
    Secret, TrafficSelector,
};

const GW: &str = "198.51.100.21:500";
/// The carrier NAT's one public address.
const CGNAT: &str = "203.0.113.50";

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn center() -> Vec<TrafficSelector> {
    vec![TrafficSelector::subnet(ip("172.16.0.0"), 24)]
}

fn router_id(n: u8) -> Identity {
    Identity::key_id(format!("router-{n}").as_bytes())
}

fn vpnnat(n: u8) -> Vec<TrafficSelector> {
    vec![
        TrafficSelector::host(Ipv4Addr::new(10, 64, 0, 2 * n)),
        TrafficSelector::host(Ipv4Addr::new(10, 64, 0, 2 * n + 1)),
    ]
}

fn psk(n: u8) -> Secret {
    Secret::from_slice(format!("router-{n} pre-shared key, 32 b!").as_bytes())
}

/// The gateway's side of router `n`'s tunnel.
fn gw_side(n: u8) -> SaConfig {
    let mut c = SaConfig::new(psk(n), Identity::fqdn("gw1.center.example"), center(), vpnnat(n));
    c.remote_id = Some(router_id(n));
    c
}

/// What the gateway knows: identity -> configuration (in gatewayd, only
/// routers holding one of its slots with a live request are in it).
#[derive(Debug, Default)]
struct Slots(Mutex<HashMap<Vec<u8>, Arc<SaConfig>>>);

impl PeerLookup for Slots {
    fn config_for(&self, idi: &Identity) -> Option<Arc<SaConfig>> {
        self.0.lock().unwrap().get(&idi.body_bytes()).cloned()
    }
}

impl Slots {
    fn admit(&self, n: u8) {
        self.0
            .lock()
            .unwrap()
            .insert(router_id(n).body_bytes(), Arc::new(gw_side(n)));
    }
}

struct Home {
    rt: Initiator,
    /// The router's own address (private, behind the NAT).
    inside: IpAddr,
    /// Public port the NAT maps its port 500 / 4500 to.
    ports: (u16, u16),
    events: Vec<Event>,
    errors: Vec<Error>,
}

struct World {
    gw: Responder,
    slots: Arc<Slots>,
    homes: Vec<Home>,
    gw_events: Vec<Event>,
    gw_errors: Vec<Error>,
    /// Every datagram that reached the gateway (after the NAT).
    to_gw: Vec<(SocketAddr, SocketAddr, Vec<u8>)>,
    now: Instant,
    rng: SystemRandom,
}

impl World {
    fn new() -> Self {
        let rng = SystemRandom::new();
        let now = Instant::now();
        let slots = Arc::new(Slots::default());
        // The template only serves IKE_SA_INIT: its PSK and selectors are
        // never used for an SA.
        let mut template = SaConfig::new(
            Secret::from_slice(b"never used: every SA takes its peer's own"),
            Identity::fqdn("gw1.center.example"),
            center(),
            center(),
        );
        template.peer_lookup = Some(slots.clone());
        let gw = Responder::new(ResponderConfig::by_identity(template), now, &rng).unwrap();
        World {
            gw,
            slots,
            homes: Vec::new(),
            gw_events: Vec::new(),
            gw_errors: Vec::new(),
            to_gw: Vec::new(),
            now,
            rng,
        }
    }

    /// Router `n` behind the carrier NAT, presenting `id` with `key`.
    fn home(&mut self, n: u8, id: Identity, key: Secret) -> usize {
        let inside = IpAddr::V4(Ipv4Addr::new(100, 64, 7, n));
        let mut sa = SaConfig::new(key, id, vpnnat(n), center());
        sa.remote_id = Some(Identity::fqdn("gw1.center.example"));
        let rt = Initiator::new(InitiatorConfig {
            local: SocketAddr::new(inside, 500),
            peer: GW.parse().unwrap(),
            sa,
        });
        let i = self.homes.len();
        let base = 40_000 + 2 * u16::try_from(i).unwrap();
        self.homes.push(Home {
            rt,
            inside,
            ports: (base, base + 1),
            events: Vec::new(),
            errors: Vec::new(),
        });
        i
    }

    fn public(&self, i: usize, port: u16) -> SocketAddr {
        let h = &self.homes[i];
        let p = if port == 4500 { h.ports.1 } else { h.ports.0 };
        SocketAddr::new(CGNAT.parse().unwrap(), p)
    }

    fn connect(&mut self, i: usize) {
        self.homes[i].rt.connect(self.now, &self.rng).unwrap();
        self.run();
    }

    /// Moves datagrams through the NAT until everyone is quiet.
    fn run(&mut self) {
        loop {
            let mut moved = false;
            for i in 0..self.homes.len() {
                while let Some(o) = self.homes[i].rt.poll_output() {
                    match o {
                        Output::Event(e) => self.homes[i].events.push(e),
                        Output::Send(d) => {
                            moved = true;
                            assert_eq!(d.src.ip(), self.homes[i].inside);
                            let src = self.public(i, d.src.port());
                            self.to_gw.push((src, d.dst, d.payload.clone()));
                            if let Err(e) = self.gw.handle_datagram(self.now, src, d.dst, &d.payload, &self.rng) {
                                self.gw_errors.push(e);
                            }
                        }
                    }
                }
            }
            while let Some(o) = self.gw.poll_output() {
                match o {
                    Output::Event(e) => self.gw_events.push(e),
                    Output::Send(d) => {
                        moved = true;
                        let i = self
                            .homes
                            .iter()
                            .position(|h| d.dst.port() == h.ports.0 || d.dst.port() == h.ports.1)
                            .expect("the NAT has a mapping");
                        let inside_port = if d.dst.port() == self.homes[i].ports.1 {
                            4500
                        } else {
                            500
                        };
                        let dst = SocketAddr::new(self.homes[i].inside, inside_port);
                        let h = &mut self.homes[i];
                        if let Err(e) = h.rt.handle_datagram(self.now, d.src, dst, &d.payload, &self.rng) {
                            h.errors.push(e);
                        }
                    }
                }
            }
            if !moved {
                break;
            }
        }
    }

    fn gw_child_ups(&self) -> usize {
        self.gw_events
            .iter()
            .filter(|e| matches!(e, Event::ChildSaUp(_)))
            .count()
    }
}

fn refused_with_authentication_failed(h: &Home) -> bool {
    h.errors.contains(&Error::PeerError(notify_type::AUTHENTICATION_FAILED))
}

#[test]
fn routers_behind_one_carrier_nat_each_get_their_own_sa() {
    let mut w = World::new();
    w.slots.admit(1);
    w.slots.admit(2);
    let a = w.home(1, router_id(1), psk(1));
    let b = w.home(2, router_id(2), psk(2));
    w.connect(a);
    w.connect(b);
    assert!(w.gw_errors.is_empty(), "{:?}", w.gw_errors);
    assert!(w.homes[a].rt.is_established() && w.homes[b].rt.is_established());
    assert_eq!(w.gw.sa_count(), 2);
    let ups: Vec<_> = w
        .gw_events
        .iter()
        .filter_map(|e| match e {
            Event::ChildSaUp(c) => Some(c.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(ups.len(), 2);
    // Each SA pair uses UDP encapsulation with its own NAT port, and
    // carries only its own router's VPNNAT addresses.
    let mut encap_ports: Vec<u16> = ups
        .iter()
        .map(|c| c.encap.expect("NAT detected: ESP-in-UDP").1)
        .collect();
    encap_ports.sort_unstable();
    assert_eq!(encap_ports, vec![w.homes[a].ports.1, w.homes[b].ports.1]);
    for (c, n) in ups.iter().zip([1u8, 2]) {
        assert_eq!(
            c.remote_ts,
            vpnnat(n),
            "router-{n}'s tunnel carries its own addresses only"
        );
        assert_eq!(c.local_ts, center());
    }
    // Both used the shared public address: the address told nobody apart.
    assert!(w.to_gw.iter().all(|(src, _, _)| src.ip().to_string() == CGNAT));
}

#[test]
fn an_unknown_identity_is_refused_with_authentication_failed() {
    let mut w = World::new();
    w.slots.admit(1);
    // Router 3 holds no slot here: the lookup does not know it, whatever
    // its key (even one the gateway knows for someone else).
    let x = w.home(3, router_id(3), psk(1));
    w.connect(x);
    assert_eq!(w.gw_errors, vec![Error::UnknownIdentity]);
    assert!(
        refused_with_authentication_failed(&w.homes[x]),
        "{:?}",
        w.homes[x].errors
    );
    assert_eq!(w.gw_child_ups(), 0, "nothing installed");
    assert_eq!(w.gw.sa_count(), 0);
}

#[test]
fn the_right_identity_with_a_wrong_psk_is_refused() {
    let mut w = World::new();
    w.slots.admit(1);
    w.slots.admit(2);
    // Router 2 tries to pass as router 1 with its own (valid, other) PSK.
    let x = w.home(2, router_id(1), psk(2));
    w.connect(x);
    assert_eq!(w.gw_errors, vec![Error::AuthenticationFailed]);
    assert!(refused_with_authentication_failed(&w.homes[x]));
    assert_eq!(w.gw_child_ups(), 0);
    assert_eq!(w.gw.sa_count(), 0);
}

#[test]
fn a_router_cannot_claim_another_routers_addresses() {
    let mut w = World::new();
    w.slots.admit(1);
    w.slots.admit(2);
    // Router 1 authenticates correctly but proposes router 2's VPNNAT
    // addresses as its side: narrowed to nothing, no CHILD SA.
    let mut sa = SaConfig::new(psk(1), router_id(1), vpnnat(2), center());
    sa.remote_id = Some(Identity::fqdn("gw1.center.example"));
    let i = w.home(1, router_id(1), psk(1));
    w.homes[i].rt = Initiator::new(InitiatorConfig {
        local: SocketAddr::new(w.homes[i].inside, 500),
        peer: GW.parse().unwrap(),
        sa,
    });
    w.connect(i);
    assert_eq!(w.gw_errors, vec![Error::TsUnacceptable]);
    assert_eq!(w.gw_child_ups(), 0);
}

#[test]
fn a_replayed_ike_sa_init_creates_nothing() {
    let mut w = World::new();
    w.slots.admit(1);
    let a = w.home(1, router_id(1), psk(1));
    w.connect(a);
    assert_eq!(w.gw.sa_count(), 1);
    let (src, dst, init) = w.to_gw[0].clone();
    let e = w.gw.handle_datagram(w.now, src, dst, &init, &w.rng);
    assert!(matches!(e, Err(Error::ReplayedInit(_))), "{e:?}");
    assert!(w.gw.poll_output().is_none());
    assert_eq!(w.gw.sa_count(), 1);
    assert_eq!(w.gw_child_ups(), 1);
}

#[test]
fn a_router_whose_slot_ended_is_refused_on_its_next_attempt() {
    let mut w = World::new();
    w.slots.admit(1);
    let a = w.home(1, router_id(1), psk(1));
    w.connect(a);
    assert!(w.homes[a].rt.is_established());
    // The request ended: the gateway's lookup forgets the router.
    w.slots.0.lock().unwrap().clear();
    let b = w.home(1, router_id(1), psk(1));
    w.connect(b);
    assert_eq!(w.gw_errors, vec![Error::UnknownIdentity]);
    assert!(refused_with_authentication_failed(&w.homes[b]));
    assert_eq!(w.gw_child_ups(), 1, "only the first tunnel's SA pair");
}

#[test]
fn one_routers_restart_does_not_take_its_nat_neighbours_sa() {
    let mut w = World::new();
    w.slots.admit(1);
    w.slots.admit(2);
    let a = w.home(1, router_id(1), psk(1));
    let b = w.home(2, router_id(2), psk(2));
    w.connect(a);
    w.connect(b);
    // Router 1 restarts: a fresh IKE SA with INITIAL_CONTACT, from the
    // same public address as router 2.
    let a2 = w.home(1, router_id(1), psk(1));
    w.connect(a2);
    assert!(w.gw_errors.is_empty(), "{:?}", w.gw_errors);
    let downs = w
        .gw_events
        .iter()
        .filter(|e| matches!(e, Event::TunnelDown { .. }))
        .count();
    assert_eq!(downs, 1, "only router 1's old SA went: {:?}", w.gw_events);
    assert!(w.homes[b].rt.is_established());
    assert_eq!(w.gw.sa_count(), 2);
}
