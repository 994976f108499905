//! gatewayd's configuration (TOML, raw -> validated, errors name the key).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use vpnnat_proto::keys::GatewayApiKey;
use vpnnat_proto::strength::{key_from_config, GENERATE_HINT};
use vpnnat_proto::types::{GatewayName, IkeIdentity, Ipv4Cidr, UnicastAddr};

use vpnnat_datapath::nft::gateway::{L4Proto, TunnelAllow};
use vpnnat_service::config::{ConfigError, HttpEndpoint};

/// Which datapath programs the policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DatapathKind {
    /// The kernel's XFRM policy database (needs CAP_NET_ADMIN).
    Kernel,
    /// In memory only: nothing reaches the kernel (tests, demos without root).
    Recording,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    name: String,
    listen: String,
    api_key: String,
    global_ip: String,
    ike_id: Option<String>,
    center_networks: Vec<String>,
    center_url: String,
    policy_priority: Option<u32>,
    datapath: Option<DatapathKind>,
    event_timeout_ms: Option<u64>,
    ike: Option<bool>,
    log: Option<vpnnat_service::logging::RawLog>,
    vpnnat_networks: Option<Vec<String>>,
    center_hosts: Option<Vec<String>>,
    #[serde(default)]
    tunnel_allow: Vec<RawAllow>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAllow {
    address: String,
    port: u16,
    protocol: Option<String>,
}

/// gatewayd's validated configuration.
#[derive(Debug)]
pub struct GatewaydConfig {
    pub name: GatewayName,
    pub listen: SocketAddr,
    pub api_key: GatewayApiKey,
    pub global_ip: Ipv4Addr,
    /// The IKE identity gatewayd authenticates as: centerd's `ike_id` for
    /// this gateway, which routers check (an IPv4 address is
    /// ID_IPV4_ADDR, anything else ID_FQDN). Default: `global_ip`.
    pub ike_id: IkeIdentity,
    pub center_networks: Vec<vpnnat_datapath::Ipv4Cidr>,
    /// centerd's router/gateway API, where tunnel events go.
    pub center: HttpEndpoint,
    pub policy_priority: u32,
    pub datapath: DatapathKind,
    pub event_timeout: Duration,
    /// Negotiate the tunnels' SAs with IKEv2 from `global_ip` (UDP 500 and
    /// 4500); `false`: policies only, every tunnel stays "connecting".
    pub ike: bool,
    /// `[log]`: level and format (`RUST_LOG`, `VPNNAT_LOG_FORMAT` override
    /// them).
    pub log: vpnnat_service::logging::LogConfig,
    /// `[[tunnel_allow]]`: the center services a granted host may open a
    /// connection to through its tunnel (issue 18, item 1); empty: none,
    /// only replies to connections the center side opened get out of a
    /// tunnel.
    pub tunnel_allow: Vec<TunnelAllow>,
    /// `vpnnat_networks`: centerd's VPNNAT pools; any source in them is
    /// filtered as from a tunnel, through an SA or not (optional:
    /// decapsulated packets always are).
    pub vpnnat_networks: Vec<vpnnat_datapath::Ipv4Cidr>,
    /// Hosts a tunnel must never reach whatever `tunnel_allow` says:
    /// centerd's (router API, operator UI, DNS; `center_url`'s address is
    /// always one), the other gateways' APIs, and this gateway itself.
    pub center_hosts: Vec<Ipv4Addr>,
}

fn invalid(key: &str, reason: impl ToString) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        reason: reason.to_string(),
    }
}

impl GatewaydConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, origin: &Path) -> Result<Self, ConfigError> {
        let raw: Raw = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from(origin),
            message: vpnnat_service::config::toml_error_message(text, &e),
        })?;
        let name = GatewayName::new(raw.name.as_str()).map_err(|e| invalid("name", e))?;
        let listen = raw
            .listen
            .parse()
            .map_err(|_| invalid("listen", "not an address:port"))?;
        let api_key = key_from_config::<GatewayApiKey>(&raw.api_key).map_err(|e| {
            invalid(
                "api_key",
                format!("{e}; {GENERATE_HINT} (the same key as centerd's [[gateways]] api_key)"),
            )
        })?;
        let ip: Ipv4Addr = raw
            .global_ip
            .parse()
            .map_err(|_| invalid("global_ip", "not an IPv4 address"))?;
        let global_ip = UnicastAddr::new(ip).map_err(|e| invalid("global_ip", e))?.get();
        let ike_id = match &raw.ike_id {
            Some(id) => IkeIdentity::new(id.as_str()).map_err(|e| invalid("ike_id", e))?,
            None => IkeIdentity::new(global_ip.to_string()).map_err(|e| invalid("global_ip", e))?,
        };
        if raw.center_networks.is_empty() {
            return Err(invalid("center_networks", "at least one network is needed"));
        }
        let mut center_networks = Vec::new();
        for (i, n) in raw.center_networks.iter().enumerate() {
            let key = format!("center_networks[{i}]");
            let c: Ipv4Cidr = n.parse().map_err(|e| invalid(&key, e))?;
            let d = vpnnat_datapath::Ipv4Cidr::new(c.addr(), c.prefix_len()).map_err(|e| invalid(&key, e))?;
            center_networks.push(d);
        }
        let center = HttpEndpoint::parse(&raw.center_url).map_err(|e| invalid("center_url", e))?;
        let mut vpnnat_networks = Vec::new();
        for (i, n) in raw.vpnnat_networks.iter().flatten().enumerate() {
            let key = format!("vpnnat_networks[{i}]");
            let c: Ipv4Cidr = n.parse().map_err(|e| invalid(&key, e))?;
            vpnnat_networks
                .push(vpnnat_datapath::Ipv4Cidr::new(c.addr(), c.prefix_len()).map_err(|e| invalid(&key, e))?);
        }
        // The hosts no allow-list entry may name: this gateway (its API
        // and global addresses), centerd (center_url), and those listed.
        let mut center_hosts = vec![global_ip];
        if let SocketAddr::V4(l) = listen {
            if !l.ip().is_unspecified() {
                center_hosts.push(*l.ip());
            }
        }
        if let Ok(SocketAddr::V4(c)) = center.authority.parse::<SocketAddr>() {
            center_hosts.push(*c.ip());
        }
        for (i, h) in raw.center_hosts.iter().flatten().enumerate() {
            center_hosts.push(
                h.parse()
                    .map_err(|_| invalid(&format!("center_hosts[{i}]"), "not an IPv4 address"))?,
            );
        }
        let mut tunnel_allow = Vec::new();
        for (i, a) in raw.tunnel_allow.iter().enumerate() {
            let key = format!("tunnel_allow[{i}]");
            let address: Ipv4Addr = a
                .address
                .parse()
                .map_err(|_| invalid(&format!("{key}.address"), "not an IPv4 address"))?;
            let protocol = match a.protocol.as_deref().unwrap_or("tcp") {
                "tcp" => L4Proto::Tcp,
                "udp" => L4Proto::Udp,
                other => return Err(invalid(&format!("{key}.protocol"), format!("{other:?}: tcp or udp"))),
            };
            if a.port == 0 {
                return Err(invalid(&format!("{key}.port"), "must be 1-65535"));
            }
            let entry = TunnelAllow {
                address,
                port: a.port,
                protocol,
            };
            if center_hosts.contains(&address) {
                return Err(invalid(
                    &key,
                    format!(
                        "{entry} is on a host a tunnel must never reach (centerd's router API, operator UI or \
                         DNS, a gatewayd API: this gateway, center_url or center_hosts); serve it from another host"
                    ),
                ));
            }
            // Every gateway's API usually listens on the same port: refuse
            // it on any address, so another gateway's API stays closed too.
            if protocol == L4Proto::Tcp && a.port == listen.port() {
                return Err(invalid(
                    &key,
                    format!(
                        "{entry}: port {} is the gatewayd API's, never reachable from a tunnel",
                        a.port
                    ),
                ));
            }
            tunnel_allow.push(entry);
        }
        Ok(GatewaydConfig {
            name,
            listen,
            api_key,
            global_ip,
            ike_id,
            center_networks,
            center,
            policy_priority: raw.policy_priority.unwrap_or(1000),
            datapath: raw.datapath.unwrap_or(DatapathKind::Kernel),
            event_timeout: Duration::from_millis(raw.event_timeout_ms.unwrap_or(5000)),
            ike: raw.ike.unwrap_or(false),
            log: vpnnat_service::logging::LogConfig::from_raw(raw.log).map_err(|(key, e)| invalid(key, e))?,
            tunnel_allow,
            vpnnat_networks,
            center_hosts,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const EXAMPLE: &str = r#"
name = "gw1"
listen = "127.0.0.1:9000"
api_key = "cac2a3e456cc6e47cef48169db8c58d329f5f1c50381559a3ae2969d9a233b4f"
global_ip = "198.51.100.11"
center_networks = ["172.16.0.0/24"]
center_url = "http://127.0.0.1:8080"
"#;

    #[test]
    fn parses_and_names_keys() {
        let c = GatewaydConfig::parse(EXAMPLE, Path::new("g.toml")).unwrap();
        assert_eq!(c.name.as_str(), "gw1");
        assert_eq!(c.datapath, DatapathKind::Kernel);
        assert!(!c.ike);
        let on = GatewaydConfig::parse(&format!("{EXAMPLE}\nike = true"), Path::new("g.toml")).unwrap();
        assert!(on.ike);
        assert!(!format!("{c:?}").contains("cac2a3"));
        let err = |t: String| GatewaydConfig::parse(&t, Path::new("g.toml")).unwrap_err().to_string();
        assert!(err(EXAMPLE.replace("172.16.0.0/24", "172.16.0.1/24")).contains("center_networks[0]"));
        assert!(err(EXAMPLE.replace("\"cac2", "\"zzc2")).contains("api_key"));
        assert!(err(format!("{EXAMPLE}\nextra = 1")).contains("extra"));
        // A syntax error on the key's line must not quote it (fuzz finding).
        let e = err(EXAMPLE.replace("api_key = ", "api_key \0= "));
        assert!(e.contains("line 4") && !e.contains("cac2a3"), "{e}");
        assert!(err(EXAMPLE.replace("http://127.0.0.1:8080", "127.0.0.1")).contains("center_url"));
        assert!(err(format!("{EXAMPLE}\ndatapath = \"magic\"")).contains("datapath"));
        assert!(err(format!("{EXAMPLE}\nike = \"yes\"")).contains("ike"));
        // The IKE identity: the global address unless named.
        assert_eq!(c.ike_id.as_str(), "198.51.100.11");
        let named = GatewaydConfig::parse(
            &format!("ike_id = \"gw1.center.example\"\n{EXAMPLE}"),
            Path::new("g.toml"),
        )
        .unwrap();
        assert_eq!(named.ike_id.as_str(), "gw1.center.example");
        assert!(err(format!("ike_id = \"gw 1\"\n{EXAMPLE}")).contains("ike_id"));
        assert_eq!(c.log, vpnnat_service::logging::LogConfig::default());
        let l = GatewaydConfig::parse(
            &format!("{EXAMPLE}\n[log]\nlevel = \"debug\"\nformat = \"syslog\""),
            Path::new("g.toml"),
        )
        .unwrap();
        assert_eq!(l.log.level.as_deref(), Some("debug"));
        assert_eq!(l.log.format, Some(vpnnat_service::logging::Format::Syslog));
        assert!(err(format!("{EXAMPLE}\n[log]\nlevel = \"chatty\"")).contains("log.level"));
        assert!(err(format!("{EXAMPLE}\n[log]\nformat = \"json\"")).contains("log.format"));
        assert!(err(format!("{EXAMPLE}\n[log]\ncolour = true")).contains("colour"));
    }

    /// Issue 18, item 1: the allow-list is empty unless configured, and
    /// never names centerd's or a gatewayd's API.
    #[test]
    fn tunnel_allow_list_is_empty_by_default_and_refuses_the_center_services() {
        let c = GatewaydConfig::parse(EXAMPLE, Path::new("g.toml")).unwrap();
        assert!(c.tunnel_allow.is_empty() && c.vpnnat_networks.is_empty());
        let with = |extra: &str| GatewaydConfig::parse(&format!("{EXAMPLE}\n{extra}"), Path::new("g.toml"));
        let ok = with(
            "vpnnat_networks = [\"10.64.0.0/16\"]\n[[tunnel_allow]]\naddress = \"172.16.0.50\"\nport = 8000\n\
             [[tunnel_allow]]\naddress = \"172.16.0.51\"\nport = 69\nprotocol = \"udp\"",
        )
        .unwrap();
        assert_eq!(
            ok.tunnel_allow.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["172.16.0.50:8000/tcp", "172.16.0.51:69/udp"]
        );
        assert_eq!(ok.vpnnat_networks, vec!["10.64.0.0/16".parse().unwrap()]);
        let err = |extra: &str| with(extra).unwrap_err().to_string();
        let entry = |addr: &str, port: u16| format!("[[tunnel_allow]]\naddress = \"{addr}\"\nport = {port}");
        // centerd (center_url), this gateway's API and global address, the
        // listed center hosts (UI, DNS), and the gatewayd API port anywhere.
        for (what, e) in [
            ("centerd", err(&entry("127.0.0.1", 8080))),
            ("centerd, another port", err(&entry("127.0.0.1", 8443))),
            ("global address", err(&entry("198.51.100.11", 22))),
            ("API port elsewhere", err(&entry("172.16.0.22", 9000))),
            (
                "listed host",
                err(&format!(
                    "center_hosts = [\"172.16.0.10\"]\n{}",
                    entry("172.16.0.10", 53)
                )),
            ),
        ] {
            assert!(e.contains("tunnel_allow[0]") && e.contains("never"), "{what}: {e}");
        }
        assert!(err(&format!("{}\nprotocol = \"sctp\"", entry("172.16.0.50", 1))).contains("tunnel_allow[0].protocol"));
        assert!(err(&entry("172.16.0.50", 0)).contains("tunnel_allow[0].port"));
        assert!(err(&entry("host", 80)).contains("tunnel_allow[0].address"));
        assert!(err("center_hosts = [\"x\"]").contains("center_hosts[0]"));
        assert!(err("vpnnat_networks = [\"10.64.0.1/16\"]").contains("vpnnat_networks[0]"));
    }
}
