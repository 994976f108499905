//! centerd's systemd unit (center/systemd/centerd.service), checked by
//! `vpnnat_testkit::systemd::check_unit`.

use std::path::Path;

#[test]
fn centerd_unit() {
    let units = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd");
    vpnnat_testkit::systemd::check_unit(&units, "centerd", env!("CARGO_BIN_EXE_centerd"));
}
