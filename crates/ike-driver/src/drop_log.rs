//! Aggregated log lines for dropped IKE datagrams (issue 18 item 7).
//!
//! UDP 500/4500 are open to anyone, so anyone can make the driver drop
//! datagrams as fast as they can send them; a log line for each one (in
//! routerd, PID 1, written synchronously) would be theirs to command. The
//! driver instead counts the drops here and writes one summary line per
//! interval: the counts per reason, the first source of each, and whether
//! the line is worth a warning (a drop from a configured peer's address)
//! or only debug (unknown peers, non-IKE traffic: the internet's noise).
//!
//! A reason is a fixed text and the kind of the core's error ([`kind`]),
//! never the error's details (they carry lengths and SPIs that a flood
//! varies at will).
//!
//! The owner's [`crate::DriverEvent::Rejected`] events are held to the same
//! account: at most [`MAX_EVENTS`] per interval ([`DropLog::event`]), the
//! rest only counted in the summary. The event channel is read by the
//! owner at its own pace (routerd logs each event); a flood must not pile
//! up events in it faster than time passes, nor a line each in the owner.
//!
//! Pure: the caller passes the time in and writes the [`Summary`] this
//! returns. Bounded: at most [`MAX_REASONS`] distinct reasons per interval,
//! the rest counted together.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Distinct reasons kept per interval; further ones count as "other".
pub const MAX_REASONS: usize = 8;
/// Rejection events sent to the owner per interval at most.
pub const MAX_EVENTS: u64 = 16;

/// Who sent the dropped datagram, as far as the driver knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Sender {
    /// No tunnel with this address: the internet's noise (debug).
    Unknown,
    /// A configured peer's address, or a dial-in listener's exchange:
    /// worth a warning.
    Peer,
}

#[derive(Debug, Clone, Copy)]
struct Count {
    n: u64,
    first_from: SocketAddr,
}

/// Drops in the current interval; see the module documentation.
#[derive(Debug)]
pub struct DropLog {
    interval: Duration,
    /// When the first drop of the current interval came (None: none yet).
    since: Option<Instant>,
    counts: BTreeMap<(Sender, &'static str, &'static str), Count>,
    other: u64,
    /// Rejection events sent in the current interval.
    events: u64,
    /// Rejection events withheld in the current interval.
    withheld: u64,
}

/// One line to write now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// `log::Level::Warn` when any drop came from a configured peer's
    /// address, else `log::Level::Debug`.
    pub level: log::Level,
    pub total: u64,
    /// Since the first drop of the interval.
    pub over: Duration,
    /// (reason, count, first source), most frequent first.
    pub reasons: Vec<(String, u64, SocketAddr)>,
    /// Drops of reasons beyond [`MAX_REASONS`].
    pub other: u64,
    /// Rejection events not sent to the owner (beyond [`MAX_EVENTS`]).
    pub withheld: u64,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "IKE: dropped {} datagram(s) in {:.1} s:",
            self.total,
            self.over.as_secs_f64()
        )?;
        for (i, (reason, n, from)) in self.reasons.iter().enumerate() {
            let sep = if i == 0 { " " } else { "; " };
            write!(f, "{sep}{n} {reason} (first from {from})")?;
        }
        if self.other > 0 {
            write!(f, "; {} for other reasons", self.other)?;
        }
        if self.withheld > 0 {
            write!(f, " ({} not reported as events)", self.withheld)?;
        }
        Ok(())
    }
}

impl DropLog {
    pub fn new(interval: Duration) -> Self {
        DropLog {
            interval,
            since: None,
            counts: BTreeMap::new(),
            other: 0,
            events: 0,
            withheld: 0,
        }
    }

    /// Counts a drop at `now` (`what` happened, of which `kind`: may be
    /// empty); the summary to write now, if the interval is over.
    pub fn record(
        &mut self,
        now: Instant,
        sender: Sender,
        what: &'static str,
        kind: &'static str,
        from: SocketAddr,
    ) -> Option<Summary> {
        let due = self.poll(now);
        self.since.get_or_insert(now);
        let key = (sender, what, kind);
        if let Some(c) = self.counts.get_mut(&key) {
            c.n = c.n.saturating_add(1);
        } else if self.counts.len() < MAX_REASONS {
            self.counts.insert(key, Count { n: 1, first_from: from });
        } else {
            self.other = self.other.saturating_add(1);
        }
        due
    }

    /// Whether the drop just recorded may also go to the owner as an
    /// event: yes for the first [`MAX_EVENTS`] of the interval; the rest
    /// are counted in its summary.
    pub fn event(&mut self) -> bool {
        if self.events < MAX_EVENTS {
            self.events = self.events.saturating_add(1);
            return true;
        }
        self.withheld = self.withheld.saturating_add(1);
        false
    }

    /// The summary of the interval if it is over at `now` (a new interval
    /// starts with the next drop).
    pub fn poll(&mut self, now: Instant) -> Option<Summary> {
        let since = self.since?;
        if now.saturating_duration_since(since) < self.interval {
            return None;
        }
        let warn = self.counts.keys().any(|(s, _, _)| *s == Sender::Peer);
        let mut reasons: Vec<(String, u64, SocketAddr)> = std::mem::take(&mut self.counts)
            .into_iter()
            .map(|((_, what, kind), c)| {
                let reason = if kind.is_empty() {
                    what.to_owned()
                } else {
                    format!("{what}: {kind}")
                };
                (reason, c.n, c.first_from)
            })
            .collect();
        reasons.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let other = std::mem::take(&mut self.other);
        let withheld = std::mem::take(&mut self.withheld);
        self.events = 0;
        self.since = None;
        let total = reasons.iter().map(|r| r.1).fold(other, u64::saturating_add);
        Some(Summary {
            level: if warn { log::Level::Warn } else { log::Level::Debug },
            total,
            over: now.saturating_duration_since(since),
            reasons,
            other,
            withheld,
        })
    }

    /// When [`DropLog::poll`] will have a summary (None: nothing counted).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.since.map(|s| s + self.interval)
    }
}

/// The kind of a core error, without its details.
pub fn kind(e: &vpnnat_ike::Error) -> &'static str {
    use vpnnat_ike::Error as E;
    match e {
        E::Codec(_) => "malformed message",
        E::Keys(_) => "protection failed",
        E::Crypto(_) => "crypto failed",
        E::NotIke => "not IKE",
        E::PeerNotAllowed(_) => "unexpected peer",
        E::UnknownSa { .. } => "unknown IKE SA",
        E::ReplayedInit(_) => "replayed IKE_SA_INIT",
        E::UnexpectedExchange { .. } => "unexpected exchange",
        E::UnexpectedMessageId { .. } => "unexpected message id",
        E::BadFlags => "initiator flag does not match",
        E::MissingPayload(_) => "missing payload",
        E::InvalidPayload(_) => "invalid payload",
        E::NoProposalChosen => "no proposal chosen",
        E::InvalidKe { .. } => "invalid KE payload",
        E::AuthenticationFailed => "authentication failed",
        E::IdentityMismatch => "peer identity does not match",
        E::UnknownIdentity => "unknown peer identity",
        E::TsUnacceptable => "traffic selectors unacceptable",
        E::CookieRequired => "cookie required",
        E::TooManyHalfOpen(_) => "too many half-open IKE SAs",
        E::PeerError(_) => "peer sent an error notify",
        E::NotEstablished => "no established IKE SA",
        E::UnknownChild(_) => "unknown CHILD SA",
        E::InvalidConfig(_) => "invalid configuration",
        E::SpiAllocation(_) => "no inbound SPI",
        E::MessageIdsExhausted => "message ids exhausted",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(i: u8) -> SocketAddr {
        SocketAddr::from(([203, 0, 113, i], 500))
    }

    #[test]
    fn one_line_per_interval_with_counts_per_reason() {
        let t0 = Instant::now();
        let mut d = DropLog::new(Duration::from_secs(10));
        assert_eq!(d.next_deadline(), None);
        let mut lines = Vec::new();
        // 100,000 drops over 25 s: one every 250 µs.
        for i in 0..100_000u32 {
            let now = t0 + Duration::from_micros(u64::from(i) * 250);
            let (sender, what, kind) = if i % 10 == 0 {
                (Sender::Peer, "rejected", "malformed message")
            } else {
                (Sender::Unknown, "not a configured peer", "")
            };
            lines.extend(d.record(now, sender, what, kind, from((i % 7) as u8)));
        }
        lines.extend(d.poll(t0 + Duration::from_secs(40)));
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert_eq!(lines.iter().map(|l| l.total).sum::<u64>(), 100_000);
        let first = &lines[0];
        assert_eq!(first.level, log::Level::Warn);
        assert_eq!(first.over, Duration::from_secs(10));
        assert_eq!(first.reasons[0].0, "not a configured peer");
        assert_eq!(first.reasons[0].2, from(1));
        assert_eq!(first.reasons[1].0, "rejected: malformed message");
        assert_eq!(first.reasons[0].1 + first.reasons[1].1, first.total);
        assert_eq!(
            first.to_string(),
            format!(
                "IKE: dropped {} datagram(s) in 10.0 s: {} not a configured peer (first from 203.0.113.1:500); \
                 {} rejected: malformed message (first from 203.0.113.0:500)",
                first.total, first.reasons[0].1, first.reasons[1].1
            )
        );
        assert_eq!(d.next_deadline(), None);
    }

    #[test]
    fn unknown_peers_alone_are_debug_and_the_summary_waits_for_the_interval() {
        let t0 = Instant::now();
        let mut d = DropLog::new(Duration::from_secs(10));
        assert_eq!(d.record(t0, Sender::Unknown, "not IKE", "", from(1)), None);
        assert_eq!(
            d.record(t0 + Duration::from_secs(3), Sender::Unknown, "not IKE", "", from(2)),
            None
        );
        assert_eq!(d.next_deadline(), Some(t0 + Duration::from_secs(10)));
        assert_eq!(d.poll(t0 + Duration::from_secs(9)), None);
        let s = d.poll(t0 + Duration::from_secs(10)).unwrap();
        assert_eq!((s.level, s.total, s.reasons.len()), (log::Level::Debug, 2, 1));
        assert_eq!(s.reasons[0], ("not IKE".to_owned(), 2, from(1)));
        // Quiet: nothing more to say.
        assert_eq!(d.poll(t0 + Duration::from_secs(100)), None);
    }

    /// Issue 18 item 7: 100,000 rejected datagrams over 25 s give the owner
    /// at most [`MAX_EVENTS`] events per interval (before, one event each,
    /// piling up in its channel and each a line in routerd's log); the
    /// summaries count the rest.
    #[test]
    fn rejection_events_are_bounded_per_interval() {
        let t0 = Instant::now();
        let mut d = DropLog::new(Duration::from_secs(10));
        let (mut sent, mut lines) = (0u64, Vec::new());
        for i in 0..100_000u32 {
            let now = t0 + Duration::from_micros(u64::from(i) * 250);
            lines.extend(d.record(now, Sender::Peer, "rejected", "malformed message", from(1)));
            if d.event() {
                sent += 1;
            }
        }
        lines.extend(d.poll(t0 + Duration::from_secs(40)));
        assert_eq!(lines.len(), 3);
        assert_eq!(sent, 3 * MAX_EVENTS);
        let withheld: u64 = lines.iter().map(|l| l.withheld).sum();
        assert_eq!(sent + withheld, 100_000);
        assert!(
            lines[0]
                .to_string()
                .ends_with(&format!(" ({} not reported as events)", lines[0].withheld)),
            "{}",
            lines[0]
        );
        // A quiet interval starts with a fresh allowance.
        let _ = d.record(t0 + Duration::from_secs(100), Sender::Unknown, "not IKE", "", from(2));
        assert!(d.event());
    }

    #[test]
    fn the_reasons_are_bounded() {
        let t0 = Instant::now();
        let mut d = DropLog::new(Duration::from_secs(1));
        const KINDS: [&str; 20] = [
            "a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m", "n", "o", "p", "q", "r", "s", "t",
        ];
        for i in 0..1000 {
            let _ = d.record(t0, Sender::Peer, "rejected", KINDS[i % 20], from(1));
        }
        let s = d.poll(t0 + Duration::from_secs(1)).unwrap();
        assert_eq!(s.reasons.len(), MAX_REASONS);
        assert_eq!(s.other, 1000 - 50 * MAX_REASONS as u64);
        assert_eq!(s.total, 1000);
        assert!(
            s.to_string().ends_with(&format!("; {} for other reasons", s.other)),
            "{s}"
        );
    }
}
