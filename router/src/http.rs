//! HTTP plumbing on hyper 1: routerd's uses of the daemons' shared client
//! (`vpnnat_service::client`: router -> center, and the CLI -> local
//! daemon), `serve(listener, handler, shutdown)` on their shared accept
//! loop (`vpnnat_service::server`: connection gate, header time-out, drain
//! on shutdown), and the small helpers the pages need (form decoding,
//! exponential back-off; HTML escaping is `vpnnat_service::escape`).

use std::convert::Infallible;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use tokio::net::TcpListener;
use vpnnat_proto::auth::AuthHeaders;
use vpnnat_proto::Outgoing;
use vpnnat_service::body::read_body;
pub use vpnnat_service::body::text;
use vpnnat_service::client::{self, Client, ClientError};
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
/// How long a client may take to send a request head (its body then has
/// the shared `vpnnat_service::server::BODY_TIMEOUT`).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the requests in flight at shutdown may take to finish.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// One POST (or GET when `body` is `None`) over a fresh connection,
/// reading at most [`MAX_RESPONSE`] of answer.
pub async fn request(
    authority: &str,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
    timeout: Duration,
) -> Result<(u16, hyper::HeaderMap, Vec<u8>), ClientError> {
    let client = Client {
        source: None,
        max_answer: MAX_RESPONSE,
        timeout,
    };
    let a = client
        .request(authority, method, path, headers, Bytes::from(body.unwrap_or_default()))
        .await?;
    Ok((a.status, a.headers, a.body.to_vec()))
}

/// The four authentication headers of a response or request, if present.
pub fn auth_headers(h: &hyper::HeaderMap) -> Option<AuthHeaders> {
    client::auth_headers(h).ok()
}

/// Sends a signed command to the center, from the local address `source`
/// (`None`: the kernel's choice).
pub async fn send_to_center(
    source: Option<Ipv4Addr>,
    authority: &str,
    prefix: &str,
    out: &Outgoing,
    timeout: Duration,
) -> Result<CenterReply, ClientError> {
    let client = Client {
        source,
        max_answer: MAX_RESPONSE,
        timeout,
    };
    let a = client
        .send(authority, &format!("{prefix}{}", out.path), out, &[])
        .await?;
    Ok(CenterReply {
        status: a.status,
        headers: auth_headers(&a.headers),
        body: a.body.to_vec(),
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
    let (parts, body) = read_body(req, MAX_REQUEST).await?;
    Ok(Incoming1 {
        method: parts.method,
        path: parts.uri.path().to_string(),
        headers: parts.headers,
        body: body.to_vec(),
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
    use tokio::net::TcpStream;

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
