//! The home router side: IKE responder that only talks to its configured
//! gateway, with stateless cookies against half-open floods (RFC 7296 2.6).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ring::hmac;
use ring::rand::SecureRandom;

use crate::codec::Identity;
use crate::codec::{
    self, encode_message, notify_type as nt, ExchangeType, Header, Message, Notify, Payload, TrafficSelector,
};
use crate::crypto::{random_bytes, CryptoError, Secret};
use crate::endpoint::endpoint_api;
use crate::error::Error;
use crate::event::{Datagram, Output};
use crate::session::{IkeSa, Queued, Received, SaConfig, SaState};
use crate::table::{strip_marker, SaTable};

/// Configuration of a [`Responder`].
#[derive(Debug, Clone)]
pub struct ResponderConfig {
    /// The only address IKE is accepted from (the gateway).
    pub allowed_peer: IpAddr,
    /// PSK, identities, suites and the acceptable traffic selectors:
    /// `local_ts` our side (granted VPNNAT addresses), `remote_ts` the
    /// gateway's side (center networks).
    pub sa: SaConfig,
    /// Demand cookies once this many SAs are half-open.
    pub cookie_threshold: usize,
    /// Refuse new IKE_SA_INIT requests, cookie or not, while this many SAs
    /// are half-open: a peer that does return cookies (it sees our answers)
    /// must not be able to grow the table without bound. Half-open SAs time
    /// out (`SaConfig::half_open_timeout`), so the service comes back.
    pub max_half_open: usize,
    /// Rotate the cookie secret this often (the previous one stays valid).
    pub cookie_secret_lifetime: Duration,
}

impl ResponderConfig {
    /// A responder for many peers, each known by its IKE identity through
    /// `sa.peer_lookup` (which must be set); any source address.
    pub fn by_identity(sa: SaConfig) -> Self {
        Self::new(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), sa)
    }

    /// Defaults: cookies from 8 half-open SAs, at most 64 half-open (one
    /// gateway talks to a router: a handful is already unusual), secret
    /// rotated every 5 min.
    pub fn new(allowed_peer: IpAddr, sa: SaConfig) -> Self {
        Self {
            allowed_peer,
            sa,
            cookie_threshold: 8,
            max_half_open: 64,
            cookie_secret_lifetime: Duration::from_secs(300),
        }
    }
}

/// Cookie secrets: `cookie = version || HMAC-SHA256(secret, Ni | IPi | SPIi)`.
#[derive(Debug)]
struct CookieJar {
    version: u8,
    current: Secret,
    previous: Option<Secret>,
    rotated: Instant,
    lifetime: Duration,
}

impl CookieJar {
    fn new(now: Instant, lifetime: Duration, rng: &dyn SecureRandom) -> Result<Self, CryptoError> {
        Ok(Self {
            version: 0,
            current: Secret::new(random_bytes(rng, 32)?),
            previous: None,
            rotated: now,
            lifetime,
        })
    }

    fn rotate(&mut self, now: Instant, rng: &dyn SecureRandom) -> Result<(), CryptoError> {
        let next = Secret::new(random_bytes(rng, 32)?);
        self.previous = Some(std::mem::replace(&mut self.current, next));
        self.version = self.version.wrapping_add(1);
        self.rotated = now;
        Ok(())
    }

    fn compute(secret: &Secret, version: u8, ni: &[u8], ip: IpAddr, spi_i: u64) -> Vec<u8> {
        let key = hmac::Key::new(hmac::HMAC_SHA256, secret.expose());
        let mut ctx = hmac::Context::with_key(&key);
        ctx.update(ni);
        match ip {
            IpAddr::V4(a) => ctx.update(&a.octets()),
            IpAddr::V6(a) => ctx.update(&a.octets()),
        }
        ctx.update(&spi_i.to_be_bytes());
        let mut v = vec![version];
        v.extend_from_slice(ctx.sign().as_ref());
        v
    }

    fn make(&self, ni: &[u8], ip: IpAddr, spi_i: u64) -> Vec<u8> {
        Self::compute(&self.current, self.version, ni, ip, spi_i)
    }

    fn verify(&self, cookie: &[u8], ni: &[u8], ip: IpAddr, spi_i: u64) -> bool {
        let Some(&v) = cookie.first() else {
            return false;
        };
        let secret = if v == self.version {
            Some(&self.current)
        } else if v == self.version.wrapping_sub(1) {
            self.previous.as_ref()
        } else {
            None
        };
        secret.is_some_and(|s| {
            let want = Self::compute(s, v, ni, ip, spi_i);
            // Constant time: HMAC verify over the candidate.
            let k = hmac::Key::new(hmac::HMAC_SHA256, b"cookie-compare");
            hmac::verify(&k, &want, hmac::sign(&k, cookie).as_ref()).is_ok()
        })
    }
}

/// IKEv2 responder. Does no I/O: feed it datagrams and timer ticks, drain
/// [`Responder::poll_output`].
#[derive(Debug)]
pub struct Responder {
    cfg: Arc<SaConfig>,
    allowed_peer: IpAddr,
    cookie_threshold: usize,
    max_half_open: usize,
    cookies: CookieJar,
    pub(crate) table: SaTable,
}

impl Responder {
    /// Creates a responder; `rng` seeds the cookie secret.
    pub fn new(config: ResponderConfig, now: Instant, rng: &dyn SecureRandom) -> Result<Self, Error> {
        config.sa.validate()?;
        Ok(Self {
            cookies: CookieJar::new(now, config.cookie_secret_lifetime, rng)?,
            cfg: Arc::new(config.sa),
            allowed_peer: config.allowed_peer,
            cookie_threshold: config.cookie_threshold,
            max_half_open: config.max_half_open,
            table: SaTable::default(),
        })
    }

    /// Processes one received UDP datagram (`payload` is the UDP payload as
    /// received, with the non-ESP marker if `dst` is port 4500).
    ///
    /// On `Err` the input was rejected and no SA was created or changed,
    /// except that a failed IKE_AUTH ends its half-open SA (after an
    /// AUTHENTICATION_FAILED answer, RFC 7296 2.21.2). Outputs (error
    /// notifies, cookies) may be queued in either case.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        src: SocketAddr,
        dst: SocketAddr,
        payload: &[u8],
        rng: &dyn SecureRandom,
    ) -> Result<(), Error> {
        let Some(ike) = strip_marker(dst, payload)? else {
            return Ok(()); // NAT-T keepalive
        };
        // A responder that picks each SA's configuration by the peer's
        // identity serves peers wherever they are (behind NATs that share
        // and change addresses): the address decides nothing there.
        if self.cfg.peer_lookup.is_none() && src.ip() != self.allowed_peer {
            return Err(Error::PeerNotAllowed(src.ip()));
        }
        let msg = Message::parse(ike)?;
        let h = &msg.header;
        if h.exchange == ExchangeType::IkeSaInit && !h.is_response() && h.spi_r == 0 {
            return self.handle_init(now, src, dst, ike, &msg, rng);
        }
        let rx = Received {
            now,
            src,
            dst,
            raw: ike,
            msg: &msg,
        };
        let fx = self.table.dispatch(&rx, rng)?;
        if fx.initial_contact {
            // The peer restarted: SAs it had with us before are stale. With
            // a peer lookup "the peer" is an identity (several routers
            // behind one NAT share the address: one's restart must not
            // take the others' SAs); otherwise it is the address.
            let keep = (h.spi_i, h.spi_r);
            let by_id = self.cfg.peer_lookup.is_some();
            let who = self
                .table
                .sas
                .iter()
                .find(|sa| sa.spis() == keep)
                .and_then(|sa| sa.peer_id().cloned());
            for sa in &mut self.table.sas {
                let same_peer = if by_id {
                    who.is_some() && sa.peer_id() == who.as_ref()
                } else {
                    sa.remote.ip() == src.ip()
                };
                if sa.spis() != keep && same_peer && sa.state != SaState::HalfOpen {
                    sa.replaced(&mut self.table.out);
                }
            }
            self.table.reap();
        }
        Ok(())
    }

    fn handle_init(
        &mut self,
        now: Instant,
        src: SocketAddr,
        dst: SocketAddr,
        ike: &[u8],
        msg: &Message,
        rng: &dyn SecureRandom,
    ) -> Result<(), Error> {
        let h = &msg.header;
        if let Some(sa) = self
            .table
            .sas
            .iter()
            .find(|s| s.spi_i == h.spi_i && s.remote.ip() == src.ip())
        {
            if sa.state == SaState::HalfOpen && sa.msg1 == ike {
                // Our answer was lost: the same answer again, no new state.
                sa.resend_last_response(&mut self.table.out);
                return Ok(());
            }
            return Err(Error::ReplayedInit(h.spi_i));
        }
        let half_open = self.table.sas.iter().filter(|s| s.state == SaState::HalfOpen).count();
        if half_open >= self.cookie_threshold {
            if now.saturating_duration_since(self.cookies.rotated) >= self.cookies.lifetime {
                self.cookies.rotate(now, rng)?;
            }
            let ni = msg
                .payloads
                .iter()
                .find_map(|p| match p {
                    Payload::Nonce(n) => Some(n.as_slice()),
                    _ => None,
                })
                .ok_or(Error::MissingPayload("Nonce"))?;
            let presented = match msg.payloads.first() {
                Some(Payload::Notify(n)) if n.ty == nt::COOKIE => Some(n.data.as_slice()),
                _ => None,
            };
            if !presented.is_some_and(|c| self.cookies.verify(c, ni, src.ip(), h.spi_i)) {
                let cookie = self.cookies.make(ni, src.ip(), h.spi_i);
                let header = Header {
                    spi_i: h.spi_i,
                    spi_r: 0,
                    next_payload: 0,
                    exchange: ExchangeType::IkeSaInit,
                    flags: codec::FLAG_RESPONSE,
                    message_id: 0,
                    length: 0,
                };
                let bytes = encode_message(&header, &[Payload::Notify(Notify::new(nt::COOKIE, cookie))])?;
                self.table.out.push_back(Output::Send(Datagram {
                    src: dst,
                    dst: src,
                    payload: bytes,
                }));
                return Err(Error::CookieRequired);
            }
        }
        if half_open >= self.max_half_open {
            // After the cookie check, so a spoofed flood is answered with
            // cookies and only a peer that returns them is counted here.
            return Err(Error::TooManyHalfOpen(half_open));
        }
        let rx = Received {
            now,
            src,
            dst,
            raw: ike,
            msg,
        };
        let sa = IkeSa::respond_init(self.cfg.clone(), &rx, rng, &mut self.table.out)?;
        self.table.sas.push(sa);
        Ok(())
    }

    /// Changes the gateway IKE is accepted from (the router was assigned
    /// another gateway). Existing SAs are not touched.
    pub fn set_allowed_peer(&mut self, peer: IpAddr) {
        self.allowed_peer = peer;
    }

    /// Rotates the cookie secret now (it also rotates by itself when
    /// cookies are in use and the lifetime has passed).
    pub fn rotate_cookie_secret(&mut self, now: Instant, rng: &dyn SecureRandom) -> Result<(), Error> {
        Ok(self.cookies.rotate(now, rng)?)
    }

    /// With a peer lookup: the identity whose IKE SA holds the CHILD SA
    /// with this inbound SPI.
    pub fn peer_of_child(&self, inbound_spi: u32) -> Option<Identity> {
        self.table
            .sas
            .iter()
            .find(|sa| sa.child_spis().iter().any(|(i, _)| *i == inbound_spi))
            .and_then(|sa| sa.peer_id().cloned())
    }

    /// With a peer lookup: the identity of the IKE SA with these SPIs.
    pub fn peer_of_ike(&self, spis: (u64, u64)) -> Option<Identity> {
        self.table
            .sas
            .iter()
            .find(|sa| sa.spis() == spis)
            .and_then(|sa| sa.peer_id().cloned())
    }

    /// With a peer lookup: deletes every established IKE SA of `peer` (an
    /// INFORMATIONAL DELETE each; their CHILD SAs go with them). The other
    /// peers' SAs are not touched, unlike [`Responder::close`].
    pub fn close_peer(&mut self, peer: &Identity, now: Instant, rng: &dyn SecureRandom) -> Result<(), Error> {
        let mut found = false;
        for sa in &mut self.table.sas {
            if sa.peer_id() == Some(peer) && sa.state == SaState::Established {
                found = true;
                sa.request(now, Queued::DeleteIke, rng, &mut self.table.out)?;
            }
        }
        self.table.reap();
        if found {
            Ok(())
        } else {
            Err(Error::NotEstablished)
        }
    }

    /// With a peer lookup: gives `peer`'s IKE SAs a new configuration (its
    /// grants changed), used from their next exchange (e.g. the router's
    /// CHILD SA rekey with the new selectors).
    pub fn update_peer(&mut self, peer: &Identity, cfg: Arc<SaConfig>) {
        for sa in &mut self.table.sas {
            if sa.peer_id() == Some(peer) {
                sa.set_config(cfg.clone());
            }
        }
    }

    /// With a peer lookup: acts on the CHILD SA with this inbound SPI in
    /// whichever peer's IKE SA holds it (a kernel expire): rekey (`hard`
    /// false) or delete.
    pub fn expire_child(
        &mut self,
        inbound_spi: u32,
        hard: bool,
        now: Instant,
        rng: &dyn SecureRandom,
    ) -> Result<(), Error> {
        let sa = self
            .table
            .sas
            .iter_mut()
            .find(|sa| sa.state == SaState::Established && sa.child_spis().iter().any(|(i, _)| *i == inbound_spi))
            .ok_or(Error::UnknownChild(inbound_spi))?;
        let what = if hard {
            Queued::DeleteChild(inbound_spi)
        } else {
            Queued::RekeyChild(inbound_spi)
        };
        let r = sa.request(now, what, rng, &mut self.table.out);
        self.table.reap();
        r
    }

    /// Number of half-open IKE SAs.
    pub fn half_open(&self) -> usize {
        self.table.sas.iter().filter(|s| s.state == SaState::HalfOpen).count()
    }

    /// Number of IKE SAs held (any state).
    pub fn sa_count(&self) -> usize {
        self.table.sas.len()
    }

    endpoint_api!();
}
