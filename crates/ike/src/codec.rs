//! Wire codec for IKEv2 messages (RFC 7296 section 3, RFC 5282 for the SK
//! payload with AES-GCM).
//!
//! The parser is *total*: every input, however short or hostile, yields
//! either a value or a [`CodecError`] naming what was wrong. Indexing and
//! unchecked arithmetic are denied in this module so that a missed bounds
//! check is a compile error rather than a panic at runtime.
//!
//! The SK payload is parsed only structurally here ([`SkPayload`]); the
//! actual decryption lives in [`crate::crypto`] and the inner payload chain
//! is parsed afterwards with [`parse_payloads`].

#![deny(clippy::indexing_slicing, clippy::arithmetic_side_effects)]

use std::fmt;
use std::net::Ipv4Addr;

use thiserror::Error;

/// Length of the fixed IKE header.
pub const HEADER_LEN: usize = 28;
/// Length of a generic payload header.
pub const GENERIC_HEADER_LEN: usize = 4;
/// IKEv2 version octet (major 2, minor 0).
pub const IKE_VERSION: u8 = 0x20;
/// Largest IKE message we accept or produce (the length field is 32 bits,
/// but nothing legitimate in our use comes close to this).
pub const MAX_MESSAGE_LEN: usize = 65_535;

/// Errors from parsing or encoding IKE messages.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CodecError {
    /// The input ended before a structure was complete.
    #[error("truncated {what}: need {need} bytes, have {have}")]
    Truncated {
        /// Which structure was being read.
        what: &'static str,
        /// Bytes needed.
        need: usize,
        /// Bytes available.
        have: usize,
    },
    /// The IKE header carries a major version other than 2.
    #[error("unsupported IKE major version {0:#04x}")]
    BadVersion(u8),
    /// The header's length field does not match the datagram.
    #[error("header length {header} does not match datagram length {actual}")]
    LengthMismatch {
        /// Length according to the header.
        header: u32,
        /// Actual number of bytes.
        actual: usize,
    },
    /// A length field inside a structure is inconsistent.
    #[error("bad length {len} in {what}")]
    BadLength {
        /// Which structure.
        what: &'static str,
        /// The offending length.
        len: usize,
    },
    /// An unknown payload with the critical bit set (RFC 7296 2.5).
    #[error("unsupported critical payload type {0}")]
    UnsupportedCritical(u8),
    /// The SK payload was not the last payload of the chain.
    #[error("SK payload is not the last payload")]
    SkNotLast,
    /// An SK payload appeared inside an encrypted payload.
    #[error("nested SK payload")]
    NestedSk,
    /// A structure field carries a value we do not understand.
    #[error("invalid {what}: {value}")]
    InvalidValue {
        /// Which field.
        what: &'static str,
        /// The value received.
        value: u32,
    },
    /// Trailing bytes after a structure that must fill its container.
    #[error("{0} trailing bytes after payload chain")]
    TrailingBytes(usize),
    /// A message being built is too large for its length fields.
    #[error("{what} too large to encode ({len} bytes)")]
    TooLarge {
        /// Which structure.
        what: &'static str,
        /// Its size.
        len: usize,
    },
}

type Result<T> = std::result::Result<T, CodecError>;

/// Exchange types (RFC 7296 3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExchangeType {
    /// IKE_SA_INIT (34).
    IkeSaInit,
    /// IKE_AUTH (35).
    IkeAuth,
    /// CREATE_CHILD_SA (36).
    CreateChildSa,
    /// INFORMATIONAL (37).
    Informational,
    /// Anything else; kept so the parser stays total.
    Other(u8),
}

impl ExchangeType {
    /// Wire value.
    pub fn to_u8(self) -> u8 {
        match self {
            Self::IkeSaInit => 34,
            Self::IkeAuth => 35,
            Self::CreateChildSa => 36,
            Self::Informational => 37,
            Self::Other(v) => v,
        }
    }
    /// From the wire value.
    pub fn from_u8(v: u8) -> Self {
        match v {
            34 => Self::IkeSaInit,
            35 => Self::IkeAuth,
            36 => Self::CreateChildSa,
            37 => Self::Informational,
            v => Self::Other(v),
        }
    }
}

/// Header flag: the sender is the original initiator of the IKE SA.
pub const FLAG_INITIATOR: u8 = 0x08;
/// Header flag: version (we never set it).
pub const FLAG_VERSION: u8 = 0x10;
/// Header flag: this message is a response.
pub const FLAG_RESPONSE: u8 = 0x20;

/// Payload type numbers (RFC 7296 3.2).
pub mod payload_type {
    /// No next payload.
    pub const NONE: u8 = 0;
    /// Security Association.
    pub const SA: u8 = 33;
    /// Key Exchange.
    pub const KE: u8 = 34;
    /// Identification - Initiator.
    pub const IDI: u8 = 35;
    /// Identification - Responder.
    pub const IDR: u8 = 36;
    /// Certificate.
    pub const CERT: u8 = 37;
    /// Certificate request.
    pub const CERTREQ: u8 = 38;
    /// Authentication.
    pub const AUTH: u8 = 39;
    /// Nonce.
    pub const NONCE: u8 = 40;
    /// Notify.
    pub const NOTIFY: u8 = 41;
    /// Delete.
    pub const DELETE: u8 = 42;
    /// Vendor ID.
    pub const VENDOR: u8 = 43;
    /// Traffic selector - initiator.
    pub const TSI: u8 = 44;
    /// Traffic selector - responder.
    pub const TSR: u8 = 45;
    /// Encrypted and authenticated.
    pub const SK: u8 = 46;
    /// Configuration.
    pub const CP: u8 = 47;
    /// EAP.
    pub const EAP: u8 = 48;
}

/// Protocol identifiers used in proposals, notifies and deletes.
pub mod protocol_id {
    /// IKE SA.
    pub const IKE: u8 = 1;
    /// AH.
    pub const AH: u8 = 2;
    /// ESP.
    pub const ESP: u8 = 3;
}

/// Transform types and ids we use (RFC 7296 3.3.2, IANA registry).
pub mod transform {
    /// Encryption algorithm.
    pub const TYPE_ENCR: u8 = 1;
    /// Pseudo-random function.
    pub const TYPE_PRF: u8 = 2;
    /// Integrity algorithm.
    pub const TYPE_INTEG: u8 = 3;
    /// Diffie-Hellman group (key exchange method).
    pub const TYPE_DH: u8 = 4;
    /// Extended sequence numbers.
    pub const TYPE_ESN: u8 = 5;
    /// ENCR_AES_GCM_16 (RFC 5282).
    pub const ENCR_AES_GCM_16: u16 = 20;
    /// PRF_HMAC_SHA2_256 (RFC 4868).
    pub const PRF_HMAC_SHA2_256: u16 = 5;
    /// 256-bit random ECP group.
    pub const DH_ECP256: u16 = 19;
    /// Curve25519 (RFC 8031).
    pub const DH_CURVE25519: u16 = 31;
    /// No extended sequence numbers.
    pub const ESN_NONE: u16 = 0;
    /// Extended sequence numbers.
    pub const ESN_YES: u16 = 1;
    /// Attribute type "Key Length" (TV format).
    pub const ATTR_KEY_LENGTH: u16 = 14;
}

/// Notify message types (RFC 7296 3.10.1).
pub mod notify_type {
    /// UNSUPPORTED_CRITICAL_PAYLOAD.
    pub const UNSUPPORTED_CRITICAL_PAYLOAD: u16 = 1;
    /// INVALID_IKE_SPI.
    pub const INVALID_IKE_SPI: u16 = 4;
    /// INVALID_MAJOR_VERSION.
    pub const INVALID_MAJOR_VERSION: u16 = 5;
    /// INVALID_SYNTAX.
    pub const INVALID_SYNTAX: u16 = 7;
    /// INVALID_MESSAGE_ID.
    pub const INVALID_MESSAGE_ID: u16 = 9;
    /// INVALID_SPI.
    pub const INVALID_SPI: u16 = 11;
    /// NO_PROPOSAL_CHOSEN.
    pub const NO_PROPOSAL_CHOSEN: u16 = 14;
    /// INVALID_KE_PAYLOAD.
    pub const INVALID_KE_PAYLOAD: u16 = 17;
    /// AUTHENTICATION_FAILED.
    pub const AUTHENTICATION_FAILED: u16 = 24;
    /// SINGLE_PAIR_REQUIRED.
    pub const SINGLE_PAIR_REQUIRED: u16 = 34;
    /// NO_ADDITIONAL_SAS.
    pub const NO_ADDITIONAL_SAS: u16 = 35;
    /// TS_UNACCEPTABLE.
    pub const TS_UNACCEPTABLE: u16 = 38;
    /// TEMPORARY_FAILURE.
    pub const TEMPORARY_FAILURE: u16 = 43;
    /// CHILD_SA_NOT_FOUND.
    pub const CHILD_SA_NOT_FOUND: u16 = 44;
    /// INITIAL_CONTACT.
    pub const INITIAL_CONTACT: u16 = 16384;
    /// NAT_DETECTION_SOURCE_IP.
    pub const NAT_DETECTION_SOURCE_IP: u16 = 16388;
    /// NAT_DETECTION_DESTINATION_IP.
    pub const NAT_DETECTION_DESTINATION_IP: u16 = 16389;
    /// COOKIE.
    pub const COOKIE: u16 = 16390;
    /// USE_TRANSPORT_MODE.
    pub const USE_TRANSPORT_MODE: u16 = 16391;
    /// REKEY_SA.
    pub const REKEY_SA: u16 = 16393;
    /// ESP_TFC_PADDING_NOT_SUPPORTED.
    pub const ESP_TFC_PADDING_NOT_SUPPORTED: u16 = 16394;
    /// NON_FIRST_FRAGMENTS_ALSO.
    pub const NON_FIRST_FRAGMENTS_ALSO: u16 = 16395;

    /// Error notifies are the ones below 16384 (RFC 7296 3.10.1).
    pub fn is_error(ty: u16) -> bool {
        ty < 16384
    }
}

/// Identification types (RFC 7296 3.5).
pub mod id_type {
    /// A single IPv4 address.
    pub const IPV4_ADDR: u8 = 1;
    /// A fully-qualified domain name.
    pub const FQDN: u8 = 2;
    /// An RFC 822 e-mail address.
    pub const RFC822_ADDR: u8 = 3;
    /// A single IPv6 address.
    pub const IPV6_ADDR: u8 = 5;
    /// An opaque key id.
    pub const KEY_ID: u8 = 11;
}

/// AUTH method "Shared Key Message Integrity Code".
pub const AUTH_METHOD_PSK: u8 = 2;
/// TS type for IPv4 address ranges.
pub const TS_IPV4_ADDR_RANGE: u8 = 7;

// ---------------------------------------------------------------------------
// Reader / writer helpers
// ---------------------------------------------------------------------------

/// A bounds-checked cursor over a byte slice.
struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], what: &'static str) -> Self {
        Self { buf, what }
    }

    fn remaining(&self) -> usize {
        self.buf.len()
    }

    fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        match (self.buf.get(..n), self.buf.get(n..)) {
            (Some(head), Some(tail)) => {
                self.buf = tail;
                Ok(head)
            }
            _ => Err(CodecError::Truncated {
                what: self.what,
                need: n,
                have: self.buf.len(),
            }),
        }
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(u8::from_be_bytes(self.array()?))
    }

    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }
}

fn u16_len(what: &'static str, len: usize) -> Result<u16> {
    u16::try_from(len).map_err(|_| CodecError::TooLarge { what, len })
}

fn add(what: &'static str, a: usize, b: usize) -> Result<usize> {
    a.checked_add(b).ok_or(CodecError::TooLarge { what, len: a })
}

// ---------------------------------------------------------------------------
// Header
// ---------------------------------------------------------------------------

/// The fixed IKE header (RFC 7296 3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Initiator's SPI.
    pub spi_i: u64,
    /// Responder's SPI (zero in the first IKE_SA_INIT request).
    pub spi_r: u64,
    /// Type of the first payload.
    pub next_payload: u8,
    /// Exchange type.
    pub exchange: ExchangeType,
    /// Flags (I, V, R).
    pub flags: u8,
    /// Message ID.
    pub message_id: u32,
    /// Total message length including this header.
    pub length: u32,
}

impl Header {
    /// Parses the header from the start of `buf` and checks that the length
    /// field matches `buf.len()` exactly (one IKE message per datagram).
    pub fn parse(buf: &[u8]) -> Result<Self> {
        let mut r = Reader::new(buf, "IKE header");
        let spi_i = r.u64()?;
        let spi_r = r.u64()?;
        let next_payload = r.u8()?;
        let version = r.u8()?;
        let exchange = ExchangeType::from_u8(r.u8()?);
        let flags = r.u8()?;
        let message_id = r.u32()?;
        let length = r.u32()?;
        if version >> 4 != 2 {
            return Err(CodecError::BadVersion(version));
        }
        if usize::try_from(length).ok() != Some(buf.len()) {
            return Err(CodecError::LengthMismatch {
                header: length,
                actual: buf.len(),
            });
        }
        Ok(Self {
            spi_i,
            spi_r,
            next_payload,
            exchange,
            flags,
            message_id,
            length,
        })
    }

    /// Whether the R flag is set.
    pub fn is_response(&self) -> bool {
        self.flags & FLAG_RESPONSE != 0
    }

    /// Whether the I flag is set (sender is the original initiator).
    pub fn from_initiator(&self) -> bool {
        self.flags & FLAG_INITIATOR != 0
    }

    /// Serialises the header.
    pub fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.spi_i.to_be_bytes());
        out.extend_from_slice(&self.spi_r.to_be_bytes());
        out.push(self.next_payload);
        out.push(IKE_VERSION);
        out.push(self.exchange.to_u8());
        out.push(self.flags);
        out.extend_from_slice(&self.message_id.to_be_bytes());
        out.extend_from_slice(&self.length.to_be_bytes());
    }
}

// ---------------------------------------------------------------------------
// Payload bodies
// ---------------------------------------------------------------------------

/// A transform attribute (RFC 7296 3.3.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attribute {
    /// Type/value format (AF bit set), e.g. Key Length.
    Tv(u16, u16),
    /// Type/length/value format.
    Tlv(u16, Vec<u8>),
}

/// A transform substructure (RFC 7296 3.3.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transform {
    /// Transform type (ENCR, PRF, INTEG, DH, ESN).
    pub ty: u8,
    /// Transform id within its type.
    pub id: u16,
    /// Attributes.
    pub attributes: Vec<Attribute>,
}

impl Transform {
    /// A transform without attributes.
    pub fn new(ty: u8, id: u16) -> Self {
        Self {
            ty,
            id,
            attributes: Vec::new(),
        }
    }

    /// A transform with a Key Length attribute (bits).
    pub fn with_key_length(ty: u8, id: u16, bits: u16) -> Self {
        Self {
            ty,
            id,
            attributes: vec![Attribute::Tv(transform::ATTR_KEY_LENGTH, bits)],
        }
    }

    /// The Key Length attribute, if exactly one is present and nothing else.
    /// Transforms with unknown attributes must not be selected (RFC 7296
    /// 3.3.6), so anything else is an error.
    pub fn key_length(&self) -> Result<Option<u16>> {
        match self.attributes.as_slice() {
            [] => Ok(None),
            [Attribute::Tv(transform::ATTR_KEY_LENGTH, bits)] => Ok(Some(*bits)),
            _ => Err(CodecError::InvalidValue {
                what: "transform attributes",
                value: u32::from(self.id),
            }),
        }
    }
}

/// A proposal substructure (RFC 7296 3.3.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proposal {
    /// Proposal number (1-based, consecutive).
    pub num: u8,
    /// Protocol id (IKE, AH, ESP).
    pub protocol: u8,
    /// SPI (empty in IKE_SA_INIT, 8 bytes for IKE rekey, 4 bytes for ESP).
    pub spi: Vec<u8>,
    /// Transforms.
    pub transforms: Vec<Transform>,
}

/// Key exchange payload (RFC 7296 3.4).
#[derive(Clone, PartialEq, Eq)]
pub struct KeyExchange {
    /// Diffie-Hellman group number.
    pub group: u16,
    /// Public value.
    pub data: Vec<u8>,
}

impl fmt::Debug for KeyExchange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyExchange")
            .field("group", &self.group)
            .field("len", &self.data.len())
            .finish()
    }
}

/// Identification payload body (RFC 7296 3.5).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    /// ID type.
    pub ty: u8,
    /// ID data.
    pub data: Vec<u8>,
}

impl Identity {
    /// ID_IPV4_ADDR.
    pub fn ipv4(addr: Ipv4Addr) -> Self {
        Self {
            ty: id_type::IPV4_ADDR,
            data: addr.octets().to_vec(),
        }
    }
    /// ID_FQDN.
    pub fn fqdn(name: &str) -> Self {
        Self {
            ty: id_type::FQDN,
            data: name.as_bytes().to_vec(),
        }
    }
    /// ID_KEY_ID.
    pub fn key_id(id: &[u8]) -> Self {
        Self {
            ty: id_type::KEY_ID,
            data: id.to_vec(),
        }
    }
    /// The identity a configuration names in text (the center's
    /// `gateway_ike_id`, gatewayd's `ike_id`), read the same way on every
    /// side: an IPv4 address is ID_IPV4_ADDR, anything else ID_FQDN.
    pub fn from_text(s: &str) -> Self {
        match s.parse::<Ipv4Addr>() {
            Ok(a) => Self::ipv4(a),
            Err(_) => Self::fqdn(s),
        }
    }

    /// For log lines: `ID_FQDN gw1.example`, `ID_IPV4_ADDR 192.0.2.1`,
    /// `ID_KEY_ID 7665…` (hex), `ID type 9 (…)`.
    pub fn describe(&self) -> String {
        let hex = |d: &[u8]| d.iter().map(|b| format!("{b:02x}")).collect::<String>();
        match (self.ty, <[u8; 4]>::try_from(self.data.as_slice())) {
            (id_type::IPV4_ADDR, Ok(o)) => format!("ID_IPV4_ADDR {}", Ipv4Addr::from(o)),
            (id_type::FQDN, _) => format!("ID_FQDN {}", String::from_utf8_lossy(&self.data).escape_debug()),
            (id_type::KEY_ID, _) => format!("ID_KEY_ID {}", hex(&self.data)),
            (t, _) => format!("ID type {t} ({})", hex(&self.data)),
        }
    }

    /// The body as used for the MACedID in AUTH computation:
    /// IDType | RESERVED | data (RFC 7296 2.15).
    pub fn body_bytes(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.data.len().saturating_add(4));
        v.push(self.ty);
        v.extend_from_slice(&[0, 0, 0]);
        v.extend_from_slice(&self.data);
        v
    }
}

/// Authentication payload (RFC 7296 3.8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Auth {
    /// Authentication method.
    pub method: u8,
    /// Authentication data.
    pub data: Vec<u8>,
}

/// Notify payload (RFC 7296 3.10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notify {
    /// Protocol id (0 when not about a specific SA).
    pub protocol: u8,
    /// SPI (empty when not about a specific SA).
    pub spi: Vec<u8>,
    /// Notify message type.
    pub ty: u16,
    /// Notification data.
    pub data: Vec<u8>,
}

impl Notify {
    /// A notify not bound to any SA.
    pub fn new(ty: u16, data: Vec<u8>) -> Self {
        Self {
            protocol: 0,
            spi: Vec::new(),
            ty,
            data,
        }
    }
}

/// Delete payload (RFC 7296 3.11).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delete {
    /// Protocol (IKE or ESP).
    pub protocol: u8,
    /// SPI size (0 for IKE, 4 for ESP).
    pub spi_size: u8,
    /// SPIs to delete.
    pub spis: Vec<Vec<u8>>,
}

/// An IPv4 range traffic selector (RFC 7296 3.13.1, TS_IPV4_ADDR_RANGE).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TrafficSelector {
    /// IP protocol (0 = any).
    pub ip_proto: u8,
    /// First port.
    pub start_port: u16,
    /// Last port.
    pub end_port: u16,
    /// First address.
    pub start: Ipv4Addr,
    /// Last address.
    pub end: Ipv4Addr,
}

impl TrafficSelector {
    /// All protocols and ports between two addresses.
    pub fn range(start: Ipv4Addr, end: Ipv4Addr) -> Self {
        Self {
            ip_proto: 0,
            start_port: 0,
            end_port: 0xffff,
            start,
            end,
        }
    }

    /// A single host, all protocols and ports.
    pub fn host(addr: Ipv4Addr) -> Self {
        Self::range(addr, addr)
    }

    /// A prefix `addr/len`, all protocols and ports. `len` above 32 is
    /// treated as 32.
    pub fn subnet(addr: Ipv4Addr, len: u8) -> Self {
        let len = u32::from(len.min(32));
        let mask = u32::MAX.checked_shl(32u32.saturating_sub(len)).unwrap_or(0);
        let a = u32::from(addr);
        Self::range(Ipv4Addr::from(a & mask), Ipv4Addr::from(a | !mask))
    }

    /// The intersection of two selectors, if not empty (used for narrowing,
    /// RFC 7296 2.9).
    pub fn intersect(&self, other: &Self) -> Option<Self> {
        let ip_proto = match (self.ip_proto, other.ip_proto) {
            (0, p) | (p, 0) => p,
            (a, b) if a == b => a,
            _ => return None,
        };
        let start_port = self.start_port.max(other.start_port);
        let end_port = self.end_port.min(other.end_port);
        let start = self.start.max(other.start);
        let end = self.end.min(other.end);
        if start_port > end_port || start > end {
            return None;
        }
        Some(Self {
            ip_proto,
            start_port,
            end_port,
            start,
            end,
        })
    }

    /// Whether `self` is entirely inside `other`.
    pub fn is_subset_of(&self, other: &Self) -> bool {
        self.intersect(other) == Some(*self)
    }
}

/// The still-encrypted SK payload (RFC 7296 3.14, RFC 5282).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkPayload {
    /// Type of the first payload inside.
    pub first_inner: u8,
    /// IV || ciphertext || ICV.
    pub body: Vec<u8>,
}

/// One decoded payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// Security Association.
    Sa(Vec<Proposal>),
    /// Key Exchange.
    Ke(KeyExchange),
    /// Identification - Initiator.
    IdI(Identity),
    /// Identification - Responder.
    IdR(Identity),
    /// Authentication.
    Auth(Auth),
    /// Nonce.
    Nonce(Vec<u8>),
    /// Notify.
    Notify(Notify),
    /// Delete.
    Delete(Delete),
    /// Traffic selectors - initiator.
    TsI(Vec<TrafficSelector>),
    /// Traffic selectors - responder.
    TsR(Vec<TrafficSelector>),
    /// Encrypted payload (only ever the last of a chain).
    Sk(SkPayload),
    /// A non-critical payload we do not interpret (vendor id, CERTREQ, ...).
    Unknown {
        /// Payload type.
        ty: u8,
        /// Body.
        data: Vec<u8>,
    },
}

impl Payload {
    /// The payload type number.
    pub fn type_code(&self) -> u8 {
        use payload_type as t;
        match self {
            Self::Sa(_) => t::SA,
            Self::Ke(_) => t::KE,
            Self::IdI(_) => t::IDI,
            Self::IdR(_) => t::IDR,
            Self::Auth(_) => t::AUTH,
            Self::Nonce(_) => t::NONCE,
            Self::Notify(_) => t::NOTIFY,
            Self::Delete(_) => t::DELETE,
            Self::TsI(_) => t::TSI,
            Self::TsR(_) => t::TSR,
            Self::Sk(_) => t::SK,
            Self::Unknown { ty, .. } => *ty,
        }
    }
}

// ---------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------

fn parse_attributes(mut r: Reader<'_>) -> Result<Vec<Attribute>> {
    let mut out = Vec::new();
    while !r.is_empty() {
        let ty = r.u16()?;
        if ty & 0x8000 != 0 {
            out.push(Attribute::Tv(ty & 0x7fff, r.u16()?));
        } else {
            let len = usize::from(r.u16()?);
            out.push(Attribute::Tlv(ty, r.take(len)?.to_vec()));
        }
    }
    Ok(out)
}

fn parse_transform(r: &mut Reader<'_>) -> Result<(u8, Transform)> {
    let last = r.u8()?;
    let _reserved = r.u8()?;
    let len = usize::from(r.u16()?);
    let body_len = len
        .checked_sub(4)
        .filter(|l| *l >= 4)
        .ok_or(CodecError::BadLength { what: "transform", len })?;
    let mut body = Reader::new(r.take(body_len)?, "transform");
    let ty = body.u8()?;
    let _reserved = body.u8()?;
    let id = body.u16()?;
    let attributes = parse_attributes(Reader::new(body.rest(), "transform attribute"))?;
    Ok((last, Transform { ty, id, attributes }))
}

fn parse_proposal(r: &mut Reader<'_>) -> Result<(u8, Proposal)> {
    let last = r.u8()?;
    let _reserved = r.u8()?;
    let len = usize::from(r.u16()?);
    let body_len = len
        .checked_sub(4)
        .filter(|l| *l >= 4)
        .ok_or(CodecError::BadLength { what: "proposal", len })?;
    let mut body = Reader::new(r.take(body_len)?, "proposal");
    let num = body.u8()?;
    let protocol = body.u8()?;
    let spi_size = usize::from(body.u8()?);
    let n_transforms = body.u8()?;
    let spi = body.take(spi_size)?.to_vec();
    let mut transforms = Vec::with_capacity(usize::from(n_transforms));
    for i in 0..n_transforms {
        let (t_last, t) = parse_transform(&mut body)?;
        let expect_last = i.checked_add(1) == Some(n_transforms);
        if t_last != if expect_last { 0 } else { 3 } {
            return Err(CodecError::InvalidValue {
                what: "transform last-substructure",
                value: u32::from(t_last),
            });
        }
        transforms.push(t);
    }
    if !body.is_empty() {
        return Err(CodecError::TrailingBytes(body.remaining()));
    }
    Ok((
        last,
        Proposal {
            num,
            protocol,
            spi,
            transforms,
        },
    ))
}

fn parse_sa(body: &[u8]) -> Result<Vec<Proposal>> {
    let mut r = Reader::new(body, "SA payload");
    let mut out = Vec::new();
    loop {
        let (last, p) = parse_proposal(&mut r)?;
        out.push(p);
        match last {
            0 => break,
            2 => continue,
            v => {
                return Err(CodecError::InvalidValue {
                    what: "proposal last-substructure",
                    value: u32::from(v),
                })
            }
        }
    }
    if !r.is_empty() {
        return Err(CodecError::TrailingBytes(r.remaining()));
    }
    Ok(out)
}

/// Parses a TS payload. Selectors of other types than IPv4 ranges (IPv6,
/// security labels) are skipped rather than refused, so that a dual-stack
/// peer can still be narrowed to the IPv4 part; the result may be empty,
/// which the state machines answer with TS_UNACCEPTABLE.
fn parse_ts(body: &[u8]) -> Result<Vec<TrafficSelector>> {
    let mut r = Reader::new(body, "TS payload");
    let n = r.u8()?;
    let _reserved = r.take(3)?;
    if n == 0 {
        return Err(CodecError::InvalidValue {
            what: "number of traffic selectors",
            value: 0,
        });
    }
    let mut out = Vec::with_capacity(usize::from(n));
    for _ in 0..n {
        let ty = r.u8()?;
        let ip_proto = r.u8()?;
        let len = usize::from(r.u16()?);
        if ty != TS_IPV4_ADDR_RANGE {
            let rest = len.checked_sub(4).ok_or(CodecError::BadLength {
                what: "traffic selector",
                len,
            })?;
            r.take(rest)?;
            continue;
        }
        if len != 16 {
            return Err(CodecError::BadLength {
                what: "traffic selector",
                len,
            });
        }
        let start_port = r.u16()?;
        let end_port = r.u16()?;
        let start = Ipv4Addr::from(r.array::<4>()?);
        let end = Ipv4Addr::from(r.array::<4>()?);
        out.push(TrafficSelector {
            ip_proto,
            start_port,
            end_port,
            start,
            end,
        });
    }
    if !r.is_empty() {
        return Err(CodecError::TrailingBytes(r.remaining()));
    }
    Ok(out)
}

fn parse_body(ty: u8, body: &[u8]) -> Result<Payload> {
    use payload_type as t;
    let mut r = Reader::new(body, "payload body");
    Ok(match ty {
        t::SA => Payload::Sa(parse_sa(body)?),
        t::KE => {
            let group = r.u16()?;
            let _reserved = r.u16()?;
            Payload::Ke(KeyExchange {
                group,
                data: r.rest().to_vec(),
            })
        }
        t::IDI | t::IDR => {
            let id_ty = r.u8()?;
            let _reserved = r.take(3)?;
            let id = Identity {
                ty: id_ty,
                data: r.rest().to_vec(),
            };
            if ty == t::IDI {
                Payload::IdI(id)
            } else {
                Payload::IdR(id)
            }
        }
        t::AUTH => {
            let method = r.u8()?;
            let _reserved = r.take(3)?;
            Payload::Auth(Auth {
                method,
                data: r.rest().to_vec(),
            })
        }
        t::NONCE => {
            // RFC 7296 3.9: nonces are 16..=256 bytes.
            if !(16..=256).contains(&body.len()) {
                return Err(CodecError::BadLength {
                    what: "nonce",
                    len: body.len(),
                });
            }
            Payload::Nonce(body.to_vec())
        }
        t::NOTIFY => {
            let protocol = r.u8()?;
            let spi_size = usize::from(r.u8()?);
            let nty = r.u16()?;
            let spi = r.take(spi_size)?.to_vec();
            Payload::Notify(Notify {
                protocol,
                spi,
                ty: nty,
                data: r.rest().to_vec(),
            })
        }
        t::DELETE => {
            let protocol = r.u8()?;
            let spi_size = r.u8()?;
            let n = r.u16()?;
            let mut spis = Vec::new();
            for _ in 0..n {
                spis.push(r.take(usize::from(spi_size))?.to_vec());
            }
            if !r.is_empty() {
                return Err(CodecError::TrailingBytes(r.remaining()));
            }
            Payload::Delete(Delete {
                protocol,
                spi_size,
                spis,
            })
        }
        t::TSI => Payload::TsI(parse_ts(body)?),
        t::TSR => Payload::TsR(parse_ts(body)?),
        other => Payload::Unknown {
            ty: other,
            data: body.to_vec(),
        },
    })
}

fn is_known(ty: u8) -> bool {
    use payload_type as t;
    matches!(ty, t::SA..=t::EAP)
}

/// Parses a payload chain starting with payload type `first`.
///
/// If an SK payload is met it must be the last one; it is returned
/// undecrypted as the final element. `allow_sk` is false for chains that
/// came out of an SK payload.
pub fn parse_payloads(first: u8, buf: &[u8], allow_sk: bool) -> Result<Vec<Payload>> {
    let mut r = Reader::new(buf, "payload chain");
    let mut next = first;
    let mut out = Vec::new();
    while next != payload_type::NONE {
        let ty = next;
        next = r.u8()?;
        let critical = r.u8()? & 0x80 != 0;
        let len = usize::from(r.u16()?);
        let body_len = len.checked_sub(GENERIC_HEADER_LEN).ok_or(CodecError::BadLength {
            what: "generic payload header",
            len,
        })?;
        let body = r.take(body_len)?;
        if ty == payload_type::SK {
            if !allow_sk {
                return Err(CodecError::NestedSk);
            }
            if !r.is_empty() {
                return Err(CodecError::SkNotLast);
            }
            out.push(Payload::Sk(SkPayload {
                first_inner: next,
                body: body.to_vec(),
            }));
            return Ok(out);
        }
        if !is_known(ty) && critical {
            return Err(CodecError::UnsupportedCritical(ty));
        }
        out.push(parse_body(ty, body)?);
    }
    if !r.is_empty() {
        return Err(CodecError::TrailingBytes(r.remaining()));
    }
    Ok(out)
}

/// A parsed (outer) IKE message. An SK payload, if any, is still encrypted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The header.
    pub header: Header,
    /// The outer payloads.
    pub payloads: Vec<Payload>,
}

impl Message {
    /// Parses one complete IKE message (no non-ESP marker).
    pub fn parse(buf: &[u8]) -> Result<Self> {
        let header = Header::parse(buf)?;
        let body = buf.get(HEADER_LEN..).ok_or(CodecError::Truncated {
            what: "IKE header",
            need: HEADER_LEN,
            have: buf.len(),
        })?;
        let payloads = parse_payloads(header.next_payload, body, true)?;
        Ok(Self { header, payloads })
    }

    /// The SK payload, if the message has one.
    pub fn sk(&self) -> Option<&SkPayload> {
        match self.payloads.last() {
            Some(Payload::Sk(sk)) => Some(sk),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------

fn write_transform(out: &mut Vec<u8>, t: &Transform, last: bool) -> Result<()> {
    let mut attrs = Vec::new();
    for a in &t.attributes {
        match a {
            Attribute::Tv(ty, v) => {
                attrs.extend_from_slice(&(ty | 0x8000).to_be_bytes());
                attrs.extend_from_slice(&v.to_be_bytes());
            }
            Attribute::Tlv(ty, v) => {
                attrs.extend_from_slice(&(ty & 0x7fff).to_be_bytes());
                attrs.extend_from_slice(&u16_len("attribute", v.len())?.to_be_bytes());
                attrs.extend_from_slice(v);
            }
        }
    }
    out.push(if last { 0 } else { 3 });
    out.push(0);
    out.extend_from_slice(&u16_len("transform", add("transform", attrs.len(), 8)?)?.to_be_bytes());
    out.push(t.ty);
    out.push(0);
    out.extend_from_slice(&t.id.to_be_bytes());
    out.extend_from_slice(&attrs);
    Ok(())
}

fn write_sa(out: &mut Vec<u8>, proposals: &[Proposal]) -> Result<()> {
    let count = proposals.len();
    for (i, p) in proposals.iter().enumerate() {
        let mut body = Vec::new();
        let tcount = p.transforms.len();
        for (j, t) in p.transforms.iter().enumerate() {
            write_transform(&mut body, t, j.checked_add(1) == Some(tcount))?;
        }
        let spi_len = u8::try_from(p.spi.len()).map_err(|_| CodecError::TooLarge {
            what: "proposal SPI",
            len: p.spi.len(),
        })?;
        let n_t = u8::try_from(tcount).map_err(|_| CodecError::TooLarge {
            what: "transform count",
            len: tcount,
        })?;
        let len = add("proposal", add("proposal", body.len(), p.spi.len())?, 8)?;
        out.push(if i.checked_add(1) == Some(count) { 0 } else { 2 });
        out.push(0);
        out.extend_from_slice(&u16_len("proposal", len)?.to_be_bytes());
        out.push(p.num);
        out.push(p.protocol);
        out.push(spi_len);
        out.push(n_t);
        out.extend_from_slice(&p.spi);
        out.extend_from_slice(&body);
    }
    Ok(())
}

fn write_ts(out: &mut Vec<u8>, ts: &[TrafficSelector]) -> Result<()> {
    if ts.is_empty() {
        return Err(CodecError::InvalidValue {
            what: "number of traffic selectors",
            value: 0,
        });
    }
    out.push(u8::try_from(ts.len()).map_err(|_| CodecError::TooLarge {
        what: "traffic selector count",
        len: ts.len(),
    })?);
    out.extend_from_slice(&[0, 0, 0]);
    for t in ts {
        out.push(TS_IPV4_ADDR_RANGE);
        out.push(t.ip_proto);
        out.extend_from_slice(&16u16.to_be_bytes());
        out.extend_from_slice(&t.start_port.to_be_bytes());
        out.extend_from_slice(&t.end_port.to_be_bytes());
        out.extend_from_slice(&t.start.octets());
        out.extend_from_slice(&t.end.octets());
    }
    Ok(())
}

/// Serialises a payload body (without generic header).
fn write_body(out: &mut Vec<u8>, p: &Payload) -> Result<()> {
    match p {
        Payload::Sa(props) => write_sa(out, props)?,
        Payload::Ke(ke) => {
            out.extend_from_slice(&ke.group.to_be_bytes());
            out.extend_from_slice(&[0, 0]);
            out.extend_from_slice(&ke.data);
        }
        Payload::IdI(id) | Payload::IdR(id) => out.extend_from_slice(&id.body_bytes()),
        Payload::Auth(a) => {
            out.push(a.method);
            out.extend_from_slice(&[0, 0, 0]);
            out.extend_from_slice(&a.data);
        }
        Payload::Nonce(n) => out.extend_from_slice(n),
        Payload::Notify(n) => {
            out.push(n.protocol);
            out.push(u8::try_from(n.spi.len()).map_err(|_| CodecError::TooLarge {
                what: "notify SPI",
                len: n.spi.len(),
            })?);
            out.extend_from_slice(&n.ty.to_be_bytes());
            out.extend_from_slice(&n.spi);
            out.extend_from_slice(&n.data);
        }
        Payload::Delete(d) => {
            out.push(d.protocol);
            out.push(d.spi_size);
            out.extend_from_slice(&u16_len("delete SPI count", d.spis.len())?.to_be_bytes());
            for s in &d.spis {
                if s.len() != usize::from(d.spi_size) {
                    return Err(CodecError::BadLength {
                        what: "delete SPI",
                        len: s.len(),
                    });
                }
                out.extend_from_slice(s);
            }
        }
        Payload::TsI(ts) | Payload::TsR(ts) => write_ts(out, ts)?,
        Payload::Sk(sk) => out.extend_from_slice(&sk.body),
        Payload::Unknown { data, .. } => out.extend_from_slice(data),
    }
    Ok(())
}

/// Serialises a payload chain. Returns the type of the first payload and the
/// bytes. An SK payload in the chain is written with its own `first_inner`
/// as next-payload and must be last.
pub fn encode_payloads(payloads: &[Payload]) -> Result<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    let mut iter = payloads.iter().peekable();
    while let Some(p) = iter.next() {
        let next = match (p, iter.peek()) {
            (Payload::Sk(sk), None) => sk.first_inner,
            (Payload::Sk(_), Some(_)) => return Err(CodecError::SkNotLast),
            (_, Some(n)) => n.type_code(),
            (_, None) => payload_type::NONE,
        };
        let mut body = Vec::new();
        write_body(&mut body, p)?;
        out.push(next);
        out.push(0);
        let len = add("payload", body.len(), GENERIC_HEADER_LEN)?;
        out.extend_from_slice(&u16_len("payload", len)?.to_be_bytes());
        out.extend_from_slice(&body);
    }
    let first = payloads.first().map_or(payload_type::NONE, Payload::type_code);
    Ok((first, out))
}

/// Serialises a whole message; the header's `next_payload` and `length`
/// are filled in from the payloads.
pub fn encode_message(header: &Header, payloads: &[Payload]) -> Result<Vec<u8>> {
    let (first, body) = encode_payloads(payloads)?;
    let total = add("message", body.len(), HEADER_LEN)?;
    if total > MAX_MESSAGE_LEN {
        return Err(CodecError::TooLarge {
            what: "message",
            len: total,
        });
    }
    let mut h = *header;
    h.next_payload = first;
    h.length = u32::try_from(total).map_err(|_| CodecError::TooLarge {
        what: "message",
        len: total,
    })?;
    let mut out = Vec::with_capacity(total);
    h.write(&mut out);
    out.extend_from_slice(&body);
    Ok(out)
}

#[cfg(test)]
mod tests {

    #[test]
    fn identities_from_configuration_text() {
        assert_eq!(
            Identity::from_text("198.51.100.21"),
            Identity::ipv4(Ipv4Addr::new(198, 51, 100, 21))
        );
        assert_eq!(
            Identity::from_text("gw1.center.example"),
            Identity::fqdn("gw1.center.example")
        );
        assert_eq!(
            Identity::from_text("gw1.center.example").describe(),
            "ID_FQDN gw1.center.example"
        );
        assert_eq!(Identity::from_text("192.0.2.1").describe(), "ID_IPV4_ADDR 192.0.2.1");
        assert_eq!(Identity::key_id(b"ab").describe(), "ID_KEY_ID 6162");
    }
    use super::*;

    fn hdr(ex: ExchangeType, flags: u8, mid: u32) -> Header {
        Header {
            spi_i: 0x0102_0304_0506_0708,
            spi_r: 0,
            next_payload: 0,
            exchange: ex,
            flags,
            message_id: mid,
            length: 0,
        }
    }

    fn sample_init() -> Vec<Payload> {
        vec![
            Payload::Sa(vec![Proposal {
                num: 1,
                protocol: protocol_id::IKE,
                spi: vec![],
                transforms: vec![
                    Transform::with_key_length(transform::TYPE_ENCR, transform::ENCR_AES_GCM_16, 256),
                    Transform::new(transform::TYPE_PRF, transform::PRF_HMAC_SHA2_256),
                    Transform::new(transform::TYPE_DH, transform::DH_CURVE25519),
                ],
            }]),
            Payload::Ke(KeyExchange {
                group: 31,
                data: vec![0xaa; 32],
            }),
            Payload::Nonce(vec![0x11; 32]),
            Payload::Notify(Notify::new(notify_type::NAT_DETECTION_SOURCE_IP, vec![0x22; 20])),
        ]
    }

    /// The IKE_SA_INIT request above, laid out by hand from RFC 7296
    /// sections 3.1-3.10.
    #[test]
    fn golden_ike_sa_init() {
        let bytes = encode_message(&hdr(ExchangeType::IkeSaInit, FLAG_INITIATOR, 0), &sample_init()).unwrap();
        let mut g: Vec<u8> = Vec::new();
        // header
        g.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 0, 0, 0, 0, 0]);
        g.extend_from_slice(&[33, 0x20, 34, 0x08, 0, 0, 0, 0]);
        let total: u32 = 28 + 40 + 40 + 36 + 28;
        g.extend_from_slice(&total.to_be_bytes());
        // SA: generic header, next = KE, len = 4 + 36
        g.extend_from_slice(&[34, 0, 0, 40]);
        // proposal: last, res, len 36, num 1, proto IKE, spi size 0, 3 transforms
        g.extend_from_slice(&[0, 0, 0, 36, 1, 1, 0, 3]);
        // ENCR AES-GCM-16 with key length 256 (attribute 0x800e 0x0100)
        g.extend_from_slice(&[3, 0, 0, 12, 1, 0, 0, 20, 0x80, 0x0e, 0x01, 0x00]);
        g.extend_from_slice(&[3, 0, 0, 8, 2, 0, 0, 5]);
        g.extend_from_slice(&[0, 0, 0, 8, 4, 0, 0, 31]);
        // KE: next = Nonce, len 4+4+32
        g.extend_from_slice(&[40, 0, 0, 40, 0, 31, 0, 0]);
        g.extend_from_slice(&[0xaa; 32]);
        // Nonce: next = N, len 36
        g.extend_from_slice(&[41, 0, 0, 36]);
        g.extend_from_slice(&[0x11; 32]);
        // Notify: next none, len 4+4+20, proto 0, spi size 0, type 16388
        g.extend_from_slice(&[0, 0, 0, 28, 0, 0, 0x40, 0x04]);
        g.extend_from_slice(&[0x22; 20]);
        assert_eq!(hex::encode(&bytes), hex::encode(&g));

        let m = Message::parse(&bytes).unwrap();
        assert_eq!(m.payloads, sample_init());
        assert_eq!(m.header.exchange, ExchangeType::IkeSaInit);
        assert!(m.header.from_initiator());
        assert!(!m.header.is_response());
    }

    #[test]
    fn round_trip_all_payloads() {
        let payloads = vec![
            Payload::IdI(Identity::fqdn("gw.example")),
            Payload::IdR(Identity::ipv4(Ipv4Addr::new(192, 0, 2, 1))),
            Payload::IdR(Identity::key_id(b"router-17")),
            Payload::Auth(Auth {
                method: AUTH_METHOD_PSK,
                data: vec![7; 32],
            }),
            Payload::Sa(vec![
                Proposal {
                    num: 1,
                    protocol: protocol_id::ESP,
                    spi: vec![1, 2, 3, 4],
                    transforms: vec![
                        Transform::with_key_length(1, 20, 128),
                        Transform::new(transform::TYPE_ESN, 0),
                    ],
                },
                Proposal {
                    num: 2,
                    protocol: protocol_id::ESP,
                    spi: vec![1, 2, 3, 4],
                    transforms: vec![Transform {
                        ty: 1,
                        id: 20,
                        attributes: vec![Attribute::Tlv(99, vec![1, 2, 3])],
                    }],
                },
            ]),
            Payload::Notify(Notify {
                protocol: protocol_id::ESP,
                spi: vec![9, 9, 9, 9],
                ty: notify_type::REKEY_SA,
                data: vec![],
            }),
            Payload::Notify(Notify::new(notify_type::COOKIE, vec![1; 20])),
            Payload::Notify(Notify::new(notify_type::INVALID_KE_PAYLOAD, vec![0, 19])),
            Payload::Notify(Notify::new(notify_type::AUTHENTICATION_FAILED, vec![])),
            Payload::Notify(Notify::new(notify_type::NO_PROPOSAL_CHOSEN, vec![])),
            Payload::Notify(Notify::new(notify_type::TS_UNACCEPTABLE, vec![])),
            Payload::Notify(Notify::new(notify_type::NAT_DETECTION_DESTINATION_IP, vec![3; 20])),
            Payload::Delete(Delete {
                protocol: protocol_id::ESP,
                spi_size: 4,
                spis: vec![vec![1, 2, 3, 4], vec![5, 6, 7, 8]],
            }),
            Payload::Delete(Delete {
                protocol: protocol_id::IKE,
                spi_size: 0,
                spis: vec![],
            }),
            Payload::TsI(vec![TrafficSelector::subnet(Ipv4Addr::new(10, 1, 0, 0), 16)]),
            Payload::TsR(vec![
                TrafficSelector::host(Ipv4Addr::new(100, 64, 0, 5)),
                TrafficSelector::host(Ipv4Addr::new(100, 64, 0, 6)),
            ]),
            Payload::Unknown {
                ty: payload_type::VENDOR,
                data: b"vpnnat".to_vec(),
            },
            Payload::Ke(KeyExchange {
                group: 19,
                data: vec![4; 64],
            }),
            Payload::Nonce(vec![5; 16]),
        ];
        let bytes = encode_message(&hdr(ExchangeType::IkeAuth, FLAG_RESPONSE, 1), &payloads).unwrap();
        let m = Message::parse(&bytes).unwrap();
        assert_eq!(m.payloads, payloads);
        assert_eq!(m.header.message_id, 1);
        assert_eq!(m.header.length as usize, bytes.len());
    }

    #[test]
    fn golden_ts_and_delete() {
        let (first, b) = encode_payloads(&[
            Payload::TsI(vec![TrafficSelector::subnet(Ipv4Addr::new(10, 0, 0, 0), 8)]),
            Payload::Delete(Delete {
                protocol: 3,
                spi_size: 4,
                spis: vec![vec![0xde, 0xad, 0xbe, 0xef]],
            }),
        ])
        .unwrap();
        assert_eq!(first, payload_type::TSI);
        let expected = "2a000018010000000700001000 00ffff0a0000000affffff000000 0c03040001deadbeef".replace(' ', "");
        assert_eq!(hex::encode(b), expected);
    }

    #[test]
    fn sk_must_be_last_and_not_nested() {
        let sk = Payload::Sk(SkPayload {
            first_inner: payload_type::IDI,
            body: vec![0; 24],
        });
        let bytes = encode_message(&hdr(ExchangeType::IkeAuth, 0, 1), std::slice::from_ref(&sk)).unwrap();
        let m = Message::parse(&bytes).unwrap();
        assert_eq!(m.sk().unwrap().first_inner, payload_type::IDI);
        assert_eq!(
            encode_payloads(&[sk.clone(), Payload::Nonce(vec![0; 16])]),
            Err(CodecError::SkNotLast)
        );
        let (first, chain) = encode_payloads(&[sk]).unwrap();
        assert_eq!(parse_payloads(first, &chain, false), Err(CodecError::NestedSk));
    }

    #[test]
    fn typed_errors() {
        let good = encode_message(&hdr(ExchangeType::IkeSaInit, 8, 0), &sample_init()).unwrap();
        // truncated at every position: never panics, always an error
        for n in 0..good.len() {
            assert!(Message::parse(&good[..n]).is_err());
        }
        let mut bad = good.clone();
        bad[17] = 0x10;
        assert_eq!(Message::parse(&bad), Err(CodecError::BadVersion(0x10)));
        let mut bad = good.clone();
        bad.push(0);
        assert!(matches!(Message::parse(&bad), Err(CodecError::LengthMismatch { .. })));
        // unknown critical payload
        let mut crit = Vec::new();
        hdr(ExchangeType::Informational, 0, 0).write(&mut crit);
        crit[16] = 200;
        crit.extend_from_slice(&[0, 0x80, 0, 4]);
        let len = crit.len() as u32;
        crit[24..28].copy_from_slice(&len.to_be_bytes());
        assert_eq!(Message::parse(&crit), Err(CodecError::UnsupportedCritical(200)));
        // same but non-critical is kept
        crit[29] = 0;
        assert!(Message::parse(&crit).is_ok());
        // short nonce
        let (f, b) = encode_payloads(&[Payload::Nonce(vec![0; 8])]).unwrap();
        assert!(matches!(
            parse_payloads(f, &b, true),
            Err(CodecError::BadLength { what: "nonce", .. })
        ));
    }

    #[test]
    fn non_ipv4_selectors_are_skipped() {
        let mut body = vec![2, 0, 0, 0];
        // TS_IPV6_ADDR_RANGE ::/0
        body.extend_from_slice(&[8, 0, 0, 40, 0, 0, 0xff, 0xff]);
        body.extend_from_slice(&[0; 16]);
        body.extend_from_slice(&[0xff; 16]);
        // TS_IPV4_ADDR_RANGE 10.0.0.0-10.0.0.255
        body.extend_from_slice(&[7, 6, 0, 16, 0, 22, 0, 22, 10, 0, 0, 0, 10, 0, 0, 255]);
        let mut chain = vec![0, 0];
        chain.extend_from_slice(&u16::try_from(body.len() + 4).unwrap().to_be_bytes());
        chain.extend_from_slice(&body);
        let p = parse_payloads(payload_type::TSI, &chain, false).unwrap();
        assert_eq!(
            p,
            vec![Payload::TsI(vec![TrafficSelector {
                ip_proto: 6,
                start_port: 22,
                end_port: 22,
                start: Ipv4Addr::new(10, 0, 0, 0),
                end: Ipv4Addr::new(10, 0, 0, 255),
            }])]
        );
        // only IPv6: an empty list, which cannot be encoded back
        let mut v6 = vec![1, 0, 0, 0, 8, 0, 0, 40];
        v6.extend_from_slice(&[0; 36]);
        let mut chain = vec![0, 0];
        chain.extend_from_slice(&u16::try_from(v6.len() + 4).unwrap().to_be_bytes());
        chain.extend_from_slice(&v6);
        let p = parse_payloads(payload_type::TSR, &chain, false).unwrap();
        assert_eq!(p, vec![Payload::TsR(vec![])]);
        assert!(encode_payloads(&p).is_err());
        // zero selectors is malformed
        let chain = [0, 0, 0, 8, 0, 0, 0, 0];
        assert!(parse_payloads(payload_type::TSR, &chain, false).is_err());
    }

    #[test]
    fn ts_narrowing_helpers() {
        let net = TrafficSelector::subnet(Ipv4Addr::new(10, 1, 2, 3), 24);
        assert_eq!(net.start, Ipv4Addr::new(10, 1, 2, 0));
        assert_eq!(net.end, Ipv4Addr::new(10, 1, 2, 255));
        let h = TrafficSelector::host(Ipv4Addr::new(10, 1, 2, 9));
        assert!(h.is_subset_of(&net));
        assert_eq!(net.intersect(&h), Some(h));
        assert_eq!(
            TrafficSelector::subnet(Ipv4Addr::new(0, 0, 0, 0), 0).end,
            Ipv4Addr::BROADCAST
        );
        assert!(h
            .intersect(&TrafficSelector::host(Ipv4Addr::new(10, 1, 2, 10)))
            .is_none());
    }
}
