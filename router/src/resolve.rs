//! Extension terminal name -> real LAN address, in the order PROTOCOL.md
//! gives: the static host table, then the DHCP leases (dnsmasq's lease
//! file), then DNS. Only addresses of LAN hosts are accepted, whatever the
//! source says: a VPNNAT mapping must never point the tunnel anywhere else,
//! nor at the LAN's network or broadcast address or at the router itself
//! (issue 18, item 8). A name that is an IP literal (`192.168.1.255`, or
//! any form `inet_aton` reads as one) is not a terminal name: the system
//! resolver would hand the literal straight back.
//!
//! The router itself is a maintenance target too (PROTOCOL.md, [0078]
//! and [0096]; issue 19, item 2): the two names [`SERVER_PART_NAME`]
//! (`server-part`: the router's LAN address, where its LAN page and the
//! center's commands are served) and [`ROUTER_PART_NAME`] (`router-part`:
//! the router part's address) resolve to the router's own parts before any
//! other source is asked, so no LAN host can take them. Their VPNNAT
//! addresses are the ones the installation granted; a request for them
//! adds no address and no NAT row ([`crate::logic::finish_maintenance`]).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use thiserror::Error;
use vpnnat_proto::types::{TerminalName, ROUTER_PART_NAME, SERVER_PART_NAME};

use crate::config::Interface;

/// Where a name was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Static,
    Lease,
    Dns,
    /// One of the router's own parts.
    Router,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Static => "static",
            Source::Lease => "dhcp",
            Source::Dns => "dns",
            Source::Router => "router",
        }
    }
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ResolveError {
    #[error("unknown extension terminal {0:?}: not in the host table, the DHCP leases or DNS")]
    Unknown(String),
    #[error("extension terminal {name:?} resolves to {ip} ({source_name}), which is not on the LAN")]
    OffLan {
        name: String,
        ip: Ipv4Addr,
        source_name: &'static str,
    },
    #[error("extension terminal {name:?} resolves to {ip} ({source_name}), which is {what}, not a LAN device")]
    NotADevice {
        name: String,
        ip: Ipv4Addr,
        source_name: &'static str,
        what: &'static str,
    },
    #[error("{0:?} is an IP address, not an extension terminal name: give the device's name")]
    IpLiteral(String),
}

/// Why `ip`, although on the LAN, is no device there: the LAN's network
/// or broadcast address (a /31 or /32 has neither), or the router's own.
pub fn not_a_device(lan: &Interface, ip: Ipv4Addr) -> Option<&'static str> {
    if ip == lan.address {
        return Some("the router's own LAN address");
    }
    if lan.prefix_len <= 30 {
        let host_bits = u32::MAX.checked_shr(u32::from(lan.prefix_len)).unwrap_or(0);
        let host = u32::from(ip) & host_bits;
        if host == 0 {
            return Some("the LAN's network address");
        }
        if host == host_bits {
            return Some("the LAN's broadcast address");
        }
    }
    None
}

/// What the LAN page says of the router's own part `name` (None: not
/// one of them).
pub fn own_part_label(name: &str) -> Option<&'static str> {
    match name {
        SERVER_PART_NAME => Some("this router: its server part (pages, center commands)"),
        ROUTER_PART_NAME => Some("this router: its router part (IPsec, VPNNAT)"),
        _ => None,
    }
}

/// Whether `name` reads as an IPv4 address to `inet_aton` (and so to the
/// system resolver): one to four dot-separated numbers, each decimal,
/// octal (leading 0) or hexadecimal (`0x`).
pub fn is_ip_literal(name: &str) -> bool {
    let number = |l: &str| {
        let hex = l.strip_prefix("0x").or_else(|| l.strip_prefix("0X"));
        match hex {
            Some(h) => h.bytes().all(|b| b.is_ascii_hexdigit()),
            None => !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()),
        }
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    let labels: Vec<&str> = name.split('.').collect();
    labels.len() <= 4 && labels.iter().all(|l| number(l))
}

/// One DHCP lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub hostname: String,
    pub ip: Ipv4Addr,
    pub expires: u64,
}

/// Parses dnsmasq's lease file: `expiry mac ip hostname client-id` per line,
/// hostname `*` when the client sent none. Lines that do not parse are
/// skipped: the file belongs to dnsmasq and a bad line must not hide the
/// others.
pub fn parse_leases(text: &str) -> Vec<Lease> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let expires = f.next()?.parse::<u64>().ok()?;
            let _mac = f.next()?;
            let ip = f.next()?.parse::<Ipv4Addr>().ok()?;
            let hostname = f.next()?;
            (hostname != "*").then(|| Lease {
                hostname: hostname.to_string(),
                ip,
                expires,
            })
        })
        .collect()
}

/// The last step of the lookup.
pub trait DnsLookup {
    fn lookup(&self, name: &str) -> Option<Ipv4Addr>;
}

/// No DNS (config `dns = false`, and tests).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoDns;

impl DnsLookup for NoDns {
    fn lookup(&self, _name: &str) -> Option<Ipv4Addr> {
        None
    }
}

/// `None`: DNS disabled in the config.
impl<D: DnsLookup> DnsLookup for Option<D> {
    fn lookup(&self, name: &str) -> Option<Ipv4Addr> {
        self.as_ref()?.lookup(name)
    }
}

/// The system resolver (getaddrinfo; dnsmasq on the image).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemDns;

impl DnsLookup for SystemDns {
    fn lookup(&self, name: &str) -> Option<Ipv4Addr> {
        use std::net::ToSocketAddrs;
        (name, 0u16).to_socket_addrs().ok()?.find_map(|a| match a.ip() {
            std::net::IpAddr::V4(v4) => Some(v4),
            std::net::IpAddr::V6(_) => None,
        })
    }
}

/// A snapshot of every source, taken when a request is made.
#[derive(Debug)]
pub struct Resolver<'a, D: DnsLookup> {
    pub statics: &'a BTreeMap<TerminalName, Ipv4Addr>,
    pub leases: Vec<Lease>,
    /// Unix seconds; expired leases are ignored (0 in the file is "infinite").
    pub now: u64,
    pub dns: D,
    pub lan: &'a Interface,
    /// The router part's real address (`router_part_address`).
    pub router_part: Ipv4Addr,
}

impl<D: DnsLookup> Resolver<'_, D> {
    pub fn resolve(&self, name: &TerminalName) -> Result<(Ipv4Addr, Source), ResolveError> {
        if let Some(ip) = self.own_part(name.as_str()) {
            return Ok((ip, Source::Router));
        }
        if is_ip_literal(name.as_str()) {
            return Err(ResolveError::IpLiteral(name.to_string()));
        }
        let (ip, source) = self.find(name).ok_or_else(|| ResolveError::Unknown(name.to_string()))?;
        if !self.lan.contains(ip) {
            return Err(ResolveError::OffLan {
                name: name.to_string(),
                ip,
                source_name: source.as_str(),
            });
        }
        if let Some(what) = not_a_device(self.lan, ip) {
            return Err(ResolveError::NotADevice {
                name: name.to_string(),
                ip,
                source_name: source.as_str(),
                what,
            });
        }
        Ok((ip, source))
    }

    /// The real address of the router's own part `name`, if it is one.
    pub fn own_part(&self, name: &str) -> Option<Ipv4Addr> {
        match name {
            SERVER_PART_NAME => Some(self.lan.address),
            ROUTER_PART_NAME => Some(self.router_part),
            _ => None,
        }
    }

    fn find(&self, name: &TerminalName) -> Option<(Ipv4Addr, Source)> {
        if let Some(ip) = self.statics.get(name) {
            return Some((*ip, Source::Static));
        }
        // Host names are case-insensitive (RFC 4343).
        let lease = self
            .leases
            .iter()
            .filter(|l| l.expires == 0 || l.expires > self.now)
            .find(|l| l.hostname.eq_ignore_ascii_case(name.as_str()));
        if let Some(l) = lease {
            return Some((l.ip, Source::Lease));
        }
        self.dns.lookup(name.as_str()).map(|ip| (ip, Source::Dns))
    }

    /// Every name the router knows without DNS (for the page's choices),
    /// the router's own two parts included.
    pub fn known(&self) -> BTreeMap<String, (Ipv4Addr, Source)> {
        let mut out = BTreeMap::new();
        for l in self.leases.iter().filter(|l| l.expires == 0 || l.expires > self.now) {
            if TerminalName::new(l.hostname.clone()).is_ok()
                && !is_ip_literal(&l.hostname)
                && self.lan.contains(l.ip)
                && not_a_device(self.lan, l.ip).is_none()
            {
                out.insert(l.hostname.to_ascii_lowercase(), (l.ip, Source::Lease));
            }
        }
        // Static entries win over leases, as in `resolve`.
        for (n, ip) in self.statics {
            if not_a_device(self.lan, *ip).is_none() {
                out.insert(n.to_string(), (*ip, Source::Static));
            }
        }
        // The router itself last: its two names win over any host's.
        out.insert(SERVER_PART_NAME.into(), (self.lan.address, Source::Router));
        out.insert(ROUTER_PART_NAME.into(), (self.router_part, Source::Router));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct FakeDns(Vec<(&'static str, Ipv4Addr)>);
    impl DnsLookup for FakeDns {
        fn lookup(&self, name: &str) -> Option<Ipv4Addr> {
            self.0.iter().find(|(n, _)| *n == name).map(|(_, ip)| *ip)
        }
    }

    fn lan() -> Interface {
        Interface {
            name: "eth1".into(),
            address: Ipv4Addr::new(192, 168, 1, 1),
            prefix_len: 24,
            gateway: None,
        }
    }

    fn n(s: &str) -> TerminalName {
        TerminalName::new(s).unwrap()
    }

    const LEASES: &str = "\
1900000000 52:54:00:00:00:01 192.168.1.50 laptop 01:52:54:00:00:00:01
1900000000 52:54:00:00:00:02 192.168.1.51 * *
1000 52:54:00:00:00:03 192.168.1.52 old *
0 52:54:00:00:00:04 192.168.1.53 pc1 *
garbage line
1900000000 52:54:00:00:00:05 10.9.9.9 rogue *
";

    #[test]
    fn lease_file_parses() {
        let l = parse_leases(LEASES);
        assert_eq!(l.len(), 4);
        assert_eq!(l[0].hostname, "laptop");
        assert_eq!(l[0].ip, Ipv4Addr::new(192, 168, 1, 50));
    }

    #[test]
    fn order_is_static_then_leases_then_dns() {
        let statics = [(n("pc1"), Ipv4Addr::new(192, 168, 1, 10))].into();
        let lan = lan();
        let r = Resolver {
            statics: &statics,
            leases: parse_leases(LEASES),
            now: 1_800_000_000,
            router_part: Ipv4Addr::new(198, 51, 100, 101),
            dns: FakeDns(vec![
                ("laptop", Ipv4Addr::new(192, 168, 1, 99)),
                ("nas", Ipv4Addr::new(192, 168, 1, 30)),
                ("web", Ipv4Addr::new(93, 184, 216, 34)),
            ]),
            lan: &lan,
        };
        // pc1 is both static and leased: static wins.
        assert_eq!(
            r.resolve(&n("pc1")).unwrap(),
            (Ipv4Addr::new(192, 168, 1, 10), Source::Static)
        );
        // laptop is leased and in DNS: the lease wins; case-insensitive.
        assert_eq!(
            r.resolve(&n("LAPTOP")).unwrap(),
            (Ipv4Addr::new(192, 168, 1, 50), Source::Lease)
        );
        assert_eq!(
            r.resolve(&n("nas")).unwrap(),
            (Ipv4Addr::new(192, 168, 1, 30), Source::Dns)
        );
        // expired lease: unknown
        assert_eq!(r.resolve(&n("old")), Err(ResolveError::Unknown("old".into())));
        assert!(matches!(r.resolve(&n("web")), Err(ResolveError::OffLan { .. })));
        assert!(matches!(r.resolve(&n("rogue")), Err(ResolveError::OffLan { .. })));
        let e = r.resolve(&n("ghost")).unwrap_err().to_string();
        assert!(e.contains("unknown extension terminal \"ghost\""), "{e}");
        let known = r.known();
        assert_eq!(
            known.keys().collect::<Vec<_>>(),
            ["laptop", "pc1", "router-part", "server-part"]
        );
    }

    /// Issue 18, item 8: `192.168.1.255` resolved (through the system
    /// resolver, which returns a literal as is) to the broadcast address
    /// and the router would have DNAT'ed to it.
    #[test]
    fn ip_literals_network_broadcast_and_the_router_are_refused() {
        let statics = [(n("net"), Ipv4Addr::new(192, 168, 1, 0))].into();
        let lan = lan();
        // A resolver that, like getaddrinfo, reads literals.
        struct Literal;
        impl DnsLookup for Literal {
            fn lookup(&self, name: &str) -> Option<Ipv4Addr> {
                match name {
                    "bcast" => Some(Ipv4Addr::new(192, 168, 1, 255)),
                    "gw" => Some(Ipv4Addr::new(192, 168, 1, 1)),
                    other => other.parse().ok(),
                }
            }
        }
        let r = Resolver {
            statics: &statics,
            leases: parse_leases(
                "0 52:54:00:00:00:09 192.168.1.255 printer *\n0 52:54:00:00:00:0a 192.168.1.40 192.168.1.40 *\n",
            ),
            now: 1_800_000_000,
            dns: Literal,
            lan: &lan,
            router_part: Ipv4Addr::new(198, 51, 100, 101),
        };
        for literal in [
            "192.168.1.255",
            "192.168.1.40",
            "3232236031",
            "0xc0a801ff",
            "192.168.511",
            "192.168.1.255.",
        ] {
            assert_eq!(
                r.resolve(&n(literal)),
                Err(ResolveError::IpLiteral(literal.into())),
                "{literal}"
            );
        }
        let e = r.resolve(&n("192.168.1.255")).unwrap_err().to_string();
        assert!(e.contains("is an IP address, not an extension terminal name"), "{e}");
        for (name, what) in [
            ("bcast", "the LAN's broadcast address"),
            ("printer", "the LAN's broadcast address"),
            ("net", "the LAN's network address"),
            ("gw", "the router's own LAN address"),
        ] {
            let e = r.resolve(&n(name)).unwrap_err();
            assert!(matches!(e, ResolveError::NotADevice { .. }), "{name}: {e:?}");
            assert!(e.to_string().contains(what), "{name}: {e}");
        }
        // Names that merely contain digits are names.
        for name in ["pc1", "1pc", "192-168-1-40", "10.lan", "0xg"] {
            assert!(!is_ip_literal(name), "{name}");
        }
        // The page offers none of them (only the router's own two parts,
        // by their names).
        let known = r.known();
        assert_eq!(
            known.keys().collect::<Vec<_>>(),
            ["router-part", "server-part"],
            "{known:?}"
        );
    }

    /// Issue 19, item 2: the router's server part and router part are
    /// maintenance targets by their names ([0078]), ahead of any host
    /// that a lease, the host table or DNS gives the same name; the
    /// router's LAN address under any other name stays refused.
    #[test]
    fn the_router_itself_resolves_by_its_two_names_and_no_host_can_take_them() {
        let lan = lan();
        let statics = [(n("router-part"), Ipv4Addr::new(192, 168, 1, 77))].into();
        let r = Resolver {
            statics: &statics,
            leases: parse_leases("0 52:54:00:00:00:0b 192.168.1.60 server-part *\n"),
            now: 1_800_000_000,
            dns: FakeDns(vec![("gw", Ipv4Addr::new(192, 168, 1, 1))]),
            lan: &lan,
            router_part: Ipv4Addr::new(198, 51, 100, 101),
        };
        assert_eq!(
            r.resolve(&n(SERVER_PART_NAME)),
            Ok((Ipv4Addr::new(192, 168, 1, 1), Source::Router))
        );
        // The router part's address is off the LAN (the WAN address by
        // default): it is the router's own, not a LAN host's.
        assert_eq!(
            r.resolve(&n(ROUTER_PART_NAME)),
            Ok((Ipv4Addr::new(198, 51, 100, 101), Source::Router))
        );
        assert!(matches!(r.resolve(&n("gw")), Err(ResolveError::NotADevice { .. })));
        let known = r.known();
        assert_eq!(known["server-part"], (Ipv4Addr::new(192, 168, 1, 1), Source::Router));
        assert_eq!(known["router-part"], (Ipv4Addr::new(198, 51, 100, 101), Source::Router));
        assert_eq!(Source::Router.as_str(), "router");
    }

    #[test]
    fn a_point_to_point_lan_has_no_network_or_broadcast_address() {
        let mut l = lan();
        l.prefix_len = 31;
        assert_eq!(not_a_device(&l, Ipv4Addr::new(192, 168, 1, 0)), None);
        assert_eq!(
            not_a_device(&l, Ipv4Addr::new(192, 168, 1, 1)),
            Some("the router's own LAN address")
        );
        l.prefix_len = 30;
        assert_eq!(
            not_a_device(&l, Ipv4Addr::new(192, 168, 1, 3)),
            Some("the LAN's broadcast address")
        );
        assert_eq!(not_a_device(&l, Ipv4Addr::new(192, 168, 1, 2)), None);
    }
}
