//! The whole daemon in-process: port-0 listeners, a fresh SQLite file,
//! stopped through its shutdown future.

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use super::{serve, Listeners, StopReason};
use crate::config::tests::{dir_with_password, EXAMPLE};
use crate::config::CenterdConfig;

/// Reads until the peer closes; the text of an HTTP response.
async fn response(mut s: TcpStream) -> String {
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("the response within 10 s")
        .expect("reading the response");
    String::from_utf8_lossy(&out).into_owned()
}

async fn get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    response(s).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_in_process_and_stops_on_its_shutdown_future() {
    let dir = dir_with_password().join("daemon");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(dir.parent().unwrap().join("maint.txt"), dir.join("maint.txt")).unwrap();
    let db = dir.join("center.db");
    let _ = std::fs::remove_file(&db);
    // The gateway's port refuses at once: the reconcile and heartbeat loops
    // run against it without holding anything up.
    let text = EXAMPLE.replace("http://172.16.0.11:9000", "http://127.0.0.1:1");
    let cfg = CenterdConfig::parse(&text, Path::new("test.toml"), &dir).unwrap();
    let router_api = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ui = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (api_addr, ui_addr) = (router_api.local_addr().unwrap(), ui.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let daemon = tokio::spawn(serve(
        cfg,
        Listeners {
            router_api,
            ui,
            dns: None,
        },
        async move {
            let _ = stopped.await;
        },
    ));

    for addr in [api_addr, ui_addr] {
        let r = get(addr, "/healthz").await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        assert!(r.ends_with("ok"), "{r}");
    }
    // The database was created for the daemon, owner-only (it holds PSKs).
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(std::fs::metadata(&db).unwrap().permissions().mode() & 0o777, 0o600);

    // A request in flight when the shutdown comes: its head is in, its
    // body not yet.
    let mut inflight = TcpStream::connect(ui_addr).await.unwrap();
    inflight
        .write_all(b"POST /login HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 8\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.send(()).unwrap();
    // Shutting down drains: the request in flight still gets its body
    // through and is answered, and only then does serve return.
    tokio::time::sleep(Duration::from_millis(100)).await;
    inflight.write_all(b"user=x&y").await.unwrap();
    let r = response(inflight).await;
    let why = tokio::time::timeout(Duration::from_secs(10), daemon)
        .await
        .expect("serve returns within 10 s of its shutdown")
        .unwrap()
        .unwrap();
    assert_eq!(why, StopReason::Shutdown);
    // The listeners are closed: no new connection is taken.
    for addr in [api_addr, ui_addr] {
        assert!(TcpStream::connect(addr).await.is_err(), "{addr} still accepts");
    }
    assert!(r.starts_with("HTTP/1.1 "), "no answer to the request in flight: {r:?}");
}
