"""Shared fixtures: network namespaces that the tests make and always remove.

Nothing here touches the host's own network namespace: every link, address
and route a test makes lives in a namespace created by `netns` below.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

CONFORMANCE = Path(
    os.environ.get("NETFS_CONFORMANCE")
    or Path(__file__).resolve().parent.parent.parent / "shared" / "conformance" / "libvirt"
)
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

_counter = itertools.count()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test marked ``kernel`` needs root: skipped for anyone else, so that
    pytest run as a plain user is the tier that needs no root."""
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root (marked kernel)")
    for item in items:
        if item.get_closest_marker("kernel") is not None:
            item.add_marker(skip)


def ip(
    *args: str, netns: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run `ip` (inside `netns` when given) and return the completed process."""
    cmd = ["ip"] + (["-n", netns] if netns else []) + list(args)
    return subprocess.run(cmd, capture_output=True, text=True, check=check)


def make_netns_name(tag: str = "t") -> str:
    return f"nfs{tag}{os.getpid() % 100000}x{next(_counter)}"


def pids_in(netns: str) -> set[int]:
    """The processes whose network namespace is `netns` (which must exist)."""
    want = os.stat(f"/run/netns/{netns}").st_ino
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if os.stat(f"/proc/{entry}/ns/net").st_ino == want:
                    found.add(int(entry))
    return found


def _gone(pid: int) -> bool:
    """Has process `pid` exited (no longer there, or a zombie)?"""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return True
    return stat[stat.rfind(b")") + 2 :][:1] in (b"Z", b"X")


def kill_inside(netns: str, limit: float = 5.0) -> list[int]:
    """SIGKILL every process whose network namespace is `netns` (a dnsmasq a
    test's driver started keeps running otherwise, and its lease helper
    would write into a directory the test removes), round after round until
    none is left (one forked meanwhile is caught by the next round; bounded
    by `limit` seconds); the pids killed."""
    killed: list[int] = []
    deadline = time.monotonic() + limit
    while True:
        try:
            alive = [p for p in sorted(pids_in(netns) - {os.getpid()}) if not _gone(p)]
        except OSError:
            return killed
        if not alive or time.monotonic() > deadline:
            return killed
        for pid in alive:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
                if pid not in killed:
                    killed.append(pid)
        time.sleep(0.01)


@pytest.fixture
def netns() -> Iterator[str]:
    """A fresh, empty network namespace (loopback up); removed afterwards,
    with every process still running inside it killed."""
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    name = make_netns_name()
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        ip("link", "set", "lo", "up", netns=name)
        yield name
    finally:
        kill_inside(name)
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture
def conformance_dir() -> Path:
    if not CONFORMANCE.is_dir():
        pytest.skip(f"conformance data not found at {CONFORMANCE}")
    return CONFORMANCE


def fd_targets(pid: int) -> list[str]:
    """What the descriptors of process `pid` point to (readlink of /proc/PID/fd/*)."""
    targets = []
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            targets.append(os.readlink(f"/proc/{pid}/fd/{name}"))
        except OSError:
            pass
    return targets
