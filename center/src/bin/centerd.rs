//! centerd: the maintenance server (PROTOCOL.md): HTTP API for routers,
//! operator web UI, the databases, commands to the gateways.
//!
//! The tool subcommands work on the database a running centerd uses (SQLite
//! serializes them with it) and are meant for scripts: `--json` prints one
//! JSON document on stdout, errors go to stderr, and the exit status is 0
//! (done), 1 (failed: e.g. no such router or request, a database error) or
//! 2 (usage or configuration error).

// No unsafe code in this crate (checked by the compiler, not by review).
#![forbid(unsafe_code)]

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use tokio::net::TcpListener;
use tokio::sync::watch;
use vpnnat_center::center::{Actor, Center};
use vpnnat_center::clients::{HttpGateways, HttpRouters};
use vpnnat_center::config::CenterdConfig;
use vpnnat_center::liveness::{GatewayWatch, HeartbeatConfig, Transition};
use vpnnat_center::password::{PasswordHash, DEFAULT_ITERATIONS};
use vpnnat_center::routes::KernelRoutes;
use vpnnat_center::storage::Storage;
use vpnnat_center::{api, http, ui};

#[derive(Debug, Parser)]
#[command(
    name = "centerd",
    version,
    about = "vpnnat maintenance server: router API, operator UI, databases, gateway commands",
    after_help = "Exit status: 0 done, 1 failed, 2 usage or configuration error."
)]
struct Cli {
    /// Configuration file (TOML).
    #[arg(long, global = true, default_value = "/etc/vpnnat/centerd.toml")]
    config: PathBuf,
    /// Machine-readable output (JSON) for the tool subcommands.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Serve the router API and the operator UI (the default).
    Run,
    /// Validate the configuration and the database, then exit.
    CheckConfig,
    /// List maintenance requests, newest first.
    ListRequests {
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Only requests in this state.
        #[arg(long, value_parser = ["waiting", "in_progress", "ended"])]
        state: Option<String>,
        /// Only requests of this router.
        #[arg(long)]
        terminal: Option<String>,
    },
    /// Show one router: addresses, gateway slot, requests, failures.
    ShowRouter { terminal_id: String },
    /// Mark a request "in progress" (the UI's start button).
    StartRequest { acceptance_number: u64 },
    /// End a request (the UI's end button): router end command, the three
    /// judgments, VPNNAT release, VPN end.
    EndRequest { acceptance_number: u64 },
    /// Reconcile every gateway (or one) with the database now.
    Reconcile { gateway: Option<String> },
    /// List the gateways: heartbeat state (up/down, since when), slots,
    /// tunnels up, draining.
    Gateways,
    /// Stop giving new tunnels to a gateway (existing ones stay).
    DrainGateway {
        name: String,
        /// Accept new tunnels again (same as undrain-gateway).
        #[arg(long)]
        undo: bool,
    },
    /// Let a drained gateway take new tunnels again.
    UndrainGateway { name: String },
    /// Print the audit log, newest first (filters combine).
    Audit {
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[arg(long)]
        action: Option<String>,
        #[arg(long)]
        actor: Option<String>,
        #[arg(long)]
        terminal: Option<String>,
        /// Only events at or after this Unix time.
        #[arg(long)]
        since: Option<u64>,
    },
    /// Print a router's factory Secret(ID) (hex) for its `routerd.toml`
    /// `factory_secret`: HMAC-SHA256(factory master key, terminal ID). For
    /// the factory that provisions routers; it is a secret.
    FactorySecret { terminal_id: String },
    /// Read a password from standard input and print its hash for
    /// `operators.password_hashes`.
    HashPassword {
        #[arg(long, default_value_t = DEFAULT_ITERATIONS)]
        iterations: u32,
    },
}

fn main() -> std::process::ExitCode {
    use std::process::ExitCode;
    let cli: Cli = match vpnnat_center::cli::parse() {
        Ok(c) => c,
        Err(code) => return code,
    };
    // A crash point for the reliability trials; a typo must not pass silently.
    if let Err(e) = vpnnat_crashpoint::check_env() {
        eprintln!("{e}");
        return ExitCode::from(2);
    }
    // The tools log warnings only (their output is the answer); the server
    // logs from info up, or as `[log] level` says (installed once the
    // configuration is read). RUST_LOG overrides both.
    if !matches!(cli.command, None | Some(Cmd::Run)) {
        vpnnat_center::logging::init("warn", &Default::default());
    }
    match real_main(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("centerd: {e:#}");
            if is_config_error(&e) {
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
    }
}

/// A configuration that cannot be read or does not fit the database.
fn is_config_error(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.is::<vpnnat_center::config::ConfigError>()
            || matches!(
                c.downcast_ref::<vpnnat_center::storage::StorageError>(),
                Some(
                    vpnnat_center::storage::StorageError::PoolMismatch { .. }
                        | vpnnat_center::storage::StorageError::SchemaTooNew { .. }
                )
            )
    })
}

/// Who runs a tool subcommand, for the audit log.
fn cli_actor() -> Actor {
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

fn real_main(cli: &Cli) -> Result<()> {
    match cli.command.as_ref().unwrap_or(&Cmd::Run) {
        Cmd::HashPassword { iterations } => hash_password(*iterations),
        Cmd::FactorySecret { terminal_id } => {
            use vpnnat_proto::keys::SecretBytes as _;
            let cfg = load(&cli.config)?;
            let id = vpnnat_proto::types::TerminalId::new(terminal_id).context("terminal ID")?;
            let secret = vpnnat_proto::keys::SecretId::derive(&cfg.settings.factory_master_key, &id);
            println!("{}", secret.to_hex().as_str());
            Ok(())
        }
        Cmd::Run => {
            let cfg = load(&cli.config)?;
            vpnnat_center::logging::init("info", &cfg.log);
            check_secret_files(&cli.config, &cfg);
            runtime()?.block_on(run(cfg))
        }
        Cmd::CheckConfig => {
            let cfg = load(&cli.config)?;
            check_secret_files(&cli.config, &cfg);
            // Never create anything here: a database that does not exist
            // yet is checked as an empty one.
            let store = if cfg.database_path.exists() {
                open_store(&cfg)?
            } else {
                let mut st = Storage::open_in_memory()?;
                st.init_pool(&cfg.pool)?;
                st
            };
            store.check_pool().context("pool invariants")?;
            let usage = store.pool_usage()?;
            output(
                cli.json,
                &serde_json::json!({
                    "config": cli.config,
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
        Cmd::ListRequests { limit, state, terminal } => {
            let cfg = load(&cli.config)?;
            let rows: Vec<_> = open_store(&cfg)?
                .list_requests(if state.is_some() || terminal.is_some() {
                    u32::MAX
                } else {
                    *limit
                })?
                .into_iter()
                .filter(|r| state.as_deref().is_none_or(|s| r.state.as_str() == s))
                .filter(|r| terminal.as_deref().is_none_or(|t| r.terminal_id == t))
                .take(usize::try_from(*limit).unwrap_or(usize::MAX))
                .collect();
            output(cli.json, &rows, || {
                let mut s = String::from("no.  terminal  state        received    claimant  terminals\n");
                for r in &rows {
                    let names: Vec<String> = r
                        .grants
                        .iter()
                        .map(|g| format!("{}={}", g.terminal_name, g.vpnnat))
                        .collect();
                    s.push_str(&format!(
                        "{:<4} {:<9} {:<12} {:<11} {:<9} {}\n",
                        r.acceptance_number,
                        r.terminal_id,
                        r.state.to_string(),
                        r.received_at,
                        r.claimant_name,
                        names.join(" ")
                    ));
                }
                s
            })
        }
        Cmd::ShowRouter { terminal_id } => {
            let cfg = load(&cli.config)?;
            let st = open_store(&cfg)?;
            let Some(t) = st.terminal(terminal_id)? else {
                bail!("no terminal {terminal_id}");
            };
            let requests: Vec<_> = st
                .list_requests(10_000)?
                .into_iter()
                .filter(|r| &r.terminal_id == terminal_id)
                .collect();
            let v = serde_json::json!({
                "terminal_id": t.terminal_id,
                "installed_at": t.installed_at,
                "server_part_vpnnat": t.server_part_vpnnat,
                "router_part_vpnnat": t.router_part_vpnnat,
                "addresses": st.addresses_of_terminal(terminal_id)?,
                "slot": st.slot_of(terminal_id)?,
                "initiation": st.initiation_of(terminal_id)?,
                "requests": requests,
                "failures": st.failures(Some(terminal_id), 50)?,
            });
            output(cli.json, &v, || serde_json::to_string_pretty(&v).unwrap_or_default())
        }
        Cmd::StartRequest { acceptance_number } => {
            let cfg = load(&cli.config)?;
            let n = *acceptance_number;
            let actor = cli_actor();
            let row = open_store(&cfg)?.start_request_by(n, http::unix_now(), &actor.who, &actor.peer)?;
            output(cli.json, &row, || {
                format!("request {} is {}", row.acceptance_number, row.state)
            })
        }
        Cmd::EndRequest { acceptance_number } => {
            let cfg = load(&cli.config)?;
            let n = *acceptance_number;
            runtime()?.block_on(async move {
                let center = build_center(cfg)?;
                let o = center.end_by(n, http::unix_now(), &cli_actor()).await?;
                output(cli.json, &o, || {
                    format!(
                        "request {n} ended: released {:?}, kept {:?}, VPN ended: {}{}",
                        o.released,
                        o.kept,
                        o.vpn_ended,
                        if o.warnings.is_empty() {
                            String::new()
                        } else {
                            format!("\nwarnings:\n  {}", o.warnings.join("\n  "))
                        }
                    )
                })
            })
        }
        Cmd::Reconcile { gateway } => {
            let cfg = load(&cli.config)?;
            let gateway = gateway.clone();
            runtime()?.block_on(async move {
                let center = build_center(cfg)?;
                let names: Vec<String> = match gateway {
                    Some(g) => vec![g],
                    None => center.settings().gateways.iter().map(|g| g.name.to_string()).collect(),
                };
                let mut all = Vec::new();
                for n in names {
                    match center.reconcile_gateway(&n, http::unix_now()).await {
                        Ok(o) => all.push(serde_json::to_value(&o)?),
                        Err(e) => all.push(serde_json::json!({"gateway": n, "error": e.to_string()})),
                    }
                }
                output(cli.json, &all, || {
                    all.iter().map(|v| v.to_string()).collect::<Vec<_>>().join("\n")
                })
            })
        }
        Cmd::Gateways => {
            let cfg = load(&cli.config)?;
            let rows = open_store(&cfg)?.gateway_usage()?;
            output(cli.json, &rows, || {
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
        Cmd::DrainGateway { name, undo } => drain(cli, name, !undo),
        Cmd::UndrainGateway { name } => drain(cli, name, false),
        Cmd::Audit {
            limit,
            action,
            actor,
            terminal,
            since,
        } => {
            let cfg = load(&cli.config)?;
            let rows = open_store(&cfg)?.audit_log(&vpnnat_center::storage::AuditFilter {
                actor: actor.clone(),
                action: action.clone(),
                terminal_id: terminal.clone(),
                acceptance_number: None,
                since: *since,
                until: None,
                limit: *limit,
            })?;
            output(cli.json, &rows, || {
                let mut s = String::from(vpnnat_center::storage::AuditRow::CSV_HEADER);
                s.push('\n');
                for r in &rows {
                    s.push_str(&r.csv_line());
                    s.push('\n');
                }
                s
            })
        }
    }
}

/// Drains (or undrains) a gateway; the change goes to the audit log.
fn drain(cli: &Cli, name: &str, draining: bool) -> Result<()> {
    let cfg = load(&cli.config)?;
    let mut st = open_store(&cfg)?;
    st.set_draining(name, draining)?;
    let actor = cli_actor();
    st.append_audit(&vpnnat_center::storage::NewAudit {
        at: http::unix_now(),
        actor: &actor.who,
        action: if draining { "drain" } else { "undrain" },
        terminal_id: None,
        acceptance_number: None,
        detail: &format!("gateway {name}"),
        peer: &actor.peer,
    })?;
    output(
        cli.json,
        &serde_json::json!({"gateway": name, "draining": draining}),
        || format!("gateway {name}: draining {draining}"),
    )
}

fn output<T: serde::Serialize>(json: bool, v: &T, text: impl FnOnce() -> String) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(v)?);
    } else {
        println!("{}", text().trim_end());
    }
    Ok(())
}

fn hash_password(iterations: u32) -> Result<()> {
    let mut s = zeroize::Zeroizing::new(String::new());
    std::io::stdin()
        .read_to_string(&mut s)
        .context("reading the password from stdin")?;
    let pw = s.trim_end_matches(['\n', '\r']);
    if pw.is_empty() {
        bail!("empty password on stdin");
    }
    let h = PasswordHash::create(pw, iterations, &ring::rand::SystemRandom::new())?;
    println!("{h}");
    Ok(())
}

/// Says loudly when a file holding secrets is readable by others.
fn check_secret_files(config: &Path, cfg: &CenterdConfig) {
    vpnnat_center::secrets::warn_exposed(
        "centerd",
        &[
            ("configuration (factory master key, gateway API keys)", config),
            ("maintenance password file", &cfg.maintenance_password_file),
            ("database (PSKs, Secret(ID2)s)", &cfg.database_path),
        ],
    );
}

fn load(path: &Path) -> Result<CenterdConfig> {
    CenterdConfig::load(path).with_context(|| format!("configuration {}", path.display()))
}

fn open_store(cfg: &CenterdConfig) -> Result<Storage> {
    let existed = cfg.database_path.exists();
    if let Some(dir) = cfg
        .database_path
        .parent()
        .filter(|d| !d.as_os_str().is_empty() && !d.exists())
    {
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut st =
        Storage::open(&cfg.database_path).with_context(|| format!("database {}", cfg.database_path.display()))?;
    if !existed {
        // The database holds PSKs and Secret(ID2)s: owner only.
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&cfg.database_path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("chmod 600 {}", cfg.database_path.display()))?;
    }
    st.init_pool(&cfg.pool)?;
    Ok(st)
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

type RealCenter = Center<HttpGateways, HttpRouters>;

fn build_center(cfg: CenterdConfig) -> Result<RealCenter> {
    let store = open_store(&cfg)?;
    let clients = cfg
        .gateway_endpoints
        .iter()
        .zip(cfg.settings.gateways.iter())
        .map(|((name, ep), g)| (name.clone(), ep.authority.clone(), g.api_key.clone()))
        .collect();
    let gws = HttpGateways::new(clients, cfg.command_timeout);
    let routers = HttpRouters::new(cfg.router_command_port, cfg.command_timeout);
    let host_routes = cfg.host_routes;
    // A second connection for reads (see Center::with_reader).
    let reader =
        Storage::open(&cfg.database_path).with_context(|| format!("database {}", cfg.database_path.display()))?;
    let center = Center::new(store, cfg.settings, gws, routers)?.with_reader(reader);
    if host_routes {
        let r = KernelRoutes::open().context("opening rtnetlink for host routes")?;
        return Ok(center.with_routes(Box::new(r)));
    }
    Ok(center)
}

async fn run(cfg: CenterdConfig) -> Result<()> {
    let router_listen = cfg.router_listen;
    let ui_listen = cfg.ui_listen;
    let ui_settings = ui::UiSettings {
        operator_hashes: cfg.operator_hashes.clone(),
        session_ttl: cfg.session_ttl,
        dns_domain: cfg.dns.as_ref().map(|d| d.zone.domain.clone()),
        throttle: Default::default(),
    };
    let dns = cfg.dns.clone();
    let reconcile_interval = cfg.reconcile_interval;
    let heartbeat = cfg.heartbeat;
    let api_settings = api::ApiSettings {
        trusted_proxies: cfg.trusted_proxies.clone(),
    };
    let center = Arc::new(build_center(cfg)?);
    let api_l = TcpListener::bind(router_listen)
        .await
        .with_context(|| format!("listening on {router_listen}"))?;
    let ui_l = TcpListener::bind(ui_listen)
        .await
        .with_context(|| format!("listening on {ui_listen}"))?;
    log::info!(
        "centerd: router API on {}, operator UI on http://{}/",
        api_l.local_addr()?,
        ui_l.local_addr()?
    );
    let (tx, rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };
    let dns_task = match dns {
        // DNS is a convenience: when its port cannot be bound the router
        // API and the UI still run (and the error says why names fail).
        Some(d) => match tokio::net::UdpSocket::bind(d.listen).await {
            Ok(sock) => {
                log::info!("centerd: DNS for {} on {}", d.zone.domain, sock.local_addr()?);
                Some(tokio::spawn(vpnnat_center::dns::serve(
                    sock,
                    stopped(rx.clone()),
                    center.clone(),
                    d.zone,
                )))
            }
            Err(e) => {
                log::error!("centerd: no DNS: cannot bind dns.listen {}: {e}", d.listen);
                None
            }
        },
        None => None,
    };
    let servers = tokio::spawn({
        let c = center.clone();
        let (r1, r2) = (rx.clone(), rx);
        async move {
            tokio::join!(
                api::run_with(api_l, stopped(r1), c.clone(), api_settings),
                ui::run(ui_l, stopped(r2), c, ui_settings)
            );
        }
    });
    let reconciler = tokio::spawn(reconcile_loop(center.clone(), reconcile_interval));
    let watchers: Vec<_> = match heartbeat {
        Some(hb) => center
            .settings()
            .gateways
            .iter()
            .map(|g| tokio::spawn(heartbeat_loop(center.clone(), g.name.to_string(), hb)))
            .collect(),
        None => Vec::new(),
    };
    wait_for_signal().await?;
    log::info!("centerd: shutting down");
    reconciler.abort();
    for w in &watchers {
        w.abort();
    }
    let _ = tx.send(true);
    servers.await?;
    if let Some(t) = dns_task {
        t.await?;
    }
    Ok(())
}

/// Reconciles every gateway at start, then every `interval`. Only repairs
/// drift (a restarted gatewayd, a lost command); tunnel state changes arrive
/// as events.
async fn reconcile_loop(center: Arc<RealCenter>, interval: Option<std::time::Duration>) {
    // First the ends a crash interrupted, so that the reconcile below
    // gives the gateways what the finished ends leave.
    match center.resume_ends(http::unix_now()).await {
        Ok(v) if !v.is_empty() => log::warn!("resumed {} interrupted end(s)", v.len()),
        Ok(_) => {}
        Err(e) => log::error!("resuming interrupted ends: {e}"),
    }
    loop {
        let names: Vec<String> = center.settings().gateways.iter().map(|g| g.name.to_string()).collect();
        for n in names {
            if let Err(e) = center.reconcile_gateway(&n, http::unix_now()).await {
                log::warn!("reconcile {n}: {e}");
            }
        }
        match interval {
            Some(i) => tokio::time::sleep(i).await,
            None => return,
        }
    }
}

/// One gateway's liveness watch: an authenticated heartbeat every
/// `hb.interval`, each bounded by `hb.timeout` and sent on time even while
/// earlier ones are still out (so a slow answer does not delay the next
/// probe), their outcomes fed to [`GatewayWatch`] as they come back; a
/// transition goes to the database, the audit log and, on "back", a
/// reconciliation. One task per gateway, so a silent gateway's time-outs do
/// not delay another's heartbeat.
async fn heartbeat_loop(center: Arc<RealCenter>, name: String, hb: HeartbeatConfig) {
    let alive = match center.reads().and_then(|st| Ok(st.gateway_alive(&name)?)) {
        Ok(a) => a,
        Err(e) => {
            log::error!("heartbeat {name}: cannot read its state, not watching it: {e}");
            return;
        }
    };
    let mut watch = GatewayWatch::new(hb, alive);
    let mut tick = tokio::time::interval(hb.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut inflight = tokio::task::JoinSet::new();
    loop {
        let answered = tokio::select! {
            _ = tick.tick() => {
                let (c, n, t) = (center.clone(), name.clone(), hb.timeout);
                inflight.spawn(async move { c.gateways().heartbeat(&n, t).await });
                continue;
            }
            Some(done) = inflight.join_next(), if !inflight.is_empty() => match done {
                Ok(Ok(())) => true,
                Ok(Err(e)) => {
                    log::debug!("heartbeat {name}: {e}");
                    false
                }
                Err(e) => {
                    log::warn!("heartbeat {name}: task failed: {e}");
                    false
                }
            },
        };
        let now_ms = unix_now_ms();
        match watch.observe(answered, std::time::Instant::now()) {
            None => {}
            Some(Transition::Down { silent_for }) => {
                if let Err(e) = center.gateway_down(&name, now_ms, silent_for) {
                    log::error!("gateway {name} is down but cannot be marked: {e}");
                }
            }
            Some(Transition::Up) => {
                if let Err(e) = center.gateway_back(&name, now_ms).await {
                    log::error!("gateway {name} answers but is not reconciled, kept down: {e}");
                    watch.revert_to_down();
                }
            }
        }
    }
}

fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

async fn wait_for_signal() -> Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    Ok(())
}
