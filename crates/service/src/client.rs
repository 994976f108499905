//! The one HTTP/1 client of the daemons and tools, on plain hyper (routerd
//! links it within its 4 MB budget): one request over a fresh connection,
//! from a chosen local address if asked, bounded in time and in the size
//! of the answer it reads. [`Client::send`] posts a signed protocol
//! command ([`Outgoing`]) with its authentication headers; what the answer
//! means is the caller's (routerd's pure exchanges, or
//! `http::call` for centerd and the tools, which verify it).

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{HeaderMap, Method, Request};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpSocket, TcpStream};
use vpnnat_proto::auth::AuthHeaders;
use vpnnat_proto::{Outgoing, ProtoError};

/// Why an exchange got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    // `source` is the error's source (thiserror takes the field by name).
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: String, source: std::io::Error },
    #[error("{addr} did not answer within {secs}s")]
    Timeout { addr: String, secs: u64 },
    #[error("HTTP exchange with {addr} failed: {detail}")]
    Protocol { addr: String, detail: String },
}

/// An answer, whatever its status.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// How a client connects and how much it waits for and reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Client {
    /// The local address of the connection (`None`: the kernel's choice,
    /// as on a router with one WAN address; many simulated routers in one
    /// namespace each set their own, since the center knows a router by
    /// the address it connects from).
    pub source: Option<Ipv4Addr>,
    /// The longest answer body read; a longer one fails the exchange.
    pub max_answer: usize,
    /// The whole exchange, connection included.
    pub timeout: Duration,
}

impl Client {
    /// One request over a fresh connection; the body is sent as
    /// `application/json` unless `headers` name another content type.
    pub async fn request(
        &self,
        authority: &str,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<Answer, ClientError> {
        let exchange = async {
            let stream = connect_from(self.source, authority)
                .await
                .map_err(|source| ClientError::Connect {
                    addr: authority.to_owned(),
                    source,
                })?;
            let proto = |e: &dyn std::fmt::Display| ClientError::Protocol {
                addr: authority.to_owned(),
                detail: e.to_string(),
            };
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| proto(&e))?;
            // The connection task ends when the exchange is over (the
            // sender is dropped); its errors surface through send_request.
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
            let req = b.body(Full::new(body)).map_err(|e| proto(&e))?;
            let resp = sender.send_request(req).await.map_err(|e| proto(&e))?;
            let status = resp.status().as_u16();
            let (parts, body) = resp.into_parts();
            let body = Limited::new(body, self.max_answer)
                .collect()
                .await
                .map_err(|e| proto(&e))?
                .to_bytes();
            Ok(Answer {
                status,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| ClientError::Timeout {
                addr: authority.to_owned(),
                secs: self.timeout.as_secs(),
            })?
    }

    /// Posts the signed command `out` to `path` (its own path, or behind a
    /// prefix), with its authentication headers and then `extra_headers`
    /// (e.g. `X-Forwarded-For` from tools that stand in for a proxy).
    pub async fn send(
        &self,
        authority: &str,
        path: &str,
        out: &Outgoing,
        extra_headers: &[(&str, &str)],
    ) -> Result<Answer, ClientError> {
        let mut headers = out.headers.pairs().to_vec();
        headers.extend_from_slice(extra_headers);
        self.request(authority, Method::POST, path, &headers, Bytes::from(out.body.clone()))
            .await
    }
}

/// A connection to `authority` from `source` (`None`: the kernel picks
/// the address).
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

/// The four authentication headers of a request or an answer.
pub fn auth_headers(headers: &HeaderMap) -> Result<AuthHeaders, ProtoError> {
    AuthHeaders::from_lookup(|n| headers.get(n).and_then(|v| v.to_str().ok()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use tokio::net::TcpListener;

    use super::*;

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
        let source = Ipv4Addr::new(127, 0, 0, 7);
        let client = Client {
            source: Some(source),
            max_answer: 1024,
            timeout: Duration::from_secs(5),
        };
        let a = client
            .request(&addr, Method::GET, "/", &[], Bytes::new())
            .await
            .unwrap();
        assert_eq!(a.status, 200);
        let any = Client { source: None, ..client };
        any.request(&addr, Method::GET, "/", &[], Bytes::new()).await.unwrap();
        let peers = server.await.unwrap();
        assert_eq!(peers, [std::net::IpAddr::V4(source), "127.0.0.1".parse().unwrap()]);
    }
}
