# Shared by the IKE VM scenarios (sourced after check.sh):
#
#   ctr (172.16.0.10) --- gw --- inet --- r1 ---- pc0 192.168.1.10 (mapped to 10.64.0.5)
#        center LAN       |  IKE + ESP      |
#                  198.51.100.21     203.0.113.101
#
# setup_topology: namespaces, links, addresses, routes, pc0's probe server.
# setup_policies GW_AS_SEEN_BY_ROUTER: our tunnel policies + the router's NAT.
GW=198.51.100.21
GW2=198.51.100.22
R1=203.0.113.101
CENTER=172.16.0.0/24
VPNNAT=10.64.0.5
REQID=0x56500001
PSK='vm test key: per-router secret'

setup_topology() {
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
	nsx pc0 vpnnat-probe serve --listen 0.0.0.0:7000 --token home1-pc0 --log /tmp/pc0.log --lifetime-secs 600 &
	PROBE=$!
}

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
# wait_count FILE PATTERN N SECS: until at least N lines of FILE match.
wait_count() {
	i=0
	while [ $i -lt $(($4 * 10)) ]; do
		[ "$(grep -c "$2" "$1" 2>/dev/null)" -ge "$3" ] && return 0
		sleep 0.1
		i=$((i + 1))
	done
	echo "fewer than $3 lines '$2' in $1 after $4 s:"
	cat "$1" 2>/dev/null
	return 1
}
# last_ike FILE: "<spi-i> <spi-r>" of the last IKE_SA line of a vpnnat-ike output.
last_ike() { sed -n 's/^IKE_SA [^ ]* //p' "$1" | tail -1; }
# spis NS: the SPIs of the namespace's SAs, sorted, on one line.
spis() { nsx "$1" "$IP" xfrm state | sed -n 's/.* spi \(0x[0-9a-f]*\) .*/\1/p' | sort | tr '\n' ' '; }
# disjoint "A B .." "C D ..": no word in both lists.
disjoint() {
	for a in $1; do
		for b in $2; do [ "$a" = "$b" ] && return 1; done
	done
	return 0
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

