//! Replays every checked-in fuzz corpus file (crates/proto/fuzz/corpus/<target>/)
//! through the same harness the cargo-fuzz target runs
//! (`vpnnat_testkit::fuzz_corpus`), so that `cargo
//! test` catches a regression on any input a fuzz run once found
//! interesting. No nightly, no sanitizer: the harness's assertions are the
//! checks. `scripts/fuzz.sh` runs the real fuzzing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../fuzz/src/lib.rs"]
mod harness;

use vpnnat_testkit::fuzz_corpus::{replay, replay_seeds, Harness};

const TARGETS: &[(&str, Harness)] = &[
    ("decode_request", harness::decode_request),
    ("payloads", harness::payloads),
    ("decode_response", harness::decode_response),
];

#[test]
fn decode_request_corpus() {
    replay(env!("CARGO_MANIFEST_DIR"), "decode_request", harness::decode_request);
}

#[test]
fn payloads_corpus() {
    replay(env!("CARGO_MANIFEST_DIR"), "payloads", harness::payloads);
}

#[test]
fn decode_response_corpus() {
    replay(env!("CARGO_MANIFEST_DIR"), "decode_response", harness::decode_response);
}

/// The seeds made of real messages go through the harnesses too; with
/// VPNNAT_WRITE_FUZZ_SEEDS=1 they are (re)written to the corpus.
#[test]
fn seeds_pass_and_can_be_written() {
    replay_seeds(env!("CARGO_MANIFEST_DIR"), TARGETS, harness::seeds());
}
