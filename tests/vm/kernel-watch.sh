#!/bin/sh
# The check of scripts/vm-test's kernel watch (run by scripts/test.sh, which
# expects exit status 125 within seconds, not this script's own status):
# the kernel's log gets a line as the kernel writes it when it is in
# trouble, and the script then waits far longer than the watch may take.
echo "kernel-watch: writing a BUG line to the kernel log, then waiting"
echo "<0>BUG: vm-test kernel watch check (tests/vm/kernel-watch.sh)" >/dev/kmsg
sleep 600
echo "kernel-watch: still running after 600 s: the watch did not stop the VM"
exit 0
