//! The LAN page against DNS rebinding and the installation notice, and the
//! page headers of both router pages (issue 18, items 2 and 9), over real
//! sockets.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::shell::{api_request, config, maintenance_auth, start_center, tmpdir, Running};
use crate::http::{Handler, Incoming1};
use crate::web::{LanPage, INSTALL_PATH};

/// One request with exactly this `Host` (the client helper always sends
/// the address it dials); returns the status, the head and the body.
pub(crate) async fn with_host(
    addr: &str,
    method: &str,
    path: &str,
    host: &str,
    extra: &[(&str, &str)],
    body: &[u8],
) -> (u16, String, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in extra {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, head.to_ascii_lowercase(), body.to_owned())
}

async fn installed_router(tag: &str, names: &[&str]) -> (Running, std::path::PathBuf, Arc<crate::testing::CenterSim>) {
    let dir = tmpdir(tag);
    let cl = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let cfg = config(cl.local_addr().unwrap(), &dir);
    let center = start_center(cfg.factory_secret.clone(), cl).await;
    let mut cfg = Arc::into_inner(cfg).unwrap();
    cfg.web_ui_host_names = names.iter().map(|n| n.to_string()).collect();
    let rt = Running::start(Arc::new(cfg)).await;
    rt.wait_installed().await;
    (rt, dir, center)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lan_page_refuses_a_rebound_host_and_changes_nothing() {
    let (rt, dir, _center) = installed_router("rebind", &["router.lan"]).await;
    let before = (format!("{:?}", rt.router.state().await), rt.mappings().await);
    let port = rt.lan.rsplit(':').next().unwrap().to_owned();
    let body = api_request(&["pc1"]);
    let json = [("content-type", "application/json"), ("origin", "http://evil.example")];
    let form = [
        ("content-type", "application/x-www-form-urlencoded"),
        ("origin", "http://evil.example"),
    ];
    // What a rebound page would do: read the host table, file requests,
    // press the button, ask for installation; with its own name as Host
    // (and as Origin, so the origin check alone would pass).
    type Headers<'a> = &'a [(&'a str, &'a str)];
    let cases: [(&str, &str, Headers); 7] = [
        ("GET", "/", &[]),
        ("GET", "/api/hosts", &[]),
        ("GET", "/api/status", &[]),
        ("POST", "/api/request", &json),
        ("POST", "/request", &form),
        ("POST", "/button", &form),
        ("POST", INSTALL_PATH, &json),
    ];
    for host in [
        "evil.example",
        &format!("evil.example:{port}"),
        "192.168.1.10",
        "router.lan.evil.example",
    ] {
        for (method, path, extra) in cases {
            let (s, _, b) = with_host(&rt.lan, method, path, host, extra, &body).await;
            assert_eq!(s, 421, "{method} {path} Host {host}: {b}");
            assert!(b.contains("answers only to the router's address"), "{b}");
            assert!(!b.contains("pc1") && !b.contains("192.168.1.10"), "nothing leaks: {b}");
        }
    }
    assert_eq!(
        (format!("{:?}", rt.router.state().await), rt.mappings().await),
        before,
        "no state change"
    );
    // The router's addresses (with or without port) and its configured
    // name are served.
    for host in [
        rt.lan.clone(),
        "127.0.0.1".into(),
        "192.168.1.1".into(),
        format!("router.lan:{port}"),
        "ROUTER.LAN".into(),
    ] {
        let (s, _, b) = with_host(&rt.lan, "GET", "/api/hosts", &host, &[], b"").await;
        assert_eq!(s, 200, "Host {host}: {b}");
        assert!(b.contains("pc1"), "{b}");
    }
    rt.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn installation_is_not_on_the_lan_page_only_the_router_itself_asks_for_it() {
    let (rt, dir, center) = installed_router("install", &[]).await;
    let installs = || {
        let c = center.0.lock().unwrap();
        c.seen
            .iter()
            .filter(|p| p.ends_with(vpnnat_proto::paths::center::INSTALL))
            .count()
    };
    let n = installs();
    // The old LAN API route is gone.
    let (s, _, b) = with_host(
        &rt.lan,
        "POST",
        "/api/install",
        &rt.lan,
        &[("content-type", "application/json")],
        b"",
    )
    .await;
    assert_eq!(s, 404, "{b}");
    // A LAN device (its own source address) is refused, before anything
    // is sent to the center.
    let page = LanPage {
        router: rt.router.clone(),
    };
    let req = |peer: SocketAddr| Incoming1 {
        method: Method::POST,
        path: INSTALL_PATH.to_owned(),
        headers: [
            (
                hyper::header::HOST,
                hyper::header::HeaderValue::from_static("192.168.1.1"),
            ),
            (
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/json"),
            ),
        ]
        .into_iter()
        .collect(),
        body: Vec::new(),
        peer,
    };
    let r = page.handle(req("192.168.1.10:40000".parse().unwrap())).await;
    assert_eq!(r.status(), 403);
    assert_eq!(installs(), n, "no installation notice for a LAN device");
    // The router itself (routerd install: loopback or its LAN address).
    for own in ["127.0.0.1:40000", "192.168.1.1:40000"] {
        let r = page.handle(req(own.parse().unwrap())).await;
        assert_eq!(r.status(), 200, "{own}");
    }
    assert_eq!(installs(), n + 2);
    rt.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// The three headers, and a policy that names every inline style and
/// script the page really has (else the browser would block them).
fn assert_page_headers(what: &str, h: &hyper::HeaderMap, body: &str) {
    let get = |n: &str| h.get(n).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    assert_eq!(get("x-frame-options"), "DENY", "{what}");
    assert_eq!(get("x-content-type-options"), "nosniff", "{what}");
    let csp = get("content-security-policy");
    assert!(
        csp.contains("frame-ancestors 'none'") && csp.starts_with("default-src 'none'"),
        "{what}: {csp}"
    );
    use vpnnat_proto::page_headers::{csp_hash, inline_elements};
    for tag in ["style", "script"] {
        for inline in inline_elements(body, tag) {
            assert!(csp.contains(&csp_hash(inline)), "{what}: <{tag}> not in {csp}");
        }
    }
    assert!(
        !body.contains(" style=") && !body.contains(" onclick="),
        "{what}: inline attributes would be blocked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_router_pages_carry_the_framing_and_content_policy_headers() {
    let (rt, dir, _center) = installed_router("headers", &[]).await;
    let (s, h, b) = crate::http::request(&rt.lan, Method::GET, "/", &[], None, Duration::from_secs(5))
        .await
        .unwrap();
    let body = String::from_utf8(b).unwrap();
    assert_eq!(s, 200);
    assert!(body.contains("<script>") && body.contains("<style>"), "{body}");
    assert_page_headers("LAN page", &h, &body);
    let auth = maintenance_auth();
    let (s, h, b) = crate::http::request(
        &rt.center_port,
        Method::GET,
        "/maintenance",
        &[("authorization", auth.as_str())],
        None,
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    let body = String::from_utf8(b).unwrap();
    assert_eq!(s, 200);
    assert_page_headers("maintenance page", &h, &body);
    // The refusals too (a 401 page may be framed as well as any other).
    let (s, h, _) = crate::http::request(
        &rt.center_port,
        Method::GET,
        "/maintenance",
        &[],
        None,
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert_eq!(s, 401);
    assert_page_headers("maintenance 401", &h, "");
    let (s, h, _) = with_host(&rt.lan, "GET", "/", "evil.example", &[], b"").await;
    assert_eq!(s, 421);
    assert!(h.contains("x-frame-options: deny"), "{h}");
    rt.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}
