//! centerd's tool subcommands (`list-requests`, `end-request`, `drain-gateway`,
//! ...): each works once on the database a running centerd uses (SQLite
//! serializes them with it) and returns a [`Report`], which the binary
//! prints as JSON (`--json`) or as text. Changes go to the audit log under
//! the user who ran the tool.

use std::io::Read;

use crate::center::{Actor, CenterError};
use crate::config::CenterdConfig;
use crate::daemon::{build_center, open_store, DaemonError};
use crate::http::unix_now;
use crate::password::{PasswordError, PasswordHash};
use crate::storage::{AuditFilter, AuditRow, NewAudit, Storage, StorageError};

/// Why a tool subcommand failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(transparent)]
    Daemon(#[from] DaemonError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Center(#[from] CenterError),
    #[error("pool invariants")]
    Pool(#[source] StorageError),
    #[error("no terminal {0}")]
    NoTerminal(String),
    #[error("terminal ID")]
    TerminalId(#[source] vpnnat_proto::types::ValidationError),
    #[error("reading the password from stdin")]
    Stdin(#[source] std::io::Error),
    #[error("empty password on stdin")]
    EmptyPassword,
    #[error("work lock {path}: {source}")]
    WorkLock {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Password(#[from] PasswordError),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Accounts(#[from] crate::accounts::manage::ManageError),
    #[error("--reason: {0}")]
    Reason(#[from] crate::end_reason::ReasonError),
    #[error("reading the password file {path}")]
    PasswordFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl AdminError {
    /// A configuration that cannot be read or does not fit the database.
    pub fn is_config(&self) -> bool {
        match self {
            AdminError::Daemon(d) => d.is_config(),
            AdminError::Storage(s) => {
                matches!(s, StorageError::PoolMismatch { .. } | StorageError::SchemaTooNew { .. })
            }
            // A bad name, role or password is a usage error.
            AdminError::Accounts(crate::accounts::manage::ManageError::Account(_)) => true,
            // So is an empty, overlong or control-character reason.
            AdminError::Reason(_) => true,
            _ => false,
        }
    }
}

/// What a tool prints: the JSON document for `--json`, else the text.
#[derive(Debug)]
pub struct Report {
    /// Pretty JSON, rendered from the value itself: through a
    /// `serde_json::Value` the keys would come out sorted, not in the
    /// struct's order that scripts read (`{"name":"gw1",...}`).
    pub json: String,
    pub text: String,
}

impl Report {
    fn new<T: serde::Serialize>(v: &T, text: impl FnOnce() -> String) -> Result<Self, AdminError> {
        Ok(Report {
            json: serde_json::to_string_pretty(v)?,
            text: text(),
        })
    }

    /// The output for `--json` (pretty JSON) or without it (the text).
    pub fn render(&self, json: bool) -> Result<String, AdminError> {
        Ok(if json {
            self.json.clone()
        } else {
            self.text.trim_end().to_owned()
        })
    }
}

mod operators;
pub use operators::operator;

/// Who runs a tool subcommand, for the audit log.
/// A command that sends gateway commands holds the work lock exclusively
/// for its whole run, so that the running daemon's exchanges for the same
/// routers never interleave with it (`crate::work_lock`). Waits for the
/// exchanges in flight.
fn exclusive_work(cfg: &CenterdConfig) -> Result<crate::work_lock::Held, AdminError> {
    let lock = crate::work_lock::WorkLock::beside(&cfg.database_path);
    lock.exclusive().map_err(|source| AdminError::WorkLock {
        path: lock.path().display().to_string(),
        source,
    })
}

pub fn cli_actor() -> Actor {
    let user = std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| format!("uid{}", uid_from_proc()));
    Actor::new(format!("cli:{user}"), "local")
}

/// The real user ID from /proc (no libc call needed).
fn uid_from_proc() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
        })
        .unwrap_or_else(|| "?".into())
}

/// `check-config`: the configuration against the database. Never creates
/// anything: a database that does not exist yet is checked as an empty one.
pub fn check_config(config: &std::path::Path, cfg: &CenterdConfig) -> Result<Report, AdminError> {
    let store = if cfg.database_path.exists() {
        open_store(cfg)?
    } else {
        let mut st = Storage::open_in_memory()?;
        st.init_pool(&cfg.pool)?;
        st
    };
    store.check_pool().map_err(AdminError::Pool)?;
    let usage = store.pool_usage()?;
    Report::new(
        &serde_json::json!({
            "config": config,
            "database": cfg.database_path,
            "schema_version": store.schema_version()?,
            "pool": usage,
            "gateways": cfg.settings.gateways.iter().map(|g| g.name.to_string()).collect::<Vec<_>>(),
        }),
        || {
            format!(
                "configuration OK; pool {}: {} of {} in use",
                usage.cidr, usage.allocated, usage.size
            )
        },
    )
}

/// A request as the tools print it: the row and, while it is open, when it
/// ends by itself (issue 19, item 8).
#[derive(serde::Serialize)]
pub(crate) struct RequestOut<'a> {
    #[serde(flatten)]
    row: &'a crate::storage::RequestRow,
    /// Unix seconds; absent once ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    ends_at: Option<u64>,
    /// The router's tunnel's last packet as its gateway reported it (Unix
    /// seconds, 0: none yet); absent: the gateway said nothing.
    #[serde(skip_serializing_if = "Option::is_none")]
    last_traffic_at: Option<u64>,
    /// `[center] idle_timeout_secs`, while the request is open.
    #[serde(skip_serializing_if = "Option::is_none")]
    idle_timeout_secs: Option<u64>,
    /// When it ends as idle if the tunnel stays quiet (Unix seconds);
    /// absent: no idle timeout, traffic unknown, or ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    idle_ends_at: Option<u64>,
}

fn request_out<'a>(
    cfg: &CenterdConfig,
    row: &'a crate::storage::RequestRow,
    traffic: &std::collections::BTreeMap<String, u64>,
) -> RequestOut<'a> {
    request_limits(
        row,
        cfg.settings.max_grant_lifetime_secs,
        cfg.settings.idle_timeout_secs,
        traffic,
    )
}

/// [`request_out`] from the two settings (the UI's `/api/state` too:
/// each request with its time limits, issue 20 item 6).
pub(crate) fn request_limits<'a>(
    row: &'a crate::storage::RequestRow,
    max_lifetime_secs: u64,
    idle_timeout_secs: Option<u64>,
    traffic: &std::collections::BTreeMap<String, u64>,
) -> RequestOut<'a> {
    let open = row.state != crate::storage::RequestState::Ended;
    let ends_at = open.then(|| crate::limits::effective_end(row.received_at, row.expires_at, max_lifetime_secs));
    let last_traffic_at = traffic.get(&row.terminal_id).copied();
    let idle_timeout_secs = idle_timeout_secs.filter(|_| open);
    RequestOut {
        row,
        ends_at,
        last_traffic_at,
        idle_timeout_secs,
        idle_ends_at: crate::limits::idle_end(row.received_at, last_traffic_at, idle_timeout_secs),
    }
}

/// `list-requests`: newest first, filtered by state and router.
pub fn list_requests(
    cfg: &CenterdConfig,
    limit: u32,
    state: Option<&str>,
    terminal: Option<&str>,
) -> Result<Report, AdminError> {
    let st = open_store(cfg)?;
    let traffic = st.all_tunnel_traffic()?;
    let rows: Vec<_> = st
        .list_requests(if state.is_some() || terminal.is_some() {
            u32::MAX
        } else {
            limit
        })?
        .into_iter()
        .filter(|r| state.is_none_or(|s| r.state.as_str() == s))
        .filter(|r| terminal.is_none_or(|t| r.terminal_id == t))
        .take(usize::try_from(limit).unwrap_or(usize::MAX))
        .collect();
    let out: Vec<RequestOut<'_>> = rows.iter().map(|r| request_out(cfg, r, &traffic)).collect();
    let now = unix_now();
    // One line per request: the VM scripts parse it by column. Who ended
    // a request and why (free text) are in `--json` (`ended_by`,
    // `end_reason`).
    Report::new(&out, || {
        let mut s =
            String::from("no.  terminal  state        received    ends                     claimant  terminals\n");
        for o in &out {
            let r = o.row;
            let ends = o.ends_at.map_or_else(
                || "-".to_owned(),
                |t| {
                    format!(
                        "{} ({} left)",
                        crate::limits::utc_hhmm(t),
                        crate::limits::time_left(t, now)
                    )
                },
            );
            let names: Vec<String> = r
                .grants
                .iter()
                .map(|g| format!("{}={}", g.terminal_name, g.vpnnat))
                .collect();
            s.push_str(&format!(
                "{:<4} {:<9} {:<12} {:<11} {:<24} {:<9} {}\n",
                r.acceptance_number,
                r.terminal_id,
                r.state.to_string(),
                r.received_at,
                ends,
                r.claimant_name,
                names.join(" ")
            ));
        }
        s
    })
}

/// `show-router`: addresses, gateway slot, requests, failures.
pub fn show_router(cfg: &CenterdConfig, terminal_id: &str) -> Result<Report, AdminError> {
    let st = open_store(cfg)?;
    let Some(t) = st.terminal(terminal_id)? else {
        return Err(AdminError::NoTerminal(terminal_id.to_owned()));
    };
    let traffic = st.all_tunnel_traffic()?;
    let requests: Vec<_> = st
        .list_requests(10_000)?
        .into_iter()
        .filter(|r| r.terminal_id == terminal_id)
        .collect();
    let v = serde_json::json!({
        "terminal_id": t.terminal_id,
        "installed_at": t.installed_at,
        "server_part_vpnnat": t.server_part_vpnnat,
        "router_part_vpnnat": t.router_part_vpnnat,
        "addresses": st.addresses_of_terminal(terminal_id)?,
        "slot": st.slot_of(terminal_id)?,
        "initiation": st.initiation_of(terminal_id)?,
        "requests": requests.iter().map(|r| request_out(cfg, r, &traffic)).collect::<Vec<_>>(),
        "failures": st.failures(Some(terminal_id), 50)?,
    });
    let text = serde_json::to_string_pretty(&v)?;
    Ok(Report {
        json: serde_json::to_string_pretty(&v)?,
        text,
    })
}

/// `start-request`: the UI's start button.
pub fn start_request(cfg: &CenterdConfig, n: u64) -> Result<Report, AdminError> {
    let actor = cli_actor();
    let row = open_store(cfg)?.start_request_by(n, unix_now(), &actor.who, &actor.peer)?;
    Report::new(&row, || format!("request {} is {}", row.acceptance_number, row.state))
}

/// `limit-request`: the UI's "set limit": the request ends by itself
/// `minutes` from now; refused beyond the configured maximum lifetime.
pub fn limit_request(cfg: &CenterdConfig, n: u64, minutes: u64) -> Result<Report, AdminError> {
    let actor = cli_actor();
    let max = cfg.settings.max_grant_lifetime_secs;
    let mut st = open_store(cfg)?;
    let row = st.limit_request_by(n, minutes, max, unix_now(), &actor.who, &actor.peer)?;
    let traffic = st.all_tunnel_traffic()?;
    let out = request_out(cfg, &row, &traffic);
    let end = out.ends_at.unwrap_or_default();
    Report::new(&out, || {
        format!(
            "request {n} now ends at {} (limit set by {})",
            crate::limits::utc_hhmm(end),
            actor.who
        )
    })
}

/// `end-request`: the UI's end button (router end command, the three
/// judgments, VPNNAT release, VPN end). `reason`: why (issue 20, item 6),
/// validated as the UI's ([`crate::end_reason`]) before anything is done.
/// Optional here, unlike in the UI: the console is root's way out when
/// the UI is unusable, and scripts end requests; the audit row names
/// the console user either way.
pub async fn end_request(cfg: CenterdConfig, n: u64, reason: Option<&str>) -> Result<Report, AdminError> {
    let reason = reason.map(crate::end_reason::parse).transpose()?;
    let _exclusive = exclusive_work(&cfg)?;
    let center = build_center(cfg)?;
    let o = center
        .end_with_reason(n, unix_now(), &cli_actor(), reason.as_ref())
        .await?;
    Report::new(&o, || {
        format!(
            "request {n} ended: released {:?}, kept {:?}, router's own parts kept {:?}, VPN ended: {}{}",
            o.released,
            o.kept,
            o.own_kept,
            o.vpn_ended,
            if o.warnings.is_empty() {
                String::new()
            } else {
                format!("\nwarnings:\n  {}", o.warnings.join("\n  "))
            }
        )
    })
}

/// `reconcile`: every gateway (or one) with the database now; a gateway
/// that fails is reported in the output, not as an error.
pub async fn reconcile(cfg: CenterdConfig, gateway: Option<String>) -> Result<Report, AdminError> {
    let _exclusive = exclusive_work(&cfg)?;
    let center = build_center(cfg)?;
    let names: Vec<String> = match gateway {
        Some(g) => vec![g],
        None => center.settings().gateways.iter().map(|g| g.name.to_string()).collect(),
    };
    let mut all = Vec::new();
    for n in names {
        match center.reconcile_gateway(&n, unix_now()).await {
            Ok(o) => all.push(serde_json::to_value(&o)?),
            Err(e) => all.push(serde_json::json!({"gateway": n, "error": e.to_string()})),
        }
    }
    Report::new(&all, || {
        all.iter().map(|v| v.to_string()).collect::<Vec<_>>().join("\n")
    })
}

/// `gateways`: heartbeat state, slots, tunnels up, draining.
pub fn gateways(cfg: &CenterdConfig) -> Result<Report, AdminError> {
    let rows = open_store(cfg)?.gateway_usage()?;
    Report::new(&rows, || {
        let mut s = String::from("gateway  state  since(ms)      used  free  tunnels_up  draining\n");
        for g in &rows {
            s.push_str(&format!(
                "{:<8} {:<6} {:<14} {:<5} {:<5} {:<11} {}\n",
                g.name,
                if g.alive { "up" } else { "down" },
                g.alive_changed_ms,
                g.used,
                g.free,
                g.up,
                g.draining
            ));
        }
        s
    })
}

/// `drain-gateway` / `undrain-gateway`; the change goes to the audit log.
pub fn drain(cfg: &CenterdConfig, name: &str, draining: bool) -> Result<Report, AdminError> {
    let mut st = open_store(cfg)?;
    let actor = cli_actor();
    st.set_draining_by(name, draining, unix_now(), &actor.who, &actor.peer)?;
    Report::new(&serde_json::json!({"gateway": name, "draining": draining}), || {
        format!("gateway {name}: draining {draining}")
    })
}

/// `reinstalls`: re-installations waiting for approval, oldest first.
pub fn reinstalls(cfg: &CenterdConfig) -> Result<Report, AdminError> {
    let rows = open_store(cfg)?.reinstall_requests()?;
    Report::new(&rows, || {
        let mut s = String::new();
        for r in &rows {
            s.push_str(&format!(
                "{} asked at {} from {}; approved: {}\n",
                r.terminal_id,
                r.requested_at,
                r.peer,
                r.approved_by.as_deref().unwrap_or("no")
            ));
        }
        s
    })
}

/// `maintenance-password`: a router's own maintenance password, for the
/// operator at the console (the UI's button); audited as `cli:USER`.
pub fn maintenance_password(cfg: &CenterdConfig, terminal_id: &str) -> Result<String, AdminError> {
    let mut st = open_store(cfg)?;
    let (pw, how) = match st.maintenance_password(terminal_id)? {
        Some(p) => (p, "own"),
        // Installed before per-router passwords: the shared one.
        None => (
            cfg.settings.maintenance_password.expose_secret().to_owned(),
            "shared (installed before per-router passwords)",
        ),
    };
    let actor = cli_actor();
    st.append_audit(&NewAudit {
        at: unix_now(),
        actor: &actor.who,
        action: "show_maintenance_password",
        terminal_id: Some(terminal_id),
        acceptance_number: None,
        detail: &format!("{how} maintenance password shown"),
        peer: &actor.peer,
    })?;
    Ok(pw)
}

/// `approve-reinstall`: approves a pending re-installation (audited in
/// the same transaction, as `cli:USER`).
pub fn approve_reinstall(cfg: &CenterdConfig, terminal_id: &str) -> Result<Report, AdminError> {
    let actor = cli_actor();
    open_store(cfg)?.approve_reinstall(terminal_id, &actor.who, unix_now(), &actor.peer)?;
    Report::new(
        &serde_json::json!({"terminal_id": terminal_id, "approved": true}),
        || format!("re-installation of {terminal_id} approved: its next installation notice is accepted"),
    )
}

/// `audit`: the audit log, newest first.
pub fn audit(cfg: &CenterdConfig, filter: &AuditFilter) -> Result<Report, AdminError> {
    let rows = open_store(cfg)?.audit_log(filter)?;
    Report::new(&rows, || {
        let mut s = String::from(AuditRow::CSV_HEADER);
        s.push('\n');
        for r in &rows {
            s.push_str(&r.csv_line());
            s.push('\n');
        }
        s
    })
}

/// `factory-secret`: a router's Secret(ID) (hex) for its `routerd.toml`.
pub fn factory_secret(cfg: &CenterdConfig, terminal_id: &str) -> Result<String, AdminError> {
    use vpnnat_proto::keys::SecretBytes as _;
    let id = vpnnat_proto::types::TerminalId::new(terminal_id).map_err(AdminError::TerminalId)?;
    let secret = vpnnat_proto::keys::SecretId::derive(&cfg.settings.factory_master_key, &id);
    Ok(secret.to_hex().as_str().to_owned())
}

/// `hash-password`: reads a password from `input` and returns its hash
/// for `operators.password_hashes`.
pub fn hash_password(input: &mut impl Read, iterations: u32) -> Result<String, AdminError> {
    let mut s = zeroize::Zeroizing::new(String::new());
    input.read_to_string(&mut s).map_err(AdminError::Stdin)?;
    let pw = s.trim_end_matches(['\n', '\r']);
    if pw.is_empty() {
        return Err(AdminError::EmptyPassword);
    }
    let h = PasswordHash::create(pw, iterations, &ring::rand::SystemRandom::new())?;
    Ok(h.to_string())
}
