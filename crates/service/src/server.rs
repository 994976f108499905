//! The one accept loop every daemon's HTTP servers run on, on plain hyper
//! (no axum or tower, so routerd links it within its 4 MB budget):
//! [`serve`] takes a listener, a function that makes the hyper service of
//! one connection, and a shutdown future (the mini-redis
//! `run(listener, shutdown)` shape), gates connections per source, bounds
//! the time to a request head, and drains the requests in flight on
//! shutdown. centerd and gatewayd reach it through
//! [`crate::http::serve`] (axum); routerd through its `http::serve`.

use std::error::Error as StdError;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hyper::body::{Body, Incoming};
use hyper::service::Service;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use vpnnat_proto::throttle::ConnectionGate;

/// Per-listener limits against floods and slow clients: a cap on open
/// connections, overall and per source address (the one past it gets a
/// 503 and is closed at once, so a flood costs a socket for microseconds,
/// not a task and buffers; and one flooding address cannot take the
/// places of the others), how long a client may take to send a request
/// head, and how long requests in flight may take to finish once the
/// server is told to stop. Body reads have their own time-outs (the
/// handlers', e.g. `http::read_body`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    pub max_per_source: usize,
    pub header_timeout: Duration,
    /// A source held only to `max_connections` (a server's one trusted
    /// client, e.g. centerd for gatewayd).
    pub unlimited_source: Option<IpAddr>,
    /// How long [`serve`] waits, once told to stop, for the requests in
    /// flight to finish before it returns anyway.
    pub drain_timeout: Duration,
}

/// How long a client may take to send a request head.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to send a request body once the head is in.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// The center's servers' [`Limits::drain_timeout`].
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// What a client past the connection cap reads before the server closes.
pub const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: 35\r\n\r\ntoo many connections; retry shortly";

/// Serves HTTP/1 connections from `listener` until `shutdown` completes.
/// Each connection passes the per-source connection gate of `limits`
/// first (refused ones read [`BUSY`]'s 503 and are closed at once), then
/// is served by `service_for(peer)` and must send each request head within
/// `limits.header_timeout`. On shutdown the listener closes, idle
/// connections close, and requests in flight get up to
/// `limits.drain_timeout` to finish (their answers are sent) before this
/// returns.
pub async fn serve<F, S, B>(listener: TcpListener, service_for: F, shutdown: impl Future<Output = ()>, limits: Limits)
where
    F: Fn(SocketAddr) -> S,
    S: Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn StdError + Send + Sync>>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
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
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .serve_connection(TokioIo::new(stream), service_for(peer));
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _slot = slot;
            if let Err(e) = conn.await {
                log::debug!("connection from {peer}: {e}");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(limits.drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        log::warn!(
            "requests still in flight after {:?}; stopping anyway",
            limits.drain_timeout
        );
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::convert::Infallible;
    use std::sync::Arc;

    use http_body_util::{BodyExt, Full};
    use hyper::body::Bytes;
    use hyper::header::HOST;
    use tokio::net::TcpStream;
    use tokio::sync::{oneshot, Notify};

    use super::*;

    const LIMITS: Limits = Limits {
        max_connections: 8,
        max_per_source: 8,
        header_timeout: HEADER_TIMEOUT,
        unlimited_source: None,
        drain_timeout: DRAIN_TIMEOUT,
    };

    /// Sends `GET /` to `addr` and returns the status and body.
    pub(crate) async fn get_root(addr: SocketAddr) -> (u16, Bytes) {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = Request::get("/")
            .header(HOST, "x")
            .body(Full::<Bytes>::default())
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.into_body().collect().await.unwrap().to_bytes())
    }

    /// Checks that a server started by `spawn` on a listener (stopping when
    /// its receiver completes) answers the request in flight at shutdown
    /// before it returns, while its listener is already closed; its
    /// handler for `GET /` notifies `started`, waits for `release`, and
    /// answers "done for <peer ip>".
    pub(crate) async fn check_drain(
        spawn: impl FnOnce(TcpListener, oneshot::Receiver<()>) -> tokio::task::JoinHandle<()>,
        started: &Notify,
        release: &Notify,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let server = spawn(listener, stopped);
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

    /// The plain-hyper loop (routerd's, without axum) drains.
    #[tokio::test]
    async fn shutdown_drains_the_request_in_flight() {
        let started = Arc::new(Notify::new());
        let release = Arc::new(Notify::new());
        let (s, r) = (started.clone(), release.clone());
        let service_for = move |peer: SocketAddr| {
            let (s, r) = (s.clone(), r.clone());
            hyper::service::service_fn(move |_req: Request<Incoming>| {
                let (s, r) = (s.clone(), r.clone());
                async move {
                    s.notify_one();
                    r.notified().await;
                    let body = format!("done for {}", peer.ip());
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
                }
            })
        };
        let spawn = |listener, stopped: oneshot::Receiver<()>| {
            tokio::spawn(serve(
                listener,
                service_for,
                async move {
                    let _ = stopped.await;
                },
                LIMITS,
            ))
        };
        check_drain(spawn, &started, &release).await;
    }
}
