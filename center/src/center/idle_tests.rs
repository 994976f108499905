//! The idle timeout (issue 19, item 8): a request whose router's tunnel
//! carried no packet for `[center] idle_timeout_secs` ends like an
//! operator's end, audited `expire` "idle: ...". Through the center with an
//! in-memory SQLite database, the fake gateway's state report and the
//! time handed in.

use super::tests::*;
use super::*;
use std::sync::Arc;

use super::GatewayCommands;

use crate::storage::{AuditFilter, RequestState};

const IDLE: u64 = 30 * 60;

fn idle_center(idle: Option<u64>) -> (TestCenter, Arc<FakeGateways>, Arc<FakeRouters>) {
    let mut s = settings(&[2]);
    s.idle_timeout_secs = idle;
    center_with_settings("10.64.0.0/24", s)
}

/// An installed router with one request for `pc1` (received at NOW)
/// whose tunnel is up.
async fn one_request(c: &TestCenter) -> (TestRouter, u64) {
    let mut r = TestRouter::new("router-1");
    r.install(c);
    r.gateway_address(c).await.unwrap();
    let (n, _) = r.maintenance(c, &["pc1"]).await.unwrap();
    let s = c.store().unwrap().slot_of("router-1").unwrap().unwrap();
    c.store()
        .unwrap()
        .set_tunnel_state(&s.gateway, s.slot, "router-1", TunnelState::Up, NOW)
        .unwrap();
    (r, n)
}

/// The gateway reports router-1's tunnel last carried a packet at `t`
/// (0: none), and the center hears it as from a heartbeat.
async fn gateway_says(c: &TestCenter, g: &Arc<FakeGateways>, t: Option<u64>) {
    match t {
        Some(t) => g.last_use.lock().unwrap().insert("router-1".into(), t),
        None => g.last_use.lock().unwrap().remove("router-1"),
    };
    c.record_traffic(&g.report("gw1").await.unwrap()).unwrap();
}

fn state(c: &TestCenter, n: u64) -> RequestState {
    c.store().unwrap().request(n).unwrap().unwrap().state
}

#[tokio::test]
async fn a_request_whose_tunnel_carried_nothing_for_the_idle_time_is_ended_and_audited() {
    let (c, g, rt) = idle_center(Some(IDLE));
    let (r, n) = one_request(&c).await;
    c.start(n, NOW).unwrap();
    rt.take();
    // No packet yet: idleness counts from the reception.
    gateway_says(&c, &g, Some(0)).await;
    assert!(c.expire_due(NOW + IDLE - 1).await.unwrap().is_empty());
    // A packet 10 minutes in moves it.
    gateway_says(&c, &g, Some(NOW + 600)).await;
    assert!(c.expire_due(NOW + IDLE).await.unwrap().is_empty());
    assert!(c.expire_due(NOW + 600 + IDLE - 1).await.unwrap().is_empty());
    assert_eq!(state(&c, n), RequestState::InProgress);
    assert!(rt.take().is_empty());

    // The tunnel set up again reports 0 (new policies): an earlier packet
    // stays said.
    gateway_says(&c, &g, Some(0)).await;
    assert_eq!(c.store().unwrap().tunnel_traffic("router-1").unwrap(), Some(NOW + 600));

    let out = c.expire_due(NOW + 600 + IDLE).await.unwrap();
    assert_eq!(out.len(), 1);
    assert!(out[0].vpn_ended);
    assert_eq!(state(&c, n), RequestState::Ended);
    let server_part = r.secrets.as_ref().unwrap().server_part_vpnnat();
    assert_eq!(
        rt.take(),
        vec![
            format!("end router-1 {server_part} {n}"),
            "release router-1 pc1".to_string(),
            "vpn-end router-1".to_string()
        ],
        "the router is told as for an operator's end"
    );
    let audit = c
        .store()
        .unwrap()
        .audit_log(&AuditFilter {
            acceptance_number: Some(n),
            limit: 100,
            ..AuditFilter::default()
        })
        .unwrap();
    let expire = audit.iter().find(|a| a.action == "expire").expect("an expire row");
    assert_eq!(expire.actor, "centerd");
    let since = crate::limits::utc_hhmm(NOW + 600);
    assert_eq!(expire.detail, format!("idle: no traffic since {since} for 30 min"));
    // Ended once.
    assert!(c.expire_due(NOW + 10 * IDLE).await.unwrap().is_empty());
}

#[tokio::test]
async fn without_the_gateways_word_or_with_the_gateway_down_nothing_ends_as_idle() {
    let (c, g, _) = idle_center(Some(IDLE));
    let (_, n) = one_request(&c).await;
    // A gateway from before: its report says nothing of traffic.
    gateway_says(&c, &g, None).await;
    assert_eq!(c.store().unwrap().tunnel_traffic("router-1").unwrap(), None);
    assert!(c.expire_due(NOW + 2 * IDLE).await.unwrap().is_empty());
    // Its word, but the gateway has since stopped answering: its last
    // word may be old, no evidence of idleness.
    gateway_says(&c, &g, Some(0)).await;
    c.store().unwrap().mark_gateway_down("gw1", NOW, NOW * 1000).unwrap();
    assert!(c.expire_due(NOW + 2 * IDLE).await.unwrap().is_empty());
    assert_eq!(state(&c, n), RequestState::Waiting);
    // Answering again: the request is idle.
    c.store().unwrap().mark_gateway_up("gw1", NOW * 1000).unwrap();
    assert_eq!(c.expire_due(NOW + 2 * IDLE).await.unwrap().len(), 1);
}

#[tokio::test]
async fn without_an_idle_timeout_an_unused_tunnel_ends_only_at_the_maximum_lifetime() {
    let (c, g, _) = idle_center(None);
    let (_, n) = one_request(&c).await;
    gateway_says(&c, &g, Some(0)).await;
    assert!(c.expire_due(NOW + 4 * 3600 - 1).await.unwrap().is_empty());
    assert_eq!(state(&c, n), RequestState::Waiting);
    assert_eq!(c.expire_due(NOW + 4 * 3600).await.unwrap().len(), 1);
}

/// The site owner sees the idle limit (issue 19, item 8): the acceptance
/// answer carries the center's `idle_timeout_secs` to a router that asks,
/// and leaves it out for a router from before it (its parser refuses
/// unknown fields) and when the center has no idle timeout.
#[tokio::test]
async fn the_acceptance_answer_tells_the_router_the_idle_limit_if_it_asks_and_there_is_one() {
    use vpnnat_proto::messages::{MaintenanceRequest, MaintenanceResponse};
    for (idle, old, want) in [
        (Some(IDLE), false, Some(IDLE)),
        (Some(IDLE), true, None),
        (None, false, None),
    ] {
        let (c, _, _) = idle_center(idle);
        let mut r = TestRouter::new("router-1");
        r.install(&c);
        r.gateway_address(&c).await.unwrap();
        let (req, _) = r.maintenance_request(&["pc1"], vpnnat_proto::types::ClaimantLevel::General);
        let req = if old { req.without_idle_timeout() } else { req };
        let out = r.sign(&req, NOW);
        let resp = c
            .maintenance(out.path, &out.headers, &out.body, Ipv4Addr::new(203, 0, 113, 5), NOW)
            .await
            .unwrap();
        let answer: MaintenanceResponse =
            vpnnat_proto::decode_response::<MaintenanceRequest>(&out, &r.key(), &resp.headers, &resp.body).unwrap();
        assert_eq!(answer.idle_timeout_secs, want, "idle {idle:?}, old router: {old}");
        // The end time is told either way (that router knows it).
        assert!(answer.ends_at.is_some());
        let body: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
        assert_eq!(body.get("idle_timeout_secs").is_some(), want.is_some());
    }
}
