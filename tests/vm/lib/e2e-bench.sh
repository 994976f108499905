# Sourced by tests/vm/e2e.sh when E2E_BENCH=N (scripts/bench-e2e.sh sets
# it): after the installations, N times, home 1 asks maintenance for pc1
# and the operator polls pc1's VPNNAT address until a TCP connect succeeds;
# then the request is ended and the tunnel is gone before the next run.
# The split comes from the daemons' own log lines (issue 9's line: UTC
# RFC 3339 stamp with milliseconds, taken by the daemon at the moment of
# the event, `terminal=ID acceptance=N`), and all the daemons share the
# VM's one clock with the script's $EPOCHREALTIME, so the phases are
# ordered and add up to the total:
#   t0    the router's `routerd request` starts (the button, in effect)
#   tike  gatewayd: "terminal=T tunnel (...): IKE connecting" (centerd got
#         the request, stored it, chose the gateway and commanded it;
#         gatewayd installed the policies and started IKE)
#   tsa   gatewayd: "terminal=T tunnel (...) slot S: CHILD SA installed"
#         (IKEv2 done; the router installed its SAs before answering)
#   tnat  routerd: "terminal=T acceptance=N maintenance request accepted,
#         ..., NAT installed" (gatewayd's tunnel-up event reached centerd,
#         which answered the router; routerd put pc1 into its NAT)
#   tok   the operator's first successful connect to pc1
# Phases: center = tike - t0, tunnel = tsa - tike, NAT = tnat - tsa,
# first connect = tok - tnat. Also, for the record, centerd's "request
# stored" line splits the center phase in "router -> centerd's database"
# and "gateway chosen and commanded, IKE started". Medians over N. Then,
# in the same VM, the strongSwan benchmark (tests/vm/strongswan/bench.sh:
# charon -> charon, same suite, initiate -> both SAs in the kernel) for
# the ratio of the tunnel phase. Prints figures; asserts nothing about
# time.

N=$E2E_BENCH
say "benchmark: $N maintenance requests of $(tid 1) for pc1"
us() { echo "$1" | tr -d . ; } # EPOCHREALTIME -> microseconds
# stamp_of T0US REGEX FILE...: the stamp (microseconds since the epoch) of
# the first line at or after T0US (taken to the millisecond below, the
# lines' precision) whose text matches REGEX; empty if none. Lines may
# carry a syslog "<N>" in front.
stamp_of() {
	local t0=$1 re=$2
	shift 2
	cat "$@" 2>/dev/null | awk -v t0="$t0" -v re="$re" '
		function usec(s,   y, mo, d, era, yoe, doy, doe, days) {
			y = substr(s, 1, 4) + 0; mo = substr(s, 6, 2) + 0; d = substr(s, 9, 2) + 0
			if (mo <= 2) y--
			era = int(y / 400); yoe = y - era * 400
			doy = int((153 * (mo > 2 ? mo - 3 : mo + 9) + 2) / 5) + d - 1
			doe = yoe * 365 + int(yoe / 4) - int(yoe / 100) + doy
			days = era * 146097 + doe - 719468
			return ((days * 86400 + substr(s, 12, 2) * 3600 + substr(s, 15, 2) * 60 + substr(s, 18, 2)) * 1000 + substr(s, 21, 3)) * 1000
		}
		{ l = $0; sub(/^<[0-9]+>/, "", l) }
		l ~ /^[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T/ && l ~ re {
			t = usec(l)
			if (t >= int(t0 / 1000) * 1000) { if (best == "" || t < best) best = t }
		}
		END { if (best != "") printf "%.0f\n", best }'
}
GWLOGS=""
for g in $(gws); do GWLOGS="$GWLOGS $W/$g/log"; done
T1=$(tid 1)
: >$W/bench.center
: >$W/bench.tunnel
: >$W/bench.nat
: >$W/bench.connect
: >$W/bench.total
: >$W/bench.stored
fails=0
for run in $(seq 1 "$N"); do
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
		if nsx operator vpnnat-probe connect --timeout-ms 300 "$v:$PORT" 2>/dev/null | grep -q "TOKEN $T1/pc1 "; then
			tok=$EPOCHREALTIME
			break
		fi
	done
	wait $rpid
	acc=$(sed -n 's/^acceptance number //p' $W/bench.req)
	a=$(us "$t0")
	# shellcheck disable=SC2086 # one word per log file
	tike=$(stamp_of "$a" "terminal=$T1 tunnel [(].*[)]: IKE connecting" $GWLOGS)
	# shellcheck disable=SC2086
	tsa=$(stamp_of "$a" "terminal=$T1 tunnel [(].*[)] slot [0-9]+: CHILD SA installed" $GWLOGS)
	tnat=$(stamp_of "$a" "terminal=$T1 acceptance=${acc:-none} maintenance request accepted.*NAT installed" $W/r1/log)
	tsto=$(stamp_of "$a" "terminal=$T1 acceptance=${acc:-none} maintenance request stored" $W/center/log)
	if [ -n "$tok" ] && [ -n "$tike" ] && [ -n "$tsa" ] && [ -n "$tnat" ] && [ -n "$tsto" ]; then
		e=$(us "$tok")
		echo $((tike - a)) >>$W/bench.center
		echo $((tsa - tike)) >>$W/bench.tunnel
		echo $((tnat - tsa)) >>$W/bench.nat
		echo $((e - tnat)) >>$W/bench.connect
		echo $((e - a)) >>$W/bench.total
		echo $((tsto - a)) >>$W/bench.stored
		echo "# run $run (request $acc): total $(((e - a) / 1000)) ms = center $(((tike - a) / 1000)) (stored after $(((tsto - a) / 1000))) + tunnel $(((tsa - tike) / 1000)) + NAT $(((tnat - tsa) / 1000)) + connect $(((e - tnat) / 1000))"
	else
		fails=$((fails + 1))
		echo "# run $run: incomplete (connect ${tok:-none}, IKE start ${tike:-none}, CHILD SA ${tsa:-none}, NAT ${tnat:-none}, stored ${tsto:-none}; request ${acc:-none})"
	fi
	[ -n "$acc" ] && nsx server $CENTERD end-request "$acc" >/dev/null 2>&1
	wait_for 60 vpn_gone 1 >/dev/null 2>&1
done
median() { sort -n "$1" | awk '{ a[NR] = $1 } END { if (NR == 0) print 0; else if (NR % 2) print a[(NR + 1) / 2]; else print int((a[NR / 2] + a[NR / 2 + 1]) / 2) }'; }
ms() { awk "BEGIN { printf \"%.1f\", $1 / 1000 }"; }
check "benchmark: $N complete runs ($fails incomplete)" test "$fails" -eq 0
# phases out of order would mean the stamps are not what they claim
check "benchmark: every phase of every run is >= 0" \
	sh -c "! cat $W/bench.center $W/bench.tunnel $W/bench.nat $W/bench.connect | grep -q '^-'"
M_TUNNEL=$(median $W/bench.tunnel)
echo "bench: maintenance request -> operator's first TCP connect to the granted host, median of $(wc -l <$W/bench.total) runs (phases from the daemons' log stamps, one clock)"
echo "bench:   total                                                              $(ms "$(median $W/bench.total)") ms"
echo "bench:   center processing (request -> centerd stored it, chose and commanded gatewayd -> IKE started) $(ms "$(median $W/bench.center)") ms"
echo "bench:     of which router -> request stored in centerd's database         $(ms "$(median $W/bench.stored)") ms"
echo "bench:   tunnel setup (IKE started -> CHILD SA installed at the gateway)    $(ms "$M_TUNNEL") ms"
echo "bench:   router NAT install (tunnel up -> centerd answers -> NAT in the router) $(ms "$(median $W/bench.nat)") ms"
echo "bench:   first connect (NAT in place -> TCP answer)                         $(ms "$(median $W/bench.connect)") ms"
echo "bench:   (medians of each phase; they add up to the total per run, not necessarily as medians)"

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
		echo "bench: tunnel setup in the full system (gatewayd: IKE started -> CHILD SA installed) vs strongSwan charon -> charon (initiate -> CHILD SA installed), same VM: $(ms "$M_TUNNEL") ms / $M_SS ms = $(awk "BEGIN { printf \"%.2f\", $M_TUNNEL / 1000 / $M_SS }")"
	else
		echo "bench: strongSwan benchmark gave no median:"
		tail -20 $W/ss.out
	fi
else
	echo "bench: no charon in the VM (run through scripts/bench-e2e.sh) - no strongSwan comparison"
fi
finish
