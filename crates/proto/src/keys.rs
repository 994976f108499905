//! Long-lived secrets.
//!
//! Every type here zeroizes its bytes when dropped and prints as
//! `Name(<redacted>)`. None implements `Serialize`: a secret leaves memory
//! only through [`SecretBytes::to_hex`] (for the caller's durable store) or
//! inside a sealed payload (see [`crate::seal`]), so it cannot end up in a
//! log or a JSON body by accident.

use std::fmt;

use ring::hmac;
use ring::rand::SecureRandom;
use thiserror::Error;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::types::TerminalId;

/// Length in bytes of every symmetric secret of the protocol.
pub const SECRET_LEN: usize = 32;

/// A key could not be built.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum KeyError {
    #[error("{what} must be {expected} bytes")]
    BadLength { what: &'static str, expected: usize },
    #[error("{what} is not valid {encoding}")]
    BadEncoding { what: &'static str, encoding: &'static str },
    #[error("{what} is not acceptable: {reason}")]
    Invalid { what: &'static str, reason: &'static str },
    #[error("the system random number generator failed")]
    Rng,
}

/// Common behaviour of the 32-byte secrets.
pub trait SecretBytes: Sized {
    /// Human name used in error messages and `Debug`.
    const NAME: &'static str;

    fn from_array(bytes: [u8; SECRET_LEN]) -> Self;

    /// The raw bytes; the name says what the caller is doing.
    fn expose_secret(&self) -> &[u8; SECRET_LEN];

    fn from_slice(bytes: &[u8]) -> Result<Self, KeyError> {
        let arr = <[u8; SECRET_LEN]>::try_from(bytes).map_err(|_| KeyError::BadLength {
            what: Self::NAME,
            expected: SECRET_LEN,
        })?;
        Ok(Self::from_array(arr))
    }

    /// A fresh random secret.
    fn generate(rng: &dyn SecureRandom) -> Result<Self, KeyError> {
        let mut bytes = Zeroizing::new([0u8; SECRET_LEN]);
        rng.fill(bytes.as_mut()).map_err(|_| KeyError::Rng)?;
        Ok(Self::from_array(*bytes))
    }

    /// Lower-case hex, for the owner's durable store (database, state file).
    fn to_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(hex::encode(self.expose_secret()))
    }

    fn from_hex(s: &str) -> Result<Self, KeyError> {
        let s = s.trim();
        if s.len() != 2 * SECRET_LEN {
            return Err(KeyError::BadLength {
                what: Self::NAME,
                expected: SECRET_LEN,
            });
        }
        let mut arr = Zeroizing::new([0u8; SECRET_LEN]);
        hex::decode_to_slice(s, arr.as_mut()).map_err(|_| KeyError::BadEncoding {
            what: Self::NAME,
            encoding: "hex",
        })?;
        Ok(Self::from_array(*arr))
    }

    /// The HMAC-SHA256 key built from this secret.
    fn mac_key(&self) -> MacKey {
        MacKey(hmac::Key::new(hmac::HMAC_SHA256, self.expose_secret()))
    }
}

macro_rules! secret_type {
    ($(#[$doc:meta])* $name:ident, $human:literal) => {
        $(#[$doc])*
        #[derive(Clone, Zeroize, ZeroizeOnDrop)]
        pub struct $name([u8; SECRET_LEN]);

        impl SecretBytes for $name {
            const NAME: &'static str = $human;

            fn from_array(bytes: [u8; SECRET_LEN]) -> Self {
                $name(bytes)
            }

            fn expose_secret(&self) -> &[u8; SECRET_LEN] {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(concat!(stringify!($name), "(<redacted>)"))
            }
        }
    };
}

secret_type!(
    /// The factory master key from which every router's Secret(ID) is
    /// derived. Lives only in the factory tooling and the center.
    FactoryMasterKey,
    "factory master key"
);
secret_type!(
    /// Secret(ID): the per-router factory secret that authenticates the
    /// installation notice.
    SecretId,
    "Secret(ID)"
);
secret_type!(
    /// Secret(ID2): the per-router secret the center issues at installation;
    /// authenticates every later message in both directions.
    SecretId2,
    "Secret(ID2)"
);
secret_type!(
    /// The IKEv2 pre-shared key between the router and its gateway.
    Psk,
    "pre-shared key"
);
secret_type!(
    /// The key authenticating centerd <-> gatewayd messages (one per gateway).
    GatewayApiKey,
    "gateway API key"
);

impl SecretId {
    /// Secret(ID) = HMAC-SHA256(factory master key, terminal ID bytes).
    ///
    /// Per-router rather than the seed's one shared secret: opening one
    /// router does not open the others (PROTOCOL.md, preconditions).
    pub fn derive(master: &FactoryMasterKey, terminal_id: &TerminalId) -> SecretId {
        let key = hmac::Key::new(hmac::HMAC_SHA256, master.expose_secret());
        let tag = hmac::sign(&key, terminal_id.as_str().as_bytes());
        let mut out = [0u8; SECRET_LEN];
        // HMAC-SHA256 output is exactly SECRET_LEN bytes.
        out.copy_from_slice(tag.as_ref());
        SecretId(out)
    }
}

/// An HMAC-SHA256 key ready for signing or verifying envelopes.
///
/// Built from a [`SecretBytes`] value via [`SecretBytes::mac_key`]. ring keeps
/// its own key schedule, which it does not zeroize; dropping this promptly
/// after use keeps that window short.
#[derive(Clone)]
pub struct MacKey(pub(crate) hmac::Key);

impl fmt::Debug for MacKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MacKey(<redacted>)")
    }
}

/// The maintenance password the center hands a router at installation
/// (seed 0124): 8..=128 printable ASCII characters.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct MaintenancePassword(String);

impl MaintenancePassword {
    pub fn new(s: impl Into<String>) -> Result<Self, KeyError> {
        let s = Zeroizing::new(s.into());
        const WHAT: &str = "maintenance password";
        if s.len() < 8 || s.len() > 128 {
            return Err(KeyError::Invalid {
                what: WHAT,
                reason: "must be 8 to 128 characters",
            });
        }
        if !s.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) {
            return Err(KeyError::Invalid {
                what: WHAT,
                reason: "only printable ASCII is allowed",
            });
        }
        Ok(MaintenancePassword(s.to_string()))
    }

    pub fn expose_secret(&self) -> &str {
        &self.0
    }

    /// A fresh random password for one router (issue 18, item 3: no
    /// password shared by every router): 24 characters from an alphabet of
    /// 32 that an operator can read out on the phone (no 0/o, 1/l), so
    /// 120 bits.
    pub fn generate(rng: &dyn ring::rand::SecureRandom) -> Result<Self, KeyError> {
        const ALPHABET: &[u8; 32] = b"abcdefghijkmnpqrstuvwxyz23456789";
        let mut raw = Zeroizing::new([0u8; 24]);
        rng.fill(raw.as_mut()).map_err(|_| KeyError::Rng)?;
        // 256 is a multiple of 32: masking keeps every symbol equally likely.
        let s: String = raw
            .iter()
            .filter_map(|b| ALPHABET.get(usize::from(b & 31)).copied().map(char::from))
            .collect();
        MaintenancePassword::new(s)
    }
}

impl fmt::Debug for MaintenancePassword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MaintenancePassword(<redacted>)")
    }
}

/// serde helpers for secrets inside sealed payloads only.
pub(crate) mod sealed_serde {
    use super::*;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer, K: SecretBytes>(k: &K, s: S) -> Result<S::Ok, S::Error> {
        let enc = Zeroizing::new(crate::b64::encode(k.expose_secret()));
        s.serialize_str(&enc)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>, K: SecretBytes>(d: D) -> Result<K, D::Error> {
        let s = Zeroizing::new(String::deserialize(d)?);
        let arr = Zeroizing::new(crate::b64::decode_array::<SECRET_LEN>(&s).map_err(serde::de::Error::custom)?);
        Ok(K::from_array(*arr))
    }

    pub(crate) mod password {
        use super::*;

        pub(crate) fn serialize<S: Serializer>(p: &MaintenancePassword, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_str(p.expose_secret())
        }

        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<MaintenancePassword, D::Error> {
            let s = Zeroizing::new(String::deserialize(d)?);
            MaintenancePassword::new(s.as_str()).map_err(serde::de::Error::custom)
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn generated_maintenance_passwords_differ_and_are_readable() {
        let rng = ring::rand::SystemRandom::new();
        let a = MaintenancePassword::generate(&rng).unwrap();
        let b = MaintenancePassword::generate(&rng).unwrap();
        assert_ne!(a.expose_secret(), b.expose_secret());
        assert_eq!(a.expose_secret().len(), 24);
        assert!(a
            .expose_secret()
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()));
        assert!(!a.expose_secret().contains(['0', '1', 'l', 'o']));
    }

    use super::*;
    use ring::rand::SystemRandom;

    fn tid(s: &str) -> TerminalId {
        TerminalId::new(s).unwrap()
    }

    #[test]
    fn secret_id_is_hmac_of_terminal_id() {
        let master = FactoryMasterKey::from_array([7u8; 32]);
        let a = SecretId::derive(&master, &tid("router-1"));
        let b = SecretId::derive(&master, &tid("router-2"));
        assert_ne!(a.expose_secret(), b.expose_secret());
        let key = hmac::Key::new(hmac::HMAC_SHA256, &[7u8; 32]);
        let want = hmac::sign(&key, b"router-1");
        assert_eq!(&a.expose_secret()[..], want.as_ref());
        // Deterministic.
        let again = SecretId::derive(&master, &tid("router-1"));
        assert_eq!(a.expose_secret(), again.expose_secret());
    }

    #[test]
    fn generated_secrets_differ() {
        let rng = SystemRandom::new();
        let a = Psk::generate(&rng).unwrap();
        let b = Psk::generate(&rng).unwrap();
        assert_ne!(a.expose_secret(), b.expose_secret());
        let k = GatewayApiKey::generate(&rng).unwrap();
        let s = SecretId2::generate(&rng).unwrap();
        assert_ne!(k.expose_secret(), s.expose_secret());
    }

    #[test]
    fn debug_is_redacted() {
        let k = SecretId2::from_array([0xab; 32]);
        let d = format!("{k:?}");
        assert_eq!(d, "SecretId2(<redacted>)");
        assert!(!d.to_lowercase().contains("ab"));
        let p = MaintenancePassword::new("hunter2hunter2").unwrap();
        assert!(!format!("{p:?}").contains("hunter2"));
        assert!(!format!("{:?}", k.mac_key()).contains("ab"));
    }

    #[test]
    fn hex_round_trip_and_errors() {
        let k = Psk::from_array([0x5a; 32]);
        let h = k.to_hex();
        assert_eq!(h.len(), 64);
        let back = Psk::from_hex(&h).unwrap();
        assert_eq!(back.expose_secret(), k.expose_secret());
        assert!(matches!(Psk::from_hex("00"), Err(KeyError::BadLength { .. })));
        assert!(matches!(
            Psk::from_hex(&"zz".repeat(32)),
            Err(KeyError::BadEncoding { .. })
        ));
        assert!(Psk::from_slice(&[1u8; 31]).is_err());
        assert!(Psk::from_slice(&[1u8; 32]).is_ok());
    }

    #[test]
    fn zeroize_clears_bytes() {
        let mut k = SecretId2::from_array([9u8; 32]);
        k.zeroize();
        assert_eq!(k.expose_secret(), &[0u8; 32]);
    }

    #[test]
    fn password_rules() {
        assert!(MaintenancePassword::new("short").is_err());
        assert!(MaintenancePassword::new("tab\there-xx").is_err());
        assert!(MaintenancePassword::new("x".repeat(129)).is_err());
        assert!(MaintenancePassword::new("correct horse battery").is_ok());
    }
}
