"""The filesystem adapter: the tree of filesystem.md over the driver core.

The only module that imports pyfuse3. It maps paths to :class:`netfs.core.Driver`
calls and :class:`NetfsError` to errno; it owns nothing but presentation state:
open-file buffers, directories made by ``mkdir`` but not yet defined
("pending"), editors' scratch files, and what inotify watchers have been told.

Notifications. FUSE has no way to raise inotify events, so the daemon makes
them itself: a notifier task, fed by the core's events and by the handlers,
performs its own open/write/close, mkdir, rmdir, create and unlink *through
the mount* from worker threads. The handlers recognise those requests (the
request's pid is the worker's thread id) and treat them as no-ops, apart from
recording what has been published. Two views of the tree follow:

* everyone else sees the truth: a network the core has is listed at once, a
  network the core dropped is gone at once, ``status.xml`` exists exactly
  while the network is active;
* the daemon's own worker sees what has been *published* (announced to
  watchers): a new network stays absent for it until its own mkdir, a removed
  one stays present until its own rmdir. That makes the kernel send MKDIR,
  RMDIR, CREATE and UNLINK, which is what raises IN_CREATE/IN_DELETE.

A handler never waits for the notifier (touching an inode from inside a
handler for the same inode deadlocks in the kernel); it only queues work.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import logging
import math
import os
import select
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from functools import wraps
from typing import Any, ParamSpec, TypeVar

import pyfuse3
import trio
from pyfuse3 import FileHandleT, FileNameT, FlagT, InodeT, ModeT

from netfs.errors import NetfsError
from netfs.fs import helper
from netfs.model.xmlsafe import MAX_INPUT_BYTES
from netfs.state import check_name

log = logging.getLogger("netfs.fs")

Path = tuple[str, ...]

TIMEOUT = 1.0  # entry and attribute timeouts, seconds
SETTLE_TIMEOUT = 5.0  # longest close() waits for the announcement of its write
MAX_TASKS = 1000  # pyfuse3 worker tasks (each blocked `events` reader holds one)
# the largest document handle buffer or editor scratch file: what a document
# may be at parse time (a larger size fails at once with EFBIG)
MAX_FILE_BYTES = MAX_INPUT_BYTES

# network directory
F_DEFINITION = "definition.xml"
F_ACTIVE = "active"
F_AUTOSTART = "autostart"
F_STATUS = "status.xml"
F_UUID = "uuid"
F_ERROR = "error"
D_PORTGROUPS = "portgroups"
D_PORTS = "ports"
NET_ENTRIES = (
    F_DEFINITION,
    F_ACTIVE,
    F_AUTOSTART,
    F_STATUS,
    F_UUID,
    F_ERROR,
    D_PORTGROUPS,
    D_PORTS,
)
# port directory
F_PORT = "port.xml"
F_VIRTUALPORT = "virtualport.xml"
PORT_ENTRIES = (F_PORT, F_VIRTUALPORT)
# portgroup directory
F_DEFAULT = "default"
PG_ENTRIES = (F_DEFAULT, F_VIRTUALPORT)

WRITABLE_FILES = frozenset({F_DEFINITION, F_ACTIVE, F_AUTOSTART, F_PORT})
ATTR_FILES = (F_ACTIVE, F_AUTOSTART)
POLL_FILES = (F_ACTIVE, F_AUTOSTART, F_ERROR)
# what a network directory gains when the network is defined (a mkdir'd
# directory holds only definition.xml and error): announced by the notifier
DEFINED_FILES = (F_ACTIVE, F_AUTOSTART, F_UUID)
DEFINED_DIRS = (D_PORTGROUPS, D_PORTS)
# files whose changes the notifier announces (IN_MODIFY, IN_CLOSE_WRITE)
WATCHED_FILES = (F_DEFINITION, F_ACTIVE, F_AUTOSTART, F_STATUS, F_UUID, F_ERROR)

# core event kinds that are not lines of `events`
HIDDEN_EVENTS = frozenset({"error"})

DEFAULT_POLLMASK = select.POLLIN | select.POLLRDNORM
CHANGED_POLLMASK = select.POLLPRI | select.POLLERR


_UNSET: Any = object()  # "not fetched yet", for a network state argument


def _err(code: int) -> pyfuse3.FUSEError:
    # errno values >= 512 make the kernel reject the reply and hang the caller
    return pyfuse3.FUSEError(code if 0 < code < 512 else errno.EIO)


def _fuse_error(e: Exception, where: str) -> pyfuse3.FUSEError:
    """The errno for an exception leaving a handler (call it in the except
    block): NetfsError keeps its errno, anything unexpected is logged and
    becomes EIO (an exception other than FUSEError would stop pyfuse3's main
    loop)."""
    if isinstance(e, pyfuse3.FUSEError):
        return e
    if isinstance(e, NetfsError):
        return _err(e.errno)
    log.exception("internal error in %s", where)
    return _err(errno.EIO)


P = ParamSpec("P")
R = TypeVar("R")


def _handler(fn: Callable[P, Coroutine[Any, Any, R]]) -> Callable[P, Coroutine[Any, Any, R]]:
    """NetfsError -> errno; anything unexpected is logged and becomes EIO
    (an exception other than FUSEError would stop pyfuse3's main loop)."""

    @wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(*args, **kwargs)
        except Exception as e:
            raise _fuse_error(e, fn.__name__) from None

    return wrapper


def _name(raw: bytes) -> str:
    return os.fsdecode(raw)


def _line(value: bool) -> bytes:
    return b"1\n" if value else b"0\n"


@dataclass
class _Scratch:
    """An editor's temporary file (sed -i, vim swap files), kept in memory."""

    ino: int
    data: bytearray
    mode: int
    uid: int
    gid: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int


@dataclass
class _Handle:
    path: Path
    ino: int
    kind: str  # self, read, attr, doc, scratch, events
    data: bytes | None = None  # read: content snapshot (refreshed at offset 0)
    last_read: bytes | None = None  # poll: value this handle has seen
    seen: int = 0  # poll: the file's change count when this handle last read it
    polled: bool = False  # poll: registered as a waiter at least once
    ahead: bytes | None = None  # poll: a value read before it was announced
    buf: bytearray = field(default_factory=bytearray)  # doc: content written since open
    dirty: bool = False  # doc: written or truncated since the last act
    refused: bool = False  # doc: a size past the limit was refused: never acts
    scratch: _Scratch | None = None
    channel: Any = None  # events: the core subscription
    leftover: bytes = b""  # events: undelivered part of a batch
    pid: int = 0  # events: the opener (to notice it has been killed)
    settle: int = 0  # attr/doc: the notifier's queue position its last act reached


@dataclass
class _Options:
    uid: int = 0
    gid: int = 0
    group_writable: bool = False


class _Hands:
    """A child process that performs the daemon's own operations (see above)."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid = -1
        self._lock = trio.Lock()
        self._send: trio.lowlevel.FdStream | None = None
        self._recv: trio.lowlevel.FdStream | None = None
        self._buf = b""

    def _spawn(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-S", helper.__file__, str(os.getpid())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            close_fds=True,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.pid = self.proc.pid
        self._send = trio.lowlevel.FdStream(os.dup(self.proc.stdin.fileno()))
        self._recv = trio.lowlevel.FdStream(os.dup(self.proc.stdout.fileno()))
        self.proc.stdin.close()
        self.proc.stdout.close()
        self._buf = b""

    def start(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            self.close()
            self._spawn()

    async def call(self, op: str, path: str) -> None:
        """Do `op` on `path` through the mount; OSError with the errno on failure."""
        async with self._lock:
            self.start()
            assert self._send is not None and self._recv is not None
            await self._send.send_all(json.dumps([op, path]).encode() + b"\n")
            while b"\n" not in self._buf:
                chunk = await self._recv.receive_some(64)
                if not chunk:
                    self.close()
                    raise OSError(errno.EIO, "the helper process ended")
                self._buf += chunk
            line, _, self._buf = self._buf.partition(b"\n")
        code = int(line)
        if code:
            raise OSError(code, os.strerror(code), path)

    def close(self) -> None:
        for stream in (self._send, self._recv):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        self._send = self._recv = None
        if self.proc is not None:
            with contextlib.suppress(OSError):
                self.proc.kill()
            with contextlib.suppress(Exception):
                self.proc.wait(timeout=5)
            self.proc = None


class NetfsOperations(pyfuse3.Operations):
    """pyfuse3 operations over a :class:`netfs.core.Driver`."""

    supports_dot_lookup = True
    enable_writeback_cache = False

    def __init__(self, driver: Any, mountpoint: str, *, gid: int | None = None) -> None:
        super().__init__()
        self.driver = driver
        self.mountpoint = os.path.abspath(mountpoint)
        self.opts = _Options(
            uid=0, gid=gid if gid is not None else 0, group_writable=gid is not None
        )
        self._inos = itertools.count(pyfuse3.ROOT_INODE + 1)
        self._ino_by_path: dict[Path, int] = {(): pyfuse3.ROOT_INODE}
        self._path_by_ino: dict[int, Path] = {pyfuse3.ROOT_INODE: ()}
        self._fhs = itertools.count(1)
        self._handles: dict[int, _Handle] = {}
        self._dir_handles: dict[int, list[tuple[str, Path]]] = {}
        # presentation state
        self._pending: set[str] = set()  # mkdir'd networks without a definition
        self._pending_error: dict[str, str] = {}
        self._pending_error_seq: dict[str, int] = {}
        self._pending_ports: set[tuple[str, str]] = set()
        self._scratch: dict[Path, _Scratch] = {}
        self._scratch_by_ino: dict[int, _Scratch] = {}
        # what watchers have been told (the daemon's own view)
        self._pub_nets: set[str] = set()
        self._pub_status: set[str] = set()
        self._pub_ports: set[tuple[str, str]] = set()
        self._pub_entries: set[tuple[str, str]] = set()  # (network, DEFINED_FILES/DIRS)
        self._pub_pgs: set[tuple[str, str]] = set()  # (network, portgroup)
        self._snap: dict[str, dict[str, bytes | None]] = {}
        # the daemon's own worker threads doing self-touches
        self._hands = _Hands()
        # poll() waiters: path -> {fh: PollHandle}
        self._pollers: dict[Path, dict[int, Any]] = {}
        self._event_pollers: dict[int, Any] = {}
        self._mtimes: dict[Path, int] = {}
        # formatted documents: path -> (the object formatted, its bytes)
        self._texts: dict[Path, tuple[Any, bytes | None]] = {}
        # how many changes of each attribute file have been announced (poll)
        self._gens: dict[Path, int] = {}
        self._blocked_reads: set[trio.CancelScope] = set()
        self._todo_send: trio.MemorySendChannel[tuple[str, Any]] | None = None
        self._todo_recv: trio.MemoryReceiveChannel[tuple[str, Any]] | None = None
        # how many items were queued for the notifier, and how many it has done
        self._todo_seq = 0
        self._done_seq = 0
        self._progress = trio.Event()
        self._start_ns = time.time_ns()
        self.closing = False

    # ================================================================ paths

    def _ino(self, path: Path) -> int:
        ino = self._ino_by_path.get(path)
        if ino is None:
            ino = next(self._inos)
            self._ino_by_path[path] = ino
            self._path_by_ino[ino] = path
        return ino

    def _path(self, ino: int) -> Path:
        path = self._path_by_ino.get(ino)
        if path is None:
            raise _err(errno.ENOENT)
        return path

    def _is_self(self, ctx: Any) -> bool:
        return ctx is not None and ctx.pid == self._hands.pid

    def _state(self, name: str) -> Any | None:
        try:
            return self.driver.get(name)
        except NetfsError:
            return None

    def _port_names(self, name: str, st: Any, own: bool) -> set[str]:
        pend = {p for n, p in self._pending_ports if n == name}
        if own:
            return pend | {p for n, p in self._pub_ports if n == name}
        return pend | (set(st.ports) if st is not None else set())

    def _portgroup_names(self, st: Any) -> list[str]:
        net = st.live or st.definition
        return [pg.name for pg in net.portgroups]

    def _exists(self, path: Path, own: bool = False, st: Any = _UNSET) -> bool:
        """Is `path` in the tree (as everyone sees it, or as the daemon's own
        worker sees it when `own`)? `st`: the network's state, when known."""
        n = len(path)
        if n == 0:
            return True
        if path in self._scratch:
            return True
        if path == ("events",):
            return True
        name = path[0]
        if st is _UNSET:
            st = self._state(name)
        if own:
            if name not in self._pub_nets:
                return False
        elif st is None and name not in self._pending:
            return False
        if n == 1:
            return True
        sub = path[1]
        if n == 2:
            if sub in (F_DEFINITION, F_ERROR):
                return True
            if st is None:
                return False
            if sub == F_STATUS:
                return name in self._pub_status if own else bool(st.active)
            if sub not in DEFINED_FILES and sub not in DEFINED_DIRS:
                return False
            return (name, sub) in self._pub_entries if own else True
        if st is None and sub != D_PORTS:
            return False
        if own and (name, sub) not in self._pub_entries:
            return False
        if sub == D_PORTGROUPS:
            if own:
                if (name, path[2]) not in self._pub_pgs:
                    return False
            elif path[2] not in self._portgroup_names(st):
                return False
            if n == 3:
                return True
            if n == 4 and path[3] == F_DEFAULT:
                return True
            if n == 4 and path[3] == F_VIRTUALPORT:
                return self._merged_exists(path, st)
            return False
        if sub == D_PORTS:
            port = path[2]
            if port not in self._port_names(name, st, own):
                return False
            if n == 3:
                return True
            if n == 4 and path[3] == F_PORT:
                return True
            if n == 4 and path[3] == F_VIRTUALPORT:
                return (name, port) not in self._pending_ports and self._merged_exists(path, st)
            return False
        return False

    def _merged_exists(self, path: Path, st: Any) -> bool:
        """A merged virtualport.xml exists when the merge gives a profile,
        and also when it fails (conflicting profiles: the file is listed, and
        reading it is EINVAL), so that its directory still lists and stats."""
        try:
            return self._content(path, st) is not None
        except NetfsError:
            return True

    def _is_dir(self, path: Path) -> bool:
        n = len(path)
        if n == 0:
            return True
        if path in self._scratch or path == ("events",):
            return False
        if n == 1:
            return True
        if n == 2:
            return path[1] in (D_PORTGROUPS, D_PORTS)
        return n == 3 and path[1] in (D_PORTGROUPS, D_PORTS)

    def _scratch_dir(self, path: Path) -> bool:
        """Directories where editors may make scratch files."""
        return len(path) == 1 or (len(path) == 3 and path[1] == D_PORTS)

    def _reserved(self, dirpath: Path, name: str) -> bool:
        if len(dirpath) == 1:
            return name in NET_ENTRIES
        if len(dirpath) == 3:
            return name in PORT_ENTRIES
        return True

    def _writable(self, path: Path) -> bool:
        if path in self._scratch:
            return True
        if self._is_dir(path):
            # where mkdir or editors' temporary files may create something
            return len(path) <= 1 or path[1] == D_PORTS
        return len(path) >= 2 and path[-1] in WRITABLE_FILES and path[1] != D_PORTGROUPS

    # ================================================================ pending

    def _is_pending(self, name: str, st: Any = _UNSET) -> bool:
        """Is `name` a directory made by mkdir that has no definition yet? A
        pending name the core has now (defined through the mount, or from
        the config directory at SIGHUP) is adopted on the way: from then on
        it is an ordinary network directory."""
        if name not in self._pending:
            return False
        if st is _UNSET:
            st = self._state(name)
        if st is None:
            return True
        self._adopt(name)
        return False

    def _adopt(self, name: str) -> None:
        """The core has the pending network `name`: drop the pending state.
        The directory's last error stays the network's error (a success
        leaves the last error in place), unless the core recorded one of its
        own already; it is the same error, so it is not announced again."""
        self._pending.discard(name)
        msg = self._pending_error.pop(name, None)
        seq = self._pending_error_seq.pop(name, 0)
        st = self._state(name)
        if not msg or st is None or st.error_seq:
            return
        self.driver.set_error(name, msg, logged=True)  # logged when it was recorded
        snap = self._snap.get(name)
        told = (msg.rstrip("\n") + "\n").encode() + b"\0%d" % seq
        if snap is not None and snap.get(F_ERROR) == told:
            snap[F_ERROR] = self._snapshot(name)[F_ERROR]

    # ================================================================ content

    def _content(self, path: Path, st: Any = _UNSET) -> bytes | None:
        """The bytes a read of `path` shows now (None: it has none). `st` is
        the network's state when the caller already has it. Documents are
        formatted once per version: the core replaces (never mutates) a
        definition, a live definition or a port when it changes, so the
        formatted text is cached keyed on that object's identity."""
        n = len(path)
        name = path[0]
        if n == 2:
            f = path[1]
            if st is _UNSET:
                st = self._state(name)
            if self._is_pending(name, st):
                if f == F_ERROR:
                    msg = self._pending_error.get(name, "")
                    return (msg.rstrip("\n") + "\n").encode() if msg else b""
                return b"" if f == F_DEFINITION else None
            if st is None:
                return b"" if f == F_ERROR else None
            if f == F_ACTIVE:
                return b"1\n" if st.active else b"0\n"
            if f == F_AUTOSTART:
                return b"1\n" if st.autostart else b"0\n"
            if f == F_ERROR:
                msg = st.error
                return (msg.rstrip("\n") + "\n").encode() if msg else b""
            if f == F_UUID:
                return f"{st.uuid}\n".encode()
            if f == F_DEFINITION:
                return self._cached(path, st.definition, self.driver.definition_xml, name)
            if f == F_STATUS:
                if st.live is None:
                    return None
                return self._cached(path, st.live, self.driver.status_xml, name)
            return None
        if n != 4:
            return None
        if st is _UNSET:
            st = self._state(name)
        sub, item, f = path[1:]
        if path[1] == D_PORTGROUPS:
            if st is None:
                return None
            net = st.live or st.definition
            if f == F_DEFAULT:
                return _line(any(g.name == item and g.default for g in net.portgroups))
            if f == F_VIRTUALPORT:
                return self._cached(path, net, self.driver.portgroup_virtualport_xml, name, item)
            return None
        if sub == D_PORTS:
            if (name, item) in self._pending_ports:
                return b"" if f == F_PORT else None
            port = st.ports.get(item) if st is not None else None
            if port is None:
                return None
            if f == F_PORT:
                return self._cached(path, port, self.driver.port_xml, name, item)
            if f == F_VIRTUALPORT:
                return self._cached(path, port, self.driver.port_virtualport_xml, name, item)
        return None

    def _cached(
        self, path: Path, version: Any, make: Callable[..., Any], *args: Any
    ) -> bytes | None:
        hit = self._texts.get(path)
        if hit is not None and hit[0] is version:
            return hit[1]
        text = make(*args)
        data = None if text is None else str(text).encode()
        self._texts[path] = (version, data)
        return data

    def _safe_content(self, path: Path, st: Any = _UNSET) -> bytes | None:
        try:
            return self._content(path, st)
        except NetfsError:
            return None

    # ================================================================ attributes

    def _attr(self, ino: int, path: Path, st: Any = _UNSET) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = InodeT(ino)
        a.generation = 0
        a.entry_timeout = TIMEOUT
        a.attr_timeout = TIMEOUT
        a.st_blksize = 4096
        sc = self._scratch_by_ino.get(ino)
        if sc is not None:
            a.st_mode = ModeT(stat.S_IFREG | (sc.mode & 0o7777))
            a.st_nlink = 1 if path in self._scratch else 0
            a.st_uid, a.st_gid = sc.uid, sc.gid
            a.st_size = len(sc.data)
            a.st_atime_ns, a.st_mtime_ns, a.st_ctime_ns = sc.atime_ns, sc.mtime_ns, sc.ctime_ns
            a.st_blocks = (a.st_size + 511) // 512
            return a
        gw = self.opts.group_writable
        writable = self._writable(path)
        if self._is_dir(path):
            mode = stat.S_IFDIR | (0o775 if writable and gw else 0o755)
            a.st_nlink = 2
            a.st_size = 0
        else:
            if path == ("events",):
                mode = stat.S_IFREG | 0o444
                a.st_size = 0
            else:
                if writable:
                    mode = stat.S_IFREG | (0o664 if gw else 0o644)
                else:
                    mode = stat.S_IFREG | 0o444
                content = self._safe_content(path, st)
                a.st_size = len(content) if content is not None else 0
            a.st_nlink = 1
        a.st_mode = ModeT(mode)
        a.st_uid = self.opts.uid
        a.st_gid = self.opts.gid if (writable and gw) else 0
        t = self._mtimes.get(path, self._start_ns)
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = t
        a.st_blocks = (a.st_size + 511) // 512
        return a

    def _entry(self, path: Path, st: Any = _UNSET) -> pyfuse3.EntryAttributes:
        sc = self._scratch.get(path)
        ino = sc.ino if sc is not None else self._ino(path)
        return self._attr(ino, path, st)

    def _own_entry(self, path: Path) -> pyfuse3.EntryAttributes:
        """An entry as the daemon's own worker sees it. The kernel's dentry
        cache is shared by everyone: what the own view shows (a network not
        yet announced, status.xml not yet removed) must not be cached, or
        others would see it too."""
        a = self._entry(path)
        a.entry_timeout = 0
        a.attr_timeout = 0
        return a

    # ================================================================ errors

    def _record(self, name: str, message: str) -> None:
        """A failure found above the core: it becomes the network's error."""
        if self._is_pending(name):
            self._pending_error[name] = message
            self._pending_error_seq[name] = self._pending_error_seq.get(name, 0) + 1
            log.warning("network %s: %s", name, message)
        else:
            self.driver.set_error(name, message)
        self._queue("reconcile", name)

    def _check_size(self, path: Path, size: int) -> None:
        """A document buffer or scratch file may not grow past the document
        limit: EFBIG at once, with the reason in the network's error, and
        nothing allocated."""
        if size <= MAX_FILE_BYTES:
            return
        if path and (self._state(path[0]) is not None or path[0] in self._pending):
            self._record(
                path[0],
                f"{'/'.join(path[1:])}: size {size} is larger than the limit of 1 MiB"
                f" ({MAX_FILE_BYTES} bytes) for a document or an editor's temporary file",
            )
        raise _err(errno.EFBIG)

    # ================================================================ lookups

    # The handlers on the read path (lookup, getattr, open, read, flush,
    # release) translate errors inline rather than through @_handler: one
    # coroutine less per request.

    async def lookup(
        self, parent_inode: InodeT, name: FileNameT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        try:
            return self._lookup(parent_inode, name, ctx)
        except Exception as e:
            raise _fuse_error(e, "lookup") from None

    def _lookup(
        self, parent_inode: InodeT, name: FileNameT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        ppath = self._path(parent_inode)
        n = _name(name)
        if n == ".":
            return self._entry(ppath)
        if n == "..":
            return self._entry(ppath[:-1])
        path = ppath + (n,)
        if not self._is_dir(ppath):
            raise _err(errno.ENOENT)
        st = self._state(ppath[0]) if ppath else _UNSET
        own = self._is_self(ctx)
        if not self._exists(path, own, st):
            raise _err(errno.ENOENT)
        return self._own_entry(path) if own else self._entry(path, st)

    async def getattr(self, inode: InodeT, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        try:
            return self._attr(inode, self._path(inode))
        except Exception as e:
            raise _fuse_error(e, "getattr") from None

    @_handler
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = 4096
        s.f_namemax = 255
        s.f_files = len(self._ino_by_path)
        return s

    # ================================================================ directories

    def _list(self, path: Path) -> list[str]:
        n = len(path)
        if n == 0:
            # a network called "events" (from the config directory) is
            # shadowed by the events file: list the name once
            return ["events"] + sorted((set(self.driver.names()) | self._pending) - {"events"})
        name = path[0]
        st = self._state(name)
        scratch = sorted(p[-1] for p in self._scratch if p[:-1] == path)
        if n == 1:
            if st is None:
                return [F_DEFINITION, F_ERROR] + scratch
            entries = [F_DEFINITION, F_ACTIVE, F_AUTOSTART]
            if st.active:
                entries.append(F_STATUS)
            return entries + [F_UUID, F_ERROR, D_PORTGROUPS, D_PORTS] + scratch
        if n == 2 and path[1] == D_PORTGROUPS:
            return self._portgroup_names(st) if st is not None else []
        if n == 2 and path[1] == D_PORTS:
            return sorted(self._port_names(name, st, False))
        if n == 3 and path[1] == D_PORTGROUPS:
            return [f for f in PG_ENTRIES if self._exists(path + (f,))]
        if n == 3 and path[1] == D_PORTS:
            return [f for f in PORT_ENTRIES if self._exists(path + (f,))] + scratch
        return []

    @_handler
    async def opendir(self, inode: InodeT, ctx: pyfuse3.RequestContext) -> FileHandleT:
        path = self._path(inode)
        if not self._is_dir(path) or not self._exists(path, self._is_self(ctx)):
            raise _err(errno.ENOENT)
        fh = next(self._fhs)
        # "." and ".." first, as sysfs and configfs list them
        dots = [(".", path), ("..", path[:-1])]
        self._dir_handles[fh] = dots + [(e, path + (e,)) for e in self._list(path)]
        return FileHandleT(fh)

    @_handler
    async def readdir(self, fh: FileHandleT, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        entries = self._dir_handles.get(fh, [])
        for i in range(start_id, len(entries)):
            name, path = entries[i]
            try:
                attr = self._entry(path)
            except (NetfsError, pyfuse3.FUSEError):
                continue
            if not pyfuse3.readdir_reply(token, os.fsencode(name), attr, i + 1):
                break

    @_handler
    async def releasedir(self, fh: FileHandleT) -> None:
        self._dir_handles.pop(fh, None)

    @_handler
    async def fsyncdir(self, fh: FileHandleT, datasync: bool) -> None:
        return None

    @_handler
    async def mkdir(
        self, parent_inode: InodeT, name: FileNameT, mode: ModeT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        ppath = self._path(parent_inode)
        n = _name(name)
        path = ppath + (n,)
        if self._is_self(ctx):
            if len(ppath) == 0:
                self._pub_nets.add(n)
            elif len(ppath) == 1 and n in DEFINED_DIRS:
                self._pub_entries.add((ppath[0], n))
            elif len(ppath) == 2 and ppath[1] == D_PORTS:
                self._pub_ports.add((ppath[0], n))
            elif len(ppath) == 2 and ppath[1] == D_PORTGROUPS:
                self._pub_pgs.add((ppath[0], n))
            return self._own_entry(path)
        net = ppath[0] if ppath else ""
        if len(ppath) == 0:
            what = "network"
        elif len(ppath) == 2 and ppath[1] == D_PORTS and self._state(ppath[0]) is not None:
            what = "port"
        else:
            raise _err(errno.EPERM)
        if self._exists(path):
            raise _err(errno.EEXIST)
        try:
            check_name(n, what)  # the rules the core applies when it saves
            if "\n" in n:  # libvirt refuses it in a name: never definable
                raise NetfsError(errno.EINVAL, f"invalid char in {what} name '{n}'")
        except NetfsError as e:
            if what == "port":
                self._record(net, e.message)
            else:
                log.warning("%s", e.message)
            raise _err(errno.EINVAL) from None
        if what == "network":
            self._pending.add(n)
            self._pending_error.pop(n, None)
            self._pending_error_seq.pop(n, None)
            self._pub_nets.add(n)
            self._snap[n] = self._snapshot(n)
        else:
            self._pending_ports.add((net, n))
            self._pub_ports.add((net, n))
        return self._entry(path)

    def _drop_scratch_under(self, prefix: Path) -> None:
        for p in [p for p in self._scratch if p[: len(prefix)] == prefix]:
            del self._scratch[p]

    def _forget_net(self, name: str) -> None:
        self._pub_nets.discard(name)
        self._pub_status.discard(name)
        self._pub_ports = {(n, p) for n, p in self._pub_ports if n != name}
        self._pub_entries = {(n, e) for n, e in self._pub_entries if n != name}
        self._pub_pgs = {(n, g) for n, g in self._pub_pgs if n != name}
        self._pending_ports = {(n, p) for n, p in self._pending_ports if n != name}
        self._snap.pop(name, None)
        for cache in (self._texts, self._gens):
            for p in [p for p in cache if p[0] == name]:
                del cache[p]
        self._drop_scratch_under((name,))
        for f in POLL_FILES:
            self._wake_pollers((name, f))

    @_handler
    async def rmdir(
        self, parent_inode: InodeT, name: FileNameT, ctx: pyfuse3.RequestContext
    ) -> None:
        ppath = self._path(parent_inode)
        path = ppath + (_name(name),)
        await self._rmdir(ppath, path[-1], ctx)
        # The kernel marks a removed directory's inode dead for good: a
        # directory made later under the same name must get new inode numbers
        # (with the old ones it would be listed but refuse every lookup and
        # create in it with ENOENT).
        self._drop_inos(path)

    def _drop_inos(self, prefix: Path) -> None:
        k = len(prefix)
        for p in [p for p in self._ino_by_path if p[:k] == prefix]:
            ino = self._ino_by_path.pop(p)
            if self._path_by_ino.get(ino) == p:
                del self._path_by_ino[ino]

    async def _rmdir(self, ppath: Path, n: str, ctx: pyfuse3.RequestContext) -> None:
        path = ppath + (n,)
        if self._is_self(ctx):
            if len(ppath) == 0:
                self._forget_net(n)
            elif len(ppath) == 2 and ppath[1] == D_PORTS:
                self._pub_ports.discard((ppath[0], n))
            elif len(ppath) == 2 and ppath[1] == D_PORTGROUPS:
                self._pub_pgs.discard((ppath[0], n))
            return
        if len(ppath) == 0:
            if self._is_pending(n):
                self._pending.discard(n)
                self._pending_error.pop(n, None)
                self._pending_error_seq.pop(n, None)
                self._forget_net(n)
                return
            if self._state(n) is None:
                raise _err(errno.ENOENT)
            await self.driver.undefine(n, if_active="refuse")
            self._forget_net(n)
            return
        if len(ppath) == 2 and ppath[1] == D_PORTS:
            key = (ppath[0], n)
            if key in self._pending_ports:
                self._pending_ports.discard(key)
                self._pub_ports.discard(key)
                self._drop_scratch_under(path)
                return
            if not self._exists(path):
                raise _err(errno.ENOENT)
            try:
                await self.driver.delete_port(ppath[0], n)
            finally:
                self._queue("reconcile", ppath[0])
            self._pub_ports.discard(key)
            self._drop_scratch_under(path)
            return
        if self._exists(path):
            raise _err(errno.EPERM)
        raise _err(errno.ENOENT)

    # ================================================================ scratch files

    def _refuse_reserved(self, ppath: Path, n: str) -> None:
        """Creating a file with the name of an entry of the tree: EACCES (a
        read-only file, like status.xml of an inactive network), but ENOENT
        in a directory made by mkdir that has no definition yet: `active`,
        `uuid` and the rest do not exist there."""
        if not self._reserved(ppath, n):
            return
        if len(ppath) == 1 and n not in (F_DEFINITION, F_ERROR) and self._is_pending(ppath[0]):
            self._record(ppath[0], f"network '{ppath[0]}' has no definition yet")
            raise _err(errno.ENOENT)
        raise _err(errno.EACCES)

    def _own_made_file(self, ppath: Path, n: str) -> None:
        """The daemon's own mknod (or create) of `n` in `ppath`: published."""
        if len(ppath) == 1 and n == F_STATUS:
            self._pub_status.add(ppath[0])
        elif len(ppath) == 1 and n in DEFINED_FILES:
            self._pub_entries.add((ppath[0], n))

    def _new_scratch(self, path: Path, mode: int, ctx: pyfuse3.RequestContext) -> _Scratch:
        now = time.time_ns()
        sc = _Scratch(next(self._inos), bytearray(), mode & 0o7777, ctx.uid, ctx.gid, now, now, now)
        self._scratch[path] = sc
        self._scratch_by_ino[sc.ino] = sc
        self._path_by_ino[sc.ino] = path
        return sc

    @_handler
    async def create(
        self,
        parent_inode: InodeT,
        name: FileNameT,
        mode: ModeT,
        flags: FlagT,
        ctx: pyfuse3.RequestContext,
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        ppath = self._path(parent_inode)
        n = _name(name)
        path = ppath + (n,)
        if self._is_self(ctx):
            self._own_made_file(ppath, n)
            return self._open_handle(_Handle(path, self._ino(path), "self")), self._own_entry(path)
        if not self._is_dir(ppath) or not self._exists(ppath):
            raise _err(errno.ENOENT)
        if not self._scratch_dir(ppath):
            raise _err(errno.EPERM)
        self._refuse_reserved(ppath, n)
        sc = self._new_scratch(path, mode, ctx)
        h = _Handle(path, sc.ino, "scratch", scratch=sc)
        return self._open_handle(h), self._attr(sc.ino, path)

    @_handler
    async def mknod(
        self,
        parent_inode: InodeT,
        name: FileNameT,
        mode: ModeT,
        rdev: int,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        ppath = self._path(parent_inode)
        n = _name(name)
        path = ppath + (n,)
        if self._is_self(ctx):
            self._own_made_file(ppath, n)
            return self._own_entry(path)
        if not self._is_dir(ppath) or not self._exists(ppath):
            raise _err(errno.ENOENT)
        if not stat.S_ISREG(mode) or not self._scratch_dir(ppath):
            raise _err(errno.EPERM)
        self._refuse_reserved(ppath, n)
        sc = self._new_scratch(path, mode, ctx)
        return self._attr(sc.ino, path)

    @_handler
    async def symlink(
        self,
        parent_inode: InodeT,
        name: FileNameT,
        target: FileNameT,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        raise _err(errno.EPERM)  # a change of structure the tree does not allow

    @_handler
    async def link(
        self,
        inode: InodeT,
        new_parent_inode: InodeT,
        new_name: FileNameT,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        raise _err(errno.EPERM)

    @_handler
    async def unlink(
        self, parent_inode: InodeT, name: FileNameT, ctx: pyfuse3.RequestContext
    ) -> None:
        ppath = self._path(parent_inode)
        path = ppath + (_name(name),)
        if self._is_self(ctx):
            if len(path) == 2 and path[1] == F_STATUS:
                self._pub_status.discard(path[0])
            return
        sc = self._scratch.pop(path, None)
        if sc is not None:
            sc.ctime_ns = time.time_ns()
            return
        if self._exists(path):
            raise _err(errno.EPERM)
        raise _err(errno.ENOENT)

    @_handler
    async def rename(
        self,
        parent_inode_old: InodeT,
        name_old: FileNameT,
        parent_inode_new: InodeT,
        name_new: FileNameT,
        flags: FlagT,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        src = self._path(parent_inode_old) + (_name(name_old),)
        dpath = self._path(parent_inode_new)
        dst = dpath + (_name(name_new),)
        sc = self._scratch.get(src)
        if sc is None:
            raise _err(errno.EPERM if self._exists(src) else errno.ENOENT)
        if flags & pyfuse3.RENAME_EXCHANGE:
            raise _err(errno.EINVAL)
        if not self._scratch_dir(dpath) or not self._exists(dpath):
            raise _err(errno.EPERM)
        if src == dst:
            return
        target = dst[-1]
        if self._reserved(dpath, target):
            if len(dst) == 2 and target == F_DEFINITION:
                await self._act_definition(dst[0], bytes(sc.data), renamed=True)
            elif len(dst) == 4 and target == F_PORT:
                await self._act_port(dst[0], dst[2], bytes(sc.data), renamed=True)
            else:
                raise _err(errno.EPERM)
            # the kernel now believes the renamed inode is that file
            del self._scratch[src]
            self._scratch_by_ino.pop(sc.ino, None)
            self._path_by_ino[sc.ino] = dst
            return
        if flags & pyfuse3.RENAME_NOREPLACE and dst in self._scratch:
            raise _err(errno.EEXIST)
        del self._scratch[src]
        self._scratch[dst] = sc
        self._path_by_ino[sc.ino] = dst
        sc.ctime_ns = time.time_ns()

    @_handler
    async def setattr(
        self,
        inode: InodeT,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: FileHandleT | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        path = self._path(inode)
        sc = self._scratch_by_ino.get(inode)
        now = time.time_ns()
        if sc is not None:
            if fields.update_size:
                self._check_size(path, attr.st_size)
                _resize(sc.data, attr.st_size)
                sc.mtime_ns = now
            if fields.update_mode:
                sc.mode = attr.st_mode & 0o7777
            if fields.update_uid:
                sc.uid = attr.st_uid
            if fields.update_gid:
                sc.gid = attr.st_gid
            if fields.update_atime:
                sc.atime_ns = attr.st_atime_ns
            if fields.update_mtime:
                sc.mtime_ns = attr.st_mtime_ns
            sc.ctime_ns = now
            return self._attr(inode, path)
        if self._is_self(ctx):
            return self._attr(inode, path)
        if fields.update_mode or fields.update_uid or fields.update_gid:
            raise _err(errno.EPERM)
        if fields.update_size:
            if not self._writable(path) or self._is_dir(path):
                raise _err(errno.EACCES)
            h = self._handles.get(fh) if fh is not None else None
            if h is not None and h.kind == "doc":
                if attr.st_size > MAX_FILE_BYTES:
                    h.refused = True
                self._check_size(path, attr.st_size)
                _resize(h.buf, attr.st_size)
                h.dirty = True
            else:
                self._check_size(path, attr.st_size)
        return self._attr(inode, path)

    # ================================================================ files

    def _open_handle(self, h: _Handle, *, nonseekable: bool = False) -> pyfuse3.FileInfo:
        fh = next(self._fhs)
        self._handles[fh] = h
        fi = pyfuse3.FileInfo(fh=FileHandleT(fh), direct_io=True, keep_cache=False)
        fi.nonseekable = nonseekable
        return fi

    async def open(
        self, inode: InodeT, flags: FlagT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.FileInfo:
        try:
            return self._open(inode, flags, ctx)
        except Exception as e:
            raise _fuse_error(e, "open") from None

    def _open(self, inode: InodeT, flags: FlagT, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        path = self._path(inode)
        if self._is_self(ctx):
            return self._open_handle(_Handle(path, inode, "self"))
        write = (flags & os.O_ACCMODE) in (os.O_WRONLY, os.O_RDWR)
        sc = self._scratch_by_ino.get(inode)
        if sc is not None:
            if flags & os.O_TRUNC:
                sc.data.clear()
                sc.mtime_ns = time.time_ns()
            return self._open_handle(_Handle(path, inode, "scratch", scratch=sc))
        if path == ("events",):
            if write or flags & os.O_TRUNC:
                raise _err(errno.EACCES)
            h = _Handle(path, inode, "events", channel=self.driver.subscribe(), pid=ctx.pid)
            return self._open_handle(h, nonseekable=True)
        if self._is_dir(path):
            raise _err(errno.EISDIR)
        if not self._exists(path):
            raise _err(errno.ENOENT)
        if (write or flags & os.O_TRUNC) and not self._writable(path):
            raise _err(errno.EACCES)  # O_RDONLY|O_TRUNC too: it asks to truncate
        # content is made at the first read; a poll() before it compares
        # change counts (as sysfs: an open has seen the current value)
        seen = self._gens.get(path, 0)
        if write and path[-1] in (F_DEFINITION, F_PORT):
            h = _Handle(path, inode, "doc", seen=seen)
            if not flags & os.O_TRUNC:
                # like a file: `>>` appends to, and an in-place edit starts
                # from, what the document holds (vim truncates first)
                h.buf[:] = self._content(path) or b""
        elif path[-1] in ATTR_FILES and len(path) == 2:
            h = _Handle(path, inode, "attr", seen=seen)
        else:
            h = _Handle(path, inode, "read", seen=seen)
        return self._open_handle(h)

    async def read(self, fh: FileHandleT, off: int, size: int) -> bytes:
        try:
            h = self._handle(fh)
            if h.kind == "events":
                return await self._read_events(h, size)
            return self._read(h, off, size)
        except Exception as e:
            raise _fuse_error(e, "read") from None

    def _read(self, h: _Handle, off: int, size: int) -> bytes:
        if h.kind == "scratch":
            assert h.scratch is not None
            return bytes(h.scratch.data[off : off + size])
        if h.kind == "self":
            return b""
        data = h.data
        if off == 0 or data is None:
            data = self._content(h.path)
            if data is None:
                raise _err(errno.ENOENT)
            h.data = data
            if off == 0:
                h.last_read = data
                h.seen = self._gens.get(h.path, 0)
                h.ahead = self._ahead(h.path, data)
        return data[off : off + size]

    @_handler
    async def write(self, fh: FileHandleT, off: int, buf: bytes) -> int:
        h = self._handle(fh)
        if h.kind == "self":
            return len(buf)
        if h.kind == "scratch":
            assert h.scratch is not None
            self._check_size(h.path, off + len(buf))
            _put(h.scratch.data, off, buf)
            h.scratch.mtime_ns = time.time_ns()
            return len(buf)
        if h.kind == "doc":
            if off + len(buf) > MAX_FILE_BYTES:
                h.refused = True
            self._check_size(h.path, off + len(buf))
            _put(h.buf, off, buf)
            h.dirty = True
            return len(buf)
        if h.kind == "attr":
            try:
                await self._act_attr(h.path, buf)
            finally:
                h.settle = self._todo_seq
            return len(buf)
        raise _err(errno.EACCES)

    async def _commit(self, h: _Handle) -> None:
        """Act on a document handle's content, once per batch of writes."""
        if h.kind != "doc" or not h.dirty:
            return
        h.dirty = False
        if h.refused:
            # part of what was written was refused (EFBIG): the content is
            # not what the writer meant, and the error says why already
            h.buf.clear()
            return
        data = bytes(h.buf)
        if not data.strip(b"\0 \t\r\n"):
            return  # nothing written (bash's early flush, `: > file`)
        try:
            if len(h.path) == 2:
                await self._act_definition(h.path[0], data)
                self._written(h.path)
            else:
                await self._act_port(h.path[0], h.path[2], data)
        finally:
            h.settle = self._todo_seq

    async def flush(self, fh: FileHandleT) -> None:
        try:
            h = self._handle(fh)
            try:
                if h.kind == "doc" and h.dirty:
                    await self._commit(h)
            finally:
                if h.settle:
                    await self._settle(h)
        except Exception as e:
            raise _fuse_error(e, "flush") from None

    async def _settle(self, h: _Handle) -> None:
        """Before close() returns to a process whose write acted, let the
        notifier finish announcing that change (its own operations through the
        mount): `echo 0 > active; umount /net` must not find the mount busy
        with them, and watchers have heard of a change once the command that
        made it is done. Bounded: a wedged notifier delays close() at most
        SETTLE_TIMEOUT. Never on the helper's own handles (kind "self"), and
        the kernel holds no lock of ours during FLUSH, so the helper's
        operations can proceed meanwhile."""
        target, h.settle = h.settle, 0
        with trio.move_on_after(SETTLE_TIMEOUT):
            while self._done_seq < target and not self.closing and self._todo_send is not None:
                await self._progress.wait()

    @_handler
    async def fsync(self, fh: FileHandleT, datasync: bool) -> None:
        await self._commit(self._handle(fh))

    async def release(self, fh: FileHandleT) -> None:
        h = self._handles.pop(fh, None)
        if h is None:
            return
        try:
            if h.kind == "events":
                self._event_pollers.pop(fh, None)
                self.driver.unsubscribe(h.channel)
                return
            if h.polled:
                for waiters in self._pollers.values():
                    waiters.pop(fh, None)
            if h.kind == "doc" and h.dirty:
                await self._release_commit(h)
        except Exception as e:
            raise _fuse_error(e, "release") from None

    async def _release_commit(self, h: _Handle) -> None:
        try:
            await self._commit(h)
        except NetfsError as e:
            log.warning("%s: %s", "/".join(h.path), e.message)

    def _handle(self, fh: int) -> _Handle:
        h = self._handles.get(fh)
        if h is None:
            raise _err(errno.EBADF)
        return h

    # ================================================================ acting

    async def _act_attr(self, path: Path, buf: bytes) -> None:
        name, f = path
        value = {b"0": False, b"0\n": False, b"1": True, b"1\n": True}.get(bytes(buf))
        if value is None:
            # every byte shown, control characters escaped ('1\n\n')
            shown = repr(bytes(buf[:40]).decode(errors="replace"))
            self._record(name, f"invalid value for {f}: {shown} (write 0 or 1)")
            raise _err(errno.EINVAL)
        before = self._state(name)
        try:
            if f == F_ACTIVE:
                if value:
                    await self.driver.start(name)
                else:
                    await self.driver.stop(name)
            else:
                await self.driver.set_autostart(name, value)
        finally:
            self._written(path)
            self._queue("reconcile", name)
            await self._drop_stale_entries(name, before)

    async def _drop_stale_entries(self, name: str, before: Any) -> None:
        """Entries that a change made through a handler removed (status.xml
        after a stop, the ports it freed, portgroups a redefinition dropped)
        may sit in the kernel's dentry cache for the entry timeout: drop them
        before the write returns, so that `echo 0 > active; [ -e status.xml ]`
        is false at once. From a worker thread (the kernel takes the
        directory's lock; the trio loop must stay free to answer whoever holds
        it)."""
        if before is None:
            return
        after = self._state(name)
        gone: list[tuple[Path, str]] = []
        if before.active and (after is None or not after.active):
            gone.append(((name,), F_STATUS))
        kept_ports = set(after.ports) if after is not None else set()
        gone += [((name, D_PORTS), p) for p in before.ports if p not in kept_ports]
        kept_pgs = set(self._portgroup_names(after)) if after is not None else set()
        gone += [
            ((name, D_PORTGROUPS), g) for g in self._portgroup_names(before) if g not in kept_pgs
        ]
        gone = [(parent, n) for parent, n in gone if parent in self._ino_by_path]
        if gone and not self.closing:
            await trio.to_thread.run_sync(self._invalidate_all, gone, abandon_on_cancel=True)

    def _invalidate_all(self, entries: list[tuple[Path, str]]) -> None:
        for parent, n in entries:
            self._invalidate(parent, n)

    async def _act_definition(self, name: str, data: bytes, *, renamed: bool = False) -> None:
        pending = self._is_pending(name)
        before = None if pending else self._state(name)
        try:
            try:
                await self.driver.define(data, name=name)
            except NetfsError as e:
                if self._is_pending(name):
                    self._pending_error[name] = e.message
                    self._pending_error_seq[name] = self._pending_error_seq.get(name, 0) + 1
                    log.warning("network %s: %s", name, e.message)
                raise
            if pending:
                self._is_pending(name)  # adopted, with its error (no checkpoint before)
            await self._drop_stale_entries(name, before)
        finally:
            self._queue("reconcile", name)
        self._touched((name, F_DEFINITION))
        if not renamed:
            await self._drop_written_size((name,), F_DEFINITION)

    async def _act_port(self, name: str, port: str, data: bytes, *, renamed: bool = False) -> None:
        try:
            await self.driver.create_port(name, port, data)
        finally:
            self._queue("reconcile", name)
        self._pending_ports.discard((name, port))
        if not renamed:
            await self._drop_written_size((name, D_PORTS, port), F_PORT)

    async def _drop_written_size(self, parent: Path, name: str) -> None:
        """The kernel keeps the size the writer left (until the entry times
        out); the saved document is the canonical form, of another size. Drop
        the entry so the next open looks it up again: `>>` right after a write
        then appends at the real end. Never from rename(): the kernel holds
        the directory's lock until rename returns (and a renamed-over entry is
        new anyway)."""
        if not self.closing and parent in self._ino_by_path:
            await trio.to_thread.run_sync(self._invalidate, parent, name, abandon_on_cancel=True)

    def _touched(self, path: Path) -> None:
        self._mtimes[path] = time.time_ns()

    def _announce(self, path: Path) -> None:
        """`path` changed: new mtime, and poll() reports it to every handle."""
        self._mtimes[path] = time.time_ns()
        self._gens[path] = self._gens.get(path, 0) + 1

    def _written(self, path: Path) -> None:
        """A write through `path` by another process acted: that write already
        gave watchers IN_MODIFY and IN_CLOSE_WRITE on it, so when it changed
        the file, record it as announced (the notifier does not touch it
        again) and wake poll() waiters."""
        name, f = path
        snap = self._snap.get(name)
        new = self._safe_content(path)
        if snap is None or f not in snap or snap[f] == new or new is None:
            return
        snap[f] = new
        self._announce(path)
        if f in POLL_FILES:
            self._queue("wake", path)

    # ================================================================ events file

    def _caller_gone(self, pid: int) -> bool:
        """Has the reader been killed? (A FUSE read is not interruptible once
        it reached us and pyfuse3 does not pass interrupts on, so a blocked
        reader with a fatal signal pending waits for our answer.)"""
        try:
            with open(f"/proc/{pid}/status") as f:
                text = f.read()
        except OSError:
            return True
        masks: dict[str, int] = {}
        for line in text.splitlines():
            key, _, value = line.partition(":")
            if key in ("SigPnd", "ShdPnd", "SigBlk", "SigIgn"):
                masks[key] = int(value.strip(), 16)
            elif key == "State" and value.strip().startswith(("Z", "X")):
                return True
        pending = masks.get("SigPnd", 0) | masks.get("ShdPnd", 0)
        return bool(pending & ~masks.get("SigBlk", 0) & ~masks.get("SigIgn", 0))

    def _take_events(self, h: _Handle, first: Any = None) -> None:
        """Move what the subscription holds (up to 1000 events) into the
        handle's buffer. Events that are not lines of `events` (kind "error":
        those touch the `error` file only) are dropped here."""
        lines = []
        ev = first
        for _ in range(1000):
            if ev is None:
                try:
                    ev = h.channel.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                    break
            if ev.kind not in HIDDEN_EVENTS:
                line = ev.line()
                lines.append(line if line.endswith("\n") else line + "\n")
            ev = None
        if lines:
            h.leftover += "".join(lines).encode()

    async def _read_events(self, h: _Handle, size: int) -> bytes:
        if not h.leftover:
            self._take_events(h)
        while not h.leftover:
            ch = h.channel
            with trio.CancelScope() as cs:
                self._blocked_reads.add(cs)
                try:
                    while True:
                        with trio.move_on_after(0.5):
                            ev = await ch.receive()
                            break
                        if self._caller_gone(h.pid) or self.closing:
                            raise _err(errno.EINTR)
                except (trio.EndOfChannel, trio.ClosedResourceError):
                    return b""
                finally:
                    self._blocked_reads.discard(cs)
            if cs.cancelled_caught:
                raise _err(errno.EINTR)
            self._take_events(h, ev)
        out, h.leftover = h.leftover[:size], h.leftover[size:]
        return out

    # ================================================================ poll

    @_handler
    async def poll(
        self,
        inode: InodeT,
        fh: FileHandleT,
        poll_handle: pyfuse3.PollHandle | None,
        ctx: pyfuse3.RequestContext,
    ) -> int:
        h = self._handle(fh)
        if h.kind == "events":
            if not h.leftover:
                self._take_events(h)
            if h.leftover:
                return DEFAULT_POLLMASK
            if poll_handle is not None:
                self._event_pollers[fh] = poll_handle
            return 0
        mask = DEFAULT_POLLMASK
        if h.kind in ("attr", "read") and len(h.path) == 2 and h.path[1] in POLL_FILES:
            gen = self._gens.get(h.path, 0)
            if (
                h.ahead is not None
                and gen == h.seen + 1
                and self._snap.get(h.path[0], {}).get(h.path[1]) == h.ahead
            ):
                # the announcement of the value this handle read already
                # (it changed before the notifier announced it): one change,
                # one wake-up
                h.seen, h.ahead = gen, None
            if gen != h.seen or (
                h.last_read is not None and self._safe_content(h.path) != h.last_read
            ):
                return mask | CHANGED_POLLMASK
            if poll_handle is not None:
                self._pollers.setdefault(h.path, {})[fh] = poll_handle
                h.polled = True
        return mask

    def _ahead(self, path: Path, data: bytes) -> bytes | None:
        """`data`, just read from `path`, in the form the notifier announces
        (an error with its sequence number), when it is not yet what has been
        announced; else None."""
        name, f = path[0], path[-1]
        if len(path) != 2 or f not in POLL_FILES:
            return None
        if f == F_ERROR:
            st = self._state(name)
            seq = st.error_seq if st is not None else self._pending_error_seq.get(name, 0)
            data = data + b"\0%d" % seq
        told = self._snap.get(name, {}).get(f)
        return data if told is not None and told != data else None

    def _wake_pollers(self, path: Path) -> None:
        for ph in self._pollers.pop(path, {}).values():
            try:
                ph.notify()
            except Exception as e:  # a dead handle must not stop the notifier
                log.debug("poll notify failed: %s", e)

    def _wake_event_pollers(self) -> None:
        waiters, self._event_pollers = self._event_pollers, {}
        for ph in waiters.values():
            try:
                ph.notify()
            except Exception as e:
                log.debug("poll notify failed: %s", e)

    # ================================================================ notifier

    def _queue(self, kind: str, arg: Any = None) -> None:
        if self._todo_send is not None:
            try:
                self._todo_send.send_nowait((kind, arg))
            except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                return
            self._todo_seq += 1

    def _did_one(self) -> None:
        """The notifier finished one queued item: wake close()s waiting on it."""
        self._done_seq += 1
        self._progress.set()
        self._progress = trio.Event()

    def request_reconcile_all(self) -> None:
        """Compare every network with what watchers were told (after SIGHUP)."""
        self._queue("all")

    def _snapshot(self, name: str) -> dict[str, bytes | None]:
        snap = {f: self._safe_content((name, f)) for f in WATCHED_FILES}
        # a new error with the same words as the last is still a change: the
        # error's sequence number is part of what was announced, so each
        # recorded error is announced exactly once (by its event or by a
        # reconcile, whichever comes first)
        text = snap[F_ERROR]
        if text is not None:
            st = self._state(name)
            seq = st.error_seq if st is not None else self._pending_error_seq.get(name, 0)
            snap[F_ERROR] = text + b"\0%d" % seq
        return snap

    def publish_initial(self) -> None:
        """Everything the core has at start-up counts as already announced."""
        for name in self.driver.names():
            self._pub_nets.add(name)
            st = self._state(name)
            if st is None:
                continue
            if st.active:
                self._pub_status.add(name)
            for e in DEFINED_FILES + DEFINED_DIRS:
                self._pub_entries.add((name, e))
            for g in self._portgroup_names(st):
                self._pub_pgs.add((name, g))
            for p in st.ports:
                self._pub_ports.add((name, p))
            self._snap[name] = self._snapshot(name)

    async def run_notifier(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Turn core events and handler requests into the daemon's own
        operations through the mount (inotify), poll wake-ups and nothing else."""
        send, recv = trio.open_memory_channel[tuple[str, Any]](math.inf)
        self._todo_send, self._todo_recv = send, recv
        core = self.driver.subscribe()
        self.publish_initial()
        # start the helper now: spawned at the first change, its start-up
        # (~20 ms) would delay that change's announcement
        self._hands.start()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._pump, core)
                task_status.started()
                async for kind, arg in recv:
                    try:
                        if kind == "event":
                            if arg.kind in HIDDEN_EVENTS:
                                # a new error: its sequence number changed
                                await self._reconcile(arg.network)
                            else:
                                self._wake_event_pollers()
                                await self._reconcile(arg.network)
                        elif kind == "wake":
                            self._wake_pollers(arg)
                        elif kind == "reconcile":
                            await self._reconcile(arg)
                        elif kind == "all":
                            for name in sorted(
                                set(self.driver.names()) | self._pub_nets | self._pending
                            ):
                                await self._reconcile(name)
                    except Exception:
                        log.exception("notifier: %s %s", kind, arg)
                    finally:
                        self._did_one()
        finally:
            self.driver.unsubscribe(core)
            self._todo_send = None
            self._progress.set()

    async def _pump(self, core: trio.MemoryReceiveChannel[Any]) -> None:
        async for ev in core:
            self._queue("event", ev)

    async def _own(self, op: str, *parts: str) -> None:
        """One of the daemon's own operations through the mount, done by the
        helper process; handlers recognise it by that process's pid."""
        if self.closing:
            return
        try:
            await self._hands.call(op, self._real(*parts))
        except OSError as e:
            log.debug("own %s %s: %s", op, "/".join(parts), e)

    async def _own_new(self, op: str, parent: Path, name: str) -> None:
        """mkdir or mknod of `name` in `parent`, after dropping a dentry the
        kernel may have cached for it (from a thread: the kernel takes the
        directory's lock, and the trio loop must stay free to answer whoever
        holds it)."""
        if self.closing:
            return
        await trio.to_thread.run_sync(self._invalidate, parent, name, abandon_on_cancel=True)
        await self._own(op, *parent, name)

    async def _own_new_all(self, items: list[tuple[str, Path, str]]) -> None:
        """Several _own_new (op, parent, name) in order, with one thread hop
        for dropping the cached dentries."""
        if self.closing or not items:
            return
        await trio.to_thread.run_sync(
            self._invalidate_all, [(parent, n) for _op, parent, n in items], abandon_on_cancel=True
        )
        for op, parent, n in items:
            await self._own(op, *parent, n)
            if op == "mkdir" and len(parent) == 2:
                self._pub_pgs.add((parent[0], n))
            elif op == "mkdir":
                self._pub_entries.add((parent[0], n))
            else:
                self._own_made_file(parent, n)

    def _real(self, *parts: str) -> str:
        return os.path.join(self.mountpoint, *parts)

    def _invalidate(self, parent: Path, name: str) -> None:
        """Drop a dentry the kernel cached, so it asks us again (and our own
        view says absent instead of the kernel failing with EEXIST)."""
        ino = self._ino_by_path.get(parent)
        if ino is None:
            return
        try:
            pyfuse3.invalidate_entry(InodeT(ino), os.fsencode(name))
        except OSError:
            pass

    async def _reconcile(self, name: str) -> None:
        st = self._state(name)
        self._is_pending(name, st)  # adopts a pending directory the core now has
        if st is None and name not in self._pending:
            if name in self._pub_nets:
                await self._own("rmdir", name)
                self._forget_net(name)  # also if the rmdir failed
            return
        if name not in self._pub_nets:
            await self._own_new("mkdir", (), name)
            self._pub_nets.add(name)
            self._snap[name] = self._snapshot(name)
        if st is not None:
            new_entries: list[tuple[str, Path, str]] = [
                (op, (name,), e)
                for op, group in (("mknod", DEFINED_FILES), ("mkdir", DEFINED_DIRS))
                for e in group
                if (name, e) not in self._pub_entries
            ]
            pgs = set(self._portgroup_names(st))
            told = {g for n, g in self._pub_pgs if n == name}
            new_entries += [("mkdir", (name, D_PORTGROUPS), g) for g in sorted(pgs - told)]
            await self._own_new_all(new_entries)
            for g in sorted(told - pgs):
                await self._own("rmdir", name, D_PORTGROUPS, g)
                self._pub_pgs.discard((name, g))
            if st.active and name not in self._pub_status:
                await self._own_new("mknod", (name,), F_STATUS)
                self._pub_status.add(name)
            elif not st.active and name in self._pub_status:
                await self._own("unlink", name, F_STATUS)
                self._pub_status.discard(name)
            for p in sorted(set(st.ports) - {q for n, q in self._pub_ports if n == name}):
                await self._own_new("mkdir", (name, D_PORTS), p)
                self._pub_ports.add((name, p))
            for n, p in sorted(self._pub_ports):
                if n == name and p not in st.ports and (n, p) not in self._pending_ports:
                    await self._own("rmdir", name, D_PORTS, p)
                    self._pub_ports.discard((n, p))
        new = self._snapshot(name)
        old = self._snap.get(name)
        self._snap[name] = new
        for f in WATCHED_FILES:
            if new.get(f) is not None and (old is None or old.get(f) is None):
                self._touched((name, f))  # it appeared now (status.xml at a start)
        if old is None:
            return
        for f in WATCHED_FILES:
            if new.get(f) is None or old.get(f) in (None, new.get(f)):
                continue
            self._announce((name, f))
            if f in POLL_FILES:
                self._wake_pollers((name, f))
            await self._own("touch", name, f)

    def cancel_blocked_reads(self) -> None:
        self.closing = True
        self._hands.close()
        for cs in list(self._blocked_reads):
            cs.cancel()


def _put(buf: bytearray, off: int, data: bytes) -> None:
    if off > len(buf):
        buf.extend(b"\0" * (off - len(buf)))
    buf[off : off + len(data)] = data


def _resize(buf: bytearray, size: int) -> None:
    if size < len(buf):
        del buf[size:]
    else:
        buf.extend(b"\0" * (size - len(buf)))


# ==================================================================== lifecycle

BASE_OPTIONS = frozenset({"default_permissions", "allow_other", "fsname=netfs", "subtype=netfs"})


def mount(mountpoint: str, ops: NetfsOperations, options: Iterable[str] = ()) -> None:
    """Mount (synchronously; no thread is started, so the caller may fork)."""
    opts = set(BASE_OPTIONS) | set(options)
    pyfuse3.init(ops, mountpoint, opts)


async def serve(ops: NetfsOperations, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Run the FUSE main loop and the notifier until the file system is
    unmounted or :func:`terminate` is called."""
    async with trio.open_nursery() as nursery:
        await nursery.start(ops.run_notifier)

        async def main() -> None:
            try:
                await pyfuse3.main(max_tasks=MAX_TASKS)
            finally:
                nursery.cancel_scope.cancel()

        nursery.start_soon(main)
        task_status.started()


def terminate(ops: NetfsOperations | None = None) -> None:
    """End the main loop (from the trio thread); serve() then returns."""
    if ops is not None:
        ops.cancel_blocked_reads()
    pyfuse3.terminate()


def close(unmount: bool = True) -> None:
    pyfuse3.close(unmount=unmount)
