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
from typing import TYPE_CHECKING

import trio

from netfs.errors import NetfsError
from netfs.fs import acts
from netfs.fs.space import MAX_FILE_BYTES, Space
from netfs.fs.tree import HIDDEN_EVENTS, File, Path

if TYPE_CHECKING:
    from netfs.core import Event
    from netfs.fs.notifier import Waker
    from netfs.fs.scratch import Scratch

log = logging.getLogger("netfs.fs")

DEFAULT_POLLMASK = select.POLLIN | select.POLLRDNORM
CHANGED_POLLMASK = select.POLLPRI | select.POLLERR
EVENTS_BATCH = 1000  # events moved into a reader's buffer at a time


class Handle:
    """An open file. `blocking`: reads wait (call :meth:`read_wait`)."""

    blocking = False

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self, off: int, size: int) -> bytes:
        raise NetfsError(errno.EACCES, "not readable")

    async def read_wait(self, size: int) -> bytes:
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

    def poll(self, fh: int, waker: Waker | None) -> int:
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
        self.polled = False  # registered as a poll waiter at least once

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

    def poll(self, fh: int, waker: Waker | None) -> int:
        mask = DEFAULT_POLLMASK
        if not self.node.polled:
            return mask
        n = self.space.notifier
        gen = n.gens.get(self.path, 0)
        if self.ahead is not None and gen == self.seen + 1 and n.told(self.path) == self.ahead:
            # the announcement of the value this handle read already (it
            # changed before the notifier announced it): one change, one wake-up
            self.seen, self.ahead = gen, None
        if gen != self.seen or (
            self.last_read is not None
            and self.space.safe_content(self.path, node=self.node) != self.last_read
        ):
            return mask | CHANGED_POLLMASK
        if waker is not None:
            n.add_poller(self.path, fh, waker)
            self.polled = True
        return mask

    def release(self, fh: int) -> Awaitable[None] | None:
        if self.polled:
            self.space.notifier.drop_poller(fh)
        return None


class FlagHandle(ContentHandle):
    """``active`` or ``autostart``: each write acts; its close waits until
    the notifier has announced what the write changed."""

    settle = 0  # the notifier's queue position the last write reached

    async def write(self, off: int, buf: bytes) -> int:
        try:
            await acts.store_flag(self.space, self.path, self.node, buf)
        finally:
            self.settle = self.space.notifier.todo_seq
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
        if not trunc:
            # like a file: `>>` appends to, and an in-place edit starts
            # from, what the document holds (vim truncates first)
            self.buf[:] = space.content(path, node=node) or b""
        self.dirty = False  # written or truncated since the last store
        self.refused = False  # a size past the limit was refused: never stores
        self.settle = 0

    async def write(self, off: int, buf: bytes) -> int:
        if off + len(buf) > MAX_FILE_BYTES:
            self.refused = True
        self.space.check_size(self.path, off + len(buf))
        put(self.buf, off, buf)
        self.dirty = True
        return len(buf)

    def truncate(self, space: Space, size: int) -> None:
        if size > MAX_FILE_BYTES:
            self.refused = True
        space.check_size(self.path, size)
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
        return self._release_commit() if self.dirty else None

    async def _release_commit(self) -> None:
        try:
            await self._commit()
        except NetfsError as e:
            log.warning("%s: %s", "/".join(self.path), e.message)


class ScratchHandle(Handle):
    def __init__(self, space: Space, path: Path, sc: Scratch) -> None:
        super().__init__(path)
        self.space = space
        self.scratch = sc

    def read(self, off: int, size: int) -> bytes:
        return bytes(self.scratch.data[off : off + size])

    async def write(self, off: int, buf: bytes) -> int:
        self.space.check_size(self.path, off + len(buf))
        put(self.scratch.data, off, buf)
        self.scratch.mtime_ns = time.time_ns()
        return len(buf)


class EventsHandle(Handle):
    """One reader of ``events``: its own subscription to the core's events.
    A read waits for the next event; it ends with EINTR when the reader is
    killed (checked twice a second: a FUSE read is not interruptible once it
    reached us) or the daemon stops (its cancel scope in `blocked`)."""

    blocking = True

    def __init__(self, space: Space, path: Path, pid: int, blocked: set[trio.CancelScope]) -> None:
        super().__init__(path)
        self.space = space
        self.channel = space.core.subscribe()
        self.pid = pid  # the opener (to notice it has been killed)
        self.leftover = b""  # undelivered part of a batch
        self._blocked = blocked

    def _take(self, first: Event | None = None) -> None:
        """Move what the subscription holds into the buffer. Events that are
        not lines of `events` (kind "error") are dropped here."""
        lines = []
        ev = first
        for _ in range(EVENTS_BATCH):
            if ev is None:
                try:
                    ev = self.channel.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                    break
            if ev.kind not in HIDDEN_EVENTS:
                line = ev.line()
                lines.append(line if line.endswith("\n") else line + "\n")
            ev = None
        if lines:
            self.leftover += "".join(lines).encode()

    async def read_wait(self, size: int) -> bytes:
        if not self.leftover:
            self._take()
        while not self.leftover:
            with trio.CancelScope() as cs:
                self._blocked.add(cs)
                try:
                    while True:
                        with trio.move_on_after(0.5):
                            ev = await self.channel.receive()
                            break
                        if caller_gone(self.pid) or self.space.notifier.closing:
                            raise NetfsError(errno.EINTR, "interrupted")
                except (trio.EndOfChannel, trio.ClosedResourceError):
                    return b""
                finally:
                    self._blocked.discard(cs)
            if cs.cancelled_caught:
                raise NetfsError(errno.EINTR, "interrupted")
            self._take(ev)
        out, self.leftover = self.leftover[:size], self.leftover[size:]
        return out

    def poll(self, fh: int, waker: Waker | None) -> int:
        if not self.leftover:
            self._take()
        if self.leftover:
            return DEFAULT_POLLMASK
        if waker is not None:
            self.space.notifier.add_event_poller(fh, waker)
        return 0

    def release(self, fh: int) -> Awaitable[None] | None:
        self.space.notifier.drop_event_poller(fh)
        self.space.core.unsubscribe(self.channel)
        return None


class DirHandle:
    """A directory listing taken at opendir: (name, path) with "." and ".."
    first, as sysfs and configfs list them."""

    def __init__(self, path: Path, names: list[str]) -> None:
        self.entries = [(".", path), ("..", path[:-1])] + [(n, path + (n,)) for n in names]


def caller_gone(pid: int) -> bool:
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


def put(buf: bytearray, off: int, data: bytes) -> None:
    if off > len(buf):
        buf.extend(b"\0" * (off - len(buf)))
    buf[off : off + len(data)] = data


def resize(buf: bytearray, size: int) -> None:
    if size < len(buf):
        del buf[size:]
    else:
        buf.extend(b"\0" * (size - len(buf)))
