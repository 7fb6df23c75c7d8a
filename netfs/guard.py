"""What the daemon makes sure of before it touches its directories.

- Its own umask (022): nothing it creates depends on its caller's.
- Trusted directories: the configuration and state directories, and every
  directory above them, must be owned by root (the daemon's user) and not
  writable by group or others -- except a sticky directory such as /tmp,
  whose entries others cannot replace. A directory that does not exist yet
  is created with mode 0755 (the state directory now, the configuration
  directory by the state store). Anything else: :class:`Refused`, with the
  directory and the reason.
- One daemon per state directory: ``<state_dir>/.lock`` is opened (never
  through a symlink) and locked with flock(2) for the daemon's life; it
  holds the pid of the daemon. A second daemon is refused, naming the
  directory and the holder's pid. The lock goes with the process (also
  after SIGKILL), so a crash never leaves a stale lock. A holder that no
  longer serves a mount (its FUSE main loop ended, which it writes into
  the lock file, or it holds no /dev/fuse descriptor any more: its file
  system was unmounted and it is finishing what was under way) is waited for, up to
  :data:`EXIT_WAIT` seconds, so ``umount`` followed at once by a new mount
  works; one still serving (or starting) is refused.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import time
from pathlib import Path

from netfs.state import LOCK, make_dir

UMASK = 0o022
EXIT_WAIT = 10.0  # longest a new daemon waits for an exiting one's lock
EXITING = "exiting"
POLL = 0.02


def serves_fuse(pid: int) -> bool:
    """Does process `pid` still hold a FUSE connection (/dev/fuse open)?
    False when it is gone or exiting (its descriptors closed); True when
    that cannot be told (no /proc, no permission): refusing is the safe side."""
    fds = f"/proc/{pid}/fd"
    try:
        names = os.listdir(fds)
    except FileNotFoundError:
        return False
    except OSError:
        return True
    for name in names:
        try:
            if os.readlink(f"{fds}/{name}") == "/dev/fuse":
                return True
        except OSError:
            continue
    return False


def mark_exiting(fd: int) -> None:
    """The daemon's mount is gone and it is finishing what is under way:
    say so in the lock file, so a new daemon waits for it (see below)."""
    with contextlib.suppress(OSError):
        os.pwrite(fd, f"{os.getpid()} {EXITING}\n".encode(), 0)


def _serving(holder: str) -> bool:
    pid, _, word = holder.partition(" ")
    if word == EXITING or not pid.isdigit():
        return False
    return pid == str(os.getpid()) or serves_fuse(int(pid))


def _wait_for_exit(fd: int, holder: str) -> bool:
    """The lock is held by `holder` (the lock file's text): if that daemon
    serves no mount any more, wait for it to exit (bounded); True once the
    lock is ours."""
    if _serving(holder):
        return False
    deadline = time.monotonic() + EXIT_WAIT
    while time.monotonic() < deadline:
        time.sleep(POLL)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
        now = os.pread(fd, 32, 0).decode(errors="replace").strip()
        if now.split(" ")[0] != holder.split(" ")[0] and _serving(now):
            return False  # another daemon took it in between and serves
    return False


class Refused(Exception):
    """The daemon must not run: the message says why (one line)."""


def check_trusted(path: Path) -> None:
    """``path`` (if it exists) and every directory above it are the
    daemon user's and writable by nobody else (sticky ones excepted)."""
    me = os.geteuid()
    path = Path(os.path.abspath(path))
    chain = [path, *path.parents]
    for d in chain:
        try:
            st = os.lstat(d)
        except FileNotFoundError:
            continue  # will be created (mode 0755)
        except OSError as e:
            raise Refused(f"{d}: {e.strerror}") from None
        if stat.S_ISLNK(st.st_mode):
            if d == path:
                raise Refused(f"{d}: is a symbolic link (give the directory itself)")
            # an ancestor may be a link (/var/run -> /run): its target is checked
            check_trusted(Path(os.path.realpath(d)))
            continue
        if not stat.S_ISDIR(st.st_mode):
            raise Refused(f"{d}: not a directory")
        if st.st_uid not in (0, me):
            raise Refused(
                f"{d}: owned by uid {st.st_uid}, not by root: "
                "netfs keeps its configuration and state only in directories of root"
            )
        if st.st_mode & 0o022 and not (d != path and st.st_mode & stat.S_ISVTX):
            raise Refused(
                f"{d}: writable by group or others (mode {stat.S_IMODE(st.st_mode):04o}): "
                "netfs keeps its configuration and state only in directories "
                "that only root can change"
            )


def lock_state_dir(state_dir: Path) -> int:
    """Take the state directory's lock; returns its descriptor (keep it
    open for the daemon's life). Refused if another daemon holds it."""
    make_dir(state_dir)
    path = state_dir / LOCK
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise Refused(f"{path}: {e.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
        busy = e.errno in (errno.EWOULDBLOCK, errno.EAGAIN)
        try:
            if busy and _wait_for_exit(fd, holder):
                record_pid(fd)
                return fd
        except OSError as e2:
            e, busy = e2, False
        os.close(fd)
        if busy:
            raise Refused(
                f"state directory {state_dir} is in use by another netfs daemon "
                f"(pid {holder.split(' ')[0] or 'unknown'}; lock file {path})"
            ) from None
        raise Refused(f"{path}: {e.strerror}") from None
    record_pid(fd)
    return fd


def record_pid(fd: int) -> None:
    """Write this process's pid into the lock file (again after a fork)."""
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)


def prepare(config_dir: Path, state_dir: Path) -> int:
    """The daemon's umask, trusted directories, the lock (its descriptor)."""
    os.umask(UMASK)
    for d in (config_dir, state_dir):
        check_trusted(d)
    return lock_state_dir(state_dir)
