//! See `vpnnat_router_fuzz::lan_input` (router/fuzz/src/lib.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vpnnat_router_fuzz::lan_input(data));
