//! Recovery codes of the second factor: ten single-use codes shown once
//! at enrolment, for the day the phone is lost. Each carries 80 random
//! bits, so a plain SHA-256 is enough to store it (no password to
//! stretch: nothing to guess from a dictionary). Pure.

use ring::digest;
use ring::rand::SecureRandom;
use zeroize::Zeroizing;

use super::totp::base32_encode;

/// Codes made at each enrolment.
pub const COUNT: usize = 10;
/// Random bytes per code (16 base32 characters).
const CODE_BYTES: usize = 10;

/// `COUNT` fresh codes, as shown: `abcd-efgh-ijkl-mnop`.
pub fn generate(rng: &dyn SecureRandom) -> Result<Vec<Zeroizing<String>>, ring::error::Unspecified> {
    let mut out = Vec::with_capacity(COUNT);
    for _ in 0..COUNT {
        let mut raw = Zeroizing::new([0u8; CODE_BYTES]);
        rng.fill(raw.as_mut())?;
        let b32 = Zeroizing::new(base32_encode(raw.as_ref()).to_ascii_lowercase());
        let groups: Vec<&str> = b32
            .as_bytes()
            .chunks(4)
            .filter_map(|c| std::str::from_utf8(c).ok())
            .collect();
        out.push(Zeroizing::new(groups.join("-")));
    }
    Ok(out)
}

/// Whether a login's code field holds a recovery code rather than a
/// 6-digit TOTP code.
pub fn looks_like_recovery(code: &str) -> bool {
    normalize(code).len() == CODE_BYTES.saturating_mul(8) / 5
}

/// The code as compared: lower case, without dashes or spaces.
fn normalize(code: &str) -> String {
    code.chars()
        .filter(|c| !matches!(c, '-' | ' '))
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// The stored form of a code (hex SHA-256 of its normalized text, under a
/// label of its own).
pub fn hash(code: &str) -> String {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(b"vpnnat-recovery\0");
    ctx.update(normalize(code).as_bytes());
    hex::encode(ctx.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;

    #[test]
    fn ten_distinct_codes_that_hash_the_same_however_typed() {
        let codes = generate(&SystemRandom::new()).unwrap();
        assert_eq!(codes.len(), COUNT);
        let mut hashes: Vec<String> = codes.iter().map(|c| hash(c)).collect();
        hashes.sort();
        hashes.dedup();
        assert_eq!(hashes.len(), COUNT);
        let c = codes[0].as_str();
        assert_eq!(c.len(), 19, "{c}");
        assert!(looks_like_recovery(c));
        assert!(!looks_like_recovery("123456"));
        assert_eq!(hash(c), hash(&c.to_ascii_uppercase().replace('-', " ")));
        assert_ne!(hash(c), hash(codes[1].as_str()));
    }
}
