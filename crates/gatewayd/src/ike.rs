//! [`IkeTunnelDriver`]: the [`PolicyDriver`] plus the IKEv2 initiator
//! (`vpnnat-ike-driver`), which negotiates and installs each tunnel's SAs
//! with the policies' reqid `REQID_BASE + slot`.
//!
//! A tunnel's traffic selectors are the center networks (ours) and the
//! granted VPNNAT /32s (the router's). They cannot be empty, so IKE starts
//! with the first granted address and the tunnel is closed when the last
//! one goes; in between every change is one CHILD SA rekey with the new
//! selectors. A new router address or PSK closes the IKE SA and starts a
//! new one. Tunnel up/down from the driver become [`DriverEvent`]s for
//! centerd; a tunnel that went down on its own (dead peer, refused) is
//! retried after [`RETRY_AFTER`], one we closed while it is still wanted
//! (new PSK) at once.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use tokio::task::JoinHandle;
use vpnnat_datapath::{Ipv4Cidr, REQID_BASE};
use vpnnat_ike::{DownReason, Identity, Secret, TrafficSelector};
use vpnnat_ike_driver::{DriverEvent as IkeEvent, DriverHandle, Request, TunnelConfig};
use vpnnat_proto::keys::{Psk, SecretBytes};
use vpnnat_proto::messages::TunnelStatus;
use vpnnat_proto::types::TerminalId;

use super::dial_in::DialInTable;
use super::driver::{DriverError, DriverEvent, PolicyDatapath, PolicyDriver, TunnelDriver, TunnelInfo, TunnelSpec};

mod dial_in;
use dial_in::{dial_in_event, start_listening, DialInUp};

/// How long after a tunnel went down on its own IKE is tried again.
pub const RETRY_AFTER: Duration = Duration::from_secs(10);

/// The detail of the "connecting" event at setup.
pub const CONNECTING: &str = "policies installed; IKE connects with the first granted address";

/// What one change of a tunnel's granted addresses asks of IKE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IkeAction {
    /// Nothing to negotiate (no addresses and no tunnel, or unchanged).
    Nothing,
    /// Start the tunnel (first address granted).
    Connect,
    /// Renegotiate the selectors of the live tunnel (one CHILD rekey).
    SetSelectors,
    /// Close the tunnel (no address left: selectors cannot be empty).
    Disconnect,
}

/// The bookkeeping rule: `connected` is whether IKE was asked to connect,
/// `addresses` how many /32s the tunnel carries after the change,
/// `changed` whether the set changed.
pub fn next_action(connected: bool, addresses: usize, changed: bool) -> IkeAction {
    match (connected, addresses > 0) {
        (false, true) => IkeAction::Connect,
        (true, false) => IkeAction::Disconnect,
        (true, true) if changed => IkeAction::SetSelectors,
        _ => IkeAction::Nothing,
    }
}

/// The center networks as traffic selectors (our side).
pub fn center_selectors(nets: &[Ipv4Cidr]) -> Vec<TrafficSelector> {
    nets.iter()
        .map(|c| TrafficSelector::subnet(c.addr(), c.prefix_len()))
        .collect()
}

/// The granted addresses as /32 traffic selectors (the router's side).
pub fn address_selectors(addrs: &[Ipv4Addr]) -> Vec<TrafficSelector> {
    addrs.iter().map(|a| TrafficSelector::host(*a)).collect()
}

/// One tunnel's IKE side.
struct IkeTunnel {
    router_ip: Ipv4Addr,
    slot: u16,
    psk: Psk,
    connected: bool,
    /// The router dials in (issue 17): admitted, never connected to.
    dial_in: bool,
}

/// What the event task knows of a router (by its address).
#[derive(Debug, Clone)]
struct Peer {
    terminal_id: TerminalId,
    slot: u16,
    /// The last configuration IKE was asked to connect with (for retries);
    /// `None` while not connected.
    config: Option<TunnelConfig>,
}

type Peers = Arc<Mutex<BTreeMap<Ipv4Addr, Peer>>>;

/// The policy driver with IKE on top.
pub struct IkeTunnelDriver<D> {
    policy: PolicyDriver<D>,
    drv: DriverHandle,
    center_ts: Vec<TrafficSelector>,
    tunnels: BTreeMap<TerminalId, IkeTunnel>,
    peers: Peers,
    task: JoinHandle<()>,
    /// Routers admitted to dial in, and which of them are up.
    dial_in: Arc<DialInTable>,
    dial_in_up: DialInUp,
}

impl<D> std::fmt::Debug for IkeTunnelDriver<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IkeTunnelDriver")
            .field("local", &self.drv.local_addr())
            .field("tunnels", &self.tunnels.len())
            .finish_non_exhaustive()
    }
}

impl<D> Drop for IkeTunnelDriver<D> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl<D: PolicyDatapath> IkeTunnelDriver<D> {
    /// Wraps `policy` (built with the same event sender `events`) and a
    /// started IKE driver with its event stream; `identity` is the
    /// driver's own (`DriverConfig::identity`), for the routers that dial
    /// in. Must be called inside a
    /// tokio runtime (spawns the event task).
    pub fn new(
        mut policy: PolicyDriver<D>,
        center_networks: &[Ipv4Cidr],
        identity: Identity,
        drv: DriverHandle,
        ike_events: UnboundedReceiver<IkeEvent>,
        events: UnboundedSender<DriverEvent>,
    ) -> Self {
        policy.set_connecting_detail(CONNECTING);
        let peers: Peers = Arc::new(Mutex::new(BTreeMap::new()));
        let center_ts = center_selectors(center_networks);
        let (dial_in, dial_in_up) = start_listening(&drv, identity, &center_ts);
        let task = tokio::spawn(forward_ike_events(
            ike_events,
            events,
            peers.clone(),
            drv.clone(),
            dial_in.clone(),
            dial_in_up.clone(),
        ));
        IkeTunnelDriver {
            policy,
            drv,
            center_ts,
            tunnels: BTreeMap::new(),
            peers,
            task,
            dial_in,
            dial_in_up,
        }
    }

    /// The IKE driver (e.g. to shut it down).
    pub fn handle(&self) -> &DriverHandle {
        &self.drv
    }

    fn addresses(&self, terminal: &TerminalId) -> Vec<Ipv4Addr> {
        self.policy
            .tunnels()
            .into_iter()
            .find(|t| t.terminal_id == *terminal)
            .map(|t| t.addresses)
            .unwrap_or_default()
    }

    fn set_peer(&self, ip: Ipv4Addr, p: Option<Peer>) {
        if let Ok(mut m) = self.peers.lock() {
            match p {
                Some(p) => {
                    m.insert(ip, p);
                }
                None => {
                    m.remove(&ip);
                }
            }
        }
    }

    fn set_peer_config(&self, ip: Ipv4Addr, c: Option<TunnelConfig>) {
        if let Ok(mut m) = self.peers.lock() {
            if let Some(p) = m.get_mut(&ip) {
                p.config = c;
            }
        }
    }

    /// Brings IKE in line with the tunnel's addresses.
    fn sync(&mut self, terminal: &TerminalId, changed: bool) -> Result<(), DriverError> {
        let addrs = self.addresses(terminal);
        let Some(t) = self.tunnels.get(terminal) else {
            return Ok(());
        };
        let router_ip = t.router_ip;
        if t.dial_in {
            self.sync_dial_in(terminal, addrs, changed);
            return Ok(());
        }
        match next_action(t.connected, addrs.len(), changed) {
            IkeAction::Nothing => {}
            IkeAction::Connect => {
                let cfg = TunnelConfig {
                    peer: router_ip,
                    psk: Secret::from_slice(t.psk.expose_secret()),
                    local_ts: self.center_ts.clone(),
                    remote_ts: address_selectors(&addrs),
                    reqid: REQID_BASE.saturating_add(u32::from(t.slot)),
                    remote_id: None,
                    log_label: format!("terminal={terminal}"),
                };
                self.drv.request_detached(Request::Connect(cfg.clone()))?;
                self.set_peer_config(router_ip, Some(cfg));
                log::info!("terminal={terminal} tunnel ({router_ip}): IKE connecting");
                if let Some(t) = self.tunnels.get_mut(terminal) {
                    t.connected = true;
                }
            }
            IkeAction::SetSelectors => {
                let remote = address_selectors(&addrs);
                self.drv.request_detached(Request::SetTrafficSelectors(
                    router_ip,
                    self.center_ts.clone(),
                    remote.clone(),
                ))?;
                if let Ok(mut m) = self.peers.lock() {
                    if let Some(c) = m.get_mut(&router_ip).and_then(|p| p.config.as_mut()) {
                        c.remote_ts = remote;
                    }
                }
            }
            IkeAction::Disconnect => {
                self.drv.request_detached(Request::Disconnect(router_ip))?;
                self.set_peer_config(router_ip, None);
                log::info!("terminal={terminal} tunnel ({router_ip}): no address left, IKE closed");
                if let Some(t) = self.tunnels.get_mut(terminal) {
                    t.connected = false;
                }
            }
        }
        Ok(())
    }
}

impl<D: PolicyDatapath> TunnelDriver for IkeTunnelDriver<D> {
    fn setup(&mut self, spec: TunnelSpec) -> Result<(), DriverError> {
        self.policy.setup(spec.clone())?;
        vpnnat_crashpoint::hit("gateway.setup.before_ike");
        let terminal = spec.terminal_id.clone();
        if let Some(old) = self.tunnels.get(&terminal) {
            let same = old.router_ip == spec.router_ip
                && old.slot == spec.slot
                && old.psk.expose_secret() == spec.psk.expose_secret();
            if same {
                return Ok(());
            }
            let old_ip = old.router_ip;
            if old.connected {
                self.drv.request_detached(Request::Disconnect(old_ip))?;
                log::info!("terminal={terminal} tunnel: router address, slot or PSK changed; IKE restarts");
            }
            self.set_peer(old_ip, None);
        }
        self.leave_dial_in(&terminal);
        self.tunnels.insert(
            terminal.clone(),
            IkeTunnel {
                router_ip: spec.router_ip,
                slot: spec.slot,
                psk: spec.psk,
                connected: false,
                dial_in: false,
            },
        );
        self.set_peer(
            spec.router_ip,
            Some(Peer {
                terminal_id: terminal.clone(),
                slot: spec.slot,
                config: None,
            }),
        );
        self.sync(&terminal, true)
    }

    fn add_addresses(&mut self, terminal: &TerminalId, addrs: &[Ipv4Addr]) -> Result<(), DriverError> {
        let before = self.addresses(terminal);
        self.policy.add_addresses(terminal, addrs)?;
        let changed = self.addresses(terminal) != before;
        self.sync(terminal, changed)
    }

    fn remove_addresses(&mut self, terminal: &TerminalId, addrs: &[Ipv4Addr]) -> Result<(), DriverError> {
        let before = self.addresses(terminal);
        self.policy.remove_addresses(terminal, addrs)?;
        let changed = self.addresses(terminal) != before;
        self.sync(terminal, changed)
    }

    fn setup_dial_in(&mut self, spec: TunnelSpec) -> Result<(), DriverError> {
        self.setup_dial_in_tunnel(spec)
    }

    fn teardown(&mut self, terminal: &TerminalId) -> Result<(), DriverError> {
        self.leave_dial_in(terminal);
        if let Some(t) = self.tunnels.remove(terminal) {
            // Forget the peer first: its "closed" event is not news (the
            // policy driver reports the teardown).
            self.set_peer(t.router_ip, None);
            if t.connected {
                self.drv.request_detached(Request::Disconnect(t.router_ip))?;
            }
        }
        self.policy.teardown(terminal)
    }

    fn restart(&mut self, terminal: &TerminalId) -> Result<(), DriverError> {
        let t = self
            .tunnels
            .get(terminal)
            .ok_or_else(|| DriverError::UnknownTunnel(terminal.to_string()))?;
        if t.dial_in {
            // The router dials in again by itself (it lost its IKE SA);
            // its new IKE SA replaces the old one here (INITIAL_CONTACT).
            log::info!("terminal={terminal} tunnel: restart asked; the router dials in again");
            return Ok(());
        }
        let router_ip = t.router_ip;
        let cfg = self
            .peers
            .lock()
            .ok()
            .and_then(|m| m.get(&router_ip).and_then(|p| p.config.clone()));
        match (t.connected, cfg) {
            (true, Some(cfg)) => {
                self.drv.request_detached(Request::Restart(cfg))?;
                log::info!("terminal={terminal} tunnel ({router_ip}): the router lost its IKE state; IKE restarts");
            }
            // Not negotiated (no address granted yet): the first grant
            // connects with the router's current state anyway.
            _ => log::info!("terminal={terminal} tunnel ({router_ip}): restart asked, nothing negotiated"),
        }
        Ok(())
    }

    fn tunnels(&self) -> Vec<TunnelInfo> {
        self.policy
            .tunnels()
            .into_iter()
            .map(|mut t| {
                let dialed_in = self.dial_in_up.lock().is_ok_and(|u| u.contains(&t.terminal_id));
                t.status = if dialed_in || self.drv.is_up(t.router_ip) {
                    TunnelStatus::Up
                } else {
                    TunnelStatus::Connecting
                };
                t
            })
            .collect()
    }

    fn reconcile(&mut self) -> Result<(), DriverError> {
        // Keep what our IKE driver installed; a previous gatewayd's SAs go.
        // (A negotiation in flight would also hold reserved inbound SPIs the
        // driver does not list: gatewayd reconciles at start, before any.)
        let keep: Vec<_> = self.drv.installed_sas().iter().map(|s| s.id()).collect();
        self.policy.reconcile_keeping(&keep)
    }

    fn last_use(&mut self) -> Result<BTreeMap<u16, u64>, DriverError> {
        self.policy.last_use()
    }
}

/// Maps the IKE driver's tunnel up/down to gatewayd's events; retries a
/// tunnel that went down on its own.
async fn forward_ike_events(
    mut rx: UnboundedReceiver<IkeEvent>,
    events: UnboundedSender<DriverEvent>,
    peers: Peers,
    drv: DriverHandle,
    dial_in: Arc<DialInTable>,
    dial_in_up: DialInUp,
) {
    while let Some(ev) = rx.recv().await {
        let (peer, status, detail, retry) = match ev {
            IkeEvent::TunnelUp { peer, nat } => {
                let detail = if nat {
                    "IKE up (NAT detected, ESP in UDP)"
                } else {
                    "IKE up"
                };
                (peer, TunnelStatus::Up, detail.to_owned(), None)
            }
            IkeEvent::TunnelDown { peer, reason } => {
                // Closed by us: for a new PSK (or a grant right after the
                // last removal) the driver kept the old settings, so
                // connect again at once with the current ones.
                let delay = if reason == DownReason::Closed {
                    Duration::ZERO
                } else {
                    RETRY_AFTER
                };
                (peer, TunnelStatus::Down, format!("IKE down: {reason:?}"), Some(delay))
            }
            IkeEvent::Rejected { from, error } => {
                // One event per dropped datagram, which anyone can send: the
                // driver logs them summed up per interval (drop_log).
                log::debug!("IKE from {from} rejected: {error}");
                continue;
            }
            IkeEvent::KernelError { sa, error } => {
                log::warn!("kernel refused SA {sa:?}: {error}");
                continue;
            }
            IkeEvent::RekeyFailed { peer, child } => {
                log::warn!("rekey with {peer} failed (child {child:?})");
                continue;
            }
            IkeEvent::ChildSaInstalled {
                peer,
                inbound_spi,
                outbound_spi,
            } => {
                // The moment the gateway's end of the tunnel is in the
                // kernel (the e2e benchmark's "tunnel setup" ends here).
                if let Some(p) = peers.lock().ok().and_then(|m| m.get(&peer).cloned()) {
                    log::info!(
                        "terminal={} tunnel ({peer}) slot {}: CHILD SA installed (in {inbound_spi:#010x}, out {outbound_spi:#010x})",
                        p.terminal_id,
                        p.slot
                    );
                }
                continue;
            }
            IkeEvent::ChildSaRemoved { .. } => continue,
            IkeEvent::DialInUp { identity, remote, nat } => {
                dial_in_event(
                    &events,
                    &dial_in,
                    &dial_in_up,
                    &identity,
                    true,
                    &format!(
                        "IKE up: the router dialed in from {remote}{}",
                        if nat { " (NAT detected, ESP in UDP)" } else { "" }
                    ),
                );
                continue;
            }
            IkeEvent::DialInDown { identity, reason } => {
                // Not retried from here: the router dials in again.
                dial_in_event(
                    &events,
                    &dial_in,
                    &dial_in_up,
                    &identity,
                    false,
                    &format!("IKE down: {reason:?}"),
                );
                continue;
            }
        };
        let Some(p) = peers.lock().ok().and_then(|m| m.get(&peer).cloned()) else {
            continue;
        };
        log::info!("terminal={} tunnel ({peer}) slot {}: {detail}", p.terminal_id, p.slot);
        // The receiver lives as long as gatewayd.
        let _ = events.send(DriverEvent {
            terminal_id: p.terminal_id.clone(),
            slot: p.slot,
            status,
            detail,
            seq: super::driver::next_event_seq(),
        });
        // Retry only a tunnel that is still wanted (teardown and the last
        // address's removal clear its configuration first).
        if let (Some(delay), true) = (retry, p.config.is_some()) {
            let peers = peers.clone();
            let drv = drv.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                // Only if the tunnel is still wanted, with whatever
                // configuration is current then.
                let cfg = peers.lock().ok().and_then(|m| {
                    m.get(&peer)
                        .and_then(|p| Some((p.config.clone()?, p.terminal_id.clone())))
                });
                if let Some((cfg, terminal)) = cfg {
                    if !drv.is_up(peer) {
                        log::info!("terminal={terminal} tunnel ({peer}): retrying IKE");
                        let _ = drv.request_detached(Request::Connect(cfg));
                    }
                }
            });
        }
    }
}

#[cfg(test)]
mod tests;
