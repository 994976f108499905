use super::*;
use std::net::UdpSocket;

use tokio::sync::mpsc::unbounded_channel;
use vpnnat_datapath::{Change, RecordingDatapath};
use vpnnat_ike_driver::{DriverConfig, IkeDriver, Ports, RecordingInstaller, SaOp};

const GW: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const RT: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

fn tid(s: &str) -> TerminalId {
    TerminalId::new(s).unwrap()
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn nets() -> Vec<Ipv4Cidr> {
    vec!["172.16.0.0/24".parse().unwrap()]
}

#[test]
fn selector_bookkeeping() {
    assert_eq!(next_action(false, 0, true), IkeAction::Nothing);
    assert_eq!(next_action(false, 1, true), IkeAction::Connect);
    assert_eq!(next_action(false, 2, false), IkeAction::Connect);
    assert_eq!(next_action(true, 2, true), IkeAction::SetSelectors);
    assert_eq!(next_action(true, 2, false), IkeAction::Nothing);
    assert_eq!(next_action(true, 0, true), IkeAction::Disconnect);
    assert_eq!(
        center_selectors(&nets()),
        vec![TrafficSelector::subnet(ip("172.16.0.0"), 24)]
    );
    assert_eq!(
        address_selectors(&[ip("10.64.0.1"), ip("10.64.0.2")]),
        vec![
            TrafficSelector::host(ip("10.64.0.1")),
            TrafficSelector::host(ip("10.64.0.2"))
        ]
    );
}

fn free_ports() -> Ports {
    let a = UdpSocket::bind((GW, 0)).unwrap();
    let b = UdpSocket::bind((GW, 0)).unwrap();
    Ports {
        ike: a.local_addr().unwrap().port(),
        natt: b.local_addr().unwrap().port(),
    }
}

async fn start(
    local: Ipv4Addr,
    ports: Ports,
) -> Option<(DriverHandle, UnboundedReceiver<IkeEvent>, RecordingInstaller)> {
    let mut cfg = DriverConfig::new(local);
    cfg.ports = ports;
    cfg.kernel_events = false;
    cfg.shutdown_grace = Duration::from_secs(1);
    let rec = RecordingInstaller::new();
    let (h, ev) = IkeDriver::start(cfg, Box::new(rec.clone())).await.ok()?;
    Some((h, ev, rec))
}

async fn wait<T: std::fmt::Debug>(rx: &mut UnboundedReceiver<T>, what: &str, f: impl Fn(&T) -> bool) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(e)) if f(&e) => return e,
            Ok(Some(_)) => {}
            Ok(None) => panic!("channel closed waiting for {what}"),
            Err(_) => panic!("timed out waiting for {what}"),
        }
    }
}

fn router_cfg(addrs: &[Ipv4Addr], reqid: u32) -> TunnelConfig {
    TunnelConfig {
        peer: GW,
        psk: Secret::from_slice(&[7; 32]),
        local_ts: address_selectors(addrs),
        remote_ts: center_selectors(&nets()),
        reqid,
        // As routerd does: the gateway must be who the center says (here
        // the driver's default identity, its address).
        remote_id: Some(Identity::ipv4(GW)),
        log_label: "terminal=router-side".into(),
    }
}

#[tokio::test]
async fn connects_on_first_grant_rekeys_on_changes_and_closes() {
    let mut sides = None;
    for _ in 0..20 {
        let ports = free_ports();
        if let (Some(g), Some(r)) = (start(GW, ports).await, start(RT, ports).await) {
            sides = Some((g, r));
            break;
        }
    }
    let ((gh, gev, grec), (rh, mut rev, _rrec)) = sides.expect("no free ports on loopback");
    let reqid = REQID_BASE + 4;
    let a1 = ip("10.64.0.1");
    let a2 = ip("10.64.0.2");
    rh.accept(router_cfg(&[a1, a2], reqid)).await.unwrap();

    let (tx, mut rx) = unbounded_channel();
    let policy = PolicyDriver::new(RecordingDatapath::new(), GW, nets(), 1000, tx.clone());
    let mut d = IkeTunnelDriver::new(policy, &nets(), Identity::ipv4(GW), gh.clone(), gev, tx);
    let t = tid("router-1");
    d.setup(TunnelSpec {
        terminal_id: t.clone(),
        slot: 4,
        router_ip: RT,
        psk: Psk::from_array([7; 32]),
    })
    .unwrap();
    // Nothing to negotiate before the first address.
    let c = wait(&mut rx, "connecting", |e| e.status == TunnelStatus::Connecting).await;
    assert_eq!(c.detail, CONNECTING);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!gh.is_up(RT));
    assert_eq!(d.tunnels()[0].status, TunnelStatus::Connecting);

    d.add_addresses(&t, &[a1]).unwrap();
    let up = wait(&mut rx, "up", |e| e.status == TunnelStatus::Up).await;
    assert_eq!((up.terminal_id.clone(), up.slot), (t.clone(), 4));
    assert_eq!(d.tunnels()[0].status, TunnelStatus::Up);
    assert!(grec.installed().iter().all(|sa| sa.reqid == reqid));
    assert_eq!(grec.installed().len(), 2);

    // A second address: one CHILD rekey, the tunnel stays up.
    wait(&mut rev, "first child", |e| {
        matches!(e, IkeEvent::ChildSaInstalled { .. })
    })
    .await;
    d.add_addresses(&t, &[a2]).unwrap();
    wait(&mut rev, "rekeyed child", |e| {
        matches!(e, IkeEvent::ChildSaInstalled { .. })
    })
    .await;
    // Let the gateway finish the rekey (its new pair installed) before
    // closing: the driver drops a tunnel closed mid-rekey without a DELETE
    // reaching the router.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while grec.ops().iter().filter(|o| matches!(o, SaOp::Add(_))).count() < 4 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "gateway never installed the rekeyed pair"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(gh.is_up(RT));

    // No address left: IKE closes; the next grant connects again (also
    // right away, while the DELETE may still be in flight).
    d.remove_addresses(&t, &[a1, a2]).unwrap();
    d.add_addresses(&t, &[a1]).unwrap();
    // (The driver may replace the closing IKE SA without reporting it
    // down first.)
    wait(&mut rx, "up again", |e| e.status == TunnelStatus::Up).await;
    assert!(gh.is_up(RT));
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Teardown closes IKE; the policy driver reports the teardown.
    d.teardown(&t).unwrap();
    wait(&mut rev, "router down", |e| matches!(e, IkeEvent::TunnelDown { .. })).await;
    let down = wait(&mut rx, "down", |e| e.status == TunnelStatus::Down).await;
    assert_eq!(down.detail, "torn down on command");
    assert!(d.tunnels().is_empty());
    gh.shutdown().await;
    rh.shutdown().await;
}

/// gatewayd's start-up reconcile with a live IKE driver: the SAs the driver
/// installed stay, an owned SA it does not know (a killed gatewayd's) goes.
#[tokio::test]
async fn reconcile_keeps_the_drivers_sas_and_removes_a_previous_runs() {
    let mut sides = None;
    for _ in 0..20 {
        let ports = free_ports();
        if let (Some(g), Some(r)) = (start(GW, ports).await, start(RT, ports).await) {
            sides = Some((g, r));
            break;
        }
    }
    let ((gh, gev, grec), (rh, _rev, _rrec)) = sides.expect("no free ports on loopback");
    let reqid = REQID_BASE + 1;
    let a1 = ip("10.64.0.1");
    rh.accept(router_cfg(&[a1], reqid)).await.unwrap();
    let (tx, mut rx) = unbounded_channel();
    let policy = PolicyDriver::new(RecordingDatapath::new(), GW, nets(), 1000, tx.clone());
    let mut d = IkeTunnelDriver::new(policy, &nets(), Identity::ipv4(GW), gh.clone(), gev, tx);
    let t = tid("router-1");
    d.setup(TunnelSpec {
        terminal_id: t.clone(),
        slot: 1,
        router_ip: RT,
        psk: Psk::from_array([7; 32]),
    })
    .unwrap();
    d.add_addresses(&t, &[a1]).unwrap();
    wait(&mut rx, "up", |e| e.status == TunnelStatus::Up).await;
    let live = grec.installed();
    assert_eq!(live.len(), 2);
    // The kernel as the recording datapath shows it: the live pair and the
    // pair a killed gatewayd left with the same reqid.
    let mut stale_in = live[0].clone();
    stale_in.spi = 0xc0de_0001;
    let mut stale_out = live[1].clone();
    stale_out.spi = 0xc0de_0002;
    let mut adds: Vec<Change> = live.iter().cloned().map(Change::AddSa).collect();
    adds.push(Change::AddSa(stale_in));
    adds.push(Change::AddSa(stale_out));
    PolicyDatapath::apply(d.policy.datapath_mut(), &adds).unwrap();
    d.reconcile().unwrap();
    let mut left: Vec<_> = d.policy.datapath().state.sas.iter().map(|s| s.id).collect();
    let mut want: Vec<_> = live.iter().map(|s| s.id()).collect();
    left.sort_by_key(|i| i.spi);
    want.sort_by_key(|i| i.spi);
    assert_eq!(left, want);
    gh.shutdown().await;
    rh.shutdown().await;
}

#[tokio::test]
async fn restart_negotiates_a_fresh_ike_sa_at_once() {
    let mut sides = None;
    for _ in 0..20 {
        let ports = free_ports();
        if let (Some(g), Some(r)) = (start(GW, ports).await, start(RT, ports).await) {
            sides = Some((g, r));
            break;
        }
    }
    let ((gh, gev, grec), (rh, _rev, _rrec)) = sides.expect("no free ports on loopback");
    let reqid = REQID_BASE + 2;
    let a1 = ip("10.64.0.1");
    rh.accept(router_cfg(&[a1], reqid)).await.unwrap();
    let (tx, mut rx) = unbounded_channel();
    let policy = PolicyDriver::new(RecordingDatapath::new(), GW, nets(), 1000, tx.clone());
    let mut d = IkeTunnelDriver::new(policy, &nets(), Identity::ipv4(GW), gh.clone(), gev, tx);
    let t = tid("router-1");
    assert!(matches!(d.restart(&t), Err(DriverError::UnknownTunnel(_))));
    d.setup(TunnelSpec {
        terminal_id: t.clone(),
        slot: 2,
        router_ip: RT,
        psk: Psk::from_array([7; 32]),
    })
    .unwrap();
    // Nothing negotiated yet: nothing to restart, nothing happens.
    d.restart(&t).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(grec.ops().is_empty());

    d.add_addresses(&t, &[a1]).unwrap();
    wait(&mut rx, "up", |e| e.status == TunnelStatus::Up).await;
    let old = grec.installed();
    let old_ike = gh.ike_spis(RT).unwrap();
    d.restart(&t).unwrap();
    let down = wait(&mut rx, "down", |e| e.status == TunnelStatus::Down).await;
    assert_eq!(down.detail, "IKE down: Restarted");
    wait(&mut rx, "up again", |e| e.status == TunnelStatus::Up).await;
    let new = grec.installed();
    assert_eq!(new.len(), 2);
    assert!(new.iter().all(|sa| !old.contains(sa) && sa.reqid == reqid));
    assert_ne!(gh.ike_spis(RT).unwrap(), old_ike);
    d.teardown(&t).unwrap();
    gh.shutdown().await;
    rh.shutdown().await;
}

/// Issue 17: in router mode the gateway admits the router by identity and
/// PSK once it holds a slot with a grant; a second grant is carried after
/// the router's rekey; teardown hangs up on it and leaves no SA.
#[tokio::test]
async fn a_router_mode_tunnel_is_admitted_by_identity_and_torn_down() {
    let mut sides = None;
    for _ in 0..20 {
        let ports = free_ports();
        let g = start(GW, ports).await;
        let mut cfg = DriverConfig::new(RT);
        cfg.ports = ports;
        cfg.kernel_events = false;
        cfg.shutdown_grace = Duration::from_secs(1);
        cfg.identity = super::super::dial_in::router_identity(&tid("router-1"));
        let r = IkeDriver::start(cfg, Box::new(RecordingInstaller::new())).await.ok();
        if let (Some(g), Some(r)) = (g, r) {
            sides = Some((g, r));
            break;
        }
    }
    let ((gh, gev, grec), (rh, mut rev)) = sides.expect("no free ports on loopback");
    let (tx, mut rx) = unbounded_channel();
    let policy = PolicyDriver::new(RecordingDatapath::new(), GW, nets(), 1000, tx.clone());
    let mut d = IkeTunnelDriver::new(policy, &nets(), Identity::ipv4(GW), gh.clone(), gev, tx);
    let t = tid("router-1");
    let a1 = ip("10.64.0.1");
    let a2 = ip("10.64.0.2");
    // Before any slot: refused, nothing installed.
    rh.connect(router_cfg(&[a1], 0x77)).await.unwrap();
    wait(&mut rev, "refused", |e| matches!(e, IkeEvent::TunnelDown { .. })).await;
    assert!(grec.ops().is_empty());
    rh.disconnect(GW).await.ok();

    d.setup_dial_in(TunnelSpec {
        terminal_id: t.clone(),
        slot: 4,
        router_ip: RT,
        psk: Psk::from_array([7; 32]),
    })
    .unwrap();
    d.add_addresses(&t, &[a1]).unwrap();
    // The gateway does not initiate: it waits for the router.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(grec.ops().is_empty());
    rh.connect(router_cfg(&[a1], 0x77)).await.unwrap();
    let up = wait(&mut rx, "up", |e| e.status == TunnelStatus::Up).await;
    assert_eq!((up.terminal_id.clone(), up.slot), (t.clone(), 4));
    assert!(up.detail.contains("dialed in"), "{}", up.detail);
    assert_eq!(d.tunnels()[0].status, TunnelStatus::Up);
    let sas = grec.installed();
    assert_eq!(sas.len(), 2);
    assert!(sas.iter().all(|sa| sa.reqid == REQID_BASE + 4), "the slot's reqid");

    // A second grant: the gateway takes it, the router rekeys with it.
    d.add_addresses(&t, &[a2]).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    rh.set_traffic_selectors(GW, address_selectors(&[a1, a2]), center_selectors(&nets()))
        .await
        .unwrap();
    wait(&mut rev, "rekeyed child", |e| {
        matches!(e, IkeEvent::ChildSaInstalled { .. })
    })
    .await;
    wait(&mut rev, "rekeyed child", |e| {
        matches!(e, IkeEvent::ChildSaInstalled { .. })
    })
    .await;

    // VPN end: teardown hangs up; the router's tunnel goes, no SA stays.
    d.teardown(&t).unwrap();
    wait(&mut rev, "router down", |e| matches!(e, IkeEvent::TunnelDown { .. })).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(grec.installed().is_empty(), "{:?}", grec.installed());
    assert!(d.tunnels().is_empty());
}

/// Issue 18, item 12: gatewayd authenticates as its configured `ike_id`
/// and a router that expects that identity (read from the center's text
/// the same way) brings the tunnel up; a router told another identity
/// refuses the exchange, and nothing is installed on its side.
#[tokio::test]
async fn the_router_accepts_only_the_gateway_identity_the_center_named() {
    let named = "gw1.center.example";
    for (expected, comes_up) in [(named, true), ("gw9.center.example", false)] {
        let mut sides = None;
        for _ in 0..20 {
            let ports = free_ports();
            let mut cfg = DriverConfig::new(GW);
            cfg.ports = ports;
            cfg.kernel_events = false;
            cfg.shutdown_grace = Duration::from_secs(1);
            cfg.identity = Identity::from_text(named);
            let grec = RecordingInstaller::new();
            let g = IkeDriver::start(cfg, Box::new(grec.clone())).await.ok();
            if let (Some((gh, gev)), Some(r)) = (g, start(RT, ports).await) {
                sides = Some(((gh, gev, grec), r));
                break;
            }
        }
        let ((gh, gev, _grec), (rh, mut rev, rrec)) = sides.expect("no free ports on loopback");
        let a1 = ip("10.64.0.1");
        let mut rc = router_cfg(&[a1], REQID_BASE + 4);
        rc.remote_id = Some(Identity::from_text(expected));
        rh.accept(rc).await.unwrap();
        let (tx, mut rx) = unbounded_channel();
        let policy = PolicyDriver::new(RecordingDatapath::new(), GW, nets(), 1000, tx.clone());
        let mut d = IkeTunnelDriver::new(policy, &nets(), Identity::from_text(named), gh.clone(), gev, tx);
        let t = tid("router-1");
        d.setup(TunnelSpec {
            terminal_id: t.clone(),
            slot: 4,
            router_ip: RT,
            psk: Psk::from_array([7; 32]),
        })
        .unwrap();
        d.add_addresses(&t, &[a1]).unwrap();
        if comes_up {
            wait(&mut rx, "up", |e| e.status == TunnelStatus::Up).await;
            // The router installs once it has the last IKE_AUTH answer,
            // which may be a moment after the gateway reports up.
            wait(&mut rev, "router child", |e| {
                matches!(e, IkeEvent::ChildSaInstalled { .. })
            })
            .await;
            assert_eq!(rrec.installed().len(), 2, "{expected}");
        } else {
            let e = wait(&mut rev, "rejected", |e| matches!(e, IkeEvent::Rejected { .. })).await;
            let IkeEvent::Rejected { error, .. } = e else {
                unreachable!()
            };
            assert_eq!(error, vpnnat_ike::Error::IdentityMismatch.to_string());
            tokio::time::sleep(Duration::from_millis(200)).await;
            assert!(!rh.is_up(GW) && rrec.installed().is_empty(), "{expected}");
        }
        d.teardown(&t).unwrap();
        gh.shutdown().await;
        rh.shutdown().await;
    }
}
