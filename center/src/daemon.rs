//! centerd's wiring: the database, the [`Center`] over real gateway and
//! router clients, the three servers (router API, operator UI, DNS) and the
//! background loops (reconciliation, one heartbeat per gateway, the
//! grants' time limits), run until
//! a shutdown future completes. The `centerd` binary only parses its
//! command line and calls [`serve`]; tests drive the whole daemon here.

mod expiry;
mod heartbeat;
mod reconcile;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::center::{Center, CenterError};
use crate::clients::{HttpGateways, HttpRouters};
use crate::config::{CenterdConfig, ConfigError};
use crate::routes::KernelRoutes;
use crate::storage::{Storage, StorageError};
use crate::{api, ui};

/// The log target of the daemon's own lines: the binary's name, as when
/// this wiring lived in it (log filters and readers keep working).
pub(crate) const LOG_TARGET: &str = "centerd";

/// The center with its real command channels (HTTP to gateways and routers).
pub type RealCenter = Center<HttpGateways, HttpRouters>;

/// Why centerd could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("configuration {path}")]
    Config {
        path: PathBuf,
        #[source]
        source: ConfigError,
    },
    #[error("database {path}")]
    Database {
        path: PathBuf,
        #[source]
        source: StorageError,
    },
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Center(#[from] CenterError),
    #[error("{what} {path}")]
    File {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("opening rtnetlink for host routes")]
    Routes(#[source] vpnnat_datapath::DatapathError),
    #[error("listening on {addr}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("a server task failed")]
    Task(#[from] tokio::task::JoinError),
}

impl DaemonError {
    /// A configuration that cannot be read or does not fit the database
    /// (exit status 2: the systemd unit does not restart on it).
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            DaemonError::Config { .. }
                | DaemonError::Database {
                    source: StorageError::PoolMismatch { .. } | StorageError::SchemaTooNew { .. },
                    ..
                }
                | DaemonError::Storage(StorageError::PoolMismatch { .. } | StorageError::SchemaTooNew { .. })
        )
    }
}

/// Why [`serve`] returned. centerd stops only when told to (unlike
/// routerd, nothing inside it asks for a stop).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The shutdown future completed; the servers drained.
    Shutdown,
}

/// The sockets centerd serves on, bound before [`serve`] (tests bind port
/// 0; the binary binds the configured addresses with [`Listeners::bind`]).
#[derive(Debug)]
pub struct Listeners {
    pub router_api: TcpListener,
    pub ui: TcpListener,
    /// None: no `[dns]`, or its port could not be bound.
    pub dns: Option<crate::dns::DnsListeners>,
}

impl Listeners {
    /// Binds the configured addresses.
    pub async fn bind(cfg: &CenterdConfig) -> Result<Self, DaemonError> {
        let tcp = |addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| DaemonError::Listen { addr, source })
        };
        let router_api = tcp(cfg.router_listen).await?;
        let ui = tcp(cfg.ui_listen).await?;
        let dns = match &cfg.dns {
            // DNS is a convenience: when its port cannot be bound the router
            // API and the UI still run (and the error says why names fail).
            Some(d) => match crate::dns::DnsListeners::bind(d.listen).await {
                Ok(sock) => Some(sock),
                Err(e) => {
                    log::error!(target: LOG_TARGET, "centerd: no DNS: cannot bind dns.listen {}: {e}", d.listen);
                    None
                }
            },
            None => None,
        };
        Ok(Listeners { router_api, ui, dns })
    }
}

/// Reads and validates the configuration file.
pub fn load_config(path: &std::path::Path) -> Result<CenterdConfig, DaemonError> {
    CenterdConfig::load(path).map_err(|source| DaemonError::Config {
        path: path.to_owned(),
        source,
    })
}

/// Opens (creating it owner-only if needed) the database and checks it
/// against the configured pool.
pub fn open_store(cfg: &CenterdConfig) -> Result<Storage, DaemonError> {
    let path = &cfg.database_path;
    let existed = path.exists();
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| DaemonError::File {
                what: "creating",
                path: dir.to_owned(),
                source,
            })?;
    }
    let mut st = open_database(path)?;
    if !existed {
        // The database holds PSKs and Secret(ID2)s: owner only.
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|source| DaemonError::File {
            what: "chmod 600",
            path: path.clone(),
            source,
        })?;
    }
    st.init_pool(&cfg.pool)?;
    Ok(st)
}

fn open_database(path: &std::path::Path) -> Result<Storage, DaemonError> {
    Storage::open(path).map_err(|source| DaemonError::Database {
        path: path.to_owned(),
        source,
    })
}

/// The center over the database, with HTTP clients for the configured
/// gateways and routers (and kernel host routes when configured).
pub fn build_center(cfg: CenterdConfig) -> Result<RealCenter, DaemonError> {
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
    let reader = open_database(&cfg.database_path)?;
    let center = Center::new(store, cfg.settings, gws, routers)?.with_reader(reader);
    if host_routes {
        let r = KernelRoutes::open().map_err(DaemonError::Routes)?;
        // This host routes the pool to the gateways from now on: no
        // redirect may send an operator to a gateway directly
        // (vpnnat_datapath::sysctl::stop_icmp_redirects says why).
        let n = vpnnat_datapath::sysctl::stop_icmp_redirects().map_err(DaemonError::Routes)?;
        log::info!(target: LOG_TARGET, "host routes to the gateways: ICMP redirects off ({n} interface settings)");
        return Ok(center.with_routes(Box::new(r)));
    }
    Ok(center)
}

/// Runs centerd on `listeners` until `shutdown` completes: the router API,
/// the operator UI and the DNS zone (when configured and bound), the
/// reconcile loop and a heartbeat per gateway. On shutdown the loops stop
/// and the servers drain their connections before this returns.
pub async fn serve(
    cfg: CenterdConfig,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> Result<StopReason, DaemonError> {
    let ui_settings = ui::UiSettings {
        operator_hashes: cfg.operator_hashes.clone(),
        session_ttl: cfg.session_ttl,
        dns_domain: cfg.dns.as_ref().map(|d| d.zone.domain.clone()),
        throttle: Default::default(),
        operator_networks: cfg.operator_networks.clone(),
        hash_slots: ui::DEFAULT_HASH_SLOTS,
        account_iterations: crate::password::DEFAULT_ITERATIONS,
        totp_required_roles: cfg.totp_required_roles.clone(),
        clock: ui::Clock::system(),
    };
    let zone = cfg.dns.as_ref().map(|d| (d.zone.clone(), d.limits));
    let reconcile_interval = cfg.reconcile_interval;
    let heartbeat = cfg.heartbeat;
    let api_settings = api::ApiSettings {
        trusted_proxies: cfg.trusted_proxies.clone(),
    };
    let work_lock = crate::work_lock::WorkLock::beside(&cfg.database_path);
    let center = Arc::new(build_center(cfg)?.with_work_lock(work_lock));
    // The first start: the shared passwords become admin accounts.
    let made = crate::accounts::manage::seed_admins(
        &mut *center.store()?,
        &ui_settings.operator_hashes,
        crate::http::unix_now(),
    )?;
    if !made.is_empty() {
        log::info!(target: LOG_TARGET,
            "centerd: operator account(s) {} (admin) made from operators.password_hashes",
            made.join(", ")
        );
    }
    let Listeners { router_api, ui, dns } = listeners;
    log::info!(target: LOG_TARGET,
        "centerd: router API on {}, operator UI on http://{}/",
        local(&router_api.local_addr()),
        local(&ui.local_addr())
    );
    let (tx, rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };
    let dns_task = match (dns, zone) {
        (Some(sock), Some((zone, limits))) => {
            log::info!(target: LOG_TARGET, "centerd: DNS for {} on {}", zone.domain, local(&sock.udp.local_addr()));
            Some(tokio::spawn(crate::dns::serve(
                sock,
                stopped(rx.clone()),
                center.clone(),
                zone,
                limits,
            )))
        }
        _ => None,
    };
    let servers = tokio::spawn({
        let c = center.clone();
        let (r1, r2) = (rx.clone(), rx);
        async move {
            tokio::join!(
                api::run_with(router_api, stopped(r1), c.clone(), api_settings),
                ui::run(ui, stopped(r2), c, ui_settings)
            );
        }
    });
    let reconciler = tokio::spawn(reconcile::run(center.clone(), reconcile_interval));
    let expirer = tokio::spawn(expiry::run(center.clone()));
    let watchers: Vec<_> = match heartbeat {
        Some(hb) => center
            .settings()
            .gateways
            .iter()
            .map(|g| tokio::spawn(heartbeat::run(center.clone(), g.name.to_string(), hb)))
            .collect(),
        None => Vec::new(),
    };
    shutdown.await;
    log::info!(target: LOG_TARGET, "centerd: shutting down");
    reconciler.abort();
    expirer.abort();
    for w in &watchers {
        w.abort();
    }
    let _ = tx.send(true);
    servers.await?;
    if let Some(t) = dns_task {
        t.await?;
    }
    Ok(StopReason::Shutdown)
}

/// A listener's address for the log line ("?" if the kernel cannot say).
fn local(addr: &std::io::Result<SocketAddr>) -> String {
    addr.as_ref().map_or_else(|_| "?".into(), ToString::to_string)
}
