#!/bin/sh
# Host side: prints the environment that makes scripts/vm-test carry Debian's
# charon + swanctl and the few plugins tests/vm/ike-strongswan.sh needs into
# the VM. VPNNAT_VM_EXTRA takes programs (command -v, copied with their
# libraries into /usr/bin), so the plugins are copied as executable files to
# a scratch directory put on PATH; the VM script links them back into
# /usr/lib/ipsec/plugins. Usage (as root, from the repository root):
#   eval "$(tests/vm/strongswan/extra.sh)" && scripts/vm-test tests/vm/ike-strongswan.sh
set -eu
PLUGINS="random nonce openssl kdf kernel-netlink socket-default vici"
D=${TMPDIR:-/tmp}/vpnnat-vm-strongswan
mkdir -p "$D"
extra="/usr/lib/ipsec/charon swanctl"
for p in $PLUGINS; do
	install -m 0755 "/usr/lib/ipsec/plugins/libstrongswan-$p.so" "$D/libstrongswan-$p.so"
	extra="$extra libstrongswan-$p.so"
done
# charon and swanctl dlopen() libgcc_s for pthread_cancel (not in ldd).
install -m 0755 "$(gcc -print-file-name=libgcc_s.so.1 2>/dev/null | grep / || echo /lib/x86_64-linux-gnu/libgcc_s.so.1)" "$D/libgcc_s.so.1"
extra="$extra libgcc_s.so.1"
echo "export PATH=\"$D:\$PATH\" VPNNAT_VM_EXTRA=\"$extra\""
