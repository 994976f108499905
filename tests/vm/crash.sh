#!/bin/bash
# Crash consistency (issue 8): `scripts/vm-test tests/vm/crash.sh`.
#
# One TESTBED topology with the real daemons (lib/topology.sh, ROUTERS=2
# GATEWAYS=2, served homes only). For each trial: restart one daemon with
# VPNNAT_CRASH_AT=<point>[:<nth>] (crates/crashpoint), drive the lifecycle
# step that reaches the point (installation, grant, end/release/VPN end),
# check the daemon died there by SIGKILL (exit status 137 and its "crash
# point X reached" line), restart it without the variable, let it
# reconcile, then check:
#   - every namespace's kernel state matches the truth: routerd's state file
#     (NAT maps, granted set and tunnel policies of each router) and
#     centerd's database (each gateway's tunnel policies and the center's
#     host routes carry exactly the addresses of the routers holding a slot
#     on it);
#   - no VPNNAT address or slot is double-used: no address in two routers'
#     maps, no slot count above capacity, pool count = what the routers hold;
#   - the request completed (both sides hold it, the operator reaches the
#     host at its VPNNAT address) or failed cleanly (the router does not
#     hold it; ending it at the center leaves nothing behind);
#   - after every request is ended: the pool holds only the routers' own
#     addresses, every slot is free, no SA, policy, NAT element or host
#     route is left anywhere.
# Prints one line per check, "crash trials: P passed / R run", and
# "N passed, N failed". CRASH_ONLY="point ..." runs only those trials.
set -u
. "$(dirname "$0")/lib/check.sh"
export ROUTERS=${ROUTERS:-2} GATEWAYS=${GATEWAYS:-2} SLOTS_PER_GATEWAY=${SLOTS_PER_GATEWAY:-2}
export TOPO_SERVED_ONLY=1 TOPO_DIR=${TOPO_DIR:-/run/crash}
E2E_WAIT=${E2E_WAIT:-60}
# shellcheck source=lib/topology.sh
. "$(dirname "$0")/lib/topology.sh"
# shellcheck source=lib/trials.sh
. "$(dirname "$0")/lib/trials.sh"

# ---------------------------------------------------------------- the trials
# installation
trial install center center.install.before_commit 2
trial install center center.install.after_commit 2
trial install r2 router.install.after_reply 2
trial install r2 router.install.after_save 2
# grant: exchange 3 (gateway address), 4 (maintenance request), the
# gateway's programming, IKE, the router's NAT
trial grant r1 router.gateway.after_reply
trial grant r1 router.gateway.after_save
trial grant center center.grant.after_commit
trial grant gw1 gateway.setup.before_ike
trial grant center center.grant.after_tunnel_setup
trial grant gw1 gateway.add.after_policies
trial grant gw1 ike.after_sa_install
trial grant r1 ike.after_sa_install
trial grant center center.grant.after_gateway
trial grant r1 router.grant.after_reply
trial grant r1 router.grant.after_save
trial grant r1 router.grant.after_kernel
# end, release (7), VPN end (8)
trial end-ui center center.end.after_commit
trial end-ui center center.release.after_router
trial end-ui center center.release.after_db
trial end-ui center center.vpn_end.after_router
trial end-ui center center.vpn_end.after_db
trial end gw1 gateway.remove.after_policies
trial end gw1 gateway.teardown.after_policies
trial end r1 router.command.after_save
trial end r1 router.command.after_kernel:2
trial end r1 router.vpn_end.after_save

echo "crash trials: $TRIALS_OK passed / $TRIALS run"
stop_all
for f in $W/center/log $(for g in $(gws); do echo $W/$g/log; done) $(for k in $(homes); do echo $W/$k/log; done); do
	if grep -qi 'panicked' "$f"; then
		check "no panic in $f" sh -c "grep -i -A3 panicked $f | head; false"
	fi
done
finish
