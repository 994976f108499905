//! vpnnat-ike: one IKEv2 tunnel with the project's driver, for tests and
//! by-hand use. The PSK comes from the environment variable
//! `VPNNAT_IKE_PSK` (never the command line, never logged).
//!
//! Prints one line per event on stdout (`UP <peer> nat=<0|1>`,
//! `CHILD_UP <peer> <in-spi> <out-spi>`, `CHILD_DOWN ..`, `DOWN <peer>
//! <reason>`, `REJECTED <from> <error>`, `IKE_SA <peer> <spi-i> <spi-r>`
//! whenever the IKE SA is new), runs until SIGTERM/SIGINT and then deletes
//! the tunnel (INFORMATIONAL DELETE) and its SAs. SIGUSR1 rekeys the IKE
//! SA, SIGUSR2 the CHILD SA. `vpnnat-ike tool ...`: test helpers
//! (tools.rs); `vpnnat-ike gateway ...`: gatewayd's command API as centerd
//! drives it (gateway.rs).

mod gateway;
mod tools;

use std::io::Write;
use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use tokio::signal::unix::{signal, SignalKind};
use vpnnat_datapath::Lifetime;
use vpnnat_ike::{DownReason, Identity, Secret, TrafficSelector};
use vpnnat_ike_driver::{DriverConfig, DriverEvent, IkeDriver, Ports, TunnelConfig};
use zeroize::Zeroize;

const PSK_ENV: &str = "VPNNAT_IKE_PSK";

#[derive(Parser, Debug)]
#[command(about = "IKEv2 tunnel with the vpnnat driver (PSK from $VPNNAT_IKE_PSK)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Gateway role: start the tunnel to --peer.
    Initiate {
        #[command(flatten)]
        t: TunnelArgs,
        /// Exit (status 1) when the tunnel goes down for any other reason
        /// than our own shutdown.
        #[arg(long)]
        exit_on_down: bool,
        /// Start the driver, print `READY`, and connect only on SIGHUP
        /// (each SIGHUP connects; the benchmark's "initiate command").
        #[arg(long)]
        connect_on_hup: bool,
    },
    /// Router role: accept the tunnel from --peer only.
    Respond {
        #[command(flatten)]
        t: TunnelArgs,
    },
    /// Gateway role, timed: --count times connect, wait until the CHILD SA
    /// is in the kernel (TunnelUp), disconnect; prints the median.
    Bench {
        #[command(flatten)]
        t: TunnelArgs,
        #[arg(long, default_value_t = 20)]
        count: usize,
    },
    /// Test helpers (raw UDP, capture, TCP transfer, SA observer).
    #[command(subcommand)]
    Tool(tools::Tool),
    /// Command a gatewayd as centerd does (VM scenarios with a foreign
    /// router, e.g. strongSwan dialing in; keys from the environment).
    Gateway(gateway::GatewayArgs),
}

#[derive(Args, Debug)]
struct TunnelArgs {
    /// Local address (both sockets are bound to it).
    #[arg(long)]
    local: Ipv4Addr,
    /// The peer's address.
    #[arg(long)]
    peer: Ipv4Addr,
    /// Our side of the tunnel, CIDR (repeatable).
    #[arg(long = "local-ts", required = true)]
    local_ts: Vec<String>,
    /// The peer's side, CIDR (repeatable).
    #[arg(long = "remote-ts", required = true)]
    remote_ts: Vec<String>,
    /// reqid of the SAs (the policies' templates use the same).
    #[arg(long, value_parser = parse_u32, default_value = "0x56500001")]
    reqid: u32,
    #[arg(long, default_value_t = 500)]
    ike_port: u16,
    #[arg(long, default_value_t = 4500)]
    natt_port: u16,
    /// Our identity as an FQDN (default: ID_IPV4_ADDR of --local).
    #[arg(long)]
    id: Option<String>,
    /// CHILD SA soft lifetime in seconds (kernel expire -> rekey).
    #[arg(long, default_value_t = 3000)]
    soft_secs: u64,
    /// CHILD SA hard lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    hard_secs: u64,
    /// Rekey the IKE SA every this many seconds (0: never).
    #[arg(long, default_value_t = 0)]
    ike_rekey_secs: u64,
}

fn parse_u32(s: &str) -> Result<u32, String> {
    match s.strip_prefix("0x") {
        Some(h) => u32::from_str_radix(h, 16).map_err(|e| e.to_string()),
        None => s.parse().map_err(|e: std::num::ParseIntError| e.to_string()),
    }
}

fn parse_ts(s: &str) -> Result<TrafficSelector> {
    let (a, l) = s.split_once('/').unwrap_or((s, "32"));
    let addr: Ipv4Addr = a.parse().with_context(|| format!("bad address in {s}"))?;
    let len: u8 = l.parse().with_context(|| format!("bad prefix length in {s}"))?;
    if len > 32 {
        bail!("bad prefix length in {s}");
    }
    Ok(TrafficSelector::subnet(addr, len))
}

fn read_psk() -> Result<Secret> {
    let mut v = std::env::var(PSK_ENV).with_context(|| format!("{PSK_ENV} is not set"))?;
    std::env::remove_var(PSK_ENV);
    let s = Secret::from_slice(v.as_bytes());
    v.zeroize();
    if s.is_empty() {
        bail!("{PSK_ENV} is empty");
    }
    Ok(s)
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let (t, initiator, exit_on_down, bench, on_hup) = match cli.cmd {
        Cmd::Initiate {
            t,
            exit_on_down,
            connect_on_hup,
        } => (t, true, exit_on_down, None, connect_on_hup),
        Cmd::Respond { t } => (t, false, false, None, false),
        Cmd::Bench { t, count } => (t, true, true, Some(count), false),
        Cmd::Tool(t) => return tools::run(t),
        Cmd::Gateway(g) => return gateway::run(g).await,
    };
    let psk = read_psk()?;
    let mut cfg = DriverConfig::new(t.local);
    cfg.ports = Ports {
        ike: t.ike_port,
        natt: t.natt_port,
    };
    if let Some(id) = &t.id {
        cfg.identity = Identity::fqdn(id);
    }
    cfg.child_lifetime = Lifetime {
        soft_secs: Some(t.soft_secs),
        hard_secs: Some(t.hard_secs),
    };
    cfg.ike_rekey_interval = (t.ike_rekey_secs > 0).then(|| Duration::from_secs(t.ike_rekey_secs));
    let tunnel = TunnelConfig {
        peer: t.peer,
        psk,
        local_ts: t.local_ts.iter().map(|s| parse_ts(s)).collect::<Result<_>>()?,
        remote_ts: t.remote_ts.iter().map(|s| parse_ts(s)).collect::<Result<_>>()?,
        reqid: t.reqid,
        remote_id: None,
        log_label: String::new(),
    };
    let (drv, mut events) = IkeDriver::start_kernel(cfg).await.context("starting the IKE driver")?;
    if let Some(count) = bench {
        return run_bench(&drv, &mut events, tunnel, count).await;
    }
    let peer = tunnel.peer;
    let mut hup = signal(SignalKind::hangup())?;
    if on_hup {
        say("READY");
    } else if initiator {
        drv.connect(tunnel.clone()).await?;
    } else {
        drv.accept(tunnel.clone()).await?;
    }
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut usr1 = signal(SignalKind::user_defined1())?;
    let mut usr2 = signal(SignalKind::user_defined2())?;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut ike_sa = None;
    let mut status = 0;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = usr1.recv() => {
                if let Err(e) = drv.rekey_ike(peer).await {
                    say(&format!("REKEY_REFUSED ike {e}"));
                }
            }
            _ = usr2.recv() => {
                if let Err(e) = drv.rekey_child(peer).await {
                    say(&format!("REKEY_REFUSED child {e}"));
                }
            }
            _ = hup.recv(), if on_hup => {
                if let Err(e) = drv.connect(tunnel.clone()).await {
                    say(&format!("CONNECT_REFUSED {e}"));
                }
            }
            _ = tick.tick() => {}
            ev = events.recv() => {
                let Some(ev) = ev else { break };
                if !print_event(ev) && exit_on_down {
                    status = 1;
                    break;
                }
            }
        }
        let now = drv.ike_spis(peer);
        if now != ike_sa {
            if let Some((i, r)) = now {
                say(&format!("IKE_SA {peer} {i:016x} {r:016x}"));
            }
            ike_sa = now;
        }
    }
    drv.shutdown().await;
    // What the shutdown itself produced (DELETE done, SAs removed).
    while let Ok(ev) = events.try_recv() {
        print_event(ev);
    }
    say("STOPPED");
    std::process::exit(status);
}

/// Prints one event line; `false` when the tunnel went down for another
/// reason than our own close.
fn print_event(ev: DriverEvent) -> bool {
    match ev {
        DriverEvent::TunnelUp { peer, nat } => say(&format!("UP {peer} nat={}", u8::from(nat))),
        DriverEvent::TunnelDown { peer, reason } => {
            say(&format!("DOWN {peer} {reason:?}"));
            return reason == DownReason::Closed;
        }
        DriverEvent::ChildSaInstalled {
            peer,
            inbound_spi,
            outbound_spi,
        } => {
            say(&format!("CHILD_UP {peer} {inbound_spi:#010x} {outbound_spi:#010x}"));
        }
        DriverEvent::ChildSaRemoved {
            peer,
            inbound_spi,
            outbound_spi,
        } => {
            say(&format!("CHILD_DOWN {peer} {inbound_spi:#010x} {outbound_spi:#010x}"));
        }
        DriverEvent::RekeyFailed { peer, child } => say(&format!("REKEY_FAILED {peer} {child:?}")),
        DriverEvent::Rejected { from, error } => say(&format!("REJECTED {from} {error}")),
        DriverEvent::KernelError { sa, error } => say(&format!("KERNEL_ERROR {sa} {error}")),
        DriverEvent::DialInUp { identity, remote, nat } => say(&format!(
            "DIAL_IN_UP {} {remote} nat={}",
            String::from_utf8_lossy(&identity.data),
            u8::from(nat)
        )),
        DriverEvent::DialInDown { identity, reason } => {
            say(&format!(
                "DIAL_IN_DOWN {} {reason:?}",
                String::from_utf8_lossy(&identity.data)
            ));
        }
    }
    true
}

async fn next_event(events: &mut tokio::sync::mpsc::UnboundedReceiver<DriverEvent>) -> Result<DriverEvent> {
    match tokio::time::timeout(Duration::from_secs(30), events.recv()).await {
        Ok(Some(ev)) => Ok(ev),
        Ok(None) => bail!("the driver stopped"),
        Err(_) => bail!("no event within 30 s"),
    }
}

async fn run_bench(
    drv: &vpnnat_ike_driver::DriverHandle,
    events: &mut tokio::sync::mpsc::UnboundedReceiver<DriverEvent>,
    tunnel: TunnelConfig,
    count: usize,
) -> Result<()> {
    let peer = tunnel.peer;
    let mut times = Vec::with_capacity(count);
    for _ in 0..count {
        let t0 = std::time::Instant::now();
        drv.connect(tunnel.clone()).await?;
        loop {
            match next_event(events).await? {
                DriverEvent::TunnelUp { .. } => break,
                DriverEvent::TunnelDown { reason, .. } => bail!("tunnel down while connecting: {reason:?}"),
                _ => {}
            }
        }
        times.push(t0.elapsed());
        drv.disconnect(peer).await?;
        while !matches!(next_event(events).await?, DriverEvent::TunnelDown { .. }) {}
    }
    drv.shutdown().await;
    times.sort();
    let ms = |d: Option<&Duration>| d.map_or(0.0, |d| d.as_secs_f64() * 1000.0);
    say(&format!(
        "BENCH initiate->installed n={count} median_ms={:.1} min_ms={:.1} max_ms={:.1}",
        ms(times.get(count / 2)),
        ms(times.first()),
        ms(times.last())
    ));
    Ok(())
}
