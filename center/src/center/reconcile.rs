//! Reconciliation with a gateway

use std::net::Ipv4Addr;

use vpnnat_proto::types::TerminalId;
use vpnnat_proto::ProtoError;

use super::{psk_of, tunnel_state, Center, CenterError, GatewayCommands, ReconcileOutcome, RouterCommands};

impl<G: GatewayCommands, R: RouterCommands> Center<G, R> {
    /// Brings one gateway to what the database says it should carry: every
    /// router holding one of its slots gets its tunnel (if it ever sent a
    /// maintenance request, which is what gives the router's address) with
    /// exactly the router's VPNNAT addresses; tunnels the database does not
    /// give this gateway are torn down; the tunnel states it reports are
    /// recorded. Run at start and periodically, so a gatewayd that
    /// restarted (and wiped its kernel state) gets everything back.
    pub async fn reconcile_gateway(&self, gateway: &str, now: u64) -> Result<ReconcileOutcome, CenterError> {
        let report_at = std::time::Instant::now();
        let report = self.gateways.report(gateway).await.map_err(CenterError::Gateway)?;
        let mut out = ReconcileOutcome {
            gateway: gateway.to_owned(),
            ..ReconcileOutcome::default()
        };
        let held = self.store()?.slots_of_gateway(gateway)?;
        for slot in &held {
            let Some(tid_s) = slot.terminal_id.clone() else {
                continue;
            };
            // Under the router's lock, and only if no request or end worked
            // on its tunnel since the report was taken and its slot is the
            // one scanned: otherwise the report is stale for it (the next
            // round looks again).
            let serial = self.lock_terminal(&tid_s).await;
            if serial.is_some_and(|t| t >= report_at) || self.store()?.slot_of(&tid_s)?.as_ref() != Some(slot) {
                continue;
            }
            let (row, router_ip, addrs) = {
                let st = self.store()?;
                let Some(row) = st.terminal(&tid_s)? else {
                    continue;
                };
                let ip = st.latest_router_ip(&tid_s)?;
                let addrs: Vec<Ipv4Addr> = st.addresses_of_terminal(&tid_s)?.into_iter().map(|(_, a)| a).collect();
                (row, ip, addrs)
            };
            let Some(router_ip) = router_ip else {
                continue; // never asked for maintenance: no tunnel is due yet
            };
            let tid = TerminalId::new(tid_s.as_str()).map_err(ProtoError::from)?;
            let have = report.tunnels().iter().find(|t| t.terminal_id == tid);
            let current: Vec<Ipv4Addr> = match have {
                Some(t) if t.slot == slot.slot && t.router_ip.get() == router_ip => {
                    let st = tunnel_state(t.status);
                    // Not if an event newer than the report was applied.
                    let news = self
                        .event_order
                        .lock()
                        .map_err(|_| CenterError::Poisoned)?
                        .report_is_news(gateway, &tid_s, report.seq());
                    if news && st != slot.tunnel_state {
                        self.store()?.set_tunnel_state(gateway, slot.slot, &tid_s, st, now)?;
                        self.tunnel_events.notify_waiters();
                    }
                    t.addresses.iter().map(|a| a.get()).collect()
                }
                _ => {
                    let psk = psk_of(&row)?;
                    let mode = self.initiation_of(&tid_s)?;
                    if let Err(e) = self
                        .gateways
                        .setup_tunnel_as(gateway, &tid, router_ip, slot.slot, &psk, mode)
                        .await
                    {
                        out.warnings.push(format!("setup {tid_s}: {e}"));
                        continue;
                    }
                    out.set_up.push(tid_s.clone());
                    have.map(|t| t.addresses.iter().map(|a| a.get()).collect())
                        .unwrap_or_default()
                }
            };
            // Host routes are idempotent: (re)add all (a restarted centerd
            // host gets them back).
            self.route(true, gateway, &addrs, &mut out.warnings);
            let missing: Vec<Ipv4Addr> = addrs.iter().copied().filter(|a| !current.contains(a)).collect();
            let extra: Vec<Ipv4Addr> = current.iter().copied().filter(|a| !addrs.contains(a)).collect();
            for chunk in missing.chunks(vpnnat_proto::messages::MAX_ADDRESSES_PER_COMMAND) {
                match self.gateways.add_addresses(gateway, &tid, chunk).await {
                    Ok(()) => out.added = out.added.saturating_add(chunk.len()),
                    Err(e) => out.warnings.push(format!("add for {tid_s}: {e}")),
                }
            }
            for chunk in extra.chunks(vpnnat_proto::messages::MAX_ADDRESSES_PER_COMMAND) {
                match self.gateways.remove_addresses(gateway, &tid, chunk).await {
                    Ok(()) => out.removed = out.removed.saturating_add(chunk.len()),
                    Err(e) => out.warnings.push(format!("remove for {tid_s}: {e}")),
                }
            }
        }
        for t in report.tunnels() {
            let ours = held
                .iter()
                .any(|s| s.terminal_id.as_deref() == Some(t.terminal_id.as_str()) && s.slot == t.slot);
            if !ours {
                let serial = self.lock_terminal(t.terminal_id.as_str()).await;
                // Worked on since the report, or given this slot since the
                // scan: not known to be a stray.
                let now_held = self.store()?.slot_of(t.terminal_id.as_str())?;
                if serial.is_some_and(|w| w >= report_at)
                    || now_held.is_some_and(|s| s.gateway == gateway && s.slot == t.slot)
                {
                    continue;
                }
                match self.gateways.tear_down(gateway, &t.terminal_id).await {
                    Ok(()) => out.torn_down.push(t.terminal_id.to_string()),
                    Err(e) => out.warnings.push(format!("tear down {}: {e}", t.terminal_id)),
                }
            }
        }
        if !out.set_up.is_empty() || out.added > 0 || out.removed > 0 || !out.torn_down.is_empty() {
            log::info!(
                "reconciled gateway {gateway}: {} set up, {} added, {} removed, {} torn down",
                out.set_up.len(),
                out.added,
                out.removed,
                out.torn_down.len()
            );
        }
        for w in &out.warnings {
            log::warn!("reconcile {gateway}: {w}");
        }
        Ok(out)
    }
}
