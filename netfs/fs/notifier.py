"""Announcements: what inotify watchers and poll() waiters have been told.

FUSE has no way to raise inotify events, so the daemon makes them itself: the
notifier task, fed by the core's events and by the handlers, performs its own
mkdir, rmdir, mknod, unlink and writes *through the mount*, from the helper
process of :mod:`netfs.fs.helper`. The handlers recognise those requests (the
request's pid is the helper's) and treat them as no-ops, apart from recording
what has been published. Two views of the tree follow:

* everyone else sees the truth: a network the core has is listed at once, a
  network the core dropped is gone at once, ``status.xml`` exists exactly
  while the network is active;
* the helper sees what has been *published* (announced to watchers): a new
  network stays absent for it until its own mkdir, a removed one stays
  present until its own rmdir. That makes the kernel send MKDIR, RMDIR,
  CREATE and UNLINK, which is what raises IN_CREATE/IN_DELETE.

A handler never waits for an announcement to be *done* (the helper's
operation would touch an inode the kernel holds locked for that handler:
a deadlock); it queues the work. It may wait for what takes no inode
lock: a write that acted waits for the invalidation of its network's
cached files (:meth:`Notifier.invalidate_net`) and, at most BEGUN_WAIT,
for the helper to have been *sent* the announcement
(:meth:`Notifier.begun`); a read of ``events`` waits for the invalidation
its line follows (:meth:`Notifier.fresh`). Only close() (FLUSH) of a
write that acted waits until the change has been announced
(:meth:`Notifier.settle`) — the kernel holds no lock of ours during
FLUSH, so the helper's operations proceed.
:meth:`Notifier.changed` is the one place where "the value of file X
changed" is known (its mtime, poll's change count, the wake-ups).

Files declared ``cacheable`` are read through the kernel's page cache, kept
across opens. :meth:`Notifier.invalidate_net` drops the cached content and
size of a network's cacheable files; it runs before any change of that
network is made known: when the pump receives the core's events (every
change of the core's state, also one found from outside, is an event) —
a line of ``events`` waits for it (:meth:`Notifier.fresh`), and the dentries
of announced entries that are gone are dropped then too; at the start of
:meth:`Notifier.reconcile` (before the helper announces anything); and in a
write that acted, after the core call and before the write returns or
poll() waiters are woken. A network the kernel cannot hold anything of
(nothing of it exposed since its last invalidation) is skipped. The kernel
call runs in a worker thread, never on the trio thread: it locks the
file's cached pages, and a reader holding one of them waits for our answer
to its READ, which the loop must stay free to give. It does not take the
inode lock, and writes to cacheable files are never cached (a write open is
direct_io), so a write handler may wait for the invalidation of its own
file.

No pyfuse3 here: the adapter passes in how to drop a cached dentry and a
cached inode.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import itertools
import json
import logging
import math
import os
import subprocess
import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Union

import trio

from netfs.fs import helper, tree
from netfs.fs.tree import EVENTS_PATH, HIDDEN_EVENTS, Dir, File, Path, Presence
from netfs.fs.waiters import Waiters

if TYPE_CHECKING:
    from netfs.core import Event, NetworkState
    from netfs.fs.space import Space

log = logging.getLogger("netfs.fs")

SETTLE_TIMEOUT = 5.0  # longest close() waits for the announcement of its write
BEGUN_WAIT = 0.05  # longest a write waits for its announcement to begin
EVENTS_KEPT = 4096  # lines of `events` kept for readers that are behind
# events after which no entry of their network is gone (a start adds
# status.xml): the pump does not look for vanished entries
ONLY_ADDS = frozenset(
    {
        "started",
        "port-created",
        "lease-added",
        "lease-removed",
        "leases",
        "firewall",
        "repaired",
        "error",
    }
)
STREAK = 64  # queued items the notifier takes before it lets other tasks run


class EventFeed:
    """The lines of ``events``, kept once for all readers: the last
    EVENTS_KEPT lines, numbered from 0 (`end`: the number of the next one).
    A reader holds only the number of its next line, so an idle reader costs
    nothing per event; one further behind than EVENTS_KEPT lines loses the
    oldest (its handle says so in the log, once). Events that are not words
    of ``events`` (netfs.core.INTERNAL_KINDS) are not kept."""

    def __init__(self, kept: int = EVENTS_KEPT) -> None:
        self.lines: deque[bytes] = deque(maxlen=kept)
        self.times: deque[datetime] = deque(maxlen=kept)  # each line's event time
        self.end = 0
        self._changed = trio.Event()

    @property
    def start(self) -> int:
        """The number of the oldest line kept."""
        return self.end - len(self.lines)

    def push(self, ev: Event) -> None:
        if ev.kind in HIDDEN_EVENTS:
            return
        line = ev.line()
        self.lines.append((line if line.endswith("\n") else line + "\n").encode())
        self.times.append(ev.time)
        self.end += 1
        self._changed.set()
        self._changed = trio.Event()

    def take(self, pos: int, size: int) -> tuple[bytes, int, datetime]:
        """Whole lines from number `pos` (start <= pos < end), at least one
        and then as many as fit in `size` bytes; with the number after the
        last and the event time of the last."""
        out: list[bytes] = []
        n = 0
        first = pos - self.start
        for line in itertools.islice(self.lines, first, None):
            if out and n + len(line) > size:
                break
            out.append(line)
            n += len(line)
            pos += 1
        return b"".join(out), pos, self.times[first + len(out) - 1]

    async def wait(self, pos: int) -> None:
        """Until line `pos` exists (one trio.Event for all waiters: no work
        while nothing happens)."""
        while self.end <= pos:
            await self._changed.wait()


@dataclass(frozen=True)
class _Reconcile:
    """Make what watchers were told of network `name` (None: of every
    network) the truth."""

    name: str | None


@dataclass(frozen=True)
class _Wake:
    """Wake the poll() waiters of the file at `path`."""

    path: Path


@dataclass(frozen=True)
class _CoreEvent:
    """A core event the pump took."""

    event: Event


# what the notifier's queue holds: a core event or a handler's request
Todo = Union[_CoreEvent, _Reconcile, _Wake]  # noqa: UP007 (a runtime alias with a forward reference)


class Hands:
    """The helper process (see :mod:`netfs.fs.helper`) and its pipe.

    The pipe's ends are plain non-blocking descriptors: a request (one short
    line, and at most one under way) is written at once, without a trio
    checkpoint before it, so the helper starts its work in the same loop
    tick as the notifier decided on it; only the answer is waited for."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid = -1
        self._lock = trio.Lock()
        self._send = -1
        self._recv = -1
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
        self._send = os.dup(self.proc.stdin.fileno())
        self._recv = os.dup(self.proc.stdout.fileno())
        os.set_blocking(self._send, False)
        os.set_blocking(self._recv, False)
        self.proc.stdin.close()
        self.proc.stdout.close()
        self._buf = b""

    def start(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            self.close()
            self._spawn()

    async def call(self, op: str, path: str, meanwhile: Callable[[], None] | None = None) -> None:
        """Do `op` on `path` through the mount; OSError with the errno on
        failure. `meanwhile` runs once the request is sent, while the helper
        works (it must not wait for anything)."""
        if self._lock.locked():
            await self._lock.acquire()
        else:
            self._lock.acquire_nowait()
        try:
            if self.proc is None:
                self._spawn()
            line = json.dumps([op, path]).encode() + b"\n"
            try:
                await self._write(line)
            except BrokenPipeError:
                # it ended while idle (found here, not by a wait() per
                # request): a new one does it
                self.close()
                self._spawn()
                await self._write(line)
            if meanwhile is not None:
                meanwhile()
            while b"\n" not in self._buf:
                await trio.lowlevel.wait_readable(self._recv)
                try:
                    chunk = os.read(self._recv, 64)
                except BlockingIOError:
                    continue
                if not chunk:
                    self.close()
                    raise OSError(errno.EIO, "the helper process ended")
                self._buf += chunk
            line, _, self._buf = self._buf.partition(b"\n")
        finally:
            self._lock.release()
        code = int(line)
        if code:
            raise OSError(code, os.strerror(code), path)

    async def _write(self, data: bytes) -> None:
        while data:
            try:
                data = data[os.write(self._send, data) :]
            except BlockingIOError:
                await trio.lowlevel.wait_writable(self._send)

    def close(self) -> None:
        for fd in (self._send, self._recv):
            if fd >= 0:
                with contextlib.suppress(Exception):  # also outside a trio run
                    trio.lowlevel.notify_closing(fd)
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._send = self._recv = -1
        if self.proc is not None:
            with contextlib.suppress(OSError):
                self.proc.kill()
            with contextlib.suppress(Exception):
                self.proc.wait(timeout=5)
            self.proc = None


def _announced(node: tree.Node, is_item: bool) -> bool:
    """Does the entry come and go with IN_CREATE/IN_DELETE of its own?"""
    return is_item or node.presence in (Presence.DEFINED, Presence.ACTIVE)


class Notifier:
    """The published view, the queue of announcements, poll's change counts."""

    def __init__(
        self,
        space: Space,
        mountpoint: str,
        invalidate: Callable[[Path, str], None],
        invalidate_inode: Callable[[int], None] | None = None,
    ) -> None:
        self.space = space
        space.notifier = self
        self.mountpoint = os.path.abspath(mountpoint)
        self._invalidate = invalidate
        self._invalidate_inode = invalidate_inode
        self.hands = Hands()
        # network -> the paths under it announced so far (its directory: the key)
        self.published: dict[str, set[Path]] = {}
        # network -> its watched files as last announced
        self._snap: dict[str, dict[str, bytes | None]] = {}
        # how many changes of each polled file have been announced
        self.gens: dict[Path, int] = {}
        self.waiters = Waiters()
        self.feed = EventFeed()
        self._core_events: trio.MemoryReceiveChannel[Event] | None = None
        self._todo_send: trio.MemorySendChannel[Todo] | None = None
        # how many items were queued, and how many are done
        self.todo_seq = 0
        self._done_seq = 0
        # the queue position whose first helper operation has been sent
        self._begun_seq = 0
        self._progress = trio.Event()
        # the time of the newest core event whose networks' cached files
        # have been invalidated (see _pump and fresh)
        self._fresh_time: datetime | None = None
        # network -> the invalidation of its cached files under way
        self._inflight: dict[str, trio.Event] = {}
        self._fresh_progress = trio.Event()
        # network -> the number of the core's last event when its last
        # reconcile began (an event emitted before that is in the state the
        # reconcile read, whenever the pump takes it: the event's own
        # reconcile has nothing left to do; Driver.events_emitted)
        self._followed: dict[str, int] = {}
        self.closing = False

    def is_self(self, pid: int) -> bool:
        return pid == self.hands.pid

    # ================================================================ the published view

    def publish(self, path: Path) -> None:
        """`path` now exists for watchers (the helper made it, or mkdir did)."""
        pub = self.published.setdefault(path[0], set())
        if len(path) > 1:
            pub.add(path)

    def unpublish(self, path: Path) -> None:
        if len(path) == 1:
            self.space.forget_net(path[0])
            return
        pub = self.published.get(path[0])
        if pub is not None:
            k = len(path)
            for p in [p for p in pub if p[:k] == path]:
                pub.discard(p)

    def made_pending_network(self, name: str) -> None:
        self.published[name] = set()
        self._snap[name] = self._snapshot(name)

    def forget(self, name: str) -> None:
        """Network `name` is gone for watchers too."""
        self.published.pop(name, None)
        self._snap.pop(name, None)
        self._followed.pop(name, None)
        for p in [p for p in self.gens if p[0] == name]:
            del self.gens[p]
        for f in tree.watched():
            if f.polled:
                self.waiters.wake((name, f.name))

    def reannounced_error(self, name: str, told: bytes) -> None:
        """An adopted directory's error became the network's: the same error,
        announced already (under the pending sequence number)."""
        snap = self._snap.get(name)
        if snap is not None and snap.get(tree.F_ERROR) == told:
            snap[tree.F_ERROR] = self._snapshot(name)[tree.F_ERROR]

    def _snapshot(self, name: str) -> dict[str, bytes | None]:
        snap: dict[str, bytes | None] = {}
        st = self.space.state(name)
        for f in tree.watched():
            text = self.space.safe_content((name, f.name), st, f)
            # a new error with the same words as the last is still a change:
            # the sequence number is part of what was announced, so each
            # recorded error is announced exactly once
            if text is not None and f.seq is not None:
                text += b"\0%d" % f.seq(self.space, name)
            snap[f.name] = text
        return snap

    def publish_initial(self) -> None:
        """Everything the core has at start-up counts as already announced."""
        for name in self.space.core.names():
            st = self.space.state(name)
            self.published[name] = set()
            if st is None:
                continue
            self.published[name] = {p for _op, p in self._wanted(name, st)}
            self._snap[name] = self._snapshot(name)

    def _wanted(self, name: str, st: NetworkState) -> list[tuple[str, Path]]:
        """What watchers should see under network `name` (its announced
        entries, in tree order), each with the helper's op that makes it."""
        sp = self.space
        out: list[tuple[str, Path]] = []
        top = (name,)
        items: list[tuple[str, Path]] = []
        for e, child in tree.NETWORK.entries.items():
            path = top + (e,)
            if _announced(child, False) and sp.present(child, path, st):
                out.append(("mkdir" if child.is_dir else "mknod", path))
            if isinstance(child, Dir) and child.items is not None and child.item is not None:
                for i in child.items(sp, path, st):
                    items.append(("mkdir", path + (i,)))
        return out + items

    # ================================================================ queue

    def _queue(self, item: Todo) -> None:
        if self._todo_send is not None:
            try:
                self._todo_send.send_nowait(item)
            except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                return
            self.todo_seq += 1

    def _did_one(self) -> None:
        """The notifier finished one queued item: wake close()s waiting on it."""
        self._done_seq += 1
        self._progress.set()
        self._progress = trio.Event()

    async def settle(self, target: int) -> None:
        """Before close() returns to a process whose write acted, let the
        notifier finish announcing that change (up to queue position
        `target`): `echo 0 > active; umount /net` must not find the mount
        busy with them, and watchers have heard of a change once the command
        that made it is done. Bounded: a wedged notifier delays close() at
        most SETTLE_TIMEOUT. The kernel holds no lock of ours during FLUSH,
        so the helper's operations proceed meanwhile."""
        await self._until(lambda: self._done_seq >= target, SETTLE_TIMEOUT)

    async def begun(self, target: int) -> None:
        """Until the notifier has sent the helper the first operation of
        queue position `target`, or finished it (at most BEGUN_WAIT): a
        write that acted replies after this, so that the helper works while
        the reply goes out and the writer's close comes in."""
        await self._until(lambda: max(self._done_seq, self._begun_seq) >= target, BEGUN_WAIT)

    async def _until(self, reached: Callable[[], bool], timeout: float) -> None:
        """Until `reached()` after the notifier's progress, at most
        `timeout` (at once when the notifier is closing or not running)."""
        with trio.move_on_after(timeout):
            while not reached() and not self.closing and self._todo_send is not None:
                await self._progress.wait()

    def _began(self) -> None:
        """The item under way sent the helper an operation."""
        if self._begun_seq <= self._done_seq:
            self._begun_seq = self._done_seq + 1
            self._progress.set()
            self._progress = trio.Event()

    def queue_reconcile(self, name: str) -> None:
        """Compare network `name` with what watchers were told (a handler
        changed it, or tried to)."""
        self._queue(_Reconcile(name))

    def request_reconcile_all(self) -> None:
        """Compare every network with what watchers were told (after SIGHUP)."""
        self._queue(_Reconcile(None))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Turn core events and handler requests into the helper's operations
        through the mount (inotify), poll wake-ups and nothing else."""
        send, recv = trio.open_memory_channel[Todo](math.inf)
        self._todo_send = send
        core = self.listen()
        self.publish_initial()
        # start the helper now: spawned at the first change, its start-up
        # (~20 ms) would delay that change's announcement
        self.hands.start()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._pump, core)
                task_status.started()
                streak = 0
                while True:
                    # the items queued already are taken without a
                    # checkpoint each (a tick of the loop per item would
                    # delay the announcements behind them); a long run of
                    # them still lets the other tasks in now and then
                    try:
                        item = recv.receive_nowait()
                        streak += 1
                        if streak >= STREAK:
                            streak = 0
                            await trio.lowlevel.checkpoint()
                    except trio.WouldBlock:
                        streak = 0
                        try:
                            item = await recv.receive()
                        except trio.EndOfChannel:
                            break
                    except trio.EndOfChannel:
                        break
                    try:
                        await self._do(item)
                    except Exception:
                        log.exception("notifier: %s", item)
                    finally:
                        self._did_one()
        finally:
            self._core_events = None
            self.space.core.unsubscribe(core)
            self._todo_send = None
            self._progress.set()
            self._fresh_progress.set()

    async def _do(self, item: Todo) -> None:
        if isinstance(item, _Wake):
            self.waiters.wake(item.path)
        elif isinstance(item, _Reconcile):
            if item.name is not None:
                await self.reconcile(item.name)
                return
            names = set(self.space.core.names()) | set(self.published) | set(self.space.pending)
            for name in sorted(names):
                await self.reconcile(name)
        else:
            ev = item.event
            if ev.kind not in HIDDEN_EVENTS:  # "error": only its sequence number changed
                self.waiters.wake(EVENTS_PATH)
            if not ev.seq or self._followed.get(ev.network, 0) < ev.seq:
                await self.reconcile(ev.network)

    async def _pump(self, core: trio.MemoryReceiveChannel[Event]) -> None:
        """Core events, in batches: the cached files of their networks are
        invalidated at once (not behind the queue's announcements), then the
        events are queued. A line of `events` waits for this (:meth:`fresh`),
        so a reader of `events` never reads an older value afterwards."""
        while True:
            try:
                batch = [await core.receive()]
            except (trio.EndOfChannel, trio.ClosedResourceError):
                return
            while True:
                try:
                    batch.append(core.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                    break
            names = list(dict.fromkeys(ev.network for ev in batch))
            await self.invalidate_net(*names)
            shrunk = list(dict.fromkeys(ev.network for ev in batch if ev.kind not in ONLY_ADDS))
            await self.drop_entries(self._vanished(shrunk))
            newest = max(ev.time for ev in batch)
            if self._fresh_time is None or newest > self._fresh_time:
                self._fresh_time = newest
            self._fresh_progress.set()
            self._fresh_progress = trio.Event()
            for ev in batch:
                self._take_event(ev)

    def _vanished(self, names: list[str]) -> list[tuple[Path, str]]:
        """Entries of networks `names` that watchers were told of and that
        are gone now (status.xml after a stop, freed ports, the network
        itself), as (parent, name): their dentries are dropped before a line
        of `events` says why (the helper's own view still has them, so its
        rmdir or unlink announces them as before)."""
        out: list[tuple[Path, str]] = []
        for name in names:
            pub = self.published.get(name)
            if pub is None:
                continue
            st = self.space.state(name)
            if st is None:
                if name not in self.space.pending:
                    out.append(((), name))
                continue
            keep = {p for _op, p in self._wanted(name, st)}
            out.extend((p[:-1], p[-1]) for p in pub - keep)
        return out

    async def fresh(self, when: datetime) -> None:
        """Wait until the cached files of the networks of every core event
        up to time `when` have been invalidated (at most SETTLE_TIMEOUT; at
        once when the notifier is not running)."""
        with trio.move_on_after(SETTLE_TIMEOUT):
            while (
                (self._fresh_time is None or self._fresh_time < when)
                and not self.closing
                and self._todo_send is not None
            ):
                await self._fresh_progress.wait()

    def _take_event(self, ev: Event) -> None:
        self.feed.push(ev)
        self._queue(_CoreEvent(ev))

    def listen(self) -> trio.MemoryReceiveChannel[Event]:
        """The one subscription to the core's events (for every reader of
        `events` and for the announcements)."""
        if self._core_events is None:
            self._core_events = self.space.core.subscribe()
        return self._core_events

    def sync_events(self) -> int:
        """The feed's end: where a reader opening `events` now starts. Lines
        enter the feed only through the pump, once the cached files their
        events concern were invalidated (so no line is read before a cached
        value it announces could be stale)."""
        return self.feed.end

    # ================================================================ the helper's operations

    async def _own(self, op: str, path: Path, meanwhile: Callable[[], None] | None = None) -> int:
        """One operation through the mount, done by the helper process: its
        errno (0: done)."""
        if self.closing:
            return 0

        def sent() -> None:
            self._began()
            if meanwhile is not None:
                meanwhile()

        try:
            await self.hands.call(op, os.path.join(self.mountpoint, *path), sent)
        except OSError as e:
            log.debug("own %s %s: %s", op, "/".join(path), e)
            return e.errno or errno.EIO
        return 0

    def _invalidate_all(self, entries: list[tuple[Path, str]]) -> None:
        for parent, n in entries:
            self._invalidate(parent, n)

    async def drop_entries(self, entries: list[tuple[Path, str]]) -> None:
        """Drop dentries the kernel may have cached (so it asks again), in a
        thread: the kernel takes the directory's lock, and the trio loop must
        stay free to answer whoever holds it."""
        entries = [(p, n) for p, n in entries if p in self.space.inos]
        if entries and not self.closing:
            await trio.to_thread.run_sync(self._invalidate_all, entries, abandon_on_cancel=True)

    def _invalidate_inodes(self, inos: list[int]) -> None:
        assert self._invalidate_inode is not None
        for ino in inos:
            self._invalidate_inode(ino)

    async def invalidate_net(self, *names: str) -> None:
        """Drop what the kernel caches of the cacheable files of networks
        `names` (content and size), in one worker thread hop (see the module
        docstring). Called after a network's state changed and before that
        change is made known, so that no read after it shows the old value.
        A network nothing of which reached the kernel since its last
        invalidation (`Space.exposed`: no size in a reply, no cached open, no
        READ) is skipped: the kernel cannot hold anything of it."""
        if self._invalidate_inode is None or self.closing:
            return
        exposed = self.space.exposed
        cached = self.space.cached_inos
        inos: list[int] = []
        mine: list[str] = []
        waits: list[trio.Event] = []
        for name in names:
            if name in exposed:
                exposed.discard(name)  # before the hop: what comes after counts again
                inos.extend(cached.get(name, ()))
                mine.append(name)
            elif name in self._inflight:
                waits.append(self._inflight[name])  # another caller's hop: wait for it too
        if inos:
            done = trio.Event()
            for name in mine:
                self._inflight[name] = done
            try:
                await trio.to_thread.run_sync(self._invalidate_inodes, inos, abandon_on_cancel=True)
            finally:
                done.set()
                for name in mine:
                    if self._inflight.get(name) is done:
                        del self._inflight[name]
        for ev in waits:
            await ev.wait()

    async def _own_new(self, items: list[tuple[str, Path]]) -> None:
        """mkdir or mknod of each path, in order. A dentry the kernel holds
        for one (a process looked it up since it exists) needs no dropping
        first: for an exclusive create FUSE asks us again (LOOKUP_EXCL), the
        helper's view says absent, and the kernel drops it itself. Should a
        kernel refuse with EEXIST instead, the dentry is dropped (a thread
        hop) and the operation made again."""
        if self.closing or not items:
            return
        warm: Callable[[], None] | None = functools.partial(self._warm, [p for _op, p in items])
        for op, path in items:
            # while the helper makes the first, the files made are
            # formatted (status.xml at a start): the MKNOD's answer and the
            # comparison after it find them ready
            done = await self._own(op, path, warm)
            warm = None  # once
            if done == errno.EEXIST:
                await self.drop_entries([(path[:-1], path[-1])])
                await self._own(op, path)
            self.publish(path)

    def _warm(self, paths: list[Path]) -> None:
        """Format what the files among `paths` show now (documents are
        cached per version; the result itself is not kept)."""
        for path in paths:
            node = tree.resolve(path)
            if isinstance(node, File) and node.show is not None:
                self.space.safe_content(path, node=node)

    async def reconcile(self, name: str) -> None:
        """Make what watchers were told of network `name` the truth."""
        sp = self.space
        self._followed[name] = sp.core.events_emitted
        await self.invalidate_net(name)  # before anything is announced
        st = sp.state(name)
        sp.is_pending(name, st)  # adopts a pending directory the core now has
        if st is None and name not in sp.pending:
            if name in self.published:
                await self._own("rmdir", (name,))
                sp.forget_net(name)  # also if the rmdir failed
            return
        if name not in self.published:
            await self._own_new([("mkdir", (name,))])
            self._snap[name] = self._snapshot(name)
        if st is not None:
            pub = self.published[name]
            wanted = self._wanted(name, st)
            await self._own_new([(op, p) for op, p in wanted if p not in pub])
            keep = {p for _op, p in wanted}
            for p in sorted(pub - keep, key=lambda p: (-len(p), p)):
                node = tree.resolve(p)
                await self._own("rmdir" if node is not None and node.is_dir else "unlink", p)
                pub.discard(p)
        await self._announce_changes(name)

    async def _announce_changes(self, name: str) -> None:
        new = self._snapshot(name)
        old = self._snap.get(name)
        self._snap[name] = new
        for f in tree.watched():
            if new.get(f.name) is not None and (old is None or old.get(f.name) is None):
                self.space.touched((name, f.name))  # it appeared now (status.xml at a start)
        if old is None:
            return
        for f in tree.watched():
            if new.get(f.name) is None or old.get(f.name) in (None, new.get(f.name)):
                continue
            self.changed((name, f.name), f)
            await self._own("touch", (name, f.name))

    # ================================================================ changes and poll

    def changed(self, path: Path, node: File, *, wake_later: bool = False) -> None:
        """The value of `path` changed (and is being announced): new mtime,
        poll() reports it to every handle, waiters wake (from the notifier's
        task when `wake_later`)."""
        self.space.touched(path)
        self.gens[path] = self.gens.get(path, 0) + 1
        # only handles waiting now need waking (a poll() after this one
        # finds the new count at once): no queue item, and no wake-up of
        # the writer waiting for its announcement, when none is
        if node.polled and self.waiters.waiting(path):
            if wake_later:
                self._queue(_Wake(path))
            else:
                self.waiters.wake(path)

    def written(self, path: Path, node: File) -> None:
        """A write through `path` by another process acted: that write already
        gave watchers IN_MODIFY and IN_CLOSE_WRITE on it, so when it changed
        the file, record it as announced (the notifier does not touch it
        again) and wake poll() waiters (from the notifier's task)."""
        snap = self._snap.get(path[0])
        if snap is None or not node.watched or len(path) != 2:
            return
        new = self.space.safe_content(path, node=node)
        if snap.get(path[1]) == new or new is None:
            return
        snap[path[1]] = new
        self.changed(path, node, wake_later=True)

    def told(self, path: Path) -> bytes | None:
        return self._snap.get(path[0], {}).get(path[-1])

    def ahead(self, path: Path, node: File, data: bytes) -> bytes | None:
        """`data`, just read from `path`, in the form the notifier announces
        (with its sequence number), when it is not yet what has been
        announced; else None."""
        if node.seq is not None:
            data = data + b"\0%d" % node.seq(self.space, path[0])
        told = self.told(path)
        return data if told is not None and told != data else None

    def close(self) -> None:
        self.closing = True
        self.hands.close()
