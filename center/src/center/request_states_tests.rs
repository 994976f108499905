//! Request states (issue 19, item 1) through the center, with an in-memory
//! database and fake gateway/router command channels.

use super::tests::*;
use super::*;
use crate::storage::AuditFilter;
use vpnnat_proto::decode_response;
use vpnnat_proto::messages::{RequestStatesAnswer, RequestStatesQuery};
use vpnnat_proto::types::BoundedSet;

fn query(numbers: &[u64]) -> RequestStatesQuery {
    RequestStatesQuery {
        open: BoundedSet::new(numbers.iter().map(|n| AcceptanceNumber::new(*n).unwrap()).collect()).unwrap(),
    }
}

async fn ask(c: &TestCenter, r: &TestRouter, numbers: &[u64]) -> Result<Vec<u64>, CenterError> {
    let out = r.sign(&query(numbers), NOW);
    let resp = c.request_states(out.path, &out.headers, &out.body, NOW).await?;
    let a: RequestStatesAnswer =
        decode_response::<RequestStatesQuery>(&out, &r.key(), &resp.headers, &resp.body).unwrap();
    Ok(a.ended.iter().map(|n| n.get()).collect())
}

fn audit_len(c: &TestCenter) -> usize {
    c.store()
        .unwrap()
        .audit_log(&AuditFilter {
            limit: 10_000,
            ..AuditFilter::default()
        })
        .unwrap()
        .len()
}

#[tokio::test]
async fn a_router_learns_which_of_its_requests_the_center_ended_while_it_could_not_be_told() {
    let (c, _g, rt) = center_with("10.64.0.0/24", &[2]);
    let mut r = TestRouter::new("router-1");
    r.install(&c);
    r.gateway_address(&c).await.unwrap();
    let (n1, _) = r.maintenance(&c, &["pc1"]).await.unwrap();
    tunnel_up(&c, "router-1");
    let (n2, _) = r.maintenance(&c, &["pc2"]).await.unwrap();
    // Both open: nothing to tell.
    assert_eq!(ask(&c, &r, &[n1, n2]).await.unwrap(), Vec::<u64>::new());
    // The operator ends n1 (its commands to the router may have been lost).
    c.end(n1, NOW).await.unwrap();
    rt.take();
    let before = audit_len(&c);
    assert_eq!(ask(&c, &r, &[n1, n2]).await.unwrap(), vec![n1]);
    // Asking is read-only: no audit row, no command anywhere.
    assert_eq!(audit_len(&c), before);
    assert!(rt.take().is_empty());
    // A number the center never issued reads as ended (the router drops it).
    assert_eq!(ask(&c, &r, &[n2, 9_999]).await.unwrap(), vec![9_999]);
}

#[tokio::test]
async fn another_routers_open_request_reads_as_ended_and_a_forged_query_is_refused() {
    let (c, _g, _rt) = center_with("10.64.0.0/24", &[2]);
    let mut r1 = TestRouter::new("router-1");
    r1.install(&c);
    let (n1, _) = r1.maintenance(&c, &["pc1"]).await.unwrap();
    tunnel_up(&c, "router-1");
    let mut r2 = TestRouter::new("router-2");
    r2.install(&c);
    // router-2 learns nothing of router-1's open request.
    assert_eq!(ask(&c, &r2, &[n1]).await.unwrap(), vec![n1]);
    assert_eq!(ask(&c, &r1, &[n1]).await.unwrap(), Vec::<u64>::new());
    // router-2's key under router-1's name: not authenticated.
    let forged =
        vpnnat_proto::encode_request(&query(&[n1]), &r1.id, &r2.key(), NOW, &ring::rand::SystemRandom::new()).unwrap();
    let e = c
        .request_states(forged.path, &forged.headers, &forged.body, NOW)
        .await
        .unwrap_err();
    assert_eq!(e.http_status(), 401, "{e}");
}

#[tokio::test]
async fn the_answer_waits_for_an_end_that_is_still_telling_the_router() {
    let (c, _g, _rt) = center_with("10.64.0.0/24", &[2]);
    let mut r = TestRouter::new("router-1");
    r.install(&c);
    let (n1, _) = r.maintenance(&c, &["pc1"]).await.unwrap();
    tunnel_up(&c, "router-1");
    // An end's commands to the router run under the router's lock (see
    // `finish_end`); a query meanwhile is answered only after them.
    let guard = c.lock_terminal("router-1").await;
    let asked = [n1];
    let pending = ask(&c, &r, &asked);
    tokio::pin!(pending);
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(300), &mut pending)
            .await
            .is_err(),
        "answered while the router's lock was held"
    );
    drop(guard);
    assert_eq!(pending.await.unwrap(), Vec::<u64>::new());
}
