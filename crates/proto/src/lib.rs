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

pub mod auth;
mod b64;
pub mod decode;
pub mod error;
pub mod keys;
pub mod messages;
pub mod paths;
pub mod seal;
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
