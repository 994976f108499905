#!/bin/busybox sh
# shellcheck shell=dash
# /init of the offline router image (scripts/build-images.sh). Debian's
# cloud kernel has the datapath as modules while the Buildroot kernel has
# it built in and starts routerd directly as /sbin/init; this stage only
# loads the modules routerd needs to serve (the others in the background),
# runs the optional /etc/vpnnat/preinit.d/*.sh (e.g. the demo's LAN) and
# then execs routerd, which stays PID 1 and does
# every other init duty itself (mounts, links, dnsmasq, reaping, reboot).
# busybox sh runs its applets before PATH: iproute2 by full path.

bb=/bin/busybox
export PATH=/usr/bin:/usr/sbin:/bin:/sbin

$bb mount -t proc proc /proc
$bb mount -t sysfs sysfs /sys
$bb mount -t devtmpfs devtmpfs /dev
echo /sbin/modprobe >/proc/sys/kernel/modprobe
# devtmpfs has no /dev/fd, /dev/stdin, ... (nft -f /dev/stdin needs them).
# NOTE: routerd does not create them itself yet, and on the Buildroot image
# (no stage before routerd) nobody else does.
$bb ln -sfn /proc/self/fd /dev/fd
$bb ln -sfn /proc/self/fd/0 /dev/stdin
$bb ln -sfn /proc/self/fd/1 /dev/stdout
$bb ln -sfn /proc/self/fd/2 /dev/stderr

load_modules() {
	# shellcheck disable=SC2046 # one word per module
	$bb modprobe -a $($bb grep -v '^#' "$1") || echo "init: modprobe -a (from $1) failed"
}
# Only what routerd needs to start serving is loaded before it: the NIC
# drivers (eth0/eth1 must exist) and nftables (its first datapath change
# creates the table "ip vpnnat" with NAT chains). The rest of the list
# (the ESP/XFRM crypto, needed only when a tunnel is set up, seconds
# later) loads in the background at the lowest priority while routerd
# starts: under TCG it is a quarter of a second on the boot path. Had
# routerd asked for one of them first, the kernel would have loaded it
# on demand (/proc/sys/kernel/modprobe); modprobe skips what is loaded.
# The background job becomes routerd's child, which routerd reaps.
if $bb grep -qs 0x1af4 /sys/bus/pci/devices/*/vendor; then
	load_modules /etc/vmtest/modules.virtio
fi
$bb modprobe -a nf_tables nft_chain_nat nft_nat || echo "init: modprobe nftables failed"

read -r up _ </proc/uptime
echo "init: NIC and nftables modules loaded ($up s after kernel start)"

for f in /etc/vpnnat/preinit.d/*.sh; do
	[ -r "$f" ] || continue
	echo "init: $f"
	# shellcheck source=/dev/null
	. "$f"
done

# (Debian's static busybox has renice but no nice.)
# shellcheck disable=SC2016 # expanded by the background shell
$bb sh -c '
	$0 renice -n 19 -p $$ >/dev/null
	$0 modprobe -a $($0 grep -v "^#" /etc/vmtest/modules.load) || echo "init: modprobe -a (deferred) failed"
	read -r up _ </proc/uptime
	echo "init: the remaining modules loaded in the background ($up s after kernel start)"' $bb &

read -r up _ </proc/uptime
echo "init: starting routerd ($up s after kernel start)"
# routerd mounts /proc, /sys, /dev and /run itself (EBUSY counts as done).
exec /usr/bin/routerd --config /etc/routerd.toml run
