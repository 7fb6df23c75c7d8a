"""Start recipes: a network's kernel side as one ordered list of steps.

Modelled on libvirt's networkStartNetworkVirtual: one linear recipe, one
undo path. A :class:`Step` has a ``start``, an optional ``stop`` (its undo)
and an optional ``repair`` (give a running network back what this step made,
used by recovery and live reconciliation). :class:`Recipe` runs the steps in
order; when one fails (or the start is cancelled) the ``stop`` of every step
already done runs in reverse order, and the error is raised again. Stopping
a network runs every ``stop`` in reverse order (a ``concurrent`` step's
beside the ones after it: ``nft -f`` of the rules' removal while the bridge
is deleted).

Every step gets a :class:`StepContext` built by the core: the live
definition, the kernel of the managed namespace (:class:`NetlinkOps`), the
network's own run directory in the state directory, the namespace's name,
ways to run a program inside the namespace (:mod:`netfs.nsexec`) and to
write a sysctl there, the shared program services
(:class:`netfs.subdrivers.services.Services`) and a way to report a repair.

``batched`` steps only make netlink requests (and queries): they are given a
batch whose changes reach the kernel in one submission with those of the
batched steps around them; a step that is not batched (a program, a file)
runs once everything before it is in the kernel. The recipe's checks are
recorded in the batch too, ahead of every change. A step whose ``needed``
says it has nothing to do for this network (no rules in mode open, no
dnsmasq without DHCP and DNS) is passed over: it neither runs nor sends the
batch early. A ``concurrent`` step (a program that needs nothing of the
kernel, e.g. ``nft -f``) is started once what comes before it is in the
kernel, and runs beside the steps after it; a step
that names it in ``waits`` starts once it is done, and the recipe ends
(or, if anything failed, undoes) only once it is done. Its failure is
raised there, never into the steps beside it, so the undo path stays one:
the stops of every step that completed, in reverse recipe order.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from netfs import nsexec

if TYPE_CHECKING:
    from netfs.model.network import NetworkDef
    from netfs.netlink import Batch, NetlinkOps
    from netfs.subdrivers.services import Services

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepContext:
    """What a step may use; built by the core for one network."""

    net: NetworkDef  # the live definition
    nl: NetlinkOps  # the managed namespace's kernel (a batch inside batched steps)
    run_dir: Path  # the network's own directory for runtime files (made on demand)
    netns: str | None  # the managed namespace (None: the daemon's own)
    # the programs' side (dnsmasq runner, firewall registry); None: no programs
    services: Services | None = None
    # a repair tells what it put back ("address", "dnsmasq", ...): one event each
    on_repair: Callable[[str], None] | None = field(default=None, compare=False)
    # the submission a start's batched requests join (the core put the
    # staging of the status file first in it); None: a batch of its own
    batch: Batch | None = None

    def repaired(self, what: str) -> None:
        if self.on_repair is not None:
            self.on_repair(what)

    def using(self, nl: NetlinkOps) -> StepContext:
        """The same context whose kernel is `nl` (a batch)."""
        return self._with(nl, self.batch)

    def joining(self, batch: Batch) -> StepContext:
        """The same context whose batched requests join `batch`."""
        return self._with(self.nl, batch)

    def _with(self, nl: NetlinkOps, batch: Batch | None) -> StepContext:
        # every field, by hand (dataclasses.replace costs ~10 µs on the path
        # of every start); tests/test_recipe.py checks that none is missed
        return StepContext(
            self.net, nl, self.run_dir, self.netns, self.services, self.on_repair, batch
        )

    def ensure_run_dir(self) -> Path:
        """The run directory, created (mode 0700) if missing."""
        self.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        return self.run_dir

    async def run(
        self,
        argv: Sequence[str],
        *,
        stdin: bytes | None = None,
        timeout: float = 30.0,
        check: bool = True,
    ) -> nsexec.Completed:
        """Run a program inside the namespace (see :func:`netfs.nsexec.run`)."""
        return await nsexec.run(self.netns, argv, stdin=stdin, timeout=timeout, check=check)

    async def sysctl(self, key: str, value: str, *, missing_ok: bool = False) -> None:
        """Write a sysctl of the namespace (``net.ipv4.ip_forward``)."""
        await self.nl.write_sysctl(key, value, missing_ok=missing_ok)


StepFn = Callable[[StepContext], Awaitable[None]]


@dataclass(frozen=True)
class Step:
    name: str
    start: StepFn | None  # None: a step of the stop alone
    stop: StepFn | None = None  # undo of start (network stop, or a later step failed)
    repair: StepFn | None = None  # recovery / reconciliation of a running network
    batched: bool = False  # netlink requests only: may be sent with its neighbours
    # False: nothing to do for this network (its start is passed over)
    needed: Callable[[StepContext], bool] | None = None
    concurrent: bool = False  # runs beside the steps after it
    waits: tuple[str, ...] = ()  # concurrent steps to be done before this one


class _Beside:
    """A concurrent step under way: its outcome, kept (never raised into
    the steps beside it) until the recipe joins it."""

    def __init__(self, step: Step) -> None:
        self.step = step
        self.done = trio.Event()
        self.error: BaseException | None = None

    async def run(self, ctx: StepContext) -> None:
        assert self.step.start is not None
        try:
            await self.step.start(ctx)
        except BaseException as e:  # kept for the join: the undo path is the recipe's
            self.error = e
        finally:
            self.done.set()

    async def join(self) -> None:
        """Wait for it (shielded: a started program is waited for, never
        left behind); raise its failure."""
        with trio.CancelScope(shield=True):
            await self.done.wait()
        if self.error is not None:
            raise self.error


class Recipe:
    """Checks (they change nothing), then an ordered list of steps with one
    undo path. The checks are given the start's batch: a check that asks
    the kernel (``check_routes``) goes in the same submission as the first
    changes, before them, and a refusal stops the submission there."""

    def __init__(self, steps: Sequence[Step], checks: Sequence[StepFn] = ()) -> None:
        self.checks: list[StepFn] = list(checks)
        self.steps: list[Step] = list(steps)

    def names(self) -> list[str]:
        return [s.name for s in self.steps]

    def insert(self, step: Step, *, before: str | None = None, after: str | None = None) -> None:
        """Add a step before or after a named one (or at the end)."""
        names = self.names()
        if before is not None:
            self.steps.insert(names.index(before), step)
        elif after is not None:
            self.steps.insert(names.index(after) + 1, step)
        else:
            self.steps.append(step)

    async def start(self, ctx: StepContext) -> None:
        batch = ctx.batch if ctx.batch is not None else ctx.nl.batch()
        batched = ctx.using(batch)
        ends: dict[int, int] = {}  # batched step -> position in the batch after it
        finished: set[int] = set()  # the other steps that returned
        beside: dict[str, _Beside] = {}
        failure: BaseException | None = None
        # the nursery holds the concurrent steps; a failure is raised once
        # it is closed (as itself, not wrapped in an exception group). None
        # when no concurrent step runs for this network: closing a nursery
        # is a tick of the loop on the path of every start
        runs = [self._runs(s, ctx) for s in self.steps]
        beside_any = any(s.concurrent and r for s, r in zip(self.steps, runs, strict=True))
        async with trio.open_nursery() if beside_any else contextlib.nullcontext() as nursery:
            try:
                for check in self.checks:
                    await check(batched)
                for i, step in enumerate(self.steps):
                    if not runs[i]:
                        # nothing to do now; its stop stays on the undo path
                        # (dnsmasq-exit waits there for a dnsmasq told to stop)
                        finished.add(i)
                        continue
                    assert step.start is not None  # (_runs)
                    for name in step.waits:
                        if name in beside:
                            if not beside[name].done.is_set():
                                # what is batched needs nothing of it: sent
                                # now, not after the program
                                await batch.flush()
                            await beside[name].join()
                    if step.batched:
                        await step.start(batched)
                        ends[i] = len(batch)
                    elif step.concurrent:
                        assert nursery is not None
                        await batch.flush()  # the checks passed, what it follows is made
                        beside[step.name] = b = _Beside(step)
                        nursery.start_soon(b.run, ctx)
                    else:
                        await batch.flush()
                        await step.start(ctx)
                        finished.add(i)
                await batch.flush()
                for b in beside.values():
                    await b.join()
            except BaseException as e:
                failure = e
                # what the steps before the failure asked for happens, as it
                # would have without the batch; the concurrent ones end;
                # then all of it is undone, also on cancellation: never
                # leave a half-made network behind
                with trio.CancelScope(shield=True):
                    with contextlib.suppress(Exception):
                        await batch.flush()
                    for b in beside.values():
                        with contextlib.suppress(BaseException):
                            await b.join()
                    ok = {b.step.name for b in beside.values() if b.error is None}
                    done = [
                        s
                        for i, s in enumerate(self.steps)
                        if i in finished
                        or ends.get(i, batch.completed + 1) <= batch.completed
                        or (s.concurrent and s.name in ok)
                    ]
                    await self._undo(ctx, done, raise_first=False)
        if failure is not None:
            raise failure

    @staticmethod
    def _runs(step: Step, ctx: StepContext) -> bool:
        """Does the step start something for this network?"""
        return step.start is not None and (step.needed is None or step.needed(ctx))

    async def stop(self, ctx: StepContext) -> None:
        """Every step's stop in reverse order; the first failure is raised
        once all of them ran."""
        await self._undo(ctx, self.steps, raise_first=True)

    async def repair(self, ctx: StepContext) -> None:
        for step in self.steps:
            if step.repair is not None:
                await step.repair(ctx)

    async def _undo(self, ctx: StepContext, done: list[Step], *, raise_first: bool) -> None:
        """The stops of `done` in reverse order; a concurrent step's stop
        runs beside the stops after it (as its start ran beside the steps
        after it), and all have ended when this returns."""
        failures: list[Exception] = []

        async def undo(step: Step, stop: StepFn) -> None:
            try:
                await stop(ctx)
            except Exception as e:  # keep going: the rest must still be undone
                log.warning("network %s: undoing %s failed: %s", ctx.net.name, step.name, e)
                failures.append(e)

        async with trio.open_nursery() as nursery:
            for step in reversed(done):
                if step.stop is None:
                    continue
                if step.concurrent:
                    nursery.start_soon(undo, step, step.stop)
                else:
                    await undo(step, step.stop)
        if raise_first and failures:
            raise failures[0]
