"""Traffic through netfs's firewall rules, end to end, between namespaces the
test makes: a guest behind a bridge in a "host" namespace (where the rules
are applied and forwarding is on) and an upstream namespace.

    guest: gv0 10.71.0.2/24 --- gh0 [nfbr0 10.71.0.1/24]  host  uh0 198.51.100.1/24 --- uv0 198.51.100.2/24 :up
                                                                uh1 203.0.113.1/24  --- uv1 203.0.113.2/24  :up

The upstream has a route to the guest's subnet through the host, so what
keeps it out is the firewall; every refusal is paired with a control (the
same connection without the rules) that succeeds. The namespaces, links and
connections come from tests/traffic_support.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import trio

from netfs import firewall, nsexec
from netfs.model.network import NetworkDef, parse_network
from tests.conftest import ip
from tests.traffic_support import (
    Lab,
    add_bridge,
    add_guest_link,
    add_uplink,
    namespaces,
    skip_unless_root,
)


@dataclass
class Topology(Lab):
    host: str
    guest: str
    up: str

    def apply(self, net: NetworkDef) -> None:
        trio.run(firewall.apply, self.host, net)

    def remove(self, net: NetworkDef) -> None:
        trio.run(firewall.remove, self.host, net)


@pytest.fixture
def topo() -> Iterator[Topology]:
    skip_unless_root()
    with namespaces("h", "g", "u") as (h, g, u):
        t = Topology(h, g, u)
        try:
            add_bridge(h, "nfbr0", "10.71.0.1/24")
            add_guest_link(h, g, bridge="nfbr0")
            ip("addr", "add", "10.71.0.2/24", "dev", "gv0", netns=g)
            ip("route", "add", "default", "via", "10.71.0.1", netns=g)
            add_uplink(h, u, 0, "198.51.100.1/24", "198.51.100.2/24")
            add_uplink(h, u, 1, "203.0.113.1/24", "203.0.113.2/24")
            ip("route", "add", "10.71.0.0/24", "via", "198.51.100.1", netns=u)
            # IPv6 beside it (no duplicate address detection: usable at once)
            for ns_, dev, addr in [
                (h, "nfbr0", "fd71::1/64"),
                (g, "gv0", "fd71::2/64"),
                (h, "uh0", "fd51::1/64"),
                (u, "uv0", "fd51::2/64"),
            ]:
                ip("addr", "add", addr, "dev", dev, "nodad", netns=ns_)
            ip("-6", "route", "add", "default", "via", "fd71::1", netns=g)
            ip("-6", "route", "add", "fd71::/64", "via", "fd51::1", netns=u)
            # IP forwarding on inside the host namespace (as a start does for nat/route)
            nsexec.run_sync(h, ["sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1"])
            nsexec.run_sync(h, ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
            forwarding = nsexec.run_sync(h, ["sysctl", "-n", "net.ipv4.ip_forward"])
            assert forwarding.stdout.strip() == b"1"
            yield t
        finally:
            t.reap()


def network(mode: str, dev: str | None = None, v6: str | None = None) -> NetworkDef:
    """v6: None (IPv4 only), "routed" or "nat" (<nat ipv6='yes'>)."""
    fwd = ""
    if mode != "none":
        nat = "<nat ipv6='yes'/>" if v6 == "nat" else ""
        fwd = f"<forward mode='{mode}'" + (f" dev='{dev}'" if dev else "") + f">{nat}</forward>"
    ip6 = "<ip family='ipv6' address='fd71::1' prefix='64'/>" if v6 else ""
    return parse_network(
        f"<network><name>t{mode}</name><bridge name='nfbr0'/>{fwd}"
        f"<ip address='10.71.0.1' netmask='255.255.255.0'/>{ip6}</network>"
    )


def test_nat_upstream_sees_the_host_and_cannot_reach_the_guest(topo: Topology) -> None:
    net = network("nat")
    topo.apply(net)
    # out: masqueraded to the host's upstream address, a privileged source
    # port moved into 1024-65535
    lis = topo.listen(topo.up, "198.51.100.2", 5001)
    assert topo.connect(topo.guest, "198.51.100.2", 5001, sport=700) == "ok"
    addr, port = topo.peer(lis)
    assert addr == "198.51.100.1"
    assert 1024 <= port <= 65535
    # in: a new connection from upstream to the guest is refused
    lis = topo.listen(topo.guest, "10.71.0.2", 5002)
    assert topo.connect(topo.up, "10.71.0.2", 5002) == "ECONNREFUSED"
    # control: without the rules the same connection gets through
    topo.remove(net)
    assert topo.connect(topo.up, "10.71.0.2", 5002) == "ok"
    assert topo.peer(lis)[0] == "198.51.100.2"
    # and the guest is seen with its own address: no masquerade left
    lis = topo.listen(topo.up, "198.51.100.2", 5003)
    assert topo.connect(topo.guest, "198.51.100.2", 5003) == "ok"
    assert topo.peer(lis)[0] == "10.71.0.2"


def test_route_forwards_both_ways_with_the_guests_address(topo: Topology) -> None:
    topo.apply(network("route"))
    lis = topo.listen(topo.up, "198.51.100.2", 5011)
    assert topo.connect(topo.guest, "198.51.100.2", 5011, sport=700) == "ok"
    assert topo.peer(lis) == ("10.71.0.2", 700)
    lis = topo.listen(topo.guest, "10.71.0.2", 5012)
    assert topo.connect(topo.up, "10.71.0.2", 5012) == "ok"
    assert topo.peer(lis)[0] == "198.51.100.2"


def test_isolated_forwards_nothing_but_reaches_the_host(topo: Topology) -> None:
    net = network("none")
    topo.apply(net)
    lis_up = topo.listen(topo.up, "198.51.100.2", 5021)
    assert topo.connect(topo.guest, "198.51.100.2", 5021) == "ECONNREFUSED"
    lis_guest = topo.listen(topo.guest, "10.71.0.2", 5022)
    assert topo.connect(topo.up, "10.71.0.2", 5022) == "ECONNREFUSED"
    # guests and host still talk (DHCP and DNS are served by the host)
    lis_host = topo.listen(topo.host, "10.71.0.1", 5023)
    assert topo.connect(topo.guest, "10.71.0.1", 5023) == "ok"
    assert topo.peer(lis_host)[0] == "10.71.0.2"
    # control: the same two connections get through without the rules
    topo.remove(net)
    assert topo.connect(topo.guest, "198.51.100.2", 5021) == "ok"
    assert topo.peer(lis_up)[0] == "10.71.0.2"
    assert topo.connect(topo.up, "10.71.0.2", 5022) == "ok"
    assert topo.peer(lis_guest)[0] == "198.51.100.2"


def test_forward_dev_is_the_only_way_out(topo: Topology) -> None:
    net = network("nat", dev="uh0")
    topo.apply(net)
    lis = topo.listen(topo.up, "198.51.100.2", 5031)
    assert topo.connect(topo.guest, "198.51.100.2", 5031) == "ok"
    assert topo.peer(lis)[0] == "198.51.100.1"
    lis_other = topo.listen(topo.up, "203.0.113.2", 5032)
    assert topo.connect(topo.guest, "203.0.113.2", 5032) == "ECONNREFUSED"
    # control: the same network without <forward dev> goes out of uh1 too
    topo.remove(net)
    topo.apply(network("nat"))
    assert topo.connect(topo.guest, "203.0.113.2", 5032) == "ok"
    assert topo.peer(lis_other)[0] == "203.0.113.1"


def test_rules_deleted_behind_our_back_stop_nothing_once_repaired(topo: Topology) -> None:
    net = network("nat")
    topo.apply(net)
    # someone empties the network's input chain: upstream gets in
    nsexec.run_sync(topo.host, ["nft", "flush", "chain", "inet", "netfs", "guest_input.tnat"])
    lis = topo.listen(topo.guest, "10.71.0.2", 5041)
    assert topo.connect(topo.up, "10.71.0.2", 5041) == "ok"
    topo.peer(lis)
    report = trio.run(firewall.repair, topo.host, [net])
    assert [d.name for d in report.diffs] == ["tnat"]
    lis = topo.listen(topo.guest, "10.71.0.2", 5042)
    assert topo.connect(topo.up, "10.71.0.2", 5042) == "ECONNREFUSED"


def test_ipv6_masqueraded_only_with_nat_ipv6(topo: Topology) -> None:
    net = network("nat", v6="nat")
    topo.apply(net)
    lis = topo.listen(topo.up, "fd51::2", 5051)
    assert topo.connect(topo.guest, "fd51::2", 5051, sport=700) == "ok"
    addr, port = topo.peer(lis)
    assert addr == "fd51::1" and 1024 <= port <= 65535
    lis = topo.listen(topo.guest, "fd71::2", 5052)
    assert topo.connect(topo.up, "fd71::2", 5052) == "ECONNREFUSED"
    # the same network with IPv6 routed (no ipv6='yes'): in and out untranslated
    topo.remove(net)
    topo.apply(network("nat", v6="routed"))
    assert topo.connect(topo.up, "fd71::2", 5052) == "ok"
    assert topo.peer(lis)[0] == "fd51::2"
    lis = topo.listen(topo.up, "fd51::2", 5053)
    assert topo.connect(topo.guest, "fd51::2", 5053) == "ok"
    assert topo.peer(lis)[0] == "fd71::2"


def test_ipv4_only_network_leaves_ipv6_unfiltered(topo: Topology) -> None:
    """libvirt's ip table does not see IPv6: a network without an IPv6
    address (and without ipv6='yes') filters only IPv4."""
    topo.apply(network("none"))
    lis = topo.listen(topo.guest, "10.71.0.2", 5061)
    assert topo.connect(topo.up, "10.71.0.2", 5061) == "ECONNREFUSED"
    lis6 = topo.listen(topo.guest, "fd71::2", 5062)
    assert topo.connect(topo.up, "fd71::2", 5062) == "ok"
    assert topo.peer(lis6)[0] == "fd51::2"
    topo.stop(lis)
