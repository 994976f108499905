//! Algorithm suites, proposal negotiation, key derivation (RFC 7296 2.14,
//! 2.17, 2.18) and SK payload protection (RFC 5282).
//!
//! We only do AEAD (AES-GCM with 16-byte ICV) with PRF_HMAC_SHA2_256, so
//! there are no SK_ai/SK_ar keys: SK_ei/SK_er carry key || salt.

use std::fmt;

use thiserror::Error;

use crate::codec::{
    self, encode_payloads, payload_type, protocol_id, transform as tf, CodecError, Header, Message, Payload, Proposal,
    Transform,
};
use crate::crypto::{prf, prf_plus, CryptoError, DhGroup, GcmKey, Secret, GCM_ICV_LEN, GCM_IV_LEN, PRF_LEN};

/// Errors from SK protection and key derivation.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum KeysError {
    /// Encoding or parsing failed.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// A crypto operation failed (including ICV mismatch).
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// The message has no SK payload although it must be encrypted.
    #[error("message is not encrypted")]
    NotEncrypted,
    /// Payloads other than SK appeared outside the encryption.
    #[error("unprotected payloads next to SK")]
    UnprotectedPayloads,
    /// The SK payload is too short for IV and ICV.
    #[error("SK payload too short ({0} bytes)")]
    SkTooShort(usize),
    /// The pad length byte points outside the plaintext.
    #[error("invalid padding in SK payload")]
    BadPadding,
}

/// AEAD encryption algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EncrAlg {
    /// AES-128-GCM with 16-byte ICV.
    Aes128Gcm16,
    /// AES-256-GCM with 16-byte ICV.
    Aes256Gcm16,
}

impl EncrAlg {
    /// Key length in bits as in the Key Length attribute.
    pub fn key_bits(self) -> u16 {
        match self {
            Self::Aes128Gcm16 => 128,
            Self::Aes256Gcm16 => 256,
        }
    }
    /// Key material length: key + 4-byte salt.
    pub fn keymat_len(self) -> usize {
        match self {
            Self::Aes128Gcm16 => 20,
            Self::Aes256Gcm16 => 36,
        }
    }
    fn from_transform(t: &Transform) -> Option<Self> {
        if t.ty != tf::TYPE_ENCR || t.id != tf::ENCR_AES_GCM_16 {
            return None;
        }
        match t.key_length() {
            Ok(Some(128)) => Some(Self::Aes128Gcm16),
            Ok(Some(256)) => Some(Self::Aes256Gcm16),
            _ => None,
        }
    }
    fn transform(self) -> Transform {
        Transform::with_key_length(tf::TYPE_ENCR, tf::ENCR_AES_GCM_16, self.key_bits())
    }
    /// The Linux XFRM algorithm name for ESP.
    pub fn xfrm_name(self) -> &'static str {
        "rfc4106(gcm(aes))"
    }
    /// ICV length in bits (for XFRM).
    pub fn icv_bits(self) -> u32 {
        128
    }
}

/// An IKE SA suite: ENCR + PRF_HMAC_SHA2_256 + DH group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IkeSuite {
    /// Encryption.
    pub encr: EncrAlg,
    /// Diffie-Hellman group.
    pub dh: DhGroup,
}

impl IkeSuite {
    /// `aes256gcm16-prfsha256-x25519`.
    pub const AES256GCM16_SHA256_X25519: Self = Self {
        encr: EncrAlg::Aes256Gcm16,
        dh: DhGroup::Curve25519,
    };
    /// `aes128gcm16-prfsha256-ecp256`.
    pub const AES128GCM16_SHA256_ECP256: Self = Self {
        encr: EncrAlg::Aes128Gcm16,
        dh: DhGroup::Ecp256,
    };

    /// The default list, most preferred first.
    pub fn defaults() -> Vec<Self> {
        vec![Self::AES256GCM16_SHA256_X25519, Self::AES128GCM16_SHA256_ECP256]
    }

    /// Wire proposal.
    pub fn to_proposal(self, num: u8, spi: Vec<u8>) -> Proposal {
        Proposal {
            num,
            protocol: protocol_id::IKE,
            spi,
            transforms: vec![
                self.encr.transform(),
                Transform::new(tf::TYPE_PRF, tf::PRF_HMAC_SHA2_256),
                Transform::new(tf::TYPE_DH, self.dh.id()),
            ],
        }
    }
}

/// An ESP suite: ENCR, no ESN, optional PFS group for CREATE_CHILD_SA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EspSuite {
    /// Encryption.
    pub encr: EncrAlg,
}

impl EspSuite {
    /// `aes256gcm16`.
    pub const AES256GCM16: Self = Self {
        encr: EncrAlg::Aes256Gcm16,
    };
    /// `aes128gcm16`.
    pub const AES128GCM16: Self = Self {
        encr: EncrAlg::Aes128Gcm16,
    };

    /// The default list, most preferred first.
    pub fn defaults() -> Vec<Self> {
        vec![Self::AES256GCM16, Self::AES128GCM16]
    }

    /// Wire proposal, optionally with a DH transform for PFS.
    pub fn to_proposal(self, num: u8, spi: u32, pfs: Option<DhGroup>) -> Proposal {
        let mut transforms = vec![self.encr.transform()];
        if let Some(g) = pfs {
            transforms.push(Transform::new(tf::TYPE_DH, g.id()));
        }
        transforms.push(Transform::new(tf::TYPE_ESN, tf::ESN_NONE));
        Proposal {
            num,
            protocol: protocol_id::ESP,
            spi: spi.to_be_bytes().to_vec(),
            transforms,
        }
    }
}

/// Builds the SA payload content for a list of IKE suites.
pub fn ike_proposals(suites: &[IkeSuite], spi: &[u8]) -> Vec<Proposal> {
    suites
        .iter()
        .zip(1u8..)
        .map(|(s, n)| s.to_proposal(n, spi.to_vec()))
        .collect()
}

/// Builds the SA payload content for a list of ESP suites.
pub fn esp_proposals(suites: &[EspSuite], spi: u32, pfs: Option<DhGroup>) -> Vec<Proposal> {
    suites
        .iter()
        .zip(1u8..)
        .map(|(s, n)| s.to_proposal(n, spi, pfs))
        .collect()
}

fn of_type(p: &Proposal, ty: u8) -> impl Iterator<Item = &Transform> {
    p.transforms.iter().filter(move |t| t.ty == ty)
}

/// Whether the proposal offers nothing but types we know, and no integrity
/// algorithm other than NONE (AEAD only).
fn sane_aead(p: &Proposal) -> bool {
    p.transforms.iter().all(|t| {
        matches!(
            t.ty,
            tf::TYPE_ENCR | tf::TYPE_PRF | tf::TYPE_DH | tf::TYPE_ESN | tf::TYPE_INTEG
        )
    }) && of_type(p, tf::TYPE_INTEG).all(|t| t.id == 0)
}

fn offers(p: &Proposal, ty: u8, id: u16) -> bool {
    of_type(p, ty).any(|t| t.id == id && t.attributes.is_empty())
}

fn offers_encr(p: &Proposal, encr: EncrAlg) -> bool {
    of_type(p, tf::TYPE_ENCR).any(|t| EncrAlg::from_transform(t) == Some(encr))
}

/// Responder side: picks the first of the peer's proposals that one of our
/// suites satisfies. Returns the suite and the peer's proposal (for its
/// number and SPI).
pub fn select_ike<'a>(offered: &'a [Proposal], ours: &[IkeSuite]) -> Option<(IkeSuite, &'a Proposal)> {
    offered
        .iter()
        .filter(|p| p.protocol == protocol_id::IKE && sane_aead(p))
        .find_map(|p| {
            ours.iter()
                .find(|s| {
                    offers_encr(p, s.encr)
                        && offers(p, tf::TYPE_PRF, tf::PRF_HMAC_SHA2_256)
                        && offers(p, tf::TYPE_DH, s.dh.id())
                })
                .map(|s| (*s, p))
        })
}

/// Responder side for ESP: picks a suite. When `pfs` is given (a
/// CREATE_CHILD_SA with KE), the proposal must offer that group; in IKE_AUTH
/// DH transforms are ignored (RFC 7296 1.2).
pub fn select_esp<'a>(
    offered: &'a [Proposal],
    ours: &[EspSuite],
    pfs: Option<DhGroup>,
) -> Option<(EspSuite, &'a Proposal)> {
    offered
        .iter()
        .filter(|p| p.protocol == protocol_id::ESP && p.spi.len() == 4 && sane_aead(p))
        .filter(|p| {
            let esn_ok = of_type(p, tf::TYPE_ESN).next().is_none() || offers(p, tf::TYPE_ESN, tf::ESN_NONE);
            let dh_ok = match pfs {
                Some(g) => offers(p, tf::TYPE_DH, g.id()),
                None => true,
            };
            esn_ok && dh_ok
        })
        .find_map(|p| ours.iter().find(|s| offers_encr(p, s.encr)).map(|s| (*s, p)))
}

/// Initiator side: the responder's answer must be exactly one proposal that
/// is one of ours, with exactly one transform of each type.
pub fn accept_ike(answer: &[Proposal], ours: &[IkeSuite]) -> Option<(IkeSuite, Vec<u8>)> {
    let [p] = answer else { return None };
    if p.protocol != protocol_id::IKE || !sane_aead(p) {
        return None;
    }
    let encr = single(p, tf::TYPE_ENCR).and_then(EncrAlg::from_transform)?;
    let prf_t = single(p, tf::TYPE_PRF)?;
    let dh = single(p, tf::TYPE_DH).and_then(|t| DhGroup::from_id(t.id))?;
    if prf_t.id != tf::PRF_HMAC_SHA2_256 {
        return None;
    }
    let s = IkeSuite { encr, dh };
    ours.contains(&s).then(|| (s, p.spi.clone()))
}

/// Initiator side for ESP: returns the suite and the responder's SPI.
pub fn accept_esp(answer: &[Proposal], ours: &[EspSuite], pfs: Option<DhGroup>) -> Option<(EspSuite, u32)> {
    let [p] = answer else { return None };
    if p.protocol != protocol_id::ESP || !sane_aead(p) {
        return None;
    }
    let encr = single(p, tf::TYPE_ENCR).and_then(EncrAlg::from_transform)?;
    let dh = match of_type(p, tf::TYPE_DH).collect::<Vec<_>>().as_slice() {
        [] => None,
        [t] => Some(DhGroup::from_id(t.id)?),
        _ => return None,
    };
    if dh != pfs {
        return None;
    }
    let spi = u32::from_be_bytes(p.spi.as_slice().try_into().ok()?);
    let s = EspSuite { encr };
    ours.contains(&s).then_some((s, spi))
}

fn single(p: &Proposal, ty: u8) -> Option<&Transform> {
    let mut it = of_type(p, ty);
    let t = it.next()?;
    it.next().is_none().then_some(t)
}

// ---------------------------------------------------------------------------
// Key derivation
// ---------------------------------------------------------------------------

/// SKEYSEED = prf(Ni | Nr, g^ir) (RFC 7296 2.14).
pub fn skeyseed(ni: &[u8], nr: &[u8], gir: &Secret) -> Secret {
    let mut k = Vec::with_capacity(ni.len().saturating_add(nr.len()));
    k.extend_from_slice(ni);
    k.extend_from_slice(nr);
    let k = Secret::new(k);
    prf(k.expose(), &[gir.expose()])
}

/// SKEYSEED for a rekeyed IKE SA = prf(SK_d(old), g^ir(new) | Ni | Nr)
/// (RFC 7296 2.18).
pub fn skeyseed_rekey(old_sk_d: &Secret, gir: &Secret, ni: &[u8], nr: &[u8]) -> Secret {
    prf(old_sk_d.expose(), &[gir.expose(), ni, nr])
}

/// The keys of one IKE SA.
pub struct IkeSaKeys {
    /// SK_d: seeds CHILD_SA keys and the next IKE SA.
    pub sk_d: Secret,
    /// SK_ei/SK_er as raw key || salt, kept for tests and for rebuilding.
    sk_ei: Secret,
    sk_er: Secret,
    /// SK_pi: used in the initiator's AUTH.
    pub sk_pi: Secret,
    /// SK_pr: used in the responder's AUTH.
    pub sk_pr: Secret,
    ei: GcmKey,
    er: GcmKey,
}

impl fmt::Debug for IkeSaKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IkeSaKeys").finish_non_exhaustive()
    }
}

impl IkeSaKeys {
    /// {SK_d | SK_ei | SK_er | SK_pi | SK_pr} = prf+(SKEYSEED, Ni | Nr | SPIi | SPIr).
    pub fn derive(
        encr: EncrAlg,
        skeyseed: &Secret,
        ni: &[u8],
        nr: &[u8],
        spi_i: u64,
        spi_r: u64,
    ) -> Result<Self, KeysError> {
        let e = encr.keymat_len();
        let mut seed = Vec::with_capacity(ni.len().saturating_add(nr.len()).saturating_add(16));
        seed.extend_from_slice(ni);
        seed.extend_from_slice(nr);
        seed.extend_from_slice(&spi_i.to_be_bytes());
        seed.extend_from_slice(&spi_r.to_be_bytes());
        let total = PRF_LEN.saturating_mul(3).saturating_add(e.saturating_mul(2));
        let km = prf_plus(skeyseed.expose(), &seed, total)?;
        let mut chunks = Chunks(km.expose());
        let sk_d = chunks.next(PRF_LEN);
        let sk_ei = chunks.next(e);
        let sk_er = chunks.next(e);
        let sk_pi = chunks.next(PRF_LEN);
        let sk_pr = chunks.next(PRF_LEN);
        Ok(Self {
            ei: GcmKey::new(sk_ei.expose())?,
            er: GcmKey::new(sk_er.expose())?,
            sk_d,
            sk_ei,
            sk_er,
            sk_pi,
            sk_pr,
        })
    }

    /// The key protecting messages sent by the original initiator.
    pub fn initiator_key(&self) -> &GcmKey {
        &self.ei
    }
    /// The key protecting messages sent by the original responder.
    pub fn responder_key(&self) -> &GcmKey {
        &self.er
    }
    /// Raw SK_ei (tests).
    pub fn sk_ei(&self) -> &Secret {
        &self.sk_ei
    }
    /// Raw SK_er (tests).
    pub fn sk_er(&self) -> &Secret {
        &self.sk_er
    }
}

/// Splits key material into consecutive secrets; short input yields short
/// secrets rather than panicking (lengths are fixed by construction).
struct Chunks<'a>(&'a [u8]);

impl Chunks<'_> {
    fn next(&mut self, n: usize) -> Secret {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Secret::from_slice(a)
    }
}

/// KEYMAT = prf+(SK_d, [g^ir |] Ni | Nr) split into the initiator->responder
/// and responder->initiator ESP keys, each key || salt (RFC 7296 2.17).
pub fn child_keymat(
    sk_d: &Secret,
    encr: EncrAlg,
    gir: Option<&Secret>,
    ni: &[u8],
    nr: &[u8],
) -> Result<(Secret, Secret), KeysError> {
    let mut seed = Vec::new();
    if let Some(g) = gir {
        seed.extend_from_slice(g.expose());
    }
    seed.extend_from_slice(ni);
    seed.extend_from_slice(nr);
    let seed = Secret::new(seed);
    let e = encr.keymat_len();
    let km = prf_plus(sk_d.expose(), seed.expose(), e.saturating_mul(2))?;
    let mut c = Chunks(km.expose());
    Ok((c.next(e), c.next(e)))
}

// ---------------------------------------------------------------------------
// SK payload
// ---------------------------------------------------------------------------

/// Builds an encrypted message: header, then SK { inner payloads }.
/// `iv` must never repeat for a key; callers use a per-SA counter.
pub fn encrypt_message(header: &Header, inner: &[Payload], key: &GcmKey, iv: u64) -> Result<Vec<u8>, KeysError> {
    let (first, mut plaintext) = encode_payloads(inner)?;
    // GCM needs no padding; the Pad Length octet is still present.
    plaintext.push(0);
    let sk_len = (codec::GENERIC_HEADER_LEN + GCM_IV_LEN + GCM_ICV_LEN).saturating_add(plaintext.len());
    let total = sk_len.saturating_add(codec::HEADER_LEN);
    if total > codec::MAX_MESSAGE_LEN {
        return Err(CodecError::TooLarge {
            what: "message",
            len: total,
        }
        .into());
    }
    let mut h = *header;
    h.next_payload = payload_type::SK;
    h.length = u32::try_from(total).map_err(|_| CodecError::TooLarge {
        what: "message",
        len: total,
    })?;
    let mut out = Vec::with_capacity(total);
    h.write(&mut out);
    out.push(first);
    out.push(0);
    out.extend_from_slice(
        &u16::try_from(sk_len)
            .map_err(|_| CodecError::TooLarge {
                what: "SK payload",
                len: sk_len,
            })?
            .to_be_bytes(),
    );
    let iv = iv.to_be_bytes();
    let ct = key.seal(&iv, &out, &plaintext)?;
    out.extend_from_slice(&iv);
    out.extend_from_slice(&ct);
    Ok(out)
}

/// Verifies and decrypts the SK payload of `msg` (parsed from `raw`) and
/// returns the inner payloads. The AAD is everything before the IV: the IKE
/// header and the SK generic header (RFC 5282 5.1).
pub fn decrypt_message(raw: &[u8], msg: &Message, key: &GcmKey) -> Result<Vec<Payload>, KeysError> {
    let sk = msg.sk().ok_or(KeysError::NotEncrypted)?;
    if msg.payloads.len() != 1 {
        return Err(KeysError::UnprotectedPayloads);
    }
    if sk.body.len() < GCM_IV_LEN + GCM_ICV_LEN {
        return Err(KeysError::SkTooShort(sk.body.len()));
    }
    let aad_len = raw
        .len()
        .checked_sub(sk.body.len())
        .ok_or(KeysError::SkTooShort(sk.body.len()))?;
    let aad = raw.get(..aad_len).ok_or(KeysError::SkTooShort(sk.body.len()))?;
    let (iv, ct) = sk.body.split_at(GCM_IV_LEN);
    let iv: [u8; GCM_IV_LEN] = iv.try_into().map_err(|_| KeysError::SkTooShort(sk.body.len()))?;
    let pt = key.open(&iv, aad, ct)?;
    let (&pad, rest) = pt.split_last().ok_or(KeysError::BadPadding)?;
    let inner_len = rest.len().checked_sub(usize::from(pad)).ok_or(KeysError::BadPadding)?;
    let inner = rest.get(..inner_len).ok_or(KeysError::BadPadding)?;
    Ok(codec::parse_payloads(sk.first_inner, inner, false)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{ExchangeType, Identity, Notify};
    use crate::crypto::tests::vectors;

    #[test]
    fn ike_kdf_matches_python() {
        let v = vectors();
        let gir = Secret::from_slice(&v["kdf_gir"]);
        let s = skeyseed(&v["kdf_ni"], &v["kdf_nr"], &gir);
        assert_eq!(s.expose(), &v["kdf_skeyseed"][..]);
        let k = IkeSaKeys::derive(
            EncrAlg::Aes256Gcm16,
            &s,
            &v["kdf_ni"],
            &v["kdf_nr"],
            0x0102030405060708,
            0x1112131415161718,
        )
        .unwrap();
        assert_eq!(k.sk_d.expose(), &v["kdf_sk_d"][..]);
        assert_eq!(k.sk_ei().expose(), &v["kdf_sk_ei"][..]);
        assert_eq!(k.sk_er().expose(), &v["kdf_sk_er"][..]);
        assert_eq!(k.sk_pi.expose(), &v["kdf_sk_pi"][..]);
        assert_eq!(k.sk_pr.expose(), &v["kdf_sk_pr"][..]);
        assert!(!format!("{k:?}").contains(&hex::encode(&v["kdf_sk_d"][..4])));

        let (ei, er) = child_keymat(&k.sk_d, EncrAlg::Aes128Gcm16, None, &v["kdf_ni"], &v["kdf_nr"]).unwrap();
        assert_eq!(ei.expose(), &v["child_ei"][..]);
        assert_eq!(er.expose(), &v["child_er"][..]);
        let g2 = Secret::from_slice(&v["child_pfs_gir"]);
        let (ei, er) = child_keymat(&k.sk_d, EncrAlg::Aes128Gcm16, Some(&g2), &v["kdf_ni"], &v["kdf_nr"]).unwrap();
        assert_eq!(ei.expose(), &v["child_pfs_ei"][..]);
        assert_eq!(er.expose(), &v["child_pfs_er"][..]);

        let s2 = skeyseed_rekey(&k.sk_d, &g2, &v["kdf_ni"], &v["kdf_nr"]);
        assert_eq!(s2.expose(), &v["rekey_skeyseed"][..]);
        let k2 = IkeSaKeys::derive(
            EncrAlg::Aes256Gcm16,
            &s2,
            &v["kdf_ni"],
            &v["kdf_nr"],
            0x2122232425262728,
            0x3132333435363738,
        )
        .unwrap();
        assert_eq!(k2.sk_d.expose(), &v["rekey_sk_d"][..]);
        assert_eq!(k2.sk_ei().expose(), &v["rekey_sk_ei"][..]);
        assert_eq!(k2.sk_pr.expose(), &v["rekey_sk_pr"][..]);
    }

    #[test]
    fn sk_round_trip_and_tamper() {
        let key = GcmKey::new(&[7u8; 36]).unwrap();
        let h = Header {
            spi_i: 1,
            spi_r: 2,
            next_payload: 0,
            exchange: ExchangeType::IkeAuth,
            flags: codec::FLAG_INITIATOR,
            message_id: 1,
            length: 0,
        };
        let inner = vec![
            Payload::IdI(Identity::fqdn("gw")),
            Payload::Notify(Notify::new(codec::notify_type::INITIAL_CONTACT, vec![])),
        ];
        let raw = encrypt_message(&h, &inner, &key, 42).unwrap();
        // layout: header(28) | SK hdr(4) | IV(8) | ct | ICV(16)
        assert_eq!(raw[16], payload_type::SK);
        assert_eq!(raw[28], payload_type::IDI);
        assert_eq!(&raw[32..40], &42u64.to_be_bytes());
        let msg = Message::parse(&raw).unwrap();
        assert_eq!(decrypt_message(&raw, &msg, &key).unwrap(), inner);
        // flipping any byte fails the integrity check or the parse
        for i in 0..raw.len() {
            let mut t = raw.clone();
            t[i] ^= 0x01;
            if let Ok(m) = Message::parse(&t) {
                assert!(decrypt_message(&t, &m, &key).is_err(), "byte {i}");
            }
        }
        let other = GcmKey::new(&[8u8; 36]).unwrap();
        assert_eq!(
            decrypt_message(&raw, &msg, &other),
            Err(KeysError::Crypto(CryptoError::Integrity))
        );
    }

    #[test]
    fn negotiation() {
        let offered = ike_proposals(&IkeSuite::defaults(), &[]);
        let (s, p) = select_ike(&offered, &[IkeSuite::AES128GCM16_SHA256_ECP256]).unwrap();
        assert_eq!(s, IkeSuite::AES128GCM16_SHA256_ECP256);
        assert_eq!(p.num, 2);
        let answer = vec![s.to_proposal(p.num, vec![])];
        assert_eq!(accept_ike(&answer, &IkeSuite::defaults()).unwrap().0, s);
        // the whole offer is not an acceptable answer
        assert!(accept_ike(&offered, &IkeSuite::defaults()).is_none());
        // an integrity algorithm next to AEAD is refused
        let mut p = offered[0].clone();
        p.transforms.push(Transform::new(tf::TYPE_INTEG, 12));
        assert!(select_ike(&[p], &IkeSuite::defaults()).is_none());

        let esp = esp_proposals(&EspSuite::defaults(), 0x1234_5678, None);
        let (s, p) = select_esp(&esp, &[EspSuite::AES128GCM16], None).unwrap();
        assert_eq!(s, EspSuite::AES128GCM16);
        assert_eq!(p.spi, vec![0x12, 0x34, 0x56, 0x78]);
        let answer = vec![s.to_proposal(p.num, 0xabcd_ef01, None)];
        assert_eq!(accept_esp(&answer, &EspSuite::defaults(), None), Some((s, 0xabcd_ef01)));
        assert!(select_esp(&esp, &EspSuite::defaults(), Some(DhGroup::Curve25519)).is_none());
    }
}
