"""netfs.nsexec: programs run inside a namespace the test makes."""

from __future__ import annotations

import errno
import os

import pytest
import trio

from netfs import nsexec
from netfs.errors import NetfsError
from tests.conftest import ip


def test_runs_inside_the_namespace(netns: str) -> None:
    ip("link", "add", "probe0", "type", "bridge", netns=netns)
    out = nsexec.run_sync(netns, ["ip", "-o", "link", "show", "probe0"]).stdout
    assert b"probe0" in out


def test_failure_carries_the_programs_words(netns: str) -> None:
    with pytest.raises(NetfsError) as e:
        nsexec.run_sync(netns, ["ip", "link", "show", "nosuch0"])
    assert e.value.errno == errno.EIO
    assert "nosuch0" in e.value.message


def test_missing_program_is_named() -> None:
    with pytest.raises(NetfsError) as e:
        nsexec.run_sync(None, ["netfs-no-such-program"])
    assert e.value.errno == errno.ENOENT
    assert "netfs-no-such-program" in e.value.message


def test_missing_namespace(netns: str) -> None:
    with pytest.raises(NetfsError) as e:
        nsexec.run_sync(netns + "gone", ["ip", "link"])
    assert e.value.errno == errno.ENOENT


def test_async_run(netns: str) -> None:
    done = trio.run(lambda: nsexec.run(netns, ["ip", "-o", "link"], check=False))
    assert done.returncode == 0 and b"lo" in done.stdout


def test_program_inherits_no_descriptor(netns: str) -> None:
    keep = os.open("/dev/zero", os.O_RDONLY)  # inheritable on purpose
    os.set_inheritable(keep, True)
    try:
        out = nsexec.run_sync(netns, ["ls", "-l", "/proc/self/fd/"]).stdout.decode()
        stdin = nsexec.run_sync(netns, ["readlink", "/proc/self/fd/0"]).stdout.strip()
    finally:
        os.close(keep)
    assert "/dev/zero" not in out and stdin == b"/dev/null"
    # and it runs in the namespace, not in the caller's
    inode = nsexec.run_sync(netns, ["stat", "-L", "-c", "%i", "/proc/self/ns/net"]).stdout
    assert (
        int(inode) == os.stat(f"/run/netns/{netns}").st_ino != os.stat("/proc/self/ns/net").st_ino
    )
