#!/bin/bash
# NAT rebinding (issue 17 item 4):
# `VPNNAT_VM_EXTRA=conntrack scripts/vm-test tests/vm/nat-rebind.sh`.
#
# The TESTBED topology with the real daemons (lib/topology.sh), one home
# behind the carrier NAT (CGNAT=1), so its router dials in to the gateway
# (router-initiated tunnel, ESP-in-UDP through the NAT). The operator holds
# a TCP conversation open with pc1 (vpnnat-probe talk/chat: a line every
# 200 ms each way, every line echoed); meanwhile the carrier NAT forgets the
# router's UDP mapping (conntrack -D) and hands out ports from another
# range, so the router's next datagram leaves from a new public port and
# the gateway's ESP to the old one is dropped by the NAT. Twice:
#   A. pc1 keeps talking (ticks): the router's next ESP comes from the new
#      port; the gateway's kernel reports it (XFRM mapping event) after it
#      authenticated, gatewayd moves its SA pair's encapsulation (UPDSA);
#   B. pc1 only answers: nothing leaves the home until the router's own IKE
#      liveness check (DPD, 30 s): the gateway follows that authenticated
#      IKE message (RFC 7296 2.23) and moves the SAs.
# Each time: every line of the open connection comes back over it; the
# gateway then holds exactly one SA pair for the router, encapsulated to
# the NAT's new port; the figures printed are the time from the flush to
# the first echo of a line sent after it, and the longest silence.
# Variables: those of the topology (INTERFACES.md); defaults ROUTERS=1
# GATEWAYS=1 CGNAT=1 HOSTS_PER_LAN=1. REBIND_TALK_SECS [45] per phase.
set -u
TOPO_SERVED_ONLY=1
ROUTERS=${ROUTERS:-1}
GATEWAYS=${GATEWAYS:-1}
CGNAT=${CGNAT:-1}
HOSTS_PER_LAN=${HOSTS_PER_LAN:-1}
TALK_SECS=${REBIND_TALK_SECS:-45}
. "$(dirname "$0")/lib/check.sh"
# shellcheck source=lib/topology.sh
. "$(dirname "$0")/lib/topology.sh"

command -v conntrack >/dev/null || {
	echo "nat-rebind: conntrack missing in the VM (VPNNAT_VM_EXTRA=conntrack)"
	exit 2
}
# the conntrack tool talks ctnetlink
modprobe nf_conntrack_netlink 2>/dev/null

now_ms() { local t=$EPOCHREALTIME; echo $((${t/./} / 1000)); }
GW_IP=198.51.100.21
check "$(tid 1) installed" wait_for "$E2E_WAIT" installed 1
request 1 pc1 >$W/r1/req.out 2>&1
VPN=$(sed -n 's/^ *pc1 [0-9.]* -> VPNNAT //p' $W/r1/req.out)
check "$(tid 1)'s request for pc1 accepted" sh -c "[ -n '$VPN' ] || { cat $W/r1/req.out; false; }"
tunnel_up() {
	show_router "$(tid $1)" | tr -d ' \n' | grep -q '"tunnel_state":"up"' &&
		[ "$(nsx r$1 "$IP" xfrm state | grep -c '^src')" -ge 2 ]
}
check "$(tid 1): tunnel up" wait_for "$E2E_WAIT" tunnel_up 1
router_initiated() {
	show_router "$(tid 1)" | tr -d ' \n' | grep -o '"initiation":{[^}]*}' | grep -q '"mode":"router"'
}
check "$(tid 1) (behind the carrier NAT): router-initiated tunnel" router_initiated

# gw_sas: the gateway's SAs with the carrier NAT's address, one line each:
# "out|in SPI sport dport"
gw_sas() {
	nsx gw1 "$IP" xfrm state | awk -v gw=$GW_IP -v cg=$CG_PUBLIC '
		/^src / { dir = ($2 == gw && $4 == cg) ? "out" : ($2 == cg && $4 == gw) ? "in" : "" }
		/proto esp spi/ { spi = $4 }
		/encap type espinudp/ && dir != "" { print dir, spi, $5, $7 }'
}
# nat_port: the carrier NAT's public port for the router's UDP 4500 now
nat_port() {
	nsx cgn conntrack -L -p udp -s "$(router_wan 1)" --sport 4500 2>/dev/null |
		sed -n 's/.*dport=\([0-9]*\).*/\1/p' | head -1
}
# one_pair_to PORT: exactly one SA pair for the router, both encapsulated
# to PORT on the NAT's side
one_pair_to() {
	local s
	s=$(gw_sas)
	[ "$(echo "$s" | grep -c '^out ')" = 1 ] && [ "$(echo "$s" | grep -c '^in ')" = 1 ] &&
		echo "$s" | grep -q "^out .* 4500 $1\$" && echo "$s" | grep -q "^in .* $1 4500\$" && return 0
	echo "gateway SAs (dir spi sport dport):"
	echo "$s"
	return 1
}

# phase NAME PORT TICK_MS RANGE: a conversation on PORT, the NAT flushed
# and moved to RANGE in the middle of it
phase() {
	# (not "name" or "out": check() in lib/check.sh sets those)
	local ph=$1 port=$2 tick=$3 range=$4 old new flush_ms log first resume silence moved
	nsx r1h1 vpnnat-probe chat --listen "0.0.0.0:$port" --tick-ms "$tick" --lifetime-secs 600 &
	PIDS="$PIDS $!"
	wait_for 20 tcp_open operator "$VPN" "$port" >/dev/null 2>&1
	old=$(nat_port)
	check "$ph: before: one SA pair for $(tid 1), to the NAT's port $old" one_pair_to "$old"
	nsx operator vpnnat-probe talk "$VPN:$port" --secs "$TALK_SECS" --grace-secs 120 >$W/talk-$port.out 2>&1 &
	local talk=$!
	sleep 8
	# the carrier NAT forgets the mapping and hands out ports from another
	# range (as a NAT that reassigns its port blocks does)
	nsx cgn "$NFT" flush chain ip topo_nat post
	nsx cgn "$NFT" add rule ip topo_nat post oifname eth0 meta l4proto udp masquerade to ":$range"
	nsx cgn "$NFT" add rule ip topo_nat post oifname eth0 masquerade
	check "$ph: the carrier NAT forgets $(tid 1)'s UDP mapping" \
		nsx cgn conntrack -D -p udp -s "$(router_wan 1)"
	# (from here: until the deletion, the old mapping still carried it)
	flush_ms=$(now_ms)
	# when the gateway's outbound SA took another port: the tunnel is back
	# (the operator's TCP may wait longer: its retransmission back-off)
	moved=""
	while [ $(($(now_ms) - flush_ms)) -lt 90000 ]; do
		gw_sas | grep -q "^out .* 4500 $old\$" || { moved=$(($(now_ms) - flush_ms)); break; }
		sleep 0.2
	done
	wait $talk
	local rc=$?
	log=$W/talk-$port.out
	check "$ph: every line of the operator's open connection came back over it" \
		sh -c "[ $rc = 0 ] || { tail -3 $log; false; }"
	new=$(nat_port)
	check "$ph: the router's datagrams left from a new public port ($old -> ${new:-none})" \
		sh -c "[ -n '$new' ] && [ '$new' != '$old' ]"
	check "$ph: afterwards the gateway holds exactly one SA pair for $(tid 1), to port ${new:-?}" \
		one_pair_to "$new"
	first=$(awk -v f="$flush_ms" '$1 == "ECHO" && $3 > f { print $4; exit }' "$log")
	silence=$(sed -n 's/.*MAX_SILENCE_MS \([0-9]*\).*/\1/p' "$log")
	resume=$([ -n "$first" ] && echo $((first - flush_ms)) || echo "?")
	say "$ph: flush -> the gateway's SA pair on the new port: ${moved:-?} ms; -> first echo of a line sent after the flush: $resume ms; longest silence of the connection: ${silence:-?} ms"
	grep -E "NAT|moved|encap|dial-in" $W/gw1/log | tail -8 | sed 's/^/#   gw1: /'
	echo "REBIND $ph sa_moved_ms=${moved:-?} resume_ms=$resume max_silence_ms=${silence:-?} old_port=$old new_port=${new:-none}"
}

phase "A (pc1 keeps talking: ESP mapping event)" 7100 200 20000-29999
phase "B (pc1 only answers: the router's IKE DPD)" 7101 0 30000-39999
check "gatewayd followed the router's NAT (its log says so)" grep -q "NAT moved it" $W/gw1/log
finish
