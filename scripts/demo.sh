#!/bin/bash
# scripts/demo.sh [--no-build] [--ui-port PORT] [--routers N] [--scenario] [--smoke]
#
# The main job (INTERFACES.md): boots the center image and N [2] router
# images (out/images/, made by scripts/build-images.sh, which this script
# runs first) in QEMU/TCG, joined as in the test topology of TESTBED.md,
# and serves the operator UI on 127.0.0.1 until Ctrl-C. The center boots
# first, then the routers one after another, each boot timed from its own
# QEMU start (VPNNAT_DEMO_PARALLEL_BOOT=1: all at once; see "boot" below).
#
#   "internet" 198.51.100.0/24  a QEMU multicast socket bound to 127.0.0.1
#                               (traffic never leaves this machine):
#                               center eth0 (.10 centerd, .21 gateway gw1),
#                               router rN eth0 (.10N)
#   center LAN 172.16.0.0/24    center eth1: QEMU user networking, isolated
#                               (restrict=on); the operator UI
#                               172.16.0.10:8443 is forwarded to
#                               127.0.0.1:PORT only
#   home LAN 192.168.1.0/24     inside each router VM, the same in every
#                               home: eth1 is a bridge, pc1 192.168.1.10
#                               and nas 192.168.1.11 are network namespaces
#                               serving a web page on port 80
#
# Each router gets its own routerd.toml (derived from buildroot-overlay/
# router/etc/routerd.toml: terminal ID router-N, WAN address, Secret(ID) =
# HMAC-SHA256(center's factory master key, terminal ID), center timeout
# 30 s so that it outlasts centerd's wait for the tunnel) and a root shell
# on its second serial line; the center gets a demo operator password.
# Consoles and shells are UNIX sockets in out/demo/ (printed), next to the
# console logs, which stay there after the demo until the next one.
#
#   --no-build     do not run cargo (scripts/build-images.sh --no-build)
#   --ui-port P    operator UI on 127.0.0.1:P [8443, or the next free one]
#   --routers N    number of router VMs [2]
#   --scenario     once everything is up, play the maintenance scenario
#                  (below) before handing over to you
#   --smoke        non-interactive: boot everything, check that each
#                  routerd starts, the UI answers and every router is
#                  installed with the center, play the scenario, then stop
#                  (exit 0 when every check passed, else 1)
#
# The scenario, one line per check: every router VM runs `routerd request
# ... pc1` in its shell; the tunnels come up (gatewayd's IKEv2 to each
# routerd); the center VM (operator LAN address 172.16.0.10) fetches
# http://<VPNNAT>/ of pc1 in every home at the same time and gets each
# home's own page, though pc1 is 192.168.1.10 everywhere; headless
# Chromium on the host logs in to the forwarded UI, sees every request,
# saves out/demo/operator-ui.png (and operator-ui-ended.png), presses
# start and end on r1's request; the center CLI ends the others; the
# center frees every tunnel slot, no SA is left on the routers and the
# VPNNAT addresses reach nothing any more. Helpers: scripts/images/
# vm-shell.py (a command in a VM's serial shell), scripts/images/
# operator-ui.py (WebDriver).
#
# Environment: VPNNAT_DEMO_PASSWORD [demo], VPNNAT_DEMO_MEM (MB per VM)
# [384], VPNNAT_DEMO_TIMEOUT (s to wait for each VM) [180], and those of
# scripts/build-images.sh.
set -euo pipefail

prog=demo
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
IMAGES=${VPNNAT_IMAGES_OUT:-$REPO/out/images}
PASSWORD=${VPNNAT_DEMO_PASSWORD:-demo}
MEM=${VPNNAT_DEMO_MEM:-384}
WAIT=${VPNNAT_DEMO_TIMEOUT:-180}
export PATH=$PATH:/usr/local/sbin:/usr/sbin:/sbin
export LC_ALL=C

# progress lines "[+12.3s] demo: what" on stderr (scripts/lib/progress.sh,
# one clock shared with build-images.sh, which this script runs)
# shellcheck source=scripts/lib/progress.sh
. "$REPO/scripts/lib/progress.sh"
log() { PROGRESS_PREFIX=$prog progress "$*"; }
die() {
	printf '%s: error: %s\n' "$prog" "$*" >&2
	exit 1
}
usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; }

BUILD_ARGS=()
UI_PORT=
ROUTERS=2
SMOKE=
SCENARIO=
while [[ $# -gt 0 ]]; do
	case $1 in
	--no-build) BUILD_ARGS+=(--no-build) ;;
	--ui-port)
		UI_PORT=${2:?--ui-port needs a port}
		shift
		;;
	--routers)
		ROUTERS=${2:?--routers needs a number}
		shift
		;;
	--smoke) SMOKE=1 ;;
	--scenario) SCENARIO=1 ;;
	-h | --help)
		usage
		exit 0
		;;
	*)
		usage >&2
		exit 2
		;;
	esac
	shift
done
[[ $ROUTERS =~ ^[1-9]$ ]] || die "--routers must be 1-9"
[[ $(id -u) == 0 ]] || die "must run as root (apt-get, /var/cache, mknod)"

# ---------------------------------------------------------------- tools
need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
command -v socat >/dev/null || need+=(socat)
command -v openssl >/dev/null || need+=(openssl)
command -v curl >/dev/null || need+=(curl)
command -v cpio >/dev/null || need+=(cpio)
if [[ ${#need[@]} -gt 0 ]]; then
	log "installing ${need[*]} with apt-get..."
	export DEBIAN_FRONTEND=noninteractive
	apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null 2>&1 ||
		{ apt-get update -qq >/dev/null 2>&1 &&
			apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null 2>&1; } ||
		die "apt-get install ${need[*]} failed"
fi

# ---------------------------------------------------------------- images
log "building the offline images (scripts/build-images.sh ${BUILD_ARGS[*]})..."
"$REPO/scripts/build-images.sh" "${BUILD_ARGS[@]}" 2>&1 | sed 's/^/  /' >&2
[[ ${PIPESTATUS[0]} == 0 ]] || die "scripts/build-images.sh failed"
for f in router/vmlinuz router/initrd center/vmlinuz center/initrd; do
	[[ -s $IMAGES/$f ]] || die "$IMAGES/$f is missing"
done

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
if [[ -z $UI_PORT ]]; then
	UI_PORT=8443
	while ! port_free "$UI_PORT"; do UI_PORT=$((UI_PORT + 1)); done
elif ! port_free "$UI_PORT"; then
	die "127.0.0.1:$UI_PORT is in use"
fi
# one multicast group per run, so that two demos (or vm-test VMs) never mix
MCAST=230.0.$((RANDOM % 250 + 1)).$((RANDOM % 250 + 1)):$((20000 + RANDOM % 20000))

# The run directory: consoles, shells (UNIX sockets), logs. Kept after the
# demo ends and replaced by the next one (one demo at a time per checkout).
RUN=$REPO/out/demo
mkdir -p "$REPO/out"
exec 8>"$REPO/out/.demo.lock"
flock -n 8 || die "another scripts/demo.sh is running from this checkout"
rm -rf "$RUN"
mkdir -p "$RUN"
PIDS=()
# shellcheck disable=SC2317 # invoked by trap
cleanup() {
	local rc=$? p
	trap - EXIT INT TERM
	if [[ ${#PIDS[@]} -gt 0 ]]; then
		log "stopping ${#PIDS[@]} VM(s)..."
		for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
		for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
	fi
	rm -rf "$RUN"/*.root "$RUN"/*.cpio "$RUN"/*.initrd
	log "logs in $RUN"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

mkcpio() { (cd "$1" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet); }

# ---------------------------------------------------------------- center
CENTER_TOML=$REPO/buildroot-overlay/center/etc/centerd.toml
ROUTER_TOML=$REPO/buildroot-overlay/router/etc/routerd.toml
# The demo's own factory master key (the example's is a placeholder that
# centerd refuses): the routers' Secret(ID)s derive from it. The other
# placeholders (gateway API keys, maintenance password) are filled by the
# center image's first boot (/etc/init.d/S05secrets).
MASTER_KEY=$(openssl rand -hex 32)
[[ $MASTER_KEY =~ ^[0-9a-f]{64}$ ]] || die "openssl rand -hex 32 failed"

# The operator password's hash, written like `centerd hash-password` does
# (fewer PBKDF2 rounds than the default: TCG is slow).
pw_hash() {
	local iter=20000 salt
	salt=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
	printf 'pbkdf2-sha256$%s$%s$%s' "$iter" "$salt" \
		"$(openssl kdf -keylen 32 -kdfopt digest:SHA256 -kdfopt "pass:$1" \
			-kdfopt "hexsalt:$salt" -kdfopt "iter:$iter" PBKDF2 | tr -d ':\n' | tr 'A-F' 'a-f')"
}

layer_center() {
	local root=$RUN/center.root hash
	mkdir -p "$root/etc"
	hash=$(pw_hash "$PASSWORD")
	awk -v h="$hash" '
		/^password_hashes = \[/ { print "password_hashes = [\"" h "\"]"; skip = 1; next }
		skip && /^\]/ { skip = 0; next }
		!skip { print }' "$CENTER_TOML" |
		# TCG is slow: IKE takes seconds; routerd waits 30 s for the answer
		sed -e "s/^master_key = .*/master_key = \"$MASTER_KEY\"/" \
			-e 's/^tunnel_up_timeout_ms = .*/tunnel_up_timeout_ms = 25000/' \
			-e 's/^command_timeout_ms = .*/command_timeout_ms = 15000/' >"$root/etc/centerd.toml"
	chmod 0600 "$root/etc/centerd.toml"
	# demo only: a root shell on the center's console, where the scenario
	# runs its commands (the image itself asks for a login there)
	sed 's|^ttyS0::respawn:.*|ttyS0::respawn:-/bin/sh|' "$REPO/scripts/images/center-inittab" >"$root/etc/inittab"
	# demo only: an HTTP GET for the center's shell (the static busybox's
	# wget crashes in glibc's resolver code, even on an IP address)
	mkdir -p "$root/usr/bin"
	cat >"$root/usr/bin/http-get" <<-'EOF'
		#!/bin/bash
		# http-get ADDR [PORT] [PATH]: print the body of http://ADDR:PORT/PATH
		exec 3<>"/dev/tcp/$1/${2:-80}" || exit 1
		printf 'GET %s HTTP/1.0\r\nHost: %s\r\n\r\n' "${3:-/}" "$1" >&3
		while IFS= read -r l && [ -n "${l%$'\r'}" ]; do :; done <&3
		exec cat <&3
	EOF
	chmod 0755 "$root/usr/bin/http-get"
	printf '%s\n' "$PASSWORD" >"$RUN/operator-password"
	chmod 0600 "$RUN/operator-password"
	mkcpio "$root" >"$RUN/center.layer.cpio"
	cat "$IMAGES/center/initrd" "$RUN/center.layer.cpio" >"$RUN/center.initrd"
}

# ---------------------------------------------------------------- routers
layer_router() {
	local n=$1 root=$RUN/r$1.root tid secret
	tid=router-$n
	secret=$(printf '%s' "$tid" | openssl dgst -sha256 -mac HMAC -macopt "hexkey:$MASTER_KEY" | awk '{ print $NF }')
	mkdir -p "$root/etc/vpnnat/preinit.d"
	sed -e "s|^terminal_id = .*|terminal_id = \"$tid\"|" \
		-e "s|^factory_secret = .*|factory_secret = \"$secret\"|" \
		-e "s|^address = \"198\.51\.100\.[0-9]*/24\"|address = \"198.51.100.10$n/24\"|" \
		-e "s|^center_timeout_secs = .*|center_timeout_secs = 30|" \
		"$ROUTER_TOML" >"$root/etc/routerd.toml"
	# a root shell on ttyS1, supervised by routerd like dnsmasq
	cat >>"$root/etc/routerd.toml" <<-'EOF'

		# demo only (scripts/demo.sh): a root shell on the second serial line
		[[helper]]
		name = "shell"
		command = ["/bin/sh", "-c", "exec /usr/bin/setsid -c /bin/bash -i <>/dev/ttyS1 >&0 2>&1"]
	EOF
	chmod 0600 "$root/etc/routerd.toml"
	# the home LAN: eth1 is a bridge, every host a network namespace held
	# by its web server
	cat >"$root/etc/vpnnat/preinit.d/demo-lan.sh" <<-EOF
		# demo only (scripts/demo.sh): the home LAN of $tid
		ip=/usr/sbin/ip
		\$ip link add eth1 type bridge
		\$ip link set eth1 up
		lan_host() {
		    name=\$1 addr=\$2
		    mkdir -p "/srv/\$name"
		    echo "\$name (\$addr) in the home of $tid" >"/srv/\$name/index.html"
		    /bin/busybox unshare -n /bin/busybox sh -c '
		        while ! /usr/sbin/ip link show eth0 >/dev/null 2>&1; do /bin/busybox sleep 0.05; done
		        /usr/sbin/ip link set lo up
		        /usr/sbin/ip link set eth0 up
		        /usr/sbin/ip addr add "\$1/24" dev eth0
		        /usr/sbin/ip route add default via 192.168.1.1
		        exec /bin/busybox httpd -f -p 80 -h "/srv/\$2"' sh "\$addr" "\$name" &
		    pid=\$!
		    # the namespace exists once unshare has run
		    while [ "\$(readlink /proc/\$pid/ns/net)" = "\$(readlink /proc/self/ns/net)" ]; do
		        /bin/busybox sleep 0.02
		    done
		    \$ip link add "v-\$name" type veth peer name eth0 netns \$pid
		    \$ip link set "v-\$name" master eth1 up
		}
		# the bridge must exist before routerd configures eth1; the hosts
		# on it are set up while routerd starts (they are the demo's home
		# devices, not part of the router)
		(lan_host pc1 192.168.1.10; lan_host nas 192.168.1.11) &
	EOF
	mkcpio "$root" >"$RUN/r$n.layer.cpio"
	cat "$IMAGES/router/initrd" "$RUN/r$n.layer.cpio" >"$RUN/r$n.initrd"
}

# ---------------------------------------------------------------- boot
# qboot instead of SeaBIOS when installed, like scripts/build-images.sh's
# boot check (its qemu_bios(), read from there)
eval "$(sed -n '/^qemu_bios() {$/,/^}$/p' "$REPO/scripts/build-images.sh")"
# shellcheck disable=SC2207 # nothing or "-bios PATH", no spaces in it
QEMU_COMMON=(-accel tcg -cpu max -m "$MEM" -smp 1 -nodefaults -no-user-config
	-display none -no-reboot $(qemu_bios))

# $1 name, $2 image dir, $3 initrd, then extra QEMU arguments
boot() {
	local name=$1 dir=$2 initrd=$3
	shift 3
	qemu-system-x86_64 "${QEMU_COMMON[@]}" \
		-kernel "$dir/vmlinuz" -initrd "$initrd" -append "$(cat "$dir/cmdline")" \
		-chardev "socket,id=con,path=$RUN/$name.console,server=on,wait=off,logfile=$RUN/$name.log" \
		-serial chardev:con "$@" </dev/null >"$RUN/$name.qemu.log" 2>&1 &
	PIDS+=($!)
	eval "START_${name}=\$EPOCHREALTIME"
}

layer_center
for ((i = 1; i <= ROUTERS; i++)); do layer_router "$i"; done

elapsed() { awk -v s="$1" -v n="$EPOCHREALTIME" 'BEGIN { printf "%.1f", n - s }'; }
since_start() {
	local v=START_$1
	elapsed "${!v}"
}
alive() {
	local p
	for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null || return 1; done
}

boot_center() {
	log "booting the center (run directory $RUN)..."
	boot center "$IMAGES/center" "$RUN/center.initrd" \
		-netdev "socket,id=inet,mcast=$MCAST,localaddr=127.0.0.1" \
		-device virtio-net-pci,netdev=inet,mac=52:54:00:00:01:10 \
		-netdev "user,id=lan,net=172.16.0.0/24,host=172.16.0.2,dhcpstart=172.16.0.200,restrict=on,hostfwd=tcp:127.0.0.1:$UI_PORT-172.16.0.10:8443" \
		-device virtio-net-pci,netdev=lan,mac=52:54:00:00:02:10
}
boot_router() {
	log "booting router r$1..."
	boot "r$1" "$IMAGES/router" "$RUN/r$1.initrd" \
		-netdev "socket,id=inet,mcast=$MCAST,localaddr=127.0.0.1" \
		-device "virtio-net-pci,netdev=inet,mac=52:54:00:00:00:0$1" \
		-chardev "socket,id=sh,path=$RUN/r$1.shell,server=on,wait=off" -serial chardev:sh
}
# wait_routerd I: routerd's startup line on router I's console; prints the
# boot time (QEMU start -> routerd serving)
failed=0
wait_routerd() {
	local i=$1
	until grep -aq 'routerd .* for terminal' "$RUN/r$i.log" 2>/dev/null; do
		alive || die "a VM exited (see $RUN/*.qemu.log, $RUN/*.log)"
		if awk -v e="$(since_start "r$i")" -v w="$WAIT" 'BEGIN { exit !(e > w) }'; then
			log "r$i: no routerd startup line after $WAIT s; console:"
			tr -d '\r' <"$RUN/r$i.log" | tail -n 20 >&2
			failed=1
			return
		fi
		sleep 0.1
	done
	log "r$i: routerd serving $(since_start "r$i") s after QEMU start"
}

# wait_ui: the operator UI answers on 127.0.0.1:UI_PORT
wait_ui() {
	local t code ui=
	for ((t = 0; t < WAIT * 5; t++)); do
		code=$(curl -s -m 2 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$UI_PORT/login" || true)
		if [[ $code == 200 ]]; then
			ui=1
			break
		fi
		alive || die "a VM exited (see $RUN/*.qemu.log, $RUN/*.log)"
		sleep 0.2
	done
	if [[ -n $ui ]]; then
		log "center: operator UI answers $(since_start center) s after QEMU start"
	else
		log "center: the operator UI does not answer on 127.0.0.1:$UI_PORT; center console:"
		tr -d '\r' <"$RUN/center.log" | tail -n 20 >&2
		failed=1
	fi
}

# A home router boots on its own board. Here every VM shares this
# machine's cores under TCG emulation, so booting three at once makes
# each boot as slow as the sum of them (7.4 s for a router booted beside
# the center and the other router on 2 cores, 3.5-4.3 s alone): by
# default the center boots first and then the routers one after another,
# each timed from its own QEMU start. VPNNAT_DEMO_PARALLEL_BOOT=1 boots
# all at once.
if [[ ${VPNNAT_DEMO_PARALLEL_BOOT:-} == 1 ]]; then
	boot_center
	for ((i = 1; i <= ROUTERS; i++)); do boot_router "$i"; done
	for ((i = 1; i <= ROUTERS; i++)); do wait_routerd "$i"; done
	wait_ui
else
	log "the center boots first, then the routers one after another (each timed from its own QEMU start)"
	boot_center
	wait_ui
	for ((i = 1; i <= ROUTERS; i++)); do
		boot_router "$i"
		wait_routerd "$i"
	done
fi

# Each router's installation notice reaches centerd over the "internet".
for ((i = 1; i <= ROUTERS; i++)); do
	for ((t = 0; t < WAIT * 5; t++)); do
		grep -aq 'installed: server part' "$RUN/r$i.log" 2>/dev/null && break
		alive || die "a VM exited (see $RUN/*.qemu.log, $RUN/*.log)"
		sleep 0.2
	done
	if line=$(grep -a -m1 -o 'installed: server part.*' "$RUN/r$i.log" 2>/dev/null); then
		log "r$i: ${line//$'\r'/} ($(since_start "r$i") s after QEMU start)"
	else
		log "r$i: not installed with the center after $WAIT s"
		failed=1
	fi
done

# ---------------------------------------------------------------- scenario
# The real thing: every router asks for maintenance of pc1 (the same LAN
# address in every home), the tunnels come up, the operator side (the
# center VM: it carries the operator LAN address 172.16.0.10 and gateway
# gw1) reaches pc1 of every home at the same time through a different
# VPNNAT address each and gets that home's own page; the operator UI in
# Chromium on the host shows every request (screenshot), starts and ends
# one; the center's CLI ends the others; the tunnels go away.
VMSH=$REPO/scripts/images/vm-shell.py
check() { # check NAME OK [DETAIL]: one line per check
	if [[ $2 == 0 ]]; then
		log "ok   - $1"
	else
		log "FAIL - $1"
		[[ -z ${3:-} ]] || printf '%s\n' "$3" | tail -n 15 | sed 's/^/         | /' >&2
		failed=1
	fi
}
# on_vm NAME TIMEOUT COMMAND: run COMMAND in r<N>'s shell or the center's
# console, print its output, return its status
on_vm() {
	local sock=$RUN/$1.shell
	[[ $1 == center ]] && sock=$RUN/center.console
	python3 "$VMSH" "$sock" "$2" "$3"
}
CENTERD_CLI="centerd --config /etc/centerd.toml"
# poll SECONDS VM COMMAND: until COMMAND succeeds on VM
poll() {
	local end=$((SECONDS + $1))
	until on_vm "$2" 30 "$3" >/dev/null 2>&1; do
		((SECONDS < end)) || return 1
		sleep 1
	done
}
scenario() {
	local i out rc acc vpn t0 fetch want
	local -a ACC VPN
	log "scenario: every router requests maintenance of pc1 (192.168.1.10)..."
	# the center's daemons first: a gatewayd that did not start explains
	# every failure after it (its log, not a tunnel time-out three minutes on)
	out=$(on_vm center 30 'pidof centerd >/dev/null && pidof gatewayd >/dev/null || { tail -n 15 /var/log/gatewayd.log /var/log/centerd.log; false; }' 2>&1)
	check "center: centerd and gatewayd are running" "$?" "$out"
	t0=$EPOCHREALTIME
	for ((i = 1; i <= ROUTERS; i++)); do
		on_vm "r$i" 120 "routerd request --name 'Owner of router-$i' --urgency high --phone '+81 3 0000 000$i' --content 'demo: the printer does not print' pc1" \
			>"$RUN/r$i.request.out" 2>&1 &
		eval "REQ_$i=\$!"
	done
	for ((i = 1; i <= ROUTERS; i++)); do
		rc=0
		eval "wait \$REQ_$i" || rc=$?
		out=$(cat "$RUN/r$i.request.out")
		acc=$(sed -n 's/^acceptance number \([0-9]*\).*/\1/p' <<<"$out" | head -n1)
		vpn=$(sed -n 's/^ *pc1 [0-9.]* -> VPNNAT \([0-9.]*\).*/\1/p' <<<"$out" | head -n1)
		ACC[i]=${acc:-0}
		VPN[i]=${vpn:-0.0.0.0}
		check "r$i: routerd request pc1 accepted (acceptance number ${acc:-none}, VPNNAT ${vpn:-none}, $(elapsed "$t0") s)" \
			"$([[ $rc == 0 && -n $acc && -n $vpn ]] && echo 0 || echo 1)" "$out"
	done
	for ((i = 1; i <= ROUTERS; i++)); do
		rc=0
		poll "$WAIT" center "$CENTERD_CLI show-router router-$i | tr -d ' \n' | grep -q '\"tunnel_state\":\"up\"'" || rc=$?
		check "r$i: tunnel up (gatewayd reported it to centerd, $(elapsed "$t0") s after the requests)" "$rc"
	done
	for ((i = 1; i <= ROUTERS; i++)); do
		out=$(on_vm "r$i" 30 "ip xfrm state | grep -c '^src'" 2>&1) || true
		check "r$i: the router's kernel holds the ESP SA pair (${out//$'\n'/} SAs)" \
			"$([[ $out =~ ^[0-9]+ && ${out%%[!0-9]*} -ge 2 ]] && echo 0 || echo 1)" "$out"
	done
	# every home's pc1 at once from the center VM, each its own page
	fetch="("
	for ((i = 1; i <= ROUTERS; i++)); do
		fetch+="busybox timeout 15 http-get ${VPN[i]} >/tmp/w$i 2>&1 & "
	done
	fetch+="wait); "
	for ((i = 1; i <= ROUTERS; i++)); do fetch+="echo \"w$i \$(cat /tmp/w$i)\"; "; done
	out=$(on_vm center 60 "$fetch" 2>&1) || true
	for ((i = 1; i <= ROUTERS; i++)); do
		want="pc1 (192.168.1.10) in the home of router-$i"
		check "center reaches pc1 of r$i at ${VPN[i]} (all homes at the same time): \"$(sed -n "s/^w$i //p" <<<"$out" | head -n1)\"" \
			"$(grep -qxF "w$i $want" <<<"$out" && echo 0 || echo 1)" "$out"
	done
	if ((ROUTERS >= 2)); then
		check "every home got a different VPNNAT address for the same LAN address" \
			"$([[ $(printf '%s\n' "${VPN[@]:1}" | sort -u | wc -l) == "$ROUTERS" ]] && echo 0 || echo 1)"
	fi
	# the operator UI in Chromium on the host
	local list shot=$RUN/operator-ui.png first=1
	list=$(
		IFS=,
		echo "${ACC[*]:1}"
	)
	if [[ -x /usr/bin/chromedriver ]]; then
		log "scenario: the operator UI in headless Chromium (http://127.0.0.1:$UI_PORT/)..."
		out=$(python3 "$REPO/scripts/images/operator-ui.py" --ui "http://127.0.0.1:$UI_PORT" \
			--password-file "$RUN/operator-password" --shot "$shot" --show "$list" --start-end "${ACC[1]}" 2>&1) &&
			rc=0 || rc=$?
		while IFS= read -r line; do log "  $line"; done <<<"$out"
		check "operator UI in Chromium: login, every request listed, screenshot, start and end of request ${ACC[1]}" "$rc"
		[[ $rc != 0 ]] || first=2
	else
		check "chromedriver installed (/usr/bin/chromedriver) for the operator UI check" 1
	fi
	for ((i = first; i <= ROUTERS; i++)); do
		out=$(on_vm center 60 "$CENTERD_CLI end-request ${ACC[i]}" 2>&1) && rc=0 || rc=$?
		check "center CLI ends request ${ACC[i]} of r$i" "$rc" "$out"
	done
	t0=$EPOCHREALTIME
	for ((i = 1; i <= ROUTERS; i++)); do
		rc=0
		poll "$WAIT" center "$CENTERD_CLI show-router router-$i | tr -d ' \n' | grep -q '\"slot\":null'" || rc=$?
		check "r$i: tunnel slot released by the center ($(elapsed "$t0") s)" "$rc"
		out=$(on_vm "r$i" 30 "ip xfrm state | grep -c '^src'" 2>&1) || true
		rc=0
		poll "$WAIT" "r$i" "test -z \"\$(ip xfrm state)\"" || rc=$?
		check "r$i: no SA left on the router ($(elapsed "$t0") s; ${out//$'\n'/} at the first look)" "$rc"
	done
	out=$(on_vm center 60 "for v in ${VPN[*]:1}; do busybox timeout 5 bash -c 'exec 3<>/dev/tcp/\$0/80' \$v && echo \"reached \$v\"; done; true" 2>&1) || true
	check "the VPNNAT addresses reach nothing any more" "$(grep -q 'reached\|home of' <<<"$out" && echo 1 || echo 0)" "$out"
}
if [[ -n $SMOKE || -n $SCENARIO ]] && [[ $failed == 0 ]]; then
	scenario
fi

if [[ -n $SMOKE ]]; then
	if [[ $failed == 0 ]]; then
		log "smoke: passed"
		exit 0
	fi
	log "smoke: FAILED"
	exit 1
fi

cat <<EOF

  Operator UI:  http://127.0.0.1:$UI_PORT/   (password: $PASSWORD)
  Center shell: socat -,raw,echo=0 unix-connect:$RUN/center.console
  Router shell: socat -,raw,echo=0 unix-connect:$RUN/r1.shell   (r1 .. r$ROUTERS)
  Logs:         $RUN/{center,r1..r$ROUTERS}.log (consoles)

  Try this: in r1's shell run
      routerd request --name Alice --phone 0123 --content 'printer broken' pc1
  (it prints pc1's VPNNAT address), start the request in the UI, and in
  the center shell run
      http-get <pc1's VPNNAT address>
  (pc1 of r2 has the same LAN address 192.168.1.10: request it too and
  both answer at once, each through its own VPNNAT address). End the
  request in the UI, or: centerd --config /etc/centerd.toml end-request N
  (scripts/demo.sh --scenario plays all of this for you first.)

  Ctrl-C stops every VM.
EOF
while alive; do sleep 1; done
die "a VM exited (see $RUN)"
