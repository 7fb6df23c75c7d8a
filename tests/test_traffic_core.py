"""Networks that carry traffic, through the driver core (no mount), between
namespaces the test makes:

    guest: gv0 (DHCP) --- gh0 [nfbr0 10.72.0.1/24]  host (managed)  uh0 198.51.100.1/24 --- uv0 198.51.100.2/24 :up

The core starts the network in the "host" namespace: bridge, nft rules,
forwarding, dnsmasq. The guest gets its address from that dnsmasq with
busybox udhcpc; the upstream namespace has a route to the guest subnet
through the host, so only the firewall keeps it out. Teardown kills every
dnsmasq and udhcpc (also when a test fails) and removes the namespaces
(tests/traffic_support.py).
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest
import trio

from netfs import leases, nsexec
from netfs.core import INTERNAL_KINDS, Driver, Event
from netfs.dnsmasq import SUBDIR
from netfs.errors import NetfsError
from netfs.model import firewall as fwmodel
from netfs.netlink import Netlink
from tests.conftest import ip, pids_in
from tests.traffic_support import (
    WAIT,
    GuestLab,
    add_guest_link,
    add_uplink,
    bind_udp_in,
    namespaces,
    scratch_dir,
    skip_unless_root,
    uid_of,
)

T = TypeVar("T")
BRIDGE = "nfbr0"
HOST = "10.72.0.1"
FIXED_MAC = "52:54:00:12:34:56"
FIXED = "10.72.0.42"
GUEST_MAC = "52:54:00:00:00:07"
OTHER_MAC = "52:54:00:00:00:99"


def network(
    name: str = "tnat",
    mode: str = "nat",
    *,
    hosts: str = f"<host mac='{FIXED_MAC}' name='fixed1' ip='{FIXED}'/>",
    rng: str = "<range start='10.72.0.100' end='10.72.0.200'/>",
    dns: str = "<dns><host ip='10.72.0.9'><hostname>web</hostname></host></dns>",
    extra: str = "",
) -> str:
    fwd = "" if mode == "none" else f"<forward mode='{mode}'/>"
    return (
        f"<network><name>{name}</name>{fwd}<bridge name='{BRIDGE}'/>"
        f"<domain name='netfs.test'/>{dns}{extra}"
        f"<ip address='{HOST}' prefix='24'><dhcp>{rng}{hosts}</dhcp></ip></network>"
    )


@dataclass
class World(GuestLab):
    host: str
    up: str
    state: Path
    etc: Path

    def plug(self) -> None:
        """The guest's veth into the bridge (after the network started)."""
        ip("link", "set", "gh0", "master", BRIDGE, "up", netns=self.host)

    # -- what is in the host namespace ---------------------------------------------

    def dnsmasq_pids(self) -> list[int]:
        """The dnsmasq processes in the host namespace, not their helpers
        (children); a process that exits meanwhile (a lease helper) is skipped."""
        inside = pids_in(self.host)
        found = []
        for pid in inside:
            try:
                exe = os.path.basename(os.readlink(f"/proc/{pid}/exe"))
                if exe == "dnsmasq" and _ppid(pid) not in inside:
                    found.append(pid)
            except OSError:
                continue
        return sorted(found)

    def table(self) -> str:
        done = nsexec.run_sync(self.host, ["nft", "-s", "list", "ruleset"])
        return done.stdout.decode()

    def links(self) -> list[str]:
        return [
            line.split(":")[1].strip().split("@")[0]
            for line in ip("-o", "link", "show", netns=self.host).stdout.splitlines()
        ]

    def sysctl(self, key: str) -> str:
        return nsexec.run_sync(self.host, ["sysctl", "-n", key]).stdout.decode().strip()


def _ppid(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    return int(stat[stat.rfind(b")") + 2 :].split()[1])


@pytest.fixture
def world() -> Iterator[World]:
    skip_unless_root("dnsmasq", "busybox", "dig", "nft")
    with scratch_dir("netfs-traffic-") as top, namespaces("h", "g", "u") as (h, g, u):
        w = World(guest=g, server=HOST, files=top, host=h, up=u, state=top / "run", etc=top / "etc")
        try:
            add_guest_link(h, g, mac=GUEST_MAC)
            add_uplink(h, u, 0, "198.51.100.1/24", "198.51.100.2/24")
            ip("route", "add", "10.72.0.0/24", "via", "198.51.100.1", netns=u)
            w.write_script()
            yield w
        finally:
            w.reap()


@contextlib.asynccontextmanager
async def core(w: World, *, monitor: bool = True) -> AsyncIterator[tuple[Driver, Events]]:
    """A driver on the world's state directory (its guard running if `monitor`)."""
    async with Netlink(w.host) as nl:
        d = Driver(w.etc, w.state, nl)
        events = Events(d)
        await d.startup()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(events.run)
            if monitor:
                await nursery.start(d.run_monitor)
            yield d, events
            nursery.cancel_scope.cancel()


class Events:
    def __init__(self, d: Driver) -> None:
        self.ch = d.subscribe()
        self.items: list[Event] = []
        self.changed = trio.Event()

    async def run(self) -> None:
        async for ev in self.ch:
            self.items.append(ev)
            self.changed.set()
            self.changed = trio.Event()

    def lines(self, network: str) -> list[str]:
        return [
            " ".join(x for x in (e.kind, e.detail) if x)
            for e in self.items
            if e.network == network and e.kind not in INTERNAL_KINDS
        ]

    async def wait(self, cond: Callable[[], bool], what: str) -> None:
        with trio.fail_after(WAIT):
            while not cond():
                await self.changed.wait()
        assert cond(), what


async def in_thread(fn: Callable[..., T], *args: object) -> T:
    return await trio.to_thread.run_sync(fn, *args)


def rule_lines(table: str) -> list[str]:
    return [line.strip() for line in table.splitlines() if "counter" in line]


# ------------------------------------------------------------------ start / stop


async def test_nat_network_with_dhcp_carries_traffic(world: World) -> None:
    w = world
    async with core(w) as (d, ev):
        await d.define(network())
        await d.start("tnat")
        w.plug()
        # the bridge, the rules, forwarding, dnsmasq as its own user
        assert BRIDGE in w.links()
        assert "chain guest_nat.tnat" in w.table().replace('"', "")
        assert w.sysctl("net.ipv4.ip_forward") == "1"
        (pid,) = w.dnsmasq_pids()
        assert uid_of(pid) != 0
        assert "table inet netfs" in await d.firewall_listing("tnat")
        # DHCP from the range, then the <host> entry's fixed address
        got = await in_thread(w.dhcp, "-x", "hostname:guest1")
        assert isinstance(got, str) and got.startswith("10.72.0.")
        assert 100 <= int(got.rsplit(".", 1)[1]) <= 200
        await ev.wait(lambda: f"lease-added {GUEST_MAC} {got}" in ev.lines("tnat"), "lease")
        text = d.leases_text("tnat")
        assert f" {GUEST_MAC} ipv4 {got}/24 guest1 " in text
        w.set_mac(FIXED_MAC)
        assert await in_thread(w.dhcp) == FIXED
        # names: a <dns><host>, a DHCP host name in the domain
        assert await in_thread(w.dig, "web") == ["10.72.0.9"]
        assert await in_thread(w.dig, "fixed1.netfs.test") == [FIXED]
        # NAT: upstream sees the host's address and cannot reach the guest
        lis = await in_thread(w.listen, w.up, "198.51.100.2", 5101)
        assert await in_thread(w.connect, w.guest, "198.51.100.2", 5101) == "ok"
        assert (await in_thread(w.peer, lis))[0] == "198.51.100.1"
        await in_thread(w.listen, w.guest, FIXED, 5102)
        assert await in_thread(w.connect, w.up, FIXED, 5102) == "ECONNREFUSED"
        # stop: nothing of it is left but its lease records
        await d.stop("tnat")
        assert BRIDGE not in w.links()
        assert w.dnsmasq_pids() == []
        assert "tnat" not in w.table()
        assert not list((w.state / SUBDIR).glob("tnat.*"))
        assert d.firewall_text("tnat") == ""
        assert len(leases.read_leases(w.state, "tnat")) == 2
        # the leases are shown while it is down, and dropped with its definition
        assert FIXED in d.leases_text("tnat")
        await d.undefine("tnat")
        assert leases.read_leases(w.state, "tnat") == []


async def test_route_network_shows_the_guests_own_address(world: World) -> None:
    w = world
    async with core(w, monitor=False) as (d, _ev):
        await d.define(network("troute", "route", hosts=""))
        await d.start("troute")
        w.plug()
        got = await in_thread(w.dhcp)
        lis = await in_thread(w.listen, w.up, "198.51.100.2", 5111)
        assert await in_thread(w.connect, w.guest, "198.51.100.2", 5111) == "ok"
        assert (await in_thread(w.peer, lis))[0] == got
        lis = await in_thread(w.listen, w.guest, got, 5112)
        assert await in_thread(w.connect, w.up, got, 5112) == "ok"
        assert (await in_thread(w.peer, lis))[0] == "198.51.100.2"
        await d.stop("troute")


async def test_isolated_network_serves_dhcp_and_forwards_nothing(world: World) -> None:
    w = world
    async with core(w, monitor=False) as (d, _ev):
        await d.define(network("tiso", "none", hosts=""))
        await d.start("tiso")
        w.plug()
        got = await in_thread(w.dhcp)
        assert got.startswith("10.72.0.")
        assert await in_thread(w.dig, "web") == ["10.72.0.9"]
        nsexec.run_sync(w.host, ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
        await in_thread(w.listen, w.up, "198.51.100.2", 5121)
        assert await in_thread(w.connect, w.guest, "198.51.100.2", 5121) != "ok"
        await in_thread(w.listen, w.guest, got, 5122)
        assert await in_thread(w.connect, w.up, got, 5122) == "ECONNREFUSED"
        # control: the host itself is reachable from the guest
        lis = await in_thread(w.listen, w.host, HOST, 5123)
        assert await in_thread(w.connect, w.guest, HOST, 5123) == "ok"
        assert (await in_thread(w.peer, lis))[0] == got
        await d.stop("tiso")


async def test_failed_start_leaves_nothing_behind(world: World) -> None:
    w = world
    sock = bind_udp_in(w.host, "0.0.0.0", 53)  # no SO_REUSEADDR: dnsmasq cannot bind beside it
    try:
        async with core(w, monitor=False) as (d, _ev):
            await d.define(network())
            with pytest.raises(NetfsError) as e:
                await d.start("tnat")
            assert e.value.errno == errno.EADDRINUSE
            assert "dnsmasq" in e.value.message and "in use" in e.value.message
            assert "in use" in d.get("tnat").error
            assert not d.get("tnat").active
            assert BRIDGE not in w.links()
            assert w.dnsmasq_pids() == []
            assert "tnat" not in w.table()
            assert not list((w.state / SUBDIR).glob("tnat.*"))
            sock.close()
            await d.start("tnat")  # the port is free again: it starts
            assert len(w.dnsmasq_pids()) == 1
            await d.stop("tnat")
    finally:
        sock.close()


# ------------------------------------------------------------------ repairs


async def test_dnsmasq_killed_is_started_again_with_the_leases(world: World) -> None:
    w = world
    async with core(w) as (d, ev):
        await d.define(network())
        await d.start("tnat")
        w.plug()
        got = await in_thread(w.dhcp, "-x", "hostname:guest1")
        await ev.wait(lambda: any("lease-added" in x for x in ev.lines("tnat")), "lease")
        (first,) = w.dnsmasq_pids()
        os.kill(first, signal.SIGKILL)
        await ev.wait(lambda: "repaired dnsmasq" in ev.lines("tnat"), "repaired")
        (second,) = w.dnsmasq_pids()
        assert second != first
        # the new one knows the lease: the name resolves, the guest keeps its address
        assert await in_thread(w.dig, "guest1.netfs.test") == [got]
        assert await in_thread(w.dhcp, "-r", got) == got
        # and a stop is not an exit to repair
        await d.stop("tnat")
        await trio.sleep(0.3)
        assert w.dnsmasq_pids() == []
        assert ev.lines("tnat").count("repaired dnsmasq") == 1


async def test_rules_deleted_behind_our_back_are_put_back(world: World) -> None:
    w = world
    async with core(w) as (d, ev):
        await d.define(network())
        await d.start("tnat")
        w.plug()
        before = rule_lines(w.table())
        assert before
        nsexec.run_sync(w.host, ["nft", "flush", "chain", "inet", "netfs", "guest_input.tnat"])
        await ev.wait(lambda: "repaired firewall" in ev.lines("tnat"), "repaired firewall")
        assert rule_lines(w.table()) == before  # no duplicates
        # the whole table deleted
        nsexec.run_sync(w.host, ["nft", "delete", "table", "inet", "netfs"])
        await ev.wait(lambda: ev.lines("tnat").count("repaired firewall") == 2, "repaired again")
        assert rule_lines(w.table()) == before
        # one of the table's own (base) chains deleted: every network's
        # traffic went through it, so the repair is reported for each
        nsexec.run_sync(w.host, ["nft", "delete", "chain", "inet", "netfs", "postrouting"])
        await ev.wait(lambda: ev.lines("tnat").count("repaired firewall") == 3, "base chain")
        assert rule_lines(w.table()) == before
        # and it still keeps the upstream out
        got = await in_thread(w.dhcp)
        await in_thread(w.listen, w.guest, got, 5131)
        assert await in_thread(w.connect, w.up, got, 5131) == "ECONNREFUSED"
        await d.stop("tnat")
        assert "tnat" not in w.table()


# ------------------------------------------------------------------ recovery


async def test_daemon_restart_adopts_and_sweeps(world: World) -> None:
    w = world
    async with core(w) as (d, ev):
        await d.define(network())
        other = network("tother", hosts="").replace(BRIDGE, "nfbr1")
        await d.define(other.replace("10.72.0.", "10.73.0."))
        await d.start("tnat")
        await d.start("tother")
        w.plug()
        got = await in_thread(w.dhcp, "-x", "hostname:guest1")
        await ev.wait(lambda: any("lease-added" in x for x in ev.lines("tnat")), "lease")
        table = rule_lines(w.table())
        pids = w.dnsmasq_pids()
        assert len(pids) == 2
        # a start is no repair, also while the guard checks the table
        assert [x for x in ev.items if x.kind == "repaired"] == []
    # "kill -9 during the stop of tother": its status file is gone, its
    # bridge, rules and dnsmasq are still there
    (w.state / "tother" / "status.xml").unlink()
    # one rule of tnat lost while the daemon was down
    nsexec.run_sync(w.host, ["nft", "flush", "chain", "inet", "netfs", "guest_output.tnat"])
    async with core(w) as (d2, ev2):
        assert d2.get("tnat").active and not d2.get("tother").active
        (pid,) = w.dnsmasq_pids()
        assert pid in pids  # adopted, not restarted
        assert "tother" not in w.table() and "nfbr1" not in w.links()
        tnat_rules = [r for r in table if "nfbr1" not in r and "10.73.0." not in r]
        assert sorted(rule_lines(w.table())) == sorted(tnat_rules)  # put back, once
        assert "repaired firewall" in ev2.lines("tnat")
        assert "repaired dnsmasq" not in ev2.lines("tnat")
        assert f"{got}/24 guest1" in d2.leases_text("tnat")
        assert await in_thread(w.dhcp, "-r", got) == got
        # the guard of the new driver watches the adopted dnsmasq
        os.kill(pid, signal.SIGKILL)
        await ev2.wait(lambda: "repaired dnsmasq" in ev2.lines("tnat"), "repaired")
        await d2.stop("tnat")


async def test_restart_with_nothing_changed_reads_the_table_once(world: World) -> None:
    w = world
    async with core(w) as (d, _ev):
        await d.define(network())
        await d.start("tnat")
        table = rule_lines(w.table())
    async with core(w) as (d2, ev2):
        # recovery read the table; the guard's monitor, once it listens,
        # finds the ruleset's generation unchanged: no second read
        await d2.traffic.monitoring.wait()
        assert not d2.traffic.check_pending
        assert d2.traffic.checks == 1
        assert rule_lines(w.table()) == table
        assert [x for x in ev2.items if x.kind == "repaired"] == []
        # it still watches: a rule deleted now is put back
        nsexec.run_sync(w.host, ["nft", "flush", "chain", "inet", "netfs", "guest_input.tnat"])
        await ev2.wait(lambda: "repaired firewall" in ev2.lines("tnat"), "repaired firewall")
        assert rule_lines(w.table()) == table
        await d2.stop("tnat")


async def test_rules_lost_between_recovery_and_the_monitor_are_put_back(world: World) -> None:
    w = world
    async with core(w) as (d, _ev):
        await d.define(network())
        await d.start("tnat")
        table = rule_lines(w.table())
    async with Netlink(w.host) as nl:
        d2 = Driver(w.etc, w.state, nl)
        events = Events(d2)
        await d2.startup()
        # after recovery read the table, before the guard's monitor listens
        nsexec.run_sync(w.host, ["nft", "flush", "chain", "inet", "netfs", "guest_input.tnat"])
        async with trio.open_nursery() as nursery:
            nursery.start_soon(events.run)
            await nursery.start(d2.run_monitor)
            await events.wait(lambda: "repaired firewall" in events.lines("tnat"), "repaired")
            assert rule_lines(w.table()) == table
            await d2.stop("tnat")
            nursery.cancel_scope.cancel()


async def test_restart_after_a_network_went_down_reads_the_table_again(world: World) -> None:
    w = world
    other = network("tother", hosts="").replace(BRIDGE, "nfbr1").replace("10.72.0.", "10.73.0.")
    async with core(w) as (d, _ev):
        await d.define(network())
        await d.define(other)
        await d.start("tnat")
        await d.start("tother")
        table = rule_lines(w.table())
    # tother's bridge deleted while no daemon runs: recovery finds it down
    # and removes its rules after the table was first read
    ip("link", "del", "nfbr1", netns=w.host)
    async with core(w) as (d2, ev2):
        assert d2.get("tnat").active and not d2.get("tother").active
        assert d2.get("tnat").error == "" and d2.get("tother").error == ""
        tnat_rules = [r for r in table if "nfbr1" not in r and "10.73.0." not in r]
        assert sorted(rule_lines(w.table())) == sorted(tnat_rules)
        assert "tother" not in w.table()
        assert [x for x in ev2.items if x.kind == "repaired"] == []
        await d2.stop("tnat")


async def test_restart_puts_forwarding_back_once(world: World) -> None:
    w = world
    other = network("tother", hosts="").replace(BRIDGE, "nfbr1").replace("10.72.0.", "10.73.0.")
    async with core(w, monitor=False) as (d, _ev):
        await d.define(network())
        await d.define(other)
        await d.start("tnat")
        await d.start("tother")
    nsexec.run_sync(w.host, ["sysctl", "-q", "-w", "net.ipv4.ip_forward=0"])
    async with core(w, monitor=False) as (d2, ev2):
        # recovery reads the sysctl once for both networks, and again once
        # the first one wrote it: one repair, not one per network
        assert w.sysctl("net.ipv4.ip_forward") == "1"
        await ev2.wait(lambda: any(x.kind == "repaired" for x in ev2.items), "repaired")
        await trio.sleep(0.2)  # every event of the start-up taken in
        repaired = [(x.network, x.detail) for x in ev2.items if x.kind == "repaired"]
        assert len(repaired) == 1 and repaired[0][1] == "forwarding"
        assert d2.get("tnat").active and d2.get("tother").active
        await d2.stop("tnat")
        await d2.stop("tother")


# ------------------------------------------------------------------ live changes


async def test_live_change_of_dhcp_hosts_and_ranges(world: World) -> None:
    w = world
    async with core(w) as (d, ev):
        await d.define(network(hosts=""))
        await d.start("tnat")
        w.plug()
        w.set_mac(OTHER_MAC)
        first = await in_thread(w.dhcp)
        assert first != "10.72.0.43"
        (pid,) = w.dnsmasq_pids()
        # a host entry added: hosts file rewritten and SIGHUP, same process
        await d.define(network(hosts=f"<host mac='{OTHER_MAC}' name='o' ip='10.72.0.43'/>"))
        await ev.wait(lambda: ev.lines("tnat").count("updated") == 1, "updated")
        assert w.dnsmasq_pids() == [pid]
        assert await in_thread(w.dhcp, "-r", first) == "10.72.0.43"
        assert await in_thread(w.dig, "o.netfs.test") == ["10.72.0.43"]
        assert "10.72.0.43" in (d.status_xml("tnat") or "")
        # the range changed: dnsmasq restarted with it, the lease kept
        await d.define(
            network(
                hosts=f"<host mac='{OTHER_MAC}' name='o' ip='10.72.0.43'/>",
                rng="<range start='10.72.0.150' end='10.72.0.160'/>",
            )
        )
        (pid2,) = w.dnsmasq_pids()
        assert pid2 != pid
        assert "dhcp-range=10.72.0.150,10.72.0.160" in (w.state / SUBDIR / "tnat.conf").read_text()
        assert "10.72.0.43" in d.leases_text("tnat")
        w.set_mac(GUEST_MAC)
        got = await in_thread(w.dhcp)
        assert 150 <= int(got.rsplit(".", 1)[1]) <= 160
        # any other difference waits for the next start
        await d.define(network(hosts="", extra="<mtu size='1400'/>"))
        assert w.dnsmasq_pids() == [pid2]
        assert "mtu" not in (d.status_xml("tnat") or "")
        await ev.wait(lambda: ev.lines("tnat").count("updated") == 3, "updated")
        assert ev.lines("tnat").count("repaired dnsmasq") == 0
        await d.stop("tnat")


# ------------------------------------------------------------------ trust


async def test_raw_dnsmasq_options_only_from_root(world: World) -> None:
    w = world
    raw = (
        "<network xmlns:dnsmasq='http://libvirt.org/schemas/network/dnsmasq/1.0'>"
        "<name>traw</name><bridge name='nfbr2'/>"
        "<dnsmasq:options><dnsmasq:option value='dhcp-script=/bin/true'/></dnsmasq:options>"
        "</network>"
    )
    async with core(w, monitor=False) as (d, _ev):
        with pytest.raises(NetfsError) as e:
            await d.define(raw, name="traw", privileged=False)
        assert e.value.errno == errno.EPERM and "dnsmasq:options" in e.value.message
        assert "traw" not in d.names()
        await d.define("<network><name>traw</name><bridge name='nfbr2'/></network>")
        with pytest.raises(NetfsError) as e:
            await d.define(raw, name="traw", privileged=False)
        assert e.value.errno == errno.EPERM
        assert "dnsmasq:options" in d.get("traw").error
        assert "dnsmasq" not in d.definition_xml("traw")  # the old definition stays
        await d.define(raw, name="traw")  # root may
        assert "dhcp-script=/bin/true" in d.definition_xml("traw")


def test_which_networks_have_leases_and_which_changes_are_live() -> None:
    """Pure: the rules behind leases_text and live changes."""
    from netfs.model.dnsmasq import live_changeable
    from netfs.model.network import parse_network
    from netfs.traffic import dhcp_prefixes

    plain = parse_network(network(hosts="", rng=""))
    assert dhcp_prefixes(plain) is None
    assert dhcp_prefixes(parse_network(network())) == {"ipv4": 24}
    a, b, c = (parse_network(network(**k)) for k in ({}, {"hosts": ""}, {"mode": "route"}))
    b.uuid = c.uuid = a.uuid  # (a redefinition keeps the generated uuid)
    assert live_changeable(a, b)
    assert not live_changeable(a, c)
    assert fwmodel.expected_rules(parse_network(network(mode="open"))).empty()
