//! gatewayd's side of router-initiated tunnels (issue 17): the IKE
//! driver's dial-in listener with [`DialInTable`] as its lookup, and the
//! bookkeeping of which admitted router is up.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc::UnboundedSender;
use vpnnat_datapath::REQID_BASE;
use vpnnat_ike::{Identity, SaConfig, Secret, TrafficSelector};
use vpnnat_ike_driver::{DialInConfig, DriverHandle, Request};
use vpnnat_proto::initiation::terminal_of_key_id;
use vpnnat_proto::messages::TunnelStatus;
use vpnnat_proto::types::TerminalId;

use super::super::dial_in::{router_identity, DialInTable};
use super::super::driver::{next_event_seq, DriverError, DriverEvent, PolicyDatapath, TunnelDriver, TunnelSpec};
use super::{IkeTunnel, IkeTunnelDriver};

/// The admitted routers whose tunnel is up.
pub(super) type DialInUp = Arc<Mutex<BTreeSet<TerminalId>>>;

/// Creates the table and sets it as the driver's dial-in lookup.
pub(super) fn start_listening(
    drv: &DriverHandle,
    identity: Identity,
    center_ts: &[TrafficSelector],
) -> (Arc<DialInTable>, DialInUp) {
    // The driver's own identity, as in the gateway-initiated mode: routers
    // check it against the one centerd named (issue 18, item 12).
    let template = SaConfig::new(
        Secret::from_slice(b"dial-in template: every SA takes its router's own key"),
        identity,
        center_ts.to_vec(),
        center_ts.to_vec(),
    );
    let table = DialInTable::new(template);
    let up: DialInUp = Arc::default();
    let for_reqid = table.clone();
    let cfg = DialInConfig {
        lookup: table.clone(),
        reqid_of: Arc::new(move |id: &Identity| {
            for_reqid
                .slot_for(id)
                .map(|(_, slot)| REQID_BASE.saturating_add(u32::from(slot)))
        }),
        local_ts: center_ts.to_vec(),
    };
    let d = drv.clone();
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(async move {
            if let Err(e) = d.listen(cfg).await {
                log::error!("IKE: cannot accept routers that dial in: {e}");
            }
        });
    }
    (table, up)
}

/// A dial-in up/down from the IKE driver as gatewayd's event for centerd.
pub(super) fn dial_in_event(
    events: &UnboundedSender<DriverEvent>,
    table: &DialInTable,
    up: &DialInUp,
    identity: &Identity,
    is_up: bool,
    detail: &str,
) {
    let Some(tid) = terminal_of_key_id(&identity.data) else {
        return;
    };
    if let Ok(mut u) = up.lock() {
        if is_up {
            u.insert(tid.clone());
        } else {
            u.remove(&tid);
        }
    }
    // A router no longer admitted was torn down: the policy driver
    // reported that already.
    let Some(slot) = table.slot_of(&tid) else { return };
    log::info!("terminal={tid} tunnel (dial-in) slot {slot}: {detail}");
    let _ = events.send(DriverEvent {
        terminal_id: tid,
        slot,
        status: if is_up { TunnelStatus::Up } else { TunnelStatus::Down },
        detail: detail.to_owned(),
        seq: next_event_seq(),
    });
}

impl<D: PolicyDatapath> IkeTunnelDriver<D> {
    pub(super) fn setup_dial_in_tunnel(&mut self, spec: TunnelSpec) -> Result<(), DriverError> {
        self.policy.setup(spec.clone())?;
        let terminal = spec.terminal_id.clone();
        if let Some(old) = self.tunnels.get(&terminal) {
            if !old.dial_in && old.connected {
                // It was gateway-initiated: that IKE SA goes.
                self.drv.request_detached(Request::Disconnect(old.router_ip))?;
            }
            if !old.dial_in {
                self.set_peer(old.router_ip, None);
            }
        }
        self.dial_in.admit(terminal.clone(), spec.slot, spec.psk.clone());
        self.dial_in.set_addresses(&terminal, self.addresses(&terminal));
        self.tunnels.insert(
            terminal.clone(),
            IkeTunnel {
                router_ip: spec.router_ip,
                slot: spec.slot,
                psk: spec.psk,
                connected: false,
                dial_in: true,
            },
        );
        log::info!(
            "terminal={terminal} tunnel slot {}: the router dials in (last seen from {})",
            spec.slot,
            spec.router_ip
        );
        Ok(())
    }

    /// The router's grants changed: the lookup and its live SAs follow
    /// (the router rekeys with the new selectors).
    pub(super) fn sync_dial_in(&mut self, terminal: &TerminalId, addrs: Vec<Ipv4Addr>, changed: bool) {
        self.dial_in.set_addresses(terminal, addrs);
        if changed {
            let _ = self
                .drv
                .request_detached(Request::RefreshDialIn(router_identity(terminal)));
        }
    }

    /// Forgets a router that dialed in and deletes its IKE SAs (teardown:
    /// its VPN ended, or it now is gateway-initiated).
    pub(super) fn leave_dial_in(&mut self, terminal: &TerminalId) {
        if self.dial_in.forget(terminal) {
            if let Ok(mut u) = self.dial_in_up.lock() {
                u.remove(terminal);
            }
            let _ = self.drv.request_detached(Request::HangUp(router_identity(terminal)));
            log::info!("terminal={terminal} tunnel (dial-in): the router is no longer admitted");
        }
    }
}
