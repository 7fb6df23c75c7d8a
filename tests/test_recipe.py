"""The start recipe's order, batching, concurrency and undo path, without a
kernel (pure tier: a recording netlink stand-in)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest
import trio

from netfs.errors import NetfsError
from netfs.model.network import parse_network
from netfs.netlink import NetlinkOps
from netfs.subdrivers.steps import Recipe, Step, StepContext

NET = parse_network(
    "<network><name>r</name><uuid>0d1e2f30-4152-6374-8596-a7b8c9d0e1f2</uuid>"
    "<bridge name='rbr0'/></network>"
)


class Recorder:
    """What the recipe asks of the kernel side: requests recorded into a
    batch, sent in order at each flush (the flushes are logged)."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self.pending: list[str] = []
        self.completed = 0
        self.made = 0

    def batch(self) -> Recorder:
        return self

    def __len__(self) -> int:
        return self.made

    async def flush(self) -> None:
        if self.pending:
            await trio.lowlevel.checkpoint()  # as the real one: a thread hop
            self.log.append("flush " + " ".join(self.pending))
            self.completed += len(self.pending)
            self.pending = []

    async def set_up(self, name: str) -> None:
        self.pending.append(name)
        self.made += 1


def context(rec: Recorder, tmp_path: Path) -> StepContext:
    return StepContext(net=NET, nl=cast(NetlinkOps, rec), run_dir=tmp_path / "run", netns=None)


def request(name: str) -> Step:
    async def start(c: StepContext) -> None:
        await c.nl.set_up(name)

    async def stop(c: StepContext) -> None:
        log_of(c).append(f"-{name}")

    return Step(name, start, stop, batched=True)


def log_of(c: StepContext) -> list[str]:
    # the steps log into the recorder's log, whatever batch they were given
    return cast(Recorder, c.nl).log


def program(name: str, *, fail: bool = False, gate: trio.Event | None = None, **kw: object) -> Step:
    async def start(c: StepContext) -> None:
        log_of(c).append(f"{name} begins")
        if gate is not None:
            await gate.wait()
        if fail:
            raise NetfsError(5, f"{name} failed")
        log_of(c).append(f"{name} ends")

    async def stop(c: StepContext) -> None:
        log_of(c).append(f"-{name}")

    return Step(name, start, stop, **kw)  # type: ignore[arg-type]


async def test_a_step_not_needed_is_passed_over_without_sending_the_batch(tmp_path: Path) -> None:
    rec = Recorder()
    recipe = Recipe(
        [
            request("bridge"),
            program("fw", needed=lambda c: False),
            request("addr"),
        ]
    )
    await recipe.start(context(rec, tmp_path))
    # one submission: the passed-over program did not flush the batch early
    assert rec.log == ["flush bridge addr"]
    await recipe.stop(context(rec, tmp_path))  # its stop still runs (stops are idempotent)
    assert rec.log[1:] == ["-addr", "-fw", "-bridge"]


async def test_a_concurrent_step_runs_beside_the_next_ones(tmp_path: Path) -> None:
    rec = Recorder()
    gate = trio.Event()

    async def opens_gate(c: StepContext) -> None:
        log_of(c).append("dns begins")
        gate.set()  # the firewall step can only end because this one ran meanwhile

    recipe = Recipe(
        [
            request("bridge"),
            program("fw", gate=gate, concurrent=True),
            request("addr"),
            Step("dns", opens_gate),
            program("fwd", waits=("fw",)),
        ]
    )
    with trio.fail_after(5):
        await recipe.start(context(rec, tmp_path))
    # (it begins at the recipe's next checkpoint; it could end only once dns ran)
    assert rec.log.index("dns begins") < rec.log.index("fw ends")
    assert rec.log.index("fw ends") < rec.log.index("fwd begins")
    # it began once what it follows was in the kernel
    assert rec.log.index("flush bridge") < rec.log.index("fw begins")


async def test_a_failed_concurrent_step_is_raised_at_its_join_and_all_undone(
    tmp_path: Path,
) -> None:
    rec = Recorder()
    recipe = Recipe(
        [
            request("bridge"),
            program("fw", fail=True, concurrent=True),
            request("addr"),
            program("dns"),
            program("fwd", waits=("fw",)),
        ]
    )
    with pytest.raises(NetfsError) as ei:  # itself, not an exception group
        await recipe.start(context(rec, tmp_path))
    assert ei.value.message == "fw failed"
    # the steps that completed are undone in reverse order; the failed one
    # (which cleans up after itself) is not; fwd never began
    assert rec.log[-3:] == ["-dns", "-addr", "-bridge"]
    assert "fwd begins" not in rec.log


async def test_a_later_failure_waits_for_the_concurrent_step_then_undoes_it(
    tmp_path: Path,
) -> None:
    rec = Recorder()
    gate = trio.Event()

    async def fails(c: StepContext) -> None:
        gate.set()  # lets the slow concurrent step end only after this failure
        raise NetfsError(98, "address in use")

    recipe = Recipe(
        [
            request("bridge"),
            program("fw", gate=gate, concurrent=True),
            request("addr"),
            Step("dns", fails),
        ]
    )
    with pytest.raises(NetfsError) as ei:
        with trio.fail_after(5):
            await recipe.start(context(rec, tmp_path))
    assert ei.value.message == "address in use"
    # (the firewall's undo runs beside the bridge's)
    assert rec.log[-3] == "-addr" and sorted(rec.log[-2:]) == ["-bridge", "-fw"]
    assert rec.log.index("fw ends") < rec.log.index("-addr")


async def test_a_cancelled_start_undoes_what_completed(tmp_path: Path) -> None:
    rec = Recorder()
    started = trio.Event()

    async def hangs(c: StepContext) -> None:
        started.set()
        await trio.sleep_forever()

    recipe = Recipe(
        [request("bridge"), program("fw", concurrent=True), request("addr"), Step("dns", hangs)]
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(recipe.start, context(rec, tmp_path))
        await started.wait()
        nursery.cancel_scope.cancel()
    # (the firewall's undo runs beside the bridge's)
    assert rec.log[-3] == "-addr" and sorted(rec.log[-2:]) == ["-bridge", "-fw"]


async def test_a_concurrent_steps_stop_runs_beside_the_next_stops(tmp_path: Path) -> None:
    rec = Recorder()
    gate = trio.Event()

    async def fw_stop(c: StepContext) -> None:
        log_of(c).append("-fw begins")
        await gate.wait()  # it can end only because the bridge's stop ran meanwhile
        log_of(c).append("-fw ends")

    async def bridge_stop(c: StepContext) -> None:
        log_of(c).append("-bridge")
        gate.set()

    recipe = Recipe(
        [
            Step("bridge", request("bridge").start, bridge_stop, batched=True),
            Step("fw", program("fw").start, fw_stop, concurrent=True),
            request("addr"),
        ]
    )
    await recipe.start(context(rec, tmp_path))
    with trio.fail_after(5):
        await recipe.stop(context(rec, tmp_path))
    # (one after the other, the firewall's stop would wait for ever)
    stops = [x for x in rec.log if x.startswith("-")]
    assert stops[0] == "-addr" and stops[-1] == "-fw ends"
    assert stops.index("-bridge") < stops.index("-fw ends")


async def test_a_step_of_the_stop_alone_is_on_the_undo_path(tmp_path: Path) -> None:
    """A step without a start (dnsmasq-exit: it waits for the exit of a
    dnsmasq a later step's undo told to stop) and a step passed over are
    undone too when a later step fails, in reverse order."""
    rec = Recorder()

    async def waits_for_exit(c: StepContext) -> None:
        log_of(c).append("-exit")

    async def fails(c: StepContext) -> None:
        raise NetfsError(5, "late failure")

    recipe = Recipe(
        [
            Step("exit", None, waits_for_exit),
            request("bridge"),
            program("fw", needed=lambda c: False),
            Step("dns", fails),
        ]
    )
    with pytest.raises(NetfsError):
        await recipe.start(context(rec, tmp_path))
    assert rec.log[-3:] == ["-fw", "-bridge", "-exit"]


def test_using_keeps_every_field_but_the_kernel(tmp_path: Path) -> None:
    """StepContext.using names its fields by hand: a field added later and
    not passed there would silently fall back to its default."""
    import dataclasses

    rec = Recorder()
    c = dataclasses.replace(
        context(rec, tmp_path), netns="ns1", services=cast("Any", object()), on_repair=print
    )
    c = dataclasses.replace(c, batch=cast("Any", Recorder()))
    other = cast(NetlinkOps, Recorder())
    used = c.using(other)
    for f in dataclasses.fields(StepContext):
        want = other if f.name == "nl" else getattr(c, f.name)
        assert getattr(used, f.name) is want, f.name
    joined = c.joining(cast("Any", other))
    for f in dataclasses.fields(StepContext):
        want = other if f.name == "batch" else getattr(c, f.name)
        assert getattr(joined, f.name) is want, f.name
