//! Issue 17: routers dial into the gateway's driver, which admits them by
//! IKE identity (not address) with each one's own PSK; over loopback UDP
//! with a recording fake instead of the kernel's XFRM (the host has no ESP).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashMap;
use std::net::{Ipv4Addr, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc::UnboundedReceiver;
use vpnnat_ike::{DownReason, Identity, PeerLookup, SaConfig, Secret, TrafficSelector};
use vpnnat_ike_driver::{
    DialInConfig, DriverConfig, DriverEvent, DriverHandle, IkeDriver, Ports, RecordingInstaller, TunnelConfig,
};

const GW: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);

struct Side {
    h: DriverHandle,
    ev: UnboundedReceiver<DriverEvent>,
    rec: RecordingInstaller,
    seen: Vec<DriverEvent>,
}

impl Side {
    async fn wait(&mut self, what: &str, f: impl Fn(&DriverEvent) -> bool) -> DriverEvent {
        common::wait_event(&mut self.ev, &mut self.seen, Duration::from_secs(10), what, f).await
    }
}

fn ports() -> Ports {
    let a = UdpSocket::bind((GW, 0)).unwrap();
    let b = UdpSocket::bind((GW, 0)).unwrap();
    Ports {
        ike: a.local_addr().unwrap().port(),
        natt: b.local_addr().unwrap().port(),
    }
}

async fn side(local: Ipv4Addr, ports: Ports, identity: Option<Identity>) -> Option<Side> {
    let mut cfg = DriverConfig::new(local);
    cfg.ports = ports;
    cfg.kernel_events = false;
    cfg.shutdown_grace = Duration::from_secs(2);
    if let Some(id) = identity {
        cfg.identity = id;
    }
    let rec = RecordingInstaller::new();
    let (h, ev) = IkeDriver::start(cfg, Box::new(rec.clone())).await.ok()?;
    Some(Side {
        h,
        ev,
        rec,
        seen: Vec::new(),
    })
}

fn ts(a: &str, len: u8) -> TrafficSelector {
    TrafficSelector::subnet(a.parse().unwrap(), len)
}

fn id(n: u8) -> Identity {
    Identity::key_id(format!("vpnnat-router:home-{n}").as_bytes())
}

fn psk(n: u8) -> Secret {
    Secret::from_slice(format!("home-{n}'s own pre-shared key..").as_bytes())
}

fn grant(n: u8) -> TrafficSelector {
    TrafficSelector::host(Ipv4Addr::new(10, 64, 0, n))
}

fn reqid(n: u8) -> u32 {
    0x5650_0100 + u32::from(n)
}

/// The gateway's admitted routers (gatewayd's DialInTable in miniature).
#[derive(Debug, Default)]
struct Admitted(Mutex<HashMap<Vec<u8>, u8>>);

impl PeerLookup for Admitted {
    fn config_for(&self, idi: &Identity) -> Option<Arc<SaConfig>> {
        let n = *self.0.lock().unwrap().get(&idi.data)?;
        let mut c = SaConfig::new(psk(n), Identity::ipv4(GW), vec![ts("172.16.0.0", 24)], vec![grant(n)]);
        c.remote_id = Some(id(n));
        Some(Arc::new(c))
    }
}

fn n_of(identity: &Identity) -> Option<u8> {
    String::from_utf8_lossy(&identity.data)
        .strip_prefix("vpnnat-router:home-")?
        .parse()
        .ok()
}

/// The router's end: it initiates toward the gateway it was given.
fn dial(n: u8, key: Secret) -> TunnelConfig {
    TunnelConfig {
        peer: GW,
        psk: key,
        local_ts: vec![grant(n)],
        remote_ts: vec![ts("172.16.0.0", 24)],
        reqid: 0x5650_0900 + u32::from(n),
        remote_id: Some(Identity::ipv4(GW)),
        log_label: format!("terminal=home-{n}"),
    }
}

struct World {
    gw: Side,
    admitted: Arc<Admitted>,
    routers: Vec<Side>,
}

async fn world(homes: u8) -> World {
    for _ in 0..20 {
        let p = ports();
        let Some(gw) = side(GW, p, None).await else { continue };
        let mut routers = Vec::new();
        for n in 1..=homes {
            if let Some(r) = side(Ipv4Addr::new(127, 0, 0, 1 + n), p, Some(id(n))).await {
                routers.push(r);
            }
        }
        if routers.len() != usize::from(homes) {
            continue;
        }
        let admitted = Arc::new(Admitted::default());
        gw.h.listen(DialInConfig {
            lookup: admitted.clone(),
            reqid_of: Arc::new(|i: &Identity| n_of(i).map(reqid)),
            local_ts: vec![ts("172.16.0.0", 24)],
        })
        .await
        .unwrap();
        return World { gw, admitted, routers };
    }
    panic!("no free ports on loopback");
}

fn dial_in_up(n: u8) -> impl Fn(&DriverEvent) -> bool {
    move |e| matches!(e, DriverEvent::DialInUp { identity, .. } if *identity == id(n))
}

#[tokio::test]
async fn admitted_routers_dial_in_each_with_its_own_sas() {
    let mut w = world(2).await;
    w.admitted.0.lock().unwrap().insert(id(1).data, 1);
    w.admitted.0.lock().unwrap().insert(id(2).data, 2);
    for n in [1u8, 2] {
        w.routers[usize::from(n - 1)].h.connect(dial(n, psk(n))).await.unwrap();
        w.routers[usize::from(n - 1)]
            .wait("router up", |e| matches!(e, DriverEvent::TunnelUp { .. }))
            .await;
        w.gw.wait("dial-in up", dial_in_up(n)).await;
    }
    let sas = w.gw.rec.installed();
    for n in [1u8, 2] {
        let mine: Vec<_> = sas.iter().filter(|s| s.reqid == reqid(n)).collect();
        assert_eq!(mine.len(), 2, "one SA pair for home-{n}: {sas:?}");
    }
    // The VPN of home-1 ends: the gateway hangs up on it alone.
    w.gw.h.hang_up(id(1)).await.unwrap();
    w.gw.wait(
        "dial-in down",
        |e| matches!(e, DriverEvent::DialInDown { identity, reason: DownReason::Closed } if *identity == id(1)),
    )
    .await;
    w.routers[0]
        .wait("router 1 down", |e| matches!(e, DriverEvent::TunnelDown { .. }))
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let sas = w.gw.rec.installed();
    assert!(sas.iter().all(|s| s.reqid != reqid(1)), "{sas:?}");
    assert_eq!(sas.iter().filter(|s| s.reqid == reqid(2)).count(), 2);
    assert!(w.routers[1].h.is_up(GW));
    w.gw.h.shutdown().await;
    assert!(w.gw.rec.installed().is_empty(), "shutdown leaves nothing");
}

#[tokio::test]
async fn a_router_the_gateway_does_not_hold_or_with_a_wrong_key_is_refused() {
    let mut w = world(2).await;
    w.admitted.0.lock().unwrap().insert(id(1).data, 1);
    // home-2 holds no slot here.
    w.routers[1].h.connect(dial(2, psk(2))).await.unwrap();
    w.routers[1]
        .wait("refusal", |e| {
            matches!(
                e,
                DriverEvent::TunnelDown {
                    reason: DownReason::AuthenticationFailed,
                    ..
                }
            ) || matches!(e, DriverEvent::Rejected { .. })
        })
        .await;
    // home-1 with home-2's key.
    w.routers[0].h.connect(dial(1, psk(2))).await.unwrap();
    w.gw.wait(
        "wrong key refused",
        |e| matches!(e, DriverEvent::Rejected { error, .. } if error == "authentication failed"),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(w.gw.rec.ops().is_empty(), "nothing installed: {:?}", w.gw.rec.ops());
    assert!(!w.gw.seen.iter().any(|e| matches!(e, DriverEvent::DialInUp { .. })));
    let unknown =
        w.gw.seen
            .iter()
            .any(|e| matches!(e, DriverEvent::Rejected { error, .. } if error == "unknown peer identity"));
    assert!(unknown, "{:?}", w.gw.seen);
}
