#!/bin/sh
# Benchmark, in the test VM with real ESP: time from the initiate command
# until the CHILD SA is installed in the initiator's kernel, for our
# initiator -> our responder and for strongSwan -> strongSwan (charon +
# swanctl in both roles), measured the same way for both:
#   t0 = just before the shell starts the initiate command, a process run
#        through `ip netns exec gw` in every case: strongSwan: `swanctl
#        --initiate` to a running charon; ours warm (like for like): `busybox
#        kill -HUP` to a running `vpnnat-ike initiate --connect-on-hup`;
#        ours cold: `vpnnat-ike initiate` itself (daemon start included);
#   t1 = when an observer subscribed to the kernel's XFRM SA events in the
#        gateway namespace (`vpnnat-ike tool sa-wait`) has seen both ESP SAs
#        (inbound and outbound) of the pair added (NEWSA/UPDSA).
# Same topology (lib/ike-topo.sh), same suite (aes256gcm16-prfsha256-x25519,
# ESP aes256gcm16), PSK, no logging to files on either side. The two are
# measured in alternating rounds of ROUND_N so that load changes on the host
# hit both. Prints figures only; asserts nothing about time.
# Host: scripts/bench-ike.sh (needs charon in the VM, see extra.sh).
set -u
D=$(cd "$(dirname "$0")" && pwd)
. "$D/../lib/check.sh"
. "$D/../lib/ike-topo.sh"
N=${IKE_BENCH_N:-20}
ROUND_N=${IKE_BENCH_ROUND:-5}
WARMUP=2

if ! command -v charon >/dev/null 2>&1; then
	echo "FAIL - charon is not in the VM (eval \"\$(tests/vm/strongswan/extra.sh)\" first)"
	FAILED=$((FAILED + 1))
	finish
fi
mkdir -p /usr/lib/ipsec/plugins /var/run /etc/swanctl
for f in /usr/bin/libstrongswan-*.so; do ln -sf "$f" /usr/lib/ipsec/plugins/; done
for d in /lib/x86_64-linux-gnu /usr/lib/x86_64-linux-gnu /lib; do
	mkdir -p $d && [ -e $d/libgcc_s.so.1 ] || ln -sf /usr/bin/libgcc_s.so.1 $d/libgcc_s.so.1
done
# One charon per namespace: own strongswan.conf (vici socket), and a private
# /var/run (charon.pid) in the mount namespace `ip netns exec` gives it.
for ns in gw r1; do
	cat >/tmp/strongswan-$ns.conf <<EOF
charon {
  load = random nonce openssl kdf kernel-netlink socket-default vici
  install_routes = no
  install_virtual_ip = no
  retransmit_tries = 3
  plugins { vici { socket = unix:///tmp/charon-$ns.vici } }
}
swanctl { load = random }
EOF
done
export RUST_LOG=warn

setup_topology

# t0 in µs without a fork (bash is /bin/sh in the VM)
# until_no_sa NS...: waits (max 10 s) until the namespaces hold no SA.
until_no_sa() {
	i=0
	while [ $i -lt 100 ]; do
		left=0
		for ns in "$@"; do [ -n "$(nsx $ns "$IP" xfrm state)" ] && left=1; done
		[ $left = 0 ] && return 0
		sleep 0.1
		i=$((i + 1))
	done
	echo "SAs left in $*"
	return 1
}
# observe: starts the SA observer in gw; waits until it is subscribed.
observe() {
	nsx gw vpnnat-ike tool sa-wait --local $GW --peer $R1 --timeout-secs 30 >/tmp/w.out 2>&1 &
	W=$!
	wait_for /tmp/w.out '^READY' 20 >/dev/null && return 0
	kill $W 2>/dev/null
	wait $W
	return 1
}
# record T0 FILE: waits for the observer (in this shell: it is our child);
# appends t1 - T0 in µs to FILE; returns 1 if the observer saw nothing.
record() {
	wait $W
	t1=$(sed -n 's/^INSTALLED \([0-9]*\) .*/\1/p' /tmp/w.out)
	[ -n "$t1" ] || return 1
	echo $((t1 - $1)) >>"$2"
}

: >/tmp/ours.us
: >/tmp/warm.us
: >/tmp/ss.us
FAILS_OURS=0
FAILS_SS=0

ours_round() { # COUNT FILE [warm]
	setup_policies $GW
	VPNNAT_IKE_PSK=$PSK "$IP" netns exec r1 vpnnat-ike respond --local $R1 --peer $GW \
		--local-ts 10.64.0.0/16 --remote-ts $CENTER --reqid $REQID >/tmp/r1.out 2>/tmp/r1.log &
	RESP=$!
	sleep 0.5
	got=0
	tries=0
	while [ $got -lt "$1" ] && [ $tries -lt $(($1 + 3)) ]; do
		tries=$((tries + 1))
		if [ "${3:-}" = warm ]; then
			# The daemon runs (sockets bound, netlink open) like charon;
			# the initiate command is a process asking it to connect.
			VPNNAT_IKE_PSK=$PSK "$IP" netns exec gw vpnnat-ike initiate --connect-on-hup --local $GW --peer $R1 \
				--local-ts $CENTER --remote-ts $VPNNAT/32 --reqid $REQID >/tmp/gw.out 2>/tmp/gw.log &
			INIT=$!
			wait_for /tmp/gw.out '^READY' 20 >/dev/null || { FAILS_OURS=$((FAILS_OURS + 1)); kill -TERM $INIT; continue; }
			observe || { FAILS_OURS=$((FAILS_OURS + 1)); echo "observer not ready"; kill -TERM $INIT; continue; }
			t0=${EPOCHREALTIME/./}
			"$IP" netns exec gw busybox kill -HUP $INIT
		else
			# Cold: the initiate command starts our daemon.
			observe || { FAILS_OURS=$((FAILS_OURS + 1)); echo "observer not ready"; continue; }
			t0=${EPOCHREALTIME/./}
			VPNNAT_IKE_PSK=$PSK "$IP" netns exec gw vpnnat-ike initiate --local $GW --peer $R1 \
				--local-ts $CENTER --remote-ts $VPNNAT/32 --reqid $REQID >/tmp/gw.out 2>/tmp/gw.log &
			INIT=$!
		fi
		if record "$t0" "$2"; then got=$((got + 1)); else FAILS_OURS=$((FAILS_OURS + 1)); cat /tmp/w.out /tmp/gw.out; fi
		kill -TERM $INIT
		gone $INIT 10
		until_no_sa gw r1 || FAILS_OURS=$((FAILS_OURS + 1))
	done
	kill -TERM $RESP
	gone $RESP 10
	nsx gw vpnnatctl flush >/dev/null
	nsx r1 vpnnatctl flush >/dev/null
}

start_charon() { # NS CONF
	rm -f /tmp/charon-$1.vici
	STRONGSWAN_CONF=/tmp/strongswan-$1.conf "$IP" netns exec "$1" \
		sh -c 'mount -t tmpfs none /var/run && exec charon' >/tmp/charon-"$1".out 2>&1 &
	CPID=$! # ip netns exec and sh exec: this is charon
	i=0
	while [ ! -S /tmp/charon-$1.vici ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
	STRONGSWAN_CONF=/tmp/strongswan-$1.conf must nsx "$1" swanctl --load-all --file "$2" --uri unix:///tmp/charon-$1.vici
}
stop_charon() { # PID
	kill -TERM "$1" 2>/dev/null
	gone "$1" 10
}
ss_round() { # COUNT FILE
	start_charon r1 "$D/swanctl-router.conf"
	C_R1=$CPID
	start_charon gw "$D/swanctl-gateway.conf"
	C_GW=$CPID
	got=0
	tries=0
	while [ $got -lt "$1" ] && [ $tries -lt $(($1 + 3)) ]; do
		tries=$((tries + 1))
		observe || { FAILS_SS=$((FAILS_SS + 1)); echo "observer not ready"; continue; }
		t0=${EPOCHREALTIME/./}
		STRONGSWAN_CONF=/tmp/strongswan-gw.conf "$IP" netns exec gw swanctl --initiate --child vpnnat \
			--timeout 20 --uri unix:///tmp/charon-gw.vici >/tmp/ss-init.out 2>&1 &
		SI=$!
		if record "$t0" "$2"; then got=$((got + 1)); else FAILS_SS=$((FAILS_SS + 1)); cat /tmp/w.out /tmp/ss-init.out; fi
		wait $SI
		STRONGSWAN_CONF=/tmp/strongswan-gw.conf nsx gw swanctl --terminate --ike r1 --timeout 10 \
			--uri unix:///tmp/charon-gw.vici >/dev/null 2>&1
		until_no_sa gw r1 || FAILS_SS=$((FAILS_SS + 1))
	done
	stop_charon $C_GW
	stop_charon $C_R1
	nsx gw "$IP" xfrm policy flush
	nsx r1 "$IP" xfrm policy flush
}

# warm-up (page cache, module and crypto init), not counted
ours_round $WARMUP /tmp/warmup.us
ours_round $WARMUP /tmp/warmup.us warm
ss_round $WARMUP /tmp/warmup.us
done_n=0
while [ $done_n -lt "$N" ]; do
	k=$((N - done_n < ROUND_N ? N - done_n : ROUND_N))
	ours_round $k /tmp/ours.us
	ss_round $k /tmp/ss.us
	ours_round $k /tmp/warm.us warm
	done_n=$((done_n + k))
done

median() { sort -n "$1" | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else print int((a[NR / 2] + a[NR / 2 + 1]) / 2) }'; }
ms() { awk "BEGIN { printf \"%.1f\", $1 / 1000 }"; }
stats() { # FILE
	echo "median $(ms "$(median "$1")") ms, min $(ms "$(sort -n "$1" | head -1)") ms, max $(ms "$(sort -n "$1" | tail -1)") ms, n=$(wc -l <"$1")"
}
# A failed attempt (SA never seen, teardown incomplete) is retried, at most
# 3 times per round, and reported.
check "ours: $N samples each way ($FAILS_OURS failed attempts retried)" test "$(wc -l </tmp/ours.us)" -eq "$N" -a "$(wc -l </tmp/warm.us)" -eq "$N"
check "strongSwan: $N samples ($FAILS_SS failed attempts retried)" test "$(wc -l </tmp/ss.us)" -eq "$N"
M_OURS=$(median /tmp/ours.us)
M_WARM=$(median /tmp/warm.us)
M_SS=$(median /tmp/ss.us)
echo "bench: initiate -> CHILD SA installed (both ESP SAs in the initiator's kernel, XFRM events), $N runs each, rounds of $ROUND_N alternating"
echo "bench: strongSwan (charon -> charon 5.9; daemons running, initiate = swanctl --initiate)   $(stats /tmp/ss.us), failed attempts $FAILS_SS"
echo "bench: ours warm (vpnnat-ike -> vpnnat-ike; daemons running, initiate = kill -HUP)     $(stats /tmp/warm.us)"
echo "bench: ours cold (initiate = starting the vpnnat-ike initiator process)               $(stats /tmp/ours.us), failed attempts (both ways) $FAILS_OURS"
echo "bench: ratio ours warm/strongSwan (medians, like for like) = $(awk "BEGIN { printf \"%.2f\", ${M_WARM:-0} / (${M_SS:-0} > 0 ? $M_SS : 1) }")"
echo "bench: ratio ours cold/strongSwan (medians) = $(awk "BEGIN { printf \"%.2f\", ${M_OURS:-0} / (${M_SS:-0} > 0 ? $M_SS : 1) }")"
echo "bench: samples ours warm (us): $(tr '\n' ' ' </tmp/warm.us)"
echo "bench: samples ours cold (us): $(tr '\n' ' ' </tmp/ours.us)"
echo "bench: samples strongSwan (us): $(tr '\n' ' ' </tmp/ss.us)"
kill $PROBE 2>/dev/null
for ns in ctr gw inet r1 pc0; do "$IP" netns del $ns; done
finish
