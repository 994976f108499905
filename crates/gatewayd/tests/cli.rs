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
    assert_eq!(gw(&["--config", example.to_str().unwrap(), "check-config"]), 0);
}
