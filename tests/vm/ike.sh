#!/bin/sh
# IKEv2 with real ESP: our initiator (gateway) -> our responder (router).
# Run with `scripts/vm-test tests/vm/ike.sh`.
#
#   ctr (172.16.0.10) --- gw --- inet --- r1 ---- pc0 192.168.1.10 (mapped to 10.64.0.5)
#        center LAN       |  IKE + ESP      |
#                  198.51.100.21     203.0.113.101
#
# Also: replayed and truncated IKE (from a wire tap) rejected with no SA
# change; IKE SA rekeys by each end and a CHILD rekey during one TCP transfer
# (byte count, new SPIs); inbound SPIs from the kernel's ALLOCSPI.
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

# Another router's identity: a router's identity is its address plus its
# own PSK (gatewayd looks the tunnel up by the router's address, each with
# its per-router PSK). The gateway's tunnel for router B - B's PSK, and the
# gateway's ID as configured for B - aimed at router A's address fails; A's
# responder answers nothing it could use.
n0=$(grep -c '^REJECTED 198.51.100.21 ' /tmp/r1.out)
VPNNAT_IKE_PSK='router B: its own per-router key' "$IP" netns exec gw vpnnat-ike initiate --local $GW --peer $R1 \
	--local-ts $CENTER --remote-ts $VPNNAT/32 --reqid $REQID --id gw1-for-router-b.center.example \
	--exit-on-down >/tmp/gw-b.out 2>/tmp/gw-b.log &
OTHER=$!
check "another router's identity (router B's PSK at router A): AUTHENTICATION_FAILED" \
	wait_for /tmp/gw-b.out '^DOWN 203.0.113.101 AuthenticationFailed' 20
check "another router's identity: responder logged the rejection" \
	wait_count /tmp/r1.out '^REJECTED 198.51.100.21 ' $((n0 + 1)) 5
gone $OTHER 5
check "another router's identity: no SA on the gateway" no_sa gw
check "another router's identity: no SA on the router" no_sa r1
check "another router's identity: no key in any log or output" sh -c \
	"! grep -q 'its own per-router key\|per-router secret' /tmp/gw-b.out /tmp/gw-b.log /tmp/r1.out /tmp/r1.log"

# --- the tunnel --------------------------------------------------------------
# A wire tap on the path (the "internet" namespace) keeps the initiator's
# IKE_SA_INIT and IKE_AUTH as sent, for the replay and truncation checks.
nsx inet vpnnat-ike tool capture --iface i1 --src $GW --dst $R1 --dport 500 --count 2 \
	--out /tmp/cap --timeout-secs 60 >/tmp/cap.out 2>&1 &
check "wire tap ready" wait_for /tmp/cap.out '^READY' 5
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
check "inbound SPIs reserved by the kernel (ALLOCSPI range 0xc0000000-0xcfffffff)" sh -c \
	"grep -h '^CHILD_UP' /tmp/gw.out /tmp/r1.out | awk '{ print \$3 }' | grep -c '^0xc[0-9a-f]\{7\}\$' | grep -qx 2"
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

# --- replayed and truncated IKE from the gateway's address: rejected --------
# (right after a rekey, so that no soft expire falls into this section)
check "wire tap caught IKE_SA_INIT and IKE_AUTH" wait_for /tmp/cap.out '^CAPTURED 2 ' 5
SAS_R1=$(spis r1)
SAS_GW=$(spis gw)
NUP_R1=$(grep -c '^CHILD_UP' /tmp/r1.out)
rejections() { grep -c "^REJECTED $GW " /tmp/r1.out; }
# send_raw FILE [TRUNCATE]: the bytes from the gateway's address (any port).
send_raw() { nsx gw vpnnat-ike tool udp-send --src $GW --dst $R1:500 --file "$1" ${2:+--truncate $2} >/dev/null; }
n0=$(rejections)
send_raw /tmp/cap.1
check "replayed IKE_SA_INIT (tunnel up): rejected by the responder" wait_count /tmp/r1.out "^REJECTED $GW replayed IKE_SA_INIT" 1 5
send_raw /tmp/cap.1 20
check "truncated IKE_SA_INIT (20 bytes, shorter than a header): rejected as malformed" wait_count /tmp/r1.out "^REJECTED $GW malformed message" 1 5
LEN2=$(wc -c </tmp/cap.2)
send_raw /tmp/cap.2 $((LEN2 - 17))
check "truncated IKE_AUTH ($((LEN2 - 17)) of $LEN2 bytes): rejected as malformed" wait_count /tmp/r1.out "^REJECTED $GW malformed message" 2 5
send_raw /tmp/cap.1 $(($(wc -c </tmp/cap.1) - 1))
check "IKE_SA_INIT short by one byte: rejected as malformed" wait_count /tmp/r1.out "^REJECTED $GW malformed message" 3 5
check "4 rejections logged, nothing else" test "$(rejections)" -eq $((n0 + 4))
check "after replay/truncation: no SA added or changed on the router" test "$(spis r1)" = "$SAS_R1"
check "after replay/truncation: no SA added or changed on the gateway" test "$(spis gw)" = "$SAS_GW"
check "after replay/truncation: no new CHILD SA, still one UP at the router" sh -c \
	"grep -c '^CHILD_UP' /tmp/r1.out | grep -qx $NUP_R1 && grep -c '^UP' /tmp/r1.out | grep -qx 1"
check "TCP through the tunnel after the bogus packets" reach

# --- IKE SA rekeys (both ends) and a CHILD rekey during one TCP transfer ---
nsx pc0 vpnnat-ike tool tcp-sink --listen 0.0.0.0:7001 --timeout-secs 120 >/tmp/sink.out 2>&1 &
SINK=$!
check "TCP sink listening on pc0" wait_for /tmp/sink.out '^LISTENING' 5
IKE0=$(last_ike /tmp/gw.out)
check "both ends agree on the IKE SA ($IKE0)" test -n "$IKE0" -a "$IKE0" = "$(last_ike /tmp/r1.out)"
SAS0=$(spis gw)
NCHILD=$(grep -c '^CHILD_UP' /tmp/gw.out)
nsx ctr vpnnat-ike tool tcp-send --to $VPNNAT:7001 --secs 24 --rate-kbps 128 >/tmp/send.out 2>&1 &
SEND=$!
check "transfer running" wait_for /tmp/send.out '^PROGRESS 3s' 15
kill -USR1 $INIT # the initiator rekeys the IKE SA
check "IKE SA rekeyed by the initiator (new SPIs at the gateway)" wait_count /tmp/gw.out '^IKE_SA ' 2 10
check "the router moved to the same new IKE SA" wait_count /tmp/r1.out '^IKE_SA ' 2 5
IKE1=$(last_ike /tmp/gw.out)
check "new IKE SA: both SPIs differ from the old ($IKE0 -> $IKE1)" sh -c \
	"test '$IKE1' = '$(last_ike /tmp/r1.out)' && test '${IKE0% *}' != '${IKE1% *}' && test '${IKE0#* }' != '${IKE1#* }'"
kill -USR2 $INIT # a CHILD SA rekey over the new IKE SA
check "CHILD SA rekeyed over the new IKE SA" wait_count /tmp/gw.out '^CHILD_UP' $((NCHILD + 1)) 10
kill -USR1 $RESP # the responder rekeys the IKE SA (it becomes the initiator of the new one)
check "IKE SA rekeyed by the responder" wait_count /tmp/r1.out '^IKE_SA ' 3 10
check "the gateway moved to the responder's new IKE SA" wait_count /tmp/gw.out '^IKE_SA ' 3 5
IKE2=$(last_ike /tmp/r1.out)
check "third IKE SA agreed ($IKE2)" sh -c "test '$IKE2' = '$(last_ike /tmp/gw.out)' && test '$IKE2' != '$IKE1'"
wait $SEND
RC=$?
cat /tmp/send.out | tail -1
check "transfer completed on one connection across the rekeys (exit $RC)" test $RC -eq 0
SENT=$(sed -n 's/^SENT \([0-9]*\) RECEIVED [0-9]*$/\1/p' /tmp/send.out)
RCVD=$(sed -n 's/^SENT [0-9]* RECEIVED \([0-9]*\)$/\1/p' /tmp/send.out)
gone $SINK 5
SUNK=$(sed -n 's/^RECEIVED \([0-9]*\) .*/\1/p' /tmp/sink.out)
check "byte count: the sink got every byte sent (sent ${SENT:-?}, sink ${SUNK:-?})" \
	test -n "$SENT" -a "${SENT:-0}" -gt 0 -a "$SENT" = "$RCVD" -a "$SENT" = "$SUNK"
check "new CHILD SPIs: none of the SAs of before the transfer is left ($SAS0 -> $(spis gw))" disjoint "$SAS0" "$(spis gw)"
check "after the rekeys: 2 SAs on the gateway" test "$(sa_count gw)" -eq 2
check "after the rekeys: 2 SAs on the router" test "$(sa_count r1)" -eq 2
check "tunnel never went down during the rekeys" sh -c "! grep -q '^DOWN' /tmp/gw.out /tmp/r1.out"
check "TCP after the rekeys" reach

# --- teardown: INFORMATIONAL DELETE ------------------------------------------
kill -TERM $INIT
check "initiator exits after DELETE" gone $INIT 10
check "initiator printed STOPPED" grep -q '^STOPPED' /tmp/gw.out
check "gateway reported the tunnel closed" grep -q '^DOWN 203.0.113.101 Closed' /tmp/gw.out
check "router saw the DELETE" wait_for /tmp/r1.out '^DOWN 198.51.100.21 DeletedByPeer' 5
check "gateway: no SA left" no_sa gw
check "router: no SA left" no_sa r1
check_not "pc0 unreachable without SAs" nsx ctr vpnnat-probe connect $VPNNAT:7000 --timeout-ms 1500
# The responder still runs: the captured IKE_SA_INIT + IKE_AUTH replayed
# from the gateway's address must not bring a tunnel back.
n0=$(rejections)
send_raw /tmp/cap.1
sleep 0.5
send_raw /tmp/cap.2
check "replayed IKE_AUTH after the teardown: rejected" wait_count /tmp/r1.out "^REJECTED $GW " $((n0 + 1)) 5
grep "^REJECTED $GW " /tmp/r1.out | tail -1
sleep 1
check "replay after the teardown: no SA on the router" no_sa r1
check "replay after the teardown: no tunnel up again" sh -c "grep -c '^UP' /tmp/r1.out | grep -qx 1"
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
