//! gatewayd's HTTP API on axum: the route table [`crate::ROUTES`] as an
//! axum router, served by [`vpnnat_service::http::serve_with`] (connection
//! gate, header time-out, drain on shutdown). Handlers only read the
//! request and call [`Gatewayd::handle`]; statuses come from
//! [`GatewayError::http_status`].

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::routing::{get, post, MethodRouter};
use axum::{Extension, Router};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::Response;
use tower_http::limit::RequestBodyLimitLayer;
use vpnnat_proto::ProtoError;
use vpnnat_service::http::{auth_headers, read_body, signed, text, unix_now, Body, Limits, Peer, Route};

use vpnnat_proto::messages::{AddAddresses, RemoveAddresses, ReportState, RestartTunnel, SetupTunnel, TearDown};
use vpnnat_proto::openapi::{DocumentBuilder, OpenApi};

use crate::{GatewayError, Gatewayd, ROUTES};

/// Largest request body read from the network; proto enforces each
/// command's own (smaller) limit after that.
const MAX_BODY: usize = 64 * 1024;

/// Serves gatewayd's API on `listener` until `shutdown`, every source
/// capped at [`Limits::GATEWAY_API`]'s share.
pub async fn run(listener: tokio::net::TcpListener, shutdown: impl Future<Output = ()>, gw: Arc<Gatewayd>) {
    run_with(listener, shutdown, gw, None).await
}

/// [`run`], with `centerd`'s address (its one legitimate client, which
/// sends as many commands at once as routers ask) exempt from the
/// per-source cap (issue 18, item 1: anyone else reaching the API cannot
/// take every connection and starve centerd's commands and heartbeats).
pub async fn run_with(
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()>,
    gw: Arc<Gatewayd>,
    centerd: Option<IpAddr>,
) {
    let limits = Limits {
        unlimited_source: centerd,
        ..Limits::GATEWAY_API
    };
    vpnnat_service::http::serve_with(listener, router(gw), shutdown, limits).await
}

/// The API's routes: one per entry of [`ROUTES`], any other path 404, any
/// other method 405 (`use POST`).
pub fn router(gw: Arc<Gatewayd>) -> Router {
    let mut app = Router::new();
    for route in ROUTES {
        let method: MethodRouter<Arc<Gatewayd>> = match (route.method, route.name) {
            ("GET", "metrics") => get(metrics),
            ("GET", "openapi") => get(|| async { vpnnat_service::http::json(openapi_json()) }),
            ("GET", _) => get(|| async { text(200, "ok") }),
            _ => post(command),
        };
        let m = route.method;
        app = app.route(
            route.path,
            method.fallback(move || async move { text(405, format!("use {m}")) }),
        );
    }
    app.route_layer(RequestBodyLimitLayer::new(MAX_BODY))
        .fallback(|| async { text(404, "no such endpoint") })
        .layer(middleware::from_fn_with_state(gw.clone(), observe))
        .with_state(gw)
}

/// gatewayd's OpenAPI document, generated from [`ROUTES`] and the
/// protocol types the handlers decode (served at `GET /openapi.json`).
pub fn openapi() -> OpenApi {
    let mut doc = DocumentBuilder::new(
        "gatewayd",
        "The VPN gateway agent's API: centerd's commands (tunnels and their VPNNAT addresses), \
         each authenticated with the gateway's API key.",
    );
    for r in ROUTES {
        doc = match r.name {
            "setup" => doc.command::<SetupTunnel>(r.name, "set up a router's tunnel in a slot"),
            "add_addresses" => doc.command::<AddAddresses>(r.name, "route VPNNAT addresses into a tunnel"),
            "remove_addresses" => doc.command::<RemoveAddresses>(r.name, "take VPNNAT addresses out of a tunnel"),
            "teardown" => doc.command::<TearDown>(r.name, "tear a tunnel down"),
            "restart_tunnel" => doc.command::<RestartTunnel>(r.name, "start a tunnel's IKE SA afresh"),
            "state" => doc.command::<ReportState>(r.name, "report every tunnel and its addresses"),
            "healthz" => doc.get(r.path, r.name, "liveness: `ok`", "text/plain"),
            "metrics" => doc.get(
                r.path,
                r.name,
                "Prometheus metrics",
                vpnnat_service::metrics::CONTENT_TYPE,
            ),
            _ => doc.get(r.path, r.name, "this document", "application/json"),
        };
    }
    doc.build()
}

fn openapi_json() -> &'static str {
    static DOC: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DOC.get_or_init(|| openapi().to_json().unwrap_or_default())
}

/// Latency and status of every command (the POST routes), by route name.
async fn observe(State(gw): State<Arc<Gatewayd>>, req: Request, next: Next) -> axum::response::Response {
    let started = std::time::Instant::now();
    let route = Route::find(ROUTES, req.uri().path()).filter(|r| r.method == "POST");
    let resp = next.run(req).await;
    if let Some(r) = route {
        gw.metrics.observe(r.name, resp.status().as_u16(), started.elapsed());
    }
    resp
}

async fn metrics(State(gw): State<Arc<Gatewayd>>) -> Response<Body> {
    match gw.render_metrics() {
        Ok(m) => {
            let mut r = text(200, m);
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(vpnnat_service::metrics::CONTENT_TYPE),
            );
            r
        }
        Err(e) => text(500, e.to_string()),
    }
}

/// One authenticated command: read the body, hand it to the domain.
async fn command(
    State(gw): State<Arc<Gatewayd>>,
    Extension(Peer(peer)): Extension<Peer>,
    req: Request,
) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let (parts, body) = match read_body(req, MAX_BODY).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let headers = match auth_headers(&parts.headers) {
        Ok(h) => h,
        Err(e) => return text(e.http_status(), e.to_string()),
    };
    match gw.handle(&path, &headers, &body, unix_now()) {
        Ok(out) => signed(out),
        Err(e) => refused(&path, peer, e),
    }
}

fn refused(path: &str, peer: SocketAddr, e: GatewayError) -> Response<Body> {
    log::warn!("{path} from {peer}: {e}");
    let msg = match &e {
        GatewayError::Proto(ProtoError::UnknownTerminal | ProtoError::BadMac) => {
            "message authentication failed".to_owned()
        }
        other => other.to_string(),
    };
    text(e.http_status(), msg)
}
