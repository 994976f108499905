//! What the protocol core hands back to its driver: datagrams to send and
//! events for the kernel and the control plane.

use std::net::SocketAddr;

use crate::codec::TrafficSelector;
use crate::crypto::Secret;
use crate::keys::EncrAlg;

/// The 4-byte non-ESP marker that precedes IKE messages on port 4500
/// (RFC 3948 2.2).
pub const NON_ESP_MARKER: [u8; 4] = [0; 4];
/// A NAT-T keepalive is this single byte sent to port 4500 (RFC 3948 2.3).
pub const NAT_KEEPALIVE: u8 = 0xff;
/// The NAT-T port.
pub const NAT_T_PORT: u16 = 4500;
/// The IKE port.
pub const IKE_PORT: u16 = 500;

/// A UDP datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    /// Local address to send from (port 500 or 4500 picks the socket).
    pub src: SocketAddr,
    /// Destination.
    pub dst: SocketAddr,
    /// The exact UDP payload; it already starts with the non-ESP marker
    /// when sent from port 4500.
    pub payload: Vec<u8>,
}

impl Datagram {
    /// Whether this goes over the NAT-T port (with the non-ESP marker).
    pub fn is_nat_t(&self) -> bool {
        self.src.port() == NAT_T_PORT
    }
}

/// ESP mode. Only tunnel mode is negotiated (we never send or accept
/// USE_TRANSPORT_MODE).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// ESP tunnel mode.
    Tunnel,
}

/// A negotiated CHILD SA pair, ready to be programmed into the kernel as
/// `rfc4106(gcm(aes))` with `key || salt` keys.
///
/// The driver must install the inbound SA before the outbound one so that
/// no packet the peer sends on the new SA is dropped; with
/// `outbound_deferred` the outbound one waits for [`Event::ChildSaOutbound`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildSa {
    /// SPI of the inbound ESP SA (chosen by us).
    pub inbound_spi: u32,
    /// SPI of the outbound ESP SA (chosen by the peer).
    pub outbound_spi: u32,
    /// Inbound key || 4-byte salt (20 or 36 bytes).
    pub inbound_key: Secret,
    /// Outbound key || 4-byte salt.
    pub outbound_key: Secret,
    /// Algorithm.
    pub encr: EncrAlg,
    /// ESP mode.
    pub mode: Mode,
    /// Our side of the traffic (the kernel's `src` selectors outbound).
    pub local_ts: Vec<TrafficSelector>,
    /// The peer's side.
    pub remote_ts: Vec<TrafficSelector>,
    /// Our tunnel endpoint.
    pub local: SocketAddr,
    /// The peer's tunnel endpoint.
    pub remote: SocketAddr,
    /// UDP encapsulation `(sport, dport)` when a NAT was detected.
    pub encap: Option<(u16, u16)>,
    /// When this pair rekeys an older one: that pair's `(inbound, outbound)`
    /// SPIs. The old pair is removed by a later [`Event::ChildSaDown`].
    pub replaces: Option<(u32, u32)>,
    /// Install only the inbound SA now and keep sending on the old pair;
    /// the outbound SA follows with [`Event::ChildSaOutbound`]. Set when we
    /// answered the peer's rekey (make before break).
    pub outbound_deferred: bool,
}

impl ChildSa {
    /// The Linux XFRM AEAD algorithm name for these keys.
    pub fn xfrm_name(&self) -> &'static str {
        self.encr.xfrm_name()
    }
}

/// Why a tunnel went down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DownReason {
    /// No answer to our requests (including liveness checks).
    PeerDead,
    /// Establishment timed out.
    Timeout,
    /// The peer deleted the IKE SA.
    DeletedByPeer,
    /// We deleted the IKE SA (API call).
    Closed,
    /// A newer IKE SA from the same peer announced INITIAL_CONTACT.
    Replaced,
    /// We dropped the IKE SA without a DELETE to negotiate a fresh one:
    /// the peer lost its state (it restarted), so it could not answer.
    Restarted,
    /// Authentication failed (either side).
    AuthenticationFailed,
    /// No acceptable proposal.
    NoProposalChosen,
    /// Traffic selectors were refused.
    TsUnacceptable,
    /// The peer sent another error notify (its type).
    PeerError(u16),
}

/// Events for the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Install this CHILD SA pair (inbound first).
    ChildSaUp(ChildSa),
    /// Install the outbound SA of a pair announced earlier with
    /// `outbound_deferred` (switch outbound traffic to it). Always comes
    /// right before the `ChildSaDown` of the pair it replaces.
    ChildSaOutbound {
        /// Inbound SPI of the new pair (identifies it).
        inbound_spi: u32,
        /// The outbound SPI to install now.
        outbound_spi: u32,
    },
    /// Remove these SAs from the kernel.
    ChildSaDown {
        /// Our inbound SPI.
        inbound_spi: u32,
        /// Our outbound SPI.
        outbound_spi: u32,
    },
    /// The IKE SA is authenticated and its first CHILD SA installed.
    TunnelUp {
        /// IKE SPIs (initiator, responder).
        ike_spis: (u64, u64),
        /// Our IKE endpoint.
        local: SocketAddr,
        /// The peer's IKE endpoint.
        remote: SocketAddr,
        /// Whether a NAT was detected (UDP encapsulation in use).
        nat: bool,
    },
    /// The IKE SA was rekeyed; CHILD SAs are unaffected.
    IkeSaRekeyed {
        /// Old SPIs.
        old: (u64, u64),
        /// New SPIs.
        new: (u64, u64),
    },
    /// A rekey we started failed (e.g. TEMPORARY_FAILURE on a collision);
    /// the old SAs stay in use. Retry later, with some jitter.
    RekeyFailed {
        /// Inbound SPI of the CHILD SA, or `None` for an IKE SA rekey.
        child: Option<u32>,
        /// What went wrong.
        error: crate::error::Error,
    },
    /// The peer's NAT changed its public address or port (RFC 7296 2.23):
    /// an authenticated IKE message, or an ESP-in-UDP packet the kernel
    /// authenticated ([`crate::Responder::esp_moved`]), came from `to`.
    /// IKE already goes there; move these CHILD SAs' UDP encapsulation
    /// (outbound: destination port, and address if it changed; inbound:
    /// source) so ESP follows.
    PeerMoved {
        /// IKE SPIs.
        ike_spis: (u64, u64),
        /// Where the peer was.
        from: SocketAddr,
        /// Where it is now.
        to: SocketAddr,
        /// `(inbound, outbound)` SPIs of the SA's CHILD SAs.
        children: Vec<(u32, u32)>,
    },
    /// The tunnel is gone (all its CHILD SAs were reported down before).
    TunnelDown {
        /// IKE SPIs.
        ike_spis: (u64, u64),
        /// Why.
        reason: DownReason,
    },
}

/// One item of output, in the order it must be acted on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send this datagram.
    Send(Datagram),
    /// Act on this event.
    Event(Event),
}
