//! Time limits on grants (issue 19, item 8), through the center with an
//! in-memory SQLite database and the time handed in.

use super::tests::*;
use super::*;
use crate::limits::{LimitError, DEFAULT_MAX_LIFETIME_SECS as MAX};
use crate::storage::{AuditFilter, AuditRow, RequestState};
use vpnnat_proto::messages::MaintenanceRequest;

fn audit_of(c: &TestCenter, n: u64) -> Vec<AuditRow> {
    let mut rows = c
        .store()
        .unwrap()
        .audit_log(&AuditFilter {
            acceptance_number: Some(n),
            limit: 100,
            ..AuditFilter::default()
        })
        .unwrap();
    rows.reverse();
    rows
}

/// An installed router with one request for `pc1` whose tunnel is up.
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

#[tokio::test]
async fn every_request_is_stored_with_the_configured_maximum_lifetime() {
    let (c, _, _) = center_with("10.64.0.0/24", &[2]);
    let (_, n) = one_request(&c).await;
    let row = c.store().unwrap().request(n).unwrap().unwrap();
    assert_eq!(row.expires_at, Some(NOW + MAX));
    assert_eq!(row.limit_set_by, None);
    assert_eq!(c.request_end(&row), NOW + MAX);
}

#[tokio::test]
async fn a_request_past_its_lifetime_is_ended_like_an_operators_end_with_everything_released() {
    let (c, g, rt) = center_with("10.64.0.0/24", &[2]);
    let (r, n) = one_request(&c).await;
    c.start(n, NOW).unwrap();
    g.take();
    rt.take();
    // A second before its end: nothing happens.
    assert!(c.expire_due(NOW + MAX - 1).await.unwrap().is_empty());
    assert_eq!(
        c.store().unwrap().request(n).unwrap().unwrap().state,
        RequestState::InProgress
    );
    assert!(rt.take().is_empty() && g.take().is_empty());

    let out = c.expire_due(NOW + MAX).await.unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].acceptance_number, n);
    assert!(out[0].vpn_ended);
    assert_eq!(out[0].released.len(), 1);
    // The router was told, exactly as for the operator's end.
    let server_part = r.secrets.as_ref().unwrap().server_part_vpnnat();
    assert_eq!(
        rt.take(),
        vec![
            format!("end router-1 {server_part} {n}"),
            "release router-1 pc1".to_string(),
            "vpn-end router-1".to_string()
        ]
    );
    assert_eq!(g.take().last().unwrap(), "teardown gw1 router-1");
    {
        let st = c.store().unwrap();
        let row = st.request(n).unwrap().unwrap();
        assert_eq!((row.state, row.ended_at), (RequestState::Ended, Some(NOW + MAX)));
        assert!(st.slot_of("router-1").unwrap().is_none());
        assert_eq!(st.address_of("router-1", "pc1").unwrap(), None);
        // Only the router's own two parts stay allocated.
        assert_eq!(st.pool_usage().unwrap().allocated, 2);
    }
    let audit = audit_of(&c, n);
    let expire = audit.iter().find(|a| a.action == "expire").expect("an expire row");
    assert_eq!(expire.actor, "centerd");
    assert!(
        expire.detail.starts_with("expired: the maximum lifetime passed"),
        "{}",
        expire.detail
    );
    assert!(audit.iter().any(|a| a.action == "release") && audit.iter().any(|a| a.action == "vpn_end"));
    // Nothing more to do later; an ended request is not ended twice.
    assert!(c.expire_due(NOW + 2 * MAX).await.unwrap().is_empty());
    assert!(rt.take().is_empty());
}

#[tokio::test]
async fn an_operators_shorter_limit_is_honoured_and_the_expiry_names_who_set_it() {
    let (c, _, rt) = center_with("10.64.0.0/24", &[2]);
    let (_, n) = one_request(&c).await;
    let op = Actor::new("operator#1", "172.16.0.5");
    let row = c.limit_by(n, 30, NOW + 60, &op).unwrap();
    let end = NOW + 60 + 30 * 60;
    assert_eq!(row.expires_at, Some(end));
    assert_eq!(row.limit_set_by.as_deref(), Some("operator#1"));
    assert_eq!(c.request_end(&row), end);
    let limit = audit_of(&c, n)
        .into_iter()
        .find(|a| a.action == "limit")
        .expect("a limit row");
    assert_eq!(
        (limit.actor.as_str(), limit.peer.as_str()),
        ("operator#1", "172.16.0.5")
    );
    assert!(limit.detail.contains("30 min"), "{}", limit.detail);
    rt.take();

    assert!(c.expire_due(end - 1).await.unwrap().is_empty());
    assert_eq!(c.expire_due(end).await.unwrap().len(), 1);
    assert!(rt.take().iter().any(|x| x.starts_with("end router-1")));
    let expire = audit_of(&c, n).into_iter().find(|a| a.action == "expire").unwrap();
    assert!(expire.detail.contains("set by operator#1"), "{}", expire.detail);
    assert_eq!(c.store().unwrap().pool_usage().unwrap().allocated, 2);
}

#[tokio::test]
async fn an_operator_cannot_raise_the_limit_above_the_configured_maximum() {
    let (c, _, _) = center_with("10.64.0.0/24", &[2]);
    let (_, n) = one_request(&c).await;
    let op = Actor::new("operator#1", "172.16.0.5");
    // Shortened first, then restored up to the maximum: allowed.
    c.limit_by(n, 10, NOW, &op).unwrap();
    assert_eq!(c.limit_by(n, MAX / 60, NOW, &op).unwrap().expires_at, Some(NOW + MAX));
    let before = audit_of(&c, n).len();
    let e = c.limit_by(n, MAX / 60 + 1, NOW, &op).unwrap_err();
    assert!(
        matches!(e, CenterError::Limit(LimitError::AboveMaximum { latest, .. }) if latest == NOW + MAX),
        "{e:?}"
    );
    assert_eq!(e.http_status(), 400);
    assert!(e.to_string().contains("center.max_grant_lifetime_secs"), "{e}");
    // Nothing changed, nothing audited.
    let row = c.store().unwrap().request(n).unwrap().unwrap();
    assert_eq!(row.expires_at, Some(NOW + MAX));
    assert_eq!(audit_of(&c, n).len(), before);
    // An ended request takes no limit; an unknown one neither.
    c.end(n, NOW).await.unwrap();
    assert_eq!(c.limit_by(n, 5, NOW, &op).unwrap_err().http_status(), 409);
    assert_eq!(c.limit_by(999, 5, NOW, &op).unwrap_err().http_status(), 404);
}

#[tokio::test]
async fn the_acceptance_answer_tells_the_router_when_the_request_ends_unless_it_is_an_old_router() {
    let (c, _, _) = center_with("10.64.0.0/24", &[2]);
    let mut r = TestRouter::new("router-1");
    r.install(&c);
    r.gateway_address(&c).await.unwrap();
    for (old, want) in [(false, Some(NOW + MAX)), (true, None)] {
        let (req, _) = r.maintenance_request(&["pc1"], vpnnat_proto::types::ClaimantLevel::General);
        let req = if old { req.without_ends_at() } else { req };
        let out = r.sign(&req, NOW);
        let resp = c
            .maintenance(out.path, &out.headers, &out.body, Ipv4Addr::new(203, 0, 113, 5), NOW)
            .await
            .unwrap();
        let answer: vpnnat_proto::messages::MaintenanceResponse =
            vpnnat_proto::decode_response::<MaintenanceRequest>(&out, &r.key(), &resp.headers, &resp.body).unwrap();
        assert_eq!(answer.ends_at, want, "old router: {old}");
        // An old router's parser (unknown fields refused) sees no new field.
        let body: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
        assert_eq!(body.get("ends_at").is_some(), !old);
    }
}
