"""netfs.nsexec: programs run inside a namespace the test makes."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

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


WATCHING_DAEMON = """
import sys, trio
from netfs import nsexec
async def main():
    w = nsexec.Watcher(sys.argv[1], ["sh", "-c", "echo ready; exec sleep 60"])
    print(w.pid, (await w.stdout.receive_some()).decode().strip(), flush=True)
    await trio.sleep(60)
trio.run(main)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_watcher_ends_with_its_daemon_also_killed(netns: str) -> None:
    """A program whose output the daemon follows (nft monitor) dies with the
    daemon when it is killed (SIGKILL), and not before: it runs in the
    namespace, and it outlives the daemon's idle worker threads."""
    daemon = subprocess.Popen(
        [sys.executable, "-c", WATCHING_DAEMON, netns],
        stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parent.parent,
        text=True,
    )
    try:
        assert daemon.stdout is not None
        pid_text, word = daemon.stdout.readline().split()
        pid = int(pid_text)
        assert word == "ready"
        inode = os.stat(f"/proc/{pid}/ns/net").st_ino
        assert inode == os.stat(f"/run/netns/{netns}").st_ino
        time.sleep(0.3)
        assert _alive(pid)
        daemon.kill()
        daemon.wait()
        deadline = time.monotonic() + 5
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not _alive(pid)
    finally:
        daemon.kill()
        daemon.wait()
        with contextlib.suppress(NameError, ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
