//! The operator UI's HTML: `maud` templates, which escape every
//! interpolated value unless it is marked `PreEscaped` (only the style
//! sheet and the doctype are). Element ids and classes are what the
//! browser tests (center/tests/ui_browser.rs) and the operator tool
//! (crates/testkit, vpnnat-operator) find things by.

use maud::{html, Markup, PreEscaped, DOCTYPE};

use crate::storage::{
    AuditFilter, AuditRow, FailureRow, GatewayUsage, PoolUsage, ReinstallRow, RequestRow, RequestState, SlotRow,
};

use super::{fmt_time, CSRF_FIELD, REFRESH_SECS};
use crate::accounts::Role;

pub(super) const STYLE: &str =
    "body{font-family:sans-serif;margin:1em}table{border-collapse:collapse;margin-bottom:1.5em}\
td,th{border:1px solid #999;padding:2px 6px;font-size:90%}th{background:#eee}\
.waiting{background:#ffd}.in_progress{background:#dfd}.ended{color:#888}form.inline{display:inline}";

/// The dashboard's one script (issue 20, item 6): shows the copy button
/// next to each granted host's VPNNAT address and DNS name and copies the
/// value on a click (the Clipboard API; where the page is not a secure
/// context, e.g. plain HTTP to another host, the browser's copy command on
/// a selection instead). Inline, allowed by its hash in the content
/// policy; without JavaScript the buttons stay hidden and the text stays
/// selectable.
pub(super) const COPY_SCRIPT: &str = "document.querySelectorAll('button.copy').forEach(function(b){\
b.hidden=false;b.addEventListener('click',function(){var v=b.getAttribute('data-copy');\
var done=function(){b.textContent='copied';},fail=function(){b.textContent='copy failed';};\
if(navigator.clipboard&&window.isSecureContext){navigator.clipboard.writeText(v).then(done,fail);return;}\
var t=document.createElement('textarea');t.value=v;document.body.appendChild(t);t.select();\
try{document.execCommand('copy')?done():fail();}catch(e){fail();}document.body.removeChild(t);});});";

/// A copy button for `value` (hidden until [`COPY_SCRIPT`] runs).
fn copy_button(id: &str, value: &str) -> Markup {
    html! {
        " " button.copy type="button" id=(id) data-copy=(value) hidden title={ "copy " (value) } { "copy" }
    }
}

/// A whole page; `refresh`: reload every [`REFRESH_SECS`].
pub(super) fn page(title: &str, refresh: bool, body: Markup) -> String {
    html! {
        (DOCTYPE)
        html {
            head {
                meta charset="utf-8";
                @if refresh {
                    meta http-equiv="refresh" content=(REFRESH_SECS);
                }
                title { (title) }
                style { (PreEscaped(STYLE)) }
            }
            body { (body) }
        }
    }
    .into_string()
}

/// The message line (`#message`), when there is one.
pub(super) fn message(text: Option<&str>) -> Markup {
    html! {
        @if let Some(m) = text.filter(|m| !m.is_empty()) {
            p id="message" { (m) }
        }
    }
}

pub fn login(text: &str) -> String {
    page(
        "vpnnat center: login",
        false,
        html! {
            h1 { "Maintenance center" }
            (message(Some(text)))
            form method="post" action="/login" {
                // Empty name: a shared password of the configuration.
                label { "Operator name " input type="text" name="name" id="name" autocomplete="username" autofocus; }
                " "
                label { "Password " input type="password" name="password" id="password"; }
                " "
                button type="submit" id="login" { "Log in" }
            }
        },
    )
}

/// What the dashboard shows, read from the database in one go.
#[derive(Debug)]
pub struct Dashboard<'a> {
    pub requests: &'a [RequestRow],
    pub failures: &'a [FailureRow],
    pub gateways: &'a [GatewayUsage],
    pub slots: &'a [SlotRow],
    pub pool: &'a PoolUsage,
    /// The DNS zone, when centerd serves one: live grants show their name.
    pub dns_domain: Option<&'a str>,
    /// Re-installations without proof waiting for an operator (issue 18).
    pub reinstalls: &'a [ReinstallRow],
    /// The time the page is made at and `[center]
    /// max_grant_lifetime_secs`, for each request's end (issue 19, item 8).
    pub now: u64,
    pub max_lifetime_secs: u64,
    /// `[center] idle_timeout_secs` and each router's tunnel's last
    /// traffic as its gateway reported it (the idle timeout).
    pub idle_timeout_secs: Option<u64>,
    pub traffic: &'a std::collections::BTreeMap<String, u64>,
    /// Who is looking (`operator:NAME` or `operator#N`) and their role:
    /// the page offers only the buttons the role may press (the server
    /// refuses the others anyway).
    pub who: &'a str,
    pub role: Role,
}

/// A POST button in a form of its own (every form carries the session's
/// CSRF token).
fn action(csrf: &str, n: u64, what: &str) -> Markup {
    html! {
        form method="post" action={ "/requests/" (n) "/" (what) } class="inline" {
            input type="hidden" name=(CSRF_FIELD) value=(csrf);
            button id={ (what) "-" (n) } { (what) }
        }
    }
}

/// The end button: opens the request's end form (a GET: the reason is
/// typed there, on a page that does not reload itself).
fn end_button(n: u64) -> Markup {
    html! {
        form method="get" action={ "/requests/" (n) "/end" } class="inline" {
            button id={ "end-" (n) } { "end" }
        }
    }
}

/// The end form of one request (issue 20, item 6): what is being ended,
/// and the required reason (1-200 characters, checked again by the
/// server). Not refreshed: a typed reason stays.
pub fn end_form(r: &RequestRow, csrf: &str, msg: Option<&str>) -> String {
    let n = r.acceptance_number;
    let body = html! {
        h1 { "End request " (n) }
        (message(msg))
        p {
            "Router " (r.terminal_id) ", claimant " (r.claimant_name) " (" (r.claimant_level) "), "
            span.state { (r.state) } "; hosts: "
            @for (i, g) in r.grants.iter().enumerate() {
                @if i > 0 { ", " }
                (g.terminal_name) " = " (g.vpnnat)
            }
        }
        @if r.state == RequestState::Ended {
            p { "This request has ended already." }
        } @else {
            form method="post" action={ "/requests/" (n) "/end" } id="end-form" {
                input type="hidden" name=(CSRF_FIELD) value=(csrf);
                label {
                    "Reason (shown in the request list and the audit log) "
                    input type="text" name="reason" id="reason" required minlength="1"
                        maxlength=(crate::end_reason::MAX_CHARS) size="60" autofocus;
                }
                " "
                button type="submit" id="end-confirm" { "End request " (n) }
            }
        }
        p { a href="/" id="back" { "Back" } }
    };
    page(&format!("vpnnat center: end request {n}"), false, body)
}

/// The button that shows a router's maintenance password (audited; a POST
/// so that neither a prefetch nor a link can trigger it).
fn show_password(csrf: &str, terminal_id: &str) -> Markup {
    html! {
        form method="post" action="/routers/maintenance-password" class="inline" {
            input type="hidden" name=(CSRF_FIELD) value=(csrf);
            input type="hidden" name="terminal_id" value=(terminal_id);
            button id={ "show-password-" (terminal_id) } { "maintenance password" }
        }
    }
}

/// The page showing one router's maintenance password (not refreshed,
/// not cached).
pub fn maintenance_password(terminal_id: &str, password: &str) -> String {
    page(
        "vpnnat center: maintenance password",
        false,
        html! {
            h1 { "Maintenance password of " (terminal_id) }
            p { "This router's own password for its maintenance page. This showing is in the audit log." }
            p { code id="maintenance-password" { (password) } }
            p { a href="/" { "Back" } }
        },
    )
}

/// The limits the request row offers, in minutes from now (one click
/// each: the page reloads every few seconds, which would wipe a typed
/// value). Any other value: `centerd limit-request N --minutes M`.
const LIMIT_CHOICES: [u64; 4] = [15, 30, 60, 120];

/// When a live request ends, the time left, who set a shorter limit, and
/// one button per offered limit (minutes from now; the center refuses more
/// than its configured maximum since the request's reception).
/// `act`: the viewer's role may set limits (else only the end is shown).
fn ends_cell(r: &RequestRow, csrf: &str, now: u64, max_lifetime_secs: u64, act: bool) -> Markup {
    let n = r.acceptance_number;
    let end = crate::limits::effective_end(r.received_at, r.expires_at, max_lifetime_secs);
    html! {
        span.ends id={ "ends-" (n) } {
            (crate::limits::utc_hhmm(end)) " (" (crate::limits::time_left(end, now)) " left)"
        }
        @if let Some(by) = &r.limit_set_by {
            br; span.limit-by { "limit set by " (by) }
        }
        // The maximum lifetime's end, when a shorter limit holds: how far
        // the limit may be moved back (issue 20, item 6).
        @let cap = r.received_at.saturating_add(max_lifetime_secs);
        @if end < cap {
            br; span.max-end id={ "max-end-" (n) } { "max lifetime ends " (crate::limits::utc_hhmm(cap)) }
        }
        @if act {
            br;
            "end in: "
            @for m in LIMIT_CHOICES.iter().filter(|m| now.saturating_add(m.saturating_mul(60)) < end) {
                form method="post" action={ "/requests/" (n) "/limit" } class="inline" {
                    input type="hidden" name=(CSRF_FIELD) value=(csrf);
                    input type="hidden" name="minutes" value=(m);
                    button id={ "limit-" (n) "-" (m) } { (m) " min" }
                }
            }
        }
    }
}

/// The idle timeout of a live request: its tunnel's last traffic (as the
/// gateway saw it) and when it ends if the tunnel stays quiet. Nothing
/// without an idle timeout.
fn idle_cell(r: &RequestRow, d: &Dashboard<'_>) -> Markup {
    let n = r.acceptance_number;
    let last = d.traffic.get(&r.terminal_id).copied();
    html! {
        @if let Some(idle) = d.idle_timeout_secs {
            br;
            span.idle id={ "idle-" (n) } {
                "idle limit " (idle / 60) " min: "
                @match (last, crate::limits::idle_end(r.received_at, last, Some(idle))) {
                    (Some(t), Some(end)) if t != 0 => {
                        "last traffic " (crate::limits::utc_hhmm(t)) ", ends " (crate::limits::utc_hhmm(end)) " if quiet"
                    }
                    (_, Some(end)) => { "no traffic yet, ends " (crate::limits::utc_hhmm(end)) " if quiet" }
                    _ => { "traffic unknown (gateway says nothing)" }
                }
            }
        }
    }
}

fn request_row(r: &RequestRow, csrf: &str, d: &Dashboard<'_>) -> Markup {
    let dns_domain = d.dns_domain;
    let n = r.acceptance_number;
    let live = r.state != RequestState::Ended;
    let mut tables: Vec<&str> = r.grants.iter().map(|g| g.table_name.as_str()).collect();
    tables.dedup();
    html! {
        tr id={ "request-" (n) } class=(r.state.as_str()) {
            td { (n) }
            td { (r.terminal_id) }
            td { (r.router_ip) }
            td { (r.claimant_name) }
            td { (r.claimant_level) }
            td { (r.phone) }
            td { (r.urgency) }
            td { (r.content) }
            td { (fmt_time(r.received_at)) }
            td {
                @for (i, g) in r.grants.iter().enumerate() {
                    @if i > 0 { br; }
                    (g.terminal_name) " = " span.vpnnat { (g.vpnnat) }
                    @if live { (copy_button(&format!("copy-addr-{n}-{}", g.terminal_name), &g.vpnnat.to_string())) }
                    @if let (Some(d), true) = (dns_domain, live) {
                        @let name = crate::dns::name_of(&g.terminal_name, &r.terminal_id, d);
                        " " span.dns { (name) }
                        (copy_button(&format!("copy-dns-{n}-{}", g.terminal_name), &name))
                    }
                }
            }
            td { (tables.join(", ")) }
            td.state { (r.state) }
            td {
                @if live { (ends_cell(r, csrf, d.now, d.max_lifetime_secs, d.role.may(Role::Operator))) (idle_cell(r, d)) }
                @if let (false, Some(by)) = (live, &r.ended_by) {
                    span.ended-by id={ "ended-by-" (n) } { "ended by " (by) }
                }
                @if let (false, Some(why)) = (live, &r.end_reason) {
                    br; span.end-reason id={ "end-reason-" (n) } { "reason: " (why) }
                }
            }
            td {
                @if d.role.may(Role::Operator) {
                    @match r.state {
                        RequestState::Waiting => { (action(csrf, n, "start")) (end_button(n)) }
                        RequestState::InProgress => { (end_button(n)) }
                        RequestState::Ended => {}
                    }
                    @if live { (show_password(csrf, &r.terminal_id)) }
                }
            }
        }
    }
}

/// The drain or undrain button of a gateway (admins; a POST with the
/// session's CSRF token like every action).
fn drain_button(csrf: &str, g: &GatewayUsage) -> Markup {
    let (what, label) = if g.draining {
        ("undrain", "undrain (take new tunnels)")
    } else {
        ("drain", "drain (no new tunnels)")
    };
    html! {
        form method="post" action={ "/gateways/" (what) } class="inline" {
            input type="hidden" name=(CSRF_FIELD) value=(csrf);
            input type="hidden" name="name" value=(g.name);
            button id={ (what) "-" (g.name) } { (label) }
        }
    }
}

fn gateway_row(g: &GatewayUsage, csrf: &str, admin: bool) -> Markup {
    html! {
        tr id={ "gateway-" (g.name) } class={ "gw-" (if g.alive { "up" } else { "down" }) } {
            td { (g.name) }
            td { (g.global_ip) }
            td { (g.used) }
            td { (g.free) }
            td { (g.up) }
            td.draining { (if g.draining { "yes" } else { "no" }) }
            // A gateway the heartbeat marked down, with when: its routers'
            // open requests carry a gateway_lost failure below.
            td {
                @if g.alive { "up" } @else { "DOWN since " (fmt_time(g.alive_changed_ms / 1000)) }
            }
            td { @if admin { (drain_button(csrf, g)) } }
        }
    }
}

pub fn dashboard(d: &Dashboard<'_>, csrf: &str, msg: Option<&str>) -> String {
    let pool = d.pool;
    let body = html! {
        h1 { "Maintenance center" }
        form method="post" action="/logout" class="inline" {
            input type="hidden" name=(CSRF_FIELD) value=(csrf);
            button id="logout" { "Log out" }
        }
        " "
        a href="/audit" id="audit-link" { "Audit log" }
        @if d.role.may(Role::Admin) {
            " "
            a href="/accounts" id="accounts-link" { "Accounts" }
        }
        " "
        // Any account may enrol a second factor (issue 20, item 2).
        a href="/totp/enrol" id="totp-link" { "Two-factor login" }
        " "
        span id="who" { (d.who) " (" (d.role) ")" }
        (message(msg))
        h2 { "Maintenance requests" }
        table id="requests" {
            tr {
                @for h in ["Acceptance number", "Terminal ID", "Global IP", "Claimant", "Level", "Phone", "Urgency", "Content", "Received", "VPNNAT address", "Table name", "State", "Ends (time left)", ""] {
                    th { (h) }
                }
            }
            @for r in d.requests { (request_row(r, csrf, d)) }
        }
        h2 { "Gateways" }
        table id="gateways" {
            tr {
                @for h in ["Name", "Global IP", "Used slots", "Free slots", "Tunnels up", "Draining", "State", ""] {
                    th { (h) }
                }
            }
            @for g in d.gateways { (gateway_row(g, csrf, d.role.may(Role::Admin))) }
        }
        h2 { "Tunnels" }
        table id="tunnels" {
            tr {
                @for h in ["Gateway", "Slot", "Terminal ID", "State", "Since"] { th { (h) } }
            }
            @for s in d.slots {
                tr {
                    td { (s.gateway) }
                    td { (s.slot) }
                    td { (s.terminal_id.as_deref().unwrap_or("")) }
                    td { (s.tunnel_state.as_str()) }
                    td { (fmt_time(s.changed_at)) }
                }
            }
        }
        h2 { "VPNNAT pool" }
        p id="pool" {
            (pool.cidr) ": " span id="pool-allocated" { (pool.allocated) } " of " (pool.size)
            " addresses in use, " span id="pool-free" { (pool.free) } " free (" (pool.free_ranges) " free ranges)"
        }
        @if !d.reinstalls.is_empty() {
            h2 { "Re-installations waiting for approval" }
            p {
                "These routers asked to be installed again without proving their current Secret(ID2) \
                 (lost state, or someone else holding the factory secret). Approve only after \
                 confirming with the customer: approval hands the router new keys."
            }
            table id="reinstalls" {
                tr {
                    @for h in ["Terminal ID", "Last asked", "From", "Approved", ""] { th { (h) } }
                }
                @for r in d.reinstalls {
                    tr id={ "reinstall-" (r.terminal_id) } {
                        td { (r.terminal_id) }
                        td { (fmt_time(r.requested_at)) }
                        td { (r.peer) }
                        td {
                            @if let (Some(by), Some(at)) = (&r.approved_by, r.approved_at) {
                                (by) " at " (fmt_time(at))
                            }
                        }
                        td {
                            @if r.approved_at.is_none() && d.role.may(Role::Admin) {
                                form method="post" action="/reinstalls/approve" class="inline" {
                                    input type="hidden" name=(CSRF_FIELD) value=(csrf);
                                    input type="hidden" name="terminal_id" value=(r.terminal_id);
                                    button id={ "approve-reinstall-" (r.terminal_id) } { "approve re-installation" }
                                }
                            }
                        }
                    }
                }
            }
        }
        h2 { "Failures" }
        table id="failures" {
            tr {
                @for h in ["Time", "Terminal ID", "Code", "Detail"] { th { (h) } }
            }
            @for f in d.failures {
                tr {
                    td { (fmt_time(f.received_at)) }
                    td { (f.terminal_id) }
                    td { (f.code) }
                    td { (f.detail) }
                }
            }
        }
    };
    let body = html! { (body) script { (PreEscaped(COPY_SCRIPT)) } };
    page("vpnnat center", true, body)
}

/// The audit log: the filter form (filled with `f`), the export links
/// (same query), the rows.
pub fn audit(f: &AuditFilter, query: &str, rows: &[AuditRow]) -> String {
    let v = |o: &Option<String>| o.clone().unwrap_or_default();
    let body = html! {
        h1 { "Audit log" }
        p { a href="/" { "Back" } }
        form method="get" action="/audit" id="audit-filter" {
            label { "Actor " input name="actor" value=(v(&f.actor)); } " "
            label { "Action " input name="action" value=(v(&f.action)); } " "
            label { "Terminal ID " input name="terminal" value=(v(&f.terminal_id)); } " "
            label { "Acceptance number " input name="number" value=(f.acceptance_number.map(|n| n.to_string()).unwrap_or_default()); } " "
            button type="submit" id="filter" { "Filter" }
        }
        p {
            "Export: "
            a href={ "/audit.csv?" (query) } id="export-csv" { "CSV" }
            " "
            a href={ "/audit.jsonl?" (query) } id="export-jsonl" { "JSON lines" }
        }
        table id="audit" {
            tr {
                @for h in ["#", "Time", "Actor", "Action", "Terminal ID", "Acceptance number", "Detail", "From"] {
                    th { (h) }
                }
            }
            @for r in rows {
                tr.audit-row {
                    td { (r.id) }
                    td { (fmt_time(r.at)) }
                    td { (r.actor) }
                    td { (r.action) }
                    td { (r.terminal_id.as_deref().unwrap_or("")) }
                    td { (r.acceptance_number.map(|n| n.to_string()).unwrap_or_default()) }
                    td { (r.detail) }
                    td { (r.peer) }
                }
            }
        }
    };
    page("vpnnat center: audit log", false, body)
}
