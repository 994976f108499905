//! Replaying checked-in cargo-fuzz corpora from ordinary `cargo test`s (no
//! nightly, no sanitizer: the harness's own assertions are the checks), so
//! a regression on any input a fuzz run once kept is caught by every test
//! run. Each crate with a `fuzz/` directory has a `tests/fuzz_corpus.rs`
//! that lists its targets and calls these; `scripts/fuzz.sh` does the real
//! fuzzing. Failures panic: these are test helpers.
#![allow(clippy::panic)]

use std::path::{Path, PathBuf};

/// One fuzz target's harness: the function the cargo-fuzz target calls.
pub type Harness = fn(&[u8]);

/// `CRATE/fuzz/corpus/TARGET`.
fn corpus_dir(crate_dir: &str, target: &str) -> PathBuf {
    Path::new(crate_dir).join("fuzz/corpus").join(target)
}

/// Runs every file of `TARGET`'s corpus (under `crate_dir`, i.e. the
/// test's `env!("CARGO_MANIFEST_DIR")`) through `run`; panics naming the
/// first file that fails, or when the corpus is empty.
pub fn replay(crate_dir: &str, target: &str, run: Harness) {
    let dir = corpus_dir(crate_dir, target);
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut n = 0;
    for entry in entries {
        let path = entry.unwrap_or_else(|e| panic!("{}: {e}", dir.display())).path();
        let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let r = std::panic::catch_unwind(|| run(&data));
        assert!(r.is_ok(), "{target}: {} fails", path.display());
        n += 1;
    }
    assert!(n > 0, "{target}: empty corpus in {}", dir.display());
    println!("{target}: {n} corpus files replayed");
}

/// Runs the seeds made of real messages (`(target, file name, bytes)`)
/// through their target's harness; with `VPNNAT_WRITE_FUZZ_SEEDS` set they
/// are also (re)written into the corpus.
pub fn replay_seeds(crate_dir: &str, targets: &[(&str, Harness)], seeds: Vec<(&'static str, String, Vec<u8>)>) {
    let write = std::env::var_os("VPNNAT_WRITE_FUZZ_SEEDS").is_some();
    for (target, name, data) in seeds {
        let Some((_, run)) = targets.iter().find(|(t, _)| *t == target) else {
            panic!("seed for unknown target {target}");
        };
        run(&data);
        if write {
            let dir = corpus_dir(crate_dir, target);
            std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
            std::fs::write(dir.join(&name), &data).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
}
