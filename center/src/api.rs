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
use vpnnat_proto::types::Ipv4Cidr;

use crate::center::{Center, CenterError, GatewayCommands, RouterCommands};
use crate::http::{auth_headers, read_body, serve, signed, text, unix_now, Body};

/// Largest body read from the network; proto enforces each command's own
/// (smaller) limit after that.
const MAX_BODY: usize = 64 * 1024;

/// Options of the router API.
#[derive(Debug, Clone, Default)]
pub struct ApiSettings {
    /// Peers (reverse proxies, load balancers in front of several centerd)
    /// whose `X-Forwarded-For` names the router's global address. From any
    /// other peer the connection's source address is the router's address.
    pub trusted_proxies: Vec<Ipv4Cidr>,
}

/// Serves the router/gateway API on `listener` until `shutdown`.
pub async fn run<G, R>(listener: TcpListener, shutdown: impl Future<Output = ()>, center: Arc<Center<G, R>>)
where
    G: GatewayCommands + 'static,
    R: RouterCommands + 'static,
{
    run_with(listener, shutdown, center, ApiSettings::default()).await
}

/// [`run`] with options.
pub async fn run_with<G, R>(
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    center: Arc<Center<G, R>>,
    settings: ApiSettings,
) where
    G: GatewayCommands + 'static,
    R: RouterCommands + 'static,
{
    let settings = Arc::new(settings);
    serve(listener, shutdown, move |req, peer| {
        let c = center.clone();
        let s = settings.clone();
        async move { handle(c, &s, req, peer).await }
    })
    .await
}

/// The router's global address: the peer, or what a trusted proxy says.
fn router_ip(peer: SocketAddr, headers: &hyper::HeaderMap, s: &ApiSettings) -> Option<Ipv4Addr> {
    let p = peer_v4(peer)?;
    if s.trusted_proxies.iter().any(|c| c.contains(p)) {
        if let Some(v) = headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            // Each proxy appends the address it saw: the last entry is the
            // one our trusted proxy vouches for.
            return v.rsplit(',').next()?.trim().parse().ok();
        }
    }
    Some(p)
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

async fn handle<G, R>(
    center: Arc<Center<G, R>>,
    settings: &ApiSettings,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Body>
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
        paths::center::INSTALL => {
            center.install_from(&path, &headers, &body, now, router_ip(peer, &parts.headers, settings))
        }
        paths::center::FAILURE => {
            center.failure_from(&path, &headers, &body, now, router_ip(peer, &parts.headers, settings))
        }
        paths::center::GATEWAY_ADDRESS => center.gateway_address(&path, &headers, &body, now).await,
        paths::center::MAINTENANCE => {
            let Some(ip) = router_ip(peer, &parts.headers, settings) else {
                return text(400, "the router's IPv4 address is unknown");
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
