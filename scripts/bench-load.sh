#!/bin/bash
# scripts/bench-load.sh [--routers N] [--rounds R] [--gateways G] [--concurrency C]
#
# The 1,000-router load (issue 8): N simulated routers (real protocol
# messages, each with its own factory secret) do full maintenance cycles
# concurrently — installation, gateway address, maintenance request,
# operator start and end in the UI — against one real centerd and G real
# gatewayd processes on loopback, R rounds. Prints cycles/s, errors and the
# daemons' peak RSS per round, and checks that the pool and the gateway
# slots are all free at the end. Defaults: 1000 routers, 3 rounds, 2
# gateways, every router at once. What is simulated and why: see the header
# of center/examples/load_routers.rs (no ESP on the host: gatewayd runs with
# its recording datapath and without IKE, so tunnels stay "connecting").
#
# VPNNAT_LOAD_PROFILE=dev|release [release] picks the cargo profile
# (scripts/test.sh runs a small load with dev binaries, already built).
set -euo pipefail
cd "$(dirname "$0")/.."
PROFILE=${VPNNAT_LOAD_PROFILE:-release}
TARGET=${CARGO_TARGET_DIR:-$PWD/target}
case $PROFILE in
dev) DIR=$TARGET/debug ;;
*) DIR=$TARGET/$PROFILE ;;
esac
cargo build --quiet --locked --profile "$PROFILE" -p vpnnat-center --bins --example load_routers
exec "$DIR/examples/load_routers" --bin-dir "$DIR" "$@"
