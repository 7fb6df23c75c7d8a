"""Attribute files read through the page cache are never stale.

`active` and `status.xml` are cached by the kernel across opens (see
netfs.fs.notifier); the daemon invalidates them before any change is made
known. A reader hammering them while the network is started and stopped by
writes, and stopped from outside (its bridge deleted), never reads a value
older than the last completed change: for a write, once close() returned;
for an outside change, once the daemon's first inotify event about it
arrived; for either, once its line in `events` arrived.
"""
# ruff: noqa: F811  (fixtures imported from fs_support are pytest arguments)

from __future__ import annotations

import ctypes
import os
import select
import struct
import subprocess
import threading
import time
from dataclasses import dataclass

import pytest
from fs_support import (
    LIVENESS,
    Daemon,
    daemon_factory,  # noqa: F401  (fixture)
    define,
    mounted,  # noqa: F401  (fixture)
    virtual_xml,
    wait_for,
)

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(180)]

IN_MODIFY = 0x2
IN_DELETE = 0x200
IN_NONBLOCK = os.O_NONBLOCK
_EVENT = struct.Struct("iIII")


@dataclass
class Change:
    begun: float  # monotonic: the write or `ip link del` started
    done: float  # the write's close() returned, or the announcement arrived
    active: bytes  # what `active` reads from then on
    status: bool  # whether status.xml exists from then on


@dataclass
class Seen:
    t: float  # monotonic, before the open (or the stat)
    value: bytes | bool


class Hammer:
    """A thread reading `active` (open/read/close) and checking whether
    status.xml exists, as fast as it can, recording each answer with the
    time it was asked."""

    def __init__(self, active: str, status: str) -> None:
        self.active = active
        self.status = status
        self.reads: list[Seen] = []
        self.stats: list[Seen] = []
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                t = time.monotonic()
                fd = os.open(self.active, os.O_RDONLY)
                try:
                    value = os.read(fd, 4096)
                finally:
                    os.close(fd)
                self.reads.append(Seen(t, value))
                t = time.monotonic()
                self.stats.append(Seen(t, os.path.exists(self.status)))
        except BaseException as e:  # noqa: BLE001  (reported by the test)
            self.errors.append(e)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(LIVENESS)


class EventLines:
    """A thread reading `events`, recording when each line arrived."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDONLY)
        self.lines: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        buf = b""
        p = select.poll()
        p.register(self.fd, select.POLLIN)
        while not self._stop.is_set():
            if not p.poll(100):  # readable when a line is waiting: read never blocks
                continue
            chunk = os.read(self.fd, 65536)
            if not chunk:
                return
            t = time.monotonic()
            buf += chunk
            *done, buf = buf.split(b"\n")
            self.lines.extend((t, line.decode()) for line in done)

    def changes(self, network: str) -> list[Change]:
        """A change complete at the arrival of each started/stopped line."""
        out = []
        for t, line in self.lines:
            fields = line.split()
            if fields[1:] == [network, "started"]:
                out.append(Change(t, t, b"1\n", True))
            elif fields[1:] == [network, "stopped"]:
                out.append(Change(t, t, b"0\n", False))
        return out

    def close(self) -> None:
        self._stop.set()
        self._thread.join(LIVENESS)
        os.close(self.fd)


def _stale(seen: list[Seen], changes: list[Change], field: str) -> list[str]:
    """Answers asked after a change completed and before the next began
    that do not show that change's value (answers asked while a change was
    under way may show either)."""
    changes = sorted(changes, key=lambda c: c.begun)
    bad = []
    for s in seen:
        last = None
        for i, c in enumerate(changes):
            if c.done <= s.t and (i + 1 == len(changes) or s.t < changes[i + 1].begun):
                last = c
        if last is not None and s.value != getattr(last, field):
            bad.append(f"{s.value!r} at {s.t:.6f}, after {last}")
    return bad


def _write(path: str, value: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    try:
        os.write(fd, value)
    finally:
        os.close(fd)


def _first_event(fd: int, after: float) -> float:
    """When the first inotify event arrived on `fd` (waiting for it)."""
    deadline = after + LIVENESS
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            t = time.monotonic()
            os.read(fd, 65536)
            return t
    raise AssertionError("no inotify event after the bridge was deleted")


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 65536):
            pass
    except BlockingIOError:
        pass


def test_a_hammering_reader_never_reads_an_old_value(mounted: Daemon) -> None:
    mnt, ns = mounted.mnt, mounted.netns
    define(mnt, "testA", virtual_xml("testA", "nfsbr0"))
    net = mnt / "testA"
    active, status = str(net / "active"), str(net / "status.xml")
    libc = ctypes.CDLL(None, use_errno=True)
    ino = libc.inotify_init1(IN_NONBLOCK)
    assert ino >= 0
    changes = [Change(0.0, time.monotonic(), b"0\n", False)]
    writes: list[Change] = []
    events = EventLines(str(mnt / "events"))
    hammer = Hammer(active, status)
    try:
        assert libc.inotify_add_watch(ino, bytes(net), IN_DELETE) >= 0
        assert libc.inotify_add_watch(ino, active.encode(), IN_MODIFY) >= 0
        wait_for(lambda: len(hammer.reads) > 20, "the reader to start")
        for _ in range(6):
            # started and stopped by writes
            for value, up in ((b"1\n", True), (b"0\n", False), (b"1\n", True)):
                begun = time.monotonic()
                _write(active, value)
                changes.append(Change(begun, time.monotonic(), value, up))
                writes.append(changes[-1])
                n = len(hammer.reads)
                wait_for(lambda n=n: len(hammer.reads) > n + 20, "reads after the write")
            # stopped from outside: the bridge deleted behind the daemon's back
            _drain(ino)
            begun = time.monotonic()
            subprocess.run(["ip", "-n", ns, "link", "del", "nfsbr0"], check=True)
            changes.append(Change(begun, _first_event(ino, begun), b"0\n", False))
            wait_for(lambda: not os.path.exists(status), "the stop to be complete")
            n = len(hammer.reads)
            wait_for(lambda n=n: len(hammer.reads) > n + 20, "reads after the announcement")
            _drain(ino)
        # the last lines of events are in
        wait_for(lambda: len(events.changes("testA")) >= 6 * 4, "the events lines")
    finally:
        hammer.stop()
        os.close(ino)
        events.close()
    assert hammer.errors == []
    # a line of events counts as the change made known, too
    changes += events.changes("testA")
    assert _stale(hammer.reads, changes, "active") == []
    assert _stale(hammer.stats, changes, "status") == []
    # the reader saw both values (the test exercised changes, not one value)
    assert {s.value for s in hammer.reads} - {b""} == {b"0\n", b"1\n"}
    # an empty read only while a write was truncating the file, as with any
    # file (`echo` opens with O_TRUNC, and the kernel sets the size to 0)
    empty = [s.t for s in hammer.reads if s.value == b""]
    assert [t for t in empty if not any(w.begun <= t <= w.done for w in writes)] == []


def test_reads_after_an_outside_change_without_any_reader_in_between(
    mounted: Daemon,
) -> None:
    """The cached copy taken while the network ran is gone once the daemon
    announced the stop, even when nobody read in between."""
    mnt, ns = mounted.mnt, mounted.netns
    define(mnt, "testA", virtual_xml("testA", "nfsbr0"))
    net = mnt / "testA"
    _write(str(net / "active"), b"1\n")
    for _ in range(3):
        assert (net / "active").read_bytes() == b"1\n"  # cached now
    uuid = (net / "uuid").read_bytes()
    libc = ctypes.CDLL(None, use_errno=True)
    ino = libc.inotify_init1(IN_NONBLOCK)
    try:
        assert libc.inotify_add_watch(ino, bytes(net / "active"), IN_MODIFY) >= 0
        begun = time.monotonic()
        subprocess.run(["ip", "-n", ns, "link", "del", "nfsbr0"], check=True)
        _first_event(ino, begun)
    finally:
        os.close(ino)
    assert (net / "active").read_bytes() == b"0\n"
    assert (net / "uuid").read_bytes() == uuid
    # and a redefinition through the mount: definition.xml (cached) is the
    # new document once the write returned, size and all
    before = (net / "definition.xml").read_text()
    text = virtual_xml("testA", "nfsbr0", address="192.168.151.1")
    _write(str(net / "definition.xml"), text.encode())
    after = (net / "definition.xml").read_text()
    assert "192.168.151.1" in after and after != before
    assert os.stat(net / "definition.xml").st_size == len(after.encode())


def test_a_poller_waits_again_after_reading_a_cached_value(mounted: Daemon) -> None:
    """Another reader took the new value into the page cache first, so the
    poller's own re-read never reaches the daemon: its next waiting poll()
    still waits for the next change instead of reporting this one again."""
    mnt = mounted.mnt
    define(mnt, "testA", virtual_xml("testA", "nfsbr0"))
    active = mnt / "testA" / "active"
    fd = os.open(active, os.O_RDONLY)
    try:
        assert os.pread(fd, 16, 0) == b"0\n"
        p = select.poll()
        p.register(fd, select.POLLPRI | select.POLLERR)
        _write(str(active), b"1\n")
        assert active.read_bytes() == b"1\n"  # another reader: now in the page cache
        ready = p.poll(int(LIVENESS * 1000))
        assert ready and ready[0][1] & select.POLLPRI
        assert os.pread(fd, 16, 0) == b"1\n"
        assert p.poll(300) == []  # nothing changed since: it waits (300 ms) and times out
        # and the next change still wakes it
        timer = threading.Timer(0.2, lambda: _write(str(active), b"0\n"))
        timer.start()
        try:
            ready = p.poll(int(LIVENESS * 1000))
        finally:
            timer.join()
        assert ready and ready[0][1] & select.POLLPRI
        assert os.pread(fd, 16, 0) == b"0\n"
    finally:
        os.close(fd)


def test_an_open_status_xml_reads_empty_while_stopped(mounted: Daemon) -> None:
    """status.xml opened while the network ran reads as empty (size 0) once
    it stopped, and the new status once it started again (man page)."""
    mnt = mounted.mnt
    define(mnt, "testA", virtual_xml("testA", "nfsbr0"))
    net = mnt / "testA"
    _write(str(net / "active"), b"1\n")
    unread = os.open(net / "status.xml", os.O_RDONLY)
    read = os.open(net / "status.xml", os.O_RDONLY)
    try:
        assert os.pread(read, 65536, 0).startswith(b"<networkstatus>")
        _write(str(net / "active"), b"0\n")
        for fd in (unread, read):
            assert os.pread(fd, 65536, 0) == b"" and os.fstat(fd).st_size == 0
        _write(str(net / "active"), b"1\n")
        for fd in (unread, read):
            assert os.pread(fd, 65536, 0) == (net / "status.xml").read_bytes()
            assert b"<name>testA</name>" in os.pread(fd, 65536, 0)
    finally:
        os.close(unread)
        os.close(read)
