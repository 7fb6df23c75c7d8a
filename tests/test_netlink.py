"""netfs.netlink against the real kernel, in throwaway network namespaces."""

from __future__ import annotations

import errno
import json
import socket
import subprocess
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

from netfs.errors import NetfsError
from netfs.netlink import LinkEvent, LinkMonitor, Netlink
from tests.conftest import ip

pytestmark = pytest.mark.kernel


@pytest.fixture
async def nl(netns: str) -> AsyncIterator[Netlink]:
    async with Netlink(netns) as n:
        yield n


def link_json(netns: str, name: str) -> dict[str, Any] | None:
    r = ip("-d", "-j", "link", "show", name, netns=netns, check=False)
    if r.returncode != 0:
        return None
    return json.loads(r.stdout)[0]


def addr_json(netns: str, name: str) -> list[dict[str, Any]]:
    return json.loads(ip("-j", "addr", "show", name, netns=netns).stdout)[0]["addr_info"]


def ns_sysctl(netns: str, path: str) -> str:
    return subprocess.run(
        ["ip", "netns", "exec", netns, "cat", path], capture_output=True, text=True, check=True
    ).stdout.strip()


async def test_create_bridge_all_attributes(nl: Netlink, netns: str) -> None:
    index = await nl.create_bridge(
        "nbr0", mac="52:54:00:12:34:56", mtu=9000, stp=True, forward_delay=5, alias="netfs:u-1"
    )
    j = link_json(netns, "nbr0")
    assert j is not None
    assert j["ifindex"] == index
    assert j["linkinfo"]["info_kind"] == "bridge"
    assert j["address"] == "52:54:00:12:34:56"
    assert j["mtu"] == 9000
    assert j["linkinfo"]["info_data"]["stp_state"] == 1
    assert j["linkinfo"]["info_data"]["forward_delay"] == 500  # clock_t: 5 s
    assert j["ifalias"] == "netfs:u-1"
    assert "UP" in j["flags"]
    info = await nl.link("nbr0")
    assert info is not None
    assert (info.index, info.kind, info.mac, info.mtu, info.alias, info.up) == (
        index,
        "bridge",
        "52:54:00:12:34:56",
        9000,
        "netfs:u-1",
        True,
    )
    assert info.stp_state == 1 and info.forward_delay == 5.0


async def test_create_bridge_down_no_stp(nl: Netlink, netns: str) -> None:
    await nl.create_bridge(
        "nbr1", mac=None, mtu=None, stp=False, forward_delay=0, alias="a", up=False
    )
    j = link_json(netns, "nbr1")
    assert j is not None
    assert "UP" not in j["flags"]
    assert j["linkinfo"]["info_data"]["stp_state"] == 0
    assert j["linkinfo"]["info_data"]["forward_delay"] == 0
    await nl.set_up("nbr1")
    j = link_json(netns, "nbr1")
    assert j is not None and "UP" in j["flags"]


async def test_mtu_and_mac_survive_a_port(nl: Netlink, netns: str) -> None:
    # the MTU is set like libvirt's SIOCSIFMTU (user-set): a 1500 port does not lower it
    await nl.create_bridge(
        "nbr2", mac="52:54:00:00:00:02", mtu=9000, stp=False, forward_delay=0, alias="x"
    )
    ip("link", "add", "nv0", "mtu", "1500", "type", "veth", "peer", "nv1", netns=netns)
    ip("link", "set", "nv0", "master", "nbr2", netns=netns)
    j = link_json(netns, "nbr2")
    assert j is not None
    assert j["mtu"] == 9000
    assert j["address"] == "52:54:00:00:00:02"


async def test_create_existing_refused_and_untouched(nl: Netlink, netns: str) -> None:
    ip("link", "add", "nbr3", "type", "veth", "peer", "nbr3p", netns=netns)
    before = link_json(netns, "nbr3")
    with pytest.raises(NetfsError) as ei:
        await nl.create_bridge("nbr3", mac=None, mtu=9000, stp=True, forward_delay=2, alias="z")
    assert ei.value.errno == errno.EADDRINUSE
    assert ei.value.message == "error creating bridge interface nbr3: File exists"
    assert link_json(netns, "nbr3") == before


async def test_failed_follow_up_deletes_new_bridge(nl: Netlink, netns: str) -> None:
    with pytest.raises(NetfsError) as ei:
        await nl.create_bridge("nbr4", mac=None, mtu=100000, stp=False, forward_delay=0, alias="a")
    assert ei.value.errno == errno.EINVAL
    assert link_json(netns, "nbr4") is None


async def test_delete_link(nl: Netlink, netns: str) -> None:
    await nl.create_bridge("nbr5", mac=None, mtu=None, stp=False, forward_delay=0, alias=None)
    assert await nl.delete_link("nbr5") is True
    assert link_json(netns, "nbr5") is None
    assert await nl.link("nbr5") is None
    assert await nl.delete_link("nbr5") is False


async def test_addresses_and_routes(nl: Netlink, netns: str) -> None:
    await nl.create_bridge("nbr6", mac=None, mtu=None, stp=False, forward_delay=0, alias=None)
    await nl.add_address("nbr6", "192.168.77.1", 24)
    await nl.add_address("nbr6", "fd00:77::1", 64)
    addrs = {(a["family"], a["local"], a["prefixlen"]): a for a in addr_json(netns, "nbr6")}
    v4 = addrs[("inet", "192.168.77.1", 24)]
    assert v4["broadcast"] == "192.168.77.255"
    assert addrs[("inet6", "fd00:77::1", 64)].get("nodad") is True
    mine = {(a.family, a.address, a.prefixlen) for a in await nl.addresses("nbr6")}
    assert (socket.AF_INET, "192.168.77.1", 24) in mine
    assert (socket.AF_INET6, "fd00:77::1", 64) in mine
    assert all(a.ifname == "nbr6" for a in await nl.addresses("nbr6"))
    assert {a.ifname for a in await nl.addresses()} == {"lo", "nbr6"}
    assert await nl.addresses("nosuchdev") == []

    await nl.add_route("10.77.0.0", 16, gateway="192.168.77.2", metric=7, ifname="nbr6")
    await nl.add_route("fd00:78::", 64, gateway="fd00:77::2", metric=None, ifname="nbr6")
    routes = json.loads(ip("-j", "route", "show", "10.77.0.0/16", netns=netns).stdout)
    assert routes[0]["gateway"] == "192.168.77.2"
    assert routes[0]["dev"] == "nbr6"
    assert routes[0]["metric"] == 7
    r6 = json.loads(ip("-6", "-j", "route", "show", "fd00:78::/64", netns=netns).stdout)
    assert r6[0]["gateway"] == "fd00:77::2"
    mine4 = {(r.dst, r.prefixlen, r.ifname, r.gateway) for r in await nl.routes(socket.AF_INET)}
    assert ("10.77.0.0", 16, "nbr6", "192.168.77.2") in mine4
    assert ("192.168.77.0", 24, "nbr6", None) in mine4
    mine6 = {(r.dst, r.prefixlen, r.gateway) for r in await nl.routes(socket.AF_INET6)}
    assert ("fd00:78::", 64, "fd00:77::2") in mine6


async def test_kernel_errors_carry_errno(nl: Netlink) -> None:
    with pytest.raises(NetfsError) as ei:
        await nl.add_address("nosuchdev", "10.0.0.1", 8)
    assert ei.value.errno == errno.ENODEV
    await nl.create_bridge("nbr7", mac=None, mtu=None, stp=False, forward_delay=0, alias=None)
    await nl.add_address("nbr7", "10.7.0.1", 16)
    with pytest.raises(NetfsError) as ei:
        await nl.add_address("nbr7", "10.7.0.1", 16)
    assert ei.value.errno == errno.EEXIST


async def test_ipv6_sysctls_hit_the_namespace(nl: Netlink, netns: str) -> None:
    await nl.create_bridge("nbr8", mac=None, mtu=None, stp=False, forward_delay=0, alias=None)
    base = "/proc/sys/net/ipv6/conf/nbr8"
    await nl.set_ipv6_sysctls("nbr8", disable=True)
    assert ns_sysctl(netns, f"{base}/disable_ipv6") == "1"
    assert ns_sysctl(netns, f"{base}/accept_ra") == "0"
    assert ns_sysctl(netns, f"{base}/autoconf") == "0"
    await nl.set_ipv6_sysctls("nbr8", disable=False)
    assert ns_sysctl(netns, f"{base}/disable_ipv6") == "0"
    assert await nl.read_sysctl(f"{base}/disable_ipv6") == "0"
    # a missing sysctl is skipped quietly
    await nl.set_ipv6_sysctls("nosuchdev", disable=True)


async def test_sysctl_writer(nl: Netlink, netns: str) -> None:
    await nl.write_sysctl("net.ipv4.ip_forward", "1")
    assert ns_sysctl(netns, "/proc/sys/net/ipv4/ip_forward") == "1"
    assert await nl.read_sysctl("net.ipv4.ip_forward") == "1"
    with open("/proc/sys/net/ipv4/ip_forward") as f:  # the host's is not touched
        host = f.read().strip()
    await nl.write_sysctl("net/ipv4/ip_forward", "0")  # slash-separated form
    assert ns_sysctl(netns, "/proc/sys/net/ipv4/ip_forward") == "0"
    with open("/proc/sys/net/ipv4/ip_forward") as f:
        assert f.read().strip() == host
    with pytest.raises(NetfsError) as ei:
        await nl.write_sysctl("net.ipv6.conf.nosuchdev.accept_ra", "0")
    assert ei.value.errno == errno.ENOENT
    await nl.write_sysctl("net.ipv6.conf.nosuchdev.accept_ra", "0", missing_ok=True)
    with pytest.raises(NetfsError) as ei:
        await nl.write_sysctl("net/../../etc/x", "0")
    assert ei.value.errno == errno.EINVAL


async def test_worker_is_in_namespace_caller_is_not(nl: Netlink, netns: str) -> None:
    await nl.create_bridge("nbr9", mac=None, mtu=None, stp=False, forward_delay=0, alias=None)
    names = {link.name for link in await nl.links()}
    assert names == {"lo", "nbr9"}
    # the calling thread stayed in its own namespace
    with pytest.raises(OSError):
        socket.if_nametoindex("nbr9")
    assert ip("link", "show", "nbr9", check=False).returncode != 0


async def test_closed_netlink_refuses(netns: str) -> None:
    nl = Netlink(netns)
    with pytest.raises(NetfsError):
        await nl.links()
    await nl.open()
    await nl.close()
    with pytest.raises(NetfsError):
        await nl.links()


async def test_open_missing_namespace() -> None:
    nl = Netlink("nfs-no-such-namespace")
    with pytest.raises(NetfsError) as ei:
        await nl.open()
    assert ei.value.errno == errno.ENOENT
    await nl.close()


async def next_event(mon: LinkMonitor, want: Any) -> LinkEvent:
    """The next event for which want(ev) is true (a safety net, not a timed assertion)."""
    with trio.fail_after(20):
        async for ev in mon:
            if want(ev):
                return ev
    raise AssertionError("monitor ended")


async def test_monitor_sees_outside_changes(nl: Netlink, netns: str) -> None:
    async with nl.monitor() as mon:
        ip("link", "add", "mbr0", "type", "bridge", netns=netns)
        ev = await next_event(mon, lambda e: e.name == "mbr0")
        assert ev.kind == "new"
        index = ev.index
        # an alias change alone is not notified by the kernel; the next change carries it
        ip("link", "set", "mbr0", "alias", "netfs:abc", netns=netns)
        ip("link", "set", "mbr0", "up", netns=netns)
        ev = await next_event(mon, lambda e: e.alias == "netfs:abc")
        assert ev.kind == "new" and ev.index == index
        ip("link", "del", "mbr0", netns=netns)
        ev = await next_event(mon, lambda e: e.kind == "del")
        assert (ev.name, ev.index, ev.alias) == ("mbr0", index, "netfs:abc")


async def test_monitor_overrun_then_keeps_working(nl: Netlink, netns: str) -> None:
    ip("link", "add", "storm0", "type", "bridge", netns=netns)
    async with nl.monitor(rcvbuf=4096) as mon:
        # an event storm while nobody reads: thousands of RTM_NEWLINK
        batch = "".join(f"link set storm0 mtu {1400 + i % 100}\n" for i in range(3000))
        await trio.run_process(["ip", "-n", netns, "-batch", "-"], stdin=batch.encode())
        ev = await next_event(mon, lambda e: True)
        assert ev.kind == "overrun"
        # and it keeps working afterwards
        ip("link", "del", "storm0", netns=netns)
        ev = await next_event(mon, lambda e: e.kind == "del")
        assert ev.name == "storm0"


async def test_requests_concurrent_from_many_tasks(nl: Netlink) -> None:
    results: list[int] = []

    async def one(i: int) -> None:
        results.append(
            await nl.create_bridge(
                f"cbr{i}", mac=None, mtu=None, stp=False, forward_delay=0, alias=None
            )
        )

    async with trio.open_nursery() as nursery:
        for i in range(5):
            nursery.start_soon(one, i)
    assert len(set(results)) == 5
    assert {link.name for link in await nl.links()} >= {f"cbr{i}" for i in range(5)}


async def test_routes_fresh_namespace_has_no_main_table(nl: Netlink) -> None:
    # the kernel answers ENOENT for a table that was never made: no routes
    assert await nl.routes(socket.AF_INET) == []
    assert await nl.routes(socket.AF_INET, match=[("10.1.0.0", 16)]) == []


async def test_routes_match_over_a_dump_of_many_chunks(nl: Netlink, netns: str) -> None:
    await nl.create_bridge("rbr0", mac=None, mtu=None, stp=False, forward_delay=0, alias=None)
    await nl.add_address("rbr0", "10.200.0.1", 16)
    # 1500 routes: the dump arrives in several receive chunks
    batch = "".join(f"route add 10.{i // 250}.{i % 250}.0/24 dev rbr0\n" for i in range(1500))
    batch += "route add 172.16.0.0/12 via 10.200.0.2 dev rbr0 metric 9\n"
    batch += "route add table 100 10.250.0.0/24 dev rbr0\n"  # another table: never seen
    await trio.run_process(["ip", "-n", netns, "-batch", "-"], stdin=batch.encode())
    every = await nl.routes(socket.AF_INET)
    assert len(every) == 1502
    assert all(r.ifname == "rbr0" for r in every)
    got = await nl.routes(
        socket.AF_INET,
        match=[("10.5.249.0", 24), ("10.0.0.0", 24), ("172.16.0.0", 12), ("10.5.249.0", 23)],
    )
    assert sorted((r.dst, r.prefixlen, r.ifname, r.gateway, r.metric) for r in got) == [
        ("10.0.0.0", 24, "rbr0", None, None),
        ("10.5.249.0", 24, "rbr0", None, None),
        ("172.16.0.0", 12, "rbr0", "10.200.0.2", 9),
    ]
    assert await nl.routes(socket.AF_INET, match=[("10.250.0.0", 24)]) == []
    assert await nl.routes(socket.AF_INET, match=[("10.9.0.0", 24)]) == []
    assert await nl.routes(socket.AF_INET, match=[]) == []
    # a default route has no RTA_DST: it is matched too
    ip("route", "add", "default", "via", "10.200.0.3", "dev", "rbr0", netns=netns)
    (default,) = await nl.routes(socket.AF_INET, match=[("0.0.0.0", 0)])
    assert (default.dst, default.prefixlen, default.gateway) == ("0.0.0.0", 0, "10.200.0.3")


async def test_addresses_of_one_link_among_many(nl: Netlink, netns: str) -> None:
    batch = "".join(
        f"link add abr{i} type bridge\naddr add 10.{i}.0.1/16 dev abr{i}\n" for i in range(50)
    )
    await trio.run_process(["ip", "-n", netns, "-batch", "-"], stdin=batch.encode())
    got = await nl.addresses("abr37")
    assert [(a.ifname, a.family, a.address, a.prefixlen) for a in got] == [
        ("abr37", socket.AF_INET, "10.37.0.1", 16)
    ]
    every = await nl.addresses()
    assert {a.ifname for a in every if a.family == socket.AF_INET} == {"lo"} | {
        f"abr{i}" for i in range(50)
    }


async def test_links_lean_snapshot(nl: Netlink, netns: str) -> None:
    await nl.create_bridge(
        "lbr0", mac="52:54:00:00:00:42", mtu=1400, stp=True, forward_delay=3, alias="netfs:q"
    )
    ip("link", "add", "lve0", "type", "veth", "peer", "name", "lve1", netns=netns)
    by_name = {link.name: link for link in await nl.links()}
    assert set(by_name) == {"lo", "lbr0", "lve0", "lve1"}
    br = by_name["lbr0"]
    assert (br.kind, br.mac, br.mtu, br.alias, br.up, br.stp_state, br.forward_delay) == (
        "bridge",
        "52:54:00:00:00:42",
        1400,
        "netfs:q",
        True,
        1,
        3.0,
    )
    assert br == await nl.link("lbr0")
    assert by_name["lve0"].kind == "veth" and by_name["lve0"].stp_state is None
    assert by_name["lo"].kind is None and by_name["lo"].alias is None
    with pytest.raises(NetfsError):
        await nl.link("x" * 40)  # the kernel refuses the name


async def test_batch_one_submission_in_order_and_stops_at_failure(nl: Netlink, netns: str) -> None:
    calls: list[object] = []
    real_call = nl._call

    async def counting(fn: Any, *args: Any) -> Any:
        calls.append(fn)
        return await real_call(fn, *args)

    nl._call = counting  # type: ignore[method-assign]
    b = nl.batch()
    await b.create_bridge("nfsba0", mac=None, mtu=None, stp=False, forward_delay=0, alias="x")
    await b.set_ipv6_sysctls("nfsba0", disable=True)
    await b.add_address("nfsba0", "10.31.0.1", 24)
    await b.add_route("10.32.0.0", 16, gateway="10.31.0.9", ifname="nfsba0", best_effort=True)
    await b.add_route("10.99.0.0", 16, gateway="10.98.0.1", ifname="nfsba0", best_effort=True)
    assert (len(b), b.completed, calls) == (5, 0, [])  # recorded only
    await b.flush()
    assert (len(b), b.completed, len(calls)) == (5, 5, 1)  # one submission
    assert link_json(netns, "nfsba0") is not None
    assert [a["local"] for a in addr_json(netns, "nfsba0")] == ["10.31.0.1"]
    assert ns_sysctl(netns, "/proc/sys/net/ipv6/conf/nfsba0/disable_ipv6") == "1"
    # a query flushes what is recorded before it
    await b.add_address("nfsba0", "10.33.0.1", 24)
    addrs = await b.addresses("nfsba0")
    assert {a.address for a in addrs} == {"10.31.0.1", "10.33.0.1"} and b.completed == 6
    # the first failure stops the batch and is raised; the rest is dropped
    await b.add_address("nfsba0", "10.34.0.1", 24)
    await b.add_address("nfsba0", "10.34.0.1", 24)  # EEXIST
    await b.add_address("nfsba0", "10.35.0.1", 24)
    with pytest.raises(NetfsError) as e:
        await b.flush()
    assert e.value.errno == errno.EEXIST
    assert (len(b), b.completed) == (9, 7)  # the one after the failure: dropped
    assert "10.35.0.1" not in {a["local"] for a in addr_json(netns, "nfsba0")}
    assert await nl.delete_link("nfsba0")
