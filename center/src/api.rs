//! centerd's HTTP API for routers (exchanges 1-4) and gateways (tunnel
//! events). Every command goes through `vpnnat_proto::decode_request` inside
//! [`Center`]; this layer only moves bytes and maps errors to statuses.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Method, Request, Response};
use tokio::net::TcpListener;
use vpnnat_proto::paths;

use crate::center::{Center, CenterError, GatewayCommands, RouterCommands};
use crate::http::{auth_headers, read_body, serve, signed, text, unix_now, Body};

/// Largest body read from the network; proto enforces each command's own
/// (smaller) limit after that.
const MAX_BODY: usize = 64 * 1024;

/// Serves the router/gateway API on `listener` until `shutdown`.
pub async fn run<G, R>(listener: TcpListener, shutdown: impl Future<Output = ()>, center: Arc<Center<G, R>>)
where
    G: GatewayCommands + 'static,
    R: RouterCommands + 'static,
{
    serve(listener, shutdown, move |req, peer| {
        let c = center.clone();
        async move { handle(c, req, peer).await }
    })
    .await
}

fn peer_v4(peer: SocketAddr) -> Option<Ipv4Addr> {
    match peer.ip() {
        IpAddr::V4(a) => Some(a),
        IpAddr::V6(a) => a.to_ipv4_mapped(),
    }
}

fn err(e: CenterError) -> Response<Body> {
    text(e.http_status(), e.public_text())
}

async fn handle<G, R>(center: Arc<Center<G, R>>, req: Request<Incoming>, peer: SocketAddr) -> Response<Body>
where
    G: GatewayCommands + 'static,
    R: RouterCommands + 'static,
{
    let path = req.uri().path().to_owned();
    if req.method() == Method::GET && path == "/healthz" {
        return text(200, "ok");
    }
    if !paths::ALL.contains(&path.as_str()) || path.starts_with("/v1/center/") || path.starts_with("/v1/tunnel/") {
        return text(404, "no such endpoint");
    }
    if path == paths::gateway::STATE {
        return text(404, "no such endpoint");
    }
    if req.method() != Method::POST {
        return text(405, "use POST");
    }
    let (parts, body) = match read_body(req, MAX_BODY).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let headers = match auth_headers(&parts.headers) {
        Ok(h) => h,
        Err(e) => return err(e.into()),
    };
    let now = unix_now();
    let result = match path.as_str() {
        paths::center::INSTALL => center.install(&path, &headers, &body, now),
        paths::center::FAILURE => center.failure(&path, &headers, &body, now),
        paths::center::GATEWAY_ADDRESS => center.gateway_address(&path, &headers, &body, now).await,
        paths::center::MAINTENANCE => {
            let Some(ip) = peer_v4(peer) else {
                return text(400, "the maintenance API needs an IPv4 peer");
            };
            center.maintenance(&path, &headers, &body, ip, now).await
        }
        paths::center::GATEWAY_EVENT => center.tunnel_event(&path, &headers, &body, now),
        _ => return text(404, "no such endpoint"),
    };
    match result {
        Ok(out) => signed(out),
        Err(e) => {
            if e.http_status() >= 500 {
                log::warn!("{path} from {peer}: {e}");
            }
            err(e)
        }
    }
}

#[cfg(test)]
mod tests;
