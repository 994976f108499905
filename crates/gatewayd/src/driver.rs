//! The seam between gatewayd's command API and whatever brings tunnels up.
//!
//! [`TunnelDriver`] is what gatewayd calls; today's implementation,
//! [`PolicyDriver`], programs the XFRM policies of each tunnel through the
//! datapath library and reports every tunnel as *connecting* ("IKE
//! pending"): alone it never reports a tunnel up. The IKE driver
//! ([`super::ike::IkeTunnelDriver`], gatewayd's `ike = true`) wraps it,
//! negotiates and installs the SAs with the same reqid, and sends
//! [`DriverEvent`]s for up/down (including dead-peer detection).
//!
//! Policies per VPNNAT /32 `v` of a router's tunnel, for each center network
//! `c`, all with reqid `REQID_BASE + slot`:
//! - out: `c -> v/32`, template gateway -> router
//! - in, fwd: `v/32 -> c`, template router -> gateway

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use thiserror::Error;
use tokio::sync::mpsc::UnboundedSender;
use vpnnat_datapath::xfrm::PolicyUse;
use vpnnat_datapath::{
    plan, tunnel_policies, Change, Datapath, DatapathError, DesiredState, Ipv4Cidr, KernelDatapath, ObservedState,
    PolicySpec, RecordingDatapath, SaId, REQID_BASE, REQID_RANGE,
};
use vpnnat_proto::keys::Psk;
use vpnnat_proto::messages::TunnelStatus;
use vpnnat_proto::types::TerminalId;

use crate::last_use::LastUseCache;

#[derive(Debug, Error)]
pub enum DriverError {
    #[error("no tunnel for terminal {0}")]
    UnknownTunnel(String),
    #[error("slot {slot} is already used by the tunnel of {holder}")]
    SlotInUse { slot: u16, holder: String },
    #[error("slot {0} is outside the reqid range")]
    SlotOutOfRange(u16),
    #[error("address {addr} is already routed into the tunnel of {holder}")]
    AddressInUse { addr: Ipv4Addr, holder: String },
    #[error("too many addresses in the tunnel of {0}")]
    TooManyAddresses(String),
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    #[error("IKE driver: {0}")]
    Ike(#[from] vpnnat_ike_driver::DriverError),
}

/// What the center asks for: one tunnel to one router.
#[derive(Debug, Clone)]
pub struct TunnelSpec {
    pub terminal_id: TerminalId,
    pub slot: u16,
    pub router_ip: Ipv4Addr,
    /// Kept for the IKE driver; the policy driver does not use it.
    pub psk: Psk,
}

/// A tunnel as the driver sees it (no secrets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelInfo {
    pub terminal_id: TerminalId,
    pub slot: u16,
    pub router_ip: Ipv4Addr,
    pub status: TunnelStatus,
    pub addresses: Vec<Ipv4Addr>,
}

/// A tunnel changed state; gatewayd forwards it to centerd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverEvent {
    pub terminal_id: TerminalId,
    pub slot: u16,
    pub status: TunnelStatus,
    pub detail: String,
    /// Its place in gatewayd's event order ([`next_event_seq`]).
    pub seq: u64,
}

/// gatewayd's event order: events are numbered when they happen, and a
/// state report carries the number reached when it was taken
/// ([`event_seq_now`]), so centerd can tell an event that arrives after a
/// newer report (the forwarder sends one at a time; under load they lag)
/// from a newer one. It starts at the wall clock in µs, so a restarted
/// gatewayd continues above the numbers of the one before.
static EVENT_SEQ: std::sync::OnceLock<std::sync::atomic::AtomicU64> = std::sync::OnceLock::new();

fn event_counter() -> &'static std::sync::atomic::AtomicU64 {
    EVENT_SEQ.get_or_init(|| {
        let us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX / 2));
        std::sync::atomic::AtomicU64::new(us)
    })
}

/// The number of a new event.
pub fn next_event_seq() -> u64 {
    event_counter()
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        .saturating_add(1)
}

/// The number of the last event so far (taken before a state report is
/// read, so the report reflects every event up to it).
pub fn event_seq_now() -> u64 {
    event_counter().load(std::sync::atomic::Ordering::SeqCst)
}

/// Everything gatewayd needs from a tunnel implementation.
pub trait TunnelDriver: Send {
    /// Creates the tunnel, or updates it (new router address or PSK: a
    /// re-key). Idempotent for an unchanged spec.
    fn setup(&mut self, spec: TunnelSpec) -> Result<(), DriverError>;
    /// Routes these VPNNAT addresses into the tunnel (idempotent).
    fn add_addresses(&mut self, terminal: &TerminalId, addrs: &[Ipv4Addr]) -> Result<(), DriverError>;
    /// Stops routing them (addresses not in the tunnel are ignored).
    fn remove_addresses(&mut self, terminal: &TerminalId, addrs: &[Ipv4Addr]) -> Result<(), DriverError>;
    /// Removes every route of the tunnel and the tunnel (idempotent).
    fn teardown(&mut self, terminal: &TerminalId) -> Result<(), DriverError>;
    /// The router lost its end of the tunnel (it restarted): negotiate the
    /// tunnel afresh at once instead of waiting for dead-peer detection.
    /// Nothing to do for a tunnel not negotiated (no address yet).
    fn restart(&mut self, terminal: &TerminalId) -> Result<(), DriverError>;
    /// Like [`TunnelDriver::setup`] for a router that dials in (issue 17):
    /// the policies as usual, then the router is admitted by its IKE
    /// identity instead of being connected to. Drivers without IKE refuse.
    fn setup_dial_in(&mut self, spec: TunnelSpec) -> Result<(), DriverError> {
        Err(DriverError::UnknownTunnel(format!(
            "{} (router-initiated tunnels need gatewayd's IKE driver)",
            spec.terminal_id
        )))
    }
    /// Every tunnel.
    fn tunnels(&self) -> Vec<TunnelInfo>;
    /// Brings the kernel to exactly what the driver's state says: removes
    /// leftovers (e.g. of a previous run: policies and ESP SAs), re-adds
    /// what is missing. gatewayd calls it at start, before any tunnel is
    /// set up.
    fn reconcile(&mut self) -> Result<(), DriverError>;
    /// When each slot's tunnel last carried a packet (Unix seconds, 0:
    /// never; [`crate::last_use`]); a slot left out carried nothing.
    /// Read from the kernel at most every [`crate::last_use::REFRESH`].
    fn last_use(&mut self) -> Result<BTreeMap<u16, u64>, DriverError>;
}

/// The part of the datapath the gateway needs: the project's XFRM objects,
/// and apply. Reading only the XFRM databases keeps gatewayd independent
/// of nftables (the gateway has no NAT table).
pub trait PolicyDatapath: Send {
    /// The project's SAs and policies ([`ObservedState::ours`]); no NAT table.
    fn observe_xfrm(&mut self) -> Result<ObservedState, DatapathError>;
    fn apply(&mut self, changes: &[Change]) -> Result<(), DatapathError>;
    /// The last use of each of the project's policies.
    fn policy_uses(&mut self) -> Result<Vec<PolicyUse>, DatapathError>;
}

impl PolicyDatapath for KernelDatapath {
    fn observe_xfrm(&mut self) -> Result<ObservedState, DatapathError> {
        Ok(ObservedState::ours(
            self.xfrm.list_sas()?,
            self.xfrm.list_policies()?,
            None,
        ))
    }

    fn apply(&mut self, changes: &[Change]) -> Result<(), DatapathError> {
        Datapath::apply(self, changes)
    }

    fn policy_uses(&mut self) -> Result<Vec<PolicyUse>, DatapathError> {
        let mut v = self.xfrm.policy_uses()?;
        v.retain(|u| vpnnat_datapath::is_owned_reqid(u.reqid));
        Ok(v)
    }
}

impl PolicyDatapath for RecordingDatapath {
    fn observe_xfrm(&mut self) -> Result<ObservedState, DatapathError> {
        Ok(ObservedState::ours(
            self.state.sas.clone(),
            self.state.policies.clone(),
            None,
        ))
    }

    fn apply(&mut self, changes: &[Change]) -> Result<(), DatapathError> {
        Datapath::apply(self, changes)
    }

    /// A recording carries no packet: every policy unused.
    fn policy_uses(&mut self) -> Result<Vec<PolicyUse>, DatapathError> {
        Ok(self
            .state
            .policies
            .iter()
            .map(|p| PolicyUse {
                id: p.id,
                reqid: p.reqid,
                last_use: None,
            })
            .collect())
    }
}

#[derive(Debug)]
struct Tunnel {
    spec: TunnelSpec,
    addresses: BTreeSet<Ipv4Addr>,
    status: TunnelStatus,
}

/// Most addresses one tunnel carries (the state report's limit).
const MAX_ADDRESSES: usize = vpnnat_proto::messages::MAX_ADDRESSES_PER_TUNNEL;

/// Policies through the datapath, IKE pending.
#[derive(Debug)]
pub struct PolicyDriver<D> {
    dp: D,
    local_ip: Ipv4Addr,
    center_networks: Vec<Ipv4Cidr>,
    priority: u32,
    tunnels: BTreeMap<TerminalId, Tunnel>,
    events: UnboundedSender<DriverEvent>,
    connecting_detail: &'static str,
    last_use: LastUseCache,
}

/// Shown with every "connecting" event until an IKE driver exists.
pub const IKE_PENDING: &str = "IKE pending: policies installed, no IKE driver to negotiate SAs yet";

impl<D: PolicyDatapath> PolicyDriver<D> {
    pub fn new(
        dp: D,
        local_ip: Ipv4Addr,
        center_networks: Vec<Ipv4Cidr>,
        priority: u32,
        events: UnboundedSender<DriverEvent>,
    ) -> Self {
        PolicyDriver {
            dp,
            local_ip,
            center_networks,
            priority,
            tunnels: BTreeMap::new(),
            events,
            connecting_detail: IKE_PENDING,
            last_use: LastUseCache::default(),
        }
    }

    /// The detail of the "connecting" event `setup` sends (default
    /// [`IKE_PENDING`]; a wrapping IKE driver says what it does instead).
    pub fn set_connecting_detail(&mut self, detail: &'static str) {
        self.connecting_detail = detail;
    }

    pub fn datapath(&self) -> &D {
        &self.dp
    }

    pub fn datapath_mut(&mut self) -> &mut D {
        &mut self.dp
    }

    fn reqid(slot: u16) -> Result<u32, DriverError> {
        let r = REQID_BASE
            .checked_add(u32::from(slot))
            .ok_or(DriverError::SlotOutOfRange(slot))?;
        if u32::from(slot) >= REQID_RANGE {
            return Err(DriverError::SlotOutOfRange(slot));
        }
        Ok(r)
    }

    fn policies(&self, t: &TunnelSpec, addr: Ipv4Addr) -> Result<Vec<PolicySpec>, DriverError> {
        let reqid = Self::reqid(t.slot)?;
        let host = Ipv4Cidr::host(addr);
        let mut out = Vec::with_capacity(self.center_networks.len().saturating_mul(3));
        for c in &self.center_networks {
            out.extend(tunnel_policies(
                *c,
                host,
                self.local_ip,
                t.router_ip,
                self.priority,
                reqid,
            ));
        }
        Ok(out)
    }

    fn desired(&self) -> Result<Vec<PolicySpec>, DriverError> {
        let mut v = Vec::new();
        for t in self.tunnels.values() {
            for a in &t.addresses {
                v.extend(self.policies(&t.spec, *a)?);
            }
        }
        Ok(v)
    }

    fn emit(&self, spec: &TunnelSpec, status: TunnelStatus, detail: &str) {
        // The receiver lives as long as gatewayd; a send error only means
        // it is shutting down.
        let _ = self.events.send(DriverEvent {
            terminal_id: spec.terminal_id.clone(),
            slot: spec.slot,
            status,
            detail: detail.to_owned(),
            seq: next_event_seq(),
        });
    }

    fn tunnel(&self, terminal: &TerminalId) -> Result<&Tunnel, DriverError> {
        self.tunnels
            .get(terminal)
            .ok_or_else(|| DriverError::UnknownTunnel(terminal.to_string()))
    }
}

impl<D: PolicyDatapath> TunnelDriver for PolicyDriver<D> {
    fn setup(&mut self, spec: TunnelSpec) -> Result<(), DriverError> {
        Self::reqid(spec.slot)?;
        if let Some((holder, _)) = self
            .tunnels
            .iter()
            .find(|(id, t)| t.spec.slot == spec.slot && **id != spec.terminal_id)
        {
            return Err(DriverError::SlotInUse {
                slot: spec.slot,
                holder: holder.to_string(),
            });
        }
        match self.tunnels.get(&spec.terminal_id) {
            Some(t) if t.spec.router_ip == spec.router_ip && t.spec.slot == spec.slot => {
                // Same tunnel; a new PSK is kept for the IKE driver.
                if let Some(t) = self.tunnels.get_mut(&spec.terminal_id) {
                    t.spec.psk = spec.psk;
                }
                return Ok(());
            }
            Some(t) => {
                // The router moved (new global IP) or the slot changed:
                // re-point every policy of the tunnel.
                let addrs: Vec<Ipv4Addr> = t.addresses.iter().copied().collect();
                let mut changes = Vec::new();
                for a in &addrs {
                    for p in self.policies(&t.spec, *a)? {
                        changes.push(Change::DelPolicy(p.id));
                    }
                }
                for a in &addrs {
                    for p in self.policies(&spec, *a)? {
                        changes.push(Change::AddPolicy(p));
                    }
                }
                self.dp.apply(&changes)?;
                if let Some(t) = self.tunnels.get_mut(&spec.terminal_id) {
                    t.spec = spec.clone();
                    t.status = TunnelStatus::Connecting;
                }
            }
            None => {
                self.tunnels.insert(
                    spec.terminal_id.clone(),
                    Tunnel {
                        spec: spec.clone(),
                        addresses: BTreeSet::new(),
                        status: TunnelStatus::Connecting,
                    },
                );
            }
        }
        log::info!(
            "terminal={} tunnel ({}) slot {}: connecting ({})",
            spec.terminal_id,
            spec.router_ip,
            spec.slot,
            self.connecting_detail
        );
        self.emit(&spec, TunnelStatus::Connecting, self.connecting_detail);
        Ok(())
    }

    fn add_addresses(&mut self, terminal: &TerminalId, addrs: &[Ipv4Addr]) -> Result<(), DriverError> {
        let t = self.tunnel(terminal)?;
        for a in addrs {
            if let Some((holder, _)) = self
                .tunnels
                .iter()
                .find(|(id, o)| *id != terminal && o.addresses.contains(a))
            {
                return Err(DriverError::AddressInUse {
                    addr: *a,
                    holder: holder.to_string(),
                });
            }
        }
        let new: BTreeSet<Ipv4Addr> = addrs.iter().copied().filter(|a| !t.addresses.contains(a)).collect();
        if t.addresses.len().saturating_add(new.len()) > MAX_ADDRESSES {
            return Err(DriverError::TooManyAddresses(terminal.to_string()));
        }
        let mut changes = Vec::new();
        for a in &new {
            changes.extend(self.policies(&t.spec, *a)?.into_iter().map(Change::AddPolicy));
        }
        self.dp.apply(&changes)?;
        vpnnat_crashpoint::hit("gateway.add.after_policies");
        if let Some(t) = self.tunnels.get_mut(terminal) {
            t.addresses.extend(new);
        }
        Ok(())
    }

    fn remove_addresses(&mut self, terminal: &TerminalId, addrs: &[Ipv4Addr]) -> Result<(), DriverError> {
        let t = self.tunnel(terminal)?;
        let gone: Vec<Ipv4Addr> = addrs.iter().copied().filter(|a| t.addresses.contains(a)).collect();
        let mut changes = Vec::new();
        for a in &gone {
            changes.extend(self.policies(&t.spec, *a)?.into_iter().map(|p| Change::DelPolicy(p.id)));
        }
        self.dp.apply(&changes)?;
        vpnnat_crashpoint::hit("gateway.remove.after_policies");
        if let Some(t) = self.tunnels.get_mut(terminal) {
            for a in &gone {
                t.addresses.remove(a);
            }
        }
        Ok(())
    }

    fn restart(&mut self, terminal: &TerminalId) -> Result<(), DriverError> {
        // Policies only: no IKE SA to rebuild (the kernel keeps the
        // policies, which is all this driver owns).
        if self.tunnels.contains_key(terminal) {
            Ok(())
        } else {
            Err(DriverError::UnknownTunnel(terminal.to_string()))
        }
    }

    fn teardown(&mut self, terminal: &TerminalId) -> Result<(), DriverError> {
        let Some(t) = self.tunnels.get(terminal) else {
            return Ok(());
        };
        let mut changes = Vec::new();
        for a in &t.addresses {
            changes.extend(self.policies(&t.spec, *a)?.into_iter().map(|p| Change::DelPolicy(p.id)));
        }
        self.dp.apply(&changes)?;
        vpnnat_crashpoint::hit("gateway.teardown.after_policies");
        if let Some(t) = self.tunnels.remove(terminal) {
            log::info!("terminal={} tunnel slot {}: torn down", terminal, t.spec.slot);
            self.emit(&t.spec, TunnelStatus::Down, "torn down on command");
        }
        Ok(())
    }

    fn tunnels(&self) -> Vec<TunnelInfo> {
        self.tunnels
            .values()
            .map(|t| TunnelInfo {
                terminal_id: t.spec.terminal_id.clone(),
                slot: t.spec.slot,
                router_ip: t.spec.router_ip,
                status: t.status,
                addresses: t.addresses.iter().copied().collect(),
            })
            .collect()
    }

    fn reconcile(&mut self) -> Result<(), DriverError> {
        // This driver installs no SA: every owned one is a leftover.
        self.reconcile_keeping(&[])
    }

    fn last_use(&mut self) -> Result<BTreeMap<u16, u64>, DriverError> {
        let now = std::time::Instant::now();
        if let Some(m) = self.last_use.fresh(now) {
            return Ok(m.clone());
        }
        let m = crate::last_use::by_slot(&self.dp.policy_uses()?);
        Ok(self.last_use.store(now, m).clone())
    }
}

impl<D: PolicyDatapath> PolicyDriver<D> {
    /// [`TunnelDriver::reconcile`], keeping the owned SAs in `keep` (those
    /// a wrapping IKE driver installed) and deleting every other one: a
    /// gatewayd killed with live tunnels leaves its SAs in the kernel
    /// (nobody ran its shutdown); the next one negotiates new SAs with the
    /// same reqid, and a tear-down removes only those, so without this the
    /// old pair stayed for the SAs' whole hard lifetime (an hour).
    pub fn reconcile_keeping(&mut self, keep: &[SaId]) -> Result<(), DriverError> {
        // The policies of every tunnel's addresses; no SA of its own (the
        // IKE driver's are kept by id) and no NAT table.
        let desired = DesiredState {
            policies: self.desired()?,
            keep_sas: keep.iter().copied().collect(),
            ..DesiredState::default()
        };
        let changes = plan(&desired, &self.dp.observe_xfrm()?);
        // The planner puts old SAs last, once no policy points at them.
        let (stray, policies): (Vec<Change>, Vec<Change>) =
            changes.into_iter().partition(|c| matches!(c, Change::DelSa(_)));
        if !policies.is_empty() {
            log::info!("reconcile: {} policy change(s)", policies.len());
        }
        self.dp.apply(&policies)?;
        if !stray.is_empty() {
            log::info!("reconcile: removing {} leftover ESP SA(s)", stray.len());
        }
        for c in &stray {
            match self.dp.apply(std::slice::from_ref(c)) {
                // Expired (hard lifetime) between the listing and now: gone
                // all the same.
                Err(e) if e.errno() == Some(libc::ENOENT) => {}
                r => r?,
            }
        }
        Ok(())
    }
}
