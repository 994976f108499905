//! See `vpnnat_center_fuzz::ui_input` (center/fuzz/src/lib.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vpnnat_center_fuzz::ui_input(data));
