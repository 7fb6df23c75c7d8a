"""Start recipes: a network's kernel side as one ordered list of steps.

Modelled on libvirt's networkStartNetworkVirtual: one linear recipe, one
undo path. A :class:`Step` has a ``start``, an optional ``stop`` (its undo)
and an optional ``repair`` (give a running network back what this step made,
used by recovery and live reconciliation). :class:`Recipe` runs the steps in
order; when one fails (or the start is cancelled) the ``stop`` of every step
already done runs in reverse order, and the error is raised again. Stopping
a network runs every ``stop`` in reverse order.

Every step gets a :class:`StepContext` built by the core: the live
definition, the kernel of the managed namespace (:class:`NetlinkOps`), the
network's own run directory in the state directory, the namespace's name,
ways to run a program inside the namespace (:mod:`netfs.nsexec`) and to
write a sysctl there, the shared program services
(:class:`netfs.subdrivers.services.Services`) and a way to report a repair.

``batched`` steps only make netlink requests (and queries): they are given a
batch whose changes reach the kernel in one submission with those of the
batched steps around them; a step that is not batched (a program, a file)
runs once everything before it is in the kernel.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from netfs import nsexec

if TYPE_CHECKING:
    from netfs.model.network import NetworkDef
    from netfs.netlink import NetlinkOps
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

    def repaired(self, what: str) -> None:
        if self.on_repair is not None:
            self.on_repair(what)

    def using(self, nl: NetlinkOps) -> StepContext:
        return dataclasses.replace(self, nl=nl)

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
    start: StepFn
    stop: StepFn | None = None  # undo of start (network stop, or a later step failed)
    repair: StepFn | None = None  # recovery / reconciliation of a running network
    batched: bool = False  # netlink requests only: may be sent with its neighbours


class Recipe:
    """Checks (they change nothing: run before the core records its start
    intent, and at the same time), then an ordered list of steps with one
    undo path."""

    def __init__(self, steps: Sequence[Step], checks: Sequence[StepFn] = ()) -> None:
        self.checks: list[StepFn] = list(checks)
        self.steps: list[Step] = list(steps)

    async def check(self, ctx: StepContext) -> None:
        for check in self.checks:
            await check(ctx)

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
        batch = ctx.nl.batch()
        batched = ctx.using(batch)
        ends: list[int] = []  # position in the batch after each step
        try:
            for step in self.steps:
                if step.batched:
                    await step.start(batched)
                else:
                    await batch.flush()
                    await step.start(ctx)
                ends.append(len(batch))
            await batch.flush()
        except BaseException:
            # what the steps before the failure asked for happens, as it
            # would have without the batch; then all of it is undone, also
            # on cancellation: never leave a half-made network behind
            with trio.CancelScope(shield=True):
                with contextlib.suppress(Exception):
                    await batch.flush()
                # done: the steps that returned and whose requests all completed
                done = [
                    s for s, end in zip(self.steps, ends, strict=False) if end <= batch.completed
                ]
                await self._undo(ctx, done, raise_first=False)
            raise

    async def stop(self, ctx: StepContext) -> None:
        """Every step's stop in reverse order; the first failure is raised
        once all of them ran."""
        await self._undo(ctx, self.steps, raise_first=True)

    async def repair(self, ctx: StepContext) -> None:
        for step in self.steps:
            if step.repair is not None:
                await step.repair(ctx)

    async def _undo(self, ctx: StepContext, done: list[Step], *, raise_first: bool) -> None:
        first: Exception | None = None
        for step in reversed(done):
            if step.stop is None:
                continue
            try:
                await step.stop(ctx)
            except Exception as e:  # keep going: the rest must still be undone
                log.warning("network %s: undoing %s failed: %s", ctx.net.name, step.name, e)
                first = first or e
        if raise_first and first is not None:
            raise first
