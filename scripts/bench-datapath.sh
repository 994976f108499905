#!/bin/bash
# scripts/bench-datapath.sh [SIZES] [SAMPLE] — the datapath benchmark on the
# host kernel, in a scratch network namespace (no ESP needed): install then
# remove N mappings (one NAT map element pair + granted-set element + one
# XFRM policy pair each) through the library, and with per-call
# `nft add element` / `ip xfrm policy add`. Prints figures; asserts nothing
# about time. Report: docs/bench/datapath.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/progress.sh
. scripts/lib/progress.sh
# shellcheck source=scripts/lib/packages.sh
. scripts/lib/packages.sh
SIZES=${1:-1000,10000,100000}
SAMPLE=${2:-1000}
[[ $(id -u) -eq 0 ]] || { echo "bench-datapath: run as root" >&2; exit 2; }
need_packages nftables iproute2
progress_run "building vpnnatctl (release)" cargo build --release --locked -p vpnnatctl --bin vpnnatctl >&2
TARGET_DIR=${CARGO_TARGET_DIR:-target}
ns=vpnnat-bench-$$
ip netns add "$ns"
trap 'ip netns del "$ns" 2>/dev/null' EXIT
mkdir -p docs/bench
{
	echo "# $(date -u +%Y-%m-%dT%H:%MZ) on $(uname -r), $(nproc) cores, $(nft --version), $(ip -V)"
	progress_run "benchmark: sizes $SIZES, sample $SAMPLE (minutes for 100000)" \
		ip netns exec "$ns" "$TARGET_DIR/release/vpnnatctl" bench --sizes "$SIZES" --sample "$SAMPLE"
} | tee docs/bench/datapath.txt
progress "wrote docs/bench/datapath.txt"
