//! Re-installation: proving the current Secret(ID2), and the one decision
//! the center takes on an installation notice (issue 18, item 5).
//!
//! Secret(ID) is a factory secret: a previous owner, or anyone who once
//! copied the SD card, holds it for ever. So once a router is installed,
//! Secret(ID) alone must not be enough to replace its PSK and Secret(ID2):
//! the notice carries a [`ReinstallProof`] (HMAC-SHA256 with the current
//! Secret(ID2) over the terminal ID and the notice's reply key), or an
//! authorised operator approves the re-installation first.

use ring::hmac;
use serde::{Deserialize, Serialize};
use std::fmt;

use crate::keys::{SecretBytes, SecretId2};
use crate::seal::ReplyPublicKey;
use crate::types::TerminalId;

/// Length of a [`ReinstallProof`] (HMAC-SHA256).
pub const PROOF_LEN: usize = 32;

/// Domain separation: this MAC can never be mistaken for an envelope MAC.
const PROOF_LABEL: &[u8] = b"vpnnat reinstall proof v1\0";

/// HMAC-SHA256(Secret(ID2), label || terminal ID || 0 || reply key).
///
/// Bound to the notice's reply key, so a proof seen once is worthless to
/// anyone else: the answer is sealed to that key. Replay of the whole
/// notice is already refused by the envelope's nonce.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReinstallProof(#[serde(with = "crate::b64::array")] [u8; PROOF_LEN]);

impl fmt::Debug for ReinstallProof {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ReinstallProof(<redacted>)")
    }
}

fn proof_input(terminal_id: &TerminalId, reply_key: &ReplyPublicKey) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(PROOF_LABEL);
    m.extend_from_slice(terminal_id.as_str().as_bytes());
    m.push(0);
    m.extend_from_slice(reply_key.as_bytes());
    m
}

impl ReinstallProof {
    pub fn compute(sid2: &SecretId2, terminal_id: &TerminalId, reply_key: &ReplyPublicKey) -> Self {
        let key = hmac::Key::new(hmac::HMAC_SHA256, sid2.expose_secret());
        let tag = hmac::sign(&key, &proof_input(terminal_id, reply_key));
        let mut out = [0u8; PROOF_LEN];
        out.copy_from_slice(tag.as_ref());
        ReinstallProof(out)
    }

    /// Constant-time check against the stored Secret(ID2).
    pub fn verify(&self, sid2: &SecretId2, terminal_id: &TerminalId, reply_key: &ReplyPublicKey) -> bool {
        let key = hmac::Key::new(hmac::HMAC_SHA256, sid2.expose_secret());
        hmac::verify(&key, &proof_input(terminal_id, reply_key), &self.0).is_ok()
    }

    pub fn from_bytes(b: [u8; PROOF_LEN]) -> Self {
        ReinstallProof(b)
    }
}

/// What the notice's proof turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProofCheck {
    Absent,
    Valid,
    Invalid,
}

/// Everything the decision needs, read by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReinstallInput {
    /// The center has a terminals row for this router.
    pub installed: bool,
    pub proof: ProofCheck,
    /// An operator approved a re-installation of this router, and the
    /// approval has not expired.
    pub approved: bool,
    /// Re-installation attempts without a valid proof within the window.
    pub recent_unproven_attempts: u32,
    /// At most this many such attempts per window.
    pub limit: u32,
}

/// What the center does with an installation notice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReinstallDecision {
    /// First installation: Secret(ID) is all there is.
    FirstInstall,
    /// The router proved the current Secret(ID2).
    ProvedReinstall,
    /// No proof, but an operator approved it: install, consume the approval.
    ApprovedReinstall,
    /// No proof and no approval: record a pending request for an operator.
    Pending,
    /// A proof that does not verify: refused, nothing changes.
    WrongProof,
    /// Too many attempts without a valid proof: refused, nothing changes.
    RateLimited,
}

impl ReinstallDecision {
    pub fn installs(self) -> bool {
        matches!(
            self,
            ReinstallDecision::FirstInstall | ReinstallDecision::ProvedReinstall | ReinstallDecision::ApprovedReinstall
        )
    }
}

/// The decision (pure: no clock, no storage).
///
/// A first installation ignores the proof (a router whose center lost its
/// database still holds an old Secret(ID2)). The rate limit applies only to
/// attempts without a valid proof: the router that holds Secret(ID2) is
/// never kept out by someone flooding notices with Secret(ID).
pub fn decide(i: ReinstallInput) -> ReinstallDecision {
    if !i.installed {
        return ReinstallDecision::FirstInstall;
    }
    if i.proof == ProofCheck::Valid {
        return ReinstallDecision::ProvedReinstall;
    }
    if i.recent_unproven_attempts >= i.limit {
        return ReinstallDecision::RateLimited;
    }
    match (i.proof, i.approved) {
        (ProofCheck::Invalid, _) => ReinstallDecision::WrongProof,
        (_, true) => ReinstallDecision::ApprovedReinstall,
        _ => ReinstallDecision::Pending,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sid2(b: u8) -> SecretId2 {
        SecretId2::from_hex(&format!("{b:02x}").repeat(32)).unwrap()
    }

    fn input(installed: bool, proof: ProofCheck, approved: bool, attempts: u32) -> ReinstallInput {
        ReinstallInput {
            installed,
            proof,
            approved,
            recent_unproven_attempts: attempts,
            limit: 3,
        }
    }

    #[test]
    fn proof_verifies_only_with_the_same_secret_terminal_and_reply_key() {
        let t = TerminalId::new("router-1").unwrap();
        let k = ReplyPublicKey::from_bytes([7; 32]);
        let p = ReinstallProof::compute(&sid2(0x11), &t, &k);
        assert!(p.verify(&sid2(0x11), &t, &k));
        assert!(!p.verify(&sid2(0x12), &t, &k));
        assert!(!p.verify(&sid2(0x11), &TerminalId::new("router-2").unwrap(), &k));
        assert!(!p.verify(&sid2(0x11), &t, &ReplyPublicKey::from_bytes([8; 32])));
    }

    #[test]
    fn proof_travels_as_base64_and_debug_hides_it() {
        let p = ReinstallProof::from_bytes([0xab; PROOF_LEN]);
        let j = serde_json::to_string(&p).unwrap();
        let back: ReinstallProof = serde_json::from_str(&j).unwrap();
        assert_eq!(back, p);
        assert!(!format!("{p:?}").contains("ab"));
        assert!(serde_json::from_str::<ReinstallProof>("\"AAAA\"").is_err());
    }

    #[test]
    fn first_installation_needs_only_secret_id() {
        for proof in [ProofCheck::Absent, ProofCheck::Valid, ProofCheck::Invalid] {
            assert_eq!(decide(input(false, proof, false, 99)), ReinstallDecision::FirstInstall);
        }
    }

    #[test]
    fn installed_router_needs_proof_or_approval() {
        assert_eq!(
            decide(input(true, ProofCheck::Valid, false, 0)),
            ReinstallDecision::ProvedReinstall
        );
        assert_eq!(
            decide(input(true, ProofCheck::Absent, false, 0)),
            ReinstallDecision::Pending
        );
        assert_eq!(
            decide(input(true, ProofCheck::Absent, true, 0)),
            ReinstallDecision::ApprovedReinstall
        );
        assert_eq!(
            decide(input(true, ProofCheck::Invalid, false, 0)),
            ReinstallDecision::WrongProof
        );
        // An approval is for a router without state, not for a wrong proof.
        assert_eq!(
            decide(input(true, ProofCheck::Invalid, true, 0)),
            ReinstallDecision::WrongProof
        );
    }

    #[test]
    fn unproven_attempts_are_rate_limited_but_the_proof_holder_is_not() {
        assert_eq!(
            decide(input(true, ProofCheck::Absent, false, 2)),
            ReinstallDecision::Pending
        );
        assert_eq!(
            decide(input(true, ProofCheck::Absent, false, 3)),
            ReinstallDecision::RateLimited
        );
        assert_eq!(
            decide(input(true, ProofCheck::Absent, true, 3)),
            ReinstallDecision::RateLimited
        );
        assert_eq!(
            decide(input(true, ProofCheck::Invalid, false, 3)),
            ReinstallDecision::RateLimited
        );
        assert_eq!(
            decide(input(true, ProofCheck::Valid, false, 1000)),
            ReinstallDecision::ProvedReinstall
        );
    }

    #[test]
    fn only_accepting_decisions_install() {
        use ReinstallDecision::*;
        let yes: Vec<_> = [
            FirstInstall,
            ProvedReinstall,
            ApprovedReinstall,
            Pending,
            WrongProof,
            RateLimited,
        ]
        .into_iter()
        .filter(|d| d.installs())
        .collect();
        assert_eq!(yes, vec![FirstInstall, ProvedReinstall, ApprovedReinstall]);
    }
}
