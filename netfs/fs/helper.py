"""The notifier's helper program: the daemon's own operations through the mount.

FUSE has no way to raise inotify events, so the daemon makes them by doing
the operation a watcher should hear of (mkdir, rmdir, mknod, unlink, a write)
through its own mount. Those requests come from this small child process, not
from a thread of the daemon: if the daemon is killed with SIGKILL while one of
them waits for its answer, the daemon still exits at once (no thread of it is
stuck in a request to itself), its /dev/fuse descriptor closes, the kernel
aborts the connection, and the mount reads "Transport endpoint is not
connected" instead of hanging everyone. The child dies with the daemon
(PR_SET_PDEATHSIG) and holds no descriptor of the FUSE device (it is exec'd
with close_fds).

Run as a script (``python -I -S helper.py DAEMON_PID``): standard library
only, nothing of netfs is imported (no site-packages with -S). Protocol: one
JSON ``[op, path]`` per line on stdin; one line per request on stdout, the
errno (0: done).
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
from collections.abc import Callable

PR_SET_PDEATHSIG = 1


def touch(path: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, b"\n")
    finally:
        os.close(fd)


def _mknod(path: str) -> None:
    os.mknod(path, 0o100444)


OPS: dict[str, Callable[[str], None]] = {
    "mkdir": os.mkdir,
    "rmdir": os.rmdir,
    "unlink": os.unlink,
    "mknod": _mknod,
    "touch": touch,
}


def main(argv: list[str]) -> int:
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != int(argv[1]):
        return 0  # the daemon died before the prctl: nobody to serve
    out = sys.stdout.buffer
    for line in sys.stdin.buffer:
        op, path = json.loads(line)
        try:
            OPS[op](path)
            out.write(b"0\n")
        except OSError as e:
            out.write(b"%d\n" % (e.errno or 0))
        out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
