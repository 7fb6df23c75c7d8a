"""Issue 9, driver-core side, without a kernel: a driver whose netlink is
never used (bridge-mode networks with a named bridge need none to be
defined). Pure: no root."""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from netfs import core as core_mod
from netfs import state as state_mod
from netfs.core import Driver
from netfs.errors import NetfsError
from netfs.model.network import NetworkDef
from netfs.state import StateStore
from tests.fake_netlink import FakeNetlink, _adapter


def bridge_net(name: str, portgroups: int = 0) -> str:
    pgs = "".join(f"<portgroup name='p{i}'/>" for i in range(portgroups))
    return (
        f"<network><name>{name}</name><forward mode='bridge'/><bridge name='br0'/>{pgs}</network>"
    )


@pytest.fixture
def driver(tmp_path: Path) -> Driver:
    d = Driver(tmp_path / "etc", tmp_path / "run", _adapter(FakeNetlink()))
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


# --------------------------------------------------------------------------- item 7


async def test_definition_whose_saved_form_is_too_large_is_refused(driver: Driver) -> None:
    # 180 KB of apostrophes saved as &apos; would be 1.08 MB
    doc = (
        "<network><name>big</name><forward mode='bridge'/><bridge name='br0'/>"
        f"<description>{chr(39) * 180_000}</description></network>"
    )
    with pytest.raises(NetfsError) as e:
        await driver.define(doc)
    assert e.value.errno == errno.EFBIG
    assert "1048576 bytes" in e.value.message and "loading accepts" in e.value.message
    assert "big" not in driver.names()
    assert sorted(p.name for p in driver.store.config_dir.iterdir()) == ["autostart"]


async def test_compact_30000_portgroups_refused_previous_definition_kept(driver: Driver) -> None:
    await driver.define(bridge_net("big", 10))
    before = driver.store.config_path("big").read_bytes()
    with pytest.raises(NetfsError) as e:
        await driver.define(bridge_net("big", 30000))
    assert e.value.errno == errno.EFBIG
    assert driver.store.config_path("big").read_bytes() == before
    assert len(driver.get("big").definition.portgroups) == 10


async def test_largest_accepted_definition_loads_again(tmp_path: Path) -> None:
    """Whatever define acknowledges loads again after a restart (config and,
    once started, the status file): the largest under the limit."""
    d = Driver(tmp_path / "etc", tmp_path / "run", _adapter(FakeNetlink()))
    d.store.ensure_dirs()
    n = 23000
    while True:
        try:
            await d.define(bridge_net("big", n))
            break
        except NetfsError as e:
            assert e.errno == errno.EFBIG
            n -= 500
    net = d.get("big").definition
    d.store.write_status(net)  # what a start writes
    loaded = StateStore(tmp_path / "etc", tmp_path / "run").load()
    assert loaded.problems == []
    assert len(loaded.configs["big"].definition.portgroups) == n
    assert len(loaded.statuses["big"].live.portgroups) == n


# --------------------------------------------------------------------------- item 15


async def test_full_disk_error_names_the_path_and_leaves_nothing(
    driver: Driver, monkeypatch: pytest.MonkeyPatch
) -> None:
    virtual = (
        "<network><name>v</name><forward mode='nat'/><bridge name='nfsv0'/>"
        "<ip address='192.168.77.1' prefix='24'/></network>"
    )
    await driver.define(virtual)

    def full(fd: int, data: object) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(state_mod.os, "write", full)
    with pytest.raises(NetfsError) as e:
        await driver.start("v")
    assert e.value.errno == errno.ENOSPC
    intent = driver.store.intent_path("v")
    assert e.value.message == f"No space left on device: {intent}"
    with pytest.raises(NetfsError) as e:
        await driver.define(bridge_net("w"))
    assert e.value.message == f"No space left on device: {driver.store.config_path('w')}"
    monkeypatch.undo()
    assert not driver.get("v").active and "w" not in driver.names()
    assert not os.path.lexists(intent)
    leftovers = [p for p in driver.store.state_dir.rglob("*") if p.name != ".lock"]
    assert leftovers == [] or all(p.is_dir() for p in leftovers), leftovers
    assert sorted(p.name for p in driver.store.config_dir.iterdir()) == ["autostart", "v.xml"]


# ----------------------------------------------------- names dnsmasq misreads


def nat_dhcp(name: str, bridge: str = "nbq0") -> str:
    return (
        f"<network><name>{name}</name><forward mode='nat'/><bridge name='{bridge}'/>"
        "<ip address='10.77.0.1' prefix='24'><dhcp><range start='10.77.0.2' end='10.77.0.9'/>"
        "</dhcp></ip></network>"
    )


@pytest.mark.parametrize(
    ("name", "what"),
    [("netfs-leases-helper #", "'#'"), ("q&quot;uote", "'\"'"), ("sp ace", "a space")],
)
async def test_define_refuses_names_dnsmasq_would_misread(
    driver: Driver, tmp_path: Path, name: str, what: str
) -> None:
    with pytest.raises(NetfsError) as e:
        await driver.define(nat_dhcp(name))
    assert e.value.errno == errno.EINVAL
    assert e.value.message.startswith("network name '") and what in e.value.message
    assert driver.names() == [] and list((tmp_path / "etc").glob("*.xml")) == []
    # the same name without dnsmasq (isolated, no <ip>): defined
    plain = f"<network><name>{name}</name><bridge name='nbq1'/></network>"
    got = await driver.define(plain)
    assert driver.names() == [got] and (tmp_path / "etc" / f"{got}.xml").exists()
    # a redefinition that would need dnsmasq is refused; the previous one stays
    with pytest.raises(NetfsError) as e:
        await driver.define(nat_dhcp(name, "nbq1"))
    assert e.value.errno == errno.EINVAL
    assert driver.get(got).definition.ips == []
