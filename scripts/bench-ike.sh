#!/bin/bash
# scripts/bench-ike.sh — IKEv2 set-up time, ours vs strongSwan, in the test
# VM with real ESP: from the initiate command until both ESP SAs of the
# CHILD SA are in the initiator's kernel (seen through XFRM netlink events),
# median of 20 each (IKE_BENCH_N), ours -> ours and charon -> charon, the same
# measurement for both (tests/vm/strongswan/bench.sh). Prints the figures and
# the ratio; writes docs/bench/ike.txt. Asserts nothing about time.
# Run as root from anywhere; builds the VM binaries unless VPNNAT_VM_NO_BUILD=1.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/progress.sh
. scripts/lib/progress.sh
# shellcheck source=scripts/lib/packages.sh
. scripts/lib/packages.sh
[[ $(id -u) -eq 0 ]] || { echo "bench-ike: run as root" >&2; exit 2; }
need_packages strongswan-charon strongswan-swanctl
eval "$(tests/vm/strongswan/extra.sh)"
others=$(pgrep -c qemu-system || true)
out=$(mktemp)
trap 'rm -f "$out"' EXIT
progress "${IKE_BENCH_N:-20} set-ups each, ours and strongSwan's, in the test VM (several minutes)"
scripts/vm-test tests/vm/strongswan/bench.sh | tee "$out"
progress "writing docs/bench/ike.txt"
mkdir -p docs/bench
{
	echo "# $(date -u +%Y-%m-%dT%H:%MZ), scripts/bench-ike.sh: QEMU TCG VM (Debian 6.1 kernel) on $(nproc) host cores,"
	echo "# $(/usr/lib/ipsec/charon --version 2>/dev/null | head -1 || echo 'charon') vs vpnnat-ike $(git rev-parse --short HEAD);"
	echo "# other QEMU VMs running on the host when it started: ${others:-0} (they share the CPU: figures are noisy)"
	grep '^bench:' "$out"
} >docs/bench/ike.txt
cat docs/bench/ike.txt
