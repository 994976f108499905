//! Pure descriptions of the kernel objects the project owns.
//!
//! Nothing here talks to the kernel: these types are what the planner
//! compares and what the apply step turns into netlink or nft messages.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use thiserror::Error;

/// Every XFRM object the project creates carries a reqid in this range, so
/// the project can find (and clean up) exactly its own SAs and policies and
/// never touch those of another IKE daemon on the same host.
pub const REQID_BASE: u32 = 0x5650_0000;
/// Size of the project's reqid range (one reqid per tunnel).
pub const REQID_RANGE: u32 = 0x0001_0000;

/// True if `reqid` belongs to the project's range.
pub fn is_owned_reqid(reqid: u32) -> bool {
    reqid.wrapping_sub(REQID_BASE) < REQID_RANGE
}

/// Errors in parsing user-supplied model values.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ModelError {
    #[error("invalid IPv4 prefix {input:?}: {why}")]
    BadCidr { input: String, why: &'static str },
    #[error("invalid mapping {input:?}: expected VPNNAT=REAL with two IPv4 addresses")]
    BadMapping { input: String },
    #[error("invalid AES-GCM key: {len} bytes given, need 20 (AES-128) or 36 (AES-256) including the 4-byte salt")]
    BadKeyLength { len: usize },
    #[error("reqid {0:#x} is outside the project's range {REQID_BASE:#x}..{end:#x}", end = REQID_BASE + REQID_RANGE)]
    ForeignReqid(u32),
    #[error("invalid {what} {input:?}")]
    Invalid { what: &'static str, input: String },
}

/// An IPv4 prefix with its host bits cleared.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Cidr {
    addr: Ipv4Addr,
    len: u8,
}

impl Ipv4Cidr {
    /// Builds a prefix; host bits set in `addr` are an error so that a typo
    /// such as `10.0.0.1/8` is not silently widened.
    pub fn new(addr: Ipv4Addr, len: u8) -> Result<Self, ModelError> {
        if len > 32 {
            return Err(ModelError::BadCidr {
                input: format!("{addr}/{len}"),
                why: "prefix length above 32",
            });
        }
        let c = Self { addr, len };
        if c.network() != addr {
            return Err(ModelError::BadCidr {
                input: format!("{addr}/{len}"),
                why: "host bits set",
            });
        }
        Ok(c)
    }

    /// A /32 for one host.
    pub fn host(addr: Ipv4Addr) -> Self {
        Self { addr, len: 32 }
    }

    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    fn mask(&self) -> u32 {
        // len is at most 32 (checked in `new`); /0 shifts by 32, which
        // checked_shl refuses: no bits.
        u32::MAX
            .checked_shl(32_u32.saturating_sub(u32::from(self.len)))
            .unwrap_or(0)
    }

    /// The network address (host bits cleared).
    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) & self.mask())
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.addr) & self.mask()
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl fmt::Debug for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Ipv4Cidr {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why| ModelError::BadCidr {
            input: s.to_string(),
            why,
        };
        let (a, l) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: Ipv4Addr = a.parse().map_err(|_| bad("not an IPv4 address"))?;
        let len = match l {
            Some(l) => l.parse::<u8>().map_err(|_| bad("bad prefix length"))?,
            None => 32,
        };
        Self::new(addr, len)
    }
}

/// One 1:1 VPNNAT mapping: traffic from the tunnel to `vpnnat` goes to
/// `real`, and `real`'s traffic toward the center leaves as `vpnnat`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mapping {
    pub vpnnat: Ipv4Addr,
    pub real: Ipv4Addr,
}

impl fmt::Display for Mapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.vpnnat, self.real)
    }
}

impl FromStr for Mapping {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ModelError::BadMapping { input: s.to_string() };
        let (v, r) = s.split_once('=').ok_or_else(bad)?;
        Ok(Self {
            vpnnat: v.trim().parse().map_err(|_| bad())?,
            real: r.trim().parse().map_err(|_| bad())?,
        })
    }
}

/// AEAD algorithm of an ESP SA (`rfc4106(gcm(aes))` with a 16-byte ICV).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Aead {
    Aes128Gcm16,
    Aes256Gcm16,
}

impl Aead {
    /// Kernel key length in bytes, including the 4-byte salt (RFC 4106).
    pub fn key_len(self) -> usize {
        match self {
            Aead::Aes128Gcm16 => 20,
            Aead::Aes256Gcm16 => 36,
        }
    }

    pub fn from_key_len(len: usize) -> Result<Self, ModelError> {
        match len {
            20 => Ok(Aead::Aes128Gcm16),
            36 => Ok(Aead::Aes256Gcm16),
            len => Err(ModelError::BadKeyLength { len }),
        }
    }
}

/// Key material of an SA. Zeroed on drop and never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct SaKey(Vec<u8>);

impl SaKey {
    pub fn new(bytes: Vec<u8>) -> Result<Self, ModelError> {
        Aead::from_key_len(bytes.len())?;
        Ok(Self(bytes))
    }
    pub fn aead(&self) -> Aead {
        // Length was validated in `new`; default to the longer key otherwise.
        Aead::from_key_len(self.0.len()).unwrap_or(Aead::Aes256Gcm16)
    }
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for SaKey {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl fmt::Debug for SaKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SaKey({} bytes, redacted)", self.0.len())
    }
}

/// ESP-in-UDP encapsulation (NAT traversal, RFC 3948).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Encap {
    pub sport: u16,
    pub dport: u16,
}

/// Identifies an SA in the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SaId {
    pub dst: Ipv4Addr,
    pub spi: u32,
}

impl fmt::Display for SaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ESP SA dst {} spi {:#010x}", self.dst, self.spi)
    }
}

/// Soft/hard lifetimes in seconds; `None` means unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Lifetime {
    pub soft_secs: Option<u64>,
    pub hard_secs: Option<u64>,
}

/// An ESP tunnel-mode SA.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SaSpec {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub spi: u32,
    pub reqid: u32,
    pub key: SaKey,
    /// Anti-replay window in packets (0 disables; above 32 uses the ESN
    /// replay attribute, which the kernel needs for windows wider than 32).
    pub replay_window: u32,
    pub encap: Option<Encap>,
    pub lifetime: Lifetime,
}

impl SaSpec {
    pub fn id(&self) -> SaId {
        SaId {
            dst: self.dst,
            spi: self.spi,
        }
    }
}

/// Direction of an XFRM policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dir {
    In,
    Out,
    Fwd,
}

impl fmt::Display for Dir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Dir::In => "in",
            Dir::Out => "out",
            Dir::Fwd => "fwd",
        })
    }
}

impl FromStr for Dir {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "in" => Ok(Dir::In),
            "out" => Ok(Dir::Out),
            "fwd" => Ok(Dir::Fwd),
            _ => Err(ModelError::Invalid {
                what: "policy direction (in, out, fwd)",
                input: s.to_string(),
            }),
        }
    }
}

/// Identifies a policy: the kernel keys policies by selector and direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyId {
    pub src: Ipv4Cidr,
    pub dst: Ipv4Cidr,
    pub dir: Dir,
}

impl fmt::Display for PolicyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "policy {} -> {} dir {}", self.src, self.dst, self.dir)
    }
}

/// A tunnel-mode XFRM policy with one ESP template.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PolicySpec {
    pub id: PolicyId,
    pub priority: u32,
    /// Outer (tunnel endpoint) addresses of the template.
    pub tmpl_src: Ipv4Addr,
    pub tmpl_dst: Ipv4Addr,
    pub reqid: u32,
}

impl PolicySpec {
    /// True if the policy is the project's to manage: its reqid is in the
    /// project's range. With [`ObservedSa::is_ours`], the one rule for which
    /// kernel objects the project touches.
    pub fn is_ours(&self) -> bool {
        is_owned_reqid(self.reqid)
    }
}

/// The tunnel-mode policy triple that sends `local_net -> remote_net`
/// into the tunnel `local -> remote` and lets the reverse traffic in:
/// - out: `local_net -> remote_net`, template `local -> remote`,
/// - in and fwd: `remote_net -> local_net`, template `remote -> local`
///   (fwd: the decrypted packets are forwarded to a LAN host, not
///   delivered locally, and the kernel checks those against fwd policies).
///
/// The router calls it with its VPNNAT /32 and a center network, the
/// gateway with a center network and the router's VPNNAT /32: the two
/// ends' triples mirror each other.
pub fn tunnel_policies(
    local_net: Ipv4Cidr,
    remote_net: Ipv4Cidr,
    local: Ipv4Addr,
    remote: Ipv4Addr,
    priority: u32,
    reqid: u32,
) -> [PolicySpec; 3] {
    let out = PolicySpec {
        id: PolicyId {
            src: local_net,
            dst: remote_net,
            dir: Dir::Out,
        },
        priority,
        tmpl_src: local,
        tmpl_dst: remote,
        reqid,
    };
    let inbound = |dir| PolicySpec {
        id: PolicyId {
            src: remote_net,
            dst: local_net,
            dir,
        },
        priority,
        tmpl_src: remote,
        tmpl_dst: local,
        reqid,
    };
    [out, inbound(Dir::In), inbound(Dir::Fwd)]
}

/// SA usage counters read from the kernel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SaCounters {
    pub bytes: u64,
    pub packets: u64,
    pub replay_errors: u32,
    pub integrity_failures: u32,
}

/// An SA as observed in the kernel (no key material is read back).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedSa {
    pub id: SaId,
    pub src: Ipv4Addr,
    pub reqid: u32,
    pub encap: Option<Encap>,
    pub counters: SaCounters,
}

impl ObservedSa {
    /// True if the SA is the project's to manage: its reqid is in the
    /// project's range, and it is not one of the kernel's own larval
    /// "acquire" states (SPI 0), which cannot be deleted by SPI and expire
    /// by themselves (`net.core.xfrm_acq_expires`).
    pub fn is_ours(&self) -> bool {
        is_owned_reqid(self.reqid) && self.id.spi != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_parses_and_rejects_host_bits() {
        let c: Ipv4Cidr = "10.64.0.0/16".parse().unwrap();
        assert_eq!(c.prefix_len(), 16);
        assert!(c.contains(Ipv4Addr::new(10, 64, 3, 4)));
        assert!(!c.contains(Ipv4Addr::new(10, 65, 0, 0)));
        assert!("10.64.0.1/16".parse::<Ipv4Cidr>().is_err());
        assert!("10.64.0.0/33".parse::<Ipv4Cidr>().is_err());
        assert_eq!("1.2.3.4".parse::<Ipv4Cidr>().unwrap().prefix_len(), 32);
        assert_eq!("0.0.0.0/0".parse::<Ipv4Cidr>().unwrap().to_string(), "0.0.0.0/0");
    }

    #[test]
    fn mapping_parses() {
        let m: Mapping = "10.64.0.5=192.168.1.10".parse().unwrap();
        assert_eq!(m.vpnnat, Ipv4Addr::new(10, 64, 0, 5));
        assert_eq!(m.real, Ipv4Addr::new(192, 168, 1, 10));
        assert!("10.64.0.5".parse::<Mapping>().is_err());
        assert!("x=y".parse::<Mapping>().is_err());
    }

    #[test]
    fn key_lengths() {
        assert_eq!(SaKey::new(vec![1; 36]).unwrap().aead(), Aead::Aes256Gcm16);
        assert_eq!(SaKey::new(vec![1; 20]).unwrap().aead(), Aead::Aes128Gcm16);
        assert_eq!(
            SaKey::new(vec![1; 32]).unwrap_err(),
            ModelError::BadKeyLength { len: 32 }
        );
        assert!(!format!("{:?}", SaKey::new(vec![7; 20]).unwrap()).contains('7'));
    }

    #[test]
    fn reqid_ownership() {
        assert!(is_owned_reqid(REQID_BASE));
        assert!(is_owned_reqid(REQID_BASE + REQID_RANGE - 1));
        assert!(!is_owned_reqid(REQID_BASE + REQID_RANGE));
        assert!(!is_owned_reqid(1));
    }

    fn observed_sa(spi: u32, reqid: u32) -> ObservedSa {
        ObservedSa {
            id: SaId {
                dst: Ipv4Addr::new(198, 51, 100, 1),
                spi,
            },
            src: Ipv4Addr::new(198, 51, 100, 2),
            reqid,
            encap: None,
            counters: SaCounters::default(),
        }
    }

    #[test]
    fn ours_is_the_reqid_range_without_larval_sas() {
        assert!(observed_sa(0xc000_0001, REQID_BASE).is_ours());
        assert!(!observed_sa(0xc000_0001, 7).is_ours(), "another IKE daemon's");
        assert!(!observed_sa(0, REQID_BASE).is_ours(), "the kernel's acquire state");
        let [p, ..] = tunnel_policies(
            Ipv4Cidr::host(Ipv4Addr::new(10, 64, 0, 5)),
            "172.16.0.0/24".parse().unwrap(),
            Ipv4Addr::new(198, 51, 100, 2),
            Ipv4Addr::new(198, 51, 100, 1),
            1000,
            REQID_BASE + REQID_RANGE,
        );
        assert!(!p.is_ours());
        assert!(PolicySpec { reqid: REQID_BASE, ..p }.is_ours());
    }

    #[test]
    fn tunnel_policies_mirror_each_other_at_the_two_ends() {
        let host = Ipv4Cidr::host(Ipv4Addr::new(10, 64, 0, 5));
        let center: Ipv4Cidr = "172.16.0.0/24".parse().unwrap();
        let (wan, gw) = (Ipv4Addr::new(198, 51, 100, 2), Ipv4Addr::new(198, 51, 100, 1));
        let router = tunnel_policies(host, center, wan, gw, 1000, REQID_BASE + 1);
        let pol = |src, dst, dir, tmpl_src, tmpl_dst| PolicySpec {
            id: PolicyId { src, dst, dir },
            priority: 1000,
            tmpl_src,
            tmpl_dst,
            reqid: REQID_BASE + 1,
        };
        assert_eq!(
            router,
            [
                pol(host, center, Dir::Out, wan, gw),
                pol(center, host, Dir::In, gw, wan),
                pol(center, host, Dir::Fwd, gw, wan),
            ]
        );
        // The gateway's out is the router's in, and the other way round.
        let gateway = tunnel_policies(center, host, gw, wan, 1000, REQID_BASE + 1);
        assert_eq!(
            (gateway[0].id.src, gateway[0].id.dst),
            (router[1].id.src, router[1].id.dst)
        );
        assert_eq!(
            (gateway[0].tmpl_src, gateway[0].tmpl_dst),
            (router[1].tmpl_src, router[1].tmpl_dst)
        );
        assert_eq!(
            (gateway[1].id.src, gateway[1].id.dst),
            (router[0].id.src, router[0].id.dst)
        );
        assert_eq!(
            (gateway[1].tmpl_src, gateway[1].tmpl_dst),
            (router[0].tmpl_src, router[0].tmpl_dst)
        );
    }
}
