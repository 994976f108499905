//! Password-guessing brakes for the two password pages (centerd's operator
//! login, routerd's maintenance page): after `per_source` wrong passwords
//! from one address within `window`, that address is locked out for
//! `lockout`, right password or not; after `global` wrong passwords from
//! anywhere (the pages have one account each, so this is the per-user
//! limit) everybody is. A locked-out attempt is refused before the
//! password is even hashed, so a flood of guesses costs no PBKDF2 time.
//!
//! Pure: the caller passes the time in (Unix seconds) and keeps the
//! throttle behind its own lock. The per-address table is bounded.
//!
//! [`ConnectionGate`] is the servers' other brake: a cap on open
//! connections per listener and per source address, so one flooding
//! address cannot take every slot from the others.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use thiserror::Error;

/// Limits of a [`LoginThrottle`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottleConfig {
    /// Wrong passwords one address may send within `window_secs`.
    pub per_source: u32,
    /// Wrong passwords all addresses together may send within `window_secs`.
    pub global: u32,
    pub window_secs: u64,
    /// How long a lock-out lasts.
    pub lockout_secs: u64,
    /// Addresses tracked at most (the oldest is forgotten first).
    pub max_sources: usize,
}

impl Default for ThrottleConfig {
    /// 5 per address and 50 overall per 5 minutes, 60 s lock-out: a typing
    /// operator never meets it, a guesser gets ~7 guesses a minute.
    fn default() -> Self {
        ThrottleConfig {
            per_source: 5,
            global: 50,
            window_secs: 300,
            lockout_secs: 60,
            max_sources: 4096,
        }
    }
}

/// Who is locked out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Source,
    Everyone,
}

/// A refused attempt: who is locked out and for how long still.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("{}; try again in {retry_after_secs} s", match scope {
    Scope::Source => "too many wrong passwords from this address",
    Scope::Everyone => "too many wrong passwords (from several addresses)",
})]
pub struct Throttled {
    pub scope: Scope,
    pub retry_after_secs: u64,
}

#[derive(Debug, Clone, Copy, Default)]
struct Window {
    started: u64,
    failures: u32,
    locked_until: u64,
}

impl Window {
    fn refused(&self, now: u64) -> Option<u64> {
        (now < self.locked_until).then(|| self.locked_until.saturating_sub(now))
    }

    /// Counts a failure; true when it starts a lock-out.
    fn fail(&mut self, now: u64, limit: u32, cfg: &ThrottleConfig) -> bool {
        if now.saturating_sub(self.started) >= cfg.window_secs {
            *self = Window {
                started: now,
                failures: 0,
                locked_until: self.locked_until,
            };
        }
        self.failures = self.failures.saturating_add(1);
        if self.failures >= limit {
            self.locked_until = now.saturating_add(cfg.lockout_secs);
            // A fresh window after the lock-out: 'limit' more guesses.
            self.failures = 0;
            self.started = self.locked_until;
            return true;
        }
        false
    }
}

/// See the module documentation.
#[derive(Debug, Default)]
pub struct LoginThrottle {
    cfg: ThrottleConfig,
    sources: HashMap<IpAddr, Window>,
    all: Window,
}

impl LoginThrottle {
    pub fn new(cfg: ThrottleConfig) -> Self {
        LoginThrottle {
            cfg,
            sources: HashMap::new(),
            all: Window::default(),
        }
    }

    /// Whether `source` may try a password now.
    pub fn check(&self, source: IpAddr, now: u64) -> Result<(), Throttled> {
        if let Some(s) = self.sources.get(&source).and_then(|w| w.refused(now)) {
            return Err(Throttled {
                scope: Scope::Source,
                retry_after_secs: s,
            });
        }
        if let Some(s) = self.all.refused(now) {
            return Err(Throttled {
                scope: Scope::Everyone,
                retry_after_secs: s,
            });
        }
        Ok(())
    }

    /// Records a wrong password; returns the lock-out it started, if any.
    pub fn failed(&mut self, source: IpAddr, now: u64) -> Option<Throttled> {
        let cfg = self.cfg;
        if !self.sources.contains_key(&source) && self.sources.len() >= cfg.max_sources {
            self.forget_one(now);
        }
        let w = self.sources.entry(source).or_insert(Window {
            started: now,
            ..Window::default()
        });
        if w.fail(now, cfg.per_source, &cfg) {
            return Some(Throttled {
                scope: Scope::Source,
                retry_after_secs: cfg.lockout_secs,
            });
        }
        if self.all.fail(now, cfg.global, &cfg) {
            return Some(Throttled {
                scope: Scope::Everyone,
                retry_after_secs: cfg.lockout_secs,
            });
        }
        None
    }

    /// Records a right password: the address starts afresh.
    pub fn succeeded(&mut self, source: IpAddr) {
        self.sources.remove(&source);
    }

    /// Addresses tracked now.
    pub fn tracked(&self) -> usize {
        self.sources.len()
    }

    /// Makes room: expired entries go first, else the oldest window.
    fn forget_one(&mut self, now: u64) {
        let cfg = self.cfg;
        self.sources
            .retain(|_, w| now < w.locked_until || now.saturating_sub(w.started) < cfg.window_secs);
        if self.sources.len() >= cfg.max_sources {
            if let Some(oldest) = self.sources.iter().min_by_key(|(_, w)| w.started).map(|(k, _)| *k) {
                self.sources.remove(&oldest);
            }
        }
    }
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum GateFull {
    #[error("too many connections ({0} open)")]
    Listener(usize),
    #[error("too many connections from this address ({0} open)")]
    Source(usize),
}

#[derive(Debug, Default)]
struct Gate {
    open: usize,
    per_source: HashMap<IpAddr, usize>,
    refused: u64,
}

/// Counts open connections of one listener; see the module documentation.
#[derive(Debug, Clone)]
pub struct ConnectionGate {
    max_open: usize,
    max_per_source: usize,
    gate: Arc<Mutex<Gate>>,
}

/// An admitted connection; dropping it frees its place.
#[derive(Debug)]
pub struct Admitted {
    source: IpAddr,
    gate: Arc<Mutex<Gate>>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if let Ok(mut g) = self.gate.lock() {
            g.open = g.open.saturating_sub(1);
            if let Some(n) = g.per_source.get_mut(&self.source) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    g.per_source.remove(&self.source);
                }
            }
        }
    }
}

impl ConnectionGate {
    pub fn new(max_open: usize, max_per_source: usize) -> Self {
        ConnectionGate {
            max_open,
            max_per_source,
            gate: Arc::new(Mutex::new(Gate::default())),
        }
    }

    /// Admits a connection from `source`, or says why not.
    pub fn admit(&self, source: IpAddr) -> Result<Admitted, GateFull> {
        let mut g = self.gate.lock().map_err(|_| GateFull::Listener(self.max_open))?;
        let from_source = g.per_source.get(&source).copied().unwrap_or(0);
        let refusal = if g.open >= self.max_open {
            Some(GateFull::Listener(g.open))
        } else if from_source >= self.max_per_source {
            Some(GateFull::Source(from_source))
        } else {
            None
        };
        if let Some(r) = refusal {
            g.refused = g.refused.saturating_add(1);
            return Err(r);
        }
        g.open = g.open.saturating_add(1);
        g.per_source.insert(source, from_source.saturating_add(1));
        Ok(Admitted {
            source,
            gate: self.gate.clone(),
        })
    }

    /// (open connections, connections refused so far).
    pub fn counts(&self) -> (usize, u64) {
        self.gate.lock().map(|g| (g.open, g.refused)).unwrap_or((0, 0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn source_lockout_then_recovery() {
        let mut t = LoginThrottle::new(ThrottleConfig::default());
        let a = ip("192.0.2.1");
        for i in 0..4 {
            assert_eq!(t.check(a, 100 + i), Ok(()));
            assert_eq!(t.failed(a, 100 + i), None);
        }
        let lock = t.failed(a, 104).unwrap();
        assert_eq!(lock.scope, Scope::Source);
        let e = t.check(a, 110).unwrap_err();
        assert_eq!(e.retry_after_secs, 54);
        assert!(e.to_string().contains("try again in 54 s"), "{e}");
        // Another address is not affected.
        assert_eq!(t.check(ip("192.0.2.2"), 110), Ok(()));
        // After the lock-out: allowed again, and a success clears the count.
        assert_eq!(t.check(a, 164), Ok(()));
        t.failed(a, 165);
        t.succeeded(a);
        assert_eq!(t.tracked(), 0);
    }

    #[test]
    fn failures_outside_the_window_do_not_add_up() {
        let mut t = LoginThrottle::new(ThrottleConfig::default());
        let a = ip("192.0.2.1");
        for i in 0..20u64 {
            assert_eq!(t.failed(a, i * 100), None, "{i}");
            assert_eq!(t.check(a, i * 100 + 1), Ok(()));
        }
    }

    #[test]
    fn global_lockout_from_many_addresses() {
        let mut t = LoginThrottle::new(ThrottleConfig::default());
        let mut locked = None;
        for i in 0..50u8 {
            let src = IpAddr::from([10, 0, 0, i]);
            assert_eq!(t.check(src, 10), Ok(()));
            locked = t.failed(src, 10);
        }
        assert_eq!(locked.map(|l| l.scope), Some(Scope::Everyone));
        let e = t.check(ip("198.51.100.7"), 11).unwrap_err();
        assert_eq!(e.scope, Scope::Everyone);
        assert_eq!(t.check(ip("198.51.100.7"), 70), Ok(()));
    }

    #[test]
    fn connection_gate_caps_per_source_and_overall() {
        let gate = ConnectionGate::new(4, 2);
        let a = ip("192.0.2.1");
        let b = ip("192.0.2.2");
        let a1 = gate.admit(a).unwrap();
        let _a2 = gate.admit(a).unwrap();
        assert_eq!(gate.admit(a).unwrap_err(), GateFull::Source(2));
        let _b1 = gate.admit(b).unwrap();
        let _b2 = gate.admit(b).unwrap();
        assert_eq!(gate.admit(ip("192.0.2.3")).unwrap_err(), GateFull::Listener(4));
        drop(a1);
        let _a3 = gate.admit(a).unwrap();
        assert_eq!(gate.counts(), (4, 2));
    }

    #[test]
    fn the_table_is_bounded() {
        let cfg = ThrottleConfig {
            max_sources: 100,
            global: u32::MAX,
            ..ThrottleConfig::default()
        };
        let mut t = LoginThrottle::new(cfg);
        for i in 0..10_000u32 {
            t.failed(IpAddr::from(i.to_be_bytes()), u64::from(i));
            assert!(t.tracked() <= 100);
        }
    }
}
