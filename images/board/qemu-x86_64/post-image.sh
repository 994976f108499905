#!/bin/sh
# Post-image script of qemu_x86_64_defconfig (the vpnnat center): writes
# start-qemu.sh next to the images. The VM gets two NICs:
#   eth0  the "internet" (routers, IKE/ESP): a QEMU multicast socket on
#         this machine, VPNNAT_INET_MCAST [230.0.0.1:12345]
#   eth1  the center LAN 172.16.0.0/24: QEMU user networking, isolated
#         (restrict=on), with the operator UI (172.16.0.10:8443) forwarded
#         to 127.0.0.1:VPNNAT_UI_PORT [8443] on the host only.

set -e

sed "s|@HOST_DIR@|$HOST_DIR|" >"$BINARIES_DIR/start-qemu.sh" <<'SCRIPT'
#!/bin/sh
# Boots the vpnnat center image (Buildroot, qemu_x86_64_defconfig).
# Operator UI: http://127.0.0.1:${VPNNAT_UI_PORT:-8443}/
cd "$(dirname "$0")" || exit 1
# the machine's QEMU (with user networking), else Buildroot's host-qemu
qemu=$(command -v qemu-system-x86_64 || echo "@HOST_DIR@/bin/qemu-system-x86_64")
exec "$qemu" -M pc -m 512 -nographic \
	-kernel bzImage \
	-drive file=rootfs.ext2,if=virtio,format=raw \
	-append "rootwait root=/dev/vda console=ttyS0" \
	-netdev "socket,id=inet,mcast=${VPNNAT_INET_MCAST:-230.0.0.1:12345},localaddr=127.0.0.1" \
	-device virtio-net-pci,netdev=inet,mac=52:54:00:00:01:10 \
	-netdev "user,id=lan,net=172.16.0.0/24,host=172.16.0.2,dhcpstart=172.16.0.200,restrict=on,hostfwd=tcp:127.0.0.1:${VPNNAT_UI_PORT:-8443}-172.16.0.10:8443" \
	-device virtio-net-pci,netdev=lan,mac=52:54:00:00:02:10 \
	"$@"
SCRIPT
chmod 0755 "$BINARIES_DIR/start-qemu.sh"
