#!/bin/bash
# scripts/e2e-repeat.sh N [SCRIPT] — runs the end-to-end scenario N times in
# a row in the test VM (scripts/vm-test; the binaries are built once by the
# first run), keeps each run's output and whole VM console under
# /tmp/e2e-repeat.XXXX/, and prints one line per run: the scenario's
# counts, its time, and what the kernel said (soft lockup, RCU stall,
# BUG/Oops/panic: vm-test stops such a run at once with status 125).
# The variables of the scenario (ROUTERS, LAN_CIDR, ... E2E_REACH_REPEAT)
# pass through. Ends with "N passed, N failed" over the runs.
# VPNNAT_VM_LOCK=FILE: each run holds flock FILE, so that runs of other
# work on the same machine can take turns with these (one VM at a time).
# Usage (as root, from the repository root):
#   scripts/e2e-repeat.sh 10
#   LAN_CIDR=10.64.7.0/24 POOL_CIDR=10.64.0.0/16 scripts/e2e-repeat.sh 2
set -uo pipefail
cd "$(dirname "$0")/.."
N=${1:?usage: scripts/e2e-repeat.sh N [SCRIPT]}
SCRIPT=${2:-tests/vm/e2e.sh}
[[ $N =~ ^[1-9][0-9]*$ ]] || { echo "e2e-repeat: N must be a positive number" >&2; exit 2; }
OUT=$(mktemp -d /tmp/e2e-repeat.XXXX)
export VPNNAT_VM_TIMEOUT=${VPNNAT_VM_TIMEOUT:-900}
pass=0
fail=0
for i in $(seq 1 "$N"); do
	t0=$(date +%s)
	if [[ $i -gt 1 ]]; then export VPNNAT_VM_NO_BUILD=1; fi
	VPNNAT_VM_CONSOLE=$OUT/console.$i.log flock "${VPNNAT_VM_LOCK:-$OUT}" scripts/vm-test "$SCRIPT" >"$OUT/run.$i.log" 2>&1
	rc=$?
	counts=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$OUT/run.$i.log" | tail -n1)
	# vm-test's kernel watch says so when it stopped the run (status 125)
	kernel=$(sed -n "s/^vm-test: error: the VM's kernel is in trouble after //p" "$OUT/run.$i.log" | head -n1)
	if [[ $rc == 0 && -z $kernel ]]; then pass=$((pass + 1)); else fail=$((fail + 1)); fi
	printf 'run %d: exit %d, %s, %d s, kernel: %s\n' "$i" "$rc" "${counts:-no summary}" "$(($(date +%s) - t0))" "${kernel:-quiet}"
done
echo "logs and consoles: $OUT"
echo "$pass passed, $fail failed"
[[ $fail == 0 ]]
