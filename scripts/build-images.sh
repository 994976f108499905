#!/bin/bash
# scripts/build-images.sh [--no-build] [--boot-check]
#
# Builds the offline images: Debian's cloud kernel (the one scripts/vm-test
# boots) plus an initramfs made of the same buildroot-overlay/ and the same
# init as the Buildroot images of images/:
#   out/images/router/{vmlinuz,initrd}  routerd is PID 1 (after a stage
#                                       that loads the kernel modules),
#                                       /etc from buildroot-overlay/router
#   out/images/center/{vmlinuz,initrd}  BusyBox init, rcS runs S05secrets
#                                       (first boot: fills the secrets'
#                                       placeholders, random root
#                                       password), S60centerd and
#                                       S61gatewayd (the
#                                       scripts of images/package/
#                                       vpnnat-center), /etc from
#                                       buildroot-overlay/center
# The initramfs is an uncompressed cpio: scripts/vm-test's cached base
# (busybox, bash, iproute2, nft, kernel modules; built with vm-test's own
# functions, cached in /var/cache/vpnnat-vm as images-base-*.cpio) followed
# by the image's own part. Binaries are built statically (crt-static,
# x86_64-unknown-linux-gnu) like vm-test does. Run from anywhere, as root.
#
#   --no-build    do not run cargo; use the binaries already built
#   --boot-check  afterwards boot the router image in QEMU (TCG) with two
#                 isolated NICs and wait for routerd's startup line on the
#                 console (VPNNAT_BOOT_TIMEOUT seconds [60]); prints the time
#                 from QEMU start to that line
#
# Environment: CARGO_TARGET_DIR [REPO/target], VPNNAT_IMAGES_PROFILE
# (cargo profile) [firmware: opt-level z, fat LTO, panic abort, stripped,
# as on the board; "vmtest" reuses what scripts/vm-test built, "release"
# builds quicker], CARGO_BUILD_JOBS (cargo's own),
# VPNNAT_VM_CACHE [/var/cache/vpnnat-vm], VPNNAT_IMAGES_OUT [REPO/out/images].
set -euo pipefail

prog=build-images
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
VMDIR=$REPO/scripts/vm
IMGDIR=$REPO/scripts/images
CACHE=${VPNNAT_VM_CACHE:-/var/cache/vpnnat-vm}
OUT=${VPNNAT_IMAGES_OUT:-$REPO/out/images}
TRIPLE=x86_64-unknown-linux-gnu
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
[[ $TARGET_DIR == /* ]] || TARGET_DIR=$REPO/$TARGET_DIR
PROFILE=${VPNNAT_IMAGES_PROFILE:-firmware}
BIN_DIR=$TARGET_DIR/$TRIPLE/$PROFILE
export PATH=$PATH:/usr/local/sbin:/usr/sbin:/sbin
export LC_ALL=C

# progress lines "[+12.3s] build-images: what" on stderr (scripts/lib/
# progress.sh; under scripts/demo.sh the clock is the demo's)
# shellcheck source=scripts/lib/progress.sh
. "$REPO/scripts/lib/progress.sh"
log() { PROGRESS_PREFIX=$prog progress "$*"; }
die() {
	printf '%s: error: %s\n' "$prog" "$*" >&2
	exit 1
}

NO_BUILD=
BOOT_CHECK=
for a in "$@"; do
	case $a in
	--no-build) NO_BUILD=1 ;;
	--boot-check) BOOT_CHECK=1 ;;
	-h | --help)
		sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
		exit 0
		;;
	*) die "unknown argument $a (see --help)" ;;
	esac
done
[[ $(id -u) == 0 ]] || die "must run as root (apt-get, /var/cache, mknod)"

# ---------------------------------------------------------------- vm-test
# The kernel download and the base initramfs are scripts/vm-test's: its
# functions are read from it (not copied) so both stay the same.
VM_FUNCS="ensure_tools kernel_pkg ensure_kernel copy_with_libs mkcpio strip_sigs resolve_load build_base"
VM_SRC=
for f in $VM_FUNCS; do
	src=$(sed -n "/^$f() {\$/,/^}\$/p" "$REPO/scripts/vm-test")
	[[ -n $src ]] || die "scripts/vm-test no longer defines $f() (build-images.sh reuses it)"
	VM_SRC+=$src$'\n'
done
eval "$VM_SRC"
# shellcheck disable=SC2034 # used by the functions read from vm-test
APT_UPDATED=
# shellcheck disable=SC2034 # ensure_tools: no browser disk for the images
BROWSER=

# The base, cached under a name vm-test's pruning does not touch.
ensure_images_base() {
	local key tmp
	key=$({
		echo "$KDIR $KVER"
		printf '%s' "$VM_SRC"
		cat "$VMDIR/modules.load" "$VMDIR/modules.virtio" "$VMDIR/modules.ship"
		dpkg-query -W -f '${Package} ${Version}\n' busybox-static iproute2 nftables bash libc6 kmod 2>/dev/null || true
	} | sha256sum | cut -c1-16)
	BASE=$CACHE/images-base-$key.cpio
	find "$CACHE" -maxdepth 1 -name '.images.*' -mmin +60 -exec rm -rf {} + 2>/dev/null || true
	if [[ ! -s $BASE ]]; then
		log "assembling the base initramfs (kernel $KVER, vm-test's builder)..."
		tmp=$(mktemp -d "$CACHE/.images.XXXXXX")
		build_base "$tmp/base.cpio" "$tmp/root"
		mv "$tmp/base.cpio" "$BASE"
		rm -rf "$tmp"
	fi
	find "$CACHE" -maxdepth 1 -name 'images-base-*.cpio' ! -name "images-base-$key.cpio" -mmin +10 -delete 2>/dev/null || true
}

# ---------------------------------------------------------------- steps
# Progress of cargo on a pipe (no progress bar there): one line per
# workspace crate, every 25th dependency, and a heartbeat every 30 s while
# nothing is printed (the fat-LTO link of the firmware profile is one long
# silent step).
cargo_progress() {
	local t0=$SECONDS n=0 line last=$SECONDS
	while true; do
		if IFS= read -r -t 30 line; then
			case $line in
			*Compiling\ vpnnat*)
				n=$((n + 1))
				log "  $((SECONDS - t0)) s: ${line#"${line%%Compiling*}"}"
				;;
			*Compiling\ *)
				n=$((n + 1))
				((n % 25)) || log "  $((SECONDS - t0)) s: $n crates compiled"
				;;
			*warning:* | *error* | *-\>* | *\|*) printf '%s\n' "$line" >&2 ;;
			esac
			last=$SECONDS
		elif (($? > 128)); then
			log "  $((SECONDS - t0)) s: still building ($n crates compiled; $((SECONDS - last)) s in the current step)"
		else
			break
		fi
	done
	log "  cargo done after $((SECONDS - t0)) s"
}

build_bins() {
	[[ -n $NO_BUILD ]] && return 0
	command -v cargo >/dev/null || die "cargo not found (--no-build uses what is built)"
	log "building routerd, centerd, gatewayd (static, $TRIPLE, profile $PROFILE, target dir $TARGET_DIR)..."
	local rc=0
	(cd "$REPO" && CARGO_TARGET_DIR=$TARGET_DIR RUSTFLAGS="${RUSTFLAGS:+$RUSTFLAGS }-C target-feature=+crt-static" \
		cargo build --color never --profile "$PROFILE" --target "$TRIPLE" -p vpnnat-router -p vpnnat-center -p vpnnat-gatewayd --bins) 2>&1 |
		cargo_progress || rc=$?
	[[ $rc == 0 ]] || die "cargo build failed (pipefail: cargo's status)"
	local b
	for b in routerd centerd gatewayd; do
		log "  $b: $(du -k "$BIN_DIR/$b" | cut -f1) KiB"
	done
}

need_bin() {
	[[ -x $BIN_DIR/$1 ]] || die "$BIN_DIR/$1 is missing (build it, or drop --no-build)"
	if ldd "$BIN_DIR/$1" 2>/dev/null | grep -q '=>'; then
		log "warning: $BIN_DIR/$1 is dynamically linked (built without crt-static?)"
	fi
}

# copy_with_libs copies every library again: drop those the base has.
drop_base_libs() {
	local root=$1 f
	[[ -s $CACHE/images-base.list && $CACHE/images-base.list -nt $BASE ]] ||
		cpio -it --quiet <"$BASE" | sed 's|^\./||' >"$CACHE/images-base.list"
	{ (cd "$root" && find lib lib64 usr/lib -type f 2>/dev/null) || true; } |
		{ grep -Fxf "$CACHE/images-base.list" || true; } |
		while read -r f; do rm -f "$root/$f"; done
}

# Common part of both images' own layer.
layer_common() {
	local root=$1 host=$2
	mkdir -p "$root/etc" "$root/usr/bin" "$root/var/lib" "$root/var/log"
	echo "$host" >"$root/etc/hostname"
	# base's groups plus dnsmasq's (Debian's dnsmasq switches to "dip")
	printf 'root:x:0:\ntty:x:5:\ndip:x:30:\nnogroup:x:65534:\n' >"$root/etc/group"
}

build_router() {
	local root=$1
	need_bin routerd
	layer_common "$root" vpnnat-router
	install -m 0755 "$IMGDIR/router-init.sh" "$root/init"
	install -m 0755 "$BIN_DIR/routerd" "$root/usr/bin/routerd"
	mkdir -p "$root/sbin"
	ln -s ../usr/bin/routerd "$root/sbin/init"
	command -v dnsmasq >/dev/null || {
		log "installing dnsmasq-base with apt-get..."
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends dnsmasq-base >/dev/null ||
			die "apt-get install dnsmasq-base failed"
	}
	copy_with_libs "$root" "$(command -v dnsmasq)" /usr/sbin/dnsmasq
	drop_base_libs "$root"
	cp -a "$REPO/buildroot-overlay/router/." "$root/"
	[[ -f $root/etc/routerd.toml ]] || die "buildroot-overlay/router/etc/routerd.toml is missing"
	chmod 0600 "$root/etc/routerd.toml"
	install -d -m 0700 "$root/var/lib/routerd"
	install -d -m 0755 "$root/var/lib/misc" "$root/etc/vpnnat/preinit.d"
}

build_center() {
	local root=$1 f
	need_bin centerd
	need_bin gatewayd
	layer_common "$root" vpnnat-center
	ln -s bin/busybox "$root/init"
	install -m 0755 "$BIN_DIR/centerd" "$root/usr/bin/centerd"
	install -m 0755 "$BIN_DIR/gatewayd" "$root/usr/bin/gatewayd"
	install -D -m 0644 "$IMGDIR/center-inittab" "$root/etc/inittab"
	mkdir -p "$root/etc/init.d"
	for f in rcS rcK S01modules S40network; do
		install -m 0755 "$IMGDIR/$f" "$root/etc/init.d/$f"
	done
	# the init scripts the Buildroot package installs; S05secrets fills the
	# configuration's @SECRET:<name>@ placeholders and sets a random root
	# password at first boot
	install -m 0755 "$REPO/images/package/vpnnat-center/S05secrets" "$root/etc/init.d/S05secrets"
	install -m 0755 "$REPO/images/package/vpnnat-center/S60centerd" "$root/etc/init.d/S60centerd"
	install -m 0755 "$REPO/images/package/vpnnat-center/S61gatewayd" "$root/etc/init.d/S61gatewayd"
	mkdir -p "$root/etc/network"/{if-pre-up.d,if-up.d,if-down.d,if-post-down.d}
	cp -a "$REPO/buildroot-overlay/center/." "$root/"
	for f in centerd.toml gatewayd.toml vpnnat/maintenance-password; do
		[[ -e $root/etc/$f ]] && chmod 0600 "$root/etc/$f"
	done
	install -d -m 0700 "$root/var/lib/vpnnat"
}

# $1 = router|center
assemble() {
	local name=$1 work dst=$OUT/$1
	work=$(mktemp -d "${TMPDIR:-/tmp}/build-images.XXXXXX")
	log "assembling the $name image..."
	"build_$name" "$work/root"
	mkcpio "$work/root" >"$work/layer.cpio"
	mkdir -p "$dst"
	cat "$BASE" "$work/layer.cpio" >"$dst/initrd.tmp"
	mv "$dst/initrd.tmp" "$dst/initrd"
	install -m 0644 "$KDIR/boot/vmlinuz-$KVER" "$dst/vmlinuz"
	# no_timer_check: skip the IO-APIC timer test, which is timing-sensitive
	# under TCG on a busy host (it failed with "MP-BIOS bug: 8254 timer
	# not connected" in a boot measured at load 11) and costs boot time
	echo "console=ttyS0 quiet panic=-1 cryptomgr.notests no_timer_check" >"$dst/cmdline"
	rm -rf "$work"
	log "$name image: $dst/vmlinuz + $dst/initrd ($(du -m "$dst/initrd" | cut -f1) MB), kernel command line in $dst/cmdline"
}

# The firmware QEMU boots the kernel with: qboot (Debian's qemu-system-data
# ships it) instead of SeaBIOS when it is there: it only sets up PCI and
# jumps to the kernel, 0.2 s less per boot under TCG (measured, README).
# scripts/demo.sh reads this function too.
qemu_bios() {
	local rom=${VPNNAT_QEMU_BIOS-/usr/share/qemu/qboot.rom}
	[[ -n $rom && -r $rom ]] && printf -- '-bios %s\n' "$rom"
	return 0
}

# Boots the router image with two isolated NICs (eth0 WAN, eth1 LAN) and
# waits for routerd's startup line. The image's routerd.toml carries a
# placeholder factory secret that routerd refuses: like provisioning, a
# layer gives it a random one (no center takes part in this check).
boot_check() {
	local dir=$OUT/router log timeout=${VPNNAT_BOOT_TIMEOUT:-60} start qpid line= prov
	log "boot check: router image under QEMU/TCG (up to $timeout s)..."
	log=$(mktemp "${TMPDIR:-/tmp}/build-images-boot.XXXXXX")
	prov=$(mktemp -d "${TMPDIR:-/tmp}/build-images-prov.XXXXXX")
	mkdir -p "$prov/root/etc"
	sed "s|^factory_secret = .*|factory_secret = \"$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')\"|" \
		"$REPO/buildroot-overlay/router/etc/routerd.toml" >"$prov/root/etc/routerd.toml"
	chmod 0600 "$prov/root/etc/routerd.toml"
	{
		cat "$dir/initrd"
		mkcpio "$prov/root"
	} >"$prov/initrd"
	start=$EPOCHREALTIME
	# shellcheck disable=SC2046 # qemu_bios prints nothing or two words
	qemu-system-x86_64 -accel tcg -cpu max -m 512 -smp 1 -nodefaults -no-user-config \
		-display none -no-reboot $(qemu_bios) -kernel "$dir/vmlinuz" -initrd "$prov/initrd" \
		-append "$(cat "$dir/cmdline")" -serial "file:$log" \
		-netdev user,id=wan,restrict=on -device virtio-net-pci,netdev=wan,mac=52:54:00:00:03:01 \
		-netdev user,id=lan,restrict=on -device virtio-net-pci,netdev=lan,mac=52:54:00:00:03:02 \
		</dev/null >/dev/null 2>&1 &
	qpid=$!
	while kill -0 "$qpid" 2>/dev/null; do
		line=$(grep -a -m1 'routerd .* for terminal' "$log" || true)
		[[ -n $line ]] && break
		[[ $(awk -v s="$start" -v n="$EPOCHREALTIME" -v t="$timeout" 'BEGIN { print (n - s > t) }') == 1 ]] && break
		sleep 0.2
	done
	local took
	took=$(awk -v s="$start" -v n="$EPOCHREALTIME" 'BEGIN { printf "%.1f", n - s }')
	kill "$qpid" 2>/dev/null || true
	wait "$qpid" 2>/dev/null || true
	rm -rf "$prov"
	if [[ -n $line ]]; then
		log "boot check passed: routerd serving ${took} s after QEMU start"
		log "  ${line//$'\r'/}"
		rm -f "$log"
		return 0
	fi
	log "boot check FAILED after ${took} s; console (last 30 lines):"
	tr -d '\r' <"$log" | tail -n 30 >&2
	rm -f "$log"
	return 1
}

# ---------------------------------------------------------------- main
ensure_tools
mkdir -p "$CACHE/kernel"
exec 9>"$CACHE/.lock"
flock 9
log "kernel: Debian cloud kernel (cache $CACHE)..."
ensure_kernel
ensure_images_base
flock -u 9
exec 9>&-
build_bins
assemble router
assemble center
if [[ -n $BOOT_CHECK ]]; then
	boot_check
fi
