"""End to end: the daemon's life: SIGTERM, kill -9 and remount, detaching,
mount.fuse's calling form, start-up failures."""
# ruff: noqa: F811  (fixtures imported from fs_support are pytest arguments)

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
from fs_support import (
    LIVENESS,
    PYTHON,
    ROOT,
    Daemon,
    Watch,
    bash,
    daemon_factory,  # noqa: F401  (fixture)
    define,
    is_mounted,
    virtual_xml,
    wait_for,
)

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(120)]


def bridges(netns: str) -> str:
    r = subprocess.run(
        ["ip", "-n", netns, "-o", "link", "show", "type", "bridge"],
        capture_output=True,
        text=True,
        check=True,
    )
    return r.stdout


def test_sigterm_unmounts_cleanly(daemon_factory: object) -> None:
    d: Daemon = daemon_factory()  # type: ignore[operator]
    d.start()
    define(d.mnt, "testA", virtual_xml("testA", "nfsbr0"))
    assert bash(f"echo 1 > {d.mnt}/testA/active").returncode == 0
    assert d.stop(signal.SIGTERM) == 0
    assert not is_mounted(d.mnt)
    # networks keep running without the daemon
    assert "nfsbr0" in bridges(d.netns)
    assert (d.state_dir / "testA.xml").exists()
    # SIGINT too
    d2: Daemon = daemon_factory()  # type: ignore[operator]
    d2.start()
    assert (d2.mnt / "testA" / "active").read_text() == "1\n"
    assert d2.stop(signal.SIGINT) == 0
    assert not is_mounted(d2.mnt)


def test_kill9_then_remount_recovers(daemon_factory: object) -> None:
    d: Daemon = daemon_factory()  # type: ignore[operator]
    d.start()
    define(d.mnt, "testA", virtual_xml("testA", "nfsbr0"))
    define(d.mnt, "testB", virtual_xml("testB", "nfsbr1", "192.168.160.1"))
    w = Watch(d.mnt / "testA", events="close_write")
    try:
        assert bash(f"echo 1 > {d.mnt}/testA/active").returncode == 0
        # the daemon's own create of status.xml is done: it is idle
        w.wait(d.mnt / "testA" / "status.xml", "CLOSE_WRITE")
    finally:
        w.close()
    d.kill9()
    # the mount point is left dead
    r = bash(f"ls {d.mnt}")
    assert r.returncode != 0 and "Transport endpoint is not connected" in r.stderr
    d2: Daemon = daemon_factory()  # type: ignore[operator]
    d2.start()
    assert sorted(os.listdir(d2.mnt)) == ["events", "testA", "testB"]
    assert (d2.mnt / "testA" / "active").read_text() == "1\n"
    assert (d2.mnt / "testB" / "active").read_text() == "0\n"
    assert "<name>testA</name>" in (d2.mnt / "testA" / "status.xml").read_text()
    assert bash(f"echo 0 > {d2.mnt}/testA/active").returncode == 0
    assert "nfsbr0" not in bridges(d2.netns)


def test_detaches_when_ready(daemon_factory: object) -> None:
    d: Daemon = daemon_factory()  # type: ignore[operator]
    argv = [a for a in d.argv() if a != "-f"]
    with open(d.log, "ab") as logf:
        r = subprocess.run(argv, cwd=ROOT, stdout=logf, stderr=logf, timeout=LIVENESS)
    assert r.returncode == 0, d.logtext()
    # usable as soon as the parent returned
    assert os.listdir(d.mnt) == ["events"]
    pid = _daemon_pid(d)
    try:
        os.kill(pid, signal.SIGHUP)  # reload does not unmount
        (d.config_dir / "late.xml").write_text(virtual_xml("late", "nfsbr7"))
        os.kill(pid, signal.SIGHUP)
        wait_for(lambda: "late" in os.listdir(d.mnt), "late after SIGHUP")
    finally:
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: not os.path.exists(f"/proc/{pid}"), "daemon exit")
    assert not is_mounted(d.mnt)


def _daemon_pid(d: Daemon) -> int:
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().split(b"\0")
        except OSError:
            continue
        if b"netfs.cli" in cmd and str(d.mnt).encode() in cmd:
            return int(entry)
    raise AssertionError("daemon not found")


def test_mount_helper_form(daemon_factory: object) -> None:
    d: Daemon = daemon_factory()  # type: ignore[operator]
    opts = (
        f"rw,nodev,nosuid,noexec,defaults,auto,_netdev,user,x-systemd.requires=foo,"
        f"netns={d.netns},config_dir={d.config_dir},state_dir={d.state_dir}"
    )
    with open(d.log, "ab") as logf:
        r = subprocess.run(
            [PYTHON, "-m", "netfs.cli", "netfs", str(d.mnt), "-o", opts],
            cwd=ROOT,
            stdout=logf,
            stderr=logf,
            timeout=LIVENESS,
        )
    assert r.returncode == 0, d.logtext()
    pid = _daemon_pid(d)
    try:
        with open("/proc/self/mounts") as f:
            line = next(x for x in f if x.split()[1] == str(d.mnt))
        assert "fuse.netfs" in line and "nosuid" in line and "nodev" in line
        define(d.mnt, "testA", virtual_xml("testA", "nfsbr0"))
        assert (d.config_dir / "testA.xml").exists()
    finally:
        # unmounting stops the daemon
        subprocess.run(["umount", str(d.mnt)], check=True)
        wait_for(lambda: not os.path.exists(f"/proc/{pid}"), "daemon exit after umount")


def test_startup_failure_is_reported(daemon_factory: object, tmp_path: object) -> None:
    d: Daemon = daemon_factory()  # type: ignore[operator]
    argv = [a for a in d.argv() if a != "-f"]
    argv[argv.index("--netns") + 1] = "nfs-no-such-namespace"
    r = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=LIVENESS)
    assert r.returncode == 1
    assert "netfs:" in r.stderr
    time.sleep(0.1)
    assert not is_mounted(d.mnt)
    r = subprocess.run(
        [PYTHON, "-m", "netfs.cli", "mount", "/nonexistent/dir", "-f"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=LIVENESS,
    )
    assert r.returncode == 1 and "not a directory" in r.stderr
