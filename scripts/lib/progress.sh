# shellcheck shell=bash
# scripts/lib/progress.sh — progress lines for the project's long commands
# (issue 9: every command that takes more than a second or two says what it
# is doing). Source it from a bash script:
#
#   . "$(dirname "${BASH_SOURCE[0]}")/lib/progress.sh"
#   progress "building binaries"              # [+0.4s] building binaries
#   progress_run "booting the VM" cmd args    # the line, then cmd; if cmd is
#                                             # silent for long, a line every
#                                             # PROGRESS_EVERY s; then "done
#                                             # (12.3 s)" or "failed (status N)"
#
# Lines go to stderr, so stdout stays the command's result (figures, test
# lines). The clock starts when the outermost script sources this file:
# PROGRESS_T0 is exported, so nested scripts (bench -> vm-test) count from
# the same origin and their lines read as one timeline.
#
# Knobs: PROGRESS_QUIET=1 prints nothing; PROGRESS_PREFIX (default: the
# script's name) names the emitter; PROGRESS_EVERY (default 30) seconds
# between "still ..." lines of progress_run.

# microseconds since the epoch ($EPOCHREALTIME without its decimal sign,
# which is a comma in some locales)
_progress_now_us() {
	local t=${EPOCHREALTIME:-}
	if [[ -z $t ]]; then
		t=$(date +%s.%6N)
	fi
	printf '%s' "${t/[.,]/}"
}

if [[ -z ${PROGRESS_T0:-} ]]; then
	PROGRESS_T0=$(_progress_now_us)
	export PROGRESS_T0
fi

# seconds since PROGRESS_T0 with one decimal, e.g. 12.3
_progress_elapsed() {
	local d=$(($(_progress_now_us) - PROGRESS_T0))
	((d < 0)) && d=0
	printf '%d.%d' $((d / 1000000)) $((d / 100000 % 10))
}

# progress WHAT...: one line "[+12.3s] prefix: WHAT" on stderr.
progress() {
	[[ ${PROGRESS_QUIET:-} == 1 ]] && return 0
	local prefix=${PROGRESS_PREFIX:-$(basename -- "${0:-sh}")}
	printf '[+%ss] %s: %s\n' "$(_progress_elapsed)" "$prefix" "$*" >&2
}

# progress_run WHAT CMD [ARGS...]: says WHAT, runs CMD (its output passes
# through untouched), prints "still WHAT" every PROGRESS_EVERY seconds while
# it runs, then "WHAT: done (N s)" or "WHAT: failed (status N, N s)".
# Returns CMD's status.
progress_run() {
	local what=$1 start rc tick every=${PROGRESS_EVERY:-30}
	shift
	start=$(_progress_now_us)
	progress "$what..."
	tick=
	if [[ ${PROGRESS_QUIET:-} != 1 && $every -gt 0 ]]; then
		# the sleep runs in the background so that TERM ends the ticker
		# at once (and no orphan sleep keeps stderr open for a pipe)
		(
			s=
			trap 'kill $s 2>/dev/null; exit 0' TERM
			while :; do
				sleep "$every" &
				s=$!
				wait "$s"
				progress "still $what ($((($(_progress_now_us) - start) / 1000000)) s)"
			done
		) &
		tick=$!
	fi
	rc=0
	"$@" || rc=$?
	if [[ -n $tick ]]; then
		kill "$tick" 2>/dev/null
		wait "$tick" 2>/dev/null
	fi
	local d=$((($(_progress_now_us) - start) / 100000))
	if ((rc == 0)); then
		progress "$what: done ($((d / 10)).$((d % 10)) s)"
	elif ((rc == 77)); then
		# 77: the command says it did not run (automake's "skipped")
		progress "$what: skipped (status 77)"
	else
		progress "$what: failed (status $rc, $((d / 10)).$((d % 10)) s)"
	fi
	return "$rc"
}
