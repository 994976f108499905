//! The whole gatewayd in-process (recording datapath, no IKE, so no root):
//! it serves its API on a port-0 listener and stops on its shutdown future.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use vpnnat_gatewayd::config::GatewaydConfig;
use vpnnat_gatewayd::daemon::{serve, StopReason};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_in_process_and_stops_on_its_shutdown_future() {
    let example = include_str!("../../../buildroot-overlay/center/etc/gatewayd.toml")
        .replace("datapath = \"kernel\"", "datapath = \"recording\"")
        .replace("ike = true", "ike = false")
        // the placeholder, as the center image's first boot fills it
        .replace(
            "@SECRET:gw1@",
            "3f9c0a7be1d24586c9e07a31b5f8d26e4c1a9f7302b8e5d6a4c7f9e1b3d50a82",
        );
    let cfg = GatewaydConfig::parse(&example, Path::new("gatewayd.toml")).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let daemon = tokio::spawn(serve(cfg, listener, async move {
        let _ = stopped.await;
    }));

    // The API answers: the metrics of a gateway with no tunnel.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("vpnnat_gateway_tunnels_up 0"), "{text}");

    stop.send(()).unwrap();
    let why = tokio::time::timeout(Duration::from_secs(10), daemon)
        .await
        .expect("serve returns within 10 s of its shutdown")
        .unwrap()
        .unwrap();
    assert_eq!(why, StopReason::Shutdown);
    assert!(TcpStream::connect(addr).await.is_err(), "the API port is closed");
}
