//! gatewayd's configuration (TOML, raw -> validated, errors name the key).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use vpnnat_proto::keys::GatewayApiKey;
use vpnnat_proto::strength::{key_from_config, GENERATE_HINT};
use vpnnat_proto::types::{GatewayName, IkeIdentity, Ipv4Cidr, UnicastAddr};

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
}
