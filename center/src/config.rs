//! centerd's configuration: TOML, read into raw types that mirror the file
//! (`deny_unknown_fields`, so a typo is an error, not a silently ignored
//! key), then validated into [`CenterdConfig`]. Every error names the key.
//!
//! Secrets: the factory master key and the gateway API keys are hex in the
//! file (keep it mode 0600); operator passwords are only PBKDF2 hashes; the
//! maintenance password handed to routers is read from its own file because
//! it must leave the center in clear (sealed to the router) and so cannot be
//! stored as a hash. `Debug` of every type here redacts secrets.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use vpnnat_proto::auth::ReplayConfig;
use vpnnat_proto::keys::{FactoryMasterKey, GatewayApiKey, MaintenancePassword};
use vpnnat_proto::strength::{check_password, key_from_config, GENERATE_HINT};
use vpnnat_proto::types::{BoundedSet, GatewayName, IkeIdentity, Ipv4Cidr, UnicastAddr};
use zeroize::Zeroizing;

pub use vpnnat_service::config::{toml_error_message, ConfigError, HttpEndpoint};

use crate::center::{CenterSettings, GatewayEntry};
use crate::password::PasswordHash;

fn invalid(key: impl Into<String>, reason: impl ToString) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        reason: reason.to_string(),
    }
}

/// A secret string from the file, wiped from memory when dropped.
struct SecretText(String);

impl<'de> Deserialize<'de> for SecretText {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(SecretText)
    }
}

impl Drop for SecretText {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl std::ops::Deref for SecretText {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

// ---------------------------------------------------------------------------
// Raw: exactly the file.
// ---------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    server: RawServer,
    database: RawDatabase,
    factory: RawFactory,
    routers: RawRouters,
    operators: RawOperators,
    pool: RawPool,
    center: RawCenter,
    #[serde(default)]
    gateways: Vec<RawGateway>,
    dns: Option<RawDns>,
    log: Option<crate::logging::RawLog>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDns {
    listen: String,
    domain: String,
    ttl_secs: Option<u32>,
    /// Per source address (see `crate::dns::rate`).
    queries_per_sec: Option<u32>,
    burst: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    router_listen: String,
    ui_listen: String,
    trusted_proxies: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDatabase {
    path: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFactory {
    master_key: SecretText,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRouters {
    maintenance_password_file: PathBuf,
    command_port: Option<u16>,
    command_timeout_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOperators {
    password_hashes: Vec<String>,
    session_ttl_secs: Option<u64>,
    trusted_networks: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPool {
    cidr: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCenter {
    networks: Vec<String>,
    tunnel_up_timeout_ms: Option<u64>,
    max_open_requests: Option<u32>,
    max_grant_lifetime_secs: Option<u64>,
    idle_timeout_secs: Option<u64>,
    replay_window_secs: Option<u64>,
    reconcile_interval_secs: Option<u64>,
    heartbeat_interval_ms: Option<u64>,
    heartbeat_misses: Option<u32>,
    heartbeat_timeout_ms: Option<u64>,
    host_routes: Option<bool>,
    totp_required_roles: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGateway {
    name: String,
    api_url: String,
    global_ip: String,
    ike_id: String,
    slots: u16,
    api_key: SecretText,
    next_hop: Option<String>,
}

// ---------------------------------------------------------------------------
// Validated.
// ---------------------------------------------------------------------------

/// centerd's validated configuration.
#[derive(Debug)]
pub struct CenterdConfig {
    pub router_listen: SocketAddr,
    pub ui_listen: SocketAddr,
    /// Proxies whose `X-Forwarded-For` gives the router's address.
    pub trusted_proxies: Vec<Ipv4Cidr>,
    pub database_path: PathBuf,
    pub pool: Ipv4Cidr,
    pub operator_hashes: Vec<PasswordHash>,
    pub session_ttl: Duration,
    /// `operators.trusted_networks`: logins from here are never braked by
    /// wrong passwords from elsewhere (see `vpnnat_proto::throttle`).
    pub operator_networks: Vec<Ipv4Cidr>,
    pub router_command_port: u16,
    pub command_timeout: Duration,
    /// Whether centerd programs a host route per VPNNAT address via the
    /// gateway carrying it.
    pub host_routes: bool,
    /// How often every gateway is reconciled with the database (None: only
    /// at start).
    pub reconcile_interval: Option<Duration>,
    /// Gateway heartbeat (None: `heartbeat_interval_ms = 0`, no liveness
    /// watch; dead gateways are then only skipped when a probe fails).
    pub heartbeat: Option<crate::liveness::HeartbeatConfig>,
    /// API endpoint of each gateway, in the order of `settings.gateways`.
    pub gateway_endpoints: Vec<(GatewayName, HttpEndpoint)>,
    pub settings: CenterSettings,
    /// centerd's DNS zone (`[dns]`; None: no DNS server).
    pub dns: Option<DnsConfig>,
    /// `[log]`: level (an env_logger filter; `RUST_LOG` overrides it) and
    /// format (plain or syslog; `VPNNAT_LOG_FORMAT` overrides it).
    pub log: crate::logging::LogConfig,
    /// Where the maintenance password was read from (a secrets file: its
    /// mode is checked at start).
    pub maintenance_password_file: PathBuf,
    /// `[center] totp_required_roles`: the roles whose accounts must log in
    /// with a second factor (TOTP), enrolling at their next login if they
    /// have none (issue 20, item 2). Empty: none required (an enrolled
    /// account is asked for its code anyway).
    pub totp_required_roles: Vec<crate::accounts::Role>,
}

/// `[dns]`: where centerd answers DNS queries and for which zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsConfig {
    pub listen: SocketAddr,
    pub zone: crate::dns::Zone,
    /// The per-source query limit.
    pub limits: crate::dns::RateConfig,
}

/// `operators.trusted_networks`: IPv4 networks, none of them everything
/// (that would switch the brake on untrusted sources off) nor overlapping
/// the VPNNAT pool (those sources are router LANs, coming through tunnels).
fn operator_networks(raw: &[String], pool: &Ipv4Cidr) -> Result<Vec<Ipv4Cidr>, ConfigError> {
    raw.iter()
        .enumerate()
        .map(|(i, c)| {
            let key = format!("operators.trusted_networks[{i}]");
            let n = c.parse::<Ipv4Cidr>().map_err(|e| invalid(key.clone(), e))?;
            if n.prefix_len() == 0 {
                return Err(invalid(key, "trusts every address: name the operators' network"));
            }
            if n.contains(pool.addr()) || pool.contains(n.addr()) {
                return Err(invalid(
                    key,
                    format!("overlaps the VPNNAT pool {pool} (router LANs are not operators)"),
                ));
            }
            Ok(n)
        })
        .collect()
}

impl CenterdConfig {
    /// Reads and validates a file; relative paths inside are taken
    /// relative to the file's directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, path, base)
    }

    /// Parses `text` (named `origin` in errors), resolving relative paths
    /// against `base`.
    pub fn parse(text: &str, origin: &Path, base: &Path) -> Result<Self, ConfigError> {
        let raw: Raw = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_owned(),
            message: toml_error_message(text, &e),
        })?;
        validate(raw, base)
    }
}

/// A TOML error without the quoted source line (it may hold a secret):
/// [`vpnnat_log::config_error_message`].
fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_owned()
    } else {
        base.join(p)
    }
}

fn validate(raw: Raw, base: &Path) -> Result<CenterdConfig, ConfigError> {
    let router_listen: SocketAddr = raw
        .server
        .router_listen
        .parse()
        .map_err(|_| invalid("server.router_listen", "not an address:port"))?;
    let ui_listen: SocketAddr = raw
        .server
        .ui_listen
        .parse()
        .map_err(|_| invalid("server.ui_listen", "not an address:port"))?;
    if router_listen == ui_listen {
        return Err(invalid("server.ui_listen", "must differ from server.router_listen"));
    }
    let trusted_proxies = raw
        .server
        .trusted_proxies
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, c)| {
            c.parse::<Ipv4Cidr>()
                .map_err(|e| invalid(format!("server.trusted_proxies[{i}]"), e))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let factory_master_key = key_from_config::<FactoryMasterKey>(&raw.factory.master_key)
        .map_err(|e| invalid("factory.master_key", format!("{e}; {GENERATE_HINT}")))?;
    let pw_path = resolve(base, &raw.routers.maintenance_password_file);
    let pw_text = Zeroizing::new(std::fs::read_to_string(&pw_path).map_err(|e| {
        invalid(
            "routers.maintenance_password_file",
            format!("cannot read {}: {e}", pw_path.display()),
        )
    })?);
    let maintenance_password = MaintenancePassword::new(pw_text.trim_end_matches(['\n', '\r']))
        .map_err(|e| invalid("routers.maintenance_password_file", e))?;
    check_password(maintenance_password.expose_secret()).map_err(|e| {
        invalid(
            "routers.maintenance_password_file",
            format!("the password {e}; write a random one (`centerd gen-secret` prints one)"),
        )
    })?;
    let router_command_port = raw.routers.command_port.unwrap_or(8080);
    if router_command_port == 0 {
        return Err(invalid("routers.command_port", "must be 1-65535"));
    }
    let command_timeout = Duration::from_millis(raw.routers.command_timeout_ms.unwrap_or(5000));
    let hb_default = crate::liveness::HeartbeatConfig::default();
    let heartbeat = match raw.center.heartbeat_interval_ms {
        Some(0) => None,
        ms => {
            let misses = raw.center.heartbeat_misses.unwrap_or(hb_default.misses);
            if misses == 0 {
                return Err(invalid("center.heartbeat_misses", "must be at least 1"));
            }
            let timeout = raw
                .center
                .heartbeat_timeout_ms
                .map_or(hb_default.timeout, Duration::from_millis);
            if timeout.is_zero() {
                return Err(invalid("center.heartbeat_timeout_ms", "must be at least 1"));
            }
            Some(crate::liveness::HeartbeatConfig {
                interval: ms.map_or(hb_default.interval, Duration::from_millis),
                timeout,
                misses,
            })
        }
    };
    if raw.operators.password_hashes.is_empty() {
        return Err(invalid(
            "operators.password_hashes",
            "at least one hash is needed to log in",
        ));
    }
    let operator_hashes = raw
        .operators
        .password_hashes
        .iter()
        .enumerate()
        .map(|(i, h)| PasswordHash::parse(h).map_err(|e| invalid(format!("operators.password_hashes[{i}]"), e)))
        .collect::<Result<Vec<_>, _>>()?;
    let session_ttl = Duration::from_secs(raw.operators.session_ttl_secs.unwrap_or(8 * 3600));
    let pool: Ipv4Cidr = raw.pool.cidr.parse().map_err(|e| invalid("pool.cidr", e))?;
    if crate::storage::pool_bounds(&pool).is_none() {
        return Err(invalid("pool.cidr", "has no usable host address"));
    }
    let operator_networks = operator_networks(raw.operators.trusted_networks.as_deref().unwrap_or_default(), &pool)?;
    let networks = raw
        .center
        .networks
        .iter()
        .enumerate()
        .map(|(i, n)| {
            n.parse::<Ipv4Cidr>()
                .map_err(|e| invalid(format!("center.networks[{i}]"), e))
        })
        .collect::<Result<Vec<_>, _>>()?;
    for (i, n) in networks.iter().enumerate() {
        if n.contains(pool.addr()) || pool.contains(n.addr()) {
            return Err(invalid(format!("center.networks[{i}]"), "overlaps pool.cidr"));
        }
    }
    let center_networks = BoundedSet::new(networks).map_err(|e| invalid("center.networks", e))?;
    let tunnel_up_timeout = Duration::from_millis(raw.center.tunnel_up_timeout_ms.unwrap_or(10_000));
    let max_open_requests = raw
        .center
        .max_open_requests
        .unwrap_or(crate::center::DEFAULT_MAX_OPEN_REQUESTS);
    if max_open_requests == 0 {
        return Err(invalid("center.max_open_requests", "must be at least 1"));
    }
    let max_grant_lifetime_secs = raw
        .center
        .max_grant_lifetime_secs
        .unwrap_or(crate::limits::DEFAULT_MAX_LIFETIME_SECS);
    if !(crate::limits::MIN_LIFETIME_SECS..=crate::limits::MAX_LIFETIME_CEILING_SECS).contains(&max_grant_lifetime_secs)
    {
        return Err(invalid(
            "center.max_grant_lifetime_secs",
            format!(
                "must be between {} (one minute) and {} (30 days); every grant ends by itself after it \
                 (default {}, 4 hours)",
                crate::limits::MIN_LIFETIME_SECS,
                crate::limits::MAX_LIFETIME_CEILING_SECS,
                crate::limits::DEFAULT_MAX_LIFETIME_SECS
            ),
        ));
    }
    let idle_timeout_secs = raw.center.idle_timeout_secs;
    if idle_timeout_secs.is_some_and(|v| !(crate::limits::MIN_IDLE_SECS..=crate::limits::MAX_IDLE_SECS).contains(&v)) {
        return Err(invalid(
            "center.idle_timeout_secs",
            format!(
                "must be between {} (one minute) and {} (30 days); a grant whose tunnel carried no packet \
                 for that long ends by itself (leave it out for no idle timeout)",
                crate::limits::MIN_IDLE_SECS,
                crate::limits::MAX_IDLE_SECS
            ),
        ));
    }
    let mut totp_required_roles = Vec::new();
    for (i, r) in raw.center.totp_required_roles.iter().flatten().enumerate() {
        let role = r
            .parse::<crate::accounts::Role>()
            .map_err(|e| invalid(format!("center.totp_required_roles[{i}]"), e))?;
        if !totp_required_roles.contains(&role) {
            totp_required_roles.push(role);
        }
    }
    let replay = ReplayConfig {
        max_skew_secs: raw
            .center
            .replay_window_secs
            .unwrap_or(vpnnat_proto::auth::DEFAULT_MAX_SKEW_SECS),
    };
    if raw.gateways.is_empty() {
        return Err(invalid("gateways", "at least one [[gateways]] entry is needed"));
    }
    let mut gateways = Vec::new();
    let mut endpoints = Vec::new();
    for (i, g) in raw.gateways.iter().enumerate() {
        let key = |k: &str| format!("gateways[{i}].{k}");
        let name = GatewayName::new(g.name.as_str()).map_err(|e| invalid(key("name"), e))?;
        if gateways.iter().any(|x: &GatewayEntry| x.name == name) {
            return Err(invalid(key("name"), "appears twice"));
        }
        let ep = HttpEndpoint::parse(&g.api_url).map_err(|e| invalid(key("api_url"), e))?;
        let ip: Ipv4Addr = g
            .global_ip
            .parse()
            .map_err(|_| invalid(key("global_ip"), "not an IPv4 address"))?;
        let global_ip = UnicastAddr::new(ip).map_err(|e| invalid(key("global_ip"), e))?;
        let ike_id = IkeIdentity::new(g.ike_id.as_str()).map_err(|e| invalid(key("ike_id"), e))?;
        if g.slots == 0 {
            return Err(invalid(key("slots"), "must be at least 1"));
        }
        let api_key = key_from_config::<GatewayApiKey>(&g.api_key)
            .map_err(|e| invalid(key("api_key"), format!("{e}; {GENERATE_HINT}")))?;
        // Default next hop: the API address, when it is an IPv4 literal
        // (gatewayd listens on its center-LAN address).
        let next_hop = match &g.next_hop {
            Some(h) => Some(
                h.parse::<Ipv4Addr>()
                    .map_err(|_| invalid(key("next_hop"), "not an IPv4 address"))?,
            ),
            None => ep
                .authority
                .rsplit_once(':')
                .and_then(|(h, _)| h.parse::<Ipv4Addr>().ok()),
        };
        endpoints.push((name.clone(), ep));
        gateways.push(GatewayEntry {
            name,
            global_ip,
            ike_id,
            api_key,
            slots: g.slots,
            next_hop,
        });
    }
    // The terminals table keeps a hash of the maintenance password, never
    // the password; the salt is fresh per start, which is fine for a record.
    let maintenance_password_hash = PasswordHash::create(
        maintenance_password.expose_secret(),
        10_000,
        &ring::rand::SystemRandom::new(),
    )
    .map_err(|e| invalid("routers.maintenance_password_file", e))?
    .to_string();
    let dns = match raw.dns {
        None => None,
        Some(d) => Some(DnsConfig {
            listen: d
                .listen
                .parse()
                .map_err(|_| invalid("dns.listen", "not an address:port"))?,
            zone: crate::dns::Zone::new(&d.domain, d.ttl_secs.unwrap_or(5)).map_err(|e| invalid("dns.domain", e))?,
            limits: {
                let defaults = crate::dns::RateConfig::default();
                let positive = |key: &'static str, v: Option<u32>, default: u32| match v {
                    Some(0) => Err(invalid(key, "must be at least 1 (the limit cannot be switched off)")),
                    v => Ok(v.unwrap_or(default)),
                };
                crate::dns::RateConfig {
                    per_sec: positive("dns.queries_per_sec", d.queries_per_sec, defaults.per_sec)?,
                    burst: positive("dns.burst", d.burst, defaults.burst)?,
                    ..defaults
                }
            },
        }),
    };
    let log = crate::logging::LogConfig::from_raw(raw.log).map_err(|(key, e)| invalid(key, e))?;
    Ok(CenterdConfig {
        log,
        maintenance_password_file: pw_path.clone(),
        dns,
        router_listen,
        ui_listen,
        trusted_proxies,
        operator_networks,
        database_path: resolve(base, &raw.database.path),
        pool,
        operator_hashes,
        session_ttl,
        router_command_port,
        command_timeout,
        host_routes: raw.center.host_routes.unwrap_or(false),
        reconcile_interval: match raw.center.reconcile_interval_secs.unwrap_or(30) {
            0 => None,
            n => Some(Duration::from_secs(n)),
        },
        heartbeat,
        totp_required_roles,
        gateway_endpoints: endpoints,
        settings: CenterSettings {
            factory_master_key,
            maintenance_password,
            maintenance_password_hash,
            center_networks,
            gateways,
            replay,
            tunnel_up_timeout,
            max_open_requests,
            max_grant_lifetime_secs,
            idle_timeout_secs,
        },
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use vpnnat_proto::keys::SecretBytes;

    pub(crate) const EXAMPLE: &str = r#"
[server]
router_listen = "127.0.0.1:8080"
ui_listen = "127.0.0.1:8081"
[database]
path = "center.db"
[factory]
master_key = "ca5297291ca2041dd165ad8b1046bc9b11b80238db9f1660f5814ea0431bb9cc"
[routers]
maintenance_password_file = "maint.txt"
[operators]
password_hashes = ["pbkdf2-sha256$1000$00112233445566778899aabbccddeeff$0000000000000000000000000000000000000000000000000000000000000000"]
[pool]
cidr = "10.64.0.0/16"
[center]
networks = ["172.16.0.0/24"]
[[gateways]]
name = "gw1"
api_url = "http://172.16.0.11:9000"
global_ip = "198.51.100.11"
ike_id = "gw1.center.example"
slots = 4
api_key = "cac2a3e456cc6e47cef48169db8c58d329f5f1c50381559a3ae2969d9a233b4f"
"#;

    pub(crate) fn dir_with_password() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "vpnnat-cfg-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("maint.txt"), "maint-pass-1\n").unwrap();
        d
    }

    fn parse(text: &str) -> Result<CenterdConfig, ConfigError> {
        let d = dir_with_password();
        CenterdConfig::parse(text, Path::new("test.toml"), &d)
    }

    #[test]
    fn example_parses() {
        let c = parse(EXAMPLE).unwrap();
        assert_eq!(c.router_listen.port(), 8080);
        assert!(c.database_path.ends_with("center.db"));
        assert_eq!(c.settings.gateways.len(), 1);
        assert_eq!(c.gateway_endpoints[0].1.authority, "172.16.0.11:9000");
        assert_eq!(c.settings.maintenance_password.expose_secret(), "maint-pass-1");
        assert_eq!(c.router_command_port, 8080);
        assert_eq!(c.settings.gateways[0].next_hop, Some(Ipv4Addr::new(172, 16, 0, 11)));
        assert!(!c.host_routes);
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("ca5297291c"), "master key never printed");
        assert!(!dbg.contains("cac2a3e456"), "api key never printed");
        assert!(!dbg.contains("maint-pass-1"));
    }

    #[test]
    fn trusted_operator_networks_are_validated() {
        assert!(parse(EXAMPLE).unwrap().operator_networks.is_empty());
        let with = |nets: &str| EXAMPLE.replace("[pool]", &format!("trusted_networks = [{nets}]\n[pool]"));
        let c = parse(&with("\"192.168.7.0/24\", \"172.16.0.5/32\"")).unwrap();
        assert_eq!(c.operator_networks.len(), 2);
        assert!(c.operator_networks[0].contains(Ipv4Addr::new(192, 168, 7, 20)));
        for (bad, why) in [
            ("\"0.0.0.0/0\"", "trusts every address"),
            ("\"10.64.3.0/24\"", "overlaps the VPNNAT pool"),
            ("\"10.0.0.0/8\"", "overlaps the VPNNAT pool"),
            ("\"192.168.7.1/24\"", "host bits"),
        ] {
            let e = err_of(&with(bad));
            assert!(
                e.contains("operators.trusted_networks[0]") && e.contains(why),
                "{bad}: {e}"
            );
        }
    }

    fn err_of(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    fn c_limits(text: &str) -> crate::dns::RateConfig {
        parse(text).unwrap().dns.unwrap().limits
    }

    #[test]
    fn parse_errors_never_show_a_secret() {
        // Found by the center_config fuzz target: TOML's error quoted the
        // line it failed on (here an API key outside [[gateways]]).
        let key = "42".repeat(32);
        let e = err_of(&format!("api_key = \"{key}\"\n{EXAMPLE}"));
        assert!(
            e.contains("line 1, column 1") && e.contains("unknown field `api_key`"),
            "{e}"
        );
        assert!(!e.contains(&key), "{e}");
        let e = err_of(&EXAMPLE.replace("master_key = ", "master_key \0= "));
        assert!(!e.contains("ca5297291c"), "{e}");
    }

    #[test]
    fn example_and_weak_secrets_are_refused_naming_the_key_and_the_fix() {
        let master = "ca5297291ca2041dd165ad8b1046bc9b11b80238db9f1660f5814ea0431bb9cc";
        let api = "cac2a3e456cc6e47cef48169db8c58d329f5f1c50381559a3ae2969d9a233b4f";
        for weak in [
            "0".repeat(64),
            format!("{}01", "0".repeat(62)),
            "1".repeat(64),
            "2".repeat(64),
            "deadbeef".repeat(8),
            "@SECRET:master@".to_owned(),
        ] {
            let e = err_of(&EXAMPLE.replace(master, &weak));
            assert!(
                e.contains("factory.master_key") && e.contains("centerd gen-secret") && !e.contains(&weak),
                "{e}"
            );
            let e = err_of(&EXAMPLE.replace(api, &weak));
            assert!(
                e.contains("gateways[0].api_key") && e.contains("centerd gen-secret"),
                "{e}"
            );
        }
        let d = dir_with_password();
        for pw in ["change-me-maintenance", "@SECRET:maintenance-password@"] {
            std::fs::write(d.join("weak.txt"), format!("{pw}\n")).unwrap();
            let e = CenterdConfig::parse(&EXAMPLE.replace("maint.txt", "weak.txt"), Path::new("t.toml"), &d)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("routers.maintenance_password_file") && !e.contains(pw),
                "{e}"
            );
        }
    }

    #[test]
    fn errors_name_the_key() {
        assert!(err_of(&EXAMPLE.replace("[pool]", "[pool]\nextra = 1")).contains("extra"));
        assert!(err_of(&EXAMPLE.replace("10.64.0.0/16", "10.64.0.1/16")).contains("pool.cidr"));
        assert!(err_of(&EXAMPLE.replace("\"ca52", "\"zz52")).contains("factory.master_key"));
        assert!(err_of(&EXAMPLE.replace("slots = 4", "slots = 0")).contains("gateways[0].slots"));
        let open = |v: &str| EXAMPLE.replace("[center]\n", &format!("[center]\nmax_open_requests = {v}\n"));
        assert!(err_of(&open("0")).contains("center.max_open_requests"));
        assert_eq!(parse(&open("9")).unwrap().settings.max_open_requests, 9);
        assert_eq!(parse(EXAMPLE).unwrap().settings.max_open_requests, 4);
        let life = |v: &str| EXAMPLE.replace("[center]\n", &format!("[center]\nmax_grant_lifetime_secs = {v}\n"));
        for bad in ["0", "59", "2592001"] {
            let e = err_of(&life(bad));
            assert!(
                e.contains("center.max_grant_lifetime_secs") && e.contains("between 60"),
                "{e}"
            );
        }
        assert!(err_of(&life("\"4h\"")).contains("max_grant_lifetime_secs"));
        assert_eq!(parse(&life("1800")).unwrap().settings.max_grant_lifetime_secs, 1800);
        assert_eq!(parse(EXAMPLE).unwrap().settings.max_grant_lifetime_secs, 4 * 3600);
        let idle = |v: &str| EXAMPLE.replace("[center]\n", &format!("[center]\nidle_timeout_secs = {v}\n"));
        for bad in ["0", "59", "2592001"] {
            let e = err_of(&idle(bad));
            assert!(
                e.contains("center.idle_timeout_secs") && e.contains("between 60"),
                "{e}"
            );
        }
        assert!(err_of(&idle("\"30m\"")).contains("idle_timeout_secs"));
        assert_eq!(parse(&idle("1800")).unwrap().settings.idle_timeout_secs, Some(1800));
        assert_eq!(parse(&idle("60")).unwrap().settings.idle_timeout_secs, Some(60));
        assert_eq!(
            parse(EXAMPLE).unwrap().settings.idle_timeout_secs,
            None,
            "absent: no idle timeout"
        );
        let totp = |v: &str| EXAMPLE.replace("[center]\n", &format!("[center]\ntotp_required_roles = {v}\n"));
        let e = err_of(&totp(r#"["admin", "root"]"#));
        assert!(
            e.contains("center.totp_required_roles[1]")
                && e.contains("\"root\"")
                && e.contains("admin, operator, viewer"),
            "{e}"
        );
        assert!(err_of(&totp(r#""admin""#)).contains("totp_required_roles"));
        assert_eq!(
            parse(&totp(r#"["admin", "operator", "admin"]"#))
                .unwrap()
                .totp_required_roles,
            [crate::accounts::Role::Admin, crate::accounts::Role::Operator]
        );
        assert!(parse(EXAMPLE).unwrap().totp_required_roles.is_empty(), "default: none");
        assert!(err_of(&EXAMPLE.replace("http://172.16.0.11:9000", "ftp://x")).contains("gateways[0].api_url"));
        assert!(err_of(&EXAMPLE.replace("198.51.100.11", "224.0.0.1")).contains("gateways[0].global_ip"));
        assert!(err_of(&EXAMPLE.replace("127.0.0.1:8081", "127.0.0.1:8080")).contains("server.ui_listen"));
        assert!(err_of(&EXAMPLE.replace("172.16.0.0/24", "10.64.0.0/24")).contains("center.networks[0]"));
        assert!(err_of(&EXAMPLE.replace("maint.txt", "nope.txt")).contains("routers.maintenance_password_file"));
        assert!(err_of(&EXAMPLE.replace("pbkdf2-sha256$1000", "md5$1000")).contains("operators.password_hashes[0]"));
        assert!(err_of(&EXAMPLE.replace("[database]\npath = \"center.db\"", "")).contains("database"));
        assert!(err_of(&EXAMPLE.replace("slots = 4", "slots = 4\nnext_hop = \"gw\"")).contains("gateways[0].next_hop"));
        let dns = "\n[dns]\nlisten = \"127.0.0.1:5353\"\ndomain = \"vpn.example\"\n";
        let c = parse(&format!("{EXAMPLE}{dns}")).unwrap();
        assert_eq!(c.dns.as_ref().map(|d| d.zone.domain.as_str()), Some("vpn.example"));
        assert_eq!(c.dns.map(|d| d.listen.port()), Some(5353));
        assert!(err_of(&format!("{EXAMPLE}{}", dns.replace("vpn.example", "a..b"))).contains("dns.domain"));
        assert!(err_of(&format!("{EXAMPLE}{}", dns.replace("127.0.0.1:5353", "x"))).contains("dns.listen"));
        assert_eq!(c_limits(&format!("{EXAMPLE}{dns}")), crate::dns::RateConfig::default());
        let limited = format!("{EXAMPLE}{dns}queries_per_sec = 5\nburst = 7\n");
        assert_eq!((c_limits(&limited).per_sec, c_limits(&limited).burst), (5, 7));
        assert!(err_of(&format!("{EXAMPLE}{dns}burst = 0\n")).contains("dns.burst"));
        let c = parse(&format!(
            "{EXAMPLE}\n[log]\nlevel = \"warn,vpnnat_center::dns=debug\"\n"
        ))
        .unwrap();
        assert_eq!(c.log.level.as_deref(), Some("warn,vpnnat_center::dns=debug"));
        assert!(err_of(&format!("{EXAMPLE}\n[log]\nlevel = \"chatty\"\n")).contains("log.level"));
        assert!(err_of(&format!("{EXAMPLE}\n[log]\nformat = \"json\"\n")).contains("log.format"));
        assert!(err_of(&format!("{EXAMPLE}\n[log]\nlevels = \"info\"\n")).contains("levels"));
    }

    #[test]
    fn heartbeat_defaults_settings_and_off() {
        let hb = parse(EXAMPLE).unwrap().heartbeat.unwrap();
        assert_eq!(hb, crate::liveness::HeartbeatConfig::default());
        let with = |extra: &str| EXAMPLE.replace("[center]\n", &format!("[center]\n{extra}\n"));
        let hb = parse(&with(
            "heartbeat_interval_ms = 500\nheartbeat_timeout_ms = 700\nheartbeat_misses = 5",
        ))
        .unwrap()
        .heartbeat
        .unwrap();
        assert_eq!(
            (hb.interval, hb.timeout, hb.misses),
            (Duration::from_millis(500), Duration::from_millis(700), 5)
        );
        assert!(parse(&with("heartbeat_interval_ms = 0")).unwrap().heartbeat.is_none());
        assert!(err_of(&with("heartbeat_misses = 0")).contains("center.heartbeat_misses"));
        assert!(err_of(&with("heartbeat_timeout_ms = 0")).contains("center.heartbeat_timeout_ms"));
    }

    #[test]
    fn shipped_example_parses_once_its_secrets_are_filled() {
        let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("../buildroot-overlay/center/etc");
        let text = std::fs::read_to_string(base.join("centerd.toml")).unwrap();
        let gw_text = std::fs::read_to_string(base.join("gatewayd.toml")).unwrap();
        let mut keys = std::collections::BTreeMap::new();
        let rng = ring::rand::SystemRandom::new();
        let filled = crate::keygen::fill(&[&text, &gw_text], &mut keys, || crate::keygen::gen_secret(&rng)).unwrap();
        let dir = std::env::temp_dir().join(format!("vpnnat-example-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("vpnnat")).unwrap();
        std::fs::write(dir.join("vpnnat/maintenance-password"), "maint-pass-1\n").unwrap();
        let p = dir.join("centerd.toml");
        std::fs::write(&p, filled[0].as_bytes()).unwrap();
        let c = CenterdConfig::load(&p).unwrap();
        assert_eq!(c.settings.gateways.len(), 2);
        assert!(c.dns.is_some(), "the example shows the [dns] keys");
        assert_eq!(c.log.level.as_deref(), Some("info"), "and the [log] keys");
        assert_eq!(c.log.format, Some(crate::logging::Format::Syslog));
        assert_eq!(c.pool.to_string(), "10.64.0.0/16");
        let g = vpnnat_gatewayd::config::GatewaydConfig::parse(&filled[1], Path::new("gatewayd.toml")).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(g.name.as_str(), "gw1");
        assert_eq!(
            g.log.format,
            Some(crate::logging::Format::Syslog),
            "gatewayd's [log] too"
        );
        // The pair agrees: same key, same networks.
        assert_eq!(
            c.settings.gateways[0].api_key.expose_secret(),
            g.api_key.expose_secret()
        );
    }

    #[test]
    fn endpoints() {
        assert!(HttpEndpoint::parse("http://gw:9000").is_ok());
        assert!(HttpEndpoint::parse("http://gw:9000/").is_ok());
        assert!(HttpEndpoint::parse("http://gw").is_err());
        assert!(HttpEndpoint::parse("http://gw:0").is_err());
        assert!(HttpEndpoint::parse("http://gw:9000/x").is_err());
        assert!(HttpEndpoint::parse("https://gw:9000").is_err());
    }
}
