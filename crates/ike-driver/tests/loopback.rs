//! Two drivers over loopback UDP (127.0.0.1 = gateway, 127.0.0.2 = router),
//! unprivileged ports, a recording fake instead of the kernel's XFRM.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers outside #[test] fns

mod common;

use std::net::{Ipv4Addr, UdpSocket};
use std::time::Duration;

use tokio::sync::mpsc::UnboundedReceiver;
use vpnnat_ike::{DownReason, Secret, TrafficSelector};
use vpnnat_ike_driver::{
    CountingSpis, DriverConfig, DriverError, DriverEvent, DriverHandle, Expire, IkeDriver, Ports, RecordingInstaller,
    Request, SaOp, TunnelConfig,
};

const GW: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const RT: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const REQID: u32 = 0x5650_0007;

struct Side {
    h: DriverHandle,
    ev: UnboundedReceiver<DriverEvent>,
    rec: RecordingInstaller,
    seen: Vec<DriverEvent>,
}

impl Side {
    /// Waits for an event matching `f` (remembering everything seen).
    async fn wait(&mut self, what: &str, f: impl Fn(&DriverEvent) -> bool) -> DriverEvent {
        common::wait_event(&mut self.ev, &mut self.seen, Duration::from_secs(10), what, f).await
    }
}

fn free_port_pair() -> Ports {
    // Ask the kernel for two free ports on 127.0.0.1 and hope they are free
    // on 127.0.0.2 and 127.0.0.3 too (retried by the caller).
    let a = UdpSocket::bind((GW, 0)).unwrap();
    let b = UdpSocket::bind((GW, 0)).unwrap();
    Ports {
        ike: a.local_addr().unwrap().port(),
        natt: b.local_addr().unwrap().port(),
    }
}

async fn side(local: Ipv4Addr, ports: Ports) -> Option<Side> {
    side_with(local, ports, None).await
}

async fn side_with(local: Ipv4Addr, ports: Ports, spis: Option<CountingSpis>) -> Option<Side> {
    let mut cfg = DriverConfig::new(local);
    cfg.ports = ports;
    cfg.kernel_events = false;
    cfg.shutdown_grace = Duration::from_secs(2);
    let rec = RecordingInstaller::new();
    let (h, ev) = match spis {
        None => IkeDriver::start(cfg, Box::new(rec.clone())).await.ok()?,
        Some(s) => IkeDriver::start_with_spis(cfg, Box::new(rec.clone()), std::sync::Arc::new(s))
            .await
            .ok()?,
    };
    Some(Side {
        h,
        ev,
        rec,
        seen: Vec::new(),
    })
}

async fn pair() -> (Side, Side, Ports) {
    for _ in 0..20 {
        let ports = free_port_pair();
        if let (Some(g), Some(r)) = (side(GW, ports).await, side(RT, ports).await) {
            return (g, r, ports);
        }
    }
    panic!("no free port pair on loopback");
}

fn ts(a: &str, len: u8) -> TrafficSelector {
    TrafficSelector::subnet(a.parse().unwrap(), len)
}

fn gw_tunnel(psk: &[u8]) -> TunnelConfig {
    TunnelConfig {
        peer: RT,
        psk: Secret::from_slice(psk),
        local_ts: vec![ts("172.16.0.0", 24)],
        remote_ts: vec![ts("10.64.0.5", 32)],
        reqid: REQID,
        remote_id: None,
        log_label: "terminal=gw-side".into(),
    }
}

fn rt_tunnel(psk: &[u8]) -> TunnelConfig {
    TunnelConfig {
        peer: GW,
        psk: Secret::from_slice(psk),
        local_ts: vec![ts("10.64.0.0", 16)],
        remote_ts: vec![ts("172.16.0.0", 24)],
        reqid: REQID + 1,
        remote_id: None,
        log_label: String::new(),
    }
}

fn is_up(e: &DriverEvent) -> bool {
    matches!(e, DriverEvent::TunnelUp { .. })
}

async fn up_pair() -> (Side, Side) {
    let (mut g, mut r, _) = pair().await;
    r.h.accept(rt_tunnel(b"the right key")).await.unwrap();
    g.h.connect(gw_tunnel(b"the right key")).await.unwrap();
    assert_eq!(
        g.wait("gw up", is_up).await,
        DriverEvent::TunnelUp { peer: RT, nat: false }
    );
    assert_eq!(
        r.wait("rt up", is_up).await,
        DriverEvent::TunnelUp { peer: GW, nat: false }
    );
    (g, r)
}

#[tokio::test]
async fn tunnel_up_installs_matching_sa_pairs_inbound_first() {
    let (g, r) = up_pair().await;
    let gs = g.rec.installed();
    let rs = r.rec.installed();
    assert_eq!(gs.len(), 2, "{gs:?}");
    assert_eq!(rs.len(), 2, "{rs:?}");
    // Inbound first on each side.
    assert_eq!((gs[0].src, gs[0].dst), (RT, GW));
    assert_eq!((gs[1].src, gs[1].dst), (GW, RT));
    assert_eq!((rs[0].src, rs[0].dst), (GW, RT));
    assert_eq!((rs[1].src, rs[1].dst), (RT, GW));
    // The gateway's outbound SA is the router's inbound one, same key.
    assert_eq!(gs[1].spi, rs[0].spi);
    assert_eq!(gs[1].key, rs[0].key);
    assert_eq!(gs[0].spi, rs[1].spi);
    assert_eq!(gs[0].key, rs[1].key);
    assert_eq!(gs[0].key.as_bytes().len(), 36, "aes256gcm16 key || salt");
    assert!(gs.iter().all(|s| s.reqid == REQID && s.encap.is_none()));
    assert!(rs.iter().all(|s| s.reqid == REQID + 1));
    assert!(gs.iter().all(|s| s.lifetime.soft_secs == Some(3000)));
    // The handle's snapshot is what the kernel got.
    assert_eq!(g.h.installed_sas(), gs);
    assert_eq!(r.h.installed_sas(), rs);
    assert!(g.h.is_up(RT) && r.h.is_up(GW));
    // Debug output of the whole record has no key bytes.
    let dbg = format!("{:?}", g.rec.ops());
    assert!(dbg.contains("redacted"));
}

#[tokio::test]
async fn wrong_psk_is_rejected_and_installs_nothing() {
    let (mut g, mut r, _) = pair().await;
    r.h.accept(rt_tunnel(b"the right key")).await.unwrap();
    g.h.connect(gw_tunnel(b"a wrong key")).await.unwrap();
    let down = g.wait("gw down", |e| matches!(e, DriverEvent::TunnelDown { .. })).await;
    assert_eq!(
        down,
        DriverEvent::TunnelDown {
            peer: RT,
            reason: DownReason::AuthenticationFailed
        }
    );
    let rej = r
        .wait("rt rejected", |e| matches!(e, DriverEvent::Rejected { .. }))
        .await;
    let DriverEvent::Rejected { from, error } = rej else {
        unreachable!()
    };
    assert_eq!(from, GW);
    assert!(!error.contains("right key"), "{error}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(g.rec.ops().is_empty(), "{:?}", g.rec.ops());
    assert!(r.rec.ops().is_empty(), "{:?}", r.rec.ops());
    assert!(!r.seen.iter().any(is_up));
}

#[tokio::test]
async fn unknown_peer_is_dropped() {
    let (_g, mut r, ports) = pair().await;
    r.h.accept(rt_tunnel(b"k")).await.unwrap();
    let Some(stranger) = side(Ipv4Addr::new(127, 0, 0, 3), ports).await else {
        return; // port taken on 127.0.0.3: nothing to test
    };
    let mut t = gw_tunnel(b"k");
    t.peer = RT;
    stranger.h.connect(t).await.unwrap();
    let rej = r
        .wait("rt rejected", |e| matches!(e, DriverEvent::Rejected { .. }))
        .await;
    assert!(matches!(rej, DriverEvent::Rejected { from, .. } if from == Ipv4Addr::new(127, 0, 0, 3)));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(r.rec.ops().is_empty());
    assert!(stranger.rec.ops().is_empty());
}

#[tokio::test]
async fn disconnect_deletes_on_both_sides() {
    let (mut g, mut r) = up_pair().await;
    g.h.disconnect(RT).await.unwrap();
    let gd = g.wait("gw down", |e| matches!(e, DriverEvent::TunnelDown { .. })).await;
    assert_eq!(
        gd,
        DriverEvent::TunnelDown {
            peer: RT,
            reason: DownReason::Closed
        }
    );
    let rd = r.wait("rt down", |e| matches!(e, DriverEvent::TunnelDown { .. })).await;
    assert_eq!(
        rd,
        DriverEvent::TunnelDown {
            peer: GW,
            reason: DownReason::DeletedByPeer
        }
    );
    assert!(g.rec.installed().is_empty(), "{:?}", g.rec.ops());
    assert!(r.rec.installed().is_empty(), "{:?}", r.rec.ops());
    assert!(g.h.installed_sas().is_empty() && r.h.installed_sas().is_empty());
    assert!(!g.h.is_up(RT) && !r.h.is_up(GW));
    // The gateway forgot the peer; the router still accepts it again.
    assert!(g.h.disconnect(RT).await.is_err());
    g.h.connect(gw_tunnel(b"the right key")).await.unwrap();
    g.wait("gw up again", is_up).await;
    r.wait("rt up again", is_up).await;
}

#[tokio::test]
async fn soft_expire_rekeys_the_child_sa_make_before_break() {
    let (mut g, mut r) = up_pair().await;
    let old = g.rec.installed();
    let old_in = old[0].id();
    g.h.sa_expired(Expire {
        id: old_in,
        hard: false,
    })
    .unwrap();
    g.wait("gw old child removed", |e| {
        matches!(e, DriverEvent::ChildSaRemoved { .. })
    })
    .await;
    r.wait("rt old child removed", |e| {
        matches!(e, DriverEvent::ChildSaRemoved { .. })
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let gs = g.rec.installed();
    let rs = r.rec.installed();
    assert_eq!(gs.len(), 2, "{:?}", g.rec.ops());
    assert_eq!(rs.len(), 2, "{:?}", r.rec.ops());
    assert!(gs.iter().all(|s| !old.iter().any(|o| o.id() == s.id())));
    // Each side's new outbound is the other's new inbound.
    for s in &gs {
        assert!(rs.iter().any(|x| x.id() == s.id() && x.key == s.key));
    }
    // Make before break: the new SAs were added before the old ones went.
    let ops = g.rec.ops();
    let first_delete = ops.iter().position(|o| matches!(o, SaOp::Delete(_))).unwrap();
    assert_eq!(
        ops.iter()
            .take(first_delete)
            .filter(|o| matches!(o, SaOp::Add(_)))
            .count(),
        4
    );
    assert!(!g.seen.iter().any(|e| matches!(e, DriverEvent::TunnelDown { .. })));
}

#[tokio::test]
async fn traffic_selector_change_renegotiates_the_child_sa() {
    let (mut g, mut r) = up_pair().await;
    g.h.set_traffic_selectors(
        RT,
        vec![ts("172.16.0.0", 24)],
        vec![ts("10.64.0.5", 32), ts("10.64.0.9", 32)],
    )
    .await
    .unwrap();
    g.wait("gw old child removed", |e| {
        matches!(e, DriverEvent::ChildSaRemoved { .. })
    })
    .await;
    r.wait("rt old child removed", |e| {
        matches!(e, DriverEvent::ChildSaRemoved { .. })
    })
    .await;
    assert_eq!(g.rec.installed().len(), 2);
    assert!(g
        .h
        .set_traffic_selectors(Ipv4Addr::new(127, 0, 0, 9), vec![], vec![])
        .await
        .is_err());
}

#[tokio::test]
async fn ike_rekey_keeps_the_child_sas() {
    let (g, r) = up_pair().await;
    let before = g.rec.installed();
    g.h.rekey_ike(RT).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(g.rec.installed(), before);
    // The tunnel still works: a CHILD rekey over the new IKE SA.
    g.h.rekey_child(RT).await.unwrap();
    let mut g = g;
    g.wait("child rekey after IKE rekey", |e| {
        matches!(e, DriverEvent::ChildSaRemoved { .. })
    })
    .await;
    drop(r);
}

#[tokio::test]
async fn shutdown_deletes_the_tunnel_and_every_sa() {
    let (g, mut r) = up_pair().await;
    g.h.shutdown().await;
    assert!(g.rec.installed().is_empty(), "{:?}", g.rec.ops());
    r.wait("rt down", |e| matches!(e, DriverEvent::TunnelDown { .. })).await;
    assert!(r.rec.installed().is_empty());
    assert!(
        g.h.connect(gw_tunnel(b"x")).await.is_err(),
        "stopped driver refuses calls"
    );
}

#[tokio::test]
async fn detached_requests_for_synchronous_owners() {
    let (mut g, mut r, _) = pair().await;
    r.h.request_detached(Request::Accept(rt_tunnel(b"k2"))).unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    g.h.request_detached(Request::Connect(gw_tunnel(b"k2"))).unwrap();
    g.wait("gw up", is_up).await;
    r.wait("rt up", is_up).await;
    r.h.request_detached(Request::Disconnect(GW)).unwrap();
    g.wait("gw down", |e| matches!(e, DriverEvent::TunnelDown { .. })).await;
    r.wait("rt down", |e| matches!(e, DriverEvent::TunnelDown { .. })).await;
    assert!(r.h.installed_sas().is_empty());
    assert!(g.h.installed_sas().is_empty());
}

fn is_down(e: &DriverEvent) -> bool {
    matches!(e, DriverEvent::TunnelDown { .. })
}

fn spis(r: &RecordingInstaller) -> Vec<u32> {
    let mut v: Vec<u32> = r.installed().iter().map(|s| s.spi).collect();
    v.sort_unstable();
    v
}

/// Lets late datagrams and kernel operations settle.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn disconnect_racing_our_child_rekey_leaves_no_sa() {
    let (mut g, mut r) = up_pair().await;
    // The rekey request is in flight (no answer can have come back) when
    // the disconnect arrives.
    let (a, b) = tokio::join!(g.h.rekey_child(RT), g.h.disconnect(RT));
    a.unwrap();
    b.unwrap();
    assert_eq!(
        g.wait("gw down", is_down).await,
        DriverEvent::TunnelDown {
            peer: RT,
            reason: DownReason::Closed
        }
    );
    assert_eq!(
        r.wait("rt down", is_down).await,
        DriverEvent::TunnelDown {
            peer: GW,
            reason: DownReason::DeletedByPeer
        }
    );
    settle().await;
    assert!(g.rec.installed().is_empty(), "gateway kept {:?}", g.rec.installed());
    assert!(r.rec.installed().is_empty(), "router kept {:?}", r.rec.installed());
    assert!(!g.h.is_up(RT));
    assert!(!r.h.is_up(GW));
    assert!(g.h.installed_sas().is_empty());
    // The peer is forgotten.
    assert!(matches!(g.h.disconnect(RT).await, Err(DriverError::UnknownPeer(RT))));
}

#[tokio::test]
async fn disconnect_racing_the_peers_child_rekey_leaves_no_sa() {
    let (mut g, mut r) = up_pair().await;
    // The router's CREATE_CHILD_SA and the gateway's DELETE cross.
    let (a, b) = tokio::join!(r.h.rekey_child(GW), g.h.disconnect(RT));
    a.unwrap();
    b.unwrap();
    g.wait("gw down", is_down).await;
    r.wait("rt down", is_down).await;
    settle().await;
    assert!(g.rec.installed().is_empty(), "gateway kept {:?}", g.rec.installed());
    assert!(r.rec.installed().is_empty(), "router kept {:?}", r.rec.installed());
    assert!(!g.h.is_up(RT));
    assert!(!r.h.is_up(GW));
}

#[tokio::test]
async fn connect_right_after_disconnect_brings_a_new_tunnel_up() {
    let (mut g, mut r) = up_pair().await;
    let (old_g, old_r) = (spis(&g.rec), spis(&r.rec));
    let old_ike = g.h.ike_spis(RT).expect("IKE SA up");
    assert_eq!(r.h.ike_spis(GW), Some(old_ike));
    // No TunnelDown in between: the DELETE is still in flight.
    g.h.disconnect(RT).await.unwrap();
    g.h.connect(gw_tunnel(b"the right key")).await.unwrap();
    assert_eq!(
        g.wait("gw down", is_down).await,
        DriverEvent::TunnelDown {
            peer: RT,
            reason: DownReason::Closed
        }
    );
    g.wait("gw up again", is_up).await;
    r.wait("rt down", is_down).await;
    r.wait("rt up again", is_up).await;
    settle().await;
    let (new_g, new_r) = (spis(&g.rec), spis(&r.rec));
    assert_eq!(new_g.len(), 2, "{new_g:?}");
    assert_eq!(new_r.len(), 2, "{new_r:?}");
    assert!(new_g.iter().all(|s| !old_g.contains(s)), "{old_g:?} -> {new_g:?}");
    assert!(new_r.iter().all(|s| !old_r.contains(s)), "{old_r:?} -> {new_r:?}");
    assert!(g.h.is_up(RT));
    let new_ike = g.h.ike_spis(RT).expect("new IKE SA");
    assert_ne!(new_ike, old_ike);
    assert_eq!(r.h.ike_spis(GW), Some(new_ike));
}

#[tokio::test]
async fn disconnect_connect_disconnect_ends_down_and_forgotten() {
    let (mut g, mut r) = up_pair().await;
    g.h.disconnect(RT).await.unwrap();
    g.h.connect(gw_tunnel(b"the right key")).await.unwrap();
    g.h.disconnect(RT).await.unwrap();
    g.wait("gw down", is_down).await;
    r.wait("rt down", is_down).await;
    settle().await;
    assert!(g.rec.installed().is_empty(), "{:?}", g.rec.installed());
    assert!(r.rec.installed().is_empty(), "{:?}", r.rec.installed());
    assert!(!g.seen.iter().skip_while(|e| !is_down(e)).any(is_up), "{:?}", g.seen);
    assert!(matches!(g.h.disconnect(RT).await, Err(DriverError::UnknownPeer(RT))));
}

#[tokio::test]
async fn ike_spis_follow_the_ike_sa() {
    let (mut g, r) = up_pair().await;
    let before = g.h.ike_spis(RT).expect("IKE SA up");
    assert_eq!(r.h.ike_spis(GW), Some(before));
    g.h.rekey_ike(RT).await.unwrap();
    // The rekey is done when both ends show the same, new SPIs.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (a, b) = (g.h.ike_spis(RT), r.h.ike_spis(GW));
        if a.is_some() && a == b && a != Some(before) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{before:?} -> {a:?} / {b:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    g.h.disconnect(RT).await.unwrap();
    g.wait("gw down", is_down).await;
    assert_eq!(g.h.ike_spis(RT), None);
}

/// A pair whose drivers take inbound SPIs from allocators (as from the
/// kernel's ALLOCSPI).
async fn pair_with_spis() -> (Side, Side, CountingSpis, CountingSpis) {
    let (gs, rs) = (CountingSpis::new(0xc000_0100), CountingSpis::new(0xc100_0100));
    for _ in 0..20 {
        let ports = free_port_pair();
        if let (Some(g), Some(r)) = (
            side_with(GW, ports, Some(gs.clone())).await,
            side_with(RT, ports, Some(rs.clone())).await,
        ) {
            return (g, r, gs, rs);
        }
    }
    panic!("no free port pair on loopback");
}

#[tokio::test]
async fn reserved_inbound_spis_are_completed_not_added() {
    let (mut g, mut r, gs, rs) = pair_with_spis().await;
    r.h.accept(rt_tunnel(b"the right key")).await.unwrap();
    g.h.connect(gw_tunnel(b"the right key")).await.unwrap();
    g.wait("gw up", is_up).await;
    r.wait("rt up", is_up).await;
    settle().await;
    // Each side's inbound SA has the SPI its allocator reserved, and was
    // installed by completing the reservation.
    let (gi, ri) = (g.rec.installed(), r.rec.installed());
    assert_eq!(gs.handed_out(), vec![0xc000_0100]);
    assert_eq!(rs.handed_out(), vec![0xc100_0100]);
    assert_eq!((gi[0].dst, gi[0].spi), (GW, 0xc000_0100));
    assert_eq!((ri[0].dst, ri[0].spi), (RT, 0xc100_0100));
    assert_eq!(g.rec.updated(), vec![gi[0].id()]);
    assert_eq!(r.rec.updated(), vec![ri[0].id()]);
    // Outbound SAs use the peer's reservation, added normally.
    assert_eq!(gi[1].spi, 0xc100_0100);
    assert_eq!(ri[1].spi, 0xc000_0100);
    // A rekey reserves a new SPI on the side that answers and the side
    // that asks.
    g.h.rekey_child(RT).await.unwrap();
    g.wait("old pair removed", |e| matches!(e, DriverEvent::ChildSaRemoved { .. }))
        .await;
    settle().await;
    assert_eq!(gs.handed_out(), vec![0xc000_0100, 0xc000_0101]);
    assert_eq!(rs.handed_out(), vec![0xc100_0100, 0xc100_0101]);
    let gi = g.rec.installed();
    assert_eq!(gi.len(), 2, "{gi:?}");
    assert!(g.rec.updated().contains(&gi[0].id()), "{gi:?}");
    assert_eq!(gi[0].spi, 0xc000_0101);
}

#[tokio::test]
async fn reserved_spi_of_a_failed_auth_is_released() {
    let (mut g, mut r, gs, _rs) = pair_with_spis().await;
    r.h.accept(rt_tunnel(b"the right key")).await.unwrap();
    g.h.connect(gw_tunnel(b"a wrong key")).await.unwrap();
    g.wait("gw down", is_down).await;
    r.wait("rt rejected", |e| matches!(e, DriverEvent::Rejected { .. }))
        .await;
    settle().await;
    // The gateway reserved one SPI for its IKE_AUTH; it is deleted again.
    let reserved = gs.handed_out();
    assert_eq!(reserved.len(), 1);
    assert_eq!(
        g.rec.ops(),
        vec![SaOp::Delete(vpnnat_datapath::SaId {
            dst: GW,
            spi: reserved[0]
        })]
    );
    assert!(g.rec.updated().is_empty());
    // The router installed nothing; whatever it reserved is released too.
    assert!(r.rec.installed().is_empty(), "{:?}", r.rec.ops());
    assert!(
        r.rec.ops().iter().all(|o| matches!(o, SaOp::Delete(_))),
        "{:?}",
        r.rec.ops()
    );
}

/// A router side on its own runtime, so that dropping the runtime is a
/// crash: its tasks stop at once, no DELETE leaves, the sockets close.
fn crashable_side(ports: Ports) -> Option<(tokio::runtime::Runtime, Side)> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let s = rt.block_on(side(RT, ports))?;
        Some((rt, s))
    })
    .join()
    .unwrap()
}

#[tokio::test]
async fn restart_rebuilds_the_tunnel_with_a_peer_that_lost_its_state() {
    let mut found = None;
    for _ in 0..20 {
        let ports = free_port_pair();
        if let Some(g) = side(GW, ports).await {
            if let Some(r) = crashable_side(ports) {
                found = Some((g, r, ports));
                break;
            }
        }
    }
    let (mut g, (rt, mut r), ports) = found.expect("no free port pair on loopback");
    r.h.accept(rt_tunnel(b"the right key")).await.unwrap();
    g.h.connect(gw_tunnel(b"the right key")).await.unwrap();
    g.wait("gw up", is_up).await;
    r.wait("rt up", is_up).await;
    let old = g.rec.installed();
    assert_eq!(old.len(), 2, "{old:?}");

    // The router crashes: nothing tells the gateway, which keeps its SAs.
    // (Its handle lives on: dropping the last handle is a graceful stop,
    // which would send a DELETE if the dying runtime still ran it.)
    rt.shutdown_background();
    let _crashed = r;
    let mut restarted = None;
    for _ in 0..50 {
        if let Some(s) = side(RT, ports).await {
            restarted = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut r2 = restarted.expect("the crashed router's ports were not freed");
    r2.h.accept(rt_tunnel(b"the right key")).await.unwrap();
    assert!(g.h.is_up(RT), "the gateway cannot know yet");
    assert_eq!(g.rec.installed(), old);

    g.h.restart(gw_tunnel(b"the right key")).await.unwrap();
    let down = g
        .wait("gw drops the old", |e| matches!(e, DriverEvent::TunnelDown { .. }))
        .await;
    assert_eq!(
        down,
        DriverEvent::TunnelDown {
            peer: RT,
            reason: DownReason::Restarted
        }
    );
    g.wait("gw up again", is_up).await;
    r2.wait("restarted router up", is_up).await;
    let gs = g.rec.installed();
    let rs = r2.rec.installed();
    assert_eq!(gs.len(), 2, "{:?}", g.rec.ops());
    assert!(
        gs.iter().all(|s| !old.contains(s)),
        "the old SAs are gone: {:?}",
        g.rec.ops()
    );
    // The new pair matches the restarted router's.
    assert_eq!((gs[1].spi, &gs[1].key), (rs[0].spi, &rs[0].key));
    assert_eq!((gs[0].spi, &gs[0].key), (rs[1].spi, &rs[1].key));
    assert!(g.h.is_up(RT) && r2.h.is_up(GW));
}

#[tokio::test]
async fn restart_of_a_responders_peer_is_refused_and_keeps_the_tunnel() {
    let (g, r) = up_pair().await;
    let before = r.rec.installed();
    let e = r.h.restart(rt_tunnel(b"the right key")).await.unwrap_err();
    assert!(matches!(e, DriverError::WrongRole(p, "responder") if p == GW), "{e:?}");
    assert_eq!(r.rec.installed(), before);
    assert!(g.h.is_up(RT) && r.h.is_up(GW));
}
