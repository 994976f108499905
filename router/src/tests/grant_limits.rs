//! Issue 19, item 8: the site owner sees until when a maintenance grant
//! lasts — the end time the center's acceptance answer carries, on the LAN
//! page, in the JSON API and in `routerd status`/`hosts` — and nothing is
//! made up when the center did not say.

use tokio::net::TcpListener;

use super::shell::{api_request, config, start_center, tmpdir, Running};
use crate::view::{hosts_text, until};
use crate::web::ApiAccepted;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lan_page_status_and_hosts_show_until_when_the_center_ends_the_grant() {
    let dir = tmpdir("grant-limits");
    let cl = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let cfg = config(cl.local_addr().unwrap(), &dir);
    let center = start_center(cfg.factory_secret.clone(), cl).await;
    let (now, lifetime) = {
        let mut c = center.0.lock().unwrap();
        c.grant_lifetime_secs = Some(4 * 3600);
        (c.now, 4 * 3600)
    };
    let end = now + lifetime;
    let rt = Running::start(cfg.clone()).await;
    rt.wait_installed().await;

    let (s, b) = rt.post("/api/request", api_request(&["pc1"]), None).await;
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&b));
    let acc: ApiAccepted = serde_json::from_slice(&b).unwrap();
    assert_eq!(acc.ends_at, Some(end));

    // The LAN page: the request's row says until when.
    let (s, page) = rt.get("/").await;
    let page = String::from_utf8(page).unwrap();
    assert_eq!(s, 200);
    let cell = format!("<td class=\"until\">{}</td>", until(end));
    assert!(page.contains(&cell), "{cell} not in {page}");

    // The JSON status, `routerd status` and `routerd hosts`.
    let (_, b) = rt.get("/api/status").await;
    let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(v["requests"][0]["ends_at"], serde_json::json!(end));
    let status = rt.router.status().await;
    assert!(status.to_text().contains(&until(end)), "{}", status.to_text());
    let hosts = rt.router.hosts().await;
    let pc1 = hosts.iter().find(|h| h.name == "pc1").unwrap();
    assert_eq!(pc1.ends_at, Some(end));
    assert!(hosts_text(&hosts).contains(&until(end)));

    // A center that does not say (an older one): no limit is shown.
    center.0.lock().unwrap().grant_lifetime_secs = None;
    let (s, b) = rt.post("/api/request", api_request(&["printer"]), None).await;
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&b));
    let acc: ApiAccepted = serde_json::from_slice(&b).unwrap();
    assert_eq!(acc.ends_at, None);
    let (_, page) = rt.get("/").await;
    let page = String::from_utf8(page).unwrap();
    let row = format!("<tr id=\"request-{}\">", acc.acceptance_number);
    let tail = &page[page.find(&row).expect("the new request's row")..];
    let row_html = &tail[..tail.find("</tr>").unwrap()];
    assert!(
        row_html.contains("<td class=\"until\">no limit shown</td>"),
        "{row_html}"
    );
    rt.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
