#!/bin/bash
# scripts/fuzz.sh [SECONDS] [TARGET...] — builds and runs the cargo-fuzz
# targets of every decoder that takes bytes from outside (issue 8).
#
#   SECONDS  libFuzzer -max_total_time per target (default 600)
#   TARGET   crate:target (e.g. proto:decode_request) or a bare target name
#            (default: every target below)
#
# Prints one line per target (execs, exec/s, corpus units, crashes) and a
# summary; exits 1 if any target crashed (its reproducer is kept under
# $FUZZ_OUT/artifacts/<target>/), 2 on a build or usage error.
#
# Environment:
#   FUZZ_JOBS=N           targets run N at a time (default 1; the build
#                         machine is shared, so runs are under nice -n 10)
#   FUZZ_TARGET_DIR=TPL   cargo target dir per fuzz crate, "%s" replaced by
#                         the crate (proto, ike, center, router); default
#                         target/fuzz-%s in the repository
#   FUZZ_OUT=DIR          logs, grown corpora and artifacts (default: a new
#                         /tmp/vpnnat-fuzz.XXXXXX)
#   FUZZ_UPDATE_CORPUS=1  afterwards, minimise (libFuzzer -merge=1) the
#                         checked-in corpus together with what the run found
#                         and replace the checked-in corpus with the result
#                         (then `git add -A -f` the corpus directories: they
#                         are in .gitignore so that ad-hoc runs add nothing)
#
# The checked-in corpora (*/fuzz/corpus/<target>/) are only read; what a run
# finds goes to $FUZZ_OUT/corpus/<target>/. `cargo test` replays every
# checked-in corpus file through the same harness (tests/fuzz_corpus.rs of
# each crate), without nightly or sanitizers.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

ALL_TARGETS=(
	proto:decode_request proto:payloads proto:decode_response
	ike:parse_message ike:responder ike:initiator
	center:dns_message center:ui_input center:center_config
	router:lan_input router:router_config router:center_exchange
)

SECS=600
if [[ $# -gt 0 && $1 =~ ^[0-9]+$ ]]; then
	SECS=$1
	shift
fi
JOBS=${FUZZ_JOBS:-1}
TPL=${FUZZ_TARGET_DIR:-$ROOT/target/fuzz-%s}
OUT=${FUZZ_OUT:-$(mktemp -d /tmp/vpnnat-fuzz.XXXXXX)}
mkdir -p "$OUT"

crate_dir() {
	case $1 in
	proto) echo crates/proto/fuzz ;;
	ike) echo crates/ike/fuzz ;;
	center) echo center/fuzz ;;
	router) echo router/fuzz ;;
	*) return 1 ;;
	esac
}

# Resolve the requested targets to crate:target.
SELECTED=()
if [[ $# -eq 0 ]]; then
	SELECTED=("${ALL_TARGETS[@]}")
else
	for want in "$@"; do
		found=
		for t in "${ALL_TARGETS[@]}"; do
			if [[ $want == "$t" || $want == "${t#*:}" ]]; then
				SELECTED+=("$t")
				found=1
			fi
		done
		if [[ -z $found ]]; then
			echo "fuzz.sh: unknown target $want (known: ${ALL_TARGETS[*]})" >&2
			exit 2
		fi
	done
fi

# cargo-fuzz needs nightly flags (-Zsanitizer): a nightly toolchain if
# rustup has one, else the pinned stable with RUSTC_BOOTSTRAP=1.
if rustup run nightly rustc --version >/dev/null 2>&1; then
	CARGO=(cargo +nightly)
else
	export RUSTC_BOOTSTRAP=1
	CARGO=(cargo)
fi
if ! "${CARGO[@]}" fuzz --version >/dev/null 2>&1; then
	echo "fuzz.sh: cargo-fuzz is not installed (cargo install cargo-fuzz)" >&2
	exit 2
fi

TRIPLE=$(rustc -vV | sed -n 's/^host: //p')

# Build each crate's targets once.
declare -A BUILT=()
for t in "${SELECTED[@]}"; do
	crate=${t%%:*}
	[[ -n ${BUILT[$crate]:-} ]] && continue
	BUILT[$crate]=1
	dir=$(crate_dir "$crate")
	tdir=${TPL//%s/$crate}
	echo "=== building $crate fuzz targets ($dir, target dir $tdir)"
	if ! (cd "$dir" && nice -n 10 "${CARGO[@]}" fuzz build --target-dir "$tdir" >"$OUT/build-$crate.log" 2>&1); then
		tail -30 "$OUT/build-$crate.log" >&2
		echo "fuzz.sh: build of $dir failed (log $OUT/build-$crate.log)" >&2
		exit 2
	fi
done

# run_one crate:target -> $OUT/<target>.log and $OUT/<target>.result
run_one() {
	local crate=${1%%:*} name=${1#*:}
	local dir tdir
	dir=$(crate_dir "$crate")
	tdir=${TPL//%s/$crate}
	mkdir -p "$OUT/corpus/$name" "$OUT/artifacts/$name" "$dir/corpus/$name"
	local start end rc
	start=$(date +%s)
	# The binary cargo fuzz built (run directly: `cargo fuzz run` would
	# rebuild first, and the build already happened above). New inputs go
	# to the first corpus directory, outside the repository.
	nice -n 10 "$tdir/$TRIPLE/release/$name" "$OUT/corpus/$name" "$dir/corpus/$name" \
		-max_total_time="$SECS" -print_final_stats=1 -artifact_prefix="$OUT/artifacts/$name/" \
		>"$OUT/$name.log" 2>&1
	rc=$?
	end=$(date +%s)
	local execs units crashes
	execs=$(grep -E '^stat::number_of_executed_units:' "$OUT/$name.log" | tail -1 | awk '{print $2}')
	units=$(grep -E '^#[0-9]+' "$OUT/$name.log" | tail -1 | sed -nE 's/.*corp: ([0-9]+)\/.*/\1/p')
	crashes=$(find "$OUT/artifacts/$name" -type f | wc -l)
	if [[ $rc -ne 0 && $crashes -eq 0 ]]; then
		crashes=1 # died without an artifact (e.g. out of memory, build error)
	fi
	echo "$name ${execs:-0} $((end - start)) ${units:-0} $crashes $rc" >"$OUT/$name.result"
}

echo "=== running ${#SELECTED[@]} target(s), ${SECS} s each, $JOBS at a time; logs in $OUT"
running=0
for t in "${SELECTED[@]}"; do
	run_one "$t" &
	running=$((running + 1))
	if [[ $running -ge $JOBS ]]; then
		wait -n
		running=$((running - 1))
	fi
done
wait

printf '\n%-18s %12s %8s %10s %8s %8s\n' target execs seconds exec/s corpus crashes
total_execs=0
total_crashes=0
for t in "${SELECTED[@]}"; do
	name=${t#*:}
	read -r _ execs secs units crashes rc <"$OUT/$name.result"
	rate=$((execs / (secs > 0 ? secs : 1)))
	printf '%-18s %12s %8s %10s %8s %8s\n' "$name" "$execs" "$secs" "$rate" "$units" "$crashes"
	total_execs=$((total_execs + execs))
	total_crashes=$((total_crashes + crashes))
	if [[ $crashes -ne 0 ]]; then
		echo "  $name: exit $rc; artifacts in $OUT/artifacts/$name/, log $OUT/$name.log"
	fi
done
echo "fuzz: ${#SELECTED[@]} targets, $total_execs execs, $total_crashes crashes (${SECS} s each)"

if [[ ${FUZZ_UPDATE_CORPUS:-0} == 1 ]]; then
	for t in "${SELECTED[@]}"; do
		crate=${t%%:*} name=${t#*:}
		dir=$(crate_dir "$crate")
		tdir=${TPL//%s/$crate}
		min=$OUT/min/$name
		rm -rf "$min" && mkdir -p "$min"
		# -merge=1 keeps the smallest set of inputs that covers what the
		# checked-in corpus and the run's finds cover; -use_counters=0
		# counts edges, not hit counts, which keeps a corpus to a few
		# hundred files.
		if nice -n 10 "$tdir/$TRIPLE/release/$name" -merge=1 -use_counters=0 \
			"$min" "$dir/corpus/$name" "$OUT/corpus/$name" >"$OUT/merge-$name.log" 2>&1 &&
			[[ -n $(ls -A "$min") ]]; then
			rm -rf "${dir:?}/corpus/$name"
			mv "$min" "$dir/corpus/$name"
		else
			echo "fuzz.sh: minimising $name failed, corpus left as it was (log $OUT/merge-$name.log)" >&2
		fi
		echo "corpus $name: $(find "$dir/corpus/$name" -type f | wc -l) files," \
			"$(du -sb "$dir/corpus/$name" | cut -f1) bytes"
	done
fi

[[ $total_crashes -eq 0 ]]
