#!/bin/bash
# The idle timeout (issue 19 item 8): `scripts/vm-test tests/vm/idle.sh`.
#
# The TESTBED topology with the real daemons (lib/topology.sh), centerd
# with `[center] idle_timeout_secs = IDLE_SECS`, one home (the gateway
# dials in) and a request for pc1. What counts as traffic is what the
# gateway's kernel saw: the last use of the tunnel's XFRM policies, which
# gatewayd reads and reports to the center (README "Time limits").
#   A. The operator reaches pc1 through the tunnel every few seconds for
#      longer than the idle time: the request stays open, and the center's
#      listing shows the tunnel's last traffic moving (real ESP stamps it).
#   B. Quiet: the center ends the request by itself once the tunnel carried
#      nothing for the idle time (plus gatewayd's 10 s read and centerd's
#      10 s check), audited `expire` "idle: no traffic since ...", and the
#      tunnel is torn down. The figure printed: the last packet -> ended.
# The site owner sees the idle limit the center told with the acceptance
# answer: `routerd hosts`, `routerd status` and /api/status on the home,
# with the last traffic the router itself saw through pc1 after A.
# Variables: those of the topology (INTERFACES.md); defaults ROUTERS=1
# GATEWAYS=1 HOSTS_PER_LAN=1; IDLE_SECS [60] (centerd's minimum).
set -u
TOPO_SERVED_ONLY=1
ROUTERS=${ROUTERS:-1}
GATEWAYS=${GATEWAYS:-1}
HOSTS_PER_LAN=${HOSTS_PER_LAN:-1}
IDLE=${IDLE_SECS:-60}
IDLE_TIMEOUT_SECS=$IDLE
. "$(dirname "$0")/lib/check.sh"
# shellcheck source=lib/topology.sh
. "$(dirname "$0")/lib/topology.sh"

check "$(tid 1) installed" wait_for "$E2E_WAIT" installed 1
request 1 pc1 >$W/r1/req.out 2>&1
ACC=$(sed -n 's/^acceptance number //p' $W/r1/req.out)
VPN=$(sed -n 's/^ *pc1 [0-9.]* -> VPNNAT //p' $W/r1/req.out)
check "$(tid 1)'s request for pc1 accepted (${ACC:-none}, ${VPN:-none})" sh -c "[ -n '$VPN' ] || { cat $W/r1/req.out; false; }"
reach() { nsx operator vpnnat-probe connect --timeout-ms 2000 "$VPN:$PORT" | grep -q "TOKEN $(tid 1)/pc1 "; }
check "the operator reaches pc1 at $VPN" wait_for "$E2E_WAIT" reach
# one number of the request's listing (the newest of home-1: ours)
req_num() {
	nsx server $CENTERD --json list-requests --terminal "$(tid 1)" --limit 1 | tr -d ' \n' |
		grep -o "\"$1\":[0-9]*" | head -1 | cut -d: -f2
}
is_open() { list_requests | awk -v n="$ACC" '$1 == n && $3 != "ended" {ok = 1} END {exit !ok}'; }
ended() { list_requests | awk -v n="$ACC" '$1 == n && $3 == "ended" {ok = 1} END {exit !ok}'; }
check "the center shows request $ACC's idle limit of $IDLE s" sh -c "[ '$(req_num idle_timeout_secs)' = '$IDLE' ]"
now_s() { date +%s; }
# routerd's words for the limit (view::idle_limit)
if [ $((IDLE % 3600)) = 0 ]; then IDLE_TEXT="$((IDLE / 3600)) h"
elif [ $((IDLE % 60)) = 0 ]; then IDLE_TEXT="$((IDLE / 60)) min"
else IDLE_TEXT="$IDLE s"; fi
hosts_show_idle() { ROUTERD 1 hosts | awk '$1 == "pc1"' | grep -qF "idle limit $IDLE_TEXT"; }
check "$(tid 1)'s routerd hosts shows pc1's idle limit ($IDLE_TEXT)" hosts_show_idle
status_shows_idle() { ROUTERD 1 status | grep -E "^request +$ACC " | grep -qF "idle limit $IDLE_TEXT"; }
check "$(tid 1)'s routerd status shows request $ACC's idle limit" status_shows_idle
api_status() { # the JSON of home 1's /api/status, on one line
	nsx r1 timeout 10 bash -c "exec 3<>/dev/tcp/$LAN_GW/80; printf 'GET /api/status HTTP/1.1\r\nHost: $LAN_GW\r\nConnection: close\r\n\r\n' >&3; exec cat <&3" | tr -d ' \r\n'
}
api_idle() { api_status | grep -qF "\"idle_timeout_secs\":$IDLE"; }
check "$(tid 1)'s /api/status carries the idle limit ($IDLE s)" api_idle

# ---------------------------------------------------------------- A. traffic
say "A. the operator reaches pc1 every 5 s for $((IDLE + 15)) s"
t_end=$(($(now_s) + IDLE + 15))
first_seen=""
misses=0
while [ "$(now_s)" -lt "$t_end" ]; do
	reach || misses=$((misses + 1))
	seen=$(req_num last_traffic_at)
	[ -z "$first_seen" ] && [ -n "$seen" ] && [ "$seen" != 0 ] && first_seen=$seen
	sleep 5
done
LAST_SEEN=$(req_num last_traffic_at)
check "request $ACC stays open while the tunnel carries traffic (more than $IDLE s)" is_open
check "every probe reached pc1 ($misses missed)" [ "$misses" = 0 ]
check "the tunnel's last traffic, as the gateway reports it, moved (${first_seen:-none} -> ${LAST_SEEN:-none})" \
	sh -c "[ -n '$first_seen' ] && [ -n '$LAST_SEEN' ] && [ '$LAST_SEEN' -gt '$first_seen' ]"
check "its last traffic is recent (${LAST_SEEN:-none}, now $(now_s))" sh -c "[ -n '$LAST_SEEN' ] && [ \$(( \$(date +%s) - $LAST_SEEN )) -le 25 ]"
# the router's own observation (its counters, read by the page or the
# health watch every 30 s): the last traffic through pc1 and the end if quiet
router_last() { api_status | grep -o '"last_traffic":[0-9]*' | head -1 | cut -d: -f2; }
router_saw() {
	# (api_status drops the spaces)
	[ -n "$(router_last)" ] && api_status | grep -qF "idlelimit${IDLE_TEXT// /};lasttraffic"
}
check "$(tid 1)'s LAN page data shows the last traffic it saw through pc1 and the end if quiet" wait_for 40 router_saw
ROUTER_LAST=$(router_last)

# ---------------------------------------------------------------- B. quiet
say "B. quiet: nothing through the tunnel"
t_quiet=$(now_s)
check "the center ends request $ACC by itself once the tunnel was idle for $IDLE s" wait_for $((IDLE + 60)) ended
t_ended=$(now_s)
LAST=$(nsx server $CENTERD --json list-requests --terminal "$(tid 1)" --limit 1 | tr -d ' \n' | grep -o '"ended_at":[0-9]*' | cut -d: -f2)
check "not before the idle time had passed since the last traffic (${LAST_SEEN:-?} -> ended ${LAST:-?})" \
	sh -c "[ -n '$LAST' ] && [ -n '$LAST_SEEN' ] && [ \$(($LAST - $LAST_SEEN)) -ge $IDLE ]"
idle_audited() {
	nsx server $CENTERD audit --action expire --terminal "$(tid 1)" --limit 5 | grep -F "idle: no traffic since" | grep -q "$ACC"
}
check "audited: expire by centerd, \"idle: no traffic since ...\"" idle_audited
check "the tunnel is torn down (slot free, no SA or policy at the router or the gateway)" wait_for "$E2E_WAIT" vpn_gone 1
not_reached() { ! reach; }
check "pc1 is no longer reachable" not_reached
echo "# router's own last traffic seen: ${ROUTER_LAST:-none} (gateway's: ${LAST_SEEN:-none})"
echo "# idle timeout $IDLE s: last traffic -> ended: $((${LAST:-0} - ${LAST_SEEN:-0})) s; quiet from $((t_quiet - ${LAST_SEEN:-t_quiet})) s after the last report, ended $((t_ended - t_quiet)) s into the quiet"
finish
