"""What the daemon makes sure of before it touches its directories.

- Its own umask (022): nothing it creates depends on its caller's.
- Trusted paths (:func:`check_path`): the configuration and state
  directories, the log file's directory and the mount point are walked from
  / down with lstat: every directory must be owned by root (the daemon's
  user) and not writable by group or others -- except a sticky directory
  such as /tmp, whose entries others cannot replace (so the next component
  must be root's); a symbolic link of root's is followed (its target walked
  the same way), anyone else's refused. A configuration or state directory
  that does not exist yet is created with mode 0755 by the walk. The mount
  point itself must be a directory of root's and no link; the daemon uses
  its real path. The log file: :func:`open_log`. Anything else:
  :class:`Refused`, with the path, the component and the reason.
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


def check_trusted(path: Path, what: str = "directory") -> None:
    """``path`` (if it exists) and every directory above it are the
    daemon user's and writable by nobody else (sticky ones excepted):
    :func:`check_path` for a directory, creating nothing."""
    check_path(path, what)


MAX_LINKS = 40  # as the kernel's path walk


def trusted_uids() -> tuple[int, int]:
    """Who may own what the daemon writes under or through: root, and the
    daemon's own user (a daemon run by a user for that user)."""
    return (0, os.geteuid())


def check_path(
    path: str | os.PathLike[str],
    what: str,
    last: str = "dir",
    create: bool = False,
    *,
    dry: bool = False,
) -> str:
    """Walk ``path`` as the kernel would, from / down, looking at each
    component with lstat(2) (never through a link), so that nobody but
    root (or the daemon's user) can change where it leads; returns the
    real path. Refused (naming ``what``, the component and why):

    - a symbolic link not owned by root (or the daemon's user); one of
      root's is followed, its target walked the same way (/var/run -> /run);
    - a directory not owned by root (or the daemon's user): its owner
      could replace what is below it;
    - a directory writable by group or others, unless sticky (/tmp,
      /dev/shm: then the rule above keeps others from replacing the next
      component, which must be root's);
    - anything but a directory on the way.

    ``last`` says what the last component is: "dir" (a directory that is
    not a link and not writable by others even when sticky: the state and
    configuration directories), "parent" (a directory holding a file the
    daemon opens itself, such as the log file: sticky allowed, a link of
    root's followed) or "skip" (not looked at: the mount point, which may
    hold a hung mount; see :func:`check_mount_dir`). A missing component
    is created with mode 0755 when ``create``; else it is accepted only
    where nobody else can create it first (its directory is not writable
    by others). ``dry``: the look before anything is made (a walk that will
    create the path later accepts a missing component anywhere; that walk
    looks again)."""
    given = os.fspath(path)
    if not given:
        raise Refused(f"{what}: an empty path")
    walk = _Walk(f"{what} {given}", last, create, dry)
    todo = (given if os.path.isabs(given) else os.path.join(os.getcwd(), given)).split("/")
    todo.reverse()  # a stack: the next component last
    walk.check_dir("/", os.lstat("/"), final=_done(todo))
    while todo:
        name = todo.pop()
        if name in ("", "."):
            continue
        if name == "..":
            walk.here = os.path.dirname(walk.here)
            walk.here_st = os.lstat(walk.here)
            continue
        final = _done(todo)
        cand = os.path.join(walk.here, name)
        if final and last == "skip":
            return cand
        st = walk.look(cand)
        if st is None:  # missing, and nobody else can make it: the rest is missing too
            if ".." in todo:
                raise walk.refuse(f"{cand} does not exist")
            return os.path.join(cand, *[n for n in reversed(todo) if n not in ("", ".")])
        if stat.S_ISLNK(st.st_mode):
            target = walk.link(cand, st, final)
            if target.startswith("/"):
                walk.here, walk.here_st = "/", os.lstat("/")
            todo.extend(reversed(target.split("/")))
            continue
        walk.check_dir(cand, st, final)
        walk.here, walk.here_st = cand, st
    walk.check_dir(walk.here, walk.here_st, final=True)  # it may have come by ".."
    return walk.here


def _done(todo: list[str]) -> bool:
    """Is the component just taken the path's last one?"""
    return all(n in ("", ".") for n in todo)


class _Walk:
    """:func:`check_path`'s position (the real directory reached so far)
    and its rules."""

    def __init__(self, what: str, last: str, create: bool, dry: bool = False) -> None:
        self.what = what
        self.last = last
        self.create = create
        self.dry = dry
        self.trusted = trusted_uids()
        self.here = "/"
        self.here_st = os.lstat("/")
        self.links = 0

    def refuse(self, reason: str) -> Refused:
        return Refused(f"{self.what}: {reason}")

    def check_dir(self, d: str, st: os.stat_result, final: bool) -> None:
        if st.st_uid not in self.trusted:
            raise self.refuse(
                f"{d} is owned by uid {st.st_uid}, not by root "
                "(its owner could replace what is below it)"
            )
        if not stat.S_ISDIR(st.st_mode):
            raise self.refuse(f"{d} is not a directory")
        sticky_ok = not (final and self.last == "dir") and st.st_mode & stat.S_ISVTX
        if st.st_mode & 0o022 and not sticky_ok:
            raise self.refuse(
                f"{d} is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o}): "
                "netfs keeps its files only where only root can change them"
            )

    def look(self, cand: str) -> os.stat_result | None:
        """lstat of ``cand``, made first when missing and ``create``; None:
        missing, where nobody else could make it."""
        try:
            return os.lstat(cand)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise self.refuse(f"{cand}: {e.strerror}") from None
        if self.dry:
            return None
        if not self.create:
            if self.here_st.st_mode & 0o022:
                raise self.refuse(
                    f"{cand} does not exist, and anyone may create it in {self.here} "
                    "(create it first)"
                )
            return None
        try:
            os.mkdir(cand, 0o755)
            os.chmod(cand, 0o755)  # not the umask's
        except FileExistsError:
            pass  # someone was first: looked at like anything else
        except OSError as e:
            raise self.refuse(f"{cand}: {e.strerror}") from None
        return os.lstat(cand)

    def link(self, cand: str, st: os.stat_result, final: bool) -> str:
        """The target of link ``cand``, if it may be followed."""
        if st.st_uid not in self.trusted:
            raise self.refuse(
                f"{cand} is a symbolic link owned by uid {st.st_uid} "
                "(only root's links are followed)"
            )
        if final and self.last == "dir":
            raise self.refuse(f"{cand} is a symbolic link (give the directory itself)")
        self.links += 1
        if self.links > MAX_LINKS:
            raise self.refuse(f"{cand}: too many levels of symbolic links")
        return os.readlink(cand)


def mount_point(path: str) -> str:
    """The real path of mount point ``path``: the directories above it
    checked (:func:`check_path`); the mount point itself is looked at by
    :func:`check_mount_dir` once no stale mount can hang the look."""
    return check_path(path, "mount point", last="skip")


def check_mount_dir(path: str) -> None:
    """The mount point itself (a real path from :func:`mount_point`): a
    directory of root's (or the daemon user's), not a symbolic link (it
    would be mounted over its target). A missing one is left to the caller
    (not a directory)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as e:
        raise Refused(f"mount point {path}: {e.strerror}") from None
    if stat.S_ISLNK(st.st_mode):
        raise Refused(
            f"mount point {path}: is a symbolic link (give the directory itself; "
            "netfs does not mount over a link's target)"
        )
    if not stat.S_ISDIR(st.st_mode):
        raise Refused(f"mount point {path}: not a directory")
    if st.st_uid not in trusted_uids():
        raise Refused(f"mount point {path}: owned by uid {st.st_uid}, not by root")


LOG_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY


def open_log(path: str) -> int:
    """Open the log file ``path`` for appending (created 0640 if missing)
    and return its descriptor: its directory checked (:func:`check_path`,
    "parent"), opened without following a link and without waiting (a
    named pipe with no reader fails at once), then it must be a regular
    file of root's (or the daemon user's) with one link (not a hard link
    to a file elsewhere). Refused otherwise."""
    fd = _open_log(path, create=True)
    assert fd is not None
    return fd


def check_log(path: str) -> None:
    """:func:`open_log`'s checks, before anything is made: a missing log
    file is not created (nor refused)."""
    fd = _open_log(path, create=False)
    if fd is not None:
        os.close(fd)


def _open_log(path: str, create: bool) -> int | None:
    what = f"log file {path}"
    directory, name = os.path.split(os.path.join(os.getcwd(), path))
    if name in ("", ".", ".."):
        raise Refused(f"{what}: not a file name")
    target = os.path.join(check_path(directory, "log file", last="parent", dry=not create), name)
    flags = LOG_FLAGS if create else LOG_FLAGS & ~os.O_CREAT
    try:
        fd = os.open(target, flags | os.O_NONBLOCK, 0o640)
    except OSError as e:
        if e.errno == errno.ENOENT and not create:
            return None  # made later, by open_log
        reason = {
            errno.ELOOP: "is a symbolic link",
            errno.ENXIO: "is a named pipe or socket, not a regular file",
        }.get(e.errno or 0, e.strerror)
        raise Refused(f"{what}: {reason}") from None
    st = os.fstat(fd)
    reason = None
    if not stat.S_ISREG(st.st_mode):
        reason = "not a regular file (a named pipe, device or socket)"
    elif st.st_uid not in trusted_uids():
        reason = f"owned by uid {st.st_uid}, not by root"
    elif st.st_nlink != 1:
        reason = f"has {st.st_nlink} hard links (a log file has one)"
    if reason is not None:
        os.close(fd)
        raise Refused(f"{what}: {reason}")
    os.set_blocking(fd, True)
    return fd


def lock_state_dir(state_dir: Path) -> int:
    """Take the state directory's lock; returns its descriptor (keep it
    open for the daemon's life). Refused if another daemon holds it."""
    make_dir(state_dir)
    path = state_dir / LOCK
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
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
    check_path(config_dir, "configuration directory", create=True)
    check_path(state_dir, "state directory", create=True)
    return lock_state_dir(state_dir)
