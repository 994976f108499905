//! See `vpnnat_proto_fuzz::payloads` (crates/proto/fuzz/src/lib.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vpnnat_proto_fuzz::payloads(data));
