//! gatewayd: the VPN gateway agent. Takes authenticated commands from
//! centerd, programs each router's tunnel policies through the datapath
//! library behind the `TunnelDriver` seam, and pushes tunnel up/down events
//! to centerd.

// No unsafe code in this crate (checked by the compiler, not by review).
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use tokio::net::TcpListener;
use tokio::sync::mpsc::unbounded_channel;
use tokio::sync::mpsc::UnboundedSender;
use vpnnat_datapath::nft::NatTable;
use vpnnat_datapath::{KernelDatapath, RecordingDatapath};
use vpnnat_gatewayd::config::{DatapathKind, GatewaydConfig};
use vpnnat_gatewayd::driver::{DriverEvent, PolicyDatapath, PolicyDriver, TunnelDriver};
use vpnnat_gatewayd::ike::IkeTunnelDriver;
use vpnnat_gatewayd::{forward_events_counted, run, Gatewayd};
use vpnnat_ike_driver::{DriverConfig, DriverHandle, IkeDriver, RecordingInstaller};

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

async fn serve(cfg: GatewaydConfig) -> Result<()> {
    let (tx, rx) = unbounded_channel();
    let (driver, ike) = match cfg.datapath {
        DatapathKind::Kernel => {
            let mut dp = KernelDatapath::open(NatTable::default()).context("opening the kernel datapath")?;
            // Hash the per-/32 policies instead of scanning them: every
            // policy pairs a center network with a /32, so thresholds at the
            // shortest center prefix cover all of them.
            let bits = cfg.center_networks.iter().map(|c| c.prefix_len()).min().unwrap_or(32);
            dp.xfrm
                .set_hash_thresholds(bits, bits)
                .context("setting the XFRM policy hash thresholds")?;
            let policy = PolicyDriver::new(
                dp,
                cfg.global_ip,
                cfg.center_networks.clone(),
                cfg.policy_priority,
                tx.clone(),
            );
            with_ike(policy, &cfg, tx, true).await?
        }
        DatapathKind::Recording => {
            let policy = PolicyDriver::new(
                RecordingDatapath::new(),
                cfg.global_ip,
                cfg.center_networks.clone(),
                cfg.policy_priority,
                tx.clone(),
            );
            with_ike(policy, &cfg, tx, false).await?
        }
    };
    let gw = Arc::new(Gatewayd::new(cfg.name.clone(), cfg.api_key.clone(), driver)?);
    // Nothing from a previous run survives: centerd re-sends what it wants.
    gw.reconcile().context("reconciling the kernel at start")?;
    let listener = TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("listening on {}", cfg.listen))?;
    log::info!("gatewayd {}: API on {}", cfg.name, listener.local_addr()?);
    let events = tokio::spawn(forward_events_counted(
        rx,
        cfg.center.clone(),
        cfg.name.clone(),
        cfg.api_key.clone(),
        cfg.event_timeout,
        gw.event_counters(),
    ));
    run(listener, shutdown(), gw).await;
    if let Some(h) = ike {
        // DELETE every tunnel and remove the SAs the driver installed.
        h.shutdown().await;
    }
    events.abort();
    log::info!("gatewayd: stopped");
    Ok(())
}

/// The policy driver alone, or wrapped with the IKE driver bound to the
/// global address (`kernel`: SAs into the kernel's XFRM; otherwise into a
/// recorder, for demos without root).
async fn with_ike<D: PolicyDatapath + 'static>(
    policy: PolicyDriver<D>,
    cfg: &GatewaydConfig,
    events: UnboundedSender<DriverEvent>,
    kernel: bool,
) -> Result<(Box<dyn TunnelDriver>, Option<DriverHandle>)> {
    if !cfg.ike {
        return Ok((Box::new(policy), None));
    }
    let mut dcfg = DriverConfig::new(cfg.global_ip);
    let started = if kernel {
        IkeDriver::start_kernel(dcfg).await
    } else {
        dcfg.kernel_events = false;
        IkeDriver::start(dcfg, Box::new(RecordingInstaller::new())).await
    };
    let (h, ike_events) = started.with_context(|| format!("starting IKE on {}", cfg.global_ip))?;
    log::info!("gatewayd {}: IKE on {}", cfg.name, h.local_addr());
    let driver = IkeTunnelDriver::new(policy, &cfg.center_networks, h.clone(), ike_events, events);
    Ok((Box::new(driver), Some(h)))
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
