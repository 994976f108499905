#!/bin/bash
# scripts/bench-e2e.sh [N] — the end-to-end benchmark (issue 6): in the test
# VM, with the default topology of tests/vm/e2e.sh and the real daemons, the
# time from a router's maintenance request to the operator's first
# successful TCP connect to the granted host, median of N [20] runs, split
# into center processing, tunnel setup, router NAT install and first
# connect (from the daemons' own millisecond log stamps, one clock in the
# VM, tests/vm/lib/e2e-bench.sh); then strongSwan (charon -> charon) setting up the same kind of tunnel in
# the same VM, and the ratio of the tunnel phase. Writes docs/bench/e2e.txt.
# Prints figures only. Run as root from anywhere.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/progress.sh
. scripts/lib/progress.sh
# shellcheck source=scripts/lib/packages.sh
. scripts/lib/packages.sh
[[ $(id -u) -eq 0 ]] || { echo "bench-e2e: run as root" >&2; exit 2; }
N=${1:-20}
need_packages strongswan-charon strongswan-swanctl chromium chromium-driver
eval "$(tests/vm/strongswan/extra.sh)"
out=$(mktemp)
trap 'rm -f "$out"' EXIT
progress "$N runs in the test VM, then strongSwan's $N (per-run lines start with #)"
E2E_BENCH=$N VPNNAT_VM_TIMEOUT=${VPNNAT_VM_TIMEOUT:-3000} scripts/vm-test tests/vm/e2e.sh | tee "$out"
progress "writing docs/bench/e2e.txt"
mkdir -p docs/bench
{
	echo "# $(date -u +%Y-%m-%dT%H:%MZ), scripts/bench-e2e.sh $N: QEMU TCG VM (Debian 6.1 kernel) on $(nproc) host cores, $(git rev-parse --short HEAD)"
	grep '^# run ' "$out"
	grep '^bench:' "$out"
} >docs/bench/e2e.txt
cat docs/bench/e2e.txt
