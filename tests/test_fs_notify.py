"""End to end: inotify, poll() and the events file see every change."""
# ruff: noqa: F811  (fixtures imported from fs_support are pytest arguments)

from __future__ import annotations

import ctypes
import os
import select
import signal
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest
from fs_support import (
    LIVENESS,
    OVS_TESTA,
    Daemon,
    EventReader,
    Watch,
    bash,
    daemon_factory,  # noqa: F401  (fixture)
    define,
    mounted,  # noqa: F401  (fixture)
    virtual_xml,
    wait_for,
)

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(120)]


def test_inotify_for_writes_and_for_a_vanished_bridge(mounted: Daemon) -> None:
    mnt, ns = mounted.mnt, mounted.netns
    define(mnt, "testA", virtual_xml("testA", "nfsbr0"))
    net = mnt / "testA"
    w = Watch(net, net / "active")
    ev = EventReader(mnt)
    try:
        r = bash(f"echo 1 > {net}/active")
        assert r.returncode == 0
        w.wait(net / "active", "MODIFY")
        w.wait(net / "status.xml", "CREATE")
        ev.wait("testA", "started")
        # the bridge deleted behind our back
        w.lines.clear()
        subprocess.run(["ip", "-n", ns, "link", "del", "nfsbr0"], check=True)
        w.wait(net / "status.xml", "DELETE")
        w.wait(net / "active", "MODIFY")
        w.wait(net / "active", "CLOSE_WRITE")
        ev.wait("testA", "stopped")
        assert (net / "active").read_text() == "0\n"
        assert not (net / "status.xml").exists()
        # a write by the user: the line format
        r = bash(f"echo 1 > {net}/autostart")
        assert r.returncode == 0
        line = ev.wait("testA", "updated")
        stamp = line.split()[0]
        assert stamp[4] == "-" and stamp[10] == "T" and stamp.endswith("+00:00")
    finally:
        w.close()
        ev.close()


IN_CREATE, IN_DELETE, IN_NONBLOCK = 0x100, 0x200, 0o4000


def _pending_inotify(fd: int) -> list[tuple[int, str]]:
    """(mask, name) of every event the kernel has queued on `fd` right now."""
    out: list[tuple[int, str]] = []
    while True:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return out
        at = 0
        while at < len(data):
            _wd, mask, _cookie, size = struct.unpack_from("iIII", data, at)
            name = data[at + 16 : at + 16 + size].rstrip(b"\0").decode()
            out.append((mask, name))
            at += 16 + size


def test_watchers_are_told_before_the_writers_close_returns(mounted: Daemon) -> None:
    """When close() of a write that acted returns, its announcements are
    done: status.xml's IN_CREATE/IN_DELETE is already queued for watchers, and
    no operation of the daemon's own is left in the mount (so `echo 0 >
    active; umount /net` never finds the mount busy)."""
    mnt = mounted.mnt
    define(mnt, "testA", virtual_xml("testA", "nfsbr0"))
    net = mnt / "testA"
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.inotify_init1(IN_NONBLOCK)
    assert fd >= 0
    try:
        assert libc.inotify_add_watch(fd, bytes(net), IN_CREATE | IN_DELETE) >= 0
        for _ in range(5):
            for value, want in ((b"1\n", IN_CREATE), (b"0\n", IN_DELETE)):
                w = os.open(net / "active", os.O_WRONLY)
                try:
                    os.write(w, value)
                finally:
                    os.close(w)
                # no waiting: the kernel has it queued already, or never will
                assert (want, "status.xml") in _pending_inotify(fd), value
    finally:
        os.close(fd)


def test_inotify_for_directories(mounted: Daemon) -> None:
    mnt = mounted.mnt
    w = Watch(mnt)
    ev = EventReader(mnt)
    try:
        # a network the daemon itself learns about (SIGHUP reload of the config dir)
        (mounted.config_dir / "fromcfg.xml").write_text(virtual_xml("fromcfg", "nfsbr5"))
        assert mounted.proc is not None
        mounted.proc.send_signal(signal.SIGHUP)
        w.wait(mnt / "fromcfg", "CREATE")
        ev.wait("fromcfg", "defined")
        assert (mnt / "fromcfg" / "active").read_text() == "0\n"
        # and one it forgets
        (mounted.config_dir / "fromcfg.xml").unlink()
        mounted.proc.send_signal(signal.SIGHUP)
        w.wait(mnt / "fromcfg", "DELETE")
        ev.wait("fromcfg", "undefined")
        assert "fromcfg" not in os.listdir(mnt)
        # user mkdir/rmdir
        define(mnt, "testA", OVS_TESTA)
        w.wait(mnt / "testA", "CREATE")
        ev.wait("testA", "defined")
        pw = Watch(mnt / "testA" / "ports")
        try:
            iface = (
                "<interface type='network'><source network='testA' portgroup='sales'/>"
                "</interface>\n"
            )
            r = bash(
                f"echo 1 > {mnt}/testA/active && mkdir {mnt}/testA/ports/vm1 && "
                f"cp /dev/stdin {mnt}/testA/ports/vm1/port.xml <<'EOF'\n{iface}EOF"
            )
            assert r.returncode == 0, r.stderr
            pw.wait(mnt / "testA" / "ports" / "vm1", "CREATE")
            ev.wait("testA", "port-created", "vm1")
            # the stop frees the port: the daemon removes its directory
            r = bash(f"echo 0 > {mnt}/testA/active")
            assert r.returncode == 0
            pw.wait(mnt / "testA" / "ports" / "vm1", "DELETE")
            ev.wait("testA", "port-deleted", "vm1")
            assert os.listdir(mnt / "testA" / "ports") == []
        finally:
            pw.close()
        r = bash(f"rmdir {mnt}/testA")
        assert r.returncode == 0
        w.wait(mnt / "testA", "DELETE")
        ev.wait("testA", "undefined")
    finally:
        w.close()
        ev.close()


def test_error_file_is_notified(mounted: Daemon) -> None:
    """Every recorded error touches `error` (IN_MODIFY, IN_CLOSE_WRITE), even
    one with the same words as the last; `events` never shows it."""
    mnt, ns = mounted.mnt, mounted.netns
    define(mnt, "testA", virtual_xml("testA", "nfsbr0"))
    err = mnt / "testA" / "error"
    w = Watch(err)
    ev = EventReader(mnt)
    try:
        r = bash(f"echo 7 > {mnt}/testA/active")
        assert r.returncode == 1
        w.wait(err, "MODIFY")
        w.wait(err, "CLOSE_WRITE")
        text = err.read_text()
        assert "invalid value" in text
        # the same error again: same words, still a new error
        w.lines.clear()
        r = bash(f"echo 7 > {mnt}/testA/active")
        assert r.returncode == 1
        w.wait(err, "MODIFY")
        assert err.read_text() == text
        # a start the kernel refuses (the bridge name is taken)
        subprocess.run(["ip", "-n", ns, "link", "add", "nfsbr0", "type", "bridge"], check=True)
        w.lines.clear()
        r = bash(f"echo 1 > {mnt}/testA/active")
        assert r.returncode == 1
        w.wait(err, "MODIFY")
        assert err.read_text() not in ("", text)
        # poll() sees a repeated error too
        fd = os.open(err, os.O_RDONLY)
        try:
            os.pread(fd, 4096, 0)
            p = select.poll()
            p.register(fd, select.POLLPRI | select.POLLERR)
            assert p.poll(0) == []
            r = bash(f"echo 1 > {mnt}/testA/active")
            assert r.returncode == 1
            ready = p.poll(LIVENESS * 1000)
            assert ready and ready[0][1] & select.POLLPRI
        finally:
            os.close(fd)
        # `events` has other words only
        assert bash(f"echo 1 > {mnt}/testA/autostart").returncode == 0
        ev.wait("testA", "updated")
        assert ev.lines and not [x for x in ev.lines if " error" in x], ev.lines
    finally:
        w.close()
        ev.close()


def test_error_from_autostart_is_notified(mounted: Daemon) -> None:
    """An error the daemon meets on its own (autostart at SIGHUP fails: the
    bridge name is taken) touches `error` too."""
    mnt, ns = mounted.mnt, mounted.netns
    define(mnt, "testA", virtual_xml("testA", "nfsbr0"))
    assert bash(f"echo 1 > {mnt}/testA/autostart").returncode == 0
    subprocess.run(["ip", "-n", ns, "link", "add", "nfsbr0", "type", "bridge"], check=True)
    err = mnt / "testA" / "error"
    w = Watch(err)
    try:
        assert mounted.proc is not None
        mounted.proc.send_signal(signal.SIGHUP)
        w.wait(err, "MODIFY")
        w.wait(err, "CLOSE_WRITE")
        assert err.read_text() != ""
        assert (mnt / "testA" / "active").read_text() == "0\n"
    finally:
        w.close()


def test_poll_on_events_wakes_at_an_event(mounted: Daemon) -> None:
    """A poll() blocked on `events` with nothing to read wakes with POLLIN
    when an event comes."""
    mnt = mounted.mnt
    fd = os.open(mnt / "events", os.O_RDONLY)
    try:
        p = select.poll()
        p.register(fd, select.POLLIN)
        assert p.poll(0) == []
        result: list[list[tuple[int, int]]] = []
        t = threading.Thread(target=lambda: result.append(p.poll(LIVENESS * 1000)))
        t.start()
        wait_for(lambda: "poll" in _wchan(t), "the poll() waits")
        define(mnt, "testA", virtual_xml("testA", "nfsbr0"))
        t.join(LIVENESS / 2)  # woken, not at its timeout (when poll looks again)
        assert not t.is_alive() and result == [[(fd, select.POLLIN)]]
        assert b"testA defined" in os.read(fd, 4096)
    finally:
        os.close(fd)


def test_a_nonblocking_read_of_events_fails_with_eagain(mounted: Daemon) -> None:
    """Opened with O_NONBLOCK, `events` with nothing to read gives EAGAIN at
    once (a hostile trial's process waited in it for ten minutes); the
    lines come once there are some."""
    mnt = mounted.mnt
    fd = os.open(mnt / "events", os.O_RDONLY | os.O_NONBLOCK)
    try:
        begun = time.monotonic()
        with pytest.raises(BlockingIOError):
            os.read(fd, 4096)
        assert time.monotonic() - begun < LIVENESS / 2
        define(mnt, "testA", virtual_xml("testA", "nfsbr0"))
        p = select.poll()
        p.register(fd, select.POLLIN)
        assert p.poll(LIVENESS * 1000) == [(fd, select.POLLIN)]
        assert b"testA defined" in os.read(fd, 4096)
        with pytest.raises(BlockingIOError):
            os.read(fd, 4096)
    finally:
        os.close(fd)


def _wchan(t: threading.Thread) -> str:
    try:
        return Path(f"/proc/self/task/{t.native_id}/wchan").read_text()
    except OSError:
        return ""


def test_poll_wakes_on_change(mounted: Daemon) -> None:
    mnt, ns = mounted.mnt, mounted.netns
    define(mnt, "testA", virtual_xml("testA", "nfsbr0"))
    fd = os.open(mnt / "testA" / "active", os.O_RDONLY)
    try:
        assert os.pread(fd, 16, 0) == b"0\n"
        p = select.poll()
        p.register(fd, select.POLLPRI | select.POLLERR)
        assert p.poll(0) == []  # nothing changed since the read
        r = bash(f"echo 1 > {mnt}/testA/active")
        assert r.returncode == 0
        ready = p.poll(LIVENESS * 1000)
        assert ready and ready[0][1] & select.POLLPRI
        assert os.pread(fd, 16, 0) == b"1\n"
        assert p.poll(0) == []
        # a change the daemon finds itself, with a waiter already blocked
        result: list[object] = []

        def waiter() -> None:
            result.append(p.poll(LIVENESS * 1000))

        import threading

        t = threading.Thread(target=waiter)
        t.start()
        time.sleep(0.2)
        subprocess.run(["ip", "-n", ns, "link", "del", "nfsbr0"], check=True)
        t.join(LIVENESS)
        assert result and result[0], result
        assert os.pread(fd, 16, 0) == b"0\n"
        # a write by another process, with a waiter already blocked
        assert p.poll(0) == []
        timer = threading.Timer(0.3, lambda: bash(f"echo 1 > {mnt}/testA/active"))
        timer.start()
        got = p.poll(LIVENESS * 1000)
        timer.join()
        assert got and got[0][1] & (select.POLLPRI | select.POLLERR)
        assert os.pread(fd, 16, 0) == b"1\n"
    finally:
        os.close(fd)


def test_events_blocks_and_reader_can_be_killed(mounted: Daemon) -> None:
    mnt = mounted.mnt
    ev = EventReader(mnt)
    try:
        time.sleep(0.3)
        assert ev.proc.poll() is None  # blocked, not at end of file
        # SIGTERM: a SIGINT may be ignored by a test run started in the background
        ev.proc.send_signal(signal.SIGTERM)
        ev.proc.wait(LIVENESS)
    finally:
        ev.close()
    # the daemon is still fine
    define(mnt, "testA", virtual_xml("testA", "nfsbr0"))
    wait_for(lambda: "testA" in os.listdir(mnt), "testA")


PG_XML = """<network>
  <name>h</name>
  <bridge name='nfsbr6'/>
{portgroups}</network>
"""


def _pg_xml(*names: str) -> str:
    return PG_XML.format(portgroups="".join(f"  <portgroup name='{n}'/>\n" for n in names))


def test_entries_a_definition_brings_are_announced(mounted: Daemon) -> None:
    """A recursive watcher started before the definition hears of every entry
    it brings (and so watches ports/), and of portgroups a redefinition adds
    or drops, whether written through the mount or loaded at SIGHUP."""
    mnt = mounted.mnt
    net = mnt / "h"
    w = Watch(mnt, recursive=True)
    try:
        assert bash(f"mkdir {net}").returncode == 0
        w.wait(net, "CREATE")
        wait_for(lambda: w.watches() >= 2, "the watch on the new directory")
        r = bash(f"cat > {net}/definition.xml <<'EOF'\n{_pg_xml('pg1')}EOF")
        assert r.returncode == 0, r.stderr
        # (pg1 is made right after portgroups/: whether inotifywait watches
        # portgroups/ by then is a race of any recursive watch)
        for f in ("active", "autostart", "uuid", "portgroups", "ports"):
            w.wait(net / f, "CREATE")
        wait_for(lambda: w.watches() >= 5, "the watches on ports/ and portgroups/")
        assert bash(f"mkdir {net}/ports/vm1 && rmdir {net}/ports/vm1").returncode == 0
        w.wait(net / "ports" / "vm1", "CREATE")
        w.wait(net / "ports" / "vm1", "DELETE")
        # a redefinition through the mount
        r = bash(f"cat > {net}/definition.xml <<'EOF'\n{_pg_xml('pg2')}EOF")
        assert r.returncode == 0, r.stderr
        w.wait(net / "portgroups" / "pg2", "CREATE")
        w.wait(net / "portgroups" / "pg1", "DELETE")
        # and one loaded at SIGHUP
        assert mounted.proc is not None
        text = (mounted.config_dir / "h.xml").read_text()
        (mounted.config_dir / "h.xml").write_text(
            text.replace("<portgroup name='pg2'", "<portgroup name='pg3'")
        )
        mounted.proc.send_signal(signal.SIGHUP)
        w.wait(net / "portgroups" / "pg3", "CREATE")
        w.wait(net / "portgroups" / "pg2", "DELETE")
        assert os.listdir(net / "portgroups") == ["pg3"]
    finally:
        w.close()


def _wake_ups_for_one_bridge_deletion(active: Path, ns: str, bridge: str) -> list[bytes]:
    """Values a non-blocking poll() loop on `active` read when woken, from
    before the bridge is deleted until after the daemon announced it."""
    fd = os.open(active, os.O_RDONLY)
    w = Watch(active)
    try:
        seen = [os.pread(fd, 16, 0)]
        p = select.poll()
        p.register(fd, select.POLLPRI | select.POLLERR)
        stop = threading.Event()
        rounds = [0]

        def spin() -> None:
            # poll without blocking, as fast as possible: catches the value
            # in the gap between the change and its announcement
            while not stop.is_set():
                if p.poll(0):
                    seen.append(os.pread(fd, 16, 0))
                rounds[0] += 1

        t = threading.Thread(target=spin)
        t.start()
        try:
            subprocess.run(["ip", "-n", ns, "link", "del", bridge], check=True)
            # the daemon's own touch comes after its announcement
            w.wait(active, "CLOSE_WRITE")
            after = rounds[0]
            wait_for(lambda: rounds[0] > after + 10, "more polls")
        finally:
            stop.set()
            t.join(LIVENESS)
        return seen
    finally:
        w.close()
        os.close(fd)


def test_one_wake_up_per_change_made_by_the_daemon(mounted: Daemon) -> None:
    """A reader that re-reads the value after the daemon changed it but before
    the notifier announced it is not woken a second time by that
    announcement: one change, one POLLPRI."""
    mnt, ns = mounted.mnt, mounted.netns
    define(mnt, "testA", virtual_xml("testA", "nfsbr0"))
    active = mnt / "testA" / "active"
    for _ in range(3):
        assert bash(f"echo 1 > {active}").returncode == 0
        seen = _wake_ups_for_one_bridge_deletion(active, ns, "nfsbr0")
        assert seen == [b"1\n", b"0\n"], seen


def _helper_pid(daemon: Daemon) -> int:
    """The notifier's helper process (netfs/fs/helper.py), a child of the daemon."""
    assert daemon.proc is not None
    out = subprocess.run(
        ["ps", "-ww", "-o", "pid=,args=", "--ppid", str(daemon.proc.pid)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    pids = [int(line.split()[0]) for line in out.splitlines() if "helper.py" in line]
    assert len(pids) == 1, out
    return pids[0]


def test_create_announced_while_the_kernel_holds_the_entry(mounted: Daemon) -> None:
    """The kernel holds a dentry for status.xml (a process looked it up
    after the start, before the announcement) when the helper's mknod comes:
    the kernel asks the daemon again (an exclusive create), the helper's
    view says absent, and watchers still get IN_CREATE, although the
    notifier no longer drops the dentry before its mknod."""
    mnt = mounted.mnt
    define(mnt, "testA", virtual_xml("testA", "nfsbr0"))
    net = mnt / "testA"
    w = Watch(net)
    helper = _helper_pid(mounted)
    os.kill(helper, signal.SIGSTOP)  # the announcement waits: its close too
    try:
        writer = subprocess.Popen(["bash", "-c", f"echo 1 > {net}/active"])
        # the start acted: this lookup leaves the kernel a dentry (entry timeout 1 s)
        wait_for(lambda: (net / "status.xml").exists(), "status.xml")
    finally:
        os.kill(helper, signal.SIGCONT)
    try:
        assert writer.wait(timeout=LIVENESS) == 0
        w.wait(net / "status.xml", "CREATE")
    finally:
        w.close()


def test_a_killed_helper_is_replaced_at_the_next_announcement(mounted: Daemon) -> None:
    """The notifier finds a dead helper by its broken pipe (it does not
    ask the process table before every request): the next announcement is
    made by a new helper, and the close that waits for it returns."""
    mnt = mounted.mnt
    define(mnt, "testA", virtual_xml("testA", "nfsbr0"))
    net = mnt / "testA"
    old = _helper_pid(mounted)
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: _helper_pid_or_none(mounted) is None, "the helper reaped or gone")
    w = Watch(net)
    try:
        assert bash(f"echo 1 > {net}/active").returncode == 0
        w.wait(net / "status.xml", "CREATE")
    finally:
        w.close()
    new = _helper_pid(mounted)
    assert new != old


def _helper_pid_or_none(daemon: Daemon) -> int | None:
    """The live helper's pid (a killed one that is not reaped yet is a zombie: not counted)."""
    try:
        pid = _helper_pid(daemon)
    except AssertionError:
        return None
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None
    return None if state == "Z" else pid
