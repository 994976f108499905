//! 5. Operator start, 6.-8. end, judgments, release, VPN end

use std::net::Ipv4Addr;

use vpnnat_proto::types::{AcceptanceNumber, TerminalId, TerminalName};
use vpnnat_proto::ProtoError;

use crate::storage::{is_router_own_part, RequestRow, TunnelState};

use super::{secret_id2_of, Actor, Center, CenterError, EndOutcome, GatewayCommands, RouterCommands, RouterTarget};

impl<G: GatewayCommands, R: RouterCommands> Center<G, R> {
    pub fn start(&self, number: u64, now: u64) -> Result<RequestRow, CenterError> {
        self.start_by(number, now, &Actor::centerd())
    }

    /// [`Center::start`] by `actor` (recorded in the audit log).
    pub fn start_by(&self, number: u64, now: u64, actor: &Actor) -> Result<RequestRow, CenterError> {
        let r = self.store()?.start_request_by(number, now, &actor.who, &actor.peer)?;
        log::info!(
            "{} request started by {}",
            crate::logging::kv(&r.terminal_id, Some(number)),
            actor.who
        );
        Ok(r)
    }

    fn target(&self, terminal_id: &str) -> Result<Option<RouterTarget>, CenterError> {
        let Some(row) = self.store()?.terminal(terminal_id)? else {
            return Ok(None);
        };
        let tid = TerminalId::new(terminal_id).map_err(ProtoError::from)?;
        Ok(Some(RouterTarget {
            terminal_id: tid,
            address: row.server_part_vpnnat,
            secret_id2: secret_id2_of(&row)?,
        }))
    }

    /// The operator pressed "end": 6, the three judgments, 7 and 8.
    ///
    /// The center's state changes even when the router does not answer
    /// (its tunnel may be gone): the pool must not leak because a router is
    /// offline; the failure is reported as a warning.
    pub async fn end(&self, number: u64, now: u64) -> Result<EndOutcome, CenterError> {
        self.end_by(number, now, &Actor::centerd()).await
    }

    /// [`Center::end`] by `actor`: the end, every release and the VPN end
    /// go to the audit log under that actor.
    pub async fn end_by(&self, number: u64, now: u64, actor: &Actor) -> Result<EndOutcome, CenterError> {
        self.end_with_reason(number, now, actor, None).await
    }

    /// [`Center::end_by`] with the operator's reason (issue 20, item 6):
    /// stored with the request and in its `end` audit row. (The router's
    /// end command carries no text, so the site owner does not see it.)
    pub async fn end_with_reason(
        &self,
        number: u64,
        now: u64,
        actor: &Actor,
        reason: Option<&crate::end_reason::EndReason>,
    ) -> Result<EndOutcome, CenterError> {
        // The "end" audit row commits with the state change.
        let row = self
            .store()?
            .end_request_with_reason(number, now, &actor.who, &actor.peer, reason)?;
        vpnnat_crashpoint::hit("center.end.after_commit");
        let n = AcceptanceNumber::new(number).map_err(ProtoError::from)?;
        let names: Vec<String> = row.grants.iter().map(|g| g.terminal_name.clone()).collect();
        self.finish_end(&row.terminal_id, number, Some(n), &names, now, actor)
            .await
    }

    /// When request `r`'s time runs out (issue 19, item 8): its stored
    /// end, never later than the configured maximum allows.
    pub fn request_end(&self, r: &RequestRow) -> u64 {
        crate::limits::effective_end(r.received_at, r.expires_at, self.settings.max_grant_lifetime_secs)
    }

    /// An operator limits open request `number` to `minutes` from `now`
    /// (never beyond the configured maximum lifetime; audited as `limit`).
    pub fn limit_by(&self, number: u64, minutes: u64, now: u64, actor: &Actor) -> Result<RequestRow, CenterError> {
        let r = self.store()?.limit_request_by(
            number,
            minutes,
            self.settings.max_grant_lifetime_secs,
            now,
            &actor.who,
            &actor.peer,
        )?;
        log::info!(
            "{} time limit set by {}: ends at {}",
            crate::logging::kv(&r.terminal_id, Some(number)),
            actor.who,
            crate::limits::utc_hhmm(self.request_end(&r))
        );
        Ok(r)
    }

    /// Ends every open request whose time is up at `now` (issue 19, item
    /// 8) through the same path as an operator's end: the router's end
    /// command, the judgments, releases, VPN end; the `expire` audit row
    /// commits with the state change and says why. A request that fails
    /// does not hold up the others (it is tried again at the next call).
    ///
    /// With `[center] idle_timeout_secs`, also every open request whose
    /// router's tunnel carried no packet that long
    /// ([`crate::limits::idle_due`]; the `expire` row says "idle: ...").
    pub async fn expire_due(&self, now: u64) -> Result<Vec<EndOutcome>, CenterError> {
        let max = self.settings.max_grant_lifetime_secs;
        let open = self.reads()?.open_limits()?;
        let due = crate::limits::due(&open, max, now);
        let actor = Actor::centerd();
        let mut out = self.end_idle(&open, now, &actor).await?;
        for e in due {
            let number = e.acceptance_number;
            // Re-checked in the transaction: an end or a new limit that
            // came meanwhile wins.
            let expired = self.store()?.expire_request(number, now, max, &actor.who, &actor.peer);
            let stored = expired.map(|e| e.map(|(row, why)| (row, why.detail())));
            out.extend(
                self.finish_stored_end(number, stored, "at its time limit", now, &actor)
                    .await?,
            );
        }
        Ok(out)
    }

    /// The rest of an end the store already made by itself (time limit or
    /// idle, with its `expire` row): logs why, then the router's end
    /// command, the judgments, releases and VPN end. `None`: nothing was
    /// ended (an end or a new limit came meanwhile, or the store failed,
    /// logged; the next call tries again).
    async fn finish_stored_end(
        &self,
        number: u64,
        stored: crate::storage::Result<Option<(RequestRow, String)>>,
        what: &str,
        now: u64,
        actor: &Actor,
    ) -> Result<Option<EndOutcome>, CenterError> {
        let row = match stored {
            Ok(Some((row, why))) => {
                log::info!("{} {why}", crate::logging::kv(&row.terminal_id, Some(number)));
                row
            }
            Ok(None) => return Ok(None),
            Err(err) => {
                log::error!("request {number}: cannot end it {what}: {err}");
                return Ok(None);
            }
        };
        let n = AcceptanceNumber::new(number).map_err(ProtoError::from)?;
        let names: Vec<String> = row.grants.iter().map(|g| g.terminal_name.clone()).collect();
        self.finish_end(&row.terminal_id, number, Some(n), &names, now, actor)
            .await
            .map(Some)
    }

    /// The idle part of [`Center::expire_due`].
    async fn end_idle(
        &self,
        open: &[crate::limits::OpenRequest],
        now: u64,
        actor: &Actor,
    ) -> Result<Vec<EndOutcome>, CenterError> {
        let Some(idle) = self.settings.idle_timeout_secs else {
            return Ok(Vec::new());
        };
        let known = self.reads()?.known_tunnel_traffic()?;
        let mut out = Vec::new();
        for i in crate::limits::idle_due(open, &known, now, idle) {
            let number = i.acceptance_number;
            // Re-checked in the transaction against the traffic known then.
            let ended = self
                .store()?
                .end_idle_request(number, now, idle, &actor.who, &actor.peer);
            let stored = ended.map(|e| e.map(|(row, why)| (row, why.detail())));
            out.extend(self.finish_stored_end(number, stored, "as idle", now, actor).await?);
        }
        Ok(out)
    }

    /// Records what a gateway's state report says of its tunnels' last
    /// traffic (issue 19, item 8), writing only what changed. Tunnels the
    /// report says nothing of (a gateway from before) stay unknown.
    pub fn record_traffic(&self, report: &vpnnat_proto::messages::StateReport) -> Result<(), CenterError> {
        let mut written = self.traffic_written.lock().map_err(|_| CenterError::Poisoned)?;
        let changed: Vec<(String, u64)> = report
            .tunnels()
            .iter()
            .filter_map(|t| Some((t.terminal_id.as_str().to_owned(), t.last_use?)))
            .filter(|(id, t)| written.get(id).is_none_or(|w| t > w))
            .collect();
        if changed.is_empty() {
            return Ok(());
        }
        self.store()?.record_tunnel_traffic(&changed)?;
        written.extend(changed);
        Ok(())
    }

    /// Ends that a crash interrupted: the request is "ended" in the
    /// database (that commit comes first) but some of its addresses, or
    /// the router's slot, were never given back. Runs the rest of the end
    /// for each such router (judgments 1-3, releases, VPN end; commands to
    /// router and gateway are idempotent), so no address or slot stays
    /// lost. Called once at start, before the first gateway reconcile.
    pub async fn resume_ends(&self, now: u64) -> Result<Vec<EndOutcome>, CenterError> {
        let tids = self.reads()?.terminals_with_ended_holdings()?;
        let actor = Actor::new("centerd", "resume");
        let mut out = Vec::new();
        for tid_s in tids {
            let names: Vec<String> = self
                .reads()?
                .addresses_of_terminal(&tid_s)?
                .into_iter()
                .map(|(name, _)| name)
                .filter(|name| !is_router_own_part(name))
                .collect();
            let open_names = {
                let st = self.reads()?;
                let mut v = Vec::new();
                for name in &names {
                    if st.all_ended_for_name(&tid_s, name)? {
                        v.push(name.clone());
                    }
                }
                v
            };
            let vpn_due = self.reads()?.all_ended_for_terminal(&tid_s)?;
            if open_names.is_empty() && !vpn_due {
                continue;
            }
            log::warn!(
                "{} resuming an interrupted end ({} address(es) to release, VPN end {})",
                crate::logging::kv(&tid_s, None),
                open_names.len(),
                if vpn_due { "due" } else { "not due" }
            );
            let o = self.finish_end(&tid_s, 0, None, &open_names, now, &actor).await?;
            out.push(o);
        }
        Ok(out)
    }

    /// Everything of an end after the request's own commit: the end
    /// command (when `end` is given), judgment 1 and 2 and the release of
    /// each of `names`, judgment 3 and the VPN end. `number` 0 means "no
    /// single request" (a resumed end).
    async fn finish_end(
        &self,
        tid_s: &str,
        number: u64,
        end: Option<AcceptanceNumber>,
        names: &[String],
        now: u64,
        actor: &Actor,
    ) -> Result<EndOutcome, CenterError> {
        let _serial = self.work_on_terminal(tid_s).await;
        let mut out = EndOutcome {
            acceptance_number: number,
            ..EndOutcome::default()
        };
        let tid_s = tid_s.to_owned();
        let target = self.target(&tid_s)?;
        let slot = self.store()?.slot_of(&tid_s)?;
        // Commands to the router travel through its tunnel; without a tunnel
        // that is up they cannot arrive, so they are skipped (and said so)
        // instead of each waiting for a timeout while the operator waits.
        let tunnel_up = slot.as_ref().is_some_and(|s| s.tunnel_state == TunnelState::Up);
        // A gateway marked down is not sent commands that would each wait
        // for a time-out: when it answers again, reconciliation removes
        // what the database no longer gives it.
        let gateway_alive = match &slot {
            Some(s) => self.reads()?.gateway_alive(&s.gateway)?,
            None => false,
        };
        if slot.is_some() && !gateway_alive {
            out.warnings
                .push("gateway down: its tunnel and routes are removed when it answers again".into());
        }
        let router = match &target {
            Some(t) if tunnel_up => Some(t),
            Some(_) => {
                out.warnings
                    .push("router not reachable (tunnel not up): end/release/VPN end not sent".into());
                None
            }
            None => None,
        };
        if let (Some(t), Some(n)) = (router, end) {
            if let Err(e) = self.routers.end(t, n).await {
                out.warnings.push(format!("end command: {e}"));
            }
        }
        for name_s in names {
            // Judgment 1: another request still names this terminal.
            if !self.store()?.all_ended_for_name(&tid_s, name_s)? {
                out.kept.push(name_s.clone());
                continue;
            }
            // Judgment 2: the router's own parts keep their addresses (the
            // ones the installation granted; [0228]).
            if is_router_own_part(name_s) {
                if let Some(addr) = self.store()?.address_of(&tid_s, name_s)? {
                    out.own_kept.push((name_s.clone(), addr));
                }
                continue;
            }
            // 7. VPNNAT release.
            if let Some(t) = router {
                match TerminalName::new(name_s.clone()) {
                    Ok(name) => {
                        if let Err(e) = self.routers.release(t, &name).await {
                            out.warnings.push(format!("release {name_s}: {e}"));
                        }
                    }
                    Err(e) => out.warnings.push(format!("release {name_s}: {e}")),
                }
            }
            vpnnat_crashpoint::hit("center.release.after_router");
            // The gateway stops routing the address (and the host route
            // goes) *before* the pool frees it: freed first, it could be
            // granted to another router whose tunnel would then meet it
            // still routed into this one (seen under load as a 409).
            let held = self.store()?.address_of(&tid_s, name_s)?;
            if let Some(addr) = held {
                if let Some(s) = &slot {
                    self.route(false, &s.gateway, &[addr], &mut out.warnings);
                }
                if let (Some(s), Some(t), true) = (&slot, &target, gateway_alive) {
                    if let Err(e) = self
                        .gateways
                        .remove_addresses(&s.gateway, &t.terminal_id, &[addr])
                        .await
                    {
                        out.warnings.push(format!("gateway remove {addr}: {e}"));
                    }
                }
            }
            let freed = self.store()?.release_address(&tid_s, name_s)?;
            vpnnat_crashpoint::hit("center.release.after_db");
            if let Some(addr) = freed {
                out.released.push((name_s.clone(), addr));
            }
        }
        // Judgment 3: all requests of this router ended -> 8. VPN end.
        if self.store()?.all_ended_for_terminal(&tid_s)? {
            if let Some(t) = router {
                if let Err(e) = self.routers.vpn_end(t).await {
                    out.warnings.push(format!("VPN end command: {e}"));
                }
            }
            vpnnat_crashpoint::hit("center.vpn_end.after_router");
            // As for the releases above: the host routes go and the
            // gateway drops the tunnel and its addresses before the pool
            // and the slot are freed for other routers.
            if let Some(s) = &slot {
                let addrs: Vec<Ipv4Addr> = self
                    .store()?
                    .addresses_of_terminal(&tid_s)?
                    .into_iter()
                    .filter(|(name, _)| !is_router_own_part(name))
                    .map(|(_, a)| a)
                    .collect();
                let mut gone = addrs.clone();
                if let Some(t) = &target {
                    // The router's own parts were reachable only through
                    // the tunnel that ends now.
                    gone.push(t.address);
                    if let Some(row) = self.store()?.terminal(&tid_s)? {
                        gone.push(row.router_part_vpnnat);
                    }
                }
                self.route(false, &s.gateway, &gone, &mut out.warnings);
                if let (Some(t), true) = (&target, gateway_alive) {
                    for chunk in addrs.chunks(vpnnat_proto::messages::MAX_ADDRESSES_PER_COMMAND) {
                        if let Err(e) = self.gateways.remove_addresses(&s.gateway, &t.terminal_id, chunk).await {
                            out.warnings.push(format!("gateway remove: {e}"));
                        }
                    }
                    if let Err(e) = self.gateways.tear_down(&s.gateway, &t.terminal_id).await {
                        out.warnings.push(format!("gateway tear down: {e}"));
                    }
                }
            }
            let (freed, _) = self.store()?.end_vpn(&tid_s, now)?;
            vpnnat_crashpoint::hit("center.vpn_end.after_db");
            for f in &freed {
                out.released.push((f.terminal_name.clone(), f.vpnnat));
            }
            out.vpn_ended = true;
        }
        // Releases and the VPN end: one transaction for all their rows.
        let details: Vec<(&str, String)> = out
            .released
            .iter()
            .map(|(name, addr)| ("release", format!("{name} = {addr}")))
            .chain(out.own_kept.iter().map(|(name, addr)| {
                (
                    "keep",
                    format!("{name} = {addr}: the router's own part, never released (judgment 2)"),
                )
            }))
            .chain(out.vpn_ended.then(|| {
                let gw = slot.as_ref().map_or("", |s| s.gateway.as_str());
                ("vpn_end", format!("gateway {gw}"))
            }))
            .collect();
        let rows: Vec<crate::storage::NewAudit<'_>> = details
            .iter()
            .map(|(action, detail)| crate::storage::NewAudit {
                at: now,
                actor: &actor.who,
                action,
                terminal_id: Some(&tid_s),
                acceptance_number: (number > 0).then_some(number),
                detail,
                peer: &actor.peer,
            })
            .collect();
        let subject = crate::logging::kv(&tid_s, (number > 0).then_some(number));
        if let Err(e) = self.store().and_then(|mut st| Ok(st.append_audits(&rows)?)) {
            log::error!("{subject} audit log: cannot record the releases: {e}");
        }
        for w in &out.warnings {
            log::warn!("{subject} {w}");
        }
        log::info!(
            "{subject} request ended: {} released, {} of the router's own parts kept (judgment 2), vpn ended: {}",
            out.released.len(),
            out.own_kept.len(),
            out.vpn_ended
        );
        Ok(out)
    }
}
