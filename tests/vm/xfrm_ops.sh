#!/bin/sh
# XFRM operations of the datapath library against a kernel with ESP (VM):
# SPI allocation and completing the larval SA, AES-128 and AES-256, ESP-in-UDP,
# wide replay windows, counters, kernel expire and acquire events.
set -u
. "$(dirname "$0")/lib/check.sh"

A=198.51.100.21
B=203.0.113.101
K128=0x$(printf '33%.0s' $(seq 16))c1c2c3c4
K256=0x$(printf '44%.0s' $(seq 32))d1d2d3d4
must "$IP" netns add x
must nsx x vpnnatctl link lo up
# Larval states made by the acquire test below expire after this many seconds.
must nsx x sh -c 'echo 1 > /proc/sys/net/core/xfrm_acq_expires'
# A dummy link, not lo: lo has disable_xfrm=1, so traffic routed over it
# never consults the policies.
must nsx x "$IP" link add d0 type dummy
must nsx x vpnnatctl link d0 up
must nsx x vpnnatctl addr add d0 $A/24

spi=$(nsx x vpnnatctl sa allocspi --src $B --dst $A)
check "allocspi returns an SPI" sh -c "echo '$spi' | grep -Eq '^0x[0-9a-f]{8}$'"
check "larval SA exists for the allocated SPI" sh -c "$IP netns exec x $IP xfrm state | grep -q 'spi $spi'"
# A second allocation gives another SPI.
spi2=$(nsx x vpnnatctl sa allocspi --src $B --dst $A)
check "second allocspi gives a different SPI" test "$spi" != "$spi2"

check "AES-256-GCM SA with a 1024-packet replay window" \
	nsx x vpnnatctl sa add --src $B --dst $A --spi 0x3001 --key "$K256" --replay-window 1024
check "kernel shows the ESN replay attribute" sh -c "$IP netns exec x $IP xfrm state get src $B dst $A proto esp spi 0x3001 | grep -q 'replay-window 1024\|window 1024'"
check "AES-128-GCM SA with ESP-in-UDP 4500:4500" \
	env VPNNAT_SA_KEY="$K128" "$IP" netns exec x vpnnatctl sa add --src $A --dst $B --spi 0x3002 --encap 4500:4500
check "listing shows the encapsulation" sh -c "$IP netns exec x vpnnatctl sa list | grep 'spi 0x00003002' | grep -q 'encap 4500:4500'"
check "key given by environment is not in the listing" sh -c "! $IP netns exec x vpnnatctl sa list | grep -q 3333"
check_not "a 32-byte key (no salt) is refused before reaching the kernel" \
	nsx x vpnnatctl sa add --src $A --dst $B --spi 0x3003 --key 0x$(printf '55%.0s' $(seq 32))
check_not "adding an existing SA fails" \
	nsx x vpnnatctl sa add --src $B --dst $A --spi 0x3001 --key "$K256"
check "get reads counters" sh -c "$IP netns exec x vpnnatctl sa get --dst $A --spi 0x3001 | grep -q 'packets 0 bytes 0'"
check "delete removes it" nsx x vpnnatctl sa del --dst $A --spi 0x3001
check_not "get after delete fails" nsx x vpnnatctl sa get --dst $A --spi 0x3001

# Expire events: soft after 1 s, hard after 2 s.
nsx x vpnnatctl events --count 2 >/tmp/expire.log 2>&1 &
ev=$!
sleep 0.5
must nsx x vpnnatctl sa add --src $B --dst $A --spi 0x3010 --key "$K256" --soft-secs 1 --hard-secs 2
i=0
while kill -0 $ev 2>/dev/null && [ $i -lt 60 ]; do sleep 0.2; i=$((i + 1)); done
kill $ev 2>/dev/null
check "soft expire event" grep -q 'Expire.*spi: 12304.*hard: false' /tmp/expire.log
check "hard expire event" grep -q 'Expire.*spi: 12304.*hard: true' /tmp/expire.log
check_not "hard-expired SA is gone" nsx x vpnnatctl sa get --dst $A --spi 0x3010

# Acquire: a policy with no SA, then traffic that matches it.
nsx x vpnnatctl events --count 1 >/tmp/acquire.log 2>&1 &
ev=$!
sleep 0.5
must nsx x vpnnatctl route add 10.64.0.0/16 --dev d0
# Another peer than the SAs above, so no SA matches the template.
must nsx x vpnnatctl policy add --dir out --src $A/32 --dst 10.64.0.7/32 --tmpl-src $A --tmpl-dst 203.0.113.102 --reqid 0x56500007
nsx x vpnnat-probe connect 10.64.0.7:7000 --timeout-ms 500 >/dev/null 2>&1
i=0
while kill -0 $ev 2>/dev/null && [ $i -lt 30 ]; do sleep 0.2; i=$((i + 1)); done
kill $ev 2>/dev/null
check "acquire event names the policy, the peer and the reqid" grep -q 'Acquire.*10.64.0.7/32.*tmpl_dst: 203.0.113.102, reqid: 1448083463' /tmp/acquire.log

check "flush removes all the project's objects" nsx x vpnnatctl flush
sleep 2 # let the kernel's larval acquire state expire
check "no SA left" test -z "$(nsx x "$IP" xfrm state)"
check "no policy left" test -z "$(nsx x "$IP" xfrm policy)"
"$IP" netns del x
finish
