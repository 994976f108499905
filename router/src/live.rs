//! The maintenance as it happens (issue 19, item 6), for the site owner:
//! which of the home's devices the center can reach now, by which
//! maintenance (acceptance number, claimant, when it started), since when,
//! and the traffic through each device's VPNNAT mapping as the kernel
//! counted it (the `granted` set's counters, read through the datapath).
//!
//! Pure: the router's state, the kernel's counts and the time in, the view
//! out. The LAN page renders it at load ([`render`], works without
//! JavaScript) and `/api/status` carries it (`live`) for the page's fetch
//! loop, which refreshes it in place ([`crate::web`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use serde::Serialize;
use vpnnat_datapath::nft::HostCounter;

use crate::state::{RequestState, RouterState};
use vpnnat_service::escape::html as escape;

/// One open maintenance request that holds a device.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct LiveRequest {
    pub acceptance_number: u64,
    pub claimant_name: String,
    /// When the center accepted it: the maintenance's start (Unix seconds).
    pub started_at: u64,
}

/// A device the center can reach now.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct LiveDevice {
    pub name: String,
    pub real: Ipv4Addr,
    pub vpnnat: Ipv4Addr,
    /// Packets and bytes through its mapping, both ways, since it was
    /// granted (None: the kernel gave no count). Right after the
    /// addresses: the VM scenario reads them with sed.
    pub packets: Option<u64>,
    pub bytes: Option<u64>,
    pub requests: Vec<LiveRequest>,
    /// Reachable since (the earliest start among its open requests).
    pub since: u64,
    /// When the router first saw traffic through it: the operator at work
    /// (None: none seen yet).
    pub active_since: Option<u64>,
    /// What the page shows in its cells, so that the page's script only
    /// copies text.
    pub text: LiveText,
}

/// The cells of a device's row as text.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct LiveText {
    pub maintenance: String,
    pub since: String,
    pub active: String,
    pub traffic: String,
}

/// Everything reachable now, by device name.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct LiveView {
    pub devices: Vec<LiveDevice>,
}

/// `GET /api/status`: the status and, under `live`, this view.
#[derive(Debug, Clone, Serialize)]
pub struct ApiStatus {
    #[serde(flatten)]
    pub status: crate::view::StatusView,
    pub live: LiveView,
}

/// When traffic was first seen through each granted host, keyed by its
/// real address and the grant's start (a new grant of the same address
/// starts afresh, as the kernel's counter does).
pub type FirstSeen = BTreeMap<(Ipv4Addr, u64), u64>;

/// `YYYY-MM-DD HH:MM UTC` (the router keeps no time zone).
pub fn clock(t: u64) -> String {
    let days = t / 86_400;
    let secs = t % 86_400;
    let (y, m, d) = civil(days);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02} UTC", secs / 3600, secs % 3600 / 60)
}

/// The proleptic Gregorian date of day `days` since 1970-01-01 (Howard
/// Hinnant's `civil_from_days`, for non-negative days).
fn civil(days: u64) -> (u64, u64, u64) {
    let z = days.saturating_add(719_468);
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = doe
        .saturating_sub(doe / 1460)
        .saturating_add(doe / 36_524)
        .saturating_sub(doe / 146_096)
        / 365;
    let doy = doe.saturating_sub(
        yoe.saturating_mul(365)
            .saturating_add(yoe / 4)
            .saturating_sub(yoe / 100),
    );
    let mp = doy.saturating_mul(5).saturating_add(2) / 153;
    let d = doy
        .saturating_sub(mp.saturating_mul(153).saturating_add(2) / 5)
        .saturating_add(1);
    let m = if mp < 10 {
        mp.saturating_add(3)
    } else {
        mp.saturating_sub(9)
    };
    let y = yoe
        .saturating_add(era.saturating_mul(400))
        .saturating_add(u64::from(m <= 2));
    (y, m, d)
}

/// `1,234`.
fn grouped(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len().saturating_add(s.len() / 3));
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len().saturating_sub(i)) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `512 B`, `1.5 kB`, `12.3 MB`, `1.0 GB` (decimal units, one decimal).
pub fn size(bytes: u64) -> String {
    const UNITS: [(u64, &str); 4] = [
        (1_000_000_000_000, "TB"),
        (1_000_000_000, "GB"),
        (1_000_000, "MB"),
        (1_000, "kB"),
    ];
    for (unit, name) in UNITS {
        if bytes >= unit {
            let tenths = bytes.checked_div(unit / 10).unwrap_or(0);
            return format!("{}.{} {name}", grouped(tenths / 10), tenths % 10);
        }
    }
    format!("{bytes} B")
}

/// `12 packets, 3.4 kB` (or that the kernel gave no count).
pub fn traffic(packets: Option<u64>, bytes: Option<u64>) -> String {
    match (packets, bytes) {
        (Some(1), Some(b)) => format!("1 packet, {}", size(b)),
        (Some(p), Some(b)) => format!("{} packets, {}", grouped(p), size(b)),
        _ => "not counted".into(),
    }
}

/// Records the first sighting of traffic through each granted host
/// (`counts`: real address -> packets), forgets grants that are gone;
/// pure, the caller keeps the map between reads.
pub fn note_traffic(seen: &FirstSeen, state: &RouterState, counts: &BTreeMap<Ipv4Addr, u64>, now: u64) -> FirstSeen {
    let mut next = FirstSeen::new();
    for d in devices(state) {
        let key = (d.real, d.since);
        if let Some(t) = seen.get(&key) {
            next.insert(key, *t);
        } else if counts.get(&d.real).is_some_and(|p| *p > 0) {
            next.insert(key, now);
        }
    }
    next
}

/// The granted devices with their open requests (no counts yet).
fn devices(state: &RouterState) -> Vec<LiveDevice> {
    let mut out = Vec::new();
    for (name, h) in &state.hosts {
        let requests: Vec<LiveRequest> = h
            .requests
            .iter()
            .filter_map(|n| {
                let r = state.requests.get(n)?;
                (r.state == RequestState::Waiting).then(|| LiveRequest {
                    acceptance_number: *n,
                    claimant_name: r.claimant_name.clone(),
                    started_at: r.accepted_at,
                })
            })
            .collect();
        // A grant whose requests all ended is on its way out: not
        // "reachable by a maintenance" any more.
        let Some(since) = requests.iter().map(|r| r.started_at).min() else {
            continue;
        };
        out.push(LiveDevice {
            name: name.to_string(),
            real: h.real,
            vpnnat: h.vpnnat,
            packets: None,
            bytes: None,
            requests,
            since,
            active_since: None,
            text: LiveText {
                maintenance: String::new(),
                since: String::new(),
                active: String::new(),
                traffic: String::new(),
            },
        });
    }
    out
}

/// The live view: `state`'s granted devices with `counters` (the kernel's,
/// by real address) and `seen` (from [`note_traffic`]).
pub fn view(state: &RouterState, counters: &[HostCounter], seen: &FirstSeen) -> LiveView {
    let by_real: BTreeMap<Ipv4Addr, &HostCounter> = counters.iter().map(|c| (c.real, c)).collect();
    let mut devices = devices(state);
    for d in &mut devices {
        let c = by_real.get(&d.real);
        d.packets = c.map(|c| c.packets);
        d.bytes = c.map(|c| c.bytes);
        d.active_since = seen.get(&(d.real, d.since)).copied();
        let reqs: Vec<String> = d
            .requests
            .iter()
            .map(|r| {
                format!(
                    "request {} by {}, started {}",
                    r.acceptance_number,
                    r.claimant_name,
                    clock(r.started_at)
                )
            })
            .collect();
        d.text = LiveText {
            maintenance: reqs.join("; "),
            since: clock(d.since),
            active: match (d.active_since, d.packets) {
                (Some(t), _) => format!("since {}", clock(t)),
                (None, None) => "not counted".into(),
                (None, Some(_)) => "no traffic yet".into(),
            },
            traffic: traffic(d.packets, d.bytes),
        };
    }
    LiveView { devices }
}

/// The page's section: a table with one row per reachable device (ids for
/// the fetch loop: `live-<name>` rows, cells by class), or a sentence
/// when nothing is reachable.
pub fn render(v: &LiveView) -> String {
    let mut b = String::from("<h2>Reachable now</h2>");
    let _ = write!(
        b,
        "<p id=\"live-none\"{}>No device of this home is reachable from the center now.</p>",
        if v.devices.is_empty() { "" } else { " hidden" }
    );
    b.push_str(
        "<table id=\"live\"><thead><tr><th>Device</th><th>Maintenance</th><th>Reachable since</th>\
<th>Operator active</th><th>Traffic</th></tr></thead><tbody>",
    );
    for d in &v.devices {
        let _ = write!(
            b,
            "<tr id=\"live-{n}\"><td class=\"device\">{n} ({real})</td><td class=\"maintenance\">{m}</td>\
<td class=\"since\">{s}</td><td class=\"active\">{a}</td><td class=\"traffic\">{t}</td></tr>",
            n = escape(&d.name),
            real = d.real,
            m = escape(&d.text.maintenance),
            s = escape(&d.text.since),
            a = escape(&d.text.active),
            t = escape(&d.text.traffic),
        );
    }
    b.push_str("</tbody></table>");
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::tests::installed;
    use crate::state::{HostGrant, RequestRecord};
    use vpnnat_proto::types::TerminalName;

    const T0: u64 = 20_429 * 86_400 + 14 * 3600 + 5 * 60; // 2025-12-07 14:05 UTC

    fn record(name: &str, terminals: &[&str], accepted_at: u64, state: RequestState) -> RequestRecord {
        RequestRecord {
            claimant_name: name.into(),
            claimant_level: vpnnat_proto::types::ClaimantLevel::General,
            urgency: vpnnat_proto::types::Urgency::Normal,
            terminals: terminals.iter().map(|t| TerminalName::new(*t).unwrap()).collect(),
            accepted_at,
            state,
            failure: None,
            ends_at: None,
            end_unsent: false,
        }
    }

    fn grant(s: &mut RouterState, name: &str, last: u8, requests: &[u64]) {
        s.hosts.insert(
            TerminalName::new(name).unwrap(),
            HostGrant {
                real: Ipv4Addr::new(192, 168, 1, last),
                vpnnat: Ipv4Addr::new(10, 64, 0, last),
                requests: requests.iter().copied().collect(),
            },
        );
    }

    /// pc1 held by two open requests, nas by one that ended (its grant on
    /// the way out), printer by one open request without traffic.
    fn home() -> RouterState {
        let mut s = installed();
        s.requests
            .insert(7, record("Hanako <Y>", &["pc1"], T0, RequestState::Waiting));
        s.requests
            .insert(8, record("Taro", &["pc1", "printer"], T0 + 600, RequestState::Waiting));
        s.requests.insert(9, record("Jiro", &["nas"], T0, RequestState::Ended));
        grant(&mut s, "pc1", 10, &[7, 8]);
        grant(&mut s, "printer", 11, &[8]);
        grant(&mut s, "nas", 12, &[9]);
        s
    }

    fn counter(last: u8, packets: u64, bytes: u64) -> HostCounter {
        HostCounter {
            real: Ipv4Addr::new(192, 168, 1, last),
            packets,
            bytes,
        }
    }

    #[test]
    fn clock_and_sizes_read_as_people_write_them() {
        assert_eq!(clock(0), "1970-01-01 00:00 UTC");
        assert_eq!(clock(T0), "2025-12-07 14:05 UTC");
        assert_eq!(clock(951_782_400), "2000-02-29 00:00 UTC");
        assert_eq!(clock(4_107_542_399), "2100-02-28 23:59 UTC");
        assert_eq!(size(0), "0 B");
        assert_eq!(size(999), "999 B");
        assert_eq!(size(1_000), "1.0 kB");
        assert_eq!(size(1_549), "1.5 kB");
        assert_eq!(size(12_345_678), "12.3 MB");
        assert_eq!(size(3_000_000_000_000_000), "3,000.0 TB");
        assert_eq!(traffic(Some(1), Some(60)), "1 packet, 60 B");
        assert_eq!(traffic(Some(12_345), Some(2_500)), "12,345 packets, 2.5 kB");
        assert_eq!(traffic(None, None), "not counted");
    }

    #[test]
    fn open_grants_with_their_requests_and_counts() {
        let s = home();
        let v = view(&s, &[counter(10, 42, 9_100), counter(11, 0, 0)], &FirstSeen::new());
        let names: Vec<&str> = v.devices.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(
            names,
            ["pc1", "printer"],
            "nas's request ended: not reachable by a maintenance"
        );
        let pc1 = &v.devices[0];
        assert_eq!(pc1.vpnnat, Ipv4Addr::new(10, 64, 0, 10));
        assert_eq!(pc1.since, T0, "the earlier of its two requests");
        assert_eq!((pc1.packets, pc1.bytes), (Some(42), Some(9_100)));
        assert_eq!(
            pc1.text.maintenance,
            "request 7 by Hanako <Y>, started 2025-12-07 14:05 UTC; request 8 by Taro, started 2025-12-07 14:15 UTC"
        );
        assert_eq!(pc1.text.traffic, "42 packets, 9.1 kB");
        assert_eq!(pc1.text.active, "no traffic yet", "not seen by the router yet");
        let printer = &v.devices[1];
        assert_eq!(printer.since, T0 + 600);
        assert_eq!(printer.text.traffic, "0 packets, 0 B");
        // A host the kernel has no count for (a table from before the
        // counters): said so, not 0.
        let v = view(&s, &[], &FirstSeen::new());
        assert_eq!(v.devices[0].packets, None);
        assert_eq!(v.devices[0].text.traffic, "not counted");
        assert_eq!(v.devices[0].text.active, "not counted");
    }

    #[test]
    fn the_first_traffic_is_noted_once_and_forgotten_with_the_grant() {
        let mut s = home();
        let counts = |p: u64| BTreeMap::from([(Ipv4Addr::new(192, 168, 1, 10), p)]);
        let seen = note_traffic(&FirstSeen::new(), &s, &counts(0), T0 + 60);
        assert!(seen.is_empty(), "no packet yet");
        let seen = note_traffic(&seen, &s, &counts(3), T0 + 120);
        let seen = note_traffic(&seen, &s, &counts(50), T0 + 180);
        assert_eq!(
            seen,
            FirstSeen::from([((Ipv4Addr::new(192, 168, 1, 10), T0), T0 + 120)])
        );
        let v = view(&s, &[counter(10, 50, 5_000)], &seen);
        assert_eq!(v.devices[0].active_since, Some(T0 + 120));
        assert_eq!(v.devices[0].text.active, "since 2025-12-07 14:07 UTC");
        // Both requests end: the grant is no longer live, its sighting goes.
        for n in [7, 8] {
            s.requests.get_mut(&n).unwrap().state = RequestState::Ended;
        }
        assert!(note_traffic(&seen, &s, &counts(50), T0 + 240).is_empty());
        assert!(view(&s, &[counter(10, 50, 5_000)], &seen).devices.is_empty());
    }

    #[test]
    fn the_section_escapes_and_says_when_nothing_is_reachable() {
        let empty = render(&LiveView::default());
        assert!(empty.contains("<p id=\"live-none\">No device"), "{empty}");
        let v = view(&home(), &[counter(10, 2, 100)], &FirstSeen::new());
        let html = render(&v);
        assert!(html.contains("<p id=\"live-none\" hidden>"), "{html}");
        assert!(
            html.contains("<tr id=\"live-pc1\"><td class=\"device\">pc1 (192.168.1.10)</td>"),
            "{html}"
        );
        assert!(html.contains("request 7 by Hanako &lt;Y&gt;"), "{html}");
        assert!(!html.contains("<Y>"), "{html}");
        assert!(html.contains("<td class=\"traffic\">2 packets, 100 B</td>"), "{html}");
    }
}
