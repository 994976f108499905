#!/bin/bash
# scripts/check-images.sh — offline checks of the Buildroot external tree
# (images/) against a Buildroot checkout.
#
# Usage: BUILDROOT_DIR=/path/to/buildroot scripts/check-images.sh
#
# Without BUILDROOT_DIR it says that it is skipped and exits 77 (the
# automake convention for "skipped"; scripts/test.sh counts it so). With it:
#   - utils/check-package -b on every file of images/ that check-package
#     knows (Config.in, .mk, defconfigs, S?? init scripts, shell scripts):
#     one check per file, passed when it gives no warning;
#   - each images/configs/*_defconfig is loaded with Kconfig
#     (make BR2_EXTERNAL=images O=<tmp> NAME_defconfig) and every symbol it
#     sets must be in the resulting .config with the same value (Kconfig
#     drops unknown symbols and unmet dependencies silently);
#   - every package .mk evaluates (make printvars of its variables) and
#     names the cargo infrastructure's SUBDIR and vendoring hook, and
#     builds and installs with cargo --profile firmware (not --release);
#   - every kernel fragment has the options of IMAGES.md.
# Needs python3 with python-magic, flake8, shellcheck, make and a C
# compiler (Kconfig is built from source); missing Debian packages are
# installed with apt-get when running as root.
# The Buildroot release checked: see images/README.md. Ends with a line
# "N passed, N failed"; exits 1 if anything failed.
set -uo pipefail

prog=check-images
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
EXT=$REPO/images
export LC_ALL=C

passed=0
failed=0
pass() {
	passed=$((passed + 1))
	printf 'ok    %s\n' "$1"
}
fail() {
	failed=$((failed + 1))
	printf 'FAIL  %s\n' "$1"
}
summary() {
	echo "$passed passed, $failed failed"
	[[ $failed -eq 0 ]]
}

if [[ -z ${BUILDROOT_DIR:-} ]]; then
	echo "$prog: skipped: BUILDROOT_DIR is not set (set it to a Buildroot checkout, e.g. BUILDROOT_DIR=/work/buildroot, to run check-package and the Kconfig checks)"
	exit 77
fi
BR=$(cd "$BUILDROOT_DIR" 2>/dev/null && pwd -P) || {
	echo "$prog: BUILDROOT_DIR=$BUILDROOT_DIR is not a directory" >&2
	exit 2
}
[[ -x $BR/utils/check-package && -f $BR/Makefile ]] || {
	echo "$prog: $BR is not a Buildroot checkout (no utils/check-package)" >&2
	exit 2
}
echo "$prog: Buildroot $(sed -n 's/^export BR2_VERSION := //p' "$BR/Makefile") at $BR"

# ---------------------------------------------------------------- tools
# A python3 that has the "magic" module (a pyenv python may lack it).
find_python() {
	local py
	for py in python3 /usr/bin/python3; do
		command -v "$py" >/dev/null || continue
		if "$py" -c 'import magic' 2>/dev/null; then
			command -v "$py"
			return 0
		fi
	done
	return 1
}
need=()
find_python >/dev/null || need+=(python3-magic)
command -v flake8 >/dev/null || need+=(flake8)
command -v shellcheck >/dev/null || need+=(shellcheck)
command -v make >/dev/null || need+=(make)
command -v gcc >/dev/null || need+=(gcc)
if [[ ${#need[@]} -gt 0 ]]; then
	if [[ $(id -u) == 0 ]]; then
		echo "$prog: installing ${need[*]} with apt-get..."
		export DEBIAN_FRONTEND=noninteractive
		apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null 2>&1 ||
			{ apt-get update -qq >/dev/null 2>&1 &&
				apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null 2>&1; }
	fi
fi
PY=$(find_python) || {
	fail "python3 with python-magic available (apt-get install python3-magic)"
	summary
	exit 1
}
for t in flake8 shellcheck make gcc; do
	command -v "$t" >/dev/null || {
		fail "$t available"
		summary
		exit 1
	}
done

TMP=$(mktemp -d "${TMPDIR:-/tmp}/check-images.XXXXXX")
trap 'rm -rf "$TMP"' EXIT

# ---------------------------------------------------------------- check-package
# Every file of the tree, relative to images/ (check-package decides by
# name and type which checks apply; files it has no checker for, such as
# linux.fragment or README.md, are reported as 0 lines processed).
mapfile -t files < <(cd "$EXT" && find . -type f | sed 's|^\./||' | sort)
for f in "${files[@]}"; do
	out=$(cd "$EXT" && "$PY" "$BR/utils/check-package" -b "$f" 2>&1)
	warnings=$(sed -n 's/^\([0-9]*\) warnings generated$/\1/p' <<<"$out")
	lines=$(sed -n 's/^\([0-9]*\) lines processed$/\1/p' <<<"$out")
	if [[ $warnings == 0 && -n $lines && $lines -gt 0 ]]; then
		pass "check-package images/$f ($lines lines)"
	elif [[ $warnings == 0 && $lines == 0 ]]; then
		# no checker applies (e.g. a plain file): not a result either way
		echo "--    check-package images/$f (no checker applies)"
	else
		fail "check-package images/$f"
		printf '%s\n' "$out" | sed 's/^/      /'
	fi
done

# ---------------------------------------------------------------- Kconfig
# Every symbol a defconfig sets must survive into .config unchanged.
check_defconfig() {
	local def=$1 name out line sym
	name=$(basename "$def" _defconfig)
	out=$TMP/$name
	mkdir -p "$out"
	if ! make -s -C "$BR" BR2_EXTERNAL="$EXT" O="$out" "${name}_defconfig" >"$TMP/$name.log" 2>&1; then
		fail "Kconfig loads ${name}_defconfig"
		sed 's/^/      /' "$TMP/$name.log" | tail -n 20
		return
	fi
	local -a lost=()
	while IFS= read -r line; do
		case $line in
		BR2_*=*)
			grep -qxF -- "$line" "$out/.config" || {
				sym=${line%%=*}
				lost+=("$line (.config: $(grep -m1 -E "^(# )?${sym}[= ]" "$out/.config" || echo absent))")
			}
			;;
		"# BR2_"*" is not set")
			sym=${line#\# }
			sym=${sym%% *}
			grep -qE "^$sym=" "$out/.config" && lost+=("$line (.config: $(grep -m1 -E "^$sym=" "$out/.config"))")
			;;
		esac
	done <"$def"
	if [[ ${#lost[@]} -eq 0 ]]; then
		pass "Kconfig ${name}_defconfig: all $(grep -cE '^(BR2_|# BR2_)' "$def") symbols survive in .config"
	else
		fail "Kconfig ${name}_defconfig: ${#lost[@]} symbol(s) dropped or changed"
		printf '      %s\n' "${lost[@]}"
	fi
}

# The package makefiles evaluate, with the cargo infrastructure's variables.
check_package_vars() {
	local name=$1 pkg=$2 subdir=$3 out vars
	out=$TMP/$name
	[[ -f $out/.config ]] || return 0
	if ! vars=$(make -s -C "$BR" BR2_EXTERNAL="$EXT" O="$out" \
		VARS="${pkg}_SUBDIR ${pkg}_SITE_METHOD ${pkg}_PRE_CONFIGURE_HOOKS ${pkg}_OVERRIDE_SRCDIR ${pkg}_DEPENDENCIES" \
		QUOTED_VARS=YES printvars 2>"$TMP/$name.vars.log"); then
		fail "make printvars of $pkg ($name)"
		sed 's/^/      /' "$TMP/$name.vars.log" | tail -n 20
		return
	fi
	if grep -qx "${pkg}_SUBDIR='$subdir'" <<<"$vars" &&
		grep -qx "${pkg}_SITE_METHOD='local'" <<<"$vars" &&
		grep -q "^${pkg}_PRE_CONFIGURE_HOOKS=.*${pkg}_CARGO_VENDOR" <<<"$vars" &&
		grep -qx "${pkg}_OVERRIDE_SRCDIR='$REPO'" <<<"$vars" &&
		grep -q "^${pkg}_DEPENDENCIES=.*host-rustc" <<<"$vars"; then
		pass "$pkg evaluates: SUBDIR $subdir, local site $REPO, vendoring hook, host-rustc"
	else
		fail "$pkg variables"
		printf '%s\n' "$vars" | sed 's/^/      /'
	fi
}

# The packages build and install with the workspace's firmware profile
# (the cargo infrastructure alone would build --release, and cargo install
# would build a second time with the release profile).
check_package_profile() {
	local name=$1 pkg=$2 out cmds
	out=$TMP/$name
	[[ -f $out/.config ]] || return 0
	if ! cmds=$(make -s -C "$BR" BR2_EXTERNAL="$EXT" O="$out" \
		VARS="${pkg}_BUILD_CMDS ${pkg}_INSTALL_TARGET_CMDS" printvars 2>"$TMP/$name.cmds.log"); then
		fail "make printvars of ${pkg}_BUILD_CMDS ($name)"
		sed 's/^/      /' "$TMP/$name.cmds.log" | tail -n 20
		return
	fi
	if grep -q '^\[profile\.firmware\]' "$REPO/Cargo.toml" &&
		grep -q "^${pkg}_BUILD_CMDS=.*cargo build .*--profile firmware" <<<"$cmds" &&
		grep -q "^${pkg}_INSTALL_TARGET_CMDS=.*cargo install .*--profile firmware" <<<"$cmds" &&
		! grep -q -- '--release' <<<"$cmds"; then
		pass "$pkg builds and installs with cargo --profile firmware (Cargo.toml [profile.firmware]), not --release"
	else
		fail "$pkg cargo profile (want --profile firmware in build and install, no --release)"
		# the cargo command lines, without the long environment before them
		grep -o 'cargo \(build\|install\) .*' <<<"$cmds" | sed 's/^/      /'
	fi
}

for def in "$EXT"/configs/*_defconfig; do
	check_defconfig "$def"
done
check_package_vars nanopi_r2s ROUTERD router
check_package_vars qemu_x86_64 VPNNAT_CENTER center
check_package_profile nanopi_r2s ROUTERD
check_package_profile qemu_x86_64 VPNNAT_CENTER

# ---------------------------------------------------------------- kernel
# The options IMAGES.md lists for the datapath, in every fragment.
KOPTS="XFRM_USER XFRM_INTERFACE XFRM_STATISTICS INET_ESP INET6_ESP CRYPTO_AES
CRYPTO_GCM CRYPTO_GHASH CRYPTO_CTR CRYPTO_SEQIV CRYPTO_ECHAINIV CRYPTO_AUTHENC
CRYPTO_CBC CRYPTO_HMAC CRYPTO_SHA256 CRYPTO_SHA512 CRYPTO_DRBG_MENU
CRYPTO_JITTERENTROPY NETFILTER NETFILTER_ADVANCED NF_CONNTRACK NF_CT_NETLINK
NF_NAT NF_TABLES NF_TABLES_INET NF_TABLES_IPV4 NF_TABLES_IPV6 NFT_NAT NFT_MASQ
NFT_CT NFT_XFRM IP_ADVANCED_ROUTER IP_MULTIPLE_TABLES IPV6 NAMESPACES NET_NS
VETH DUMMY VIRTIO_PCI VIRTIO_NET DEVTMPFS DEVTMPFS_MOUNT BLK_DEV_INITRD"
for frag in "$EXT"/board/*/linux.fragment; do
	rel=${frag#"$REPO"/}
	missing=()
	for o in $KOPTS; do
		grep -qx "CONFIG_$o=y" "$frag" || missing+=("$o")
	done
	if [[ $rel == *nanopi-r2s* ]]; then
		for o in CRYPTO_AES_ARM64_CE_BLK CRYPTO_GHASH_ARM64_CE; do
			grep -qx "CONFIG_$o=y" "$frag" || missing+=("$o")
		done
	fi
	if [[ ${#missing[@]} -eq 0 ]]; then
		pass "$rel has every kernel option of IMAGES.md"
	else
		fail "$rel lacks ${missing[*]}"
	fi
	# every fragment is referenced by a defconfig
	grep -qF "board/$(basename "$(dirname "$frag")")/linux.fragment" "$EXT"/configs/*_defconfig ||
		fail "$rel is used by no defconfig"
done

summary
