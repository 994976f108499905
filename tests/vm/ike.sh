#!/bin/sh
# IKEv2 with real ESP: our initiator (gateway) -> our responder (router).
# Run with `scripts/vm-test tests/vm/ike.sh`.
#
#   ctr (172.16.0.10) --- gw --- inet --- r1 ---- pc0 192.168.1.10 (mapped to 10.64.0.5)
#        center LAN       |  IKE + ESP      |
#                  198.51.100.21     203.0.113.101
#
# SAs come only from the IKE driver (vpnnat-ike, i.e. crates/ike-driver over
# the datapath library); policies and the router's 1:1 NAT are programmed
# with vpnnatctl as gatewayd/routerd would. iproute2 only reads state back.
# The PSK travels in VPNNAT_IKE_PSK, never on a command line.
set -u
. "$(dirname "$0")/lib/check.sh"

GW=198.51.100.21
GW2=198.51.100.22
R1=203.0.113.101
CENTER=172.16.0.0/24
VPNNAT=10.64.0.5
REQID=0x56500001
PSK='vm test key: per-router secret'

for ns in ctr gw inet r1 pc0; do must "$IP" netns add $ns; done
must veth ctr c0 gw g1
must veth gw g0 inet i0
must veth inet i1 r1 r0
must veth r1 l0 pc0 e0
for ns in ctr gw inet r1 pc0; do must nsx $ns vpnnatctl link lo up; done
must nsx ctr vpnnatctl link c0 up
for d in g0 g1; do must nsx gw vpnnatctl link $d up; done
for d in i0 i1; do must nsx inet vpnnatctl link $d up; done
for d in r0 l0; do must nsx r1 vpnnatctl link $d up; done
must nsx pc0 vpnnatctl link e0 up

must nsx ctr vpnnatctl addr add c0 172.16.0.10/24
must nsx ctr vpnnatctl route add 0.0.0.0/0 --via 172.16.0.1
must nsx gw vpnnatctl addr add g1 172.16.0.1/24
must nsx gw vpnnatctl addr add g0 $GW/24
must nsx gw vpnnatctl addr add g0 $GW2/24
must nsx gw vpnnatctl route add 0.0.0.0/0 --via 198.51.100.1
must nsx inet vpnnatctl addr add i0 198.51.100.1/24
must nsx inet vpnnatctl addr add i1 203.0.113.1/24
must nsx r1 vpnnatctl addr add r0 $R1/24
must nsx r1 vpnnatctl route add 0.0.0.0/0 --via 203.0.113.1
must nsx r1 vpnnatctl addr add l0 192.168.1.1/24
must nsx pc0 vpnnatctl addr add e0 192.168.1.10/24
must nsx pc0 vpnnatctl route add 0.0.0.0/0 --via 192.168.1.1
for ns in gw inet r1; do must nsx $ns sh -c 'echo 1 > /proc/sys/net/ipv4/ip_forward'; done

# Tunnel policies and the router's 1:1 NAT (the owner's job), reqid shared
# with the IKE driver's SAs. $1 = the gateway's address as the router sees it.
setup_policies() {
	must nsx gw vpnnatctl policy add --dir out --src $CENTER --dst $VPNNAT/32 --tmpl-src $GW --tmpl-dst $R1 --reqid $REQID
	for d in in fwd; do
		must nsx gw vpnnatctl policy add --dir $d --src $VPNNAT/32 --dst $CENTER --tmpl-src $R1 --tmpl-dst $GW --reqid $REQID
		must nsx r1 vpnnatctl policy add --dir $d --src $CENTER --dst $VPNNAT/32 --tmpl-src "$1" --tmpl-dst $R1 --reqid $REQID
	done
	must nsx r1 vpnnatctl policy add --dir out --src $VPNNAT/32 --dst $CENTER --tmpl-src $R1 --tmpl-dst "$1" --reqid $REQID
	must nsx r1 vpnnatctl nat init --center $CENTER
	must nsx r1 vpnnatctl nat add $VPNNAT=192.168.1.10
}
setup_policies $GW

nsx pc0 vpnnat-probe serve --listen 0.0.0.0:7000 --token home1-pc0 --log /tmp/pc0.log --lifetime-secs 600 &
PROBE=$!

# wait_for FILE PATTERN SECS: until a line of FILE matches PATTERN.
wait_for() {
	i=0
	while [ $i -lt $(($3 * 10)) ]; do
		grep -q "$2" "$1" 2>/dev/null && return 0
		sleep 0.1
		i=$((i + 1))
	done
	echo "no '$2' in $1 after $3 s:"
	cat "$1" 2>/dev/null
	return 1
}
# gone PID SECS: until the process has exited.
gone() {
	i=0
	while [ $i -lt $(($2 * 10)) ]; do
		kill -0 "$1" 2>/dev/null || return 0
		sleep 0.1
		i=$((i + 1))
	done
	return 1
}
no_sa() { out=$(nsx "$1" "$IP" xfrm state) && [ -z "$out" ] || { echo "$out"; return 1; }; }
sa_count() { nsx "$1" "$IP" xfrm state | grep -c '^src'; }
reach() { # the operator reaches pc0 through its VPNNAT address
	line=$(nsx ctr vpnnat-probe connect $VPNNAT:7000 --timeout-ms 4000) || return 1
	echo "$line"
	case $line in "TOKEN home1-pc0 "*) true ;; *) false ;; esac
}

# --- the router's responder: accepts only the gateway 198.51.100.21 ----------
VPNNAT_IKE_PSK=$PSK "$IP" netns exec r1 vpnnat-ike respond --local $R1 --peer $GW \
	--local-ts 10.64.0.0/16 --remote-ts $CENTER --reqid $REQID >/tmp/r1.out 2>/tmp/r1.log &
RESP=$!
sleep 0.5
check "responder running" kill -0 $RESP

# --- rejections first: nothing may be installed ------------------------------
VPNNAT_IKE_PSK='not the right key' "$IP" netns exec gw vpnnat-ike initiate --local $GW --peer $R1 \
	--local-ts $CENTER --remote-ts $VPNNAT/32 --reqid $REQID --exit-on-down >/tmp/gw-bad.out 2>/tmp/gw-bad.log &
BAD=$!
check "wrong PSK: initiator gives up (AUTHENTICATION_FAILED)" wait_for /tmp/gw-bad.out '^DOWN 203.0.113.101 AuthenticationFailed' 20
check "wrong PSK: responder logged the rejection" wait_for /tmp/r1.out '^REJECTED 198.51.100.21 ' 5
gone $BAD 5
check "wrong PSK: no SA on the gateway" no_sa gw
check "wrong PSK: no SA on the router" no_sa r1
check "wrong PSK: the key is in no log or output" sh -c "! grep -q 'not the right key\|per-router secret' /tmp/gw-bad.out /tmp/gw-bad.log /tmp/r1.out /tmp/r1.log"

VPNNAT_IKE_PSK=$PSK nsx gw timeout 4 vpnnat-ike initiate --local $GW2 --peer $R1 \
	--local-ts $CENTER --remote-ts $VPNNAT/32 --reqid $REQID >/tmp/gw2.out 2>/tmp/gw2.log
check "wrong peer address (right PSK): responder drops it" wait_for /tmp/r1.out '^REJECTED 198.51.100.22 ' 2
check "wrong peer address: no SA on the router" no_sa r1
check "wrong peer address: no SA on the gateway" no_sa gw

# --- the tunnel --------------------------------------------------------------
# CHILD SA soft lifetime 25 s: the kernel's soft expire drives a rekey.
VPNNAT_IKE_PSK=$PSK "$IP" netns exec gw vpnnat-ike initiate --local $GW --peer $R1 \
	--local-ts $CENTER --remote-ts $VPNNAT/32 --reqid $REQID --soft-secs 25 --hard-secs 300 \
	>/tmp/gw.out 2>/tmp/gw.log &
INIT=$!
T0=$(date +%s)
check "tunnel up at the gateway" wait_for /tmp/gw.out '^UP 203.0.113.101 nat=0' 20
check "tunnel up at the router" wait_for /tmp/r1.out '^UP 198.51.100.21 nat=0' 5
check "gateway: 2 SAs (ip xfrm state)" test "$(sa_count gw)" -eq 2
check "router: 2 SAs (ip xfrm state)" test "$(sa_count r1)" -eq 2
check "SAs are AES-GCM tunnel mode with the policies' reqid" sh -c \
	"$IP netns exec gw $IP xfrm state | grep -c 'reqid 1448083457 mode tunnel' | grep -qx 2 && $IP netns exec gw $IP xfrm state | grep -q 'rfc4106(gcm(aes))'"
check "gateway's outbound SA goes $GW -> $R1" sh -c "$IP netns exec gw $IP xfrm state | grep -q '^src $GW dst $R1'"
check "TCP through the tunnel: operator reaches pc0 at $VPNNAT" reach
OUT_SPI=$(sed -n 's/^CHILD_UP [^ ]* [^ ]* \(0x[0-9a-f]*\)$/\1/p' /tmp/gw.out | head -1)
check "gateway's outbound SA counted packets" sh -c \
	"$IP netns exec gw vpnnatctl sa get --dst $R1 --spi $OUT_SPI | grep -Eq ' packets [1-9]'"

# --- CHILD SA rekey on the kernel's soft expire, with traffic running --------
fails=0
n=0
while [ $(($(date +%s) - T0)) -lt 45 ] && ! grep -q '^CHILD_DOWN' /tmp/gw.out; do
	nsx ctr vpnnat-probe connect $VPNNAT:7000 --timeout-ms 3000 >/dev/null 2>&1 || fails=$((fails + 1))
	n=$((n + 1))
	sleep 0.5
done
for i in 1 2 3 4; do
	nsx ctr vpnnat-probe connect $VPNNAT:7000 --timeout-ms 3000 >/dev/null 2>&1 || fails=$((fails + 1))
	n=$((n + 1))
done
check "soft expire rekeyed the CHILD SA (new pair up, old one removed)" sh -c \
	"grep -c '^CHILD_UP' /tmp/gw.out | grep -qx 2 && grep -q '^CHILD_DOWN' /tmp/gw.out && grep -c '^CHILD_UP' /tmp/r1.out | grep -qx 2"
check "no connection lost across the rekey ($n connections, $fails failed)" test $fails -eq 0
check "after the rekey: still 2 SAs on each side" sh -c "test \$($IP netns exec gw $IP xfrm state | grep -c '^src') -eq 2 && test \$($IP netns exec r1 $IP xfrm state | grep -c '^src') -eq 2"
check "tunnel never went down" sh -c "! grep -q '^DOWN' /tmp/gw.out /tmp/r1.out"
check "TCP through the rekeyed tunnel" reach

# --- teardown: INFORMATIONAL DELETE ------------------------------------------
kill -TERM $INIT
check "initiator exits after DELETE" gone $INIT 10
check "initiator printed STOPPED" grep -q '^STOPPED' /tmp/gw.out
check "gateway reported the tunnel closed" grep -q '^DOWN 203.0.113.101 Closed' /tmp/gw.out
check "router saw the DELETE" wait_for /tmp/r1.out '^DOWN 198.51.100.21 DeletedByPeer' 5
check "gateway: no SA left" no_sa gw
check "router: no SA left" no_sa r1
check_not "pc0 unreachable without SAs" nsx ctr vpnnat-probe connect $VPNNAT:7000 --timeout-ms 1500
kill -TERM $RESP
check "responder exits on SIGTERM" gone $RESP 10
check "router flush removes the policies" nsx r1 vpnnatctl flush
check "gateway flush removes the policies" nsx gw vpnnatctl flush
for ns in gw r1; do check "$ns: no policy left" test -z "$(nsx $ns "$IP" xfrm policy)"; done

# --- NAT traversal: the gateway behind a masquerading NAT --------------------
# Test scaffolding: the "internet" namespace SNATs the gateway to 203.0.113.1
# (the router then only knows the gateway by that address).
GWNAT=203.0.113.1
must nsx inet "$NFT" add table ip natt
must nsx inet "$NFT" add chain ip natt post '{ type nat hook postrouting priority 100; }'
must nsx inet "$NFT" add rule ip natt post oifname i1 ip saddr $GW masquerade
setup_policies $GWNAT
VPNNAT_IKE_PSK=$PSK "$IP" netns exec r1 vpnnat-ike respond --local $R1 --peer $GWNAT \
	--local-ts 10.64.0.0/16 --remote-ts $CENTER --reqid $REQID >/tmp/r1-nat.out 2>/tmp/r1-nat.log &
RESP=$!
sleep 0.5
VPNNAT_IKE_PSK=$PSK "$IP" netns exec gw vpnnat-ike initiate --local $GW --peer $R1 \
	--local-ts $CENTER --remote-ts $VPNNAT/32 --reqid $REQID >/tmp/gw-nat.out 2>/tmp/gw-nat.log &
INIT=$!
check "NAT: tunnel up at the gateway, NAT detected" wait_for /tmp/gw-nat.out '^UP 203.0.113.101 nat=1' 20
check "NAT: tunnel up at the router, NAT detected" wait_for /tmp/r1-nat.out '^UP 203.0.113.1 nat=1' 5
check "NAT: gateway's SAs use ESP-in-UDP 4500" sh -c "$IP netns exec gw $IP xfrm state | grep -c 'encap type espinudp sport 4500 dport 4500' | grep -qx 2"
check "NAT: router's SAs use ESP-in-UDP" sh -c "$IP netns exec r1 $IP xfrm state | grep -c 'encap type espinudp' | grep -qx 2"
check "NAT: TCP through the ESP-in-UDP tunnel" reach
IN_SPI=$(sed -n 's/^CHILD_UP [^ ]* \(0x[0-9a-f]*\) .*/\1/p' /tmp/r1-nat.out | head -1)
check "NAT: the kernel decapsulated ESP-in-UDP on the router (inbound SA counted)" sh -c \
	"$IP netns exec r1 vpnnatctl sa get --dst $R1 --spi $IN_SPI | grep -Eq ' packets [1-9]'"
kill -TERM $INIT
check "NAT: initiator exits after DELETE" gone $INIT 10
check "NAT: router saw the DELETE" wait_for /tmp/r1-nat.out '^DOWN 203.0.113.1 DeletedByPeer' 5
check "NAT: gateway: no SA left" no_sa gw
check "NAT: router: no SA left" no_sa r1
kill -TERM $RESP
check "NAT: responder exits on SIGTERM" gone $RESP 10
check "router flush removes the policies (NAT run)" nsx r1 vpnnatctl flush
check "gateway flush removes the policies (NAT run)" nsx gw vpnnatctl flush
check "the PSK is in no log or output" sh -c "! grep -q 'per-router secret' /tmp/gw*.out /tmp/gw*.log /tmp/r1*.out /tmp/r1*.log"

if [ "${IKE_VM_VERBOSE:-}" = 1 ]; then
	for f in /tmp/gw*.out /tmp/gw*.log /tmp/r1*.out /tmp/r1*.log; do echo "== $f"; cat $f; done
fi
kill $PROBE 2>/dev/null
for ns in ctr gw inet r1 pc0; do "$IP" netns del $ns; done
finish
