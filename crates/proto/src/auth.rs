//! The authenticated envelope and replay protection.
//!
//! # Wire form
//! Every command is an HTTP `POST` whose body is the JSON message and whose
//! "original text" (PROTOCOL.md) and MAC travel in four headers:
//!
//! | header | value |
//! |---|---|
//! | [`HEADER_PRINCIPAL`] `x-vpnnat-principal` | terminal ID (router <-> center) or gateway name (center <-> gateway) |
//! | [`HEADER_TIMESTAMP`] `x-vpnnat-timestamp` | sender's Unix time in seconds, decimal |
//! | [`HEADER_NONCE`] `x-vpnnat-nonce` | 16 random bytes, 32 lower-case hex digits |
//! | [`HEADER_MAC`] `x-vpnnat-mac` | HMAC-SHA256, 64 lower-case hex digits |
//!
//! Keeping the MAC outside the body means it covers the body's exact bytes:
//! no canonical JSON is needed, and the receiver verifies before it parses.
//!
//! # Canonical MAC input
//! With `field(x) = u32_be(len(x)) || x`:
//!
//! ```text
//! field("vpnnat-proto/1")
//! field(domain)        "request router->center", "response center->gateway", ...
//! field(principal)     terminal ID or gateway name, UTF-8
//! u64_be(timestamp)
//! field(nonce)         the 16 raw bytes
//! field(path)          e.g. "/v1/router/install"
//! field(binding)       empty for a request; the request's 32-byte MAC for a response
//! field(body)          the body bytes exactly as sent
//! ```
//!
//! Every variable-length field is length-prefixed, so two different tuples
//! never share an encoding. The domain names the direction, so a message the
//! center signed with Secret(ID2) for the router can never be reflected back
//! to the center as if the router had sent it (both use Secret(ID2)), and a
//! response can never pass as a request. The path binds the command, the
//! binding ties a response to the one request it answers.

use std::collections::{BTreeSet, HashMap};
use std::fmt;

use ring::hmac;
use ring::rand::SecureRandom;
use thiserror::Error;

use crate::error::ProtoError;
use crate::keys::MacKey;
use crate::{put_field, PROTOCOL_LABEL};

pub const HEADER_PRINCIPAL: &str = "x-vpnnat-principal";
pub const HEADER_TIMESTAMP: &str = "x-vpnnat-timestamp";
pub const HEADER_NONCE: &str = "x-vpnnat-nonce";
pub const HEADER_MAC: &str = "x-vpnnat-mac";

/// Length of a nonce in bytes (128 bits: collisions are not a concern).
pub const NONCE_LEN: usize = 16;
/// Length of a MAC in bytes.
pub const TAG_LEN: usize = 32;
/// No header value of ours is longer; anything longer is refused unread.
pub const MAX_HEADER_LEN: usize = 128;
/// Largest response body [`verify_response`] accepts.
pub const MAX_RESPONSE_BODY: usize = 64 * 1024;
/// The replay window used when none is configured.
pub const DEFAULT_MAX_SKEW_SECS: u64 = 120;

/// Who sends to whom.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Router -> center, keyed with Secret(ID) or Secret(ID2).
    RouterToCenter,
    /// Center -> router through the tunnel, keyed with Secret(ID2).
    CenterToRouter,
    /// centerd -> gatewayd, keyed with the gateway API key.
    CenterToGateway,
    /// gatewayd -> centerd (events), keyed with the gateway API key.
    GatewayToCenter,
}

impl Direction {
    fn label(self) -> &'static str {
        match self {
            Direction::RouterToCenter => "router->center",
            Direction::CenterToRouter => "center->router",
            Direction::CenterToGateway => "center->gateway",
            Direction::GatewayToCenter => "gateway->center",
        }
    }
}

/// What a MAC authenticates: a request sent in a direction, or the response
/// to such a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Domain {
    Request(Direction),
    Response(Direction),
}

impl Domain {
    /// The domain string of the canonical encoding.
    pub fn label(self) -> String {
        match self {
            Domain::Request(d) => format!("request {}", d.label()),
            Domain::Response(d) => format!("response {}", d.label()),
        }
    }
}

/// A 128-bit message nonce.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Nonce([u8; NONCE_LEN]);

impl Nonce {
    pub fn generate(rng: &dyn SecureRandom) -> Result<Nonce, ProtoError> {
        let mut b = [0u8; NONCE_LEN];
        rng.fill(&mut b).map_err(|_| ProtoError::Crypto)?;
        Ok(Nonce(b))
    }

    pub fn from_bytes(b: [u8; NONCE_LEN]) -> Nonce {
        Nonce(b)
    }

    pub fn as_bytes(&self) -> &[u8; NONCE_LEN] {
        &self.0
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(s: &str) -> Result<Nonce, ProtoError> {
        let mut b = [0u8; NONCE_LEN];
        hex::decode_to_slice(s, &mut b).map_err(|_| ProtoError::malformed("nonce"))?;
        Ok(Nonce(b))
    }
}

impl fmt::Debug for Nonce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Nonce({})", self.to_hex())
    }
}

/// An HMAC-SHA256 value. Not secret once sent, so it prints.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tag([u8; TAG_LEN]);

impl Tag {
    pub fn as_bytes(&self) -> &[u8; TAG_LEN] {
        &self.0
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(s: &str) -> Result<Tag, ProtoError> {
        let mut b = [0u8; TAG_LEN];
        hex::decode_to_slice(s, &mut b).map_err(|_| ProtoError::malformed("MAC"))?;
        Ok(Tag(b))
    }
}

impl fmt::Debug for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tag({})", self.to_hex())
    }
}

/// The four authentication headers as strings, exactly as received or as
/// to be sent. A server fills it with [`AuthHeaders::from_lookup`]; a client
/// sends [`AuthHeaders::pairs`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AuthHeaders {
    pub principal: String,
    pub timestamp: String,
    pub nonce: String,
    pub mac: String,
}

impl AuthHeaders {
    /// Collects the headers through `get` (a case-insensitive header map
    /// lookup). A missing header is [`ProtoError::Malformed`], one longer
    /// than [`MAX_HEADER_LEN`] is [`ProtoError::TooLarge`].
    pub fn from_lookup<'a>(mut get: impl FnMut(&str) -> Option<&'a str>) -> Result<AuthHeaders, ProtoError> {
        let mut one = |name: &'static str| -> Result<String, ProtoError> {
            let v = get(name).ok_or_else(|| ProtoError::malformed(format!("missing {name}")))?;
            check_header_len(v)?;
            Ok(v.to_owned())
        };
        Ok(AuthHeaders {
            principal: one(HEADER_PRINCIPAL)?,
            timestamp: one(HEADER_TIMESTAMP)?,
            nonce: one(HEADER_NONCE)?,
            mac: one(HEADER_MAC)?,
        })
    }

    /// (name, value) pairs to put on the outgoing request or response.
    pub fn pairs(&self) -> [(&'static str, &str); 4] {
        [
            (HEADER_PRINCIPAL, &self.principal),
            (HEADER_TIMESTAMP, &self.timestamp),
            (HEADER_NONCE, &self.nonce),
            (HEADER_MAC, &self.mac),
        ]
    }

    /// Syntactic parse; authenticates nothing.
    pub fn parse(&self) -> Result<Envelope, ProtoError> {
        for v in [&self.principal, &self.timestamp, &self.nonce, &self.mac] {
            check_header_len(v)?;
        }
        if self.principal.is_empty() {
            return Err(ProtoError::malformed(HEADER_PRINCIPAL));
        }
        // Decimal digits only: u64::from_str would also take a leading '+'.
        if self.timestamp.is_empty() || !self.timestamp.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ProtoError::malformed(HEADER_TIMESTAMP));
        }
        let timestamp = self
            .timestamp
            .parse::<u64>()
            .map_err(|_| ProtoError::malformed(HEADER_TIMESTAMP))?;
        Ok(Envelope {
            principal: self.principal.clone(),
            timestamp,
            nonce: Nonce::from_hex(&self.nonce)?,
            mac: Tag::from_hex(&self.mac)?,
        })
    }
}

fn check_header_len(v: &str) -> Result<(), ProtoError> {
    if v.len() > MAX_HEADER_LEN {
        return Err(ProtoError::TooLarge {
            len: v.len(),
            max: MAX_HEADER_LEN,
        });
    }
    Ok(())
}

/// Parsed (not yet verified) authentication headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub principal: String,
    pub timestamp: u64,
    pub nonce: Nonce,
    pub mac: Tag,
}

/// Everything a MAC covers; see the module documentation for the encoding.
#[derive(Debug, Clone, Copy)]
pub struct MacInput<'a> {
    pub domain: Domain,
    pub principal: &'a str,
    pub timestamp: u64,
    pub nonce: &'a Nonce,
    pub path: &'a str,
    pub binding: &'a [u8],
    pub body: &'a [u8],
}

impl MacInput<'_> {
    /// The canonical byte encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128usize.saturating_add(self.path.len()).saturating_add(self.body.len()));
        put_field(&mut out, PROTOCOL_LABEL);
        put_field(&mut out, self.domain.label().as_bytes());
        put_field(&mut out, self.principal.as_bytes());
        out.extend_from_slice(&self.timestamp.to_be_bytes());
        put_field(&mut out, self.nonce.as_bytes());
        put_field(&mut out, self.path.as_bytes());
        put_field(&mut out, self.binding);
        put_field(&mut out, self.body);
        out
    }

    pub fn sign(&self, key: &MacKey) -> Tag {
        let t = hmac::sign(&key.0, &self.encode());
        let mut b = [0u8; TAG_LEN];
        b.copy_from_slice(t.as_ref());
        Tag(b)
    }

    /// Constant-time verification (ring's `hmac::verify`).
    pub fn verify(&self, key: &MacKey, tag: &Tag) -> Result<(), ProtoError> {
        hmac::verify(&key.0, &self.encode(), tag.as_bytes()).map_err(|_| ProtoError::BadMac)
    }
}

/// Builds the headers of a new request: fresh nonce, `now` as timestamp.
pub fn sign_request(
    key: &MacKey,
    direction: Direction,
    principal: &str,
    path: &str,
    body: &[u8],
    now: u64,
    rng: &dyn SecureRandom,
) -> Result<AuthHeaders, ProtoError> {
    sign_inner(key, Domain::Request(direction), principal, path, &[], body, now, rng)
}

/// Builds the headers of the response to a request whose MAC was
/// `request_mac` (the [`crate::Verified::mac`] of that request).
#[allow(clippy::too_many_arguments)] // each is a distinct part of the MAC input
pub fn sign_response(
    key: &MacKey,
    request_direction: Direction,
    principal: &str,
    path: &str,
    request_mac: &Tag,
    body: &[u8],
    now: u64,
    rng: &dyn SecureRandom,
) -> Result<AuthHeaders, ProtoError> {
    sign_inner(
        key,
        Domain::Response(request_direction),
        principal,
        path,
        request_mac.as_bytes(),
        body,
        now,
        rng,
    )
}

#[allow(clippy::too_many_arguments)]
fn sign_inner(
    key: &MacKey,
    domain: Domain,
    principal: &str,
    path: &str,
    binding: &[u8],
    body: &[u8],
    now: u64,
    rng: &dyn SecureRandom,
) -> Result<AuthHeaders, ProtoError> {
    let nonce = Nonce::generate(rng)?;
    let mac = MacInput {
        domain,
        principal,
        timestamp: now,
        nonce: &nonce,
        path,
        binding,
        body,
    }
    .sign(key);
    Ok(AuthHeaders {
        principal: principal.to_owned(),
        timestamp: now.to_string(),
        nonce: nonce.to_hex(),
        mac: mac.to_hex(),
    })
}

/// Verifies the response to our own request.
///
/// No timestamp or nonce check is needed: the MAC binds the response to the
/// request's MAC, which was fresh and is only ever answered once by the
/// caller (it drops the pending request on the first answer).
#[allow(clippy::too_many_arguments)]
pub fn verify_response(
    key: &MacKey,
    request_direction: Direction,
    principal: &str,
    path: &str,
    request_mac: &Tag,
    headers: &AuthHeaders,
    body: &[u8],
) -> Result<Envelope, ProtoError> {
    if body.len() > MAX_RESPONSE_BODY {
        return Err(ProtoError::TooLarge {
            len: body.len(),
            max: MAX_RESPONSE_BODY,
        });
    }
    verify_response_mac(key, request_direction, principal, path, request_mac, headers, body)
}

/// [`verify_response`] without the size check (the caller did its own).
pub(crate) fn verify_response_mac(
    key: &MacKey,
    request_direction: Direction,
    principal: &str,
    path: &str,
    request_mac: &Tag,
    headers: &AuthHeaders,
    body: &[u8],
) -> Result<Envelope, ProtoError> {
    let env = headers.parse()?;
    if env.principal != principal {
        // Reported as a MAC failure: the MAC would not match either.
        return Err(ProtoError::BadMac);
    }
    MacInput {
        domain: Domain::Response(request_direction),
        principal,
        timestamp: env.timestamp,
        nonce: &env.nonce,
        path,
        binding: request_mac.as_bytes(),
        body,
    }
    .verify(key, &env.mac)?;
    Ok(env)
}

/// The replay window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayConfig {
    /// Largest accepted |receiver's clock - timestamp|, in seconds.
    pub max_skew_secs: u64,
}

impl Default for ReplayConfig {
    fn default() -> Self {
        ReplayConfig {
            max_skew_secs: DEFAULT_MAX_SKEW_SECS,
        }
    }
}

/// The nonce store refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum NonceStoreError {
    #[error("nonce store is full ({capacity} entries)")]
    Full { capacity: usize },
    #[error("too many messages from one sender within the window (limit {limit})")]
    PrincipalQuota { limit: usize },
    #[error("nonce store failed: {0}")]
    Backend(String),
}

impl From<NonceStoreError> for ProtoError {
    fn from(e: NonceStoreError) -> Self {
        match e {
            NonceStoreError::PrincipalQuota { .. } => ProtoError::RateLimited { reason: e.to_string() },
            NonceStoreError::Full { .. } | NonceStoreError::Backend(_) => {
                ProtoError::Unavailable { reason: e.to_string() }
            }
        }
    }
}

/// Where seen nonces are remembered. centerd backs it with its database
/// (`INSERT ... ON CONFLICT DO NOTHING` keyed by (principal, nonce), plus
/// `DELETE ... WHERE expires_at < now`); [`MemoryNonceStore`] serves routers,
/// gateways and tests.
pub trait NonceStore {
    /// Records (principal, nonce) to be kept until `expires_at` (inclusive)
    /// unless it is already present. Must be atomic. Returns `Ok(true)` if
    /// it was recorded now, `Ok(false)` if it was already there (a replay).
    fn insert_if_absent(&mut self, principal: &str, nonce: &Nonce, expires_at: u64) -> Result<bool, NonceStoreError>;

    /// Forgets every entry whose `expires_at` is before `now`.
    fn purge_expired(&mut self, now: u64) -> Result<(), NonceStoreError>;
}

/// A bounded in-memory [`NonceStore`].
///
/// When full (after purging), it refuses new nonces rather than evicting
/// live ones: evicting would let an evicted nonce be replayed inside its
/// window. Memory is at most `capacity` entries. A per-principal limit
/// keeps one noisy (or compromised) sender from using up the capacity
/// that every other sender needs.
#[derive(Debug)]
pub struct MemoryNonceStore {
    entries: HashMap<(String, Nonce), u64>,
    by_expiry: BTreeSet<(u64, String, Nonce)>,
    per_principal: HashMap<String, usize>,
    capacity: usize,
    principal_limit: usize,
}

impl MemoryNonceStore {
    /// Default capacity: 2 x 120 s of 400 messages a second.
    pub const DEFAULT_CAPACITY: usize = 100_000;

    /// A store of at most `capacity` entries, with no per-principal limit
    /// below that.
    pub fn new(capacity: usize) -> Self {
        MemoryNonceStore {
            entries: HashMap::new(),
            by_expiry: BTreeSet::new(),
            per_principal: HashMap::new(),
            capacity,
            principal_limit: capacity,
        }
    }

    /// Caps the live entries of any one principal at `limit`.
    pub fn with_principal_limit(mut self, limit: usize) -> Self {
        self.principal_limit = limit;
        self
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl Default for MemoryNonceStore {
    fn default() -> Self {
        Self::new(Self::DEFAULT_CAPACITY)
    }
}

impl NonceStore for MemoryNonceStore {
    fn insert_if_absent(&mut self, principal: &str, nonce: &Nonce, expires_at: u64) -> Result<bool, NonceStoreError> {
        let key = (principal.to_owned(), *nonce);
        if self.entries.contains_key(&key) {
            return Ok(false);
        }
        if self.entries.len() >= self.capacity {
            return Err(NonceStoreError::Full {
                capacity: self.capacity,
            });
        }
        let count = self.per_principal.get(principal).copied().unwrap_or(0);
        if count >= self.principal_limit {
            return Err(NonceStoreError::PrincipalQuota {
                limit: self.principal_limit,
            });
        }
        self.per_principal.insert(principal.to_owned(), count.saturating_add(1));
        self.by_expiry.insert((expires_at, principal.to_owned(), *nonce));
        self.entries.insert(key, expires_at);
        Ok(true)
    }

    fn purge_expired(&mut self, now: u64) -> Result<(), NonceStoreError> {
        while let Some(first) = self.by_expiry.first() {
            if first.0 >= now {
                break;
            }
            if let Some((_, p, n)) = self.by_expiry.pop_first() {
                if let Some(c) = self.per_principal.get_mut(&p) {
                    *c = c.saturating_sub(1);
                    if *c == 0 {
                        self.per_principal.remove(&p);
                    }
                }
                self.entries.remove(&(p, n));
            }
        }
        Ok(())
    }
}

/// Rejects stale timestamps and replayed nonces. Pure: the caller passes the
/// time in.
#[derive(Debug)]
pub struct ReplayGuard<S> {
    store: S,
    config: ReplayConfig,
}

impl<S: NonceStore> ReplayGuard<S> {
    pub fn new(store: S, config: ReplayConfig) -> Self {
        ReplayGuard { store, config }
    }

    pub fn config(&self) -> ReplayConfig {
        self.config
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    pub fn store_mut(&mut self) -> &mut S {
        &mut self.store
    }

    /// Checks the timestamp only; changes nothing.
    pub fn check_fresh(&self, timestamp: u64, now: u64) -> Result<(), ProtoError> {
        if timestamp.abs_diff(now) > self.config.max_skew_secs {
            return Err(ProtoError::Stale {
                timestamp,
                now,
                max_skew_secs: self.config.max_skew_secs,
            });
        }
        Ok(())
    }

    /// Checks freshness, then records the nonce; [`ProtoError::Replayed`] if
    /// it was seen before. Call only after the MAC was verified, so forged
    /// messages cannot fill the store or burn a legitimate nonce.
    pub fn check_and_record(
        &mut self,
        principal: &str,
        nonce: &Nonce,
        timestamp: u64,
        now: u64,
    ) -> Result<(), ProtoError> {
        self.check_fresh(timestamp, now)?;
        self.store.purge_expired(now)?;
        // A timestamp t is accepted while now <= t + skew; past that the
        // message is stale anyway, so the nonce can be forgotten then.
        let expires_at = timestamp.saturating_add(self.config.max_skew_secs);
        if self.store.insert_if_absent(principal, nonce, expires_at)? {
            Ok(())
        } else {
            Err(ProtoError::Replayed)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{SecretBytes, SecretId2};
    use ring::rand::SystemRandom;

    fn key(b: u8) -> MacKey {
        SecretId2::from_array([b; 32]).mac_key()
    }

    fn input<'a>(nonce: &'a Nonce, body: &'a [u8]) -> MacInput<'a> {
        MacInput {
            domain: Domain::Request(Direction::RouterToCenter),
            principal: "router-1",
            timestamp: 1_700_000_000,
            nonce,
            path: "/v1/router/failure",
            binding: &[],
            body,
        }
    }

    #[test]
    fn canonical_encoding_is_exactly_as_documented() {
        let n = Nonce::from_bytes([0x11; 16]);
        let enc = input(&n, b"{}").encode();
        let mut want = Vec::new();
        want.extend_from_slice(&14u32.to_be_bytes());
        want.extend_from_slice(b"vpnnat-proto/1");
        let d = b"request router->center";
        want.extend_from_slice(&(d.len() as u32).to_be_bytes());
        want.extend_from_slice(d);
        want.extend_from_slice(&8u32.to_be_bytes());
        want.extend_from_slice(b"router-1");
        want.extend_from_slice(&1_700_000_000u64.to_be_bytes());
        want.extend_from_slice(&16u32.to_be_bytes());
        want.extend_from_slice(&[0x11; 16]);
        let p = b"/v1/router/failure";
        want.extend_from_slice(&(p.len() as u32).to_be_bytes());
        want.extend_from_slice(p);
        want.extend_from_slice(&0u32.to_be_bytes());
        want.extend_from_slice(&2u32.to_be_bytes());
        want.extend_from_slice(b"{}");
        assert_eq!(enc, want);
    }

    #[test]
    fn encoding_is_unambiguous_across_field_boundaries() {
        // Moving bytes from one field to its neighbour changes the encoding.
        let n = Nonce::from_bytes([0; 16]);
        let a = MacInput {
            path: "/v1/a",
            body: b"bc",
            ..input(&n, b"")
        };
        let b = MacInput {
            path: "/v1/ab",
            body: b"c",
            ..input(&n, b"")
        };
        assert_ne!(a.encode(), b.encode());
    }

    /// Parses the canonical encoding back; the encoding is unambiguous iff
    /// this recovers every field of every input.
    /// (domain, principal, timestamp, nonce, path, binding, body)
    type Parsed = (Vec<u8>, Vec<u8>, u64, Vec<u8>, Vec<u8>, Vec<u8>, Vec<u8>);

    fn parse_encoding(mut b: &[u8]) -> Option<Parsed> {
        fn field(b: &mut &[u8]) -> Option<Vec<u8>> {
            let (len, rest) = b.split_first_chunk::<4>()?;
            let len = u32::from_be_bytes(*len) as usize;
            let (f, rest) = (rest.get(..len)?, rest.get(len..)?);
            *b = rest;
            Some(f.to_vec())
        }
        if field(&mut b)? != PROTOCOL_LABEL {
            return None;
        }
        let domain = field(&mut b)?;
        let principal = field(&mut b)?;
        let (ts, rest) = b.split_first_chunk::<8>()?;
        let ts = u64::from_be_bytes(*ts);
        b = rest;
        let nonce = field(&mut b)?;
        let path = field(&mut b)?;
        let binding = field(&mut b)?;
        let body = field(&mut b)?;
        b.is_empty()
            .then_some((domain, principal, ts, nonce, path, binding, body))
    }

    #[test]
    fn canonical_encoding_parses_back_for_many_inputs() {
        // Deterministic xorshift so the test needs no RNG dependency.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let dirs = [
            Direction::RouterToCenter,
            Direction::CenterToRouter,
            Direction::CenterToGateway,
            Direction::GatewayToCenter,
        ];
        for _ in 0..500 {
            let mut bytes = |max: u64| -> Vec<u8> {
                let n = next() % (max + 1);
                (0..n).map(|_| (next() & 0xff) as u8).collect()
            };
            let principal = String::from_utf8_lossy(&bytes(70)).into_owned();
            let path = String::from_utf8_lossy(&bytes(40)).into_owned();
            let binding = bytes(32);
            let body = bytes(300);
            let nonce = Nonce::from_bytes([(next() & 0xff) as u8; 16]);
            let d = dirs[(next() % 4) as usize];
            let domain = if next() % 2 == 0 {
                Domain::Request(d)
            } else {
                Domain::Response(d)
            };
            let ts = next();
            let m = MacInput {
                domain,
                principal: &principal,
                timestamp: ts,
                nonce: &nonce,
                path: &path,
                binding: &binding,
                body: &body,
            };
            let got = parse_encoding(&m.encode()).expect("parses");
            assert_eq!(got.0, domain.label().into_bytes());
            assert_eq!(got.1, principal.as_bytes());
            assert_eq!(got.2, ts);
            assert_eq!(got.3, nonce.as_bytes());
            assert_eq!(got.4, path.as_bytes());
            assert_eq!(got.5, binding);
            assert_eq!(got.6, body);
        }
    }

    #[test]
    fn every_part_is_covered_by_the_mac() {
        let k = key(1);
        let n = Nonce::from_bytes([3; 16]);
        let base = input(&n, b"{\"x\":1}");
        let tag = base.sign(&k);
        assert!(base.verify(&k, &tag).is_ok());
        let n2 = Nonce::from_bytes([4; 16]);
        let variants = [
            MacInput {
                domain: Domain::Request(Direction::CenterToRouter),
                ..base
            },
            MacInput {
                domain: Domain::Response(Direction::RouterToCenter),
                ..base
            },
            MacInput {
                principal: "router-2",
                ..base
            },
            MacInput {
                timestamp: base.timestamp + 1,
                ..base
            },
            MacInput { nonce: &n2, ..base },
            MacInput {
                path: "/v1/router/install",
                ..base
            },
            MacInput {
                binding: &[0; 32],
                ..base
            },
            MacInput {
                body: b"{\"x\":2}",
                ..base
            },
        ];
        for v in variants {
            assert_eq!(v.verify(&k, &tag), Err(ProtoError::BadMac), "{v:?}");
        }
        assert_eq!(base.verify(&key(2), &tag), Err(ProtoError::BadMac));
    }

    #[test]
    fn headers_round_trip_and_parse_errors() {
        let rng = SystemRandom::new();
        let h = sign_request(
            &key(1),
            Direction::RouterToCenter,
            "router-1",
            "/v1/router/failure",
            b"{}",
            42,
            &rng,
        )
        .unwrap();
        let map: HashMap<&str, &str> = h.pairs().into_iter().collect();
        let back = AuthHeaders::from_lookup(|n| map.get(n).copied()).unwrap();
        assert_eq!(back, h);
        let env = back.parse().unwrap();
        assert_eq!(env.timestamp, 42);
        assert_eq!(env.principal, "router-1");

        let missing = AuthHeaders::from_lookup(|n| (n != HEADER_NONCE).then(|| map.get(n).copied()).flatten());
        assert!(matches!(missing, Err(ProtoError::Malformed { .. })));
        let long = "a".repeat(MAX_HEADER_LEN + 1);
        let too_long = AuthHeaders::from_lookup(|n| {
            if n == HEADER_MAC {
                Some(long.as_str())
            } else {
                map.get(n).copied()
            }
        });
        assert!(matches!(too_long, Err(ProtoError::TooLarge { .. })));
        for bad in [
            AuthHeaders {
                timestamp: "+42".into(),
                ..h.clone()
            },
            AuthHeaders {
                timestamp: "".into(),
                ..h.clone()
            },
            AuthHeaders {
                timestamp: "99999999999999999999999".into(),
                ..h.clone()
            },
            AuthHeaders {
                nonce: "00".into(),
                ..h.clone()
            },
            AuthHeaders {
                mac: "zz".repeat(32),
                ..h.clone()
            },
            AuthHeaders {
                principal: "".into(),
                ..h.clone()
            },
        ] {
            assert!(matches!(bad.parse(), Err(ProtoError::Malformed { .. })), "{bad:?}");
        }
    }

    #[test]
    fn responses_are_bound_to_their_request() {
        let rng = SystemRandom::new();
        let k = key(5);
        let req_mac = Tag([7; 32]);
        let path = "/v1/router/install";
        let h = sign_response(
            &k,
            Direction::RouterToCenter,
            "router-1",
            path,
            &req_mac,
            b"{}",
            9,
            &rng,
        )
        .unwrap();
        let ok = verify_response(&k, Direction::RouterToCenter, "router-1", path, &req_mac, &h, b"{}");
        assert!(ok.is_ok());
        let other_req = Tag([8; 32]);
        let cases: [(&MacKey, &str, &Tag, &[u8]); 4] = [
            (&key(6), "router-1", &req_mac, b"{}"),
            (&k, "router-2", &req_mac, b"{}"),
            (&k, "router-1", &other_req, b"{}"),
            (&k, "router-1", &req_mac, b"{ }"),
        ];
        for (kk, p, rm, body) in cases {
            let r = verify_response(kk, Direction::RouterToCenter, p, path, rm, &h, body);
            assert_eq!(r, Err(ProtoError::BadMac));
        }
        // A response MAC is not a request MAC.
        let env = h.parse().unwrap();
        let as_request = MacInput {
            domain: Domain::Request(Direction::RouterToCenter),
            principal: "router-1",
            timestamp: env.timestamp,
            nonce: &env.nonce,
            path,
            binding: &[],
            body: b"{}",
        };
        assert_eq!(as_request.verify(&k, &env.mac), Err(ProtoError::BadMac));
        let big = vec![b' '; MAX_RESPONSE_BODY + 1];
        assert!(matches!(
            verify_response(&k, Direction::RouterToCenter, "router-1", path, &req_mac, &h, &big),
            Err(ProtoError::TooLarge { .. })
        ));
    }

    fn guard(cap: usize) -> ReplayGuard<MemoryNonceStore> {
        ReplayGuard::new(MemoryNonceStore::new(cap), ReplayConfig { max_skew_secs: 120 })
    }

    #[test]
    fn freshness_window() {
        let g = guard(10);
        assert!(g.check_fresh(1000, 1000).is_ok());
        assert!(g.check_fresh(880, 1000).is_ok());
        assert!(g.check_fresh(1120, 1000).is_ok());
        assert!(matches!(g.check_fresh(879, 1000), Err(ProtoError::Stale { .. })));
        assert!(matches!(g.check_fresh(1121, 1000), Err(ProtoError::Stale { .. })));
        assert!(matches!(g.check_fresh(u64::MAX, 0), Err(ProtoError::Stale { .. })));
    }

    #[test]
    fn replay_rejected_then_forgotten_after_window() {
        let mut g = guard(10);
        let n = Nonce::from_bytes([1; 16]);
        assert!(g.check_and_record("r1", &n, 1000, 1000).is_ok());
        assert_eq!(g.check_and_record("r1", &n, 1000, 1050), Err(ProtoError::Replayed));
        // Same nonce from another principal is a different entry.
        assert!(g.check_and_record("r2", &n, 1000, 1050).is_ok());
        // Still remembered at the last second the timestamp is fresh.
        assert_eq!(g.check_and_record("r1", &n, 1000, 1120), Err(ProtoError::Replayed));
        // Past the window the message is stale, and the entry goes away.
        assert!(matches!(
            g.check_and_record("r1", &n, 1000, 1121),
            Err(ProtoError::Stale { .. })
        ));
        let other = Nonce::from_bytes([2; 16]);
        assert!(g.check_and_record("r3", &other, 1121, 1121).is_ok());
        assert_eq!(g.store().len(), 1, "old entries purged");
    }

    #[test]
    fn stale_leaves_store_unchanged() {
        let mut g = guard(10);
        let n = Nonce::from_bytes([1; 16]);
        assert!(g.check_and_record("r1", &n, 1, 1000).is_err());
        assert!(g.store().is_empty());
    }

    #[test]
    fn one_principal_cannot_use_up_the_store() {
        let store = MemoryNonceStore::new(10).with_principal_limit(2);
        let mut g = ReplayGuard::new(store, ReplayConfig::default());
        for i in 0..2u8 {
            let n = Nonce::from_bytes([i; 16]);
            assert!(g.check_and_record("noisy", &n, 100, 100).is_ok());
        }
        let n = Nonce::from_bytes([9; 16]);
        let e = g.check_and_record("noisy", &n, 100, 100).unwrap_err();
        assert_eq!(e.http_status(), 429);
        assert!(g.check_and_record("quiet", &n, 100, 100).is_ok());
        // The quota frees up as the window moves on.
        assert!(g.check_and_record("noisy", &n, 300, 300).is_ok());
        assert_eq!(g.store().len(), 1);
    }

    #[test]
    fn bounded_memory_fails_closed() {
        let mut g = guard(2);
        for i in 0..2u8 {
            let n = Nonce::from_bytes([i; 16]);
            assert!(g.check_and_record("r", &n, 100, 100).is_ok());
        }
        let n = Nonce::from_bytes([9; 16]);
        let e = g.check_and_record("r", &n, 100, 100).unwrap_err();
        assert_eq!(e.http_status(), 503);
        // A replay is still reported as a replay when full.
        let n0 = Nonce::from_bytes([0; 16]);
        assert_eq!(g.check_and_record("r", &n0, 100, 100), Err(ProtoError::Replayed));
        // Once the window moves on, room is made.
        assert!(g.check_and_record("r", &n, 300, 300).is_ok());
        assert_eq!(g.store().len(), 1);
    }
}
