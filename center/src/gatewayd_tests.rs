//! centerd's side against a real gatewayd in-process: the gateway client
//! (`clients::HttpGateways`) driving gatewayd's API, gatewayd's events
//! reaching centerd's API, and gatewayd's metrics after those commands.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::mpsc::unbounded_channel;
use vpnnat_datapath::RecordingDatapath;
use vpnnat_gatewayd::driver::{next_event_seq, DriverEvent, PolicyDriver};
use vpnnat_gatewayd::{forward_events, run, Gatewayd};
use vpnnat_proto::keys::{Psk, SecretBytes as _};
use vpnnat_proto::messages::TunnelStatus;
use vpnnat_proto::paths;
use vpnnat_proto::types::{GatewayName, TerminalId};

use crate::center::tests::{center_with, gw_key, TestRouter};
use crate::center::{CommandError, GatewayCommands};
use crate::clients::HttpGateways;
use crate::config::HttpEndpoint;

fn tid(s: &str) -> TerminalId {
    TerminalId::new(s).unwrap()
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn gatewayd() -> (Arc<Gatewayd>, tokio::sync::mpsc::UnboundedReceiver<DriverEvent>) {
    let (tx, rx) = unbounded_channel();
    let d = PolicyDriver::new(
        RecordingDatapath::new(),
        ip("198.51.100.11"),
        vec!["172.16.0.0/24".parse().unwrap(), "172.16.1.0/24".parse().unwrap()],
        1000,
        tx,
    );
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
        seq: next_event_seq(),
    })
    .unwrap();
    tx.send(DriverEvent {
        terminal_id: tid("router-1"),
        slot: 0,
        status: TunnelStatus::Up,
        detail: String::new(),
        seq: next_event_seq(),
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
