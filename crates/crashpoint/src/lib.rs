//! Named crash points for the reliability trials (issue 8, README
//! "Reliability").
//!
//! `VPNNAT_CRASH_AT=<point>[:<nth>]` in a daemon's environment makes the
//! `nth` (default 1st) call of [`hit`] with that point name log
//! "crash point X reached" on stderr and send SIGKILL to its own process: a
//! real `kill -9`, with no unwinding, no destructor, no buffered write
//! flushed, so what survives is exactly what a crash at that line leaves.
//! The environment is read once; unset, a point costs one load of an
//! initialised `OnceLock` and a branch.
//!
//! Every point of every daemon is listed in `POINTS`, so a trial script
//! can ask for the list (and a typo in `VPNNAT_CRASH_AT` is refused at
//! start by [`check_env`] instead of silently never firing).
//!
//! The points exist only with the cargo feature `enabled` (the VM test
//! build, scripts/vm-test, turns it on). Without it — the shipped daemons —
//! [`hit`] is an empty inline function, no point name is in the binary, and
//! [`check_env`] refuses a set `VPNNAT_CRASH_AT` rather than let a trial
//! believe it armed a point that cannot fire.

//!
//! [`core_dumps`] is the other half of what a crash leaves: nothing. The
//! daemons' memory holds keys, so each of them disables core dumps at
//! start (always, whatever the feature).

pub mod core_dumps;

#[cfg(any(test, feature = "enabled"))]
use std::sync::atomic::{AtomicU32, Ordering};
#[cfg(feature = "enabled")]
use std::sync::OnceLock;

use thiserror::Error;

/// The environment variable that arms a point.
pub const ENV: &str = "VPNNAT_CRASH_AT";

/// Every crash point, by daemon and lifecycle step. The names are what
/// [`hit`] is called with; keep this list and the call sites in step
/// (a unit test of each daemon checks its own names are listed).
#[cfg(any(test, feature = "enabled"))]
pub const POINTS: &[&str] = &[
    // centerd
    "center.install.before_commit",
    "center.install.after_commit",
    "center.grant.after_commit",
    "center.grant.after_tunnel_setup",
    "center.grant.after_gateway",
    "center.end.after_commit",
    "center.release.after_router",
    "center.release.after_db",
    "center.vpn_end.after_router",
    "center.vpn_end.after_db",
    // gatewayd
    "gateway.setup.before_ike",
    "gateway.add.after_policies",
    "gateway.remove.after_policies",
    "gateway.teardown.after_policies",
    // the IKE driver (gatewayd and routerd): one SA of the pair installed
    "ike.after_sa_install",
    // routerd
    "router.install.after_reply",
    "router.install.after_save",
    "router.failure.after_save",
    "router.gateway.after_reply",
    "router.gateway.after_save",
    "router.grant.after_reply",
    "router.grant.after_save",
    "router.grant.after_kernel",
    "router.grant.after_failure",
    "router.command.after_save",
    "router.command.after_kernel",
    "router.vpn_end.after_save",
];

/// A malformed `VPNNAT_CRASH_AT`.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CrashSpecError {
    #[error("{ENV}: unknown crash point {0:?}")]
    UnknownPoint(String),
    #[error("{ENV}: the count after ':' must be a number from 1, not {0:?}")]
    BadCount(String),
    #[error("{ENV} is set, but this build has no crash points (cargo feature vpnnat-crashpoint/enabled)")]
    NotBuiltIn,
}

/// An armed point: its name, which hit fires, and the hits so far.
#[cfg(any(test, feature = "enabled"))]
#[derive(Debug)]
struct Armed {
    point: String,
    nth: u32,
    hits: AtomicU32,
}

/// Parses `<point>[:<nth>]` (pure; `nth` from 1).
#[cfg(any(test, feature = "enabled"))]
pub fn parse(spec: &str) -> Result<(String, u32), CrashSpecError> {
    let (point, nth) = match spec.rsplit_once(':') {
        Some((p, n)) => {
            let n: u32 = n.parse().map_err(|_| CrashSpecError::BadCount(n.to_owned()))?;
            if n == 0 {
                return Err(CrashSpecError::BadCount("0".into()));
            }
            (p, n)
        }
        None => (spec, 1),
    };
    if !POINTS.contains(&point) {
        return Err(CrashSpecError::UnknownPoint(point.to_owned()));
    }
    Ok((point.to_owned(), nth))
}

#[cfg(feature = "enabled")]
fn armed() -> Option<&'static Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let spec = std::env::var(ENV).ok()?;
            let (point, nth) = parse(&spec).ok()?;
            Some(Armed {
                point,
                nth,
                hits: AtomicU32::new(0),
            })
        })
        .as_ref()
}

/// Checks `VPNNAT_CRASH_AT` at start (daemons call this first, so a typo
/// fails loudly) and arms it. Ok when unset.
#[cfg(feature = "enabled")]
pub fn check_env() -> Result<(), CrashSpecError> {
    if let Ok(spec) = std::env::var(ENV) {
        parse(&spec)?;
        if let Some(a) = armed() {
            eprintln!("crash point {} armed (hit {})", a.point, a.nth);
        }
    }
    Ok(())
}

/// Without crash points: Ok when `VPNNAT_CRASH_AT` is unset, an error
/// when it is set (the trial asked for a point this build cannot hit).
#[cfg(not(feature = "enabled"))]
pub fn check_env() -> Result<(), CrashSpecError> {
    match std::env::var_os(ENV) {
        Some(_) => Err(CrashSpecError::NotBuiltIn),
        None => Ok(()),
    }
}

/// Whether this call of `point` is the armed one (counts the hit).
#[cfg(any(test, feature = "enabled"))]
fn fires(a: &Armed, point: &str) -> bool {
    a.point == point && a.hits.fetch_add(1, Ordering::SeqCst).saturating_add(1) == a.nth
}

/// A crash point: when it is the armed one, dies here by SIGKILL.
#[cfg(feature = "enabled")]
pub fn hit(point: &'static str) {
    debug_assert!(POINTS.contains(&point), "crash point {point} not in POINTS");
    let Some(a) = armed() else { return };
    if fires(a, point) {
        // stderr is unbuffered: the line is out before the signal.
        eprintln!("crash point {point} reached: SIGKILL");
        // SAFETY: getpid and kill have no memory-safety preconditions.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
        // SIGKILL to oneself is delivered before kill returns; should the
        // call have failed, stop anyway rather than carry on past the point.
        std::process::abort();
    }
}

/// A crash point's name as a value, for a function that hits the point its
/// caller names: the name itself with crash points, `""` without (where
/// [`hit`] ignores it), so that a release binary keeps no name even when it
/// is passed around rather than given to [`hit`] directly.
#[cfg(feature = "enabled")]
#[macro_export]
macro_rules! name {
    ($point:literal) => {
        $point
    };
}

/// See the `enabled` version: without crash points, no name.
#[cfg(not(feature = "enabled"))]
#[macro_export]
macro_rules! name {
    ($point:literal) => {
        ""
    };
}

/// A crash point in a build without them: nothing, inlined away with its
/// name.
#[cfg(not(feature = "enabled"))]
#[inline(always)]
pub fn hit(_point: &'static str) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_point_and_count() {
        assert_eq!(
            parse("router.grant.after_save"),
            Ok(("router.grant.after_save".into(), 1))
        );
        assert_eq!(
            parse("center.end.after_commit:3"),
            Ok(("center.end.after_commit".into(), 3))
        );
    }

    #[test]
    fn refuses_unknown_points_and_bad_counts() {
        assert_eq!(
            parse("router.nope"),
            Err(CrashSpecError::UnknownPoint("router.nope".into()))
        );
        assert_eq!(
            parse("router.grant.after_save:x"),
            Err(CrashSpecError::BadCount("x".into()))
        );
        assert_eq!(
            parse("router.grant.after_save:0"),
            Err(CrashSpecError::BadCount("0".into()))
        );
        assert!(parse("").is_err());
    }

    #[test]
    fn fires_on_the_nth_hit_of_its_own_point_only() {
        let a = Armed {
            point: "ike.after_sa_install".into(),
            nth: 2,
            hits: AtomicU32::new(0),
        };
        assert!(!fires(&a, "gateway.add.after_policies"));
        assert!(!fires(&a, "ike.after_sa_install"));
        assert!(fires(&a, "ike.after_sa_install"));
        assert!(!fires(&a, "ike.after_sa_install"));
    }

    #[test]
    fn point_names_are_unique() {
        let mut v = POINTS.to_vec();
        v.sort_unstable();
        v.dedup();
        assert_eq!(v.len(), POINTS.len());
    }
}
