"""One dedicated thread that runs blocking calls for trio, one at a time, in order.

Both the state store's file writes (the core's state thread) and the netlink
adapter (which enters a network namespace first) use it. A call is handed to
the thread through a queue and the waiting trio task is woken with
``TrioToken.run_sync_soon``: a hop costs a queue put and one wake-up, a
fraction of ``trio.to_thread.run_sync`` (measured ~60 µs against ~300 µs).

A call, once submitted, is not cancellable: the caller sees a pending
cancellation at its next checkpoint, so a blocking change (a kernel request,
an fsync'ed write) is never half-known.

With ``idle`` set, the thread is started on demand and ends after ``idle``
seconds without work (an owner then needs no close); with ``idle=None`` it
runs from the first call until :meth:`Worker.close` (the netlink adapter: the
thread is the one inside the namespace and owns the sockets it opened).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar, TypeVarTuple

import outcome
import trio

log = logging.getLogger(__name__)

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

_Job = tuple[Callable[..., Any], tuple[Any, ...], Callable[[outcome.Outcome[Any]], None]]


class Worker:
    """A thread fed by a queue; :meth:`call` runs a function in it from trio."""

    def __init__(self, name: str, *, idle: float | None = None) -> None:
        self.name = name
        self.idle = idle
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None

    async def call(self, fn: Callable[[*Ts], T], *args: *Ts) -> T:
        """Run ``fn(*args)`` in the thread; return (or raise) its result."""
        await trio.lowlevel.checkpoint_if_cancelled()
        task = trio.lowlevel.current_task()
        token = trio.lowlevel.current_trio_token()

        def done(result: outcome.Outcome[Any]) -> None:
            token.run_sync_soon(trio.lowlevel.reschedule, task, result)

        self._put((fn, args, done))

        def abort(_raise_cancel: Any) -> trio.lowlevel.Abort:
            return trio.lowlevel.Abort.FAILED  # the call is under way: wait for it

        result: T = await trio.lowlevel.wait_task_rescheduled(abort)
        return result

    def _put(self, job: _Job) -> None:
        with self._lock:  # the idle thread checks the queue under it before it ends
            self._jobs.put(job)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
                self._thread.start()

    async def close(self) -> None:
        """End the thread after the calls already submitted (waits for it)."""
        with self._lock:
            thread, self._thread = self._thread, None
            if thread is None:
                return
            self._jobs.put(None)
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(thread.join)

    def _loop(self) -> None:
        while True:
            try:
                job = self._jobs.get(timeout=self.idle)
            except queue.Empty:
                with self._lock:  # a submitter holds it while it puts a job
                    if self._jobs.empty():
                        self._thread = None
                        return
                continue
            if job is None:
                return
            fn, args, done = job
            result = outcome.capture(fn, *args)
            try:
                done(result)
            except trio.RunFinishedError:  # the caller's trio run is gone
                log.warning("%s: result dropped: trio run finished", self.name)
