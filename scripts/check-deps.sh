#!/bin/bash
# scripts/check-deps.sh — the dependency checks that tools enforce:
#   - cargo deny (deny.toml): licences, banned or duplicate crates, and
#     sources (crates.io only); not advisories, see deny.toml;
#   - cargo machete: no declared dependency goes unused.
# Installs cargo-deny and cargo-machete with `cargo install --locked` when
# they are missing (crates.io must be reachable then; `--install-only` does
# just that). Ends with a line
# "N passed, N failed" (one check each); exits 1 if anything failed.
set -uo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/lib/progress.sh
. scripts/lib/progress.sh

passed=0
failed=0
check() {
	local name=$1
	shift
	if progress_run "$name" "$@"; then
		passed=$((passed + 1))
		printf 'ok    %s\n' "$name"
	else
		failed=$((failed + 1))
		printf 'FAIL  %s\n' "$name"
	fi
}

# install CRATE BINARY: cargo install --locked CRATE unless BINARY is on PATH.
install() {
	command -v "$2" >/dev/null && return 0
	progress_run "installing $1 (cargo install --locked, a few minutes)" \
		cargo install --quiet --locked "$1" ||
		{
			echo "check-deps: cargo install $1 failed" >&2
			exit 2
		}
}
install cargo-deny cargo-deny
install cargo-machete cargo-machete
# --install-only: only the installs (scripts/test.sh runs them in the
# background while the VM steps leave a core idle)
if [[ ${1:-} == --install-only ]]; then
	exit 0
fi

check "cargo deny: licences, bans, sources" cargo deny --locked check licenses bans sources
check "cargo machete: unused dependencies" cargo machete

echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
