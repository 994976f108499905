//! vpnnat-ike-driver: the I/O layer around the IKEv2 core `vpnnat-ike`.
//!
//! The driver owns the UDP sockets (500, and 4500 with `UDP_ENCAP_ESPINUDP`
//! so the kernel decapsulates ESP-in-UDP), the clock and the random source;
//! it feeds datagrams and timer ticks into the core, sends what the core
//! outputs, installs and removes the negotiated CHILD SAs through the
//! datapath library ([`SaInstaller`], implemented by
//! `vpnnat_datapath::xfrm::Xfrm`) and reports tunnel up/down to its owner
//! as [`DriverEvent`]s on a channel.
//!
//! One driver serves both roles; the owner decides per peer:
//! - the gateway (initiator) calls [`DriverHandle::connect`] for each
//!   router;
//! - the router (responder) calls [`DriverHandle::accept`] for the one
//!   gateway it was assigned; IKE from any other address is dropped.
//!
//! XFRM *policies* stay with the owner (gatewayd/routerd program them with
//! the VPNNAT addresses and the tunnel's `reqid`); the driver installs SAs
//! with that `reqid` so the policies' templates find them.
//!
//! ```no_run
//! # async fn f() -> Result<(), vpnnat_ike_driver::DriverError> {
//! use vpnnat_ike_driver::{DriverConfig, DriverEvent, IkeDriver, TunnelConfig};
//! use vpnnat_ike::{Secret, TrafficSelector};
//! let cfg = DriverConfig::new("198.51.100.21".parse().unwrap());
//! let (drv, mut events) = IkeDriver::start_kernel(cfg).await?;
//! drv.connect(TunnelConfig {
//!     peer: "203.0.113.101".parse().unwrap(),
//!     psk: Secret::from_slice(b"per-router key"),
//!     local_ts: vec![TrafficSelector::subnet("172.16.0.0".parse().unwrap(), 24)],
//!     remote_ts: vec![TrafficSelector::host("10.64.0.5".parse().unwrap())],
//!     reqid: 0x5650_0001,
//!     remote_id: None,
//!     log_label: "terminal=home-1".into(),
//! }).await?;
//! while let Some(ev) = events.recv().await {
//!     if let DriverEvent::TunnelUp { peer, .. } = ev { println!("{peer} up"); }
//! }
//! # Ok(()) }
//! ```

mod driver;
pub mod drop_log;
pub mod kernel;
pub mod net;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use vpnnat_datapath::{DatapathError, Lifetime, SaId, SaSpec};
use vpnnat_ike::{DownReason, Identity, Secret, TrafficSelector};

pub use driver::{DialInConfig, ReqidOf};
pub use kernel::{CountingSpis, Expire, KernelSpis, Mapping, RecordingInstaller, SaInstaller, SaOp, SpiAllocator};
pub use net::Ports;

/// Errors of the driver and its API.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// A socket could not be bound or configured.
    #[error("binding UDP {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Another I/O failure (thread spawn, socket registration).
    #[error("I/O: {0}")]
    Io(#[source] std::io::Error),
    /// The kernel (XFRM netlink) refused.
    #[error("kernel: {0}")]
    Kernel(#[source] DatapathError),
    /// The protocol core refused the request (e.g. an invalid config).
    #[error("IKE: {0}")]
    Ike(#[from] vpnnat_ike::Error),
    /// No tunnel is configured for this peer.
    #[error("no tunnel with {0}")]
    UnknownPeer(Ipv4Addr),
    /// The peer is already configured in the other role.
    #[error("{0} is already configured as {1}")]
    WrongRole(Ipv4Addr, &'static str),
    /// The driver task has stopped.
    #[error("the IKE driver has stopped")]
    Stopped,
    /// No dial-in listener is set ([`DriverHandle::listen`]).
    #[error("not accepting dial-in IKE")]
    NotListening,
}

/// Settings of one driver (one local address).
#[derive(Debug, Clone)]
pub struct DriverConfig {
    /// The address to bind both sockets to and to use as tunnel endpoint.
    pub local: Ipv4Addr,
    /// UDP ports (500/4500 unless testing).
    pub ports: Ports,
    /// Our IKE identity (IDi/IDr). Default: ID_IPV4_ADDR of `local`.
    pub identity: Identity,
    /// Kernel lifetimes of each CHILD SA; the soft one triggers a rekey.
    pub child_lifetime: Lifetime,
    /// Rekey the IKE SA this long after it was established or last
    /// rekeyed (`None`: only on request).
    pub ike_rekey_interval: Option<Duration>,
    /// Anti-replay window of the inbound SAs, in packets.
    pub replay_window: u32,
    /// Liveness check after this long without hearing from the peer.
    pub dpd_interval: Option<Duration>,
    /// Subscribe to kernel XFRM expire events (needs CAP_NET_ADMIN).
    pub kernel_events: bool,
    /// How long [`DriverHandle::shutdown`] waits for DELETE answers.
    pub shutdown_grace: Duration,
    /// Dropped datagrams are logged as one summary line per interval
    /// ([`drop_log`]), never one line each.
    pub drop_log_interval: Duration,
}

impl DriverConfig {
    /// Defaults: ports 500/4500, identity = `local`, CHILD SA soft/hard
    /// lifetime 50/60 minutes, IKE SA rekey every 4 hours, replay window
    /// 64, DPD after 30 s, kernel expire events on, dropped datagrams
    /// summed up every 10 s.
    pub fn new(local: Ipv4Addr) -> Self {
        Self {
            local,
            ports: Ports::default(),
            identity: Identity::ipv4(local),
            child_lifetime: Lifetime {
                soft_secs: Some(3000),
                hard_secs: Some(3600),
            },
            ike_rekey_interval: Some(Duration::from_secs(4 * 3600)),
            replay_window: 64,
            dpd_interval: Some(Duration::from_secs(30)),
            kernel_events: true,
            shutdown_grace: Duration::from_secs(3),
            drop_log_interval: Duration::from_secs(10),
        }
    }
}

/// One tunnel's parameters (one IKE SA with one CHILD SA).
#[derive(Debug, Clone)]
pub struct TunnelConfig {
    /// The peer's address (IKE on its port 500).
    pub peer: Ipv4Addr,
    /// The pre-shared key (never logged; `Secret`'s Debug is redacted).
    pub psk: Secret,
    /// Our side: initiator = the TSi proposed (center networks); responder
    /// = what we allow on our side (granted VPNNAT addresses).
    pub local_ts: Vec<TrafficSelector>,
    /// The peer's side.
    pub remote_ts: Vec<TrafficSelector>,
    /// `reqid` of the SAs (the owner's policies use the same).
    pub reqid: u32,
    /// The identity the peer must present (`None`: any).
    pub remote_id: Option<Identity>,
    /// Put in front of the driver's log lines about this tunnel, e.g.
    /// `terminal=home-1` (the daemons' convention); empty: none.
    pub log_label: String,
}

/// What the driver reports to its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DriverEvent {
    /// The tunnel with `peer` is up: its first CHILD SA pair is in the
    /// kernel.
    TunnelUp {
        /// The peer.
        peer: Ipv4Addr,
        /// A NAT was detected (ESP-in-UDP in use).
        nat: bool,
    },
    /// The tunnel is gone and its SAs were removed from the kernel.
    TunnelDown {
        /// The peer.
        peer: Ipv4Addr,
        /// Why.
        reason: DownReason,
    },
    /// A CHILD SA pair was installed (also after each rekey).
    ChildSaInstalled {
        /// The peer.
        peer: Ipv4Addr,
        /// Our inbound SPI.
        inbound_spi: u32,
        /// Our outbound SPI.
        outbound_spi: u32,
    },
    /// A CHILD SA pair was removed.
    ChildSaRemoved {
        /// The peer.
        peer: Ipv4Addr,
        /// Our inbound SPI.
        inbound_spi: u32,
        /// Our outbound SPI.
        outbound_spi: u32,
    },
    /// A rekey failed; the old SAs stay in use (retried on the next soft
    /// expire or request).
    RekeyFailed {
        /// The peer.
        peer: Ipv4Addr,
        /// The CHILD SA (inbound SPI) or `None` for the IKE SA.
        child: Option<u32>,
    },
    /// A datagram was rejected (unknown peer, malformed, authentication
    /// failure...). Informational; the text has no secrets. At most
    /// [`drop_log::MAX_EVENTS`] per drop-log interval: a flood is counted
    /// in the driver's summary line, not queued here one event each.
    Rejected {
        /// Where it came from.
        from: IpAddr,
        /// Why.
        error: String,
    },
    /// A router that dialed in (issue 17) has its tunnel: its first CHILD
    /// SA pair is in the kernel.
    DialInUp {
        /// The identity it authenticated as.
        identity: Identity,
        /// Where its IKE came from (its NAT's public address and port).
        remote: SocketAddr,
        /// A NAT was detected (ESP-in-UDP in use).
        nat: bool,
    },
    /// A dialed-in router's tunnel is gone; its SAs were removed.
    DialInDown {
        /// Its identity.
        identity: Identity,
        /// Why.
        reason: DownReason,
    },
    /// The kernel refused an SA.
    KernelError {
        /// The SA.
        sa: SaId,
        /// The kernel's error.
        error: String,
    },
}

pub(crate) type Reply = oneshot::Sender<Result<(), DriverError>>;

#[derive(Debug)]
pub(crate) enum Cmd {
    Connect(TunnelConfig, Reply),
    Accept(TunnelConfig, Reply),
    Disconnect(Ipv4Addr, Reply),
    Restart(TunnelConfig, Reply),
    SetTs(Ipv4Addr, Vec<TrafficSelector>, Vec<TrafficSelector>, Reply),
    RekeyChild(Ipv4Addr, Reply),
    RekeyIke(Ipv4Addr, Reply),
    Expired(Expire),
    Mapped(Mapping),
    Shutdown(oneshot::Sender<()>),
    Listen(DialInConfig, Reply),
    HangUp(Identity, Reply),
    Refresh(Identity, Reply),
}

/// A request for [`DriverHandle::request_detached`].
#[derive(Debug, Clone)]
pub enum Request {
    /// [`DriverHandle::connect`].
    Connect(TunnelConfig),
    /// [`DriverHandle::accept`].
    Accept(TunnelConfig),
    /// [`DriverHandle::disconnect`].
    Disconnect(Ipv4Addr),
    /// [`DriverHandle::restart`].
    Restart(TunnelConfig),
    /// [`DriverHandle::set_traffic_selectors`].
    SetTrafficSelectors(Ipv4Addr, Vec<TrafficSelector>, Vec<TrafficSelector>),
    /// [`DriverHandle::hang_up`].
    HangUp(Identity),
    /// [`DriverHandle::refresh_dial_in`].
    RefreshDialIn(Identity),
}

impl Request {
    fn describe(&self) -> String {
        match self {
            Request::Connect(t) => format!("connect to {}", t.peer),
            Request::Accept(t) => format!("accept from {}", t.peer),
            Request::Disconnect(p) => format!("disconnect from {p}"),
            Request::Restart(t) => format!("restart with {}", t.peer),
            Request::SetTrafficSelectors(p, ..) => format!("new traffic selectors with {p}"),
            Request::HangUp(i) => format!("hang up on {}", String::from_utf8_lossy(&i.data)),
            Request::RefreshDialIn(i) => format!("refresh {}", String::from_utf8_lossy(&i.data)),
        }
    }
}

/// The driver entry point.
#[derive(Debug)]
pub struct IkeDriver;

impl IkeDriver {
    /// Binds the sockets and starts the driver task with the kernel's XFRM
    /// (needs CAP_NET_ADMIN and, for ports 500/4500, CAP_NET_BIND_SERVICE).
    pub async fn start_kernel(
        config: DriverConfig,
    ) -> Result<(DriverHandle, mpsc::UnboundedReceiver<DriverEvent>), DriverError> {
        let xfrm = vpnnat_datapath::xfrm::Xfrm::open().map_err(DriverError::Kernel)?;
        let spis = kernel::KernelSpis::open().map_err(DriverError::Kernel)?;
        driver::start(config, Box::new(xfrm), Some(std::sync::Arc::new(spis)))
    }

    /// Binds the sockets and starts the driver task with this SA installer
    /// (a fake in tests). Must be called inside a tokio runtime.
    pub async fn start(
        config: DriverConfig,
        installer: Box<dyn SaInstaller>,
    ) -> Result<(DriverHandle, mpsc::UnboundedReceiver<DriverEvent>), DriverError> {
        driver::start(config, installer, None)
    }

    /// Like [`IkeDriver::start`], with inbound SPIs from `spis` (the kernel
    /// uses [`kernel::KernelSpis`]; otherwise SPIs are random) installed
    /// with [`SaInstaller::update_sa`].
    pub async fn start_with_spis(
        config: DriverConfig,
        installer: Box<dyn SaInstaller>,
        spis: std::sync::Arc<dyn SpiAllocator>,
    ) -> Result<(DriverHandle, mpsc::UnboundedReceiver<DriverEvent>), DriverError> {
        driver::start(config, installer, Some(spis))
    }
}

/// Controls a running driver. Cheap to clone; the driver stops when
/// [`DriverHandle::shutdown`] is called or every handle is dropped.
#[derive(Debug, Clone)]
pub struct DriverHandle {
    tx: mpsc::UnboundedSender<Cmd>,
    local: SocketAddr,
    shared: kernel::SharedState,
}

impl DriverHandle {
    /// The local IKE address (port 500 or the configured one).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The SAs the driver has in the kernel right now (keys included:
    /// `SaKey` never prints them). An owner that reconciles the kernel
    /// against a desired state must include these (routerd's
    /// `IkeResponder::installed_sas`).
    pub fn installed_sas(&self) -> Vec<SaSpec> {
        self.shared.lock().map(|s| s.sas.clone()).unwrap_or_default()
    }

    /// Whether the tunnel with `peer` is up (its SAs are in the kernel).
    pub fn is_up(&self, peer: Ipv4Addr) -> bool {
        self.shared.lock().is_ok_and(|s| s.up.contains(&peer))
    }

    /// SPIs (initiator's, responder's) of the current IKE SA with `peer`,
    /// if one is established (they change with each IKE SA rekey).
    pub fn ike_spis(&self, peer: Ipv4Addr) -> Option<(u64, u64)> {
        self.shared.lock().ok().and_then(|s| s.ike.get(&peer).copied())
    }

    /// Sends a request without waiting for its answer, for synchronous
    /// callers (e.g. a `&mut self` trait method inside the runtime); a
    /// refusal is logged. Fails only if the driver has stopped.
    pub fn request_detached(&self, r: Request) -> Result<(), DriverError> {
        let (tx, rx) = oneshot::channel();
        let what = r.describe();
        let cmd = match r {
            Request::Connect(t) => Cmd::Connect(t, tx),
            Request::Accept(t) => Cmd::Accept(t, tx),
            Request::Disconnect(p) => Cmd::Disconnect(p, tx),
            Request::Restart(t) => Cmd::Restart(t, tx),
            Request::SetTrafficSelectors(p, l, r) => Cmd::SetTs(p, l, r, tx),
            Request::HangUp(i) => Cmd::HangUp(i, tx),
            Request::RefreshDialIn(i) => Cmd::Refresh(i, tx),
        };
        self.tx.send(cmd).map_err(|_| DriverError::Stopped)?;
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                if let Ok(Err(e)) = rx.await {
                    log::warn!("IKE driver refused {what}: {e}");
                }
            });
        }
        Ok(())
    }

    async fn call(&self, f: impl FnOnce(Reply) -> Cmd) -> Result<(), DriverError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(f(tx)).map_err(|_| DriverError::Stopped)?;
        rx.await.map_err(|_| DriverError::Stopped)?
    }

    /// Initiator: configures a tunnel to `t.peer` and starts IKE_SA_INIT
    /// (no-op if it is up or being set up). A changed configuration for an
    /// existing peer replaces it only once that tunnel is down.
    pub async fn connect(&self, t: TunnelConfig) -> Result<(), DriverError> {
        self.call(|r| Cmd::Connect(t, r)).await
    }

    /// Responder: accepts IKE from `t.peer` only, with its PSK and within
    /// its traffic selectors. Calling it again for the same peer while the
    /// tunnel is up only updates the selectors (used from the next CHILD SA
    /// negotiation); otherwise the new settings replace the old ones. A new
    /// PSK for a live tunnel needs `disconnect` then `accept`.
    pub async fn accept(&self, t: TunnelConfig) -> Result<(), DriverError> {
        self.call(|r| Cmd::Accept(t, r)).await
    }

    /// Deletes the tunnel with `peer` (INFORMATIONAL DELETE, then its SAs
    /// are removed and `TunnelDown { reason: Closed }` reported) and
    /// forgets the peer.
    pub async fn disconnect(&self, peer: Ipv4Addr) -> Result<(), DriverError> {
        self.call(|r| Cmd::Disconnect(peer, r)).await
    }

    /// Initiator, for a peer that lost its state (it restarted; it will
    /// not recognise our IKE SA, and dead-peer detection would notice only
    /// after its retransmissions): drops the IKE SA and CHILD SAs with
    /// `t.peer` without a DELETE exchange (reported as `TunnelDown {
    /// reason: Restarted }` if SAs were installed) and starts a fresh
    /// IKE_SA_INIT with `t` at once; its IKE_AUTH announces INITIAL_CONTACT.
    /// For a peer not configured yet it is [`connect`](Self::connect).
    pub async fn restart(&self, t: TunnelConfig) -> Result<(), DriverError> {
        self.call(|r| Cmd::Restart(t, r)).await
    }

    /// Changes the tunnel's traffic selectors and rekeys its CHILD SA so
    /// the new ones are negotiated (the old SA pair stays until the new
    /// one is installed).
    pub async fn set_traffic_selectors(
        &self,
        peer: Ipv4Addr,
        local_ts: Vec<TrafficSelector>,
        remote_ts: Vec<TrafficSelector>,
    ) -> Result<(), DriverError> {
        self.call(|r| Cmd::SetTs(peer, local_ts, remote_ts, r)).await
    }

    /// Accepts IKE from routers that dial in (issue 17), from any address
    /// that is not a configured peer: `c.lookup` admits each by its
    /// identity with its own PSK and selectors; its SAs get
    /// `c.reqid_of(identity)`. Reported as [`DriverEvent::DialInUp`] /
    /// [`DriverEvent::DialInDown`]. Replaces an earlier listener.
    pub async fn listen(&self, c: DialInConfig) -> Result<(), DriverError> {
        self.call(|r| Cmd::Listen(c, r)).await
    }

    /// Deletes the IKE SAs of a router that dialed in (its VPN ended).
    pub async fn hang_up(&self, identity: Identity) -> Result<(), DriverError> {
        self.call(|r| Cmd::HangUp(identity, r)).await
    }

    /// A dialed-in router's grants changed: its live IKE SAs take the
    /// lookup's current answer (refused now: hung up on).
    pub async fn refresh_dial_in(&self, identity: Identity) -> Result<(), DriverError> {
        self.call(|r| Cmd::Refresh(identity, r)).await
    }

    /// Rekeys the tunnel's CHILD SAs now.
    pub async fn rekey_child(&self, peer: Ipv4Addr) -> Result<(), DriverError> {
        self.call(|r| Cmd::RekeyChild(peer, r)).await
    }

    /// Rekeys the tunnel's IKE SA now.
    pub async fn rekey_ike(&self, peer: Ipv4Addr) -> Result<(), DriverError> {
        self.call(|r| Cmd::RekeyIke(peer, r)).await
    }

    /// Feeds a kernel SA expire event (done by the driver itself when
    /// `kernel_events` is on).
    pub fn sa_expired(&self, e: Expire) -> Result<(), DriverError> {
        self.tx.send(Cmd::Expired(e)).map_err(|_| DriverError::Stopped)
    }

    /// Feeds a kernel XFRM mapping event (done by the driver itself when
    /// `kernel_events` is on): the peer's ESP came from a new address.
    pub fn esp_mapping(&self, m: Mapping) -> Result<(), DriverError> {
        self.tx.send(Cmd::Mapped(m)).map_err(|_| DriverError::Stopped)
    }

    /// Deletes every tunnel (waiting up to `shutdown_grace` for the
    /// peers' answers), removes every SA the driver installed, and stops.
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Cmd::Shutdown(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}
