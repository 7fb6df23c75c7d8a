"""End to end: the daemon's life: SIGTERM, kill -9 and remount, detaching,
mount.fuse's calling form, start-up failures."""
# ruff: noqa: F811  (fixtures imported from fs_support are pytest arguments)

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import fd_targets
from fs_support import (
    LIVENESS,
    PYTHON,
    ROOT,
    Daemon,
    Watch,
    bash,
    connection_of,
    daemon_factory,  # noqa: F401  (fixture)
    define,
    is_mounted,
    reap,
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
    assert (d.state_dir / "testA" / "status.xml").exists()
    # SIGINT too
    d2: Daemon = daemon_factory()  # type: ignore[operator]
    d2.start()
    assert (d2.mnt / "testA" / "active").read_text() == "1\n"
    assert d2.stop(signal.SIGINT) == 0
    assert not is_mounted(d2.mnt)


def test_busy_mount_refuses_umount_but_not_sigterm(daemon_factory: object) -> None:
    """man SIGNALS: umount(8) of a mount with a reader of `events` is
    "target is busy"; SIGTERM unmounts all the same, the read fails."""
    d: Daemon = daemon_factory()  # type: ignore[operator]
    d.start()
    cat = subprocess.Popen(
        ["cat", str(d.mnt / "events")], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        wait_for(lambda: str(d.mnt / "events") in fd_targets(cat.pid), what="cat opened events")
        r = subprocess.run(["umount", str(d.mnt)], capture_output=True, text=True)
        assert r.returncode != 0 and "target is busy" in r.stderr and is_mounted(d.mnt)
        assert d.stop(signal.SIGTERM) == 0
        assert not is_mounted(d.mnt)
        _, err = cat.communicate(timeout=LIVENESS)
        assert cat.returncode == 1 and "Software caused connection abort" in err.decode()
    finally:
        reap(cat, None)


def test_kill9_then_remount_recovers(daemon_factory: object) -> None:
    d: Daemon = daemon_factory()  # type: ignore[operator]
    d.start()
    define(d.mnt, "testA", virtual_xml("testA", "nfsbr0"))
    define(d.mnt, "testB", virtual_xml("testB", "nfsbr1", "192.168.160.1"))
    w = Watch(d.mnt / "testA", events="create")
    try:
        assert bash(f"echo 1 > {d.mnt}/testA/active").returncode == 0
        # the daemon's own create of status.xml is done: it is idle
        w.wait(d.mnt / "testA" / "status.xml", "CREATE")
    finally:
        w.close()
    proc = d.kill9()
    assert proc is not None
    proc.wait(timeout=LIVENESS)  # it was idle: nothing keeps it
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


def _storm_configs(d: Daemon, n: int) -> None:
    for i in range(n):
        (d.config_dir / f"s{i:03d}.xml").write_text(
            f"<network><name>s{i:03d}</name><bridge name='nfss{i:03d}'/></network>\n"
        )


def test_kill9_during_notification_storm_then_remount(daemon_factory: object) -> None:
    """SIGKILL while the daemon's own operations through the mount are in
    flight (a reload that brings 300 networks, each announced by the daemon's
    own mkdir): a new daemon clears whatever is left, the old process is gone
    and the state is recovered."""
    d: Daemon = daemon_factory()  # type: ignore[operator]
    d.start()
    define(d.mnt, "testA", virtual_xml("testA", "nfsbr0"))
    assert bash(f"echo 1 > {d.mnt}/testA/active").returncode == 0
    _storm_configs(d, 300)
    w = Watch(d.mnt)
    try:
        assert d.proc is not None
        d.proc.send_signal(signal.SIGHUP)
        # the storm is under way: the daemon announces the new networks
        w.wait(d.mnt / "s005", "CREATE")
    finally:
        w.close()
    old = d.kill9()
    assert old is not None
    d2: Daemon = daemon_factory()  # type: ignore[operator]
    d2.start()  # no help from the test: the daemon clears the old mount itself
    old.wait(timeout=LIVENESS)  # the old daemon is gone
    names = os.listdir(d2.mnt)
    assert "testA" in names and all(f"s{i:03d}" in names for i in range(300))
    assert (d2.mnt / "testA" / "active").read_text() == "1\n"
    assert "nfsbr0" in bridges(d2.netns)
    # one mount only, served by the new daemon
    with open("/proc/self/mountinfo") as f:
        assert sum(line.split()[4] == str(d2.mnt) for line in f) == 1


def _hanging_fs(mnt: Path) -> subprocess.Popen[str]:
    """bench/floorfs.py --hang on `mnt`: it looks itself up through its
    mount and never answers (prints "hanging" once it does)."""
    return subprocess.Popen(
        [PYTHON, "-m", "bench.floorfs", str(mnt), "--hang"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )


def test_remount_over_a_hung_mount_frees_its_killed_daemon(daemon_factory: object) -> None:
    """The exact state a SIGKILL during one of the daemon's own requests
    leaves, made on purpose: bench/floorfs.py --hang looks itself up through
    its mount and never answers; killed, it cannot exit, and every stat of
    the mount point hangs. `netfs mount` there must abort that connection
    (mounting fusectl if need be), unmount it and mount."""
    d: Daemon = daemon_factory()  # type: ignore[operator]
    hung = _hanging_fs(d.mnt)
    conn = None
    try:
        assert hung.stdout is not None
        assert hung.stdout.readline().strip() == "hanging"
        conn = connection_of(d.mnt)
        assert conn is not None
        hung.kill()
        d.start()
        hung.wait(timeout=LIVENESS)  # freed by the abort
        assert "stale mount" in d.logtext()
        define(d.mnt, "testA", virtual_xml("testA", "nfsbr0"))
        assert (d.config_dir / "testA.xml").exists()
        with open("/proc/self/mountinfo") as f:
            assert sum(line.split()[4] == str(d.mnt) for line in f) == 1
    finally:
        reap(hung, conn)


def test_mount_over_a_live_mount_is_refused(daemon_factory: object) -> None:
    d: Daemon = daemon_factory()  # type: ignore[operator]
    d.start()
    other: Daemon = daemon_factory()  # type: ignore[operator]
    # its own state directory (one shared with d is refused before the mount
    # point is looked at: tests/test_hardening_daemon.py)
    other.state_dir = other.state_dir.with_name("state2")
    r = subprocess.run(other.argv(), cwd=ROOT, capture_output=True, text=True, timeout=LIVENESS)
    assert r.returncode == 1
    assert "already mounted" in r.stderr
    # the first one still serves
    define(d.mnt, "testA", virtual_xml("testA", "nfsbr0"))
    assert (d.mnt / "testA" / "active").read_text() == "0\n"


def test_detached_daemon_keeps_no_caller_pipe(daemon_factory: object, tmp_path: Path) -> None:
    """subprocess.run(capture_output=True) returns once the daemon is ready
    (the timeout only bounds a hang), its log goes to --log-file, and
    `mount.fuse form | cat` returns too."""
    d: Daemon = daemon_factory()  # type: ignore[operator]
    logfile = tmp_path / "netfs.log"
    argv = [a for a in d.argv() if a != "-f"] + ["--log-file", str(logfile)]
    r = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=LIVENESS)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    pid = _daemon_pid(d)
    try:
        assert os.listdir(d.mnt) == ["events"]
        fds = {os.readlink(f"/proc/{pid}/fd/{n}") for n in (0, 1, 2)}
        assert fds == {"/dev/null", str(logfile)}, fds
        wait_for(lambda: "serving" in logfile.read_text(), "the log file")
        line = next(x for x in logfile.read_text().splitlines() if "serving" in x)
        assert line[4] == "-" and line[10] == "T" and f"netfs[{pid}]: info:" in line
    finally:
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: not os.path.exists(f"/proc/{pid}"), "daemon exit")
    assert not is_mounted(d.mnt)
    # the mount.fuse form, in a pipeline, with -o log_file=
    opts = f"netns={d.netns},config_dir={d.config_dir},state_dir={d.state_dir},log_file={logfile}"
    r = subprocess.run(
        ["bash", "-c", f"{PYTHON} -m netfs.cli netfs {d.mnt} -o {opts} 2>&1 | cat"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=LIVENESS,
    )
    assert (r.returncode, r.stdout) == (0, ""), r
    pid = _daemon_pid(d)
    try:
        assert {os.readlink(f"/proc/{pid}/fd/{n}") for n in (0, 1, 2)} == {
            "/dev/null",
            str(logfile),
        }
    finally:
        subprocess.run(["umount", str(d.mnt)], check=True)
        wait_for(lambda: not os.path.exists(f"/proc/{pid}"), "daemon exit after umount")
    # without a log file nothing of the caller's is kept
    argv = [a for a in d.argv() if a != "-f"]
    r = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=LIVENESS)
    assert r.returncode == 0, r.stderr
    pid = _daemon_pid(d)
    try:
        assert {os.readlink(f"/proc/{pid}/fd/{n}") for n in (0, 1, 2)} == {"/dev/null"}
    finally:
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: not os.path.exists(f"/proc/{pid}"), "daemon exit")


def test_detached_daemon_keeps_no_inherited_descriptor(
    daemon_factory: object, tmp_path: Path
) -> None:
    """Descriptors above stderr that the caller left open are closed by the
    detached daemon: `{ netfs mount ...; } 9>&1 | cat` returns once the mount
    is ready (cat sees EOF on the pipe; the timeout only bounds a hang), and
    `( flock 8; netfs mount ... ) 8>lock` releases the lock when the caller
    ends, not when the daemon does."""
    d: Daemon = daemon_factory()  # type: ignore[operator]
    lock = tmp_path / "lock"
    held = tmp_path / "held"
    cmd = " ".join(shlex.quote(a) for a in d.argv() if a != "-f")
    script = (
        f"exec 7>{shlex.quote(str(held))}\n"
        f"( flock 8 && {{ {cmd} 2>&1; echo status=$?; }} 9>&1 | cat ) 8>{shlex.quote(str(lock))}"
    )
    r = subprocess.run(
        ["bash", "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=LIVENESS
    )
    assert (r.returncode, r.stdout, r.stderr) == (0, "status=0\n", ""), r
    pid = _daemon_pid(d)
    try:
        assert os.listdir(d.mnt) == ["events"]
        # the lock is free while the daemon runs
        assert subprocess.run(["flock", "-n", str(lock), "true"]).returncode == 0
        targets = fd_targets(pid)
        assert str(lock) not in targets and str(held) not in targets, targets
    finally:
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: not os.path.exists(f"/proc/{pid}"), "daemon exit")
    assert not is_mounted(d.mnt)


def test_stale_mount_warning_goes_to_the_log_file(daemon_factory: object, tmp_path: Path) -> None:
    """With a log file, the warning about a stale mount left by a killed
    daemon goes there, not to stderr: detached, in the mount.fuse form with
    -o log_file=, and in the foreground over a hung mount."""
    # a dead daemon's mount ("not connected"), then a detached `netfs mount`
    d: Daemon = daemon_factory()  # type: ignore[operator]
    d.start()
    killed = d.kill9()
    assert killed is not None
    killed.wait(timeout=LIVENESS)
    logfile = tmp_path / "detached.log"
    argv = [a for a in d.argv() if a != "-f"] + ["--log-file", str(logfile)]
    r = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=LIVENESS)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", ""), r
    assert "stale mount left by a previous daemon" in logfile.read_text()
    pid = _daemon_pid(d)
    os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not os.path.exists(f"/proc/{pid}"), "daemon exit")
    # again, in the form mount -t fuse.netfs runs, with -o log_file=
    d2: Daemon = daemon_factory()  # type: ignore[operator]
    d2.start()
    killed = d2.kill9()
    assert killed is not None
    killed.wait(timeout=LIVENESS)
    logfile = tmp_path / "helper.log"
    opts = f"netns={d.netns},config_dir={d.config_dir},state_dir={d.state_dir},log_file={logfile}"
    r = subprocess.run(
        [PYTHON, "-m", "netfs.cli", "netfs", str(d.mnt), "-o", opts],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=LIVENESS,
    )
    assert (r.returncode, r.stdout, r.stderr) == (0, "", ""), r
    assert "stale mount left by a previous daemon" in logfile.read_text()
    pid = _daemon_pid(d)
    subprocess.run(["umount", str(d.mnt)], check=True)
    wait_for(lambda: not os.path.exists(f"/proc/{pid}"), "daemon exit after umount")
    # a hung mount, cleared by a daemon in the foreground with --log-file
    hung = _hanging_fs(d.mnt)
    conn = None
    try:
        assert hung.stdout is not None
        assert hung.stdout.readline().strip() == "hanging"
        conn = connection_of(d.mnt)
        hung.kill()
        logfile = tmp_path / "hung.log"
        d3: Daemon = daemon_factory(["--log-file", str(logfile)])  # type: ignore[operator]
        d3.start()
        hung.wait(timeout=LIVENESS)
        assert "(hung, connection" in logfile.read_text()
    finally:
        reap(hung, conn)
    # the foreground daemons' stderr (the factory's log) never saw it
    assert "stale mount" not in d.logtext()


def test_umount_right_after_a_start_through_a_detached_daemon(daemon_factory: object) -> None:
    """`netfs mount` detached, a network started through it, then `umount`
    at once: the start's announcements are over when `echo` returns, so the
    mount is not busy; the daemon exits and the network keeps running."""
    d: Daemon = daemon_factory()  # type: ignore[operator]
    argv = [a for a in d.argv() if a != "-f"]
    r = subprocess.run(
        argv,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=LIVENESS,
    )
    assert r.returncode == 0
    pid = _daemon_pid(d)
    try:
        assert is_mounted(d.mnt) and "events" in os.listdir(d.mnt)
        define(d.mnt, "n", virtual_xml("n", "nfsdet0"))
        assert bash(f"echo 1 > {d.mnt}/n/active").returncode == 0
        r2 = subprocess.run(["umount", str(d.mnt)], capture_output=True, text=True)
        assert r2.returncode == 0, r2.stderr
        wait_for(lambda: not is_mounted(d.mnt), "unmount")
        wait_for(lambda: not os.path.exists(f"/proc/{pid}"), "daemon exit after umount")
        assert "nfsdet0" in bridges(d.netns)  # networks keep running
    finally:
        if os.path.exists(f"/proc/{pid}"):
            os.kill(pid, signal.SIGTERM)
            wait_for(lambda: not os.path.exists(f"/proc/{pid}"), "daemon exit")


def test_mount_at_once_after_umount(daemon_factory: object) -> None:
    """`umount` then at once `netfs mount` of the same directories, a few
    times: the old daemon, its mount gone, no longer keeps the state
    directory from the new one (how long it lingers is not asserted)."""
    d: Daemon = daemon_factory()  # type: ignore[operator]
    argv = [a for a in d.argv() if a != "-f"]

    def mount() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            argv,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=LIVENESS,
        )

    r = mount()
    assert r.returncode == 0, r.stderr
    pids = [_daemon_pid(d)]
    try:
        define(d.mnt, "n", virtual_xml("n", "nfsre0"))
        assert bash(f"echo 1 > {d.mnt}/n/active").returncode == 0
        for _ in range(3):
            u = subprocess.run(["umount", str(d.mnt)], capture_output=True, text=True)
            assert u.returncode == 0, u.stderr
            r = mount()
            assert r.returncode == 0, r.stderr
            pids.append(int((d.state_dir / ".lock").read_text()))
            assert pids[-1] != pids[-2]
            assert (d.mnt / "n" / "active").read_text() == "1\n"
    finally:
        if is_mounted(d.mnt):
            subprocess.run(["umount", str(d.mnt)], capture_output=True)
        for pid in pids:
            wait_for(lambda pid=pid: _gone(pid), "daemon exit")
    assert "nfsre0" in bridges(d.netns)


def _gone(pid: int) -> bool:
    """Exited (a zombie its reaper has not collected yet counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] in ("Z", "X")
    except OSError:
        return True


def test_umount_ends_the_daemon_while_a_copy_of_the_mount_lives_elsewhere(
    daemon_factory: object,
) -> None:
    """A process started by `ip netns exec` (or `unshare -m`) while netfs
    is mounted holds a copy of the mount in a mount namespace of its own;
    with private propagation the kernel keeps the FUSE connection for it.
    `umount` here still ends the daemon at once, and the copy is cut off."""
    d: Daemon = daemon_factory()  # type: ignore[operator]
    d.start()
    assert d.proc is not None
    define(d.mnt, "n", virtual_xml("n", "nfscp0"))
    holder = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "sleep", "60"],
        stdin=subprocess.DEVNULL,
    )
    try:
        # the copy is there (its mount table lists the netfs mount)
        wait_for(
            lambda: str(d.mnt) in Path(f"/proc/{holder.pid}/mountinfo").read_text(),
            "the copy of the mount",
        )
        u = subprocess.run(["umount", str(d.mnt)], capture_output=True, text=True)
        assert u.returncode == 0, u.stderr
        d.proc.wait(timeout=LIVENESS)
        assert d.proc.returncode == 0
        # the copy no longer reaches a daemon: its mount answers ENOTCONN
        # (where the umount propagated to it, the copy has no mount left);
        # -r: the holder's root (entering a mount namespace resets it)
        kept = str(d.mnt) in Path(f"/proc/{holder.pid}/mountinfo").read_text()
        r = subprocess.run(
            ["nsenter", "-t", str(holder.pid), "-m", "-r", "stat", str(d.mnt / "n")],
            capture_output=True,
            text=True,
        )
        assert r.returncode != 0
        if kept:
            assert "Transport endpoint is not connected" in r.stderr
    finally:
        holder.kill()
        holder.wait()
        d.cleanup()
