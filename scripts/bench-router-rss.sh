#!/bin/bash
# scripts/bench-router-rss.sh [CYCLES] [ROUNDS] [WARMUP] — routerd's memory
# over long runs (issue 21 goal 5): builds the static firmware binary, runs
# it against the in-process fake center (router/examples/bench.rs: real
# HTTP on loopback, the real kernel datapath — nftables and XFRM policies —
# in the bench's own network namespace; no SAs are needed, since the fake
# center brings up no tunnel) for ROUNDS rounds of CYCLES grant/release
# cycles (maintenance request, end, release), and prints the RSS after each
# round and its growth after the first WARMUP rounds. Defaults: 1 warm-up
# round + 10 rounds of 1,000 (10,000 cycles after warm-up; ~6-10 min on 2
# shared cores). Prints figures; asserts nothing. Report:
# docs/bench/router-rss.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/progress.sh
. scripts/lib/progress.sh
# shellcheck source=scripts/lib/packages.sh
. scripts/lib/packages.sh
CYCLES=${1:-1000}
ROUNDS=${2:-11}
WARMUP=${3:-1}
[[ $(id -u) -eq 0 ]] || { echo "bench-router-rss: run as root (the bench makes its own network namespace)" >&2; exit 2; }
need_packages nftables iproute2
TARGET=x86_64-unknown-linux-gnu
TARGET_DIR=${CARGO_TARGET_DIR:-target}
progress_run "building routerd (static, firmware profile: fat LTO, minutes)" \
	env RUSTFLAGS="-C target-feature=+crt-static" \
	cargo build --locked --profile firmware --target "$TARGET" -p vpnnat-router --bin routerd >&2
progress_run "building the benchmark (router/examples/bench.rs)" \
	cargo build --locked -p vpnnat-router --features fake-center --example bench >&2
# The tree's state before tee truncates the report (itself tracked).
rev="$(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo '+changes')"
mkdir -p docs/bench
{
	echo "# $(date -u +%Y-%m-%dT%H:%MZ) on $(uname -r), $(nproc) cores, $rev"
	echo "# routerd RSS over $ROUNDS rounds of $CYCLES grant/release cycles; growth counted after $WARMUP warm-up round(s)"
	progress_run "benchmark: $ROUNDS rounds of $CYCLES cycles (minutes)" \
		"$TARGET_DIR/debug/examples/bench" --cycles "$CYCLES" --rounds "$ROUNDS" --warmup "$WARMUP" \
		"$TARGET_DIR/$TARGET/firmware/routerd"
} | tee docs/bench/router-rss.txt
progress "wrote docs/bench/router-rss.txt"
