#!/usr/bin/env python3
"""vm-shell.py SOCKET TIMEOUT COMMAND

Runs COMMAND in the shell that listens on a QEMU serial line (a UNIX
socket of scripts/demo.sh: a router's r<N>.shell or the center's console)
and prints what it wrote, exiting with its exit status (124 when TIMEOUT
seconds pass first, 125 when the socket does not connect).

The serial line is a terminal that echoes and may carry kernel messages:
the output is what lies between two markers the command prints itself
(written split in the command line, so the echo never matches them).
"""
import os
import re
import socket
import sys
import time


def main() -> int:
    if len(sys.argv) != 4:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    path, timeout, command = sys.argv[1], float(sys.argv[2]), sys.argv[3]
    tag = "%d%d" % (os.getpid(), int(time.time() * 1000) % 100000)
    begin = "@@BEGIN-" + tag + "@@"
    end = re.compile(r"@@END-" + tag + r" (\d+)@@")
    # The markers as the command line spells them: echo joins the halves.
    # One line (a second line's echo would follow the output); COMMAND must
    # not end in ';' or '&'. Job-control chatter of an interactive shell is
    # avoided by running background jobs inside ( ).
    command = command.strip().rstrip(";").strip()
    line = "echo '@@BEGIN-''%s@@'; %s; echo \"@@END-\"'%s '\"$?@@\"\n" % (tag, command, tag)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    deadline = time.monotonic() + timeout
    while True:
        try:
            s.connect(path)
            break
        except OSError as e:
            if time.monotonic() > deadline:
                print("vm-shell: %s: %s" % (path, e), file=sys.stderr)
                return 125
            time.sleep(0.2)
    # A fresh line first (whatever was typed before is discarded by ^U).
    s.sendall(b"\x15\n" + line.encode())
    buf = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            sys.stdout.write(tail(buf.decode("utf-8", "replace"), begin))
            print("vm-shell: no answer within %g s" % timeout, file=sys.stderr)
            return 124
        s.settimeout(left)
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            continue
        if not chunk:
            print("vm-shell: the VM closed the line", file=sys.stderr)
            return 125
        buf += chunk
        text = buf.decode("utf-8", "replace")
        m = end.search(text)
        if m:
            out = tail(text[: m.start()], begin)
            sys.stdout.write(out.replace("\r", ""))
            return int(m.group(1))


def tail(text: str, begin: str) -> str:
    """What follows the begin marker's own line."""
    i = text.rfind(begin)
    if i < 0:
        return ""
    j = text.find("\n", i)
    return "" if j < 0 else text[j + 1 :]


if __name__ == "__main__":
    sys.exit(main())
