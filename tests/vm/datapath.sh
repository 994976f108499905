#!/bin/sh
# First VM test (needs real ESP: run with `scripts/vm-test tests/vm/datapath.sh`).
#
#   ctr (172.16.0.10) --- gw --- inet --- r1 ---+--- pc0 192.168.1.10 (mapped to 10.64.0.5)
#        center LAN       |  ESP tunnel     |    +--- pc1 192.168.1.11 (not mapped)
#                  198.51.100.21     203.0.113.101
#
# Namespaces, veths and addresses are test scaffolding; every SA, policy,
# NAT element and route is programmed by the project's code (vpnnatctl,
# i.e. the datapath library). iproute2 and nft only read state back.
set -u
. "$(dirname "$0")/lib/check.sh"

K_GW_R1=0x$(printf '11%.0s' $(seq 32))a1a2a3a4
K_R1_GW=0x$(printf '22%.0s' $(seq 32))b1b2b3b4
GW=198.51.100.21
R1=203.0.113.101
CENTER=172.16.0.0/24

for ns in ctr gw inet r1 pc0 pc1; do must "$IP" netns add $ns; done
must veth ctr c0 gw g1
must veth gw g0 inet i0
must veth inet i1 r1 r0
must veth r1 l0 pc0 e0
must "$IP" link add br0 netns r1 type bridge
must veth r1 l1 pc1 e0
for ns in ctr gw inet r1 pc0 pc1; do must nsx $ns vpnnatctl link lo up; done
must nsx ctr vpnnatctl link c0 up
must nsx gw vpnnatctl link g0 up
must nsx gw vpnnatctl link g1 up
must nsx inet vpnnatctl link i0 up
must nsx inet vpnnatctl link i1 up
must nsx r1 vpnnatctl link r0 up
for d in l0 l1 br0; do must nsx r1 vpnnatctl link $d up; done
must nsx r1 "$IP" link set l0 master br0
must nsx r1 "$IP" link set l1 master br0
must nsx pc0 vpnnatctl link e0 up
must nsx pc1 vpnnatctl link e0 up

must nsx ctr vpnnatctl addr add c0 172.16.0.10/24
must nsx ctr vpnnatctl route add 0.0.0.0/0 --via 172.16.0.1
must nsx gw vpnnatctl addr add g1 172.16.0.1/24
must nsx gw vpnnatctl addr add g0 $GW/24
must nsx gw vpnnatctl route add 0.0.0.0/0 --via 198.51.100.1
must nsx inet vpnnatctl addr add i0 198.51.100.1/24
must nsx inet vpnnatctl addr add i1 203.0.113.1/24
must nsx r1 vpnnatctl addr add r0 $R1/24
must nsx r1 vpnnatctl route add 0.0.0.0/0 --via 203.0.113.1
must nsx r1 vpnnatctl addr add br0 192.168.1.1/24
must nsx pc0 vpnnatctl addr add e0 192.168.1.10/24
must nsx pc0 vpnnatctl route add 0.0.0.0/0 --via 192.168.1.1
must nsx pc1 vpnnatctl addr add e0 192.168.1.11/24
must nsx pc1 vpnnatctl route add 0.0.0.0/0 --via 192.168.1.1
for ns in gw inet r1; do must nsx $ns sh -c 'echo 1 > /proc/sys/net/ipv4/ip_forward'; done

# --- the tunnel: one SA each way, installed on both ends -------------------
for ns in gw r1; do
	must nsx $ns vpnnatctl sa add --src $GW --dst $R1 --spi 0x1001 --key "$K_GW_R1"
	must nsx $ns vpnnatctl sa add --src $R1 --dst $GW --spi 0x2001 --key "$K_R1_GW"
done
# Gateway: the pool goes into the tunnel. 10.64.0.6 (unmapped at the router)
# and 192.168.1.10/.11 (real LAN addresses) are routed in too, to prove the
# router's NAT filter stops what IPsec alone would let through.
for dst in 10.64.0.5/32 10.64.0.6/32 192.168.1.10/32 192.168.1.11/32; do
	must nsx gw vpnnatctl policy add --dir out --src $CENTER --dst $dst --tmpl-src $GW --tmpl-dst $R1
	for d in in fwd; do
		must nsx gw vpnnatctl policy add --dir $d --src $dst --dst $CENTER --tmpl-src $R1 --tmpl-dst $GW
		must nsx r1 vpnnatctl policy add --dir $d --src $CENTER --dst $dst --tmpl-src $GW --tmpl-dst $R1
	done
	must nsx r1 vpnnatctl policy add --dir out --src $dst --dst $CENTER --tmpl-src $R1 --tmpl-dst $GW
done
# Router: the 1:1 VPNNAT of pc0 only.
must nsx r1 vpnnatctl nat init --center $CENTER
must nsx r1 vpnnatctl nat add 10.64.0.5=192.168.1.10

# --- services --------------------------------------------------------------
nsx pc0 vpnnat-probe serve --listen 0.0.0.0:7000 --token home1-pc0 --log /tmp/pc0.log --lifetime-secs 300 &
P1=$!
nsx pc1 vpnnat-probe serve --listen 0.0.0.0:7000 --token home1-pc1 --log /tmp/pc1.log --lifetime-secs 300 &
P2=$!
nsx ctr vpnnat-probe serve --listen 0.0.0.0:7001 --token center --log /tmp/ctr.log --lifetime-secs 300 &
P3=$!
sleep 1

# --- checks ----------------------------------------------------------------
reach() { # reach NS ADDR:PORT EXPECTED_TOKEN EXPECTED_PEER_PREFIX EXPECTED_CLIENT_PEER
	line=$(nsx "$1" vpnnat-probe connect "$2" --timeout-ms 4000) || return 1
	echo "$line"
	want_tok=$3 want_peer=$4 want_cpeer=$5
	# shellcheck disable=SC2086 # split the answer into words
	set -- $line
	# TOKEN t PEER p LOCAL l CLIENT_PEER c
	[ "$2" = "$want_tok" ] && case $4 in "$want_peer":*) true ;; *) false ;; esac && [ "$8" = "$want_cpeer" ]
}

check "operator reaches pc0 at its VPNNAT address and gets pc0's token" \
	reach ctr 10.64.0.5:7000 home1-pc0 172.16.0.10 10.64.0.5:7000
check "pc0 saw the operator's real address 172.16.0.10 (no SNAT on the way in)" \
	grep -q '^172\.16\.0\.10:' /tmp/pc0.log
check "operator saw only the VPNNAT address (CLIENT_PEER 10.64.0.5)" \
	sh -c "$IP netns exec ctr vpnnat-probe connect 10.64.0.5:7000 | grep -q 'CLIENT_PEER 10.64.0.5:7000'"
check "pc0 opens a connection to the center and appears as 10.64.0.5 (SNAT)" \
	reach pc0 172.16.0.10:7001 center 10.64.0.5 172.16.0.10:7001

sa_packets() { # NS DST SPI
	nsx "$1" vpnnatctl sa get --dst "$2" --spi "$3" | sed -n 's/.* packets \([0-9]*\) .*/\1/p'
}
check "gateway's outbound SA counted packets" test "$(sa_packets gw $R1 0x1001)" -gt 0
check "router's inbound SA counted the same traffic" test "$(sa_packets r1 $R1 0x1001)" -gt 0
check "router's outbound SA counted replies" test "$(sa_packets r1 $GW 0x2001)" -gt 0
before=$(sa_packets r1 $R1 0x1001)

check_not "unmapped VPNNAT address 10.64.0.6 is not reachable" \
	nsx ctr vpnnat-probe connect 10.64.0.6:7000 --timeout-ms 1500
check_not "pc1 (not mapped) is not reachable at its real address through the tunnel" \
	nsx ctr vpnnat-probe connect 192.168.1.11:7000 --timeout-ms 1500
check_not "pc0's real address is not reachable either (only via DNAT)" \
	nsx ctr vpnnat-probe connect 192.168.1.10:7000 --timeout-ms 1500
check "those attempts did enter the tunnel (so the router's filter stopped them)" \
	test "$(sa_packets r1 $R1 0x1001)" -gt "$before"
check "pc1 never saw a connection" test ! -s /tmp/pc1.log
check "mapping listed by the library" sh -c "$IP netns exec r1 vpnnatctl nat list | grep -qx '10.64.0.5=192.168.1.10'"

# --- removal: the library removes everything it made -----------------------
check "router flush" nsx r1 vpnnatctl flush
check "gateway flush" nsx gw vpnnatctl flush
check_not "pc0 unreachable after removal" nsx ctr vpnnat-probe connect 10.64.0.5:7000 --timeout-ms 1500
for ns in gw r1; do
	check "$ns: no SA left (ip xfrm state)" test -z "$(nsx $ns "$IP" xfrm state)"
	check "$ns: no policy left (ip xfrm policy)" test -z "$(nsx $ns "$IP" xfrm policy)"
	check "$ns: no nft ruleset left" test -z "$(nsx $ns "$NFT" list ruleset)"
done

kill $P1 $P2 $P3 2>/dev/null
for ns in ctr gw inet r1 pc0 pc1; do "$IP" netns del $ns; done
finish
