//! The wall clock as the protocol reads it: Unix seconds, for signing
//! requests, checking their freshness, and dating what is stored.

use std::time::{SystemTime, UNIX_EPOCH};

/// Unix time in seconds (0 if the clock is before 1970, which then fails
/// every freshness check rather than panicking).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
