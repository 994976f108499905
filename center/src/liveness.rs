//! Gateway liveness: centerd sends every gatewayd an authenticated
//! heartbeat (the `ReportState` command, MAC'd with the gateway's API key)
//! every `interval`; `misses` heartbeats in a row without a good answer mark
//! the gateway down, the first good answer after that marks it up again.
//!
//! This module is the pure state machine (time is passed in), so the
//! up/down transitions are unit-tested without sockets or clocks; centerd's
//! heartbeat loop feeds it and acts on the transitions (database, audit,
//! reconciliation: [`crate::center::Center::gateway_down`] and
//! [`crate::center::Center::gateway_back`]).

use std::time::{Duration, Instant};

/// Heartbeat settings (`[center] heartbeat_interval_ms`, `heartbeat_misses`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeartbeatConfig {
    /// Time between heartbeats (each is sent on time, whether the previous
    /// one answered yet or not).
    pub interval: Duration,
    /// How long one heartbeat may take. Longer than the interval, so a
    /// gateway slowed down by load (its answers late but coming) is not
    /// taken for a dead one; a silent gateway is marked down after
    /// `timeout + (misses - 1) x interval`.
    pub timeout: Duration,
    /// Consecutive failed heartbeats that mean "down" (at least 1).
    pub misses: u32,
}

impl Default for HeartbeatConfig {
    /// One heartbeat a second, 2 s to answer, down after three misses in a
    /// row: a gateway whose port refuses is noticed in 2-3 s, one that went
    /// silent in about 4 s, while one lost packet or a gateway busy for a
    /// second does not flap.
    fn default() -> Self {
        HeartbeatConfig {
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(2),
            misses: 3,
        }
    }
}

/// A change the caller must act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// `misses` heartbeats failed in a row. `silent_for`: time since the
    /// last good answer (None: no answer since centerd started watching).
    Down { silent_for: Option<Duration> },
    /// A gateway that was down answered again.
    Up,
}

/// The liveness of one gateway.
#[derive(Debug, Clone)]
pub struct GatewayWatch {
    misses_to_down: u32,
    up: bool,
    misses: u32,
    last_ok: Option<Instant>,
}

impl GatewayWatch {
    /// `up`: what the database says (a centerd restarted while a gateway
    /// was down keeps it down until it answers).
    pub fn new(cfg: HeartbeatConfig, up: bool) -> Self {
        GatewayWatch {
            misses_to_down: cfg.misses.max(1),
            up,
            misses: 0,
            last_ok: None,
        }
    }

    /// The state the tests check after each observation.
    #[cfg(test)]
    pub fn is_up(&self) -> bool {
        self.up
    }

    /// Back to "down" without a transition: acting on `Up` failed (the
    /// gateway could not be reconciled), so the next answer retries it.
    pub fn revert_to_down(&mut self) {
        self.up = false;
    }

    /// Feeds one heartbeat outcome observed at `now`.
    pub fn observe(&mut self, answered: bool, now: Instant) -> Option<Transition> {
        if answered {
            self.misses = 0;
            self.last_ok = Some(now);
            if self.up {
                return None;
            }
            self.up = true;
            return Some(Transition::Up);
        }
        self.misses = self.misses.saturating_add(1);
        if !self.up || self.misses < self.misses_to_down {
            return None;
        }
        self.up = false;
        Some(Transition::Down {
            silent_for: self.last_ok.map(|t| now.saturating_duration_since(t)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(misses: u32) -> HeartbeatConfig {
        HeartbeatConfig {
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(2),
            misses,
        }
    }

    #[test]
    fn down_after_exactly_misses_in_a_row() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut w = GatewayWatch::new(cfg(3), true);
        assert_eq!(w.observe(true, at(0)), None);
        assert_eq!(w.observe(false, at(1)), None);
        assert_eq!(w.observe(false, at(2)), None);
        assert!(w.is_up());
        assert_eq!(
            w.observe(false, at(3)),
            Some(Transition::Down {
                silent_for: Some(Duration::from_secs(3))
            })
        );
        assert!(!w.is_up());
        // Further misses do not repeat the transition.
        assert_eq!(w.observe(false, at(4)), None);
        assert_eq!(w.observe(false, at(5)), None);
    }

    #[test]
    fn an_answer_resets_the_miss_count() {
        let t0 = Instant::now();
        let mut w = GatewayWatch::new(cfg(3), true);
        for i in 0..10u64 {
            // Two misses, one answer, forever: never down.
            let ok = i % 3 == 2;
            assert_eq!(w.observe(ok, t0 + Duration::from_secs(i)), None, "beat {i}");
        }
        assert!(w.is_up());
    }

    #[test]
    fn back_up_on_the_first_answer_and_down_again_later() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut w = GatewayWatch::new(cfg(2), true);
        w.observe(false, at(1));
        assert!(matches!(
            w.observe(false, at(2)),
            Some(Transition::Down { silent_for: None })
        ));
        assert_eq!(w.observe(true, at(3)), Some(Transition::Up));
        assert_eq!(w.observe(true, at(4)), None);
        assert_eq!(w.observe(false, at(5)), None);
        assert_eq!(
            w.observe(false, at(6)),
            Some(Transition::Down {
                silent_for: Some(Duration::from_secs(2))
            })
        );
    }

    #[test]
    fn starts_down_when_the_database_says_so() {
        let t0 = Instant::now();
        let mut w = GatewayWatch::new(cfg(3), false);
        assert!(!w.is_up());
        assert_eq!(w.observe(false, t0), None);
        assert_eq!(w.observe(true, t0 + Duration::from_secs(1)), Some(Transition::Up));
    }

    #[test]
    fn a_failed_comeback_is_retried_on_the_next_answer() {
        let t0 = Instant::now();
        let mut w = GatewayWatch::new(cfg(3), false);
        assert_eq!(w.observe(true, t0), Some(Transition::Up));
        w.revert_to_down();
        assert_eq!(w.observe(true, t0 + Duration::from_secs(1)), Some(Transition::Up));
    }

    #[test]
    fn zero_misses_is_treated_as_one() {
        let mut w = GatewayWatch::new(cfg(0), true);
        assert!(matches!(
            w.observe(false, Instant::now()),
            Some(Transition::Down { .. })
        ));
    }
}
