//! centerd's HTTP API for routers (exchanges 1-4) and gateways (tunnel
//! events), on axum. Every command goes through `vpnnat_proto::decode_request`
//! inside [`Center`]; this layer only moves bytes and maps errors to
//! statuses.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::routing::{get, post, MethodRouter};
use axum::{Extension, Router};
use hyper::Response;
use tokio::net::TcpListener;
use tower_http::limit::RequestBodyLimitLayer;
use vpnnat_proto::messages::{
    EndCommand, FailureNotice, GatewayAddressRequest, InstallRequest, MaintenanceRequest, ReleaseCommand,
    RequestStatesQuery, SiteEndRequest, TunnelEvent, TunnelLostNotice, VpnEndCommand,
};
use vpnnat_proto::openapi::{DocumentBuilder, OpenApi};
use vpnnat_proto::paths;
use vpnnat_proto::types::Ipv4Cidr;

use crate::center::{Center, CenterError, GatewayCommands, RouterCommands};
use crate::http::{auth_headers, read_body, signed, text, unix_now, Body, Peer, Route};

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
        path: paths::center::SITE_END,
        name: "site_end",
    },
    Route {
        method: "POST",
        path: paths::center::REQUEST_STATES,
        name: "request_states",
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
    Route {
        method: "GET",
        path: "/openapi.json",
        name: "openapi",
    },
];

/// The command labels of the latency metrics (the POST routes).
pub const COMMANDS: &[&str] = &[
    "install",
    "failure",
    "gateway_address",
    "maintenance",
    "tunnel_lost",
    "site_end",
    "request_states",
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
    crate::http::serve_with(listener, router(center, settings), shutdown, limits).await
}

/// What the handlers share.
struct Api<G, R> {
    center: Arc<Center<G, R>>,
    settings: ApiSettings,
}

type Shared<G, R> = Arc<Api<G, R>>;

/// The API's routes: one per entry of [`ROUTES`], any other path 404, any
/// other method 405 (`use POST`); every answer but the health check's is
/// counted in the command metrics.
pub fn router<G, R>(center: Arc<Center<G, R>>, settings: ApiSettings) -> Router
where
    G: GatewayCommands + 'static,
    R: RouterCommands + 'static,
{
    let api = Arc::new(Api { center, settings });
    let mut app = Router::new();
    for route in ROUTES {
        let method: MethodRouter<Shared<G, R>> = if route.name == "openapi" {
            get(|| async { crate::http::json(openapi_json()) })
        } else if route.method == "GET" {
            get(|| async { text(200, "ok") })
        } else {
            post(move |state, peer, req| command(state, route, peer, req))
        };
        let m = route.method;
        app = app.route(
            route.path,
            method.fallback(move || async move { text(405, format!("use {m}")) }),
        );
    }
    app.route_layer(RequestBodyLimitLayer::new(MAX_BODY))
        .fallback(|| async { text(404, "no such endpoint") })
        .layer(middleware::from_fn_with_state(api.clone(), observe::<G, R>))
        .with_state(api)
}

/// centerd's OpenAPI document, generated from [`ROUTES`] and the protocol
/// types the handlers decode (served at `GET /openapi.json`).
pub fn openapi() -> OpenApi {
    let mut doc = DocumentBuilder::new(
        "centerd",
        "The maintenance server's API for routers (exchanges 1-4, the tunnel-lost notice and the site end, \
         authenticated with the router's Secret(ID) or Secret(ID2)) and gateways (tunnel events, \
         authenticated with the gateway's API key).",
    );
    for r in ROUTES {
        doc = match r.name {
            "install" => doc.command::<InstallRequest>(r.name, "1. installation notice"),
            "failure" => doc.command::<FailureNotice>(r.name, "2. failure notice"),
            "gateway_address" => doc.command::<GatewayAddressRequest>(r.name, "3. VPN gateway address request"),
            "maintenance" => doc.command::<MaintenanceRequest>(r.name, "4. maintenance request"),
            "tunnel_lost" => doc.command::<TunnelLostNotice>(r.name, "the router lost its tunnel's IKE SA"),
            "site_end" => doc.command::<SiteEndRequest>(r.name, "the site owner ends one of this router's requests"),
            "request_states" => doc.command::<RequestStatesQuery>(
                r.name,
                "which of the router's open requests the center has ended meanwhile",
            ),
            "gateway_event" => doc.command::<TunnelEvent>(r.name, "a gateway's tunnel went up or down"),
            "healthz" => doc.get(r.path, r.name, "liveness: `ok`", "text/plain"),
            _ => doc.get(r.path, r.name, "this document", "application/json"),
        };
    }
    doc.build()
}

/// The OpenAPI document of routerd's command API, which centerd calls
/// (routerd stays on plain hyper without utoipa for its size budget, so
/// its document is generated here, from the same types; `centerd openapi
/// router-commands` prints it).
pub fn router_commands_openapi() -> OpenApi {
    DocumentBuilder::new(
        "routerd commands",
        "The commands centerd sends to a router's command API, authenticated with the router's \
         Secret(ID2).",
    )
    .command::<EndCommand>("end", "end a maintenance request")
    .command::<ReleaseCommand>("release", "release an extension terminal's VPNNAT address")
    .command::<VpnEndCommand>("vpn_end", "end the VPN")
    .build()
}

fn openapi_json() -> &'static str {
    static DOC: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DOC.get_or_init(|| openapi().to_json().unwrap_or_default())
}

/// Latency and status of every request but the health check's, by route
/// name (`other` for unknown paths).
async fn observe<G, R>(State(api): State<Shared<G, R>>, req: Request, next: Next) -> axum::response::Response
where
    G: GatewayCommands + 'static,
    R: RouterCommands + 'static,
{
    let started = std::time::Instant::now();
    let name = Route::find(ROUTES, req.uri().path()).map_or(crate::metrics::OTHER, |r| r.name);
    let resp = next.run(req).await;
    if name != "healthz" && name != "openapi" {
        api.center
            .command_metrics()
            .observe(name, resp.status().as_u16(), started.elapsed());
    }
    resp
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

/// One authenticated command: read the body, hand it to [`Center`].
async fn command<G, R>(
    State(api): State<Shared<G, R>>,
    route: &'static Route,
    Extension(Peer(peer)): Extension<Peer>,
    req: Request,
) -> Response<Body>
where
    G: GatewayCommands + 'static,
    R: RouterCommands + 'static,
{
    let path = req.uri().path().to_owned();
    let (parts, body) = match read_body(req, MAX_BODY).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let headers = match auth_headers(&parts.headers) {
        Ok(h) => h,
        Err(e) => return err(e.into()),
    };
    let (center, settings) = (&api.center, &api.settings);
    let ip = router_ip(peer, &parts.headers, settings);
    let now = unix_now();
    let result = match route.name {
        "install" => center.install_from(&path, &headers, &body, now, ip),
        "failure" => center.failure_from(&path, &headers, &body, now, ip),
        "gateway_address" => center.gateway_address(&path, &headers, &body, now, ip).await,
        "maintenance" => {
            let Some(ip) = ip else {
                return text(400, "the router's IPv4 address is unknown");
            };
            center.maintenance(&path, &headers, &body, ip, now).await
        }
        "tunnel_lost" => center.tunnel_lost(&path, &headers, &body, now, ip).await,
        "site_end" => center.site_end(&path, &headers, &body, now, ip).await,
        "request_states" => center.request_states(&path, &headers, &body, now).await,
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
