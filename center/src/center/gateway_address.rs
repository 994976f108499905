//! 3. VPN gateway address request

use std::net::Ipv4Addr;

use vpnnat_proto::auth::AuthHeaders;
use vpnnat_proto::keys::SecretBytes;
use vpnnat_proto::messages::{GatewayAddressRequest, GatewayInfo};
use vpnnat_proto::types::TerminalId;
use vpnnat_proto::Outgoing;

use crate::storage::{SlotRow, TunnelState};

use super::{Center, CenterError, CommandError, GatewayCommands, RouterCommands};

/// Extra slot-claim attempts beyond one per gateway (each failed attempt
/// means the chosen gateway filled up between scan and claim).
const MAX_SLOT_RACES: usize = 16;

impl<G: GatewayCommands, R: RouterCommands> Center<G, R> {
    pub async fn gateway_address(
        &self,
        path: &str,
        headers: &AuthHeaders,
        body: &[u8],
        now: u64,
        seen: Option<Ipv4Addr>,
    ) -> Result<Outgoing, CenterError> {
        let (v, _row, sid2) = self.verify_router::<GatewayAddressRequest>(path, headers, body, now)?;
        let tid = v.principal().clone();
        let slot = self.ensure_slot(&tid, now).await?;
        let initiation = self.decide_initiation(&tid, v.command(), seen, now)?;
        let gw = self.settings.gateway(&slot.gateway).ok_or_else(|| {
            CenterError::Gateway(CommandError::Unknown {
                target: slot.gateway.clone(),
            })
        })?;
        let info = GatewayInfo {
            gateway_ip: gw.global_ip,
            gateway_ike_id: gw.ike_id.clone(),
            center_networks: self.settings.center_networks.clone(),
            initiation,
        };
        let resp = info.seal(&self.rng, &tid, &v.command().reply_key)?;
        log::info!(
            "terminal={tid} VPN gateway {} slot {}, {initiation}-initiated",
            slot.gateway,
            slot.slot
        );
        self.answer(&v, &resp, &sid2.mac_key(), now)
    }

    /// The slot the router keeps, or a new one. The router keeps its
    /// gateway while its tunnel is up, and also while that gateway answers
    /// (moving a healthy router gains nothing and strands its routes); it
    /// moves only when its gateway stops answering. A new slot is the first
    /// free one scanning from the head, skipping gateways that do not answer.
    async fn ensure_slot(&self, tid: &TerminalId, now: u64) -> Result<SlotRow, CenterError> {
        let held = self.reads()?.slot_of(tid.as_str())?;
        let mut skip = Vec::new();
        if let Some(h) = held {
            // A gateway the heartbeat marked down has no tunnel up (its
            // slots were marked down with it) and is not probed again here.
            let alive = self.reads()?.gateway_alive(&h.gateway)?;
            if h.tunnel_state == TunnelState::Up || (alive && self.gateways.probe(&h.gateway).await) {
                return Ok(h);
            }
            log::warn!("terminal={tid} gateway {} does not answer, choosing another", h.gateway);
            skip.push(h.gateway.clone());
        }
        // The claim takes the lowest free slot of the chosen gateway in one
        // transaction, so a race with other requests (or other centerd
        // processes) can only mean "that gateway filled up meanwhile":
        // then the scan moves on. Bounded by the number of gateways.
        for _ in 0..self.claim_attempts() {
            let (gw, _) = self.choose_slot(&mut skip).await?;
            if self.store()?.claim_slot_on(&gw, tid.as_str(), now)?.is_some() {
                return self
                    .reads()?
                    .slot_of(tid.as_str())?
                    .ok_or(CenterError::NoGatewayCapacity);
            }
        }
        Err(CenterError::NoGatewayCapacity)
    }

    pub(super) fn claim_attempts(&self) -> usize {
        self.settings.gateways.len().saturating_add(MAX_SLOT_RACES)
    }

    /// First free slot from the head among gateways that answer.
    pub(super) async fn choose_slot(&self, skip: &mut Vec<String>) -> Result<(String, u16), CenterError> {
        loop {
            let cand = self.reads()?.first_free_slot(skip)?;
            let Some((gw, slot)) = cand else {
                return Err(CenterError::NoGatewayCapacity);
            };
            if self.gateways.probe(&gw).await {
                return Ok((gw, slot));
            }
            log::warn!("gateway {gw} does not answer; skipped");
            skip.push(gw);
        }
    }
}
