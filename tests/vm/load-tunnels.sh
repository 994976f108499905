#!/bin/bash
# Load through real tunnels (issue 8, "Load"):
# `scripts/vm-test tests/vm/load-tunnels.sh`, or `scripts/bench-load.sh --vm`.
#
# The real centerd and LOAD_GATEWAYS real gatewayd (kernel datapath, IKE
# on), each in its namespace as in lib/topology.sh (center LAN bridge,
# "internet" bridge), and one "homes" namespace on the internet with
# LOAD_ROUTERS addresses 198.18.0.1... (one /32 each, the routers' WAN
# addresses). vpnnat-load --tunnels runs there: LOAD_ROUTERS simulated
# routers, each routerd's core with its own WAN address, its own IKE
# responder (real IKEv2 with gatewayd, real kernel SAs and policies) and
# routerd's center port on its server-part VPNNAT address, do full cycles
# (installation, gateway address, maintenance request -> tunnel up, the
# operator's start and end in the UI, end/release/VPN end through the
# tunnel, tunnel torn down) concurrently, LOAD_ROUNDS rounds (see
# tests/load/src/tunnels.rs). Then: no error, every request ended, pool
# and slots free, no SA or policy in any namespace, no host route left.
#
# LOAD_ROUTERS [20], LOAD_ROUNDS [2], LOAD_GATEWAYS [2], LOAD_CONCURRENCY
# [LOAD_ROUTERS: every router at once] (cycles in flight at a time),
# LOAD_TEARDOWN_SECS [120]; LOAD_DEBUG=1 prints the daemons' logs at the end.
set -u
N=${LOAD_ROUTERS:-20}
ROUNDS=${LOAD_ROUNDS:-2}
CONC=${LOAD_CONCURRENCY:-$N}
GATEWAYS=${LOAD_GATEWAYS:-2}
POOL_CIDR=10.64.0.0/16
W=/run/load
. "$(dirname "$0")/lib/check.sh"
T0=$(date +%s)
say() { echo "# [$(($(date +%s) - T0))s] $*"; }
PIDS=""
gws() { for g in $(seq 1 "$GATEWAYS"); do echo gw$g; done; }
trap '[ -n "$PIDS" ] && kill $PIDS 2>/dev/null' EXIT
[ "$N" -ge 1 ] && [ "$N" -le 16000 ] && [ "$GATEWAYS" -ge 1 ] && [ "$GATEWAYS" -le 9 ] || {
	echo "load-tunnels: LOAD_ROUTERS must be 1..16000 and LOAD_GATEWAYS 1..9"
	exit 2
}
mkdir -p $W/center
say "$N simulated routers x $ROUNDS rounds, $GATEWAYS gateways; VM: $(nproc) CPUs, $(free -m | awk '/^Mem:/ {print $2}') MB"

# ---------------------------------------------------------------- topology
for ns in inet clan server homes; do must "$IP" netns add $ns; done
for ns in inet clan server homes; do must nsx $ns "$IP" link set lo up; done
must nsx inet "$IP" link add br0 type bridge
must nsx clan "$IP" link add br0 type bridge
must nsx inet "$IP" link set br0 up
must nsx clan "$IP" link set br0 up
# plug NS DEV BRIDGE_NS PORT ADDR: a veth from NS into a bridge
plug() {
	must veth "$1" "$2" "$3" "$4"
	must nsx "$3" "$IP" link set "$4" master br0 up
	must nsx "$1" "$IP" link set "$2" up
	must nsx "$1" "$IP" addr add "$5" dev "$2"
}
plug server eth0 inet i-server 198.51.100.10/24
plug server eth1 clan c-server 172.16.0.10/24
plug homes eth0 inet i-homes 198.51.100.200/24
# the routers' WAN addresses sit behind the homes namespace
must nsx server "$IP" route add 198.18.0.0/15 via 198.51.100.200
for g in $(seq 1 "$GATEWAYS"); do
	ns=gw$g
	must "$IP" netns add $ns
	must nsx $ns "$IP" link set lo up
	plug $ns eth0 clan c-gw$g "172.16.0.$((20 + g))/24"
	plug $ns eth1 inet i-gw$g "198.51.100.$((20 + g))/24"
	must nsx $ns sysctl -qw net.ipv4.ip_forward=1
	# some route for the pool before the XFRM policies pick the tunnel
	must nsx $ns "$IP" route add "$POOL_CIDR" dev eth1
	must nsx $ns "$IP" route add 198.18.0.0/15 via 198.51.100.200
done
for ns in server homes $(gws); do
	must nsx $ns sysctl -qw net.ipv4.conf.all.rp_filter=0
done
# The operator UI is on the center LAN, reached through the server; the
# center's commands come to the routers' VPNNAT addresses (on lo) through
# the tunnels only: no ARP answer for lo's addresses on eth0.
must nsx homes "$IP" route add 172.16.0.0/24 via 198.51.100.10
must nsx homes sysctl -qw net.ipv4.conf.all.arp_ignore=1
say "adding $N WAN addresses in the homes namespace"
awk -v n="$N" 'BEGIN { for (i = 0; i < n; i++) { a = 198 * 16777216 + 18 * 65536 + 1 + i;
	printf "addr add %d.%d.%d.%d/32 dev eth0\n", int(a / 16777216), int(a / 65536) % 256, int(a / 256) % 256, a % 256 } }' >$W/addrs
must "$IP" -n homes -batch $W/addrs

# ---------------------------------------------------------------- configs
MASTER=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
echo "$MASTER" >$W/center/master-key
OPERATOR_PASSWORD=operator-$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n')
echo "$OPERATOR_PASSWORD" >$W/center/operator-password
echo "maint-$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n')" >$W/center/maintenance-password
HASH=$(echo "$OPERATOR_PASSWORD" | centerd hash-password --iterations 2000) || {
	echo "load-tunnels: centerd hash-password failed"
	exit 1
}
SLOTS=$(((N + GATEWAYS - 1) / GATEWAYS))
{
	cat <<EOF
[server]
router_listen = "0.0.0.0:8080"
ui_listen = "172.16.0.10:8443"
trusted_proxies = []

[database]
path = "$W/center/center.db"

[factory]
master_key = "$MASTER"

[routers]
maintenance_password_file = "maintenance-password"
command_port = 8080
command_timeout_ms = 30000

[operators]
password_hashes = ["$HASH"]
session_ttl_secs = 7200

[pool]
cidr = "$POOL_CIDR"

[center]
networks = ["172.16.0.0/24"]
tunnel_up_timeout_ms = 120000
replay_window_secs = 300
reconcile_interval_secs = 30
host_routes = true
EOF
	for g in $(seq 1 "$GATEWAYS"); do
		# a random key: centerd and gatewayd refuse low-entropy ones
		key=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
		cat <<EOF

[[gateways]]
name = "gw$g"
api_url = "http://172.16.0.$((20 + g)):9000"
global_ip = "198.51.100.$((20 + g))"
ike_id = "gw$g.center.example"
slots = $SLOTS
next_hop = "172.16.0.$((20 + g))"
api_key = "$key"
EOF
		mkdir -p $W/gw$g
		cat >$W/gw$g/gatewayd.toml <<EOF
name = "gw$g"
listen = "172.16.0.$((20 + g)):9000"
api_key = "$key"
global_ip = "198.51.100.$((20 + g))"
ike_id = "gw$g.center.example"
center_networks = ["172.16.0.0/24"]
center_url = "http://172.16.0.10:8080"
policy_priority = 1000
datapath = "kernel"
event_timeout_ms = 30000
ike = true
EOF
		chmod 600 $W/gw$g/gatewayd.toml
	done
} >$W/center/centerd.toml
chmod 600 $W/center/*
CENTERD="centerd --config $W/center/centerd.toml"
check "centerd accepts the generated configuration" nsx server $CENTERD check-config

# ---------------------------------------------------------------- daemons
LOG_LEVEL=${LOAD_DAEMON_LOG:-warn}
# not through nsx (a shell function: $! would be its subshell, not the
# daemon whose memory is measured)
"$IP" netns exec server env RUST_LOG=$LOG_LEVEL $CENTERD run >$W/center/log 2>&1 &
CENTERD_PID=$!
PIDS="$PIDS $CENTERD_PID"
GW_PIDS=""
for g in $(seq 1 "$GATEWAYS"); do
	"$IP" netns exec gw$g env RUST_LOG=$LOG_LEVEL gatewayd --config $W/gw$g/gatewayd.toml >$W/gw$g/log 2>&1 &
	PIDS="$PIDS $!"
	GW_PIDS="$GW_PIDS,gw$g=$!"
done
tcp_open() { nsx "$1" timeout 2 bash -c "exec 3<>/dev/tcp/$2/$3"; }
wait_for() {
	local end=$(($(date +%s) + $1))
	shift
	while [ "$(date +%s)" -lt $end ]; do
		"$@" >/dev/null 2>&1 && return 0
		sleep 0.3
	done
	"$@"
}
check "centerd serves the router API" wait_for 30 tcp_open homes 198.51.100.10 8080
check "centerd serves the operator UI" wait_for 30 tcp_open homes 172.16.0.10 8443
for g in $(seq 1 "$GATEWAYS"); do
	check "gatewayd gw$g serves its command API" wait_for 30 tcp_open server "172.16.0.$((20 + g))" 9000
done

# ---------------------------------------------------------------- the load
say "vpnnat-load --tunnels"
# per router: an XFRM socket, the IKE driver's two UDP and two netlink
# sockets, the server-part listener, connections in flight
ulimit -n 65536
ip netns exec homes env RUST_LOG="${LOAD_LOG:-error}" vpnnat-load --tunnels \
	--routers "$N" --rounds "$ROUNDS" --concurrency "$CONC" \
	--center-url http://198.51.100.10:8080 --ui 172.16.0.10:8443 \
	--password-file $W/center/operator-password --master-key-file $W/center/master-key \
	--center-config $W/center/centerd.toml --state-dir $W/homes \
	--first-address 198.18.0.1 --wan-dev eth0 --vpnnat-dev lo \
	--teardown-secs "${LOAD_TEARDOWN_SECS:-120}" \
	--pids "centerd=$CENTERD_PID$GW_PIDS" --gateway-ns "$(gws | tr '\n' ,)" 2>&1 | tee $W/load.out &
sleep 1
LOAD_PID=$(for p in /proc/[0-9]*; do [ "$(cat $p/comm 2>/dev/null)" = vpnnat-load ] && echo "${p#/proc/}"; done | head -1)
# the simulated routers' threads (one IKE driver each) and memory, sampled
peak_threads=0
while [ -n "$LOAD_PID" ] && kill -0 "$LOAD_PID" 2>/dev/null; do
	t=$(awk '/^Threads:/ {print $2}' /proc/$LOAD_PID/status 2>/dev/null)
	[ -n "$t" ] && [ "$t" -gt $peak_threads ] && peak_threads=$t
	sleep 2
done
wait $!
rc=$(sed -n 's/^load (tunnels): OK$/0/p' $W/load.out)
rc=${rc:-1}
say "the load tool ended (status $rc); its threads peaked at $peak_threads; VM memory: $(free -m | awk '/^Mem:/ {print $3 " MB used of " $2}')"
check "vpnnat-load --tunnels: $N routers x $ROUNDS rounds, no error, pool and slots free, tunnels gone" [ $rc -eq 0 ]

# ---------------------------------------------------------------- nothing left
no_xfrm() { [ -z "$(nsx "$1" "$IP" xfrm state)" ] && [ -z "$(nsx "$1" "$IP" xfrm policy | grep -v '^$')" ]; }
for ns in homes server $(gws); do
	check "no SA and no policy left in $ns" no_xfrm $ns
done
check "no host route into the pool left on the center's router" \
	sh -c "! ip -n server route | grep -q '^10\.64\.'"
check "centerd still runs" kill -0 "$CENTERD_PID"
if [ -n "${LOAD_DEBUG:-}" ] || [ "$FAILED" -gt 0 ]; then
	for f in $W/center/log $W/gw*/log; do
		echo "---- $f (last 30 lines)"
		tail -n 30 "$f"
	done
	# the daemons' lines about the first router that failed
	t=$(sed -n 's/^round [0-9]*: terminal=\(load-[0-9]*\):.*/\1/p' $W/load.out | head -1)
	if [ -n "$t" ]; then
		echo "---- every daemon's lines about $t"
		grep -h "$t\b" $W/center/log $W/gw*/log | sort | tail -n 60
	fi
fi
finish
