//! gatewayd's systemd unit (center/systemd/gatewayd.service, installed with
//! the center's), checked by `vpnnat_testkit::systemd::check_unit`.

use std::path::Path;

#[test]
fn gatewayd_unit() {
    let units = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../center/systemd");
    vpnnat_testkit::systemd::check_unit(&units, "gatewayd", env!("CARGO_BIN_EXE_gatewayd"));
}
