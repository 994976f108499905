//! 4. Maintenance request

use std::net::Ipv4Addr;
use std::time::Duration;
use vpnnat_proto::keys::SecretBytes;

use vpnnat_proto::auth::AuthHeaders;
use vpnnat_proto::messages::{Grant, Grants, MaintenanceRequest};
use vpnnat_proto::types::{AcceptanceNumber, ClaimantLevel, TerminalId, TerminalName, Urgency};
use vpnnat_proto::{Outgoing, ProtoError};

use crate::storage::{NewRequest, SlotRow, StorageError, TerminalRow, TunnelState};

use super::{
    psk_of, tunnel_failure, unicast, Actor, Center, CenterError, CommandError, GatewayCommands, RouterCommands,
};

impl<G: GatewayCommands, R: RouterCommands> Center<G, R> {
    /// `router_ip` is the request's source address (the router's global IP).
    pub async fn maintenance(
        &self,
        path: &str,
        headers: &AuthHeaders,
        body: &[u8],
        router_ip: Ipv4Addr,
        now: u64,
    ) -> Result<Outgoing, CenterError> {
        let (v, row, sid2) = self.verify_router::<MaintenanceRequest>(path, headers, body, now)?;
        let tid = v.principal().clone();
        let req: &MaintenanceRequest = v.command();
        let details = req.open_details(&sid2, &tid)?;
        let names: Vec<String> = details.terminal_names.iter().map(|n| n.to_string()).collect();
        let level = match req.claimant_level {
            ClaimantLevel::General => "general",
            ClaimantLevel::Administrator => "administrator",
        };
        let urgency = match req.urgency {
            Urgency::Low => "low",
            Urgency::Normal => "normal",
            Urgency::High => "high",
            Urgency::Emergency => "emergency",
        };
        let new = NewRequest {
            terminal_id: tid.as_str(),
            router_ip,
            claimant_name: details.claimant_name.as_str(),
            claimant_level: level,
            phone: details.phone.as_str(),
            urgency,
            content: details.content.as_str(),
            terminal_names: &names,
            now,
            max_open: Some(self.settings.max_open_requests),
            // Issue 19, item 8: every grant ends by itself (told to the
            // router in the answer when it can show it).
            expires_at: Some(now.saturating_add(self.settings.max_grant_lifetime_secs)),
        };
        let serial = self.work_on_terminal(tid.as_str()).await;
        // A router that skipped exchange 3 gets a slot here, claimed in the
        // same transaction as the addresses and the request.
        let held = self.reads()?.slot_of(tid.as_str())?;
        let mut skip = Vec::new();
        if let Some(h) = &held {
            // The router is bound to this gateway (its address and IKE
            // identity came with exchange 3), so it cannot be moved from
            // here: refuse at once instead of waiting for the command to
            // time out. The router asks for a gateway again after its VPN
            // ends; the operator view shows the gateway down.
            if !self.reads()?.gateway_alive(&h.gateway)? {
                return Err(CenterError::Gateway(CommandError::Unreachable {
                    target: h.gateway.clone(),
                    reason: "the gateway is down (no heartbeat answer)".into(),
                }));
            }
        }
        let (number, grants) = match held {
            Some(_) => self.store()?.create_request(&new, None)?,
            None => {
                let mut result = None;
                for _ in 0..self.claim_attempts() {
                    let (gw, _) = self.choose_slot(&mut skip).await?;
                    let created = self.store()?.create_request(&new, Some(&gw));
                    match created {
                        Ok(r) => {
                            result = Some(r);
                            break;
                        }
                        Err(StorageError::GatewayFull { .. }) => continue,
                        Err(e) => return Err(e.into()),
                    }
                }
                result.ok_or(CenterError::NoGatewayCapacity)?
            }
        };
        vpnnat_crashpoint::hit("center.grant.after_commit");
        let slot = self
            .reads()?
            .slot_of(tid.as_str())?
            .ok_or(CenterError::NoGatewayCapacity)?;
        let subject = crate::logging::kv(&tid, Some(number));
        log::info!(
            "{subject} maintenance request stored ({} grant(s)), gateway {} slot {}",
            grants.len(),
            slot.gateway,
            slot.slot
        );
        // The router's own parts ride in every tunnel: the center reaches
        // the server part through it for end/release/VPN end.
        let mut addrs = vec![row.server_part_vpnnat, row.router_part_vpnnat];
        for g in &grants {
            if !addrs.contains(&g.vpnnat) {
                addrs.push(g.vpnnat);
            }
        }
        if slot.tunnel_state != TunnelState::Up {
            self.forget_tunnel_detail(tid.as_str());
        }
        if let Err(e) = self.program_gateway(&slot, &tid, &row, router_ip, &addrs).await {
            // Nothing half-assigned: the request and the addresses it took go.
            log::warn!("{subject} request rolled back: {e}");
            self.store()?.abort_request(number)?;
            self.audit(
                now,
                &Actor::router(tid.as_str(), Some(router_ip)),
                "release",
                Some(tid.as_str()),
                Some(number),
                &format!("request withdrawn, its grants taken back: gateway failed: {e}"),
            );
            return Err(CenterError::Gateway(e));
        }
        log::info!(
            "{subject} gateway {} commanded: tunnel slot {}, {} address(es)",
            slot.gateway,
            slot.slot,
            addrs.len()
        );
        vpnnat_crashpoint::hit("center.grant.after_gateway");
        let mut warnings = Vec::new();
        self.route(true, &slot.gateway, &addrs, &mut warnings);
        drop(serial); // the wait below sends nothing
        for w in warnings {
            log::warn!("{subject} {w}");
        }
        let bound = self.settings.tunnel_up_timeout;
        if !self.wait_tunnel_up(&tid, bound).await? && !bound.is_zero() {
            // PROTOCOL.md 4 ([0175]): accepted means reachable. A request
            // whose tunnel never came is ended like an operator's end (every
            // address, grant, route and the slot go back), and the router
            // is told what failed instead of "accepted".
            let why = tunnel_failure::reason(self.last_tunnel_detail(tid.as_str()).as_deref());
            log::warn!(
                "{subject} tunnel at {} slot {} not up after {bound:?} ({why}); request ended, everything released",
                slot.gateway,
                slot.slot,
            );
            let actor = Actor::new("centerd", "tunnel-timeout");
            self.audit(
                now,
                &actor,
                "tunnel_failed",
                Some(tid.as_str()),
                Some(number),
                &format!("tunnel at {} not up within {bound:?}: {why}", slot.gateway),
            );
            let ended = self.end_by(number, now, &actor).await?;
            for w in ended.warnings {
                log::warn!("{subject} {w}");
            }
            return Err(CenterError::TunnelNotUp {
                gateway: slot.gateway.clone(),
                waited: bound,
                why,
            });
        }
        let grants = Grants::new(
            grants
                .iter()
                .map(|g| {
                    Ok(Grant {
                        terminal_name: TerminalName::new(g.terminal_name.clone()).map_err(ProtoError::from)?,
                        vpnnat_addr: unicast(g.vpnnat)?,
                    })
                })
                .collect::<Result<Vec<_>, CenterError>>()?,
        )
        .map_err(ProtoError::from)?;
        let n = AcceptanceNumber::new(number).map_err(ProtoError::from)?;
        // The grants are in the audit log already: written by
        // `create_request` in the request's own transaction.
        // The router shows when the grants end, if it can (older routers
        // refuse a field they do not know).
        let ends_at = req
            .wants_ends_at
            .then(|| crate::limits::effective_end(now, new.expires_at, self.settings.max_grant_lifetime_secs));
        // Likewise its idle limit, to routers that ask (and only when there is one).
        let idle = self.settings.idle_timeout_secs.filter(|_| req.wants_idle_timeout);
        let resp = grants
            .seal(&self.rng, &tid, &req.reply_key, n)?
            .with_ends_at(ends_at)
            .with_idle_timeout(idle);
        log::info!("{subject} maintenance request accepted ({} terminals)", names.len());
        self.answer(&v, &resp, &sid2.mac_key(), now)
    }

    async fn program_gateway(
        &self,
        slot: &SlotRow,
        tid: &TerminalId,
        row: &TerminalRow,
        router_ip: Ipv4Addr,
        addrs: &[Ipv4Addr],
    ) -> Result<(), CommandError> {
        if slot.tunnel_state != TunnelState::Up {
            let psk = psk_of(row).map_err(|e| CommandError::BadAnswer {
                target: slot.gateway.clone(),
                reason: e.to_string(),
            })?;
            let mode = self.initiation_of(tid.as_str()).map_err(|e| CommandError::BadAnswer {
                target: slot.gateway.clone(),
                reason: e.to_string(),
            })?;
            self.gateways
                .setup_tunnel_as(&slot.gateway, tid, router_ip, slot.slot, &psk, mode)
                .await?;
            vpnnat_crashpoint::hit("center.grant.after_tunnel_setup");
        }
        for chunk in addrs.chunks(vpnnat_proto::messages::MAX_ADDRESSES_PER_COMMAND) {
            self.gateways.add_addresses(&slot.gateway, tid, chunk).await?;
        }
        Ok(())
    }

    /// Waits for the router's tunnel-up event (no polling of the gateway):
    /// true if up within `timeout`.
    pub async fn wait_tunnel_up(&self, tid: &TerminalId, timeout: Duration) -> Result<bool, CenterError> {
        let deadline = tokio::time::Instant::now().checked_add(timeout);
        loop {
            let notified = self.tunnel_events.notified();
            tokio::pin!(notified);
            // Registered before reading, so an event between the read and
            // the wait is not lost.
            notified.as_mut().enable();
            let up = self
                .reads()?
                .slot_of(tid.as_str())?
                .is_some_and(|s| s.tunnel_state == TunnelState::Up);
            if up {
                return Ok(true);
            }
            // Past the deadline (e.g. a zero timeout): answer now rather
            // than through a timer that fires on the driver's next tick.
            if deadline.is_some_and(|d| d <= tokio::time::Instant::now()) {
                return Ok(false);
            }
            // A timeout too large to represent means "wait without limit".
            let woke = match deadline {
                Some(d) => tokio::time::timeout_at(d, notified).await.is_ok(),
                None => {
                    notified.await;
                    true
                }
            };
            if !woke {
                return Ok(false);
            }
        }
    }
}
