//! Retransmission schedule (RFC 7296 2.1, 2.4).
//!
//! Only the side that sent a request retransmits, always the identical
//! bytes, with exponential back-off. When the tries are used up the peer
//! is considered dead: the caller tears the IKE SA down.

use std::time::{Duration, Instant};

/// How requests are retransmitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetransmitConfig {
    /// Wait before the first retransmission.
    pub initial: Duration,
    /// Upper bound for a single wait.
    pub max_interval: Duration,
    /// Retransmissions after the first transmission before giving up.
    pub max_retransmits: u32,
}

impl Default for RetransmitConfig {
    /// 1 s, 2 s, 4 s, 8 s, 16 s, then 32 s until giving up: about a minute,
    /// close to strongSwan's default schedule.
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(1),
            max_interval: Duration::from_secs(32),
            max_retransmits: 5,
        }
    }
}

/// What [`Retransmitter::poll`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tick {
    /// Nothing to do yet.
    Idle,
    /// Send the request again now.
    Retransmit,
    /// All tries used; the peer is unresponsive.
    GiveUp,
}

/// The timer of one outstanding request.
#[derive(Debug, Clone)]
pub struct Retransmitter {
    cfg: RetransmitConfig,
    deadline: Instant,
    sent: u32,
}

impl Retransmitter {
    /// Starts the schedule for a request just sent at `now`.
    pub fn new(cfg: RetransmitConfig, now: Instant) -> Self {
        Self {
            cfg,
            deadline: now.checked_add(cfg.initial).unwrap_or(now),
            sent: 0,
        }
    }

    /// When this timer next wants attention.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Number of retransmissions done so far.
    pub fn retransmits(&self) -> u32 {
        self.sent
    }

    /// Advances the schedule.
    pub fn poll(&mut self, now: Instant) -> Tick {
        if now < self.deadline {
            return Tick::Idle;
        }
        if self.sent >= self.cfg.max_retransmits {
            return Tick::GiveUp;
        }
        self.sent = self.sent.saturating_add(1);
        let factor = 1u32.checked_shl(self.sent).unwrap_or(u32::MAX);
        let wait = self
            .cfg
            .initial
            .checked_mul(factor)
            .unwrap_or(self.cfg.max_interval)
            .min(self.cfg.max_interval);
        self.deadline = now.checked_add(wait).unwrap_or(now);
        Tick::Retransmit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponential_backoff_then_give_up() {
        let t0 = Instant::now();
        let cfg = RetransmitConfig {
            initial: Duration::from_secs(1),
            max_interval: Duration::from_secs(5),
            max_retransmits: 4,
        };
        let mut r = Retransmitter::new(cfg, t0);
        assert_eq!(r.poll(t0), Tick::Idle);
        let mut waits = Vec::new();
        let now = loop {
            let now = r.deadline();
            match r.poll(now) {
                Tick::Retransmit => waits.push(r.deadline() - now),
                Tick::GiveUp => break now,
                Tick::Idle => unreachable!(),
            }
        };
        let secs: Vec<u64> = waits.iter().map(Duration::as_secs).collect();
        assert_eq!(secs, vec![2, 4, 5, 5]);
        assert_eq!(r.retransmits(), 4);
        assert!(now > t0);
    }
}
