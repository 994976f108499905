//! Base64 (standard alphabet, padded) helpers for serde, used for the few
//! binary values that travel in JSON: public keys, nonces, ciphertexts and,
//! only inside sealed payloads, secrets.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serializer};
use zeroize::Zeroizing;

pub(crate) fn encode(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// Decodes base64, refusing input whose decoded length would exceed `max`
/// before allocating for it.
pub(crate) fn decode_bounded(s: &str, max: usize) -> Result<Vec<u8>, &'static str> {
    // 4 characters carry 3 bytes; reject early so a huge string costs nothing.
    if (s.len() / 4).saturating_mul(3) > max.saturating_add(2) {
        return Err("base64 value too long");
    }
    let v = STANDARD.decode(s).map_err(|_| "invalid base64")?;
    if v.len() > max {
        return Err("base64 value too long");
    }
    Ok(v)
}

pub(crate) fn decode_array<const N: usize>(s: &str) -> Result<[u8; N], &'static str> {
    let v = Zeroizing::new(decode_bounded(s, N)?);
    <[u8; N]>::try_from(v.as_slice()).map_err(|_| "base64 value has the wrong length")
}

/// serde `with` module for fixed-size byte arrays.
pub(crate) mod array {
    use super::*;

    pub(crate) fn serialize<S: Serializer, const N: usize>(v: &[u8; N], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&encode(v))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>, const N: usize>(d: D) -> Result<[u8; N], D::Error> {
        let s = Zeroizing::new(String::deserialize(d)?);
        decode_array(&s).map_err(serde::de::Error::custom)
    }
}

/// Upper bound on any base64 blob we decode (ciphertexts); far above the
/// largest legitimate sealed payload, far below the body limits' multiples.
pub(crate) const MAX_BLOB: usize = 64 * 1024;

/// serde `with` module for variable-length byte strings.
pub(crate) mod bytes {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&encode(v))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        decode_bounded(&s, MAX_BLOB).map_err(serde::de::Error::custom)
    }
}
