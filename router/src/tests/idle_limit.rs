//! Issue 19, item 8: the site owner sees the center's idle limit — told
//! with the acceptance answer — on the LAN page (the request's row and the
//! "Reachable now" row, with the last traffic the router saw and the end
//! if quiet), in `/api/status` and in `routerd status`/`hosts`; nothing is
//! made up when the center did not say.

use std::time::Duration;

use tokio::net::TcpListener;

use super::shell::{api_request, config, start_center, tmpdir, Running};
use crate::view::hosts_text;
use crate::web::ApiAccepted;
use vpnnat_datapath::apply::RecordingDatapath;

/// The row of `id` (`<tr id="ID">...</tr>`) in `page`.
fn row<'a>(page: &'a str, id: &str) -> &'a str {
    let start = format!("<tr id=\"{id}\">");
    let tail = &page[page.find(&start).unwrap_or_else(|| panic!("{start} not in {page}"))..];
    &tail[..tail.find("</tr>").unwrap()]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lan_page_status_and_hosts_show_the_idle_limit_the_center_told() {
    let dir = tmpdir("idle-limit");
    let cl = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let cfg = config(cl.local_addr().unwrap(), &dir);
    let center = start_center(cfg.factory_secret.clone(), cl).await;
    center.0.lock().unwrap().idle_timeout_secs = Some(30 * 60);
    let dp = RecordingDatapath::new();
    let traffic = dp.traffic.clone();
    let rt = Running::start_with(cfg.clone(), dp, Duration::from_secs(30)).await;
    rt.wait_installed().await;

    let (s, b) = rt.post("/api/request", api_request(&["pc1"]), None).await;
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&b));
    let acc: ApiAccepted = serde_json::from_slice(&b).unwrap();
    assert_eq!(acc.idle_timeout_secs, Some(1800));
    let n = acc.acceptance_number;
    let started = rt.router.status().await.requests[0].accepted_at;

    // The LAN page: the request's row and the device's live row.
    let (s, page) = rt.get("/").await;
    let page = String::from_utf8(page).unwrap();
    assert_eq!(s, 200);
    let r = row(&page, &format!("request-{n}"));
    assert!(r.contains("<td class=\"idle\">idle limit 30 min</td>"), "{r}");
    let live = row(&page, "live-pc1");
    let quiet = crate::live::clock(started + 1800);
    assert!(
        live.contains(&format!(
            "<td class=\"idle\">idle limit 30 min; no traffic yet; ends {quiet} if quiet</td>"
        )),
        "{live}"
    );

    // The operator works: the router sees the count move and counts the
    // quiet time from then.
    traffic
        .lock()
        .unwrap()
        .insert("192.168.1.10".parse().unwrap(), (5, 600));
    let (_, b) = rt.get("/api/status").await;
    let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(v["requests"][0]["idle_timeout_secs"], serde_json::json!(1800));
    let d = &v["live"]["devices"][0];
    assert_eq!(d["name"], "pc1");
    assert_eq!(d["idle_timeout_secs"], serde_json::json!(1800));
    let last = d["last_traffic"].as_u64().expect("the traffic the router saw");
    assert!(last >= started, "{d}");
    assert_eq!(d["quiet_end"].as_u64(), Some(last + 1800), "{d}");
    assert_eq!(
        d["text"]["idle"],
        format!(
            "idle limit 30 min; last traffic {}; ends {} if quiet",
            crate::live::clock(last),
            crate::live::clock(last + 1800)
        )
    );

    // `routerd status` and `routerd hosts`.
    let status = rt.router.status().await;
    assert!(status.to_text().contains(", idle limit 30 min"), "{}", status.to_text());
    let hosts = rt.router.hosts().await;
    let pc1 = hosts.iter().find(|h| h.name == "pc1").unwrap();
    assert_eq!(pc1.idle_timeout_secs, Some(1800));
    assert!(
        hosts_text(&hosts).contains(", idle limit 30 min"),
        "{}",
        hosts_text(&hosts)
    );

    // A center without an idle timeout (or an older one): none shown.
    center.0.lock().unwrap().idle_timeout_secs = None;
    let (s, b) = rt.post("/api/request", api_request(&["printer"]), None).await;
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&b));
    let acc: ApiAccepted = serde_json::from_slice(&b).unwrap();
    assert_eq!(acc.idle_timeout_secs, None);
    let (_, page) = rt.get("/").await;
    let page = String::from_utf8(page).unwrap();
    let r = row(&page, &format!("request-{}", acc.acceptance_number));
    assert!(r.contains("<td class=\"idle\">none told</td>"), "{r}");
    let live = row(&page, "live-printer");
    assert!(live.contains("<td class=\"idle\">no idle limit told</td>"), "{live}");
    let hosts = rt.router.hosts().await;
    let printer = hosts.iter().find(|h| h.name == "printer").unwrap();
    assert_eq!(printer.idle_timeout_secs, None);
    rt.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
