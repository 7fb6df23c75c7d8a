"""Benchmark of the mounted filesystem: `python -m bench fs [--quick] [--reads] [--profile]`.

Everything runs in network namespaces, temporary directories and mounts made
for the run and always removed. The daemon is `netfs mount MNT --netns NS -f`
with 1000 networks in its config directory (testA plus 999 generated ones).
Each figure is printed beside its floor, measured in the same run:

- Reading an attribute file, as issue 10 measures it: interleaved blocks of
  200 open/read/close each (Python os.open/os.read/os.close, one block timed
  as a whole with perf_counter_ns), alternating between netfs's file and the
  floor: a minimal pyfuse3 filesystem serving one constant file, mounted the
  same way (bench/floorfs.py: trio, 1 s entry and attribute timeouts,
  direct_io, no-op FLUSH and RELEASE), ten blocks each; the figure is the
  median of the ten block ratios, for `testA/active`, `testA/uuid` and
  `testA/status.xml` (testA running; read through the page cache) and
  `testA/error` (direct_io, as the floor). Target: <= 1.2x. Then the
  absolute time of one read of each, beside the floor, the floor with the
  page cache (`bench.floorfs --cached`: only OPEN, FLUSH and RELEASE reach
  it, the least a FUSE read costs with pyfuse3) and tmpfs, all in
  interleaved blocks. Target for `active`: <= 100 µs. `--reads` runs only this; `--profile` also puts a timer
  around each FUSE handler in the daemon and prints the handlers' share of
  a read (the rest is the kernel's round trips and pyfuse3/trio dispatch).
- `echo 1 > active` until the bridge is up (the write returns when the start
  is done; Python open/write/close of "1\\n"), beside the driver core called
  directly in this process (Driver.start on the same definition in a second
  namespace, with the same 1000 networks and the link monitor running, as
  in the daemon). Same for stop. Target: <= 1.2x the core.
- `ls -l` of the mount with 1000 networks: cold (after the 1 s entry and
  attribute timeouts expired) and warm, beside tmpfs with 1000 directories.
  Target: <= 100 ms.
- State change to inotify event: after the write that starts (stops) testA
  returns, until a watcher on testA/ gets IN_CREATE (IN_DELETE) of
  status.xml; a line in `events` likewise. And a bridge deleted from outside
  (from running `ip link del`) until `active` gets IN_MODIFY. Target: <= 5 ms
  median for the write-driven change.
"""

from __future__ import annotations

import ctypes
import os
import random
import select
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TOP = EXAMPLES.parent

IN_MODIFY = 0x2
IN_CREATE = 0x100
IN_DELETE = 0x200
_EVENT = struct.Struct("iIII")


# -- small helpers ---------------------------------------------------------------


def _pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p * (len(s) - 1))))]


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _is_mounted(path: Path) -> bool:
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == str(path) for line in f)


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check)


def _verdict(ok: bool) -> str:
    return "OK" if ok else "MISSED"


class Inotify:
    """inotify through ctypes; a thread records when each event arrives."""

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self._libc.inotify_init1(os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self.events: list[tuple[float, int, int, str]] = []  # (t, wd, mask, name)
        self._r, self._w = os.pipe()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def watch(self, path: Path, mask: int) -> int:
        wd = int(self._libc.inotify_add_watch(self.fd, os.fsencode(path), mask))
        if wd < 0:
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {path}")
        return wd

    def _loop(self) -> None:
        while True:
            ready, _, _ = select.select([self.fd, self._r], [], [])
            if self._r in ready:
                return
            data = os.read(self.fd, 65536)
            t = time.perf_counter()
            off = 0
            while off < len(data):
                wd, mask, _cookie, length = _EVENT.unpack_from(data, off)
                name = data[off + _EVENT.size : off + _EVENT.size + length].rstrip(b"\0")
                self.events.append((t, wd, mask, name.decode()))
                off += _EVENT.size + length

    def wait_for(
        self, after: int, wd: int, mask: int, name: str | None, timeout: float = 3.0
    ) -> float | None:
        """Arrival time of the first matching event at index >= after."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for t, w, m, n in self.events[after:]:
                if w == wd and m & mask and (name is None or n == name):
                    return t
            time.sleep(0.0005)
        return None

    def close(self) -> None:
        os.write(self._w, b"x")
        self._thread.join(timeout=2)
        os.close(self.fd)
        os.close(self._r)
        os.close(self._w)


class LineReader:
    """Reads `events` in a thread; records when each line arrives."""

    def __init__(self, path: Path) -> None:
        self.lines: list[tuple[float, str]] = []
        self.proc = subprocess.Popen(["cat", str(path)], stdout=subprocess.PIPE, text=True)
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append((time.perf_counter(), line.rstrip("\n")))

    def wait_for(self, after: int, suffix: str, timeout: float = 3.0) -> float | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for t, line in self.lines[after:]:
                if line.endswith(suffix):
                    return t
            time.sleep(0.0005)
        return None

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=5)
        self._thread.join(timeout=2)


# -- the measurements ----------------------------------------------------------


READ_BLOCK = 200  # open/read/close per block
READ_BLOCKS = 10  # blocks of each file, interleaved with the floor's
READ_SIZE = 128 * 1024  # one read(2) takes the whole file, as cat's buffer does


def read_block(path: Path, n: int = READ_BLOCK) -> float:
    """`n` times open/read/close of `path`; nanoseconds for the whole block."""
    p = str(path)
    t0 = time.perf_counter_ns()
    for _ in range(n):
        fd = os.open(p, os.O_RDONLY)
        os.read(fd, READ_SIZE)
        os.close(fd)
    return float(time.perf_counter_ns() - t0)


def block_ratios(target: Path, floor: Path, blocks: int = READ_BLOCKS) -> list[float]:
    """Blocks of `target` and `floor` taken alternately (target, floor,
    target, ...): the ratio of each pair."""
    read_block(target, 50)  # warm: dentries, attributes, the daemon's caches
    read_block(floor, 50)
    ratios = []
    for _ in range(blocks):
        t = read_block(target)
        f = read_block(floor)
        ratios.append(t / f)
    return ratios


def interleaved_blocks(paths: list[Path], blocks: int = READ_BLOCKS) -> list[list[float]]:
    """Microseconds per read in each block, the paths taken in turn (order
    reversed every other round, so drifting load weighs on all alike)."""
    for p in paths:
        read_block(p, 50)
    out: list[list[float]] = [[] for _ in paths]
    for r in range(blocks):
        order = list(range(len(paths)))
        if r % 2:
            order.reverse()
        for i in order:
            out[i].append(read_block(paths[i]) / READ_BLOCK / 1000)
    return out


def write_value(path: Path, value: bytes) -> float:
    """open(O_WRONLY|O_TRUNC)/write/close as `echo` does; seconds."""
    t0 = time.perf_counter()
    fd = os.open(str(path), os.O_WRONLY | os.O_TRUNC)
    try:
        os.write(fd, value)
    finally:
        os.close(fd)
    return time.perf_counter() - t0


def core_start_stop(netns: str, conf: Path, state: Path, n: int) -> tuple[list[float], list[float]]:
    """Driver.start / Driver.stop of testA, called directly (ms), with the
    same networks as the daemon and its link monitor running, as in the
    daemon (both make a start slower: the cost the mount adds is what is
    measured, not the core's own growth with the number of networks)."""
    import trio

    from netfs.core import Driver
    from netfs.netlink import Netlink

    starts: list[float] = []
    stops: list[float] = []

    async def go() -> None:
        nl = Netlink(netns)
        await nl.open()
        try:
            driver = Driver(conf, state, nl)
            await driver.startup()
            async with trio.open_nursery() as nursery:
                await nursery.start(driver.run_monitor)
                for _ in range(n):
                    t0 = time.perf_counter()
                    await driver.start("testA")
                    t1 = time.perf_counter()
                    await driver.stop("testA")
                    t2 = time.perf_counter()
                    starts.append((t1 - t0) * 1000)
                    stops.append((t2 - t1) * 1000)
                nursery.cancel_scope.cancel()
        finally:
            await nl.close()

    trio.run(go)
    return starts, stops


def _ls_l(path: Path) -> tuple[float, int]:
    t0 = time.perf_counter()
    out = subprocess.run(["ls", "-l", str(path)], capture_output=True, text=True, check=True)
    dt = (time.perf_counter() - t0) * 1000
    return dt, len(out.stdout.splitlines()) - 1  # minus "total N"


def _network_xml(i: int) -> str:
    mac = f"52:54:00:{i >> 16 & 0xFF:02x}:{i >> 8 & 0xFF:02x}:{i & 0xFF:02x}"
    return (
        "<network>\n"
        f"  <name>n{i:04d}</name>\n"
        f"  <uuid>{uuid.UUID(int=random.getrandbits(128), version=4)}</uuid>\n"
        f"  <bridge name='nb{i:04d}' stp='on' delay='0'/>\n"
        f"  <mac address='{mac}'/>\n"
        "</network>\n"
    )


# -- set-up and tear-down --------------------------------------------------------


class Rig:
    """The namespaces, directories, mounts and processes of one run."""

    def __init__(self) -> None:
        tag = f"{os.getpid() % 100000}"
        self.ns = f"nfsbenchfs{tag}a"
        self.ns_core = f"nfsbenchfs{tag}b"
        self.tmp = Path(tempfile.mkdtemp(prefix="netfs-bench-fs-"))
        self.shm = Path(tempfile.mkdtemp(prefix="netfs-bench-fs-", dir="/dev/shm"))
        self.conf = self.tmp / "config"
        self.state = self.shm / "state"
        self.conf_core = self.tmp / "config-core"
        self.state_core = self.shm / "state-core"
        self.mnt = self.tmp / "mnt"
        self.floor = self.tmp / "floor"
        self.floor_cached = self.tmp / "floor-cached"
        self.tmpfs = self.tmp / "tmpfs"
        self.log = self.tmp / "daemon.log"
        self.ops = self.tmp / "ops.json"
        self.profile = False
        self.procs: list[subprocess.Popen[Any]] = []
        self.namespaces: list[str] = []
        self.cleanups: list[Callable[[], None]] = []

    def netns(self, name: str) -> None:
        _run("ip", "netns", "add", name)
        self.namespaces.append(name)
        _run("ip", "-n", name, "link", "set", "lo", "up")

    def spawn(self, argv: list[str], mnt: Path, ready: Callable[[], bool]) -> None:
        log = open(self.tmp / f"{mnt.name}.log" if "bench.floorfs" in argv else self.log, "ab")
        self.cleanups.append(log.close)
        env = dict(os.environ, NETFS_BENCH_OPS=str(self.ops))
        p = subprocess.Popen(
            argv, cwd=TOP, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env
        )
        self.procs.append(p)
        deadline = time.monotonic() + 120
        while not (_is_mounted(mnt) and ready()):
            if p.poll() is not None:
                raise RuntimeError(f"{argv[2]} exited with {p.returncode}; see {log.name}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{mnt} not ready after 120 s")
            time.sleep(0.05)

    def setup(self, n_networks: int) -> None:
        for d in (self.conf, self.state, self.conf_core, self.state_core, self.mnt):
            d.mkdir()
        for d in (self.floor, self.floor_cached, self.tmpfs):
            d.mkdir()
        self.netns(self.ns)
        self.netns(self.ns_core)
        shutil.copy(EXAMPLES / "testA.xml", self.conf / "testA.xml")
        shutil.copy(EXAMPLES / "testA.xml", self.conf_core / "testA.xml")
        for i in range(1, n_networks):
            text = _network_xml(i)
            (self.conf / f"n{i:04d}.xml").write_text(text)
            (self.conf_core / f"n{i:04d}.xml").write_text(text)
        # tmpfs: the value file, and 1000 directories for `ls -l`
        _run("mount", "-t", "tmpfs", "-o", "size=8m,mode=0755", "netfs-bench", str(self.tmpfs))
        (self.tmpfs / "value").write_text("0\n")
        (self.tmpfs / "dirs").mkdir()
        for i in range(n_networks):
            (self.tmpfs / "dirs" / f"n{i:04d}").mkdir()
        entry = ["bench.fs", "--profiled-daemon"] if self.profile else ["netfs.cli"]
        netfs = [sys.executable, "-m", *entry, "mount", str(self.mnt)]
        netfs += ["--netns", self.ns, "--config-dir", str(self.conf)]
        netfs += ["--state-dir", str(self.state), "-f"]
        self.spawn(netfs, self.mnt, lambda: (self.mnt / "testA" / "active").exists())
        floor = [sys.executable, "-m", "bench.floorfs", str(self.floor)]
        self.spawn(floor, self.floor, lambda: (self.floor / "value").exists())
        cached = [sys.executable, "-m", "bench.floorfs", str(self.floor_cached), "--cached"]
        self.spawn(cached, self.floor_cached, lambda: (self.floor_cached / "value").exists())

    def stop_daemon(self) -> None:
        """SIGTERM to the netfs daemon (the first process), waiting for it."""
        p = self.procs[0]
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            p.wait(timeout=30)

    def teardown(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        for fn in self.cleanups:
            fn()
        for m in (self.mnt, self.floor, self.floor_cached, self.tmpfs):
            if _is_mounted(m):
                _run("umount", "-l", str(m), check=False)
        for ns in self.namespaces:
            _run("ip", "netns", "del", ns, check=False)
        shutil.rmtree(self.tmp, ignore_errors=True)
        shutil.rmtree(self.shm, ignore_errors=True)


# -- the report ----------------------------------------------------------------------


def _row(label: str, values: list[float], unit: str = "µs") -> str:
    return (
        f"  {label:<46} median {_median(values):9.1f} {unit}   p90 {_pct(values, 0.9):9.1f} {unit}"
    )


def bench_reads(rig: Rig) -> None:
    net = rig.mnt / "testA"
    if (net / "active").read_text() != "1\n":
        write_value(net / "active", b"1\n")  # status.xml exists while active
    # active, uuid and status.xml are read through the page cache; error
    # (recorded also above the core) with direct_io, as the floor
    files = [net / "active", net / "uuid", net / "status.xml", net / "error"]
    floor = rig.floor / "value"
    print(
        f"-- reading an attribute file: {READ_BLOCKS} blocks of {READ_BLOCK} open/read/close,"
        " alternating with the FUSE floor; median of the block ratios"
    )
    for f in files:
        ratios = block_ratios(f, floor)
        r = _median(ratios)
        print(
            f"  netfs testA/{f.name:<11} / floor  {r:5.2f}x"
            f"  (blocks {min(ratios):.2f}-{max(ratios):.2f}x)"
            f"  target <= 1.2x {_verdict(r <= 1.2)}"
        )
    print(
        f"-- one read (open/read/close), µs: median of {READ_BLOCKS} interleaved blocks"
        f" of {READ_BLOCK}"
    )
    paths = [*files, floor, rig.floor_cached / "value", rig.tmpfs / "value"]
    labels = [
        f"netfs testA/{f.name} ({'direct_io' if f.name == 'error' else 'page cache'})"
        for f in files
    ]
    labels += ["floor: minimal pyfuse3 FS, one constant file"]
    labels += ["floor with the page cache (keep_cache)", "tmpfs"]
    per_read = interleaved_blocks(paths)
    for label, values in zip(labels, per_read, strict=True):
        print(_row(label, values))
    active = _median(per_read[0])
    print(
        f"  netfs testA/active {active:.1f} µs: {active / _median(per_read[-1]):.0f}x tmpfs,"
        f" {active / _median(per_read[-2]):.2f}x the page-cached floor;"
        f" target <= 100 µs {_verdict(active <= 100)}"
    )
    write_value(net / "active", b"0\n")


def bench_start_stop(rig: Rig, n: int) -> None:
    print(f"-- `echo 1 > active` until the bridge is up, and `echo 0` ({n} cycles each)")
    active = rig.mnt / "testA" / "active"
    starts: list[float] = []
    stops: list[float] = []
    for i in range(n):
        starts.append(write_value(active, b"1\n") * 1000)
        if i in (0, n - 1):
            up = _run("ip", "-n", rig.ns, "-br", "link", "show", "testA0", check=False)
            if "UP" not in up.stdout:
                print(f"  !! testA0 is not up after the write: {up.stdout.strip() or up.stderr}")
        stops.append(write_value(active, b"0\n") * 1000)
    core_starts, core_stops = core_start_stop(rig.ns_core, rig.conf_core, rig.state_core, n)
    print(_row("netfs: write 1 to testA/active", starts, "ms"))
    print(_row("floor: Driver.start() called directly", core_starts, "ms"))
    print(_row("netfs: write 0 to testA/active", stops, "ms"))
    print(_row("floor: Driver.stop() called directly", core_stops, "ms"))
    rs = _median(starts) / _median(core_starts)
    rt = _median(stops) / _median(core_stops)
    print(f"  start: netfs / core {rs:.2f}x (target <= 1.2x) {_verdict(rs <= 1.2)}")
    print(f"  stop:  netfs / core {rt:.2f}x (target <= 1.2x) {_verdict(rt <= 1.2)}")


def bench_ls(rig: Rig, n_cold: int, n_warm: int) -> None:
    entries = len(os.listdir(rig.mnt))
    print(f"-- `ls -l` of the mount ({entries} entries; wall time of the ls process)")
    cold: list[float] = []
    for _ in range(n_cold):
        time.sleep(1.1)  # let the 1 s entry and attribute timeouts run out
        dt, count = _ls_l(rig.mnt)
        cold.append(dt)
    warm = [_ls_l(rig.mnt)[0] for _ in range(n_warm)]
    floor_dir = rig.tmpfs / "dirs"
    tmpfs = [_ls_l(floor_dir)[0] for _ in range(n_warm)]
    print(_row(f"netfs, cold caches ({n_cold} runs)", cold, "ms"))
    print(_row(f"netfs, warm ({n_warm} runs)", warm, "ms"))
    print(_row(f"tmpfs, {len(os.listdir(floor_dir))} directories", tmpfs, "ms"))
    print(f"  netfs cold: target <= 100 ms {_verdict(_median(cold) <= 100)}")


def bench_notify(rig: Rig, n: int) -> None:
    print(f"-- state change to inotify event ({n} starts and stops)")
    ino = Inotify()
    events = LineReader(rig.mnt / "events")
    time.sleep(0.2)
    try:
        net_dir = rig.mnt / "testA"
        wd_dir = ino.watch(net_dir, IN_CREATE | IN_DELETE)
        wd_active = ino.watch(net_dir / "active", IN_MODIFY)
        created: list[float] = []
        deleted: list[float] = []
        ev_started: list[float] = []
        ev_stopped: list[float] = []
        missing = 0
        for _ in range(n):
            for value, mask, into, word, into_ev in (
                (b"1\n", IN_CREATE, created, " testA started", ev_started),
                (b"0\n", IN_DELETE, deleted, " testA stopped", ev_stopped),
            ):
                mark, mark_ev = len(ino.events), len(events.lines)
                write_value(net_dir / "active", value)
                t_ret = time.perf_counter()
                t = ino.wait_for(mark, wd_dir, mask, "status.xml")
                te = events.wait_for(mark_ev, word)
                if t is None or te is None:
                    missing += 1
                    continue
                into.append((t - t_ret) * 1000)
                into_ev.append((te - t_ret) * 1000)
            time.sleep(0.01)
        # A bridge deleted from outside: from running `ip link del` to IN_MODIFY on active
        # (the kernel announces the deletion before `ip` returns).
        outside: list[float] = []
        for _ in range(max(2, n // 5)):
            write_value(net_dir / "active", b"1\n")
            time.sleep(0.05)
            mark = len(ino.events)
            t_ret = time.perf_counter()
            _run("ip", "-n", rig.ns, "link", "del", "testA0")
            t = ino.wait_for(mark, wd_active, IN_MODIFY, None)
            if t is None:
                missing += 1
            else:
                outside.append((t - t_ret) * 1000)
            time.sleep(0.05)
        write_value(net_dir / "active", b"0\n")
        print("  (negative: the event arrived before the write returned)")
        print(_row("write 1 returned -> IN_CREATE status.xml", created, "ms"))
        print(_row("write 0 returned -> IN_DELETE status.xml", deleted, "ms"))
        print(_row("write 1 returned -> `started` line in events", ev_started, "ms"))
        print(_row("write 0 returned -> `stopped` line in events", ev_stopped, "ms"))
        print(_row("`ip link del` run -> IN_MODIFY on active", outside, "ms"))
        if missing:
            print(f"  !! {missing} expected events did not arrive within 3 s")
        worst = max(_median(created), _median(deleted))
        print(f"  write -> inotify: target <= 5 ms median {_verdict(worst <= 5 and not missing)}")
    finally:
        events.close()
        ino.close()


# -- where a read's time goes in the daemon (--profile) ----------------------------

PROFILED_OPS = ("lookup", "getattr", "open", "read", "flush", "release")


def profiled_daemon(argv: list[str]) -> int:
    """`python -m bench.fs --profiled-daemon MOUNT-ARGS...`: the daemon with a
    timer around each FUSE handler of NetfsOperations; at exit the count and
    total nanoseconds per operation go to $NETFS_BENCH_OPS (JSON)."""
    import atexit
    import json

    import netfs.cli
    from netfs.fs.ops import NetfsOperations

    totals: dict[str, list[int]] = {}

    def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter_ns()
            try:
                return await fn(*args, **kwargs)
            finally:
                entry = totals.setdefault(name, [0, 0])
                entry[0] += 1
                entry[1] += time.perf_counter_ns() - t0

        return wrapper

    for op in PROFILED_OPS:
        setattr(NetfsOperations, op, timed(op, getattr(NetfsOperations, op)))

    def dump() -> None:
        with open(os.environ["NETFS_BENCH_OPS"], "w") as f:
            json.dump(totals, f)

    atexit.register(dump)
    return netfs.cli.main(argv)


def print_profile(rig: Rig) -> None:
    import json

    try:
        totals = json.loads(rig.ops.read_text())
    except (OSError, ValueError):
        print("  !! no profile written by the daemon")
        return
    # one read as measured above is one open/read/close: count the opens
    # (with the page cache, most READs never reach the daemon)
    reads = totals.get("open", [0, 0])[0]
    print(f"-- time inside the daemon's handlers ({reads} open/read/close; wall time above)")
    per_read = 0.0
    for op in PROFILED_OPS:
        n, ns = totals.get(op, [0, 0])
        if n:
            share = ns / reads / 1000 if reads else 0.0
            per_read += share
            print(f"  {op:<8} {n:8d} calls  {ns / n / 1000:7.1f} µs each  {share:6.1f} µs per read")
    print(f"  handlers per read: {per_read:.1f} µs; the rest is the kernel's round trips")
    print("  and pyfuse3/trio dispatch (open, flush and release per read; READ only when")
    print("  the page cache has no copy: after a change, or for files read with direct_io)")


def main(flags: list[str]) -> int:
    quick = "--quick" in flags
    reads_only = "--reads" in flags or "--profile" in flags
    if os.geteuid() != 0:
        print("bench fs: needs root (network namespaces and FUSE)", file=sys.stderr)
        return 1
    n_cycles = 10 if quick else 40
    n_networks = 1000
    print(
        f"bench fs: {'quick' if quick else 'full'} run; {os.cpu_count()} CPUs, "
        "figures from a shared machine are noisy"
    )
    rig = Rig()
    rig.profile = "--profile" in flags
    old = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        t0 = time.perf_counter()
        rig.setup(n_networks)
        print(f"-- netfs mounted with {n_networks} networks in {time.perf_counter() - t0:.2f} s")
        bench_reads(rig)
        if reads_only:
            if rig.profile:
                rig.stop_daemon()
                print_profile(rig)
            return 0
        bench_start_stop(rig, n_cycles)
        bench_ls(rig, 3 if quick else 5, 5 if quick else 20)
        bench_notify(rig, n_cycles)
        return 0
    except (RuntimeError, OSError, subprocess.CalledProcessError) as e:
        print(f"bench fs: {e}", file=sys.stderr)
        try:
            print(rig.log.read_text()[-3000:], file=sys.stderr)
        except OSError:
            pass
        return 1
    finally:
        rig.teardown()
        signal.signal(signal.SIGTERM, old)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--profiled-daemon"]:
        sys.exit(profiled_daemon(sys.argv[2:]))
    sys.exit(main(sys.argv[1:]))
