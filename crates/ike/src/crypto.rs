//! Cryptographic primitives for IKEv2, all from `ring`.
//!
//! - Diffie-Hellman: X25519 (group 31, RFC 8031) and NIST P-256 (group 19,
//!   RFC 5903: the KE data is `x || y`, without ring's `0x04` prefix).
//! - PRF: HMAC-SHA256 and `prf+` (RFC 7296 2.13).
//! - AEAD: AES-GCM with a 16-byte ICV, key material = key || 4-byte salt
//!   (RFC 5282 for IKE, RFC 4106 for ESP).
//! - PSK authentication (RFC 7296 2.15) with constant-time comparison.
//!
//! Secret material lives in [`Secret`], which is wiped on drop and whose
//! `Debug` never prints the bytes.

use std::fmt;
use std::net::IpAddr;

use ring::{aead, agreement, digest, hmac, rand::SecureRandom};
use thiserror::Error;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// Errors from the crypto layer.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CryptoError {
    /// The random source failed.
    #[error("random number generator failed")]
    Rng,
    /// Key generation failed.
    #[error("key generation failed")]
    KeyGeneration,
    /// The peer's public value is malformed or of the wrong length.
    #[error("invalid peer public value for group {group} ({len} bytes)")]
    InvalidPublicValue {
        /// Group number.
        group: u16,
        /// Length received.
        len: usize,
    },
    /// The key agreement failed (e.g. point not on curve, all-zero output).
    #[error("key agreement failed")]
    Agreement,
    /// Decryption or ICV verification failed.
    #[error("integrity check failed")]
    Integrity,
    /// A key of the wrong length was handed to an AEAD.
    #[error("bad AEAD key material length {0}")]
    BadKeyLength(usize),
    /// prf+ was asked for more than 255 blocks.
    #[error("prf+ output too long ({0} bytes)")]
    PrfPlusTooLong(usize),
    /// The PSK AUTH value did not verify.
    #[error("AUTH payload does not verify")]
    AuthMismatch,
}

type Result<T> = std::result::Result<T, CryptoError>;

/// Secret bytes: wiped on drop, never printed, compared in constant time.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Secret(Vec<u8>);

impl PartialEq for Secret {
    /// Constant time in the contents (the length is not secret).
    fn eq(&self, other: &Self) -> bool {
        self.0.len() == other.0.len() && self.0.iter().zip(other.0.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }
}

impl Eq for Secret {}

impl Secret {
    /// Wraps bytes.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }
    /// Copies bytes.
    pub fn from_slice(bytes: &[u8]) -> Self {
        Self(bytes.to_vec())
    }
    /// The secret bytes. Named so that every use is easy to grep for.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }
    /// Whether empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret(<{} bytes redacted>)", self.0.len())
    }
}

// ---------------------------------------------------------------------------
// Diffie-Hellman
// ---------------------------------------------------------------------------

/// Supported Diffie-Hellman groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DhGroup {
    /// Curve25519 (group 31).
    Curve25519,
    /// 256-bit random ECP group (group 19).
    Ecp256,
}

impl DhGroup {
    /// IANA transform id.
    pub fn id(self) -> u16 {
        match self {
            Self::Curve25519 => crate::codec::transform::DH_CURVE25519,
            Self::Ecp256 => crate::codec::transform::DH_ECP256,
        }
    }
    /// From the IANA transform id.
    pub fn from_id(id: u16) -> Option<Self> {
        match id {
            crate::codec::transform::DH_CURVE25519 => Some(Self::Curve25519),
            crate::codec::transform::DH_ECP256 => Some(Self::Ecp256),
            _ => None,
        }
    }
    /// Length of the KE payload data.
    pub fn public_len(self) -> usize {
        match self {
            Self::Curve25519 => 32,
            Self::Ecp256 => 64,
        }
    }
    fn algorithm(self) -> &'static agreement::Algorithm {
        match self {
            Self::Curve25519 => &agreement::X25519,
            Self::Ecp256 => &agreement::ECDH_P256,
        }
    }
}

/// An ephemeral DH private key; consumed by [`DhPrivate::agree`].
pub struct DhPrivate {
    group: DhGroup,
    key: agreement::EphemeralPrivateKey,
    public: Vec<u8>,
}

impl fmt::Debug for DhPrivate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DhPrivate")
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

impl DhPrivate {
    /// Generates a fresh key pair.
    pub fn generate(group: DhGroup, rng: &dyn SecureRandom) -> Result<Self> {
        let key =
            agreement::EphemeralPrivateKey::generate(group.algorithm(), rng).map_err(|_| CryptoError::KeyGeneration)?;
        let pk = key.compute_public_key().map_err(|_| CryptoError::KeyGeneration)?;
        let public = match group {
            DhGroup::Curve25519 => pk.as_ref().to_vec(),
            // ring: 0x04 || x || y; IKE (RFC 5903 7): x || y.
            DhGroup::Ecp256 => pk.as_ref().get(1..).unwrap_or_default().to_vec(),
        };
        if public.len() != group.public_len() {
            return Err(CryptoError::KeyGeneration);
        }
        Ok(Self { group, key, public })
    }

    /// The group.
    pub fn group(&self) -> DhGroup {
        self.group
    }

    /// The public value as carried in a KE payload.
    pub fn public(&self) -> &[u8] {
        &self.public
    }

    /// Computes the shared secret g^ir with the peer's KE data.
    pub fn agree(self, peer: &[u8]) -> Result<Secret> {
        if peer.len() != self.group.public_len() {
            return Err(CryptoError::InvalidPublicValue {
                group: self.group.id(),
                len: peer.len(),
            });
        }
        let peer_bytes = match self.group {
            DhGroup::Curve25519 => peer.to_vec(),
            DhGroup::Ecp256 => {
                let mut v = Vec::with_capacity(65);
                v.push(0x04);
                v.extend_from_slice(peer);
                v
            }
        };
        let peer_key = agreement::UnparsedPublicKey::new(self.group.algorithm(), peer_bytes);
        agreement::agree_ephemeral(self.key, &peer_key, Secret::from_slice).map_err(|_| CryptoError::Agreement)
    }
}

// ---------------------------------------------------------------------------
// PRF
// ---------------------------------------------------------------------------

/// Output length of PRF_HMAC_SHA2_256.
pub const PRF_LEN: usize = 32;

/// prf(K, S) = HMAC-SHA256.
pub fn prf(key: &[u8], data: &[&[u8]]) -> Secret {
    let k = hmac::Key::new(hmac::HMAC_SHA256, key);
    let mut ctx = hmac::Context::with_key(&k);
    for d in data {
        ctx.update(d);
    }
    Secret::from_slice(ctx.sign().as_ref())
}

/// prf+(K, S) = T1 | T2 | ... truncated to `len` (RFC 7296 2.13), where
/// T1 = prf(K, S | 0x01) and Tn = prf(K, Tn-1 | S | n).
pub fn prf_plus(key: &[u8], seed: &[u8], len: usize) -> Result<Secret> {
    if len > 255 * PRF_LEN {
        return Err(CryptoError::PrfPlusTooLong(len));
    }
    let mut out = Zeroizing::new(Vec::with_capacity(len.saturating_add(PRF_LEN)));
    let mut prev = Secret::new(Vec::new());
    let mut counter: u8 = 1;
    while out.len() < len {
        let t = prf(key, &[prev.expose(), seed, &[counter]]);
        out.extend_from_slice(t.expose());
        prev = t;
        counter = counter.wrapping_add(1);
    }
    out.truncate(len);
    Ok(Secret::from_slice(&out))
}

// ---------------------------------------------------------------------------
// AEAD
// ---------------------------------------------------------------------------

/// Explicit IV length of AES-GCM in IKE and ESP (RFC 5282, RFC 4106).
pub const GCM_IV_LEN: usize = 8;
/// ICV length of the `_16` variants.
pub const GCM_ICV_LEN: usize = 16;
/// Salt length.
pub const GCM_SALT_LEN: usize = 4;

/// AES-GCM keyed with key || salt.
pub struct GcmKey {
    key: aead::LessSafeKey,
    salt: [u8; GCM_SALT_LEN],
}

impl fmt::Debug for GcmKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GcmKey").finish_non_exhaustive()
    }
}

impl Drop for GcmKey {
    fn drop(&mut self) {
        self.salt.zeroize();
    }
}

impl GcmKey {
    /// Builds from key material `key || salt` (20 or 36 bytes).
    pub fn new(keymat: &[u8]) -> Result<Self> {
        let alg = match keymat.len() {
            20 => &aead::AES_128_GCM,
            36 => &aead::AES_256_GCM,
            n => return Err(CryptoError::BadKeyLength(n)),
        };
        let split = keymat.len().saturating_sub(GCM_SALT_LEN);
        let (k, s) = keymat.split_at(split);
        let unbound = aead::UnboundKey::new(alg, k).map_err(|_| CryptoError::BadKeyLength(k.len()))?;
        let mut salt = [0u8; GCM_SALT_LEN];
        salt.copy_from_slice(s);
        Ok(Self {
            key: aead::LessSafeKey::new(unbound),
            salt,
        })
    }

    fn nonce(&self, iv: &[u8; GCM_IV_LEN]) -> aead::Nonce {
        let mut n = [0u8; aead::NONCE_LEN];
        let (a, b) = n.split_at_mut(GCM_SALT_LEN);
        a.copy_from_slice(&self.salt);
        b.copy_from_slice(iv);
        aead::Nonce::assume_unique_for_key(n)
    }

    /// Encrypts `plaintext`, returning ciphertext || ICV.
    pub fn seal(&self, iv: &[u8; GCM_IV_LEN], aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>> {
        let mut buf = plaintext.to_vec();
        self.key
            .seal_in_place_append_tag(self.nonce(iv), aead::Aad::from(aad), &mut buf)
            .map_err(|_| CryptoError::Integrity)?;
        Ok(buf)
    }

    /// Verifies and decrypts ciphertext || ICV.
    pub fn open(&self, iv: &[u8; GCM_IV_LEN], aad: &[u8], ct_icv: &[u8]) -> Result<Vec<u8>> {
        let mut buf = ct_icv.to_vec();
        let pt_len = self
            .key
            .open_in_place(self.nonce(iv), aead::Aad::from(aad), &mut buf)
            .map_err(|_| CryptoError::Integrity)?
            .len();
        buf.truncate(pt_len);
        Ok(buf)
    }
}

// ---------------------------------------------------------------------------
// Authentication, NAT detection, cookies
// ---------------------------------------------------------------------------

const KEY_PAD: &[u8] = b"Key Pad for IKEv2";

/// The octets a side signs (RFC 7296 2.15): its own first message, the
/// peer's nonce and prf(SK_p, ID body).
pub fn signed_octets(real_message: &[u8], peer_nonce: &[u8], sk_p: &[u8], id_body: &[u8]) -> Vec<u8> {
    let maced_id = prf(sk_p, &[id_body]);
    let mut v = Vec::with_capacity(
        real_message
            .len()
            .saturating_add(peer_nonce.len())
            .saturating_add(PRF_LEN),
    );
    v.extend_from_slice(real_message);
    v.extend_from_slice(peer_nonce);
    v.extend_from_slice(maced_id.expose());
    v
}

/// AUTH = prf(prf(PSK, "Key Pad for IKEv2"), signed octets).
pub fn psk_auth(psk: &[u8], signed: &[u8]) -> Secret {
    let k = prf(psk, &[KEY_PAD]);
    prf(k.expose(), &[signed])
}

/// Verifies a received PSK AUTH value in constant time.
pub fn verify_psk_auth(psk: &[u8], signed: &[u8], received: &[u8]) -> Result<()> {
    let k = prf(psk, &[KEY_PAD]);
    let key = hmac::Key::new(hmac::HMAC_SHA256, k.expose());
    hmac::verify(&key, signed, received).map_err(|_| CryptoError::AuthMismatch)
}

/// NAT_DETECTION_*_IP data: SHA-1(SPIi | SPIr | IP | port) (RFC 7296 2.23).
pub fn nat_detection_hash(spi_i: u64, spi_r: u64, ip: IpAddr, port: u16) -> Vec<u8> {
    let mut ctx = digest::Context::new(&digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(&spi_i.to_be_bytes());
    ctx.update(&spi_r.to_be_bytes());
    match ip {
        IpAddr::V4(a) => ctx.update(&a.octets()),
        IpAddr::V6(a) => ctx.update(&a.octets()),
    }
    ctx.update(&port.to_be_bytes());
    ctx.finish().as_ref().to_vec()
}

/// Fills a fresh buffer with random bytes.
pub fn random_bytes(rng: &dyn SecureRandom, len: usize) -> Result<Vec<u8>> {
    let mut v = vec![0u8; len];
    rng.fill(&mut v).map_err(|_| CryptoError::Rng)?;
    Ok(v)
}

/// A random non-zero u64 (IKE SPIs must not be zero).
pub fn random_u64_nonzero(rng: &dyn SecureRandom) -> Result<u64> {
    loop {
        let mut b = [0u8; 8];
        rng.fill(&mut b).map_err(|_| CryptoError::Rng)?;
        let v = u64::from_be_bytes(b);
        if v != 0 {
            return Ok(v);
        }
    }
}

/// A random u32 usable as ESP SPI (1..=255 are reserved, RFC 4303 2.1).
pub fn random_esp_spi(rng: &dyn SecureRandom) -> Result<u32> {
    loop {
        let mut b = [0u8; 4];
        rng.fill(&mut b).map_err(|_| CryptoError::Rng)?;
        let v = u32::from_be_bytes(b);
        if v > 255 {
            return Ok(v);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use std::collections::HashMap;

    /// Vectors computed independently by testdata/gen_vectors.py (Python
    /// hmac/hashlib and `cryptography`).
    pub(crate) fn vectors() -> HashMap<String, Vec<u8>> {
        include_str!("../testdata/vectors.txt")
            .lines()
            .filter(|l| !l.starts_with('#') && l.contains('='))
            .map(|l| {
                let (k, v) = l.split_once('=').unwrap();
                (k.trim().to_string(), hex::decode(v.trim()).unwrap())
            })
            .collect()
    }

    #[test]
    fn prf_plus_matches_python() {
        let v = vectors();
        let out = prf_plus(&v["prfplus_key"], &v["prfplus_seed"], 100).unwrap();
        assert_eq!(out.expose(), &v["prfplus_out"][..]);
        assert!(prf_plus(b"k", b"s", 255 * 32 + 1).is_err());
    }

    #[test]
    fn gcm_known_answer() {
        let v = vectors();
        let k = GcmKey::new(&v["gcm_keymat"]).unwrap();
        let iv: [u8; 8] = v["gcm_iv"].clone().try_into().unwrap();
        let ct = k.seal(&iv, &v["gcm_aad"], &v["gcm_pt"]).unwrap();
        assert_eq!(ct, v["gcm_ct"]);
        assert_eq!(k.open(&iv, &v["gcm_aad"], &ct).unwrap(), v["gcm_pt"]);
        let mut bad = ct.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert_eq!(k.open(&iv, &v["gcm_aad"], &bad), Err(CryptoError::Integrity));
        assert!(GcmKey::new(&[0; 16]).is_err());
        // NIST / McGrew-Viega test case 2 (AES-128, zero key, zero IV): salt
        // is the first 4 nonce bytes, IV the other 8.
        let k = GcmKey::new(&[0u8; 20]).unwrap();
        let ct = k.seal(&[0; 8], &[], &[0; 16]).unwrap();
        assert_eq!(
            hex::encode(ct),
            "0388dace60b6a392f328c2b971b2fe78ab6e47d42cec13bdf53a67b21257bddf"
        );
    }

    #[test]
    fn psk_auth_matches_python() {
        let v = vectors();
        let a = psk_auth(&v["auth_psk"], &v["auth_signed"]);
        assert_eq!(a.expose(), &v["auth_out"][..]);
        assert!(verify_psk_auth(&v["auth_psk"], &v["auth_signed"], &v["auth_out"]).is_ok());
        assert!(verify_psk_auth(b"wrong", &v["auth_signed"], &v["auth_out"]).is_err());
    }

    #[test]
    fn nat_hash_matches_python() {
        let v = vectors();
        let h = nat_detection_hash(
            0x0102030405060708,
            0x1112131415161718,
            "192.0.2.1".parse().unwrap(),
            500,
        );
        assert_eq!(h, v["nat_hash"]);
    }

    #[test]
    fn dh_agreement_both_groups() {
        let rng = SystemRandom::new();
        for g in [DhGroup::Curve25519, DhGroup::Ecp256] {
            let a = DhPrivate::generate(g, &rng).unwrap();
            let b = DhPrivate::generate(g, &rng).unwrap();
            assert_eq!(a.public().len(), g.public_len());
            let (pa, pb) = (a.public().to_vec(), b.public().to_vec());
            let s1 = a.agree(&pb).unwrap();
            let s2 = b.agree(&pa).unwrap();
            assert_eq!(s1, s2);
            let c = DhPrivate::generate(g, &rng).unwrap();
            assert!(c.agree(&[1, 2, 3]).is_err());
        }
        // an invalid P-256 point is rejected
        let c = DhPrivate::generate(DhGroup::Ecp256, &rng).unwrap();
        assert_eq!(c.agree(&[0u8; 64]), Err(CryptoError::Agreement));
    }

    #[test]
    fn secret_equality() {
        assert_eq!(Secret::from_slice(b"abc"), Secret::from_slice(b"abc"));
        assert_ne!(Secret::from_slice(b"abc"), Secret::from_slice(b"abd"));
        assert_ne!(Secret::from_slice(b"abc"), Secret::from_slice(b"ab"));
    }

    #[test]
    fn secret_debug_is_redacted() {
        let s = Secret::from_slice(&[0x41; 8]);
        let d = format!("{s:?}");
        assert!(!d.contains("41") && !d.contains("65"), "{d}");
    }
}
