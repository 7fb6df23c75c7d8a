"""A child process for tests/test_core_crash.py: the core under a storm.

    python tests/crash_child.py CONFIG_DIR STATE_DIR NETNS SEED

Starts a Driver (so its recovery runs too), prints ``ready``, then runs
start/stop/redefine storms on every defined network until it is killed.
Redefinitions only change the ``<title>`` (``v<k>``), so the parent can tell
a torn definition from a legitimate one.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import trio

from netfs.core import Driver
from netfs.errors import NetfsError
from netfs.model.network import format_network
from netfs.netlink import Netlink


async def storm(d: Driver, names: list[str], rnd: random.Random) -> None:
    while True:
        name = rnd.choice(names)
        r = rnd.random()
        try:
            if r < 0.4:
                await d.start(name)
            elif r < 0.8:
                await d.stop(name)
            else:
                net = d.get(name).definition.copy()
                net.title = f"v{rnd.randrange(1000)}"
                await d.define(format_network(net, inactive=True), name=name)
        except NetfsError:
            pass
        await trio.sleep(0)


async def main(etc: str, run: str, ns: str, seed: int) -> None:
    async with Netlink(ns) as nl:
        d = Driver(Path(etc), Path(run), nl)
        await d.startup()
        print("ready", flush=True)
        names = d.names()
        async with trio.open_nursery() as nursery:
            for k in range(4):
                nursery.start_soon(storm, d, names, random.Random(seed * 10 + k))


if __name__ == "__main__":
    trio.run(main, sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
