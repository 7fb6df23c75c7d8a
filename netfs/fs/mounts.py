"""Mount hygiene: find, judge, abort and clear FUSE mounts at a mount point.

Needs no pyfuse3 (`netfs validate` and the tests use it where libfuse is
missing). A mount at the mount point is found in mountinfo without touching
the mount point (any syscall on a hung FUSE mount hangs). It is taken over
only when its daemon is gone: no process holds its FUSE connection's device
(the kernel names the connection in /proc/PID/fdinfo of /dev/fuse), or every
process holding it is dead or dying (a zombie, or SIGKILL pending: killed
while one of its own requests through the mount was in flight, it can
neither answer nor exit). A daemon that is slow, busy or stopped keeps its
mount, however long it takes to answer. The mount taken over is aborted
through fusectl and lazily unmounted. Where the kernel does not name the
connection, a statfs probe from a child process decides: only ENOTCONN (no
daemon at all) lets the mount be taken over.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import re
import select
import signal
import subprocess
import time
from dataclasses import dataclass

from netfs import guard

log = logging.getLogger("netfs.fs")

FUSE_TYPES = ("fuse.netfs", "fuse")
FUSECTL = "/sys/fs/fuse/connections"
PROBE_TIMEOUT = 3.0  # seconds a live daemon has to answer statfs on its mount
_CLONE_NEWNS = 0x00020000
_MS_REC = 0x4000
_MS_PRIVATE = 1 << 18
_MNT_DETACH = 2


@dataclass(frozen=True)
class MountEntry:
    """One line of /proc/self/mountinfo."""

    mount_id: int
    major: int
    minor: int
    mountpoint: str
    fstype: str

    @property
    def connection(self) -> int:
        """The FUSE connection number (its directory under fusectl): the
        kernel's dev_t of the superblock."""
        return (self.major << 20) | self.minor


def _unescape(field_: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field_)


def mounts(mountinfo: str = "/proc/self/mountinfo") -> list[MountEntry]:
    out = []
    with open(mountinfo) as f:
        for line in f:
            fields = line.split()
            try:
                sep = fields.index("-", 6)
                major, minor = fields[2].split(":")
                out.append(
                    MountEntry(
                        int(fields[0]),
                        int(major),
                        int(minor),
                        _unescape(fields[4]),
                        fields[sep + 1],
                    )
                )
            except (ValueError, IndexError):
                continue
    return out


def _target(mountpoint: str) -> str:
    """The mount point as mountinfo shows it, found without touching the mount
    point itself (any syscall on a hung FUSE mount hangs): only its parent
    directory is resolved."""
    path = os.path.abspath(mountpoint)
    parent, base = os.path.split(path)
    return os.path.join(os.path.realpath(parent), base) if base else path


def fuse_mounts_at(mountpoint: str) -> list[MountEntry]:
    """netfs (or untyped FUSE) mounts at `mountpoint`, topmost last."""
    target = _target(mountpoint)
    return [m for m in mounts() if m.mountpoint == target and m.fstype in FUSE_TYPES]


def connection_mounted(conn: int) -> bool:
    """Is a mount of FUSE connection `conn` in this mount namespace?"""
    return any(m.connection == conn for m in mounts() if m.fstype in FUSE_TYPES)


def wait_mount_change(fd: int) -> None:
    """Block until this mount namespace's mount table changes; `fd` is
    /proc/self/mountinfo, opened before the table was last read (the kernel
    reports POLLPRI for every change after the open). From a thread."""
    p = select.poll()
    p.register(fd, select.POLLPRI)
    while not any(ev & (select.POLLPRI | select.POLLERR) for _fd, ev in p.poll()):
        pass


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _fusectl_mounted() -> bool:
    return any(m.mountpoint == FUSECTL and m.fstype == "fusectl" for m in mounts())


def abort_connection(conn: int) -> bool:
    """Abort FUSE connection `conn`: every request waiting on it fails with
    ECONNABORTED at once (also one the kernel would wait for forever). When
    fusectl is not mounted, it is mounted in a private mount namespace of a
    child process, so nothing is left mounted behind."""
    path = f"{FUSECTL}/{conn}/abort"
    if _fusectl_mounted() or os.path.exists(path):
        try:
            with open(path, "w") as f:
                f.write("1")
            return True
        except OSError as e:
            log.debug("abort %s: %s", path, e)
            return False
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            libc = _libc()
            if (
                libc.unshare(_CLONE_NEWNS) == 0
                and libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None) == 0
                and libc.mount(b"fusectl", FUSECTL.encode(), b"fusectl", 0, None) == 0
            ):
                fd = os.open(path, os.O_WRONLY)
                os.write(fd, b"1")
                os.close(fd)
                code = 0
        except BaseException:
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0


def _detach(mountpoint: str) -> bool:
    """Lazy unmount (umount2 MNT_DETACH, or fusermount3 -u -z without root)."""
    libc = _libc()
    if libc.umount2(os.fsencode(mountpoint), _MNT_DETACH) == 0:
        return True
    log.debug("umount2 %s: %s", mountpoint, os.strerror(ctypes.get_errno()))
    try:
        r = subprocess.run(
            ["fusermount3", "-u", "-z", mountpoint], check=False, capture_output=True, timeout=30
        )
        return r.returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def probe(mountpoint: str, timeout: float = PROBE_TIMEOUT) -> str:
    """Is a daemon serving the mount at `mountpoint`? "live", "dead" (ENOTCONN:
    its daemon is gone) or "hung" (no answer: its daemon was killed while one
    of its own requests through the mount was in flight, so it can neither
    answer nor exit). The statfs runs in a child process, which can always be
    killed: a request nobody has read yet is abandoned on SIGKILL."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            os.statvfs(mountpoint)
            os._exit(0)
        except OSError as e:
            os._exit(1 if e.errno in (errno.ENOTCONN, errno.ECONNABORTED) else 2)
        except BaseException:
            os._exit(2)
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            code = os.waitstatus_to_exitcode(status)
            return "live" if code == 0 else "dead" if code == 1 else "live"
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return "hung"
        time.sleep(0.01)


class MountBusy(Exception):
    """A running daemon already serves the mount point."""


class MountRefused(MountBusy):
    """The mount point is no directory to mount on (a symbolic link, not a
    directory, another user's): reported like MountBusy by its callers."""


_SIGKILL_BIT = 1 << (signal.SIGKILL - 1)


def connection_holders(conn: int) -> list[int] | None:
    """The processes holding the FUSE device of connection `conn` (read from
    /proc/PID/fdinfo, "fuse_connection"); None when that cannot be known
    (the kernel does not say, or a /dev/fuse descriptor cannot be read)."""
    holders: list[int] = []
    unknown = False
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            found = _holds(f"/proc/{entry}", conn)
            if found is None:
                # the leader exited (a zombie shows no descriptors) while a
                # thread lives on: the descriptors are the threads'
                for tid in os.listdir(f"/proc/{entry}/task"):
                    found = _holds(f"/proc/{entry}/task/{tid}", conn)
                    if found is not None:
                        break
        except FileNotFoundError:
            continue
        except OSError:
            unknown = True  # another user's process (not root): cannot tell
            continue
        if found == "unknown":
            unknown = True
        elif found == "yes":
            holders.append(int(entry))
    return None if unknown and not holders else holders


def _holds(task: str, conn: int) -> str | None:
    """Does `task` (a /proc directory) hold connection `conn`'s device:
    "yes", "no", "unknown" (a /dev/fuse not named), None: no descriptors."""
    fds = os.listdir(f"{task}/fd")
    if not fds:
        return None
    answer = "no"
    for fd in fds:
        try:
            if os.readlink(f"{task}/fd/{fd}") != "/dev/fuse":
                continue
            with open(f"{task}/fdinfo/{fd}") as f:
                info = f.read()
        except OSError:
            continue
        m = re.search(r"^fuse_connection:\s*(\d+)", info, re.M)
        if m is None:
            answer = "unknown"
        elif int(m.group(1)) == conn:
            return "yes"
    return answer


def process_gone(pid: int) -> bool:
    """Is process `pid` dead or dying? (No such process, every thread a
    zombie or with SIGKILL pending.) A stopped or busy process is alive."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return True
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                text = f.read()
        except FileNotFoundError:
            continue
        fields = dict(line.partition(":")[::2] for line in text.splitlines())
        if fields.get("State", "").strip()[:1] in ("Z", "X"):
            continue
        pending = int(fields.get("SigPnd", "0").strip() or "0", 16) | int(
            fields.get("ShdPnd", "0").strip() or "0", 16
        )
        if not pending & _SIGKILL_BIT:
            return False
    return True


def _judge(mountpoint: str, conns: list[int]) -> str:
    """ "dead" (no process holds the connections), "hung" (only dead or
    dying ones do); MountBusy when a living process serves them, or when
    that cannot be known and the mount answers or does not answer at all."""
    holders: list[int] = []
    for conn in conns:
        pids = connection_holders(conn)
        if pids is None:
            state = probe(mountpoint)
            if state == "dead":
                return "dead"
            raise MountBusy(
                f"{mountpoint} is already mounted by a daemon that "
                + ("answers" if state == "live" else "does not answer now (stopped or busy)")
                + ": not taken over"
            )
        holders += pids
    alive = [pid for pid in holders if not process_gone(pid)]
    if alive:
        raise MountBusy(
            f"{mountpoint} is already mounted by a running daemon "
            f"(pid {', '.join(map(str, alive))}): not taken over, however slow it is to answer"
        )
    return "hung" if holders else "dead"


def cleanup_stale(mountpoint: str) -> bool:
    """:func:`clear_stale`, then the mount point itself, now that no stale
    mount can hang the look: MountRefused unless it is a directory of
    root's (or the daemon user's) and no symbolic link
    (:func:`netfs.guard.check_mount_dir`; the directories above it were
    checked before, by :func:`netfs.guard.mount_point`)."""
    cleared = clear_stale(mountpoint)
    try:
        guard.check_mount_dir(_target(mountpoint))
    except guard.Refused as e:
        raise MountRefused(str(e)) from None
    return cleared


def clear_stale(mountpoint: str) -> bool:
    """Clear a mount left by a killed daemon, before anything stats the mount
    point: find it in mountinfo, make sure its daemon is gone (module
    docstring), abort its FUSE connection (which also frees a killed daemon
    stuck on one of its own requests, so it can exit), then lazily unmount
    it. Raises MountBusy when a living daemon serves it, slow or stopped as
    it may be. Returns True when something was cleared."""
    found = fuse_mounts_at(mountpoint)
    if not found:
        return False
    conns = sorted({m.connection for m in found})
    state = _judge(mountpoint, conns)
    for conn in conns:
        log.warning(
            "%s: stale mount left by a previous daemon (%s, connection %d): aborting it",
            mountpoint,
            "hung" if state == "hung" else "not connected",
            conn,
        )
        abort_connection(conn)
    target = _target(mountpoint)
    for _ in range(len(found) + 1):  # a mount may show twice (propagation)
        if not fuse_mounts_at(mountpoint):
            return True
        if not _detach(target):
            break
    if fuse_mounts_at(mountpoint):
        log.error("%s: cannot unmount the stale mount", mountpoint)
        return False
    return True
