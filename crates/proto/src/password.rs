//! Password hashes for operator logins (centerd) and for each router's
//! maintenance password (routerd keeps only this hash in its state file):
//! PBKDF2-HMAC-SHA256 from `ring`, verified in constant time. Shared here
//! so both daemons use the one implementation, at no size cost to routerd
//! (ring is linked anyway).
//!
//! Format: `pbkdf2-sha256$<iterations>$<salt hex>$<hash hex>`; `centerd
//! hash-password` prints one for the configuration file.

use std::num::NonZeroU32;

use ring::pbkdf2;
use ring::rand::SecureRandom;
use thiserror::Error;

const ALG: pbkdf2::Algorithm = pbkdf2::PBKDF2_HMAC_SHA256;
const PREFIX: &str = "pbkdf2-sha256";
/// Iterations for new hashes (OWASP's 2023 figure for PBKDF2-SHA256).
pub const DEFAULT_ITERATIONS: u32 = 600_000;
const SALT_LEN: usize = 16;
const HASH_LEN: usize = 32;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum PasswordError {
    #[error("password hash is not of the form pbkdf2-sha256$<iterations>$<salt hex>$<hash hex>")]
    BadFormat,
    #[error("the system random number generator failed")]
    Rng,
}

/// A parsed password hash (no secret: safe to print).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswordHash {
    iterations: NonZeroU32,
    salt: Vec<u8>,
    hash: Vec<u8>,
}

impl PasswordHash {
    /// Hashes `password` with a fresh salt.
    pub fn create(password: &str, iterations: u32, rng: &dyn SecureRandom) -> Result<Self, PasswordError> {
        let iterations = NonZeroU32::new(iterations).ok_or(PasswordError::BadFormat)?;
        let mut salt = vec![0u8; SALT_LEN];
        rng.fill(&mut salt).map_err(|_| PasswordError::Rng)?;
        let mut hash = vec![0u8; HASH_LEN];
        pbkdf2::derive(ALG, iterations, &salt, password.as_bytes(), &mut hash);
        Ok(PasswordHash { iterations, salt, hash })
    }

    pub fn parse(s: &str) -> Result<Self, PasswordError> {
        let mut it = s.trim().split('$');
        let (Some(p), Some(i), Some(salt), Some(hash), None) = (it.next(), it.next(), it.next(), it.next(), it.next())
        else {
            return Err(PasswordError::BadFormat);
        };
        if p != PREFIX {
            return Err(PasswordError::BadFormat);
        }
        let iterations = i
            .parse::<u32>()
            .ok()
            .and_then(NonZeroU32::new)
            .ok_or(PasswordError::BadFormat)?;
        let salt = hex::decode(salt).map_err(|_| PasswordError::BadFormat)?;
        let hash = hex::decode(hash).map_err(|_| PasswordError::BadFormat)?;
        if salt.len() < 8 || hash.len() != HASH_LEN {
            return Err(PasswordError::BadFormat);
        }
        Ok(PasswordHash { iterations, salt, hash })
    }

    /// Constant-time check (ring compares the derived bytes in constant time).
    pub fn verify(&self, password: &str) -> bool {
        pbkdf2::verify(ALG, self.iterations, &self.salt, password.as_bytes(), &self.hash).is_ok()
    }
}

impl std::fmt::Display for PasswordHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{PREFIX}${}${}${}",
            self.iterations,
            hex::encode(&self.salt),
            hex::encode(&self.hash)
        )
    }
}

/// True if `password` matches any of `hashes`. Every hash is tried, so the
/// time does not tell which one (if any) matched.
pub fn verify_any(hashes: &[PasswordHash], password: &str) -> bool {
    matching(hashes, password).is_some()
}

/// Which of `hashes` (index) `password` matches, the first if several.
/// Every hash is tried, as in [`verify_any`].
pub fn matching(hashes: &[PasswordHash], password: &str) -> Option<usize> {
    hashes.iter().enumerate().fold(
        None,
        |found, (i, h)| if h.verify(password) { found.or(Some(i)) } else { found },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;

    #[test]
    fn round_trip_and_verify() {
        let h = PasswordHash::create("correct horse", 1000, &SystemRandom::new()).unwrap();
        let s = h.to_string();
        assert!(s.starts_with("pbkdf2-sha256$1000$"));
        let p = PasswordHash::parse(&s).unwrap();
        assert!(p.verify("correct horse"));
        assert!(!p.verify("correct horsf"));
        assert!(!p.verify(""));
        assert!(verify_any(std::slice::from_ref(&p), "correct horse"));
        assert!(!verify_any(&[p], "x"));
        assert!(!verify_any(&[], "x"));
        let q = PasswordHash::create("other", 1000, &SystemRandom::new()).unwrap();
        assert_eq!(matching(&[q.clone(), h.clone()], "correct horse"), Some(1));
        assert_eq!(matching(&[q, h], "nope"), None);
    }

    #[test]
    fn bad_formats() {
        for s in [
            "",
            "pbkdf2-sha256$0$00112233445566778899$00",
            "md5$1$aa$bb",
            "pbkdf2-sha256$10$zz$00",
            "pbkdf2-sha256$10$0011223344556677$0011",
            "pbkdf2-sha256$10$0011223344556677$00$x",
        ] {
            assert_eq!(PasswordHash::parse(s), Err(PasswordError::BadFormat), "{s}");
        }
    }
}
