#!/bin/bash
# tests/vm/lib/trials.sh — crash trials over the TESTBED topology, sourced
# by tests/vm/crash.sh and tests/vm/powerloss.sh after lib/check.sh and
# lib/topology.sh. Defines `trial PHASE DAEMON POINT[:N] [HOME]` (see
# crash.sh) and the checks it runs; counts TRIALS and TRIALS_OK. A caller
# may define `on_death DAEMON` (run right after the daemon died at its
# point, before it restarts: the power-loss scenario cuts the power there).

for k in $(seq 1 "$HOMES"); do
	check "$(tid $k) installed" wait_for "$E2E_WAIT" installed $k
done
[ "$FAILED" -eq 0 ] || finish

# ---------------------------------------------------------------- daemons
# The topology started every daemon; each is found once by its exact
# command line, then restarted by this script, which keeps its PID.
pid_of() { # the process whose command line starts with $1 (no pgrep in the VM)
	local p
	for p in /proc/[0-9]*; do
		case "$(tr '\0' ' ' <$p/cmdline 2>/dev/null)" in "$1"*)
			echo "${p#/proc/}"
			return 0
			;;
		esac
	done
}
# check_here NAME CMD...: as check, but CMD runs in this shell (it may set
# variables or wait for this shell's children)
check_here() {
	local name=$1
	shift
	if "$@" >$W/check.out 2>&1; then
		PASSED=$((PASSED + 1))
		echo "ok   - $name"
	else
		FAILED=$((FAILED + 1))
		echo "FAIL - $name"
		sed 's/^/       | /' $W/check.out
	fi
}
# wait_bounded PID SECONDS: reap a child, killing it after SECONDS
wait_bounded() {
	local end=$(($(date +%s) + $2))
	[ -n "$1" ] || return 0
	while kill -0 "$1" 2>/dev/null && [ "$(date +%s)" -lt $end ]; do sleep 0.2; done
	kill "$1" 2>/dev/null
	wait "$1" 2>/dev/null
	return 0
}
CPID=$(pid_of "centerd --config $W/center/centerd.toml run")
for g in $(seq 1 "$GATEWAYS"); do eval "GPID_$g=\$(pid_of 'gatewayd --config $W/gw$g/gatewayd.toml')"; done
for k in $(seq 1 "$HOMES"); do eval "RPID_$k=\$(pid_of 'routerd --config $W/r$k/routerd.toml run')"; done

# stop PID: SIGTERM, bounded wait, then SIGKILL
stop() {
	kill "$1" 2>/dev/null || return 0
	local i
	for i in $(seq 1 100); do
		kill -0 "$1" 2>/dev/null || return 0
		sleep 0.1
	done
	kill -9 "$1" 2>/dev/null
	sleep 0.2
}
# start_* [ENV=VALUE]: (re)start a daemon, optionally armed; sets its PID
start_center() {
	# "ip netns exec" and env exec: $! is the daemon itself
	"$IP" netns exec server env RUST_LOG=info "$@" $CENTERD run >>$W/center/log 2>&1 &
	CPID=$!
	wait_for 30 tcp_open operator 172.16.0.10 8080 >/dev/null && wait_for 30 tcp_open operator 172.16.0.10 8443 >/dev/null
}
start_gw() {
	local g=$1
	shift
	"$IP" netns exec gw$g env RUST_LOG=info "$@" gatewayd --config $W/gw$g/gatewayd.toml >>$W/gw$g/log 2>&1 &
	eval "GPID_$g=$!"
	wait_for 30 tcp_open server "172.16.0.$((20 + g))" 9000 >/dev/null
}
start_router() {
	local k=$1
	shift
	"$IP" netns exec r$k env RUST_LOG=info "$@" routerd --config $W/r$k/routerd.toml run >>$W/r$k/log 2>&1 &
	eval "RPID_$k=$!"
	wait_for 30 tcp_open r$k "$LAN_GW" 80 >/dev/null
}
# daemon_pid D: D is center, gwN or rK
daemon_pid() {
	case $1 in
	center) echo "$CPID" ;;
	gw*) eval "echo \$GPID_${1#gw}" ;;
	r*) eval "echo \$RPID_${1#r}" ;;
	esac
}
log_of() { case $1 in center) echo $W/center/log ;; *) echo $W/$1/log ;; esac }
restart() { # restart D [ENV=VALUE]
	local d=$1
	shift
	stop "$(daemon_pid $d)"
	case $d in
	center) start_center "$@" ;;
	gw*) start_gw "${d#gw}" "$@" ;;
	r*) start_router "${d#r}" "$@" ;;
	esac
}
# died_at D POINT: D's process ended by SIGKILL (status 137) at POINT
died_at() {
	local pid rc end=$(($(date +%s) + E2E_WAIT))
	pid=$(daemon_pid "$1")
	while kill -0 "$pid" 2>/dev/null; do
		[ "$(date +%s)" -lt $end ] || {
			echo "$1 (pid $pid) still running after ${E2E_WAIT}s: point $2 not reached"
			return 1
		}
		sleep 0.2
	done
	wait "$pid"
	rc=$?
	grep -q "crash point $2 reached" "$(log_of "$1")" || {
		echo "no 'crash point $2 reached' in $(log_of "$1")"
		return 1
	}
	[ "$rc" -eq 137 ] || {
		echo "$1 exited with status $rc, not 137 (SIGKILL)"
		return 1
	}
}

# ---------------------------------------------------------------- truth vs kernel
ipre='[0-9]+(\.[0-9]+){3}'
pool_pfx=${POOL_CIDR%%.*}.
# the VPNNAT addresses routerd's state file maps (own parts + granted hosts)
router_truth() {
	status_of "$1" | sed -n 's/^\(server\|router\) part VPNNAT: *\([0-9.]*\)$/\2/p'
	ROUTERD "$1" hosts 2>/dev/null | grep -oE "$ipre" | grep "^$pool_pfx"
}
router_gw() { field "$1" 'VPN gateway'; }
sorted() { tr ' ' '\n' | grep -v '^$' | sort -u | tr '\n' ' '; }
# router_consistent K: the router's kernel = its state file
router_consistent() {
	local k=$1 want dnat snat pol
	want=$(router_truth $k | sorted)
	dnat=$(nsx r$k "$NFT" list map ip vpnnat dnat4 | grep -oE "$ipre : $ipre" | awk '{print $1}' | sorted)
	snat=$(nsx r$k "$NFT" list map ip vpnnat snat4 | grep -oE "$ipre : $ipre" | awk '{print $3}' | sorted)
	if [ "$(router_gw $k)" = "-" ]; then
		pol=""
		want_pol=""
	else
		want_pol=$want
		pol=$(nsx r$k "$IP" xfrm policy list dir out | grep -oE "^src $ipre/32" | grep -oE "$ipre" | sorted)
	fi
	[ "$dnat" = "$want" ] && [ "$snat" = "$want" ] && [ "$pol" = "$want_pol" ] && return 0
	echo "r$k state: maps {$want} policies {$want_pol}; kernel: dnat4 {$dnat} snat4 {$snat} out policies {$pol}"
	return 1
}
# addrs_in JSON: the addresses of show-router's "addresses" ([[name, addr], ...])
addrs_in() { echo "$1" | grep -oE '"addresses":\[(\["[^"]*","[0-9.]+"\],?)*\]' | grep -oE "$ipre"; }
# db_addrs_on G: the addresses the database gives gateway G's tunnels
db_addrs_on() {
	local k out
	for k in $(seq 1 "$HOMES"); do
		out=$(show_router "$(tid $k)" | tr -d ' \n')
		echo "$out" | grep -q "\"slot\":{[^}]*\"gateway\":\"$1\"" || continue
		# no request ever: no router address known, no tunnel due
		echo "$out" | grep -q '"requests":\[\]' && continue
		addrs_in "$out"
	done
}
# gateway_consistent G: its tunnel policies and the center's host routes
# via it = the database
gateway_consistent() {
	local g=$1 want pol routes
	want=$(db_addrs_on $g | sorted)
	pol=$(nsx $g "$IP" xfrm policy list dir out | grep -oE "dst $ipre/32" | grep -oE "$ipre" | sorted)
	routes=$(nsx server "$IP" route | grep "via 172.16.0.$((20 + ${g#gw})) " | grep -oE "^$ipre" | grep "^$pool_pfx" | sorted)
	[ "$pol" = "$want" ] && [ "$routes" = "$want" ] && return 0
	echo "$g database {$want}; kernel: out policies {$pol}; center host routes {$routes}"
	return 1
}
# no_double_use: no address in two routers' maps or two gateways; the
# pool's count is what the routers hold; slots within capacity
no_double_use() {
	local all dup held alloc slots
	all=$(for k in $(seq 1 "$HOMES"); do nsx r$k "$NFT" list map ip vpnnat dnat4 | grep -oE "$ipre : " | awk '{print $1}'; done)
	dup=$(echo "$all" | sort | uniq -d)
	[ -z "$dup" ] || {
		echo "VPNNAT address(es) mapped by two routers: $dup"
		return 1
	}
	dup=$(for g in $(gws); do nsx $g "$IP" xfrm policy list dir out | grep -oE "dst $ipre/32" | sort -u; done | sort | uniq -d)
	[ -z "$dup" ] || {
		echo "address(es) routed by two gateways: $dup"
		return 1
	}
	held=$(for k in $(seq 1 "$HOMES"); do addrs_in "$(show_router "$(tid $k)" | tr -d ' \n')"; done | sort -u | wc -l)
	alloc=$(nsx server $CENTERD --json check-config | tr -d ' \n' | grep -oE '"allocated":[0-9]+' | grep -oE '[0-9]+$')
	[ "$held" = "$alloc" ] || {
		echo "pool says $alloc allocated, the routers hold $held"
		return 1
	}
	slots=$(for k in $(seq 1 "$HOMES"); do show_router "$(tid $k)" | tr -d ' \n' | grep -o '"slot":{' ; done | wc -l)
	[ "$slots" -le "$CAP" ]
}
consistent() {
	local k g bad=0
	for k in $(seq 1 "$HOMES"); do router_consistent $k || bad=1; done
	for g in $(gws); do gateway_consistent $g || bad=1; done
	no_double_use || bad=1
	return $bad
}
# open requests at the center (acceptance numbers)
open_requests() { list_requests | awk 'NR > 1 && $3 != "ended" {print $1}'; }
router_has_open() { status_of "$1" | grep -qE "^request +$2 +waiting"; }
reaches() { # K VPNNAT TOKEN
	nsx operator vpnnat-probe connect --timeout-ms 2000 "$2:$PORT" | grep -q "TOKEN $(tid $1)/$3 "
}
clean_ns() {
	[ -z "$(nsx $1 "$IP" xfrm state)" ] && [ -z "$(nsx $1 "$IP" xfrm policy | grep -v '^$')" ] || return 1
	case $1 in r*)
		[ "$(nsx $1 "$NFT" list map ip vpnnat dnat4 | grep -oE "$ipre : $ipre" | wc -l)" -eq 2 ] &&
			[ "$(nsx $1 "$NFT" list set ip vpnnat granted | grep -oE "$ipre" | wc -l)" -eq 2 ] ;;
	esac
}
# baseline: nothing open, nothing held, nothing in any kernel
baseline() {
	local k ns
	[ -z "$(open_requests)" ] || {
		echo "open requests: $(open_requests | tr '\n' ' ')"
		return 1
	}
	nsx server $CENTERD --json check-config | tr -d ' \n' | grep -q "\"allocated\":$((2 * HOMES))," || {
		echo "pool: $(nsx server $CENTERD --json check-config | tr -d ' \n' | grep -oE '"allocated":[0-9]+')"
		return 1
	}
	for k in $(seq 1 "$HOMES"); do
		show_router "$(tid $k)" | tr -d ' \n' | grep -q '"slot":null' || {
			echo "$(tid $k) still holds a slot"
			return 1
		}
		status_of $k | grep -qE '^request +[0-9]+ +waiting' && {
			echo "r$k still has an open request"
			return 1
		}
	done
	for ns in $(gws) $(homes); do
		clean_ns $ns || {
			echo "$ns: kernel state left:"
			nsx $ns "$IP" xfrm state | grep '^src'
			nsx $ns "$IP" xfrm policy | grep '^src'
			return 1
		}
	done
	[ -z "$(nsx server "$IP" route | grep "^$pool_pfx")" ] || {
		echo "host routes left: $(nsx server "$IP" route | grep "^$pool_pfx" | tr '\n' ';')"
		return 1
	}
}
check "baseline before the trials: nothing open, held or in any kernel" wait_for "$E2E_WAIT" baseline

# ---------------------------------------------------------------- driving
request_bg() { # K NAME: routerd's request in the background -> REQ_PID
	request "$1" "$2" >$W/req.out 2>&1 &
	REQ_PID=$!
}
# a request that must succeed (the setup of end-phase trials): sets ACC VPN
request_ok() {
	request "$1" "$2" >$W/req.out 2>&1 || {
		cat $W/req.out
		return 1
	}
	ACC=$(sed -n 's/^acceptance number //p' $W/req.out)
	VPN=$(sed -n "s/^ *$2 [0-9.]* -> VPNNAT //p" $W/req.out)
	wait_for "$E2E_WAIT" reaches "$1" "$VPN" "$2"
}
# the operator's "end" in the UI (a session, then POST /requests/N/end),
# for the center's end-phase points: the crash must hit the running centerd
ui_post() { # PATH BODY [COOKIE]
	nsx operator timeout 30 bash -c "exec 3<>/dev/tcp/172.16.0.10/8443
		printf 'POST $1 HTTP/1.1\r\nHost: 172.16.0.10:8443\r\nOrigin: http://172.16.0.10:8443\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: ${#2}\r\n${3:+Cookie: $3\r\n}Connection: close\r\n\r\n$2' >&3
		exec cat <&3" 2>/dev/null
}
ui_end() { # N
	local cookie csrf
	cookie=$(ui_post /login "password=$OPERATOR_PASSWORD" | tr -d '\r' | sed -n 's/^[Ss]et-[Cc]ookie: \([^;]*\).*/\1/p' | head -1)
	[ -n "$cookie" ] || {
		echo "operator login failed"
		return 1
	}
	# the form's CSRF token, from the dashboard
	csrf=$(nsx operator timeout 30 bash -c "exec 3<>/dev/tcp/172.16.0.10/8443
		printf 'GET / HTTP/1.1\r\nHost: 172.16.0.10:8443\r\nCookie: $cookie\r\nConnection: close\r\n\r\n' >&3
		exec cat <&3" 2>/dev/null | grep -o 'name="csrf" value="[^"]*"' | head -1 | sed 's/.*value="//; s/"$//')
	[ -n "$csrf" ] || {
		echo "no CSRF token on the dashboard"
		return 1
	}
	# an end needs a reason (issue 20, item 6)
	ui_post "/requests/$1/end" "csrf=$csrf&reason=crash+trial" "$cookie" >/dev/null
}
end_all() {
	local n
	for n in $(open_requests); do
		nsx server $CENTERD end-request "$n" >>$W/end.out 2>&1 || tail -3 $W/end.out
	done
}
# factory reset of router K: stop it and forget its state (a new
# installation at the next start)
factory_reset() {
	stop "$(daemon_pid r$1)"
	rm -f $W/r$1/state/*
}

# bash's clock in ms (busybox date has no %N)
now_ms() {
	local us=${EPOCHREALTIME/./}
	echo $((us / 1000))
}

# stamp_ms LINE: the ms of the day of a log line's RFC 3339 stamp
stamp_ms() {
	local t=${1#*T}
	t=${t%%Z*}
	local h=${t%%:*} rest=${t#*:}
	local m=${rest%%:*} sec=${rest#*:}
	echo $(((10#$h * 3600 + 10#$m * 60 + 10#${sec%.*}) * 1000 + 10#${sec#*.}))
}
# rebuilt_after LOG: from routerd's last start to the center's answer to
# its tunnel-lost notice (the gateway rebuilt the tunnel), from its log
rebuilt_after() {
	local start answer
	start=$(grep 'WAN guard on' "$1" | tail -1)
	answer=$(grep 'tunnel-lost notice:' "$1" | tail -1)
	[ -n "$start" ] && [ -n "$answer" ] || return 0
	say "trial $TRIALS: routerd start -> tunnel-lost answered ('${answer##*notice: }'): $(($(stamp_ms "$answer") - $(stamp_ms "$start"))) ms"
}

TRIALS=0
TRIALS_OK=0
# trial PHASE DAEMON POINT[:N] [HOME]: one crash trial
trial() {
	local phase=$1 d=$2 spec=$3 k=${4:-1} point=${3%%:*} f0=$FAILED n acc_now outcome g
	case " ${CRASH_ONLY:-$point} " in *" $point "*) ;; *) return 0 ;; esac
	TRIALS=$((TRIALS + 1))
	say "trial $TRIALS: $phase, $d killed at $spec"
	ACC=""
	VPN=""
	# setup of the phase, then arm, then drive
	case $phase in
	install)
		factory_reset $k
		if [ "$d" = "r$k" ]; then
			start_router $k VPNNAT_CRASH_AT=$spec
		else
			restart $d VPNNAT_CRASH_AT=$spec
			start_router $k
		fi
		;;
	grant)
		restart $d VPNNAT_CRASH_AT=$spec
		request_bg $k pc1
		;;
	end-ui | end)
		# armed before the request: a restart of routerd or gatewayd
		# under a live tunnel would break it (see README, "Reliability")
		restart $d VPNNAT_CRASH_AT=$spec
		check_here "trial $TRIALS setup: $(tid $k) granted pc1" request_ok $k pc1
		case $d in gw*)
			check "trial $TRIALS setup: $(tid $k)'s tunnel is on $d" sh -c \
				"ip netns exec server $CENTERD show-router $(tid $k) | tr -d ' \n' | grep -q '\"gateway\":\"$d\"'" ;;
		esac
		if [ $phase = end-ui ]; then
			ui_end "$ACC" &
		else
			nsx server $CENTERD end-request "$ACC" >>$W/end.out 2>&1 &
		fi
		REQ_PID=$!
		;;
	esac
	check_here "trial $TRIALS: $d died by SIGKILL at $spec" died_at $d $point
	if declare -F on_death >/dev/null; then on_death "$d"; fi
	# restart without the crash point (an armed daemon that never reached
	# its point is stopped first)
	stop "$(daemon_pid $d)"
	local restarted_ms
	restarted_ms=$(now_ms)
	case $d in
	center) start_center ;;
	gw*) start_gw "${d#gw}" ;;
	r*) start_router "${d#r}" ;;
	esac
	# recovery: a restarted gatewayd starts empty; centerd's reconcile
	# gives it back what the database says (centerd does this every
	# reconcile_interval; here at once)
	case $d in gw*) nsx server $CENTERD reconcile >/dev/null 2>&1 ;; esac
	# the client of the interrupted step (its answer does not matter)
	wait_bounded "${REQ_PID:-}" "$E2E_WAIT"
	REQ_PID=""
	check "trial $TRIALS: $(tid $k) installed after the restart" wait_for "$E2E_WAIT" installed $k
	check "trial $TRIALS: kernel state = state file and database in every namespace, nothing double-used" \
		wait_for "$E2E_WAIT" consistent
	# outcome of the trial's request, if the center has one
	acc_now=$(list_requests | awk -v t="$(tid $k)" 'NR > 1 && $2 == t && $3 != "ended" {print $1}' | tail -1)
	if [ -n "$acc_now" ] && router_has_open $k "$acc_now"; then
		VPN=$(ROUTERD $k hosts | awk '$1 == "pc1" {print}' | grep -oE "$ipre" | grep "^$pool_pfx" | head -1)
		outcome="completed"
		check "trial $TRIALS: request $acc_now completed: the operator reaches pc1 at ${VPN:-?}" \
			wait_for "$E2E_WAIT" reaches $k "${VPN:-0.0.0.0}" pc1
		# how long the restart kept the operator out (a restarted routerd
		# has its gateway rebuild the tunnel: the tunnel-lost notice)
		say "trial $TRIALS: the operator reaches pc1 $(($(now_ms) - restarted_ms)) ms after $d restarted (checks included)"
		case $d in r*) rebuilt_after "$(log_of $d)" ;; esac
	elif [ -n "$acc_now" ]; then
		outcome="failed cleanly (router does not hold request $acc_now; ended at the center)"
	else
		outcome="no open request"
	fi
	say "trial $TRIALS outcome: $outcome"
	end_all
	# the home's next request (the user asks again) completes: nothing is
	# wedged, a slot held for the home is given back to it
	check_here "trial $TRIALS: $(tid $k)'s next request completes" request_ok $k pc1
	end_all
	check "trial $TRIALS: after ending every request nothing is left and no address or slot is lost" \
		wait_for "$E2E_WAIT" baseline
	if [ "$FAILED" -eq "$f0" ]; then
		TRIALS_OK=$((TRIALS_OK + 1))
	else
		for f in $(log_of $d) $W/center/log; do
			echo "---- tail of $f"
			tail -n 25 "$f"
		done
		# later trials need a clean start: end what is left, restart all
		end_all
	fi
}


# stop_all: every daemon this script (re)started, before `finish`
stop_all() {
	local g k
	stop "$CPID"
	for g in $(seq 1 "$GATEWAYS"); do stop "$(daemon_pid gw$g)"; done
	for k in $(seq 1 "$HOMES"); do stop "$(daemon_pid r$k)"; done
}
