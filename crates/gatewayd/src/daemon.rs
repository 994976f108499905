//! gatewayd's wiring: the tunnel driver the configuration asks for (kernel
//! or recording datapath, with or without IKE), a reconcile at start, the
//! command API on a listener and the event push to centerd, run until a
//! shutdown future completes. The `gatewayd` binary only parses its
//! command line and calls [`serve`].

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};
use vpnnat_datapath::nft::gateway::GatewayFilter;
use vpnnat_datapath::nft::{NatTable, Nft, NftApply, RecordingNft};
use vpnnat_datapath::{DatapathError, KernelDatapath, RecordingDatapath};
use vpnnat_ike_driver::{DriverConfig, DriverHandle, IkeDriver, RecordingInstaller};

use crate::config::{DatapathKind, GatewaydConfig};
use crate::driver::{DriverEvent, PolicyDatapath, PolicyDriver, TunnelDriver};
use crate::filter;
use crate::ike::IkeTunnelDriver;
use crate::{forward_events_counted, run_with, GatewayError, Gatewayd};

/// The log target of the daemon's own lines: the binary's name, as when
/// this wiring lived in it.
const LOG_TARGET: &str = "gatewayd";

/// Why gatewayd could not start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("opening the kernel datapath")]
    Datapath(#[source] DatapathError),
    #[error("setting the XFRM policy hash thresholds")]
    HashThresholds(#[source] DatapathError),
    #[error("starting IKE on {addr}")]
    Ike {
        addr: std::net::Ipv4Addr,
        #[source]
        source: vpnnat_ike_driver::DriverError,
    },
    #[error(transparent)]
    Gateway(#[from] GatewayError),
    #[error("reconciling the kernel at start")]
    Reconcile(#[source] GatewayError),
    #[error("installing the tunnel filter")]
    Filter(#[source] DatapathError),
    #[error("listening on {addr}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Why [`serve`] returned. gatewayd stops only when told to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The shutdown future completed; the IKE driver deleted its tunnels.
    Shutdown,
}

/// Binds the configured API address.
pub async fn bind(cfg: &GatewaydConfig) -> Result<TcpListener, DaemonError> {
    TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| DaemonError::Listen {
            addr: cfg.listen,
            source,
        })
}

/// Runs gatewayd on `listener` until `shutdown` completes. Nothing from a
/// previous run survives the start (centerd re-sends what it wants); on
/// shutdown every IKE tunnel is deleted and its SAs removed.
pub async fn serve(
    cfg: GatewaydConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<StopReason, DaemonError> {
    let (tx, rx) = unbounded_channel();
    // Issue 18, item 1: gatewayd's own filter table, through the same nft
    // path as the datapath (or its recorder without the kernel).
    // Installed before any tunnel can exist, never changed by a command.
    let mut nft: Box<dyn NftApply> = match cfg.datapath {
        DatapathKind::Kernel => Box::new(Nft::new(NatTable::default())),
        DatapathKind::Recording => Box::new(RecordingNft::default()),
    };
    filter::install(
        &GatewayFilter::new(cfg.tunnel_allow.clone(), cfg.vpnnat_networks.clone()),
        nft.as_mut(),
    )
    .map_err(DaemonError::Filter)?;
    let (driver, ike) = match cfg.datapath {
        DatapathKind::Kernel => {
            let mut dp = KernelDatapath::open(NatTable::default()).map_err(DaemonError::Datapath)?;
            // Hash the per-/32 policies instead of scanning them: every
            // policy pairs a center network with a /32, so thresholds at the
            // shortest center prefix cover all of them.
            let bits = cfg.center_networks.iter().map(|c| c.prefix_len()).min().unwrap_or(32);
            dp.xfrm
                .set_hash_thresholds(bits, bits)
                .map_err(DaemonError::HashThresholds)?;
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
    gw.reconcile().map_err(DaemonError::Reconcile)?;
    log::info!(
        target: LOG_TARGET,
        "gatewayd {}: tunnel filter up; {} allow-listed service(s){}",
        cfg.name,
        cfg.tunnel_allow.len(),
        cfg.tunnel_allow
            .iter()
            .map(|a| format!(" {a}"))
            .collect::<String>()
    );
    log::info!(
        target: LOG_TARGET,
        "gatewayd {}: API on {}",
        cfg.name,
        listener
            .local_addr()
            .map_or_else(|_| "?".into(), |a| a.to_string())
    );
    let events = tokio::spawn(forward_events_counted(
        rx,
        cfg.center.clone(),
        cfg.name.clone(),
        cfg.api_key.clone(),
        cfg.event_timeout,
        gw.event_counters(),
    ));
    // centerd is the API's one client: only its address may hold more
    // than the per-source share of connections.
    let centerd = cfg.center.authority.parse::<SocketAddr>().ok().map(|a| a.ip());
    run_with(listener, shutdown, gw, centerd).await;
    if let Some(h) = ike {
        // DELETE every tunnel and remove the SAs the driver installed.
        h.shutdown().await;
    }
    events.abort();
    log::info!(target: LOG_TARGET, "gatewayd: stopped");
    Ok(StopReason::Shutdown)
}

/// The policy driver alone, or wrapped with the IKE driver bound to the
/// global address (`kernel`: SAs into the kernel's XFRM; otherwise into a
/// recorder, for demos without root).
async fn with_ike<D: PolicyDatapath + 'static>(
    policy: PolicyDriver<D>,
    cfg: &GatewaydConfig,
    events: UnboundedSender<DriverEvent>,
    kernel: bool,
) -> Result<(Box<dyn TunnelDriver>, Option<DriverHandle>), DaemonError> {
    if !cfg.ike {
        return Ok((Box::new(policy), None));
    }
    let mut dcfg = DriverConfig::new(cfg.global_ip);
    // What routers check (issue 18, item 12): the identity centerd names
    // for this gateway.
    dcfg.identity = vpnnat_ike::Identity::from_text(cfg.ike_id.as_str());
    let started = if kernel {
        IkeDriver::start_kernel(dcfg).await
    } else {
        dcfg.kernel_events = false;
        IkeDriver::start(dcfg, Box::new(RecordingInstaller::new())).await
    };
    let (h, ike_events) = started.map_err(|source| DaemonError::Ike {
        addr: cfg.global_ip,
        source,
    })?;
    log::info!(
        target: LOG_TARGET,
        "gatewayd {}: IKE on {} as {}",
        cfg.name,
        h.local_addr(),
        vpnnat_ike::Identity::from_text(cfg.ike_id.as_str()).describe()
    );
    let identity = vpnnat_ike::Identity::from_text(cfg.ike_id.as_str());
    let driver = IkeTunnelDriver::new(policy, &cfg.center_networks, identity, h.clone(), ike_events, events);
    Ok((Box::new(driver), Some(h)))
}
