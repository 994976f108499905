//! The HTTP layer centerd and gatewayd share: [`serve`], which runs an axum
//! [`Router`] on hyper behind a per-source connection gate and drains on a
//! shutdown future (the mini-redis `run(listener, shutdown)` shape, so tests
//! drive servers on ephemeral ports); body and header extraction; and an
//! authenticated client for one protocol command.

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, CONTENT_TYPE, HOST};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use ring::rand::SystemRandom;
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt as _;
use vpnnat_proto::auth::AuthHeaders;
use vpnnat_proto::keys::MacKey;
use vpnnat_proto::throttle::ConnectionGate;
use vpnnat_proto::{decode_response, encode_request, Command, Outgoing, ProtoError};

pub type Body = Full<Bytes>;

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

/// Unix time in seconds (0 if the clock is before 1970, which then fails
/// every freshness check rather than panicking).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Per-listener limits against floods and slow clients: a cap on open
/// connections, overall and per source address (the one past it gets a
/// 503 and is closed at once, so a flood costs a socket for microseconds,
/// not a task and buffers; and one flooding address cannot take the
/// places of the others), and how long a client may take to send a
/// request head. Body reads have their own time-out in [`read_body`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    pub max_per_source: usize,
    pub header_timeout: Duration,
    /// A source held only to `max_connections` (a server's one trusted
    /// client, e.g. centerd for gatewayd).
    pub unlimited_source: Option<std::net::IpAddr>,
}

impl Limits {
    /// The operator UI: 512 connections (a few MB of state at most), 64
    /// from one address.
    pub const UI: Limits = Limits {
        max_connections: 512,
        max_per_source: 64,
        header_timeout: HEADER_TIMEOUT,
        unlimited_source: None,
    };
    /// The router API: thousands of routers may call at once (each call is
    /// a fresh connection); 64 from one address, unless behind a trusted
    /// proxy (see `api::run_with`).
    pub const ROUTER_API: Limits = Limits {
        max_connections: 4096,
        max_per_source: 64,
        header_timeout: HEADER_TIMEOUT,
        unlimited_source: None,
    };
    /// gatewayd's API: its one client, centerd, calls from one address
    /// with as many commands at once as routers ask (gatewayd exempts it
    /// through `unlimited_source`); anyone else gets 64.
    pub const GATEWAY_API: Limits = Limits {
        max_connections: 4096,
        max_per_source: 64,
        header_timeout: HEADER_TIMEOUT,
        unlimited_source: None,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Limits::UI
    }
}

/// How long a client may take to send a request head.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to send a request body once the head is in.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// What a client past the connection cap reads before the server closes.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: 35\r\n\r\ntoo many connections; retry shortly";

/// How long [`serve`] waits, once told to stop, for the requests in flight
/// to finish before it returns anyway.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

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
/// until `shutdown` completes: each connection passes the per-source
/// connection gate of `limits` first (refused ones read [`BUSY`]'s 503 and
/// are closed at once), must send its request head within
/// `limits.header_timeout`, and its requests carry their [`Peer`]. On
/// shutdown the listener closes, idle connections close, and requests in
/// flight get up to [`DRAIN_TIMEOUT`] to finish before this returns.
pub async fn serve_with(listener: TcpListener, app: Router, shutdown: impl Future<Output = ()>, limits: Limits) {
    let app = app.layer(tower_http::trace::TraceLayer::new_for_http());
    let mut gate = ConnectionGate::new(limits.max_connections, limits.max_per_source);
    if let Some(ip) = limits.unlimited_source {
        gate = gate.exempt(ip);
    }
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut refused: u64 = 0;
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // E.g. EMFILE: back off instead of spinning.
                    log::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let slot = match gate.admit(peer.ip()) {
            Ok(s) => s,
            Err(why) => {
                // One non-blocking write into the empty socket buffer, then
                // close: never wait on a client of a flood.
                let _ = stream.try_write(BUSY);
                refused = refused.saturating_add(1);
                if refused.is_power_of_two() {
                    log::warn!("refused {refused} connection(s) so far; latest from {peer}: {why}");
                }
                continue;
            }
        };
        let app = app.clone();
        let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
            req.extensions_mut().insert(Peer(peer));
            app.clone().oneshot(req.map(axum::body::Body::new))
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .serve_connection(TokioIo::new(stream), svc);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _slot = slot;
            if let Err(e) = conn.await {
                log::debug!("connection from {peer}: {e}");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown()).await.is_err() {
        log::warn!("requests still in flight after {DRAIN_TIMEOUT:?}; stopping anyway");
    }
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

/// A plain-text response.
pub fn text(status: u16, body: impl Into<String>) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body.into())));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
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

/// Reads at most `max` bytes of body within [`BODY_TIMEOUT`]; a longer one
/// is refused with 413 (before reading it when `Content-Length` says so),
/// a slower one with 408.
pub async fn read_body<B>(req: Request<B>, max: usize) -> Result<(hyper::http::request::Parts, Bytes), Response<Body>>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (parts, body) = req.into_parts();
    let too_large = || text(413, format!("body too large or unreadable (limit {max} bytes)"));
    let announced = parts
        .headers
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > u64::try_from(max).unwrap_or(u64::MAX)) {
        return Err(too_large());
    }
    match tokio::time::timeout(BODY_TIMEOUT, Limited::new(body, max).collect()).await {
        Ok(Ok(c)) => Ok((parts, c.to_bytes())),
        Ok(Err(_)) => Err(too_large()),
        Err(_) => Err(text(408, format!("body not received within {BODY_TIMEOUT:?}"))),
    }
}

/// The four authentication headers of a request.
pub fn auth_headers(headers: &hyper::HeaderMap) -> Result<AuthHeaders, ProtoError> {
    AuthHeaders::from_lookup(|n| headers.get(n).and_then(|v| v.to_str().ok()))
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
    let unreachable = |reason: String| CommandError::Unreachable {
        target: target(),
        reason,
    };
    let out = encode_request(command, principal, key, unix_now(), rng).map_err(|e| CommandError::BadAnswer {
        target: target(),
        reason: format!("cannot encode: {e}"),
    })?;
    let work = async {
        let stream = TcpStream::connect(authority)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                log::debug!("client connection: {e}");
            }
        });
        let mut req = Request::post(out.path)
            .header(HOST, authority)
            .header(CONTENT_TYPE, "application/json");
        for (n, v) in out.headers.pairs().into_iter().chain(extra_headers.iter().copied()) {
            req = req.header(n, v);
        }
        let req = req
            .body(Full::new(Bytes::from(out.body.clone())))
            .map_err(|e| unreachable(e.to_string()))?;
        let resp = sender.send_request(req).await.map_err(|e| unreachable(e.to_string()))?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = Limited::new(resp.into_body(), C::MAX_RESPONSE_BODY)
            .collect()
            .await
            .map_err(|e| unreachable(format!("reading answer: {e}")))?
            .to_bytes();
        Ok::<_, CommandError>((status, headers, body))
    };
    let (status, headers, body) = tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| unreachable(format!("no answer within {timeout:?}")))??;
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
    use tokio::sync::{oneshot, Notify};

    use axum::Extension;

    use super::*;

    /// Sends `GET /` to `addr` and returns the status and body.
    async fn get_root(addr: SocketAddr) -> (u16, Bytes) {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = Request::get("/").header(HOST, "x").body(Body::default()).unwrap();
        let resp = sender.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.into_body().collect().await.unwrap().to_bytes())
    }

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
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, app, async move {
            let _ = stopped.await;
        }));
        let client = tokio::spawn(get_root(addr));
        started.notified().await;
        stop.send(()).unwrap();
        // Told to stop, the server closes its listener but still holds the
        // request in flight.
        while TcpStream::connect(addr).await.is_ok() {
            tokio::task::yield_now().await;
        }
        assert!(!server.is_finished());
        release.notify_one();
        let (status, body) = client.await.unwrap();
        assert_eq!((status, &body[..]), (200, &b"done for 127.0.0.1"[..]));
        server.await.unwrap();
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
        assert_eq!(got, BUSY);
    }
}
