//! Interoperability with strongSwan's charon over real UDP sockets.
//!
//! Not part of a plain `cargo test` (`test = false` in Cargo.toml): it needs
//! root, a network namespace and charon. `scripts/test.sh` runs it through
//! `crates/ike/testdata/interop-strongswan.sh`, which sets up a namespace,
//! starts charon with a PSK configuration and runs these tests with
//! `VPNNAT_IKE_INTEROP=1` (charon on ports 1500/14500, we on 500/4500).
//! The socket loop here is test scaffolding;
//! the library itself does no I/O.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use ring::rand::SystemRandom;
use vpnnat_ike::{
    Error, Event, Identity, Initiator, InitiatorConfig, Output, Responder, ResponderConfig, SaConfig, Secret,
    TrafficSelector,
};

const CHARON: &str = "127.0.0.1";
const OURS: &str = "127.0.0.2";
const PSK: &[u8] = b"interop pre-shared key 0123456789";

struct Sockets {
    s500: UdpSocket,
    s4500: UdpSocket,
}

impl Sockets {
    fn bind() -> Self {
        let s500 = UdpSocket::bind((OURS, 500)).unwrap();
        let s4500 = UdpSocket::bind((OURS, 4500)).unwrap();
        s500.set_nonblocking(true).unwrap();
        s4500.set_nonblocking(true).unwrap();
        Self { s500, s4500 }
    }

    fn send(&self, d: &vpnnat_ike::Datagram) {
        let s = if d.is_nat_t() { &self.s4500 } else { &self.s500 };
        s.send_to(&d.payload, d.dst).unwrap();
    }

    fn recv(&self) -> Vec<(SocketAddr, SocketAddr, Vec<u8>)> {
        let mut out = Vec::new();
        let mut buf = [0u8; 65536];
        for s in [&self.s500, &self.s4500] {
            while let Ok((n, src)) = s.recv_from(&mut buf) {
                out.push((src, s.local_addr().unwrap(), buf[..n].to_vec()));
            }
        }
        out
    }
}

/// Refuses to run outside the script's namespace, loudly: a silent pass
/// would hide that nothing was tested.
fn require_interop_env() {
    assert!(
        std::env::var_os("VPNNAT_IKE_INTEROP").is_some(),
        "run through crates/ike/testdata/interop-strongswan.sh (needs charon in a private namespace)"
    );
}

fn ts(s: &str, len: u8) -> TrafficSelector {
    TrafficSelector::subnet(s.parse().unwrap(), len)
}

/// Our gateway (initiator) against charon as the router (responder).
#[test]
fn our_initiator_against_charon() {
    require_interop_env();
    let rng = SystemRandom::new();
    let socks = Sockets::bind();
    let mut sa = SaConfig::new(
        Secret::from_slice(PSK),
        Identity::fqdn("gw1.center.example"),
        vec![ts("10.1.0.0", 16)],
        vec![ts("100.64.0.5", 32)],
    );
    sa.remote_id = Some(Identity::key_id(b"router-17"));
    let mut gw = Initiator::new(InitiatorConfig {
        local: format!("{OURS}:500").parse().unwrap(),
        peer: format!("{CHARON}:1500").parse().unwrap(),
        sa,
    });
    gw.connect(Instant::now(), &rng).unwrap();
    let (events, errors) = drive(&socks, &mut gw, &rng, Duration::from_secs(10), |ev| {
        matches!(ev, Event::TunnelUp { .. } | Event::TunnelDown { .. })
    });
    eprintln!("events: {events:#?}\nerrors: {errors:?}");
    assert!(
        !errors
            .iter()
            .any(|e| matches!(e, Error::AuthenticationFailed | Error::Keys(_))),
        "{errors:?}"
    );
    // With a kernel that has rfc4106 the CHILD SA comes up; without it
    // charon authenticates us and then refuses the CHILD SA.
    assert!(
        events.iter().any(|e| matches!(e, Event::TunnelUp { .. }))
            || errors.iter().any(|e| matches!(e, Error::PeerError(_))),
        "{events:?} {errors:?}"
    );
}

/// charon as the gateway (initiator) against our responder. The script
/// starts `swanctl --initiate` once this test listens.
#[test]
fn charon_against_our_responder() {
    require_interop_env();
    let rng = SystemRandom::new();
    let socks = Sockets::bind();
    let mut sa = SaConfig::new(
        Secret::from_slice(PSK),
        Identity::key_id(b"router-17"),
        vec![ts("100.64.0.0", 24)],
        vec![ts("10.0.0.0", 8)],
    );
    sa.remote_id = Some(Identity::fqdn("gw1.center.example"));
    let mut rt = Responder::new(ResponderConfig::new(CHARON.parse().unwrap(), sa), Instant::now(), &rng).unwrap();
    std::fs::write("/tmp/ike-interop/responder-ready", b"1").ok();
    // charon installs no CHILD SA here if the kernel lacks rfc4106 and
    // deletes it right away; wait for that too.
    let (events, errors) = drive(&socks, &mut rt, &rng, Duration::from_secs(15), |ev| {
        matches!(ev, Event::TunnelUp { .. })
    });
    eprintln!("events: {events:#?}\nerrors: {errors:?}");
    assert!(
        !errors
            .iter()
            .any(|e| matches!(e, Error::AuthenticationFailed | Error::Keys(_) | Error::Codec(_))),
        "{errors:?}"
    );
    assert!(events.iter().any(|e| matches!(e, Event::TunnelUp { .. })), "{events:?}");

    // Liveness check and an IKE SA rekey started by us.
    let rekeyed = |ev: &Event| matches!(ev, Event::IkeSaRekeyed { .. });
    rt.check_liveness(Instant::now(), &rng).unwrap();
    rt.rekey_ike(Instant::now(), &rng).unwrap();
    let (events, errors) = drive(&socks, &mut rt, &rng, Duration::from_secs(8), rekeyed);
    eprintln!("our rekey: {events:?} {errors:?}");
    assert!(errors.is_empty(), "{errors:?}");
    assert!(events.iter().any(rekeyed), "{events:?}");
    let spis = rt.ike_spis();

    // An IKE SA rekey started by charon.
    std::fs::write("/tmp/ike-interop/rekey-now", b"1").ok();
    let (events, errors) = drive(&socks, &mut rt, &rng, Duration::from_secs(8), rekeyed);
    eprintln!("charon's rekey: {events:?} {errors:?}");
    assert!(errors.is_empty(), "{errors:?}");
    assert!(events.iter().any(rekeyed), "{events:?}");
    assert_ne!(rt.ike_spis(), spis);

    // And a clean close.
    rt.close(Instant::now(), &rng).unwrap();
    let (events, errors) = drive(&socks, &mut rt, &rng, Duration::from_secs(5), |e| {
        matches!(e, Event::TunnelDown { .. })
    });
    assert!(errors.is_empty(), "{errors:?}");
    assert!(
        events.iter().any(|e| matches!(
            e,
            Event::TunnelDown {
                reason: vpnnat_ike::DownReason::Closed,
                ..
            }
        )),
        "{events:?}"
    );
}

/// What the socket loop needs from either endpoint.
trait Endpoint {
    fn input(
        &mut self,
        now: Instant,
        src: SocketAddr,
        dst: SocketAddr,
        p: &[u8],
        rng: &SystemRandom,
    ) -> Result<(), Error>;
    fn timers(&mut self, now: Instant);
    fn output(&mut self) -> Option<Output>;
}

impl Endpoint for Initiator {
    fn input(
        &mut self,
        now: Instant,
        src: SocketAddr,
        dst: SocketAddr,
        p: &[u8],
        rng: &SystemRandom,
    ) -> Result<(), Error> {
        self.handle_datagram(now, src, dst, p, rng)
    }
    fn timers(&mut self, now: Instant) {
        self.poll_timers(now)
    }
    fn output(&mut self) -> Option<Output> {
        self.poll_output()
    }
}

impl Endpoint for Responder {
    fn input(
        &mut self,
        now: Instant,
        src: SocketAddr,
        dst: SocketAddr,
        p: &[u8],
        rng: &SystemRandom,
    ) -> Result<(), Error> {
        self.handle_datagram(now, src, dst, p, rng)
    }
    fn timers(&mut self, now: Instant) {
        self.poll_timers(now)
    }
    fn output(&mut self) -> Option<Output> {
        self.poll_output()
    }
}

fn drive(
    socks: &Sockets,
    ep: &mut dyn Endpoint,
    rng: &SystemRandom,
    limit: Duration,
    done: impl Fn(&Event) -> bool,
) -> (Vec<Event>, Vec<Error>) {
    let start = Instant::now();
    let mut events = Vec::new();
    let mut errors = Vec::new();
    let mut stop_at: Option<Instant> = None;
    while start.elapsed() < limit {
        let now = Instant::now();
        ep.timers(now);
        while let Some(o) = ep.output() {
            match o {
                Output::Send(d) => socks.send(&d),
                Output::Event(e) => {
                    if done(&e) && stop_at.is_none() {
                        stop_at = Some(now + Duration::from_millis(1500));
                    }
                    events.push(e);
                }
            }
        }
        for (src, dst, p) in socks.recv() {
            if let Err(e) = ep.input(Instant::now(), src, dst, &p, rng) {
                errors.push(e);
            }
        }
        if stop_at.is_some_and(|t| Instant::now() > t) {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    (events, errors)
}
