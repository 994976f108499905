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

. "$(dirname "$0")/lib/ike-topo.sh"
setup_topology
setup_policies $GW

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
