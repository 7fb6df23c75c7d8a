"""netfs.subdrivers against the real kernel, in throwaway network namespaces."""

from __future__ import annotations

import errno
import json
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from netfs.errors import NetfsError
from netfs.model.network import NetworkDef, parse_network
from netfs.netlink import Netlink
from netfs.subdrivers import DIRECT, HOSTBRIDGE, HOSTDEV, VIRTUAL, for_mode
from netfs.subdrivers.steps import Step, StepContext
from netfs.subdrivers.virtual import VirtualDriver
from tests.conftest import ip

pytestmark = pytest.mark.kernel

UUID = "11111111-2222-3333-4444-555555555555"


def net_xml(
    *,
    mode: str = "nat",
    bridge: str = "vbr0",
    extra: str = "",
    ips: str = "<ip address='192.168.150.1' netmask='255.255.255.0'/>",
    uuid: str = UUID,
) -> NetworkDef:
    fwd = "" if mode == "none" else f"<forward mode='{mode}'/>"
    opts = " stp='on' delay='3'" if mode in ("none", "nat", "route", "open") else ""
    br = f"<bridge name='{bridge}'{opts}/>" if bridge else ""
    return parse_network(
        f"<network><name>t1</name><uuid>{uuid}</uuid>{fwd}{br}{extra}{ips}</network>"
    )


FULL = dict(
    extra="<mac address='52:54:00:AB:00:01'/><mtu size='9000'/>"
    "<route address='10.150.0.0' prefix='16' gateway='192.168.150.2' metric='3'/>",
    ips="<ip address='192.168.150.1' netmask='255.255.255.0'/>"
    "<ip family='ipv6' address='fd00:150::1' prefix='64'/>",
)


def ctx(net: NetworkDef, nl: Netlink) -> StepContext:
    return StepContext(net=net, nl=nl, run_dir=Path("/nonexistent/run"), netns=nl.netns)


@pytest.fixture
async def nl(netns: str) -> AsyncIterator[Netlink]:
    async with Netlink(netns) as n:
        yield n


def link_json(netns: str, name: str) -> dict[str, Any] | None:
    r = ip("-d", "-j", "link", "show", name, netns=netns, check=False)
    if r.returncode != 0:
        return None
    return json.loads(r.stdout)[0]


def addrs(netns: str, name: str) -> set[tuple[str, str, int]]:
    info = json.loads(ip("-j", "addr", "show", name, netns=netns).stdout)[0]["addr_info"]
    return {(a["family"], a["local"], a["prefixlen"]) for a in info}


def routes(netns: str, *args: str) -> list[dict[str, Any]]:
    return json.loads(ip(*args, "-j", "route", "show", netns=netns).stdout)


def ns_sysctl(netns: str, path: str) -> str:
    return subprocess.run(
        ["ip", "netns", "exec", netns, "cat", path], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_table() -> None:
    for mode in ("none", "nat", "route", "open"):
        assert for_mode(mode) is VIRTUAL
    assert for_mode("bridge", net_xml(mode="bridge", bridge="br-host", ips="")) is HOSTBRIDGE
    assert for_mode("bridge", net_xml(mode="bridge", bridge="", ips="")) is DIRECT
    for mode in ("private", "vepa", "passthrough"):
        assert for_mode(mode) is DIRECT
    assert for_mode("hostdev") is HOSTDEV
    with pytest.raises(NetfsError) as ei:
        for_mode("bogus")
    assert ei.value.errno == errno.EINVAL


async def test_virtual_start_stop(nl: Netlink, netns: str) -> None:
    net = net_xml(**FULL)
    drv = for_mode(net.forward.mode, net)
    await drv.start(ctx(net, nl))
    j = link_json(netns, "vbr0")
    assert j is not None
    assert j["linkinfo"]["info_kind"] == "bridge"
    assert j["address"] == "52:54:00:ab:00:01"
    assert j["mtu"] == 9000
    assert j["linkinfo"]["info_data"]["stp_state"] == 1
    assert j["linkinfo"]["info_data"]["forward_delay"] == 300
    assert j["ifalias"] == f"netfs:{UUID}"
    assert "UP" in j["flags"]
    assert addrs(netns, "vbr0") >= {("inet", "192.168.150.1", 24), ("inet6", "fd00:150::1", 64)}
    r = routes(netns, "-4")
    assert {"dst": "10.150.0.0/16", "gateway": "192.168.150.2", "dev": "vbr0"}.items() <= next(
        x for x in r if x["dst"] == "10.150.0.0/16"
    ).items()
    assert next(x for x in r if x["dst"] == "10.150.0.0/16")["metric"] == 3
    base = "/proc/sys/net/ipv6/conf/vbr0"
    assert ns_sysctl(netns, f"{base}/disable_ipv6") == "0"
    assert ns_sysctl(netns, f"{base}/accept_ra") == "0"
    assert ns_sysctl(netns, f"{base}/autoconf") == "0"
    assert await drv.is_running(ctx(net, nl))

    await drv.stop(ctx(net, nl))
    assert link_json(netns, "vbr0") is None
    assert [x for x in routes(netns, "-4")] == []
    assert not await drv.is_running(ctx(net, nl))
    # stopping again: a missing bridge is fine
    await drv.stop(ctx(net, nl))


async def test_ipv4_only_disables_ipv6(nl: Netlink, netns: str) -> None:
    net = net_xml(mode="none")
    await VIRTUAL.start(ctx(net, nl))
    assert ns_sysctl(netns, "/proc/sys/net/ipv6/conf/vbr0/disable_ipv6") == "1"
    assert {a for a in addrs(netns, "vbr0") if a[0] == "inet6"} == set()
    await VIRTUAL.stop(ctx(net, nl))
    assert link_json(netns, "vbr0") is None


async def test_no_bridge_name(nl: Netlink, netns: str) -> None:
    net = net_xml(bridge="")
    with pytest.raises(NetfsError) as ei:
        await VIRTUAL.start(ctx(net, nl))
    assert (ei.value.errno, ei.value.message) == (
        errno.EINVAL,
        "network 't1' has no bridge name defined",
    )
    assert not await VIRTUAL.is_running(ctx(net, nl))


async def test_foreign_link_refused_and_untouched(nl: Netlink, netns: str) -> None:
    ip("link", "add", "vbr0", "type", "bridge", netns=netns)
    ip("addr", "add", "10.1.1.1/24", "dev", "vbr0", netns=netns)
    before = link_json(netns, "vbr0")
    net = net_xml()
    with pytest.raises(NetfsError) as ei:
        await VIRTUAL.start(ctx(net, nl))
    assert (ei.value.errno, ei.value.message) == (
        errno.EADDRINUSE,
        "error creating bridge interface vbr0: File exists",
    )
    assert link_json(netns, "vbr0") == before
    assert addrs(netns, "vbr0") == {("inet", "10.1.1.1", 24)}
    # not ours: not running, and stop leaves it alone
    assert not await VIRTUAL.is_running(ctx(net, nl))
    await VIRTUAL.stop(ctx(net, nl))
    assert link_json(netns, "vbr0") == before


async def test_other_networks_bridge_not_stopped(nl: Netlink, netns: str) -> None:
    other = net_xml(uuid="99999999-2222-3333-4444-555555555555")
    await VIRTUAL.start(ctx(other, nl))
    net = net_xml(mode="none", ips="")
    assert not await VIRTUAL.is_running(ctx(net, nl))
    await VIRTUAL.stop(ctx(net, nl))
    assert link_json(netns, "vbr0") is not None
    await VIRTUAL.stop(ctx(other, nl))
    assert link_json(netns, "vbr0") is None


async def test_subnet_collision(nl: Netlink, netns: str) -> None:
    ip("link", "add", "other0", "type", "bridge", netns=netns)
    ip("link", "set", "other0", "up", netns=netns)
    ip("addr", "add", "192.168.150.7/24", "dev", "other0", netns=netns)
    with pytest.raises(NetfsError) as ei:
        await VIRTUAL.start(ctx(net_xml(), nl))  # refused before any change
    assert (ei.value.errno, ei.value.message) == (
        errno.EADDRINUSE,
        "Network is already in use by interface other0",
    )
    assert link_json(netns, "vbr0") is None
    # a different prefix of the same address space is no collision (as libvirt)
    net = net_xml(ips="<ip address='192.168.150.1' prefix='25'/>")
    await VIRTUAL.start(ctx(net, nl))
    await VIRTUAL.stop(ctx(net, nl))


async def test_static_route_collision(nl: Netlink, netns: str) -> None:
    ip("link", "add", "other0", "type", "bridge", netns=netns)
    ip("link", "set", "other0", "up", netns=netns)
    ip("route", "add", "10.150.0.0/16", "dev", "other0", netns=netns)
    with pytest.raises(NetfsError) as ei:
        await VIRTUAL.start(ctx(net_xml(**FULL), nl))  # refused before any change
    assert (ei.value.errno, ei.value.message) == (
        errno.EADDRINUSE,
        "Route address '10.150.0.0' conflicts with IP address for 'other0'",
    )
    assert link_json(netns, "vbr0") is None


async def test_bad_static_route_is_ignored(nl: Netlink, netns: str) -> None:
    # the second, identical route is refused by the kernel (EEXIST): start goes on
    route = "<route address='10.160.0.0' prefix='16' gateway='192.168.150.9'/>"
    net = net_xml(extra=route + route)
    await VIRTUAL.start(ctx(net, nl))
    assert await VIRTUAL.is_running(ctx(net, nl))
    assert [r["dst"] for r in routes(netns, "-4")].count("10.160.0.0/16") == 1
    await VIRTUAL.stop(ctx(net, nl))


async def test_failure_after_create_deletes_bridge(nl: Netlink, netns: str) -> None:
    undone: list[str] = []

    async def fail(c: StepContext) -> None:
        raise NetfsError(errno.EIO, "firewall said no")

    async def record_stop(c: StepContext) -> None:
        undone.append("fw")

    async def nothing(c: StepContext) -> None:
        return None

    drv = VirtualDriver()
    # (the recipe's own firewall and dnsmasq steps do nothing without services)
    drv.insert_step(Step("early", nothing, record_stop), before="addresses")
    drv.insert_step(Step("late", fail), after="routes")
    assert [s.name for s in drv.steps] == [
        "dnsmasq-exit",
        "bridge",
        "ipv6-sysctls",
        "firewall",
        "early",
        "addresses",
        "routes",
        "late",
        "dnsmasq",
        "forwarding",
    ]
    with pytest.raises(NetfsError) as ei:
        await drv.start(ctx(net_xml(**FULL), nl))
    assert ei.value.message == "firewall said no"
    assert undone == ["fw"]
    assert link_json(netns, "vbr0") is None

    # a kernel failure after the bridge exists (a duplicate address: EEXIST)
    net = net_xml(
        ips="<ip address='192.168.150.1' prefix='24'/><ip address='192.168.150.1' prefix='24'/>"
    )
    with pytest.raises(NetfsError) as ei:
        await VIRTUAL.start(ctx(net, nl))
    assert ei.value.errno == errno.EEXIST
    assert link_json(netns, "vbr0") is None


async def test_repair_restores_address_and_up(nl: Netlink, netns: str) -> None:
    net = net_xml(**FULL)
    await VIRTUAL.start(ctx(net, nl))
    ip("addr", "del", "192.168.150.1/24", "dev", "vbr0", netns=netns)
    ip("addr", "del", "fd00:150::1/64", "dev", "vbr0", netns=netns)
    ip("link", "set", "vbr0", "down", netns=netns)
    # deleting the address also took the static route with it
    assert all(r["dst"] != "10.150.0.0/16" for r in routes(netns, "-4"))
    await VIRTUAL.repair(ctx(net, nl))
    j = link_json(netns, "vbr0")
    assert j is not None and "UP" in j["flags"]
    assert addrs(netns, "vbr0") >= {("inet", "192.168.150.1", 24), ("inet6", "fd00:150::1", 64)}
    assert any(r["dst"] == "10.150.0.0/16" for r in routes(netns, "-4"))
    # repairing a healthy network changes nothing
    before = addrs(netns, "vbr0")
    await VIRTUAL.repair(ctx(net, nl))
    assert addrs(netns, "vbr0") == before
    await VIRTUAL.stop(ctx(net, nl))


async def test_hostbridge(nl: Netlink, netns: str) -> None:
    net = net_xml(mode="bridge", bridge="hbr0", ips="")
    drv = for_mode("bridge", net)
    await drv.start(ctx(net, nl))  # existence is not checked at start
    assert link_json(netns, "hbr0") is None
    assert drv.watched_link(net) == "hbr0"  # the core's monitor follows its deletion
    assert not await drv.is_running(ctx(net, nl))
    ip("link", "add", "hbr0", "type", "bridge", netns=netns)
    assert await drv.is_running(ctx(net, nl))
    before = link_json(netns, "hbr0")
    await drv.stop(ctx(net, nl))
    assert link_json(netns, "hbr0") == before


async def test_direct_and_hostdev(nl: Netlink, netns: str) -> None:
    for drv in (DIRECT, HOSTDEV):
        net = net_xml(mode="private", bridge="", ips="")
        await drv.start(ctx(net, nl))
        assert await drv.is_running(ctx(net, nl))
        await drv.repair(ctx(net, nl))
        assert drv.watched_link(net) is None
        await drv.stop(ctx(net, nl))
    assert [link["ifname"] for link in json.loads(ip("-j", "link", netns=netns).stdout)] == ["lo"]


async def test_cancelled_start_leaves_nothing(nl: Netlink, netns: str) -> None:
    gate = trio.Event()

    async def hang(c: StepContext) -> None:
        gate.set()
        await trio.sleep_forever()

    drv = VirtualDriver()
    drv.insert_step(Step("dnsmasq", hang), after="routes")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(drv.start, ctx(net_xml(**FULL), nl))
        await gate.wait()
        assert link_json(netns, "vbr0") is not None
        nursery.cancel_scope.cancel()
    assert link_json(netns, "vbr0") is None


async def test_steps_get_the_seams(nl: Netlink, netns: str, tmp_path: Path) -> None:
    """A step gets the namespace (a program run inside it sees the bridge the
    batched steps made before it), its run directory, a sysctl writer, and a
    repair used by recovery; stop undoes in reverse order."""
    order: list[str] = []

    async def forward_on(c: StepContext) -> None:
        await c.sysctl("net.ipv4.ip_forward", "1")
        order.append("forward")

    async def forward_off(c: StepContext) -> None:
        await c.sysctl("net.ipv4.ip_forward", "0")
        order.append("-forward")

    async def probe(c: StepContext) -> None:
        done = await c.run(["ip", "-o", "link", "show", "vbr0"])
        (c.ensure_run_dir() / "probe").write_bytes(done.stdout)
        order.append("probe")

    async def unprobe(c: StepContext) -> None:
        (c.run_dir / "probe").unlink()
        order.append("-probe")

    drv = VirtualDriver()
    drv.insert_step(Step("forwarding", forward_on, forward_off, repair=forward_on), after="routes")
    drv.insert_step(Step("probe", probe, unprobe), after="forwarding")
    net = net_xml(**FULL)
    c = StepContext(net=net, nl=nl, run_dir=tmp_path / "t1" / "run", netns=netns)
    await drv.start(c)
    assert ns_sysctl(netns, "/proc/sys/net/ipv4/ip_forward") == "1"
    assert b"vbr0" in (c.run_dir / "probe").read_bytes()
    assert (c.run_dir.stat().st_mode & 0o777) == 0o700
    ip("netns", "exec", netns, "sysctl", "-qw", "net.ipv4.ip_forward=0", check=True)
    await drv.repair(c)
    assert ns_sysctl(netns, "/proc/sys/net/ipv4/ip_forward") == "1"
    await drv.stop(c)
    assert order == ["forward", "probe", "forward", "-probe", "-forward"]
    assert ns_sysctl(netns, "/proc/sys/net/ipv4/ip_forward") == "0"
    assert link_json(netns, "vbr0") is None
