#!/bin/sh
# IKEv2 interop with strongSwan (Debian's charon + swanctl) with real ESP,
# each direction, rekey initiated by strongSwan. Needs charon in the VM:
#   eval "$(tests/vm/strongswan/extra.sh)" && scripts/vm-test tests/vm/ike-strongswan.sh
# Topology as tests/vm/ike.sh (lib/ike-topo.sh). Our side: vpnnat-ike (the
# driver) with policies from vpnnatctl; strongSwan's side: charon installs
# its own SAs and policies. Configs: tests/vm/strongswan/.
set -u
. "$(dirname "$0")/lib/check.sh"
. "$(dirname "$0")/lib/ike-topo.sh"
SS=$(cd "$(dirname "$0")/strongswan" && pwd)

if ! command -v charon >/dev/null 2>&1; then
	# Not a skip: a run without the peer tested nothing.
	echo "FAIL - charon is not in the VM (eval \"\$(tests/vm/strongswan/extra.sh)\" first)"
	FAILED=$((FAILED + 1))
	finish
fi
mkdir -p /usr/lib/ipsec/plugins /var/run /etc/swanctl
for f in /usr/bin/libstrongswan-*.so; do ln -sf "$f" /usr/lib/ipsec/plugins/; done
for d in /lib/x86_64-linux-gnu /usr/lib/x86_64-linux-gnu /lib; do
	mkdir -p $d && [ -e $d/libgcc_s.so.1 ] || ln -sf /usr/bin/libgcc_s.so.1 $d/libgcc_s.so.1
done
export STRONGSWAN_CONF=$SS/strongswan.conf
VICI=unix:///tmp/charon.vici

setup_topology

start_charon() { # NS CONF
	rm -f /tmp/charon.vici
	"$IP" netns exec "$1" charon >/tmp/charon-"$1".out 2>&1 &
	CHARON=$!
	i=0
	while [ ! -S /tmp/charon.vici ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
	must nsx "$1" swanctl --load-all --file "$2" --uri $VICI
}
stop_charon() {
	kill -TERM $CHARON 2>/dev/null
	gone $CHARON 10
}
# traffic_until FILE PATTERN SECS: connections every 0.5 s until PATTERN
# appears in FILE; sets N and FAILS.
traffic_until() {
	FAILS=0
	N=0
	t0=$(date +%s)
	while [ $(($(date +%s) - t0)) -lt "$3" ] && ! grep -q "$2" "$1"; do
		nsx ctr vpnnat-probe connect $VPNNAT:7000 --timeout-ms 3000 >/dev/null 2>&1 || FAILS=$((FAILS + 1))
		N=$((N + 1))
		sleep 0.5
	done
	for i in 1 2 3 4; do
		nsx ctr vpnnat-probe connect $VPNNAT:7000 --timeout-ms 3000 >/dev/null 2>&1 || FAILS=$((FAILS + 1))
		N=$((N + 1))
	done
}

# === 1. our initiator (gateway) -> strongSwan responder (router) =============
must nsx gw vpnnatctl policy add --dir out --src $CENTER --dst $VPNNAT/32 --tmpl-src $GW --tmpl-dst $R1 --reqid $REQID
for d in in fwd; do
	must nsx gw vpnnatctl policy add --dir $d --src $VPNNAT/32 --dst $CENTER --tmpl-src $R1 --tmpl-dst $GW --reqid $REQID
done
must nsx r1 vpnnatctl nat init --center $CENTER
must nsx r1 vpnnatctl nat add $VPNNAT=192.168.1.10
start_charon r1 "$SS/swanctl-router.conf"
VPNNAT_IKE_PSK=$PSK "$IP" netns exec gw vpnnat-ike initiate --local $GW --peer $R1 \
	--local-ts $CENTER --remote-ts $VPNNAT/32 --reqid $REQID >/tmp/gw.out 2>/tmp/gw.log &
INIT=$!
check "ours -> strongSwan: tunnel up at our initiator" wait_for /tmp/gw.out '^UP 203.0.113.101' 20
check "ours -> strongSwan: charon has the IKE SA and CHILD SA" sh -c \
	"$IP netns exec r1 swanctl --list-sas --uri $VICI | grep -q ESTABLISHED && $IP netns exec r1 swanctl --list-sas --uri $VICI | grep -q INSTALLED"
check "ours -> strongSwan: charon narrowed to the VPNNAT /32" sh -c \
	"$IP netns exec r1 swanctl --list-sas --uri $VICI | grep -q 'local  10.64.0.5/32'"
check "ours -> strongSwan: our SAs in the kernel (2)" test "$(sa_count gw)" -eq 2
check "ours -> strongSwan: TCP through the tunnel" reach
traffic_until /tmp/gw.out '^CHILD_DOWN' 45
check "ours -> strongSwan: strongSwan rekeyed the CHILD SA (we answered, make before break)" sh -c \
	"grep -c '^CHILD_UP' /tmp/gw.out | grep -qx 2 && grep -q '^CHILD_DOWN' /tmp/gw.out"
check "ours -> strongSwan: no connection lost across the rekey ($N connections, $FAILS failed)" test $FAILS -eq 0
check "ours -> strongSwan: 2 SAs after the rekey" test "$(sa_count gw)" -eq 2
check "ours -> strongSwan: TCP after the rekey" reach
kill -TERM $INIT
check "ours -> strongSwan: initiator exits after DELETE" gone $INIT 10
check "ours -> strongSwan: our tunnel closed" grep -q '^DOWN 203.0.113.101 Closed' /tmp/gw.out
check "ours -> strongSwan: no SA left at our gateway" no_sa gw
check "ours -> strongSwan: charon removed its SAs" no_sa r1
stop_charon
must nsx gw vpnnatctl flush
must nsx r1 vpnnatctl flush
must nsx r1 "$IP" xfrm policy flush

# === 2. strongSwan initiator (gateway) -> our responder (router) =============
for d in in fwd; do
	must nsx r1 vpnnatctl policy add --dir $d --src $CENTER --dst $VPNNAT/32 --tmpl-src $GW --tmpl-dst $R1 --reqid $REQID
done
must nsx r1 vpnnatctl policy add --dir out --src $VPNNAT/32 --dst $CENTER --tmpl-src $R1 --tmpl-dst $GW --reqid $REQID
must nsx r1 vpnnatctl nat init --center $CENTER
must nsx r1 vpnnatctl nat add $VPNNAT=192.168.1.10
VPNNAT_IKE_PSK=$PSK "$IP" netns exec r1 vpnnat-ike respond --local $R1 --peer $GW \
	--local-ts 10.64.0.0/16 --remote-ts $CENTER --reqid $REQID >/tmp/r1.out 2>/tmp/r1.log &
RESP=$!
start_charon gw "$SS/swanctl-gateway.conf"
check "strongSwan -> ours: swanctl --initiate succeeds" nsx gw swanctl --initiate --child vpnnat --timeout 20 --uri $VICI
check "strongSwan -> ours: tunnel up at our responder" wait_for /tmp/r1.out '^UP 198.51.100.21' 5
check "strongSwan -> ours: our SAs in the kernel (2)" test "$(sa_count r1)" -eq 2
check "strongSwan -> ours: TCP through the tunnel" reach
traffic_until /tmp/r1.out '^CHILD_DOWN' 45
check "strongSwan -> ours: strongSwan rekeyed the CHILD SA" sh -c \
	"grep -c '^CHILD_UP' /tmp/r1.out | grep -qx 2 && grep -q '^CHILD_DOWN' /tmp/r1.out"
check "strongSwan -> ours: no connection lost across the rekey ($N connections, $FAILS failed)" test $FAILS -eq 0
check "strongSwan -> ours: 2 SAs after the rekey" test "$(sa_count r1)" -eq 2
check "strongSwan -> ours: IKE SA rekey by strongSwan" nsx gw swanctl --rekey --ike r1 --uri $VICI
sleep 2
check "strongSwan -> ours: tunnel still up after the IKE rekey" sh -c "! grep -q '^DOWN' /tmp/r1.out"
check "strongSwan -> ours: TCP after the rekeys" reach
check "strongSwan -> ours: swanctl --terminate" nsx gw swanctl --terminate --ike r1 --timeout 10 --uri $VICI
check "strongSwan -> ours: our responder saw the DELETE" wait_for /tmp/r1.out '^DOWN 198.51.100.21 DeletedByPeer' 5
check "strongSwan -> ours: no SA left at our router" no_sa r1
check "strongSwan -> ours: no SA left at charon's gateway" no_sa gw

# The benchmark (ours vs strongSwan, same measurement) is
# tests/vm/strongswan/bench.sh, run by scripts/bench-ike.sh.
stop_charon
kill -TERM $RESP
check "strongSwan -> ours: responder exits" gone $RESP 10
check "the PSK is in none of our logs or outputs" sh -c "! grep -q 'per-router secret' /tmp/gw.out /tmp/gw.log /tmp/r1.out /tmp/r1.log"

if [ "${IKE_VM_VERBOSE:-}" = 1 ]; then
	for f in /tmp/gw.out /tmp/gw.log /tmp/r1.out /tmp/r1.log /tmp/charon-*.out; do echo "== $f"; cat $f; done
	echo "== charon.log"; tail -80 /tmp/charon.log
fi
kill $PROBE 2>/dev/null
for ns in ctr gw inet r1 pc0; do "$IP" netns del $ns; done
finish
