//! Issue 17 item 4: NAT rebinding. A router dialled in from behind a
//! carrier NAT; the NAT forgets its mapping (timed out, flushed) and the
//! router's next datagram leaves from a new public port. The gateway must
//! follow on an authenticated IKE message (RFC 7296 2.23) or on ESP the
//! kernel authenticated (XFRM mapping event, `esp_moved`), and report the
//! CHILD SAs whose encapsulation must move; a forged or replayed datagram
//! from the new port must move nothing. In memory: bytes and time in.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ring::rand::SystemRandom;
use vpnnat_ike::{
    Datagram, Error, Event, Identity, Initiator, InitiatorConfig, Output, PeerLookup, Responder, ResponderConfig,
    SaConfig, Secret, TrafficSelector,
};

const GW: &str = "198.51.100.21:500";
const PUBLIC: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 50);
const INSIDE: Ipv4Addr = Ipv4Addr::new(100, 64, 7, 1);

fn center() -> Vec<TrafficSelector> {
    vec![TrafficSelector::subnet(Ipv4Addr::new(172, 16, 0, 0), 24)]
}
fn vpnnat() -> Vec<TrafficSelector> {
    vec![TrafficSelector::host(Ipv4Addr::new(10, 64, 0, 2))]
}
fn router_id() -> Identity {
    Identity::key_id(b"router-1")
}
fn psk() -> Secret {
    Secret::from_slice(b"router-1 pre-shared key, 32 b!!!")
}
fn public(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(PUBLIC), port)
}

#[derive(Debug)]
struct OneRouter;

impl PeerLookup for OneRouter {
    fn config_for(&self, idi: &Identity) -> Option<Arc<SaConfig>> {
        (*idi == router_id()).then(|| {
            let mut c = SaConfig::new(psk(), Identity::fqdn("gw1.center.example"), center(), vpnnat());
            c.remote_id = Some(router_id());
            Arc::new(c)
        })
    }
}

/// A `PeerMoved`: from, to, the CHILD SAs `(inbound, outbound)`.
type Move = (SocketAddr, SocketAddr, Vec<(u32, u32)>);

/// The gateway, one router, and a masquerading NAT between them whose
/// mapping of the router's port 4500 can change.
struct Net {
    gw: Responder,
    rt: Initiator,
    /// Router's inside port -> public port.
    nat: HashMap<u16, u16>,
    gw_events: Vec<Event>,
    gw_errors: Vec<Error>,
    rt_errors: Vec<Error>,
    /// What the gateway sent to a public port the NAT has no mapping for.
    lost: Vec<Datagram>,
    /// Every datagram the router sent, as the gateway received it.
    to_gw: Vec<(SocketAddr, SocketAddr, Vec<u8>)>,
    now: Instant,
    rng: SystemRandom,
}

impl Net {
    fn established() -> Self {
        let rng = SystemRandom::new();
        let now = Instant::now();
        let mut template = SaConfig::new(
            Secret::from_slice(b"never used: every SA takes its peer's own"),
            Identity::fqdn("gw1.center.example"),
            center(),
            center(),
        );
        template.peer_lookup = Some(Arc::new(OneRouter));
        let gw = Responder::new(ResponderConfig::by_identity(template), now, &rng).unwrap();
        let mut sa = SaConfig::new(psk(), router_id(), vpnnat(), center());
        sa.remote_id = Some(Identity::fqdn("gw1.center.example"));
        let rt = Initiator::new(InitiatorConfig {
            local: SocketAddr::new(IpAddr::V4(INSIDE), 500),
            peer: GW.parse().unwrap(),
            sa,
        });
        let mut n = Net {
            gw,
            rt,
            nat: HashMap::from([(500, 40_000), (4500, 40_001)]),
            gw_events: Vec::new(),
            gw_errors: Vec::new(),
            rt_errors: Vec::new(),
            lost: Vec::new(),
            to_gw: Vec::new(),
            now,
            rng,
        };
        n.rt.connect(n.now, &n.rng).unwrap();
        n.run();
        assert!(n.rt.is_established() && n.gw.is_established());
        assert!(n.gw_errors.is_empty(), "{:?}", n.gw_errors);
        n
    }

    /// The NAT forgot the router's port 4500 mapping; its next datagram
    /// from there leaves from `port`.
    fn rebind(&mut self, port: u16) {
        self.nat.insert(4500, port);
    }

    fn deliver_to_gw(&mut self, src: SocketAddr, dst: SocketAddr, payload: &[u8]) {
        self.to_gw.push((src, dst, payload.to_vec()));
        if let Err(e) = self.gw.handle_datagram(self.now, src, dst, payload, &self.rng) {
            self.gw_errors.push(e);
        }
    }

    fn run(&mut self) {
        loop {
            let mut moved = false;
            while let Some(o) = self.rt.poll_output() {
                if let Output::Send(d) = o {
                    moved = true;
                    let src = public(self.nat[&d.src.port()]);
                    self.deliver_to_gw(src, d.dst, &d.payload);
                }
            }
            while let Some(o) = self.gw.poll_output() {
                match o {
                    Output::Event(e) => self.gw_events.push(e),
                    Output::Send(d) => {
                        moved = true;
                        let inside = self.nat.iter().find(|(_, p)| **p == d.dst.port()).map(|(i, _)| *i);
                        match inside {
                            Some(port) if d.dst.ip() == IpAddr::V4(PUBLIC) => {
                                let dst = SocketAddr::new(IpAddr::V4(INSIDE), port);
                                if let Err(e) = self.rt.handle_datagram(self.now, d.src, dst, &d.payload, &self.rng) {
                                    self.rt_errors.push(e);
                                }
                            }
                            // A NAT drops what matches no mapping.
                            _ => self.lost.push(d),
                        }
                    }
                }
            }
            if !moved {
                break;
            }
        }
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        self.gw.poll_timers(self.now);
        self.rt.poll_timers(self.now);
        self.run();
    }

    fn moves(&self) -> Vec<Move> {
        self.gw_events
            .iter()
            .filter_map(|e| match e {
                Event::PeerMoved { from, to, children, .. } => Some((*from, *to, children.clone())),
                _ => None,
            })
            .collect()
    }

    /// The gateway's CHILD SA pair `(inbound, outbound)` and its UDP
    /// encapsulation `(sport, dport)` at creation.
    fn gw_child(&self) -> ((u32, u32), (u16, u16)) {
        self.gw_events
            .iter()
            .find_map(|e| match e {
                Event::ChildSaUp(c) => Some(((c.inbound_spi, c.outbound_spi), c.encap.expect("ESP-in-UDP"))),
                _ => None,
            })
            .unwrap()
    }

    /// The gateway asks for liveness now; where did the request go?
    fn gw_dpd_reaches_router(&mut self) -> bool {
        let lost = self.lost.len();
        self.gw.check_liveness(self.now, &self.rng).unwrap();
        self.run();
        self.lost.len() == lost
    }
}

#[test]
fn an_authenticated_ike_request_from_a_new_port_moves_the_peer_and_its_child_sas() {
    let mut n = Net::established();
    let (pair, encap) = n.gw_child();
    assert_eq!(encap, (4500, 40_001));
    n.rebind(40_777);
    // The router's own liveness check is the first datagram after the
    // NAT forgot it: it leaves from the new port.
    n.rt.check_liveness(n.now, &n.rng).unwrap();
    n.run();
    assert!(n.gw_errors.is_empty(), "{:?}", n.gw_errors);
    assert_eq!(n.moves(), vec![(public(40_001), public(40_777), vec![pair])]);
    assert!(
        n.rt_errors.is_empty() && n.lost.is_empty(),
        "the answer went to the new port"
    );
    // From now on the gateway's own requests go there too.
    assert!(n.gw_dpd_reaches_router());
    assert_eq!(n.moves().len(), 1, "one move, reported once");
}

#[test]
fn a_request_lost_to_the_old_port_is_retransmitted_to_the_new_one() {
    let mut n = Net::established();
    n.rebind(40_777);
    // The gateway speaks first: its DPD goes to the forgotten mapping.
    assert!(!n.gw_dpd_reaches_router());
    // Then the router's DPD comes from the new port and the gateway's
    // next retransmission follows it: the SA lives on.
    n.rt.check_liveness(n.now, &n.rng).unwrap();
    n.run();
    assert_eq!(n.moves().len(), 1);
    let lost = n.lost.len();
    n.advance(Duration::from_secs(2));
    assert_eq!(n.lost.len(), lost, "the retransmission reached the router");
    for _ in 0..10 {
        n.advance(Duration::from_secs(30));
    }
    assert!(n.gw.is_established() && n.rt.is_established());
    assert!(!n.gw_events.iter().any(|e| matches!(e, Event::TunnelDown { .. })));
}

#[test]
fn a_forged_ike_message_from_a_new_port_moves_nothing() {
    let mut n = Net::established();
    // A genuine DPD request of the router, captured and altered in its
    // integrity check value, sent from elsewhere.
    n.rt.check_liveness(n.now, &n.rng).unwrap();
    let Some(Output::Send(d)) = n.rt.poll_output() else {
        panic!("a DPD request")
    };
    let mut forged = d.payload.clone();
    let last = forged.len() - 1;
    forged[last] ^= 0x01;
    let before = n.gw_errors.len();
    n.deliver_to_gw(public(40_666), d.dst, &forged);
    n.run();
    assert_eq!(n.gw_errors.len(), before + 1, "refused: {:?}", n.gw_errors);
    assert!(n.moves().is_empty());
    // A forged "ESP" report cannot name an SA that is not ours either.
    assert_eq!(
        n.gw.esp_moved(0xdead_beef, public(40_666)),
        Err(Error::UnknownChild(0xdead_beef))
    );
    assert!(n.moves().is_empty());
    // The gateway still talks to the router where it really is.
    assert!(n.gw_dpd_reaches_router());
}

#[test]
fn a_nat_keepalive_from_a_new_port_moves_nothing() {
    let mut n = Net::established();
    // Anyone can send the one byte 0xff to port 4500: not authenticated.
    let gw_natt = SocketAddr::new(GW.parse::<SocketAddr>().unwrap().ip(), 4500);
    n.deliver_to_gw(public(40_666), gw_natt, &[0xff]);
    n.run();
    assert!(n.gw_errors.is_empty() && n.moves().is_empty());
    assert!(n.gw_dpd_reaches_router());
}

#[test]
fn a_replayed_ike_message_from_a_new_port_moves_nothing() {
    let mut n = Net::established();
    // A genuine exchange from the router's real port, recorded.
    n.rt.check_liveness(n.now, &n.rng).unwrap();
    n.run();
    assert!(n.gw_errors.is_empty());
    let (_, dst, dpd) = n.to_gw.last().cloned().unwrap();
    let (_, _, auth) = n.to_gw[1].clone();
    // An attacker replays the last request and the IKE_AUTH from its own
    // address: authentic bytes, but not new.
    n.deliver_to_gw(public(40_666), dst, &dpd);
    n.deliver_to_gw(public(40_666), dst, &auth);
    n.run();
    assert!(n.moves().is_empty(), "{:?}", n.moves());
    assert!(
        n.lost.is_empty(),
        "the retransmitted answer went to the real router: {:?}",
        n.lost
    );
    assert!(n.gw_dpd_reaches_router());
}

#[test]
fn esp_from_a_new_port_moves_the_peer_once() {
    let mut n = Net::established();
    let (pair, _) = n.gw_child();
    n.rebind(40_555);
    // The kernel reports the router's ESP from the new port (an XFRM
    // mapping event), once per packet until the SA is moved.
    n.gw.esp_moved(pair.0, public(40_555)).unwrap();
    n.gw.esp_moved(pair.0, public(40_555)).unwrap();
    n.run();
    assert_eq!(n.moves(), vec![(public(40_001), public(40_555), vec![pair])]);
    // IKE follows as well.
    assert!(n.gw_dpd_reaches_router());
    // The outbound SPI is not an inbound SA of ours: not a mapping.
    assert_eq!(n.gw.esp_moved(pair.1, public(40_556)), Err(Error::UnknownChild(pair.1)));
}

#[test]
fn a_move_of_the_address_as_well_is_followed() {
    let mut n = Net::established();
    let (pair, _) = n.gw_child();
    let elsewhere = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 77)), 1_024);
    n.gw.esp_moved(pair.0, elsewhere).unwrap();
    n.run();
    assert_eq!(n.moves(), vec![(public(40_001), elsewhere, vec![pair])]);
    // (The NAT of this test has one address: the gateway now talks to
    // the other one, as it should.)
    assert!(!n.gw_dpd_reaches_router());
    assert_eq!(n.lost.last().map(|d| d.dst), Some(elsewhere));
}
