//! See `vpnnat_ike_fuzz::parse_message` (crates/ike/fuzz/src/lib.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vpnnat_ike_fuzz::parse_message(data));
