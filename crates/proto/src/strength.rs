//! Refusing weak and example secrets in configuration files.
//!
//! The example configurations once shipped an all-zero factory master key
//! (anyone could then derive every router's Secret(ID)), `11…`/`22…` gateway
//! API keys and a fixed maintenance password, and the daemons accepted them.
//! This module is the one rule that centerd, gatewayd and routerd apply to
//! every 32-byte key they read from a file: pure (bytes in, verdict out) and
//! deliberately simple, so that it is easy to see what it refuses.
//!
//! A key is refused when it
//! - is a placeholder ([`PLACEHOLDER_PREFIX`]: what the example files carry
//!   until the center image's first boot or the operator replaces it),
//! - has fewer than [`MIN_DISTINCT_BYTES`] distinct byte values (32 random
//!   bytes have about 30; all-equal keys and `00…01` have 1 and 2),
//! - repeats a pattern of at most half its length (`0102…0102`,
//!   `deadbeef…`), or
//! - counts (every byte differs from the previous one by the same step:
//!   `000102…1f`).
//!
//! The chance that 32 bytes from a real random generator fail any of these
//! is about 2^-55 (nearly all of it the distinct-byte rule: P(fewer than 16
//! distinct values among 32 uniform bytes), computed exactly from Stirling
//! numbers; a 16-byte period is 2^-128, counting 2^-240), so a generated key
//! is refused about once in 3.6e16 keys.

use thiserror::Error;

use crate::keys::{KeyError, SecretBytes};

/// Fewer distinct byte values than this and a 32-byte key is refused.
pub const MIN_DISTINCT_BYTES: usize = 16;

/// How the example configuration files mark a secret still to be generated,
/// e.g. `"@SECRET:master@"`. The center image's first-boot script replaces
/// every such value with a fresh key (the same key for the same name in
/// every file).
pub const PLACEHOLDER_PREFIX: &str = "@SECRET:";

/// How to make a key that passes, for centerd's and gatewayd's errors.
pub const GENERATE_HINT: &str = "write 64 hex digits of a random key (`centerd gen-secret` prints one)";

/// Maintenance passwords the examples and documentation have shipped.
const EXAMPLE_PASSWORDS: &[&str] = &["change-me-maintenance", "change-me"];

/// Why a configured secret is refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum WeakSecret {
    #[error("is a placeholder")]
    Placeholder,
    #[error("is not a key: {0}")]
    Malformed(KeyError),
    #[error("has only {0} distinct byte value(s) (a random key has about 30)")]
    FewDistinctBytes(usize),
    #[error("repeats a {0}-byte pattern")]
    Repeats(usize),
    #[error("is a counting sequence")]
    Counting,
    #[error("is a value from the examples")]
    ExamplePassword,
}

/// Checks 32 (or any number of) key bytes against the rules above.
pub fn check_key_bytes(bytes: &[u8]) -> Result<(), WeakSecret> {
    let mut seen = [false; 256];
    for b in bytes {
        if let Some(s) = seen.get_mut(usize::from(*b)) {
            *s = true;
        }
    }
    let distinct = seen.iter().filter(|s| **s).count();
    if distinct < MIN_DISTINCT_BYTES.min(bytes.len()) {
        return Err(WeakSecret::FewDistinctBytes(distinct));
    }
    let half = bytes.len() / 2;
    for period in 1..=half {
        if bytes.iter().zip(bytes.iter().skip(period)).all(|(a, b)| a == b) {
            return Err(WeakSecret::Repeats(period));
        }
    }
    let mut steps = bytes.windows(2).map(|w| match w {
        [a, b] => b.wrapping_sub(*a),
        _ => 0,
    });
    if let Some(first) = steps.next() {
        if steps.all(|s| s == first) {
            return Err(WeakSecret::Counting);
        }
    }
    Ok(())
}

/// Parses a key written in a configuration file (64 hex digits) and refuses
/// placeholders and weak values. The caller names the key and says how to
/// make one; the value itself never appears in the error.
pub fn key_from_config<K: SecretBytes>(text: &str) -> Result<K, WeakSecret> {
    if text.trim().starts_with(PLACEHOLDER_PREFIX) {
        return Err(WeakSecret::Placeholder);
    }
    let key = K::from_hex(text).map_err(WeakSecret::Malformed)?;
    check_key_bytes(key.expose_secret())?;
    Ok(key)
}

/// Refuses the maintenance passwords of the examples and placeholders
/// (length and alphabet are checked where the password is built).
pub fn check_password(password: &str) -> Result<(), WeakSecret> {
    if password.starts_with(PLACEHOLDER_PREFIX) {
        return Err(WeakSecret::Placeholder);
    }
    if EXAMPLE_PASSWORDS.iter().any(|p| p.eq_ignore_ascii_case(password)) {
        return Err(WeakSecret::ExamplePassword);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{FactoryMasterKey, GatewayApiKey};
    use ring::rand::{SecureRandom, SystemRandom};

    fn hex_key(s: &str) -> Result<FactoryMasterKey, WeakSecret> {
        key_from_config::<FactoryMasterKey>(s)
    }

    #[test]
    fn the_shipped_example_keys_are_refused() {
        assert_eq!(hex_key(&"00".repeat(32)).unwrap_err(), WeakSecret::FewDistinctBytes(1));
        assert_eq!(
            hex_key(&format!("{}01", "00".repeat(31))).unwrap_err(),
            WeakSecret::FewDistinctBytes(2)
        );
        assert_eq!(hex_key(&"11".repeat(32)).unwrap_err(), WeakSecret::FewDistinctBytes(1));
        assert_eq!(hex_key(&"22".repeat(32)).unwrap_err(), WeakSecret::FewDistinctBytes(1));
        // what the VM topology used to write: printf '%064x' 4097
        assert!(matches!(
            hex_key(&format!("{:064x}", 4097)).unwrap_err(),
            WeakSecret::FewDistinctBytes(_)
        ));
    }

    #[test]
    fn patterns_and_counting_are_refused() {
        // 16 distinct bytes, period 16
        let p16: String = (0u8..16).map(|b| format!("{:02x}", b.wrapping_mul(17))).collect();
        assert_eq!(hex_key(&p16.repeat(2)).unwrap_err(), WeakSecret::Repeats(16));
        // 000102…1f: 32 distinct bytes, but counting
        let count: String = (0u8..32).map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex_key(&count).unwrap_err(), WeakSecret::Counting);
        let down: String = (0u8..32).map(|b| format!("{:02x}", 200u8 - 3 * b)).collect();
        assert_eq!(hex_key(&down).unwrap_err(), WeakSecret::Counting);
        assert_eq!(
            check_key_bytes(&[7, 9, 7, 9, 7, 9]),
            Err(WeakSecret::FewDistinctBytes(2))
        );
    }

    #[test]
    fn placeholders_and_malformed_values_are_refused() {
        assert_eq!(hex_key("@SECRET:master@").unwrap_err(), WeakSecret::Placeholder);
        assert_eq!(hex_key(" @SECRET:gw1@ ").unwrap_err(), WeakSecret::Placeholder);
        assert!(matches!(hex_key("zz").unwrap_err(), WeakSecret::Malformed(_)));
        assert!(matches!(
            hex_key(&"ab".repeat(31)).unwrap_err(),
            WeakSecret::Malformed(_)
        ));
    }

    #[test]
    fn random_keys_are_accepted() {
        let rng = SystemRandom::new();
        for _ in 0..2000 {
            let mut b = [0u8; 32];
            rng.fill(&mut b).unwrap();
            check_key_bytes(&b).unwrap();
            key_from_config::<GatewayApiKey>(&hex::encode(b)).unwrap();
        }
        // a fixed "random-looking" key, as the tests use
        let fixed = "3f9c0a7be1d24586c9e07a31b5f8d26e4c1a9f7302b8e5d6a4c7f9e1b3d50a82";
        hex_key(fixed).unwrap();
    }

    #[test]
    fn the_example_passwords_are_refused() {
        assert_eq!(
            check_password("change-me-maintenance"),
            Err(WeakSecret::ExamplePassword)
        );
        assert_eq!(check_password("CHANGE-ME"), Err(WeakSecret::ExamplePassword));
        assert_eq!(
            check_password("@SECRET:maintenance-password@"),
            Err(WeakSecret::Placeholder)
        );
        check_password("maint-5f0e9a2c71").unwrap();
    }

    #[test]
    fn errors_never_show_the_value() {
        let k = "00".repeat(31) + "01";
        let e = hex_key(&k).unwrap_err().to_string();
        assert!(!e.contains(&k) && !e.contains("0001"), "{e}");
    }
}
