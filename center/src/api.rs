//! centerd's HTTP API for routers (exchanges 1-4) and gateways (tunnel
//! events). Every command goes through `vpnnat_proto::decode_request` inside
//! [`Center`]; this layer only moves bytes and maps errors to statuses.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Request, Response};
use tokio::net::TcpListener;
use vpnnat_proto::paths;
use vpnnat_proto::types::Ipv4Cidr;

use crate::center::{Center, CenterError, GatewayCommands, RouterCommands};
use crate::http::{auth_headers, read_body, signed, text, unix_now, Body, Route};

/// Every route of the router/gateway API: the dispatcher matches requests
/// against this table and the OpenAPI check reads it, so the document and
/// the server cannot drift apart.
pub const ROUTES: &[Route] = &[
    Route {
        method: "POST",
        path: paths::center::INSTALL,
        name: "install",
    },
    Route {
        method: "POST",
        path: paths::center::FAILURE,
        name: "failure",
    },
    Route {
        method: "POST",
        path: paths::center::GATEWAY_ADDRESS,
        name: "gateway_address",
    },
    Route {
        method: "POST",
        path: paths::center::MAINTENANCE,
        name: "maintenance",
    },
    Route {
        method: "POST",
        path: paths::center::TUNNEL_LOST,
        name: "tunnel_lost",
    },
    Route {
        method: "POST",
        path: paths::center::GATEWAY_EVENT,
        name: "gateway_event",
    },
    Route {
        method: "GET",
        path: "/healthz",
        name: "healthz",
    },
];

/// The command labels of the latency metrics (the POST routes).
pub const COMMANDS: &[&str] = &[
    "install",
    "failure",
    "gateway_address",
    "maintenance",
    "tunnel_lost",
    "gateway_event",
];

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
    // Behind a proxy every router arrives from the proxy's address: the
    // per-address cap would throttle them all together.
    let mut limits = crate::http::Limits::ROUTER_API;
    if !settings.trusted_proxies.is_empty() {
        limits.max_per_source = limits.max_connections;
    }
    let settings = Arc::new(settings);
    crate::http::serve_limited(listener, shutdown, limits, move |req, peer| {
        let c = center.clone();
        let s = settings.clone();
        async move {
            let started = std::time::Instant::now();
            let name = Route::find(ROUTES, req.uri().path()).map_or(crate::metrics::OTHER, |r| r.name);
            let resp = handle(c.clone(), &s, req, peer).await;
            if name != "healthz" {
                c.command_metrics()
                    .observe(name, resp.status().as_u16(), started.elapsed());
            }
            resp
        }
    })
    .await
}

/// The router's global address: the peer, or what a trusted proxy says.
pub fn router_ip(peer: SocketAddr, headers: &hyper::HeaderMap, s: &ApiSettings) -> Option<Ipv4Addr> {
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
    let Some(route) = Route::find(ROUTES, &path) else {
        return text(404, "no such endpoint");
    };
    if req.method().as_str() != route.method {
        return text(405, format!("use {}", route.method));
    }
    if route.method == "GET" {
        return text(200, "ok");
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
    let result = match route.name {
        "install" => center.install_from(&path, &headers, &body, now, router_ip(peer, &parts.headers, settings)),
        "failure" => center.failure_from(&path, &headers, &body, now, router_ip(peer, &parts.headers, settings)),
        "gateway_address" => {
            center
                .gateway_address(&path, &headers, &body, now, router_ip(peer, &parts.headers, settings))
                .await
        }
        "maintenance" => {
            let Some(ip) = router_ip(peer, &parts.headers, settings) else {
                return text(400, "the router's IPv4 address is unknown");
            };
            center.maintenance(&path, &headers, &body, ip, now).await
        }
        "tunnel_lost" => {
            center
                .tunnel_lost(&path, &headers, &body, now, router_ip(peer, &parts.headers, settings))
                .await
        }
        "gateway_event" => center.tunnel_event(&path, &headers, &body, now),
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
