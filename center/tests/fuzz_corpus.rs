//! Replays every checked-in fuzz corpus file (center/fuzz/corpus/<target>/)
//! through the same harness the cargo-fuzz target runs, so that `cargo
//! test` catches a regression on any input a fuzz run once found
//! interesting. No nightly, no sanitizer: the harness's assertions are the
//! checks. `scripts/fuzz.sh` runs the real fuzzing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../fuzz/src/lib.rs"]
mod harness;

fn replay(target: &str, run: fn(&[u8])) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let r = std::panic::catch_unwind(|| run(&data));
        assert!(r.is_ok(), "{target}: {} fails", path.display());
        n += 1;
    }
    assert!(n > 0, "{target}: empty corpus in {}", dir.display());
    println!("{target}: {n} corpus files replayed");
}

#[test]
fn dns_message_corpus() {
    replay("dns_message", harness::dns_message);
}

#[test]
fn ui_input_corpus() {
    replay("ui_input", harness::ui_input);
}

#[test]
fn center_config_corpus() {
    replay("center_config", harness::center_config);
}

/// The seeds made of real messages go through the harnesses too; with
/// VPNNAT_WRITE_FUZZ_SEEDS=1 they are (re)written to the corpus.
#[test]
fn seeds_pass_and_can_be_written() {
    let write = std::env::var_os("VPNNAT_WRITE_FUZZ_SEEDS").is_some();
    for (target, name, data) in harness::seeds() {
        match target {
            "dns_message" => harness::dns_message(&data),
            "ui_input" => harness::ui_input(&data),
            "center_config" => harness::center_config(&data),
            other => panic!("seed for unknown target {other}"),
        }
        if write {
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("fuzz/corpus")
                .join(target);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(name), &data).unwrap();
        }
    }
}
