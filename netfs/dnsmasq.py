"""dnsmasq per network: files, start, adopt, reload, stop, orphans.

Layout (in the daemon's state directory)::

    STATE/.dnsmasq/NAME.conf          configuration (0600, read as root)
    STATE/.dnsmasq/NAME.hostsfile     dhcp-hostsfile (0644: re-read on SIGHUP
    STATE/.dnsmasq/NAME.addnhosts     addn-hosts      after dropping root)
    STATE/.dnsmasq/NAME.pid           written by dnsmasq
    STATE/.dnsmasq/netfs-leases-helper    the --dhcp-script entry (netfs.leases)
    STATE/.dnsmasq/leases/NAME.records    the lease records (netfs.leases),
    STATE/.dnsmasq/leases/NAME.init       and dnsmasq's view of them

dnsmasq runs as libvirt runs it — ``dnsmasq --conf-file=… --leasefile-ro
--dhcp-script=…`` — plus ``--pid-file`` and ``--user`` (Debian's dnsmasq-base
user ``dnsmasq``, else ``nobody``), inside the managed namespace (through
:mod:`netfs.nsexec`), in a session of its own and with no descriptor of ours:
it keeps running when the daemon exits. It daemonises itself; its parent exits
once the child is ready (listening sockets bound, pid file written, leases
loaded through the helper's ``init``) or with dnsmasq's own words and status
when it is not: start waits for that exit, it never sleeps.

A dnsmasq is ours when its pid file names a live process whose command line
has our ``--conf-file`` (so a recycled pid is never signalled). Every method
is synchronous and may block briefly (a process start, a wait for an exit):
the core calls them from a worker thread.
"""

from __future__ import annotations

import errno
import logging
import os
import pwd
import select
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from netfs import leases, nsexec
from netfs.errors import NetfsError
from netfs.model.dnsmasq import _path_escape as path_escape
from netfs.state import atomic_write

log = logging.getLogger(__name__)

SUBDIR = ".dnsmasq"  # a dot: no network name can meet it (STATE/NAME/ is a network's)
HELPER_NAME = "netfs-leases-helper"
PROGRAM = "dnsmasq"


def run_user() -> str:
    """The unprivileged user dnsmasq drops to: Debian's `dnsmasq`, else `nobody`."""
    for user in ("dnsmasq", "nobody"):
        try:
            pwd.getpwnam(user)
            return user
        except KeyError:
            pass
    return "nobody"


@dataclass(frozen=True)
class Files:
    conf: Path
    hostsfile: Path
    addnhosts: Path
    pid: Path


def _read(path: str) -> bytes | None:
    """A small /proc file in one read (no buffered file object: recovery reads
    one per process)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return os.read(fd, 65536)
    except OSError:
        return None
    finally:
        os.close(fd)


def _cmdline(pid: int) -> list[str] | None:
    raw = _read(f"/proc/{pid}/cmdline")
    return [os.fsdecode(a) for a in raw.split(b"\0")[:-1]] if raw else None


def _stat(pid: int) -> tuple[bytes, int] | None:
    """(state, ppid) of a process."""
    raw = _read(f"/proc/{pid}/stat")
    if not raw:
        return None
    fields = raw[raw.rfind(b")") + 2 :].split()
    return fields[0], int(fields[1])


def _alive(pid: int) -> bool:
    """Running (not a zombie waiting to be reaped)."""
    st = _stat(pid)
    return st is not None and st[0] not in (b"Z", b"X")


def wait_exit(pid: int, timeout: float = 5.0) -> bool:
    """Wait until pid has exited (pidfd: works for a process not our child)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        p = select.poll()
        p.register(fd, select.POLLIN)
        deadline = time.monotonic() + timeout
        while _alive(pid):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            p.poll(min(left, 0.05) * 1000)
        return True
    finally:
        os.close(fd)


class Dnsmasq:
    """The dnsmasq processes of the networks of one state directory."""

    def __init__(self, state_dir: Path, netns: str | None = None, user: str | None = None) -> None:
        self.state_dir = Path(state_dir)
        self.dir = self.state_dir / SUBDIR
        self.leases_dir = Path(leases.leases_dir(self.state_dir))
        self.helper = self.dir / HELPER_NAME
        self.netns = netns
        self.user = user or run_user()
        self._checked = False
        self._files: dict[str, Files] = {}  # by network name (recovery asks 3 times each)

    # -- files ---------------------------------------------------------------------

    def files(self, name: str) -> Files:
        """The paths; the hosts files with the name XML-escaped, as the
        configuration libvirt writes names them (netfs.model.dnsmasq)."""
        f = self._files.get(name)
        if f is None:
            d = self.dir
            esc = path_escape(name)
            f = Files(
                d / f"{name}.conf",
                d / f"{esc}.hostsfile",
                d / f"{esc}.addnhosts",
                d / f"{name}.pid",
            )
            if len(self._files) >= 4096:  # names come and go: bounded
                self._files.clear()
            self._files[name] = f
        return f

    def _make_dirs(self) -> None:
        for d in (self.dir, self.leases_dir):
            d.mkdir(parents=True, exist_ok=True)
            os.chmod(d, 0o755)  # dnsmasq re-reads the hosts files as its own user
        if not self._checked:
            self._checked = True
            for up in self.dir.resolve().parents:
                if not os.stat(up).st_mode & 0o001:
                    log.warning(
                        "%s is not searchable by others: dnsmasq (user %s) cannot read "
                        "the hosts files under %s",
                        up,
                        self.user,
                        self.dir,
                    )
                    break

    def write_files(self, name: str, conf: str, hostsfile: str = "", addnhosts: str = "") -> None:
        """Write a network's configuration and hosts files (atomically each)."""
        self._make_dirs()
        f = self.files(name)
        atomic_write(f.conf, conf.encode(), mode=0o600)
        self.write_hosts(name, hostsfile, addnhosts)

    def write_hosts(self, name: str, hostsfile: str, addnhosts: str) -> None:
        """Rewrite only the hosts files (then :meth:`reload`)."""
        self._make_dirs()
        f = self.files(name)
        for path, text in ((f.hostsfile, hostsfile), (f.addnhosts, addnhosts)):
            atomic_write(path, text.encode(), mode=0o644)
            os.chmod(path, 0o644)

    def remove_files(self, name: str) -> None:
        """Remove a stopped network's files (its lease records stay)."""
        f = self.files(name)
        for path in (f.conf, f.hostsfile, f.addnhosts, f.pid):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    def _write_helper(self) -> None:
        parent = str(Path(leases.__file__).resolve().parent.parent)
        text = leases.entry_script(os.path.realpath(sys.executable), parent)
        try:
            if self.helper.read_text() == text:
                return
        except OSError:
            pass
        atomic_write(self.helper, text.encode(), mode=0o755)
        os.chmod(self.helper, 0o755)

    # -- processes ---------------------------------------------------------------------

    def command(self, name: str) -> list[str]:
        f = self.files(name)
        return [
            PROGRAM,
            f"--conf-file={f.conf}",
            "--leasefile-ro",
            f"--dhcp-script={self.helper}",
            f"--pid-file={f.pid}",
            f"--user={self.user}",
        ]

    def _ours(self, name: str, pid: int) -> bool:
        argv = _cmdline(pid)
        return (
            argv is not None
            and os.path.basename(argv[0]) == PROGRAM
            and f"--conf-file={self.files(name).conf}" in argv
            and _alive(pid)
            and self._in_our_netns(pid)
        )

    def _netns_ino(self) -> int | None:
        ns = nsexec.netns_path(self.netns) if self.netns else "/proc/self/ns/net"
        try:
            return os.stat(ns).st_ino
        except OSError:
            return None

    def _in_our_netns(self, pid: int, ino: int | None = None) -> bool:
        ino = self._netns_ino() if ino is None else ino
        try:
            return ino is not None and os.stat(f"/proc/{pid}/ns/net").st_ino == ino
        except OSError:
            return False

    def _pidfile(self, name: str) -> int | None:
        raw = _read(str(self.files(name).pid))
        try:
            pid = int(raw or b"")
        except ValueError:
            return None
        return pid if pid > 0 else None

    def pid(self, name: str) -> int | None:
        """The pid of the network's running dnsmasq (pid file and command line match)."""
        pid = self._pidfile(name)
        return pid if pid is not None and self._ours(name, pid) else None

    def is_running(self, name: str) -> bool:
        return self.pid(name) is not None

    def adopt(self, name: str) -> int | None:
        """At daemon start: the running dnsmasq of an active network, left alone."""
        pid = self.pid(name)
        if pid is not None:
            log.info("network %s: adopted dnsmasq pid %d", name, pid)
        return pid

    def start(self, name: str) -> int:
        """Start the network's dnsmasq (files written before); its pid.

        A running one is kept (its pid returned). Errors: EADDRINUSE when a
        port it needs is taken, EIO when it refuses its configuration or
        fails otherwise (dnsmasq's own words), ENOENT when it is missing."""
        running = self.pid(name)
        if running is not None:
            return running
        f = self.files(name)
        if not f.conf.exists():
            raise NetfsError(errno.EIO, f"cannot start dnsmasq: {f.conf} is missing")
        self._make_dirs()
        self._write_helper()
        try:
            os.unlink(f.pid)
        except FileNotFoundError:
            pass
        env = {leases.ENV_NETWORK: name, leases.ENV_DIR: str(self.leases_dir)}
        done = nsexec.run_sync(self.netns, self.command(name), check=False, env=env, timeout=30.0)
        if done.returncode != 0:
            text = nsexec.words(done)
            code = errno.EADDRINUSE if "in use" in text.lower() else errno.EIO
            raise NetfsError(code, f"cannot start dnsmasq: {text}")
        pid = self.pid(name)
        if pid is None:  # e.g. a pid-file= line naming another file: leave nothing behind
            for other, stray in self.processes():
                if other == name and self._in_our_netns(stray):
                    _terminate(stray, 5.0)
            raise NetfsError(errno.EIO, f"dnsmasq started but wrote no pid file {f.pid}")
        log.info("network %s: dnsmasq started, pid %d", name, pid)
        return pid

    def reload(self, name: str) -> bool:
        """SIGHUP: dnsmasq re-reads its hosts files. False if it is not running."""
        pid = self.pid(name)
        if pid is None:
            return False
        try:
            os.kill(pid, signal.SIGHUP)
        except ProcessLookupError:
            return False
        return True

    def stop(self, name: str, timeout: float = 5.0) -> bool:
        """SIGTERM (SIGKILL after `timeout`), wait for the exit, remove the pid file.

        True if a dnsmasq was running."""
        pid = self.signal_stop(name)
        if pid is not None:
            _wait_or_kill(pid, timeout)
        return pid is not None

    def signal_stop(self, name: str) -> int | None:
        """The first half of :meth:`stop`: SIGTERM and the pid file removed, no
        wait (dnsmasq takes ~15 ms to exit: a network's stop can delete its
        bridge meanwhile, then :func:`wait_exit` the pid returned)."""
        pid = self.pid(name)
        if pid is not None:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pid = None
        try:
            os.unlink(self.files(name).pid)
        except FileNotFoundError:
            pass
        return pid

    def restart(self, name: str) -> int:
        """Stop and start again with the same files; the leases are kept (init)."""
        self.stop(name)
        return self.start(name)

    # -- all of them ---------------------------------------------------------------------

    def processes(self) -> list[tuple[str, int]]:
        """Every dnsmasq with a configuration of ours: (network name, pid), from
        one /proc scan, in any namespace. dnsmasq's script helper (a child with
        the same command line) is not listed."""
        prefix = f"--conf-file={self.dir}/"
        alive: dict[int, int] = {}  # every live dnsmasq -> its parent
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            raw = _read(f"/proc/{entry}/stat")  # comm, state and ppid in one read
            if not raw or raw[raw.find(b"(") + 1 : raw.rfind(b")")] != b"dnsmasq":
                continue
            fields = raw[raw.rfind(b")") + 2 :].split()
            if fields[0] not in (b"Z", b"X"):
                alive[int(entry)] = int(fields[1])
        found: list[tuple[str, int]] = []
        for pid, ppid in alive.items():
            if ppid in alive:
                continue  # a helper (its command line is its parent's)
            for arg in (_cmdline(pid) or [])[1:]:
                if arg.startswith(prefix) and arg.endswith(".conf"):
                    name = arg[len(prefix) : -len(".conf")]
                    if "/" not in name:
                        found.append((name, pid))
                        break
        return sorted(found)

    def running(self) -> dict[str, int]:
        """:meth:`processes` by network name."""
        return dict(self.processes())

    def survey(
        self, active: set[str] | frozenset[str]
    ) -> tuple[dict[str, int | None], list[tuple[str, int]]]:
        """Recovery in one /proc scan: the running dnsmasq of each active network
        (None: to be started) and the orphans (:meth:`orphans`)."""
        procs = self.processes()
        by_pid = {pid: name for name, pid in procs}
        ino = self._netns_ino()
        adopted: dict[str, int | None] = {}
        for name in active:
            pid = self._pidfile(name)
            ok = pid is not None and by_pid.get(pid) == name and self._in_our_netns(pid, ino)
            adopted[name] = pid if ok else None
        return adopted, [(n, pid) for n, pid in procs if adopted.get(n) != pid]

    def orphans(self, active: set[str] | frozenset[str]) -> list[tuple[str, int]]:
        """Our dnsmasq processes that are not the running dnsmasq of an active
        network: of a network not active, or a second one, or in another namespace."""
        return self.survey(active)[1]

    def stop_orphans(self, active: set[str] | frozenset[str]) -> list[tuple[str, int]]:
        """Stop every orphan (and remove the pid file of a network not active)."""
        found = self.orphans(active)
        for name, pid in found:
            log.info("dnsmasq pid %d of network %s is an orphan: stopping it", pid, name)
            _terminate(pid, 5.0)
            if name not in active:
                try:
                    os.unlink(self.files(name).pid)
                except FileNotFoundError:
                    pass
        return found


def _terminate(pid: int, timeout: float) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    _wait_or_kill(pid, timeout)


def _wait_or_kill(pid: int, timeout: float) -> None:
    if not wait_exit(pid, timeout):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        wait_exit(pid, timeout)
