//! The operator web UI: login with an operator account's name and password
//! (PBKDF2 hashes in the database, `crate::accounts`; no name: `admin`,
//! the account made from the configured shared password at the first
//! start), a session cookie whose hash lives in the
//! database (so any centerd sharing it accepts it), each route checked
//! against the session account's role at every request, the request list with
//! the columns of the seed's figure 29 newest first with start/end buttons,
//! failures, gateways with used/free slots, and pool usage. Server-rendered
//! HTML that reloads itself every few seconds; JSON at `/api/state`.
//!
//! Routes: the table [`ROUTES`]; every route but the login form, the
//! health check and the metrics needs a session (401, or 303 to the login
//! page for `GET /`). Against cross-site requests, three independent
//! layers: the cookie is `HttpOnly; SameSite=Strict`; every POST whose
//! `Origin` is not this server, or whose `Sec-Fetch-Site` says another
//! site, is refused; and every POST with a session must carry the
//! session's CSRF token (a form field, derived from the session token,
//! compared in constant time). Wrong passwords are throttled per source
//! address with a growing back-off, and overall for sources outside the
//! trusted operator network only ([`vpnnat_proto::throttle`]), counted
//! before the password is hashed; lock-outs go to the audit log. The
//! PBKDF2 check runs on tokio's blocking threads, at most `hash_slots` at
//! once for untrusted sources and as many again for trusted ones: a login
//! flood neither stalls the async workers (which also serve the router API)
//! nor queues without bound (a full set of slots answers 503 at once).

use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body as RequestBody;
use axum::extract::State;
use axum::routing::{on, MethodFilter, MethodRouter};
use axum::{Extension, Router};
use hyper::body::Bytes;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE, COOKIE, LOCATION, SET_COOKIE};
use hyper::{Method, Request, Response, StatusCode};
use ring::digest;
use ring::rand::{SecureRandom, SystemRandom};
use tokio::net::TcpListener;

use crate::accounts::manage::FIRST_ADMIN;
use crate::accounts::Role;
use crate::center::{Actor, Center, CenterError, GatewayCommands, RouterCommands};
use crate::http::{read_body, serve, text, unix_now, Body, Peer};
use crate::password::PasswordHash;
use crate::storage::{AuditFilter, AuditRow, SessionStage};
use vpnnat_proto::throttle::{LoginThrottle, ThrottleConfig};
use vpnnat_proto::types::Ipv4Cidr;

const COOKIE_NAME: &str = "vpnnat_session";
/// The form field that carries the session's CSRF token.
const CSRF_FIELD: &str = "csrf";
/// Largest form the UI reads (a password or a CSRF token).
const MAX_FORM: usize = 4096;

/// Who may use a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone (login form, health check, metrics with counts only).
    Public,
    /// A logged-in operator.
    Session,
    /// The login's second step (issue 20, item 2): a session at any stage,
    /// also one whose password was right but whose TOTP code is still to
    /// come or whose enrolment is due. Nothing else takes such a session.
    Staged,
}

/// What a route does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Page {
    LoginForm,
    Login,
    Health,
    Metrics,
    Dashboard,
    State,
    Audit,
    AuditCsv,
    AuditJsonl,
    Logout,
    Start,
    EndForm,
    End,
    Limit,
    Drain,
    Undrain,
    ApproveReinstall,
    ShowMaintenancePassword,
    Accounts,
    AccountAdd,
    AccountDisable,
    AccountEnable,
    AccountRole,
    CodeForm,
    Code,
    EnrolForm,
    Enrol,
}

/// One route of the operator UI. `{n}` in a path stands for an acceptance
/// number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UiRoute {
    pub method: &'static str,
    pub path: &'static str,
    pub access: Access,
    /// The least role a session needs.
    pub role: Role,
    page: Page,
}

impl UiRoute {
    /// Whether the route changes state (and so needs the CSRF checks).
    pub fn is_post(&self) -> bool {
        self.method == "POST"
    }
}

const fn route(method: &'static str, path: &'static str, access: Access, role: Role, page: Page) -> UiRoute {
    UiRoute {
        method,
        path,
        access,
        role,
        page,
    }
}

/// Every route of the operator UI; the dispatcher serves exactly these.
/// The role is the least a session needs (issue 20: checked in the server
/// at every request; public routes ignore it).
pub const ROUTES: &[UiRoute] = &[
    route("GET", "/login", Access::Public, Role::Viewer, Page::LoginForm),
    route("POST", "/login", Access::Public, Role::Viewer, Page::Login),
    // Issue 20, item 2: the second factor. The code (or a recovery code)
    // after the password (form field `code`), and the enrolment: its QR
    // code, then the confirmation with a current code (field `code`).
    route("GET", "/login/code", Access::Staged, Role::Viewer, Page::CodeForm),
    route("POST", "/login/code", Access::Staged, Role::Viewer, Page::Code),
    route("GET", "/totp/enrol", Access::Staged, Role::Viewer, Page::EnrolForm),
    route("POST", "/totp/enrol", Access::Staged, Role::Viewer, Page::Enrol),
    route("GET", "/healthz", Access::Public, Role::Viewer, Page::Health),
    // For Prometheus on the operator network: no session (a scraper
    // cannot log in); counts only, no names or addresses.
    route("GET", "/metrics", Access::Public, Role::Viewer, Page::Metrics),
    route("GET", "/", Access::Session, Role::Viewer, Page::Dashboard),
    route("GET", "/api/state", Access::Session, Role::Viewer, Page::State),
    route("GET", "/audit", Access::Session, Role::Viewer, Page::Audit),
    route("GET", "/audit.csv", Access::Session, Role::Viewer, Page::AuditCsv),
    route("GET", "/audit.jsonl", Access::Session, Role::Viewer, Page::AuditJsonl),
    // Ending one's own session changes nothing else: every role may.
    route("POST", "/logout", Access::Session, Role::Viewer, Page::Logout),
    route(
        "POST",
        "/requests/{n}/start",
        Access::Session,
        Role::Operator,
        Page::Start,
    ),
    // Issue 20, item 6: an end needs a reason (form field `reason`,
    // `crate::end_reason`). The form is a page of its own: the dashboard
    // reloads itself every few seconds, which would wipe a typed reason.
    route(
        "GET",
        "/requests/{n}/end",
        Access::Session,
        Role::Operator,
        Page::EndForm,
    ),
    route("POST", "/requests/{n}/end", Access::Session, Role::Operator, Page::End),
    // Issue 19, item 8: the request's time limit, `minutes` from now (form
    // field); never beyond `[center] max_grant_lifetime_secs`; audited.
    route(
        "POST",
        "/requests/{n}/limit",
        Access::Session,
        Role::Operator,
        Page::Limit,
    ),
    // Issue 18: a re-installation without proof of Secret(ID2) waits for
    // this (form field `terminal_id`); audited. It decides which device
    // gets a router's keys: admins only.
    route(
        "POST",
        "/reinstalls/approve",
        Access::Session,
        Role::Admin,
        Page::ApproveReinstall,
    ),
    // Issue 18: a router's own maintenance password, on demand (form field
    // `terminal_id`); every showing is audited. Part of the maintenance
    // work: operators may.
    route(
        "POST",
        "/routers/maintenance-password",
        Access::Session,
        Role::Operator,
        Page::ShowMaintenancePassword,
    ),
    // Issue 20, item 6: the gateway panel's drain and undrain (form field
    // `name`), as `centerd drain-gateway`; audited. Gateways are the
    // administrators' configuration: admins only.
    route("POST", "/gateways/drain", Access::Session, Role::Admin, Page::Drain),
    route("POST", "/gateways/undrain", Access::Session, Role::Admin, Page::Undrain),
    // Issue 20: the accounts (form fields `name`, `password`, `role`).
    route("GET", "/accounts", Access::Session, Role::Admin, Page::Accounts),
    route("POST", "/accounts/add", Access::Session, Role::Admin, Page::AccountAdd),
    route(
        "POST",
        "/accounts/disable",
        Access::Session,
        Role::Admin,
        Page::AccountDisable,
    ),
    route(
        "POST",
        "/accounts/enable",
        Access::Session,
        Role::Admin,
        Page::AccountEnable,
    ),
    route(
        "POST",
        "/accounts/role",
        Access::Session,
        Role::Admin,
        Page::AccountRole,
    ),
];

/// Whether `path` fits `pattern`, and the `{n}` it carries.
fn path_matches(pattern: &str, path: &str) -> Option<Option<u64>> {
    let mut n = None;
    let mut want = pattern.split('/');
    let mut got = path.split('/');
    loop {
        match (want.next(), got.next()) {
            (None, None) => return Some(n),
            (Some("{n}"), Some(g)) => n = Some(g.parse::<u64>().ok()?),
            (Some(w), Some(g)) if w == g => {}
            _ => return None,
        }
    }
}

/// The CSRF token of a session: derived from the session token (which only
/// the operator's browser holds, in an HttpOnly cookie), so every centerd
/// sharing the database agrees on it without storing it.
fn csrf_token(session: &str) -> String {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(b"vpnnat-csrf\0");
    ctx.update(session.as_bytes());
    hex::encode(ctx.finish())
}

/// Constant-time check of a presented CSRF token (HMACs of both under a
/// fresh key compared by ring in constant time: no early exit on the first
/// differing byte).
fn csrf_ok(session: &str, presented: &str) -> bool {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, session.as_bytes());
    let want = ring::hmac::sign(&key, csrf_token(session).as_bytes());
    ring::hmac::verify(&key, presented.as_bytes(), want.as_ref()).is_ok()
}

/// A POST from another site: `Sec-Fetch-Site` says so, or `Origin` names
/// another host than this request's `Host`. (Non-browser clients send
/// neither; they have no ambient cookie to abuse.)
fn cross_site(headers: &hyper::HeaderMap) -> Option<&'static str> {
    let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    if let Some(site) = h("sec-fetch-site") {
        if !matches!(site, "same-origin" | "none") {
            return Some("cross-site request refused (Sec-Fetch-Site)");
        }
    }
    if let Some(origin) = h("origin") {
        let host = h("host").unwrap_or_default();
        let origin_host = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"));
        if host.is_empty() || origin_host != Some(host) {
            return Some("cross-site request refused (Origin)");
        }
    }
    None
}
/// Seconds between automatic reloads of the dashboard.
const REFRESH_SECS: u32 = 3;

/// What the UI needs besides the center.
#[derive(Debug)]
pub struct UiSettings {
    pub operator_hashes: Vec<PasswordHash>,
    pub session_ttl: Duration,
    /// centerd's DNS zone (`dns.domain`): the UI shows each grant's name
    /// `HOSTNAME.TERMINALID.<domain>` next to its address. None: no DNS.
    pub dns_domain: Option<String>,
    /// Wrong-password brakes.
    pub throttle: ThrottleConfig,
    /// `operators.trusted_networks`: never braked by other sources' wrong
    /// passwords, and their own hashing slots.
    pub operator_networks: Vec<Ipv4Cidr>,
    /// Password checks (PBKDF2) running at once, per kind of source
    /// (untrusted, trusted); 0 is taken as 1.
    pub hash_slots: usize,
    /// PBKDF2 iterations of the password hashes of accounts added in the
    /// UI (`crate::password::DEFAULT_ITERATIONS`).
    pub account_iterations: u32,
    /// `[center] totp_required_roles`: roles that must log in with a
    /// second factor (enrolling first if they have none).
    pub totp_required_roles: Vec<Role>,
    /// The clock TOTP codes are checked against (tests set it).
    pub clock: Clock,
}

/// Unix seconds, from the system or from a test.
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> u64 + Send + Sync>);

impl Clock {
    pub fn system() -> Clock {
        Clock(Arc::new(unix_now))
    }

    /// A clock that reads `t` (a test moves it).
    pub fn manual(t: Arc<std::sync::atomic::AtomicU64>) -> Clock {
        Clock(Arc::new(move || t.load(std::sync::atomic::Ordering::SeqCst)))
    }

    pub fn now(&self) -> u64 {
        (self.0)()
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Clock({})", self.now())
    }
}

/// Password checks at once per kind of source: one core's worth each on a
/// small center, the rest stays with the async workers.
pub const DEFAULT_HASH_SLOTS: usize = 1;

struct Ui<G, R> {
    center: Arc<Center<G, R>>,
    settings: UiSettings,
    rng: SystemRandom,
    throttle: std::sync::Mutex<LoginThrottle>,
    /// The hashes, shared with the blocking checks.
    hashes: Arc<[PasswordHash]>,
    /// Hashing slots: (untrusted, trusted).
    slots: (Arc<tokio::sync::Semaphore>, Arc<tokio::sync::Semaphore>),
}

/// Serves the operator UI on `listener` until `shutdown`.
pub async fn run<G, R>(
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    center: Arc<Center<G, R>>,
    settings: UiSettings,
) where
    G: GatewayCommands + 'static,
    R: RouterCommands + 'static,
{
    let slots = settings.hash_slots.max(1);
    let ui = Arc::new(Ui {
        center,
        throttle: std::sync::Mutex::new(LoginThrottle::new(settings.throttle)),
        hashes: settings.operator_hashes.clone().into(),
        slots: (
            Arc::new(tokio::sync::Semaphore::new(slots)),
            Arc::new(tokio::sync::Semaphore::new(slots)),
        ),
        settings,
        rng: SystemRandom::new(),
    });
    serve(listener, router(ui), shutdown).await
}

/// A live session: its token, the label its audit rows carry
/// (`operator:NAME`; `operator#N`: a shared-password session from before
/// the accounts) and its role.
struct Session {
    token: String,
    label: String,
    role: Role,
    /// The named account (None: a shared-password session from before).
    account: Option<String>,
    /// How far its login got.
    stage: SessionStage,
}

/// The state of the UI's handlers.
type Shared<G, R> = Arc<Ui<G, R>>;

/// The UI's axum router: one route per entry of [`ROUTES`] (axum's `{n}`
/// is the table's), other methods and paths to [`Ui::unmatched`].
fn router<G, R>(ui: Shared<G, R>) -> Router
where
    G: GatewayCommands + 'static,
    R: RouterCommands + 'static,
{
    let mut paths: Vec<(&'static str, MethodRouter<Shared<G, R>>)> = Vec::new();
    for route in ROUTES {
        let filter = if route.is_post() {
            MethodFilter::POST
        } else {
            MethodFilter::GET
        };
        let handler = move |State(ui): State<Shared<G, R>>,
                            Extension(Peer(peer)): Extension<Peer>,
                            req: Request<RequestBody>| async move {
            ui.handle(route, req, peer).await
        };
        match paths.iter_mut().find(|(p, _)| *p == route.path) {
            Some((_, m)) => *m = std::mem::take(m).on(filter, handler),
            None => paths.push((route.path, on(filter, handler))),
        }
    }
    let mut app = Router::new();
    for (path, method) in paths {
        app = app.route(
            path,
            method.fallback(|State(ui): State<Shared<G, R>>, req: Request<RequestBody>| async move {
                ui.unmatched(&req, true)
            }),
        );
    }
    app.fallback(|State(ui): State<Shared<G, R>>, req: Request<RequestBody>| async move { ui.unmatched(&req, false) })
        .with_state(ui)
}

/// Decodes one `application/x-www-form-urlencoded` value (the decoder the
/// router's pages use too).
pub fn form_decode(s: &str) -> String {
    vpnnat_proto::form::decode(s.as_bytes())
}

/// The first value of `name` in an urlencoded body (the login form) or
/// query string.
pub fn form_field(body: &[u8], name: &str) -> Option<String> {
    vpnnat_proto::form::first(body, name)
}

fn token_hash(token: &str) -> String {
    hex::encode(digest::digest(&digest::SHA256, token.as_bytes()))
}

/// The session token of the request's `Cookie` headers.
pub fn session_cookie(headers: &hyper::HeaderMap) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE_NAME)
        .map(|(_, v)| v.to_owned())
}

/// `r` with the session cookie `token` set for `max_age` seconds.
fn with_cookie(mut r: Response<Body>, token: &str, max_age: u64) -> Response<Body> {
    let cookie = format!("{COOKIE_NAME}={token}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age}");
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(SET_COOKIE, v);
    }
    r
}

fn redirect(to: &str) -> Response<Body> {
    let mut r = Response::new(Body::new(Bytes::new()));
    *r.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(LOCATION, v);
    }
    r
}

fn html(status: u16, body: String) -> Response<Body> {
    let mut r = text(status, body);
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // No framing (a framed dashboard's Start/End buttons could be
    // clickjacked), no sniffing, nothing but the page's own style sheet.
    for (name, value) in vpnnat_proto::page_headers::html_headers(page_policy()) {
        if let Ok(v) = HeaderValue::from_str(&value) {
            r.headers_mut().insert(name, v);
        }
    }
    r
}

/// The pages' content policy: their one inline style sheet, and the
/// dashboard's copy-button script (by hash; no other script runs).
fn page_policy() -> &'static str {
    static CSP: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    CSP.get_or_init(|| vpnnat_proto::page_headers::content_security_policy(&[pages::STYLE], &[pages::COPY_SCRIPT]))
}

fn json(body: String) -> Response<Body> {
    let mut r = text(200, body);
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn login_page(message: &str) -> String {
    pages::login(message)
}

pub(crate) fn fmt_time(t: u64) -> String {
    // UTC, without pulling in a date crate: days since epoch -> civil date.
    let days = i64::try_from(t / 86_400).unwrap_or(0);
    let secs = t % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}Z",
        secs / 3600,
        (secs % 3600) / 60,
        secs % 60
    )
}

/// Howard Hinnant's days -> (year, month, day), proleptic Gregorian.
#[allow(clippy::arithmetic_side_effects)] // bounded inputs: days from a u64 / 86400
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let m = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    (if m <= 2 { y + 1 } else { y }, m, d)
}

impl<G: GatewayCommands + 'static, R: RouterCommands + 'static> Ui<G, R> {
    /// The request's live session (None: not logged in, or its account
    /// is disabled or gone). Read at every request: a disabled account's
    /// session is refused at its next one, a changed role applies at once.
    fn session(&self, headers: &hyper::HeaderMap) -> Option<Session> {
        let token = session_cookie(headers)?;
        let owner = self
            .center
            .reads()
            .ok()
            .and_then(|st| st.session_owner(&token_hash(&token), unix_now()).ok())??;
        let role = match (&owner.account, owner.state) {
            // A shared-password session from before the accounts (an
            // upgrade): full rights until it expires, as it had.
            (None, _) => Role::Admin,
            (Some(_), Some((role, false))) => role,
            (Some(name), _) => {
                log::info!("operator UI: a session of disabled or removed account {name} refused");
                return None;
            }
        };
        // Sessions from before the audit log carry no operator label.
        let label = if owner.label.is_empty() {
            "operator".to_owned()
        } else {
            owner.label
        };
        Some(Session {
            token,
            label,
            role,
            account: owner.account,
            stage: owner.stage,
        })
    }

    /// A request no route of [`ROUTES`] serves: `known` when its path is
    /// a route's with another method. Without a session nothing but the
    /// public routes exist (no hint which other paths do).
    fn unmatched(&self, req: &Request<RequestBody>, known: bool) -> Response<Body> {
        // A half-logged-in session (second factor still to come) is none.
        if self
            .session(req.headers())
            .is_none_or(|s| s.stage != SessionStage::Full)
        {
            return text(401, "log in first");
        }
        if known {
            text(405, "method not allowed")
        } else {
            text(404, "no such page")
        }
    }

    /// One request to `route`: the cross-site and session checks, then the
    /// page.
    async fn handle(&self, route: &'static UiRoute, req: Request<RequestBody>, peer: SocketAddr) -> Response<Body> {
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let query = req.uri().query().unwrap_or("").to_owned();
        // `{n}` must be an acceptance number.
        let Some(n) = path_matches(route.path, &path) else {
            return self.unmatched(&req, false);
        };
        if route.is_post() {
            if let Some(why) = cross_site(req.headers()) {
                log::warn!("operator UI: {method} {path} from {peer}: {why}");
                return text(403, why);
            }
        }
        let session = self.session(req.headers());
        // Half logged in (the second factor still to come): nothing but
        // the login's next step and the logout. A page's GET is sent to
        // that step; anything else (the API) is 401.
        if let Some(s) = session.as_ref().filter(|s| s.stage != SessionStage::Full) {
            if route.access == Access::Session && route.page != Page::Logout {
                return if method == Method::GET && matches!(route.page, Page::Dashboard | Page::Audit | Page::Accounts)
                {
                    redirect(second_factor::step_page(s.stage))
                } else {
                    text(401, "finish logging in first (second factor)")
                };
            }
        }
        if route.access != Access::Public && session.is_none() {
            return if method == Method::GET && (path == "/" || route.access == Access::Staged) {
                redirect("/login")
            } else {
                text(401, "log in first")
            };
        }
        match route.page {
            Page::LoginForm => return html(200, login_page("")),
            Page::Login => return self.login(req, peer).await,
            Page::Health => return text(200, "ok"),
            Page::Metrics => {
                return match self.center.render_metrics() {
                    Ok(m) => {
                        let mut r = text(200, m);
                        r.headers_mut().insert(
                            CONTENT_TYPE,
                            HeaderValue::from_static(crate::metrics::OPENMETRICS_CONTENT_TYPE),
                        );
                        r
                    }
                    Err(e) => text(500, format!("cannot read the database: {e}")),
                }
            }
            _ => {}
        }
        let Some(session) = session else {
            return text(401, "log in first");
        };
        let Session {
            ref token,
            ref label,
            role,
            ..
        } = session;
        let token = token.clone();
        let label = label.clone();
        let actor = Actor::new(label, peer.ip().to_string());
        if !role.may(route.role) {
            log::warn!(
                "operator UI: {method} {path} by {} ({role}) from {peer}: refused, needs {}",
                actor.who,
                route.role
            );
            return text(
                403,
                format!("your role ({role}) may not do this; it needs {}", route.role),
            );
        }
        if route.is_post() {
            let headers = req.headers().clone();
            let (_, body) = match read_body(req, MAX_FORM).await {
                Ok(x) => x,
                Err(r) => return r,
            };
            let presented = form_field(&body, CSRF_FIELD).unwrap_or_default();
            if !csrf_ok(&token, &presented) {
                log::warn!("operator UI: {method} {path} from {peer} without a valid CSRF token: refused");
                return text(403, "missing or wrong CSRF token: reload the page and try again");
            }
            return match (route.page, n) {
                (Page::Logout, _) => self.logout(&headers, &actor),
                (Page::Code, _) => self.second_factor(&session, &body, peer).await,
                (Page::Enrol, _) => self.enrol(&session, &body, peer).await,
                (Page::Start, Some(n)) => self.action(n, "start", None, &actor).await,
                (Page::End, Some(n)) => {
                    let reason = form_field(&body, "reason").unwrap_or_default();
                    self.end(n, &reason, &actor).await
                }
                (Page::Drain | Page::Undrain, _) => {
                    let name = form_field(&body, "name").unwrap_or_default();
                    self.drain(name.trim(), route.page == Page::Drain, &actor)
                }
                (Page::Limit, Some(n)) => {
                    let minutes = form_field(&body, "minutes").unwrap_or_default();
                    self.limit(n, minutes.trim(), &actor)
                }
                (Page::ApproveReinstall, _) => {
                    let t = form_field(&body, "terminal_id").unwrap_or_default();
                    match self.center.approve_reinstall(&t, &actor, unix_now()) {
                        Ok(()) => redirect(&format!(
                            "/?msg={}",
                            url_encode(&format!(
                                "Re-installation of {t} approved: its next installation notice is accepted."
                            ))
                        )),
                        Err(e) => self.action_error(e),
                    }
                }
                (Page::AccountAdd | Page::AccountDisable | Page::AccountEnable | Page::AccountRole, _) => {
                    self.account_action(route.page, &body, &actor)
                }
                (Page::ShowMaintenancePassword, _) => {
                    let t = form_field(&body, "terminal_id").unwrap_or_default();
                    match self.center.show_maintenance_password(&t, &actor, unix_now()) {
                        Ok(p) => {
                            let mut r = html(200, pages::maintenance_password(&t, p.expose_secret()));
                            r.headers_mut()
                                .insert(hyper::header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                            r
                        }
                        Err(e) => self.action_error(e),
                    }
                }
                _ => text(404, "no such action"),
            };
        }
        match route.page {
            Page::Dashboard => match self.dashboard(&query, &csrf_token(&token), &actor.who, role) {
                Ok(b) => html(200, b),
                Err(e) => text(500, format!("cannot read the database: {e}")),
            },
            Page::State => match self.state_json() {
                Ok(b) => json(b),
                Err(e) => text(500, format!("cannot read the database: {e}")),
            },
            Page::Audit => match self.audit_page(&query) {
                Ok(b) => html(200, b),
                Err(e) => text(500, format!("cannot read the database: {e}")),
            },
            Page::AuditCsv => self.audit_export(&query, false),
            Page::AuditJsonl => self.audit_export(&query, true),
            Page::Accounts => self.accounts_page(&query, &csrf_token(&token), &actor),
            Page::EndForm => match n {
                Some(n) => self.end_form(n, &query, &csrf_token(&token)),
                None => text(404, "no such page"),
            },
            Page::CodeForm => self.code_form(&session, ""),
            Page::EnrolForm => self.enrol_form(&session, ""),
            _ => text(404, "no such page"),
        }
    }

    async fn login(&self, req: Request<RequestBody>, peer: SocketAddr) -> Response<Body> {
        let (_, body) = match read_body(req, MAX_FORM).await {
            Ok(x) => x,
            Err(r) => return r,
        };
        let password = zeroize::Zeroizing::new(form_field(&body, "password").unwrap_or_default());
        // Empty: `admin` (the account made from the shared password).
        let name = form_field(&body, "name").unwrap_or_default().trim().to_owned();
        let now = unix_now();
        let who = Actor::new("operator?", peer.ip().to_string());
        let trusted = self.trusted(peer);
        let throttled = |t: vpnnat_proto::throttle::Throttled| {
            let page = login_page(&format!("Login refused: {t}."));
            self.throttled_login(peer, &who, t, now, "operator login", page)
        };
        // A braked source goes no further: it takes no hashing slot.
        // (The verdict first: the lock must be free again for `throttled`.)
        let verdict = self.throttle.lock().ok().map(|t| t.check_from(peer.ip(), trusted, now));
        match verdict {
            Some(Ok(())) => {}
            Some(Err(t)) => return throttled(t),
            None => return text(500, "login throttle unavailable"),
        }
        // A hashing slot, without waiting: when all are busy the answer
        // comes at once and nothing is counted (nothing was guessed).
        let slots = if trusted { &self.slots.1 } else { &self.slots.0 };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            // Debug: a flood would write a line per request.
            log::debug!("operator login from {peer}: every password check slot is busy, refused");
            let mut r = html(
                503,
                login_page("The server is busy checking passwords: try again in a moment."),
            );
            r.headers_mut()
                .insert(hyper::header::RETRY_AFTER, HeaderValue::from_static("1"));
            return r;
        };
        // Counted before the password is hashed: concurrent guesses cannot
        // slip past the limit, and a refused one costs no PBKDF2 time.
        let admitted = self.throttle.lock().ok().map(|mut t| t.begin(peer.ip(), trusted, now));
        let attempt = match admitted {
            Some(Ok(a)) => a,
            Some(Err(t)) => return throttled(t),
            None => return text(500, "login throttle unavailable"),
        };
        // The account's stored hash (an unknown name is checked against a
        // configured hash instead, so it costs the same time and says
        // nothing about which names exist). No name: the first admin, the
        // account made from the shared password (the scripts that log in
        // with a password alone).
        let account_name = if name.is_empty() { FIRST_ADMIN } else { name.as_str() };
        let account = match self.center.reads().and_then(|st| Ok(st.operator_login(account_name)?)) {
            Ok(a) => a,
            Err(e) => return text(500, format!("cannot read the database: {e}")),
        };
        let known = account.is_some();
        // PBKDF2 off the async workers; the slot goes with the check, so a
        // client that hangs up does not free it early.
        let hashes = self.hashes.clone();
        let checked = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            match account {
                Some((row, stored)) => {
                    let ok = PasswordHash::parse(&stored).is_ok_and(|h| h.verify(&password));
                    ok.then_some(row)
                }
                None => {
                    let _ = hashes.first().map(|h| h.verify(&password));
                    None
                }
            }
        })
        .await;
        let row = match checked {
            Ok(i) => i,
            Err(e) => return text(500, format!("password check failed: {e}")),
        };
        let wrong = if name.is_empty() {
            "Wrong password."
        } else {
            "Wrong name or password."
        };
        let Some(row) = row else {
            // No detail about which part was wrong; the peer is logged for
            // the administrator, the password never.
            log::warn!("failed operator login from {peer}");
            // An unknown name is not recorded: it may be a password typed
            // into the wrong field.
            let detail = match (name.is_empty(), known) {
                (true, _) => "wrong password".to_owned(),
                (false, true) => format!("wrong password for {}", crate::accounts::actor_name(&name)),
                (false, false) => "unknown operator name (not recorded)".to_owned(),
            };
            self.center.audit(now, &who, "login_failed", None, None, &detail);
            if let Some(t) = attempt.locks {
                log::warn!("operator logins locked: {t}");
                self.center.audit(now, &who, "login_locked", None, None, &t.to_string());
                return html(401, login_page(&format!("{wrong} Login refused: {t}.")));
            }
            return html(401, login_page(wrong));
        };
        let operator = crate::accounts::actor_name(&row.name);
        if row.disabled {
            if let Ok(mut t) = self.throttle.lock() {
                t.passed(attempt);
            }
            // The right password: saying so is safe, and tells the
            // operator whom to ask.
            log::warn!("login of disabled account {operator} from {peer} refused");
            let who = Actor::new(operator, peer.ip().to_string());
            self.center
                .audit(now, &who, "login_refused", None, None, "account disabled");
            return html(403, login_page("This account is disabled."));
        }
        self.after_password(&row, &operator, peer, attempt, now)
    }

    /// Whether `peer` is in the trusted operator network.
    fn trusted(&self, peer: SocketAddr) -> bool {
        match peer.ip() {
            std::net::IpAddr::V4(a) => self.settings.operator_networks.iter().any(|n| n.contains(a)),
            std::net::IpAddr::V6(a) => a
                .to_ipv4_mapped()
                .is_some_and(|a| self.settings.operator_networks.iter().any(|n| n.contains(a))),
        }
    }

    /// A new session of `account` at `stage` for `ttl_secs`: its token.
    fn new_session(
        &self,
        label: &str,
        account: &str,
        stage: SessionStage,
        ttl_secs: u64,
        now: u64,
    ) -> Result<String, String> {
        let mut raw = [0u8; 32];
        if self.rng.fill(&mut raw).is_err() {
            return Err("random number generator failed".into());
        }
        let token = hex::encode(raw);
        let expires = now.saturating_add(ttl_secs);
        self.center
            .store()
            .and_then(|mut st| {
                st.purge_sessions(now)?;
                st.add_staged_session(&token_hash(&token), expires, label, account, stage)?;
                Ok(())
            })
            .map_err(|e| format!("cannot store the session: {e}"))?;
        Ok(token)
    }

    /// A full session of `row` after all its factors: the cookie, audited.
    fn full_session(&self, row_name: &str, operator: &str, peer: SocketAddr, now: u64, how: &str) -> Response<Body> {
        let token = match self.new_session(
            operator,
            row_name,
            SessionStage::Full,
            self.settings.session_ttl.as_secs(),
            now,
        ) {
            Ok(t) => t,
            Err(e) => return text(500, e),
        };
        log::info!("{operator} logged in from {peer}");
        let who = Actor::new(operator, peer.ip().to_string());
        self.center
            .audit(now, &who, "login", None, None, &format!("session started{how}"));
        with_cookie(redirect("/"), &token, self.settings.session_ttl.as_secs())
    }

    fn logout(&self, headers: &hyper::HeaderMap, actor: &Actor) -> Response<Body> {
        self.center
            .audit(unix_now(), actor, "logout", None, None, "session ended");
        if let Some(tok) = session_cookie(headers) {
            if let Ok(mut st) = self.center.store() {
                if let Err(e) = st.delete_session(&token_hash(&tok)) {
                    log::warn!("logout: {e}");
                }
            }
        }
        let mut r = redirect("/login");
        r.headers_mut().insert(
            SET_COOKIE,
            HeaderValue::from_static("vpnnat_session=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"),
        );
        r
    }

    /// The end form of request `n` (issue 20, item 6): what it is, and
    /// the reason field; `msg` in the query: why the last try was refused.
    fn end_form(&self, n: u64, query: &str, csrf: &str) -> Response<Body> {
        let row = match self.center.reads().and_then(|st| Ok(st.request(n)?)) {
            Ok(Some(r)) => r,
            Ok(None) => return text(404, format!("no request {n}")),
            Err(e) => return text(500, format!("cannot read the database: {e}")),
        };
        let msg = form_field(query.as_bytes(), "msg");
        html(200, pages::end_form(&row, csrf, msg.as_deref()))
    }

    /// The operator's end with a reason (issue 20, item 6): refused, back
    /// to the form with why, unless the reason is valid; nothing changes
    /// then.
    async fn end(&self, n: u64, reason: &str, actor: &Actor) -> Response<Body> {
        match crate::end_reason::parse(reason) {
            Ok(r) => self.action(n, "end", Some(&r), actor).await,
            Err(e) => redirect(&format!(
                "/requests/{n}/end?msg={}",
                url_encode(&format!("Request {n} not ended: {e}."))
            )),
        }
    }

    /// Drain (or undrain) gateway `name` from the gateway panel; audited.
    fn drain(&self, name: &str, draining: bool, actor: &Actor) -> Response<Body> {
        let done = self
            .center
            .store()
            .and_then(|mut st| Ok(st.set_draining_by(name, draining, unix_now(), &actor.who, &actor.peer)?));
        let msg = match done {
            Ok(()) if draining => {
                log::info!("gateway {name} draining, by {}", actor.who);
                format!("Gateway {name} is draining: it takes no new tunnels, its current ones stay.")
            }
            Ok(()) => {
                log::info!("gateway {name} takes new tunnels again, by {}", actor.who);
                format!("Gateway {name} takes new tunnels again.")
            }
            Err(e) => format!("Gateway {name:?}: {e}"),
        };
        redirect(&format!("/?msg={}", url_encode(&msg)))
    }

    async fn action(
        &self,
        n: u64,
        what: &str,
        reason: Option<&crate::end_reason::EndReason>,
        actor: &Actor,
    ) -> Response<Body> {
        let now = unix_now();
        let msg = match what {
            "start" => match self.center.start_by(n, now, actor) {
                Ok(_) => format!("Request {n} started."),
                Err(e) => return self.action_error(e),
            },
            "end" => match self.center.end_with_reason(n, now, actor, reason).await {
                Ok(o) => {
                    let mut m = format!("Request {n} ended; {} address(es) released", o.released.len());
                    if o.vpn_ended {
                        m.push_str("; VPN ended");
                    }
                    if !o.warnings.is_empty() {
                        let _ = write!(m, "; warnings: {}", o.warnings.join("; "));
                    }
                    m
                }
                Err(e) => return self.action_error(e),
            },
            _ => return text(404, "no such action"),
        };
        redirect(&format!("/?msg={}", url_encode(&msg)))
    }

    /// The operator's time limit for request `n`: `minutes` from now.
    fn limit(&self, n: u64, minutes: &str, actor: &Actor) -> Response<Body> {
        let Ok(m) = minutes.parse::<u64>() else {
            return redirect(&format!(
                "/?msg={}",
                url_encode(&format!(
                    "Request {n}: the time limit must be a whole number of minutes"
                ))
            ));
        };
        match self.center.limit_by(n, m, unix_now(), actor) {
            Ok(r) => redirect(&format!(
                "/?msg={}",
                url_encode(&format!(
                    "Request {n} now ends at {}.",
                    crate::limits::utc_hhmm(self.center.request_end(&r))
                ))
            )),
            Err(e) => redirect(&format!("/?msg={}", url_encode(&format!("Request {n}: {e}")))),
        }
    }

    fn action_error(&self, e: CenterError) -> Response<Body> {
        redirect(&format!("/?msg={}", url_encode(&e.to_string())))
    }

    fn dashboard(&self, query: &str, csrf: &str, who: &str, role: Role) -> Result<String, CenterError> {
        let st = self.center.reads()?;
        let requests = st.list_requests(200)?;
        let failures = st.failures(None, 50)?;
        let gateways = st.gateway_usage()?;
        let pool = st.pool_usage()?;
        let reinstalls = st.reinstall_requests()?;
        let traffic = st.all_tunnel_traffic()?;
        let mut slots = Vec::new();
        for g in &gateways {
            slots.extend(st.slots_of_gateway(&g.name)?);
        }
        drop(st);
        let d = pages::Dashboard {
            requests: &requests,
            failures: &failures,
            gateways: &gateways,
            slots: &slots,
            pool: &pool,
            dns_domain: self.settings.dns_domain.as_deref(),
            reinstalls: &reinstalls,
            now: unix_now(),
            max_lifetime_secs: self.center.settings().max_grant_lifetime_secs,
            idle_timeout_secs: self.center.settings().idle_timeout_secs,
            traffic: &traffic,
            who,
            role,
        };
        Ok(pages::dashboard(
            &d,
            csrf,
            form_field(query.as_bytes(), "msg").as_deref(),
        ))
    }

    fn state_json(&self) -> Result<String, CenterError> {
        let st = self.center.reads()?;
        let requests = st.list_requests(200)?;
        let traffic = st.all_tunnel_traffic()?;
        let settings = self.center.settings();
        // Each request with its time limits, as `centerd list-requests
        // --json` shows them: `ends_at`, `idle_timeout_secs`,
        // `last_traffic_at`, `idle_ends_at` (issue 20, item 6).
        let requests: Vec<_> = requests
            .iter()
            .map(|r| {
                crate::admin::request_limits(
                    r,
                    settings.max_grant_lifetime_secs,
                    settings.idle_timeout_secs,
                    &traffic,
                )
            })
            .collect();
        let v = serde_json::json!({
            "requests": requests,
            "failures": st.failures(None, 50)?,
            "gateways": st.gateway_usage()?,
            "pool": st.pool_usage()?,
            "initiation": st.initiations()?,
            "reinstalls": st.reinstall_requests()?,
        });
        Ok(v.to_string())
    }
}

/// The audit filter of a query string: `actor`, `action`, `terminal`,
/// `number`, `since`, `until` (Unix seconds), `limit`.
pub fn audit_filter(query: &str, default_limit: u32) -> AuditFilter {
    let get = |name: &str| form_field(query.as_bytes(), name).filter(|v| !v.is_empty());
    AuditFilter {
        actor: get("actor"),
        action: get("action"),
        terminal_id: get("terminal"),
        acceptance_number: get("number").and_then(|v| v.parse().ok()),
        since: get("since").and_then(|v| v.parse().ok()),
        until: get("until").and_then(|v| v.parse().ok()),
        limit: get("limit").and_then(|v| v.parse().ok()).unwrap_or(default_limit),
    }
}

impl<G: GatewayCommands + 'static, R: RouterCommands + 'static> Ui<G, R> {
    fn audit_rows(&self, f: &AuditFilter) -> Result<Vec<AuditRow>, CenterError> {
        Ok(self.center.reads()?.audit_log(f)?)
    }

    fn audit_page(&self, query: &str) -> Result<String, CenterError> {
        let f = audit_filter(query, 500);
        let rows = self.audit_rows(&f)?;
        Ok(pages::audit(&f, query, &rows))
    }

    fn audit_export(&self, query: &str, jsonl: bool) -> Response<Body> {
        let rows = match self.audit_rows(&audit_filter(query, 1_000_000)) {
            Ok(r) => r,
            Err(e) => return text(500, format!("cannot read the database: {e}")),
        };
        let mut out = String::new();
        if jsonl {
            for r in &rows {
                match serde_json::to_string(r) {
                    Ok(l) => {
                        out.push_str(&l);
                        out.push('\n');
                    }
                    Err(e) => return text(500, format!("cannot encode: {e}")),
                }
            }
        } else {
            out.push_str(AuditRow::CSV_HEADER);
            out.push_str("\r\n");
            for r in &rows {
                out.push_str(&r.csv_line());
                out.push_str("\r\n");
            }
        }
        let mut r = text(200, out);
        let (ctype, name) = if jsonl {
            ("application/x-ndjson", "audit.jsonl")
        } else {
            ("text/csv; charset=utf-8", "audit.csv")
        };
        r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(ctype));
        r.headers_mut()
            .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
            r.headers_mut().insert(hyper::header::CONTENT_DISPOSITION, v);
        }
        r
    }
}

/// Percent-encodes all but the unreserved characters (a redirect's `?msg=`).
pub fn url_encode(s: &str) -> String {
    vpnnat_proto::form::encode(s)
}

mod accounts;
mod pages;
mod second_factor;
mod second_factor_pages;

#[cfg(test)]
mod tests;

#[cfg(test)]
mod login_tests;

#[cfg(test)]
mod access_tests;

#[cfg(test)]
mod totp_tests;

#[cfg(test)]
mod handling_tests;
