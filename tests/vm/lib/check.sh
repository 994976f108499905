# Shared helpers for the VM scenarios (POSIX sh; sourced).
# One line per check; `finish` prints "N passed, N failed, N skipped" and
# sets the status.

IP=/usr/sbin/ip
[ -x "$IP" ] || IP=/sbin/ip
NFT=/usr/sbin/nft
[ -x "$NFT" ] || NFT=$(command -v nft)
PASSED=0
FAILED=0
SKIPPED=0

# uptime_cs: the VM's uptime in centiseconds (busybox sh has no SECONDS).
uptime_cs() {
	read -r _ck_up _ </proc/uptime
	echo "${_ck_up%.*}${_ck_up#*.}"
}

# took T0: " [N.N s]" when a check took a second or more since T0 (from
# uptime_cs), so that a log shows where a scenario's time goes.
took() {
	_ck_cs=$(($(uptime_cs) - $1))
	[ "$_ck_cs" -ge 100 ] && printf ' [%d.%d s]' $((_ck_cs / 100)) $((_ck_cs % 100 / 10))
}

# check NAME CMD...: run CMD, count the result.
check() {
	name=$1
	shift
	_ck_t0=$(uptime_cs)
	if out=$("$@" 2>&1); then
		PASSED=$((PASSED + 1))
		echo "ok   - $name$(took "$_ck_t0")"
	else
		FAILED=$((FAILED + 1))
		echo "FAIL - $name$(took "$_ck_t0")"
		echo "$out" | sed 's/^/       | /'
	fi
}

# check_not NAME CMD...: CMD must fail.
check_not() {
	name=$1
	shift
	_ck_t0=$(uptime_cs)
	if out=$("$@" 2>&1); then
		FAILED=$((FAILED + 1))
		echo "FAIL - $name (succeeded but must not)$(took "$_ck_t0")"
		echo "$out" | sed 's/^/       | /'
	else
		PASSED=$((PASSED + 1))
		echo "ok   - $name$(took "$_ck_t0")"
	fi
}

# skip NAME WHY: a check these variables cannot exercise; counted as
# skipped (never as passed), with the reason.
skip() {
	SKIPPED=$((SKIPPED + 1))
	echo "skip - $1 ($2)"
}

# nsx NS CMD...: run CMD inside namespace NS. `ip` itself switches with
# -n: one exec instead of two (ip netns exec, then ip), which halves the
# cost of the hundreds of such calls a topology makes under TCG.
nsx() {
	ns=$1
	shift
	if [ "$1" = "$IP" ]; then
		shift
		"$IP" -n "$ns" "$@"
	else
		"$IP" netns exec "$ns" "$@"
	fi
}

# must CMD...: setup step; abort the scenario if it fails.
must() {
	if ! out=$("$@" 2>&1); then
		echo "setup failed: $*"
		echo "$out" | sed 's/^/       | /'
		FAILED=$((FAILED + 1))
		finish
	fi
}

# veth NS1 DEV1 NS2 DEV2: a veth pair between two namespaces.
veth() {
	"$IP" link add "$2" netns "$1" type veth peer name "$4" netns "$3"
}

finish() {
	echo "$PASSED passed, $FAILED failed, $SKIPPED skipped"
	[ "$FAILED" -eq 0 ] && exit 0
	exit 1
}
