//! Init duties when routerd is PID 1 on the router image (IMAGES.md "Init"):
//! mount the API filesystems, bring up lo and the WAN/LAN (through the
//! datapath's rtnetlink layer), reap orphans, supervise helpers such as
//! dnsmasq with restart back-off, and turn SIGTERM (reboot) or
//! SIGPWR/SIGUSR2/SIGINT (power off) into a clean shutdown ending in
//! `reboot(2)`.
//!
//! None of this runs unless the process is PID 1; tests and an ordinary
//! service use only [`shutdown_signal`].

use std::collections::HashMap;
use std::ffi::CString;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use thiserror::Error;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{oneshot, watch};

use crate::config::{Config, Helper};
use crate::http::Backoff;
use vpnnat_datapath::rtnl::{Rtnl, RtnlError};

#[derive(Debug, Error)]
pub enum InitError {
    #[error("mount {target}: {source}")]
    Mount {
        target: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("network setup: {0}")]
    Net(#[from] RtnlError),
}

/// Set when the shutdown signal asked for a reboot rather than power-off.
static REBOOT: AtomicBool = AtomicBool::new(false);

/// Makes the final [`power_off`] a reboot (operator's reboot action).
pub fn want_reboot() {
    REBOOT.store(true, Ordering::SeqCst);
}

/// Mounts, interfaces, addresses and the default route.
pub fn boot(cfg: &Config) -> Result<(), InitError> {
    for (fstype, target) in [
        ("proc", "/proc"),
        ("sysfs", "/sys"),
        ("devtmpfs", "/dev"),
        ("tmpfs", "/run"),
    ] {
        mount(fstype, target)?;
    }
    if !cfg.modules.is_empty() {
        // Best effort: a module built into the kernel is not an error, and a
        // missing one shows up below as the failure that matters.
        match std::process::Command::new("/sbin/modprobe")
            .arg("-a")
            .args(&cfg.modules)
            .status()
        {
            Ok(s) if s.success() => {}
            Ok(s) => log::warn!("modprobe -a {}: {s}", cfg.modules.join(" ")),
            Err(e) => log::warn!("cannot run /sbin/modprobe: {e}"),
        }
    }
    network(cfg)?;
    // The LAN hosts must be able to reach the center through us.
    if let Err(e) = std::fs::write("/proc/sys/net/ipv4/ip_forward", "1") {
        log::warn!("cannot enable IPv4 forwarding: {e}");
    }
    Ok(())
}

/// lo, WAN and LAN up with their addresses, and the default route (done
/// again by a restarted routerd: what exists already is fine).
pub fn network(cfg: &Config) -> Result<(), RtnlError> {
    let mut rt = Rtnl::open()?;
    rt.set_up("lo", true)?;
    for iface in [&cfg.wan, &cfg.lan] {
        rt.set_up(&iface.name, true)?;
        ignore_exists(rt.add_address(&iface.name, iface.address, iface.prefix_len))?;
    }
    if let Some(gw) = cfg.wan.gateway {
        ignore_exists(rt.add_default_route(gw, &cfg.wan.name))?;
    }
    Ok(())
}

/// A second boot (restart of routerd under a supervisor) finds everything
/// in place already.
fn ignore_exists(r: Result<(), RtnlError>) -> Result<(), RtnlError> {
    match r {
        Err(e) if e.errno() == Some(libc::EEXIST) => Ok(()),
        other => other,
    }
}

fn mount(fstype: &'static str, target: &'static str) -> Result<(), InitError> {
    let err = |source| InitError::Mount { target, source };
    let _ = std::fs::create_dir_all(target);
    let src = CString::new(fstype).map_err(|_| err(std::io::Error::from_raw_os_error(libc::EINVAL)))?;
    let tgt = CString::new(target).map_err(|_| err(std::io::Error::from_raw_os_error(libc::EINVAL)))?;
    // SAFETY: all pointers are valid NUL-terminated strings that outlive the
    // call; data is null, which mount(2) accepts.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            tgt.as_ptr(),
            src.as_ptr(),
            libc::MS_NOSUID | libc::MS_NOEXEC,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    // Already mounted (by the kernel's devtmpfs automount, or a restart).
    if e.raw_os_error() == Some(libc::EBUSY) {
        return Ok(());
    }
    Err(err(e))
}

/// Completes on SIGTERM (reboot), SIGINT, SIGPWR or SIGUSR2 (power off).
pub async fn shutdown_signal() {
    let mk = |k| signal(k).ok();
    let mut term = mk(SignalKind::terminate());
    let mut int = mk(SignalKind::interrupt());
    let mut pwr = mk(SignalKind::from_raw(libc::SIGPWR));
    let mut usr2 = mk(SignalKind::user_defined2());
    async fn recv(s: &mut Option<tokio::signal::unix::Signal>) {
        match s {
            Some(s) => {
                s.recv().await;
            }
            None => std::future::pending().await,
        }
    }
    tokio::select! {
        _ = recv(&mut term) => REBOOT.store(true, Ordering::SeqCst),
        _ = recv(&mut int) => {}
        _ = recv(&mut pwr) => {}
        _ = recv(&mut usr2) => {}
    }
}

/// The end of PID 1: every process gets SIGTERM then SIGKILL, the disks are
/// synced, and the kernel reboots or powers off. Never returns.
pub fn power_off() -> ! {
    // SAFETY: kill(-1, sig) signals every process but ourselves; no memory
    // is involved.
    unsafe { libc::kill(-1, libc::SIGTERM) };
    std::thread::sleep(Duration::from_secs(2));
    // SAFETY: as above.
    unsafe { libc::kill(-1, libc::SIGKILL) };
    // SAFETY: sync(2) has no preconditions.
    unsafe { libc::sync() };
    let how = if REBOOT.load(Ordering::SeqCst) {
        libc::RB_AUTOBOOT
    } else {
        libc::RB_POWER_OFF
    };
    // SAFETY: reboot(2) with a valid command; on success it does not return.
    unsafe { libc::reboot(how) };
    // reboot failed (not PID 1 or no CAP_SYS_BOOT): nothing sane is left.
    std::process::exit(1)
}

/// Reaps children on SIGCHLD and hands exit statuses to whoever registered
/// the pid, so statuses are never stolen from the supervisor.
///
/// As PID 1 (`reap_all`) it reaps every child, orphans included. The one
/// other waiter in the process is the datapath, which runs `nft` and waits
/// for it; the reaper therefore reaps only while holding the router's state
/// lock, under which every datapath call (spawn and wait included) runs, so
/// it can never reap an `nft` child. As an ordinary process (tests) it
/// waits for the registered pids only.
#[derive(Debug, Default)]
struct Reaper {
    reap_all: bool,
    waiting: HashMap<i32, oneshot::Sender<i32>>,
    /// Exits seen before their pid was registered.
    early: HashMap<i32, i32>,
}

/// `waitpid(pid, WNOHANG)`: the status if `pid` (or, with -1, any child)
/// has exited.
fn try_wait(pid: i32) -> Option<(i32, i32)> {
    let mut status: libc::c_int = 0;
    // SAFETY: status is a valid out-pointer; WNOHANG never blocks.
    let got = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
    (got > 0).then_some((got, status))
}

impl Reaper {
    fn register(&mut self, pid: i32) -> oneshot::Receiver<i32> {
        let (tx, rx) = oneshot::channel();
        match self.early.remove(&pid) {
            Some(status) => {
                let _ = tx.send(status);
            }
            None => {
                self.waiting.insert(pid, tx);
                // It may have exited before it was registered, its SIGCHLD
                // already handled.
                if !self.reap_all {
                    if let Some((_, status)) = try_wait(pid) {
                        if let Some(tx) = self.waiting.remove(&pid) {
                            let _ = tx.send(status);
                        }
                    }
                }
            }
        }
        rx
    }

    fn reap(&mut self) {
        if !self.reap_all {
            let pids: Vec<i32> = self.waiting.keys().copied().collect();
            for pid in pids {
                if let Some((_, status)) = try_wait(pid) {
                    if let Some(tx) = self.waiting.remove(&pid) {
                        let _ = tx.send(status);
                    }
                }
            }
            return;
        }
        while let Some((pid, status)) = try_wait(-1) {
            match self.waiting.remove(&pid) {
                Some(tx) => {
                    let _ = tx.send(status);
                }
                // Orphans re-parented to us end here too; only remember
                // statuses of our own helpers (bounded by their number).
                None if self.early.len() < 64 => {
                    self.early.insert(pid, status);
                }
                None => {}
            }
        }
    }
}

/// A wait status for people: `exit N` or `signal N`.
fn describe(status: Option<i32>) -> String {
    match status {
        Some(s) if libc::WIFEXITED(s) => format!("exit {}", libc::WEXITSTATUS(s)),
        Some(s) if libc::WIFSIGNALED(s) => format!("signal {}", libc::WTERMSIG(s)),
        Some(s) => format!("status {s}"),
        None => "did not start".into(),
    }
}

/// Starts helpers and restarts them with back-off when they exit (or at
/// once when the operator asks, [`crate::health::HelperBoard::request_restart`]).
/// What it sees goes to the router's [`crate::health::HelperBoard`].
#[derive(Debug)]
pub struct Supervisor {
    stop: watch::Sender<bool>,
    tasks: tokio::task::JoinSet<()>,
    reaper: tokio::task::JoinHandle<()>,
}

impl Supervisor {
    /// Must be called inside the tokio runtime. `reap_all`: reap every
    /// child (PID 1); otherwise only the helpers.
    pub fn start(helpers: &[Helper], router: Arc<crate::daemon::Router>, reap_all: bool) -> Supervisor {
        let reaper = Arc::new(Mutex::new(Reaper {
            reap_all,
            ..Reaper::default()
        }));
        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = tokio::task::JoinSet::new();
        // Runs until the helpers' tasks are done (their last exits must be
        // reaped), then is aborted.
        let reaper_task = {
            let reaper = reaper.clone();
            let router = router.clone();
            tokio::spawn(async move {
                let mut chld = match signal(SignalKind::child()) {
                    Ok(s) => s,
                    Err(e) => {
                        log::error!("cannot watch SIGCHLD: {e}");
                        return;
                    }
                };
                while chld.recv().await.is_some() {
                    router
                        .with_datapath(|_| {
                            if let Ok(mut r) = reaper.lock() {
                                r.reap();
                            }
                        })
                        .await;
                }
            })
        };
        for h in helpers {
            let restart = router.helpers.register(&h.name);
            tasks.spawn(supervise(
                h.clone(),
                reaper.clone(),
                router.clone(),
                restart,
                stop_rx.clone(),
            ));
        }
        Supervisor {
            stop,
            tasks,
            reaper: reaper_task,
        }
    }

    /// Every helper gets SIGTERM (SIGKILL after 5 s) and is waited for.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        self.reaper.abort();
    }
}

async fn supervise(
    h: Helper,
    reaper: Arc<Mutex<Reaper>>,
    router: Arc<crate::daemon::Router>,
    restart: Arc<tokio::sync::Notify>,
    mut stop: watch::Receiver<bool>,
) {
    let settings = router.health_settings().clone();
    let (first, longest) = settings.helper_backoff;
    let mut backoff = Backoff::new(first, longest);
    let Some((program, args)) = h.command.split_first() else {
        return;
    };
    loop {
        let started = tokio::time::Instant::now();
        let mut asked = false;
        // std's Command, not tokio's: the reaper owns waitpid, and the Child
        // is dropped without waiting (dropping does not kill it).
        let exit = match std::process::Command::new(program).args(args).spawn() {
            Ok(child) => {
                let pid = i32::try_from(child.id()).unwrap_or(0);
                log::info!("helper {} started (pid {pid})", h.name);
                let mut rx = match reaper.lock() {
                    Ok(mut r) => r.register(pid),
                    Err(_) => return,
                };
                router.helpers.started(&h.name, pid);
                drop(child);
                tokio::select! {
                    s = &mut rx => s.ok(),
                    _ = restart.notified() => {
                        asked = true;
                        log::warn!("helper {} restarted by the operator", h.name);
                        terminate(pid, &mut rx).await
                    }
                    _ = stop.changed() => {
                        let s = terminate(pid, &mut rx).await;
                        log::info!("helper {} stopped ({})", h.name, describe(s));
                        router.helpers.exited(&h.name, &describe(s), false, std::time::Instant::now(), &settings);
                        return;
                    }
                }
            }
            Err(e) => {
                log::error!("helper {} cannot start: {e}", h.name);
                None
            }
        };
        let text = describe(exit);
        router
            .helpers
            .exited(&h.name, &text, !asked, std::time::Instant::now(), &settings);
        // A helper that ran for a while, or one the operator restarted,
        // gets a fresh back-off.
        if asked || started.elapsed() > longest {
            backoff = Backoff::new(first, longest);
        }
        if asked {
            continue;
        }
        log::warn!("helper {} exited ({text})", h.name);
        let d = backoff.next_delay();
        tokio::select! {
            _ = tokio::time::sleep(d) => {}
            _ = restart.notified() => backoff = Backoff::new(first, longest),
            _ = stop.changed() => return,
        }
    }
}

/// SIGTERM, then SIGKILL after 5 s; the exit status.
async fn terminate(pid: i32, rx: &mut oneshot::Receiver<i32>) -> Option<i32> {
    // SAFETY: kill has no memory preconditions.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    match tokio::time::timeout(Duration::from_secs(5), &mut *rx).await {
        Ok(s) => s.ok(),
        Err(_) => {
            // SAFETY: as above.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            tokio::time::timeout(Duration::from_secs(2), rx)
                .await
                .ok()
                .and_then(Result::ok)
        }
    }
}

/// Reboots instead of the kernel panicking when PID 1 panics (the firmware
/// profile aborts on panic): the message goes to the console first.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        eprintln!("routerd: {info}; rebooting");
        want_reboot();
        power_off();
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reaper_delivers_early_and_late_exits() {
        let mut r = Reaper {
            reap_all: true,
            ..Reaper::default()
        };
        r.early.insert(42, 7);
        let mut rx = r.register(42);
        assert_eq!(rx.try_recv().unwrap(), 7);
        let mut rx = r.register(43);
        assert!(rx.try_recv().is_err());
        r.waiting.remove(&43).unwrap().send(9).unwrap();
        assert_eq!(rx.try_recv().unwrap(), 9);
    }
}
