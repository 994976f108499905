//! Exclusion between the running centerd and a `centerd` command on the
//! same database.
//!
//! Within the daemon, one lock per router (`Center::lock_terminal`) keeps
//! a maintenance request, an end and the reconciliation of its tunnel from
//! interleaving. A command such as `centerd end-request N` is another
//! process: it ends the request, tears the tunnel down and frees the slot
//! from its own `Center`, and the daemon's in-memory locks know nothing of
//! it. Seen in the end-to-end scenario: the daemon's reconcile took the
//! gateway's report after the command's tear-down but read the slots before
//! the command freed it, set the ended tunnel up again and re-added its
//! host routes, which stayed behind.
//!
//! So every exchange of the daemon that changes a router's gateway state
//! also holds a *shared* `flock` on a file beside the database, and a
//! command that changes gateway state holds an *exclusive* one for its whole
//! run: the command waits for the daemon's exchanges in flight and they wait
//! for it, and a killed process releases its lock with its file descriptor
//! (no stale lock after a crash). Each shared lock is its own open file
//! description, so releasing one never releases another.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

/// The lock file beside a database (`center.db` -> `center.db.work-lock`).
#[derive(Debug, Clone)]
pub struct WorkLock {
    path: PathBuf,
}

/// A held lock; released when dropped (the file is closed).
#[derive(Debug)]
pub struct Held(#[allow(dead_code)] File);

impl WorkLock {
    pub fn beside(database: &Path) -> WorkLock {
        let mut name = database.as_os_str().to_owned();
        name.push(".work-lock");
        WorkLock {
            path: PathBuf::from(name),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The daemon's side, for one exchange: waits (off the async workers)
    /// while a command holds the exclusive lock.
    pub async fn shared(&self) -> io::Result<Held> {
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || lock(&path, Mode::Shared))
            .await
            .map_err(io::Error::other)?
    }

    /// A command's side, for its whole run: waits for the daemon's
    /// exchanges in flight (blocking; commands run one at a time).
    pub fn exclusive(&self) -> io::Result<Held> {
        lock(&self.path, Mode::Exclusive)
    }
}

enum Mode {
    Shared,
    Exclusive,
}

/// `flock(2)` on a fresh open file description (std's `File::lock*`).
fn lock(path: &Path, mode: Mode) -> io::Result<Held> {
    let f = OpenOptions::new().create(true).truncate(false).write(true).open(path)?;
    match mode {
        Mode::Shared => f.lock_shared()?,
        Mode::Exclusive => f.lock()?,
    }
    Ok(Held(f))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_command_holds_off_the_daemon_and_the_daemon_a_command() {
        let dir = std::env::temp_dir().join(format!("vpnnat-work-lock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let wl = WorkLock::beside(&dir.join("center.db"));
        assert!(wl.path().ends_with("center.db.work-lock"));

        // Two exchanges of the daemon at once: shared locks do not wait.
        let a = wl.shared().await.unwrap();
        let b = tokio::time::timeout(Duration::from_secs(5), wl.shared())
            .await
            .unwrap()
            .unwrap();

        // A command waits until both are done.
        let cmd = {
            let wl = wl.clone();
            tokio::task::spawn_blocking(move || wl.exclusive().unwrap())
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!cmd.is_finished(), "the command must wait for the exchanges in flight");
        drop(a);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            !cmd.is_finished(),
            "releasing one exchange's lock must not release the other's"
        );
        drop(b);
        let held = tokio::time::timeout(Duration::from_secs(5), cmd)
            .await
            .unwrap()
            .unwrap();

        // While the command runs, a new exchange waits.
        let next = {
            let wl = wl.clone();
            tokio::spawn(async move { wl.shared().await.unwrap() })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!next.is_finished(), "an exchange must wait for the command");
        drop(held);
        tokio::time::timeout(Duration::from_secs(5), next)
            .await
            .unwrap()
            .unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
