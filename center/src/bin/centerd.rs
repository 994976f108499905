//! centerd: the maintenance server (PROTOCOL.md): HTTP API for routers,
//! operator web UI, the databases, commands to the gateways. The wiring is
//! `vpnnat_center::daemon`, the tool subcommands `vpnnat_center::admin`.
//!
//! The tool subcommands work on the database a running centerd uses (SQLite
//! serializes them with it) and are meant for scripts: `--json` prints one
//! JSON document on stdout, errors go to stderr, and the exit status is 0
//! (done), 1 (failed: e.g. no such router or request, a database error) or
//! 2 (usage or configuration error).

// No unsafe code in this crate (checked by the compiler, not by review).
#![forbid(unsafe_code)]

use std::io::Write as _;
use std::process::ExitCode;

use anyhow::Result;
use vpnnat_center::admin::{self, AdminError, Report};
use vpnnat_center::cli::{Cli, Cmd};
use vpnnat_center::config::CenterdConfig;
use vpnnat_center::daemon::{self, Listeners};
use vpnnat_center::keygen;
use vpnnat_center::storage::AuditFilter;

fn main() -> ExitCode {
    let cli: Cli = match vpnnat_center::cli::parse() {
        Ok(c) => c,
        Err(code) => return code,
    };
    // A crash point for the reliability trials; a typo must not pass silently.
    if let Err(e) = vpnnat_crashpoint::check_env() {
        eprintln!("{e}");
        return ExitCode::from(2);
    }
    // Keys live in this process's memory: no core file may carry them off.
    if let Err(e) = vpnnat_crashpoint::core_dumps::disable() {
        eprintln!("centerd: warning: core dumps stay possible: {e}");
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
            let config = e.downcast_ref::<AdminError>().is_some_and(AdminError::is_config);
            ExitCode::from(if config { 2 } else { 1 })
        }
    }
}

fn real_main(cli: &Cli) -> Result<()> {
    let cmd = cli.command.as_ref().unwrap_or(&Cmd::Run);
    if let Cmd::HashPassword { iterations } = cmd {
        println!("{}", admin::hash_password(&mut std::io::stdin(), *iterations)?);
        return Ok(());
    }
    if let Cmd::GenSecret = cmd {
        println!("{}", keygen::gen_secret(&ring::rand::SystemRandom::new())?.as_str());
        return Ok(());
    }
    if let Cmd::Openapi { router_commands } = cmd {
        let doc = if *router_commands {
            vpnnat_center::api::router_commands_openapi()
        } else {
            vpnnat_center::api::openapi()
        };
        println!("{}", doc.to_pretty_json()?);
        return Ok(());
    }
    if let Cmd::FillSecrets { files } = cmd {
        for name in keygen::fill_files(files)? {
            println!("{name}");
        }
        return Ok(());
    }
    let cfg = daemon::load_config(&cli.config).map_err(AdminError::from)?;
    if matches!(cmd, Cmd::Run | Cmd::CheckConfig) {
        if matches!(cmd, Cmd::Run) {
            vpnnat_center::logging::init("info", &cfg.log);
        }
        check_secret_files(cli, &cfg);
    }
    let report: Report = match cmd {
        Cmd::HashPassword { .. } | Cmd::GenSecret | Cmd::Openapi { .. } | Cmd::FillSecrets { .. } => {
            unreachable!("handled above")
        }
        Cmd::Run => return runtime()?.block_on(run(cfg)),
        Cmd::FactorySecret { terminal_id } => {
            println!("{}", admin::factory_secret(&cfg, terminal_id)?);
            return Ok(());
        }
        Cmd::MaintenancePassword { terminal_id } => {
            println!("{}", admin::maintenance_password(&cfg, terminal_id)?);
            return Ok(());
        }
        Cmd::CheckConfig => admin::check_config(&cli.config, &cfg)?,
        Cmd::ListRequests { limit, state, terminal } => {
            admin::list_requests(&cfg, *limit, state.as_deref(), terminal.as_deref())?
        }
        Cmd::ShowRouter { terminal_id } => admin::show_router(&cfg, terminal_id)?,
        Cmd::StartRequest { acceptance_number } => admin::start_request(&cfg, *acceptance_number)?,
        Cmd::LimitRequest {
            acceptance_number,
            minutes,
        } => admin::limit_request(&cfg, *acceptance_number, *minutes)?,
        Cmd::EndRequest {
            acceptance_number,
            reason,
        } => runtime()?.block_on(admin::end_request(cfg, *acceptance_number, reason.as_deref()))?,
        Cmd::Reconcile { gateway } => runtime()?.block_on(admin::reconcile(cfg, gateway.clone()))?,
        Cmd::Gateways => admin::gateways(&cfg)?,
        Cmd::DrainGateway { name, undo } => admin::drain(&cfg, name, !undo)?,
        Cmd::UndrainGateway { name } => admin::drain(&cfg, name, false)?,
        Cmd::Reinstalls => admin::reinstalls(&cfg)?,
        Cmd::ApproveReinstall { terminal_id } => admin::approve_reinstall(&cfg, terminal_id)?,
        Cmd::Operator { cmd } => admin::operator(&cfg, cmd, &mut std::io::stdin())?,
        Cmd::Audit {
            limit,
            action,
            actor,
            terminal,
            since,
        } => {
            let filter = AuditFilter {
                actor: actor.clone(),
                action: action.clone(),
                terminal_id: terminal.clone(),
                acceptance_number: None,
                since: *since,
                until: None,
                limit: *limit,
            };
            admin::audit(&cfg, &filter)?
        }
    };
    // A reader that stops early (`centerd list-requests | grep -q ...`) is
    // not an error of centerd's: println! would panic on the broken pipe.
    let text = report.render(cli.json)?;
    match writeln!(std::io::stdout().lock(), "{text}") {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// Says loudly when a file holding secrets is readable by others.
fn check_secret_files(cli: &Cli, cfg: &CenterdConfig) {
    vpnnat_center::secrets::warn_exposed(
        "centerd",
        &[
            ("configuration (factory master key, gateway API keys)", &cli.config),
            ("maintenance password file", &cfg.maintenance_password_file),
            (
                "database (PSKs, Secret(ID2)s, maintenance passwords)",
                &cfg.database_path,
            ),
        ],
    );
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

/// Serves until SIGTERM or Ctrl-C.
async fn run(cfg: CenterdConfig) -> Result<()> {
    let listeners = Listeners::bind(&cfg).await.map_err(AdminError::from)?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let signal = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    daemon::serve(cfg, listeners, signal).await.map_err(AdminError::from)?;
    Ok(())
}
