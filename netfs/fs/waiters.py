"""poll() waiters: which open files wait for a change, bounded per user.

A waiter is the wake-up handle (pyfuse3's PollHandle) of one open file, kept
from the poll() that may wait until the file changes (then it is woken once
and forgotten) or is closed. Waking one costs the daemon a notification and
the waiter's next poll and read, all while the change that woke it is being
announced: the bounds are what one user's waiting can make a change cost
everyone else. Each user but root may have MAX_WAITERS waiters at once, all
such users together MAX_WAITERS_TOTAL (``events`` readers' poll() included).
A poll() beyond that is answered as any other (POLLPRI|POLLERR when the file
changed) but not kept: it is not woken, and sees a change at its next
poll(); the daemon logs it, at most once a minute per user. Root's waiters
are woken first."""

from __future__ import annotations

import logging
import time
from typing import Protocol

from netfs.fs.tree import Path

log = logging.getLogger("netfs.fs")

MAX_WAITERS = 64
MAX_WAITERS_TOTAL = 1024
SAY_EVERY = 60.0  # seconds between two warnings about the same user


class Waker(Protocol):
    """A poll() waiter (pyfuse3's PollHandle)."""

    def notify(self) -> None: ...


class Waiters:
    """The waiters of each file (by path), and how many each user holds."""

    def __init__(self) -> None:
        self._at: dict[Path, dict[int, tuple[Waker, int]]] = {}  # path -> fh -> (waker, uid)
        self._where: dict[int, Path] = {}  # fh -> the path it waits on
        self._held: dict[int, int] = {}  # uid (not root) -> its waiters
        self.total = 0  # waiters of users other than root
        self._said: dict[int, float] = {}  # uid -> when it was last logged

    def add(self, path: Path, fh: int, waker: Waker, uid: int) -> bool:
        """Keep `waker` until `path` changes or `fh` is closed (a new one for
        the same open file replaces the old); False when over the bounds
        (not kept)."""
        self.drop(fh)
        if uid != 0:
            held = self._held.get(uid, 0)
            if held >= MAX_WAITERS or self.total >= MAX_WAITERS_TOTAL:
                self._refused(uid, held)
                return False
            self._held[uid] = held + 1
            self.total += 1
        self._at.setdefault(path, {})[fh] = (waker, uid)
        self._where[fh] = path
        return True

    def drop(self, fh: int) -> None:
        """Open file `fh` waits no more (closed, or waiting anew)."""
        path = self._where.pop(fh, None)
        if path is None:
            return
        waiting = self._at[path]
        _waker, uid = waiting.pop(fh)
        if not waiting:
            del self._at[path]
        self._release(uid)

    def waiting(self, path: Path) -> bool:
        return path in self._at

    def wake(self, path: Path) -> None:
        """Wake every waiter of `path` once (root's first) and forget them."""
        waiting = self._at.pop(path, None)
        if not waiting:
            return
        for fh, (_waker, uid) in waiting.items():
            del self._where[fh]
            self._release(uid)
        for root in (True, False):
            for waker, uid in waiting.values():
                if (uid == 0) is root:
                    try:
                        waker.notify()
                    except Exception as e:  # a dead handle must not stop the notifier
                        log.debug("poll notify failed: %s", e)

    def _release(self, uid: int) -> None:
        if uid == 0:
            return
        self.total -= 1
        held = self._held[uid] - 1
        if held:
            self._held[uid] = held
        else:
            del self._held[uid]

    def _refused(self, uid: int, held: int) -> None:
        now = time.monotonic()
        if now - self._said.get(uid, -SAY_EVERY) < SAY_EVERY:
            return
        self._said[uid] = now
        if held >= MAX_WAITERS:
            why = f"it has {MAX_WAITERS} waiting"
        else:
            why = f"users other than root have {MAX_WAITERS_TOTAL} waiting"
        log.warning(
            "poll: a poll() by uid %d is not kept for a wake-up (%s); it sees a "
            "change at its next poll() (said at most once a minute per user)",
            uid,
            why,
        )
