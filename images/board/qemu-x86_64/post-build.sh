#!/bin/sh
# Post-build script of qemu_x86_64_defconfig (the vpnnat center): secrets
# in the configuration files are readable by root only.

set -e

for f in centerd.toml gatewayd.toml vpnnat/maintenance-password; do
	if [ -e "$TARGET_DIR/etc/$f" ]; then
		chmod 0600 "$TARGET_DIR/etc/$f"
	fi
done
