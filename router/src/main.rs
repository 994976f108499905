//! `routerd`: see `routerd --help` and the library's docs.

// Hostile input (peer messages, kernel replies) must not panic the daemon:
// no unchecked indexing or arithmetic outside tests.
#![cfg_attr(not(test), deny(clippy::indexing_slicing, clippy::arithmetic_side_effects))]

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use hyper::Method;
use vpnnat_datapath::nft::{LanSide, NatTable};
use vpnnat_datapath::{Datapath, KernelDatapath, RecordingDatapath};
use vpnnat_router::cli::{daemon_addr, Cli, Command, EXIT_CONFIG, EXIT_FAILED, EXIT_NO_DAEMON, EXIT_OK};
use vpnnat_router::config::Config;
use vpnnat_router::daemon::{self, Parts, Router};
use vpnnat_router::driver_responder::IkeDriverResponder;
use vpnnat_router::health::HealthSettings;
use vpnnat_router::http;
use vpnnat_router::ike_responder::{IkeResponder, StaticResponder};
use vpnnat_router::resolve::{parse_leases, Resolver};
use vpnnat_router::state::StateStore;
use vpnnat_router::view::{self, StatusView};
use vpnnat_router::web::{ApiAccepted, ApiError, ApiRequest};
use vpnnat_router::{init, resolve};
use vpnnat_service::client::ClientError;
use vpnnat_service::clock::unix_now;

/// An error with the exit code it maps to.
struct Fail(u8, anyhow::Error);

impl<E: Into<anyhow::Error>> From<E> for Fail {
    fn from(e: E) -> Self {
        Fail(EXIT_FAILED, e.into())
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A crash point for the reliability trials; a typo must not pass silently.
    if let Err(e) = vpnnat_crashpoint::check_env() {
        eprintln!("{e}");
        return ExitCode::from(2);
    }
    // Keys live in this process's memory: no core file may carry them off.
    if let Err(e) = vpnnat_crashpoint::core_dumps::disable() {
        eprintln!("routerd: warning: core dumps stay possible: {e}");
    }
    let pid1 = std::process::id() == 1;
    // stderr, plus the ring the maintenance interface shows.
    vpnnat_router::logring::install("info", pid1);
    if pid1 {
        init::install_panic_hook();
    }
    match dispatch(cli, pid1) {
        Ok(()) => ExitCode::from(EXIT_OK),
        Err(Fail(code, e)) => {
            eprintln!("routerd: {e:#}");
            if pid1 {
                // PID 1 must never exit: the kernel would panic. Fall back
                // to a clean power-off so the failure is at least visible.
                init::power_off();
            }
            ExitCode::from(code)
        }
    }
}

fn load(cli: &Cli) -> Result<Config, Fail> {
    let cfg = Config::load(&cli.config).map_err(|e| Fail(EXIT_CONFIG, e.into()))?;
    vpnnat_router::secret::warn_if_exposed("configuration (factory secret)", &cfg.path);
    vpnnat_router::secret::warn_if_exposed("state (Secret(ID2), PSK, maintenance password)", &cfg.state_file());
    Ok(cfg)
}

fn dispatch(cli: Cli, pid1: bool) -> Result<(), Fail> {
    match &cli.command {
        None => run(&cli, false, pid1),
        Some(Command::Run { fake_datapath }) => run(&cli, *fake_datapath, pid1),
        Some(Command::CheckConfig) => {
            let cfg = load(&cli)?;
            if cli.json {
                println!(
                    "{}",
                    serde_json::json!({"ok": true, "terminal_id": cfg.terminal_id.as_str()})
                );
            } else {
                println!("{}: ok (terminal {})", cfg.path.display(), cfg.terminal_id);
            }
            Ok(())
        }
        Some(Command::Status) => {
            let cfg = load(&cli)?;
            let state = StateStore::new(cfg.state_file()).load()?;
            let v = StatusView::new(cfg.terminal_id.as_str(), &state, "see the daemon".into());
            print_view(cli.json, &v, &v.to_text())
        }
        Some(Command::Hosts) => {
            let cfg = load(&cli)?;
            let state = StateStore::new(cfg.state_file()).load()?;
            let leases = std::fs::read_to_string(&cfg.lease_file)
                .map(|t| parse_leases(&t))
                .unwrap_or_default();
            let r = Resolver {
                statics: &cfg.hosts,
                leases,
                now: unix_now(),
                dns: resolve::NoDns,
                lan: &cfg.lan,
                router_part: cfg.router_part_address,
            };
            let hosts = view::hosts(&r.known(), &state);
            print_view(cli.json, &hosts, &view::hosts_text(&hosts))
        }
        Some(Command::Request {
            name,
            level,
            urgency,
            phone,
            content,
            terminals,
            daemon,
        }) => {
            let cfg = load(&cli)?;
            let req = ApiRequest {
                claimant_name: name.clone(),
                claimant_level: level.clone(),
                urgency: urgency.clone(),
                phone: phone.clone(),
                content: content.clone(),
                terminals: terminals.clone(),
            };
            // Validate here too, so a typo is a usage error without a round trip.
            req.to_input().map_err(|e| Fail(EXIT_CONFIG, anyhow::anyhow!(e)))?;
            let body = serde_json::to_vec(&req)?;
            call_daemon(
                &cli,
                daemon_addr(cfg.web_ui_listen, *daemon),
                "/api/request",
                Some(body),
            )
        }
        Some(Command::Button { daemon }) => {
            let cfg = load(&cli)?;
            call_daemon(
                &cli,
                daemon_addr(cfg.web_ui_listen, *daemon),
                "/api/button",
                Some(Vec::new()),
            )
        }
        Some(Command::End { number, daemon }) => {
            let cfg = load(&cli)?;
            let body = serde_json::to_vec(&vpnnat_router::web::ApiEnd {
                acceptance_number: *number,
            })?;
            call_daemon(&cli, daemon_addr(cfg.web_ui_listen, *daemon), "/api/end", Some(body))
        }
        Some(Command::Install { daemon }) => {
            let cfg = load(&cli)?;
            call_daemon(
                &cli,
                daemon_addr(cfg.web_ui_listen, *daemon),
                vpnnat_router::web::INSTALL_PATH,
                Some(Vec::new()),
            )
        }
    }
}

fn print_view<T: serde::Serialize>(json: bool, v: &T, text: &str) -> Result<(), Fail> {
    if json {
        println!("{}", serde_json::to_string_pretty(v)?);
    } else {
        print!("{text}");
    }
    Ok(())
}

/// POSTs to the running daemon's local API and prints its answer.
fn call_daemon(cli: &Cli, addr: SocketAddr, path: &str, body: Option<Vec<u8>>) -> Result<(), Fail> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    // A maintenance request waits for the center to bring the tunnel up.
    let res = rt.block_on(http::request(
        &addr.to_string(),
        Method::POST,
        path,
        &[],
        body,
        Duration::from_secs(120),
    ));
    let (status, _, body) = match res {
        Ok(r) => r,
        Err(e @ ClientError::Connect { .. }) => {
            return Err(Fail(
                EXIT_NO_DAEMON,
                anyhow::Error::new(e).context("is routerd running?"),
            ))
        }
        Err(e) => return Err(e.into()),
    };
    if cli.json {
        println!("{}", String::from_utf8_lossy(&body));
    }
    if status != 200 {
        let msg = serde_json::from_slice::<ApiError>(&body)
            .map(|e| e.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
        return Err(Fail(EXIT_FAILED, anyhow::anyhow!("{msg}")));
    }
    if !cli.json {
        match serde_json::from_slice::<ApiAccepted>(&body) {
            Ok(a) => {
                println!("acceptance number {}", a.acceptance_number);
                for g in a.grants {
                    println!("  {} {} -> VPNNAT {}", g.name, g.real, g.vpnnat);
                }
            }
            Err(_) => match serde_json::from_slice::<vpnnat_router::web::ApiEnded>(&body) {
                Ok(e) => println!("{}", e.message()),
                Err(_) => println!("ok"),
            },
        }
    }
    Ok(())
}

/// `--fake-datapath`: the in-memory kernel without the test fake's record
/// of every change (which would grow with every grant of a long run).
#[derive(Debug)]
struct SimulatedKernel(RecordingDatapath);

impl Datapath for SimulatedKernel {
    fn observe(&mut self) -> Result<vpnnat_datapath::ObservedState, vpnnat_datapath::DatapathError> {
        self.0.observe()
    }

    fn apply(&mut self, changes: &[vpnnat_datapath::Change]) -> Result<(), vpnnat_datapath::DatapathError> {
        let r = self.0.apply(changes);
        self.0.log = Vec::new();
        r
    }

    fn host_counters(&mut self) -> Result<Vec<vpnnat_datapath::nft::HostCounter>, vpnnat_datapath::DatapathError> {
        self.0.host_counters()
    }
}

fn run(cli: &Cli, fake_datapath: bool, pid1: bool) -> Result<(), Fail> {
    let cfg = Arc::new(load(cli)?);
    vpnnat_router::logring::configure(cfg.log_level.as_deref(), cfg.log_format, pid1);
    if pid1 {
        init::boot(&cfg).context("init duties")?;
    }
    let datapath: Box<dyn Datapath + Send> = if fake_datapath {
        log::warn!("--fake-datapath: kernel state is only simulated");
        Box::new(SimulatedKernel(RecordingDatapath::new()))
    } else {
        // With its LAN side: operator connections from an address inside
        // the LAN's own prefix (a LAN that overlaps the center's) leave
        // toward the host from the router's LAN address (issue 17 item 6).
        let table = NatTable::default().with_lan(LanSide {
            interface: cfg.lan.name.clone(),
            prefix: cfg.lan.subnet(),
        });
        let dp = KernelDatapath::open(table).context("opening the kernel datapath (needs root)")?;
        // A home router's firewall: nothing from the WAN reaches the LAN or
        // the router's LAN-side pages unless it came out of the tunnel.
        dp.guard_wan(&cfg.wan.name)
            .with_context(|| format!("installing the WAN guard on {}", cfg.wan.name))?;
        log::info!(
            "WAN guard on {}: only the tunnel, IKE, DHCP, ICMP and replies get in",
            cfg.wan.name
        );
        Box::new(dp)
    };
    // glibc gives every thread that allocates its own malloc arena, which
    // the blocking pool's short-lived threads (DNS lookups) would keep
    // multiplying; two arenas keep the router's RSS flat.
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only tunes the allocator; called before the runtime
    // starts any thread.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(4)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        // The real responder binds UDP 500/4500 and installs XFRM SAs, so it
        // goes with the kernel datapath; it starts once settings exist.
        let ike: Box<dyn IkeResponder> = if fake_datapath {
            Box::new(StaticResponder::default())
        } else {
            Box::new(IkeDriverResponder::kernel(&cfg.terminal_id))
        };
        let router = Router::new(
            cfg.clone(),
            Parts {
                datapath,
                ike,
                retry_initial: Duration::from_secs(1),
                health: HealthSettings {
                    period: cfg.health_period,
                    ..HealthSettings::default()
                },
                center_source: None,
            },
        )
        .await?;
        let lan = tokio::net::TcpListener::bind(cfg.web_ui_listen)
            .await
            .with_context(|| format!("binding the LAN page to {}", cfg.web_ui_listen))?;
        let center = tokio::net::TcpListener::bind(cfg.server_part_listen)
            .await
            .with_context(|| format!("binding the server part to {}", cfg.server_part_listen))?;
        log::info!(
            "routerd {} for terminal {}: LAN page on {}, center commands on {}",
            env!("CARGO_PKG_VERSION"),
            cfg.terminal_id,
            cfg.web_ui_listen,
            cfg.server_part_listen
        );
        let helpers = if pid1 {
            Some(init::Supervisor::start(&cfg.helpers, router.clone(), true))
        } else {
            None
        };
        daemon::serve(router, lan, center, init::shutdown_signal()).await;
        if let Some(h) = helpers {
            h.stop().await;
        }
        Ok::<(), Fail>(())
    })?;
    if pid1 {
        init::power_off();
    }
    Ok(())
}
