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
//!
//! The idle limit (issue 19, item 8): the center ends a request once its
//! tunnel carried no packet for `idle_timeout_secs`, counted by its
//! gateway. The router shows the limit it was told and what it saw
//! itself: the last time a device's counter moved and, from that, when
//! the grant ends if no packet passes from now on. That is the router's
//! observation, not the center's count (traffic to another device through
//! the same tunnel keeps it open longer), and the page says so.

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
    /// The center's idle limit for it, in seconds (the longest of its open
    /// requests'; None: not told for one of them).
    pub idle_timeout_secs: Option<u64>,
    /// When the router last saw its counter move (None: not yet).
    pub last_traffic: Option<u64>,
    /// When its grant ends if no packet passes from now on, as the router
    /// sees it: the latest of its requests' starts and `last_traffic`,
    /// plus the idle limit (None: no limit told, or no count to go by).
    pub quiet_end: Option<u64>,
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
    /// The idle limit, the last traffic seen and the end if quiet.
    pub idle: String,
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

/// What the router saw of a grant's traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    /// The first read with a packet counted: the operator at work.
    pub first: u64,
    /// The last read at which the counter had moved.
    pub last: u64,
    /// The count at the latest read.
    pub packets: u64,
}

/// When traffic was first and last seen through each granted host, keyed
/// by its real address and the grant's start (a new grant of the same
/// address starts afresh, as the kernel's counter does).
pub type FirstSeen = BTreeMap<(Ipv4Addr, u64), Seen>;

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

/// Records the first and the latest sighting of traffic through each
/// granted host (`counts`: real address -> packets), forgets grants that
/// are gone; pure, the caller keeps the map between reads.
pub fn note_traffic(seen: &FirstSeen, state: &RouterState, counts: &BTreeMap<Ipv4Addr, u64>, now: u64) -> FirstSeen {
    let mut next = FirstSeen::new();
    for d in devices(state) {
        let key = (d.real, d.since);
        let count = counts.get(&d.real).copied();
        match (seen.get(&key), count) {
            (Some(s), Some(p)) => {
                next.insert(
                    key,
                    Seen {
                        // Moved since the last read: traffic now. (A count
                        // that went down was reset: no traffic by itself.)
                        last: if p > s.packets { now } else { s.last },
                        packets: p,
                        ..*s
                    },
                );
            }
            (Some(s), None) => {
                next.insert(key, *s);
            }
            (None, Some(p)) if p > 0 => {
                next.insert(
                    key,
                    Seen {
                        first: now,
                        last: now,
                        packets: p,
                    },
                );
            }
            (None, _) => {}
        }
    }
    next
}

/// `idle limit 30 min; last traffic 2025-12-07 14:07 UTC; ends
/// 2025-12-07 14:37 UTC if quiet` (or what of it the router knows).
fn idle_text(d: &LiveDevice) -> String {
    let Some(idle) = d.idle_timeout_secs else {
        return "no idle limit told".into();
    };
    let limit = crate::view::idle_limit(idle);
    let seen = match (d.last_traffic, d.packets) {
        (Some(t), _) => format!("last traffic {}", clock(t)),
        (None, Some(_)) => "no traffic yet".into(),
        (None, None) => return format!("{limit}; traffic not counted here"),
    };
    match d.quiet_end {
        Some(t) => format!("{limit}; {seen}; ends {} if quiet", clock(t)),
        None => format!("{limit}; {seen}"),
    }
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
        let idle_timeout_secs = crate::view::grant_idle(state, name.as_str());
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
            idle_timeout_secs,
            last_traffic: None,
            quiet_end: None,
            text: LiveText {
                maintenance: String::new(),
                since: String::new(),
                active: String::new(),
                traffic: String::new(),
                idle: String::new(),
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
        let s = seen.get(&(d.real, d.since));
        d.active_since = s.map(|s| s.first);
        d.last_traffic = s.map(|s| s.last);
        // Idle counts from the latest start among its requests (the center
        // counts each from its reception) or the last packet seen; without
        // a count the router cannot tell.
        let latest_start = d.requests.iter().map(|r| r.started_at).max().unwrap_or(d.since);
        d.quiet_end = match (d.idle_timeout_secs, d.packets) {
            (Some(i), Some(_)) => Some(latest_start.max(d.last_traffic.unwrap_or(0)).saturating_add(i)),
            _ => None,
        };
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
            idle: idle_text(d),
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
<th>Operator active</th><th>Traffic</th><th>If quiet</th></tr></thead><tbody>",
    );
    for d in &v.devices {
        let _ = write!(
            b,
            "<tr id=\"live-{n}\"><td class=\"device\">{n} ({real})</td><td class=\"maintenance\">{m}</td>\
<td class=\"since\">{s}</td><td class=\"active\">{a}</td><td class=\"traffic\">{t}</td><td class=\"idle\">{i}</td></tr>",
            n = escape(&d.name),
            real = d.real,
            m = escape(&d.text.maintenance),
            s = escape(&d.text.since),
            a = escape(&d.text.active),
            t = escape(&d.text.traffic),
            i = escape(&d.text.idle),
        );
    }
    b.push_str(
        "</tbody></table><p class=\"note\">If quiet: when the center ends the grant if no packet passes, \
from this router's own count of the device's traffic; the center counts the whole tunnel at its gateway.</p>",
    );
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
            idle_timeout_secs: None,
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
            FirstSeen::from([(
                (Ipv4Addr::new(192, 168, 1, 10), T0),
                Seen {
                    first: T0 + 120,
                    last: T0 + 180,
                    packets: 50
                }
            )])
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

    /// Issue 19, item 8: the idle limit the center told, the last traffic
    /// the router saw and when the grant ends if quiet, from that.
    #[test]
    fn the_idle_limit_with_the_last_traffic_seen_and_the_end_if_quiet() {
        const IDLE: u64 = 30 * 60;
        let mut s = home();
        for n in [7, 8] {
            s.requests.get_mut(&n).unwrap().idle_timeout_secs = Some(IDLE);
        }
        let counts = |p: u64| BTreeMap::from([(Ipv4Addr::new(192, 168, 1, 10), p)]);
        // pc1: traffic first seen at +700, moved again at +900, then quiet.
        let mut seen = FirstSeen::new();
        for (t, p) in [(T0 + 650, 0), (T0 + 700, 3), (T0 + 900, 40), (T0 + 1_200, 40)] {
            seen = note_traffic(&seen, &s, &counts(p), t);
        }
        let key = (Ipv4Addr::new(192, 168, 1, 10), T0);
        assert_eq!(
            seen[&key],
            Seen {
                first: T0 + 700,
                last: T0 + 900,
                packets: 40
            }
        );
        let v = view(&s, &[counter(10, 40, 4_000), counter(11, 0, 0)], &seen);
        let (pc1, printer) = (&v.devices[0], &v.devices[1]);
        assert_eq!(pc1.idle_timeout_secs, Some(IDLE));
        assert_eq!(pc1.active_since, Some(T0 + 700));
        assert_eq!(pc1.last_traffic, Some(T0 + 900));
        assert_eq!(pc1.quiet_end, Some(T0 + 900 + IDLE));
        assert_eq!(
            pc1.text.idle,
            "idle limit 30 min; last traffic 2025-12-07 14:20 UTC; ends 2025-12-07 14:50 UTC if quiet"
        );
        // printer: no packet yet, so quiet since its request's start.
        assert_eq!(printer.last_traffic, None);
        assert_eq!(printer.quiet_end, Some(T0 + 600 + IDLE));
        assert_eq!(
            printer.text.idle,
            "idle limit 30 min; no traffic yet; ends 2025-12-07 14:45 UTC if quiet"
        );
        // A later request of pc1 restarts its quiet time from its start.
        s.requests
            .insert(10, record("Saburo", &["pc1"], T0 + 1_000, RequestState::Waiting));
        s.requests.get_mut(&10).unwrap().idle_timeout_secs = Some(IDLE);
        s.hosts
            .get_mut(&TerminalName::new("pc1").unwrap())
            .unwrap()
            .requests
            .insert(10);
        let v = view(&s, &[counter(10, 40, 4_000)], &seen);
        assert_eq!(v.devices[0].quiet_end, Some(T0 + 1_000 + IDLE));
        // The kernel gave no count: the limit, but no end made up.
        let v = view(&s, &[], &seen);
        assert_eq!(v.devices[0].quiet_end, None);
        assert_eq!(
            v.devices[0].text.idle,
            "idle limit 30 min; last traffic 2025-12-07 14:20 UTC"
        );
        assert_eq!(v.devices[1].text.idle, "idle limit 30 min; traffic not counted here");
        // One of its requests was told no idle limit (an older center):
        // none shown, nothing computed.
        s.requests.get_mut(&10).unwrap().idle_timeout_secs = None;
        let v = view(&s, &[counter(10, 40, 4_000), counter(11, 0, 0)], &seen);
        assert_eq!(v.devices[0].idle_timeout_secs, None);
        assert_eq!(v.devices[0].quiet_end, None);
        assert_eq!(v.devices[0].text.idle, "no idle limit told");
        let html = render(&v);
        assert!(html.contains("<td class=\"idle\">no idle limit told</td>"), "{html}");
        assert!(
            html.contains(
                "<td class=\"idle\">idle limit 30 min; no traffic yet; ends 2025-12-07 14:45 UTC if quiet</td>"
            ),
            "{html}"
        );
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
