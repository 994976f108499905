//! Request states (issue 19, item 1) through the real shell: the center
//! ended requests while its end commands could not reach the router (the
//! tunnel was down); the router's health watch asks, ends them here, and
//! its next request works.

use std::time::Duration;

use tokio::net::TcpListener;
use vpnnat_datapath::RecordingDatapath;

use super::shell::{api_request, config, start_center, tmpdir, Running};
use crate::state::RequestState;

async fn wait_until(what: &str, mut ok: impl AsyncFnMut() -> bool) {
    for _ in 0..400 {
        if ok().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("never: {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_watch_converges_on_requests_the_center_ended_while_it_could_not_tell_the_router() {
    let dir = tmpdir("request-states");
    let cl = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let cfg = config(cl.local_addr().unwrap(), &dir);
    let center = start_center(cfg.factory_secret.clone(), cl).await;
    let rt = Running::start_with(cfg.clone(), RecordingDatapath::new(), Duration::from_millis(50)).await;
    rt.wait_installed().await;
    for names in [["pc1"], ["printer"]] {
        let (s, b) = rt.post("/api/request", api_request(&names), None).await;
        assert_eq!(s, 200, "{}", String::from_utf8_lossy(&b));
    }
    assert_eq!(rt.mappings().await, 4, "own parts, pc1 (101), printer (102)");
    // While both are open the router asks, and nothing changes.
    wait_until("a request-states query naming both", async || {
        center.0.lock().unwrap().state_queries.last() == Some(&vec![101, 102])
    })
    .await;
    assert_eq!(rt.mappings().await, 4);
    let (_, page) = rt.get("/api/status").await;
    assert!(String::from_utf8(page).unwrap().contains("\"waiting\""));

    // The center ends 101 and its commands are lost: the next tick ends it
    // here and pc1's NAT row goes; 102 keeps the gateway.
    center.0.lock().unwrap().ended_unseen.push(101);
    wait_until("101 ended at the router", async || {
        rt.router.state().await.requests[&101].state == RequestState::Ended
    })
    .await;
    assert_eq!(rt.mappings().await, 3);
    assert!(rt.router.state().await.gateway.is_some());

    // Then 102: nothing waits, the gateway goes with the last grant.
    center.0.lock().unwrap().ended_unseen.push(102);
    wait_until("102 ended at the router", async || {
        rt.router.state().await.requests[&102].state == RequestState::Ended
    })
    .await;
    let st = rt.router.state().await;
    assert!(st.hosts.is_empty() && st.gateway.is_none());
    assert_eq!(rt.mappings().await, 2, "only the router's own parts");
    // The LAN page no longer says "waiting" for them.
    let (_, page) = rt.get("/api/status").await;
    let page = String::from_utf8(page).unwrap();
    assert!(!page.contains("\"waiting\""), "{page}");

    // Nothing open: the watch stops asking.
    let asked = center.0.lock().unwrap().state_queries.len();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(center.0.lock().unwrap().state_queries.len(), asked);

    // The next request asks for a gateway anew and works.
    center.0.lock().unwrap().seen.clear();
    let (s, b) = rt.post("/api/request", api_request(&["pc1"]), None).await;
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&b));
    let seen = center.0.lock().unwrap().seen.clone();
    assert!(
        seen.iter().any(|p| p == "/v1/router/gateway-address") && seen.iter().any(|p| p == "/v1/router/maintenance"),
        "{seen:?}"
    );
    assert_eq!(rt.mappings().await, 3);
    rt.stop().await;
}
