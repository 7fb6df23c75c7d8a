"""Issue 9, driver-core side, without a kernel: a driver whose netlink is
never used (bridge-mode networks with a named bridge need none to be
defined). Pure: no root."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, cast

import pytest

from netfs import core as core_mod
from netfs.core import Driver
from netfs.model.network import NetworkDef
from netfs.netlink import Netlink


def bridge_net(name: str, portgroups: int = 0) -> str:
    pgs = "".join(f"<portgroup name='p{i}'/>" for i in range(portgroups))
    return (
        f"<network><name>{name}</name><forward mode='bridge'/><bridge name='br0'/>{pgs}</network>"
    )


@pytest.fixture
def driver(tmp_path: Path) -> Driver:
    d = Driver(tmp_path / "etc", tmp_path / "run", cast(Netlink, None))
    d.store.ensure_dirs()
    return d


async def test_large_definition_is_parsed_off_the_event_loop(
    driver: Driver, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[threading.Thread] = []
    real = core_mod.parse_network

    def parse(xml: Any) -> NetworkDef:
        threads.append(threading.current_thread())
        return real(xml)

    monkeypatch.setattr(core_mod, "parse_network", parse)
    await driver.define(bridge_net("big", 20000))
    assert threads and threads[0] is not threading.main_thread()
    assert len(driver.get("big").definition.portgroups) == 20000
