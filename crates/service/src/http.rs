//! The HTTP layer centerd and gatewayd share: [`serve`], which runs an axum
//! [`Router`] on the shared accept loop [`crate::server::serve`] (per-source
//! connection gate, header time-out, drain on a shutdown future: the
//! mini-redis `run(listener, shutdown)` shape, so tests drive servers on
//! ephemeral ports); body and header extraction; and [`call`]: one
//! protocol command through the shared [`crate::client`], signed, its
//! answer verified.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response};
use ring::rand::SystemRandom;
use tokio::net::TcpListener;
use tower::ServiceExt as _;
use vpnnat_proto::keys::MacKey;
use vpnnat_proto::{decode_response, encode_request, Command, Outgoing};

pub use crate::body::{read_body, text, Body};
pub use crate::client::auth_headers;
use crate::client::{Client, ClientError};
pub use crate::clock::unix_now;

/// A call to a gateway, a router or centerd failed.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum CommandError {
    #[error("{target} did not answer: {reason}")]
    Unreachable { target: String, reason: String },
    #[error("{target} refused the command: HTTP {status} {text}")]
    Refused { target: String, status: u16, text: String },
    #[error("{target} answered badly: {reason}")]
    BadAnswer { target: String, reason: String },
    #[error("{target} is not configured")]
    Unknown { target: String },
}

pub use crate::server::{Limits, BODY_TIMEOUT, DRAIN_TIMEOUT, HEADER_TIMEOUT};

impl Limits {
    /// The operator UI: 512 connections (a few MB of state at most), 64
    /// from one address.
    pub const UI: Limits = Limits {
        max_connections: 512,
        max_per_source: 64,
        header_timeout: HEADER_TIMEOUT,
        unlimited_source: None,
        drain_timeout: DRAIN_TIMEOUT,
    };
    /// The router API: thousands of routers may call at once (each call is
    /// a fresh connection); 64 from one address, unless behind a trusted
    /// proxy (see `api::run_with`).
    pub const ROUTER_API: Limits = Limits {
        max_connections: 4096,
        max_per_source: 64,
        header_timeout: HEADER_TIMEOUT,
        unlimited_source: None,
        drain_timeout: DRAIN_TIMEOUT,
    };
    /// gatewayd's API: its one client, centerd, calls from one address
    /// with as many commands at once as routers ask (gatewayd exempts it
    /// through `unlimited_source`); anyone else gets 64.
    pub const GATEWAY_API: Limits = Limits {
        max_connections: 4096,
        max_per_source: 64,
        header_timeout: HEADER_TIMEOUT,
        unlimited_source: None,
        drain_timeout: DRAIN_TIMEOUT,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Limits::UI
    }
}

/// The address a request came from: [`serve`] puts it in every request's
/// extensions (axum's `Extension<Peer>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer(pub SocketAddr);

/// Serves `app` on `listener` until `shutdown` completes, with the default
/// [`Limits`]; see [`serve_with`].
pub async fn serve(listener: TcpListener, app: Router, shutdown: impl Future<Output = ()>) {
    serve_with(listener, app, shutdown, Limits::default()).await
}

/// Serves HTTP/1 connections from `listener` with the axum router `app`
/// until `shutdown` completes, on [`crate::server::serve`] with `limits`
/// (connection gate, header time-out, drain); its requests carry their
/// [`Peer`].
pub async fn serve_with(listener: TcpListener, app: Router, shutdown: impl Future<Output = ()>, limits: Limits) {
    let app = app.layer(tower_http::trace::TraceLayer::new_for_http());
    let service_for = move |peer: SocketAddr| {
        let app = app.clone();
        hyper::service::service_fn(move |mut req: Request<Incoming>| {
            req.extensions_mut().insert(Peer(peer));
            app.clone().oneshot(req.map(axum::body::Body::new))
        })
    };
    crate::server::serve(listener, service_for, shutdown, limits).await
}

/// One route of a server's table (method, exact path, a short name used as
/// the metrics label and the OpenAPI `operationId`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
    pub name: &'static str,
}

impl Route {
    /// The route for `path` (paths are exact; one method per path).
    pub fn find(table: &'static [Route], path: &str) -> Option<&'static Route> {
        table.iter().find(|r| r.path == path)
    }
}

/// A JSON document (e.g. `/openapi.json`).
pub fn json(body: impl Into<String>) -> Response<Body> {
    let mut r = text(200, body);
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// A signed protocol answer.
pub fn signed(out: Outgoing) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(out.body)));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    for (n, v) in out.headers.pairs() {
        if let Ok(v) = HeaderValue::from_str(v) {
            r.headers_mut().insert(n, v);
        }
    }
    r
}

/// Sends one authenticated command to `authority` (`host:port`) and
/// returns its verified answer.
pub async fn call<C: Command>(
    authority: &str,
    principal: &C::Principal,
    key: &MacKey,
    command: &C,
    timeout: Duration,
    rng: &SystemRandom,
) -> Result<C::Response, CommandError> {
    call_with(authority, principal, key, command, timeout, rng, &[]).await
}

/// [`call`] with extra request headers (e.g. `X-Forwarded-For` in tests
/// and tools that stand in for a proxy).
pub async fn call_with<C: Command>(
    authority: &str,
    principal: &C::Principal,
    key: &MacKey,
    command: &C,
    timeout: Duration,
    rng: &SystemRandom,
    extra_headers: &[(&str, &str)],
) -> Result<C::Response, CommandError> {
    let target = || authority.to_owned();
    let out = encode_request(command, principal, key, unix_now(), rng).map_err(|e| CommandError::BadAnswer {
        target: target(),
        reason: format!("cannot encode: {e}"),
    })?;
    let client = Client {
        source: None,
        max_answer: C::MAX_RESPONSE_BODY,
        timeout,
    };
    let answer = client
        .send(authority, out.path, &out, extra_headers)
        .await
        .map_err(|e| CommandError::Unreachable {
            target: target(),
            reason: match e {
                ClientError::Connect { source, .. } => source.to_string(),
                ClientError::Timeout { .. } => format!("no answer within {timeout:?}"),
                ClientError::Protocol { detail, .. } => detail,
            },
        })?;
    let (status, headers, body) = (answer.status, answer.headers, answer.body);
    if status != 200 {
        return Err(CommandError::Refused {
            target: target(),
            status,
            text: String::from_utf8_lossy(body.get(..body.len().min(200)).unwrap_or_default()).into_owned(),
        });
    }
    let bad = |reason: String| CommandError::BadAnswer {
        target: target(),
        reason,
    };
    let h = auth_headers(&headers).map_err(|e| bad(e.to_string()))?;
    decode_response::<C>(&out, key, &h, &body).map_err(|e| bad(e.to_string()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::sync::Arc;

    use axum::routing::get;
    use tokio::net::TcpStream;
    use tokio::sync::{oneshot, Notify};

    use axum::Extension;

    use super::*;

    #[tokio::test]
    async fn shutdown_drains_the_request_in_flight() {
        let started = Arc::new(Notify::new());
        let release = Arc::new(Notify::new());
        let (s, r) = (started.clone(), release.clone());
        let app = Router::new().route(
            "/",
            get(move |Extension(Peer(peer)): Extension<Peer>| {
                let (s, r) = (s.clone(), r.clone());
                async move {
                    s.notify_one();
                    r.notified().await;
                    text(200, format!("done for {}", peer.ip()))
                }
            }),
        );
        let spawn = |listener, stopped: oneshot::Receiver<()>| {
            tokio::spawn(serve(listener, app, async move {
                let _ = stopped.await;
            }))
        };
        crate::server::tests::check_drain(spawn, &started, &release).await;
    }

    #[tokio::test]
    async fn a_source_past_its_share_reads_503() {
        let app = Router::new().route("/", get(|| async { text(200, "ok") }));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = Limits {
            max_per_source: 1,
            ..Limits::UI
        };
        tokio::spawn(serve_with(listener, app, std::future::pending(), limits));
        // The first connection holds the source's one place (no request
        // yet); the second is refused with the canned answer.
        let _held = TcpStream::connect(addr).await.unwrap();
        let mut second = TcpStream::connect(addr).await.unwrap();
        let mut got = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut second, &mut got)
            .await
            .unwrap();
        assert_eq!(got, crate::server::BUSY);
    }
}
