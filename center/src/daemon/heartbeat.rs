//! One gateway's liveness watch: heartbeats out, [`GatewayWatch`]
//! transitions into the database; the state reports that come back give
//! each tunnel's last traffic (the idle timeout, `Center::record_traffic`).

use std::sync::Arc;

use super::{RealCenter, LOG_TARGET};
use crate::liveness::{GatewayWatch, HeartbeatConfig, Transition};

/// An authenticated heartbeat every `hb.interval`, each bounded by
/// `hb.timeout` and sent on time even while earlier ones are still out (so
/// a slow answer does not delay the next probe), their outcomes fed to
/// [`GatewayWatch`] as they come back; a transition goes to the database,
/// the audit log and, on "back", a reconciliation. One task per gateway, so
/// a silent gateway's time-outs do not delay another's heartbeat.
pub(super) async fn run(center: Arc<RealCenter>, name: String, hb: HeartbeatConfig) {
    let alive = match center.reads().and_then(|st| Ok(st.gateway_alive(&name)?)) {
        Ok(a) => a,
        Err(e) => {
            log::error!(target: LOG_TARGET, "heartbeat {name}: cannot read its state, not watching it: {e}");
            return;
        }
    };
    let mut watch = GatewayWatch::new(hb, alive);
    let mut tick = tokio::time::interval(hb.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut inflight = tokio::task::JoinSet::new();
    loop {
        let answered = tokio::select! {
            _ = tick.tick() => {
                let (c, n, t) = (center.clone(), name.clone(), hb.timeout);
                inflight.spawn(async move { c.gateways().heartbeat(&n, t).await });
                continue;
            }
            Some(done) = inflight.join_next(), if !inflight.is_empty() => match done {
                Ok(Ok(report)) => {
                    if let Some(r) = report {
                        if let Err(e) = center.record_traffic(&r) {
                            log::warn!(target: LOG_TARGET, "heartbeat {name}: tunnels' last traffic not recorded: {e}");
                        }
                    }
                    true
                }
                Ok(Err(e)) => {
                    log::debug!(target: LOG_TARGET, "heartbeat {name}: {e}");
                    false
                }
                Err(e) => {
                    log::warn!(target: LOG_TARGET, "heartbeat {name}: task failed: {e}");
                    false
                }
            },
        };
        let now_ms = unix_now_ms();
        match watch.observe(answered, std::time::Instant::now()) {
            None => {}
            Some(Transition::Down { silent_for }) => {
                if let Err(e) = center.gateway_down(&name, now_ms, silent_for) {
                    log::error!(target: LOG_TARGET, "gateway {name} is down but cannot be marked: {e}");
                }
            }
            Some(Transition::Up) => {
                if let Err(e) = center.gateway_back(&name, now_ms).await {
                    log::error!(target: LOG_TARGET, "gateway {name} answers but is not reconciled, kept down: {e}");
                    watch.revert_to_down();
                }
            }
        }
    }
}

fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
