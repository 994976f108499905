//! gatewayd: the VPN gateway agent. Takes authenticated commands from
//! centerd, programs each router's tunnel policies through the datapath
//! library behind the `TunnelDriver` seam, and pushes tunnel up/down events
//! to centerd. The wiring is `vpnnat_gatewayd::daemon`.

// No unsafe code in this crate (checked by the compiler, not by review).
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use vpnnat_gatewayd::config::GatewaydConfig;
use vpnnat_gatewayd::daemon;

#[derive(Debug, Parser)]
#[command(
    name = "gatewayd",
    version,
    about = "vpnnat VPN gateway agent: tunnels to routers, commanded by centerd"
)]
struct Cli {
    /// Configuration file (TOML).
    #[arg(long, global = true, default_value = "/etc/vpnnat/gatewayd.toml")]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Serve the command API (the default).
    Run,
    /// Validate the configuration, then exit.
    CheckConfig,
}

/// Exit status: 0 done, 1 failed, 2 usage or configuration error (the
/// systemd unit does not restart on 2).
fn main() -> std::process::ExitCode {
    use std::process::ExitCode;
    let cli: Cli = match vpnnat_service::cli::parse() {
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
        eprintln!("gatewayd: warning: core dumps stay possible: {e}");
    }
    let cfg = match load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("gatewayd: {e:#}");
            return ExitCode::from(2);
        }
    };
    // From info up, or as `[log]` says; RUST_LOG and VPNNAT_LOG_FORMAT
    // override it.
    vpnnat_service::logging::init("info", &cfg.log);
    match real_main(cli, cfg) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gatewayd: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn real_main(cli: Cli, cfg: GatewaydConfig) -> Result<()> {
    vpnnat_service::secrets::warn_exposed("gatewayd", &[("configuration (API key)", cli.config.as_path())]);
    match cli.command.unwrap_or(Cmd::Run) {
        Cmd::CheckConfig => {
            println!("configuration OK: gateway {} on {}", cfg.name, cfg.listen);
            Ok(())
        }
        Cmd::Run => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(serve(cfg)),
    }
}

fn load(path: &Path) -> Result<GatewaydConfig> {
    GatewaydConfig::load(path).with_context(|| format!("configuration {}", path.display()))
}

/// Binds the API, then serves until SIGTERM or Ctrl-C.
async fn serve(cfg: GatewaydConfig) -> Result<()> {
    let listener = daemon::bind(&cfg).await?;
    daemon::serve(cfg, listener, shutdown()).await?;
    Ok(())
}

async fn shutdown() {
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
    match term {
        Ok(mut t) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = t.recv() => {}
            }
        }
        Err(e) => {
            log::warn!("cannot watch SIGTERM ({e}); stopping on Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
