"""FUSE INTERRUPT for handlers that wait (a blocked read of ``events``).

When a process blocked in a request the daemon has already read gets a
signal, the kernel sends INTERRUPT and, for a fatal signal, waits
uninterruptibly for the answer: a reader killed while blocked stays until
the daemon answers. libfuse marks the interrupted request and calls the
function registered for it with ``fuse_req_interrupt_func``; pyfuse3 (3.5)
registers none and does not pass the request (``fuse_req_t``) to its
handlers.

So the request is found from the waiting task: while a handler is parked,
its task's coroutine chain is pyfuse3's worker, then pyfuse3's
``fuse_read_async`` coroutine, whose closure holds pyfuse3's request
container; the request pointer sits in that container right before the
read's offset and size (both known, and checked). A system task does that
for the reads still parked 50 ms after they parked, in batches (the chain
can only be walked while the handler is suspended; a read answered sooner
needs nothing), then registers a callback that cancels the handler's cancel
scope: the handler answers EINTR at once, whichever process was reading (an
interrupt that came before the registration is recorded by libfuse, which
calls back as soon as it is registered). Nothing runs while nothing parks. When the request cannot be found (another
pyfuse3 build), a waiting reader is only released by an event, its file's
release or the daemon's end, and this is logged once.

No pyfuse3 import here; libfuse is reached through ctypes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass

import trio

log = logging.getLogger("netfs.fs")

_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p)
_U64 = ctypes.c_uint64
_STAT_SIZE = 144  # struct stat on 64-bit Linux: between `size` and `fh`
REGISTER_DELAY = 0.05  # s: parked reads are registered in batches


@dataclass(eq=False)
class Waiter:
    """One parked handler: its cancel scope, and whether it still waits (its
    request is answered, and freed by libfuse, right after it stops)."""

    key: int
    scope: trio.CancelScope
    task: trio.lowlevel.Task
    off: int
    size: int
    fh: int
    waiting: bool = True


class Interrupts:
    """Cancel a parked handler when the kernel interrupts its request."""

    def __init__(self) -> None:
        self._waiters: dict[int, Waiter] = {}
        self._keys = itertools.count(1)
        self._lib: ctypes.CDLL | None = None
        self._register: Callable[..., None] | None = None
        self._failed = False
        self._warned = False
        self._pending: list[Waiter] = []
        self._more = trio.Event()
        self._running = False
        # kept alive as long as libfuse may call it
        self._callback = _CALLBACK(self._interrupted)

    def _load(self) -> bool:
        if self._register is not None:
            return True
        if self._failed:
            return False
        try:
            lib = ctypes.CDLL(ctypes.util.find_library("fuse3") or "libfuse3.so.3")
            fn = lib.fuse_req_interrupt_func
            fn.argtypes = [ctypes.c_void_p, _CALLBACK, ctypes.c_void_p]
            fn.restype = None
        except (OSError, AttributeError) as e:
            self._failed = True
            log.warning(
                "FUSE interrupts unavailable (%s): a killed reader blocked on events "
                "waits for the next event",
                e,
            )
            return False
        self._lib, self._register = lib, fn
        return True

    def park(self, scope: trio.CancelScope, off: int, size: int, fh: int) -> Waiter:
        """The current task is about to wait inside `scope` for the read
        (`fh`, `off`, `size`): cancel `scope` if the kernel interrupts it.
        Call :meth:`unpark` when the wait is over."""
        w = Waiter(next(self._keys), scope, trio.lowlevel.current_task(), off, size, fh)
        self._waiters[w.key] = w
        if self._load():
            self._pending.append(w)
            if not self._running:
                self._running = True
                trio.lowlevel.spawn_system_task(self._registrar, name="netfs-interrupts")
            self._more.set()
        return w

    def unpark(self, w: Waiter) -> None:
        w.waiting = False
        self._waiters.pop(w.key, None)

    async def _registrar(self) -> None:
        """Register the parked reads, in batches: REGISTER_DELAY after the
        first of a batch parked, those still waiting (a read answered by
        then needs nothing; one interrupted meanwhile is marked by libfuse,
        and the registration calls back at once). Waits on an event while
        nothing is parked: no periodic work."""
        try:
            while True:
                await self._more.wait()
                self._more = trio.Event()
                await trio.sleep(REGISTER_DELAY)
                batch, self._pending = self._pending, []
                for w in batch:
                    self._watch(w)
        finally:
            self._running = False

    def _watch(self, w: Waiter) -> None:
        # runs while the handler is suspended (or already done: then its
        # request may be freed, and is not touched)
        if not w.waiting or self._register is None:
            return
        try:
            req = find_request(w.task, w.off, w.size, w.fh)
        except Exception as e:  # introspection must never take the daemon down
            log.debug("interrupts: %s", e)
            req = None
        if req is None:
            if not self._warned:
                self._warned = True
                log.warning(
                    "FUSE interrupts unavailable with this pyfuse3: a killed reader "
                    "blocked on events waits for the next event"
                )
            return
        try:
            self._register(req, self._callback, w.key)
        except Exception as e:  # as above
            log.debug("interrupts: %s", e)

    def _interrupted(self, _req: int | None, data: int | None) -> None:
        """libfuse's callback (inside pyfuse3's processing of the INTERRUPT,
        in the trio thread, with the request's lock held: only cancel)."""
        try:
            w = self._waiters.get(data or 0)
            if w is not None and w.waiting:
                w.scope.cancel()
        except Exception:  # an exception must not cross into C
            pass


def _chain(task: trio.lowlevel.Task) -> list[object]:
    """The coroutines of a suspended task, outermost first (Cython
    coroutines show the one they await among their referents)."""
    out: list[object] = []
    seen: set[int] = set()
    coro: object = task.coro
    while coro is not None and id(coro) not in seen and len(out) < 64:
        seen.add(id(coro))
        out.append(coro)
        nxt = getattr(coro, "cr_await", None)
        if nxt is None:
            for r in gc.get_referents(coro):
                if r is not coro and hasattr(r, "send") and hasattr(r, "throw"):
                    nxt = r
                    break
        coro = nxt
    return out


def find_request(task: trio.lowlevel.Task, off: int, size: int, fh: int) -> int | None:
    """The fuse_req_t of the read the suspended `task` is handling, or None."""
    for coro in _chain(task):
        if getattr(coro, "__name__", "") != "fuse_read_async":
            continue
        for scope in gc.get_referents(coro):
            for obj in gc.get_referents(scope):
                if type(obj).__name__ != "_Container":
                    continue
                base = id(obj)
                end = type(obj).__basicsize__
                # req, flags, mode, off, size, stat, fh (pyfuse3's _Container)
                for k in range(24, end - 16 - _STAT_SIZE - 8 + 1, 8):
                    if (
                        _U64.from_address(base + k).value == off
                        and _U64.from_address(base + k + 8).value == size
                        and _U64.from_address(base + k + 16 + _STAT_SIZE).value == fh
                    ):
                        req = ctypes.c_void_p.from_address(base + k - 16).value
                        return req or None
    return None
