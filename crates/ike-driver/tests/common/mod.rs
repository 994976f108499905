//! What the driver's integration tests share: waiting for an event.

#![allow(clippy::panic, dead_code)]

use std::time::Duration;

use tokio::sync::mpsc::UnboundedReceiver;
use vpnnat_ike_driver::DriverEvent;

/// The next event on `ev` that `f` accepts, within `within`; every event
/// seen is kept in `seen` so that a failure shows what did arrive.
pub async fn wait_event(
    ev: &mut UnboundedReceiver<DriverEvent>,
    seen: &mut Vec<DriverEvent>,
    within: Duration,
    what: &str,
    f: impl Fn(&DriverEvent) -> bool,
) -> DriverEvent {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, ev.recv()).await {
            Ok(Some(e)) => {
                seen.push(e.clone());
                if f(&e) {
                    return e;
                }
            }
            Ok(None) => panic!("driver stopped while waiting for {what}; seen {seen:?}"),
            Err(_) => panic!("timed out waiting for {what}; seen {seen:?}"),
        }
    }
}
