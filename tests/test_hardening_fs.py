"""Hardening of the filesystem against its own users (issue 9, items 1-5):
readers of `events` that cannot take the daemon's workers, cannot make it
flood its log or memory and can always be killed; a busy or stopped daemon
that is never taken over; editors' temporary files that are freed and
bounded."""
# ruff: noqa: F811  (fixtures imported from fs_support are pytest arguments)

from __future__ import annotations

import errno
import logging
import os
import queue
import select
import signal
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path
from types import SimpleNamespace

import pyfuse3
import pytest
import trio
from fs_support import (
    LIVENESS,
    Daemon,
    daemon_factory,  # noqa: F401  (fixture)
    define,
    mounted,  # noqa: F401  (fixture)
    virtual_xml,
    wait_for,
)
from test_fs_inprocess import FS, USER, UUID_A, XML, FakeCore, _FakeNet

from netfs.fs.handles import MAX_EVENTS_BLOCKED, MAX_EVENTS_OPEN
from netfs.fs.notifier import EVENTS_KEPT, Notifier
from netfs.fs.waiters import MAX_WAITERS
from netfs.model.network import parse_network

NOBODY = 65534

# an unprivileged user opening `events` OPENS times, then starting one
# thread reading per descriptor it got, until a read fails (the kernel lets
# one read at a time through an open file); prints "ready OPENED
# REFUSED_OPENS ERRNOS" after the opens, then each failed read's errno as it
# comes (a reader an event woke reads on: more than OPENED minus the bound
# may fail), and waits for its stdin to close
ATTACKER = r"""
import os, resource, sys, threading
path, opens = sys.argv[1], int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_NOFILE, (opens + 64, opens + 64))
os.setgroups([])
os.setgid(65534)
os.setuid(65534)
fds, refused = [], []
for _ in range(opens):
    try:
        fds.append(os.open(path, os.O_RDONLY))
    except OSError as e:
        refused.append(e.errno)
lock = threading.Lock()
def reader(fd):
    try:
        while True:  # an event that comes meanwhile: read on
            os.read(fd, 4096)
    except OSError as e:
        with lock:
            print("read-error", e.errno, flush=True)
print("ready", len(fds), len(refused), set(refused), flush=True)
threading.stack_size(256 * 1024)
for fd in fds:
    threading.Thread(target=reader, args=(fd,), daemon=True).start()
sys.stdin.read()
os._exit(0)
"""


def _attack(mnt: Path, opens: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", ATTACKER, str(mnt / "events"), str(opens)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def _timed(cmd: str) -> float:
    """Run `cmd` as root; its wall time (a hang guard only, never asserted)."""
    t = time.monotonic()
    r = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=LIVENESS)
    assert r.returncode == 0, r.stderr
    return time.monotonic() - t


def _root_works(mnt: Path) -> dict[str, float]:
    return {
        "echo 1 > active": _timed(f"echo 1 > {mnt}/testA/active"),
        "ls": _timed(f"ls {mnt} {mnt}/testA"),
        "stat": _timed(f"stat {mnt}/testA/active"),
        "echo 0 > active": _timed(f"echo 0 > {mnt}/testA/active"),
    }


@pytest.mark.kernel
@pytest.mark.timeout(300)
def test_blocked_event_readers_leave_root_working(mounted: Daemon) -> None:
    """Item 1: 1,100 reads blocked on `events` by an unprivileged user (more
    than the 1,000 workers the daemon had) neither hang nor slow root's
    writes, listings and stats; the user gets EMFILE beyond its bounds, and
    the log says so once."""
    mnt = mounted.mnt
    define(mnt, "testA", virtual_xml("testA", "nfsbr0"))
    base = _root_works(mnt)
    attacker = _attack(mnt, 1100)
    try:
        assert attacker.stdout is not None
        ready: list[str] = []
        refused_reads = []
        # every open answered, the reads beyond the user's bound refused at once
        lines: queue.Queue[str] = queue.Queue()
        out = attacker.stdout
        threading.Thread(target=lambda: [lines.put(x) for x in out], daemon=True).start()
        while not ready or len(refused_reads) < MAX_EVENTS_OPEN - MAX_EVENTS_BLOCKED:
            try:
                line = lines.get(timeout=LIVENESS).split()
            except queue.Empty:
                raise AssertionError((ready, len(refused_reads))) from None
            assert line, "the attacker ended"
            if line[0] == "ready":
                ready = line
            else:
                refused_reads.append(line)
        opened, refused = int(ready[1]), int(ready[2])
        assert opened == MAX_EVENTS_OPEN and refused == 1100 - MAX_EVENTS_OPEN
        assert ready[3] == f"{{{errno.EMFILE}}}"
        assert all(r == ["read-error", str(errno.EMFILE)] for r in refused_reads), refused_reads
        under = _root_works(mnt)
        print(f"\nroot's latency, s: alone {base}; with 1100 blocked readers {under}")
        # the readers still wait: an event reaches them
        assert attacker.poll() is None
    finally:
        attacker.kill()
        attacker.wait(LIVENESS)
    refusals = [line for line in mounted.logtext().splitlines() if "uid 65534 refused" in line]
    assert len(refusals) == 1, refusals


# an unprivileged user polling `active` from THREADS threads, one open file
# each (read first, as sysfs wants): prints "ready", then per thread "woke"
# when its poll() returned with a change before its timeout (WAIT seconds),
# else "slept" (poll's last look at the timeout may find the change), and
# once all have, each thread's next poll(0): "again REVENTS"
POLLER = r"""
import os, select, sys, threading, time
path, threads, wait = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
os.setgroups([])
os.setgid(65534)
os.setuid(65534)
lock, done = threading.Lock(), threading.Barrier(threads)
def waiter():
    fd = os.open(path, os.O_RDONLY)
    os.read(fd, 16)
    p = select.poll()
    p.register(fd, select.POLLPRI | select.POLLERR)
    t = time.monotonic()
    got = p.poll(wait * 1000)
    early = time.monotonic() - t < wait - 1
    with lock:
        print("woke" if got and early else "slept", flush=True)
    done.wait()
    again = p.poll(0)
    with lock:
        print("again", again[0][1] if again else 0, flush=True)
for _ in range(threads):
    threading.Thread(target=waiter).start()
print("ready", flush=True)
"""


def _polling(pid: int, threads: int) -> bool:
    """All `threads` threads of process `pid` (beside its main one) sleep in poll()."""
    n = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            n += "poll" in Path(f"/proc/{pid}/task/{tid}/wchan").read_text()
        except OSError:
            pass
    return n == threads


@pytest.mark.kernel
@pytest.mark.timeout(300)
def test_a_users_poll_waiters_are_bounded(mounted: Daemon) -> None:
    """A user other than root keeps at most MAX_WAITERS poll() waiters: at a
    change those are woken, the ones beyond are not (they see the change at
    their next poll); root's waiter is woken all the same, and the log says
    so once."""
    mnt = mounted.mnt
    define(mnt, "testA", virtual_xml("testA", "nfsbr0"))
    threads, wait = MAX_WAITERS + 8, 6.0
    poller = subprocess.Popen(
        [sys.executable, "-c", POLLER, str(mnt / "testA/active"), str(threads), str(wait)],
        stdout=subprocess.PIPE,
        text=True,
    )
    fd = os.open(mnt / "testA/active", os.O_RDONLY)
    try:
        assert poller.stdout is not None
        assert poller.stdout.readline() == "ready\n"
        wait_for(lambda: _polling(poller.pid, threads), "the user's threads wait in poll()")
        os.read(fd, 16)
        p = select.poll()
        p.register(fd, select.POLLPRI | select.POLLERR)
        assert p.poll(0) == []
        (mnt / "testA/active").write_text("1\n")
        assert p.poll(LIVENESS * 1000) == [(fd, select.POLLPRI | select.POLLERR)]
        out, _ = poller.communicate(timeout=LIVENESS + wait)
    finally:
        os.close(fd)
        poller.kill()
        poller.wait(LIVENESS)
    lines = out.split("\n")
    assert lines.count("woke") == MAX_WAITERS and lines.count("slept") == threads - MAX_WAITERS
    changed = select.POLLPRI | select.POLLERR
    assert lines.count(f"again {changed}") == threads, lines
    said = [line for line in mounted.logtext().splitlines() if "by uid 65534 is not kept" in line]
    assert len(said) == 1, said


@pytest.mark.kernel
@pytest.mark.timeout(300)
def test_reader_that_did_not_open_events_can_be_killed(mounted: Daemon) -> None:
    """Item 4: `exec 3< events; timeout 3 cat <&3`: the reader is not the
    opener, and is killed while blocked; and a reader whose opener has exited
    waits for events (no EINTR loop)."""
    mnt = mounted.mnt
    fd = os.open(mnt / "events", os.O_RDONLY)
    try:
        cat = subprocess.Popen(["cat"], stdin=fd, stdout=subprocess.PIPE)
        time.sleep(0.3)  # blocked in its read
        assert cat.poll() is None
        cat.kill()
        cat.wait(LIVENESS)  # killed while blocked: gone without any event
        cat = subprocess.Popen(["cat"], stdin=fd, stdout=subprocess.PIPE)
        time.sleep(0.3)
        cat.send_signal(signal.SIGTERM)
        assert cat.wait(LIVENESS) == -signal.SIGTERM
    finally:
        os.close(fd)
    # the opener exits, its inheritor keeps reading
    r = subprocess.Popen(
        ["bash", "-c", f"exec 3< {mnt}/events; cat <&3 & echo $!; exec 3<&-"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert r.stdout is not None
    pid = int(r.stdout.readline())
    r.wait(LIVENESS)
    try:
        time.sleep(1.5)  # the old code gave it EINTR every half second
        assert os.path.exists(f"/proc/{pid}") and _state(pid) != "Z"
        define(mnt, "testB", virtual_xml("testB", "nfsbr1"))
        ready, _, _ = select.select([r.stdout], [], [], LIVENESS)
        assert ready and "testB defined" in r.stdout.readline()
    finally:
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not os.path.exists(f"/proc/{pid}") or _state(pid) == "Z", "cat gone")


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def _pump(n: Notifier) -> None:
    """What the notifier's pump does with the core's events (no pump runs
    in-process): each one into the feed."""
    ch = n.listen()
    while True:
        try:
            ev = ch.receive_nowait()
        except trio.WouldBlock:
            return
        n._take_event(ev)


async def test_idle_readers_cost_nothing_per_event(caplog: pytest.LogCaptureFixture) -> None:
    """Item 3: 2,000 readers that do not read while more events happen than
    are kept: one subscription to the core for all of them, memory that does
    not grow with readers x events, and one log line per reader that fell
    behind (not one per lost event)."""
    core = FakeCore()
    core.nets["testA"] = _FakeNet(parse_network(XML.format(name="testA", uuid=UUID_A)))
    fs = FS(core)
    n = fs.ops.notifier
    n.listen()
    ino = await fs.ino("events")
    fhs = [(await fs.ops.open(ino, os.O_RDONLY, USER)).fh for _ in range(2000)]  # type: ignore[arg-type]
    assert len(core._subs) == 1
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(EVENTS_KEPT + 1000):
            core._emit("testA", "started" if i % 2 else "stopped")
            if i % 50 == 0:
                _pump(n)
        _pump(n)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # the lines kept (~0.5 MB), nothing per reader and event
    assert grown < 4 << 20, grown
    caplog.set_level(logging.WARNING, logger="netfs.fs")
    for fh in fhs[:10]:
        first = await fs.ops.read(fh, 0, 1 << 16)
        assert first.endswith(b"\n") and first.count(b"\n") > 100
        assert await fs.ops.read(fh, 0, 1 << 16)
    lost = [r for r in caplog.records if "fell behind" in r.getMessage()]
    assert len(lost) == 10
    for fh in fhs:
        await fs.ops.release(fh)  # type: ignore[arg-type]


async def test_temporary_files_are_freed_and_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Item 5: an editor's file removed (unlink, or at its last close when
    removed while open, or its directory removed) gives its bytes back; the
    bytes held in such files and in open documents are bounded: ENOSPC, with
    the reason in the network's error, for everyone but root (what others
    hold never keeps root from writing a definition)."""
    core = FakeCore()
    core.nets["testA"] = _FakeNet(parse_network(XML.format(name="testA", uuid=UUID_A)))
    fs = FS(core)
    ops = fs.ops
    store = ops.space.scratch
    pino = await fs.ino("testA")
    mib = b"x" * (1 << 20)

    member = SimpleNamespace(pid=os.getpid(), uid=4242, gid=4242, umask=0o022)

    async def make(name: bytes, size: int = 1, ctx: SimpleNamespace = member) -> int:
        fi, _ = await ops.create(pino, name, 0o100644, os.O_WRONLY, ctx)  # type: ignore[arg-type]
        for i in range(size):
            await ops.write(fi.fh, i << 20, mib)
        return int(fi.fh)

    for i in range(30):
        fh = await make(b"tmp%d" % i)
        await ops.release(fh)  # type: ignore[arg-type]
        await ops.unlink(pino, b"tmp%d" % i, USER)  # type: ignore[arg-type]
    assert store.held == 0 and store.freed == 30 << 20 and not store.by_ino
    # removed while open: freed at the last close
    fh = await make(b"open")
    await ops.unlink(pino, b"open", USER)  # type: ignore[arg-type]
    assert store.held == 1 << 20
    await ops.release(fh)  # type: ignore[arg-type]
    assert store.held == 0 and not store.by_ino
    # the bound
    monkeypatch.setattr(store, "limit", 3 << 20)
    kept = [await make(b"keep%d" % i) for i in range(3)]
    fi, _ = await ops.create(pino, b"more", 0o100644, os.O_WRONLY, member)  # type: ignore[arg-type]
    with pytest.raises(pyfuse3.FUSEError) as e:
        await ops.write(fi.fh, 0, mib)
    assert e.value.errno == errno.ENOSPC
    assert "limit of 3145728 bytes" in core.nets["testA"].error
    # a document opened for writing counts too
    doc = XML.format(name="testA", uuid=UUID_A).encode()
    with pytest.raises(pyfuse3.FUSEError) as e:
        await fs.write("testA/definition.xml", doc, ctx=member)
    assert e.value.errno == errno.ENOSPC
    # root is never refused (its bytes are counted)
    await fs.write("testA/definition.xml", doc, ctx=USER)
    root_fh = await make(b"root", ctx=USER)
    assert store.held == 4 << 20
    await ops.release(root_fh)  # type: ignore[arg-type]
    await ops.unlink(pino, b"root", USER)  # type: ignore[arg-type]
    for fh in [*kept, fi.fh]:
        await ops.release(fh)  # type: ignore[arg-type]
    for name in (b"keep0", b"keep1", b"keep2", b"more"):
        await ops.unlink(pino, name, USER)  # type: ignore[arg-type]
    assert store.held == 0
    await fs.write("testA/definition.xml", XML.format(name="testA", uuid=UUID_A).encode())
    assert store.held == 0


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.mark.kernel
@pytest.mark.timeout(600)
def test_temporary_file_churn_does_not_grow_the_daemon(mounted: Daemon) -> None:
    """Item 5 through the kernel: rounds of 200 editors' files of 1 MiB
    created and removed; the daemon's RSS after three more rounds stays
    within a loose bound of what it was after the first (it grew by 200 MB
    per round)."""
    mnt = mounted.mnt
    assert mounted.proc is not None
    define(mnt, "testA", virtual_xml("testA", "nfsbr0"))
    mib = b"x" * (1 << 20)

    def churn() -> None:
        for i in range(200):
            p = mnt / "testA" / f".tmp{i}"
            p.write_bytes(mib)
            p.unlink()

    churn()
    before = _rss(mounted.proc.pid)
    for _ in range(3):
        churn()
    after = _rss(mounted.proc.pid)
    print(f"\ndaemon RSS after 1 round {before >> 20} MiB, after 4 rounds {after >> 20} MiB")
    assert after - before < 100 << 20, (before, after)


@pytest.mark.kernel
@pytest.mark.timeout(300)
def test_a_stopped_daemon_is_not_taken_over(daemon_factory: object) -> None:
    """Item 2: `netfs mount` on the mount point of a daemon that does not
    answer because it is stopped (SIGSTOP; as busy as can be) is refused;
    the daemon serves on once it continues, on the one mount."""
    d: Daemon = daemon_factory()  # type: ignore[operator]
    d.start()
    assert d.proc is not None
    other: Daemon = daemon_factory()  # type: ignore[operator]
    other.state_dir = other.state_dir.with_name("state2")
    os.kill(d.proc.pid, signal.SIGSTOP)
    try:
        r = subprocess.run(other.argv(), capture_output=True, text=True, timeout=LIVENESS * 2)
    finally:
        os.kill(d.proc.pid, signal.SIGCONT)
    assert r.returncode == 1, r.stderr
    assert "already mounted by a running daemon" in r.stderr
    assert f"pid {d.proc.pid}" in r.stderr
    define(d.mnt, "testA", virtual_xml("testA", "nfsbr0"))
    assert (d.config_dir / "testA.xml").exists()
    with open("/proc/self/mountinfo") as f:
        assert sum(line.split()[4] == str(d.mnt) for line in f) == 1


async def test_empty_files_and_directories_are_bounded_in_number(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each editor's file and each directory made by mkdir that waits for
    its definition costs memory even when empty: their numbers are bounded
    (ENOSPC); root's editors' files are not counted against others."""
    from netfs.fs import acts, editors

    monkeypatch.setattr(editors, "MAX_SCRATCH_FILES", 3)
    monkeypatch.setattr(acts, "MAX_PENDING_NETWORKS", 2)
    core = FakeCore()
    core.nets["testA"] = _FakeNet(parse_network(XML.format(name="testA", uuid=UUID_A)))
    fs = FS(core)
    ops = fs.ops
    pino = await fs.ino("testA")
    member = SimpleNamespace(pid=os.getpid(), uid=4242, gid=4242, umask=0o022)
    fhs = []
    for i in range(3):
        fi, _ = await ops.create(pino, b"t%d" % i, 0o100644, os.O_WRONLY, member)  # type: ignore[arg-type]
        fhs.append(fi.fh)
    with pytest.raises(pyfuse3.FUSEError) as e:
        await ops.create(pino, b"t3", 0o100644, os.O_WRONLY, member)  # type: ignore[arg-type]
    assert e.value.errno == errno.ENOSPC
    fi, _ = await ops.create(pino, b"r", 0o100644, os.O_WRONLY, USER)  # type: ignore[arg-type]
    fhs.append(fi.fh)
    for fh in fhs:
        await ops.release(fh)  # type: ignore[arg-type]
    for name in (b"t0", b"t1", b"t2", b"r"):
        await ops.unlink(pino, name, USER)  # type: ignore[arg-type]
    # one file removed: another may be made
    fi, _ = await ops.create(pino, b"t4", 0o100644, os.O_WRONLY, member)  # type: ignore[arg-type]
    await ops.release(fi.fh)
    await ops.unlink(pino, b"t4", USER)  # type: ignore[arg-type]
    # directories without a definition
    await fs.mkdir("/p1")
    await fs.mkdir("/p2")
    with pytest.raises(pyfuse3.FUSEError) as e:
        await fs.mkdir("/p3")
    assert e.value.errno == errno.ENOSPC
    await fs.rmdir("/p1")
    await fs.mkdir("/p3")
