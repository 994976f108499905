//! Site end (issue 19, item 7) through the center, with an in-memory
//! database and fake gateway/router command channels.

use super::site_end::site_end_decision;
use super::tests::*;
use super::*;
use crate::storage::{AuditFilter, RequestState};
use vpnnat_proto::decode_response;
use vpnnat_proto::messages::{SiteEndAnswer, SiteEndOutcome, SiteEndRequest};

const PEER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 5);

async fn site_end(c: &TestCenter, r: &TestRouter, n: u64) -> Result<SiteEndOutcome, CenterError> {
    let out = r.sign(
        &SiteEndRequest {
            acceptance_number: AcceptanceNumber::new(n).unwrap(),
        },
        NOW,
    );
    let resp = c.site_end(out.path, &out.headers, &out.body, NOW, Some(PEER)).await?;
    let a: SiteEndAnswer = decode_response::<SiteEndRequest>(&out, &r.key(), &resp.headers, &resp.body).unwrap();
    Ok(a.outcome)
}

fn audit(c: &TestCenter) -> Vec<crate::storage::AuditRow> {
    c.store()
        .unwrap()
        .audit_log(&AuditFilter {
            limit: 1000,
            ..AuditFilter::default()
        })
        .unwrap()
}

fn state_of(c: &TestCenter, n: u64) -> RequestState {
    c.store().unwrap().request(n).unwrap().unwrap().state
}

#[test]
fn decision_own_open_ended_and_foreign() {
    assert!(site_end_decision("r1", 5, Some(("r1", RequestState::Waiting))).unwrap());
    assert!(site_end_decision("r1", 5, Some(("r1", RequestState::InProgress))).unwrap());
    assert!(!site_end_decision("r1", 5, Some(("r1", RequestState::Ended))).unwrap());
    for other in [Some(("r2", RequestState::Waiting)), None] {
        let e = site_end_decision("r1", 5, other).unwrap_err();
        assert_eq!(e.http_status(), 403);
        assert!(e.public_text().contains("not one of this router's requests"), "{e}");
    }
}

#[tokio::test]
async fn a_router_ends_its_own_request_as_the_operator_would() {
    let (c, g, rt) = center_with("10.64.0.0/24", &[2]);
    let mut r = TestRouter::new("router-1");
    let s = r.install(&c);
    r.gateway_address(&c).await.unwrap();
    let (n, _) = r.maintenance(&c, &["pc1"]).await.unwrap();
    tunnel_up(&c, "router-1");
    g.take();
    rt.take();
    assert_eq!(site_end(&c, &r, n).await.unwrap(), SiteEndOutcome::Ended);
    assert_eq!(state_of(&c, n), RequestState::Ended);
    // The operator's path: end command, release, VPN end; gateway torn down.
    assert_eq!(
        rt.take(),
        vec![
            format!("end router-1 {} {n}", s.server_part_vpnnat()),
            "release router-1 pc1".to_string(),
            "vpn-end router-1".to_string()
        ]
    );
    assert_eq!(g.take().last().unwrap(), "teardown gw1 router-1");
    assert!(c.store().unwrap().slot_of("router-1").unwrap().is_none());
    // Audited under the router (the site owner), from its address.
    let rows = audit(&c);
    let end = rows
        .iter()
        .find(|a| a.action == "end" && a.acceptance_number == Some(n))
        .unwrap();
    assert_eq!(end.actor, "router:router-1");
    assert_eq!(end.peer, PEER.to_string());
    // The request view (UI, CLI) says who ended it.
    let row = c.store().unwrap().request(n).unwrap().unwrap();
    assert_eq!(row.ended_by.as_deref(), Some("router:router-1"));
    assert!(rows
        .iter()
        .filter(|a| a.action == "release" || a.action == "vpn_end")
        .all(|a| a.actor == "router:router-1"));
    // Sent again (its answer was lost): already ended, nothing more happens.
    let before = audit(&c).len();
    assert_eq!(site_end(&c, &r, n).await.unwrap(), SiteEndOutcome::AlreadyEnded);
    assert!(rt.take().is_empty() && g.take().is_empty());
    assert_eq!(audit(&c).len(), before);
}

#[tokio::test]
async fn a_router_cannot_end_another_routers_request() {
    let (c, g, rt) = center_with("10.64.0.0/24", &[2]);
    let mut r1 = TestRouter::new("router-1");
    r1.install(&c);
    let (n1, _) = r1.maintenance(&c, &["pc1"]).await.unwrap();
    tunnel_up(&c, "router-1");
    let mut r2 = TestRouter::new("router-2");
    r2.install(&c);
    g.take();
    rt.take();
    let audit_before = audit(&c);
    let pool_before = c.store().unwrap().pool_usage().unwrap();
    for n in [n1, 999] {
        let e = site_end(&c, &r2, n).await.unwrap_err();
        assert_eq!(e.http_status(), 403, "{e}");
        assert!(
            e.public_text()
                .contains(&format!("request {n} is not one of this router's")),
            "{e}"
        );
    }
    // Nothing changed: the request, its address, the slot, the audit log;
    // no command went anywhere.
    assert_eq!(state_of(&c, n1), RequestState::Waiting);
    assert!(c.store().unwrap().address_of("router-1", "pc1").unwrap().is_some());
    assert!(c.store().unwrap().slot_of("router-1").unwrap().is_some());
    assert_eq!(c.store().unwrap().pool_usage().unwrap(), pool_before);
    assert_eq!(audit(&c), audit_before);
    assert!(rt.take().is_empty() && g.take().is_empty());
    // Another router's key with router-1's name: not authenticated at all.
    let forged = vpnnat_proto::encode_request(
        &SiteEndRequest {
            acceptance_number: AcceptanceNumber::new(n1).unwrap(),
        },
        &r1.id,
        &r2.key(),
        NOW,
        &ring::rand::SystemRandom::new(),
    )
    .unwrap();
    let e = c
        .site_end(forged.path, &forged.headers, &forged.body, NOW, Some(PEER))
        .await
        .unwrap_err();
    assert_eq!(e.http_status(), 401, "{e}");
    assert_eq!(state_of(&c, n1), RequestState::Waiting);
    // Its owner may.
    assert_eq!(site_end(&c, &r1, n1).await.unwrap(), SiteEndOutcome::Ended);
}
