//! `core_dumps::disable` in a test binary of its own: it changes the whole
//! process (no other test shares it), and the check runs in a child process
//! (this binary re-executed) so that even this binary's harness is left
//! dumpable.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use vpnnat_crashpoint::core_dumps;

const CHILD: &str = "VPNNAT_CORE_DUMPS_CHILD";

/// In the child: raise the soft core limit as far as allowed (so that the
/// call has something to lower), disable, report what the kernel says.
fn child() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit for the call.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_CORE, &mut lim) }, 0);
    lim.rlim_cur = lim.rlim_max;
    // SAFETY: `lim` is a valid rlimit; setrlimit only reads it.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_CORE, &lim) }, 0);
    let before = core_dumps::dumpable();
    core_dumps::disable().unwrap();
    let after = core_dumps::dumpable();
    let status = std::fs::read_to_string("/proc/self/limits").unwrap();
    let core = status
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap()
        .to_owned();
    println!("before={before:?} after={after:?} limits={core}");
}

#[test]
fn disable_leaves_the_process_non_dumpable_with_a_zero_core_limit() {
    if std::env::var_os(CHILD).is_some() {
        child();
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "disable_leaves_the_process_non_dumpable_with_a_zero_core_limit",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    // libtest prints the test's name on the same line.
    let line = text
        .lines()
        .find_map(|l| l.find("before=").map(|i| &l[i..]))
        .expect("the child's report");
    println!("{line}");
    // A test process starts dumpable; afterwards it is not, and the core
    // limit is 0 soft and hard (as /proc/self/limits shows it).
    assert!(line.starts_with("before=(true, "), "{line}");
    assert!(line.contains("after=(false, 0)"), "{line}");
    let limits: Vec<&str> = line.split("limits=").nth(1).unwrap().split_whitespace().collect();
    assert_eq!(limits[4..6], ["0", "0"], "{line}");
    // And this process, the parent, was not touched.
    assert!(core_dumps::dumpable().0);
}
