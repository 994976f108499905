//! See `vpnnat_center_fuzz::center_config` (center/fuzz/src/lib.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vpnnat_center_fuzz::center_config(data));
