#!/bin/sh
# routerd as PID 1, inside the test VM:
#   VPNNAT_VM_EXTRA=dnsmasq scripts/vm-test router/tests/vm/pid1.sh
# It runs in fresh PID, network and mount namespaces (so it really is PID 1
# there and touches nothing of the VM), with two dummy links as WAN and LAN,
# and checks: mounts, lo/WAN/LAN up with their addresses and the default
# route, the VPNNAT nft table, the LAN page, a supervised dnsmasq that is
# restarted after being killed, and a clean power-off on SIGPWR (reboot(2)
# in a PID namespace ends its init with SIGINT, seen by the parent).
set -eu

fail() {
	echo "FAIL: $*"
	exit 1
}
ok() { echo "ok: $*"; }

command -v dnsmasq >/dev/null || fail "dnsmasq missing (VPNNAT_VM_EXTRA=dnsmasq)"
DNSMASQ=$(command -v dnsmasq)
work=/tmp/routerd-pid1
rm -rf "$work"
mkdir -p "$work/state"
# a random Secret(ID): routerd refuses example and low-entropy ones
SECRET=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
cat >"$work/routerd.toml" <<CONF
terminal_id = "router-1"
center_url = "http://127.0.0.1:9"
factory_secret = "$SECRET"
state_dir = "$work/state"
lease_file = "$work/leases"
dns = false
retry_max_secs = 5
[wan]
interface = "wan0"
address = "198.51.100.101/24"
gateway = "198.51.100.1"
[lan]
interface = "lan0"
address = "192.168.1.1/24"
[hosts]
pc1 = "192.168.1.10"
[[helper]]
name = "dnsmasq"
command = ["$DNSMASQ", "--keep-in-foreground", "--user=root", "--no-resolv", "--no-hosts",
           "--interface=lan0", "--bind-interfaces", "--dhcp-range=192.168.1.100,192.168.1.150,1h",
           "--dhcp-leasefile=$work/leases", "--pid-file=$work/dnsmasq.pid", "--port=0"]
CONF

# sh becomes PID 1 of the new namespaces, makes the links, then execs
# routerd (which stays PID 1).
unshare --pid --fork --net --mount sh -c '
	ip link add wan0 type dummy && ip link add lan0 type dummy &&
	exec /usr/bin/routerd --config '"$work"'/routerd.toml run' >"$work/log" 2>&1 &
outer=$!

pid=
i=0
while [ $i -lt 100 ]; do
	for p in $(pidof routerd 2>/dev/null); do
		# the namespace's PID 1 has NSpid "<outer pid> 1"
		if grep -q '^NSpid:.*[[:space:]]1$' "/proc/$p/status" 2>/dev/null; then pid=$p; fi
	done
	[ -n "$pid" ] && break
	sleep 0.1
	i=$((i + 1))
done
[ -n "$pid" ] || { cat "$work/log"; fail "routerd did not start as PID 1"; }
ok "routerd is PID 1 of its namespace (pid $pid outside)"

inns() { nsenter --net="/proc/$pid/ns/net" --mount="/proc/$pid/ns/mnt" "$@"; }

# Wait for the LAN page: everything before it is set up by then.
i=0
until inns wget -q -O "$work/page.html" http://192.168.1.1/ 2>/dev/null; do
	i=$((i + 1))
	[ $i -lt 100 ] || { cat "$work/log"; fail "LAN page did not come up"; }
	sleep 0.2
done
grep -q "Ask for maintenance" "$work/page.html" || fail "page content"
ok "LAN page answers on 192.168.1.1:80"

addrs=$(inns /usr/sbin/ip -o -4 addr show)
echo "$addrs" | grep -q "lo .*127.0.0.1/8" || fail "lo: $addrs"
echo "$addrs" | grep -q "wan0 .*198.51.100.101/24" || fail "wan0: $addrs"
echo "$addrs" | grep -q "lan0 .*192.168.1.1/24" || fail "lan0: $addrs"
inns /usr/sbin/ip link show lo | grep -q "UP" || fail "lo not up"
inns /usr/sbin/ip route show default | grep -q "via 198.51.100.1 dev wan0" || fail "default route"
ok "lo, WAN and LAN up with their addresses; default route"

for m in " /proc proc" " /sys sysfs" " /dev devtmpfs" " /run tmpfs"; do
	grep -q "$m" "/proc/$pid/mounts" || fail "not mounted:$m"
done
ok "proc, sys, dev, run mounted"

inns /usr/sbin/nft list table ip vpnnat >"$work/nft" || fail "no vpnnat table"
grep -q "meta ipsec exists drop" "$work/nft" || fail "filter rules"
ok "VPNNAT table programmed (nothing granted: the tunnel reaches nothing)"

dpid=
i=0
while [ $i -lt 50 ]; do
	dpid=$(pidof dnsmasq || true)
	[ -n "$dpid" ] && break
	sleep 0.2
	i=$((i + 1))
done
[ -n "$dpid" ] || { cat "$work/log"; fail "dnsmasq not started"; }
ok "dnsmasq supervised (pid $dpid)"
kill -9 "$dpid"
new=
i=0
while [ $i -lt 50 ]; do
	new=$(pidof dnsmasq || true)
	[ -n "$new" ] && [ "$new" != "$dpid" ] && break
	sleep 0.2
	i=$((i + 1))
done
[ -n "$new" ] && [ "$new" != "$dpid" ] || { cat "$work/log"; fail "dnsmasq not restarted"; }
ok "dnsmasq restarted after kill -9 (pid $new)"

kill -PWR "$pid"
i=0
while kill -0 "$outer" 2>/dev/null; do
	i=$((i + 1))
	[ $i -lt 100 ] || { cat "$work/log"; fail "no power-off within 20 s"; }
	sleep 0.2
done
status=0
wait "$outer" || status=$?
pidof dnsmasq >/dev/null && fail "dnsmasq survived the power-off"
grep -q "shutting down" "$work/log" || { cat "$work/log"; fail "no clean shutdown in the log"; }
grep -q "$(echo "$SECRET" | cut -c1-16)" "$work/log" && fail "secret in the log"
ok "clean power-off on SIGPWR (namespace ended, status $status)"
echo "PASS"
