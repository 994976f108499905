# shellcheck shell=bash
# scripts/lib/packages.sh — the Debian packages a benchmark needs on the
# host, installed with apt-get when missing (after progress.sh, whose
# progress_run it uses):
#
#   . scripts/lib/packages.sh
#   need_packages nftables iproute2

need_packages() {
	local p
	for p in "$@"; do
		# shellcheck disable=SC2016 # $1 is bash -c's argument
		dpkg -s "$p" >/dev/null 2>&1 || progress_run "installing $p (apt-get)" \
			bash -c 'apt-get update -qq && apt-get install -y -qq "$1" >/dev/null' _ "$p"
	done
}
