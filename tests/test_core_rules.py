"""The core's rules without root: the Driver against an in-memory netlink fake.

The fake implements the typed netlink protocol (netfs.netlink.NetlinkAdapter)
with dictionaries: links, addresses, routes and sysctls. Everything here runs
as any user in a fraction of a second; what the kernel does is tested against
the kernel in test_core.py, test_subdrivers.py and test_netlink.py.
"""

from __future__ import annotations

import errno
import logging
from pathlib import Path

import pytest
import trio
import trio.testing

from netfs.core import LOG_DEFER, Driver
from netfs.errors import NetfsError
from netfs.netlink import (
    LinkInfo,
)
from netfs.worker import Worker
from tests.fake_netlink import FakeBatch, FakeKernel, FakeNetlink, _adapter  # noqa: F401

U = "6f1d9e5a-2b3c-4d5e-8f90-0a1b2c3d4e{:02x}"


def net_xml(
    name: str,
    *,
    n: int = 1,
    bridge: str | None = None,
    mac: str | None = None,
    ip4: str | None = None,
    uuid: bool = True,
    extra: str = "",
) -> str:
    br = f"<bridge name='{bridge}'/>" if bridge else ""
    mac_el = f"<mac address='{mac}'/>" if mac else ""
    ip_el = f"<ip address='{ip4}' prefix='24'/>" if ip4 else ""
    uu = f"<uuid>{U.format(n)}</uuid>" if uuid else ""
    return f"<network><name>{name}</name>{uu}{br}{mac_el}{ip_el}{extra}</network>"


@pytest.fixture
def kernel() -> FakeKernel:
    return FakeKernel()


@pytest.fixture
async def driver(tmp_path: Path, kernel: FakeKernel) -> Driver:
    d = Driver(tmp_path / "etc", tmp_path / "run", _adapter(FakeNetlink(kernel)), services=False)
    await d.startup()
    return d


async def test_define_rules(driver: Driver) -> None:
    await driver.define(net_xml("a", n=1, bridge="nfsa0"))
    with pytest.raises(NetfsError) as e:  # directory name vs <name>
        await driver.define(net_xml("b", n=2, bridge="nfsb0"), name="c")
    assert e.value.errno == errno.EINVAL
    nameless = f"<network><uuid>{U.format(3)}</uuid><bridge name='nfsc0'/></network>"
    assert await driver.define(nameless, name="c") == "c"
    with pytest.raises(NetfsError) as e:  # same uuid, other name
        await driver.define(net_xml("d", n=1, bridge="nfsd0"))
    assert (e.value.errno, e.value.message) == (
        errno.EEXIST,
        f"network 'a' is already defined with uuid {U.format(1)}",
    )
    with pytest.raises(NetfsError) as e:  # same name, other uuid
        await driver.define(net_xml("a", n=9, bridge="nfsa0"))
    assert e.value.message == f"network 'a' already exists with uuid {U.format(1)}"
    with pytest.raises(NetfsError) as e:  # another network's bridge name
        await driver.define(net_xml("e", n=5, bridge="nfsa0"))
    assert (e.value.errno, e.value.message) == (
        errno.EADDRINUSE,
        "bridge name 'nfsa0' already in use.",
    )
    assert driver.names() == ["a", "c"]
    # a redefinition without <uuid> keeps the uuid; a failed one keeps the definition
    await driver.define(net_xml("a", bridge="nfsa0", uuid=False, ip4="10.5.5.1"))
    assert driver.get("a").uuid == U.format(1)
    with pytest.raises(NetfsError):
        await driver.define(net_xml("a", n=1, bridge="nfsc0"))
    assert driver.get("a").error == "bridge name 'nfsc0' already in use."
    assert driver.get("a").definition.bridge.name == "nfsa0"


async def test_generated_values_kept_and_host_links_avoided(
    driver: Driver, kernel: FakeKernel
) -> None:
    kernel.links["virbr0"] = LinkInfo(1, "virbr0", "veth", None, 1500, None, False, None, None)
    await driver.define("<network><name>g</name></network>")
    d = driver.get("g").definition
    assert d.bridge.name == "virbr1"  # virbr0 is a host link
    assert d.mac and d.mac.startswith("52:54:00:")
    text = driver.definition_xml("g")
    ino = driver.store.config_path("g").stat().st_ino
    await driver.define("<network><name>g</name></network>")  # same input: nothing changes
    assert driver.definition_xml("g") == text
    assert driver.store.config_path("g").stat().st_ino == ino
    await driver.define("<network><name>g</name><title>t</title></network>")
    d2 = driver.get("g").definition
    assert (d2.uuid, d2.mac, d2.bridge.name) == (d.uuid, d.mac, d.bridge.name)


async def test_start_stop_through_the_recipe(driver: Driver, kernel: FakeKernel) -> None:
    await driver.define(net_xml("a", bridge="nfsa0", mac="52:54:00:00:00:0a", ip4="10.9.0.1"))
    await driver.start("a")
    link = kernel.links["nfsa0"]
    assert (link.kind, link.mac, link.alias, link.up) == (
        "bridge",
        "52:54:00:00:00:0a",
        f"netfs:{U.format(1)}",
        True,
    )
    assert [(a.ifname, a.address, a.prefixlen) for a in kernel.addrs] == [("nfsa0", "10.9.0.1", 24)]
    assert kernel.sysctls["/proc/sys/net/ipv6/conf/nfsa0/disable_ipv6"] == "1"
    assert driver.store.status_path("a").exists()
    assert not driver.store.intent_path("a").exists()
    await driver.stop("a")
    assert kernel.links == {} and kernel.addrs == []
    assert not driver.store.status_path("a").exists()


async def test_failed_start_undoes_and_records(driver: Driver, kernel: FakeKernel) -> None:
    dup = "<ip address='10.9.0.1' prefix='24'/>"
    await driver.define(net_xml("a", bridge="nfsa0", ip4="10.9.0.1", extra=dup))
    with pytest.raises(NetfsError) as e:
        await driver.start("a")
    assert e.value.errno == errno.EEXIST
    assert kernel.links == {}  # the bridge made by the start is gone again
    st = driver.get("a")
    assert not st.active and st.error.startswith("Failed to add IP address 10.9.0.1/24")
    assert not driver.store.intent_path("a").exists()
    # a foreign link of the bridge's name is refused and left alone
    kernel.links["nfsb0"] = LinkInfo(9, "nfsb0", "bridge", None, 1500, None, False, None, None)
    await driver.define(net_xml("b", n=2, bridge="nfsb0"))
    with pytest.raises(NetfsError) as e:
        await driver.start("b")
    assert e.value.errno == errno.EADDRINUSE
    assert list(kernel.links) == ["nfsb0"] and kernel.links["nfsb0"].alias is None


async def test_undefine_and_transient(driver: Driver) -> None:
    await driver.define(net_xml("a", bridge="nfsa0"))
    await driver.start("a")
    with pytest.raises(NetfsError) as e:
        await driver.undefine("a")
    assert e.value.errno == errno.EBUSY
    await driver.undefine("a", if_active="transient")
    st = driver.get("a")
    assert st.active and not st.persistent
    await driver.stop("a")
    assert driver.names() == []


async def test_reload_rules(driver: Driver) -> None:
    await driver.define(net_xml("a", bridge="nfsa0"))
    await driver.define(net_xml("b", n=2, bridge="nfsb0"))
    await driver.start("b")
    etc = driver.store.config_dir
    (etc / "c.xml").write_text(net_xml("c", n=3, bridge="nfsc0"))
    (etc / "a.xml").unlink()
    (etc / "b.xml").unlink()
    (etc / "bad.xml").write_text("<network>")
    await driver.reload()
    assert driver.names() == ["b", "c"]
    assert not driver.get("b").persistent and driver.get("b").active


async def test_recovery_and_orphans(tmp_path: Path, kernel: FakeKernel) -> None:
    nl = _adapter(FakeNetlink(kernel))
    d = Driver(tmp_path / "etc", tmp_path / "run", nl, services=False)
    await d.startup()
    await d.define(net_xml("a", bridge="nfsa0", ip4="10.9.0.1"))
    await d.define(net_xml("b", n=2, bridge="nfsb0"))
    await d.start("a")
    await d.start("b")
    kernel.addrs.clear()  # a lost its address
    del kernel.links["nfsb0"]  # b's bridge is gone
    orphan = f"netfs:{U.format(7)}"
    kernel.links["nfsor0"] = LinkInfo(8, "nfsor0", "bridge", None, 1500, orphan, True, 0, 0.0)
    d2 = Driver(tmp_path / "etc", tmp_path / "run", nl, services=False)
    await d2.startup()
    assert d2.get("a").active and not d2.get("b").active
    assert [a.address for a in kernel.addrs] == ["10.9.0.1"]  # repaired
    assert sorted(kernel.links) == ["nfsa0"]  # the orphan is gone


async def test_worker_runs_in_order_and_ends_when_idle() -> None:
    w = Worker("netfs-test", idle=0.05)
    seen: list[int] = []
    for i in range(20):
        await w.call(seen.append, i)
    assert seen == list(range(20))
    with pytest.raises(ZeroDivisionError):
        await w.call(lambda: 1 // 0)
    with trio.fail_after(10):
        while w.running:  # the idle thread ends; the next call starts one
            await trio.sleep(0.01)
    assert await w.call(lambda: 7) == 7
    await w.close()
    assert not w.running


async def test_triggered_repair(driver: Driver, kernel: FakeKernel) -> None:
    await driver.define(net_xml("a", bridge="nfsa0", ip4="10.9.0.1"))
    await driver.start("a")
    kernel.addrs.clear()
    kernel.links["nfsa0"] = LinkInfo(**{**kernel.links["nfsa0"].__dict__, "up": False})
    await driver.repair("a")  # running: the steps' repairs give it back what it lost
    assert [a.address for a in kernel.addrs] == ["10.9.0.1"] and kernel.links["nfsa0"].up
    del kernel.links["nfsa0"]
    await driver.repair("a")  # not running any more: marked inactive
    assert not driver.get("a").active
    assert not driver.store.status_path("a").exists()
    await driver.repair("a")  # inactive: nothing to do


async def test_event_log_lines_come_a_moment_later_and_all_of_them(
    driver: Driver, caplog: pytest.LogCaptureFixture, mock_clock: trio.testing.MockClock
) -> None:
    # trio's clock stands still until the test moves it (the log writer's
    # deadline is in it); the fake kernel's idle() is at once
    caplog.set_level(logging.INFO, logger="netfs.core")
    await driver.define(net_xml("a", n=1, bridge="nfsa0"))

    def lines() -> list[str]:
        return [
            r.getMessage().split(None, 2)[2]
            for r in caplog.records
            if r.getMessage().startswith("event: ")
        ]

    async with trio.open_nursery() as nursery:
        await nursery.start(driver.run_monitor)
        caplog.clear()
        await driver.start("a")
        await driver.stop("a")
        await trio.testing.wait_all_tasks_blocked()
        assert lines() == []  # not in the ticks after the events: on their path
        mock_clock.jump(LOG_DEFER)
        await trio.testing.wait_all_tasks_blocked()
        assert lines() == ["a started", "a stopped"]
        await driver.start("a")  # the writer sleeps again, and wakes again
        await trio.testing.wait_all_tasks_blocked()
        assert lines() == ["a started", "a stopped"]
        mock_clock.jump(LOG_DEFER)
        await trio.testing.wait_all_tasks_blocked()
        assert lines() == ["a started", "a stopped", "a started"]
        nursery.cancel_scope.cancel()
