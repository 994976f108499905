#!/bin/sh
# IKEv2 interop with strongSwan (Debian's charon + swanctl) with real ESP,
# each direction, rekey initiated by strongSwan; then (part 3, issue 17
# item 7) charon in the router's place, behind a NAT, dialing out to the
# real gatewayd as responder. Needs charon in the VM:
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

# === 3. strongSwan in the router's place, behind a NAT, dials out to gatewayd
# (issue 17 item 7). The real gatewayd (kernel datapath, IKE) in gw gets the
# router's slot in `router` mode through its authenticated command API as
# centerd gives it (`vpnnat-ike gateway`: the same messages, MAC'd with the
# gateway's API key, the PSK sealed for the gateway); charon in r1 is the
# router, which now sits behind a masquerading home NAT (hnat):
#   ctr --- gw --- inet --- hnat (203.0.113.101, masquerade) --- r1 (192.168.100.2) --- pc0
must nsx gw vpnnatctl flush
must nsx gw "$IP" xfrm policy flush
must nsx r1 vpnnatctl flush
must nsx r1 "$IP" xfrm policy flush
must "$IP" -n inet link del i1
must "$IP" netns add hnat
must veth inet i1 hnat h0
must veth hnat h1 r1 r0
must nsx inet vpnnatctl link i1 up
must nsx inet vpnnatctl addr add i1 203.0.113.1/24
for d in lo h0 h1; do must nsx hnat vpnnatctl link $d up; done
must nsx hnat vpnnatctl addr add h0 $R1/24
must nsx hnat vpnnatctl addr add h1 192.168.100.1/30
must nsx hnat vpnnatctl route add 0.0.0.0/0 --via 203.0.113.1
must nsx r1 vpnnatctl link r0 up
must nsx r1 vpnnatctl addr add r0 192.168.100.2/30
must nsx r1 vpnnatctl route add 0.0.0.0/0 --via 192.168.100.1
# A NAT without port forwards (as lib/topology.sh's HOME_NAT): what leaves
# by h0 is masqueraded, what comes in by it passes only as an answer.
must nsx hnat sh -c 'echo 1 > /proc/sys/net/ipv4/ip_forward'
printf '%s\n' "table ip home_nat {" \
	"  chain post { type nat hook postrouting priority srcnat; oifname \"h0\" masquerade; }" \
	"  chain forward { type filter hook forward priority filter; policy accept;" \
	"    iifname \"h0\" ct state established,related accept; iifname \"h0\" drop; }" \
	"}" | must nsx hnat "$NFT" -f -
# pc0's probe server afresh (parts 1 and 2 took minutes of its lifetime).
kill $PROBE 2>/dev/null
wait $PROBE 2>/dev/null
nsx pc0 vpnnat-probe serve --listen 0.0.0.0:7000 --token home1-pc0 --log /tmp/pc0.log --lifetime-secs 600 &
PROBE=$!
# The router's 1:1 NAT of the granted host (routerd's job; charon has none).
must nsx r1 vpnnatctl nat init --center $CENTER
must nsx r1 vpnnatctl nat add $VPNNAT=192.168.1.10

# gatewayd as gw1 (test keys only); its events go to a centerd that is not
# there (retried and logged; nothing here depends on them).
GW_KEY=cac2a3e456cc6e47cef48169db8c58d329f5f1c50381559a3ae2969d9a233b4f
ROUTER_PSK=$(sed -n 's/.*secret = 0x\([0-9a-f]*\).*/\1/p' "$SS/swanctl-dialout.conf")
printf '%s\n' 'name = "gw1"' 'listen = "172.16.0.1:9000"' "api_key = \"$GW_KEY\"" "global_ip = \"$GW\"" \
	"center_networks = [\"$CENTER\"]" 'center_url = "http://172.16.0.10:8080"' \
	'vpnnat_networks = ["10.64.0.0/16"]' 'ike = true' 'event_timeout_ms = 1000' >/tmp/gatewayd.toml
chmod 600 /tmp/gatewayd.toml
RUST_LOG=info "$IP" netns exec gw gatewayd --config /tmp/gatewayd.toml >/tmp/gatewayd.log 2>&1 &
GWD=$!
check "dial-out: gatewayd serves its API and IKE" wait_for /tmp/gatewayd.log 'API on 172.16.0.1:9000' 20
gwcmd() {
	VPNNAT_GW_API_KEY=$GW_KEY VPNNAT_ROUTER_PSK=$ROUTER_PSK \
		"$IP" netns exec ctr vpnnat-ike gateway --api 172.16.0.1:9000 --name gw1 "$@"
}
# As centerd at a maintenance request in `router` mode: the slot (with the
# router's PSK and where the center saw it: the NAT's public address), then
# the granted VPNNAT address.
check "dial-out: gatewayd takes the slot for swan-1 in router mode" \
	gwcmd setup --terminal swan-1 --router-ip $R1 --slot 3 --mode router
check "dial-out: gatewayd routes $VPNNAT into swan-1's tunnel" gwcmd add --terminal swan-1 $VPNNAT
check "dial-out: gatewayd initiates nothing (waits for the router)" no_sa gw

# esp_packets NS: the packets of each SA of NS (one number per SA).
esp_packets() {
	nsx "$1" "$IP" -s xfrm state |
		awk '/[0-9]\(bytes\), [0-9]+\(packets\)/ { s = $0; sub(/\(packets\).*/, "", s); sub(/.*[ ,]/, "", s); print s }'
}
# esp_both_used NS: NS holds two SAs and both carried packets.
esp_both_used() {
	c=$(esp_packets "$1")
	echo "packets per SA:" $c
	[ "$(echo "$c" | grep -c .)" -eq 2 ] || return 1
	for x in $c; do [ "$x" -gt 0 ] || return 1; done
}
# refused FILE: charon's initiate ended on the gateway's AUTHENTICATION_FAILED
# (in swanctl's output or charon's log) and charon holds no IKE SA.
refused() {
	grep -q 'AUTHENTICATION_FAILED' "$1" /tmp/charon.log || {
		cat "$1"
		return 1
	}
	! nsx r1 swanctl --list-sas --uri $VICI | grep -q ESTABLISHED
}
# gw_sas_with_r1: gatewayd's kernel holds exactly one SA pair, both
# between it and the router's public (NAT) address.
gw_sas_with_r1() {
	st=$("$IP" -n gw xfrm state)
	[ "$(echo "$st" | grep -c '^src')" -eq 2 ] &&
		[ "$(echo "$st" | grep '^src' | grep -c " $R1")" -eq 2 ] || {
		echo "$st"
		return 1
	}
}
gw_sas_in_udp() {
	st=$("$IP" -n gw xfrm state)
	[ "$(echo "$st" | grep -c 'encap type espinudp .*port 4500 ')" -eq 2 ] || {
		echo "$st"
		return 1
	}
}
# until_sas_gone NS: waits (max 5 s) until NS holds no SA.
until_sas_gone() {
	i=0
	while [ $i -lt 50 ]; do
		[ -z "$(nsx "$1" "$IP" xfrm state)" ] && return 0
		sleep 0.1
		i=$((i + 1))
	done
	nsx "$1" "$IP" xfrm state
	return 1
}
# until_no_ike_sa: waits (max 5 s) until charon holds no IKE SA.
until_no_ike_sa() {
	i=0
	while [ $i -lt 50 ]; do
		nsx r1 swanctl --list-sas --uri $VICI | grep -q ESTABLISHED || return 0
		sleep 0.1
		i=$((i + 1))
	done
	nsx r1 swanctl --list-sas --uri $VICI
	return 1
}
ss_initiate() { # OUT: charon dials the gateway (swanctl's status)
	nsx r1 swanctl --initiate --ike dialout --child vpnnat --timeout 20 --uri $VICI >"$1" 2>&1
}

# 3a. The right identity with a wrong PSK: refused, nothing installed.
sed 's/secret = 0x[0-9a-f]*/secret = 0x889190904ff5b0bc2f1c8db39dc48a37efc458a8c74af6d7eae82b1735dfaa15/' \
	"$SS/swanctl-dialout.conf" >/tmp/swanctl-dialout-wrong.conf
: >/tmp/charon.log
start_charon r1 /tmp/swanctl-dialout-wrong.conf
check_not "dial-out, wrong PSK: swanctl --initiate fails" ss_initiate /tmp/ss-wrong.out
check "dial-out, wrong PSK: gatewayd answered AUTHENTICATION_FAILED" refused /tmp/ss-wrong.out
check "dial-out, wrong PSK: nothing installed at gatewayd" no_sa gw
check "dial-out, wrong PSK: nothing installed at charon" no_sa r1
stop_charon

# 3b. The right PSK: up through the NAT, UDP-encapsulated, traffic both ways.
: >/tmp/charon.log
start_charon r1 "$SS/swanctl-dialout.conf"
check "dial-out: swanctl --initiate succeeds (charon behind the NAT -> gatewayd)" sh -c \
	"$IP netns exec r1 swanctl --initiate --ike dialout --child vpnnat --timeout 20 --uri $VICI >/tmp/ss-right.out 2>&1 || { cat /tmp/ss-right.out; false; }"
nsx r1 swanctl --list-sas --uri $VICI >/tmp/ss-sas.out 2>&1
check "dial-out: charon's IKE SA is established, floated to port 4500 at both ends" sh -c \
	"grep -q ESTABLISHED /tmp/ss-sas.out && grep -q '192.168.100.2\[4500\]' /tmp/ss-sas.out && grep -q '198.51.100.21\[4500\]' /tmp/ss-sas.out || { cat /tmp/ss-sas.out; false; }"
check "dial-out: charon's CHILD SA is installed UDP-encapsulated (TUNNEL-in-UDP)" sh -c \
	"grep INSTALLED /tmp/ss-sas.out | grep -q TUNNEL-in-UDP || { cat /tmp/ss-sas.out; false; }"
check "dial-out: gatewayd reports swan-1 dialed in from the NAT's address, NAT detected" \
	wait_for /tmp/gatewayd.log "swan-1 tunnel (dial-in) slot 3: IKE up: the router dialed in from $R1:[0-9]* (NAT detected, ESP in UDP)" 5
check "dial-out: gatewayd's state report: swan-1 up in slot 3 with $VPNNAT" sh -c \
	"VPNNAT_GW_API_KEY=$GW_KEY $IP netns exec ctr vpnnat-ike gateway --api 172.16.0.1:9000 --name gw1 state >/tmp/gw-state.out 2>&1; grep -qx 'TUNNEL swan-1 slot=3 router=$R1 status=up addresses=$VPNNAT' /tmp/gw-state.out || { cat /tmp/gw-state.out; false; }"
check "dial-out: gatewayd's kernel holds exactly one SA pair, both with $R1" gw_sas_with_r1
check "dial-out: both of gatewayd's SAs are ESP in UDP (espinudp, 4500 on its side)" gw_sas_in_udp
check "dial-out: ping center -> router-LAN host (via $VPNNAT) and back" nsx ctr ping -c 3 -W 3 $VPNNAT
check "dial-out: TCP connect center -> router-LAN host and back" reach
check "dial-out: the traffic passed gatewayd's ESP SAs (both counted packets)" esp_both_used gw
check "dial-out: the traffic passed charon's ESP SAs (both counted packets)" esp_both_used r1
check_not "dial-out: the home behind the NAT is not reachable from the internet side" sh -c \
	"$IP netns exec inet vpnnat-probe connect $R1:7000 --timeout-ms 2000 || $IP netns exec inet vpnnat-probe connect 192.168.1.10:7000 --timeout-ms 2000"

# 3c. The center ends the VPN: gatewayd tears the tunnel down and deletes
# the router's IKE SA; the router, without a slot now, is refused.
check "dial-out: gatewayd tears down swan-1 (VPN end)" gwcmd teardown --terminal swan-1
check "dial-out: gatewayd removed its SAs" until_sas_gone gw
check "dial-out: charon got the DELETE (no IKE SA left)" until_no_ike_sa
check "dial-out: no SA left at charon" until_sas_gone r1
: >/tmp/charon.log
check_not "dial-out, slot ended: swanctl --initiate fails" ss_initiate /tmp/ss-ended.out
check "dial-out, slot ended: gatewayd answered AUTHENTICATION_FAILED" refused /tmp/ss-ended.out
check "dial-out, slot ended: nothing installed at gatewayd" no_sa gw
check "dial-out: gatewayd logged the refusal by terminal, and no key" sh -c \
	"grep -q 'dial-in refused: terminal=swan-1 holds no router-mode slot' /tmp/gatewayd.log && ! grep -qi '$ROUTER_PSK' /tmp/gatewayd.log /tmp/gw-state.out"
stop_charon
kill -TERM $GWD
check "dial-out: gatewayd stops" gone $GWD 10

if [ "${IKE_VM_VERBOSE:-}" = 1 ]; then
	for f in /tmp/gw.out /tmp/gw.log /tmp/r1.out /tmp/r1.log /tmp/charon-*.out /tmp/gatewayd.log /tmp/ss-*.out; do echo "== $f"; cat $f; done
	echo "== charon.log"; tail -80 /tmp/charon.log
fi
kill $PROBE 2>/dev/null
for ns in ctr gw inet hnat r1 pc0; do "$IP" netns del $ns; done
finish
