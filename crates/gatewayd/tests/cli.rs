//! gatewayd's command line: exit statuses 0 (done), 2 (usage or
//! configuration error), and the shipped example configuration checks.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;

/// A key for the filled-in example (the shipped one is a placeholder that
/// gatewayd refuses); random-looking, so the strength rule accepts it.
const TEST_API_KEY: &str = "3f9c0a7be1d24586c9e07a31b5f8d26e4c1a9f7302b8e5d6a4c7f9e1b3d50a82";

#[test]
fn gatewayd_exit_status() {
    let gw = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_gatewayd"))
            .args(args)
            .output()
            .unwrap()
            .status
            .code()
            .unwrap()
    };
    assert_eq!(gw(&["--help"]), 0);
    assert_eq!(gw(&["frobnicate"]), 2);
    assert_eq!(gw(&["--config", "/nonexistent/gatewayd.toml", "check-config"]), 2);
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../buildroot-overlay/center/etc/gatewayd.toml");
    // the shipped example carries a placeholder key: refused
    assert_eq!(gw(&["--config", example.to_str().unwrap(), "check-config"]), 2);
    let filled = std::env::temp_dir().join(format!("vpnnat-gw-cli-{}.toml", std::process::id()));
    let text = std::fs::read_to_string(&example)
        .unwrap()
        .replace("@SECRET:gw1@", TEST_API_KEY);
    std::fs::write(&filled, text).unwrap();
    assert_eq!(gw(&["--config", filled.to_str().unwrap(), "check-config"]), 0);
    std::fs::remove_file(&filled).unwrap();
}

/// A running gatewayd cannot dump core: its memory holds the API key and
/// the routers' PSKs (issue 18, item 13).
#[test]
fn a_running_gatewayd_has_core_dumps_disabled() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = std::env::temp_dir().join(format!("gatewayd-core-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("gatewayd.toml");
    let example = include_str!("../../../buildroot-overlay/center/etc/gatewayd.toml")
        .replace("datapath = \"kernel\"", "datapath = \"recording\"")
        .replace("ike = true", "ike = false")
        .replace("172.16.0.21:9000", &format!("127.0.0.1:{port}"))
        .replace("@SECRET:gw1@", TEST_API_KEY);
    std::fs::write(&cfg, example).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_gatewayd"))
        .args(["--config", cfg.to_str().unwrap(), "run"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(20),
            "gatewayd did not come up"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.id())).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    let core = limits.lines().find(|l| l.starts_with("Max core file size")).unwrap();
    assert_eq!(
        core.split_whitespace().skip(4).take(2).collect::<Vec<_>>(),
        ["0", "0"],
        "{core}"
    );
}
