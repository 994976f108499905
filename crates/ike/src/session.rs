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

use ring::rand::SecureRandom;

use crate::codec::{
    self, encode_message, notify_type as nt, protocol_id, Auth, Delete, ExchangeType, Header, Identity, KeyExchange,
    Message, Notify, Payload, TrafficSelector, AUTH_METHOD_PSK,
};
use crate::crypto::{
    nat_detection_hash, psk_auth, random_bytes, random_esp_spi, random_u64_nonzero, signed_octets, verify_psk_auth,
    DhGroup, DhPrivate, Secret,
};
use crate::error::Error;
use crate::event::{ChildSa, Datagram, DownReason, Event, Mode, Output, NAT_KEEPALIVE, NAT_T_PORT, NON_ESP_MARKER};
use crate::keys::{
    accept_esp, accept_ike, child_keymat, decrypt_message, encrypt_message, esp_proposals, ike_proposals, select_esp,
    select_ike, skeyseed, skeyseed_rekey, EspSuite, IkeSaKeys, IkeSuite,
};
use crate::timers::{RetransmitConfig, Retransmitter, Tick};

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
    Auth {
        inbound_spi: u32,
    },
    Dpd,
    DeleteChild {
        inbound_spi: u32,
    },
    DeleteIke,
    RekeyChild {
        old_inbound: u32,
        new_inbound: u32,
        ni: Vec<u8>,
        dh: Option<DhPrivate>,
    },
    RekeyIke {
        new_spi_i: u64,
        ni: Vec<u8>,
        dh: Option<DhPrivate>,
    },
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

    // -----------------------------------------------------------------------
    // IKE_SA_INIT, initiator side
    // -----------------------------------------------------------------------

    /// Starts a new IKE SA as original initiator.
    pub(crate) fn start_initiator(
        cfg: Arc<SaConfig>,
        local: SocketAddr,
        remote: SocketAddr,
        now: Instant,
        rng: &dyn SecureRandom,
        out: &mut Out,
    ) -> Result<Self> {
        let mut sa = Self::blank(cfg, true, local, remote, now);
        sa.spi_i = random_u64_nonzero(rng)?;
        sa.ni = random_bytes(rng, NONCE_LEN)?;
        sa.dh = Some(DhPrivate::generate(sa.suite.dh, rng)?);
        sa.send_init(now, out)?;
        Ok(sa)
    }

    fn init_payloads(&self) -> Result<Vec<Payload>> {
        let dh = self.dh.as_ref().ok_or(Error::NotEstablished)?;
        let mut p = Vec::new();
        if let Some(c) = &self.cookie {
            p.push(Payload::Notify(Notify::new(nt::COOKIE, c.clone())));
        }
        p.push(Payload::Sa(ike_proposals(&self.cfg.ike_suites, &[])));
        p.push(Payload::Ke(KeyExchange {
            group: dh.group().id(),
            data: dh.public().to_vec(),
        }));
        p.push(Payload::Nonce(self.ni.clone()));
        p.push(Payload::Notify(Notify::new(
            nt::NAT_DETECTION_SOURCE_IP,
            nat_detection_hash(self.spi_i, 0, self.local.ip(), self.local.port()),
        )));
        p.push(Payload::Notify(Notify::new(
            nt::NAT_DETECTION_DESTINATION_IP,
            nat_detection_hash(self.spi_i, 0, self.remote.ip(), self.remote.port()),
        )));
        Ok(p)
    }

    fn send_init(&mut self, now: Instant, out: &mut Out) -> Result<()> {
        let payloads = self.init_payloads()?;
        self.next_mid = 0;
        self.send_request(now, ExchangeType::IkeSaInit, &payloads, PendingKind::Init, out)?;
        if let Some(p) = &self.pending {
            self.msg1 = p.datagram.payload.clone();
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn handle_init_response(
        &mut self,
        now: Instant,
        src: SocketAddr,
        dst: SocketAddr,
        raw: &[u8],
        msg: &Message,
        rng: &dyn SecureRandom,
        out: &mut Out,
    ) -> Result<()> {
        let p = &msg.payloads;
        // IKE_SA_INIT responses are not authenticated; a malformed or
        // unacceptable one leaves the state alone and the retransmission
        // timer keeps running. Only an explicit error notify from the peer's
        // address (already checked) ends the attempt.
        if let Some(c) = find_notify(p, nt::COOKIE) {
            if c.data.is_empty() || c.data.len() > 64 {
                return Err(Error::InvalidPayload("COOKIE"));
            }
            self.cookie = Some(c.data.clone());
            return self.send_init(now, out);
        }
        if let Some(n) = find_notify(p, nt::INVALID_KE_PAYLOAD) {
            let want = n
                .data
                .get(..2)
                .map(|b| u16::from_be_bytes([b.first().copied().unwrap_or(0), b.get(1).copied().unwrap_or(0)]))
                .ok_or(Error::InvalidPayload("INVALID_KE_PAYLOAD"))?;
            let group = DhGroup::from_id(want)
                .filter(|g| self.cfg.ike_suites.iter().any(|s| s.dh == *g))
                .ok_or(Error::InvalidPayload("INVALID_KE_PAYLOAD group"))?;
            if self.dh.as_ref().map(DhPrivate::group) == Some(group) {
                return Err(Error::InvalidPayload("INVALID_KE_PAYLOAD for our own group"));
            }
            self.dh = Some(DhPrivate::generate(group, rng)?);
            return self.send_init(now, out);
        }
        if let Some(ty) = first_error_notify(p) {
            self.die(down_reason_for(ty), out);
            return Err(Error::PeerError(ty));
        }
        if msg.header.spi_r == 0 {
            return Err(Error::InvalidPayload("responder SPI 0"));
        }
        let sa = find_payload!(p, Sa, "SA")?;
        let (suite, _) = accept_ike(sa, &self.cfg.ike_suites).ok_or(Error::NoProposalChosen)?;
        let ke = find_payload!(p, Ke, "KE")?;
        let nr = find_payload!(p, Nonce, "Nonce")?;
        let our_group = self.dh.as_ref().map(DhPrivate::group);
        if Some(suite.dh) != our_group || ke.group != suite.dh.id() {
            return Err(Error::InvalidKe {
                got: ke.group,
                want: suite.dh.id(),
            });
        }
        if ke.data.len() != suite.dh.public_len() {
            return Err(Error::InvalidPayload("KE length"));
        }
        let spi_r = msg.header.spi_r;
        let nat = detect_nat(p, self.spi_i, spi_r, src, dst);
        // Validation done; from here on the SA changes.
        let dh = self.dh.take().ok_or(Error::NotEstablished)?;
        let gir = dh.agree(&ke.data)?;
        let seed = skeyseed(&self.ni, nr, &gir);
        let keys = IkeSaKeys::derive(suite.encr, &seed, &self.ni, nr, self.spi_i, spi_r)?;
        self.spi_r = spi_r;
        self.suite = suite;
        self.keys = Some(keys);
        self.nr = nr.clone();
        self.msg2 = raw.to_vec();
        self.nat = nat.any;
        self.behind_nat = nat.local;
        self.last_rx = now;
        self.pending = None;
        if nat.any {
            self.local.set_port(NAT_T_PORT);
            self.remote.set_port(NAT_T_PORT);
        }
        self.send_auth(now, rng, out)
    }

    fn send_auth(&mut self, now: Instant, rng: &dyn SecureRandom, out: &mut Out) -> Result<()> {
        let keys = self.keys()?;
        let id = self.cfg.local_id.clone();
        let signed = signed_octets(&self.msg1, &self.nr, keys.sk_pi.expose(), &id.body_bytes());
        let auth = psk_auth(self.cfg.psk.expose(), &signed);
        let inbound_spi = self.new_inbound_spi(rng)?;
        let mut payloads = vec![
            Payload::IdI(id),
            Payload::Auth(Auth {
                method: AUTH_METHOD_PSK,
                data: auth.expose().to_vec(),
            }),
            Payload::Notify(Notify::new(nt::INITIAL_CONTACT, Vec::new())),
            Payload::Sa(esp_proposals(&self.cfg.esp_suites, inbound_spi, None)),
            Payload::TsI(self.cfg.local_ts.clone()),
            Payload::TsR(self.cfg.remote_ts.clone()),
        ];
        if let Some(r) = &self.cfg.remote_id {
            payloads.insert(1, Payload::IdR(r.clone()));
        }
        self.state = SaState::AuthSent;
        self.send_request(
            now,
            ExchangeType::IkeAuth,
            &payloads,
            PendingKind::Auth { inbound_spi },
            out,
        )
    }

    fn handle_auth_response(
        &mut self,
        payloads: &[Payload],
        inbound_spi: u32,
        now: Instant,
        rng: &dyn SecureRandom,
        out: &mut Out,
    ) -> Result<()> {
        let has_auth = payloads.iter().any(|p| matches!(p, Payload::Auth(_)));
        if !has_auth {
            // AUTHENTICATION_FAILED and friends: the IKE SA did not come up.
            let ty = first_error_notify(payloads).unwrap_or(nt::AUTHENTICATION_FAILED);
            self.die(down_reason_for(ty), out);
            return Err(Error::PeerError(ty));
        }
        let idr = find_payload!(payloads, IdR, "IDr")?;
        let auth = find_payload!(payloads, Auth, "AUTH")?;
        let keys = self.keys()?;
        let id_ok = self.cfg.remote_id.as_ref().is_none_or(|r| r == idr);
        let signed = signed_octets(&self.msg2, &self.ni, keys.sk_pr.expose(), &idr.body_bytes());
        let auth_ok =
            auth.method == AUTH_METHOD_PSK && verify_psk_auth(self.cfg.psk.expose(), &signed, &auth.data).is_ok();
        if !id_ok || !auth_ok {
            // The message decrypted under keys only the DH peer has, so this
            // is a genuine peer we cannot trust: tell it in a separate
            // INFORMATIONAL, sent once (RFC 7296 2.21.2), and give up.
            let notify = [Payload::Notify(Notify::new(nt::AUTHENTICATION_FAILED, Vec::new()))];
            if let Ok(bytes) = self.seal(ExchangeType::Informational, false, self.next_mid, &notify) {
                out.push_back(Output::Send(self.wrap(bytes)));
            }
            self.die(DownReason::AuthenticationFailed, out);
            return Err(if id_ok {
                Error::AuthenticationFailed
            } else {
                Error::IdentityMismatch
            });
        }
        self.state = SaState::Established;
        self.last_rx = now;
        if let Some(ty) = first_error_notify(payloads) {
            // IKE SA up, CHILD SA refused: useless for us, close it.
            self.report_down(down_reason_for(ty), out);
            self.start(now, Queued::DeleteIke, rng, out)?;
            return Err(Error::PeerError(ty));
        }
        let child = (|| {
            let sa = find_payload!(payloads, Sa, "SA")?;
            let (suite, outbound_spi) = accept_esp(sa, &self.cfg.esp_suites, None).ok_or(Error::NoProposalChosen)?;
            let tsi = find_payload!(payloads, TsI, "TSi")?;
            let tsr = find_payload!(payloads, TsR, "TSr")?;
            if !all_within(tsi, &self.cfg.local_ts) || !all_within(tsr, &self.cfg.remote_ts) {
                return Err(Error::TsUnacceptable);
            }
            Ok(Child {
                inbound_spi,
                outbound_spi,
                suite,
                local_ts: tsi.clone(),
                remote_ts: tsr.clone(),
                outbound_waits_for: None,
                installed: true,
            })
        })();
        let child = match child {
            Ok(c) => c,
            Err(e) => {
                self.report_down(DownReason::NoProposalChosen, out);
                self.start(now, Queued::DeleteIke, rng, out)?;
                return Err(e);
            }
        };
        let ni = self.ni.clone();
        let nr = self.nr.clone();
        self.install_child(child, None, &ni, &nr, true, None, out)?;
        out.push_back(Output::Event(Event::TunnelUp {
            ike_spis: self.spis(),
            local: self.local,
            remote: self.remote,
            nat: self.nat,
        }));
        self.forget_init_material();
        Ok(())
    }

    fn forget_init_material(&mut self) {
        self.msg1 = Vec::new();
        self.msg2 = Vec::new();
        self.dh = None;
        self.cookie = None;
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

    /// Derives the keys of a CHILD SA, records it and emits `ChildSaUp`.
    /// `exchange_initiator`: whether we started the exchange creating it
    /// (KEYMAT's first half protects initiator -> responder traffic).
    #[allow(clippy::too_many_arguments)]
    fn install_child(
        &mut self,
        child: Child,
        gir: Option<&Secret>,
        ni: &[u8],
        nr: &[u8],
        exchange_initiator: bool,
        replaces: Option<(u32, u32)>,
        out: &mut Out,
    ) -> Result<()> {
        let mut child = child;
        let keys = self.keys()?;
        let (i2r, r2i) = child_keymat(&keys.sk_d, child.suite.encr, gir, ni, nr)?;
        let (outbound_key, inbound_key) = if exchange_initiator { (i2r, r2i) } else { (r2i, i2r) };
        // Make before break (RFC 7296 2.8): the responder of a rekey keeps
        // sending on the old pair until the initiator deletes it, since the
        // initiator may not have the new inbound SA installed yet.
        let outbound_deferred = replaces.is_some() && !exchange_initiator;
        child.outbound_waits_for = if outbound_deferred {
            replaces.map(|(i, _)| i)
        } else {
            None
        };
        out.push_back(Output::Event(Event::ChildSaUp(ChildSa {
            outbound_deferred,
            inbound_spi: child.inbound_spi,
            outbound_spi: child.outbound_spi,
            inbound_key,
            outbound_key,
            encr: child.suite.encr,
            mode: Mode::Tunnel,
            local_ts: child.local_ts.clone(),
            remote_ts: child.remote_ts.clone(),
            local: self.local,
            remote: self.remote,
            encap: self.nat.then_some((self.local.port(), self.remote.port())),
            replaces,
        })));
        child.installed = true;
        self.children.push(child);
        Ok(())
    }

    // -----------------------------------------------------------------------
    // IKE_SA_INIT and IKE_AUTH, responder side
    // -----------------------------------------------------------------------

    /// Answers an IKE_SA_INIT request, creating a half-open SA. On error
    /// nothing is created; an error notify may have been queued.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn respond_init(
        cfg: Arc<SaConfig>,
        now: Instant,
        src: SocketAddr,
        dst: SocketAddr,
        raw: &[u8],
        msg: &Message,
        rng: &dyn SecureRandom,
        out: &mut Out,
    ) -> Result<Self> {
        let p = &msg.payloads;
        let h = &msg.header;
        let stateless = |ty: u16, data: Vec<u8>, out: &mut Out| -> Result<()> {
            let header = Header {
                spi_i: h.spi_i,
                spi_r: 0,
                next_payload: 0,
                exchange: ExchangeType::IkeSaInit,
                flags: codec::FLAG_RESPONSE,
                message_id: 0,
                length: 0,
            };
            let bytes = encode_message(&header, &[Payload::Notify(Notify::new(ty, data))])?;
            out.push_back(Output::Send(Datagram {
                src: dst,
                dst: src,
                payload: bytes,
            }));
            Ok(())
        };
        if h.spi_i == 0 || h.spi_r != 0 || h.message_id != 0 || h.is_response() || !h.from_initiator() {
            return Err(Error::InvalidPayload("IKE_SA_INIT header"));
        }
        let sa = find_payload!(p, Sa, "SA")?;
        let ke = find_payload!(p, Ke, "KE")?;
        let ni = find_payload!(p, Nonce, "Nonce")?;
        let Some((suite, prop)) = select_ike(sa, &cfg.ike_suites) else {
            stateless(nt::NO_PROPOSAL_CHOSEN, Vec::new(), out)?;
            return Err(Error::NoProposalChosen);
        };
        if ke.group != suite.dh.id() {
            stateless(nt::INVALID_KE_PAYLOAD, suite.dh.id().to_be_bytes().to_vec(), out)?;
            return Err(Error::InvalidKe {
                got: ke.group,
                want: suite.dh.id(),
            });
        }
        let nat = detect_nat(p, h.spi_i, 0, src, dst);
        let mut sa = Self::blank(cfg, false, dst, src, now);
        sa.state = SaState::HalfOpen;
        sa.spi_i = h.spi_i;
        sa.spi_r = random_u64_nonzero(rng)?;
        sa.suite = suite;
        sa.nat = nat.any;
        sa.behind_nat = nat.local;
        sa.nr = random_bytes(rng, NONCE_LEN)?;
        sa.ni = ni.clone();
        let dh = DhPrivate::generate(suite.dh, rng)?;
        let our_public = dh.public().to_vec();
        let gir = dh.agree(&ke.data)?;
        let seed = skeyseed(&sa.ni, &sa.nr, &gir);
        sa.keys = Some(IkeSaKeys::derive(
            suite.encr, &seed, &sa.ni, &sa.nr, sa.spi_i, sa.spi_r,
        )?);
        let payloads = vec![
            Payload::Sa(vec![suite.to_proposal(prop.num, Vec::new())]),
            Payload::Ke(KeyExchange {
                group: suite.dh.id(),
                data: our_public,
            }),
            Payload::Nonce(sa.nr.clone()),
            Payload::Notify(Notify::new(
                nt::NAT_DETECTION_SOURCE_IP,
                nat_detection_hash(sa.spi_i, sa.spi_r, dst.ip(), dst.port()),
            )),
            Payload::Notify(Notify::new(
                nt::NAT_DETECTION_DESTINATION_IP,
                nat_detection_hash(sa.spi_i, sa.spi_r, src.ip(), src.port()),
            )),
        ];
        let bytes = encode_message(&sa.header(ExchangeType::IkeSaInit, true, 0), &payloads)?;
        let d = sa.wrap(bytes.clone());
        out.push_back(Output::Send(d.clone()));
        sa.msg1 = raw.to_vec();
        sa.msg2 = bytes;
        sa.last_response = Some((0, d));
        sa.expected_mid = 1;
        Ok(sa)
    }

    /// Resends the cached IKE_SA_INIT response (a retransmitted request).
    pub(crate) fn resend_last_response(&self, out: &mut Out) {
        if let Some((_, d)) = &self.last_response {
            out.push_back(Output::Send(d.clone()));
        }
    }

    fn handle_auth_request(
        &mut self,
        mid: u32,
        payloads: &[Payload],
        rng: &dyn SecureRandom,
        out: &mut Out,
        fx: &mut Effects,
    ) -> Result<()> {
        let idi = find_payload!(payloads, IdI, "IDi")?;
        let auth = find_payload!(payloads, Auth, "AUTH")?;
        let keys = self.keys()?;
        let signed = signed_octets(&self.msg1, &self.nr, keys.sk_pi.expose(), &idi.body_bytes());
        let id_ok = self.cfg.remote_id.as_ref().is_none_or(|r| r == idi);
        let auth_ok =
            auth.method == AUTH_METHOD_PSK && verify_psk_auth(self.cfg.psk.expose(), &signed, &auth.data).is_ok();
        if !id_ok || !auth_ok {
            let notify = [Payload::Notify(Notify::new(nt::AUTHENTICATION_FAILED, Vec::new()))];
            self.send_response(ExchangeType::IkeAuth, mid, &notify, out)?;
            self.state = SaState::Dead;
            self.down_reported = true;
            return Err(if id_ok {
                Error::AuthenticationFailed
            } else {
                Error::IdentityMismatch
            });
        }
        let id = self.cfg.local_id.clone();
        let signed = signed_octets(&self.msg2, &self.ni, keys.sk_pr.expose(), &id.body_bytes());
        let our_auth = psk_auth(self.cfg.psk.expose(), &signed);
        let mut resp = vec![
            Payload::IdR(id),
            Payload::Auth(Auth {
                method: AUTH_METHOD_PSK,
                data: our_auth.expose().to_vec(),
            }),
        ];
        fx.initial_contact = find_notify(payloads, nt::INITIAL_CONTACT).is_some();
        self.state = SaState::Established;
        let child = self.negotiate_child(payloads, None, rng);
        let ni = self.ni.clone();
        let nr = self.nr.clone();
        let mut result = Ok(());
        match child {
            Ok((child, prop_num)) => {
                resp.push(Payload::Sa(vec![child.suite.to_proposal(
                    prop_num,
                    child.inbound_spi,
                    None,
                )]));
                resp.push(Payload::TsI(child.remote_ts.clone()));
                resp.push(Payload::TsR(child.local_ts.clone()));
                // Install before answering, so the initiator's first ESP
                // packets find the inbound SA.
                self.install_child(child, None, &ni, &nr, false, None, out)?;
                out.push_back(Output::Event(Event::TunnelUp {
                    ike_spis: self.spis(),
                    local: self.local,
                    remote: self.remote,
                    nat: self.nat,
                }));
            }
            Err((ty, e)) => {
                resp.push(Payload::Notify(Notify::new(ty, Vec::new())));
                result = Err(e);
            }
        }
        self.send_response(ExchangeType::IkeAuth, mid, &resp, out)?;
        self.forget_init_material();
        result
    }

    /// A fresh inbound ESP SPI (from the configured source, else random).
    fn new_inbound_spi(&self, rng: &dyn SecureRandom) -> Result<u32> {
        match &self.cfg.spi_source {
            Some(src) => src
                .inbound_spi(self.local.ip(), self.remote.ip())
                .map_err(Error::SpiAllocation),
            None => Ok(random_esp_spi(rng)?),
        }
    }

    /// Picks an ESP proposal and narrows the traffic selectors of a request
    /// (IKE_AUTH or CREATE_CHILD_SA). Returns the child (with a fresh
    /// inbound SPI) and the proposal number, or the notify to answer with.
    fn negotiate_child(
        &self,
        payloads: &[Payload],
        pfs: Option<DhGroup>,
        rng: &dyn SecureRandom,
    ) -> std::result::Result<(Child, u8), (u16, Error)> {
        let sa = find_payload!(payloads, Sa, "SA").map_err(|e| (nt::INVALID_SYNTAX, e))?;
        let tsi = find_payload!(payloads, TsI, "TSi").map_err(|e| (nt::INVALID_SYNTAX, e))?;
        let tsr = find_payload!(payloads, TsR, "TSr").map_err(|e| (nt::INVALID_SYNTAX, e))?;
        let (suite, prop) =
            select_esp(sa, &self.cfg.esp_suites, pfs).ok_or((nt::NO_PROPOSAL_CHOSEN, Error::NoProposalChosen))?;
        let outbound_spi = spi_bytes_u32(&prop.spi).ok_or((nt::INVALID_SYNTAX, Error::InvalidPayload("ESP SPI")))?;
        let remote_ts = narrow(tsi, &self.cfg.remote_ts);
        let local_ts = narrow(tsr, &self.cfg.local_ts);
        if remote_ts.is_empty() || local_ts.is_empty() {
            return Err((nt::TS_UNACCEPTABLE, Error::TsUnacceptable));
        }
        let inbound_spi = self.new_inbound_spi(rng).map_err(|e| (nt::TEMPORARY_FAILURE, e))?;
        Ok((
            Child {
                inbound_spi,
                outbound_spi,
                suite,
                local_ts,
                remote_ts,
                outbound_waits_for: None,
                installed: true,
            },
            prop.num,
        ))
    }

    // -----------------------------------------------------------------------
    // Dispatch
    // -----------------------------------------------------------------------

    /// Handles a message for this SA. `raw` is the IKE message without the
    /// non-ESP marker.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn handle(
        &mut self,
        now: Instant,
        src: SocketAddr,
        dst: SocketAddr,
        raw: &[u8],
        msg: &Message,
        rng: &dyn SecureRandom,
        out: &mut Out,
    ) -> Result<Effects> {
        // A message from the original initiator carries the I flag.
        if msg.header.from_initiator() == self.initiator {
            return Err(Error::BadFlags);
        }
        if self.state == SaState::Dead {
            return Err(Error::UnknownSa {
                spi_i: msg.header.spi_i,
                spi_r: msg.header.spi_r,
            });
        }
        let mut fx = Effects::default();
        if msg.header.is_response() {
            self.handle_response(now, src, dst, raw, msg, rng, out, &mut fx)?;
        } else {
            self.handle_request(now, src, dst, raw, msg, rng, out, &mut fx)?;
            self.last_tx = now;
        }
        self.pump(now, rng, out)?;
        Ok(fx)
    }

    #[allow(clippy::too_many_arguments)]
    fn handle_response(
        &mut self,
        now: Instant,
        src: SocketAddr,
        dst: SocketAddr,
        raw: &[u8],
        msg: &Message,
        rng: &dyn SecureRandom,
        out: &mut Out,
        fx: &mut Effects,
    ) -> Result<()> {
        let expected = self.pending.as_ref().map(|p| p.message_id);
        if expected != Some(msg.header.message_id) {
            return Err(Error::UnexpectedMessageId {
                expected: expected.unwrap_or(self.next_mid),
                got: msg.header.message_id,
            });
        }
        let exchange_ok = match self.pending.as_ref().map(|p| &p.kind) {
            Some(PendingKind::Init) => msg.header.exchange == ExchangeType::IkeSaInit,
            Some(PendingKind::Auth { .. }) => msg.header.exchange == ExchangeType::IkeAuth,
            Some(PendingKind::RekeyChild { .. } | PendingKind::RekeyIke { .. }) => {
                msg.header.exchange == ExchangeType::CreateChildSa
            }
            Some(_) => msg.header.exchange == ExchangeType::Informational,
            None => false,
        };
        if !exchange_ok {
            return Err(Error::UnexpectedExchange {
                exchange: msg.header.exchange,
                what: "response",
                state: self.state.name(),
            });
        }
        if matches!(self.pending.as_ref().map(|p| &p.kind), Some(PendingKind::Init)) {
            return self.handle_init_response(now, src, dst, raw, msg, rng, out);
        }
        let payloads = self.open(raw, msg)?;
        let Some(pending) = self.pending.take() else {
            return Err(Error::NotEstablished);
        };
        self.last_rx = now;
        self.follow_nat(src, dst);
        match pending.kind {
            PendingKind::Init => Ok(()),
            PendingKind::Auth { inbound_spi } => {
                let r = self.handle_auth_response(&payloads, inbound_spi, now, rng, out);
                if r.is_err() && self.state == SaState::AuthSent {
                    // Not decided yet (malformed but authentic answer): keep
                    // waiting for a proper one.
                    self.pending = Some(pending_restore(
                        pending.message_id,
                        pending.datagram,
                        pending.timer,
                        inbound_spi,
                    ));
                }
                r
            }
            PendingKind::Dpd => Ok(()),
            PendingKind::DeleteChild { inbound_spi } => {
                self.remove_child(inbound_spi, out);
                Ok(())
            }
            PendingKind::DeleteIke => {
                self.die(DownReason::Closed, out);
                Ok(())
            }
            PendingKind::RekeyChild {
                old_inbound,
                new_inbound,
                ni,
                dh,
            } => self.finish_rekey_child(&payloads, old_inbound, new_inbound, &ni, dh, now, rng, out),
            PendingKind::RekeyIke { new_spi_i, ni, dh } => {
                self.finish_rekey_ike(&payloads, new_spi_i, &ni, dh, now, rng, out, fx)
            }
        }
    }

    /// After an authenticated message on port 4500, follow the peer's NAT
    /// mapping (RFC 7296 2.23).
    fn follow_nat(&mut self, src: SocketAddr, dst: SocketAddr) {
        if dst.port() == NAT_T_PORT {
            self.local = dst;
            self.remote = src;
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn handle_request(
        &mut self,
        now: Instant,
        src: SocketAddr,
        dst: SocketAddr,
        raw: &[u8],
        msg: &Message,
        rng: &dyn SecureRandom,
        out: &mut Out,
        fx: &mut Effects,
    ) -> Result<()> {
        let mid = msg.header.message_id;
        let is_retransmit =
            matches!(&self.last_response, Some((m, _)) if *m == mid) && mid.wrapping_add(1) == self.expected_mid;
        if mid != self.expected_mid && !is_retransmit {
            return Err(Error::UnexpectedMessageId {
                expected: self.expected_mid,
                got: mid,
            });
        }
        if msg.header.exchange == ExchangeType::IkeSaInit {
            return Err(Error::UnexpectedExchange {
                exchange: msg.header.exchange,
                what: "request",
                state: self.state.name(),
            });
        }
        let payloads = self.open(raw, msg)?;
        if is_retransmit {
            // Authentic copy of a request we answered: same answer again.
            self.resend_last_response(out);
            return Ok(());
        }
        match (self.state, msg.header.exchange) {
            (SaState::HalfOpen, ExchangeType::IkeAuth) => {
                self.last_rx = now;
                self.follow_nat(src, dst);
                self.handle_auth_request(mid, &payloads, rng, out, fx)
            }
            (SaState::Established | SaState::Deleting, ExchangeType::Informational) => {
                self.last_rx = now;
                self.follow_nat(src, dst);
                self.handle_informational(mid, &payloads, out)
            }
            (SaState::Established | SaState::Deleting, ExchangeType::CreateChildSa) => {
                self.last_rx = now;
                self.follow_nat(src, dst);
                self.handle_create_child(now, mid, &payloads, rng, out, fx)
            }
            (state, exchange) => Err(Error::UnexpectedExchange {
                exchange,
                what: "request",
                state: state.name(),
            }),
        }
    }

    // -----------------------------------------------------------------------
    // INFORMATIONAL
    // -----------------------------------------------------------------------

    fn handle_informational(&mut self, mid: u32, payloads: &[Payload], out: &mut Out) -> Result<()> {
        let deletes: Vec<&Delete> = payloads
            .iter()
            .filter_map(|p| match p {
                Payload::Delete(d) => Some(d),
                _ => None,
            })
            .collect();
        if deletes.iter().any(|d| d.protocol == protocol_id::IKE) {
            self.send_response(ExchangeType::Informational, mid, &[], out)?;
            self.die(DownReason::DeletedByPeer, out);
            return Ok(());
        }
        if find_notify(payloads, nt::AUTHENTICATION_FAILED).is_some() {
            // The initiator refused our AUTH after we had considered the SA
            // up (RFC 7296 2.21.2).
            self.send_response(ExchangeType::Informational, mid, &[], out)?;
            self.die(DownReason::AuthenticationFailed, out);
            return Err(Error::PeerError(nt::AUTHENTICATION_FAILED));
        }
        let mut ours = Vec::new();
        for d in deletes.iter().filter(|d| d.protocol == protocol_id::ESP) {
            for spi in d.spis.iter().filter_map(|s| spi_bytes_u32(s)) {
                let found = self
                    .children
                    .iter()
                    .find(|c| c.outbound_spi == spi)
                    .map(|c| c.inbound_spi);
                if let Some(c) = found.and_then(|i| self.remove_child(i, out)) {
                    ours.push(c.inbound_spi.to_be_bytes().to_vec());
                }
            }
        }
        // The pending rekey of a child the peer just deleted is moot; the
        // queued ones too.
        let resp = if ours.is_empty() {
            Vec::new()
        } else {
            vec![Payload::Delete(Delete {
                protocol: protocol_id::ESP,
                spi_size: 4,
                spis: ours,
            })]
        };
        self.send_response(ExchangeType::Informational, mid, &resp, out)
    }

    // -----------------------------------------------------------------------
    // CREATE_CHILD_SA
    // -----------------------------------------------------------------------

    fn handle_create_child(
        &mut self,
        now: Instant,
        mid: u32,
        payloads: &[Payload],
        rng: &dyn SecureRandom,
        out: &mut Out,
        fx: &mut Effects,
    ) -> Result<()> {
        if self.state == SaState::Deleting {
            // Closing this IKE SA: nothing new on it (RFC 7296 2.25).
            self.send_response(
                ExchangeType::CreateChildSa,
                mid,
                &[Payload::Notify(Notify::new(nt::TEMPORARY_FAILURE, Vec::new()))],
                out,
            )?;
            return Err(Error::PeerError(nt::TEMPORARY_FAILURE));
        }
        let is_ike = payloads
            .iter()
            .any(|p| matches!(p, Payload::Sa(props) if props.iter().any(|x| x.protocol == protocol_id::IKE)));
        if is_ike {
            let crossed = matches!(
                self.pending.as_ref().map(|p| &p.kind),
                Some(PendingKind::RekeyIke { .. })
            );
            if !crossed && self.busy_with_ike() {
                // We are closing it: refuse; the peer may retry later.
                self.send_response(
                    ExchangeType::CreateChildSa,
                    mid,
                    &[Payload::Notify(Notify::new(nt::TEMPORARY_FAILURE, Vec::new()))],
                    out,
                )?;
                return Err(Error::PeerError(nt::TEMPORARY_FAILURE));
            }
            // Both sides rekeying: answer as usual, the nonces pick the
            // survivor when ours completes (RFC 7296 2.25.2).
            return self.respond_rekey_ike(now, mid, payloads, crossed, rng, out, fx);
        }
        let reply_error = |sa: &mut Self, ty: u16, out: &mut Out| {
            sa.send_response(
                ExchangeType::CreateChildSa,
                mid,
                &[Payload::Notify(Notify::new(ty, Vec::new()))],
                out,
            )
        };
        let Some(rekey) = find_notify(payloads, nt::REKEY_SA) else {
            // One CHILD SA per tunnel is all VPNNAT needs.
            reply_error(self, nt::NO_ADDITIONAL_SAS, out)?;
            return Err(Error::PeerError(nt::NO_ADDITIONAL_SAS));
        };
        let old = spi_bytes_u32(&rekey.spi)
            .and_then(|spi| self.children.iter().find(|c| c.outbound_spi == spi))
            .cloned();
        let Some(old) = old else {
            reply_error(self, nt::CHILD_SA_NOT_FOUND, out)?;
            return Err(Error::UnknownChild(spi_bytes_u32(&rekey.spi).unwrap_or(0)));
        };
        // Both sides rekeying the same pair: answer as usual and let the
        // nonces pick the survivor when ours completes (RFC 7296 2.25.1).
        let crossed = matches!(
            self.pending.as_ref().map(|p| &p.kind),
            Some(PendingKind::RekeyChild { old_inbound, .. }) if *old_inbound == old.inbound_spi
        );
        if !crossed && self.busy_with_child(old.inbound_spi) {
            // We are deleting it: refuse; the peer may retry later.
            reply_error(self, nt::TEMPORARY_FAILURE, out)?;
            return Err(Error::PeerError(nt::TEMPORARY_FAILURE));
        }
        let ni = find_payload!(payloads, Nonce, "Nonce")?.clone();
        let ke = payloads.iter().find_map(|p| match p {
            Payload::Ke(k) => Some(k),
            _ => None,
        });
        let pfs = match ke {
            None => None,
            Some(k) => match DhGroup::from_id(k.group) {
                Some(g) if self.cfg.ike_suites.iter().any(|s| s.dh == g) => Some(g),
                _ => {
                    let want = self.suite.dh.id().to_be_bytes().to_vec();
                    self.send_response(
                        ExchangeType::CreateChildSa,
                        mid,
                        &[Payload::Notify(Notify::new(nt::INVALID_KE_PAYLOAD, want))],
                        out,
                    )?;
                    return Err(Error::InvalidKe {
                        got: k.group,
                        want: self.suite.dh.id(),
                    });
                }
            },
        };
        let (child, num) = match self.negotiate_child(payloads, pfs, rng) {
            Ok(c) => c,
            Err((ty, e)) => {
                reply_error(self, ty, out)?;
                return Err(e);
            }
        };
        // The selectors are negotiated afresh (narrowed to the current
        // configuration), so a rekey is also how a changed set of VPNNAT
        // addresses takes effect.
        let nr = random_bytes(rng, NONCE_LEN)?;
        let mut resp = vec![
            Payload::Sa(vec![child.suite.to_proposal(num, child.inbound_spi, pfs)]),
            Payload::Nonce(nr.clone()),
        ];
        let gir = match (pfs, ke) {
            (Some(g), Some(k)) => {
                let dh = DhPrivate::generate(g, rng)?;
                resp.push(Payload::Ke(KeyExchange {
                    group: g.id(),
                    data: dh.public().to_vec(),
                }));
                Some(dh.agree(&k.data)?)
            }
            _ => None,
        };
        resp.push(Payload::TsI(child.remote_ts.clone()));
        resp.push(Payload::TsR(child.local_ts.clone()));
        // The peer rekeyed it first: our own queued rekey of it is moot.
        self.queue.retain(|q| *q != Queued::RekeyChild(old.inbound_spi));
        if crossed {
            self.rekey_collision = Some(Collision {
                old: old.inbound_spi,
                peer_ni: ni.clone(),
                our_nr: nr.clone(),
                peer_child: child.inbound_spi,
            });
        }
        self.install_child(
            child,
            gir.as_ref(),
            &ni,
            &nr,
            false,
            Some((old.inbound_spi, old.outbound_spi)),
            out,
        )?;
        self.send_response(ExchangeType::CreateChildSa, mid, &resp, out)
    }

    #[allow(clippy::too_many_arguments)]
    fn respond_rekey_ike(
        &mut self,
        now: Instant,
        mid: u32,
        payloads: &[Payload],
        crossed: bool,
        rng: &dyn SecureRandom,
        out: &mut Out,
        fx: &mut Effects,
    ) -> Result<()> {
        let sa = find_payload!(payloads, Sa, "SA")?;
        let ni = find_payload!(payloads, Nonce, "Nonce")?.clone();
        let ke = find_payload!(payloads, Ke, "KE")?;
        let notify = |sa: &mut Self, ty: u16, data: Vec<u8>, out: &mut Out| {
            sa.send_response(
                ExchangeType::CreateChildSa,
                mid,
                &[Payload::Notify(Notify::new(ty, data))],
                out,
            )
        };
        let Some((suite, prop)) = select_ike(sa, &self.cfg.ike_suites) else {
            notify(self, nt::NO_PROPOSAL_CHOSEN, Vec::new(), out)?;
            return Err(Error::NoProposalChosen);
        };
        let Some(new_spi_i) = prop
            .spi
            .as_slice()
            .try_into()
            .ok()
            .map(u64::from_be_bytes)
            .filter(|s| *s != 0)
        else {
            notify(self, nt::INVALID_SYNTAX, Vec::new(), out)?;
            return Err(Error::InvalidPayload("IKE rekey SPI"));
        };
        if ke.group != suite.dh.id() {
            notify(self, nt::INVALID_KE_PAYLOAD, suite.dh.id().to_be_bytes().to_vec(), out)?;
            return Err(Error::InvalidKe {
                got: ke.group,
                want: suite.dh.id(),
            });
        }
        let new_spi_r = random_u64_nonzero(rng)?;
        let nr = random_bytes(rng, NONCE_LEN)?;
        let dh = DhPrivate::generate(suite.dh, rng)?;
        let public = dh.public().to_vec();
        let gir = dh.agree(&ke.data)?;
        let seed = skeyseed_rekey(&self.keys()?.sk_d, &gir, &ni, &nr);
        let keys = IkeSaKeys::derive(suite.encr, &seed, &ni, &nr, new_spi_i, new_spi_r)?;
        let resp = vec![
            Payload::Sa(vec![suite.to_proposal(prop.num, new_spi_r.to_be_bytes().to_vec())]),
            Payload::Nonce(nr.clone()),
            Payload::Ke(KeyExchange {
                group: suite.dh.id(),
                data: public,
            }),
        ];
        self.send_response(ExchangeType::CreateChildSa, mid, &resp, out)?;
        let new = self.successor(now, false, new_spi_i, new_spi_r, suite, keys);
        if crossed {
            self.ike_collision = Some(IkeCollision {
                peer_ni: ni.clone(),
                our_nr: nr,
                theirs: new.spis(),
            });
        }
        out.push_back(Output::Event(Event::IkeSaRekeyed {
            old: self.spis(),
            new: new.spis(),
        }));
        fx.new_sa = Some(new);
        Ok(())
    }

    /// The IKE SA replacing this one after a rekey; CHILD SAs move over.
    fn successor(
        &mut self,
        now: Instant,
        initiator: bool,
        spi_i: u64,
        spi_r: u64,
        suite: IkeSuite,
        keys: IkeSaKeys,
    ) -> Self {
        let mut new = Self::blank(self.cfg.clone(), initiator, self.local, self.remote, now);
        new.state = SaState::Established;
        new.spi_i = spi_i;
        new.spi_r = spi_r;
        new.suite = suite;
        new.keys = Some(keys);
        new.nat = self.nat;
        new.behind_nat = self.behind_nat;
        new.children = std::mem::take(&mut self.children);
        self.superseded = true;
        self.superseded_at = Some(now);
        new
    }

    // -----------------------------------------------------------------------
    // Requests we start
    // -----------------------------------------------------------------------

    /// Queues a request and sends it when the window allows.
    pub(crate) fn start(&mut self, now: Instant, what: Queued, rng: &dyn SecureRandom, out: &mut Out) -> Result<()> {
        if self.state == SaState::Deleting && what != Queued::DeleteIke {
            // Closing (e.g. a rekey answered after our close): the IKE
            // SA's DELETE takes every CHILD SA with it; just let it go out.
            return self.pump(now, rng, out);
        }
        if !matches!(self.state, SaState::Established) {
            return Err(Error::NotEstablished);
        }
        if !self.queue.contains(&what) {
            // Deleting a replaced CHILD SA must not wait behind other work
            // (an IKE rekey would otherwise carry the stale pair over).
            if matches!(what, Queued::DeleteChild(_)) {
                self.queue.push_front(what);
            } else {
                self.queue.push_back(what);
            }
        }
        if what == Queued::DeleteIke {
            self.state = SaState::Deleting;
        }
        self.pump(now, rng, out)
    }

    /// Sends the next queued request if none is outstanding.
    pub(crate) fn pump(&mut self, now: Instant, rng: &dyn SecureRandom, out: &mut Out) -> Result<()> {
        while self.pending.is_none() && matches!(self.state, SaState::Established | SaState::Deleting) {
            let Some(next) = self.queue.pop_front() else {
                break;
            };
            // Once deleting, only the delete itself goes out.
            if self.state == SaState::Deleting && next != Queued::DeleteIke {
                continue;
            }
            match next {
                Queued::Dpd => {
                    self.send_request(now, ExchangeType::Informational, &[], PendingKind::Dpd, out)?;
                }
                Queued::DeleteIke => {
                    let d = Payload::Delete(Delete {
                        protocol: protocol_id::IKE,
                        spi_size: 0,
                        spis: Vec::new(),
                    });
                    self.send_request(now, ExchangeType::Informational, &[d], PendingKind::DeleteIke, out)?;
                }
                Queued::DeleteChild(spi) => {
                    if !self.children.iter().any(|c| c.inbound_spi == spi) {
                        continue;
                    }
                    let d = Payload::Delete(Delete {
                        protocol: protocol_id::ESP,
                        spi_size: 4,
                        spis: vec![spi.to_be_bytes().to_vec()],
                    });
                    self.send_request(
                        now,
                        ExchangeType::Informational,
                        &[d],
                        PendingKind::DeleteChild { inbound_spi: spi },
                        out,
                    )?;
                }
                Queued::RekeyChild(spi) => {
                    let Some(child) = self.children.iter().find(|c| c.inbound_spi == spi).cloned() else {
                        continue;
                    };
                    let new_inbound = self.new_inbound_spi(rng)?;
                    let ni = random_bytes(rng, NONCE_LEN)?;
                    let pfs = self.cfg.child_pfs.then_some(self.suite.dh);
                    let mut p = vec![
                        Payload::Notify(Notify {
                            protocol: protocol_id::ESP,
                            spi: spi.to_be_bytes().to_vec(),
                            ty: nt::REKEY_SA,
                            data: Vec::new(),
                        }),
                        Payload::Sa(esp_proposals(&[child.suite], new_inbound, pfs)),
                        Payload::Nonce(ni.clone()),
                    ];
                    let dh = match pfs {
                        Some(g) => {
                            let dh = DhPrivate::generate(g, rng)?;
                            p.push(Payload::Ke(KeyExchange {
                                group: g.id(),
                                data: dh.public().to_vec(),
                            }));
                            Some(dh)
                        }
                        None => None,
                    };
                    // Propose the current configuration, not the old child's
                    // selectors: the peer narrows it again.
                    p.push(Payload::TsI(self.cfg.local_ts.clone()));
                    p.push(Payload::TsR(self.cfg.remote_ts.clone()));
                    let kind = PendingKind::RekeyChild {
                        old_inbound: spi,
                        new_inbound,
                        ni,
                        dh,
                    };
                    self.send_request(now, ExchangeType::CreateChildSa, &p, kind, out)?;
                }
                Queued::RekeyIke => {
                    let new_spi_i = random_u64_nonzero(rng)?;
                    let ni = random_bytes(rng, NONCE_LEN)?;
                    let dh = DhPrivate::generate(self.suite.dh, rng)?;
                    let p = vec![
                        Payload::Sa(ike_proposals(&[self.suite], &new_spi_i.to_be_bytes())),
                        Payload::Nonce(ni.clone()),
                        Payload::Ke(KeyExchange {
                            group: self.suite.dh.id(),
                            data: dh.public().to_vec(),
                        }),
                    ];
                    let kind = PendingKind::RekeyIke {
                        new_spi_i,
                        ni,
                        dh: Some(dh),
                    };
                    self.send_request(now, ExchangeType::CreateChildSa, &p, kind, out)?;
                }
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn finish_rekey_child_inner(
        &mut self,
        payloads: &[Payload],
        old_inbound: u32,
        new_inbound: u32,
        ni: &[u8],
        dh: Option<DhPrivate>,
        now: Instant,
        rng: &dyn SecureRandom,
        out: &mut Out,
    ) -> Result<()> {
        if let Some(ty) = first_error_notify(payloads) {
            return Err(Error::PeerError(ty));
        }
        let Some(old) = self.children.iter().find(|c| c.inbound_spi == old_inbound).cloned() else {
            return Err(Error::UnknownChild(old_inbound));
        };
        let pfs = dh.as_ref().map(DhPrivate::group);
        let sa = find_payload!(payloads, Sa, "SA")?;
        let (suite, outbound_spi) = accept_esp(sa, &[old.suite], pfs).ok_or(Error::NoProposalChosen)?;
        let nr = find_payload!(payloads, Nonce, "Nonce")?.clone();
        let gir = match dh {
            Some(dh) => {
                let ke = find_payload!(payloads, Ke, "KE")?;
                if Some(ke.group) != pfs.map(DhGroup::id) {
                    return Err(Error::InvalidKe {
                        got: ke.group,
                        want: dh.group().id(),
                    });
                }
                Some(dh.agree(&ke.data)?)
            }
            None => None,
        };
        let tsi = find_payload!(payloads, TsI, "TSi")?;
        let tsr = find_payload!(payloads, TsR, "TSr")?;
        if !all_within(tsi, &self.cfg.local_ts) || !all_within(tsr, &self.cfg.remote_ts) {
            return Err(Error::TsUnacceptable);
        }
        let child = Child {
            inbound_spi: new_inbound,
            outbound_spi,
            suite,
            local_ts: tsi.clone(),
            remote_ts: tsr.clone(),
            outbound_waits_for: None,
            installed: false,
        };
        if let Some(c) = self.rekey_collision.take().filter(|c| c.old == old_inbound) {
            // RFC 7296 2.8.1: the pair made by the exchange holding the
            // lowest of the four nonces is redundant and is closed by the
            // side that initiated that exchange; the other initiator closes
            // the old pair. Both sides reach the same verdict.
            let ours = std::cmp::min(ni, nr.as_slice());
            let theirs = std::cmp::min(c.peer_ni.as_slice(), c.our_nr.as_slice());
            if ours < theirs {
                // Ours lost: never installed, deleted by us.
                self.children.push(child);
                return self.start(now, Queued::DeleteChild(new_inbound), rng, out);
            }
            // Theirs lost: the peer deletes it, so never switch to it.
            if let Some(p) = self.children.iter_mut().find(|x| x.inbound_spi == c.peer_child) {
                p.outbound_waits_for = None;
            }
        }
        self.install_child(
            child,
            gir.as_ref(),
            ni,
            &nr,
            true,
            Some((old.inbound_spi, old.outbound_spi)),
            out,
        )?;
        // The old pair goes once the new one is in place (RFC 7296 2.8).
        self.start(now, Queued::DeleteChild(old_inbound), rng, out)
    }

    #[allow(clippy::too_many_arguments)]
    fn finish_rekey_ike_inner(
        &mut self,
        payloads: &[Payload],
        new_spi_i: u64,
        ni: &[u8],
        dh: Option<DhPrivate>,
        now: Instant,
        rng: &dyn SecureRandom,
        out: &mut Out,
        fx: &mut Effects,
    ) -> Result<()> {
        if let Some(ty) = first_error_notify(payloads) {
            return Err(Error::PeerError(ty));
        }
        let sa = find_payload!(payloads, Sa, "SA")?;
        let (suite, spi) = accept_ike(sa, &[self.suite]).ok_or(Error::NoProposalChosen)?;
        let new_spi_r = <[u8; 8]>::try_from(spi.as_slice())
            .map(u64::from_be_bytes)
            .ok()
            .filter(|s| *s != 0)
            .ok_or(Error::InvalidPayload("IKE rekey SPI"))?;
        let nr = find_payload!(payloads, Nonce, "Nonce")?;
        let ke = find_payload!(payloads, Ke, "KE")?;
        let dh = dh.ok_or(Error::NotEstablished)?;
        if ke.group != dh.group().id() {
            return Err(Error::InvalidKe {
                got: ke.group,
                want: dh.group().id(),
            });
        }
        let gir = dh.agree(&ke.data)?;
        let seed = skeyseed_rekey(&self.keys()?.sk_d, &gir, ni, nr);
        let keys = IkeSaKeys::derive(suite.encr, &seed, ni, nr, new_spi_i, new_spi_r)?;
        let mut new = self.successor(now, true, new_spi_i, new_spi_r, suite, keys);
        if let Some(c) = self.ike_collision.take() {
            // RFC 7296 2.8.1: the IKE SA made by the exchange holding the
            // lowest of the four nonces is redundant; its initiator deletes
            // it, the other initiator deletes the old SA.
            let ours = std::cmp::min(ni, nr.as_slice());
            let theirs = std::cmp::min(c.peer_ni.as_slice(), c.our_nr.as_slice());
            if ours < theirs {
                // Ours lost: it never carries anything and goes silently;
                // the CHILD SAs stay on the peer's new SA.
                new.superseded = true;
                new.superseded_at = Some(now);
                new.start(now, Queued::DeleteIke, rng, out)?;
                fx.new_sa = Some(new);
                return Ok(());
            }
            // Ours won: it takes the CHILD SAs over from the peer's new SA,
            // which the peer deletes.
            fx.adopt_children_from = Some(c.theirs);
        }
        out.push_back(Output::Event(Event::IkeSaRekeyed {
            old: self.spis(),
            new: new.spis(),
        }));
        // Work queued on the old SA moves to the new one; the old SA itself
        // is deleted (RFC 7296 2.18).
        new.queue = std::mem::take(&mut self.queue);
        new.queue.retain(|q| *q != Queued::DeleteIke && *q != Queued::RekeyIke);
        fx.new_sa = Some(new);
        self.start(now, Queued::DeleteIke, rng, out)
    }

    /// Completes our CHILD SA rekey; a failure is reported as an event too,
    /// since the driver that asked for it is not the caller here.
    #[allow(clippy::too_many_arguments)]
    fn finish_rekey_child(
        &mut self,
        payloads: &[Payload],
        old_inbound: u32,
        new_inbound: u32,
        ni: &[u8],
        dh: Option<DhPrivate>,
        now: Instant,
        rng: &dyn SecureRandom,
        out: &mut Out,
    ) -> Result<()> {
        let r = self.finish_rekey_child_inner(payloads, old_inbound, new_inbound, ni, dh, now, rng, out);
        if let Err(e) = &r {
            out.push_back(Output::Event(Event::RekeyFailed {
                child: Some(old_inbound),
                error: e.clone(),
            }));
        }
        r
    }

    /// Completes our IKE SA rekey, reporting failures as events.
    #[allow(clippy::too_many_arguments)]
    fn finish_rekey_ike(
        &mut self,
        payloads: &[Payload],
        new_spi_i: u64,
        ni: &[u8],
        dh: Option<DhPrivate>,
        now: Instant,
        rng: &dyn SecureRandom,
        out: &mut Out,
        fx: &mut Effects,
    ) -> Result<()> {
        let r = self.finish_rekey_ike_inner(payloads, new_spi_i, ni, dh, now, rng, out, fx);
        if let Err(e) = &r {
            out.push_back(Output::Event(Event::RekeyFailed {
                child: None,
                error: e.clone(),
            }));
        }
        r
    }

    /// Whether we are deleting the CHILD SA with this inbound SPI ourselves
    /// (an exchange collision answered with TEMPORARY_FAILURE, RFC 7296
    /// 2.25).
    fn busy_with_child(&self, inbound_spi: u32) -> bool {
        let pending = matches!(
            self.pending.as_ref().map(|p| &p.kind),
            Some(PendingKind::DeleteChild { inbound_spi: s }) if *s == inbound_spi
        );
        pending || self.queue.contains(&Queued::DeleteChild(inbound_spi))
    }

    /// Whether we are rekeying or deleting this IKE SA ourselves.
    fn busy_with_ike(&self) -> bool {
        matches!(
            self.pending.as_ref().map(|p| &p.kind),
            Some(PendingKind::RekeyIke { .. } | PendingKind::DeleteIke)
        ) || self.state == SaState::Deleting
    }

    /// API: queue an operation on an established SA.
    pub(crate) fn request(&mut self, now: Instant, what: Queued, rng: &dyn SecureRandom, out: &mut Out) -> Result<()> {
        if let Queued::DeleteChild(spi) | Queued::RekeyChild(spi) = what {
            if !self.children.iter().any(|c| c.inbound_spi == spi) {
                return Err(Error::UnknownChild(spi));
            }
        }
        self.start(now, what, rng, out)
    }

    // -----------------------------------------------------------------------
    // Timers
    // -----------------------------------------------------------------------

    /// Retransmits, gives up, starts liveness checks, expires half-open SAs.
    pub(crate) fn poll_timers(&mut self, now: Instant, out: &mut Out) {
        if self.state == SaState::HalfOpen && now.saturating_duration_since(self.created) >= self.cfg.half_open_timeout
        {
            self.die(DownReason::Timeout, out);
            return;
        }
        // An old IKE SA whose Delete never came (the peer rekeyed and
        // vanished) must not linger forever.
        if let Some(at) = self.superseded_at {
            if self.pending.is_none() && now.saturating_duration_since(at) >= self.cfg.half_open_timeout {
                self.die(DownReason::Closed, out);
                return;
            }
        }
        if let Some(t) = self.keepalive_due() {
            if now >= t {
                out.push_back(Output::Send(Datagram {
                    src: self.local,
                    dst: self.remote,
                    payload: vec![NAT_KEEPALIVE],
                }));
                self.last_tx = now;
            }
        }
        if let Some(p) = self.pending.as_mut() {
            match p.timer.poll(now) {
                Tick::Idle => {}
                Tick::Retransmit => {
                    out.push_back(Output::Send(p.datagram.clone()));
                    self.last_tx = now;
                }
                Tick::GiveUp => {
                    let reason = match self.state {
                        SaState::InitSent | SaState::AuthSent => DownReason::Timeout,
                        SaState::Deleting => DownReason::Closed,
                        _ => DownReason::PeerDead,
                    };
                    self.die(reason, out);
                }
            }
            return;
        }
        if self.state == SaState::Established && !self.superseded {
            if let Some(iv) = self.cfg.dpd_interval {
                if now.saturating_duration_since(self.last_rx) >= iv {
                    // A DPD needs no randomness: the IV is a counter.
                    if self
                        .send_request(now, ExchangeType::Informational, &[], PendingKind::Dpd, out)
                        .is_err()
                    {
                        self.die(DownReason::PeerDead, out);
                    }
                }
            }
        }
    }

    /// When the next NAT-T keepalive is due, if we send them.
    fn keepalive_due(&self) -> Option<Instant> {
        if !self.behind_nat || self.superseded || self.state != SaState::Established {
            return None;
        }
        self.cfg.nat_keepalive.and_then(|k| self.last_tx.checked_add(k))
    }

    /// The next instant at which [`IkeSa::poll_timers`] has work.
    pub(crate) fn next_timeout(&self) -> Option<Instant> {
        let mut t: Option<Instant> = None;
        let mut consider = |x: Option<Instant>| {
            if let Some(x) = x {
                t = Some(t.map_or(x, |c| c.min(x)));
            }
        };
        match self.state {
            SaState::Dead => return None,
            SaState::HalfOpen => consider(self.created.checked_add(self.cfg.half_open_timeout)),
            _ => {}
        }
        if self.pending.is_none() {
            consider(
                self.superseded_at
                    .and_then(|t| t.checked_add(self.cfg.half_open_timeout)),
            );
        }
        consider(self.keepalive_due());
        if let Some(p) = &self.pending {
            consider(Some(p.timer.deadline()));
        } else if self.state == SaState::Established && !self.superseded {
            consider(self.cfg.dpd_interval.and_then(|d| self.last_rx.checked_add(d)));
        }
        t
    }

    /// Marks the SA as replaced by a newer one from the same peer.
    pub(crate) fn replaced(&mut self, out: &mut Out) {
        self.die(DownReason::Replaced, out);
    }
}

fn pending_restore(message_id: u32, datagram: Datagram, timer: Retransmitter, inbound_spi: u32) -> Pending {
    Pending {
        message_id,
        datagram,
        timer,
        kind: PendingKind::Auth { inbound_spi },
    }
}

/// NAT detection (RFC 7296 2.23): a NAT is between us if the hash of the
/// addresses we see differs from what the peer computed. Absent notifies
/// mean the peer does not do NAT-T: no NAT handling.
fn detect_nat(p: &[Payload], spi_i: u64, spi_r: u64, src: SocketAddr, dst: SocketAddr) -> NatState {
    let hashes = |ty: u16| -> Vec<&[u8]> {
        p.iter()
            .filter_map(|x| match x {
                Payload::Notify(n) if n.ty == ty => Some(n.data.as_slice()),
                _ => None,
            })
            .collect()
    };
    let srcs = hashes(nt::NAT_DETECTION_SOURCE_IP);
    let dsts = hashes(nt::NAT_DETECTION_DESTINATION_IP);
    if srcs.is_empty() || dsts.is_empty() {
        return NatState::default();
    }
    let peer_natted = !srcs.contains(&nat_detection_hash(spi_i, spi_r, src.ip(), src.port()).as_slice());
    let we_natted = !dsts.contains(&nat_detection_hash(spi_i, spi_r, dst.ip(), dst.port()).as_slice());
    NatState {
        any: peer_natted || we_natted,
        local: we_natted,
    }
}

/// Result of NAT detection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct NatState {
    /// Some NAT is in the path: use UDP encapsulation.
    any: bool,
    /// We are behind it: we keep its mapping alive.
    local: bool,
}
