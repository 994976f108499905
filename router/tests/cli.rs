//! The `routerd` binary from the outside: flags, subcommands, exit codes,
//! and a daemon run (with the in-memory datapath) stopped by SIGTERM.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_routerd");

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("routerd-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A factory secret with the entropy routerd asks for.
const SECRET_HEX: &str = "b2436d14c46a90a3445701fb167d87cb767fdafcd2123262581902792a697545";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn write_config(dir: &Path, web: u16, server: u16, center: u16) -> PathBuf {
    let p = dir.join("routerd.toml");
    std::fs::write(
        &p,
        format!(
            r#"
terminal_id = "router-1"
center_url = "http://127.0.0.1:{center}"
factory_secret = "{}"
state_dir = "{dir}/state"
lease_file = "{dir}/leases"
dns = false
center_timeout_secs = 1
retry_max_secs = 1
[wan]
interface = "eth0"
address = "198.51.100.101/24"
[lan]
interface = "eth1"
address = "192.168.1.1/24"
[web_ui]
listen = "127.0.0.1:{web}"
[server_part]
listen = "127.0.0.1:{server}"
[hosts]
pc1 = "192.168.1.10"
"#,
            SECRET_HEX,
            dir = dir.display()
        ),
    )
    .unwrap();
    std::fs::write(dir.join("leases"), "0 52:54:00:00:00:01 192.168.1.50 laptop *\n").unwrap();
    p
}

/// A process's core size limit, soft and hard, as the kernel shows it.
fn core_limit(pid: u32) -> Vec<String> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits.lines().find(|l| l.starts_with("Max core file size")).unwrap();
    line.split_whitespace().skip(4).take(2).map(str::to_owned).collect()
}

fn routerd(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn help_and_version() {
    let o = routerd(&["--version"]);
    assert_eq!(code(&o), 0);
    assert!(stdout(&o).starts_with("routerd "), "{}", stdout(&o));
    let o = routerd(&["--help"]);
    assert_eq!(code(&o), 0);
    for sub in [
        "run",
        "request",
        "button",
        "hosts",
        "status",
        "check-config",
        "--config",
        "--json",
    ] {
        assert!(stdout(&o).contains(sub), "{sub} missing from --help");
    }
    assert_eq!(code(&routerd(&["frobnicate"])), 2);
}

#[test]
fn check_config() {
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../buildroot-overlay/router/etc/routerd.toml"
    );
    // the example's factory secret is a placeholder: refused, and said why
    let o = routerd(&["check-config", "--config", example]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("factory_secret"), "{}", stderr(&o));
    // provisioned, it is valid
    let dir = tmpdir("check-example");
    let provisioned = dir.join("routerd.toml");
    std::fs::write(
        &provisioned,
        std::fs::read_to_string(example)
            .unwrap()
            .replace("@SECRET:factory-secret@", SECRET_HEX),
    )
    .unwrap();
    let provisioned = provisioned.to_str().unwrap();
    let o = routerd(&["check-config", "--config", provisioned]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let o = routerd(&["--json", "check-config", "-c", provisioned]);
    assert!(stdout(&o).contains("\"ok\":true"));

    let dir = tmpdir("check");
    let p = write_config(&dir, 1, 2, 3);
    let text = std::fs::read_to_string(&p)
        .unwrap()
        .replace("[lan]", "[lan]\nmtu = 9000");
    std::fs::write(&p, text).unwrap();
    let o = routerd(&["check-config", "-c", p.to_str().unwrap()]);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("mtu"), "{}", stderr(&o));
    let o = routerd(&["status", "-c", "/nonexistent/routerd.toml"]);
    assert_eq!(code(&o), 2);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn status_and_hosts_without_a_daemon() {
    let dir = tmpdir("status");
    let p = write_config(&dir, 1, 2, 3);
    let p = p.to_str().unwrap();
    let o = routerd(&["status", "-c", p]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stdout(&o).contains("installed:          no"), "{}", stdout(&o));
    let o = routerd(&["--json", "status", "-c", p]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["installed"], false);
    let o = routerd(&["hosts", "-c", p, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let names: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["name"].as_str().unwrap())
        .collect();
    // The router itself is offered by its two names (issue 19, item 2).
    assert_eq!(names, ["laptop", "pc1", "router-part", "server-part"]);
    // No daemon listening: exit 3.
    let o = routerd(&[
        "request",
        "-c",
        p,
        "--name",
        "Taro",
        "--phone",
        "123",
        "--content",
        "x",
        "pc1",
    ]);
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    // A bad value is a usage error before any connection.
    let o = routerd(&[
        "request",
        "-c",
        p,
        "--name",
        "Taro",
        "--phone",
        "abc",
        "--content",
        "x",
        "pc1",
    ]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("phone"));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn daemon_runs_answers_and_stops_on_sigterm() {
    let dir = tmpdir("run");
    let web = free_port();
    let p = write_config(&dir, web, free_port(), free_port());
    let p = p.to_str().unwrap();
    let mut child = Command::new(BIN)
        .args(["-c", p, "run", "--fake-datapath"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the page.
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", web)).is_err() {
        assert!(start.elapsed() < Duration::from_secs(20), "daemon did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Its memory holds keys: no core dump (issue 18, item 13).
    assert_eq!(core_limit(child.id()), ["0", "0"]);
    // The center is down: not installed, so a request fails with exit 1.
    let o = routerd(&[
        "request",
        "-c",
        p,
        "--name",
        "Taro",
        "--phone",
        "123",
        "--content",
        "x",
        "pc1",
    ]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert!(stderr(&o).contains("not installed"), "{}", stderr(&o));
    let o = routerd(&["install", "-c", p]);
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("unreachable"), "{}", stderr(&o));
    let o = routerd(&["button", "-c", p]);
    assert_eq!(code(&o), 1);
    // The site owner's end (issue 19, item 7) goes through the daemon too.
    let o = routerd(&["end", "5", "-c", p]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert!(stderr(&o).contains("not installed"), "{}", stderr(&o));
    let o = routerd(&["end", "-c", p]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));

    // SAFETY: plain kill(2) of our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(start.elapsed() < Duration::from_secs(15), "no clean shutdown");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(err.contains("shutting down"), "{err}");
    assert!(!err.contains(SECRET_HEX), "secret in the log");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn secrets_files_readable_by_others_are_reported_loudly() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tmpdir("modes");
    let p = write_config(&dir, 1, 2, 3);
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    let o = routerd(&["check-config", "-c", p.to_str().unwrap()]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("SECURITY") && err.contains("mode 0644"), "{err}");
    assert!(err.contains(&format!("chmod 600 {}", p.display())), "{err}");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    let o = routerd(&["check-config", "-c", p.to_str().unwrap()]);
    assert!(!stderr(&o).contains("SECURITY"), "{}", stderr(&o));
    let _ = std::fs::remove_dir_all(dir);
}
