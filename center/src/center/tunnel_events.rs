//! gatewayd -> centerd: tunnel up/down

use vpnnat_proto::auth::{AuthHeaders, ReplayGuard};
use vpnnat_proto::keys::SecretBytes;
use vpnnat_proto::messages::{Ack, TunnelEvent};
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
