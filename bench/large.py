"""Benchmark of large definitions: `python -m bench large [--quick]`.

No kernel: bridge-mode networks with a named bridge, and a stand-in for
netlink that reports no links (nothing here needs the kernel). Figures,
each beside the floor measured in the same run (lxml parsing the same bytes
once, without any model):

- define of one network with N portgroups (and the longest time the event
  loop could not serve another client meanwhile) (20,000, about the most whose
  saved forms stay under the loader's 1 MiB; 2,000 with --quick), and of
  one with N/10 (time per portgroup should not grow with N);
- daemon start-up (new Driver + startup()) with that network on disk;
- define of 30,000 portgroups (3,000 with --quick), whose saved form is too
  large to load again (refused);
- start-up with a config of 23,000 portgroups (2,300) already on disk.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any, cast

import trio

from netfs.core import Driver
from netfs.errors import NetfsError
from netfs.model.network import format_network, parse_network
from netfs.model.xmlsafe import parse_document
from netfs.netlink import Netlink


class _NoLinks:
    async def links(self) -> list[Any]:
        return []


def _doc(name: str, n: int) -> bytes:
    pgs = "".join(f"<portgroup name='p{i}'/>" for i in range(n))
    return (
        f"<network><name>{name}</name><forward mode='bridge'/><bridge name='br0'/>{pgs}</network>"
    ).encode()


def _floor(data: bytes) -> float:
    t = time.perf_counter()
    parse_document(data)
    return time.perf_counter() - t


async def _one(root: Path, n: int) -> list[str]:
    etc, run = root / f"etc{n}", root / f"run{n}"
    nl = cast(Netlink, _NoLinks())
    d = Driver(etc, run, nl)
    await d.startup()
    doc = _doc("big", n)
    stall = 0.0  # the longest the event loop could not serve another client

    async def ticker() -> None:
        nonlocal stall
        last = time.perf_counter()
        while True:
            await trio.sleep(0.001)
            now = time.perf_counter()
            stall = max(stall, now - last - 0.001)
            last = now

    t = time.perf_counter()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticker)
        await trio.sleep(0.01)
        t = time.perf_counter()
        try:
            await d.define(doc)
            refused = None
        except NetfsError as e:
            refused = e.message
        define_s = time.perf_counter() - t
        nursery.cancel_scope.cancel()
    loop = f"; event loop held at most {stall * 1000:.0f} ms at a time"
    if refused is not None:
        return [
            f"define, {n} portgroups ({len(doc)} B): {define_s * 1000:.0f} ms, "
            f"refused: {refused} (floor: lxml parse {_floor(doc) * 1000:.0f} ms{loop})"
        ]
    saved = (etc / "big.xml").read_bytes()
    t = time.perf_counter()
    d2 = Driver(etc, run, nl)
    await d2.startup()
    start_s = time.perf_counter() - t
    if "big" not in d2.names():
        return [f"define, {n} portgroups: acknowledged, but LOST at the restart"]
    return [
        f"define, {n} portgroups ({len(doc)} B): {define_s * 1000:.0f} ms "
        f"(floor: lxml parse {_floor(doc) * 1000:.0f} ms; "
        f"{define_s / n * 1e6:.1f} us per portgroup{loop})",
        f"start-up with it on disk ({len(saved)} B): {start_s * 1000:.0f} ms "
        f"(floor: lxml parse {_floor(saved) * 1000:.0f} ms; "
        f"{start_s / n * 1e6:.1f} us per portgroup)",
    ]


async def _on_disk(root: Path, n: int) -> list[str]:
    """A config file with n portgroups put in the config directory (as the
    previous version could save it): start-up with it."""
    etc, run = root / f"disk{n}-etc", root / f"disk{n}-run"
    etc.mkdir()
    doc = _doc("big", n)
    d = Driver(etc, run, cast(Netlink, _NoLinks()))
    (etc / "big.xml").write_bytes(format_network(parse_network(doc), inactive=True).encode())
    size = (etc / "big.xml").stat().st_size
    t = time.perf_counter()
    await d.startup()
    start_s = time.perf_counter() - t
    got = len(d.get("big").definition.portgroups) if "big" in d.names() else 0
    return [
        f"start-up with a config of {n} portgroups on disk ({size} B): "
        f"{start_s * 1000:.0f} ms (floor: lxml parse "
        f"{_floor((etc / 'big.xml').read_bytes()) * 1000:.0f} ms; "
        f"{start_s / n * 1e6:.1f} us per portgroup; loaded: {got})"
    ]


def main(flags: list[str]) -> int:
    logging.getLogger("netfs").setLevel(logging.ERROR)
    n = 2000 if "--quick" in flags else 20000
    with tempfile.TemporaryDirectory(prefix="netfs-bench-large-") as tmp:
        for size in (n // 10, n, n * 3 // 2):
            for line in trio.run(_one, Path(tmp), size):
                print(line)
        for line in trio.run(_on_disk, Path(tmp), n * 23 // 20):
            print(line)
    return 0
