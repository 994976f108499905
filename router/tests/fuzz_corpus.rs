//! Replays every checked-in fuzz corpus file (router/fuzz/corpus/<target>/)
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
    ("lan_input", harness::lan_input),
    ("router_config", harness::router_config),
    ("center_exchange", harness::center_exchange),
];

#[test]
fn lan_input_corpus() {
    replay(env!("CARGO_MANIFEST_DIR"), "lan_input", harness::lan_input);
}

#[test]
fn router_config_corpus() {
    replay(env!("CARGO_MANIFEST_DIR"), "router_config", harness::router_config);
}

#[test]
fn center_exchange_corpus() {
    replay(env!("CARGO_MANIFEST_DIR"), "center_exchange", harness::center_exchange);
}

/// The seeds made of real messages go through the harnesses too; with
/// VPNNAT_WRITE_FUZZ_SEEDS=1 they are (re)written to the corpus.
#[test]
fn seeds_pass_and_can_be_written() {
    replay_seeds(env!("CARGO_MANIFEST_DIR"), TARGETS, harness::seeds());
}
