//! The expiry loop (issue 19, item 8): every [`TICK`], ends the requests
//! whose time limit passed. Thin: the decision is `crate::limits::due`,
//! the end `Center::expire_due` (the operator's end path).

use std::sync::Arc;
use std::time::Duration;

use super::{RealCenter, LOG_TARGET};
use crate::http::unix_now;

/// How often the limits are checked: a grant outlives its limit by at
/// most this much.
pub(super) const TICK: Duration = Duration::from_secs(10);

pub(super) async fn run(center: Arc<RealCenter>) {
    loop {
        match center.expire_due(unix_now()).await {
            Ok(v) if !v.is_empty() => {
                log::info!(target: LOG_TARGET, "ended {} request(s) at their time limit", v.len());
            }
            Ok(_) => {}
            Err(e) => log::error!(target: LOG_TARGET, "time limits: {e}"),
        }
        tokio::time::sleep(TICK).await;
    }
}
