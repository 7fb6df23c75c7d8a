"""The daemon behind `netfs mount`: mount, detach, serve, stop cleanly.

Order of things: build the driver (no threads yet), mount (pyfuse3.init, no
threads either), fork unless in the foreground (mount(8) waits for its
helper, so the parent stays until the child says it is ready, then exits 0,
or prints the child's error and exits 1), then in the child: open netlink
(its worker thread starts here, after the fork), start the driver (recovery,
autostart), run the link monitor, the FUSE main loop and the notifier in one
nursery. SIGTERM and SIGINT unmount and exit 0; SIGHUP re-reads the config
directory without unmounting. The garbage collector is off from the start
until the driver has started; then everything made so far is frozen (kept
out of later full scans) and collection goes on as usual.

Before mounting, a mount left at the mount point by a killed daemon is
cleared without touching the mount point (netfs.fs.mounts.cleanup_stale): its FUSE
connection is aborted, which also lets a killed daemon that was stuck on one
of its own requests through the mount exit, then it is lazily unmounted. A
mount is taken over only when the processes holding its FUSE connection are
gone or dying, never because its daemon is slow to answer (busy or stopped):
then `netfs mount` fails naming the daemon's pid.

Logs go to stderr, one line per record, with ``<N>`` syslog priority prefixes
when stderr is the journal (JOURNAL_STREAM matches stderr's device and
inode), or to --log-file with timestamps. A detached daemon keeps none of its
caller's descriptors: stdin and stdout become /dev/null, and stderr too unless
it is the journal or a log file is given; every other descriptor it inherited
(recorded first thing, so none of its own) is closed.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import grp
import logging
import logging.handlers
import os
import queue
import re
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn, TextIO

import trio

from netfs import guard
from netfs.errors import NetfsError
from netfs.fs import mounts
from netfs.state import DEFAULT_CONFIG_DIR, DEFAULT_STATE_DIR

if TYPE_CHECKING:  # the adapter imports pyfuse3: loaded by run() only
    from netfs.core import Driver
    from netfs.fs.ops import NetfsOperations
    from netfs.netlink import Netlink

log = logging.getLogger("netfs")

# -o options that only mean something to mount(8), fstab or systemd
IGNORED_OPTIONS = frozenset(
    {"defaults", "auto", "noauto", "user", "users", "nouser", "owner", "_netdev", "nofail"}
)
IGNORED_PREFIXES = ("x-", "comment=")
OWN_OPTIONS = ("config_dir", "state_dir", "netns", "group", "log_file")


@dataclass
class MountConfig:
    mountpoint: str
    config_dir: str = DEFAULT_CONFIG_DIR
    state_dir: str = DEFAULT_STATE_DIR
    netns: str | None = None
    group: str | None = None
    log_file: str | None = None
    foreground: bool = False
    fuse_options: list[str] = field(default_factory=list)


def apply_options(cfg: MountConfig, option_lists: list[str] | None) -> None:
    """Consume our own -o options (and mount(8)'s), keep the rest for libfuse."""
    for opts in option_lists or []:
        for opt in opts.split(","):
            opt = opt.strip()
            if not opt:
                continue
            key, eq, value = opt.partition("=")
            if eq and key in OWN_OPTIONS:
                setattr(cfg, key, value or None)
            elif opt == "group" or opt in IGNORED_OPTIONS or opt.startswith(IGNORED_PREFIXES):
                continue
            elif opt in ("allow_other", "default_permissions"):
                continue  # always on
            else:
                cfg.fuse_options.append(opt)


# what a terminal would act on: C0 (the newline is a space), DEL and C1
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def _hex(m: re.Match[str]) -> str:
    return f"\\x{ord(m.group()):02x}"


class _Formatter(logging.Formatter):
    PRIORITY = {
        logging.CRITICAL: 2,
        logging.ERROR: 3,
        logging.WARNING: 4,
        logging.INFO: 6,
        logging.DEBUG: 7,
    }

    def __init__(self, journal: bool, stamps: bool = False) -> None:
        super().__init__()
        self.journal = journal
        self.stamps = stamps

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if record.exc_info:
            msg += " | " + self.formatException(record.exc_info).replace("\n", " | ")
        msg = _CONTROL.sub(_hex, msg.replace("\n", " "))
        if self.journal:
            return f"<{self.PRIORITY.get(record.levelno, 6)}>{msg}"
        line = f"netfs[{os.getpid()}]: {record.levelname.lower()}: {msg}"
        if self.stamps:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(record.created))
            return f"{stamp}.{int(record.msecs):03d} {line}"
        return line


def stderr_is_journal() -> bool:
    """Is stderr a journald stream? (JOURNAL_STREAM names its dev:ino; a process
    that inherited the variable but not the stream must not believe it.)"""
    want = os.environ.get("JOURNAL_STREAM", "")
    if not want:
        return False
    try:
        st = os.fstat(2)
    except OSError:
        return False
    return want == f"{st.st_dev}:{st.st_ino}"


def setup_logging(stream: TextIO | None = None) -> None:
    """Log to `stream` (a log file: timestamped lines) or to stderr (with
    syslog priority prefixes when stderr is the journal)."""
    if stream is not None:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(_Formatter(journal=False, stamps=True))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_Formatter(journal=stderr_is_journal()))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    level = os.environ.get("NETFS_LOG", "INFO").upper()
    root.setLevel(getattr(logging, level, logging.INFO))
    logging.getLogger("pyfuse3").setLevel(logging.WARNING)
    logging.getLogger("pyroute2").setLevel(logging.WARNING)


LOG_BACKLOG = 10_000  # log records waiting for the log's thread, at most
LOG_STOP_WAIT = 2.0  # longest wait at exit for the lines still waiting, seconds


class _Backlog(logging.handlers.QueueHandler):
    """Records handed to the log's own thread (see :func:`log_in_background`);
    past LOG_BACKLOG waiting ones they are counted and dropped, and the next
    one that fits says how many."""

    dropped = 0

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        # the text now (its arguments may change); the exception's lines
        # are formatted by the writer, as they were before
        record.msg = record.getMessage()
        record.args = None
        return record

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            if self.dropped:
                note = logging.makeLogRecord(
                    {
                        "name": "netfs",
                        "levelno": logging.WARNING,
                        "levelname": "WARNING",
                        "msg": f"{self.dropped} log lines dropped: the log is not written fast enough",
                    }
                )
                self.queue.put_nowait(note)
                self.dropped = 0
            self.queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1


def log_in_background() -> Callable[[], None]:
    """From here on the log's lines are written by a thread of their own:
    a line costs the daemon's loop the making of its record, not a write
    to the log file, stderr or the journal (~0.09 ms each, measured on the
    path of a start: the event line). Returns what writes the lines still
    waiting and ends the thread, waiting for it at most LOG_STOP_WAIT (a
    standard error nobody reads must not keep the daemon from exiting)."""
    root = logging.getLogger()
    writers = root.handlers[:]
    backlog: queue.Queue[logging.LogRecord | None] = queue.Queue(LOG_BACKLOG)

    def write() -> None:
        while (record := backlog.get()) is not None:
            for handler in writers:
                handler.handle(record)

    thread = threading.Thread(target=write, name="netfs-log", daemon=True)
    root.handlers[:] = [_Backlog(backlog)]
    thread.start()

    def stop() -> None:
        root.handlers[:] = writers
        with contextlib.suppress(queue.Full):
            backlog.put_nowait(None)
        thread.join(LOG_STOP_WAIT)

    return stop


def detach_stdio(log_fd: int | None) -> None:
    """A detached daemon must not hold its caller's pipes (`mount ... | cat`
    and subprocess.run(capture_output=True) would wait for it forever): stdin
    and stdout become /dev/null; stderr becomes the log file when one is
    given, else stays only if it is the journal, else /dev/null too."""
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    if log_fd is not None:
        os.dup2(log_fd, 2)
    elif not stderr_is_journal():
        os.dup2(devnull, 2)
    os.close(devnull)


def caller_fds() -> dict[int, tuple[int, int]]:
    """The descriptors above stderr open now (what the caller left us, when
    called first thing), each with its file's (st_dev, st_ino)."""
    try:
        candidates = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:  # no /proc: try them all
        candidates = list(range(3, os.sysconf("SC_OPEN_MAX")))
    found: dict[int, tuple[int, int]] = {}
    for fd in candidates:
        if fd < 3:
            continue
        try:
            st = os.fstat(fd)
        except OSError:  # the listing's own descriptor, closed by now
            continue
        found[fd] = (st.st_dev, st.st_ino)
    return found


def close_caller_fds(inherited: dict[int, tuple[int, int]], keep: set[int]) -> None:
    """A detached daemon must not keep what its caller left open (a pipe the
    caller's shell holds on fd 9 would never see EOF, a lock taken with
    flock(1) would never be released): close each inherited descriptor that
    still refers to the same file, except those in `keep`."""
    for fd, ident in inherited.items():
        if fd in keep:
            continue
        try:
            st = os.fstat(fd)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == ident:
            os.close(fd)


def _gid(group: str | None) -> int | None:
    if group is None:
        return None
    try:
        return int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
    except KeyError:
        raise NetfsError(errno.EINVAL, f"unknown group '{group}'") from None


async def _handle_signals(
    driver: Driver,
    ops: NetfsOperations,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        task_status.started()
        async for sig in signals:
            if sig == signal.SIGHUP:
                log.info("SIGHUP: re-reading the configuration directory")
                try:
                    await driver.reload()
                except NetfsError as e:
                    log.error("reload: %s", e.message)
                ops.request_reconcile_all()
            else:
                log.info("%s: unmounting", signal.Signals(sig).name)
                from netfs.fs.ops import terminate

                terminate(ops)
                return


async def _serve(
    cfg: MountConfig,
    nl: Netlink,
    driver: Driver,
    ops: NetfsOperations,
    ready: Callable[[str | None], None],
    stopping: Callable[[], None] = lambda: None,
) -> None:
    from netfs.fs.ops import serve as fs_serve

    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(_handle_signals, driver, ops)
            await nl.open()
            await driver.startup()
            # what start-up loaded lives as long as the daemon: out of the
            # garbage collector's full scans from now on (they would pause
            # requests); no collection first (the collector was off since
            # run() began: start-up makes next to no cyclic garbage, and a
            # full scan of 200 networks' state held the mount up ~30 ms)
            gc.freeze()
            gc.enable()
            await nursery.start(driver.run_monitor)

            async def serve(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
                try:
                    await fs_serve(ops, task_status=task_status)
                finally:
                    stopping()  # a new daemon may wait for us from now on
                    nursery.cancel_scope.cancel()

            await nursery.start(serve)
            log.info(
                "serving %s (networks: %d, netns: %s)",
                cfg.mountpoint,
                len(driver.names()),
                cfg.netns or "own",
            )
            ready(None)
    finally:
        with trio.CancelScope(shield=True):
            try:
                await nl.close()
            except Exception as e:  # closing must not hide the real error
                log.debug("netlink close: %s", e)


def _report(fd: int | None, message: str | None) -> None:
    if fd is None:
        return
    try:
        os.write(fd, b"ok\n" if message is None else f"error {message}\n".encode())
        os.close(fd)
    except OSError:
        pass


def _single(group: BaseExceptionGroup) -> BaseException:
    """The innermost exception of a group holding exactly one, else the group."""
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def run(cfg: MountConfig) -> int:
    """`netfs mount`: returns the exit status when it fails before serving;
    once it served, it ends the process (see :func:`_exit`)."""
    # no garbage collection until start-up is over (see _serve): the imports
    # and the state of every network are long-lived, and each full scan of
    # them (~20-30 ms with 200 networks) delayed the mount's first answer
    gc.disable()
    inherited = caller_fds()
    setup_logging()
    from netfs.core import Driver
    from netfs.fs import ops as fs
    from netfs.netlink import Netlink

    try:
        gid = _gid(cfg.group)
    except NetfsError as e:
        print(f"netfs: {e.message}", file=sys.stderr)
        return 1
    # umask, trusted directories, one daemon per state directory: before
    # anything is written or the mount point is touched
    try:
        lock_fd = guard.prepare(Path(cfg.config_dir), Path(cfg.state_dir))
    except guard.Refused as e:
        print(f"netfs: {e}", file=sys.stderr)
        return 1
    log_fd: int | None = None
    if cfg.log_file:
        try:
            # its directory checked, never through a link, never a pipe
            log_fd = guard.open_log(cfg.log_file)
        except guard.Refused as e:
            print(f"netfs: {e}", file=sys.stderr)
            return 1
        # from here on nothing is logged on stderr, the stale-mount warning
        # below included (line-buffered: nothing is pending at the fork)
        setup_logging(open(log_fd, "a", buffering=1, closefd=False))
    mountpoint = os.path.abspath(cfg.mountpoint)
    # before anything stats the mount point: a mount left by a killed daemon
    # may hang any request to it
    try:
        mounts.cleanup_stale(mountpoint)
    except mounts.MountBusy as e:
        print(f"netfs: {e}", file=sys.stderr)
        return 1
    if not os.path.isdir(mountpoint):
        print(f"netfs: {mountpoint}: not a directory", file=sys.stderr)
        return 1
    nl = Netlink(cfg.netns)
    driver = Driver(Path(cfg.config_dir), Path(cfg.state_dir), nl)
    ops = fs.NetfsOperations(driver, mountpoint, gid=gid)
    try:
        fs.mount(mountpoint, ops, cfg.fuse_options)
    except (RuntimeError, OSError) as e:
        print(f"netfs: cannot mount {mountpoint}: {e}", file=sys.stderr)
        return 1

    ready_fd: int | None = None
    if not cfg.foreground:
        r, w = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid:
            os.close(w)
            with os.fdopen(r, "rb") as f:
                answer = f.read().decode(errors="replace").strip()
            if answer == "ok":
                os._exit(0)
            if answer.startswith("error "):
                print(f"netfs: {answer[6:]}", file=sys.stderr)
            else:
                print("netfs: the daemon exited before it was ready", file=sys.stderr)
            sys.stderr.flush()
            os._exit(1)
        os.close(r)
        guard.record_pid(lock_fd)  # the lock is this process's now
        os.setsid()
        detach_stdio(log_fd)
        close_caller_fds(inherited, {w} | ({log_fd} if log_fd is not None else set()))
        ready_fd = w

    state = {"ready": False}

    def ready(message: str | None) -> None:
        state["ready"] = message is None
        _report(ready_fd, message)

    status = 0
    stop_log = log_in_background()  # after the fork: the thread is this process's
    try:
        try:
            trio.run(_serve, cfg, nl, driver, ops, ready, lambda: guard.mark_exiting(lock_fd))
        except BaseExceptionGroup as group:
            # a nursery wraps the one error that stopped it: report that error
            raise _single(group) from None
    except NetfsError as e:
        log.error("%s", e.message)
        if not state["ready"]:
            _report(ready_fd, e.message)
        status = 1
    except BaseException as e:  # report, unmount, then fail
        if isinstance(e, KeyboardInterrupt):
            status = 0
        else:
            log.exception("daemon failed")
            if not state["ready"]:
                _report(ready_fd, str(e) or type(e).__name__)
            status = 1
    finally:
        try:
            fs.close(unmount=not ops.unmounted)
        except Exception as e:
            log.debug("close: %s", e)
    if status == 0:
        log.info("unmounted %s", mountpoint)
    stop_log()
    _exit(status, lock_fd)


def _exit(status: int, lock_fd: int) -> NoReturn:
    """End the process now that the mount is gone: everything acknowledged
    is on disk, so nothing is left to do but let go of the state directory.
    The interpreter's own teardown (freeing the frozen start-up heap, module
    by module; 15-50 ms measured, more on a loaded machine) is skipped: the
    lock would be held all that time after umount(8) returned."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os.close(lock_fd)  # the next daemon may start now
    os._exit(status)
