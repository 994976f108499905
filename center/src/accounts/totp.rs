//! Time-based one-time passwords (RFC 6238) for the operator login's
//! second factor (issue 20, item 2): HMAC-SHA1, 30-second steps, 6 digits,
//! one step of clock drift either way: what every authenticator app
//! computes from a scanned `otpauth://` URI. Pure: bytes and time in,
//! decisions out; storage and pages are elsewhere.

use ring::hmac;
use ring::rand::SecureRandom;
use zeroize::Zeroizing;

/// Seconds per step (RFC 6238's X, and every app's default).
pub const STEP_SECS: u64 = 30;
/// Digits of a code.
pub const DIGITS: u32 = 6;
/// Bytes of a new secret (RFC 4226 recommends 160 bits for SHA-1).
pub const SECRET_LEN: usize = 20;
/// Steps accepted either side of the current one (clock drift, and a code
/// typed in the last seconds of its step).
pub const WINDOW: u64 = 1;

/// 10^DIGITS.
const MODULUS: u32 = 1_000_000;

const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// A shared TOTP secret. A credential: no `Debug` of its bytes, zeroed
/// when dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Zeroizing<Vec<u8>>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Why a presented code is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CodeError {
    #[error("not a {DIGITS}-digit code")]
    Malformed,
    #[error("wrong code")]
    Wrong,
    /// Right, but its step (or a later one) was already used: a code
    /// seen over someone's shoulder, or replayed, is worth nothing.
    #[error("code already used")]
    Replayed,
}

impl Secret {
    /// A fresh random secret.
    pub fn generate(rng: &dyn SecureRandom) -> Result<Secret, ring::error::Unspecified> {
        let mut b = Zeroizing::new(vec![0u8; SECRET_LEN]);
        rng.fill(&mut b)?;
        Ok(Secret(b))
    }

    pub fn from_bytes(b: &[u8]) -> Secret {
        Secret(Zeroizing::new(b.to_vec()))
    }

    /// The secret of its base32 text (upper or lower case, spaces and
    /// padding ignored); None if it is not base32 or empty.
    pub fn from_base32(s: &str) -> Option<Secret> {
        let b = base32_decode(s)?;
        (!b.is_empty()).then(|| Secret(Zeroizing::new(b)))
    }

    /// Base32 without padding, as the `secret=` of an otpauth URI.
    pub fn to_base32(&self) -> Zeroizing<String> {
        Zeroizing::new(base32_encode(&self.0))
    }

    /// The code of step `step` (RFC 4226's HOTP with the step as counter).
    pub fn code_of_step(&self, step: u64) -> u32 {
        let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, &self.0);
        let tag = hmac::sign(&key, &step.to_be_bytes());
        let mac = tag.as_ref();
        // Dynamic truncation: the low nibble of the last byte picks 4 bytes.
        let off = usize::from(mac.last().copied().unwrap_or(0) & 0x0f);
        let word = mac
            .get(off..off.saturating_add(4))
            .and_then(|w| <[u8; 4]>::try_from(w).ok())
            .map_or(0, u32::from_be_bytes);
        (word & 0x7fff_ffff).checked_rem(MODULUS).unwrap_or(0)
    }

    /// The code at Unix time `unix`, as an app shows it (zero-padded).
    pub fn code_at(&self, unix: u64) -> String {
        format!("{:06}", self.code_of_step(step_of(unix)))
    }

    /// Checks `code` at time `now`: the step it matched (to be stored as
    /// the account's last used step), or why not. `last_used`: the last
    /// step accepted for this account; that step and earlier ones are
    /// refused (replay).
    pub fn verify(&self, code: &str, now: u64, last_used: Option<u64>) -> Result<u64, CodeError> {
        let code = code.trim();
        if code.len() != DIGITS as usize || !code.bytes().all(|b| b.is_ascii_digit()) {
            return Err(CodeError::Malformed);
        }
        let given: u32 = code.parse().map_err(|_| CodeError::Malformed)?;
        let now_step = step_of(now);
        // Every step of the window is computed and compared (no early
        // exit): the time taken says nothing about which one matched.
        let mut matched = None;
        for step in now_step.saturating_sub(WINDOW)..=now_step.saturating_add(WINDOW) {
            let want = self.code_of_step(step);
            // One integer comparison per step: no byte-wise early exit.
            if want == given {
                // The latest match: a later step must not be replayable
                // after an earlier one was accepted.
                matched = Some(step);
            }
        }
        match (matched, last_used) {
            (None, _) => Err(CodeError::Wrong),
            (Some(s), Some(last)) if s <= last => Err(CodeError::Replayed),
            (Some(s), _) => Ok(s),
        }
    }

    /// The `otpauth://` URI an authenticator app scans: the label
    /// `ISSUER:ACCOUNT`, the secret, and the parameters spelt out (all the
    /// defaults, for apps that do not assume them).
    pub fn uri(&self, issuer: &str, account: &str) -> Zeroizing<String> {
        let enc = |s: &str| vpnnat_proto::form::encode(s);
        Zeroizing::new(format!(
            "otpauth://totp/{}:{}?secret={}&issuer={}&algorithm=SHA1&digits={DIGITS}&period={STEP_SECS}",
            enc(issuer),
            enc(account),
            self.to_base32().as_str(),
            enc(issuer),
        ))
    }
}

/// The step of Unix time `unix`.
pub fn step_of(unix: u64) -> u64 {
    unix / STEP_SECS
}

/// The base32 digit of the low 5 bits of `v`.
fn b32_digit(v: u64) -> char {
    char::from(BASE32.get((v & 31) as usize).copied().unwrap_or(b'A'))
}

/// The low `bits` bits of `v`.
fn low_bits(v: u64, bits: u32) -> u64 {
    v & 1u64.wrapping_shl(bits).wrapping_sub(1)
}

/// RFC 4648 base32, upper case, no padding.
pub fn base32_encode(b: &[u8]) -> String {
    let mut out = String::with_capacity(b.len().saturating_mul(8).div_ceil(5));
    // At most 4 + 8 bits are pending at any time.
    let (mut acc, mut bits) = (0u64, 0u32);
    for &byte in b {
        acc = acc.wrapping_shl(8) | u64::from(byte);
        bits = bits.saturating_add(8);
        while bits >= 5 {
            bits = bits.saturating_sub(5);
            out.push(b32_digit(acc.wrapping_shr(bits)));
        }
        acc = low_bits(acc, bits);
    }
    if bits > 0 {
        out.push(b32_digit(acc.wrapping_shl(5u32.saturating_sub(bits))));
    }
    out
}

/// RFC 4648 base32 of either case; spaces, dashes and `=` padding are
/// ignored (as typed from a screen). None on any other character.
pub fn base32_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len().saturating_mul(5) / 8);
    // At most 7 + 5 bits are pending at any time.
    let (mut acc, mut bits) = (0u64, 0u32);
    for c in s.bytes().filter(|c| !matches!(c, b' ' | b'-' | b'=')) {
        let v = BASE32.iter().position(|&b| b == c.to_ascii_uppercase())?;
        acc = acc.wrapping_shl(5) | u64::try_from(v).ok()?;
        bits = bits.saturating_add(5);
        if bits >= 8 {
            bits = bits.saturating_sub(8);
            out.push(u8::try_from(low_bits(acc.wrapping_shr(bits), 8)).ok()?);
        }
        acc = low_bits(acc, bits);
    }
    Some(out)
}

#[cfg(test)]
#[path = "totp_tests.rs"]
mod tests;
