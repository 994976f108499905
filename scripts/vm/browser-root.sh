#!/bin/bash
# scripts/vm/browser-root.sh IMAGE
#
# Builds IMAGE: a read-only ext4 file system holding the host's Debian
# Chromium and ChromeDriver with exactly the shared libraries they load
# (ldd closure, NSS modules, fonts), laid out as a tiny merged-/usr root.
# scripts/vm-test attaches it as a virtio disk when SCRIPT asks for a
# browser (a line "# vm-test: browser"); the VM's /init mounts it on
# /opt/browser, and vpnnat-operator runs chromedriver chrooted into it.
# The test VM's kernel has ext4 built in (no 9p, so no host share).
# Needs: chromium, chromium-driver (Debian), mkfs.ext4 (e2fsprogs).
set -euo pipefail
IMAGE=${1:?usage: browser-root.sh IMAGE}
for b in /usr/lib/chromium/chromium /usr/bin/chromedriver; do
	[[ -x $b ]] || {
		echo "browser-root: $b missing (apt-get install chromium chromium-driver)" >&2
		exit 1
	}
done
command -v mkfs.ext4 >/dev/null || {
	echo "browser-root: mkfs.ext4 missing (apt-get install e2fsprogs)" >&2
	exit 1
}
R=$(mktemp -d)
trap 'rm -rf "$R"' EXIT
mkdir -p "$R/usr/lib" "$R/usr/lib64" "$R/usr/bin" "$R/usr/share" "$R/etc"
ln -s usr/lib "$R/lib"
ln -s usr/lib64 "$R/lib64"
ln -s usr/bin "$R/bin"

# copy PATH...: each file at its own path, following symlinks to their
# targets (which are copied too).
copy() {
	local f
	for f in "$@"; do
		[[ -e $f ]] || continue
		[[ -e $R$f || -L $R$f ]] && continue
		mkdir -p "$R$(dirname "$f")"
		cp -a "$f" "$R$f"
		[[ -L $f ]] && copy "$(readlink -f "$f")"
	done
	return 0
}
cp -a /usr/lib/chromium "$R/usr/lib/"
copy /usr/bin/chromedriver /lib64/ld-linux-x86-64.so.2
nss=/usr/lib/x86_64-linux-gnu/nss
[[ -d $nss ]] && copy "$nss"/*.so
# Chromium dlopens NSS's softoken and the CA module, and libEGL/GLES
# from its own directory: take the ldd closure of all of them.
mapfile -t libs < <(
	for b in /usr/lib/chromium/chromium /usr/bin/chromedriver /usr/lib/chromium/*.so \
		/usr/lib/x86_64-linux-gnu/libsoftokn3.so /usr/lib/x86_64-linux-gnu/libfreeblpriv3.so \
		/usr/lib/x86_64-linux-gnu/libnssckbi.so "$nss"/*.so; do
		[[ -e $b ]] && ldd "$b" 2>/dev/null
	done | awk '/=> \//{print $3} /^[ \t]*\/lib/{print $1}' | sort -u
)
copy "${libs[@]}" /usr/lib/x86_64-linux-gnu/libsoftokn3.so /usr/lib/x86_64-linux-gnu/libfreeblpriv3.so \
	/usr/lib/x86_64-linux-gnu/libnssckbi.so
cp -a /etc/fonts "$R/etc/" 2>/dev/null || true
cp -a /usr/share/fonts "$R/usr/share/" 2>/dev/null || true
mkdir -p "$R/tmp" "$R/proc" "$R/dev" "$R/sys" "$R/root" "$R/run"
echo 'root:x:0:0:root:/tmp:/bin/sh' >"$R/etc/passwd"
echo 'root:x:0:' >"$R/etc/group"
printf '127.0.0.1 localhost\n' >"$R/etc/hosts"
size=$(du -sm "$R" | cut -f1)
tmp=$IMAGE.tmp.$$
rm -f "$tmp"
truncate -s $((size + size / 5 + 32))M "$tmp"
mkfs.ext4 -q -F -d "$R" -L vmbrowser -O ^has_journal "$tmp"
mv -f "$tmp" "$IMAGE"
