"""Recovery destroys nothing before it knows it can work (issue 9, item 9).

The core against the kernel, in namespaces made by the `netns` fixture: a
read-only state directory changes nothing (not even an orphan bridge) and
fails the start-up with a message naming the directory; a status file that
cannot be read leaves its network's running bridge alone and marks the
network with the reason.
"""

from __future__ import annotations

import errno
import json
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from conftest import ip

from netfs.core import Driver
from netfs.errors import NetfsError
from netfs.netlink import Netlink

pytestmark = pytest.mark.kernel

UUID_A = "0c4f4b4e-0a0a-4b4b-8c8c-000000000a01"
UUID_ORPHAN = "0c4f4b4e-0a0a-4b4b-8c8c-0000000000ff"


def bridges(ns: str) -> dict[str, str | None]:
    out = json.loads(ip("-d", "-j", "link", "show", "type", "bridge", netns=ns).stdout or "[]")
    return {link["ifname"]: link.get("ifalias") for link in out}


@pytest.fixture
async def nl(netns: str) -> AsyncIterator[Netlink]:
    async with Netlink(netns) as n:
        yield n


class ReadOnlyLater:
    """A directory that becomes read-only (a read-only bind mount of itself)
    when the test says so."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.mounted = False

    def make_read_only(self) -> None:
        subprocess.run(["mount", "--bind", str(self.path), str(self.path)], check=True)
        self.mounted = True
        subprocess.run(["mount", "-o", "remount,ro,bind", str(self.path)], check=True)


@pytest.fixture
def read_only(tmp_path: Path) -> Iterator[ReadOnlyLater]:
    """Unmounted afterwards whatever happens."""
    ro = ReadOnlyLater(tmp_path / "run")
    ro.path.mkdir()
    try:
        yield ro
    finally:
        if ro.mounted:
            subprocess.run(["umount", "-l", str(ro.path)], check=False)


def xml(name: str, uuid: str, bridge: str, ip4: str) -> str:
    return (
        f"<network><name>{name}</name><uuid>{uuid}</uuid><bridge name='{bridge}'/>"
        f"<ip address='{ip4}' prefix='24'/></network>"
    )


async def test_read_only_state_dir_changes_nothing(
    tmp_path: Path, read_only: ReadOnlyLater, nl: Netlink, netns: str
) -> None:
    etc, run = tmp_path / "etc", read_only.path
    d = Driver(etc, run, nl)
    await d.startup()
    await d.define(xml("a", UUID_A, "nfsra0", "10.71.0.1"))
    await d.start("a")
    (run / "autostarted").unlink()  # a new boot: autostart would run (and be recorded)
    # a bridge tagged by netfs for a network nobody has: an "orphan"
    ip("link", "add", "nfsor0", "type", "bridge", netns=netns)
    ip("link", "set", "nfsor0", "alias", f"netfs:{UUID_ORPHAN}", netns=netns)
    status = d.store.status_path("a")
    before = status.read_bytes()
    read_only.make_read_only()

    d2 = Driver(etc, run, nl)
    with pytest.raises(NetfsError) as ei:
        await d2.startup()
    assert ei.value.errno == errno.EROFS
    assert f"state directory {run} is not writable" in ei.value.message
    # not deleted: the orphan, and a's bridge
    assert bridges(netns) == {"nfsor0": f"netfs:{UUID_ORPHAN}", "nfsra0": f"netfs:{UUID_A}"}
    assert status.read_bytes() == before


async def test_unreadable_status_leaves_the_bridge_alone(
    tmp_path: Path, nl: Netlink, netns: str
) -> None:
    etc, run = tmp_path / "etc", tmp_path / "run"
    d = Driver(etc, run, nl)
    await d.startup()
    await d.define(xml("a", UUID_A, "nfsra0", "10.71.0.1"))
    await d.set_autostart("a", True)
    await d.start("a")
    status = d.store.status_path("a")
    data = status.read_bytes()
    status.write_bytes(data[: len(data) // 2])  # truncated (a torn copy, a full disk)
    (run / "autostarted").unlink()  # a new boot: autostart would run

    d2 = Driver(etc, run, nl)
    await d2.startup()
    st = d2.get("a")
    assert not st.active
    assert f"cannot read its status file {status}" in st.error
    # its bridge is left as it is: neither deleted as an orphan nor started again
    assert bridges(netns) == {"nfsra0": f"netfs:{UUID_A}"}
    assert status.read_bytes() == data[: len(data) // 2]
