//! The two HTTP servers of the router's server part:
//!
//! - [`LanPage`], on the LAN: a small server-rendered page where a LAN user
//!   asks for maintenance (claimant name, level, extension terminals chosen
//!   from the known hosts, urgency, phone, content) and sees acceptance
//!   numbers and states; plus a JSON API that `routerd request|button|
//!   status|hosts` use.
//! - [`CenterPort`], on the server-part address: the center's end, release
//!   and VPN end commands through the tunnel.
//!
//! | server | method | path | what |
//! |---|---|---|---|
//! | LAN | GET | `/` | the page |
//! | LAN | POST | `/request` | form submit (urlencoded) -> result page |
//! | LAN | POST | `/button` | the preset request -> result page |
//! | LAN | POST | `/end` | the site owner ends a request (form field `acceptance_number`) -> result page |
//! | LAN | GET | `/api/status` (with `live`: [`crate::live`]), `/api/hosts` | JSON views |
//! | LAN | POST | `/api/request` | JSON [`ApiRequest`] -> [`ApiAccepted`] or `{"error"}` |
//! | LAN | POST | `/api/button` | the preset request |
//! | LAN | POST | `/api/end` | JSON [`ApiEnd`] -> [`ApiEnded`] or `{"error"}` (`routerd end N`) |
//! | LAN, from the router itself | POST | `/local/install` | installation notice now (`routerd install`) |
//! | center | POST | `/v1/center/end`, `/release`, `/vpn-end` | PROTOCOL.md 6-8 |
//!
//! The LAN page answers only requests whose `Host` is the router's address
//! or a configured name ([`crate::lan_host`]); everything else gets 421.
//! Every answer of the LAN page and of the maintenance interface carries
//! the framing, sniffing and content-policy headers
//! ([`vpnnat_proto::page_headers`]).

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::sync::Arc;

use hyper::header::HeaderValue;
use hyper::Method;
use serde::{Deserialize, Serialize};
use vpnnat_proto::messages::SiteEndOutcome;
use vpnnat_proto::throttle::{LoginThrottle, ThrottleConfig};
use vpnnat_proto::types::{ClaimantName, Phone, RequestContent, TerminalName};
use vpnnat_service::clock::unix_now;
use vpnnat_service::escape::html as escape;

use crate::config::{parse_level, parse_urgency};
use crate::daemon::{DaemonError, Router, SiteEnd};
use crate::http::{self, html, json, parse_form, text, Handler, Incoming1, Reply};
use crate::lan_host::{is_router_itself, AllowedHosts};
use crate::logic::{Accepted, MaintenanceInput};

/// A maintenance request in the JSON API.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ApiRequest {
    pub claimant_name: String,
    pub claimant_level: String,
    pub urgency: String,
    pub phone: String,
    pub content: String,
    pub terminals: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ApiGrant {
    pub name: String,
    pub real: Ipv4Addr,
    pub vpnnat: Ipv4Addr,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ApiAccepted {
    pub acceptance_number: u64,
    pub grants: Vec<ApiGrant>,
    /// When the center ends the request by itself (Unix seconds; absent:
    /// not told).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ends_at: Option<u64>,
    /// The center's idle limit in seconds (absent: not told).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_secs: Option<u64>,
}

/// The site owner ends a request (issue 19, item 7): `POST /api/end`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ApiEnd {
    pub acceptance_number: u64,
}

/// What became of an [`ApiEnd`]: the grant is gone here either way;
/// `center` says whether the center heard of it (`ended`,
/// `already_ended`) or will be told later (`pending`, with `note`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ApiEnded {
    pub acceptance_number: u64,
    pub center: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl ApiEnded {
    fn new(n: u64, e: &SiteEnd) -> Self {
        let (center, note) = match e {
            SiteEnd::Told(SiteEndOutcome::Ended) => ("ended", None),
            SiteEnd::Told(SiteEndOutcome::AlreadyEnded) => ("already_ended", None),
            SiteEnd::Queued(why) => ("pending", Some(why.clone())),
        };
        ApiEnded {
            acceptance_number: n,
            center: center.into(),
            note,
        }
    }

    /// The sentence the LAN page and `routerd end` show.
    pub fn message(&self) -> String {
        let n = self.acceptance_number;
        match (self.center.as_str(), &self.note) {
            ("pending", note) => format!(
                "Maintenance request {n} ended here: its devices are no longer reachable. The center could not be told yet ({}); the router tells it as soon as it can.",
                note.as_deref().unwrap_or("unreachable")
            ),
            ("already_ended", _) => format!("Maintenance request {n} ended (the center had ended it already)."),
            _ => format!("Maintenance request {n} ended: its devices are no longer reachable from the center."),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ApiError {
    pub error: String,
}

impl From<&Accepted> for ApiAccepted {
    fn from(a: &Accepted) -> Self {
        ApiAccepted {
            acceptance_number: a.acceptance_number.get(),
            grants: a
                .grants
                .iter()
                .map(|(n, real, vpnnat)| ApiGrant {
                    name: n.to_string(),
                    real: *real,
                    vpnnat: *vpnnat,
                })
                .collect(),
            ends_at: a.ends_at,
            idle_timeout_secs: a.idle_timeout_secs,
        }
    }
}

impl ApiRequest {
    /// Validates every field; the error names the field.
    pub fn to_input(&self) -> Result<MaintenanceInput, String> {
        let f = |field: &str, e: String| format!("{field}: {e}");
        let terminals = self
            .terminals
            .iter()
            .map(|t| TerminalName::new(t.trim()).map_err(|e| f("terminals", e.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        if terminals.is_empty() {
            return Err("terminals: choose at least one extension terminal".into());
        }
        Ok(MaintenanceInput {
            claimant_name: ClaimantName::new(self.claimant_name.trim())
                .map_err(|e| f("claimant name", e.to_string()))?,
            claimant_level: parse_level(&self.claimant_level).map_err(|e| f("claimant level", e))?,
            urgency: parse_urgency(&self.urgency).map_err(|e| f("urgency", e))?,
            phone: Phone::new(self.phone.trim()).map_err(|e| f("phone", e.to_string()))?,
            content: RequestContent::new(self.content.clone()).map_err(|e| f("content", e.to_string()))?,
            terminals,
            for_failure: None,
        })
    }

    /// The LAN page's urlencoded form (`POST /request`) as an API request.
    pub fn from_form(body: &[u8]) -> ApiRequest {
        let form = parse_form(body);
        let one = |k: &str| {
            form.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        ApiRequest {
            claimant_name: one("claimant_name"),
            claimant_level: one("claimant_level"),
            urgency: one("urgency"),
            phone: one("phone"),
            content: one("content").replace("\r\n", "\n"),
            terminals: form
                .iter()
                .filter(|(k, _)| k == "terminal")
                .map(|(_, v)| v.clone())
                .collect(),
        }
    }
}

/// HTTP status for a failed request: the user's fault (400), the center's
/// refusal or unreachability (502), or ours (500).
fn status_of(e: &DaemonError) -> u16 {
    use crate::logic::ExchangeError as X;
    match e {
        DaemonError::Exchange(X::Resolve(_)) | DaemonError::NoButton => 400,
        DaemonError::SiteEnd(e) => e.http_status(),
        DaemonError::NotInstalled | DaemonError::Exchange(X::NotInstalled) => 409,
        DaemonError::Unreachable(_) | DaemonError::Exchange(X::Refused { .. } | X::BadAnswer(_)) => 502,
        _ => 500,
    }
}

/// Where `routerd install` asks the running daemon for the installation
/// notice: the LAN listener, from the router's own addresses only.
pub const INSTALL_PATH: &str = "/local/install";

/// The LAN page and its API.
#[derive(Debug)]
pub struct LanPage {
    pub router: Arc<Router>,
}

const STYLE: &str = "body{font-family:sans-serif;max-width:46em;margin:1em auto;padding:0 1em}\
label{display:block;margin:.6em 0 .2em}input[type=text],textarea,select{width:100%}\
table{border-collapse:collapse;width:100%}td,th{border:1px solid #ccc;padding:.2em .4em;text-align:left}\
.err{color:#a00}.ok{color:#060}";

/// Every 2 s, from `/api/status`, in place (a reload would wipe a
/// half-filled form): each request's state, and for one no longer open
/// its "End maintenance" button and end time gone (issue 19, item 7: a
/// press then got 409); the "Reachable now" table rebuilt from `live`
/// (issue 19, item 6), as text only (`textContent`, never markup). The
/// page is whole without it: the server renders the same at each load.
const STATE_POLL: &str = "setInterval(async()=>{try{const r=await fetch('/api/status');\
if(!r.ok)return;const s=await r.json();for(const q of s.requests){\
const row=document.getElementById('request-'+q.acceptance_number);if(!row)continue;\
const c=row.querySelector('.state');if(c&&c.textContent!==q.state)c.textContent=q.state;\
if(q.state!=='waiting'){const t=q.end_unsent?'center not told yet':'';\
for(const[k,v]of[['.end',t],['.until',''],['.idle','']]){const e=row.querySelector(k);\
if(e&&(e.firstElementChild||e.textContent!==v))e.textContent=v;}}}\
const b=document.querySelector('#live tbody');if(!b||!s.live)return;\
b.replaceChildren(...s.live.devices.map(d=>{const tr=document.createElement('tr');tr.id='live-'+d.name;\
for(const[k,v]of[['device',d.name+' ('+d.real+')'],['maintenance',d.text.maintenance],\
['since',d.text.since],['active',d.text.active],['traffic',d.text.traffic],['idle',d.text.idle]]){\
const td=document.createElement('td');td.className=k;td.textContent=v;tr.appendChild(td);}return tr;}));\
const n=document.getElementById('live-none');if(n)n.hidden=s.live.devices.length>0;}catch(e){}},2000);";

/// The pages' content policy: their one style sheet and one script, by
/// hash; nothing else.
fn page_policy() -> &'static str {
    static CSP: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    CSP.get_or_init(|| vpnnat_proto::page_headers::content_security_policy(&[STYLE], &[STATE_POLL]))
}

/// Adds the framing, sniffing and content-policy headers (issue 18, item
/// 9) to an answer of the LAN page or the maintenance interface.
pub fn with_page_headers(mut reply: Reply) -> Reply {
    for (name, value) in vpnnat_proto::page_headers::html_headers(page_policy()) {
        if let Ok(v) = HeaderValue::from_str(&value) {
            reply.headers_mut().insert(name, v);
        }
    }
    reply
}

fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width\"><title>{t}</title><style>{STYLE}</style></head>\
<body><h1>{t}</h1>{body}</body></html>",
        t = escape(title)
    )
}

impl LanPage {
    async fn index(&self, message: Option<(bool, String)>) -> String {
        let status = self.router.status().await;
        let hosts = self.router.hosts().await;
        let mut b = String::new();
        if let Some((ok, m)) = message {
            let _ = write!(
                b,
                "<p id=\"result\" class=\"{}\">{}</p>",
                if ok { "ok" } else { "err" },
                escape(&m)
            );
        }
        let _ = write!(
            b,
            "<p>Router <b>{}</b> — {}</p>",
            escape(&status.terminal_id),
            if status.installed {
                "installed"
            } else {
                "not installed yet"
            }
        );
        b.push_str(&crate::live::render(&self.router.live().await));
        b.push_str("<h2>Ask for maintenance</h2><form method=\"post\" action=\"/request\">");
        b.push_str("<label for=\"claimant_name\">Your name</label><input type=\"text\" id=\"claimant_name\" name=\"claimant_name\" required maxlength=\"128\">");
        b.push_str("<label for=\"claimant_level\">You are</label><select id=\"claimant_level\" name=\"claimant_level\"><option value=\"general\">a general user</option><option value=\"administrator\">the administrator</option></select>");
        b.push_str("<fieldset><legend>Devices to maintain</legend>");
        if hosts.is_empty() {
            b.push_str("<p>No devices known yet.</p>");
        }
        for h in &hosts {
            let n = escape(&h.name);
            // The router itself is offered by its two names (issue 19, item 2).
            let what = match crate::resolve::own_part_label(&h.name) {
                Some(l) if h.source == "router" => format!("{l}, "),
                _ => String::new(),
            };
            let _ = write!(
                b,
                "<label><input type=\"checkbox\" name=\"terminal\" value=\"{n}\"> {n} ({what}{})</label>",
                h.real
            );
        }
        b.push_str("</fieldset>");
        b.push_str("<label for=\"urgency\">Urgency</label><select id=\"urgency\" name=\"urgency\"><option value=\"low\">low</option><option value=\"normal\" selected>normal</option><option value=\"high\">high</option><option value=\"emergency\">emergency</option></select>");
        b.push_str("<label for=\"phone\">Phone</label><input type=\"text\" id=\"phone\" name=\"phone\" required maxlength=\"32\">");
        b.push_str("<label for=\"content\">What is wrong?</label><textarea id=\"content\" name=\"content\" rows=\"4\" required maxlength=\"4096\"></textarea>");
        b.push_str("<p><button type=\"submit\" id=\"send\">Send request</button></p></form>");
        b.push_str("<h2>Requests</h2><table id=\"requests\"><tr><th>Acceptance number</th><th>State</th><th>Name</th><th>Devices</th><th>Ends</th><th>Idle limit</th><th></th></tr>");
        for r in &status.requests {
            let n = r.acceptance_number;
            // Issue 19, item 8: the center ends every grant by itself.
            let ends = match (r.state, r.ends_at) {
                ("waiting", Some(t)) => crate::view::until(t),
                ("waiting", None) => "no limit shown".into(),
                _ => String::new(),
            };
            // ... and, if the center has one, after a quiet time.
            let idle = match (r.state, r.idle_timeout_secs) {
                ("waiting", Some(i)) => crate::view::idle_limit(i),
                ("waiting", None) => "none told".into(),
                _ => String::new(),
            };
            // Issue 19, item 7: the site owner ends an open request here.
            let end = match r.state {
                "waiting" => format!(
                    "<form method=\"post\" action=\"/end\"><input type=\"hidden\" name=\"acceptance_number\" \
value=\"{n}\"><button type=\"submit\" id=\"end-{n}\">End maintenance</button></form>"
                ),
                _ if r.end_unsent => "center not told yet".into(),
                _ => String::new(),
            };
            let _ = write!(
                b,
                "<tr id=\"request-{n}\"><td class=\"number\">{n}</td><td class=\"state\">{}</td><td>{}</td><td>{}</td><td class=\"until\">{ends}</td><td class=\"idle\">{idle}</td><td class=\"end\">{end}</td></tr>",
                r.state,
                escape(&r.claimant_name),
                escape(&r.terminals.join(", "))
            );
        }
        b.push_str("</table>");
        // The states follow the center (end command) without a reload that
        // would wipe a half-filled form.
        let _ = write!(b, "<script>{STATE_POLL}</script>");
        page("Remote maintenance", &b)
    }

    async fn submit(&self, req: ApiRequest) -> Result<Accepted, (u16, String)> {
        let input = req.to_input().map_err(|e| (400, e))?;
        self.router
            .maintenance(input)
            .await
            .map_err(|e| (status_of(&e), e.to_string()))
    }

    /// The site owner's end of request `n` (None: the form gave no number).
    async fn end(&self, n: Option<u64>) -> Result<ApiEnded, (u16, String)> {
        let n = n.ok_or((
            400,
            "acceptance_number: give the request's acceptance number".to_string(),
        ))?;
        match self.router.end_request(n).await {
            Ok(e) => Ok(ApiEnded::new(n, &e)),
            Err(e) => Err((status_of(&e), e.to_string())),
        }
    }

    fn accepted_message(a: &Accepted) -> String {
        let names: Vec<String> = a.grants.iter().map(|(n, _, _)| n.to_string()).collect();
        format!(
            "Request accepted: acceptance number {} for {}{}.",
            a.acceptance_number,
            names.join(", "),
            a.ends_at
                .map(|t| format!(", reachable {} at most", crate::view::until(t)))
                .unwrap_or_default()
                + &a.idle_timeout_secs
                    .map(|i| format!(" ({})", crate::view::idle_limit(i)))
                    .unwrap_or_default()
        )
    }
}

fn api_result(r: Result<Accepted, (u16, String)>) -> Reply {
    match r {
        Ok(a) => json(200, &ApiAccepted::from(&a)),
        Err((status, error)) => json(status, &ApiError { error }),
    }
}

/// A POST whose `Origin` is not this very server: refused.
fn cross_site_origin(req: &Incoming1) -> Option<Reply> {
    if req.method != Method::POST {
        return None;
    }
    let header = |n: &str| req.headers.get(n).and_then(|v| v.to_str().ok());
    // Browsers that send Sec-Fetch-Site say outright where a POST came from.
    if header("sec-fetch-site").is_some_and(|s| !matches!(s, "same-origin" | "none")) {
        return Some(text(403, "cross-site request refused (Sec-Fetch-Site)"));
    }
    let origin = header("origin")?;
    let host = header("host").unwrap_or_default();
    (origin != format!("http://{host}")).then(|| text(403, "cross-site request refused"))
}

/// Refuses cross-site POSTs: a web page on the Internet that a LAN user
/// visits must not be able to make the user's browser ask for maintenance
/// (which opens a LAN device to the center). Browsers send `Origin` on
/// every cross-origin POST; it must name this very page. The JSON API also
/// demands `application/json`, which a cross-site form cannot send without
/// a CORS preflight that this server never grants.
pub fn cross_site(req: &Incoming1) -> Option<Reply> {
    if req.method != Method::POST {
        return None;
    }
    if let Some(r) = cross_site_origin(req) {
        return Some(r);
    }
    let header = |n: &str| req.headers.get(n).and_then(|v| v.to_str().ok());
    if req.path.starts_with("/api/") && !header("content-type").is_some_and(|c| c.starts_with("application/json")) {
        return Some(text(415, "the API takes application/json"));
    }
    None
}

impl Handler for LanPage {
    async fn handle(&self, req: Incoming1) -> Reply {
        with_page_headers(self.route(req).await)
    }
}

impl LanPage {
    async fn route(&self, req: Incoming1) -> Reply {
        // DNS rebinding: a foreign name is refused before anything else.
        let host = req.headers.get(hyper::header::HOST).and_then(|v| v.to_str().ok());
        if !AllowedHosts::for_config(&self.router.cfg).allows(host) {
            log::debug!(
                "LAN page: {} {} from {} for Host {host:?}: refused",
                req.method,
                req.path,
                req.peer
            );
            return text(
                421,
                "this page answers only to the router's address or its names (web_ui.host_names)",
            );
        }
        if let Some(r) = cross_site(&req) {
            return r;
        }
        match (&req.method, req.path.as_str()) {
            (&Method::GET, "/") => html(200, self.index(None).await),
            (&Method::POST, "/request") => {
                let r = self.submit(ApiRequest::from_form(&req.body)).await;
                match r {
                    Ok(a) => html(200, self.index(Some((true, Self::accepted_message(&a)))).await),
                    Err((status, e)) => html(status, self.index(Some((false, e))).await),
                }
            }
            (&Method::POST, "/button") => match self.router.button().await {
                Ok(a) => html(200, self.index(Some((true, Self::accepted_message(&a)))).await),
                Err(e) => html(status_of(&e), self.index(Some((false, e.to_string()))).await),
            },
            (&Method::POST, "/end") => {
                let form = parse_form(&req.body);
                let n = form
                    .iter()
                    .find(|(k, _)| k == "acceptance_number")
                    .and_then(|(_, v)| v.trim().parse::<u64>().ok());
                match self.end(n).await {
                    Ok(e) => html(200, self.index(Some((true, e.message()))).await),
                    Err((status, e)) => html(status, self.index(Some((false, e))).await),
                }
            }
            (&Method::POST, "/api/end") => match serde_json::from_slice::<ApiEnd>(&req.body) {
                Ok(a) => match self.end(Some(a.acceptance_number)).await {
                    Ok(e) => json(200, &e),
                    Err((status, error)) => json(status, &ApiError { error }),
                },
                Err(e) => json(400, &ApiError { error: e.to_string() }),
            },
            (&Method::GET, "/api/status") => json(
                200,
                &crate::live::ApiStatus {
                    status: self.router.status().await,
                    live: self.router.live().await,
                },
            ),
            (&Method::GET, "/metrics") => {
                let status = self.router.status().await;
                let dp = self.router.datapath_error().await.is_some();
                let problems = self.router.problems().await.len();
                text(200, crate::view::metrics_text(&status, dp, problems))
            }
            (&Method::GET, "/api/hosts") => json(200, &self.router.hosts().await),
            (&Method::POST, "/api/request") => match serde_json::from_slice::<ApiRequest>(&req.body) {
                Ok(r) => api_result(self.submit(r).await),
                Err(e) => json(400, &ApiError { error: e.to_string() }),
            },
            (&Method::POST, "/api/button") => {
                api_result(self.router.button().await.map_err(|e| (status_of(&e), e.to_string())))
            }
            // The installation notice rotates the PSK and Secret(ID2): not
            // for LAN devices, only for `routerd install` on the router.
            (&Method::POST, INSTALL_PATH) if !is_router_itself(req.peer.ip(), &self.router.cfg) => text(
                403,
                "the installation notice is sent from the router itself only (routerd install)",
            ),
            (&Method::POST, INSTALL_PATH) => match self.router.install().await {
                Ok(()) => json(200, &self.router.status().await),
                Err(e) => json(status_of(&e), &ApiError { error: e.to_string() }),
            },
            (
                _,
                "/" | "/request" | "/button" | "/end" | "/api/status" | "/api/hosts" | "/api/request" | "/api/button"
                | "/api/end" | INSTALL_PATH,
            ) => text(405, "method not allowed"),
            _ => text(404, "not found"),
        }
    }
}

/// The center's commands, on the server-part address.
#[derive(Debug)]
pub struct CenterPort {
    pub router: Arc<Router>,
    /// Wrong maintenance passwords, per source address and overall.
    throttle: std::sync::Mutex<LoginThrottle>,
}

impl CenterPort {
    pub fn new(router: Arc<Router>) -> Self {
        CenterPort {
            router,
            throttle: std::sync::Mutex::new(LoginThrottle::new(ThrottleConfig::default())),
        }
    }

    async fn maintenance(&self, req: &Incoming1) -> Reply {
        if !self.router.is_center_peer(req.peer.ip()).await {
            return text(403, "the maintenance interface is reachable through the tunnel only");
        }
        let password = req
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(basic_password)
            .map(zeroize::Zeroizing::new);
        let now = unix_now();
        let peer = req.peer.ip();
        // Counted when admitted, before the password is compared: guesses
        // in flight together cannot slip past the limit, and a braked
        // guesser learns nothing, not even from timing.
        let attempt = match &password {
            Some(_) => match self.throttle.lock().map(|mut th| th.begin(peer, false, now)) {
                Ok(Ok(a)) => Some(a),
                Ok(Err(t)) => return self.refused(peer, t, now),
                Err(_) => return text(500, "maintenance login throttle unavailable"),
            },
            None => None,
        };
        let authorized = match &password {
            Some(p) => self.router.check_maintenance_password(p).await,
            None => false,
        };
        if let Some(attempt) = attempt {
            if authorized {
                if let Ok(mut th) = self.throttle.lock() {
                    th.passed(attempt);
                }
            } else {
                log::warn!("wrong maintenance password from {peer}");
                if let Some(t) = attempt.locks {
                    log::warn!("maintenance logins locked: {t}");
                }
            }
        }
        if !authorized {
            let mut r = text(401, "maintenance password required");
            r.headers_mut().insert(
                "www-authenticate",
                HeaderValue::from_static("Basic realm=\"routerd maintenance\", charset=\"UTF-8\""),
            );
            return r;
        }
        // Basic credentials ride along on cross-site requests too: an
        // action must come from this very interface.
        if let Some(r) = cross_site_origin(req) {
            return r;
        }
        match (&req.method, req.path.as_str()) {
            (&Method::GET, "/maintenance") => html(200, self.maintenance_page(None).await),
            (&Method::GET, "/maintenance/api") => json(200, &self.maintenance_view().await),
            (&Method::POST, "/maintenance/reboot") => {
                log::warn!("reboot requested through the maintenance interface by {}", req.peer);
                self.router.request_reboot();
                text(202, "rebooting")
            }
            (&Method::POST, "/maintenance/restart-helper") => {
                let form = parse_form(&req.body);
                let name = form
                    .iter()
                    .find(|(k, _)| k == "helper")
                    .map(|(_, v)| v.as_str())
                    .unwrap_or_default();
                let wants_html = req
                    .headers
                    .get("accept")
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|a| a.contains("text/html"));
                let (status, msg) = if self.router.helpers.request_restart(name) {
                    log::warn!("helper {name} restart requested by {}", req.peer);
                    (202, format!("restarting helper {name}"))
                } else {
                    (404, format!("no supervised helper named {name:?}"))
                };
                if wants_html {
                    html(status, self.maintenance_page(Some((status == 202, msg))).await)
                } else {
                    text(status, msg)
                }
            }
            (_, "/maintenance" | "/maintenance/api" | "/maintenance/reboot" | "/maintenance/restart-helper") => {
                text(405, "method not allowed")
            }
            _ => text(404, "not found"),
        }
    }

    /// A braked maintenance login: 429 with Retry-After. Only the first
    /// refusal of each wait is a warning; the repeats are debug, so that a
    /// flood of guesses cannot write a line each.
    fn refused(&self, peer: std::net::IpAddr, t: vpnnat_proto::throttle::Throttled, now: u64) -> Reply {
        let first = self
            .throttle
            .lock()
            .map(|mut th| th.refused(peer, &t, now))
            .unwrap_or(true);
        if first {
            log::warn!("maintenance login from {peer} refused: {t}");
        } else {
            log::debug!("maintenance login from {peer} refused again: {t}");
        }
        let mut r = text(429, format!("maintenance login refused: {t}"));
        if let Ok(v) = HeaderValue::from_str(&t.retry_after_secs.to_string()) {
            r.headers_mut().insert("retry-after", v);
        }
        r
    }

    async fn maintenance_view(&self) -> serde_json::Value {
        let state = self.router.state().await;
        serde_json::json!({
            "status": self.router.status().await,
            "config": crate::view::ConfigView::new(&self.router.cfg),
            "hosts": self.router.hosts().await,
            "grants": crate::view::grants(&state),
            "datapath_error": self.router.datapath_error().await,
            "failures": self.router.problems().await,
            "last_failure": state.last_failure,
            "helpers": self.router.helper_views(),
            "log": crate::logring::global().snapshot(),
        })
    }

    async fn maintenance_page(&self, message: Option<(bool, String)>) -> String {
        let status = self.router.status().await;
        let hosts = self.router.hosts().await;
        let state = self.router.state().await;
        let cfg = crate::view::ConfigView::new(&self.router.cfg);
        let mut b = String::new();
        if let Some((ok, m)) = message {
            let _ = write!(
                b,
                "<p id=\"result\" class=\"{}\">{}</p>",
                if ok { "ok" } else { "err" },
                escape(&m)
            );
        }
        let _ = write!(
            b,
            "<h2>Status</h2><pre id=\"status\">{}</pre>",
            escape(&status.to_text())
        );
        b.push_str("<h2>Failures</h2><ul id=\"failures\">");
        let problems = self.router.problems().await;
        if problems.is_empty() {
            b.push_str("<li>none now</li>");
        }
        for p in &problems {
            let _ = write!(b, "<li class=\"err\">{:?}: {}</li>", p.code, escape(&p.detail));
        }
        b.push_str("</ul>");
        let _ = write!(
            b,
            "<h2>Grants</h2><pre id=\"grants\">{}</pre>",
            escape(&crate::view::grants_text(&crate::view::grants(&state)))
        );
        let _ = write!(
            b,
            "<h2>Host table</h2><pre>{}</pre>",
            escape(&crate::view::hosts_text(&hosts))
        );
        b.push_str("<h2>Helpers</h2><table id=\"helpers\"><tr><th>Name</th><th>PID</th><th>Starts</th><th>Recent exits</th><th>Last exit</th><th></th></tr>");
        for h in self.router.helper_views() {
            let n = escape(&h.name);
            let _ = write!(
                b,
                "<tr><td>{n}</td><td>{}</td><td>{}</td><td>{}{}</td><td>{}</td><td><form method=\"post\" action=\"/maintenance/restart-helper\"><input type=\"hidden\" name=\"helper\" value=\"{n}\"><button>Restart</button></form></td></tr>",
                h.pid.map_or("-".to_string(), |p| p.to_string()),
                h.starts,
                h.recent_exits,
                if h.crash_looping { " (crash-looping)" } else { "" },
                escape(h.last_exit.as_deref().unwrap_or("-"))
            );
        }
        b.push_str("</table>");
        let cfg_text = serde_json::to_string_pretty(&cfg).unwrap_or_default();
        let _ = write!(b, "<h2>Configuration</h2><pre>{}</pre>", escape(&cfg_text));
        let _ = write!(
            b,
            "<h2>Log</h2><pre id=\"log\">{}</pre>",
            escape(&crate::logring::global().snapshot().join("\n"))
        );
        b.push_str("<form method=\"post\" action=\"/maintenance/reboot\"><button>Reboot the router</button></form>");
        page(&format!("Maintenance of {}", status.terminal_id), &b)
    }
}

/// The password of an `Authorization: Basic` header.
pub fn basic_password(h: &str) -> Option<String> {
    use base64::Engine as _;
    let b64 = h.strip_prefix("Basic ")?.trim();
    let raw = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    let s = String::from_utf8(raw).ok()?;
    s.split_once(':').map(|(_, p)| p.to_string())
}

impl Handler for CenterPort {
    async fn handle(&self, req: Incoming1) -> Reply {
        if req.path == "/maintenance" || req.path.starts_with("/maintenance/") {
            return with_page_headers(self.maintenance(&req).await);
        }
        if req.method != Method::POST {
            return text(405, "method not allowed");
        }
        let headers = http::auth_headers(&req.headers);
        let (status, out, msg) = self.router.center_command(&req.path, headers, &req.body).await;
        match out {
            Some(o) => {
                let mut r = http::reply(status, "application/json", o.body);
                for (k, v) in o.headers.pairs() {
                    if let Ok(v) = HeaderValue::from_str(v) {
                        r.headers_mut().insert(k, v);
                    }
                }
                r
            }
            None => text(status, msg),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn basic_auth_header() {
        // "op:secret pass"
        assert_eq!(
            super::basic_password("Basic b3A6c2VjcmV0IHBhc3M=").as_deref(),
            Some("secret pass")
        );
        assert_eq!(super::basic_password("Bearer x"), None);
        assert_eq!(super::basic_password("Basic !!!"), None);
    }
}
