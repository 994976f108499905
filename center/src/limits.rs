//! Time limits on maintenance grants (issue 19, item 8): pure decisions
//! with the time handed in; the loop that applies them is
//! `crate::daemon::expiry`, the end itself `Center::expire`.
//!
//! Every request has a maximum lifetime counted from its reception:
//! `[center] max_grant_lifetime_secs` (default [`DEFAULT_MAX_LIFETIME_SECS`]).
//! Its end time is stored with the request when it is created (and told to
//! the router); an operator may move it earlier, or back up to the
//! configured maximum, never beyond. When the configuration is lowered
//! later, the lower maximum holds for the open requests too: the effective
//! end is the earlier of the stored one and `received_at + maximum`.
//!
//! The optional idle timeout (`[center] idle_timeout_secs`, absent: none)
//! ends a request whose router's tunnel carried no packet for that long
//! ([`idle_due`]). Its source is the gateway's kernel: the last use of the
//! tunnel's XFRM policies, in gatewayd's state report; a router could lie.

use std::collections::BTreeMap;
use std::fmt;

/// Default of `[center] max_grant_lifetime_secs`: 4 hours.
pub const DEFAULT_MAX_LIFETIME_SECS: u64 = 4 * 3600;
/// The largest configurable maximum lifetime: 30 days.
pub const MAX_LIFETIME_CEILING_SECS: u64 = 30 * 86_400;
/// The smallest: one minute (anything shorter cannot be used for work).
pub const MIN_LIFETIME_SECS: u64 = 60;

/// The smallest configurable idle timeout: one minute (the gateway reads
/// its policies every 10 s, the expiry loop looks every 10 s).
pub const MIN_IDLE_SECS: u64 = 60;
/// The largest: 30 days, as for the maximum lifetime.
pub const MAX_IDLE_SECS: u64 = MAX_LIFETIME_CEILING_SECS;

/// What the decision needs of an open (waiting or in-progress) request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenRequest {
    pub acceptance_number: u64,
    /// The router's terminal ID (its tunnel's traffic decides idleness).
    pub terminal_id: String,
    pub received_at: u64,
    /// The stored end (None: a request from before the limits; only the
    /// configured maximum applies).
    pub expires_at: Option<u64>,
    /// Who set a shorter limit, when one did.
    pub limit_set_by: Option<String>,
}

/// A request whose time is up, with why (for the audit row).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expired {
    pub acceptance_number: u64,
    /// When its time ran out.
    pub ended_at: u64,
    pub limit_set_by: Option<String>,
}

impl Expired {
    /// The audit row's detail: says it expired, when, and who set a
    /// shorter limit if one did.
    pub fn detail(&self) -> String {
        match &self.limit_set_by {
            Some(who) => format!(
                "expired: the time limit set by {who} passed at {}",
                utc_hhmm(self.ended_at)
            ),
            None => format!("expired: the maximum lifetime passed at {}", utc_hhmm(self.ended_at)),
        }
    }
}

/// The end time that holds for a request: its stored end, never later
/// than `received_at + max_lifetime_secs`.
pub fn effective_end(received_at: u64, expires_at: Option<u64>, max_lifetime_secs: u64) -> u64 {
    let ceiling = received_at.saturating_add(max_lifetime_secs);
    expires_at.map_or(ceiling, |e| e.min(ceiling))
}

/// The requests among `open` whose end is at or before `now`, in the
/// order given.
pub fn due(open: &[OpenRequest], max_lifetime_secs: u64, now: u64) -> Vec<Expired> {
    open.iter()
        .filter_map(|r| {
            let end = effective_end(r.received_at, r.expires_at, max_lifetime_secs);
            (end <= now).then(|| Expired {
                acceptance_number: r.acceptance_number,
                ended_at: end,
                limit_set_by: r.limit_set_by.clone(),
            })
        })
        .collect()
}

/// A request ended for idleness, with why (for the audit row).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idle {
    pub acceptance_number: u64,
    /// The last packet through the router's tunnel, or the request's
    /// reception if that is later: idleness counts from here.
    pub since: u64,
    /// Whether `since` is a packet (false: no packet since the reception).
    pub traffic_seen: bool,
    pub now: u64,
}

impl Idle {
    /// The audit row's detail: "idle: no traffic since 14:05 UTC for 30 min".
    pub fn detail(&self) -> String {
        let minutes = self.now.saturating_sub(self.since) / 60;
        let what = if self.traffic_seen { "" } else { " (its reception)" };
        format!(
            "idle: no traffic since {}{what} for {minutes} min",
            utc_hhmm(self.since)
        )
    }
}

/// When request `r`'s idleness started: the later of its reception and
/// its tunnel's last packet (`last_use`, 0: none).
pub fn idle_since(received_at: u64, last_use: u64) -> u64 {
    received_at.max(last_use)
}

/// The requests among `open` whose router's tunnel carried no packet for
/// `idle_secs` at `now`, counted from the later of the request's
/// reception and the last packet, in the order given. `last_use` holds
/// the tunnels whose last traffic is known (terminal ID -> Unix seconds,
/// 0: none since their policies were installed); a request whose tunnel
/// is not in it is never idle (a gateway from before, or one not
/// answering: no evidence, no end).
pub fn idle_due(open: &[OpenRequest], last_use: &BTreeMap<String, u64>, now: u64, idle_secs: u64) -> Vec<Idle> {
    open.iter()
        .filter_map(|r| {
            let used = *last_use.get(&r.terminal_id)?;
            let since = idle_since(r.received_at, used);
            (now >= since.saturating_add(idle_secs)).then_some(Idle {
                acceptance_number: r.acceptance_number,
                since,
                traffic_seen: used >= r.received_at && used != 0,
                now,
            })
        })
        .collect()
}

/// When an open request ends as idle if its tunnel stays quiet (for the
/// operator's view): None without an idle timeout or without the
/// gateway's word on the tunnel's traffic.
pub fn idle_end(received_at: u64, last_use: Option<u64>, idle_secs: Option<u64>) -> Option<u64> {
    Some(idle_since(received_at, last_use?).saturating_add(idle_secs?))
}

/// Why an operator's new limit was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitError {
    /// Beyond the configured maximum lifetime.
    AboveMaximum { latest: u64, max_lifetime_secs: u64 },
    /// Zero minutes: use "end" to end it now.
    Zero,
}

impl fmt::Display for LimitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LimitError::AboveMaximum {
                latest,
                max_lifetime_secs,
            } => write!(
                f,
                "the limit cannot be raised above the configured maximum lifetime \
                 (center.max_grant_lifetime_secs = {max_lifetime_secs}): this request may last until {} at most",
                utc_hhmm(*latest)
            ),
            LimitError::Zero => f.write_str("a limit of 0 minutes: end the request instead"),
        }
    }
}

impl std::error::Error for LimitError {}

/// The new end of a request when an operator limits it to `minutes` from
/// `now`: refused beyond `received_at + max_lifetime_secs`.
pub fn new_end(received_at: u64, max_lifetime_secs: u64, minutes: u64, now: u64) -> Result<u64, LimitError> {
    if minutes == 0 {
        return Err(LimitError::Zero);
    }
    let latest = received_at.saturating_add(max_lifetime_secs);
    let end = now.saturating_add(minutes.saturating_mul(60));
    if end > latest {
        return Err(LimitError::AboveMaximum {
            latest,
            max_lifetime_secs,
        });
    }
    Ok(end)
}

/// `HH:MM UTC` of a Unix time (the operator's and the audit's view).
pub fn utc_hhmm(t: u64) -> String {
    let day = t % 86_400;
    format!("{:02}:{:02} UTC", day / 3600, day % 3600 / 60)
}

/// Time left until `end` at `now`, as `1h05m` / `12m` / `0m`.
pub fn time_left(end: u64, now: u64) -> String {
    let left = end.saturating_sub(now);
    let (h, m) = (left / 3600, left % 3600 / 60);
    if h > 0 {
        format!("{h}h{m:02}m")
    } else {
        format!("{m}m")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: u64 = 4 * 3600;

    fn open(n: u64, received_at: u64, expires_at: Option<u64>, by: Option<&str>) -> OpenRequest {
        OpenRequest {
            acceptance_number: n,
            terminal_id: format!("router-{n}"),
            received_at,
            expires_at,
            limit_set_by: by.map(str::to_owned),
        }
    }

    #[test]
    fn a_request_expires_exactly_at_its_end_and_not_a_second_before() {
        let r = [open(1, 1000, Some(1000 + MAX), None)];
        assert!(due(&r, MAX, 1000 + MAX - 1).is_empty());
        let d = due(&r, MAX, 1000 + MAX);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].acceptance_number, 1);
        assert_eq!(d[0].ended_at, 1000 + MAX);
    }

    #[test]
    fn only_the_requests_whose_time_is_up_are_due_in_their_order() {
        let r = [
            open(1, 0, Some(100), None),
            open(2, 0, Some(500), None),
            open(3, 50, Some(90), Some("operator#1")),
        ];
        let n: Vec<u64> = due(&r, MAX, 100).iter().map(|e| e.acceptance_number).collect();
        assert_eq!(n, vec![1, 3]);
    }

    #[test]
    fn a_request_from_before_the_limits_gets_the_configured_maximum() {
        let r = [open(7, 1000, None, None)];
        assert!(due(&r, MAX, 1000 + MAX - 1).is_empty());
        assert_eq!(due(&r, MAX, 1000 + MAX)[0].ended_at, 1000 + MAX);
    }

    #[test]
    fn a_lowered_configuration_shortens_open_requests_a_raised_one_does_not_lengthen_them() {
        assert_eq!(effective_end(1000, Some(1000 + MAX), 3600), 1000 + 3600);
        assert_eq!(effective_end(1000, Some(1000 + MAX), 2 * MAX), 1000 + MAX);
    }

    #[test]
    fn the_expiry_detail_says_it_expired_and_who_set_a_shorter_limit() {
        let plain = due(&[open(1, 0, Some(3600 + 5 * 60), None)], MAX, 99_999)[0].detail();
        assert_eq!(plain, "expired: the maximum lifetime passed at 01:05 UTC");
        let by = due(&[open(1, 0, Some(60), Some("operator#2"))], MAX, 99_999)[0].detail();
        assert_eq!(by, "expired: the time limit set by operator#2 passed at 00:01 UTC");
    }

    #[test]
    fn an_operator_may_shorten_the_limit_or_restore_it_up_to_the_maximum() {
        assert_eq!(new_end(1000, MAX, 30, 2000), Ok(2000 + 1800));
        // Exactly the maximum is allowed.
        assert_eq!(new_end(0, MAX, MAX / 60, 0), Ok(MAX));
    }

    #[test]
    fn an_operator_cannot_raise_the_limit_above_the_configured_maximum() {
        let e = new_end(0, MAX, MAX / 60 + 1, 0).unwrap_err();
        assert_eq!(
            e,
            LimitError::AboveMaximum {
                latest: MAX,
                max_lifetime_secs: MAX
            }
        );
        let text = e.to_string();
        assert!(
            text.contains("center.max_grant_lifetime_secs = 14400") && text.contains("04:00 UTC"),
            "{text}"
        );
        // Late in the request's life even a short limit may be too long.
        assert!(new_end(0, MAX, 10, MAX - 60).is_err());
        assert_eq!(new_end(0, MAX, 0, 0), Err(LimitError::Zero));
    }

    const IDLE: u64 = 30 * 60;

    fn used(v: &[(u64, u64)]) -> BTreeMap<String, u64> {
        v.iter().map(|(n, t)| (format!("router-{n}"), *t)).collect()
    }

    fn idle_numbers(open: &[OpenRequest], last: &BTreeMap<String, u64>, now: u64) -> Vec<u64> {
        idle_due(open, last, now, IDLE)
            .iter()
            .map(|i| i.acceptance_number)
            .collect()
    }

    #[test]
    fn idleness_counts_from_the_later_of_reception_and_last_packet() {
        // (received at, last use, now, idle?)
        let table: &[(u64, u64, u64, bool)] = &[
            // Never a packet: counted from the reception.
            (1000, 0, 1000 + IDLE - 1, false),
            (1000, 0, 1000 + IDLE, true),
            // A packet after the reception moves the start.
            (1000, 2000, 1000 + IDLE, false),
            (1000, 2000, 2000 + IDLE - 1, false),
            (1000, 2000, 2000 + IDLE, true),
            // A packet before the reception (an earlier request's) does not
            // count against this one.
            (5000, 100, 5000 + IDLE - 1, false),
            (5000, 100, 5000 + IDLE, true),
        ];
        for &(received, last, now, idle) in table {
            let got = idle_numbers(&[open(1, received, None, None)], &used(&[(1, last)]), now);
            assert_eq!(got.is_empty(), !idle, "received {received} last use {last} now {now}");
        }
    }

    #[test]
    fn a_tunnel_without_known_traffic_is_never_idle() {
        let r = [open(1, 0, None, None), open(2, 0, None, None)];
        assert_eq!(idle_numbers(&r, &used(&[(2, 0)]), 10 * IDLE), vec![2]);
        assert!(idle_numbers(&r, &BTreeMap::new(), 10 * IDLE).is_empty());
    }

    #[test]
    fn requests_of_one_router_share_its_tunnels_traffic_in_their_order() {
        let mut a = open(1, 0, None, None);
        let mut b = open(2, 1800, None, None);
        a.terminal_id = "router-9".into();
        b.terminal_id = "router-9".into();
        let last = used(&[(9, 600)]);
        // At 2400: the first is idle since its last packet (600), the
        // second, received at 1800, not yet.
        assert_eq!(idle_numbers(&[a.clone(), b.clone()], &last, 2400), vec![1]);
        assert_eq!(idle_numbers(&[a, b], &last, 3600), vec![1, 2]);
    }

    #[test]
    fn the_idle_detail_says_since_when_and_how_long() {
        let d = idle_due(
            &[open(1, 3600, None, None)],
            &used(&[(1, 3600 + 300)]),
            3600 + 300 + IDLE,
            IDLE,
        );
        assert_eq!(d[0].detail(), "idle: no traffic since 01:05 UTC for 30 min");
        let d = idle_due(&[open(1, 7200, None, None)], &used(&[(1, 0)]), 7200 + 2 * IDLE, IDLE);
        assert_eq!(
            d[0].detail(),
            "idle: no traffic since 02:00 UTC (its reception) for 60 min"
        );
    }

    #[test]
    fn the_idle_end_shown_needs_a_timeout_and_the_gateways_word() {
        assert_eq!(idle_end(1000, Some(0), Some(IDLE)), Some(1000 + IDLE));
        assert_eq!(idle_end(1000, Some(4000), Some(IDLE)), Some(4000 + IDLE));
        assert_eq!(idle_end(1000, None, Some(IDLE)), None);
        assert_eq!(idle_end(1000, Some(4000), None), None);
    }

    #[test]
    fn times_are_shown_as_utc_clock_and_time_left() {
        assert_eq!(utc_hhmm(86_400 + 13 * 3600 + 7 * 60 + 59), "13:07 UTC");
        assert_eq!(time_left(10_000, 10_000 - 3900), "1h05m");
        assert_eq!(time_left(100, 40), "1m");
        assert_eq!(time_left(100, 200), "0m");
    }
}
