//! Gateway liveness (crate::liveness decides, this acts)

use std::time::Duration;

use super::{Actor, Center, CenterError, GatewayCommands, ReconcileOutcome, RouterCommands};

impl<G: GatewayCommands, R: RouterCommands> Center<G, R> {
    /// The heartbeat marked `gateway` down: the database stops giving it
    /// slots and records its tunnels down and a `gateway_lost` failure for
    /// every router with an open request on it; an audit row and the log
    /// say so; waiters for tunnel events re-read. `now_ms` (Unix ms) is
    /// the moment of detection, kept for the operator. Returns the routers
    /// that lost their tunnel (None: it was down already).
    pub fn gateway_down(
        &self,
        gateway: &str,
        now_ms: u64,
        silent_for: Option<Duration>,
    ) -> Result<Option<Vec<crate::storage::LostTunnel>>, CenterError> {
        let now = now_ms / 1000;
        let Some(lost) = self.store()?.mark_gateway_down(gateway, now, now_ms)? else {
            return Ok(None);
        };
        let open: usize = lost.iter().map(|l| l.open_requests.len()).sum();
        let silent = silent_for.map_or_else(|| "since centerd started".to_owned(), |d| format!("for {d:?}"));
        let detail = format!(
            "gateway {gateway} down: no heartbeat answer {silent}; {} tunnel(s) lost, {open} open request(s) marked",
            lost.len()
        );
        log::warn!("{detail}");
        self.audit(now, &Actor::centerd(), "gateway_down", None, None, &detail);
        self.tunnel_events.notify_waiters();
        Ok(Some(lost))
    }

    /// The heartbeat got an answer from a gateway that was down: it is
    /// reconciled with the database (a restarted gatewayd has no tunnels:
    /// those of the routers still holding its slots are set up again; a
    /// gatewayd that was only cut off still has the tunnels of requests
    /// ended meanwhile: they are torn down), and only then takes new slots
    /// again, so no new tunnel meets a stale one in its slot. A failed
    /// reconciliation leaves it down (the next answer retries). None if it
    /// was up already.
    pub async fn gateway_back(&self, gateway: &str, now_ms: u64) -> Result<Option<ReconcileOutcome>, CenterError> {
        let now = now_ms / 1000;
        if self.reads()?.gateway_alive(gateway)? {
            return Ok(None);
        }
        log::info!("gateway {gateway} answers again; reconciling");
        let out = self.reconcile_gateway(gateway, now).await;
        if out.is_ok() && !self.store()?.mark_gateway_up(gateway, now_ms)? {
            return Ok(None); // another centerd marked it up meanwhile
        }
        let detail = match &out {
            Ok(o) => format!(
                "gateway {gateway} back: reconciled, {} tunnel(s) set up, {} address(es) added, {} removed, {} torn down{}",
                o.set_up.len(),
                o.added,
                o.removed,
                o.torn_down.len(),
                if o.warnings.is_empty() {
                    String::new()
                } else {
                    format!(", {} warning(s)", o.warnings.len())
                }
            ),
            Err(e) => format!("gateway {gateway} back: reconciliation failed: {e}"),
        };
        self.audit(now, &Actor::centerd(), "gateway_up", None, None, &detail);
        out.map(Some)
    }
}
