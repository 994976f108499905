//! The check of a daemon's systemd unit (center/systemd): well-formed,
//! starting the built binary with its default configuration path,
//! restarting on failure but not on a configuration error (exit status 2,
//! see `centerd --help`), and — where `systemd-analyze` exists — accepted
//! by `systemd-analyze verify` with the built binary in place. Shared by
//! centerd's and gatewayd's tests (each can run only its own binary).

// A test helper: a failed check panics with what is wrong.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

type Unit = BTreeMap<String, Vec<(String, String)>>;

fn parse(text: &str) -> Unit {
    let mut unit = Unit::new();
    let mut section = None;
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = Some(s.to_owned());
            unit.entry(s.to_owned()).or_default();
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("line {}: not key=value: {line}", i + 1));
        let s = section
            .clone()
            .unwrap_or_else(|| panic!("line {}: key outside a section", i + 1));
        unit.get_mut(&s)
            .unwrap()
            .push((k.trim().to_owned(), v.trim().to_owned()));
    }
    unit
}

fn get<'a>(u: &'a Unit, section: &str, key: &str) -> Vec<&'a str> {
    u.get(section)
        .map(|kv| kv.iter().filter(|(k, _)| k == key).map(|(_, v)| v.as_str()).collect())
        .unwrap_or_default()
}

/// Checks `<unit_dir>/<name>.service` against the binary `bin`; panics
/// with what is wrong.
pub fn check_unit(unit_dir: &Path, name: &str, bin: &str) {
    let dir = unit_dir;
    let text = std::fs::read_to_string(dir.join(format!("{name}.service"))).unwrap();
    let u = parse(&text);
    assert_eq!(
        u.keys().cloned().collect::<Vec<_>>(),
        ["Install", "Service", "Unit"],
        "{name}: sections"
    );
    let conf = format!("/etc/vpnnat/{name}.toml");
    assert_eq!(
        get(&u, "Service", "ExecStart"),
        [format!("/usr/local/bin/{name} --config {conf} run").as_str()]
    );
    assert_eq!(
        get(&u, "Service", "ExecStartPre"),
        [format!("/usr/local/bin/{name} --config {conf} check-config").as_str()]
    );
    assert_eq!(get(&u, "Service", "Restart"), ["on-failure"]);
    assert_eq!(get(&u, "Service", "RestartPreventExitStatus"), ["2"]);
    assert_eq!(get(&u, "Install", "WantedBy"), ["multi-user.target"]);
    assert!(!get(&u, "Service", "User").is_empty(), "{name} does not run as root");
    // The unit's configuration path is the binary's default.
    let help = Command::new(bin).arg("--help").output().unwrap();
    assert!(help.status.success());
    assert!(
        String::from_utf8_lossy(&help.stdout).contains(&conf),
        "{name} --help does not name {conf}"
    );
    // systemd's own check, with the built binary where the unit expects it.
    let tmp = std::env::temp_dir().join(format!("vpnnat-unit-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let unit_path = tmp.join(format!("{name}.service"));
    std::fs::write(&unit_path, text.replace(&format!("/usr/local/bin/{name}"), bin)).unwrap();
    match Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&unit_path)
        .output()
    {
        Ok(o) => {
            let err = String::from_utf8_lossy(&o.stderr);
            // Only the complaint about the user (absent on a build host) is
            // tolerated.
            let problems: Vec<&str> = err
                .lines()
                .filter(|l| !l.trim().is_empty() && !l.contains("vpnnat") || l.contains("Unknown"))
                .collect();
            assert!(o.status.success() && problems.is_empty(), "{name}: {err}");
        }
        Err(e) => eprintln!("SKIPPED systemd-analyze verify: {e}"),
    }
    let _ = std::fs::remove_dir_all(&tmp);
}
