//! gatewayd -> centerd: tunnel up/down

use vpnnat_proto::auth::{AuthHeaders, ReplayGuard};
use vpnnat_proto::keys::SecretBytes;
use vpnnat_proto::messages::{Ack, TunnelEvent, TunnelStatus};
use vpnnat_proto::types::GatewayName;
use vpnnat_proto::{decode_request, KeyKind, Outgoing, ProtoError};

use super::{tunnel_state, Center, CenterError, GatewayCommands, LockedNonceStore, RouterCommands};

impl<G: GatewayCommands, R: RouterCommands> Center<G, R> {
    pub fn tunnel_event(
        &self,
        path: &str,
        headers: &AuthHeaders,
        body: &[u8],
        now: u64,
    ) -> Result<Outgoing, CenterError> {
        let mut key = None;
        let v = {
            let mut guard = ReplayGuard::new(LockedNonceStore(&self.store), self.settings.replay);
            decode_request::<TunnelEvent, _, _>(&mut guard, path, headers, body, now, |g: &GatewayName, kind| {
                if kind != KeyKind::GatewayApiKey {
                    return None;
                }
                let k = self.settings.gateway(g.as_str())?.api_key.mac_key();
                key = Some(k.clone());
                Some(k)
            })?
        };
        let key = key.ok_or(CenterError::Proto(ProtoError::UnknownTerminal))?;
        let ev: &TunnelEvent = v.command();
        let state = tunnel_state(ev.status);
        let news = self
            .event_order
            .lock()
            .map_err(|_| CenterError::Poisoned)?
            .event_is_news(v.principal().as_str(), ev.terminal_id.as_str(), ev.seq);
        if !news {
            log::info!(
                "terminal={} gateway {}: tunnel event {} ({}) is older than what was applied; ignored",
                ev.terminal_id,
                v.principal(),
                ev.seq,
                state.as_str()
            );
            return self.answer(&v, &Ack {}, &key, now);
        }
        let matched =
            self.store()?
                .set_tunnel_state(v.principal().as_str(), ev.slot, ev.terminal_id.as_str(), state, now)?;
        if matched {
            self.note_tunnel_detail(ev.terminal_id.as_str(), ev.status, ev.detail.as_str());
            log::info!(
                "terminal={} gateway {}: tunnel (slot {}) is {}",
                ev.terminal_id,
                v.principal(),
                ev.slot,
                state.as_str()
            );
        } else {
            log::warn!(
                "terminal={} gateway {}: event for slot {} which it does not hold; ignored",
                ev.terminal_id,
                v.principal(),
                ev.slot
            );
        }
        self.tunnel_events.notify_waiters();
        self.answer(&v, &Ack {}, &key, now)
    }
}

impl<G, R> Center<G, R> {
    /// Keeps the gateway's last word on a tunnel that went down (cleared
    /// when it comes up), for [`super::tunnel_failure::reason`].
    fn note_tunnel_detail(&self, terminal_id: &str, status: TunnelStatus, detail: &str) {
        let Ok(mut m) = self.tunnel_details.lock() else {
            return;
        };
        // Only a failure explains one: "connecting" details ("policies
        // installed; IKE connects ...") say nothing about why it did not.
        match status {
            TunnelStatus::Up => {
                m.remove(terminal_id);
            }
            TunnelStatus::Down if !detail.trim().is_empty() => {
                m.insert(terminal_id.to_owned(), detail.to_owned());
            }
            TunnelStatus::Down | TunnelStatus::Connecting => {}
        }
    }

    /// What the gateway last said about the router's tunnel, if it was not
    /// up then.
    pub(super) fn last_tunnel_detail(&self, terminal_id: &str) -> Option<String> {
        self.tunnel_details.lock().ok()?.get(terminal_id).cloned()
    }

    /// Forgets it: a new attempt starts (an old tunnel's failure must not
    /// explain the next one).
    pub(super) fn forget_tunnel_detail(&self, terminal_id: &str) {
        if let Ok(mut m) = self.tunnel_details.lock() {
            m.remove(terminal_id);
        }
    }
}
