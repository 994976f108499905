#!/bin/sh
# Smoke test of the vm-test VM: is it fit for the VPNNAT tests?
#
#   VMTEST_PROBE="it's here" scripts/vm-test tests/vm/smoke.sh
#
# Prints one line per check ("ok - ..." / "FAIL - ..." with the command's
# output indented below a failure) and exits non-zero if any check failed.
# Plain POSIX sh: runs under bash-as-sh (the VM's /bin/sh) and busybox sh.

pass=0
fail=0
out=/tmp/smoke.$$.out

# check DESCRIPTION COMMAND [ARGS...]
check() {
	desc=$1
	shift
	if "$@" >"$out" 2>&1; then
		pass=$((pass + 1))
		echo "ok - $desc"
	else
		fail=$((fail + 1))
		echo "FAIL - $desc"
		sed 's/^/    /' "$out"
	fi
}

# 36-byte rfc4106 key: 32 bytes AES-256 + 4 bytes salt (0x + 72 hex digits)
KEY_AB=0x0102030405060708091011121314151617181920212223242526272829303132a1a2a3a4
KEY_BA=0x4142434445464748495051525354555657585960616263646566676869707172b1b2b3b4

cleanup() {
	ip netns del smoke-a 2>/dev/null
	ip netns del smoke-b 2>/dev/null
	ip netns del smoke-x 2>/dev/null
	rm -f "$out"
}
trap cleanup EXIT

env_probe() {
	if [ -z "${VMTEST_PROBE+x}" ]; then
		echo "VMTEST_PROBE is not set; run: VMTEST_PROBE=value scripts/vm-test tests/vm/smoke.sh"
		return 1
	fi
	echo "VMTEST_PROBE=$VMTEST_PROBE"
}
check "environment variable passed from the host (VMTEST_PROBE=${VMTEST_PROBE-})" env_probe

iproute2_ip() {
	ip -V | grep -q iproute2 && ip xfrm state list >/dev/null
}
check "ip on PATH is iproute2's (has xfrm)" iproute2_ip

check "ip netns add" ip netns add smoke-x

xfrm_sa() {
	ip -n smoke-x xfrm state add src 198.51.100.1 dst 198.51.100.2 \
		proto esp spi 0x1001 reqid 1 mode tunnel \
		aead 'rfc4106(gcm(aes))' "$KEY_AB" 128 || return 1
	ip -n smoke-x xfrm state list | grep -q 'rfc4106(gcm(aes))' || return 1
	ip -n smoke-x xfrm policy add src 172.16.0.0/24 dst 10.64.0.1/32 dir out \
		tmpl src 198.51.100.1 dst 198.51.100.2 proto esp reqid 1 mode tunnel
}
check "xfrm: tunnel-mode ESP SA rfc4106(gcm(aes)) with 36-byte key + policy in a namespace" xfrm_sa

check "nft list ruleset" nft list ruleset

nft_nat_map() {
	ip netns exec smoke-x nft -f - <<'EOF' || return 1
table ip smoke {
	map m {
		type ipv4_addr : ipv4_addr
		elements = { 10.64.0.1 : 192.168.1.10 }
	}
	chain pre {
		type nat hook prerouting priority dstnat; policy accept;
		meta ipsec exists dnat ip to ip daddr map @m
	}
	chain post {
		type nat hook postrouting priority srcnat; policy accept;
		ct status dnat accept
	}
}
EOF
	ip netns exec smoke-x nft list table ip smoke | grep -Eq 'dnat (ip )?to ip daddr map @m'
}
check "nft: ip table, nat chain with 'dnat ip to ip daddr map @m'" nft_nat_map

nft_autoload() {
	ip netns exec smoke-x nft add chain ip smoke f '{ type filter hook forward priority 0; }' &&
		ip netns exec smoke-x nft add rule ip smoke f limit rate 100/second accept
}
check "nft: module autoload on demand (limit)" nft_autoload

veth_ns() {
	ip netns add smoke-a && ip netns add smoke-b || return 1
	ip link add va netns smoke-a type veth peer name vb netns smoke-b || return 1
	ip -n smoke-a addr add 198.51.100.1/24 dev va
	ip -n smoke-b addr add 198.51.100.2/24 dev vb
	ip -n smoke-a link set va up && ip -n smoke-b link set vb up
	ip -n smoke-a link set lo up && ip -n smoke-b link set lo up
	ip netns exec smoke-a ping -c 1 -W 5 198.51.100.2
}
check "veth pair between two namespaces, ping" veth_ns

# Transport-mode ESP between the two namespaces; the SA counters must grow.
esp_ping() {
	for ns in smoke-a smoke-b; do
		ip -n $ns xfrm state add src 198.51.100.1 dst 198.51.100.2 proto esp \
			spi 0x2001 reqid 2 mode transport aead 'rfc4106(gcm(aes))' "$KEY_AB" 128 || return 1
		ip -n $ns xfrm state add src 198.51.100.2 dst 198.51.100.1 proto esp \
			spi 0x2002 reqid 2 mode transport aead 'rfc4106(gcm(aes))' "$KEY_BA" 128 || return 1
	done
	ip -n smoke-a xfrm policy add src 198.51.100.1 dst 198.51.100.2 dir out \
		tmpl proto esp reqid 2 mode transport || return 1
	ip -n smoke-a xfrm policy add src 198.51.100.2 dst 198.51.100.1 dir in \
		tmpl proto esp reqid 2 mode transport || return 1
	ip -n smoke-b xfrm policy add src 198.51.100.2 dst 198.51.100.1 dir out \
		tmpl proto esp reqid 2 mode transport || return 1
	ip -n smoke-b xfrm policy add src 198.51.100.1 dst 198.51.100.2 dir in \
		tmpl proto esp reqid 2 mode transport || return 1
	ip netns exec smoke-a ping -c 2 -W 5 198.51.100.2 || return 1
	ip -n smoke-b -s xfrm state list spi 0x2001 | tee /dev/stderr |
		grep -Eq '^[[:space:]]+[1-9][0-9]*\(bytes\), [1-9][0-9]*\(packets\)'
}
check "ESP transport mode between namespaces: ping passes, SA counters grow" esp_ping

bins() {
	n=0
	for f in /usr/bin/*; do
		if [ -f "$f" ] && [ ! -L "$f" ] && [ -x "$f" ]; then
			echo "${f#/usr/bin/}"
			n=$((n + 1))
		fi
	done
	echo "$n project binaries"
}
check "project binaries in /usr/bin: $(bins | tail -n 1)" bins

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
