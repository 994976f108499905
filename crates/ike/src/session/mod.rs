//! One IKE SA and everything that happens on it, for both roles.
//!
//! [`IkeSa`] is shared by [`crate::Initiator`] and [`crate::Responder`]:
//! after IKE_AUTH the two ends are symmetric (either may send
//! INFORMATIONAL and CREATE_CHILD_SA requests), and after an IKE SA rekey
//! the *original initiator* role of the new SA belongs to whoever started
//! the rekey (RFC 7296 2.18), so roles are a per-SA flag, not a type.
//!
//! Every handler validates the whole message (decryption, payloads,
//! proposals, authentication) before it mutates anything, so that a
//! rejected message leaves the SA exactly as it was.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::codec::{
    self, encode_message, notify_type as nt, ExchangeType, Header, Identity, Message, Notify, Payload, TrafficSelector,
};
use crate::crypto::{DhPrivate, Secret};
use crate::error::Error;
use crate::event::{Datagram, DownReason, Event, Output, NAT_T_PORT, NON_ESP_MARKER};
use crate::keys::{decrypt_message, encrypt_message, EspSuite, IkeSaKeys, IkeSuite};
use crate::timers::{RetransmitConfig, Retransmitter};

type Result<T> = std::result::Result<T, Error>;

/// Nonce length we send (RFC 7296 2.10: at least half the PRF key size).
const NONCE_LEN: usize = 32;

/// Where inbound ESP SPIs come from. The driver asks the kernel (XFRM
/// ALLOCSPI, which reserves the SPI with a larval SA that the CHILD SA
/// install then completes); without one, SPIs are random.
pub trait SpiSource: Send + Sync + std::fmt::Debug {
    /// A free SPI for an inbound SA `remote -> local`, or why not.
    fn inbound_spi(&self, local: IpAddr, remote: IpAddr) -> std::result::Result<u32, String>;
}

/// Responder that serves many peers (a gateway that routers dial into,
/// issue 17): picks the configuration of an IKE SA by the identity the
/// initiator presents in IKE_AUTH (IDi) -- never by its address, which
/// several routers behind one carrier NAT share.
pub trait PeerLookup: Send + Sync + std::fmt::Debug {
    /// The configuration (PSK, traffic selectors, SPI source...) for the
    /// peer presenting `idi`, or `None` to refuse it with
    /// AUTHENTICATION_FAILED. Its `remote_id` should be `idi`: it tells
    /// the SAs of different peers apart (e.g. for INITIAL_CONTACT).
    fn config_for(&self, idi: &Identity) -> Option<Arc<SaConfig>>;
}

/// Configuration shared by both roles.
#[derive(Debug, Clone)]
pub struct SaConfig {
    /// The pre-shared key.
    pub psk: Secret,
    /// Our identity (IDi or IDr).
    pub local_id: Identity,
    /// The identity the peer must present; `None` accepts any.
    pub remote_id: Option<Identity>,
    /// IKE suites, most preferred first.
    pub ike_suites: Vec<IkeSuite>,
    /// ESP suites, most preferred first.
    pub esp_suites: Vec<EspSuite>,
    /// Our side of the tunnel. Initiator: the TSi it proposes (center
    /// networks). Responder: what it allows on its side.
    pub local_ts: Vec<TrafficSelector>,
    /// The peer's side. Initiator: the TSr it proposes (the router's VPNNAT
    /// addresses). Responder: what it allows on the peer's side.
    pub remote_ts: Vec<TrafficSelector>,
    /// Retransmission schedule.
    pub retransmit: RetransmitConfig,
    /// Send a liveness check after this long without hearing from the peer.
    pub dpd_interval: Option<Duration>,
    /// Use a fresh DH exchange (the IKE SA's group) when rekeying CHILD SAs.
    pub child_pfs: bool,
    /// Responder: drop half-open SAs after this long.
    pub half_open_timeout: Duration,
    /// When we are behind a NAT, send a NAT-T keepalive after this long
    /// without sending anything (RFC 3948 4).
    pub nat_keepalive: Option<Duration>,
    /// Source of our inbound ESP SPIs (`None`: random).
    pub spi_source: Option<Arc<dyn SpiSource>>,
    /// Responder only: take the configuration of each IKE SA from here by
    /// the initiator's identity (this one then only serves IKE_SA_INIT:
    /// suites, our identity). `None`: this configuration for every SA.
    pub peer_lookup: Option<Arc<dyn PeerLookup>>,
}

impl SaConfig {
    /// A configuration with default suites and timers.
    pub fn new(
        psk: Secret,
        local_id: Identity,
        local_ts: Vec<TrafficSelector>,
        remote_ts: Vec<TrafficSelector>,
    ) -> Self {
        Self {
            psk,
            local_id,
            remote_id: None,
            ike_suites: IkeSuite::defaults(),
            esp_suites: EspSuite::defaults(),
            local_ts,
            remote_ts,
            retransmit: RetransmitConfig::default(),
            dpd_interval: Some(Duration::from_secs(30)),
            child_pfs: false,
            half_open_timeout: Duration::from_secs(30),
            nat_keepalive: Some(Duration::from_secs(20)),
            spi_source: None,
            peer_lookup: None,
        }
    }
}

impl SaConfig {
    /// Checks what would otherwise fail later, or on the wire.
    pub fn validate(&self) -> Result<()> {
        let problem = if self.psk.is_empty() {
            Some("empty pre-shared key")
        } else if self.ike_suites.is_empty() {
            Some("no IKE suites")
        } else if self.esp_suites.is_empty() {
            Some("no ESP suites")
        } else if self.local_ts.is_empty() || self.remote_ts.is_empty() {
            Some("no traffic selectors")
        } else if self.local_ts.len() > 255 || self.remote_ts.len() > 255 {
            Some("more than 255 traffic selectors")
        } else {
            None
        };
        problem.map_or(Ok(()), |p| Err(Error::InvalidConfig(p)))
    }
}

/// Where an IKE SA is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaState {
    /// Initiator: IKE_SA_INIT request sent.
    InitSent,
    /// Initiator: IKE_AUTH request sent.
    AuthSent,
    /// Responder: IKE_SA_INIT answered, waiting for IKE_AUTH.
    HalfOpen,
    /// Authenticated.
    Established,
    /// We sent a Delete for this IKE SA.
    Deleting,
    /// Gone; removed by the owner.
    Dead,
}

impl SaState {
    fn name(self) -> &'static str {
        match self {
            Self::InitSent => "InitSent",
            Self::AuthSent => "AuthSent",
            Self::HalfOpen => "HalfOpen",
            Self::Established => "Established",
            Self::Deleting => "Deleting",
            Self::Dead => "Dead",
        }
    }
}

/// A CHILD SA pair as kept on the IKE SA.
#[derive(Debug, Clone)]
pub(crate) struct Child {
    inbound_spi: u32,
    outbound_spi: u32,
    suite: EspSuite,
    local_ts: Vec<TrafficSelector>,
    remote_ts: Vec<TrafficSelector>,
    /// We answered the rekey that created this child and still send on the
    /// pair it replaces (inbound SPI given): the outbound switch waits for
    /// that pair's deletion.
    outbound_waits_for: Option<u32>,
    /// Whether the driver was told to install it (a pair that lost a rekey
    /// collision never is, and goes silently).
    installed: bool,
}

/// The peer's rekey of a CHILD SA crossed ours (RFC 7296 2.8.1).
#[derive(Debug, Clone)]
struct Collision {
    /// Inbound SPI of the pair both sides rekeyed.
    old: u32,
    /// Nonces of the peer's exchange.
    peer_ni: Vec<u8>,
    our_nr: Vec<u8>,
    /// Inbound SPI of the pair the peer's exchange created.
    peer_child: u32,
}

/// Requests that can wait for the window (size 1) to open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Queued {
    Dpd,
    DeleteChild(u32),
    DeleteIke,
    RekeyChild(u32),
    RekeyIke,
}

/// What our outstanding request was, with what we need to finish it.
#[derive(Debug)]
enum PendingKind {
    Init,
    Auth { inbound_spi: u32 },
    Dpd,
    DeleteChild { inbound_spi: u32 },
    DeleteIke,
    RekeyChild(ChildRekey),
    RekeyIke(IkeRekey),
}

/// Our CHILD SA rekey in flight: what its answer is checked and keyed with.
#[derive(Debug)]
struct ChildRekey {
    old_inbound: u32,
    new_inbound: u32,
    ni: Vec<u8>,
    dh: Option<DhPrivate>,
}

/// Our IKE SA rekey in flight, likewise.
#[derive(Debug)]
struct IkeRekey {
    new_spi_i: u64,
    ni: Vec<u8>,
    dh: Option<DhPrivate>,
}

#[derive(Debug)]
struct Pending {
    message_id: u32,
    datagram: Datagram,
    timer: Retransmitter,
    kind: PendingKind,
}

/// Side effects on the owning table.
#[derive(Debug, Default)]
pub(crate) struct Effects {
    /// A new IKE SA replacing this one (IKE SA rekey).
    pub new_sa: Option<IkeSa>,
    /// The peer announced INITIAL_CONTACT: other SAs with it are stale.
    pub initial_contact: bool,
    /// The new SA takes over the CHILD SAs of the SA with these SPIs (a
    /// crossed IKE SA rekey that we won).
    pub adopt_children_from: Option<(u64, u64)>,
}

/// The peer's IKE SA rekey crossed ours (RFC 7296 2.25.2, 2.8.1).
#[derive(Debug, Clone)]
struct IkeCollision {
    /// Nonces of the peer's exchange.
    peer_ni: Vec<u8>,
    our_nr: Vec<u8>,
    /// SPIs of the IKE SA the peer's exchange created.
    theirs: (u64, u64),
}

/// Pushes output items.
pub(crate) type Out = VecDeque<Output>;

/// A received IKE message with when, from where and to where it came:
/// what every handler of an inbound message starts from.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Received<'a> {
    pub now: Instant,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// The IKE message as received, without the non-ESP marker.
    pub raw: &'a [u8],
    /// `raw`, parsed.
    pub msg: &'a Message,
}

/// What a CHILD SA's keys are derived from (RFC 7296 2.17): the nonces of
/// the exchange that created it, its Diffie-Hellman secret if any, and
/// which side started that exchange.
#[derive(Debug, Clone, Copy)]
struct ChildKeying<'a> {
    gir: Option<&'a Secret>,
    ni: &'a [u8],
    nr: &'a [u8],
    exchange_initiator: bool,
}

/// One IKE SA.
#[derive(Debug)]
pub struct IkeSa {
    pub(crate) spi_i: u64,
    pub(crate) spi_r: u64,
    /// Whether we are the original initiator of this IKE SA.
    pub(crate) initiator: bool,
    pub(crate) state: SaState,
    cfg: Arc<SaConfig>,
    suite: IkeSuite,
    keys: Option<IkeSaKeys>,
    pub(crate) local: SocketAddr,
    pub(crate) remote: SocketAddr,
    nat: bool,
    /// We are behind the NAT and send keepalives (RFC 3948 4).
    behind_nat: bool,
    last_tx: Instant,
    next_mid: u32,
    pub(crate) expected_mid: u32,
    pending: Option<Pending>,
    queue: VecDeque<Queued>,
    last_response: Option<(u32, Datagram)>,
    next_iv: u64,
    children: Vec<Child>,
    last_rx: Instant,
    pub(crate) created: Instant,
    /// Replaced by a rekeyed IKE SA: its deletion reports nothing.
    superseded: bool,
    /// When it was superseded; lingers at most `half_open_timeout` more.
    superseded_at: Option<Instant>,
    /// TunnelDown was reported already.
    down_reported: bool,
    /// A crossed CHILD SA rekey, resolved when our own rekey completes.
    rekey_collision: Option<Collision>,
    /// A crossed IKE SA rekey, likewise.
    ike_collision: Option<IkeCollision>,
    // IKE_SA_INIT material, needed until IKE_AUTH is done.
    ni: Vec<u8>,
    nr: Vec<u8>,
    pub(crate) msg1: Vec<u8>,
    msg2: Vec<u8>,
    dh: Option<DhPrivate>,
    cookie: Option<Vec<u8>>,
}

fn find_notify(payloads: &[Payload], ty: u16) -> Option<&Notify> {
    payloads.iter().find_map(|p| match p {
        Payload::Notify(n) if n.ty == ty => Some(n),
        _ => None,
    })
}

fn first_error_notify(payloads: &[Payload]) -> Option<u16> {
    payloads.iter().find_map(|p| match p {
        Payload::Notify(n) if nt::is_error(n.ty) => Some(n.ty),
        _ => None,
    })
}

macro_rules! find_payload {
    ($payloads:expr, $variant:ident, $name:expr) => {
        $payloads
            .iter()
            .find_map(|p| match p {
                Payload::$variant(x) => Some(x),
                _ => None,
            })
            .ok_or(Error::MissingPayload($name))
    };
}

/// Narrows proposed selectors to the allowed ones (RFC 7296 2.9).
pub(crate) fn narrow(proposed: &[TrafficSelector], allowed: &[TrafficSelector]) -> Vec<TrafficSelector> {
    let mut out: Vec<TrafficSelector> = Vec::new();
    for p in proposed {
        for a in allowed {
            if let Some(i) = p.intersect(a) {
                if !out.contains(&i) {
                    out.push(i);
                }
            }
        }
    }
    out
}

fn all_within(got: &[TrafficSelector], allowed: &[TrafficSelector]) -> bool {
    !got.is_empty() && got.iter().all(|g| allowed.iter().any(|a| g.is_subset_of(a)))
}

fn spi_bytes_u32(b: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(b.try_into().ok()?))
}

fn down_reason_for(notify: u16) -> DownReason {
    match notify {
        nt::AUTHENTICATION_FAILED => DownReason::AuthenticationFailed,
        nt::NO_PROPOSAL_CHOSEN => DownReason::NoProposalChosen,
        nt::TS_UNACCEPTABLE => DownReason::TsUnacceptable,
        other => DownReason::PeerError(other),
    }
}

impl IkeSa {
    fn blank(cfg: Arc<SaConfig>, initiator: bool, local: SocketAddr, remote: SocketAddr, now: Instant) -> Self {
        let suite = cfg
            .ike_suites
            .first()
            .copied()
            .unwrap_or(IkeSuite::AES256GCM16_SHA256_X25519);
        Self {
            spi_i: 0,
            spi_r: 0,
            initiator,
            state: SaState::InitSent,
            cfg,
            suite,
            keys: None,
            local,
            remote,
            nat: false,
            behind_nat: false,
            last_tx: now,
            next_mid: 0,
            expected_mid: 0,
            pending: None,
            queue: VecDeque::new(),
            last_response: None,
            next_iv: 1,
            children: Vec::new(),
            last_rx: now,
            created: now,
            superseded: false,
            superseded_at: None,
            down_reported: false,
            rekey_collision: None,
            ike_collision: None,
            ni: Vec::new(),
            nr: Vec::new(),
            msg1: Vec::new(),
            msg2: Vec::new(),
            dh: None,
            cookie: None,
        }
    }

    /// IKE SPIs (initiator, responder).
    pub fn spis(&self) -> (u64, u64) {
        (self.spi_i, self.spi_r)
    }

    /// Current state.
    pub fn state(&self) -> SaState {
        self.state
    }

    /// `(inbound, outbound)` SPIs of the CHILD SAs.
    pub fn child_spis(&self) -> Vec<(u32, u32)> {
        self.children.iter().map(|c| (c.inbound_spi, c.outbound_spi)).collect()
    }

    /// Gives up the CHILD SAs to a new IKE SA that won a crossed rekey;
    /// this SA is then redundant and its deletion by the peer is silent.
    pub(crate) fn surrender_children(&mut self, now: Instant) -> Vec<Child> {
        self.superseded = true;
        self.superseded_at = Some(now);
        std::mem::take(&mut self.children)
    }

    /// Takes over CHILD SAs from a redundant IKE SA.
    pub(crate) fn adopt_children(&mut self, children: Vec<Child>) {
        self.children.extend(children);
    }

    /// Replaces the configuration (new traffic selectors, PSK for the next
    /// SA, ...). Takes effect for the next exchanges.
    pub(crate) fn set_config(&mut self, cfg: Arc<SaConfig>) {
        self.cfg = cfg;
    }

    /// The identity this SA's configuration is for (`remote_id`), e.g. the
    /// router a peer lookup chose.
    pub fn peer_id(&self) -> Option<&Identity> {
        self.cfg.remote_id.as_ref()
    }

    /// The peer now sends from `to` (an authenticated message came from
    /// there): send there from now on. Once CHILD SAs with UDP
    /// encapsulation exist, their kernel SAs must follow too: reported as
    /// [`Event::PeerMoved`]. Before that (the IKE_AUTH exchange moving to
    /// port 4500) the CHILD SA is created with the current address anyway.
    pub(crate) fn moved_to(&mut self, to: SocketAddr, out: &mut Out) {
        if self.remote == to {
            return;
        }
        let from = std::mem::replace(&mut self.remote, to);
        let live = matches!(self.state, SaState::Established | SaState::Deleting);
        if self.nat && live && !self.children.is_empty() {
            out.push_back(Output::Event(Event::PeerMoved {
                ike_spis: self.spis(),
                from,
                to,
                children: self.child_spis(),
            }));
        }
    }

    /// Whether a NAT was detected.
    pub fn nat_detected(&self) -> bool {
        self.nat
    }

    pub(crate) fn is_superseded(&self) -> bool {
        self.superseded
    }

    /// Whether the message with this header belongs to this SA.
    pub(crate) fn matches(&self, h: &Header) -> bool {
        if h.spi_i != self.spi_i {
            return false;
        }
        if self.state == SaState::InitSent {
            // The IKE_SA_INIT response carries the responder SPI we do not
            // know yet.
            return h.exchange == ExchangeType::IkeSaInit;
        }
        h.spi_r == self.spi_r
    }

    fn header(&self, exchange: ExchangeType, response: bool, message_id: u32) -> Header {
        let mut flags = 0;
        if self.initiator {
            flags |= codec::FLAG_INITIATOR;
        }
        if response {
            flags |= codec::FLAG_RESPONSE;
        }
        Header {
            spi_i: self.spi_i,
            spi_r: self.spi_r,
            next_payload: 0,
            exchange,
            flags,
            message_id,
            length: 0,
        }
    }

    fn wrap(&self, ike: Vec<u8>) -> Datagram {
        let payload = if self.local.port() == NAT_T_PORT {
            let mut v = Vec::with_capacity(ike.len().saturating_add(4));
            v.extend_from_slice(&NON_ESP_MARKER);
            v.extend_from_slice(&ike);
            v
        } else {
            ike
        };
        Datagram {
            src: self.local,
            dst: self.remote,
            payload,
        }
    }

    fn keys(&self) -> Result<&IkeSaKeys> {
        self.keys.as_ref().ok_or(Error::NotEstablished)
    }

    pub(crate) fn seal(
        &mut self,
        exchange: ExchangeType,
        response: bool,
        mid: u32,
        payloads: &[Payload],
    ) -> Result<Vec<u8>> {
        let header = self.header(exchange, response, mid);
        let iv = self.next_iv;
        let keys = self.keys()?;
        let key = if self.initiator {
            keys.initiator_key()
        } else {
            keys.responder_key()
        };
        let bytes = encrypt_message(&header, payloads, key, iv)?;
        self.next_iv = self.next_iv.wrapping_add(1);
        Ok(bytes)
    }

    fn open(&self, raw: &[u8], msg: &Message) -> Result<Vec<Payload>> {
        let keys = self.keys()?;
        let key = if self.initiator {
            keys.responder_key()
        } else {
            keys.initiator_key()
        };
        Ok(decrypt_message(raw, msg, key)?)
    }

    fn send_request(
        &mut self,
        now: Instant,
        exchange: ExchangeType,
        payloads: &[Payload],
        kind: PendingKind,
        out: &mut Out,
    ) -> Result<()> {
        let mid = self.next_mid;
        let next = mid.checked_add(1).ok_or(Error::MessageIdsExhausted)?;
        let bytes = match kind {
            PendingKind::Init => encode_message(&self.header(exchange, false, mid), payloads)?,
            _ => self.seal(exchange, false, mid, payloads)?,
        };
        let datagram = self.wrap(bytes);
        out.push_back(Output::Send(datagram.clone()));
        self.pending = Some(Pending {
            message_id: mid,
            datagram,
            timer: Retransmitter::new(self.cfg.retransmit, now),
            kind,
        });
        self.last_tx = now;
        self.next_mid = next;
        Ok(())
    }

    fn send_response(&mut self, exchange: ExchangeType, mid: u32, payloads: &[Payload], out: &mut Out) -> Result<()> {
        let bytes = self.seal(exchange, true, mid, payloads)?;
        let d = self.wrap(bytes);
        out.push_back(Output::Send(d.clone()));
        self.last_response = Some((mid, d));
        self.expected_mid = self.expected_mid.wrapping_add(1);
        Ok(())
    }

    /// Removes a CHILD SA: first switches the outbound traffic of a pair
    /// that was waiting for it to go, then reports it down.
    fn remove_child(&mut self, inbound_spi: u32, out: &mut Out) -> Option<Child> {
        let pos = self.children.iter().position(|c| c.inbound_spi == inbound_spi)?;
        let gone = self.children.remove(pos);
        for c in &mut self.children {
            if c.outbound_waits_for == Some(inbound_spi) {
                c.outbound_waits_for = None;
                out.push_back(Output::Event(Event::ChildSaOutbound {
                    inbound_spi: c.inbound_spi,
                    outbound_spi: c.outbound_spi,
                }));
            }
        }
        if gone.installed {
            out.push_back(Output::Event(Event::ChildSaDown {
                inbound_spi: gone.inbound_spi,
                outbound_spi: gone.outbound_spi,
            }));
        }
        Some(gone)
    }

    /// Reports the CHILD SAs and the tunnel as gone and marks the SA dead.
    fn die(&mut self, reason: DownReason, out: &mut Out) {
        let was_up = matches!(self.state, SaState::Established | SaState::Deleting)
            || (self.initiator && matches!(self.state, SaState::InitSent | SaState::AuthSent));
        if !self.superseded {
            for c in self.children.drain(..).filter(|c| c.installed) {
                out.push_back(Output::Event(Event::ChildSaDown {
                    inbound_spi: c.inbound_spi,
                    outbound_spi: c.outbound_spi,
                }));
            }
            if was_up && !self.down_reported {
                out.push_back(Output::Event(Event::TunnelDown {
                    ike_spis: self.spis(),
                    reason,
                }));
            }
        }
        self.down_reported = true;
        self.state = SaState::Dead;
        self.pending = None;
        self.queue.clear();
    }

    fn report_down(&mut self, reason: DownReason, out: &mut Out) {
        if !self.down_reported {
            out.push_back(Output::Event(Event::TunnelDown {
                ike_spis: self.spis(),
                reason,
            }));
            self.down_reported = true;
        }
    }
}

mod auth;
mod create_child;
mod dispatch;
mod informational;
mod requests;
mod sa_init;
mod timeouts;
