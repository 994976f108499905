//! Tunnel lost (beyond the seed)

use std::net::Ipv4Addr;
use vpnnat_proto::keys::SecretBytes;

use vpnnat_proto::auth::AuthHeaders;
use vpnnat_proto::messages::{TunnelLostAnswer, TunnelLostNotice, TunnelRebuild};
use vpnnat_proto::Outgoing;

use crate::storage::TunnelState;

use super::{Actor, Center, CenterError, CommandError, GatewayCommands, RouterCommands};

impl<G: GatewayCommands, R: RouterCommands> Center<G, R> {
    /// A router that restarted (crash, power cut, reboot) lost its IKE
    /// state while its gateway still holds the IKE SA; the gateway would
    /// notice only by dead-peer detection, a minute or more later. If the
    /// router holds a slot with a tunnel due (it asked for maintenance),
    /// its gateway drops that IKE SA and negotiates afresh now; the answer
    /// waits (bounded, like a grant) for the tunnel-up event. `peer` is the
    /// notice's source address, for the audit log.
    pub async fn tunnel_lost(
        &self,
        path: &str,
        headers: &AuthHeaders,
        body: &[u8],
        now: u64,
        peer: Option<Ipv4Addr>,
    ) -> Result<Outgoing, CenterError> {
        let (v, _row, sid2) = self.verify_router::<TunnelLostNotice>(path, headers, body, now)?;
        let tid = v.principal().clone();
        let serial = self.work_on_terminal(tid.as_str()).await;
        let slot = self.reads()?.slot_of(tid.as_str())?;
        // A tunnel is due once a maintenance request gave the router's
        // address and until VPN end frees the slot.
        let due = match slot {
            Some(s) if self.reads()?.latest_router_ip(tid.as_str())?.is_some() => Some(s),
            _ => None,
        };
        let Some(slot) = due else {
            log::info!("terminal={tid} tunnel lost: no tunnel is due (no slot or no request), nothing to rebuild");
            let answer = TunnelLostAnswer {
                tunnel: TunnelRebuild::NotDue,
            };
            return self.answer(&v, &answer, &sid2.mac_key(), now);
        };
        if !self.reads()?.gateway_alive(&slot.gateway)? {
            return Err(CenterError::Gateway(CommandError::Unreachable {
                target: slot.gateway.clone(),
                reason: "the gateway is down (no heartbeat answer)".into(),
            }));
        }
        // Not up any more as far as anyone can tell: the wait below must
        // see the fresh IKE SA's event, not the stale state.
        self.store()?
            .set_tunnel_state(&slot.gateway, slot.slot, tid.as_str(), TunnelState::Connecting, now)?;
        self.gateways
            .restart_tunnel(&slot.gateway, &tid)
            .await
            .map_err(CenterError::Gateway)?;
        log::info!(
            "terminal={tid} tunnel lost (router restarted): gateway {} slot {} negotiates it afresh",
            slot.gateway,
            slot.slot
        );
        self.audit(
            now,
            &Actor::router(tid.as_str(), peer),
            "tunnel_restart",
            Some(tid.as_str()),
            None,
            &format!(
                "router restarted; gateway {} negotiates its tunnel afresh",
                slot.gateway
            ),
        );
        drop(serial); // the wait below sends nothing
        let up = self.wait_tunnel_up(&tid, self.settings.tunnel_up_timeout).await?;
        if !up {
            log::warn!(
                "terminal={tid} tunnel at {} slot {} not up after {:?}; answering anyway",
                slot.gateway,
                slot.slot,
                self.settings.tunnel_up_timeout
            );
        }
        let answer = TunnelLostAnswer {
            tunnel: if up {
                TunnelRebuild::Up
            } else {
                TunnelRebuild::Connecting
            },
        };
        self.answer(&v, &answer, &sid2.mac_key(), now)
    }
}
