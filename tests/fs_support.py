"""Helpers for the end-to-end filesystem tests: a real daemon on a real mount.

`mounted` runs `python -m netfs.cli mount MNT --netns NS ... -f` as a
subprocess in a namespace made by conftest's `netns` fixture, waits for the
mount, and always stops the daemon and unmounts, also when the test fails.
Test files import the fixtures from here (`from tests.fs_support import ...`).
"""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
LIVENESS = 30.0  # seconds: a bound on waiting, never an assertion on speed

OVS_TESTA = """<network>
  <name>testA</name>
  <forward mode='bridge'/>
  <bridge name='ovsbr0'/>
  <virtualport type='openvswitch'/>
  <portgroup name='engineering' default='yes'/>
  <portgroup name='sales'>
    <virtualport>
      <parameters profileid='sales'/>
    </virtualport>
  </portgroup>
</network>
"""

QBG_TESTA = """<network>
  <name>testA</name>
  <forward mode='private'>
    <interface dev='eth1'/>
  </forward>
  <virtualport type='802.1Qbg'>
    <parameters typeid='1193047' typeidversion='2'/>
  </virtualport>
  <portgroup name='sales'>
    <virtualport>
      <parameters managerid='55'/>
    </virtualport>
  </portgroup>
</network>
"""

VIRTUAL = """<network>
  <name>{name}</name>
  <bridge name='{bridge}'/>
  <ip address='{address}' netmask='255.255.255.0'/>
</network>
"""


def virtual_xml(name: str, bridge: str, address: str = "192.168.150.1") -> str:
    return VIRTUAL.format(name=name, bridge=bridge, address=address)


def _target(path: Path) -> str:
    # never resolve the mount point itself: a hung mount would hang the lstat
    parent = os.path.realpath(os.path.dirname(os.path.abspath(path)))
    return os.path.join(parent, os.path.basename(os.path.abspath(path)))


def is_mounted(path: Path) -> bool:
    target = _target(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == target for line in f)


def connection_of(path: Path) -> int | None:
    """The FUSE connection number of the topmost mount at `path`."""
    from netfs.fs.mounts import fuse_mounts_at

    found = fuse_mounts_at(str(path))
    return found[-1].connection if found else None


def abort_connection(conn: int | None) -> None:
    """Last resort: abort a FUSE connection (frees callers stuck on it)."""
    from netfs.fs.mounts import abort_connection as abort

    if conn is not None:
        abort(conn)


def reap(proc: subprocess.Popen[Any], conn: int | None) -> None:
    """Make sure `proc` is gone: SIGKILL, and when it cannot exit (a thread
    waits for an answer on its own mount), abort its connection."""
    if proc.poll() is None:
        proc.kill()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        abort_connection(conn)
        proc.wait(timeout=LIVENESS)


def force_unmount(path: Path) -> None:
    """Last resort: abort what is mounted there (nothing may be left hanging),
    then lazily unmount."""
    from netfs.fs.mounts import fuse_mounts_at

    for m in fuse_mounts_at(str(path)):
        abort_connection(m.connection)
    if is_mounted(path):
        subprocess.run(["fusermount3", "-u", "-z", str(path)], capture_output=True, check=False)
    if is_mounted(path):
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def wait_for(predicate: Callable[[], object], what: str, timeout: float = LIVENESS) -> None:
    """Wait (bounded) for something another process does asynchronously."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def bash(
    script: str, *, user: str | None = None, check: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run a bash script (as `user` via setpriv when given)."""
    cmd = ["bash", "-c", script]
    if user == "nobody":
        cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] + cmd
    return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=LIVENESS)


@dataclass
class Daemon:
    mnt: Path
    config_dir: Path
    state_dir: Path
    netns: str
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    extra: list[str] = field(default_factory=list)
    conn: int | None = None  # its FUSE connection, once mounted
    killed: list[tuple[subprocess.Popen[bytes], int | None]] = field(default_factory=list)

    def argv(self) -> list[str]:
        return [
            PYTHON,
            "-m",
            "netfs.cli",
            "mount",
            str(self.mnt),
            "--netns",
            self.netns,
            "--config-dir",
            str(self.config_dir),
            "--state-dir",
            str(self.state_dir),
            "-f",
            *self.extra,
        ]

    def start(self) -> None:
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen(
                self.argv(), cwd=ROOT, stdout=logf, stderr=logf, stdin=subprocess.DEVNULL
            )
        self.wait_ready()

    def wait_ready(self) -> None:
        """Mounted and answering (the main loop runs once `events` is listed)."""

        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.logtext()}")
            if not is_mounted(self.mnt):
                return False
            try:
                return "events" in os.listdir(self.mnt)
            except OSError:
                return False

        wait_for(ready, "the mount")
        self.conn = connection_of(self.mnt)

    def logtext(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        """Signal the daemon and wait for it; returns its exit status."""
        if self.proc is None:
            return None
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout=LIVENESS)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=LIVENESS)
        return proc.returncode

    def kill9(self) -> subprocess.Popen[bytes] | None:
        """SIGKILL, and nothing else: when one of the daemon's own requests
        through its mount was in flight, its thread waits for an answer nobody
        will give, so the process cannot exit and the mount hangs its callers
        until the next daemon clears it (the scenario under test). Returns the
        process; cleanup() reaps it if nothing else did."""
        proc, self.proc = self.proc, None
        if proc is not None:
            proc.kill()
            self.killed.append((proc, self.conn))
        return proc

    def cleanup(self) -> None:
        self.stop()
        for proc, conn in self.killed:
            reap(proc, conn)
        force_unmount(self.mnt)


@contextlib.contextmanager
def daemons(
    mnt: Path, config_dir: Path, state_dir: Path, netns: str, log: Path
) -> Iterator[Callable[..., Daemon]]:
    """Makes daemons (not started) sharing one mount point, namespace and set
    of dirs; afterwards, also when the test failed, all of them are stopped
    and the mount is cleared."""
    made: list[Daemon] = []

    def make(extra: list[str] | None = None) -> Daemon:
        d = Daemon(mnt, config_dir, state_dir, netns, log, extra=list(extra or []))
        made.append(d)
        return d

    try:
        yield make
    finally:
        for d in made:
            d.cleanup()
        force_unmount(mnt)


@pytest.fixture
def daemon_factory(netns: str, tmp_path: Path) -> Iterator[object]:
    """Makes daemons (not started) sharing one namespace and one set of dirs."""
    # the mount point must be reachable by other users (tmp_path is 0700)
    base = Path(tempfile.mkdtemp(prefix="netfs-test-"))
    try:
        base.chmod(0o755)
        mnt = base / "mnt"
        mnt.mkdir()
        (tmp_path / "config").mkdir()
        (tmp_path / "state").mkdir()
        with daemons(
            mnt, tmp_path / "config", tmp_path / "state", netns, tmp_path / "daemon.log"
        ) as make:
            yield make
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def mounted(daemon_factory: object) -> Iterator[Daemon]:
    """A running daemon (foreground subprocess) on a fresh mount point."""
    d: Daemon = daemon_factory()  # type: ignore[operator]
    d.start()
    try:
        yield d
    finally:
        d.cleanup()


class _LineReader:
    """Lines of a subprocess's stdout, read by a thread (select() on a
    buffered pipe would miss lines already buffered)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def _next(self, deadline: float) -> str | None:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                line = self._queue.get(timeout=min(left, 0.5))
            except queue.Empty:
                continue
            if line is not None:
                self.lines.append(line)
            return line

    def find(self, match: Callable[[str], bool], what: str, timeout: float) -> str:
        for line in self.lines:
            if match(line):
                return line
        deadline = time.monotonic() + timeout
        while True:
            line = self._next(deadline)
            if line is None:
                raise AssertionError(f"no {what}; saw: {self.lines}")
            if match(line):
                return line

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=LIVENESS)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Watch(_LineReader):
    """`inotifywait -m` on some paths, as a subprocess."""

    def __init__(self, *paths: Path, events: str | None = None, recursive: bool = False) -> None:
        cmd = ["inotifywait", "-m", "--format", "%w%f %e"] + (["-r"] if recursive else [])
        if events:
            cmd += ["-e", events]
        proc = subprocess.Popen(
            cmd + [str(p) for p in paths],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        # inotifywait prints "Watches established." on stderr when ready
        assert proc.stderr is not None
        deadline = time.monotonic() + LIVENESS
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line or "Watches established" in line:
                break
        super().__init__(proc)

    def watches(self) -> int:
        """How many inotify watches inotifywait holds now (fdinfo)."""
        count = 0
        fds = f"/proc/{self.proc.pid}/fdinfo"
        for fd in os.listdir(fds):
            try:
                with open(f"{fds}/{fd}") as f:
                    count += sum(1 for line in f if line.startswith("inotify wd:"))
            except OSError:
                continue
        return count

    def wait(self, path: Path | str, event: str, timeout: float = LIVENESS) -> str:
        """Wait for a line about `path` that carries `event`."""
        want = str(path).rstrip("/")

        def match(line: str) -> bool:
            name, _, events = line.rpartition(" ")
            return name.rstrip("/") == want and event in events.split(",")

        return self.find(match, f"{event} on {want}", timeout)


def _has_open(pid: int, path: Path) -> bool:
    """Does process `pid` hold `path` open?"""
    fds = f"/proc/{pid}/fd"
    try:
        names = os.listdir(fds)
    except OSError:
        return False
    for fd in names:
        try:
            if os.readlink(f"{fds}/{fd}") == str(path):
                return True
        except OSError:
            continue
    return False


class EventReader(_LineReader):
    """`cat MNT/events` as a subprocess."""

    def __init__(self, mnt: Path) -> None:
        proc = subprocess.Popen(
            ["cat", str(mnt / "events")], stdout=subprocess.PIPE, text=True, bufsize=1
        )
        super().__init__(proc)
        # subscribed once `cat` holds the file open (events from before are not its)
        wait_for(lambda: _has_open(proc.pid, mnt / "events"), "`cat` to open events")

    def wait(self, network: str, word: str, port: str | None = None) -> str:
        want = [network, word] + ([port] if port else [])
        return self.find(lambda line: line.split()[1:] == want, f"event {want}", LIVENESS)


def define(mnt: Path, name: str, xml: str) -> None:
    r = bash(f"mkdir {mnt}/{name} && cat > {mnt}/{name}/definition.xml <<'EOF'\n{xml}EOF")
    assert r.returncode == 0, r.stderr
