//! HTTP plumbing on hyper 1: a one-shot client (router -> center, and the
//! CLI -> local daemon), `serve(listener, handler, shutdown)` on the
//! daemons' shared accept loop (`vpnnat_service::server`: connection gate,
//! header time-out, drain on shutdown), and the small helpers the pages
//! need (form decoding, HTML escaping, exponential back-off).

use std::convert::Infallible;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, CONTENT_TYPE, HOST};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use thiserror::Error;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use vpnnat_proto::auth::AuthHeaders;
use vpnnat_proto::Outgoing;
use vpnnat_service::server::Limits;

use crate::logic::CenterReply;

/// Largest response body the client reads.
pub const MAX_RESPONSE: usize = 256 * 1024;
/// Largest request body the servers read (commands are far smaller).
pub const MAX_REQUEST: usize = 64 * 1024;
/// Connections one listener holds open at once, and from one address; the
/// next one gets a 503 and is closed at once (a home router's pages have a
/// handful of users; the center reaches the router from one address).
pub const MAX_CONNECTIONS: usize = 64;
pub const MAX_PER_SOURCE: usize = 16;
/// How long a client may take to send a request head, then its body.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the requests in flight at shutdown may take to finish.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Error)]
pub enum HttpError {
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{addr} did not answer within {secs}s")]
    Timeout { addr: String, secs: u64 },
    #[error("HTTP exchange with {addr} failed: {detail}")]
    Protocol { addr: String, detail: String },
}

/// One POST (or GET when `body` is `None`) over a fresh connection.
pub async fn request(
    authority: &str,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
    timeout: Duration,
) -> Result<(u16, hyper::HeaderMap, Vec<u8>), HttpError> {
    request_from(None, authority, method, path, headers, body, timeout).await
}

/// A connection to `authority` from `source` (`None`: the kernel picks the
/// address, as on a router with one WAN address).
async fn connect_from(source: Option<Ipv4Addr>, authority: &str) -> std::io::Result<TcpStream> {
    let Some(source) = source else {
        return TcpStream::connect(authority).await;
    };
    let mut last = None;
    for addr in tokio::net::lookup_host(authority).await? {
        if !addr.is_ipv4() {
            continue;
        }
        let sock = TcpSocket::new_v4()?;
        sock.bind(SocketAddr::from((source, 0)))?;
        match sock.connect(addr).await {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no IPv4 address")))
}

/// [`request`] from the local address `source` (`None`: any).
pub async fn request_from(
    source: Option<Ipv4Addr>,
    authority: &str,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
    timeout: Duration,
) -> Result<(u16, hyper::HeaderMap, Vec<u8>), HttpError> {
    let exchange = async {
        let stream = connect_from(source, authority)
            .await
            .map_err(|source| HttpError::Connect {
                addr: authority.to_string(),
                source,
            })?;
        let proto = |e: &dyn std::fmt::Display| HttpError::Protocol {
            addr: authority.to_string(),
            detail: e.to_string(),
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| proto(&e))?;
        // The connection task ends when the exchange is over (we drop the
        // sender); its errors surface through send_request.
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut b = Request::builder().method(method).uri(path).header(HOST, authority);
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-type")) {
            b = b.header(CONTENT_TYPE, "application/json");
        }
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| proto(&e))?;
        let resp = sender.send_request(req).await.map_err(|e| proto(&e))?;
        let status = resp.status().as_u16();
        let (parts, body) = resp.into_parts();
        let bytes = Limited::new(body, MAX_RESPONSE)
            .collect()
            .await
            .map_err(|e| proto(&e))?
            .to_bytes();
        Ok((status, parts.headers, bytes.to_vec()))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| HttpError::Timeout {
            addr: authority.to_string(),
            secs: timeout.as_secs(),
        })?
}

/// The four authentication headers of a response or request, if present.
pub fn auth_headers(h: &hyper::HeaderMap) -> Option<AuthHeaders> {
    AuthHeaders::from_lookup(|name| h.get(name).and_then(|v| v.to_str().ok())).ok()
}

/// Sends a signed command to the center, from the local address `source`
/// (`None`: the kernel's choice).
pub async fn send_to_center(
    source: Option<Ipv4Addr>,
    authority: &str,
    prefix: &str,
    out: &Outgoing,
    timeout: Duration,
) -> Result<CenterReply, HttpError> {
    let path = format!("{prefix}{}", out.path);
    let (status, headers, body) = request_from(
        source,
        authority,
        Method::POST,
        &path,
        &out.headers.pairs(),
        Some(out.body.clone()),
        timeout,
    )
    .await?;
    Ok(CenterReply {
        status,
        headers: auth_headers(&headers),
        body,
    })
}

/// A handler's answer.
pub type Reply = Response<Full<Bytes>>;

pub fn reply(status: u16, content_type: &'static str, body: impl Into<Bytes>) -> Reply {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

pub fn text(status: u16, body: impl Into<String>) -> Reply {
    reply(status, "text/plain; charset=utf-8", body.into())
}

pub fn json(status: u16, v: &impl serde::Serialize) -> Reply {
    match serde_json::to_vec(v) {
        Ok(b) => reply(status, "application/json", b),
        Err(e) => text(500, format!("cannot encode the answer: {e}")),
    }
}

pub fn html(status: u16, body: String) -> Reply {
    reply(status, "text/html; charset=utf-8", body)
}

/// A request as handlers see it: head plus the whole (bounded) body.
#[derive(Debug)]
pub struct Incoming1 {
    pub method: Method,
    pub path: String,
    pub headers: hyper::HeaderMap,
    pub body: Vec<u8>,
    pub peer: SocketAddr,
}

/// Something that answers requests.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, req: Incoming1) -> impl Future<Output = Reply> + Send;
}

async fn read(req: Request<Incoming>, peer: SocketAddr) -> Result<Incoming1, Reply> {
    let (parts, body) = req.into_parts();
    let announced = parts
        .headers
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if announced.is_some_and(|n| n > MAX_REQUEST) {
        return Err(text(413, "request body too large"));
    }
    let body = match tokio::time::timeout(BODY_TIMEOUT, Limited::new(body, MAX_REQUEST).collect()).await {
        Ok(Ok(b)) => b.to_bytes().to_vec(),
        Ok(Err(_)) => return Err(text(413, "request body too large")),
        Err(_) => return Err(text(408, "request body not received in time")),
    };
    Ok(Incoming1 {
        method: parts.method,
        path: parts.uri.path().to_string(),
        headers: parts.headers,
        body,
        peer,
    })
}

/// routerd's servers' limits on the shared accept loop.
pub const LIMITS: Limits = Limits {
    max_connections: MAX_CONNECTIONS,
    max_per_source: MAX_PER_SOURCE,
    header_timeout: HEADER_TIMEOUT,
    unlimited_source: None,
    drain_timeout: DRAIN_TIMEOUT,
};

/// Serves `handler` on `listener` until `shutdown` completes, on the
/// daemons' one accept loop ([`vpnnat_service::server::serve`], with
/// [`LIMITS`]); then stops accepting, lets open connections finish their
/// current request (waiting at most [`DRAIN_TIMEOUT`] for them), and
/// returns.
pub async fn serve<H: Handler>(listener: TcpListener, handler: Arc<H>, shutdown: impl Future<Output = ()>) {
    let service_for = move |peer: SocketAddr| {
        let h = handler.clone();
        service_fn(move |req| {
            let h = h.clone();
            async move {
                let r = match read(req, peer).await {
                    Ok(r) => h.handle(r).await,
                    Err(r) => r,
                };
                Ok::<_, Infallible>(r)
            }
        })
    };
    vpnnat_service::server::serve(listener, service_for, shutdown, LIMITS).await
}

/// Decodes `application/x-www-form-urlencoded`; repeated keys keep every
/// value in order.
pub fn parse_form(body: &[u8]) -> Vec<(String, String)> {
    vpnnat_proto::form::pairs(body)
}

/// Escapes text for HTML element content and quoted attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Exponential back-off: `initial`, doubling, capped at `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            next: initial.min(max),
            max,
        }
    }

    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_decoding() {
        let f = parse_form(b"name=Taro+Yamada&t=pc1&t=nas&c=a%26b%3D%E3%81%82&bad=%zz&empty=");
        assert_eq!(f[0], ("name".into(), "Taro Yamada".into()));
        assert_eq!(f[1].1, "pc1");
        assert_eq!(f[2].1, "nas");
        assert_eq!(f[3].1, "a&b=あ");
        assert_eq!(f[4].1, "%zz");
        assert_eq!(f[5].1, "");
    }

    #[test]
    fn escaping() {
        assert_eq!(
            escape("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }

    /// The center knows a router by the address it connects from: with a
    /// source set, the connection leaves from it (and not from another
    /// local address of the same namespace).
    #[tokio::test]
    async fn the_client_connects_from_the_given_source() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move {
            let mut peers = Vec::new();
            for _ in 0..2 {
                let (mut s, peer) = l.accept().await.unwrap();
                peers.push(peer.ip());
                let mut buf = [0u8; 1024];
                let _ = tokio::io::AsyncReadExt::read(&mut s, &mut buf).await;
                let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
                tokio::io::AsyncWriteExt::write_all(&mut s, ok).await.unwrap();
            }
            peers
        });
        let t = Duration::from_secs(5);
        let source = Ipv4Addr::new(127, 0, 0, 7);
        let (status, _, _) = request_from(Some(source), &addr, Method::GET, "/", &[], None, t)
            .await
            .unwrap();
        assert_eq!(status, 200);
        request_from(None, &addr, Method::GET, "/", &[], None, t).await.unwrap();
        let peers = server.await.unwrap();
        assert_eq!(peers, [std::net::IpAddr::V4(source), "127.0.0.1".parse().unwrap()]);
    }

    /// Answers "done for <peer ip>" once released, after saying it started.
    struct Held {
        started: tokio::sync::Notify,
        release: tokio::sync::Notify,
    }

    impl Handler for Held {
        async fn handle(&self, req: Incoming1) -> Reply {
            self.started.notify_one();
            self.release.notified().await;
            text(200, format!("done for {}", req.peer.ip()))
        }
    }

    /// routerd's servers drain on shutdown: the request in flight when
    /// shutdown comes is answered before `serve` returns, while the
    /// listener is already closed.
    #[tokio::test]
    async fn shutdown_drains_the_request_in_flight() {
        let held = Arc::new(Held {
            started: tokio::sync::Notify::new(),
            release: tokio::sync::Notify::new(),
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, held.clone(), async move {
            let _ = stopped.await;
        }));
        let client = tokio::spawn(async move {
            request(&addr.to_string(), Method::GET, "/", &[], None, Duration::from_secs(30)).await
        });
        held.started.notified().await;
        stop.send(()).unwrap();
        // Told to stop, the server closes its listener but still holds the
        // request in flight.
        while TcpStream::connect(addr).await.is_ok() {
            tokio::task::yield_now().await;
        }
        assert!(!server.is_finished());
        held.release.notify_one();
        let (status, _, body) = client.await.unwrap().unwrap();
        assert_eq!((status, &body[..]), (200, &b"done for 127.0.0.1"[..]));
        server.await.unwrap();
    }

    #[test]
    fn backoff_doubles_to_the_cap() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(5));
        let d: Vec<u64> = (0..5).map(|_| b.next_delay().as_secs()).collect();
        assert_eq!(d, [1, 2, 4, 5, 5]);
    }
}
