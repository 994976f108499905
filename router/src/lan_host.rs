//! Which `Host` the LAN page answers (issue 18, item 2: DNS rebinding).
//!
//! A web page on the Internet that a LAN user opens can rebind its own name
//! to the router's LAN address; the user's browser then treats the router's
//! page as that site's (same origin: `Origin` equals `http://{Host}`) and
//! can read `/api/hosts` or file requests. What the browser cannot forge is
//! the `Host` header: it names the attacker's domain. So the page answers
//! only to the router's own addresses (typed as IP literals, which no
//! rebinding yields) and to the names configured in `web_ui.host_names`
//! (the LAN's DNS answers them; an attacker cannot own them).

use std::net::IpAddr;

/// What the LAN page accepts as `Host`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedHosts {
    /// The router's own addresses on the page's side (the LAN address and
    /// the page's listen address); loopback is always accepted, for
    /// `routerd` commands on the router itself.
    pub addresses: Vec<IpAddr>,
    /// `web_ui.host_names`, lower case, without a trailing dot.
    pub names: Vec<String>,
}

impl AllowedHosts {
    /// The router's LAN address, the page's listen address (unless a
    /// wildcard) and `web_ui.host_names`.
    pub fn for_config(cfg: &crate::config::Config) -> AllowedHosts {
        let mut addresses = vec![IpAddr::V4(cfg.lan.address)];
        let listen = cfg.web_ui_listen.ip();
        if !listen.is_unspecified() && !addresses.contains(&listen) {
            addresses.push(listen);
        }
        AllowedHosts {
            addresses,
            names: cfg.web_ui_host_names.clone(),
        }
    }

    /// Whether a request with this `Host` header (none: refused) is for
    /// this page. The port, if any, is not checked (the listener already
    /// chose it).
    pub fn allows(&self, host: Option<&str>) -> bool {
        let Some(host) = host.map(str::trim) else {
            return false;
        };
        let Some(name) = strip_port(host) else {
            return false;
        };
        if let Some(v6) = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
            return v6
                .parse::<IpAddr>()
                .is_ok_and(|ip| ip.is_loopback() || self.addresses.contains(&ip));
        }
        if let Ok(ip) = name.parse::<IpAddr>() {
            return ip.is_loopback() || self.addresses.contains(&ip);
        }
        let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
        self.names.contains(&name)
    }
}

/// Whether a connection came from the router itself: from loopback or
/// from one of its own configured addresses (the kernel drops packets that
/// arrive from outside with a local source address, so a LAN device cannot
/// pose as one).
pub fn is_router_itself(peer: IpAddr, cfg: &crate::config::Config) -> bool {
    if peer.is_loopback() {
        return true;
    }
    let own = [
        IpAddr::V4(cfg.lan.address),
        IpAddr::V4(cfg.wan.address),
        IpAddr::V4(cfg.router_part_address),
        cfg.web_ui_listen.ip(),
    ];
    !peer.is_unspecified() && own.contains(&peer)
}

/// `host[:port]` -> `host` (`[v6]:port` -> `[v6]`); `None` if the port
/// is not a number.
fn strip_port(host: &str) -> Option<&str> {
    let (name, port) = match host.rfind(':') {
        Some(i) if !host.ends_with(']') => (host.get(..i)?, host.get(i.saturating_add(1)..)?),
        _ => (host, "0"),
    };
    if name.is_empty() || port.parse::<u16>().is_err() {
        return None;
    }
    Some(name)
}

/// Checks one `web_ui.host_names` entry: a DNS name (letters, digits and
/// `-` in labels of 1 to 63 characters, at most 253 in all), not an IP
/// literal (the router's addresses are always accepted). Returns it lower
/// case without a trailing dot.
pub fn check_host_name(name: &str) -> Result<String, String> {
    let n = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    if n.is_empty() || n.len() > 253 {
        return Err(format!("{name:?} is not a host name (1 to 253 characters)"));
    }
    if n.parse::<IpAddr>().is_ok() {
        return Err(format!(
            "{name:?} is an address: the router's own addresses are always accepted, list names only"
        ));
    }
    for label in n.split('.') {
        let ok = (1..=63).contains(&label.len())
            && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(format!(
                "{name:?} is not a host name (labels of letters, digits and inner '-', 1 to 63 characters)"
            ));
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed() -> AllowedHosts {
        AllowedHosts {
            addresses: vec!["192.168.1.1".parse().unwrap()],
            names: vec!["router.lan".into(), "router".into()],
        }
    }

    #[test]
    fn the_routers_addresses_and_names_are_accepted_with_or_without_port() {
        let a = allowed();
        for h in [
            "192.168.1.1",
            "192.168.1.1:80",
            "router.lan",
            "ROUTER.LAN:8080",
            "router.lan.",
            "router",
            "127.0.0.1:80",
            "[::1]:80",
        ] {
            assert!(a.allows(Some(h)), "{h}");
        }
    }

    #[test]
    fn a_rebound_name_or_anything_else_is_refused() {
        let a = allowed();
        for h in [
            "evil.example",
            "evil.example:80",
            "router.lan.evil.example",
            "192.168.1.10",
            "192.168.1.1:x",
            "192.168.1.1:99999",
            "",
            ":80",
            "[::2]:80",
            "router.lan:80:80",
        ] {
            assert!(!a.allows(Some(h)), "{h}");
        }
        assert!(!a.allows(None), "no Host");
    }

    #[test]
    fn only_the_router_itself_is_the_router_itself() {
        let cfg = crate::config::tests::sample_config();
        for own in ["127.0.0.1", "::1", "192.168.1.1", "198.51.100.101"] {
            assert!(is_router_itself(own.parse().unwrap(), &cfg), "{own}");
        }
        for other in ["192.168.1.10", "198.51.100.1", "0.0.0.0"] {
            assert!(!is_router_itself(other.parse().unwrap(), &cfg), "{other}");
        }
        let a = AllowedHosts::for_config(&cfg);
        assert_eq!(a.addresses, [IpAddr::from([192, 168, 1, 1])]);
    }

    #[test]
    fn configured_names_are_checked() {
        assert_eq!(check_host_name("Router.LAN.").unwrap(), "router.lan");
        for bad in ["", "192.168.1.1", "-a.lan", "a..lan", "a b", "a_b.lan", &"x".repeat(64)] {
            assert!(check_host_name(bad).is_err(), "{bad}");
        }
    }
}
