"""Crash safety: the core killed with SIGKILL at random points, then restarted.

A child process (tests/crash_child.py) runs a Driver through start/stop/
redefine storms and is killed with SIGKILL at a random moment (sometimes
while it is still recovering from the previous kill). After every kill a
fresh Driver starts up on the same directories and namespace, and every
invariant must hold: no orphan bridge, no lost or torn definition, no stray
temporary file, every network's ``active`` equal to the kernel's truth, a
status file exactly for the active ones.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from conftest import ip

from netfs.core import Driver
from netfs.model.network import parse_network
from netfs.netlink import Netlink
from netfs.state import TMP_PREFIX

pytestmark = [pytest.mark.kernel, pytest.mark.slow]

CHILD = Path(__file__).with_name("crash_child.py")
ROOT = Path(__file__).resolve().parent.parent
KILLS = 56
NETS = 6


def bridges(ns: str) -> dict[str, str | None]:
    out = json.loads(ip("-d", "-j", "link", "show", "type", "bridge", netns=ns).stdout or "[]")
    return {link["ifname"]: link.get("ifalias") for link in out}


def temp_files(*dirs: Path) -> list[Path]:
    return [p for d in dirs if d.exists() for p in d.rglob(f"{TMP_PREFIX}*")]


async def check_invariants(
    etc: Path, run: Path, nl: Netlink, ns: str, uuids: dict[str, str]
) -> Driver:
    # definitions on disk: all there, none torn (before recovery touches anything)
    for name, uuid in uuids.items():
        net = parse_network((etc / f"{name}.xml").read_bytes())
        assert (net.name, net.uuid) == (name, uuid)
        assert net.title is None or net.title.startswith("v")
    d = Driver(etc, run, nl)
    await d.startup()
    assert d.names() == sorted(uuids)
    br = bridges(ns)
    expected = {}
    for name in d.names():
        st = d.get(name)
        assert st.persistent and st.problem is None
        bname = st.definition.bridge.name
        assert st.active == (bname in br), (name, st.active, br)
        assert d.store.status_path(name).exists() == st.active
        if st.active:
            expected[bname] = f"netfs:{uuids[name]}"
    assert br == expected  # no orphan bridge, every bridge tagged with its network
    assert temp_files(etc, run) == []
    return d


async def test_sigkill_storms(netns: str, tmp_path: Path) -> None:
    etc, run = tmp_path / "etc", tmp_path / "run"
    rnd = random.Random(1234)
    async with Netlink(netns) as nl:
        d = Driver(etc, run, nl)
        await d.startup()
        uuids = {}
        for i in range(NETS):
            name = f"k{i}"
            await d.define(
                f"<network><name>{name}</name><bridge name='nfsk{i}'/>"
                f"<ip address='10.90.{i}.1' prefix='24'/></network>"
            )
            uuids[name] = d.get(name).uuid
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        kills = 0
        while kills < KILLS:
            proc = await trio.lowlevel.open_process(
                [sys.executable, str(CHILD), str(etc), str(run), netns, str(kills)],
                stdout=subprocess.PIPE,
                env=env,
            )
            try:
                assert proc.stdout is not None
                if rnd.random() < 0.75:  # most kills mid-storm, some mid-recovery
                    buf = b""
                    with trio.fail_after(30):
                        while b"ready\n" not in buf:
                            chunk = await proc.stdout.receive_some()
                            assert chunk, "child died before it was ready"
                            buf += chunk
                    await trio.sleep(rnd.uniform(0, 0.3))
                else:
                    await trio.sleep(rnd.uniform(0.2, 0.6))
            finally:
                proc.send_signal(signal.SIGKILL)
                await proc.wait()
                if proc.stdout is not None:
                    await proc.stdout.aclose()
            assert proc.returncode == -signal.SIGKILL
            kills += 1
            d = await check_invariants(etc, run, nl, netns, uuids)
        for name in d.names():
            await d.stop(name)
        assert bridges(netns) == {}
