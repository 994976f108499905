//! Tests that need a network namespace of their own (and so root, or at
//! least CAP_SYS_ADMIN).
//!
//! Without the privilege such a test says "skipped: needs root (network
//! namespaces)" on stderr and returns, so that `cargo test` as an ordinary
//! user still runs everything else. A skip must never pass for a success
//! where the kernel tests are expected to run, so with
//! `VPNNAT_REQUIRE_ROOT=1` (scripts/test.sh) the missing privilege fails
//! the test instead.

/// The environment variable that turns a skip into a failure.
pub const REQUIRE_ENV: &str = "VPNNAT_REQUIRE_ROOT";

/// Moves the calling thread (and the processes it spawns) into a new,
/// empty network namespace that disappears with the thread: `true`. When
/// the process may not create one: `false` after the skip line, or a panic
/// under `VPNNAT_REQUIRE_ROOT=1`. Any other failure of `unshare` is a
/// panic: it is not the environment, it is a broken test.
///
/// Tests call it through [`fresh_netns_or_skip!`](crate::fresh_netns_or_skip).
#[must_use]
// Failing the calling test is this helper's job.
#[allow(clippy::panic)]
pub fn fresh_netns() -> bool {
    // SAFETY: unshare has no memory-safety preconditions; it only changes
    // the namespace of the calling thread.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    if rc == 0 {
        return true;
    }
    let err = std::io::Error::last_os_error();
    // libtest names each test's thread after the test.
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("this test");
    if err.raw_os_error() != Some(libc::EPERM) {
        panic!("{test}: unshare(CLONE_NEWNET) failed: {err}");
    }
    if std::env::var(REQUIRE_ENV).as_deref() == Ok("1") {
        panic!("{test}: needs root (network namespaces), and {REQUIRE_ENV}=1 forbids skipping: {err}");
    }
    eprintln!("{test}: skipped: needs root (network namespaces)");
    false
}

/// Enters a fresh network namespace, or returns from the calling function
/// (the test, or a helper returning `()`) when the test is skipped: see
/// [`netns::fresh_netns`](crate::netns::fresh_netns).
#[macro_export]
macro_rules! fresh_netns_or_skip {
    () => {
        if !$crate::netns::fresh_netns() {
            return;
        }
    };
}
