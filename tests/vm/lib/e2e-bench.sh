# Sourced by tests/vm/e2e.sh when E2E_BENCH=N (scripts/bench-e2e.sh sets
# it): after the installations, N times, home 1 asks maintenance for pc1
# and the operator polls pc1's VPNNAT address until a TCP connect succeeds;
# then the request is ended and the tunnel is gone before the next run.
# Times come from the kernel's own event streams in the namespaces
# (`ip xfrm monitor`, `nft monitor`), each line stamped on arrival with
# bash's $EPOCHREALTIME, so the split needs no daemon logging:
#   t0    the router's `routerd request` starts (the button, in effect)
#   tpol  the first XFRM policy added on any gateway  (centerd chose the
#         gateway, stored the request, commanded gatewayd)
#   tsa   both ESP SAs in the router's kernel          (IKEv2 done)
#   tnat  pc1's element added to the router's dnat4 map (centerd woke on
#         the tunnel-up event, answered; routerd applied the NAT)
#   tok   the operator's first successful connect to pc1
# Phases: center = tpol - t0, tunnel = tsa - tpol, NAT = tnat - tsa,
# first connect = tok - tnat. Medians over N. Then, in the same VM, the
# strongSwan benchmark (tests/vm/strongswan/bench.sh: charon -> charon,
# same suite, same "both SAs in the kernel" event) for the ratio of the
# tunnel phase. Prints figures; asserts nothing about time.

N=$E2E_BENCH
say "benchmark: $N maintenance requests of $(tid 1) for pc1"
stamp() { while IFS= read -r l; do echo "$EPOCHREALTIME $l"; done; }
us() { echo "$1" | tr -d . ; } # EPOCHREALTIME -> microseconds
MON=""
start_monitors() {
	local g
	: >$W/mon.gw
	: >$W/mon.rx
	: >$W/mon.nft
	for g in $(gws); do
		nsx "$g" "$IP" xfrm monitor | stamp >>$W/mon.gw &
		MON="$MON $!"
	done
	nsx r1 "$IP" xfrm monitor | stamp >>$W/mon.rx &
	MON="$MON $!"
	nsx r1 nft monitor | stamp >>$W/mon.nft &
	MON="$MON $!"
	sleep 0.5
}
stop_monitors() {
	# shellcheck disable=SC2086
	kill $MON 2>/dev/null
	# the pipelines' readers end with their writers
	pkill -f 'xfrm monitor' 2>/dev/null
	pkill -f 'nft monitor' 2>/dev/null
	MON=""
}
# first_after FILE T0 REGEX [NTH]: stamp of the NTH line after T0 matching
# (the regex sees the line without its stamp; "Updated src ..." is an SA
# completed from a kernel-allocated SPI)
first_after() {
	awk -v t0="$2" -v re="$3" -v nth="${4:-1}" '
		{ l = $0; sub(/^[^ ]+ /, "", l) }
		$1 + 0 >= t0 + 0 && l ~ re && l !~ /^Deleted/ { if (++n == nth) { print $1; exit } }' "$1"
}
: >$W/bench.center
: >$W/bench.tunnel
: >$W/bench.nat
: >$W/bench.connect
: >$W/bench.total
fails=0
for run in $(seq 1 "$N"); do
	start_monitors
	t0=$EPOCHREALTIME
	request 1 pc1 >$W/bench.req 2>&1 &
	rpid=$!
	v=""
	tok=""
	end=$(($(date +%s) + 120))
	while [ "$(date +%s)" -lt $end ]; do
		if [ -z "$v" ]; then
			# the address is known once the router has it (last run's
			# address comes back first, but do not rely on it)
			v=$(ROUTERD 1 hosts 2>/dev/null | awk '$1 == "pc1" && $4 ~ /^[0-9]+\./ {print $4}')
			[ -z "$v" ] && { sleep 0.05; continue; }
		fi
		if nsx operator vpnnat-probe connect --timeout-ms 300 "$v:$PORT" 2>/dev/null | grep -q "TOKEN $(tid 1)/pc1 "; then
			tok=$EPOCHREALTIME
			break
		fi
	done
	wait $rpid
	acc=$(sed -n 's/^acceptance number //p' $W/bench.req)
	sleep 0.3
	stop_monitors
	tpol=$(first_after $W/mon.gw "$t0" '^(Updated )?src 172\.16\.0\.0/24 dst ')
	tsa=$(first_after $W/mon.rx "$t0" '^(Updated )?src .* dst ' 2)
	tnat=$(first_after $W/mon.nft "$t0" "add element ip vpnnat dnat4 .*${v:-none} ")
	if [ -n "$tok" ] && [ -n "$tpol" ] && [ -n "$tsa" ] && [ -n "$tnat" ]; then
		a=$(us "$t0")
		b=$(us "$tpol")
		c=$(us "$tsa")
		d=$(us "$tnat")
		e=$(us "$tok")
		echo $((b - a)) >>$W/bench.center
		echo $((c - b)) >>$W/bench.tunnel
		echo $((d - c)) >>$W/bench.nat
		echo $((e - d)) >>$W/bench.connect
		echo $((e - a)) >>$W/bench.total
		echo "# run $run: total $(((e - a) / 1000)) ms = center $(((b - a) / 1000)) + tunnel $(((c - b) / 1000)) + NAT $(((d - c) / 1000)) + connect $(((e - d) / 1000))"
	else
		fails=$((fails + 1))
		echo "# run $run: incomplete (connect ${tok:-none}, policy ${tpol:-none}, SA ${tsa:-none}, NAT ${tnat:-none}; request ${acc:-none})"
	fi
	[ -n "$acc" ] && nsx server $CENTERD end-request "$acc" >/dev/null 2>&1
	wait_for 60 vpn_gone 1 >/dev/null 2>&1
done
median() { sort -n "$1" | awk '{ a[NR] = $1 } END { if (NR == 0) print 0; else if (NR % 2) print a[(NR + 1) / 2]; else print int((a[NR / 2] + a[NR / 2 + 1]) / 2) }'; }
ms() { awk "BEGIN { printf \"%.1f\", $1 / 1000 }"; }
check "benchmark: $N complete runs ($fails incomplete)" test "$fails" -eq 0
M_TOTAL=$(median $W/bench.total)
M_TUNNEL=$(median $W/bench.tunnel)
# The gateway's policy events are stamped by a reader in another namespace
# and can arrive after the router's SA events (seen: "tunnel" phases below
# zero), so center processing and tunnel setup are reported together.
paste -d' ' $W/bench.center $W/bench.tunnel | awk '{print $1 + $2}' >$W/bench.center_tunnel
M_CT=$(median $W/bench.center_tunnel)
echo "bench: maintenance request -> operator's first TCP connect to the granted host, median of $(wc -l <$W/bench.total) runs"
echo "bench:   total                                                   $(ms "$M_TOTAL") ms"
echo "bench:   center processing + tunnel setup (request -> both SAs at the router) $(ms "$M_CT") ms"
echo "bench:   router NAT install (tunnel up -> dnat element)         $(ms "$(median $W/bench.nat)") ms"
echo "bench:   first connect (NAT in place -> TCP answer)             $(ms "$(median $W/bench.connect)") ms"
M_TUNNEL=$M_CT

# strongSwan in the same VM: tear our scenario down, run the IKE benchmark
if command -v charon >/dev/null 2>&1; then
	cleanup
	trap - EXIT
	sleep 1
	for ns in $(ip netns list | awk '{print $1}'); do ip netns del "$ns"; done
	IKE_BENCH_N=$N sh "$(dirname "$0")/strongswan/bench.sh" >$W/ss.out 2>&1
	grep '^bench:' $W/ss.out
	M_SS=$(sed -n 's/^bench: strongSwan.*median \([0-9.]*\) ms.*/\1/p' $W/ss.out)
	if [ -n "$M_SS" ]; then
		echo "bench: center processing + tunnel setup in the full system vs strongSwan's tunnel setup alone (same VM): $(ms "$M_TUNNEL") ms / $M_SS ms = $(awk "BEGIN { printf \"%.2f\", $M_TUNNEL / 1000 / $M_SS }")"
	else
		echo "bench: strongSwan benchmark gave no median:"
		tail -20 $W/ss.out
	fi
else
	echo "bench: no charon in the VM (run through scripts/bench-e2e.sh) - no strongSwan comparison"
fi
finish
