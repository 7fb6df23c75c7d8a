"""Issue 9, the daemon's trust on disk (item 10) and one daemon per state
directory (item 12)."""
# ruff: noqa: F811  (fixtures imported from fs_support are pytest arguments)

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest
from fs_support import (
    LIVENESS,
    PYTHON,
    ROOT,
    Daemon,
    Watch,
    daemon_factory,  # noqa: F401  (fixture)
    force_unmount,
    is_mounted,
    virtual_xml,
    wait_for,
)

from netfs import guard

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chown)")


def mount(mnt: Path, config: Path, state: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    argv = [PYTHON, "-m", "netfs.cli", "mount", str(mnt), "--config-dir", str(config)]
    argv += ["--state-dir", str(state), "-f", *extra]
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=LIVENESS)


@pytest.mark.parametrize("mode", [0o775, 0o757, 0o777])
def test_directory_writable_by_others_refused(tmp_path: Path, mode: int) -> None:
    d = tmp_path / "state"
    d.mkdir()
    d.chmod(mode)
    with pytest.raises(guard.Refused, match="writable by group or others"):
        guard.check_trusted(d)
    with pytest.raises(guard.Refused, match=str(d)):
        guard.check_trusted(d / "below" / "it")  # a parent it would create in


@root_only
def test_directory_of_another_user_refused(tmp_path: Path) -> None:
    d = tmp_path / "state"
    d.mkdir()
    os.chown(d, 65534, 65534)
    with pytest.raises(guard.Refused, match="owned by uid 65534"):
        guard.check_trusted(d)


def test_symlink_as_directory_refused(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(guard.Refused, match="symbolic link"):
        guard.check_trusted(tmp_path / "link")


def test_trusted_directories_accepted(tmp_path: Path) -> None:
    d = tmp_path / "a" / "b"
    d.mkdir(parents=True, mode=0o755)
    guard.check_trusted(d)
    guard.check_trusted(tmp_path / "not" / "yet")
    # a sticky, world-writable ancestor (/tmp) is fine
    sticky = Path(tempfile.mkdtemp())
    try:
        (sticky / "s").mkdir(mode=0o755)
        sticky.chmod(0o1777)
        guard.check_trusted(sticky / "s")
    finally:
        (sticky / "s").rmdir()
        sticky.rmdir()


def test_second_lock_refused_naming_dir_and_pid(tmp_path: Path) -> None:
    state = tmp_path / "state"
    fd = guard.lock_state_dir(state)
    try:
        assert (state / ".lock").stat().st_mode & 0o7777 == 0o600  # man page, ACCESS
        with pytest.raises(guard.Refused) as e:
            guard.lock_state_dir(state)
        assert str(state) in str(e.value) and f"pid {os.getpid()}" in str(e.value)
    finally:
        os.close(fd)
    os.close(guard.lock_state_dir(state))  # released with its holder


HOLDER = """
import os, sys, time
from pathlib import Path
from netfs import guard
fd = guard.lock_state_dir(Path(sys.argv[1]))
if "fuse" in sys.argv:
    fuse = os.open("/dev/fuse", os.O_RDWR)  # as a serving daemon holds it
if "exiting" in sys.argv:
    guard.mark_exiting(fd)
print("locked", flush=True)
sys.stdin.readline()
"""


def _holder(state: Path, *how: str) -> subprocess.Popen[str]:
    """A process that holds the lock (with /dev/fuse open: "fuse"; having
    said it is exiting: "exiting") and exits when its stdin gets a line."""
    p = subprocess.Popen(
        [PYTHON, "-c", HOLDER, str(state), *how],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert p.stdout is not None and p.stdout.readline() == "locked\n"
    return p


def test_lock_of_a_daemon_serving_no_mount_is_waited_for(tmp_path: Path) -> None:
    """umount, then a new daemon at once: the old one, its mount gone, is
    exiting; the new one waits for its lock instead of refusing."""
    state = tmp_path / "state"
    p = _holder(state)
    assert p.stdin is not None
    p.stdin.write("exit\n")  # it exits while the next one is waiting
    p.stdin.flush()
    try:
        fd = guard.lock_state_dir(state)
    finally:
        p.kill()
        p.wait(timeout=LIVENESS)
    os.close(fd)
    assert (state / ".lock").read_text() == f"{os.getpid()}\n"


def _release_soon(p: subprocess.Popen[str]) -> None:
    assert p.stdin is not None
    p.stdin.write("exit\n")
    p.stdin.flush()


@root_only
def test_lock_of_a_serving_daemon_refused_at_once(tmp_path: Path) -> None:
    """Holding /dev/fuse and not exiting: refused without waiting, so the
    lock is not taken even though the holder lets go right after."""
    state = tmp_path / "state"
    p = _holder(state, "fuse")
    try:
        with pytest.raises(guard.Refused, match=f"pid {p.pid};"):
            guard.lock_state_dir(state)
    finally:
        _release_soon(p)
        p.wait(timeout=LIVENESS)


@root_only
def test_lock_of_a_daemon_past_its_main_loop_is_waited_for(tmp_path: Path) -> None:
    """Still holding /dev/fuse (pyfuse3 closes it last) but its main loop
    ended (the mount is gone): waited for."""
    state = tmp_path / "state"
    p = _holder(state, "fuse", "exiting")
    assert f"{p.pid} exiting" in (state / ".lock").read_text()
    _release_soon(p)
    try:
        fd = guard.lock_state_dir(state)
    finally:
        p.kill()
        p.wait(timeout=LIVENESS)
    os.close(fd)
    assert (state / ".lock").read_text() == f"{os.getpid()}\n"


def test_lock_of_a_holder_that_does_not_exit_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(guard, "EXIT_WAIT", 0.2)
    state = tmp_path / "state"
    p = _holder(state)
    try:
        with pytest.raises(guard.Refused, match=f"in use by another netfs daemon \\(pid {p.pid};"):
            guard.lock_state_dir(state)
    finally:
        p.kill()
        p.wait(timeout=LIVENESS)


def test_prepare_sets_the_daemons_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        fd = guard.prepare(tmp_path / "etc", tmp_path / "run")
        os.close(fd)
        assert os.umask(0) == guard.UMASK
        assert (tmp_path / "run").stat().st_mode & 0o777 == 0o755
    finally:
        os.umask(old)


def test_mount_refuses_untrusted_state_dir(tmp_path: Path) -> None:
    mnt, config, state = tmp_path / "mnt", tmp_path / "etc", tmp_path / "run"
    for d in (mnt, config, state):
        d.mkdir()
    state.chmod(0o777)
    r = mount(mnt, config, state)
    assert r.returncode != 0
    assert f"state directory {state}: {state} is writable by group or others" in r.stderr
    assert not is_mounted(mnt) and os.listdir(state) == []


def test_a_refused_mount_makes_nothing(tmp_path: Path) -> None:
    """Every path is looked at before anything is made: a mount refused for
    one of them leaves no directory, lock file or log file behind."""
    mnt, config, state = tmp_path / "mnt", tmp_path / "etc" / "n", tmp_path / "run" / "n"
    mnt.mkdir()
    fifo = tmp_path / "fifo.log"
    os.mkfifo(fifo)
    r = mount(mnt, config, state, "--log-file", str(fifo))
    assert r.returncode == 1 and f"log file {fifo}: is a named pipe" in r.stderr
    assert sorted(os.listdir(tmp_path)) == ["fifo.log", "mnt"]
    users = tmp_path / "users"
    users.mkdir(mode=0o777)
    users.chmod(0o777)
    log = tmp_path / "netfs.log"
    r = mount(mnt, config, users / "state", "--log-file", str(log))
    assert r.returncode == 1 and f"{users} is writable by group or others" in r.stderr
    assert sorted(os.listdir(tmp_path)) == ["fifo.log", "mnt", "users"]
    assert os.listdir(users) == [] and not is_mounted(mnt)
    r = mount(mnt, config, state, "--log-file", str(log), "--netns", "netfs-no-such-netns")
    assert r.returncode == 1
    assert "netfs: cannot open network namespace netfs-no-such-netns: No such file" in r.stderr
    assert sorted(os.listdir(tmp_path)) == ["fifo.log", "mnt", "users"]


def test_log_file_symlink_not_followed(tmp_path: Path) -> None:
    mnt, config, state = tmp_path / "mnt", tmp_path / "etc", tmp_path / "run"
    mnt.mkdir()
    victim = tmp_path / "victim"
    victim.write_bytes(b"root's file\n")
    (tmp_path / "log").symlink_to(victim)
    r = mount(mnt, config, state, "--log-file", str(tmp_path / "log"))
    assert r.returncode != 0 and "log file" in r.stderr
    assert victim.read_bytes() == b"root's file\n"


@pytest.mark.kernel
@pytest.mark.timeout(120)
def test_second_daemon_on_one_state_dir_refused(daemon_factory: object, tmp_path: Path) -> None:
    d1: Daemon = daemon_factory()  # type: ignore[operator]
    d1.start()
    assert d1.proc is not None
    other = tmp_path / "mnt2"
    other.mkdir()
    argv = d1.argv()
    argv[argv.index(str(d1.mnt))] = str(other)
    r = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=LIVENESS)
    assert r.returncode == 1
    assert f"state directory {d1.state_dir} is in use" in r.stderr
    assert f"pid {d1.proc.pid}" in r.stderr
    assert not is_mounted(other)
    assert d1.proc.poll() is None and "events" in os.listdir(d1.mnt)
    # the same mount point too: refused before the mount is looked at
    r = subprocess.run(d1.argv(), cwd=ROOT, capture_output=True, text=True, timeout=LIVENESS)
    assert r.returncode == 1 and "in use by another netfs daemon" in r.stderr
    assert d1.proc.poll() is None and "events" in os.listdir(d1.mnt)


@pytest.mark.kernel
@pytest.mark.timeout(120)
def test_detached_daemon_holds_the_lock_with_its_own_pid(daemon_factory: object) -> None:
    d: Daemon = daemon_factory()  # type: ignore[operator]
    argv = [a for a in d.argv() if a != "-f"]
    r = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=LIVENESS)
    assert r.returncode == 0, r.stderr
    pid = int((d.state_dir / ".lock").read_text())
    try:
        assert b"netfs.cli" in Path(f"/proc/{pid}/cmdline").read_bytes()  # not the parent's
        with pytest.raises(guard.Refused, match=f"pid {pid}"):
            guard.lock_state_dir(d.state_dir)
    finally:
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: not os.path.exists(f"/proc/{pid}"), "daemon exit")
    os.close(guard.lock_state_dir(d.state_dir))  # released when it exited


# ------------------------------------------------- paths the daemon writes through


def _user_link(link: Path, target: Path, uid: int = 65534) -> None:
    """A symbolic link owned by another user (as qa2evil's in /tmp)."""
    link.symlink_to(target)
    os.lchown(link, uid, uid)


@root_only
@pytest.mark.parametrize("which", ["--state-dir", "--config-dir"])
def test_directory_below_a_users_symlink_refused(tmp_path: Path, which: str) -> None:
    """`--state-dir /tmp/link/y`, link being another user's (pointing at a
    directory of root's for now): refused, nothing written where it leads."""
    mnt, config, state = tmp_path / "mnt", tmp_path / "etc", tmp_path / "run"
    mnt.mkdir()
    target = tmp_path / "roots"
    (target / "y").mkdir(parents=True)
    _user_link(tmp_path / "link", target)
    given = tmp_path / "link" / "y"
    r = mount(mnt, given if which == "--config-dir" else config, state, which, str(given))
    assert r.returncode == 1
    assert f"{tmp_path / 'link'} is a symbolic link owned by uid 65534" in r.stderr
    what = "state directory" if which == "--state-dir" else "configuration directory"
    assert f"netfs: {what} {given}:" in r.stderr
    assert os.listdir(target / "y") == [] and not is_mounted(mnt)


def test_roots_symlinks_are_followed(tmp_path: Path) -> None:
    """A link of root's (or the daemon user's) on the way is followed, its
    target checked the same way (/var/run -> /run); the directory itself
    must not be a link."""
    real = tmp_path / "real"
    (real / "y").mkdir(parents=True)
    (tmp_path / "link").symlink_to("real")  # relative, like /var/run's
    assert guard.check_path(tmp_path / "link" / "y", "state directory") == str(real / "y")
    assert guard.check_path(tmp_path / "link" / ".." / "real", "d") == str(real)
    with pytest.raises(guard.Refused, match="is a symbolic link \\(give the directory"):
        guard.check_path(tmp_path / "link", "state directory")
    # a link's target is walked too: a directory writable by others there is refused
    (tmp_path / "open").mkdir(mode=0o755)
    (tmp_path / "open").chmod(0o777)
    (tmp_path / "link2").symlink_to(tmp_path / "open")
    with pytest.raises(guard.Refused, match=f"{tmp_path / 'open'} is writable by group"):
        guard.check_path(tmp_path / "link2" / "y", "state directory")
    if os.path.islink("/var/run") and os.lstat("/var/run").st_uid == 0 and _root_only("/run"):
        assert guard.check_path("/var/run/netfs-none/x", "d") == "/run/netfs-none/x"


def _root_only(path: str) -> bool:
    """Only root can change it (a /run mounted as a plain tmpfs is 1777)."""
    st = os.stat(path)
    return st.st_uid == 0 and not st.st_mode & 0o022


def test_usual_places_accepted(tmp_path: Path) -> None:
    """A directory made by root in /tmp or /dev/shm (sticky), /run: accepted;
    a missing one is made (mode 0755) where others could make it first."""
    for top in ("/tmp", "/dev/shm"):
        base = Path(tempfile.mkdtemp(dir=top))
        try:
            base.chmod(0o755)
            assert guard.check_path(base / "s", "state directory", create=True) == str(base / "s")
            assert (base / "s").stat().st_mode & 0o7777 == 0o755
            assert guard.mount_point(str(base / "s")) == str(base / "s")
            guard.check_mount_dir(str(base / "s"))
            os.close(guard.open_log(str(base / "log")))
            name = f"netfs-test-{os.getpid()}.log"
            os.close(guard.open_log(f"{top}/{name}"))  # directly in the sticky directory
            os.unlink(f"{top}/{name}")
        finally:
            shutil.rmtree(base)
    if _root_only("/run"):
        guard.check_path("/run", "state directory")
    # a missing directory in a sticky one: made by the daemon, not only looked for
    gone = Path(tempfile.mkdtemp())
    gone.rmdir()
    try:
        with pytest.raises(guard.Refused, match="anyone may create it"):
            guard.check_path(gone / "s", "state directory")
        guard.prepare(gone / "etc", gone / "run")
        assert gone.stat().st_mode & 0o7777 == 0o755 and (gone / "run" / ".lock").exists()
    finally:
        shutil.rmtree(gone, ignore_errors=True)


@root_only
def test_mount_point_through_a_users_symlink_refused(tmp_path: Path) -> None:
    """A user's link as the mount point, or on the way to it: refused,
    nothing mounted at the target; a link of root's as the mount point
    itself: refused too (it would be mounted over its target)."""
    config, state = tmp_path / "etc", tmp_path / "run"
    target = tmp_path / "roots"
    (target / "mnt").mkdir(parents=True)
    _user_link(tmp_path / "mlink", target / "mnt")
    _user_link(tmp_path / "plink", target)
    (tmp_path / "rlink").symlink_to(target / "mnt")
    for given, reason in [
        (tmp_path / "mlink", f"{tmp_path / 'mlink'}: is a symbolic link"),
        (tmp_path / "plink" / "mnt", f"{tmp_path / 'plink'} is a symbolic link owned by uid 65534"),
        (tmp_path / "rlink", f"{tmp_path / 'rlink'}: is a symbolic link"),
    ]:
        r = mount(given, config, state)
        assert r.returncode == 1 and reason in r.stderr, r.stderr
        assert not is_mounted(target / "mnt")
    other = tmp_path / "users"
    other.mkdir()
    os.chown(other, 65534, 65534)
    r = mount(other, config, state)
    assert r.returncode == 1 and f"{other}: owned by uid 65534" in r.stderr


@root_only
def test_log_file_fifo_or_users_file_refused(tmp_path: Path) -> None:
    """A named pipe (with or without a reader) is refused at once, not
    waited on; a file of another user, or a hard link to one of root's
    files elsewhere, is refused and left as it was."""
    mnt, config, state = tmp_path / "mnt", tmp_path / "etc", tmp_path / "run"
    mnt.mkdir()
    fifo = tmp_path / "fifo.log"
    os.mkfifo(fifo)
    r = mount(mnt, config, state, "--log-file", str(fifo))  # would hang in open(2) before
    assert r.returncode == 1 and f"log file {fifo}: is a named pipe" in r.stderr
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        r = mount(mnt, config, state, "--log-file", str(fifo))
        assert r.returncode == 1 and "not a regular file" in r.stderr
        assert os.read(reader, 100) == b""
    finally:
        os.close(reader)
    users = tmp_path / "users.log"
    users.write_bytes(b"user's\n")
    os.chown(users, 65534, 65534)
    r = mount(mnt, config, state, "--log-file", str(users))
    assert r.returncode == 1 and f"log file {users}: owned by uid 65534" in r.stderr
    assert users.read_bytes() == b"user's\n"
    victim = tmp_path / "victim"
    victim.write_bytes(b"root's\n")
    os.link(victim, tmp_path / "hard.log")
    r = mount(mnt, config, state, "--log-file", str(tmp_path / "hard.log"))
    assert r.returncode == 1 and "has 2 hard links" in r.stderr
    assert victim.read_bytes() == b"root's\n"
    _user_link(tmp_path / "dlink", tmp_path)
    r = mount(mnt, config, state, "--log-file", str(tmp_path / "dlink" / "x.log"))
    assert r.returncode == 1 and "is a symbolic link owned by uid 65534" in r.stderr
    assert not (tmp_path / "x.log").exists() and not is_mounted(mnt)


@pytest.mark.kernel
@pytest.mark.timeout(120)
def test_mount_point_real_path_used(netns: str, tmp_path: Path) -> None:
    """Through a link of root's, the daemon mounts on the real path and its
    helper works there: re-pointing the link later leads nothing of its
    own operations (mkdir, mknod through the mount) elsewhere."""
    base = Path(tempfile.mkdtemp(prefix="netfs-test-"))
    base.chmod(0o755)
    real = base / "real"
    (real / "mnt").mkdir(parents=True)
    (base / "decoy" / "mnt").mkdir(parents=True)
    (base / "link").symlink_to(real)
    (tmp_path / "config").mkdir()
    (tmp_path / "state").mkdir()
    d = Daemon(
        mnt=base / "link" / "mnt",
        config_dir=tmp_path / "config",
        state_dir=tmp_path / "state",
        netns=netns,
        log=tmp_path / "daemon.log",
    )
    try:
        d.start()
        assert f"serving {real / 'mnt'} " in d.logtext()
        assert is_mounted(real / "mnt")
        (base / "link").unlink()
        (base / "link").symlink_to(base / "decoy")
        # a network that appears on SIGHUP: the helper's mkdir announces it
        (tmp_path / "config" / "testA.xml").write_text(virtual_xml("testA", "vbr-h17"))
        w = Watch(real / "mnt")
        try:
            assert d.proc is not None
            d.proc.send_signal(signal.SIGHUP)
            w.wait(real / "mnt" / "testA", "CREATE")
        finally:
            w.close()
        assert os.listdir(base / "decoy" / "mnt") == []
    finally:
        d.cleanup()
        force_unmount(real / "mnt")
        shutil.rmtree(base, ignore_errors=True)


def test_a_log_nobody_reads_neither_blocks_the_daemon_nor_its_exit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The log's lines are written by a thread of their own: with the log
    stuck (a standard error nobody reads), making lines never waits, past
    LOG_BACKLOG waiting lines the rest are counted and dropped (the next
    line that fits says how many), and the exit waits at most LOG_STOP_WAIT."""
    import logging
    import re
    import threading
    import time

    from netfs import daemon

    stuck = threading.Event()
    written: list[str] = []

    class Stuck(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            stuck.wait()
            written.append(record.getMessage())

    log = logging.getLogger("netfs.test")
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    monkeypatch.setattr(daemon, "LOG_BACKLOG", 100)
    monkeypatch.setattr(daemon, "LOG_STOP_WAIT", 0.5)
    root.handlers[:] = [Stuck()]
    root.setLevel(logging.INFO)
    try:
        stop = daemon.log_in_background()
        t0 = time.monotonic()
        for i in range(1000):
            log.info("line %d", i)
        assert time.monotonic() - t0 < 2.0  # no line waited for the stuck log
        stuck.set()  # the log takes lines again
        deadline = time.monotonic() + 10
        while len(written) < 100 and time.monotonic() < deadline:
            time.sleep(0.01)
        log.info("after")
        stop()
        note = re.compile(r"(\d+) log lines dropped: the log is not written fast enough")
        assert note.fullmatch(written[-2]) is not None, written[-3:]
        assert written[-1] == "after"
        dropped = sum(int(m.group(1)) for w in written if (m := note.fullmatch(w)))
        kept = sum(1 for w in written if w.startswith("line "))
        assert dropped > 0 and kept + dropped == 1000  # every line written or counted

        stuck.clear()  # stuck again: the exit does not wait for it
        stop = daemon.log_in_background()
        for i in range(300):
            log.info("line %d", i)
        t0 = time.monotonic()
        stop()
        assert time.monotonic() - t0 < 2.0
    finally:
        stuck.set()
        root.handlers[:] = saved
        root.setLevel(level)
