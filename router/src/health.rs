//! The router's health watch (seed [0132]-[0137]): what counts as a failure
//! and when one is worth a failure notice.
//!
//! Conditions, each a [`Problem`] with a stable key:
//!
//! | key | code | when |
//! |---|---|---|
//! | `center` | `wan` | [`HealthSettings::center_failures`] router -> center exchanges in a row failed (unreachable, timeout, 5xx) |
//! | `ike` | `ipsec` | the IKE responder reports `failed` |
//! | `datapath` | `vpnnat` | the last datapath apply/reconcile failed |
//! | `helper:NAME` | `other` | a supervised helper exited [`HealthSettings::crash_loop_exits`] times within [`HealthSettings::crash_loop_window`] |
//!
//! [`Notifier`] (pure) rate-limits: one notice per episode of a condition
//! (it must clear before it counts again), a condition that comes back
//! within [`HealthSettings::repeat_after`] of its last notice waits until
//! that much time has passed, and at most one notice (sent or attempted)
//! per [`HealthSettings::min_gap`] overall. A flapping condition therefore
//! costs the center at most one notice per `repeat_after`.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use vpnnat_proto::types::FailureCode;

/// Thresholds of the health watch.
#[derive(Debug, Clone)]
pub struct HealthSettings {
    /// How often the watch looks (30 s in production).
    pub period: Duration,
    /// Failed exchanges in a row that make the center "unreachable".
    pub center_failures: u32,
    /// Exits within `crash_loop_window` that make a helper crash-looping.
    pub crash_loop_exits: usize,
    pub crash_loop_window: Duration,
    /// A condition reported once is reported again (after clearing and
    /// coming back) no sooner than this.
    pub repeat_after: Duration,
    /// At most one notice attempt per this, whatever the conditions.
    pub min_gap: Duration,
    /// First and longest delay before a helper is restarted.
    pub helper_backoff: (Duration, Duration),
}

impl Default for HealthSettings {
    fn default() -> Self {
        HealthSettings {
            period: Duration::from_secs(30),
            center_failures: 3,
            crash_loop_exits: 5,
            crash_loop_window: Duration::from_secs(300),
            repeat_after: Duration::from_secs(15 * 60),
            min_gap: Duration::from_secs(60),
            helper_backoff: (Duration::from_secs(1), Duration::from_secs(60)),
        }
    }
}

/// One failing condition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub key: String,
    #[serde(serialize_with = "code_name")]
    pub code: FailureCode,
    pub detail: String,
}

fn code_name<S: serde::Serializer>(c: &FailureCode, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{c:?}"))
}

#[derive(Debug, Default, Clone)]
struct KeyState {
    /// The current episode was reported (or the condition is not active).
    reported_this_episode: bool,
    active: bool,
    last_report: Option<Instant>,
}

/// Decides which problem gets a failure notice now (pure; the clock is
/// passed in).
#[derive(Debug, Default)]
pub struct Notifier {
    keys: BTreeMap<String, KeyState>,
    last_attempt: Option<Instant>,
}

impl Notifier {
    /// Takes the problems seen now; returns the one to report now, if any.
    /// Call [`Notifier::attempted`] when a notice was tried and
    /// [`Notifier::sent`] when the center took it.
    pub fn due<'a>(&mut self, problems: &'a [Problem], now: Instant, s: &HealthSettings) -> Option<&'a Problem> {
        for k in self.keys.values_mut() {
            k.active = false;
        }
        for p in problems {
            let k = self.keys.entry(p.key.clone()).or_default();
            k.active = true;
        }
        // A condition that cleared starts a new episode when it returns;
        // keys never reported and no longer active are forgotten (bounded
        // by the conditions that exist: 3 + helpers).
        self.keys.retain(|_, k| {
            if !k.active {
                k.reported_this_episode = false;
            }
            k.active || k.last_report.is_some()
        });
        if self.last_attempt.is_some_and(|t| now.duration_since(t) < s.min_gap) {
            return None;
        }
        problems.iter().find(|p| {
            self.keys.get(&p.key).is_some_and(|k| {
                !k.reported_this_episode && k.last_report.is_none_or(|t| now.duration_since(t) >= s.repeat_after)
            })
        })
    }

    pub fn attempted(&mut self, now: Instant) {
        self.last_attempt = Some(now);
    }

    pub fn sent(&mut self, key: &str, now: Instant) {
        let k = self.keys.entry(key.to_string()).or_default();
        k.reported_this_episode = true;
        k.last_report = Some(now);
    }
}

/// Router -> center exchanges in a row that failed.
#[derive(Debug, Default)]
pub struct CenterHealth {
    failures: u32,
    since: Option<Instant>,
    last_error: String,
}

impl CenterHealth {
    pub fn success(&mut self) {
        *self = CenterHealth::default();
    }

    pub fn failure(&mut self, error: &str, now: Instant) {
        self.failures = self.failures.saturating_add(1);
        self.since.get_or_insert(now);
        self.last_error = error.chars().take(200).collect();
    }

    pub fn problem(&self, s: &HealthSettings, now: Instant) -> Option<Problem> {
        (self.failures >= s.center_failures).then(|| Problem {
            key: "center".into(),
            code: FailureCode::Wan,
            detail: format!(
                "center unreachable: {} exchanges failed in a row over {} s; last: {}",
                self.failures,
                self.since.map_or(0, |t| now.duration_since(t).as_secs()),
                self.last_error
            ),
        })
    }
}

/// What the operator sees of one supervised helper.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HelperView {
    pub name: String,
    pub pid: Option<i32>,
    pub starts: u64,
    pub recent_exits: usize,
    pub last_exit: Option<String>,
    pub crash_looping: bool,
}

#[derive(Debug)]
struct HelperEntry {
    pid: Option<i32>,
    starts: u64,
    exits: VecDeque<Instant>,
    last_exit: Option<String>,
    restart: Arc<tokio::sync::Notify>,
}

/// The supervised helpers, shared by the supervisor (which writes) and the
/// health watch and maintenance interface (which read, and ask for a
/// restart).
#[derive(Debug, Default)]
pub struct HelperBoard {
    helpers: Mutex<BTreeMap<String, HelperEntry>>,
}

impl HelperBoard {
    /// Registers a helper; returns what its supervisor waits on for an
    /// operator's restart.
    pub fn register(&self, name: &str) -> Arc<tokio::sync::Notify> {
        let restart = Arc::new(tokio::sync::Notify::new());
        if let Ok(mut h) = self.helpers.lock() {
            h.insert(
                name.to_string(),
                HelperEntry {
                    pid: None,
                    starts: 0,
                    exits: VecDeque::new(),
                    last_exit: None,
                    restart: restart.clone(),
                },
            );
        }
        restart
    }

    pub fn started(&self, name: &str, pid: i32) {
        self.with(name, |e| {
            e.pid = Some(pid);
            e.starts = e.starts.saturating_add(1);
        });
    }

    /// An exit; `crash` false for one the operator asked for.
    pub fn exited(&self, name: &str, status: &str, crash: bool, now: Instant, s: &HealthSettings) {
        self.with(name, |e| {
            e.pid = None;
            e.last_exit = Some(status.to_string());
            if crash {
                e.exits.push_back(now);
            }
            prune(&mut e.exits, now, s);
        });
    }

    /// The pid of a running helper (None: unknown name or not running).
    pub fn pid(&self, name: &str) -> Option<i32> {
        self.helpers.lock().ok()?.get(name)?.pid
    }

    /// Asks the helper's supervisor to restart it now. False: no such
    /// helper is supervised.
    pub fn request_restart(&self, name: &str) -> bool {
        match self
            .helpers
            .lock()
            .ok()
            .and_then(|h| h.get(name).map(|e| e.restart.clone()))
        {
            Some(n) => {
                n.notify_one();
                true
            }
            None => false,
        }
    }

    pub fn views(&self, now: Instant, s: &HealthSettings) -> Vec<HelperView> {
        let Ok(mut h) = self.helpers.lock() else {
            return Vec::new();
        };
        h.iter_mut()
            .map(|(name, e)| {
                prune(&mut e.exits, now, s);
                HelperView {
                    name: name.clone(),
                    pid: e.pid,
                    starts: e.starts,
                    recent_exits: e.exits.len(),
                    last_exit: e.last_exit.clone(),
                    crash_looping: e.exits.len() >= s.crash_loop_exits,
                }
            })
            .collect()
    }

    pub fn problems(&self, now: Instant, s: &HealthSettings) -> Vec<Problem> {
        self.views(now, s)
            .into_iter()
            .filter(|v| v.crash_looping)
            .map(|v| Problem {
                key: format!("helper:{}", v.name),
                code: FailureCode::Other,
                detail: format!(
                    "helper {} crash-looping: {} exits within {} s, last {}",
                    v.name,
                    v.recent_exits,
                    s.crash_loop_window.as_secs(),
                    v.last_exit.as_deref().unwrap_or("-")
                ),
            })
            .collect()
    }

    fn with(&self, name: &str, f: impl FnOnce(&mut HelperEntry)) {
        if let Ok(mut h) = self.helpers.lock() {
            if let Some(e) = h.get_mut(name) {
                f(e);
            }
        }
    }
}

/// Keeps the exits inside the window, and never more than the threshold
/// needs (bounded memory whatever the exit rate).
fn prune(exits: &mut VecDeque<Instant>, now: Instant, s: &HealthSettings) {
    while exits
        .front()
        .is_some_and(|t| now.duration_since(*t) > s.crash_loop_window)
    {
        exits.pop_front();
    }
    while exits.len() > s.crash_loop_exits.max(1) {
        exits.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(key: &str) -> Problem {
        Problem {
            key: key.into(),
            code: FailureCode::Other,
            detail: format!("{key} broken"),
        }
    }

    fn settings() -> HealthSettings {
        HealthSettings {
            repeat_after: Duration::from_secs(600),
            min_gap: Duration::from_secs(60),
            ..HealthSettings::default()
        }
    }

    /// Drives the notifier like the watch does; returns the key sent.
    fn tick(n: &mut Notifier, problems: &[Problem], now: Instant, s: &HealthSettings) -> Option<String> {
        let key = n.due(problems, now, s)?.key.clone();
        n.attempted(now);
        n.sent(&key, now);
        Some(key)
    }

    #[test]
    fn one_notice_per_episode_and_flapping_is_rate_limited() {
        let s = settings();
        let t0 = Instant::now();
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        let mut n = Notifier::default();
        assert_eq!(tick(&mut n, &[p("ike")], at(0), &s).as_deref(), Some("ike"));
        // Persisting: never again in this episode.
        for t in [90, 700, 2000] {
            assert_eq!(tick(&mut n, &[p("ike")], at(t), &s), None, "t={t}");
        }
        // Flapping: clears and comes back every 30 s for 9 minutes: nothing.
        let mut sent = 0;
        for i in 0..18u64 {
            let problems = if i % 2 == 0 { vec![] } else { vec![p("ike")] };
            sent += usize::from(tick(&mut n, &problems, at(2100 + i * 30), &s).is_some());
        }
        assert_eq!(
            sent, 1,
            "the first return after 600 s of the last notice is reported, then quiet"
        );
    }

    #[test]
    fn a_suppressed_episode_is_reported_once_repeat_after_has_passed() {
        let s = settings();
        let t0 = Instant::now();
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        let mut n = Notifier::default();
        assert!(tick(&mut n, &[p("datapath")], at(0), &s).is_some());
        assert!(tick(&mut n, &[], at(100), &s).is_none());
        assert!(tick(&mut n, &[p("datapath")], at(200), &s).is_none(), "back too soon");
        assert!(tick(&mut n, &[p("datapath")], at(500), &s).is_none());
        assert_eq!(
            tick(&mut n, &[p("datapath")], at(601), &s).as_deref(),
            Some("datapath"),
            "still failing after repeat_after: reported"
        );
        assert!(tick(&mut n, &[p("datapath")], at(5000), &s).is_none());
    }

    #[test]
    fn distinct_conditions_are_spaced_by_min_gap() {
        let s = settings();
        let t0 = Instant::now();
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        let mut n = Notifier::default();
        let all = [p("center"), p("helper:dnsmasq"), p("ike")];
        assert_eq!(tick(&mut n, &all, at(0), &s).as_deref(), Some("center"));
        assert_eq!(tick(&mut n, &all, at(30), &s), None, "inside min_gap");
        assert_eq!(tick(&mut n, &all, at(60), &s).as_deref(), Some("helper:dnsmasq"));
        assert_eq!(tick(&mut n, &all, at(120), &s).as_deref(), Some("ike"));
        assert_eq!(tick(&mut n, &all, at(180), &s), None);
    }

    #[test]
    fn a_failed_attempt_still_counts_for_min_gap() {
        let s = settings();
        let t0 = Instant::now();
        let mut n = Notifier::default();
        assert!(n.due(&[p("ike")], t0, &s).is_some());
        n.attempted(t0);
        assert!(n.due(&[p("ike")], t0 + Duration::from_secs(10), &s).is_none());
        assert!(
            n.due(&[p("ike")], t0 + Duration::from_secs(60), &s).is_some(),
            "retried"
        );
    }

    #[test]
    fn center_unreachable_after_n_failures_in_a_row() {
        let s = settings();
        let t0 = Instant::now();
        let mut c = CenterHealth::default();
        c.failure("connect refused", t0);
        c.failure("connect refused", t0);
        assert!(c.problem(&s, t0).is_none());
        c.failure("timeout", t0);
        let pr = c.problem(&s, t0 + Duration::from_secs(42)).unwrap();
        assert_eq!(pr.code, FailureCode::Wan);
        assert!(pr.detail.contains("3 exchanges") && pr.detail.contains("42 s") && pr.detail.contains("timeout"));
        c.success();
        assert!(c.problem(&s, t0).is_none());
    }

    #[test]
    fn crash_loop_needs_exits_inside_the_window_and_operator_restarts_do_not_count() {
        let s = HealthSettings {
            crash_loop_exits: 3,
            crash_loop_window: Duration::from_secs(60),
            ..settings()
        };
        let t0 = Instant::now();
        let b = HelperBoard::default();
        b.register("dnsmasq");
        b.started("dnsmasq", 10);
        assert_eq!(b.pid("dnsmasq"), Some(10));
        for i in 0..5 {
            b.exited("dnsmasq", "exit 0", false, t0 + Duration::from_secs(i), &s);
        }
        assert!(b.problems(t0 + Duration::from_secs(5), &s).is_empty());
        b.exited("dnsmasq", "exit 1", true, t0, &s);
        b.exited("dnsmasq", "exit 1", true, t0 + Duration::from_secs(50), &s);
        b.exited("dnsmasq", "exit 1", true, t0 + Duration::from_secs(61), &s);
        assert!(
            b.problems(t0 + Duration::from_secs(61), &s).is_empty(),
            "the first is out of the window"
        );
        b.exited("dnsmasq", "exit 1", true, t0 + Duration::from_secs(62), &s);
        let pr = b.problems(t0 + Duration::from_secs(62), &s);
        assert_eq!(pr.len(), 1);
        assert_eq!(pr[0].key, "helper:dnsmasq");
        assert!(pr[0].detail.contains("3 exits"), "{}", pr[0].detail);
        assert!(!b.request_restart("nope"));
        assert!(b.request_restart("dnsmasq"));
        // Quiet for a window: healthy again.
        assert!(b.problems(t0 + Duration::from_secs(200), &s).is_empty());
    }
}
