//! No core dumps (issue 18, item 13): a daemon's memory holds keys (the
//! factory master key, Secret(ID2), PSKs, ESP keys, passwords), and a core
//! file written on a crash would leave them on disk for whoever reads it
//! later. Every daemon calls [`disable`] first thing in `main`.

use thiserror::Error;

/// A step of [`disable`] failed (the caller logs it and goes on: a daemon
/// that cannot drop its core dumps still serves).
#[derive(Debug, Error)]
pub enum CoreDumpError {
    #[error("prctl(PR_SET_DUMPABLE, 0) failed: {0}")]
    Dumpable(std::io::Error),
    #[error("setrlimit(RLIMIT_CORE, 0) failed: {0}")]
    Limit(std::io::Error),
}

/// Makes the process non-dumpable (no core file, no ptrace attach by
/// same-uid processes, /proc/self owned by root) and sets its core size
/// limit to 0, soft and hard, so that a child it execs (which regains
/// dumpability) cannot dump either. Both are tried even if one fails.
pub fn disable() -> Result<(), CoreDumpError> {
    // SAFETY: PR_SET_DUMPABLE takes plain integer arguments and touches no
    // memory of ours.
    let dumpable = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0 as libc::c_ulong, 0, 0, 0) };
    let dumpable_err = (dumpable != 0).then(std::io::Error::last_os_error);
    let zero = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `zero` is a valid rlimit that outlives the call; setrlimit
    // only reads it.
    let limit = unsafe { libc::setrlimit(libc::RLIMIT_CORE, &zero) };
    if let Some(e) = dumpable_err {
        return Err(CoreDumpError::Dumpable(e));
    }
    if limit != 0 {
        return Err(CoreDumpError::Limit(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Whether this process may dump core now: `PR_GET_DUMPABLE` and the soft
/// `RLIMIT_CORE` (for tests and the daemons' start-up log).
pub fn dumpable() -> (bool, u64) {
    // SAFETY: PR_GET_DUMPABLE takes no pointer arguments.
    let d = unsafe { libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0) };
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit for the call's duration.
    let r = unsafe { libc::getrlimit(libc::RLIMIT_CORE, &mut lim) };
    (d != 0, if r == 0 { lim.rlim_cur } else { u64::MAX })
}
