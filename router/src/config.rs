//! `routerd.toml`: a raw, serde-shaped [`RawConfig`] that mirrors the file
//! (every table denies unknown keys) and the validated [`Config`] the rest of
//! the daemon uses. Validation errors name the key (`wan.address`,
//! `hosts.pc1`, ...), so a person at the router's shell can fix the file
//! without reading code.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;
use vpnnat_proto::keys::SecretId;
use vpnnat_proto::strength::key_from_config;
use vpnnat_proto::types::{ClaimantLevel, ClaimantName, Phone, RequestContent, TerminalId, TerminalName, Urgency};
use zeroize::Zeroizing;

use crate::secret::SecretString;

/// Where `routerd` looks when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/routerd.toml";

/// The configuration file could not be used.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// TOML syntax, a wrong type or an unknown key; toml's message names the
    /// key and the line.
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: invalid value for `{key}`: {reason}")]
    Invalid { path: PathBuf, key: String, reason: String },
}

// ---------------------------------------------------------------------------
// Raw form: exactly what the file says.
// ---------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub terminal_id: String,
    pub center_url: String,
    /// Secret(ID) as 64 hex digits. Zeroized when the raw config is dropped.
    pub factory_secret: SecretString,
    pub state_dir: Option<String>,
    pub lease_file: Option<String>,
    /// Resolve names that neither the static table nor the lease file know
    /// through the system resolver (dnsmasq on the image).
    pub dns: Option<bool>,
    pub center_timeout_secs: Option<u64>,
    pub retry_max_secs: Option<u64>,
    pub health_period_secs: Option<u64>,
    pub wan: RawInterface,
    pub lan: RawInterface,
    pub web_ui: Option<RawWebUi>,
    pub server_part: Option<RawListen>,
    pub router_part_address: Option<String>,
    #[serde(default)]
    pub hosts: BTreeMap<String, String>,
    pub button: Option<RawButton>,
    #[serde(default)]
    pub helper: Vec<RawHelper>,
    /// Kernel modules PID 1 loads before setting up the network.
    #[serde(default)]
    pub modules: Vec<String>,
    pub log: Option<RawLog>,
    /// Who starts the tunnel: `gateway`, `router` or `auto` (default: the
    /// center decides; issue 17).
    pub tunnel_initiation: Option<vpnnat_proto::initiation::InitiationPreference>,
}

/// `[log]`: what routerd logs and how (`RUST_LOG` and `VPNNAT_LOG_FORMAT`
/// override it).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub level: Option<String>,
    pub format: Option<String>,
}

impl fmt::Debug for RawConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawConfig")
            .field("terminal_id", &self.terminal_id)
            .field("center_url", &self.center_url)
            .field("factory_secret", &"<redacted>")
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawInterface {
    pub interface: String,
    /// `a.b.c.d/len`.
    pub address: String,
    /// Next hop of the default route (WAN only).
    pub gateway: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListen {
    pub listen: String,
}

/// `[web_ui]`: the LAN page's address and the names it answers to.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWebUi {
    pub listen: Option<String>,
    /// DNS names of the router on its LAN (e.g. `router.lan`) that the
    /// page accepts as `Host`, besides the router's addresses.
    #[serde(default)]
    pub host_names: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawButton {
    pub claimant_name: String,
    pub claimant_level: String,
    pub urgency: String,
    pub phone: String,
    pub content: String,
    pub terminals: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHelper {
    pub name: String,
    pub command: Vec<String>,
}

// ---------------------------------------------------------------------------
// Validated form.
// ---------------------------------------------------------------------------

/// An interface with its address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Option<Ipv4Addr>,
}

impl Interface {
    /// The interface's subnet (for the NAT table's LAN side).
    pub fn subnet(&self) -> vpnnat_datapath::Ipv4Cidr {
        let net = std::net::Ipv4Addr::from(u32::from(self.address) & prefix_mask(self.prefix_len));
        // A network address with its prefix length (at most 32, checked
        // when the configuration was read) is always a valid CIDR.
        vpnnat_datapath::Ipv4Cidr::new(net, self.prefix_len.min(32))
            .unwrap_or_else(|_| vpnnat_datapath::Ipv4Cidr::host(net))
    }

    /// Whether `ip` is on this interface's subnet.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = prefix_mask(self.prefix_len);
        u32::from(ip) & mask == u32::from(self.address) & mask
    }
}

fn prefix_mask(len: u8) -> u32 {
    u32::MAX.checked_shl(32u32.saturating_sub(u32::from(len))).unwrap_or(0)
}

/// The center's base URL; only plain `http://` (the messages are protected
/// at the application layer, PROTOCOL.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CenterUrl {
    pub host: String,
    pub port: u16,
    /// Path prefix without a trailing slash ("" for none).
    pub prefix: String,
}

impl CenterUrl {
    pub fn parse(s: &str) -> Result<Self, String> {
        let rest = s
            .strip_prefix("http://")
            .ok_or_else(|| "must start with http://".to_string())?;
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if authority.is_empty() {
            return Err("has no host".into());
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (h, p.parse::<u16>().map_err(|_| format!("bad port {p:?}"))?),
            None => (authority, 80),
        };
        if host.is_empty()
            || !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        {
            return Err(format!("bad host {host:?}"));
        }
        Ok(CenterUrl {
            host: host.to_string(),
            port,
            prefix: path.trim_end_matches('/').to_string(),
        })
    }

    /// `host:port`, for the Host header and for connecting.
    pub fn authority(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

impl fmt::Display for CenterUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}:{}{}", self.host, self.port, self.prefix)
    }
}

/// The preset claimant data of the button (seed [0138]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ButtonPreset {
    pub claimant_name: ClaimantName,
    pub claimant_level: ClaimantLevel,
    pub urgency: Urgency,
    pub phone: Phone,
    pub content: RequestContent,
    pub terminals: Vec<TerminalName>,
}

/// A helper process PID 1 starts and restarts (e.g. dnsmasq).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Helper {
    pub name: String,
    pub command: Vec<String>,
}

/// Default `center_timeout_secs`: a maintenance request is answered once its
/// tunnel is up, and the center waits for that up to its own
/// `tunnel_up_timeout_ms` (10 s by default) after its gateway commands; the
/// router waits longer, so that the center's answer (accepted, or what
/// failed) arrives instead of a time-out of its own.
pub const DEFAULT_CENTER_TIMEOUT_SECS: u64 = 30;

/// Default `health_period_secs` (see [`crate::health::HealthSettings::period`]).
pub const DEFAULT_HEALTH_PERIOD_SECS: u64 = 30;

/// The validated configuration.
pub struct Config {
    pub path: PathBuf,
    /// `[log] level` (an env_logger filter; `RUST_LOG` overrides it).
    pub log_level: Option<String>,
    /// `[log] format` (`VPNNAT_LOG_FORMAT` overrides it; default syslog as
    /// PID 1, else plain).
    pub log_format: Option<vpnnat_log::Format>,
    pub terminal_id: TerminalId,
    pub center_url: CenterUrl,
    pub factory_secret: SecretId,
    pub state_dir: PathBuf,
    pub lease_file: PathBuf,
    pub dns: bool,
    pub center_timeout: Duration,
    pub retry_max: Duration,
    /// `health_period_secs`: how often the health watch looks (and retries
    /// the kernel reconcile and unsent ends); 30 s by default.
    pub health_period: Duration,
    pub wan: Interface,
    pub lan: Interface,
    pub web_ui_listen: SocketAddr,
    /// `web_ui.host_names`: checked, lower case, no trailing dot.
    pub web_ui_host_names: Vec<String>,
    pub server_part_listen: SocketAddr,
    /// Real address behind the router-part VPNNAT address.
    pub router_part_address: Ipv4Addr,
    pub hosts: BTreeMap<TerminalName, Ipv4Addr>,
    pub button: Option<ButtonPreset>,
    pub helpers: Vec<Helper>,
    pub modules: Vec<String>,
    /// `tunnel_initiation`: asked of the center with each gateway address
    /// request, with the WAN address.
    pub tunnel_initiation: vpnnat_proto::initiation::InitiationPreference,
}

impl fmt::Debug for Config {
    // Hand-written so that the factory secret can never reach a log; the
    // secret type redacts itself too, this keeps it out even of its name.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("path", &self.path)
            .field("terminal_id", &self.terminal_id)
            .field("center_url", &self.center_url.to_string())
            .field("factory_secret", &"<redacted>")
            .field("state_dir", &self.state_dir)
            .field("lease_file", &self.lease_file)
            .field("dns", &self.dns)
            .field("wan", &self.wan)
            .field("lan", &self.lan)
            .field("web_ui_listen", &self.web_ui_listen)
            .field("web_ui_host_names", &self.web_ui_host_names)
            .field("server_part_listen", &self.server_part_listen)
            .field("router_part_address", &self.router_part_address)
            .field("hosts", &self.hosts)
            .field("button", &self.button)
            .field("helpers", &self.helpers)
            .field("modules", &self.modules)
            .finish()
    }
}

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?);
        Config::parse(&text, path)
    }

    /// Parses and validates the text of a config file; `path` is only used
    /// in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: toml_error_message(text, &e),
        })?;
        Config::validate(raw, path)
    }

    fn validate(raw: RawConfig, path: &Path) -> Result<Config, ConfigError> {
        let bad = |key: &str, reason: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            key: key.to_string(),
            reason,
        };
        let terminal_id = TerminalId::new(raw.terminal_id.clone()).map_err(|e| bad("terminal_id", e.to_string()))?;
        let center_url = CenterUrl::parse(&raw.center_url).map_err(|r| bad("center_url", r))?;
        // Never echo the value: only what is wrong with it.
        let factory_secret = key_from_config::<SecretId>(raw.factory_secret.expose()).map_err(|e| {
            bad(
                "factory_secret",
                format!(
                    "{e}; write this router's Secret(ID), 64 hex digits \
                     (`centerd factory-secret TERMINAL_ID` on the center prints it)"
                ),
            )
        })?;
        let wan = interface(&raw.wan, "wan").map_err(|(k, r)| bad(&k, r))?;
        let lan = interface(&raw.lan, "lan").map_err(|(k, r)| bad(&k, r))?;
        if lan.gateway.is_some() {
            return Err(bad("lan.gateway", "only the WAN has a default gateway".into()));
        }
        let listen = |key: &str, raw: &Option<RawListen>, port: u16| -> Result<SocketAddr, ConfigError> {
            match raw {
                None => Ok(SocketAddr::from((lan.address, port))),
                Some(l) => l
                    .listen
                    .parse::<SocketAddr>()
                    .map_err(|_| bad(key, format!("{:?} is not an address:port", l.listen))),
            }
        };
        let web_ui_listen = listen(
            "web_ui.listen",
            &raw.web_ui
                .as_ref()
                .and_then(|w| w.listen.clone())
                .map(|listen| RawListen { listen }),
            80,
        )?;
        let mut web_ui_host_names = Vec::new();
        for (i, n) in raw.web_ui.iter().flat_map(|w| w.host_names.iter()).enumerate() {
            web_ui_host_names
                .push(crate::lan_host::check_host_name(n).map_err(|r| bad(&format!("web_ui.host_names[{i}]"), r))?);
        }
        let server_part_listen = listen("server_part.listen", &raw.server_part, 8080)?;
        if web_ui_listen == server_part_listen {
            return Err(bad(
                "server_part.listen",
                "must differ from web_ui.listen (center commands and the LAN page are separate servers)".into(),
            ));
        }
        let router_part_address = match &raw.router_part_address {
            None => wan.address,
            Some(s) => s
                .parse()
                .map_err(|_| bad("router_part_address", format!("{s:?} is not an IPv4 address")))?,
        };
        if router_part_address == lan.address {
            return Err(bad(
                "router_part_address",
                "must differ from lan.address, which the server part uses".into(),
            ));
        }
        let mut hosts = BTreeMap::new();
        for (name, ip) in &raw.hosts {
            let key = format!("hosts.{name}");
            let n = TerminalName::new(name.clone()).map_err(|e| bad(&key, e.to_string()))?;
            let ip: Ipv4Addr = ip
                .parse()
                .map_err(|_| bad(&key, format!("{ip:?} is not an IPv4 address")))?;
            if !lan.contains(ip) {
                return Err(bad(
                    &key,
                    format!("{ip} is not on the LAN {}/{}", lan.address, lan.prefix_len),
                ));
            }
            if let Some(what) = crate::resolve::not_a_device(&lan, ip) {
                return Err(bad(&key, format!("{ip} is {what}, not a LAN device")));
            }
            if crate::resolve::is_ip_literal(name) {
                return Err(bad(&key, "an IP address is not an extension terminal name".into()));
            }
            if vpnnat_proto::types::is_router_own_part(name) {
                return Err(bad(
                    &key,
                    "this name is the router's own part's, not a LAN host's".into(),
                ));
            }
            hosts.insert(n, ip);
        }
        let button = match &raw.button {
            None => None,
            Some(b) => Some(button(b).map_err(|(k, r)| bad(&k, r))?),
        };
        let mut helpers = Vec::new();
        for (i, h) in raw.helper.iter().enumerate() {
            if h.name.is_empty()
                || !h
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(bad(
                    &format!("helper[{i}].name"),
                    "letters, digits, '-' and '_' only".into(),
                ));
            }
            match h.command.first() {
                Some(p) if p.starts_with('/') => {}
                _ => {
                    return Err(bad(
                        &format!("helper[{i}].command"),
                        "needs an absolute program path".into(),
                    ))
                }
            }
            helpers.push(Helper {
                name: h.name.clone(),
                command: h.command.clone(),
            });
        }
        for (i, m) in raw.modules.iter().enumerate() {
            if m.is_empty() || !m.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
                return Err(bad(&format!("modules[{i}]"), format!("{m:?} is not a module name")));
            }
        }
        let secs = |key: &str, v: Option<u64>, default: u64| -> Result<Duration, ConfigError> {
            match v.unwrap_or(default) {
                0 => Err(bad(key, "must be at least 1".into())),
                n if n > 86_400 => Err(bad(key, "must be at most 86400".into())),
                n => Ok(Duration::from_secs(n)),
            }
        };
        let (log_level, log_format) = match &raw.log {
            None => (None, None),
            Some(l) => {
                if let Some(level) = &l.level {
                    vpnnat_log::check_filter(level).map_err(|r| bad("log.level", r))?;
                }
                let format = l
                    .format
                    .as_deref()
                    .map(vpnnat_log::Format::parse)
                    .transpose()
                    .map_err(|r| bad("log.format", r))?;
                (l.level.clone(), format)
            }
        };
        Ok(Config {
            path: path.to_path_buf(),
            log_level,
            log_format,
            terminal_id,
            center_url,
            factory_secret,
            state_dir: PathBuf::from(raw.state_dir.as_deref().unwrap_or("/var/lib/routerd")),
            lease_file: PathBuf::from(raw.lease_file.as_deref().unwrap_or("/var/lib/misc/dnsmasq.leases")),
            dns: raw.dns.unwrap_or(true),
            center_timeout: secs(
                "center_timeout_secs",
                raw.center_timeout_secs,
                DEFAULT_CENTER_TIMEOUT_SECS,
            )?,
            retry_max: secs("retry_max_secs", raw.retry_max_secs, 300)?,
            health_period: secs("health_period_secs", raw.health_period_secs, DEFAULT_HEALTH_PERIOD_SECS)?,
            wan,
            lan,
            web_ui_listen,
            web_ui_host_names,
            server_part_listen,
            router_part_address,
            hosts,
            button,
            helpers,
            modules: raw.modules.clone(),
            tunnel_initiation: raw.tunnel_initiation.unwrap_or_default(),
        })
    }

    /// The state file inside `state_dir`.
    pub fn state_file(&self) -> PathBuf {
        self.state_dir.join("state.json")
    }
}

/// A TOML error without the quoted source line (it may hold a secret):
/// [`vpnnat_log::config_error_message`].
fn toml_error_message(text: &str, e: &toml::de::Error) -> String {
    vpnnat_log::config_error_message(text, e.span(), e.message())
}

fn interface(raw: &RawInterface, table: &str) -> Result<Interface, (String, String)> {
    let key = |k: &str| format!("{table}.{k}");
    if raw.interface.is_empty() || raw.interface.len() > 15 || raw.interface.contains('/') {
        return Err((
            key("interface"),
            format!("{:?} is not an interface name", raw.interface),
        ));
    }
    let (a, l) = raw
        .address
        .split_once('/')
        .ok_or_else(|| (key("address"), format!("{:?} needs the form a.b.c.d/len", raw.address)))?;
    let address: Ipv4Addr = a
        .parse()
        .map_err(|_| (key("address"), format!("{a:?} is not an IPv4 address")))?;
    let prefix_len: u8 = l
        .parse()
        .ok()
        .filter(|l| (1..=32).contains(l))
        .ok_or_else(|| (key("address"), format!("{l:?} is not a prefix length 1..=32")))?;
    let gateway = match &raw.gateway {
        None => None,
        Some(g) => Some(
            g.parse::<Ipv4Addr>()
                .map_err(|_| (key("gateway"), format!("{g:?} is not an IPv4 address")))?,
        ),
    };
    Ok(Interface {
        name: raw.interface.clone(),
        address,
        prefix_len,
        gateway,
    })
}

fn button(b: &RawButton) -> Result<ButtonPreset, (String, String)> {
    let e = |k: &str, r: String| (format!("button.{k}"), r);
    let claimant_level = match b.claimant_level.as_str() {
        "general" => ClaimantLevel::General,
        "administrator" => ClaimantLevel::Administrator,
        other => {
            return Err(e(
                "claimant_level",
                format!("{other:?}: expected general or administrator"),
            ))
        }
    };
    let terminals = b
        .terminals
        .iter()
        .map(|t| TerminalName::new(t.clone()).map_err(|x| e("terminals", x.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    if terminals.is_empty() {
        return Err(e("terminals", "needs at least one extension terminal".into()));
    }
    Ok(ButtonPreset {
        claimant_name: ClaimantName::new(b.claimant_name.clone()).map_err(|x| e("claimant_name", x.to_string()))?,
        claimant_level,
        urgency: parse_urgency(&b.urgency).map_err(|r| e("urgency", r))?,
        phone: Phone::new(b.phone.clone()).map_err(|x| e("phone", x.to_string()))?,
        content: RequestContent::new(b.content.clone()).map_err(|x| e("content", x.to_string()))?,
        terminals,
    })
}

/// `low`, `normal`, `high` or `emergency`.
pub fn parse_urgency(s: &str) -> Result<Urgency, String> {
    match s {
        "low" => Ok(Urgency::Low),
        "normal" => Ok(Urgency::Normal),
        "high" => Ok(Urgency::High),
        "emergency" => Ok(Urgency::Emergency),
        other => Err(format!("{other:?}: expected low, normal, high or emergency")),
    }
}

/// `general` or `administrator`.
pub fn parse_level(s: &str) -> Result<ClaimantLevel, String> {
    match s {
        "general" => Ok(ClaimantLevel::General),
        "administrator" => Ok(ClaimantLevel::Administrator),
        other => Err(format!("{other:?}: expected general or administrator")),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const SECRET_HEX: &str = "b2436d14c46a90a3445701fb167d87cb767fdafcd2123262581902792a697545";

    pub(crate) fn sample() -> String {
        format!(
            r#"
terminal_id = "router-1"
center_url = "http://198.51.100.10:8080"
factory_secret = "{SECRET_HEX}"
state_dir = "/tmp/routerd-test"
[wan]
interface = "eth0"
address = "198.51.100.101/24"
gateway = "198.51.100.1"
[lan]
interface = "eth1"
address = "192.168.1.1/24"
[hosts]
pc1 = "192.168.1.10"
printer = "192.168.1.20"
[button]
claimant_name = "Hanako Yamada"
claimant_level = "general"
urgency = "high"
phone = "+81 3 1234 5678"
content = "The router reported a failure."
terminals = ["pc1"]
[[helper]]
name = "dnsmasq"
command = ["/usr/sbin/dnsmasq", "-k"]
"#
        )
    }

    pub(crate) fn sample_config() -> Config {
        Config::parse(&sample(), Path::new("test.toml")).unwrap()
    }

    fn err(text: &str) -> String {
        Config::parse(text, Path::new("t.toml")).unwrap_err().to_string()
    }

    #[test]
    fn tunnel_initiation_is_read_and_checked() {
        use vpnnat_proto::initiation::InitiationPreference;
        assert_eq!(sample_config().tunnel_initiation, InitiationPreference::Auto);
        for (word, want) in [
            ("auto", InitiationPreference::Auto),
            ("gateway", InitiationPreference::Gateway),
            ("router", InitiationPreference::Router),
        ] {
            let text = format!("tunnel_initiation = \"{word}\"\n{}", sample());
            let c = Config::parse(&text, Path::new("t.toml")).unwrap();
            assert_eq!(c.tunnel_initiation, want);
        }
        let e = err(&format!("tunnel_initiation = \"sometimes\"\n{}", sample()));
        assert!(e.contains("sometimes") || e.contains("tunnel_initiation"), "{e}");
    }

    #[test]
    fn health_period_defaults_to_30_s_and_is_checked() {
        assert_eq!(sample_config().health_period, Duration::from_secs(30));
        let c = Config::parse(&format!("health_period_secs = 5\n{}", sample()), Path::new("t.toml")).unwrap();
        assert_eq!(c.health_period, Duration::from_secs(5));
        assert!(err(&format!("health_period_secs = 0\n{}", sample())).contains("health_period_secs"));
        assert!(err(&format!("health_period_secs = 90000\n{}", sample())).contains("health_period_secs"));
    }

    #[test]
    fn log_section_is_checked() {
        let c = sample_config();
        assert_eq!((c.log_level, c.log_format), (None, None));
        let c = Config::parse(
            &format!("{}\n[log]\nlevel = \"warn\"\nformat = \"syslog\"\n", sample()),
            Path::new("t.toml"),
        )
        .unwrap();
        assert_eq!(c.log_level.as_deref(), Some("warn"));
        assert_eq!(c.log_format, Some(vpnnat_log::Format::Syslog));
        assert!(err(&format!("{}\n[log]\nlevel = \"loud\"\n", sample())).contains("log.level"));
        assert!(err(&format!("{}\n[log]\nformat = \"json\"\n", sample())).contains("log.format"));
        assert!(err(&format!("{}\n[log]\ncolour = 1\n", sample())).contains("colour"));
    }

    #[test]
    fn sample_parses_with_defaults() {
        let c = sample_config();
        assert_eq!(c.terminal_id.as_str(), "router-1");
        assert_eq!(c.center_url.authority(), "198.51.100.10:8080");
        assert_eq!(c.web_ui_listen, "192.168.1.1:80".parse().unwrap());
        assert_eq!(c.server_part_listen, "192.168.1.1:8080".parse().unwrap());
        assert_eq!(c.router_part_address, Ipv4Addr::new(198, 51, 100, 101));
        assert_eq!(c.hosts.len(), 2);
        assert_eq!(c.button.as_ref().unwrap().terminals.len(), 1);
        assert_eq!(c.helpers[0].name, "dnsmasq");
        assert!(c.dns);
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let c = sample_config();
        let d = format!("{c:?}");
        assert!(!d.contains(SECRET_HEX) && !d.contains("b2436d"), "{d}");
        let raw: RawConfig = toml::from_str(&sample()).unwrap();
        assert!(!format!("{raw:?}").contains("b2436d"));
    }

    #[test]
    fn parse_errors_never_show_the_secret() {
        // Found by the router_config fuzz target: TOML's error quoted the
        // line it failed on, here the factory secret's, into the log.
        let e = err(&sample().replace("factory_secret = ", "factory_secret \0= "));
        assert!(e.contains("line 4, column 16"), "{e}");
        assert!(!e.contains(SECRET_HEX), "{e}");
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = err(&sample().replace("[lan]", "[lan]\nmtu = 1500"));
        assert!(e.contains("mtu"), "{e}");
        let e = err(&format!("colour = 1\n{}", sample()));
        assert!(e.contains("colour"), "{e}");
    }

    #[test]
    fn bad_values_name_the_key() {
        let cases = [
            ("198.51.100.101/24", "198.51.100.101/40", "wan.address"),
            ("\"192.168.1.10\"", "\"10.0.0.1\"", "hosts.pc1"),
            ("http://198.51.100.10:8080", "https://x", "center_url"),
            ("\"general\"", "\"boss\"", "button.claimant_level"),
            ("\"high\"", "\"now\"", "button.urgency"),
            ("\"router-1\"", "\"-bad\"", "terminal_id"),
            ("\"/usr/sbin/dnsmasq\"", "\"dnsmasq\"", "helper[0].command"),
            ("\"192.168.1.20\"", "\"192.168.1.255\"", "hosts.printer"),
            ("\"192.168.1.20\"", "\"192.168.1.1\"", "hosts.printer"),
            ("printer = ", "\"10.0.0.7\" = ", "hosts.10.0.0.7"),
            ("printer = ", "server-part = ", "hosts.server-part"),
            ("state_dir = ", "modules = [\"x/y\"]\nstate_dir = ", "modules[0]"),
        ];
        for (from, to, key) in cases {
            let e = err(&sample().replacen(from, to, 1));
            assert!(e.contains(&format!("`{key}`")), "{key}: {e}");
        }
        let e = err(&sample().replace(SECRET_HEX, "zz"));
        assert!(e.contains("`factory_secret`") && !e.contains("zz"), "{e}");
    }

    #[test]
    fn missing_key_is_named() {
        let e = err(&sample().replace("center_url = \"http://198.51.100.10:8080\"", ""));
        assert!(e.contains("center_url"), "{e}");
    }

    #[test]
    fn center_url_forms() {
        let u = CenterUrl::parse("http://center.example/api/").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.prefix.as_str()),
            ("center.example", 80, "/api")
        );
        assert!(CenterUrl::parse("http://:80").is_err());
        assert!(CenterUrl::parse("http://a:x").is_err());
    }

    #[test]
    fn web_ui_host_names_are_read_and_checked() {
        assert!(sample_config().web_ui_host_names.is_empty());
        let with = |names: &str| format!("{}\n[web_ui]\nhost_names = {names}\n", sample());
        let c = Config::parse(&with(r#"["Router.lan", "router"]"#), Path::new("t.toml")).unwrap();
        assert_eq!(c.web_ui_host_names, ["router.lan", "router"]);
        // The listen address keeps its default when only names are given.
        assert_eq!(c.web_ui_listen, "192.168.1.1:80".parse().unwrap());
        let e = err(&with(r#"["router.lan", "evil example"]"#));
        assert!(e.contains("`web_ui.host_names[1]`"), "{e}");
        let e = err(&with(r#"["192.168.1.1"]"#));
        assert!(
            e.contains("`web_ui.host_names[0]`") && e.contains("always accepted"),
            "{e}"
        );
    }

    #[test]
    fn listeners_must_differ() {
        let t = format!(
            "{}\n[web_ui]\nlisten = \"127.0.0.1:1\"\n[server_part]\nlisten = \"127.0.0.1:1\"\n",
            sample().replace(
                "[[helper]]\nname = \"dnsmasq\"\ncommand = [\"/usr/sbin/dnsmasq\", \"-k\"]",
                ""
            )
        );
        assert!(err(&t).contains("`server_part.listen`"));
    }

    #[test]
    fn example_and_weak_factory_secrets_are_refused() {
        for weak in [
            "0".repeat(64),
            format!("{}01", "0".repeat(62)),
            "01".repeat(32),
            (0u8..32).map(|b| format!("{b:02x}")).collect::<String>(),
        ] {
            let e = err(&sample().replace(SECRET_HEX, &weak));
            assert!(
                e.contains("`factory_secret`") && e.contains("centerd factory-secret") && !e.contains(&weak),
                "{e}"
            );
        }
    }

    #[test]
    fn shipped_example_is_valid_once_provisioned() {
        let text = include_str!("../../buildroot-overlay/router/etc/routerd.toml");
        // the placeholder is refused, naming the key and where it comes from
        let e = err(text);
        assert!(
            e.contains("`factory_secret`") && e.contains("centerd factory-secret"),
            "{e}"
        );
        let text = text.replace("@SECRET:factory-secret@", SECRET_HEX);
        let c = Config::parse(&text, Path::new("routerd.toml")).unwrap();
        assert!(c.button.is_some());
    }
}
