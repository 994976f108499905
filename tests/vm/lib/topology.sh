#!/bin/bash
# tests/vm/lib/topology.sh — the TESTBED topology with the real daemons,
# sourced by the scenarios that need it (e2e.sh, and the reliability
# scenarios). Reads the INTERFACES.md variables (ROUTERS, GATEWAYS,
# SLOTS_PER_GATEWAY, LAN_CIDR, POOL_CIDR, HOSTS_PER_LAN, HOME_NAT, CGNAT)
# and:
#   TOPO_SERVED_ONLY=1  only the homes the gateways can serve (no filler
#                       homes, no refused home)
# HOME_NAT=N puts homes 1..N behind a masquerading NAT of their own
# (namespace hnK between the router's WAN and the internet, or the carrier
# NAT); CGNAT=N puts homes 1..N behind one shared carrier NAT (namespace
# cgn, one public address for all). The NATs' inside segments are planned
# clear of LAN_CIDR, POOL_CIDR and the center's and internet's networks.
# and leaves behind: namespaces inet clan server operator gwN rK rKhI,
# configs under $W, centerd/gatewayd/routerd running (PIDS, CENTERD_PID),
# and the helpers below (nsx from check.sh, wait_for, http_get, tcp_open,
# ROUTERD, status_of, installed, field, request, list_requests,
# show_router, vpn_gone, tid, wan_ip, router_wan, public_ip, nated, host_ip,
# kind, hosts_of, gws, homes).
# The caller sources lib/check.sh first.

ROUTERS=${ROUTERS:-2}
GATEWAYS=${GATEWAYS:-2}
SLOTS_PER_GATEWAY=${SLOTS_PER_GATEWAY:-4}
LAN_CIDR=${LAN_CIDR:-192.168.1.0/24}
POOL_CIDR=${POOL_CIDR:-10.64.0.0/16}
HOSTS_PER_LAN=${HOSTS_PER_LAN:-2}
HOME_NAT=${HOME_NAT:-0}
CGNAT=${CGNAT:-0}
E2E_WAIT=${E2E_WAIT:-90} # s to wait for any one asynchronous outcome
# centerd's bound on a tunnel coming up before it answers a request
# (issue 19 item 4); scenarios that wait it out on purpose lower it
TUNNEL_UP_TIMEOUT_MS=${TUNNEL_UP_TIMEOUT_MS:-60000}
# how often each routerd's health watch looks (routerd's default is 30 s;
# the failure-notice steps wait for its tick and for the reconcile after a
# repair, so the scenarios tick faster)
HEALTH_PERIOD_SECS=${HEALTH_PERIOD_SECS:-5}
# centerd's idle timeout (issue 19 item 8; absent: none, as by default)
IDLE_TIMEOUT_SECS=${IDLE_TIMEOUT_SECS:-}

W=${TOPO_DIR:-/run/e2e}
mkdir -p $W
PORT=7000 # every probe service
T0=$(date +%s)
say() { echo "# [$(($(date +%s) - T0))s] $*"; }

# ---------------------------------------------------------------- arithmetic
ip2int() {
	local IFS=.
	# shellcheck disable=SC2086
	set -- $1
	echo $((($1 << 24) + ($2 << 16) + ($3 << 8) + $4))
}
int2ip() { echo "$((($1 >> 24) & 255)).$((($1 >> 16) & 255)).$((($1 >> 8) & 255)).$(($1 & 255))"; }
cidr_ok() { echo "$1" | grep -Eq '^([0-9]{1,3}\.){3}[0-9]{1,3}/[0-9]{1,2}$'; }

for v in ROUTERS GATEWAYS SLOTS_PER_GATEWAY HOSTS_PER_LAN HOME_NAT CGNAT; do
	eval "x=\$$v"
	# shellcheck disable=SC2154
	echo "$x" | grep -Eq '^[0-9]+$' || {
		echo "topology: $v must be a number, not '$x'"
		exit 2
	}
done
cidr_ok "$LAN_CIDR" || {
	echo "topology: LAN_CIDR must be a.b.c.d/len"
	exit 2
}
cidr_ok "$POOL_CIDR" || {
	echo "topology: POOL_CIDR must be a.b.c.d/len"
	exit 2
}
LAN_LEN=${LAN_CIDR#*/}
LAN_NET=$(($(ip2int "${LAN_CIDR%/*}") & ~((1 << (32 - LAN_LEN)) - 1) & 0xffffffff))
LAN_SIZE=$((1 << (32 - LAN_LEN)))
# router .1, hosts from .10 (or .2 in a small LAN)
FIRST_HOST=10
[ $((FIRST_HOST + HOSTS_PER_LAN + 1)) -le "$LAN_SIZE" ] || FIRST_HOST=2
[ "$ROUTERS" -ge 1 ] && [ "$ROUTERS" -le 60 ] || {
	echo "topology: ROUTERS must be 1..60"
	exit 2
}
[ "$GATEWAYS" -ge 1 ] && [ "$GATEWAYS" -le 9 ] || {
	echo "topology: GATEWAYS must be 1..9"
	exit 2
}
[ "$SLOTS_PER_GATEWAY" -ge 1 ] || {
	echo "topology: SLOTS_PER_GATEWAY must be >= 1"
	exit 2
}
[ "$HOSTS_PER_LAN" -ge 1 ] && [ $((FIRST_HOST + HOSTS_PER_LAN + 1)) -le "$LAN_SIZE" ] || {
	echo "topology: HOSTS_PER_LAN must be >= 1 and fit in LAN_CIDR"
	exit 2
}
LAN_GW=$(int2ip $((LAN_NET + 1)))
host_ip() { int2ip $((LAN_NET + FIRST_HOST + $1 - 1)); } # host_ip I (1-based)

# The pool: centerd hands out every address but the network and broadcast
# addresses (below /31). in_pool ADDR: ADDR lies in POOL_CIDR.
POOL_LEN=${POOL_CIDR#*/}
POOL_NET=$(($(ip2int "${POOL_CIDR%/*}") & ~((1 << (32 - POOL_LEN)) - 1) & 0xffffffff))
POOL_USABLE=$((1 << (32 - POOL_LEN)))
[ "$POOL_LEN" -lt 31 ] && POOL_USABLE=$((POOL_USABLE - 2))
in_pool() { [ $(($(ip2int "$1") & ~((1 << (32 - POOL_LEN)) - 1) & 0xffffffff)) -eq "$POOL_NET" ]; }

# The plan of homes. Every home takes two addresses at installation (server
# part, router part); a served home's request one per host (pc1 of each,
# pc2 of home 1 on top), a filler's one. To show "no capacity", filler
# homes take every slot the served homes leave free and one more home
# asks. When the pool cannot hold that plan, the capacity checks are left
# out (and reported as skipped, with the reason), never half-planned.
CAP=$((GATEWAYS * SLOTS_PER_GATEWAY))
SECOND=0
[ "$HOSTS_PER_LAN" -ge 2 ] && SECOND=1
CAPACITY_SKIP=""
if [ "$ROUTERS" -le "$CAP" ]; then
	SERVED=$ROUTERS
	FILLERS=$((CAP - ROUTERS))
	HOMES=$((CAP + 1)) # the last one is refused
else
	SERVED=$CAP
	FILLERS=0
	HOMES=$ROUTERS
fi
if [ -n "${E2E_BENCH:-}" ] || [ -n "${TOPO_SERVED_ONLY:-}" ]; then
	# the benchmark and the reliability scenarios need only the served homes
	FILLERS=0
	HOMES=$SERVED
	CAPACITY_SKIP="only the served homes (TOPO_SERVED_ONLY or E2E_BENCH)"
fi
POOL_NEED=$((2 * HOMES + SERVED + FILLERS + SECOND))
if [ "$POOL_NEED" -gt "$POOL_USABLE" ] && [ "$ROUTERS" -le "$CAP" ]; then
	CAPACITY_SKIP="filling all $CAP slots needs $POOL_NEED VPNNAT addresses, POOL_CIDR=$POOL_CIDR holds $POOL_USABLE"
	FILLERS=0
	HOMES=$SERVED
	POOL_NEED=$((2 * HOMES + SERVED + SECOND))
fi
[ "$POOL_NEED" -le "$POOL_USABLE" ] || {
	echo "topology: POOL_CIDR=$POOL_CIDR holds $POOL_USABLE VPNNAT addresses; $HOMES homes and their requests need $POOL_NEED"
	exit 2
}
[ "$HOMES" -le 120 ] || {
	echo "topology: GATEWAYS x SLOTS_PER_GATEWAY too large for one VM (at most 119)"
	exit 2
}
say "ROUTERS=$ROUTERS GATEWAYS=$GATEWAYS SLOTS_PER_GATEWAY=$SLOTS_PER_GATEWAY LAN_CIDR=$LAN_CIDR POOL_CIDR=$POOL_CIDR HOSTS_PER_LAN=$HOSTS_PER_LAN"
say "capacity $CAP tunnels: $SERVED homes served, $FILLERS filler homes, $((HOMES - SERVED - FILLERS)) refused; $POOL_NEED of $POOL_USABLE VPNNAT addresses planned${CAPACITY_SKIP:+ (capacity checks left out: $CAPACITY_SKIP)}"

# kind K: real (1..SERVED), filler, refused
kind() {
	if [ "$1" -le "$SERVED" ]; then
		echo real
	elif [ "$1" -le $((SERVED + FILLERS)) ]; then
		echo filler
	elif [ "$1" -le "$ROUTERS" ]; then
		echo refused
	else
		echo extra-refused
	fi
}
hosts_of() { case $(kind "$1") in real | refused) echo "$HOSTS_PER_LAN" ;; *) echo 1 ;; esac }
wan_ip() { echo "198.51.100.$((100 + $1))"; }
tid() { echo "home-$1"; }

# ---------------------------------------------------------------- NATs
# net_overlaps A/LA B/LB: the two networks share an address
net_overlaps() {
	local a=${1%/*} la=${1#*/} b=${2%/*} lb=${2#*/} l m
	l=$la
	[ "$lb" -lt "$l" ] && l=$lb
	m=$(((0xffffffff << (32 - l)) & 0xffffffff))
	[ $(($(ip2int "$a") & m)) -eq $(($(ip2int "$b") & m)) ]
}
# pick_net: the first /24 candidate clear of every network in use
TAKEN="$LAN_CIDR $POOL_CIDR 172.16.0.0/24 198.51.100.0/24"
pick_net() {
	local c t ok
	for c in 100.64.0.0/24 100.65.0.0/24 192.0.2.0/24 203.0.113.0/24 10.255.254.0/24 172.31.254.0/24 192.168.254.0/24; do
		ok=1
		for t in $TAKEN; do net_overlaps "$c" "$t" && ok=0; done
		[ $ok = 1 ] && {
			echo "$c"
			return 0
		}
	done
	return 1
}
CG_NET="" HN_NET=""
if [ "$CGNAT" -gt 0 ]; then
	CG_NET=$(pick_net) || {
		echo "topology: no free /24 for the carrier NAT's inside"
		exit 2
	}
	TAKEN="$TAKEN $CG_NET"
fi
if [ "$HOME_NAT" -gt 0 ]; then
	HN_NET=$(pick_net) || {
		echo "topology: no free /24 for the home NATs' insides"
		exit 2
	}
	TAKEN="$TAKEN $HN_NET"
fi
[ "$HOME_NAT" -le 60 ] && [ "$CGNAT" -le 200 ] || {
	echo "topology: HOME_NAT must be at most 60 and CGNAT at most 200"
	exit 2
}
# the home LANs overlap the center LAN (issue 17 item 6): the routers
# masquerade the operators' addresses toward their LAN
LAN_OVERLAPS_CENTER=0
net_overlaps "$LAN_CIDR" 172.16.0.0/24 && LAN_OVERLAPS_CENTER=1
CG_PUBLIC=198.51.100.2 # the carrier NAT's one public address
# nated K: home K sits behind some NAT
nated() { [ "$1" -le "$HOME_NAT" ] || [ "$1" -le "$CGNAT" ]; }
behind_cgnat() { [ "$1" -le "$CGNAT" ]; }
behind_home_nat() { [ "$1" -le "$HOME_NAT" ]; }
# the carrier NAT's inside address of home K (its home NAT's or its own)
cg_inside() { int2ip $(($(ip2int "${CG_NET%/*}") + 10 + $1)); }
# router_wan K: the address on the router's own WAN; router_wan_gw K: its
# next hop; router_wan_len K: the prefix length
router_wan() {
	if behind_home_nat "$1"; then
		int2ip $(($(ip2int "${HN_NET%/*}") + 4 * ($1 - 1) + 2))
	elif behind_cgnat "$1"; then
		cg_inside "$1"
	else
		wan_ip "$1"
	fi
}
router_wan_gw() {
	if behind_home_nat "$1"; then
		int2ip $(($(ip2int "${HN_NET%/*}") + 4 * ($1 - 1) + 1))
	elif behind_cgnat "$1"; then
		int2ip $(($(ip2int "${CG_NET%/*}") + 1))
	else
		echo 198.51.100.1
	fi
}
router_wan_len() {
	if behind_home_nat "$1"; then echo 30; elif behind_cgnat "$1"; then echo 24; else echo 24; fi
}
# public_ip K: where the internet (the center, the gateways) sees home K
public_ip() { if behind_cgnat "$1"; then echo "$CG_PUBLIC"; else wan_ip "$1"; fi; }
# masquerade NS OUT_IF: a NAT without port forwards: what leaves by OUT_IF
# is masqueraded, what comes in by it passes only as an answer
masquerade() {
	must nsx "$1" sysctl -qw net.ipv4.ip_forward=1
	printf '%s\n' "table ip topo_nat {" \
		"  chain post { type nat hook postrouting priority srcnat; oifname \"$2\" masquerade; }" \
		"  chain forward { type filter hook forward priority filter; policy accept;" \
		"    iifname \"$2\" ct state established,related accept; iifname \"$2\" drop; }" \
		"  chain input { type filter hook input priority filter; policy accept;" \
		"    iifname \"$2\" ct state established,related accept; iifname \"$2\" drop; }" \
		"}" | must nsx "$1" "$NFT" -f -
}
[ "$HOME_NAT$CGNAT" = 00 ] ||
	say "NATs: HOME_NAT=$HOME_NAT${HN_NET:+ (insides in $HN_NET)} CGNAT=$CGNAT${CG_NET:+ (inside $CG_NET, public $CG_PUBLIC)}"

PIDS=""
cleanup() {
	# shellcheck disable=SC2086
	[ -n "$PIDS" ] && kill $PIDS 2>/dev/null
	return 0
}
trap cleanup EXIT

# ---------------------------------------------------------------- topology
say "building the topology ($HOMES homes, $GATEWAYS gateways)"
for ns in inet clan server operator; do must "$IP" netns add $ns; done
must nsx inet "$IP" link add br0 type bridge
must nsx clan "$IP" link add br0 type bridge
for ns in inet clan server operator; do must nsx $ns "$IP" link set lo up; done
must nsx inet "$IP" link set br0 up
must nsx clan "$IP" link set br0 up
# plug NS DEV BRIDGE_NS PORT ADDR: a veth from NS into a bridge
plug() {
	must veth "$1" "$2" "$3" "$4"
	must nsx "$3" "$IP" link set "$4" master br0 up
	must nsx "$1" "$IP" link set "$2" up
	[ -n "${5:-}" ] && must nsx "$1" "$IP" addr add "$5" dev "$2"
	return 0
}
# the internet: 198.51.100.1 is a host out there, with a service of its own
must "$IP" link add i-host netns inet type veth peer name i-host-p netns inet
must nsx inet "$IP" link set i-host-p master br0 up
must nsx inet "$IP" link set i-host up
must nsx inet "$IP" addr add 198.51.100.1/24 dev i-host

plug server eth0 inet i-server 198.51.100.10/24
plug server eth1 clan c-server 172.16.0.10/24
plug operator eth0 clan c-op 172.16.0.100/24
must nsx operator "$IP" route add "$POOL_CIDR" via 172.16.0.10
must nsx server sysctl -qw net.ipv4.ip_forward=1
# a center service the gateways allow-list for granted LAN hosts (issue 18,
# item 1: "a firmware server"), on a host of its own
must "$IP" netns add fwsrv
must nsx fwsrv "$IP" link set lo up
plug fwsrv eth0 clan c-fw 172.16.0.50/24
must nsx fwsrv "$IP" route add "$POOL_CIDR" via 172.16.0.10
for g in $(seq 1 "$GATEWAYS"); do
	ns=gw$g
	must "$IP" netns add $ns
	must nsx $ns "$IP" link set lo up
	plug $ns eth0 clan c-gw$g "172.16.0.$((20 + g))/24"
	plug $ns eth1 inet i-gw$g "198.51.100.$((20 + g))/24"
	must nsx $ns sysctl -qw net.ipv4.ip_forward=1
	# the pool needs *some* route before the XFRM output policy is looked
	# at (TESTBED.md gotcha); the per-/32 policies pick the tunnel
	must nsx $ns "$IP" route add "$POOL_CIDR" dev eth1
done
gws() { for g in $(seq 1 "$GATEWAYS"); do echo gw$g; done; }
homes() { for k in $(seq 1 "$HOMES"); do echo r$k; done; }
for ns in server $(gws); do
	nsx $ns sysctl -qw net.ipv4.conf.all.rp_filter=0 2>/dev/null
done

if [ "$CGNAT" -gt 0 ]; then
	# the carrier NAT: inside bridge br0, outside on the internet
	must "$IP" netns add cgn
	must nsx cgn "$IP" link set lo up
	plug cgn eth0 inet i-cgn "$CG_PUBLIC/24"
	must nsx cgn "$IP" route add default via 198.51.100.1
	must nsx cgn "$IP" link add br0 type bridge
	must nsx cgn "$IP" addr add "$(int2ip $(($(ip2int "${CG_NET%/*}") + 1)))/24" dev br0
	must nsx cgn "$IP" link set br0 up
	masquerade cgn eth0
fi
# uplink NS DEV K ADDR/LEN GW: NS's way out for home K (the internet, or
# the carrier NAT's inside for a home behind it)
uplink() {
	if behind_cgnat "$3"; then
		plug "$1" "$2" cgn "c-$1" "$(cg_inside "$3")/24"
		must nsx "$1" "$IP" route add default via "$(int2ip $(($(ip2int "${CG_NET%/*}") + 1)))"
	else
		plug "$1" "$2" inet "i-$1" "$(wan_ip "$3")/24"
		must nsx "$1" "$IP" route add default via 198.51.100.1
	fi
}

for k in $(seq 1 "$HOMES"); do
	r=r$k
	must "$IP" netns add $r
	must nsx $r "$IP" link set lo up
	if behind_home_nat $k; then
		# the home's own NAT between the router's WAN and the uplink
		n=hn$k
		must "$IP" netns add $n
		must nsx $n "$IP" link set lo up
		uplink $n eth0 $k
		must veth $r eth0 $n in0
		must nsx $n "$IP" addr add "$(router_wan_gw $k)/30" dev in0
		must nsx $n "$IP" link set in0 up
		must nsx $r "$IP" addr add "$(router_wan $k)/30" dev eth0
		must nsx $r "$IP" link set eth0 up
		must nsx $r "$IP" route add default via "$(router_wan_gw $k)"
		masquerade $n eth0
	else
		uplink $r eth0 $k
	fi
	must nsx $r "$IP" link add br0 type bridge
	must nsx $r "$IP" addr add "$LAN_GW/$LAN_LEN" dev br0
	must nsx $r "$IP" link set br0 up
	must nsx $r sysctl -qw net.ipv4.ip_forward=1
	for i in $(seq 1 "$(hosts_of $k)"); do
		h=r${k}h$i
		must "$IP" netns add $h
		must nsx $h "$IP" link set lo up
		must veth $h eth0 $r l$i
		must nsx $r "$IP" link set l$i master br0 up
		must nsx $h "$IP" link set eth0 up
		must nsx $h "$IP" addr add "$(host_ip $i)/$LAN_LEN" dev eth0
		must nsx $h "$IP" route add default via "$LAN_GW"
		nsx $h vpnnat-probe serve --listen "0.0.0.0:$PORT" --token "$(tid $k)/pc$i" --lifetime-secs 3000 &
		PIDS="$PIDS $!"
	done
	# the router part (VPNNAT -> the router's WAN address) answers too
	nsx $r vpnnat-probe serve --listen "$(router_wan $k):$PORT" --token "$(tid $k)/router" --lifetime-secs 3000 &
	PIDS="$PIDS $!"
done
# something beyond the LAN that must stay out of reach
nsx inet vpnnat-probe serve --listen "198.51.100.1:$PORT" --token internet --lifetime-secs 3000 &
PIDS="$PIDS $!"
# on the center LAN: the allow-listed service, and one on the operator's
# workstation that no tunnel may reach
nsx fwsrv vpnnat-probe serve --listen "172.16.0.50:$PORT" --token firmware --lifetime-secs 3000 &
PIDS="$PIDS $!"
nsx operator vpnnat-probe serve --listen "172.16.0.100:$PORT" --token operator --lifetime-secs 3000 &
PIDS="$PIDS $!"

# ---------------------------------------------------------------- configs
say "writing configurations"
mkdir -p $W/center
MASTER=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
OPERATOR_PASSWORD=operator-$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n')
MAINT_PASSWORD=maint-$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n')
echo "$OPERATOR_PASSWORD" >$W/center/operator-password
echo "$MAINT_PASSWORD" >$W/center/maintenance-password
chmod 600 $W/center/operator-password $W/center/maintenance-password
# hash with few PBKDF2 rounds: TCG is slow and this is a test password
HASH=$(echo "$OPERATOR_PASSWORD" | centerd hash-password --iterations 2000) || {
	echo "topology: centerd hash-password failed"
	exit 1
}
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
command_timeout_ms = 10000

[operators]
password_hashes = ["$HASH"]
session_ttl_secs = 3600

[pool]
cidr = "$POOL_CIDR"

[center]
networks = ["172.16.0.0/24"]
tunnel_up_timeout_ms = $TUNNEL_UP_TIMEOUT_MS
${IDLE_TIMEOUT_SECS:+idle_timeout_secs = $IDLE_TIMEOUT_SECS}
replay_window_secs = 300
reconcile_interval_secs = 30
host_routes = true

[dns]
listen = "172.16.0.10:53"
domain = "vpnnat.test"
ttl_secs = 5
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
slots = $SLOTS_PER_GATEWAY
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
event_timeout_ms = 10000
ike = true
# issue 18, item 1: out of a tunnel only replies and this service; centerd
# (router API, UI, DNS) and every gatewayd API are refused in tunnel_allow
vpnnat_networks = ["$POOL_CIDR"]
center_hosts = ["172.16.0.10", $(for h in $(seq 1 "$GATEWAYS"); do printf '"172.16.0.%d", ' $((20 + h)); done)"172.16.0.100"]

[[tunnel_allow]]
address = "172.16.0.50"
port = $PORT
protocol = "tcp"
EOF
	done
} >$W/center/centerd.toml
# secrets (factory key, gateway API keys): as an installation keeps them
chmod 600 $W/center/centerd.toml $W/gw*/gatewayd.toml
CENTERD="centerd --config $W/center/centerd.toml"
check "centerd accepts the generated configuration" nsx server $CENTERD check-config

for k in $(seq 1 "$HOMES"); do
	d=$W/r$k
	mkdir -p $d/state
	secret=$($CENTERD factory-secret "$(tid $k)") || {
		echo "topology: centerd factory-secret failed"
		exit 1
	}
	{
		cat <<EOF
terminal_id = "$(tid $k)"
center_url = "http://198.51.100.10:8080"
factory_secret = "$secret"
state_dir = "$d/state"
lease_file = "$d/dnsmasq.leases"
dns = false
center_timeout_secs = 120
retry_max_secs = 5
health_period_secs = $HEALTH_PERIOD_SECS

[wan]
interface = "eth0"
address = "$(router_wan $k)/$(router_wan_len $k)"
gateway = "$(router_wan_gw $k)"

[lan]
interface = "br0"
address = "$LAN_GW/$LAN_LEN"

[web_ui]
listen = "$LAN_GW:80"

[server_part]
listen = "$LAN_GW:8080"

[hosts]
EOF
		for i in $(seq 1 "$(hosts_of $k)"); do echo "pc$i = \"$(host_ip $i)\""; done
		cat <<EOF

[button]
claimant_name = "Owner of $(tid $k)"
claimant_level = "general"
urgency = "high"
phone = "+81 3 0000 $(printf %04d $k)"
content = "preset request of $(tid $k)"
terminals = ["pc1"]
EOF
	} >$d/routerd.toml
	chmod 600 $d/routerd.toml
done

# ---------------------------------------------------------------- 1. start
say "1. starting centerd, $GATEWAYS gatewayd, $HOMES routerd"
nsx server env RUST_LOG=info $CENTERD run >$W/center/log 2>&1 &
PIDS="$PIDS $!"
CENTERD_PID=$!
for g in $(seq 1 "$GATEWAYS"); do
	nsx gw$g env RUST_LOG=info gatewayd --config $W/gw$g/gatewayd.toml >$W/gw$g/log 2>&1 &
	PIDS="$PIDS $!"
done
# wait_for SECONDS CMD...: retry CMD until it succeeds or SECONDS passed
wait_for() {
	local end=$(($(date +%s) + $1))
	shift
	while [ "$(date +%s)" -lt $end ]; do
		"$@" >/dev/null 2>&1 && return 0
		sleep 0.3
	done
	"$@"
}
# http_get HOST PORT PATH [USER:PASSWORD]: a GET from the operator's
# namespace (busybox wget cannot do Basic auth here), status line + body
http_get() {
	local auth=""
	[ -n "${4:-}" ] && auth="Authorization: Basic $(printf %s "$4" | base64 | tr -d '\n')\r\n"
	ip netns exec operator timeout 15 bash -c \
		"exec 3<>/dev/tcp/$1/$2; printf 'GET $3 HTTP/1.1\r\nHost: $1\r\n${auth}Connection: close\r\n\r\n' >&3; exec cat <&3"
}
export -f http_get
# maint_password_of TERMINAL: that router's own maintenance password (issue
# 18: each router has its own, given at installation; centerd prints it
# and audits the reading). $MAINT_PASSWORD is only the configured shared
# one, which no router installed since holds.
maint_password_of() { nsx server $CENTERD maintenance-password "$1"; }
# maint_api ADDR USER:PASS TERMINAL: the maintenance API answers 200 and
# names the router
maint_api() {
	local out
	out=$(http_get "$1" 8080 /maintenance/api "$2")
	echo "$out" | head -1 | grep -q ' 200 ' && echo "$out" | grep -q "\"$3\"" && return 0
	echo "$out" | head -c 600
	return 1
}
tcp_open() { nsx "$1" timeout 2 bash -c "exec 3<>/dev/tcp/$2/$3"; }
check "centerd serves the router API" wait_for 30 tcp_open operator 172.16.0.10 8080
check "centerd serves the operator UI" wait_for 30 tcp_open operator 172.16.0.10 8443
for g in $(seq 1 "$GATEWAYS"); do
	check "gatewayd gw$g serves its command API" wait_for 30 tcp_open server "172.16.0.$((20 + g))" 9000
done
for k in $(seq 1 "$HOMES"); do
	nsx r$k env RUST_LOG=info routerd --config $W/r$k/routerd.toml run >$W/r$k/log 2>&1 &
	PIDS="$PIDS $!"
done
ROUTERD() { local k=$1; shift; nsx r$k routerd --config $W/r$k/routerd.toml "$@"; }
status_of() { ROUTERD "$1" status 2>/dev/null; }
installed() { status_of "$1" | grep -q '^installed: *yes'; }
field() { status_of "$1" | sed -n "s/^$2: *//p"; }
request() { # request K NAME... -> prints routerd's answer
	local k=$1
	shift
	ROUTERD "$k" request --name "Owner of $(tid $k)" --level general --urgency high \
		--phone "+81 3 0000 $(printf %04d "$k")" --content "e2e request" "$@"
}
list_requests() { nsx server $CENTERD list-requests --limit 1000; }
show_router() { nsx server $CENTERD show-router "$1"; }
# vpn_gone K: the center freed K's slot, and neither K nor any gateway
# keeps an SA or policy for it
vpn_gone() {
	local g
	show_router "$(tid $1)" | tr -d ' \n' | grep -q '"slot":null' || return 1
	[ -z "$(nsx r$1 "$IP" xfrm state)" ] && [ -z "$(nsx r$1 "$IP" xfrm policy | grep -v '^$')" ] || return 1
	# (behind the carrier NAT the gateways' SAs of every such home share
	# one address: the end of the scenario checks that none is left)
	behind_cgnat "$1" && return 0
	for g in $(gws); do
		nsx $g "$IP" xfrm state | grep -q "$(public_ip $1)" && return 1
	done
	return 0
}

