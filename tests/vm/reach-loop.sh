#!/bin/bash
# The reach-all step, over and over with fresh tunnels (issue 15: a kernel
# soft lockup of both vCPUs showed there, about one e2e run in three):
# `REACH_ROUNDS=20 scripts/vm-test tests/vm/reach-loop.sh`.
#
# The TESTBED topology with the real daemons (lib/topology.sh, served homes
# only). Each round: every served home asks for pc1 at the same moment,
# the tunnels come up, the operator opens a connection to every home's pc1
# at once (vpnnat-probe multi, as e2e's reach_all), then every request is
# ended and every tunnel goes away. scripts/vm-test stops the run at once
# if the kernel reports a soft lockup, an RCU stall, BUG, Oops or panic.
# Variables: those of the topology (INTERFACES.md), REACH_ROUNDS [10],
# REACH_HTHRESH_STORM [0]: 1 = while the rounds run, every gateway and
# router namespace changes its XFRM policy hash thresholds in a loop (each
# change schedules the kernel's policy hash rebuild, xfrm_hash_rebuild,
# which the daemons trigger once at start): the first lead of issue 15's
# lockup, driven as hard as a shell can.
set -u
TOPO_SERVED_ONLY=1
REACH_ROUNDS=${REACH_ROUNDS:-10}
. "$(dirname "$0")/lib/check.sh"
# shellcheck source=lib/topology.sh
. "$(dirname "$0")/lib/topology.sh"

for k in $(seq 1 "$SERVED"); do
	check "$(tid $k) installed" wait_for "$E2E_WAIT" installed $k
done
STORM_PIDS=""
if [ "${REACH_HTHRESH_STORM:-0}" = 1 ]; then
	for ns in $(gws) $(for k in $(seq 1 "$SERVED"); do echo r$k; done); do
		# (paced a little so that the daemons still get the CPUs)
		nsx "$ns" sh -c "while :; do
			$IP xfrm policy set hthresh4 32 32; $IP xfrm policy set hthresh4 24 24
			$IP xfrm policy set hthresh4 16 16; $IP xfrm policy set hthresh4 24 24
			sleep 0.02
		done" >/dev/null 2>&1 &
		STORM_PIDS="$STORM_PIDS $!"
	done
	say "hash-threshold storm in $(echo $STORM_PIDS | wc -w) namespaces"
fi
tunnel_up() {
	show_router "$(tid $1)" | tr -d ' \n' | grep -q '"tunnel_state":"up"' &&
		[ "$(nsx r$1 "$IP" xfrm state | grep -c '^src')" -ge 2 ]
}
for round in $(seq 1 "$REACH_ROUNDS"); do
	say "round $round of $REACH_ROUNDS"
	for k in $(seq 1 "$SERVED"); do
		request $k pc1 >$W/r$k/req.out 2>&1 &
		eval "REQ_PID_$k=$!"
	done
	addrs=""
	for k in $(seq 1 "$SERVED"); do
		eval "wait \$REQ_PID_$k"
		v=$(sed -n 's/^ *pc1 [0-9.]* -> VPNNAT //p' $W/r$k/req.out)
		[ -n "$v" ] || { check "round $round: $(tid $k) request accepted" sh -c "cat $W/r$k/req.out; false"; finish; }
		addrs="$addrs $v:$PORT"
	done
	for k in $(seq 1 "$SERVED"); do
		wait_for "$E2E_WAIT" tunnel_up $k >/dev/null 2>&1 ||
			{ check "round $round: $(tid $k) tunnel up" false; finish; }
	done
	# shellcheck disable=SC2086
	out=$(nsx operator vpnnat-probe multi --timeout-ms 5000 $addrs)
	check "round $round: the operator reaches pc1 of all $SERVED homes at once" \
		sh -c "echo '$out' | grep -q '^OPEN_AT_ONCE $SERVED\$' || { echo '$out'; false; }"
	for n in $(list_requests | awk 'NR > 1 && $3 != "ended" {print $1}'); do
		nsx server $CENTERD end-request "$n" >>$W/end.out 2>&1
	done
	for k in $(seq 1 "$SERVED"); do
		wait_for "$E2E_WAIT" vpn_gone $k >/dev/null 2>&1 ||
			{ check "round $round: $(tid $k) tunnel gone after the end" false; finish; }
	done
done
# shellcheck disable=SC2086
[ -n "$STORM_PIDS" ] && kill $STORM_PIDS 2>/dev/null
finish
