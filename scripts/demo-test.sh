#!/bin/bash
# scripts/demo-test.sh [ARGS of scripts/demo.sh...]
#
# The demo as a test: runs `scripts/demo.sh --smoke ARGS` (three VMs under
# TCG: the center and two routers, the maintenance scenario, the operator
# UI in headless Chromium), then checks its report: every check line the
# scenario must print is there and passed (a scenario cut short fails, not
# only a failed line), the screenshots are PNG files of a real page, and
# prints the measured figures (boot times, tunnel set-up, teardown). One
# line per check, then "N passed, N failed"; exit 0 only when all passed.
# Run as root; e.g. `scripts/demo-test.sh --no-build` after
# scripts/build-images.sh. The log stays in out/demo/demo-test.log.
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
ROUTERS=2
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
	[[ ${args[i]} == --routers ]] && ROUTERS=${args[i + 1]:-2}
done
LOG=$(mktemp "${TMPDIR:-/tmp}/demo-test.XXXXXX")
trap 'rm -f "$LOG"' EXIT
# shellcheck source=scripts/lib/progress.sh
. "$REPO/scripts/lib/progress.sh"
PROGRESS_PREFIX=demo-test progress "running scripts/demo.sh --smoke $* (builds what is missing, boots the center and the routers, plays the scenario)"

# Screenshots of an earlier run must not pass for this one's.
rm -f "$REPO/out/demo/operator-ui.png" "$REPO/out/demo/operator-ui-ended.png"
"$REPO/scripts/demo.sh" --smoke "$@" 2>&1 | tee "$LOG"
rc=${PIPESTATUS[0]}
cp "$LOG" "$REPO/out/demo/demo-test.log" 2>/dev/null || true

PASS=0
FAIL=0
t() { # t NAME STATUS
	if [[ $2 == 0 ]]; then
		echo "ok   - $1"
		PASS=$((PASS + 1))
	else
		echo "FAIL - $1"
		FAIL=$((FAIL + 1))
	fi
}
# demo.sh's lines: "[+12.3s] demo: what" (scripts/lib/progress.sh)
D='^\[\+[0-9.]+s\] demo: '
has() { grep -qE "${D}ok   - $1" "$LOG"; }
echo
echo "# demo-test: the report of scripts/demo.sh --smoke"
t "demo.sh --smoke exits 0 (exit status $rc)" "$([[ $rc == 0 ]] && echo 0 || echo 1)"
t "no check line failed" "$(grep -qE "${D}FAIL" "$LOG" && echo 1 || echo 0)"
for ((i = 1; i <= ROUTERS; i++)); do
	t "r$i: routerd started" "$(grep -qE "${D}r$i: routerd serving" "$LOG" && echo 0 || echo 1)"
	t "r$i: installed with the center" "$(grep -qE "${D}r$i: installed: server part" "$LOG" && echo 0 || echo 1)"
	t "r$i: request accepted" "$(has "r$i: routerd request pc1 accepted" && echo 0 || echo 1)"
	t "r$i: tunnel up" "$(has "r$i: tunnel up" && echo 0 || echo 1)"
	t "r$i: SA pair on the router" "$(has "r$i: the router's kernel holds the ESP SA pair" && echo 0 || echo 1)"
	t "r$i: pc1 reached with its own page" "$(has "center reaches pc1 of r$i at " && echo 0 || echo 1)"
	t "r$i: tunnel slot released" "$(has "r$i: tunnel slot released" && echo 0 || echo 1)"
	t "r$i: no SA left" "$(has "r$i: no SA left on the router" && echo 0 || echo 1)"
done
if ((ROUTERS >= 2)); then
	t "different VPNNAT addresses for the same LAN address" \
		"$(has "every home got a different VPNNAT address" && echo 0 || echo 1)"
fi
t "operator UI in Chromium (login, list, screenshot, start, end)" "$(has "operator UI in Chromium" && echo 0 || echo 1)"
t "the VPNNAT addresses reach nothing after the end" "$(has "the VPNNAT addresses reach nothing" && echo 0 || echo 1)"
for f in operator-ui.png operator-ui-ended.png; do
	p=$REPO/out/demo/$f
	ok=1
	if [[ -s $p ]] && [[ $(head -c 8 "$p" | od -An -tx1 | tr -d ' \n') == 89504e470d0a1a0a ]]; then
		# width and height from the IHDR chunk
		w=$(od -An -tu1 -j16 -N4 "$p" | awk '{ print $1 * 16777216 + $2 * 65536 + $3 * 256 + $4 }')
		h=$(od -An -tu1 -j20 -N4 "$p" | awk '{ print $1 * 16777216 + $2 * 65536 + $3 * 256 + $4 }')
		# a blank page compresses to almost nothing
		((w >= 200 && h >= 200 && $(stat -c %s "$p") > 10000)) && ok=0
	fi
	t "out/demo/$f is a PNG of a rendered page (${w:-?} x ${h:-?}, $(stat -c %s "$p" 2>/dev/null || echo 0) bytes)" "$ok"
done

echo "# figures (measured, not asserted):"
grep -E "${D}(r[0-9]+: routerd serving|center: operator UI answers|ok   - r[0-9]+: (routerd request|tunnel up|tunnel slot released|no SA left))" "$LOG" |
	sed -E "s/${D}/#   /"
echo "$PASS passed, $FAIL failed"
[[ $FAIL == 0 ]]
