//! Errors of the state machines. Every rejected input yields one of these
//! and leaves the state as it was, unless the variant says otherwise.

use std::net::IpAddr;

use thiserror::Error;

use crate::codec::CodecError;
use crate::crypto::CryptoError;
use crate::keys::KeysError;

/// Errors of [`crate::Initiator`] and [`crate::Responder`].
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum Error {
    /// The datagram does not parse.
    #[error("malformed message: {0}")]
    Codec(#[from] CodecError),
    /// Decryption/integrity or key derivation failed.
    #[error("protection failed: {0}")]
    Keys(#[from] KeysError),
    /// A crypto primitive failed.
    #[error("crypto: {0}")]
    Crypto(#[from] CryptoError),
    /// On port 4500 without the non-ESP marker: ESP, not IKE.
    #[error("not an IKE message (ESP or keepalive on port 4500)")]
    NotIke,
    /// The datagram came from an address we do not talk to.
    #[error("IKE from unexpected peer {0}")]
    PeerNotAllowed(IpAddr),
    /// No IKE SA with these SPIs.
    #[error("unknown IKE SA {spi_i:016x}/{spi_r:016x}")]
    UnknownSa {
        /// Initiator SPI.
        spi_i: u64,
        /// Responder SPI.
        spi_r: u64,
    },
    /// An IKE_SA_INIT request that was already processed (replay) or that
    /// reuses the SPI of an existing SA.
    #[error("replayed IKE_SA_INIT for SPI {0:016x}")]
    ReplayedInit(u64),
    /// The exchange type does not fit the state.
    #[error("unexpected {exchange:?} {what} in state {state}")]
    UnexpectedExchange {
        /// Exchange type received.
        exchange: crate::codec::ExchangeType,
        /// "request" or "response".
        what: &'static str,
        /// Our state.
        state: &'static str,
    },
    /// The message ID is not the one expected (window size 1).
    #[error("unexpected message id {got}, expected {expected}")]
    UnexpectedMessageId {
        /// Expected.
        expected: u32,
        /// Received.
        got: u32,
    },
    /// The I flag does not match the roles of the SA.
    #[error("initiator flag does not match the IKE SA roles")]
    BadFlags,
    /// A required payload is absent.
    #[error("missing {0} payload")]
    MissingPayload(&'static str),
    /// A payload is present but invalid.
    #[error("invalid {0}")]
    InvalidPayload(&'static str),
    /// None of the proposals is acceptable.
    #[error("no proposal chosen")]
    NoProposalChosen,
    /// The KE payload uses another group than the chosen proposal.
    #[error("invalid KE payload: group {got}, want {want}")]
    InvalidKe {
        /// Group received.
        got: u16,
        /// Group we want.
        want: u16,
    },
    /// The peer's AUTH payload does not verify (wrong PSK).
    #[error("authentication failed")]
    AuthenticationFailed,
    /// The peer's identity is not the configured one.
    #[error("peer identity does not match")]
    IdentityMismatch,
    /// A responder with a [`crate::session::PeerLookup`] knows no peer by
    /// the presented identity (or refuses it).
    #[error("unknown peer identity")]
    UnknownIdentity,
    /// The traffic selectors are not acceptable.
    #[error("traffic selectors unacceptable")]
    TsUnacceptable,
    /// An IKE_SA_INIT request above the half-open threshold came without a
    /// valid cookie; a COOKIE was sent back.
    #[error("cookie required")]
    CookieRequired,
    /// An IKE_SA_INIT request while the half-open cap is reached; dropped
    /// without state or answer.
    #[error("too many half-open IKE SAs ({0}); IKE_SA_INIT dropped")]
    TooManyHalfOpen(usize),
    /// The peer answered with an error notify.
    #[error("peer sent error notify {0}")]
    PeerError(u16),
    /// The operation needs an established IKE SA.
    #[error("no established IKE SA")]
    NotEstablished,
    /// No CHILD SA with this SPI.
    #[error("unknown CHILD SA {0:08x}")]
    UnknownChild(u32),
    /// The configuration cannot work.
    #[error("invalid configuration: {0}")]
    InvalidConfig(&'static str),
    /// No inbound SPI could be reserved (the kernel refused ALLOCSPI).
    #[error("no inbound SPI: {0}")]
    SpiAllocation(String),
    /// Message IDs are exhausted; the SA must be rekeyed.
    #[error("message ids exhausted")]
    MessageIdsExhausted,
}
