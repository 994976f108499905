use super::*;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use ring::rand::SystemRandom;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use vpnnat_proto::keys::{SecretBytes, SecretId};
use vpnnat_proto::messages::{
    FailureNotice, GatewayAddressRequest, InstallRequest, MaintenanceRequest, TunnelEvent, TunnelStatus,
};
use vpnnat_proto::seal::ReplyKeyPair;
use vpnnat_proto::types::{ClaimantLevel, FailureCode, FailureDetail, GatewayName};
use vpnnat_proto::{encode_request, Outgoing};

use crate::center::tests::{center_with, gw_key, master, TestCenter, TestRouter, NOW};
use crate::center::CommandError;
use crate::http::call;

struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    center: Arc<TestCenter>,
}

async fn start(center: TestCenter) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let center = Arc::new(center);
    let c = center.clone();
    let task = tokio::spawn(async move {
        run(
            listener,
            async {
                let _ = rx.await;
            },
            c,
        )
        .await
    });
    Server {
        addr,
        stop: Some(tx),
        task,
        center,
    }
}

/// Sends exactly these bytes (for replays and broken requests).
async fn raw(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: Vec<u8>) -> (u16, String) {
    let s = TcpStream::connect(addr).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s)).await.unwrap();
    tokio::spawn(conn);
    let mut b = Request::builder().method(method).uri(path).header("host", "center");
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    let resp = tx
        .send_request(b.body(Full::new(Bytes::from(body))).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

async fn send(addr: SocketAddr, out: &Outgoing) -> (u16, String) {
    raw(addr, "POST", out.path, &out.headers.pairs(), out.body.clone()).await
}

fn t() -> Duration {
    Duration::from_secs(5)
}

#[tokio::test]
async fn every_router_exchange_over_real_http() {
    let (c, g, _) = center_with("10.64.0.0/24", &[2]);
    let srv = start(c).await;
    let authority = srv.addr.to_string();
    let rng = SystemRandom::new();
    let mut r = TestRouter::new("router-1");

    // 1. Installation.
    let kp = ReplyKeyPair::generate(&rng).unwrap();
    let key = SecretId::derive(&master(), &r.id).mac_key();
    let resp = call(
        &authority,
        &r.id,
        &key,
        &InstallRequest {
            reply_key: kp.public_key(),
            proof: None,
        },
        t(),
        &rng,
    )
    .await
    .unwrap();
    let secrets = resp.open(kp, &r.id).unwrap();
    r.sid2 = Some(secrets.secret_id2().clone());

    // 2. Failure notice.
    let notice = FailureNotice {
        code: FailureCode::Wan,
        detail: FailureDetail::new("link down").unwrap(),
    };
    call(&authority, &r.id, &r.key(), &notice, t(), &rng).await.unwrap();
    assert_eq!(srv.center.store().unwrap().failures(None, 10).unwrap().len(), 1);

    // 3. Gateway address.
    let kp = ReplyKeyPair::generate(&rng).unwrap();
    let resp = call(
        &authority,
        &r.id,
        &r.key(),
        &GatewayAddressRequest {
            reply_key: kp.public_key(),
            initiation: Default::default(),
            wan: None,
        },
        t(),
        &rng,
    )
    .await
    .unwrap();
    assert_eq!(resp.open(kp, &r.id).unwrap().gateway_ip.to_string(), "198.51.100.11");

    // 4. Maintenance request: the source address is recorded.
    let (req, kp) = r.maintenance_request(&["pc1"], ClaimantLevel::General);
    let resp = call(&authority, &r.id, &r.key(), &req, t(), &rng).await.unwrap();
    let grants = resp.open(kp, &r.id).unwrap();
    assert_eq!(grants.as_slice().len(), 1);
    let row = srv
        .center
        .store()
        .unwrap()
        .request(resp.acceptance_number.get())
        .unwrap()
        .unwrap();
    assert_eq!(row.router_ip, "127.0.0.1");
    assert!(g.take().iter().any(|l| l.starts_with("setup gw1 router-1 127.0.0.1 0")));

    // Gateway event.
    let ev = TunnelEvent {
        terminal_id: r.id.clone(),
        slot: 0,
        status: TunnelStatus::Up,
        detail: FailureDetail::new("").unwrap(),
        seq: 0,
    };
    call(
        &authority,
        &GatewayName::new("gw1").unwrap(),
        &gw_key(1).mac_key(),
        &ev,
        t(),
        &rng,
    )
    .await
    .unwrap();
    assert_eq!(srv.center.store().unwrap().gateway_usage().unwrap()[0].up, 1);

    // Replay over HTTP: 409.
    let out = r.sign(&notice, crate::http::unix_now());
    assert_eq!(send(srv.addr, &out).await.0, 200);
    assert_eq!(send(srv.addr, &out).await.0, 409);
    let _ = NOW;
    let _ = MaintenanceRequest::PATH;
    let mut srv = srv;
    srv.stop.take().unwrap().send(()).unwrap();
    tokio::time::timeout(t(), srv.task).await.unwrap().unwrap();
}

use vpnnat_proto::Command;

#[tokio::test]
async fn rejections_over_http() {
    let (c, _, _) = center_with("10.64.0.0/24", &[2]);
    let srv = start(c).await;
    let authority = srv.addr.to_string();
    let rng = SystemRandom::new();
    let r = TestRouter::new("router-1");
    // Unknown terminal (never installed) and bad MAC read the same.
    let notice = FailureNotice {
        code: FailureCode::Wan,
        detail: FailureDetail::new("").unwrap(),
    };
    let e = call(
        &authority,
        &r.id,
        &SecretId::derive(&master(), &r.id).mac_key(),
        &notice,
        t(),
        &rng,
    )
    .await
    .unwrap_err();
    match e {
        CommandError::Refused { status, text, .. } => {
            assert_eq!(status, 401);
            assert_eq!(text, "message authentication failed");
        }
        other => panic!("{other:?}"),
    }
    // Missing headers: 400; wrong method: 405; unknown path: 404; center->router path: 404.
    assert_eq!(
        raw(srv.addr, "POST", paths::center::FAILURE, &[], b"{}".to_vec())
            .await
            .0,
        400
    );
    assert_eq!(raw(srv.addr, "GET", paths::center::FAILURE, &[], vec![]).await.0, 405);
    assert_eq!(raw(srv.addr, "POST", "/v1/nope", &[], vec![]).await.0, 404);
    assert_eq!(raw(srv.addr, "POST", paths::router::END, &[], vec![]).await.0, 404);
    assert_eq!(raw(srv.addr, "GET", "/healthz", &[], vec![]).await.0, 200);
    // Too large.
    let kp = ReplyKeyPair::generate(&rng).unwrap();
    let mut out = encode_request(
        &InstallRequest {
            reply_key: kp.public_key(),
            proof: None,
        },
        &r.id,
        &SecretId::derive(&master(), &r.id).mac_key(),
        crate::http::unix_now(),
        &rng,
    )
    .unwrap();
    out.body = vec![b' '; 100 * 1024];
    assert_eq!(send(srv.addr, &out).await.0, 413);
    out.body = vec![b' '; 20 * 1024];
    assert_eq!(send(srv.addr, &out).await.0, 413);
    assert_eq!(srv.center.store().unwrap().count_terminals().unwrap(), 0);
    assert_eq!(srv.center.store().unwrap().nonce_count().unwrap(), 0);
}

#[test]
fn router_address_from_peer_or_trusted_proxy_only() {
    let mut h = hyper::HeaderMap::new();
    h.insert("x-forwarded-for", "198.18.0.1, 203.0.113.7".parse().unwrap());
    let peer: SocketAddr = "192.0.2.10:5000".parse().unwrap();
    let none = ApiSettings::default();
    assert_eq!(
        router_ip(peer, &h, &none),
        Some("192.0.2.10".parse().unwrap()),
        "untrusted: header ignored"
    );
    let trusted = ApiSettings {
        trusted_proxies: vec!["192.0.2.0/24".parse().unwrap()],
    };
    assert_eq!(router_ip(peer, &h, &trusted), Some("203.0.113.7".parse().unwrap()));
    h.insert("x-forwarded-for", "garbage".parse().unwrap());
    assert_eq!(router_ip(peer, &h, &trusted), None);
    let v6: SocketAddr = "[::ffff:192.0.2.9]:1".parse().unwrap();
    assert_eq!(
        router_ip(v6, &hyper::HeaderMap::new(), &none),
        Some("192.0.2.9".parse().unwrap())
    );
}

/// Site end (issue 19, item 7) over real HTTP: a router's key ends its own
/// request only; another router's request is refused with a clear 403 and
/// nothing changes; the end is audited under the router with its address.
#[tokio::test]
async fn site_end_over_real_http() {
    use vpnnat_proto::messages::{SiteEndOutcome, SiteEndRequest};
    use vpnnat_proto::types::AcceptanceNumber;

    let (c, _g, rt) = center_with("10.64.0.0/24", &[2]);
    let srv = start(c).await;
    let authority = srv.addr.to_string();
    let rng = SystemRandom::new();
    let mut r1 = TestRouter::new("router-1");
    r1.install(&srv.center);
    let mut r2 = TestRouter::new("router-2");
    r2.install(&srv.center);
    let (req, _kp) = r1.maintenance_request(&["pc1"], ClaimantLevel::General);
    let resp = call(&authority, &r1.id, &r1.key(), &req, t(), &rng).await.unwrap();
    let n = resp.acceptance_number.get();
    crate::center::tests::tunnel_up(&srv.center, "router-1");
    rt.take();
    let end = SiteEndRequest {
        acceptance_number: AcceptanceNumber::new(n).unwrap(),
    };

    // Router 2 tries router 1's request: 403, a clear text, nothing changed.
    let audit_before = srv
        .center
        .store()
        .unwrap()
        .audit_log(&crate::storage::AuditFilter {
            limit: 1000,
            ..Default::default()
        })
        .unwrap();
    let (status, body) = send(srv.addr, &r2.sign(&end, crate::http::unix_now())).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains(&format!("request {n} is not one of this router's requests")),
        "{body}"
    );
    let row = srv.center.store().unwrap().request(n).unwrap().unwrap();
    assert_eq!(row.state, crate::storage::RequestState::Waiting);
    assert!(rt.take().is_empty(), "no command went to any router");
    let audit_after = srv
        .center
        .store()
        .unwrap()
        .audit_log(&crate::storage::AuditFilter {
            limit: 1000,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(audit_after, audit_before);

    // Router 1 ends it: the operator's path, audited as the router.
    let a = call(&authority, &r1.id, &r1.key(), &end, t(), &rng).await.unwrap();
    assert_eq!(a.outcome, SiteEndOutcome::Ended);
    assert_eq!(
        srv.center.store().unwrap().request(n).unwrap().unwrap().state,
        crate::storage::RequestState::Ended
    );
    let log = rt.take();
    assert!(log.iter().any(|l| l.starts_with("end router-1")), "{log:?}");
    assert!(log.contains(&"release router-1 pc1".to_string()), "{log:?}");
    let ends = srv
        .center
        .store()
        .unwrap()
        .audit_log(&crate::storage::AuditFilter {
            action: Some("end".into()),
            acceptance_number: Some(n),
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(ends.len(), 1);
    assert_eq!(ends[0].actor, "router:router-1");
    assert_eq!(ends[0].peer, "127.0.0.1");
    // Again (a lost answer): already ended.
    let a = call(&authority, &r1.id, &r1.key(), &end, t(), &rng).await.unwrap();
    assert_eq!(a.outcome, SiteEndOutcome::AlreadyEnded);

    let mut srv = srv;
    srv.stop.take().unwrap().send(()).unwrap();
    tokio::time::timeout(t(), srv.task).await.unwrap().unwrap();
}

/// Request states (issue 19, item 1) over real HTTP: the router learns
/// which of its open requests the center has ended; read-only.
#[tokio::test]
async fn request_states_over_real_http() {
    use vpnnat_proto::messages::RequestStatesQuery;
    use vpnnat_proto::types::{AcceptanceNumber, BoundedSet};

    let (c, _g, _rt) = center_with("10.64.0.0/24", &[2]);
    let srv = start(c).await;
    let authority = srv.addr.to_string();
    let rng = SystemRandom::new();
    let mut r1 = TestRouter::new("router-1");
    r1.install(&srv.center);
    let (req, _kp) = r1.maintenance_request(&["pc1"], ClaimantLevel::General);
    let resp = call(&authority, &r1.id, &r1.key(), &req, t(), &rng).await.unwrap();
    let n = resp.acceptance_number.get();
    crate::center::tests::tunnel_up(&srv.center, "router-1");
    let q = RequestStatesQuery {
        open: BoundedSet::new(vec![AcceptanceNumber::new(n).unwrap()]).unwrap(),
    };
    let a = call(&authority, &r1.id, &r1.key(), &q, t(), &rng).await.unwrap();
    assert!(a.ended.is_empty());
    srv.center.end(n, crate::http::unix_now()).await.unwrap();
    let a = call(&authority, &r1.id, &r1.key(), &q, t(), &rng).await.unwrap();
    assert_eq!(a.ended.iter().map(|n| n.get()).collect::<Vec<_>>(), vec![n]);
    // The same message again: a replay, refused.
    let out = r1.sign(&q, crate::http::unix_now());
    let (status, _) = send(srv.addr, &out).await;
    assert_eq!(status, 200);
    let (status, body) = send(srv.addr, &out).await;
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("nonce already used"), "{body}");

    let mut srv = srv;
    srv.stop.take().unwrap().send(()).unwrap();
    tokio::time::timeout(t(), srv.task).await.unwrap().unwrap();
}
