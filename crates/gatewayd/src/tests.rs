use super::*;

use tokio::sync::mpsc::unbounded_channel;
use vpnnat_datapath::{Change, Dir, RecordingDatapath, REQID_BASE};
use vpnnat_proto::keys::Psk;
use vpnnat_proto::messages::TunnelStatus;
use vpnnat_proto::types::TerminalId;

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

/// Issue 18, item 1: gatewayd's API caps every source but centerd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_caps_connections_per_source_except_centerds() {
    use tokio::io::AsyncReadExt as _;
    let cap = vpnnat_service::http::Limits::GATEWAY_API.max_per_source;
    for (centerd, refused) in [(None, true), (Some("127.0.0.1".parse().unwrap()), false)] {
        let (d, _rx) = driver();
        let gw = Arc::new(
            Gatewayd::new(
                GatewayName::new("gw1").unwrap(),
                GatewayApiKey::from_array([4; 32]),
                Box::new(d),
            )
            .unwrap(),
        );
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let server = tokio::spawn(run_with(l, std::future::pending(), gw, centerd));
        // Idle connections (no request yet) hold their places.
        let mut held = Vec::new();
        for _ in 0..cap {
            held.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        let mut extra = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 12];
        let got = tokio::time::timeout(Duration::from_millis(500), extra.read(&mut buf)).await;
        let busy = matches!(got, Ok(Ok(n)) if buf[..n].starts_with(b"HTTP/1.1 503"));
        assert_eq!(
            busy,
            refused,
            "centerd {centerd:?}: connection {} past the cap",
            cap + 1
        );
        server.abort();
    }
}

#[test]
fn each_tunnels_last_use_is_read_from_its_policies() {
    let (mut d, _rx) = driver();
    assert_eq!(d.last_use().unwrap(), BTreeMap::new(), "no tunnel, no policy");
    d.setup(spec("router-1", 3, "203.0.113.5")).unwrap();
    d.add_addresses(&tid("router-1"), &[ip("10.64.0.1")]).unwrap();
    // Read again only after the refresh interval: the cached reading (no
    // policy) still serves.
    assert_eq!(d.last_use().unwrap(), BTreeMap::new());
    let (mut d, _rx) = driver();
    d.setup(spec("router-1", 3, "203.0.113.5")).unwrap();
    d.add_addresses(&tid("router-1"), &[ip("10.64.0.1")]).unwrap();
    assert_eq!(
        d.last_use().unwrap(),
        BTreeMap::from([(3, 0)]),
        "installed, never used (a recording carries no packet)"
    );
}
