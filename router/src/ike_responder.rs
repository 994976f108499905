//! The seam between routerd and its IKEv2 responder.
//!
//! `crates/ike` is a protocol core without sockets; the UDP driver that owns
//! ports 500/4500, feeds it datagrams and installs the CHILD SAs it
//! negotiates is written separately. routerd only needs to (re)configure the
//! responder when its state changes (installation, gateway assignment,
//! grants) and to read back its health and the SAs it installed (so that
//! reconciliation keeps them). [`IkeResponder`] is that contract;
//! [`StaticResponder`] stands in for tests and `--fake-datapath`;
//! `crate::driver_responder` implements it on the real driver.

use std::fmt;
use std::net::Ipv4Addr;

use vpnnat_datapath::{Ipv4Cidr, SaSpec};
use vpnnat_proto::keys::Psk;

/// Everything the responder needs; `None` in
/// [`IkeResponder::configure`] means "accept nobody" (before installation
/// the seed's router holds a dummy key; we hold none).
#[derive(Clone)]
pub struct ResponderSettings {
    /// The router's WAN address (IKE and the tunnel's outer source).
    pub local: Ipv4Addr,
    /// The only peer accepted: the assigned gateway.
    pub peer: Ipv4Addr,
    /// The gateway's IKE identity.
    pub peer_id: String,
    pub psk: Psk,
    /// Traffic selectors on the router's side: each granted VPNNAT /32.
    pub local_ts: Vec<Ipv4Cidr>,
    /// The center's networks.
    pub remote_ts: Vec<Ipv4Cidr>,
    /// The reqid the driver must give every SA it installs, so that the
    /// router's policies (same reqid) use them and reconciliation keeps them.
    pub reqid: u32,
    /// This router's terminal ID, for the IKE driver's log lines.
    pub terminal_id: String,
    /// The router initiates (issue 17, `router` mode) instead of waiting.
    pub dial_out: bool,
}

impl fmt::Debug for ResponderSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponderSettings")
            .field("local", &self.local)
            .field("peer", &self.peer)
            .field("peer_id", &self.peer_id)
            .field("psk", &"<redacted>")
            .field("local_ts", &self.local_ts)
            .field("remote_ts", &self.remote_ts)
            .field("reqid", &format_args!("{:#x}", self.reqid))
            .finish()
    }
}

/// The responder's health, for the status page and the failure watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IkeStatus {
    /// No settings: accepts nobody.
    Unconfigured,
    /// Configured, no IKE SA yet.
    Listening,
    /// An IKE SA with the gateway is up.
    Established,
    /// The responder cannot work (e.g. its socket failed).
    Failed(String),
}

impl fmt::Display for IkeStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IkeStatus::Unconfigured => f.write_str("unconfigured"),
            IkeStatus::Listening => f.write_str("listening"),
            IkeStatus::Established => f.write_str("established"),
            IkeStatus::Failed(why) => write!(f, "failed: {why}"),
        }
    }
}

/// What routerd asks of an IKE responder driver.
pub trait IkeResponder: Send {
    /// Replaces the settings. Called whenever they change; must be cheap when
    /// they did not (the driver compares).
    fn configure(&mut self, settings: Option<ResponderSettings>);
    fn status(&self) -> IkeStatus;
    /// The SAs the driver has installed in the kernel, which the router's
    /// desired datapath state must include (or reconciliation would delete
    /// them).
    fn installed_sas(&self) -> Vec<SaSpec>;
}

/// A responder that only remembers its settings: no UDP, no SAs. Used
/// until the UDP driver over `crates/ike` exists, and in tests.
#[derive(Debug, Default)]
pub struct StaticResponder {
    pub settings: Option<ResponderSettings>,
    /// How many times `configure` was called.
    pub configured: usize,
    /// When set (shared with a test), the responder reports `failed`.
    pub fault: std::sync::Arc<std::sync::Mutex<Option<String>>>,
}

impl IkeResponder for StaticResponder {
    fn configure(&mut self, settings: Option<ResponderSettings>) {
        self.configured = self.configured.saturating_add(1);
        self.settings = settings;
    }

    fn status(&self) -> IkeStatus {
        if let Some(why) = self.fault.lock().ok().and_then(|f| f.clone()) {
            return IkeStatus::Failed(why);
        }
        match self.settings {
            None => IkeStatus::Unconfigured,
            Some(_) => IkeStatus::Listening,
        }
    }

    fn installed_sas(&self) -> Vec<SaSpec> {
        Vec::new()
    }
}
