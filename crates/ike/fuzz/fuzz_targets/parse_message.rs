//! The message parser must be total, and what it accepts must survive an
//! encode/parse round trip unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vpnnat_ike::codec::{encode_message, parse_payloads, Message};

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Message::parse(data) {
        if let Ok(bytes) = encode_message(&m.header, &m.payloads) {
            let again = Message::parse(&bytes).expect("re-parse of our own encoding");
            assert_eq!(again.payloads, m.payloads);
        }
        if let Some(sk) = m.sk() {
            // Treat the SK body as if it were decrypted inner payloads.
            let _ = parse_payloads(sk.first_inner, &sk.body, false);
        }
    }
    if let Some((&first, rest)) = data.split_first() {
        let _ = parse_payloads(first, rest, true);
    }
});
