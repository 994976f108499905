#!/bin/sh
# Post-build script of nanopi_r2s_defconfig: the U-Boot extlinux
# configuration (Buildroot's, plus panic=10 so that the board reboots
# if PID 1, routerd, ever dies, and PATH=..., which the kernel hands to
# init as its environment: without it routerd would find no nft in
# /usr/sbin), the directories routerd writes to and the group dnsmasq
# runs as.

set -e

BOARD_DIR="$(dirname "$0")"

install -m 0644 -D "$BOARD_DIR/extlinux.conf" "$TARGET_DIR/boot/extlinux/extlinux.conf"
install -d -m 0700 "$TARGET_DIR/var/lib/routerd"
# dnsmasq switches to group "dip" (its compiled-in default) after start
grep -q '^dip:' "$TARGET_DIR/etc/group" || echo 'dip:x:30:' >>"$TARGET_DIR/etc/group"
chmod 0600 "$TARGET_DIR/etc/routerd.toml"
