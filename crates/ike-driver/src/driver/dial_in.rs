//! Routers that dial in (issue 17): one responder core serves every peer
//! the owner's [`PeerLookup`] admits, known by IKE identity, from any
//! address and port (several routers share one behind a carrier NAT).
//! IKE from an address that is not a configured peer of the driver goes
//! here when a listener is set; each CHILD SA is installed with the reqid
//! the owner gives for the identity, with UDP encapsulation toward that
//! router's own NAT mapping.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use vpnnat_ike::{DownReason, Event, Identity, Output, PeerLookup, Responder, ResponderConfig, SaConfig};

use super::{v4, Child, Driver};
use crate::kernel::KernelOp;
use crate::{DriverError, DriverEvent};

/// The reqid of an admitted identity's SAs (its policies' templates).
pub type ReqidOf = Arc<dyn Fn(&Identity) -> Option<u32> + Send + Sync>;

/// What [`crate::DriverHandle::listen`] sets up.
#[derive(Clone)]
pub struct DialInConfig {
    /// Who may dial in, with which configuration (its `spi_source` and
    /// `dpd_interval` are the driver's own).
    pub lookup: Arc<dyn PeerLookup>,
    /// The reqid for an admitted identity.
    pub reqid_of: ReqidOf,
    /// Our side's selectors for IKE_SA_INIT's template (the center
    /// networks); every SA takes the lookup's.
    pub local_ts: Vec<vpnnat_ike::TrafficSelector>,
}

impl std::fmt::Debug for DialInConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DialInConfig")
            .field("lookup", &self.lookup)
            .finish_non_exhaustive()
    }
}

pub(super) struct Listener {
    core: Responder,
    lookup: Arc<dyn PeerLookup>,
    reqid_of: ReqidOf,
    /// Installed CHILD SAs by inbound SPI, with their identity.
    children: HashMap<u32, (Identity, Child)>,
    /// Each live IKE SA's identity (the core forgets a dead SA before its
    /// down event is read).
    ike: HashMap<(u64, u64), Identity>,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("sas", &self.core.sa_count())
            .field("children", &self.children.len())
            .finish_non_exhaustive()
    }
}

impl Listener {
    pub(super) fn next_timeout(&self) -> Option<Instant> {
        self.core.next_timeout()
    }
    pub(super) fn idle(&self) -> bool {
        self.children.is_empty() && !self.core.is_established()
    }
}

fn label(id: &Identity) -> String {
    String::from_utf8_lossy(&id.data).into_owned()
}

impl Driver {
    pub(super) fn listen(&mut self, now: Instant, c: DialInConfig) -> Result<(), DriverError> {
        let mut template = SaConfig::new(
            // Never an SA's key: IKE_AUTH takes the identity's own.
            vpnnat_ike::Secret::from_slice(b"dial-in template: no SA uses this key"),
            self.cfg.identity.clone(),
            c.local_ts.clone(),
            c.local_ts,
        );
        template.dpd_interval = self.cfg.dpd_interval;
        let lookup: Arc<dyn PeerLookup> = Arc::new(WithDriverSettings {
            inner: c.lookup,
            dpd: self.cfg.dpd_interval,
        });
        template.peer_lookup = Some(lookup.clone());
        let core = Responder::new(ResponderConfig::by_identity(template), now, &self.rng)?;
        if self.listener.is_some() {
            log::info!("dial-in listener replaced");
        }
        self.listener = Some(Listener {
            core,
            lookup,
            reqid_of: c.reqid_of,
            children: HashMap::new(),
            ike: HashMap::new(),
        });
        log::info!("accepting dial-in IKE on {} by identity", self.cfg.local);
        Ok(())
    }

    /// Deletes `id`'s IKE SAs (its VPN ended); their CHILD SAs go as the
    /// core reports them down.
    pub(super) async fn hang_up(&mut self, id: &Identity) -> Result<(), DriverError> {
        let now = Instant::now();
        let l = self.listener.as_mut().ok_or(DriverError::NotListening)?;
        let r = l.core.close_peer(id, now, &self.rng).map_err(DriverError::from);
        self.drain_listener().await;
        r
    }

    /// Asks the lookup again for `id` and gives its live SAs the answer
    /// (its grants changed); a router no longer admitted is hung up on.
    pub(super) async fn refresh(&mut self, id: &Identity) -> Result<(), DriverError> {
        let now = Instant::now();
        let l = self.listener.as_mut().ok_or(DriverError::NotListening)?;
        match l.lookup.config_for(id) {
            Some(cfg) => l.core.update_peer(id, cfg),
            None => {
                let _ = l.core.close_peer(id, now, &self.rng);
            }
        }
        self.drain_listener().await;
        Ok(())
    }

    pub(super) async fn on_dial_in(&mut self, src_wire: SocketAddr, src: SocketAddr, dst: SocketAddr, p: &[u8]) {
        let now = Instant::now();
        let Some(l) = self.listener.as_mut() else { return };
        if let Err(e) = l.core.handle_datagram(now, src, dst, p, &self.rng) {
            if e != vpnnat_ike::Error::NotIke {
                // No secrets here: the core's errors name no keys.
                let kind = crate::drop_log::kind(&e);
                self.dropped(now, crate::drop_log::Sender::Peer, "dial-in refused", kind, src_wire);
                self.rejected(DriverEvent::Rejected {
                    from: src.ip(),
                    error: e.to_string(),
                });
            }
        }
        self.drain_listener().await;
    }

    pub(super) async fn listener_timers(&mut self) {
        let now = Instant::now();
        if let Some(l) = self.listener.as_mut() {
            if l.core.next_timeout().is_some_and(|d| d <= now) {
                l.core.poll_timers(now);
            }
        }
        self.drain_listener().await;
    }

    /// A kernel expire of one of the listener's SAs: true if it was one.
    pub(super) async fn listener_expire(&mut self, e: &crate::Expire) -> bool {
        let now = Instant::now();
        let Some(l) = self.listener.as_mut() else { return false };
        let Some(spi) = l
            .children
            .iter()
            .find(|(_, (_, c))| c.inbound == e.id || c.outbound == e.id)
            .map(|(s, _)| *s)
        else {
            return false;
        };
        if let Err(err) = l.core.expire_child(spi, e.hard, now, &self.rng) {
            log::warn!("acting on the expire of {}: {err}", e.id);
        }
        self.drain_listener().await;
        true
    }

    /// A kernel mapping event for one of the listener's inbound SAs (see
    /// `rebind`): its IKE SA's core decides whether the router moved.
    pub(super) async fn dial_in_esp_moved(&mut self, m: crate::Mapping, to: SocketAddr) {
        let Some(l) = self.listener.as_mut() else { return };
        let Some(spi) = l
            .children
            .iter()
            .find(|(_, (_, c))| c.inbound == m.inbound)
            .map(|(spi, _)| *spi)
        else {
            log::debug!("mapping event for {}: not one of our SAs", m.inbound);
            return;
        };
        if let Err(e) = l.core.esp_moved(spi, to) {
            log::warn!("ESP of {} from {}: {e}", m.inbound, m.new);
        }
        self.drain_listener().await;
    }

    /// Closes every dial-in SA (shutdown).
    pub(super) fn close_listener(&mut self, now: Instant) {
        if let Some(l) = self.listener.as_mut() {
            let ids: Vec<Identity> = l.ike.values().cloned().collect();
            for id in ids {
                let _ = l.core.close_peer(&id, now, &self.rng);
            }
        }
    }

    /// Removes what is left of the listener's SAs from the kernel.
    pub(super) fn remove_listener(&mut self) {
        let Some(l) = self.listener.take() else { return };
        for (_, (id, c)) in l.children {
            self.delete_child_sas(&c);
            self.kernel_op(KernelOp::Notify(DriverEvent::DialInDown {
                identity: id,
                reason: DownReason::Closed,
            }));
        }
    }

    fn delete_child_sas(&self, c: &Child) {
        self.kernel_op(KernelOp::Delete(c.inbound));
        if c.pending_out.is_none() {
            self.kernel_op(KernelOp::Delete(c.outbound));
        }
    }

    pub(super) async fn drain_listener(&mut self) {
        loop {
            let Some(out) = self.listener.as_mut().and_then(|l| l.core.poll_output()) else {
                return;
            };
            match out {
                Output::Send(d) => self.send(d).await,
                Output::Event(ev) => self.on_dial_in_event(ev),
            }
        }
    }

    fn on_dial_in_event(&mut self, ev: Event) {
        let Some(l) = self.listener.as_mut() else { return };
        match ev {
            Event::ChildSaUp(c) => {
                let Some(id) = l.core.peer_of_child(c.inbound_spi) else {
                    log::error!("dial-in CHILD SA {:#010x} without an identity", c.inbound_spi);
                    return;
                };
                let Some(reqid) = (l.reqid_of)(&id) else {
                    // Admitted by the lookup a moment ago, gone now (the
                    // request ended meanwhile): install nothing, close.
                    log::warn!("dial-in {}: no longer admitted, closing", label(&id));
                    let _ = l.core.close_peer(&id, Instant::now(), &self.rng);
                    return;
                };
                log::info!(
                    "dial-in {}: CHILD SA in {:#010x} out {:#010x} from {} encap {:?}",
                    label(&id),
                    c.inbound_spi,
                    c.outbound_spi,
                    c.remote,
                    c.encap
                );
                if let Some(child) = self.install_child(reqid, &c) {
                    if let Some(l) = self.listener.as_mut() {
                        l.children.insert(c.inbound_spi, (id, child));
                    }
                    if let Some(peer) = v4(c.remote) {
                        self.kernel_op(KernelOp::Notify(DriverEvent::ChildSaInstalled {
                            peer,
                            inbound_spi: c.inbound_spi,
                            outbound_spi: c.outbound_spi,
                        }));
                    }
                }
            }
            Event::ChildSaOutbound { inbound_spi, .. } => {
                let pending = l.children.get_mut(&inbound_spi).and_then(|(_, c)| c.pending_out.take());
                if let Some(sa) = pending {
                    self.kernel_op(KernelOp::Add(sa));
                }
            }
            Event::ChildSaDown { inbound_spi, .. } => {
                if let Some((_, c)) = l.children.remove(&inbound_spi) {
                    self.delete_child_sas(&c);
                }
            }
            Event::TunnelUp {
                ike_spis, remote, nat, ..
            } => {
                let Some(id) = l.core.peer_of_ike(ike_spis) else { return };
                l.ike.insert(ike_spis, id.clone());
                log::info!(
                    "dial-in {} up from {remote}{}",
                    label(&id),
                    if nat { " (NAT)" } else { "" }
                );
                self.kernel_op(KernelOp::Notify(DriverEvent::DialInUp {
                    identity: id,
                    remote,
                    nat,
                }));
            }
            Event::IkeSaRekeyed { old, new } => {
                if let Some(id) = l.ike.remove(&old) {
                    l.ike.insert(new, id);
                }
            }
            Event::RekeyFailed { error, .. } => log::warn!("dial-in rekey failed: {error}"),
            Event::PeerMoved {
                ike_spis,
                from,
                to,
                children,
            } => {
                let who = l.ike.get(&ike_spis).map(label).unwrap_or_default();
                log::info!("dial-in {who}: its NAT moved it: {from} -> {to}");
                let moved = l
                    .children
                    .iter_mut()
                    .filter(|(spi, _)| children.iter().any(|(i, _)| i == *spi))
                    .map(|(_, (_, c))| c);
                let ops = super::rebind::follow(moved, from, to, self.cfg.ports);
                for op in ops {
                    self.kernel_op(op);
                }
            }
            Event::TunnelDown { reason, ike_spis } => {
                let Some(id) = l.ike.remove(&ike_spis) else { return };
                // Another IKE SA of the same router (it restarted and came
                // back) keeps the tunnel: not down.
                if l.ike.values().any(|other| *other == id) {
                    log::info!("dial-in {}: an old IKE SA went, a newer one stays", label(&id));
                    return;
                }
                let left: Vec<u32> = l
                    .children
                    .iter()
                    .filter(|(_, (cid, _))| *cid == id)
                    .map(|(s, _)| *s)
                    .collect();
                let gone: Vec<Child> = left
                    .iter()
                    .filter_map(|s| l.children.remove(s))
                    .map(|(_, c)| c)
                    .collect();
                for c in &gone {
                    self.delete_child_sas(c);
                }
                log::info!("dial-in {} down ({reason:?})", label(&id));
                self.kernel_op(KernelOp::Notify(DriverEvent::DialInDown { identity: id, reason }));
            }
        }
    }
}

/// The owner's lookup with the driver's own DPD interval on each SA.
#[derive(Debug)]
struct WithDriverSettings {
    inner: Arc<dyn PeerLookup>,
    dpd: Option<std::time::Duration>,
}

impl PeerLookup for WithDriverSettings {
    fn config_for(&self, idi: &Identity) -> Option<Arc<SaConfig>> {
        let c = self.inner.config_for(idi)?;
        let mut c = (*c).clone();
        c.dpd_interval = self.dpd;
        Some(Arc::new(c))
    }
}
