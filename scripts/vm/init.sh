#!/bin/busybox sh
# shellcheck shell=dash
# /init of the vm-test VM: scripts/vm-test copies this file verbatim into
# the initramfs. It prepares the system, runs the test SCRIPT and reports its
# exit status on the console, then powers the VM off.
#
# Channels (see scripts/vm-test):
#   ttyS0 (console)  kernel messages, this file's diagnostics, the markers
#                    @@VMTEST-<nonce>-START=<uptime>@@ and
#                    @@VMTEST-<nonce>-EXIT=<status>@@ (written via /dev/kmsg,
#                    which reaches the console synchronously)
#   ttyS1            SCRIPT's stdout (first line: the START marker)
#   ttyS2            SCRIPT's stderr
#
# Run-specific data comes from /vmtest/ (per-run part of the initramfs):
#   run.conf  VMTEST_NONCE, VMTEST_SCRIPT (path of SCRIPT inside the VM)
#   env       `export NAME='value'` lines from the caller's environment
#   args      `set -- 'arg1' 'arg2' ...`
# Note: this is busybox sh, whose applets win over PATH (e.g. `ip` here is
# busybox's); hence /usr/sbin/ip etc. by full path where it matters.

bb=/bin/busybox
export PATH=/usr/bin:/usr/sbin:/bin:/sbin
export HOME=/root

say() { echo "vm-init: $*" >/dev/console; }

$bb mount -t proc -o nosuid,nodev,noexec proc /proc
$bb mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
$bb mount -t devtmpfs -o nosuid,mode=0755 devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts -o nosuid,noexec,gid=5,mode=0620,ptmxmode=0666 devpts /dev/pts
mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs /dev/shm
ln -sfn /proc/self/fd /dev/fd
ln -sfn /proc/self/fd/0 /dev/stdin
ln -sfn /proc/self/fd/1 /dev/stdout
ln -sfn /proc/self/fd/2 /dev/stderr
# opening it autoloads tun (char-major-10-200)
mkdir -p /dev/net
[ -e /dev/net/tun ] || mknod -m 0666 /dev/net/tun c 10 200
mount -t tmpfs -o nosuid,nodev,mode=0755 tmpfs /run
mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs /tmp
# `ip netns` keeps its namespace handles under /var/run/netns (/var/run is a
# symlink to /run in this image).
mkdir -p /run/netns /run/lock
mount -t tmpfs -o nosuid,nodev,noexec,mode=0755 tmpfs /run/netns
mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 /sys/fs/cgroup 2>/dev/null
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null

# Where the kernel finds modprobe for its own module requests (nft
# expressions, crypto templates, netlink families).
echo /sbin/modprobe >/proc/sys/kernel/modprobe
hostname vmtest

# Modules: names resolved on the host, dependencies first, one modprobe
# for all (parameters in /etc/modprobe.d/vmtest.conf).
load_modules() {
	# shellcheck disable=SC2046 # one word per module
	modprobe -a $(grep -v '^#' "$1") 2>/dev/console || say "modprobe -a (from $1) failed"
}
load_modules /etc/vmtest/modules.load
# virtio drivers only if QEMU gave us a virtio device (networking)
if grep -qs 0x1af4 /sys/bus/pci/devices/*/vendor; then
	load_modules /etc/vmtest/modules.virtio
fi

/usr/sbin/ip link set lo up

# The browser NIC of scripts/vm-test (QEMU user network, MAC fixed there)
# is named browser0, so that it never takes a name a scenario creates
# (the topologies make veths called eth0 before moving them).
for d in /sys/class/net/*; do
	if [ "$(cat "$d/address" 2>/dev/null)" = 52:54:00:b0:00:01 ]; then
		/usr/sbin/ip link set "${d##*/}" name browser0
	fi
done

VMTEST_NONCE=none
VMTEST_SCRIPT=
# shellcheck source=/dev/null
. /vmtest/run.conf

# Raw mode: no CR/LF translation, no echo on the output channels. Keep them
# open here so that the final close (after every other process is gone)
# waits until the UART has sent everything.
stty -F /dev/ttyS1 raw -echo 2>/dev/console
stty -F /dev/ttyS2 raw -echo 2>/dev/console
exec 7>/dev/ttyS1 8>/dev/ttyS2

# How to start SCRIPT: ELF files and scripts whose #! interpreter exists in
# the VM are executed directly; anything else is run with /bin/sh (bash in
# POSIX mode here, see scripts/vm-test).
run=/bin/sh
magic=$(head -c 4 "$VMTEST_SCRIPT" 2>/dev/null | tail -c 3)
if [ "$magic" = ELF ]; then
	run=
elif [ "$(head -c 2 "$VMTEST_SCRIPT" 2>/dev/null)" = '#!' ]; then
	read -r shebang <"$VMTEST_SCRIPT"
	interp=${shebang#??}
	interp=${interp#"${interp%%[! ]*}"}
	interp=${interp%%[ 	]*}
	if [ -x "$interp" ]; then
		run=
	else
		echo "vm-test: $interp (from the #! line) is not in the VM; running SCRIPT with /bin/sh" >&8
	fi
fi
chmod +x "$VMTEST_SCRIPT" 2>/dev/null

read -r up _ </proc/uptime
echo "<1>@@VMTEST-$VMTEST_NONCE-START=$up@@" >/dev/kmsg
echo "@@VMTEST-$VMTEST_NONCE-START=$up@@" >&7

# SCRIPT runs in its own session (setsid) so it cannot signal init by
# accident, in /tests, with the caller's environment and arguments.
cd /tests 2>/dev/null || cd /
(
	# shellcheck source=/dev/null
	. /vmtest/env
	# shellcheck source=/dev/null
	. /vmtest/args
	exec 7>&- 8>&-
	# shellcheck disable=SC2086 # $run is empty or one word
	exec setsid $run "$VMTEST_SCRIPT" "$@"
) </dev/null >&7 2>&8
rc=$?
cd /

# Stop whatever SCRIPT left running, then let the UART drain.
kill -9 -1 2>/dev/null
i=0
while [ $i -lt 100 ]; do
	busy=
	for p in /proc/[0-9]*; do
		[ "$p" = /proc/1 ] && continue
		[ -e "$p/exe" ] && busy=1 && break
	done
	[ -z "$busy" ] && break
	i=$((i + 1))
	sleep 0.05
done
sleep 0.05
exec 7>&- 8>&-

echo "<1>@@VMTEST-$VMTEST_NONCE-EXIT=$rc@@" >/dev/kmsg
sync
poweroff -f
reboot -f
