//! Confidentiality for the secret fields.
//!
//! # Sealing to the router's reply key (responses)
//! The seed encrypts responses "with the router's public key". Here the
//! router makes a fresh X25519 key pair per request ([`ReplyKeyPair`]), sends
//! the public half in the request body (so the request MAC covers it), and
//! keeps the private half until the response arrives. The sender seals:
//!
//! ```text
//! (esk, epk)  = fresh X25519 key pair
//! shared      = X25519(esk, recipient_pk)          ring rejects an all-zero result
//! ctx         = field("vpnnat-proto/1") || field("seal") || field(purpose)
//!               || field(terminal ID) || field(epk) || field(recipient_pk)
//! key         = HKDF-SHA256(salt = "vpnnat-proto/1 seal", ikm = shared, info = ctx), 32 bytes
//! ciphertext  = AES-256-GCM(key, nonce = 96 random bits, aad = ctx, plaintext)
//! ```
//!
//! and sends [`SealedBox`] `{epk, nonce, ciphertext}` (base64). Binding the
//! purpose, terminal ID and both public keys means a box made for one
//! router, one request or one kind of response opens nowhere else.
//!
//! Sealing alone does not say *who* sealed (anyone can seal to a public
//! key); that comes from the response MAC ([`crate::auth::sign_response`]),
//! which covers the box and is keyed with Secret(ID) or Secret(ID2).
//!
//! # Fields encrypted with a shared secret (requests, gateway PSK)
//! ```text
//! key = HKDF-SHA256(salt = "vpnnat-proto/1 field-key", ikm = secret,
//!                   info = field("vpnnat-proto/1") || field(kind) || field(owner))
//! aad = field("vpnnat-proto/1") || field("field") || field(kind) || field(owner)
//!       || field(purpose) || field(context)
//! ```
//! where (kind, owner, secret) is ("router", terminal ID, Secret(ID2)) or
//! ("gateway", gateway name, gateway API key); the nonce is 96 random bits.
//! With random nonces a key must not seal more than 2^32 messages, far above
//! what one router or gateway sends.

use std::fmt;

use ring::aead::{self, Aad, LessSafeKey, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::agreement::{self, EphemeralPrivateKey, UnparsedPublicKey, X25519};
use ring::hkdf;
use ring::rand::SecureRandom;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use zeroize::Zeroizing;

use crate::error::ProtoError;
use crate::keys::{GatewayApiKey, SecretBytes, SecretId2};
use crate::types::{GatewayName, TerminalId};
use crate::{put_field, PROTOCOL_LABEL};

/// Length of an X25519 public key.
pub const PUBLIC_KEY_LEN: usize = 32;
/// Largest plaintext we seal or accept after opening.
pub const MAX_PLAINTEXT: usize = 32 * 1024;

const SEAL_SALT: &[u8] = b"vpnnat-proto/1 seal";
const FIELD_SALT: &[u8] = b"vpnnat-proto/1 field-key";

/// Sealing or opening failed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum SealError {
    /// The box does not open: wrong key, wrong context, or altered.
    #[error("sealed data failed to open")]
    OpenFailed,
    /// The peer's public key is unusable (e.g. a low-order point).
    #[error("unusable public key")]
    BadPublicKey,
    /// The plaintext is larger than [`MAX_PLAINTEXT`].
    #[error("sealed payload too large")]
    TooLarge,
    /// The box opened but its content is not the expected payload.
    #[error("sealed payload is malformed: {0}")]
    Payload(String),
    /// The RNG or a primitive failed locally.
    #[error("local cryptographic failure")]
    Crypto,
}

impl From<SealError> for ProtoError {
    fn from(e: SealError) -> Self {
        match e {
            // Indistinguishable from a forged message: report it as one.
            SealError::OpenFailed => ProtoError::BadMac,
            SealError::BadPublicKey => ProtoError::malformed("public key"),
            SealError::TooLarge => ProtoError::TooLarge {
                len: MAX_PLAINTEXT + 1,
                max: MAX_PLAINTEXT,
            },
            SealError::Payload(what) => ProtoError::malformed(format!("sealed payload: {what}")),
            SealError::Crypto => ProtoError::Crypto,
        }
    }
}

/// What a sealed box is for; part of its key derivation and AAD.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SealPurpose {
    InstallResponse,
    GatewayAddressResponse,
    MaintenanceResponse,
}

impl SealPurpose {
    fn label(self) -> &'static [u8] {
        match self {
            SealPurpose::InstallResponse => b"install-response",
            SealPurpose::GatewayAddressResponse => b"gateway-address-response",
            SealPurpose::MaintenanceResponse => b"maintenance-response",
        }
    }
}

/// The public half of a router's per-request reply key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ReplyPublicKey(#[serde(with = "crate::b64::array")] [u8; PUBLIC_KEY_LEN]);

impl ReplyPublicKey {
    pub fn from_bytes(b: [u8; PUBLIC_KEY_LEN]) -> Self {
        ReplyPublicKey(b)
    }

    pub fn as_bytes(&self) -> &[u8; PUBLIC_KEY_LEN] {
        &self.0
    }
}

impl fmt::Debug for ReplyPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ReplyPublicKey({})", hex::encode(self.0))
    }
}

/// A router's per-request X25519 key pair. Opening consumes it: each key
/// opens exactly one response, as ring's ephemeral keys enforce.
pub struct ReplyKeyPair {
    private: EphemeralPrivateKey,
    public: ReplyPublicKey,
}

impl fmt::Debug for ReplyKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplyKeyPair")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl ReplyKeyPair {
    pub fn generate(rng: &dyn SecureRandom) -> Result<Self, SealError> {
        let private = EphemeralPrivateKey::generate(&X25519, rng).map_err(|_| SealError::Crypto)?;
        let pk = private.compute_public_key().map_err(|_| SealError::Crypto)?;
        let public = ReplyPublicKey(<[u8; PUBLIC_KEY_LEN]>::try_from(pk.as_ref()).map_err(|_| SealError::Crypto)?);
        Ok(ReplyKeyPair { private, public })
    }

    pub fn public_key(&self) -> ReplyPublicKey {
        self.public
    }

    /// Opens a box sealed to this key for `terminal_id` and `purpose`.
    pub fn open(
        self,
        terminal_id: &TerminalId,
        purpose: SealPurpose,
        sealed: &SealedBox,
    ) -> Result<Zeroizing<Vec<u8>>, SealError> {
        if sealed.ciphertext.len() > MAX_PLAINTEXT.saturating_add(AES_256_GCM.tag_len()) {
            return Err(SealError::TooLarge);
        }
        let ctx = seal_context(purpose, terminal_id, &sealed.epk, &self.public.0);
        let peer = UnparsedPublicKey::new(&X25519, sealed.epk);
        let key = agreement::agree_ephemeral(self.private, &peer, |shared| derive_aead_key(SEAL_SALT, shared, &ctx))
            .map_err(|_| SealError::OpenFailed)??;
        let mut buf = Zeroizing::new(sealed.ciphertext.clone());
        let len = key
            .open_in_place(
                aead::Nonce::assume_unique_for_key(sealed.nonce),
                Aad::from(&ctx),
                &mut buf,
            )
            .map_err(|_| SealError::OpenFailed)?
            .len();
        buf.truncate(len);
        Ok(buf)
    }

    /// [`ReplyKeyPair::open`], then parses the JSON payload.
    pub fn open_json<T: DeserializeOwned>(
        self,
        terminal_id: &TerminalId,
        purpose: SealPurpose,
        sealed: &SealedBox,
    ) -> Result<T, SealError> {
        let plain = self.open(terminal_id, purpose, sealed)?;
        serde_json::from_slice(&plain).map_err(|e| SealError::Payload(e.to_string()))
    }
}

/// A sealed box as it travels: all three fields base64.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SealedBox {
    /// The sender's ephemeral X25519 public key.
    #[serde(with = "crate::b64::array")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Byte))]
    pub epk: [u8; PUBLIC_KEY_LEN],
    #[serde(with = "crate::b64::array")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Byte))]
    pub nonce: [u8; NONCE_LEN],
    /// AES-256-GCM ciphertext with the 16-byte tag appended.
    #[serde(with = "crate::b64::bytes")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Byte))]
    pub ciphertext: Vec<u8>,
}

/// Seals `plaintext` to `recipient` (the router's reply key).
pub fn seal(
    rng: &dyn SecureRandom,
    recipient: &ReplyPublicKey,
    terminal_id: &TerminalId,
    purpose: SealPurpose,
    plaintext: &[u8],
) -> Result<SealedBox, SealError> {
    if plaintext.len() > MAX_PLAINTEXT {
        return Err(SealError::TooLarge);
    }
    let esk = EphemeralPrivateKey::generate(&X25519, rng).map_err(|_| SealError::Crypto)?;
    let epk = <[u8; PUBLIC_KEY_LEN]>::try_from(esk.compute_public_key().map_err(|_| SealError::Crypto)?.as_ref())
        .map_err(|_| SealError::Crypto)?;
    let ctx = seal_context(purpose, terminal_id, &epk, &recipient.0);
    let peer = UnparsedPublicKey::new(&X25519, recipient.0);
    let key = agreement::agree_ephemeral(esk, &peer, |shared| derive_aead_key(SEAL_SALT, shared, &ctx))
        .map_err(|_| SealError::BadPublicKey)??;
    let nonce = random_nonce(rng)?;
    let mut ciphertext = plaintext.to_vec();
    key.seal_in_place_append_tag(
        aead::Nonce::assume_unique_for_key(nonce),
        Aad::from(&ctx),
        &mut ciphertext,
    )
    .map_err(|_| SealError::Crypto)?;
    Ok(SealedBox { epk, nonce, ciphertext })
}

/// Serializes `payload` to JSON in a zeroizing buffer and seals it.
pub fn seal_json<T: Serialize>(
    rng: &dyn SecureRandom,
    recipient: &ReplyPublicKey,
    terminal_id: &TerminalId,
    purpose: SealPurpose,
    payload: &T,
) -> Result<SealedBox, SealError> {
    let plain = to_json_zeroizing(payload)?;
    seal(rng, recipient, terminal_id, purpose, &plain)
}

/// JSON into a buffer that is wiped on drop. Pre-sized so that serde_json
/// does not reallocate (and leave unwiped copies) for typical payloads.
pub(crate) fn to_json_zeroizing<T: Serialize>(payload: &T) -> Result<Zeroizing<Vec<u8>>, SealError> {
    let mut plain = Zeroizing::new(Vec::with_capacity(4096));
    serde_json::to_writer(&mut *plain, payload).map_err(|e| SealError::Payload(e.to_string()))?;
    Ok(plain)
}

fn seal_context(
    purpose: SealPurpose,
    terminal_id: &TerminalId,
    epk: &[u8; PUBLIC_KEY_LEN],
    recipient: &[u8; PUBLIC_KEY_LEN],
) -> Vec<u8> {
    let mut ctx = Vec::with_capacity(160);
    put_field(&mut ctx, PROTOCOL_LABEL);
    put_field(&mut ctx, b"seal");
    put_field(&mut ctx, purpose.label());
    put_field(&mut ctx, terminal_id.as_str().as_bytes());
    put_field(&mut ctx, epk);
    put_field(&mut ctx, recipient);
    ctx
}

fn derive_aead_key(salt: &[u8], ikm: &[u8], info: &[u8]) -> Result<LessSafeKey, SealError> {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(ikm);
    let info = [info];
    let okm = prk.expand(&info, &AES_256_GCM).map_err(|_| SealError::Crypto)?;
    Ok(LessSafeKey::new(UnboundKey::from(okm)))
}

fn random_nonce(rng: &dyn SecureRandom) -> Result<[u8; NONCE_LEN], SealError> {
    let mut n = [0u8; NONCE_LEN];
    rng.fill(&mut n).map_err(|_| SealError::Crypto)?;
    Ok(n)
}

/// What an encrypted field holds; part of its AAD.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FieldPurpose {
    /// The private part of a maintenance request (claimant name, terminal
    /// names, phone, content), under Secret(ID2).
    MaintenanceRequest,
    /// A tunnel's PSK on its way to a gateway, under the gateway API key.
    TunnelPsk,
}

impl FieldPurpose {
    fn label(self) -> &'static [u8] {
        match self {
            FieldPurpose::MaintenanceRequest => b"maintenance-request",
            FieldPurpose::TunnelPsk => b"tunnel-psk",
        }
    }
}

/// An encrypted field as it travels (base64).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EncryptedField {
    #[serde(with = "crate::b64::array")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Byte))]
    pub nonce: [u8; NONCE_LEN],
    /// AES-256-GCM ciphertext with the 16-byte tag appended.
    #[serde(with = "crate::b64::bytes")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Byte))]
    pub ciphertext: Vec<u8>,
}

/// An AES-256-GCM key derived from a shared secret for one owner.
pub struct FieldKey {
    key: LessSafeKey,
    kind: &'static [u8],
    owner: String,
}

impl fmt::Debug for FieldKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FieldKey")
            .field("owner", &self.owner)
            .finish_non_exhaustive()
    }
}

impl FieldKey {
    /// The key for a router's request fields, from its Secret(ID2).
    pub fn for_router(secret: &SecretId2, terminal_id: &TerminalId) -> Result<Self, SealError> {
        Self::derive(b"router", secret.expose_secret(), terminal_id.as_str())
    }

    /// The key for fields sent to or from a gateway, from its API key.
    pub fn for_gateway(key: &GatewayApiKey, gateway: &GatewayName) -> Result<Self, SealError> {
        Self::derive(b"gateway", key.expose_secret(), gateway.as_str())
    }

    fn derive(kind: &'static [u8], secret: &[u8], owner: &str) -> Result<Self, SealError> {
        let mut info = Vec::with_capacity(96);
        put_field(&mut info, PROTOCOL_LABEL);
        put_field(&mut info, kind);
        put_field(&mut info, owner.as_bytes());
        Ok(FieldKey {
            key: derive_aead_key(FIELD_SALT, secret, &info)?,
            kind,
            owner: owner.to_owned(),
        })
    }

    fn aad(&self, purpose: FieldPurpose, context: &str) -> Vec<u8> {
        let mut aad = Vec::with_capacity(128);
        put_field(&mut aad, PROTOCOL_LABEL);
        put_field(&mut aad, b"field");
        put_field(&mut aad, self.kind);
        put_field(&mut aad, self.owner.as_bytes());
        put_field(&mut aad, purpose.label());
        put_field(&mut aad, context.as_bytes());
        aad
    }

    /// Encrypts `plaintext`; `context` is bound too (e.g. the terminal ID a
    /// tunnel PSK belongs to; empty when the owner says it all).
    pub fn encrypt(
        &self,
        rng: &dyn SecureRandom,
        purpose: FieldPurpose,
        context: &str,
        plaintext: &[u8],
    ) -> Result<EncryptedField, SealError> {
        if plaintext.len() > MAX_PLAINTEXT {
            return Err(SealError::TooLarge);
        }
        let nonce = random_nonce(rng)?;
        let mut ciphertext = plaintext.to_vec();
        self.key
            .seal_in_place_append_tag(
                aead::Nonce::assume_unique_for_key(nonce),
                Aad::from(self.aad(purpose, context)),
                &mut ciphertext,
            )
            .map_err(|_| SealError::Crypto)?;
        Ok(EncryptedField { nonce, ciphertext })
    }

    pub fn decrypt(
        &self,
        purpose: FieldPurpose,
        context: &str,
        field: &EncryptedField,
    ) -> Result<Zeroizing<Vec<u8>>, SealError> {
        if field.ciphertext.len() > MAX_PLAINTEXT.saturating_add(AES_256_GCM.tag_len()) {
            return Err(SealError::TooLarge);
        }
        let mut buf = Zeroizing::new(field.ciphertext.clone());
        let len = self
            .key
            .open_in_place(
                aead::Nonce::assume_unique_for_key(field.nonce),
                Aad::from(self.aad(purpose, context)),
                &mut buf,
            )
            .map_err(|_| SealError::OpenFailed)?
            .len();
        buf.truncate(len);
        Ok(buf)
    }

    /// Serializes `payload` as JSON and encrypts it.
    pub fn encrypt_json<T: Serialize>(
        &self,
        rng: &dyn SecureRandom,
        purpose: FieldPurpose,
        context: &str,
        payload: &T,
    ) -> Result<EncryptedField, SealError> {
        let plain = to_json_zeroizing(payload)?;
        self.encrypt(rng, purpose, context, &plain)
    }

    /// Decrypts and parses a JSON payload.
    pub fn decrypt_json<T: DeserializeOwned>(
        &self,
        purpose: FieldPurpose,
        context: &str,
        field: &EncryptedField,
    ) -> Result<T, SealError> {
        let plain = self.decrypt(purpose, context, field)?;
        serde_json::from_slice(&plain).map_err(|e| SealError::Payload(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;

    fn tid(s: &str) -> TerminalId {
        TerminalId::new(s).unwrap()
    }

    fn sealed_pair(msg: &[u8]) -> (ReplyKeyPair, SealedBox) {
        let rng = SystemRandom::new();
        let kp = ReplyKeyPair::generate(&rng).unwrap();
        let b = seal(
            &rng,
            &kp.public_key(),
            &tid("router-1"),
            SealPurpose::InstallResponse,
            msg,
        )
        .unwrap();
        (kp, b)
    }

    #[test]
    fn seal_round_trip() {
        let (kp, b) = sealed_pair(b"psk and friends");
        assert_ne!(&b.ciphertext[..15], b"psk and friends");
        let out = kp.open(&tid("router-1"), SealPurpose::InstallResponse, &b).unwrap();
        assert_eq!(&out[..], b"psk and friends");
    }

    #[test]
    fn seal_json_round_trip_through_wire() {
        let rng = SystemRandom::new();
        let kp = ReplyKeyPair::generate(&rng).unwrap();
        let b = seal_json(
            &rng,
            &kp.public_key(),
            &tid("r"),
            SealPurpose::GatewayAddressResponse,
            &vec![1u32, 2, 3],
        )
        .unwrap();
        let wire = serde_json::to_string(&b).unwrap();
        let back: SealedBox = serde_json::from_str(&wire).unwrap();
        let v: Vec<u32> = kp
            .open_json(&tid("r"), SealPurpose::GatewayAddressResponse, &back)
            .unwrap();
        assert_eq!(v, vec![1, 2, 3]);
    }

    #[test]
    fn tampering_any_part_is_rejected() {
        let (_, probe) = sealed_pair(b"secret");
        let ct_len = probe.ciphertext.len();
        type Tamper = Box<dyn Fn(&mut SealedBox)>;
        let mut tamperings: Vec<Tamper> = vec![
            Box::new(|b| b.epk[0] ^= 1),
            Box::new(|b| b.epk[31] ^= 0x40),
            Box::new(|b| b.nonce[0] ^= 1),
            Box::new(|b| b.nonce[11] ^= 1),
            Box::new(|b| {
                b.ciphertext.pop();
            }),
            Box::new(|b| b.ciphertext.push(0)),
            Box::new(|b| b.ciphertext.clear()),
        ];
        for i in 0..ct_len {
            tamperings.push(Box::new(move |b| b.ciphertext[i] ^= 0x80));
        }
        for tamper in tamperings {
            // Opening consumes the key pair, so each attempt seals afresh.
            let (kp, mut b) = sealed_pair(b"secret");
            tamper(&mut b);
            assert_eq!(
                kp.open(&tid("router-1"), SealPurpose::InstallResponse, &b),
                Err(SealError::OpenFailed)
            );
        }
    }

    #[test]
    fn wrong_key_terminal_or_purpose_rejected() {
        let rng = SystemRandom::new();
        let (_, b) = sealed_pair(b"x");
        let other = ReplyKeyPair::generate(&rng).unwrap();
        assert_eq!(
            other.open(&tid("router-1"), SealPurpose::InstallResponse, &b),
            Err(SealError::OpenFailed)
        );
        let (kp, b) = sealed_pair(b"x");
        assert_eq!(
            kp.open(&tid("router-2"), SealPurpose::InstallResponse, &b),
            Err(SealError::OpenFailed)
        );
        let (kp, b) = sealed_pair(b"x");
        assert_eq!(
            kp.open(&tid("router-1"), SealPurpose::MaintenanceResponse, &b),
            Err(SealError::OpenFailed)
        );
    }

    #[test]
    fn low_order_public_key_rejected() {
        let rng = SystemRandom::new();
        let zero = ReplyPublicKey::from_bytes([0; 32]);
        assert_eq!(
            seal(&rng, &zero, &tid("r"), SealPurpose::InstallResponse, b"x"),
            Err(SealError::BadPublicKey)
        );
        let (kp, mut b) = sealed_pair(b"x");
        b.epk = [0; 32];
        assert_eq!(
            kp.open(&tid("router-1"), SealPurpose::InstallResponse, &b),
            Err(SealError::OpenFailed)
        );
    }

    #[test]
    fn sealed_box_wire_rejects_unknown_fields_and_bad_lengths() {
        let (_, b) = sealed_pair(b"x");
        let mut v = serde_json::to_value(&b).unwrap();
        v["extra"] = serde_json::Value::from(1);
        assert!(serde_json::from_value::<SealedBox>(v).is_err());
        let mut v = serde_json::to_value(&b).unwrap();
        v["nonce"] = serde_json::Value::from(crate::b64::encode(&[0; 11]));
        assert!(serde_json::from_value::<SealedBox>(v).is_err());
        let mut v = serde_json::to_value(&b).unwrap();
        v["epk"] = serde_json::Value::from("not base64!");
        assert!(serde_json::from_value::<SealedBox>(v).is_err());
    }

    #[test]
    fn oversized_plaintext_refused() {
        let rng = SystemRandom::new();
        let kp = ReplyKeyPair::generate(&rng).unwrap();
        let big = vec![0u8; MAX_PLAINTEXT + 1];
        assert_eq!(
            seal(&rng, &kp.public_key(), &tid("r"), SealPurpose::InstallResponse, &big),
            Err(SealError::TooLarge)
        );
    }

    #[test]
    fn field_round_trip_and_binding() {
        let rng = SystemRandom::new();
        let s = SecretId2::from_array([4; 32]);
        let k = FieldKey::for_router(&s, &tid("router-1")).unwrap();
        let f = k.encrypt(&rng, FieldPurpose::MaintenanceRequest, "", b"Taro").unwrap();
        assert_eq!(
            &k.decrypt(FieldPurpose::MaintenanceRequest, "", &f).unwrap()[..],
            b"Taro"
        );
        // Wrong purpose, context, owner, secret, or kind.
        assert_eq!(k.decrypt(FieldPurpose::TunnelPsk, "", &f), Err(SealError::OpenFailed));
        assert_eq!(
            k.decrypt(FieldPurpose::MaintenanceRequest, "x", &f),
            Err(SealError::OpenFailed)
        );
        let k2 = FieldKey::for_router(&s, &tid("router-2")).unwrap();
        assert_eq!(
            k2.decrypt(FieldPurpose::MaintenanceRequest, "", &f),
            Err(SealError::OpenFailed)
        );
        let k3 = FieldKey::for_router(&SecretId2::from_array([5; 32]), &tid("router-1")).unwrap();
        assert_eq!(
            k3.decrypt(FieldPurpose::MaintenanceRequest, "", &f),
            Err(SealError::OpenFailed)
        );
        let g = FieldKey::for_gateway(
            &GatewayApiKey::from_array([4; 32]),
            &GatewayName::new("router-1").unwrap(),
        )
        .unwrap();
        assert_eq!(
            g.decrypt(FieldPurpose::MaintenanceRequest, "", &f),
            Err(SealError::OpenFailed)
        );
        // Tampering.
        let mut t = f.clone();
        t.nonce[3] ^= 1;
        assert!(k.decrypt(FieldPurpose::MaintenanceRequest, "", &t).is_err());
        for i in 0..f.ciphertext.len() {
            let mut t = f.clone();
            t.ciphertext[i] ^= 1;
            assert!(k.decrypt(FieldPurpose::MaintenanceRequest, "", &t).is_err());
        }
        assert!(!format!("{k:?}").contains("4, 4"));
    }

    #[test]
    fn seal_errors_map_to_proto_errors() {
        assert_eq!(ProtoError::from(SealError::OpenFailed), ProtoError::BadMac);
        assert_eq!(ProtoError::from(SealError::Crypto).http_status(), 500);
        assert_eq!(ProtoError::from(SealError::Payload("x".into())).http_status(), 400);
    }
}
