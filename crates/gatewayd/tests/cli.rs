//! gatewayd's command line: exit statuses 0 (done), 2 (usage or
//! configuration error), and the shipped example configuration checks.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;

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
    let text = std::fs::read_to_string(&example).unwrap().replace(
        "@SECRET:gw1@",
        "3f9c0a7be1d24586c9e07a31b5f8d26e4c1a9f7302b8e5d6a4c7f9e1b3d50a82",
    );
    std::fs::write(&filled, text).unwrap();
    assert_eq!(gw(&["--config", filled.to_str().unwrap(), "check-config"]), 0);
    std::fs::remove_file(&filled).unwrap();
}
