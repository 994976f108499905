//! The per-source query limit of centerd's DNS server (issue 18 item 11).
//!
//! UDP sources can be forged, and an answer is larger than its question:
//! without a limit the server is a reflector, and one client can take the
//! database reads from everyone else. Each source address (an IPv6 source
//! by its /64) gets a token bucket: `burst` queries at once, refilled at
//! `per_sec` a second. A query beyond it is not answered (the server drops
//! it: a REFUSED would still be reflected). The drops are summed up in one
//! [`Report`] per interval, never a line per query.
//!
//! Bounded: at most `max_sources` buckets. When the table is full, buckets
//! that are full again (their source went quiet) are forgotten, at most
//! once a second; sources beyond the table while every bucket is live
//! share one overflow bucket, so forged addresses cannot grow the table
//! nor get past the limit by being new.
//!
//! Pure: the caller passes the time in and writes the report.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// The limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateConfig {
    /// Queries a second one source may send in the long run.
    pub per_sec: u32,
    /// Queries one source may send at once.
    pub burst: u32,
    /// Sources tracked at most.
    pub max_sources: usize,
    /// How often the drops are summed up in a log line.
    pub report_every: Duration,
}

impl Default for RateConfig {
    /// 50 queries a second, bursts of 100, per source: far above what an
    /// operator's resolver asks of this small zone (answers are cached for
    /// the zone's TTL), far below what a flood sends.
    fn default() -> Self {
        RateConfig {
            per_sec: 50,
            burst: 100,
            max_sources: 4096,
            report_every: Duration::from_secs(10),
        }
    }
}

/// What to do with one query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Answer,
    /// Over the source's limit: no answer.
    Drop,
}

/// Tokens are counted in thousandths, so that slow rates refill smoothly.
const UNIT: u64 = 1000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    milli: u64,
    last: Instant,
    /// Queries dropped in the current report interval.
    dropped: u64,
}

impl Bucket {
    fn full(cfg: &RateConfig, now: Instant) -> Self {
        Bucket {
            milli: u64::from(cfg.burst).saturating_mul(UNIT),
            last: now,
            dropped: 0,
        }
    }

    fn refill(&mut self, cfg: &RateConfig, now: Instant) {
        let cap = u64::from(cfg.burst).saturating_mul(UNIT);
        let micros = now.saturating_duration_since(self.last).as_micros();
        // per_sec tokens a second = per_sec * UNIT / 1e6 milli-tokens a µs.
        let add = micros
            .saturating_mul(u128::from(cfg.per_sec))
            .saturating_mul(u128::from(UNIT))
            / 1_000_000;
        self.milli = u64::try_from(add)
            .unwrap_or(u64::MAX)
            .saturating_add(self.milli)
            .min(cap);
        self.last = now;
    }

    fn take(&mut self, cfg: &RateConfig, now: Instant) -> Verdict {
        self.refill(cfg, now);
        if self.milli >= UNIT {
            self.milli = self.milli.saturating_sub(UNIT);
            Verdict::Answer
        } else {
            self.dropped = self.dropped.saturating_add(1);
            Verdict::Drop
        }
    }

    /// Full again and nothing to report: the record can go.
    fn idle(&self, cfg: &RateConfig, now: Instant) -> bool {
        let mut b = *self;
        b.refill(cfg, now);
        b.dropped == 0 && b.milli >= u64::from(cfg.burst).saturating_mul(UNIT)
    }
}

/// The summary of one interval's drops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub dropped: u64,
    /// Sources with drops (the overflow bucket counts as one).
    pub sources: usize,
    /// The source with the most drops, and how many (None: the overflow
    /// bucket had the most).
    pub top: (Option<IpAddr>, u64),
    pub over: Duration,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "dns: rate limit: dropped {} queries from {} source(s) in {:.1} s; most from ",
            self.dropped,
            self.sources,
            self.over.as_secs_f64()
        )?;
        match self.top.0 {
            Some(a) => write!(f, "{a}")?,
            None => f.write_str("untracked sources")?,
        }
        write!(f, " ({})", self.top.1)
    }
}

/// See the module documentation.
#[derive(Debug)]
pub struct RateLimiter {
    cfg: RateConfig,
    buckets: HashMap<IpAddr, Bucket>,
    /// Shared by sources beyond the table.
    overflow: Option<Bucket>,
    last_sweep: Option<Instant>,
    /// The first drop of the current report interval.
    since: Option<Instant>,
}

impl RateLimiter {
    pub fn new(cfg: RateConfig) -> Self {
        RateLimiter {
            cfg,
            buckets: HashMap::new(),
            overflow: None,
            last_sweep: None,
            since: None,
        }
    }

    /// Whether to answer a query from `source` at `now`.
    pub fn check(&mut self, source: IpAddr, now: Instant) -> Verdict {
        let cfg = self.cfg;
        let key = key_of(source);
        if !self.buckets.contains_key(&key) && self.buckets.len() >= cfg.max_sources {
            self.sweep(now);
        }
        let bucket = if self.buckets.len() < cfg.max_sources || self.buckets.contains_key(&key) {
            self.buckets.entry(key).or_insert_with(|| Bucket::full(&cfg, now))
        } else {
            self.overflow.get_or_insert_with(|| Bucket::full(&cfg, now))
        };
        let v = bucket.take(&cfg, now);
        if v == Verdict::Drop {
            self.since.get_or_insert(now);
        }
        v
    }

    /// Forgets idle sources, at most once a second.
    fn sweep(&mut self, now: Instant) {
        if self
            .last_sweep
            .is_some_and(|t| now.saturating_duration_since(t) < Duration::from_secs(1))
        {
            return;
        }
        self.last_sweep = Some(now);
        let cfg = self.cfg;
        self.buckets.retain(|_, b| !b.idle(&cfg, now));
    }

    /// The summary of the interval's drops if it is over at `now`.
    pub fn report(&mut self, now: Instant) -> Option<Report> {
        let since = self.since?;
        if now.saturating_duration_since(since) < self.cfg.report_every {
            return None;
        }
        self.since = None;
        let mut r = Report {
            dropped: 0,
            sources: 0,
            top: (None, 0),
            over: now.saturating_duration_since(since),
        };
        let tracked = self.buckets.iter_mut().map(|(k, b)| (Some(*k), b));
        for (src, b) in tracked.chain(self.overflow.iter_mut().map(|b| (None, b))) {
            let n = std::mem::take(&mut b.dropped);
            if n == 0 {
                continue;
            }
            r.dropped = r.dropped.saturating_add(n);
            r.sources = r.sources.saturating_add(1);
            if n > r.top.1 {
                r.top = (src, n);
            }
        }
        Some(r)
    }

    /// When [`RateLimiter::report`] will have a summary.
    pub fn next_report(&self) -> Option<Instant> {
        self.since.and_then(|s| s.checked_add(self.cfg.report_every))
    }

    /// Sources tracked now.
    pub fn tracked(&self) -> usize {
        self.buckets.len()
    }
}

/// An IPv6 source counts by its /64 (one host has a whole /64 to pick
/// addresses from); an IPv4-mapped one as the IPv4 address.
fn key_of(a: IpAddr) -> IpAddr {
    match a {
        IpAddr::V4(_) => a,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::from([s[0], s[1], s[2], s[3], 0, 0, 0, 0])
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn cfg() -> RateConfig {
        RateConfig {
            per_sec: 10,
            burst: 20,
            max_sources: 8,
            report_every: Duration::from_secs(10),
        }
    }

    #[test]
    fn a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(cfg());
        let a = ip("192.0.2.1");
        let answered = (0..100).filter(|_| l.check(a, t0) == Verdict::Answer).count();
        assert_eq!(answered, 20);
        // One query every 10 ms for 10 s: 10 a second get through.
        let mut answered = 0;
        for i in 1..=1000u64 {
            if l.check(a, t0 + Duration::from_millis(i * 10)) == Verdict::Answer {
                answered += 1;
            }
        }
        assert!((99..=101).contains(&answered), "{answered}");
        // Quiet for 2 s: a full burst again.
        let later = t0 + Duration::from_secs(12);
        assert_eq!((0..25).filter(|_| l.check(a, later) == Verdict::Answer).count(), 20);
    }

    #[test]
    fn one_flooding_source_does_not_limit_another() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(cfg());
        let (a, b) = (ip("192.0.2.1"), ip("192.0.2.2"));
        for i in 0..10_000u64 {
            let now = t0 + Duration::from_micros(i * 100);
            let _ = l.check(a, now);
            // b: 5 queries a second, within its own limit.
            if i % 2000 == 0 {
                assert_eq!(l.check(b, now), Verdict::Answer, "query {i}");
            }
        }
    }

    #[test]
    fn one_report_per_interval_with_the_counts() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(cfg());
        let (a, b) = (ip("192.0.2.1"), ip("2001:db8::1"));
        let mut reports = Vec::new();
        // 25 s of 1,000 queries a second from a, 100 from b's /64.
        for ms in 0..25_000u64 {
            let now = t0 + Duration::from_millis(ms);
            let _ = l.check(a, now);
            if ms % 10 == 0 {
                let other = IpAddr::from([0x2001, 0xdb8, 0, 0, 0, 0, 0, (ms % 7) as u16]);
                let _ = l.check(other, now);
            }
            reports.extend(l.report(now));
        }
        reports.extend(l.report(t0 + Duration::from_secs(60)));
        assert_eq!(reports.len(), 3, "{reports:?}");
        let dropped: u64 = reports.iter().map(|r| r.dropped).sum();
        // a: 25,000 sent, 20 + 10/s answered; b: 2,500 sent, 20 + 10/s.
        let expect = (25_000 - 20 - 250) + (2_500 - 20 - 250);
        assert!(dropped.abs_diff(expect) <= 4, "{dropped} vs {expect}");
        assert_eq!(reports[0].sources, 2);
        assert_eq!(reports[0].top.0, Some(a));
        assert_eq!(l.tracked(), 2, "b's /64 is one source: {b}");
        let line = reports[0].to_string();
        assert!(
            line.starts_with("dns: rate limit: dropped ") && line.contains("most from 192.0.2.1 ("),
            "{line}"
        );
        // Quiet: nothing more to say.
        assert_eq!(l.report(t0 + Duration::from_secs(100)), None);
        assert_eq!(l.next_report(), None);
    }

    /// Forged source addresses neither grow the table nor get past the
    /// limit by being new: beyond the table they share one bucket.
    #[test]
    fn the_table_is_bounded_and_new_sources_share_the_overflow() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(cfg());
        let mut answered = 0;
        for i in 0..10_000u32 {
            if l.check(IpAddr::from(i.to_be_bytes()), t0) == Verdict::Answer {
                answered += 1;
            }
            assert!(l.tracked() <= 8);
        }
        // 8 tracked sources (one query each), then one overflow burst for
        // the 9,992 others together.
        assert_eq!(answered, 8 + 20);
        // Once the tracked ones are idle (2 s refills 20 tokens), new
        // sources get their own buckets again.
        let later = t0 + Duration::from_secs(3);
        let fresh = ip("198.51.100.1");
        assert_eq!(l.check(fresh, later), Verdict::Answer);
        assert!(l.tracked() <= 8);
        assert_eq!((0..30).filter(|_| l.check(fresh, later) == Verdict::Answer).count(), 19);
    }
}
