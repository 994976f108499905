#!/bin/bash
# Power loss (issue 8): `VPNNAT_VM_EXTRA="mkfs.ext4 mount" scripts/vm-test tests/vm/powerloss.sh`.
#
# Home 1's routerd keeps its state directory on an ext4 file system (a
# loop device in the VM). A power cut is the ext4 shutdown ioctl with
# NOLOGFLUSH (`vpnnat-godown`, what xfstests' godown does): the journal is
# not flushed and dirty data never reaches the disk, exactly what a cut at
# that instant leaves. Each trial: routerd SIGKILLs itself at a point of
# the lifecycle (crates/crashpoint) and the power goes at once, or the
# power goes at a random moment during a request or an end while routerd
# runs; then unmount, mount (journal replay), and check that the state
# file parses, holds everything routerd had saved before the cut (its
# saves are write + fsync + rename + directory fsync: router/src/state.rs),
# that routerd restarts from it and its kernel state matches it, and that
# the request completes or fails cleanly with nothing lost (the checks of
# lib/trials.sh). A control writes a file the naive way (write + rename, no
# fsync) and cuts the power: the test can tell a durable save from one
# that is not. Prints "power-loss trials: P passed / R run".
set -u
. "$(dirname "$0")/lib/check.sh"
export ROUTERS=${ROUTERS:-1} GATEWAYS=${GATEWAYS:-1} SLOTS_PER_GATEWAY=${SLOTS_PER_GATEWAY:-1}
export TOPO_SERVED_ONLY=1 TOPO_DIR=${TOPO_DIR:-/run/powerloss}
E2E_WAIT=${E2E_WAIT:-60}

command -v mkfs.ext4 >/dev/null || {
	echo "powerloss: mkfs.ext4 missing in the VM (VPNNAT_VM_EXTRA=\"mkfs.ext4 mount\")"
	exit 1
}
modprobe loop 2>/dev/null
STATE=$TOPO_DIR/r1/state
DISK=/run/powerloss-disk.img
# Every "ip netns exec" process (the daemons, the probes) gets a copy of
# the mounts; for the unmount after a cut to reach those copies too (and
# the next mount to replay the journal into a fresh file system instead of
# reusing the one that was shut down) the state disk sits under a shared
# mount, which those copies follow as slaves.
mkdir -p "$TOPO_DIR/r1"
must mount -t tmpfs r1 "$TOPO_DIR/r1"
must mount --make-shared "$TOPO_DIR/r1"
mkdir -p "$STATE"
dd if=/dev/zero of=$DISK bs=1M count=32 2>/dev/null
must mkfs.ext4 -q -F $DISK
LOOPDEV=$(losetup -f)
must losetup "$LOOPDEV" $DISK
must mount -t ext4 "$LOOPDEV" "$STATE"

# shellcheck source=lib/topology.sh
. "$(dirname "$0")/lib/topology.sh"
# shellcheck source=lib/trials.sh
. "$(dirname "$0")/lib/trials.sh"

# power_cut: the cut, then what a reboot does with the disk: unmount
# (refused writes are gone) and mount (journal replay)
power_cut() {
	vpnnat-godown "$STATE" || return 1
	umount "$STATE" || return 1
	mount -t ext4 "$LOOPDEV" "$STATE"
}
# state_sound: the state file after the cut parses (routerd status reads
# it with the daemon's own loader) and no temporary file is taken for it
state_sound() {
	ls -la "$STATE"
	ROUTERD 1 status >/dev/null || return 1
	installed 1
}

SAVED=""
# on_death D: a router that died at its crash point loses its power too;
# what it had saved (the state file's bytes) must still be there
on_death() {
	case $1 in r1) ;; *) return 0 ;; esac
	SAVED=$(cat "$STATE"/state.json 2>/dev/null | md5sum)
	check "trial $TRIALS: power cut right after the crash, disk replayed" power_cut
	check "trial $TRIALS: the state file parses after the power cut" state_sound
	check "trial $TRIALS: the state file holds exactly what routerd had saved" \
		sh -c "[ \"\$(cat $STATE/state.json | md5sum)\" = '$SAVED' ]"
}

# the lifecycle with a power cut after each durable step (and before);
# POWER_ONLY="point ..." runs only those
CRASH_ONLY=${POWER_ONLY:-}
[ -n "$CRASH_ONLY" ] || unset CRASH_ONLY
trial grant r1 router.gateway.after_reply
trial grant r1 router.gateway.after_save
trial grant r1 router.grant.after_reply
trial grant r1 router.grant.after_save
trial grant r1 router.grant.after_kernel
trial end r1 router.command.after_save
trial end r1 router.command.after_kernel:2
trial end r1 router.vpn_end.after_save
unset -f on_death

# power cuts at a random moment while routerd runs (no crash point): the
# router is killed with the power, whatever it was writing
PL_RUNS=${PL_RUNS:-4}
random_cut() { # N
	local k=1 ms pid
	ms=$(($(od -An -N2 -tu2 /dev/urandom) % 1500))
	TRIALS=$((TRIALS + 1))
	local f0=$FAILED
	if [ $(($1 % 2)) -eq 1 ]; then
		say "trial $TRIALS: power cut ${ms} ms into a request"
		request_bg $k pc1
	else
		check_here "trial $TRIALS setup: $(tid $k) granted pc1" request_ok $k pc1
		say "trial $TRIALS: power cut ${ms} ms into an end"
		nsx server $CENTERD end-request "$ACC" >>$W/end.out 2>&1 &
		REQ_PID=$!
	fi
	sleep "$((ms / 1000)).$(printf %03d $((ms % 1000)))"
	pid=$(daemon_pid r$k)
	vpnnat-godown "$STATE"
	kill -9 "$pid" 2>/dev/null
	wait "$pid" 2>/dev/null
	check "trial $TRIALS: unmount and mount after the cut" sh -c "umount $STATE && mount -t ext4 $LOOPDEV $STATE"
	check "trial $TRIALS: the state file parses after the power cut" state_sound
	start_router $k
	wait_bounded "$REQ_PID" "$E2E_WAIT"
	REQ_PID=""
	check "trial $TRIALS: kernel state = state file and database in every namespace, nothing double-used" \
		wait_for "$E2E_WAIT" consistent
	end_all
	check_here "trial $TRIALS: $(tid $k)'s next request completes" request_ok $k pc1
	end_all
	check "trial $TRIALS: after ending every request nothing is left and no address or slot is lost" \
		wait_for "$E2E_WAIT" baseline
	[ "$FAILED" -eq "$f0" ] && TRIALS_OK=$((TRIALS_OK + 1))
}
for n in $(seq 1 "$PL_RUNS"); do random_cut "$n"; done

# control: a file replaced without fsync does not survive the cut the way
# routerd's state does (shows the cut really drops unsynced data)
control() {
	echo old >"$STATE/control" && sync
	echo new-contents >"$STATE/control.tmp" && mv "$STATE/control.tmp" "$STATE/control"
	power_cut || return 1
	c=$(cat "$STATE/control" 2>/dev/null)
	echo "naive replace without fsync after the cut: '${c}'"
	rm -f "$STATE/control"
	[ "$c" != new-contents ]
}
check "control: a replace without fsync is lost in the cut (the cut drops unsynced data)" control

echo "power-loss trials: $TRIALS_OK passed / $TRIALS run"
stop_all
umount "$STATE" 2>/dev/null
losetup -d "$LOOPDEV" 2>/dev/null
umount "$TOPO_DIR/r1" 2>/dev/null
finish
