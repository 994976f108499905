//! The error every decoder returns, and how a server turns it into an HTTP
//! status so that centerd, routerd and gatewayd answer alike.

use thiserror::Error;

/// Why an incoming message was refused.
///
/// The `Display` text is safe to send back to the peer: it never contains a
/// secret, a computed MAC or the expected value of anything.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ProtoError {
    /// The MAC does not match: wrong key, or the message was altered.
    #[error("message authentication failed")]
    BadMac,
    /// The timestamp is further from the receiver's clock than allowed.
    #[error("timestamp {timestamp} is outside the allowed window of +/-{max_skew_secs}s around {now}")]
    Stale {
        timestamp: u64,
        now: u64,
        max_skew_secs: u64,
    },
    /// This (principal, nonce) pair was already accepted within the window.
    #[error("nonce already used")]
    Replayed,
    /// The caller has no key for this principal (unknown terminal ID or
    /// gateway name, or no Secret(ID2) yet because it never installed).
    #[error("unknown terminal")]
    UnknownTerminal,
    /// A field, header or body does not parse or fails validation.
    #[error("malformed {what}")]
    Malformed { what: String },
    /// The body (or a header) is longer than this endpoint accepts.
    #[error("message too large: {len} bytes, at most {max} allowed")]
    TooLarge { len: usize, max: usize },
    /// The path does not belong to this endpoint.
    #[error("no such endpoint: {path}")]
    UnknownPath { path: String },
    /// The nonce store refused to record (full, or its database failed).
    /// The message was authentic but cannot be accepted safely now.
    #[error("replay protection unavailable: {reason}")]
    Unavailable { reason: String },
    /// The sender has too many messages in flight within the replay window.
    #[error("rate limited: {reason}")]
    RateLimited { reason: String },
    /// A local cryptographic operation failed (e.g. the system RNG).
    #[error("internal cryptographic failure")]
    Crypto,
}

impl ProtoError {
    /// Shortcut for [`ProtoError::Malformed`].
    pub fn malformed(what: impl Into<String>) -> Self {
        let mut what: String = what.into();
        // serde messages can quote peer input; keep answers and logs short.
        if what.len() > 200 {
            let mut end = 200;
            while !what.is_char_boundary(end) {
                end = end.saturating_sub(1);
            }
            what.truncate(end);
        }
        ProtoError::Malformed { what }
    }

    /// The HTTP status code a server answers with.
    ///
    /// `UnknownTerminal` deliberately shares 401 with `BadMac`, so a probe
    /// cannot tell a registered terminal ID from an unregistered one by the
    /// status alone (the caller should also use the same body text for both
    /// on public endpoints).
    pub fn http_status(&self) -> u16 {
        match self {
            ProtoError::Malformed { .. } => 400,
            ProtoError::BadMac | ProtoError::Stale { .. } | ProtoError::UnknownTerminal => 401,
            ProtoError::UnknownPath { .. } => 404,
            ProtoError::Replayed => 409,
            ProtoError::TooLarge { .. } => 413,
            ProtoError::RateLimited { .. } => 429,
            ProtoError::Crypto => 500,
            ProtoError::Unavailable { .. } => 503,
        }
    }
}

impl From<crate::types::ValidationError> for ProtoError {
    fn from(e: crate::types::ValidationError) -> Self {
        ProtoError::malformed(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_stable() {
        assert_eq!(ProtoError::BadMac.http_status(), 401);
        assert_eq!(ProtoError::UnknownTerminal.http_status(), 401);
        let stale = ProtoError::Stale {
            timestamp: 1,
            now: 500,
            max_skew_secs: 120,
        };
        assert_eq!(stale.http_status(), 401);
        assert_eq!(ProtoError::Replayed.http_status(), 409);
        assert_eq!(ProtoError::malformed("x").http_status(), 400);
        assert_eq!(ProtoError::TooLarge { len: 2, max: 1 }.http_status(), 413);
        assert_eq!(ProtoError::Unavailable { reason: "full".into() }.http_status(), 503);
        assert_eq!(ProtoError::Crypto.http_status(), 500);
        assert_eq!(ProtoError::RateLimited { reason: "x".into() }.http_status(), 429);
    }

    #[test]
    fn messages_are_clear_and_bounded() {
        assert_eq!(ProtoError::BadMac.to_string(), "message authentication failed");
        assert!(stale_text().contains("outside the allowed window"));
        let long = "é".repeat(300);
        match ProtoError::malformed(long) {
            ProtoError::Malformed { what } => assert!(what.len() <= 200),
            other => panic!("unexpected {other:?}"),
        }
    }

    fn stale_text() -> String {
        ProtoError::Stale {
            timestamp: 1,
            now: 500,
            max_skew_secs: 120,
        }
        .to_string()
    }
}
