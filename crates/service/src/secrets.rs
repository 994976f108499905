//! Files that hold secrets (configuration files with keys, the maintenance
//! password file, the database with PSKs and Secret(ID2)s) must be readable
//! by their owner only. The daemons check at start and say so loudly, at
//! error level, naming the file, its mode and the fix; they still start,
//! so a freshly written configuration does not take the service down.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

/// The mode of `path` if group or others may read or write it (None when
/// it is owner-only or cannot be read).
pub fn exposed_mode(path: &Path) -> Option<u32> {
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    (mode & 0o077 != 0).then_some(mode)
}

/// Logs an error for each of `files` (what, path) that is exposed; returns
/// how many were.
pub fn warn_exposed(daemon: &str, files: &[(&str, &Path)]) -> usize {
    let mut n: usize = 0;
    for (what, path) in files {
        if let Some(mode) = exposed_mode(path) {
            log::error!(
                "{daemon}: SECURITY: {what} {} holds secrets but has mode {mode:04o} (group/others can access it); run: chmod 600 {}",
                path.display(),
                path.display()
            );
            n = n.saturating_add(1);
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes() {
        let dir = std::env::temp_dir().join(format!("vpnnat-secrets-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("key");
        std::fs::write(&f, "k").unwrap();
        for (mode, exposed) in [
            (0o600, false),
            (0o400, false),
            (0o640, true),
            (0o604, true),
            (0o620, true),
        ] {
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).unwrap();
            assert_eq!(exposed_mode(&f), exposed.then_some(mode), "{mode:o}");
        }
        assert_eq!(exposed_mode(&dir.join("missing")), None);
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(warn_exposed("test", &[("key", &f), ("none", &dir.join("missing"))]), 1);
        let _ = std::fs::remove_dir_all(dir);
    }
}
