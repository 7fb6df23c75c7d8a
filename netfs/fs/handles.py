"""Open files: one small class per kind of handle.

* :class:`ContentHandle` — a file of the tree opened for reading: its content
  is taken at the first read (at offset 0 again for each new read from the
  start); poll() reports changes of polled files, as sysfs does.
* :class:`FlagHandle` — ``active``, ``autostart``: each write of 0 or 1 acts.
* :class:`DocumentHandle` — a document opened for writing: a buffer stored
  at close (or fsync).
* :class:`EventsHandle` — the ``events`` stream of one reader.
* :class:`ScratchHandle` — an editor's temporary file.
* :class:`OwnHandle` — the notifier helper's own opens (no-ops).
* :class:`DirHandle` — a directory listing taken at opendir.

Handles speak NetfsError; the adapter maps errnos. No pyfuse3 here.
"""

from __future__ import annotations

import errno
import logging
import select
import time
from collections.abc import Awaitable
from datetime import datetime
from typing import TYPE_CHECKING

import trio

from netfs.errors import NetfsError
from netfs.fs import acts
from netfs.fs.space import MAX_FILE_BYTES, Space
from netfs.fs.tree import File, Path

if TYPE_CHECKING:
    from netfs.fs.interrupts import Interrupts
    from netfs.fs.scratch import Scratch
    from netfs.fs.waiters import Waker

log = logging.getLogger("netfs.fs")

DEFAULT_POLLMASK = select.POLLIN | select.POLLRDNORM
CHANGED_POLLMASK = select.POLLPRI | select.POLLERR
MAX_EVENTS_OPEN = 64  # open `events` handles per user (root: no bound)
MAX_EVENTS_BLOCKED = 32  # reads waiting on `events` per user (root: no bound)
MAX_BLOCKED_TOTAL = 1024  # reads waiting on `events`, all users but root


class Handle:
    """An open file. `blocking`: reads wait (call :meth:`read_wait`)."""

    blocking = False

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self, off: int, size: int) -> bytes:
        raise NetfsError(errno.EACCES, "not readable")

    async def read_wait(self, fh: int, off: int, size: int) -> bytes:
        raise NetfsError(errno.EACCES, "not readable")

    async def write(self, off: int, buf: bytes) -> int:
        raise NetfsError(errno.EACCES, "read-only")

    def truncate(self, space: Space, size: int) -> None:
        """setattr(size) through this handle (a file opened for writing)."""
        space.check_size(self.path, size)

    def flush(self) -> Awaitable[None] | None:
        """What close() must wait for, if anything (None: nothing; the read
        path stays free of coroutines)."""
        return None

    async def fsync(self) -> None:
        return None

    def poll(self, fh: int, waker: Waker | None, uid: int) -> int:
        """poll() by user `uid`; `waker`: wake it at a change (None: it does
        not wait)."""
        return DEFAULT_POLLMASK

    def release(self, fh: int) -> Awaitable[None] | None:
        """The last close: what must be awaited, if anything."""
        return None


class OwnHandle(Handle):
    """The helper's own open (its announcement of a change): no-op."""

    def read(self, off: int, size: int) -> bytes:
        return b""

    async def write(self, off: int, buf: bytes) -> int:
        return len(buf)


class ContentHandle(Handle):
    def __init__(self, space: Space, path: Path, node: File) -> None:
        super().__init__(path)
        self.space = space
        self.node = node
        self.data: bytes | None = None  # content snapshot (refreshed at offset 0)
        self.last_read: bytes | None = None  # poll: the value this handle has seen
        # poll: the file's change count when this handle last read it (an
        # open has seen the current value, as in sysfs)
        self.seen = space.notifier.gens.get(path, 0)
        self.ahead: bytes | None = None  # poll: a value read before it was announced
        self.reported = -1  # poll: the change count last reported as a change

    def read(self, off: int, size: int) -> bytes:
        data = self.data
        if off == 0 or data is None:
            data = self.space.content(self.path, node=self.node)
            if data is None:
                raise NetfsError(errno.ENOENT, "gone")
            self.data = data
            if off == 0 and self.node.polled:
                n = self.space.notifier
                self.last_read = data
                self.seen = n.gens.get(self.path, 0)
                self.ahead = n.ahead(self.path, self.node, data)
        return data[off : off + size]

    def poll(self, fh: int, waker: Waker | None, uid: int) -> int:
        mask = DEFAULT_POLLMASK
        if not self.node.polled:
            return mask
        n = self.space.notifier
        gen = n.gens.get(self.path, 0)
        if self.ahead is not None and gen == self.seen + 1 and n.told(self.path) == self.ahead:
            # the announcement of the value this handle read already (it
            # changed before the notifier announced it): one change, one wake-up
            self.seen, self.ahead = gen, None
        if self.node.cacheable:
            # its reads may come from the page cache and never reach us: a
            # new wait (a waker) after this change was reported means the
            # reader has had it; a change is reported once announced (the
            # cached copy is invalidated before, so a read then is fresh)
            if gen != self.seen and waker is not None and self.reported == gen:
                self.seen = gen
            if gen != self.seen:
                self.reported = gen
                return mask | CHANGED_POLLMASK
        elif gen != self.seen or (
            self.last_read is not None
            and self.space.safe_content(self.path, node=self.node) != self.last_read
        ):
            return mask | CHANGED_POLLMASK
        if waker is not None:
            n.waiters.add(self.path, fh, waker, uid)
        return mask

    def release(self, fh: int) -> Awaitable[None] | None:
        self.space.notifier.waiters.drop(fh)
        return None


class FlagHandle(ContentHandle):
    """``active`` or ``autostart``: each write acts; its close waits until
    the notifier has announced what the write changed."""

    settle = 0  # the notifier's queue position the last write reached

    async def write(self, off: int, buf: bytes) -> int:
        try:
            await acts.store_flag(self.space, self.path, self.node, buf)
        finally:
            # what the write queued (its reconcile); the core's event of
            # the same change, queued meanwhile, announces nothing more
            self.settle = self.space.notifier.todo_seq
            # the reply waits until the helper has the announcement: it
            # then works while the reply goes out and the close (which
            # waits for it) comes in, not after them
            with trio.CancelScope(shield=True):
                await self.space.notifier.begun(self.settle)
        return len(buf)

    def flush(self) -> Awaitable[None] | None:
        if not self.settle:
            return None
        target, self.settle = self.settle, 0
        return self.space.notifier.settle(target)


class DocumentHandle(ContentHandle):
    """A document opened for writing: stored once per batch of writes."""

    def __init__(self, space: Space, path: Path, node: File, *, trunc: bool, uid: int) -> None:
        super().__init__(space, path, node)
        self.uid = uid  # the writer's (the one who opened it): define's privilege
        self.buf = bytearray()  # content written since open
        self.held = 0  # bytes of the buffer counted in the store's total
        if not trunc:
            # like a file: `>>` appends to, and an in-place edit starts
            # from, what the document holds (vim truncates first)
            content = space.content(path, node=node) or b""
            self._hold(len(content))
            self.buf[:] = content
        self.dirty = False  # written or truncated since the last store
        self.refused = False  # a size past the limit was refused: never stores
        self.settle = 0

    def _hold(self, size: int) -> None:
        """The buffer is to be `size` bytes (at most): count them."""
        if size > self.held:
            hold(self.space, self.path, size - self.held, self.uid)
            self.held = size

    def _unhold(self) -> None:
        self.space.scratch.reserve(-self.held)
        self.held = 0

    async def write(self, off: int, buf: bytes) -> int:
        if off + len(buf) > MAX_FILE_BYTES:
            self.refused = True
        self.space.check_size(self.path, off + len(buf))
        self._hold(off + len(buf))
        put(self.buf, off, buf)
        self.dirty = True
        return len(buf)

    def truncate(self, space: Space, size: int) -> None:
        if size > MAX_FILE_BYTES:
            self.refused = True
        space.check_size(self.path, size)
        self._hold(size)
        resize(self.buf, size)
        self.dirty = True

    async def _commit(self) -> None:
        if not self.dirty:
            return
        self.dirty = False
        if self.refused:
            # part of what was written was refused (EFBIG): the content is
            # not what the writer meant, and the error says why already
            self.buf.clear()
            return
        data = bytes(self.buf)
        if not data.strip(b"\0 \t\r\n"):
            return  # nothing written (bash's early flush, `: > file`)
        try:
            await acts.store_document(self.space, self.path, self.node, data, uid=self.uid)
            self.space.notifier.written(self.path, self.node)
        finally:
            self.settle = self.space.notifier.todo_seq

    def flush(self) -> Awaitable[None] | None:
        return self._flush() if self.dirty or self.settle else None

    async def _flush(self) -> None:
        try:
            await self._commit()
        finally:
            if self.settle:
                target, self.settle = self.settle, 0
                await self.space.notifier.settle(target)

    async def fsync(self) -> None:
        await self._commit()

    def release(self, fh: int) -> Awaitable[None] | None:
        super().release(fh)
        if self.dirty:
            return self._release_commit()
        self._unhold()
        self.buf = bytearray()
        return None

    async def _release_commit(self) -> None:
        try:
            await self._commit()
        except NetfsError as e:
            log.warning("%s: %s", "/".join(self.path), e.message)
        finally:
            self._unhold()
            self.buf = bytearray()


class ScratchHandle(Handle):
    def __init__(self, space: Space, path: Path, sc: Scratch, uid: int) -> None:
        super().__init__(path)
        self.space = space
        self.scratch = sc
        self.uid = uid  # the opener's
        space.scratch.opened(sc)

    def read(self, off: int, size: int) -> bytes:
        return bytes(self.scratch.data[off : off + size])

    async def write(self, off: int, buf: bytes) -> int:
        data = self.scratch.data
        self.space.check_size(self.path, off + len(buf))
        hold(self.space, self.path, off + len(buf) - len(data), self.uid)
        put(data, off, buf)
        self.scratch.mtime_ns = time.time_ns()
        return len(buf)

    def release(self, fh: int) -> Awaitable[None] | None:
        self.space.scratch.closed(self.scratch)
        return None


class EventReaders:
    """Bounds on ``events`` readers, and the reads waiting now.

    A user other than root may hold at most MAX_EVENTS_OPEN open ``events``
    handles and MAX_EVENTS_BLOCKED reads waiting on them (counted for the
    user who opened the handle); all such users together at most
    MAX_BLOCKED_TOTAL waiting reads. Beyond a bound: EMFILE (ENFILE for the
    total), and one log line for the user until all the user's handles are
    closed. A waiting read is a parked coroutine: no periodic work, and the
    adapter raises pyfuse3's worker limit by MAX_BLOCKED_TOTAL so that other
    users' waiting reads never take the workers other requests need (root's
    are not bounded: root is trusted not to park a thousand reads)."""

    def __init__(self, interrupts: Interrupts) -> None:
        self.interrupts = interrupts
        self.open: dict[int, int] = {}
        self.blocked: dict[int, int] = {}
        self.blocked_total = 0  # of users other than root
        self.scopes: set[trio.CancelScope] = set()  # every waiting read (shutdown)
        self._said: set[int] = set()

    def _refuse(self, uid: int, code: int, what: str) -> NetfsError:
        if uid not in self._said:
            self._said.add(uid)
            log.warning(
                "events: uid %d refused (%s): %s (said once until the user's "
                "events handles are all closed)",
                uid,
                errno.errorcode.get(code, code),
                what,
            )
        return NetfsError(code, what)

    def opened(self, uid: int) -> None:
        n = self.open.get(uid, 0)
        if uid != 0 and n >= MAX_EVENTS_OPEN:
            raise self._refuse(uid, errno.EMFILE, f"more than {MAX_EVENTS_OPEN} open")
        self.open[uid] = n + 1

    def closed(self, uid: int) -> None:
        n = self.open.get(uid, 0) - 1
        if n > 0:
            self.open[uid] = n
        else:
            self.open.pop(uid, None)
            self._said.discard(uid)

    def park(self, uid: int) -> None:
        if uid != 0:
            if self.blocked.get(uid, 0) >= MAX_EVENTS_BLOCKED:
                raise self._refuse(
                    uid, errno.EMFILE, f"more than {MAX_EVENTS_BLOCKED} blocked reads"
                )
            if self.blocked_total >= MAX_BLOCKED_TOTAL:
                raise self._refuse(
                    uid, errno.ENFILE, f"more than {MAX_BLOCKED_TOTAL} blocked reads in all"
                )
            self.blocked_total += 1
        self.blocked[uid] = self.blocked.get(uid, 0) + 1

    def unpark(self, uid: int) -> None:
        n = self.blocked.get(uid, 0) - 1
        if n > 0:
            self.blocked[uid] = n
        else:
            self.blocked.pop(uid, None)
        if uid != 0:
            self.blocked_total -= 1


class EventsHandle(Handle):
    """One reader of ``events``: the number of its next line in the
    notifier's feed (and the rest of a line a short read did not take). A
    read with nothing to give waits for the next event; it ends with EINTR
    when its request is interrupted (the reading process got a signal,
    whichever process it is: FUSE INTERRUPT, see :mod:`netfs.fs.interrupts`)
    or the daemon stops. Opened with O_NONBLOCK, it fails with EAGAIN
    instead of waiting (FUSE tells the open's flags, not a later fcntl's)."""

    blocking = True

    def __init__(
        self, space: Space, path: Path, uid: int, readers: EventReaders, *, nonblock: bool = False
    ) -> None:
        super().__init__(path)
        self.space = space
        self.uid = uid
        self.readers = readers
        self.nonblock = nonblock
        readers.opened(uid)
        self.pos = space.notifier.sync_events()
        self.leftover = b""  # the rest of a line a short read did not take
        self.lost = False  # fell behind once (logged)
        self.newest: datetime | None = None  # the time of the newest line taken

    def _take(self, size: int) -> bytes:
        if self.leftover:
            out, self.leftover = self.leftover[:size], self.leftover[size:]
            return out
        feed = self.space.notifier.feed
        if self.pos < feed.start:
            if not self.lost:
                self.lost = True
                log.warning(
                    "events: a reader (uid %d) fell behind by more than %d lines: "
                    "%d lost (said once per reader)",
                    self.uid,
                    len(feed.lines),
                    feed.start - self.pos,
                )
            self.pos = feed.start
        if self.pos >= feed.end:
            return b""
        data, self.pos, self.newest = feed.take(self.pos, size)
        out, self.leftover = data[:size], data[size:]
        return out

    async def read_wait(self, fh: int, off: int, size: int) -> bytes:
        while True:
            out = self._take(size)
            if out:
                if self.newest is not None:
                    # no line before the cached files it concerns were invalidated
                    await self.space.notifier.fresh(self.newest)
                return out
            if self.nonblock:
                raise NetfsError(errno.EAGAIN, "no event yet")
            n = self.space.notifier
            if n.closing:
                raise NetfsError(errno.EINTR, "interrupted")
            self.readers.park(self.uid)
            try:
                with trio.CancelScope() as cs:
                    self.readers.scopes.add(cs)
                    waiter = self.readers.interrupts.park(cs, off, size, fh)
                    try:
                        await n.feed.wait(self.pos)
                    finally:
                        self.readers.interrupts.unpark(waiter)
                        self.readers.scopes.discard(cs)
            finally:
                self.readers.unpark(self.uid)
            if cs.cancelled_caught:
                raise NetfsError(errno.EINTR, "interrupted")

    def poll(self, fh: int, waker: Waker | None, uid: int) -> int:
        n = self.space.notifier
        if self.leftover or self.pos < n.sync_events():
            return DEFAULT_POLLMASK
        if waker is not None:
            n.waiters.add(self.path, fh, waker, uid)
        return 0

    def release(self, fh: int) -> Awaitable[None] | None:
        self.space.notifier.waiters.drop(fh)
        self.readers.closed(self.uid)
        return None


class DirHandle:
    """A directory listing taken at opendir: (name, path) with "." and ".."
    first, as sysfs and configfs list them."""

    def __init__(self, path: Path, names: list[str]) -> None:
        self.entries = [(".", path), ("..", path[:-1])] + [(n, path + (n,)) for n in names]


def hold(space: Space, path: Path, delta: int, uid: int) -> None:
    """Count `delta` more bytes (if positive) held in editors' temporary
    files and document buffers by a process of user `uid`: ENOSPC beyond the
    daemon's total, with the reason in the network's error, and nothing
    allocated. Root's are counted but never refused (what other users hold
    must not keep root from writing a definition)."""
    store = space.scratch
    if delta <= 0 or store.reserve(delta, force=uid == 0):
        return
    message = (
        f"{'/'.join(path[1:])}: editors' temporary files and documents open for writing "
        f"hold {store.held} bytes; {delta} more would pass the daemon's limit of "
        f"{store.limit} bytes (remove temporary files or close documents)"
    )
    if path and (space.state(path[0]) is not None or path[0] in space.pending):
        space.record(path[0], message)
    raise NetfsError(errno.ENOSPC, "the daemon's memory for file contents is full")


def put(buf: bytearray, off: int, data: bytes) -> None:
    if off > len(buf):
        buf.extend(b"\0" * (off - len(buf)))
    buf[off : off + len(data)] = data


def resize(buf: bytearray, size: int) -> None:
    if size < len(buf):
        del buf[size:]
    else:
        buf.extend(b"\0" * (size - len(buf)))
