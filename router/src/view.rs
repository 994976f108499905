//! Read-only views of the router's state for people: `routerd status` /
//! `routerd hosts` (text or `--json`), the local web page and its JSON API.
//! They never contain a secret: only whether one is present.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use serde::Serialize;

use crate::resolve::Source;
use crate::state::RouterState;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RequestView {
    pub acceptance_number: u64,
    pub state: &'static str,
    pub claimant_name: String,
    pub terminals: Vec<String>,
    pub accepted_at: u64,
    /// When the center ends it by itself (Unix seconds; None: not told).
    pub ends_at: Option<u64>,
    /// The center's idle limit in seconds (issue 19, item 8; None: not
    /// told).
    pub idle_timeout_secs: Option<u64>,
    /// Ended here by the site owner; the center not told yet (issue 19,
    /// item 7).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub end_unsent: bool,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct StatusView {
    pub terminal_id: String,
    pub installed: bool,
    pub server_part_vpnnat: Option<Ipv4Addr>,
    pub router_part_vpnnat: Option<Ipv4Addr>,
    pub gateway: Option<Ipv4Addr>,
    pub ike: String,
    pub granted: usize,
    pub requests: Vec<RequestView>,
    pub last_failure: Option<String>,
}

impl StatusView {
    pub fn new(terminal_id: &str, state: &RouterState, ike: String) -> Self {
        StatusView {
            terminal_id: terminal_id.to_string(),
            installed: state.installation.is_some(),
            server_part_vpnnat: state.installation.as_ref().map(|i| i.server_part_vpnnat),
            router_part_vpnnat: state.installation.as_ref().map(|i| i.router_part_vpnnat),
            gateway: state.gateway.as_ref().map(|g| g.ip),
            ike,
            granted: state.hosts.len(),
            // Newest first: that is what a person looks for.
            requests: state
                .requests
                .iter()
                .rev()
                .map(|(n, r)| RequestView {
                    acceptance_number: *n,
                    state: r.state.as_str(),
                    claimant_name: r.claimant_name.clone(),
                    terminals: r.terminals.iter().map(|t| t.to_string()).collect(),
                    accepted_at: r.accepted_at,
                    ends_at: r.ends_at,
                    idle_timeout_secs: r.idle_timeout_secs,
                    end_unsent: r.end_unsent,
                })
                .collect(),
            last_failure: state
                .last_failure
                .as_ref()
                .map(|f| format!("{:?} at {}: {}", f.code, f.at, f.detail)),
        }
    }

    pub fn to_text(&self) -> String {
        let opt = |a: Option<Ipv4Addr>| a.map_or("-".to_string(), |a| a.to_string());
        let mut s = String::new();
        let _ = writeln!(s, "terminal ID:        {}", self.terminal_id);
        let _ = writeln!(s, "installed:          {}", if self.installed { "yes" } else { "no" });
        let _ = writeln!(s, "server part VPNNAT: {}", opt(self.server_part_vpnnat));
        let _ = writeln!(s, "router part VPNNAT: {}", opt(self.router_part_vpnnat));
        let _ = writeln!(s, "VPN gateway:        {}", opt(self.gateway));
        let _ = writeln!(s, "IKE responder:      {}", self.ike);
        let _ = writeln!(s, "granted terminals:  {}", self.granted);
        if let Some(f) = &self.last_failure {
            let _ = writeln!(s, "last failure:       {f}");
        }
        for r in &self.requests {
            let _ = writeln!(
                s,
                "request {:>6}  {:<8} {}  [{}]{}",
                r.acceptance_number,
                r.state,
                r.claimant_name,
                r.terminals.join(", "),
                match (r.state, r.ends_at) {
                    ("waiting", Some(t)) => format!("  {}{}", until(t), idle_suffix(r.idle_timeout_secs)),
                    ("waiting", None) => idle_suffix(r.idle_timeout_secs),
                    _ if r.end_unsent => "  (ended here, center not told yet)".into(),
                    _ => String::new(),
                }
            );
        }
        s
    }
}

/// `until HH:MM UTC`: when a grant ends (issue 19, item 8). The router
/// keeps no time zone, so the clock is UTC and says so.
pub fn until(ends_at: u64) -> String {
    let day = ends_at % 86_400;
    format!("until {:02}:{:02} UTC", day / 3600, day % 3600 / 60)
}

/// `idle limit 30 min` (issue 19, item 8): the center ends a request whose
/// tunnel carried no packet for that long.
pub fn idle_limit(secs: u64) -> String {
    let (n, unit) = if secs.is_multiple_of(3600) {
        (secs / 3600, "h")
    } else if secs.is_multiple_of(60) {
        (secs / 60, "min")
    } else {
        (secs, "s")
    };
    format!("idle limit {n} {unit}")
}

/// `, idle limit 30 min` after a request's or a grant's end time, or
/// nothing when not told.
fn idle_suffix(idle: Option<u64>) -> String {
    idle.map(|i| format!(", {}", idle_limit(i))).unwrap_or_default()
}

/// The idle limit of the grant of `name`: the longest among the open
/// requests that hold it (it stays until the last of them ends); None
/// when one of them was told none (or none holds it).
pub fn grant_idle(state: &RouterState, name: &str) -> Option<u64> {
    latest_of_open_requests(state, name, |r| r.idle_timeout_secs)
}

/// When the center ends the grant of `name`: the latest end among the
/// open requests that hold it; None when one of them has no end told (or
/// none holds it).
pub fn grant_end(state: &RouterState, name: &str) -> Option<u64> {
    latest_of_open_requests(state, name, |r| r.ends_at)
}

/// The largest `field` among the open requests that hold the grant of
/// `name`; None when one of them has none (no limit told) or none holds it.
fn latest_of_open_requests(
    state: &RouterState,
    name: &str,
    field: impl Fn(&crate::state::RequestRecord) -> Option<u64>,
) -> Option<u64> {
    let h = state.hosts.iter().find(|(n, _)| n.as_str() == name)?.1;
    let mut latest = None;
    for n in &h.requests {
        let r = state.requests.get(n)?;
        if r.state != crate::state::RequestState::Waiting {
            continue;
        }
        latest = Some(latest.unwrap_or(0).max(field(r)?));
    }
    latest
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct HostView {
    pub name: String,
    pub real: Ipv4Addr,
    pub source: &'static str,
    pub vpnnat: Option<Ipv4Addr>,
    /// When its grant ends (Unix seconds; None: not granted or not told).
    pub ends_at: Option<u64>,
    /// Its grant's idle limit in seconds (None: not granted or not told).
    pub idle_timeout_secs: Option<u64>,
}

/// Every known host (static table, leases) and every granted one.
pub fn hosts(known: &BTreeMap<String, (Ipv4Addr, Source)>, state: &RouterState) -> Vec<HostView> {
    let mut out: BTreeMap<String, HostView> = known
        .iter()
        .map(|(n, (ip, src))| {
            (
                n.clone(),
                HostView {
                    name: n.clone(),
                    real: *ip,
                    source: src.as_str(),
                    vpnnat: None,
                    ends_at: None,
                    idle_timeout_secs: None,
                },
            )
        })
        .collect();
    for (n, h) in &state.hosts {
        let e = out.entry(n.to_string()).or_insert_with(|| HostView {
            name: n.to_string(),
            real: h.real,
            source: "granted",
            vpnnat: None,
            ends_at: None,
            idle_timeout_secs: None,
        });
        e.real = h.real;
        e.vpnnat = Some(h.vpnnat);
        e.ends_at = grant_end(state, n.as_str());
        e.idle_timeout_secs = grant_idle(state, n.as_str());
    }
    out.into_values().collect()
}

/// One row of the host table (a granted extension terminal), for the
/// operator.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct GrantView {
    pub name: String,
    pub real: Ipv4Addr,
    pub vpnnat: Ipv4Addr,
    pub requests: Vec<u64>,
}

pub fn grants(state: &RouterState) -> Vec<GrantView> {
    state
        .hosts
        .iter()
        .map(|(n, h)| GrantView {
            name: n.to_string(),
            real: h.real,
            vpnnat: h.vpnnat,
            requests: h.requests.iter().copied().collect(),
        })
        .collect()
}

pub fn grants_text(grants: &[GrantView]) -> String {
    let mut s = format!("{:<24} {:<16} {:<16} {}\n", "NAME", "REAL", "VPNNAT", "REQUESTS");
    for g in grants {
        let reqs: Vec<String> = g.requests.iter().map(u64::to_string).collect();
        let _ = writeln!(s, "{:<24} {:<16} {:<16} {}", g.name, g.real, g.vpnnat, reqs.join(","));
    }
    s
}

pub fn hosts_text(hosts: &[HostView]) -> String {
    let mut s = format!(
        "{:<24} {:<16} {:<8} {:<16} {}\n",
        "NAME", "REAL", "SOURCE", "VPNNAT", "GRANTED"
    );
    for h in hosts {
        let v = h.vpnnat.map_or("-".to_string(), |v| v.to_string());
        let t = match (h.vpnnat, h.ends_at) {
            (Some(_), Some(t)) => format!("{}{}", until(t), idle_suffix(h.idle_timeout_secs)),
            (Some(_), None) => format!("no limit told{}", idle_suffix(h.idle_timeout_secs)),
            (None, _) => "-".to_string(),
        };
        let _ = writeln!(s, "{:<24} {:<16} {:<8} {:<16} {}", h.name, h.real, h.source, v, t);
    }
    s
}

/// The router's small Prometheus text endpoint (`GET /metrics` on the LAN
/// page): build, installation, tunnel, grants, requests by state, current
/// problems. Label values are the terminal ID and the version only
/// (escaped); never a secret.
///
/// Written by hand, unlike centerd's (`prometheus-client`): routerd's
/// static binary has a 4,000,000-byte budget (router/README.md,
/// "Benchmark") and sits at its edge, and these seven gauge families need
/// no registry, histograms or OpenMetrics negotiation.
pub fn metrics_text(status: &StatusView, datapath_error: bool, problems: usize) -> String {
    let id = status
        .terminal_id
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n");
    let mut s = String::new();
    let _ = writeln!(s, "# HELP vpnnat_router_build_info the routerd build: its version");
    let _ = writeln!(s, "# TYPE vpnnat_router_build_info gauge");
    let _ = writeln!(
        s,
        "vpnnat_router_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    let mut gauge = |name: &str, help: &str, value: usize| {
        let _ = writeln!(s, "# HELP {name} {help}");
        let _ = writeln!(s, "# TYPE {name} gauge");
        let _ = writeln!(s, "{name}{{terminal_id=\"{id}\"}} {value}");
    };
    gauge(
        "vpnnat_router_installed",
        "1 once the installation notice was answered",
        usize::from(status.installed),
    );
    gauge(
        "vpnnat_router_tunnel_up",
        "1 while the IKE responder has an established tunnel",
        usize::from(status.ike == "established"),
    );
    gauge(
        "vpnnat_router_grants",
        "extension terminals mapped to VPNNAT addresses",
        status.granted,
    );
    gauge(
        "vpnnat_router_datapath_error",
        "1 while the last kernel apply failed",
        usize::from(datapath_error),
    );
    gauge("vpnnat_router_problems", "failing health conditions now", problems);
    let _ = writeln!(s, "# HELP vpnnat_router_requests maintenance requests by state");
    let _ = writeln!(s, "# TYPE vpnnat_router_requests gauge");
    for state in ["waiting", "ended"] {
        let n = status.requests.iter().filter(|r| r.state == state).count();
        let _ = writeln!(
            s,
            "vpnnat_router_requests{{terminal_id=\"{id}\",state=\"{state}\"}} {n}"
        );
    }
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn metrics_text_is_prometheus_exposition() {
        let st = super::StatusView {
            terminal_id: "home-\"1".into(),
            installed: true,
            server_part_vpnnat: None,
            router_part_vpnnat: None,
            gateway: None,
            ike: "established".into(),
            granted: 3,
            requests: vec![super::RequestView {
                acceptance_number: 7,
                state: "waiting",
                claimant_name: "x".into(),
                terminals: vec![],
                accepted_at: 0,
                ends_at: None,
                idle_timeout_secs: None,
                end_unsent: false,
            }],
            last_failure: None,
        };
        let t = super::metrics_text(&st, false, 2);
        for line in t.lines().filter(|l| !l.starts_with('#')) {
            let (series, value) = line.rsplit_once(' ').unwrap();
            assert!(series.starts_with("vpnnat_router_"), "{line}");
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
        assert!(
            t.contains("vpnnat_router_tunnel_up{terminal_id=\"home-\\\"1\"} 1"),
            "{t}"
        );
        assert!(t.contains("vpnnat_router_grants{terminal_id=\"home-\\\"1\"} 3"));
        assert!(t.contains("state=\"waiting\"} 1"));
        assert!(t.contains("state=\"ended\"} 0"));
        assert!(t.contains("vpnnat_router_problems{terminal_id=\"home-\\\"1\"} 2"));
        assert!(t.contains(&format!(
            "vpnnat_router_build_info{{version=\"{}\"}} 1\n",
            env!("CARGO_PKG_VERSION")
        )));
    }

    use super::*;
    use crate::state::tests::installed;
    use crate::state::HostGrant;
    use vpnnat_proto::types::TerminalName;

    #[test]
    fn status_has_no_secrets() {
        let v = StatusView::new("router-1", &installed(), "unconfigured".into());
        let j = serde_json::to_string(&v).unwrap();
        assert!(!j.contains("aaaa") && !j.contains("maint-pass"), "{j}");
        assert!(v.to_text().contains("10.64.0.1"));
    }

    #[test]
    fn status_and_hosts_show_until_when_the_center_ends_the_grant() {
        let mut s = installed();
        s.hosts.insert(
            TerminalName::new("pc1").unwrap(),
            HostGrant {
                real: Ipv4Addr::new(192, 168, 1, 10),
                vpnnat: Ipv4Addr::new(10, 64, 0, 9),
                requests: [7].into(),
            },
        );
        let record = |ends_at| crate::state::RequestRecord {
            claimant_name: "Taro".into(),
            claimant_level: vpnnat_proto::types::ClaimantLevel::General,
            urgency: vpnnat_proto::types::Urgency::Normal,
            terminals: vec![TerminalName::new("pc1").unwrap()],
            accepted_at: 1,
            state: crate::state::RequestState::Waiting,
            failure: None,
            ends_at,
            idle_timeout_secs: None,
            end_unsent: false,
        };
        // 14:05 UTC on some day.
        let end = 20_000 * 86_400 + 14 * 3600 + 5 * 60;
        s.requests.insert(7, record(Some(end)));
        let v = StatusView::new("router-1", &s, "established".into());
        assert_eq!(v.requests[0].ends_at, Some(end));
        assert!(v.to_text().contains("[pc1]  until 14:05 UTC"), "{}", v.to_text());
        let h = hosts(&BTreeMap::new(), &s);
        assert_eq!(h[0].ends_at, Some(end));
        assert!(hosts_text(&h).contains("until 14:05 UTC"), "{}", hosts_text(&h));
        // From a center that did not say: no limit shown.
        s.requests.insert(7, record(None));
        let v = StatusView::new("router-1", &s, "established".into());
        assert!(!v.to_text().contains("until"));
        let h = hosts(&BTreeMap::new(), &s);
        assert_eq!(h[0].ends_at, None);
        assert!(hosts_text(&h).contains("no limit told"));
    }

    /// Issue 19, item 8: the idle limit the center told, in `routerd
    /// status` and `routerd hosts` (and their JSON); none made up.
    #[test]
    fn status_and_hosts_show_the_idle_limit_the_center_told() {
        assert_eq!(idle_limit(1800), "idle limit 30 min");
        assert_eq!(idle_limit(7200), "idle limit 2 h");
        assert_eq!(idle_limit(90), "idle limit 90 s");
        let mut s = installed();
        s.hosts.insert(
            TerminalName::new("pc1").unwrap(),
            HostGrant {
                real: Ipv4Addr::new(192, 168, 1, 10),
                vpnnat: Ipv4Addr::new(10, 64, 0, 9),
                requests: [7].into(),
            },
        );
        let record = |ends_at, idle| crate::state::RequestRecord {
            claimant_name: "Taro".into(),
            claimant_level: vpnnat_proto::types::ClaimantLevel::General,
            urgency: vpnnat_proto::types::Urgency::Normal,
            terminals: vec![TerminalName::new("pc1").unwrap()],
            accepted_at: 1,
            state: crate::state::RequestState::Waiting,
            failure: None,
            ends_at,
            idle_timeout_secs: idle,
            end_unsent: false,
        };
        let end = 20_000 * 86_400 + 14 * 3600 + 5 * 60;
        s.requests.insert(7, record(Some(end), Some(1800)));
        let v = StatusView::new("router-1", &s, "established".into());
        assert_eq!(v.requests[0].idle_timeout_secs, Some(1800));
        let j = serde_json::to_value(&v).unwrap();
        assert_eq!(j["requests"][0]["idle_timeout_secs"], serde_json::json!(1800));
        assert!(
            v.to_text().contains("[pc1]  until 14:05 UTC, idle limit 30 min"),
            "{}",
            v.to_text()
        );
        let h = hosts(&BTreeMap::new(), &s);
        assert_eq!(h[0].idle_timeout_secs, Some(1800));
        assert!(
            hosts_text(&h).contains("until 14:05 UTC, idle limit 30 min"),
            "{}",
            hosts_text(&h)
        );
        // Without an end time told, the idle limit still shows.
        s.requests.insert(7, record(None, Some(600)));
        assert!(StatusView::new("router-1", &s, "established".into())
            .to_text()
            .contains("[pc1], idle limit 10 min"));
        assert!(hosts_text(&hosts(&BTreeMap::new(), &s)).contains("no limit told, idle limit 10 min"));
        // Not told: no idle limit anywhere.
        s.requests.insert(7, record(Some(end), None));
        let v = StatusView::new("router-1", &s, "established".into());
        assert!(!v.to_text().contains("idle"), "{}", v.to_text());
        let h = hosts(&BTreeMap::new(), &s);
        assert_eq!(h[0].idle_timeout_secs, None);
        assert!(!hosts_text(&h).contains("idle"));
    }

    #[test]
    fn hosts_merge_known_and_granted() {
        let mut s = installed();
        s.hosts.insert(
            TerminalName::new("pc1").unwrap(),
            HostGrant {
                real: Ipv4Addr::new(192, 168, 1, 10),
                vpnnat: Ipv4Addr::new(10, 64, 0, 9),
                requests: [1].into(),
            },
        );
        let known = [
            ("pc1".to_string(), (Ipv4Addr::new(192, 168, 1, 10), Source::Static)),
            ("nas".to_string(), (Ipv4Addr::new(192, 168, 1, 11), Source::Lease)),
        ]
        .into();
        let h = hosts(&known, &s);
        assert_eq!(h.len(), 2);
        assert_eq!(h[1].vpnnat, Some(Ipv4Addr::new(10, 64, 0, 9)));
        assert!(hosts_text(&h).contains("10.64.0.9"));
    }
}

/// The configuration as the operator's maintenance page shows it: every
/// secret masked.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ConfigView {
    pub terminal_id: String,
    pub center_url: String,
    pub factory_secret: &'static str,
    pub wan: String,
    pub lan: String,
    pub web_ui_listen: String,
    pub server_part_listen: String,
    pub lease_file: String,
    pub dns: bool,
    pub static_hosts: BTreeMap<String, Ipv4Addr>,
    pub button: bool,
    pub helpers: Vec<String>,
}

impl ConfigView {
    pub fn new(c: &crate::config::Config) -> Self {
        let iface = |i: &crate::config::Interface| format!("{} {}/{}", i.name, i.address, i.prefix_len);
        ConfigView {
            terminal_id: c.terminal_id.to_string(),
            center_url: c.center_url.to_string(),
            factory_secret: "<set>",
            wan: iface(&c.wan),
            lan: iface(&c.lan),
            web_ui_listen: c.web_ui_listen.to_string(),
            server_part_listen: c.server_part_listen.to_string(),
            lease_file: c.lease_file.display().to_string(),
            dns: c.dns,
            static_hosts: c.hosts.iter().map(|(n, ip)| (n.to_string(), *ip)).collect(),
            button: c.button.is_some(),
            helpers: c.helpers.iter().map(|h| h.name.clone()).collect(),
        }
    }
}
