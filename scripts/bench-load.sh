#!/bin/bash
# scripts/bench-load.sh [--routers N] [--rounds R] [--gateways G] [--concurrency C]
# scripts/bench-load.sh --vm [--routers N] [--rounds R] [--gateways G] [--concurrency C]
#
# The 1,000-router load (issue 8): N simulated routers (real protocol
# messages, each with its own factory secret) do full maintenance cycles
# concurrently — installation, gateway address, maintenance request,
# operator start and end in the UI — against one real centerd and G real
# gatewayd processes, R rounds. Prints cycles/s, errors and the daemons'
# peak RSS per round, and checks that the pool and the gateway slots are
# all free at the end. The tool is tests/load (vpnnat-load).
#
# Host mode (default: 1000 routers, 3 rounds, 2 gateways, every router at
# once): on loopback; no ESP on the host, so gatewayd runs with its
# recording datapath and without IKE and tunnels stay "connecting" (see
# tests/load/src/host.rs).
#
# --vm: the same cycles through real tunnels in the test VM
# (tests/vm/load-tunnels.sh, tests/load/src/tunnels.rs): gatewayd with the
# kernel datapath and IKE, every simulated router with its own WAN address,
# IKE responder, kernel SAs and policies, and the center's end, release and
# VPN end through ESP. Defaults there: 1000 routers, 3 rounds, 2 gateways,
# 100 cycles in flight (all 1,000 at once overload the TCG VM's two CPUs:
# README "Load"); VPNNAT_VM_MEM [3072] and VPNNAT_VM_TIMEOUT [1800] are
# passed to vm-test.
#
# VPNNAT_LOAD_PROFILE=dev|release [release] picks the cargo profile of the
# host mode (scripts/test.sh runs a small load with dev binaries).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--vm" ]; then
	shift
	LOAD_ROUTERS=1000 LOAD_ROUNDS=3 LOAD_GATEWAYS=2 LOAD_CONCURRENCY=100
	while [ $# -gt 0 ]; do
		case $1 in
		--routers) LOAD_ROUTERS=$2 ;;
		--rounds) LOAD_ROUNDS=$2 ;;
		--gateways) LOAD_GATEWAYS=$2 ;;
		--concurrency) LOAD_CONCURRENCY=$2 ;;
		*)
			echo "bench-load --vm: unknown option $1" >&2
			exit 2
			;;
		esac
		shift 2
	done
	export LOAD_ROUTERS LOAD_ROUNDS LOAD_GATEWAYS LOAD_CONCURRENCY
	export VPNNAT_VM_MEM=${VPNNAT_VM_MEM:-3072} VPNNAT_VM_TIMEOUT=${VPNNAT_VM_TIMEOUT:-1800}
	exec scripts/vm-test tests/vm/load-tunnels.sh
fi
PROFILE=${VPNNAT_LOAD_PROFILE:-release}
TARGET=${CARGO_TARGET_DIR:-$PWD/target}
case $PROFILE in
dev) DIR=$TARGET/debug ;;
*) DIR=$TARGET/$PROFILE ;;
esac
cargo build --quiet --locked --profile "$PROFILE" -p vpnnat-center -p vpnnat-gatewayd -p vpnnat-load --bins
exec "$DIR/vpnnat-load" --bin-dir "$DIR" "$@"
