//! vpnnat-proto: the pure, I/O-free core of the application protocol between
//! the router (`routerd`), the maintenance center (`centerd`) and the VPN
//! gateway agents (`gatewayd`). See `shared/design/PROTOCOL.md`.
//!
//! What lives here, and nothing else (no sockets, no HTTP, no clock reads):
//! - [`keys`]: the long-lived secrets (Secret(ID), Secret(ID2), PSK, gateway
//!   API key, maintenance password), zeroized on drop, never printed.
//! - [`auth`]: the authenticated envelope every command carries (principal,
//!   timestamp, nonce, HMAC-SHA256 over a canonical encoding) and the
//!   [`auth::ReplayGuard`] with its [`auth::NonceStore`].
//! - [`seal`]: sealing response fields to the router's per-request X25519 key
//!   and encrypting request fields with a key derived from Secret(ID2) (or the
//!   gateway API key).
//! - [`types`] and [`messages`]: validated values and one message type per
//!   exchange, JSON on the wire.
//! - [`paths`]: every URL path, in one place.
//! - [`decode`]: one entry point per endpoint that checks size, MAC,
//!   freshness and replay in the order that leaks least.
//! - [`error`]: [`ProtoError`] and its HTTP status mapping.
//! - [`throttle`]: the wrong-password brakes of the two password pages.
//! - [`page_headers`]: the framing, sniffing and content-policy headers of
//!   every HTML page (the router's and the center's).
//! - [`password`]: PBKDF2 password hashes (operators, maintenance pages).
//! - [`reinstall`]: the proof of the current Secret(ID2) a re-installation
//!   carries, and the center's decision on an installation notice.
//! - [`strength`]: the one rule that refuses example, placeholder and
//!   low-entropy keys in the three daemons' configuration files.
//!
//! The wire format (paths, headers, MAC encoding, sealing, JSON bodies) is
//! described in `crates/proto/README.md`.
//!
//! # A router -> center exchange, both sides
//! ```
//! use ring::rand::SystemRandom;
//! use vpnnat_proto::auth::{AuthHeaders, MemoryNonceStore, ReplayConfig, ReplayGuard};
//! use vpnnat_proto::keys::{SecretBytes, SecretId2};
//! use vpnnat_proto::messages::{Ack, FailureNotice};
//! use vpnnat_proto::types::{FailureCode, FailureDetail, TerminalId};
//! use vpnnat_proto::{decode_request, decode_response, encode_request, encode_response, Verified};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let rng = SystemRandom::new();
//! let me = TerminalId::new("router-1")?;
//! let sid2 = SecretId2::from_hex(&"11".repeat(32))?; // from the router's state
//! let now = 1_800_000_000; // the caller reads the clock; this crate never does
//!
//! // Router: build and sign.
//! let notice = FailureNotice { code: FailureCode::Ipsec, detail: FailureDetail::new("charon died")? };
//! let req = encode_request(&notice, &me, &sid2.mac_key(), now, &rng)?;
//! // ... POST req.body to req.path with the req.headers.pairs() headers ...
//!
//! // Center: collect the headers, verify, act, answer.
//! let mut guard = ReplayGuard::new(MemoryNonceStore::default(), ReplayConfig::default());
//! let pairs = req.headers.pairs();
//! let headers = AuthHeaders::from_lookup(|name| {
//!     pairs.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
//! })?;
//! let v: Verified<FailureNotice> =
//!     decode_request(&mut guard, req.path, &headers, &req.body, now + 1, |terminal: &TerminalId, _kind| {
//!         // look up Secret(ID2) of `terminal` in the terminals database
//!         (terminal.as_str() == "router-1").then(|| sid2.mac_key())
//!     })?;
//! let resp = encode_response(&v, &Ack {}, &sid2.mac_key(), now + 1, &rng)?;
//! // On error: answer `e.http_status()` with `e.to_string()`.
//!
//! // Router: authenticate the answer against its own request.
//! let ack = decode_response::<FailureNotice>(&req, &sid2.mac_key(), &resp.headers, &resp.body)?;
//! assert_eq!(ack, Ack {});
//! # Ok(())
//! # }
//! ```

// No unsafe code in this crate (checked by the compiler, not by review).
#![forbid(unsafe_code)]
// Parsers of peer input must not panic: no unchecked indexing or arithmetic
// outside tests (clippy.toml allows both in tests).
#![cfg_attr(not(test), deny(clippy::indexing_slicing, clippy::arithmetic_side_effects))]

pub mod auth;
mod b64;
pub mod decode;
pub mod error;
pub mod form;
pub mod initiation;
pub mod keys;
pub mod messages;
#[cfg(feature = "openapi")]
pub mod openapi;
pub mod page_headers;
pub mod password;
pub mod paths;
pub mod reinstall;
pub mod seal;
pub mod strength;
pub mod throttle;
pub mod types;

pub use decode::{
    decode_request, decode_response, encode_request, encode_response, Command, KeyKind, Outgoing, Verified,
};
pub use error::ProtoError;

/// Protocol label mixed into every MAC, KDF and AAD, so that nothing computed
/// for one protocol version can be accepted by another.
pub const PROTOCOL_LABEL: &[u8] = b"vpnnat-proto/1";

/// Appends `bytes` to `out` preceded by its length as a big-endian u32.
///
/// This is the single building block of every canonical encoding in the
/// crate (MAC input, HKDF info, AEAD AAD): because every variable-length
/// field carries its length, no two different field sequences encode to the
/// same bytes. Callers bound their inputs far below 4 GiB; a longer field is
/// clamped in the prefix, which cannot be produced by any accepted message
/// because body and field limits are orders of magnitude smaller.
pub(crate) fn put_field(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
}
