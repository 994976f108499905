use super::*;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::mpsc::unbounded_channel;
use vpnnat_datapath::{Change, Dir, RecordingDatapath, REQID_BASE};
use vpnnat_proto::keys::Psk;
use vpnnat_proto::messages::TunnelStatus;
use vpnnat_proto::types::TerminalId;

use crate::center::tests::{center_with, gw_key, TestRouter};
use crate::center::{CommandError, GatewayCommands};
use crate::clients::HttpGateways;
use driver::{PolicyDatapath, PolicyDriver, IKE_PENDING};

fn tid(s: &str) -> TerminalId {
    TerminalId::new(s).unwrap()
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn nets() -> Vec<vpnnat_datapath::Ipv4Cidr> {
    vec!["172.16.0.0/24".parse().unwrap(), "172.16.1.0/24".parse().unwrap()]
}

fn spec(id: &str, slot: u16, router: &str) -> TunnelSpec {
    TunnelSpec {
        terminal_id: tid(id),
        slot,
        router_ip: ip(router),
        psk: Psk::from_array([7; 32]),
    }
}

fn driver() -> (
    PolicyDriver<RecordingDatapath>,
    tokio::sync::mpsc::UnboundedReceiver<DriverEvent>,
) {
    let (tx, rx) = unbounded_channel();
    (
        PolicyDriver::new(RecordingDatapath::new(), ip("198.51.100.11"), nets(), 1000, tx),
        rx,
    )
}

#[test]
fn policies_per_address_and_network_with_slot_reqid() {
    let (mut d, mut rx) = driver();
    d.setup(spec("router-1", 3, "203.0.113.5")).unwrap();
    let ev = rx.try_recv().unwrap();
    assert_eq!(
        (ev.status, ev.slot, ev.detail.as_str()),
        (TunnelStatus::Connecting, 3, IKE_PENDING)
    );
    d.add_addresses(&tid("router-1"), &[ip("10.64.0.1"), ip("10.64.0.2")])
        .unwrap();
    let p = &d.datapath().state.policies;
    assert_eq!(p.len(), 2 * 2 * 3, "2 addresses x 2 center networks x out/in/fwd");
    assert!(p.iter().all(|p| p.reqid == REQID_BASE + 3 && p.priority == 1000));
    let out = p
        .iter()
        .find(|p| p.id.dir == Dir::Out && p.id.dst.addr() == ip("10.64.0.1") && p.id.src == nets()[0])
        .unwrap();
    assert_eq!((out.tmpl_src, out.tmpl_dst), (ip("198.51.100.11"), ip("203.0.113.5")));
    assert_eq!(out.id.dst.prefix_len(), 32);
    let inp = p
        .iter()
        .find(|p| p.id.dir == Dir::In && p.id.src.addr() == ip("10.64.0.1") && p.id.dst == nets()[1])
        .unwrap();
    assert_eq!((inp.tmpl_src, inp.tmpl_dst), (ip("203.0.113.5"), ip("198.51.100.11")));
    assert!(p.iter().any(|p| p.id.dir == Dir::Fwd));
    // Idempotent add; remove one; the state says so.
    d.add_addresses(&tid("router-1"), &[ip("10.64.0.1")]).unwrap();
    assert_eq!(d.datapath().state.policies.len(), 12);
    d.remove_addresses(&tid("router-1"), &[ip("10.64.0.2"), ip("10.64.0.99")])
        .unwrap();
    assert_eq!(d.datapath().state.policies.len(), 6);
    let t = d.tunnels();
    assert_eq!(t[0].addresses, vec![ip("10.64.0.1")]);
    assert_eq!(t[0].status, TunnelStatus::Connecting, "never reported up without IKE");
    // Teardown: nothing left, a down event.
    d.teardown(&tid("router-1")).unwrap();
    assert!(d.datapath().state.policies.is_empty());
    assert!(d.tunnels().is_empty());
    assert_eq!(rx.try_recv().unwrap().status, TunnelStatus::Down);
    d.teardown(&tid("router-1")).unwrap();
    assert!(rx.try_recv().is_err());
}

#[test]
fn conflicts_are_refused_without_changes() {
    let (mut d, _rx) = driver();
    d.setup(spec("router-1", 0, "203.0.113.5")).unwrap();
    d.setup(spec("router-1", 0, "203.0.113.5")).unwrap();
    assert!(matches!(
        d.setup(spec("router-2", 0, "203.0.113.6")),
        Err(DriverError::SlotInUse { slot: 0, .. })
    ));
    d.setup(spec("router-2", 1, "203.0.113.6")).unwrap();
    d.add_addresses(&tid("router-1"), &[ip("10.64.0.1")]).unwrap();
    let before = d.datapath().state.policies.len();
    assert!(matches!(
        d.add_addresses(&tid("router-2"), &[ip("10.64.0.5"), ip("10.64.0.1")]),
        Err(DriverError::AddressInUse { .. })
    ));
    assert!(matches!(
        d.add_addresses(&tid("router-9"), &[ip("10.64.0.5")]),
        Err(DriverError::UnknownTunnel(_))
    ));
    assert_eq!(d.datapath().state.policies.len(), before);
}

#[test]
fn router_moving_repoints_its_policies() {
    let (mut d, mut rx) = driver();
    d.setup(spec("router-1", 0, "203.0.113.5")).unwrap();
    d.add_addresses(&tid("router-1"), &[ip("10.64.0.1")]).unwrap();
    let _ = rx.try_recv();
    d.setup(spec("router-1", 0, "203.0.113.50")).unwrap();
    let p = &d.datapath().state.policies;
    assert_eq!(p.len(), 6);
    assert!(p
        .iter()
        .all(|p| p.tmpl_dst == ip("203.0.113.50") || p.tmpl_src == ip("203.0.113.50")));
    assert_eq!(rx.try_recv().unwrap().status, TunnelStatus::Connecting);
}

#[test]
fn datapath_failure_leaves_state_unchanged() {
    let (mut d, _rx) = driver();
    d.setup(spec("router-1", 0, "203.0.113.5")).unwrap();
    d.datapath_mut().fail_at = Some(0);
    assert!(matches!(
        d.add_addresses(&tid("router-1"), &[ip("10.64.0.1")]),
        Err(DriverError::Datapath(_))
    ));
    assert!(d.tunnels()[0].addresses.is_empty());
}

#[test]
fn reconcile_removes_leftovers_and_restores_missing() {
    let (mut d, _rx) = driver();
    d.setup(spec("router-1", 0, "203.0.113.5")).unwrap();
    d.add_addresses(&tid("router-1"), &[ip("10.64.0.1")]).unwrap();
    // A leftover of an earlier run, and one of ours deleted behind our back.
    let mut stray = d.datapath().state.policies[0];
    stray.id.dst = vpnnat_datapath::Ipv4Cidr::host(ip("10.64.9.9"));
    stray.id.src = nets()[0];
    stray.id.dir = Dir::Out;
    let gone = d.datapath().state.policies[1];
    PolicyDatapath::apply(
        d.datapath_mut(),
        &[Change::AddPolicy(stray), Change::DelPolicy(gone.id)],
    )
    .unwrap();
    d.reconcile().unwrap();
    let p = &d.datapath().state.policies;
    assert_eq!(p.len(), 6);
    assert!(!p.contains(&stray));
    assert!(p.contains(&gone));
}

/// A policy of ours whose template points elsewhere (say, at the router's
/// previous address) is put back as the driver's state says.
#[test]
fn reconcile_repoints_a_policy_with_a_stale_template() {
    let (mut d, _rx) = driver();
    d.setup(spec("router-1", 0, "203.0.113.5")).unwrap();
    d.add_addresses(&tid("router-1"), &[ip("10.64.0.1")]).unwrap();
    let want = d.datapath().state.policies.clone();
    let mut stale = want[0];
    stale.tmpl_dst = ip("203.0.113.99");
    PolicyDatapath::apply(d.datapath_mut(), &[Change::UpdatePolicy(stale)]).unwrap();
    d.reconcile().unwrap();
    let p = &d.datapath().state.policies;
    assert_eq!(p.len(), want.len());
    assert!(want.iter().all(|w| p.contains(w)));
    assert!(!p.contains(&stale));
}

fn sa(src: &str, dst: &str, spi: u32, reqid: u32) -> vpnnat_datapath::SaSpec {
    vpnnat_datapath::SaSpec {
        src: ip(src),
        dst: ip(dst),
        spi,
        reqid,
        key: vpnnat_datapath::SaKey::new(vec![1; 20]).unwrap(),
        replay_window: 64,
        encap: None,
        lifetime: vpnnat_datapath::Lifetime::default(),
    }
}

/// A gatewayd killed with a live tunnel leaves its SA pair in the kernel;
/// the next one's start-up reconcile removes it (it would otherwise outlive
/// the tunnel's tear-down by the SAs' hard lifetime), and keeps the SAs a
/// wrapping IKE driver says it installed.
#[test]
fn reconcile_removes_a_previous_runs_sas_and_keeps_the_given_ones() {
    let (mut d, _rx) = driver();
    let old_in = sa("203.0.113.5", "198.51.100.11", 0xc000_0001, REQID_BASE);
    let old_out = sa("198.51.100.11", "203.0.113.5", 0xc000_0002, REQID_BASE);
    let live_in = sa("203.0.113.5", "198.51.100.11", 0xc000_0003, REQID_BASE);
    // Another IKE daemon's SA (reqid outside the project's range).
    let foreign = sa("203.0.113.9", "198.51.100.11", 0xc000_0004, 1);
    PolicyDatapath::apply(
        d.datapath_mut(),
        &[
            Change::AddSa(old_in),
            Change::AddSa(old_out),
            Change::AddSa(live_in.clone()),
            Change::AddSa(foreign.clone()),
        ],
    )
    .unwrap();
    d.reconcile_keeping(&[live_in.id()]).unwrap();
    let ids: Vec<_> = d.datapath().state.sas.iter().map(|s| s.id).collect();
    assert_eq!(ids, vec![live_in.id(), foreign.id()]);
    // The policy driver alone installs no SA: all owned ones go.
    d.reconcile().unwrap();
    let ids: Vec<_> = d.datapath().state.sas.iter().map(|s| s.id).collect();
    assert_eq!(ids, vec![foreign.id()]);
}

fn gatewayd() -> (Arc<Gatewayd>, tokio::sync::mpsc::UnboundedReceiver<DriverEvent>) {
    let (tx, rx) = unbounded_channel();
    let d = PolicyDriver::new(RecordingDatapath::new(), ip("198.51.100.11"), nets(), 1000, tx);
    (
        Arc::new(Gatewayd::new(GatewayName::new("gw1").unwrap(), gw_key(1), Box::new(d)).unwrap()),
        rx,
    )
}

async fn serve_gatewayd(gw: Arc<Gatewayd>) -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    tokio::spawn(run(l, std::future::pending(), gw));
    a
}

#[tokio::test]
async fn centerd_client_drives_gatewayd_over_http() {
    let (gw, mut rx) = gatewayd();
    let addr = serve_gatewayd(gw.clone()).await;
    let client = HttpGateways::new(
        vec![(GatewayName::new("gw1").unwrap(), addr.to_string(), gw_key(1))],
        Duration::from_secs(5),
    );
    assert!(client.probe("gw1").await);
    let r1 = tid("router-1");
    client
        .setup_tunnel("gw1", &r1, ip("203.0.113.5"), 2, &Psk::from_array([9; 32]))
        .await
        .unwrap();
    assert_eq!(rx.recv().await.unwrap().status, TunnelStatus::Connecting);
    client
        .add_addresses("gw1", &r1, &[ip("10.64.0.1"), ip("10.64.0.2")])
        .await
        .unwrap();
    let st = client.state("gw1").await.unwrap();
    assert_eq!(st.tunnels().len(), 1);
    assert_eq!(st.tunnels()[0].slot, 2);
    assert_eq!(st.tunnels()[0].addresses.len(), 2);
    assert_eq!(st.tunnels()[0].status, TunnelStatus::Connecting);
    client.remove_addresses("gw1", &r1, &[ip("10.64.0.2")]).await.unwrap();
    // A restart of a known tunnel is taken (no IKE here: nothing to
    // renegotiate); of an unknown one refused with 404.
    client.restart_tunnel("gw1", &r1).await.unwrap();
    let e = client.restart_tunnel("gw1", &tid("router-9")).await.unwrap_err();
    assert!(matches!(e, CommandError::Refused { status: 404, .. }), "{e}");
    // A conflicting command is refused with the reason.
    let e = client
        .setup_tunnel("gw1", &tid("router-2"), ip("203.0.113.6"), 2, &Psk::from_array([9; 32]))
        .await
        .unwrap_err();
    assert!(matches!(e, CommandError::Refused { status: 409, .. }), "{e}");
    client.tear_down("gw1", &r1).await.unwrap();
    assert!(client.state("gw1").await.unwrap().tunnels().is_empty());
    // The wrong key: refused, and the probe says so after the cache.
    let bad = HttpGateways::new(
        vec![(GatewayName::new("gw1").unwrap(), addr.to_string(), gw_key(2))],
        Duration::from_secs(5),
    );
    let e = bad.tear_down("gw1", &r1).await.unwrap_err();
    assert!(matches!(e, CommandError::Refused { status: 401, .. }), "{e}");
    // A gateway that is not there.
    let dead = HttpGateways::new(
        vec![(GatewayName::new("gw1").unwrap(), "127.0.0.1:1".into(), gw_key(1))],
        Duration::from_secs(2),
    );
    assert!(!dead.probe("gw1").await);
    assert!(matches!(
        dead.tear_down("gw1", &r1).await,
        Err(CommandError::Unreachable { .. })
    ));
}

#[tokio::test]
async fn events_reach_centerd() {
    // centerd's API with a router holding gw1 slot 0.
    let (c, _g, _r) = center_with("10.64.0.0/24", &[2]);
    let mut router = TestRouter::new("router-1");
    router.install(&c);
    router.gateway_address(&c).await.unwrap();
    let c = Arc::new(c);
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let center_addr = l.local_addr().unwrap();
    tokio::spawn(crate::api::run(l, std::future::pending(), c.clone()));
    let (tx, rx) = unbounded_channel();
    let fwd = tokio::spawn(forward_events(
        rx,
        HttpEndpoint::parse(&format!("http://{center_addr}")).unwrap(),
        GatewayName::new("gw1").unwrap(),
        gw_key(1),
        Duration::from_secs(5),
    ));
    let waiter = {
        let c = c.clone();
        tokio::spawn(async move { c.wait_tunnel_up(&tid("router-1"), Duration::from_secs(10)).await })
    };
    tx.send(DriverEvent {
        terminal_id: tid("router-1"),
        slot: 0,
        status: TunnelStatus::Connecting,
        detail: "IKE\u{7} pending".into(),
        seq: crate::gateway::driver::next_event_seq(),
    })
    .unwrap();
    tx.send(DriverEvent {
        terminal_id: tid("router-1"),
        slot: 0,
        status: TunnelStatus::Up,
        detail: String::new(),
        seq: crate::gateway::driver::next_event_seq(),
    })
    .unwrap();
    assert!(waiter.await.unwrap().unwrap(), "the up event woke the waiting request");
    drop(tx);
    fwd.await.unwrap();
    let s = c.store().unwrap().slot_of("router-1").unwrap().unwrap();
    assert_eq!(s.tunnel_state, crate::storage::TunnelState::Up);
}

async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use http_body_util::{BodyExt, Full};
    use hyper::body::Bytes;
    let s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::get(path)
        .header("host", "gw")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = tx.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn metrics_are_scraped_and_parse() {
    use crate::metrics::{parse, value};
    let (gw, _rx) = gatewayd();
    let addr = serve_gatewayd(gw.clone()).await;
    let client = HttpGateways::new(
        vec![(GatewayName::new("gw1").unwrap(), addr.to_string(), gw_key(1))],
        Duration::from_secs(5),
    );
    let r1 = tid("router-1");
    client
        .setup_tunnel("gw1", &r1, ip("203.0.113.5"), 2, &Psk::from_array([9; 32]))
        .await
        .unwrap();
    client
        .add_addresses("gw1", &r1, &[ip("10.64.0.1"), ip("10.64.0.2")])
        .await
        .unwrap();
    // A refused command is counted with its status.
    let bad = HttpGateways::new(
        vec![(GatewayName::new("gw1").unwrap(), addr.to_string(), gw_key(2))],
        Duration::from_secs(5),
    );
    bad.tear_down("gw1", &r1).await.unwrap_err();
    // Events as the IKE driver reports them.
    let counters = gw.event_counters();
    for (status, detail) in [
        (TunnelStatus::Up, ""),
        (TunnelStatus::Down, "IKE down: PeerDead"),
        (TunnelStatus::Down, "IKE down: AuthenticationFailed"),
        (TunnelStatus::Down, "IKE down: PeerDead"),
        (TunnelStatus::Down, "IKE down: Closed"),
    ] {
        counters.record(&DriverEvent {
            terminal_id: r1.clone(),
            slot: 2,
            status,
            detail: detail.into(),
            seq: 0,
        });
    }
    let (status, body) = get(addr, "/metrics").await;
    assert_eq!(status, 200);
    let s = parse(&body).unwrap();
    let v = |name: &str, labels: &[(&str, &str)]| value(&s, name, labels);
    assert_eq!(v("vpnnat_gateway_tunnels", &[("state", "connecting")]), Some(1.0));
    assert_eq!(v("vpnnat_gateway_tunnels_up", &[]), Some(0.0));
    assert_eq!(v("vpnnat_gateway_addresses", &[]), Some(2.0));
    assert_eq!(
        v("vpnnat_gateway_ike_failures_total", &[("reason", "peer_dead")]),
        Some(2.0)
    );
    assert_eq!(
        v(
            "vpnnat_gateway_ike_failures_total",
            &[("reason", "authentication_failed")]
        ),
        Some(1.0)
    );
    assert_eq!(v("vpnnat_gateway_ike_failures_total", &[("reason", "closed")]), None);
    assert_eq!(
        v("vpnnat_gateway_tunnel_events_total", &[("status", "down")]),
        Some(4.0)
    );
    assert_eq!(
        v("vpnnat_gateway_command_duration_seconds_count", &[("command", "setup")]),
        Some(1.0)
    );
    assert_eq!(
        v(
            "vpnnat_gateway_commands_total",
            &[("command", "teardown"), ("status", "401")]
        ),
        Some(1.0)
    );
    // Unknown paths and wrong methods.
    assert_eq!(get(addr, "/nope").await.0, 404);
    assert_eq!(get(addr, paths::gateway::STATE).await.0, 405);
}
