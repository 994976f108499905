//! The router itself as a maintenance target (issue 19, item 2;
//! PROTOCOL.md [0078], [0096]) through the real shell: the LAN page and
//! the JSON API offer its server part and router part by name, a request
//! for them is granted the installation's VPNNAT addresses and adds no NAT
//! row, and neither its end nor the VPN end takes the router's own
//! mappings away.

use std::net::Ipv4Addr;
use std::time::Duration;

use tokio::net::TcpListener;

use super::shell::{api_request, config, start_center, tmpdir, Running};
use crate::state::RequestState;
use crate::web::ApiAccepted;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_itself_is_requested_by_name_and_its_mappings_outlive_the_end() {
    let dir = tmpdir("router-itself");
    let cl = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let cfg = config(cl.local_addr().unwrap(), &dir);
    let center = start_center(cfg.factory_secret.clone(), cl).await;
    let rt = Running::start(cfg.clone()).await;
    rt.wait_installed().await;
    let inst = rt.router.state().await.installation.clone().unwrap();
    assert_eq!(rt.mappings().await, 2, "the installation maps both parts");

    // The page and the JSON API offer the router's two parts by name.
    let (s, page) = rt.get("/").await;
    let page = String::from_utf8(page).unwrap();
    assert_eq!(s, 200);
    assert!(
        page.contains("value=\"server-part\"") && page.contains("value=\"router-part\""),
        "{page}"
    );
    let (s, hosts) = rt.get("/api/hosts").await;
    assert_eq!(s, 200);
    let hosts: serde_json::Value = serde_json::from_slice(&hosts).unwrap();
    let own = |name: &str| {
        hosts
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} not offered: {hosts}"))
    };
    assert_eq!(own("server-part")["source"], "router");
    assert_eq!(own("server-part")["real"], "192.168.1.1");
    assert_eq!(own("router-part")["real"], cfg.router_part_address.to_string());

    // A request for the router itself: the installation addresses, no new row.
    let (s, b) = rt
        .post("/api/request", api_request(&["server-part", "router-part"]), None)
        .await;
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&b));
    let acc: ApiAccepted = serde_json::from_slice(&b).unwrap();
    let granted: Vec<(&str, Ipv4Addr, Ipv4Addr)> =
        acc.grants.iter().map(|g| (g.name.as_str(), g.real, g.vpnnat)).collect();
    assert_eq!(
        granted,
        [
            ("server-part", Ipv4Addr::new(192, 168, 1, 1), inst.server_part_vpnnat),
            ("router-part", cfg.router_part_address, inst.router_part_vpnnat),
        ]
    );
    assert_eq!(rt.mappings().await, 2, "no NAT row beyond the installation's");
    assert!(rt.router.state().await.hosts.is_empty());
    // The request for the router itself beside one for a LAN host.
    let (s, b) = rt
        .post("/api/request", api_request(&["server-part", "pc1"]), None)
        .await;
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&b));
    assert_eq!(rt.mappings().await, 3);

    // The center ends the request for the router itself (its judgment 2
    // sends no release): the router's own mappings stay.
    let end = center.0.lock().unwrap().end(101);
    let (s, _, body) = rt.command(&end).await;
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(rt.router.state().await.requests[&101].state, RequestState::Ended);
    assert_eq!(rt.mappings().await, 3);

    // The site owner ends the other one: pc1 goes, the router's parts stay.
    let (s, b) = rt
        .post(
            "/api/end",
            serde_json::to_vec(&crate::web::ApiEnd { acceptance_number: 102 }).unwrap(),
            None,
        )
        .await;
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&b));
    assert_eq!(rt.mappings().await, 2);

    // VPN end: the router's own parts stay mapped ([0228]).
    let cmd = center.0.lock().unwrap().vpn_end();
    let (s, _, _) = rt.command(&cmd).await;
    assert_eq!(s, 200);
    tokio::time::sleep(crate::daemon::VPN_END_GRACE + Duration::from_millis(700)).await;
    assert_eq!(rt.mappings().await, 2);
    rt.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}
