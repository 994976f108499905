//! The reconcile loop: every gateway is brought in line with the database
//! at start, then every interval.

use std::sync::Arc;
use std::time::Duration;

use super::{RealCenter, LOG_TARGET};
use crate::http::unix_now;

/// Reconciles every gateway at start, then every `interval`. Only repairs
/// drift (a restarted gatewayd, a lost command); tunnel state changes arrive
/// as events.
pub(super) async fn run(center: Arc<RealCenter>, interval: Option<Duration>) {
    // First the ends a crash interrupted, so that the reconcile below
    // gives the gateways what the finished ends leave.
    match center.resume_ends(unix_now()).await {
        Ok(v) if !v.is_empty() => log::warn!(target: LOG_TARGET, "resumed {} interrupted end(s)", v.len()),
        Ok(_) => {}
        Err(e) => log::error!(target: LOG_TARGET, "resuming interrupted ends: {e}"),
    }
    loop {
        let names: Vec<String> = center.settings().gateways.iter().map(|g| g.name.to_string()).collect();
        for n in names {
            if let Err(e) = center.reconcile_gateway(&n, unix_now()).await {
                log::warn!(target: LOG_TARGET, "reconcile {n}: {e}");
            }
        }
        match interval {
            Some(i) => tokio::time::sleep(i).await,
            None => return,
        }
    }
}
