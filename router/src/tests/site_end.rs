//! Site end (issue 19, item 7) through the real shell: the LAN page's
//! "end maintenance" form and the JSON API `routerd end N` uses, against
//! the fake center over HTTP, including a center that cannot be reached.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use vpnnat_proto::decode_response;
use vpnnat_proto::keys::SecretBytes;
use vpnnat_proto::messages::ReleaseCommand;

use super::shell::{api_request, config, tmpdir, Running};
use crate::http::{self, auth_headers};
use crate::state::RequestState;
use crate::testing::{CenterSim, FakeCenter};
use crate::web::{ApiEnd, ApiEnded, ApiError};
use vpnnat_service::clock::unix_now;

/// The fake center on `listener` until `stop` fires.
fn serve_center(sim: Arc<CenterSim>, listener: TcpListener) -> (oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(http::serve(listener, sim, async move {
        let _ = rx.await;
    }));
    (tx, task)
}

fn end_body(n: u64) -> Vec<u8> {
    serde_json::to_vec(&ApiEnd { acceptance_number: n }).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_site_owner_ends_a_request_online_and_while_the_center_is_unreachable() {
    let dir = tmpdir("site-end");
    let cl = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let caddr = cl.local_addr().unwrap();
    let cfg = config(caddr, &dir);
    let mut fake = FakeCenter::new("router-1", cfg.factory_secret.clone());
    fake.now = unix_now();
    let center = Arc::new(CenterSim(std::sync::Mutex::new(fake)));
    let (stop_center, center_task) = serve_center(center.clone(), cl);
    let rt = Running::start(cfg.clone()).await;
    rt.wait_installed().await;
    for names in [["pc1"], ["printer"]] {
        let (s, b) = rt.post("/api/request", api_request(&names), None).await;
        assert_eq!(s, 200, "{}", String::from_utf8_lossy(&b));
    }
    assert_eq!(rt.mappings().await, 4, "own parts, pc1 (101), printer (102)");

    // The page offers the end of each open request.
    let (_, page) = rt.get("/").await;
    let page = String::from_utf8(page).unwrap();
    assert!(
        page.contains("id=\"end-101\"") && page.contains("id=\"end-102\""),
        "{page}"
    );
    assert!(page.contains("action=\"/end\""), "{page}");

    // A cross-site form post is refused like every other POST: nothing ends.
    let (s, _, _) = http::request(
        &rt.lan,
        hyper::Method::POST,
        "/end",
        &[
            ("content-type", "application/x-www-form-urlencoded"),
            ("origin", "http://evil.example"),
        ],
        Some(b"acceptance_number=101".to_vec()),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert_eq!(s, 403);
    assert_eq!(rt.router.state().await.requests[&101].state, RequestState::Waiting);
    assert_eq!(rt.mappings().await, 4);

    // Online: the form ends 101; the center hears it and answers.
    center.0.lock().unwrap().seen.clear();
    let (s, page) = rt
        .post(
            "/end",
            b"acceptance_number=101".to_vec(),
            Some("application/x-www-form-urlencoded"),
        )
        .await;
    let page = String::from_utf8(page).unwrap();
    assert_eq!(s, 200, "{page}");
    assert!(page.contains("Maintenance request 101 ended"), "{page}");
    assert_eq!(center.0.lock().unwrap().seen, ["/v1/router/end"]);
    assert_eq!(center.0.lock().unwrap().site_ends, [101]);
    let st = rt.router.state().await;
    assert_eq!(st.requests[&101].state, RequestState::Ended);
    assert!(!st.requests[&101].end_unsent, "acknowledged");
    assert_eq!(rt.mappings().await, 3, "pc1's NAT row is gone");

    // Refusals: not open any more, unknown, no number; nothing changes.
    let (s, b) = rt.post("/api/end", end_body(101), Some("application/json")).await;
    assert_eq!(s, 409, "{}", String::from_utf8_lossy(&b));
    let (s, b) = rt.post("/api/end", end_body(999), Some("application/json")).await;
    assert_eq!(s, 404);
    let e: ApiError = serde_json::from_slice(&b).unwrap();
    assert!(e.error.contains("not one of this router's requests"), "{}", e.error);
    let (s, _) = rt.post("/end", b"acceptance_number=x".to_vec(), None).await;
    assert_eq!(s, 400);
    assert_eq!(rt.mappings().await, 3);

    // The center goes away. The end of 102 through the API (`routerd end
    // 102`) still removes printer at once and says the center is told later.
    stop_center.send(()).unwrap();
    center_task.await.unwrap();
    let (s, b) = rt.post("/api/end", end_body(102), Some("application/json")).await;
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&b));
    let ended: ApiEnded = serde_json::from_slice(&b).unwrap();
    assert_eq!(ended.center, "pending");
    assert!(ended.message().contains("could not be told yet"), "{}", ended.message());
    assert_eq!(rt.mappings().await, 2, "only the router's own parts");
    let st = rt.router.state().await;
    assert!(st.hosts.is_empty());
    assert!(st.requests[&102].end_unsent);
    let (_, status) = rt.get("/api/status").await;
    let status: serde_json::Value = serde_json::from_slice(&status).unwrap();
    assert_eq!(status["requests"][0]["acceptance_number"], 102);
    assert_eq!(status["requests"][0]["end_unsent"], true);
    // The center's release for it, when it comes, is acknowledged.
    let rel = center.0.lock().unwrap().release("printer");
    let (s, h, body) = rt.command(&rel).await;
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&body));
    let key = center.0.lock().unwrap().secret_id2.mac_key();
    decode_response::<ReleaseCommand>(&rel, &key, &auth_headers(&h).unwrap(), &body).unwrap();
    // Still unreachable: the retry keeps it due.
    assert_eq!(rt.router.send_unsent_ends().await, 1);

    // The center is back on the same port: the next exchange (a new
    // request) tells it first.
    let cl = TcpListener::bind(caddr).await.unwrap();
    center.0.lock().unwrap().seen.clear();
    let (stop_center, center_task) = serve_center(center.clone(), cl);
    let (s, b) = rt.post("/api/request", api_request(&["pc1"]), None).await;
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&b));
    assert_eq!(
        center.0.lock().unwrap().seen,
        ["/v1/router/end", "/v1/router/gateway-address", "/v1/router/maintenance"]
    );
    assert_eq!(center.0.lock().unwrap().site_ends, [101, 102]);
    assert!(!rt.router.state().await.requests[&102].end_unsent);
    assert_eq!(rt.router.send_unsent_ends().await, 0);
    rt.stop().await;
    stop_center.send(()).unwrap();
    center_task.await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}
