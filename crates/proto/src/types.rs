//! Validated values carried by the messages.
//!
//! Every type here can only be built through a constructor that checks it,
//! and deserializes through that same constructor, so a value that exists is
//! a valid value: a message that parses is a message whose fields are sane.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;
use std::hash::Hash;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

/// A value failed validation.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("invalid {what}: {reason}")]
pub struct ValidationError {
    /// Which kind of value (e.g. "terminal ID").
    pub what: &'static str,
    /// Why it was refused; never echoes the value itself.
    pub reason: Cow<'static, str>,
}

impl ValidationError {
    pub(crate) fn new(what: &'static str, reason: impl Into<Cow<'static, str>>) -> Self {
        ValidationError {
            what,
            reason: reason.into(),
        }
    }
}

/// A value type's human name, for error messages about lists of it.
pub trait Named {
    const WHAT: &'static str;
}

macro_rules! validated_string {
    ($(#[$doc:meta])* $name:ident, $what:literal, $check:path) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// Checks `s` and wraps it.
            pub fn new(s: impl Into<String>) -> Result<Self, ValidationError> {
                let s = s.into();
                $check(&s).map_err(|reason| ValidationError::new($what, reason))?;
                Ok(Self(s))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl Named for $name {
            const WHAT: &'static str = $what;
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = ValidationError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::new(s)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::new(s).map_err(serde::de::Error::custom)
            }
        }
    };
}

/// Identifier-like strings: 1..=max ASCII letters, digits, '.', '_' or '-',
/// starting with a letter or digit. Safe in file names, SQL, logs and as an
/// IKE or nftables label without quoting.
fn check_ident(s: &str, max: usize) -> Result<(), &'static str> {
    if s.is_empty() {
        return Err("empty");
    }
    if s.len() > max {
        return Err("too long");
    }
    if !s.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err("must start with a letter or digit");
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err("only letters, digits, '.', '_' and '-' are allowed");
    }
    Ok(())
}

/// Maximum length of a terminal ID or gateway name, in bytes.
pub const MAX_ID_LEN: usize = 64;
/// Maximum length of an extension terminal name (a DNS label's limit).
pub const MAX_TERMINAL_NAME_LEN: usize = 63;
/// The extension terminal name of the router's own server part (its HTTP
/// server for the LAN page and the center's commands). PROTOCOL.md counts
/// the router's server part and router part as extension terminals too
/// ([0078]): a maintenance request may name them like a LAN host, and then
/// reuses the VPNNAT address the installation granted; judgment 2 of the
/// end never releases it. Router and center must spell it alike, hence here.
pub const SERVER_PART_NAME: &str = "server-part";
/// The extension terminal name of the router's own router part (its router
/// section: IPsec processing and VPNNAT); see [`SERVER_PART_NAME`].
pub const ROUTER_PART_NAME: &str = "router-part";

/// Whether `name` names one of the router's own parts (judgment 2).
/// Exact spelling: any other name is an ordinary LAN host's.
pub fn is_router_own_part(name: &str) -> bool {
    name == SERVER_PART_NAME || name == ROUTER_PART_NAME
}

/// Maximum number of extension terminals in one maintenance request.
pub const MAX_TERMINAL_NAMES: usize = 16;
/// Maximum length of a claimant name, in characters.
pub const MAX_CLAIMANT_NAME_CHARS: usize = 128;
/// Maximum length of a maintenance request's content, in characters.
pub const MAX_CONTENT_CHARS: usize = 4096;
/// Maximum length of a failure detail, in characters.
pub const MAX_DETAIL_CHARS: usize = 1024;

fn check_id(s: &str) -> Result<(), &'static str> {
    check_ident(s, MAX_ID_LEN)
}

fn check_terminal_name(s: &str) -> Result<(), &'static str> {
    check_ident(s, MAX_TERMINAL_NAME_LEN)
}

/// Free text: bounded in characters; no control characters except (when
/// `multiline`) newline, carriage return and tab.
fn check_text(s: &str, min: usize, max: usize, multiline: bool) -> Result<(), &'static str> {
    let n = s.chars().count();
    if n < min {
        return Err("empty");
    }
    if n > max {
        return Err("too long");
    }
    let bad = |c: char| {
        if multiline && matches!(c, '\n' | '\r' | '\t') {
            false
        } else {
            c.is_control()
        }
    };
    if s.chars().any(bad) {
        return Err("contains control characters");
    }
    Ok(())
}

fn check_claimant_name(s: &str) -> Result<(), &'static str> {
    check_text(s, 1, MAX_CLAIMANT_NAME_CHARS, false)?;
    if s.trim().is_empty() {
        return Err("blank");
    }
    Ok(())
}

fn check_content(s: &str) -> Result<(), &'static str> {
    check_text(s, 1, MAX_CONTENT_CHARS, true)
}

fn check_detail(s: &str) -> Result<(), &'static str> {
    check_text(s, 0, MAX_DETAIL_CHARS, true)
}

/// Phone numbers: 3..=32 bytes of digits, spaces, '-', '(' and ')', with an
/// optional leading '+', and at least three digits.
fn check_phone(s: &str) -> Result<(), &'static str> {
    if s.len() < 3 || s.len() > 32 {
        return Err("must be 3 to 32 characters");
    }
    let body = s.strip_prefix('+').unwrap_or(s);
    if !body
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b' ' | b'-' | b'(' | b')'))
    {
        return Err("only digits, spaces, '-', '(', ')' and a leading '+' are allowed");
    }
    if body.bytes().filter(u8::is_ascii_digit).count() < 3 {
        return Err("needs at least three digits");
    }
    Ok(())
}

/// IKE identities: 1..=255 bytes of printable ASCII without spaces (an FQDN,
/// an address or a key ID as strongSwan writes them).
fn check_ike_identity(s: &str) -> Result<(), &'static str> {
    if s.is_empty() {
        return Err("empty");
    }
    if s.len() > 255 {
        return Err("too long");
    }
    if !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("only printable ASCII without spaces is allowed");
    }
    Ok(())
}

validated_string!(
    /// A router's terminal ID (the seed's "terminal ID"): the key of the
    /// terminals database and the principal of router <-> center messages.
    TerminalId,
    "terminal ID",
    check_id
);
validated_string!(
    /// A VPN gateway's name: the principal of centerd <-> gatewayd messages.
    GatewayName,
    "gateway name",
    check_id
);
validated_string!(
    /// An extension terminal name (a LAN host as the router resolves it).
    TerminalName,
    "extension terminal name",
    check_terminal_name
);
validated_string!(
    /// The person asking for maintenance.
    ClaimantName,
    "claimant name",
    check_claimant_name
);
validated_string!(
    /// The claimant's phone number.
    Phone,
    "phone number",
    check_phone
);
validated_string!(
    /// What the claimant wants done (free text, may span lines).
    RequestContent,
    "request content",
    check_content
);
validated_string!(
    /// Free-text detail of a failure notice (may be empty).
    FailureDetail,
    "failure detail",
    check_detail
);
validated_string!(
    /// The gateway's IKE identity, which the router's responder expects.
    IkeIdentity,
    "IKE identity",
    check_ike_identity
);

/// A list of `MIN..=MAX` distinct values, validated on construction and on
/// deserialization (before anything else sees it).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct BoundedSet<T, const MIN: usize, const MAX: usize>(Vec<T>);

impl<T: Named + Eq + Hash, const MIN: usize, const MAX: usize> BoundedSet<T, MIN, MAX> {
    pub fn new(items: Vec<T>) -> Result<Self, ValidationError> {
        if items.len() < MIN || items.len() > MAX {
            return Err(ValidationError::new(
                T::WHAT,
                format!("a list needs {MIN} to {MAX} entries, got {}", items.len()),
            ));
        }
        let mut seen = HashSet::with_capacity(items.len());
        if !items.iter().all(|i| seen.insert(i)) {
            return Err(ValidationError::new(T::WHAT, "list entries must be distinct"));
        }
        Ok(BoundedSet(items))
    }
}

impl<T, const MIN: usize, const MAX: usize> BoundedSet<T, MIN, MAX> {
    pub fn as_slice(&self) -> &[T] {
        &self.0
    }

    pub fn iter(&self) -> std::slice::Iter<'_, T> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn into_vec(self) -> Vec<T> {
        self.0
    }
}

impl<'de, T, const MIN: usize, const MAX: usize> Deserialize<'de> for BoundedSet<T, MIN, MAX>
where
    T: Named + Eq + Hash + Deserialize<'de>,
{
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Vec::<T>::deserialize(d)?;
        Self::new(v).map_err(serde::de::Error::custom)
    }
}

/// 1..=16 distinct extension terminal names of one maintenance request.
pub type TerminalNames = BoundedSet<TerminalName, 1, MAX_TERMINAL_NAMES>;

/// The claimant's level (seed 0153): an administrator's request lands in the
/// "administrator" table, a general one in the terminal's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum ClaimantLevel {
    General,
    Administrator,
}

/// How urgent a maintenance request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Urgency {
    Low,
    Normal,
    High,
    Emergency,
}

/// What the router's self-watch found broken (seed 0132).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum FailureCode {
    /// The router's own HTTP server part stopped answering.
    ServerPart,
    /// The router section (forwarding, NAT) misbehaves.
    RouterSection,
    /// IPsec processing (IKE daemon, XFRM state) failed.
    Ipsec,
    /// The VPNNAT table could not be programmed.
    Vpnnat,
    /// The WAN link or address is gone.
    Wan,
    /// The LAN link is down.
    Lan,
    /// Anything else; the detail says what.
    Other,
}

/// The acceptance number the center issues per maintenance request
/// (seed 0160); never zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct AcceptanceNumber(u64);

impl AcceptanceNumber {
    pub fn new(n: u64) -> Result<Self, ValidationError> {
        if n == 0 {
            return Err(ValidationError::new("acceptance number", "must not be zero"));
        }
        Ok(AcceptanceNumber(n))
    }

    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for AcceptanceNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Named for AcceptanceNumber {
    const WHAT: &'static str = "acceptance number";
}

impl<'de> Deserialize<'de> for AcceptanceNumber {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::new(u64::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// Checks that `ip` can be a peer's unicast address: not 0.0.0.0, not the
/// limited broadcast, not multicast, not loopback.
pub fn check_unicast(ip: Ipv4Addr, what: &'static str) -> Result<Ipv4Addr, ValidationError> {
    if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() || ip.is_loopback() {
        return Err(ValidationError::new(what, "not a unicast address"));
    }
    Ok(ip)
}

/// A unicast IPv4 address: serialized as dotted quad, validated by
/// [`check_unicast`] on the way in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct UnicastAddr(Ipv4Addr);

impl Named for UnicastAddr {
    const WHAT: &'static str = "unicast address";
}

impl UnicastAddr {
    pub fn new(ip: Ipv4Addr) -> Result<Self, ValidationError> {
        check_unicast(ip, "unicast address").map(UnicastAddr)
    }

    pub fn get(self) -> Ipv4Addr {
        self.0
    }
}

impl fmt::Display for UnicastAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<'de> Deserialize<'de> for UnicastAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::new(Ipv4Addr::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// An IPv4 network in CIDR notation, e.g. `10.64.0.0/16`.
///
/// Strict: the host bits must be zero, so one network has exactly one
/// spelling and "10.64.0.1/16" is refused rather than silently widened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Cidr {
    addr: Ipv4Addr,
    prefix_len: u8,
}

impl Named for Ipv4Cidr {
    const WHAT: &'static str = "IPv4 CIDR";
}

impl Ipv4Cidr {
    const WHAT: &'static str = "IPv4 CIDR";

    pub fn new(addr: Ipv4Addr, prefix_len: u8) -> Result<Self, ValidationError> {
        if prefix_len > 32 {
            return Err(ValidationError::new(Self::WHAT, "prefix length above 32"));
        }
        if u32::from(addr) & !Self::mask_bits(prefix_len) != 0 {
            return Err(ValidationError::new(Self::WHAT, "host bits are set"));
        }
        Ok(Ipv4Cidr { addr, prefix_len })
    }

    fn mask_bits(prefix_len: u8) -> u32 {
        // checked_shl: a shift by 32 would overflow; /0 means no bits.
        u32::MAX
            .checked_shl(32u32.saturating_sub(u32::from(prefix_len)))
            .unwrap_or(0)
    }

    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(Self::mask_bits(self.prefix_len))
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & Self::mask_bits(self.prefix_len) == u32::from(self.addr)
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl FromStr for Ipv4Cidr {
    type Err = ValidationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, p) = s
            .split_once('/')
            .ok_or(ValidationError::new(Self::WHAT, "missing '/prefix'"))?;
        // std's parser is strict (no leading zeros, exactly four octets).
        let addr: Ipv4Addr = a.parse().map_err(|_| ValidationError::new(Self::WHAT, "bad address"))?;
        let canonical = p.len() == 1 || !p.starts_with('0');
        if p.is_empty() || p.len() > 2 || !canonical || !p.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ValidationError::new(Self::WHAT, "bad prefix length"));
        }
        let prefix_len: u8 = p
            .parse()
            .map_err(|_| ValidationError::new(Self::WHAT, "bad prefix length"))?;
        Ipv4Cidr::new(addr, prefix_len)
    }
}

impl Serialize for Ipv4Cidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Ipv4Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_id_rules() {
        assert!(TerminalId::new("router-0001").is_ok());
        assert!(TerminalId::new("R1.home_a").is_ok());
        assert!(TerminalId::new("a".repeat(64)).is_ok());
        assert!(TerminalId::new("a".repeat(65)).is_err());
        assert!(TerminalId::new("").is_err());
        assert!(TerminalId::new("-lead").is_err());
        assert!(TerminalId::new("has space").is_err());
        assert!(TerminalId::new("semi;colon").is_err());
        assert!(TerminalId::new("ünï").is_err());
        let e = TerminalId::new("a/b").unwrap_err();
        assert_eq!(e.what, "terminal ID");
        assert!(!e.to_string().contains("a/b"), "never echo the value");
    }

    #[test]
    fn terminal_names_rules() {
        let n = |s: &str| TerminalName::new(s).unwrap();
        assert!(TerminalName::new("a".repeat(64)).is_err());
        assert!(TerminalNames::new(vec![]).is_err());
        assert!(TerminalNames::new(vec![n("pc1"), n("pc1")]).is_err());
        let many: Vec<_> = (0..17).map(|i| n(&format!("pc{i}"))).collect();
        assert!(TerminalNames::new(many.clone()).is_err());
        assert!(TerminalNames::new(many[..16].to_vec()).is_ok());
        let parsed: Result<TerminalNames, _> = serde_json::from_str(r#"["pc1","pc1"]"#);
        assert!(parsed.is_err());
    }

    #[test]
    fn text_rules() {
        assert!(ClaimantName::new("Taro Yamada").is_ok());
        assert!(ClaimantName::new("山田太郎").is_ok());
        assert!(ClaimantName::new("   ").is_err());
        assert!(ClaimantName::new("a\nb").is_err());
        assert!(ClaimantName::new("x".repeat(129)).is_err());
        assert!(RequestContent::new("line1\nline2\ttab").is_ok());
        assert!(RequestContent::new("").is_err());
        assert!(RequestContent::new("bell\u{7}").is_err());
        assert!(RequestContent::new("x".repeat(4097)).is_err());
        assert!(FailureDetail::new("").is_ok());
    }

    #[test]
    fn phone_rules() {
        for ok in ["+81 3-1234-5678", "(03) 1234 5678", "110"] {
            assert!(Phone::new(ok).is_ok(), "{ok}");
        }
        for bad in ["12", "+", "++81 3 1234", "03-1234-567a", "--()--", &"1".repeat(33)] {
            assert!(Phone::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn enums_serialize_lowercase() {
        assert_eq!(
            serde_json::to_string(&ClaimantLevel::Administrator).unwrap(),
            "\"administrator\""
        );
        assert_eq!(serde_json::to_string(&Urgency::High).unwrap(), "\"high\"");
        assert_eq!(
            serde_json::to_string(&FailureCode::RouterSection).unwrap(),
            "\"router_section\""
        );
        assert!(serde_json::from_str::<ClaimantLevel>("\"root\"").is_err());
    }

    #[test]
    fn acceptance_number_nonzero() {
        assert!(AcceptanceNumber::new(0).is_err());
        assert!(serde_json::from_str::<AcceptanceNumber>("0").is_err());
        assert_eq!(serde_json::from_str::<AcceptanceNumber>("7").unwrap().get(), 7);
    }

    #[test]
    fn unicast() {
        assert!(UnicastAddr::new(Ipv4Addr::new(198, 51, 100, 7)).is_ok());
        assert!(UnicastAddr::new(Ipv4Addr::new(0, 0, 0, 0)).is_err());
        assert!(UnicastAddr::new(Ipv4Addr::new(255, 255, 255, 255)).is_err());
        assert!(UnicastAddr::new(Ipv4Addr::new(224, 0, 0, 1)).is_err());
        assert!(serde_json::from_str::<UnicastAddr>("\"127.0.0.1\"").is_err());
    }

    #[test]
    fn cidr_parse_and_contains() {
        let c: Ipv4Cidr = "10.64.0.0/16".parse().unwrap();
        assert_eq!(c.prefix_len(), 16);
        assert_eq!(c.netmask(), Ipv4Addr::new(255, 255, 0, 0));
        assert!(c.contains(Ipv4Addr::new(10, 64, 3, 4)));
        assert!(!c.contains(Ipv4Addr::new(10, 65, 0, 1)));
        assert_eq!(c.to_string(), "10.64.0.0/16");
        let all: Ipv4Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(Ipv4Addr::new(8, 8, 8, 8)));
        let host: Ipv4Cidr = "192.0.2.1/32".parse().unwrap();
        assert!(host.contains(Ipv4Addr::new(192, 0, 2, 1)));
        assert!(!host.contains(Ipv4Addr::new(192, 0, 2, 2)));
        for bad in [
            "10.64.0.1/16",
            "10.64.0.0/33",
            "10.64.0.0",
            "10.64.0.0/",
            "10.64.0.0/016",
            "10.64.0.0/+8",
            "010.64.0.0/16",
            "10.64.0/16",
            "10.64.0.0/16/1",
        ] {
            assert!(bad.parse::<Ipv4Cidr>().is_err(), "{bad}");
        }
        let j = serde_json::to_string(&c).unwrap();
        assert_eq!(j, "\"10.64.0.0/16\"");
        assert_eq!(serde_json::from_str::<Ipv4Cidr>(&j).unwrap(), c);
    }
}
