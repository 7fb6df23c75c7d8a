"""Traffic through netfs's firewall rules, end to end, between namespaces the
test makes: a guest behind a bridge in a "host" namespace (where the rules
are applied and forwarding is on) and an upstream namespace.

    guest: gv0 10.71.0.2/24 --- gh0 [nfbr0 10.71.0.1/24]  host  uh0 198.51.100.1/24 --- uv0 198.51.100.2/24 :up
                                                                uh1 203.0.113.1/24  --- uv1 203.0.113.2/24  :up

The upstream has a route to the guest's subnet through the host, so what
keeps it out is the firewall; every refusal is paired with a control (the
same connection without the rules) that succeeds.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import trio

from netfs import firewall, nsexec
from netfs.model.network import NetworkDef, parse_network
from tests.conftest import ip, make_netns_name

WAIT = 10.0  # seconds: every wait is bounded

LISTEN = textwrap.dedent(
    """
    import socket, sys
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((sys.argv[1], int(sys.argv[2])))
    s.listen(1)
    s.settimeout(float(sys.argv[3]))
    print("ready", flush=True)
    try:
        c, peer = s.accept()
    except OSError as e:
        print("none", e, flush=True)
        sys.exit(1)
    print(peer[0], peer[1], flush=True)
    c.close()
    """
)

CONNECT = textwrap.dedent(
    """
    import errno, socket, sys
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if sys.argv[3] != "0":
        s.bind(("0.0.0.0", int(sys.argv[3])))
    s.settimeout(float(sys.argv[4]))
    try:
        s.connect((sys.argv[1], int(sys.argv[2])))
        print("ok")
    except socket.timeout:
        print("timeout")
    except OSError as e:
        print(errno.errorcode.get(e.errno, str(e.errno)))
    """
)


@dataclass
class Topology:
    host: str
    guest: str
    up: str
    procs: list[subprocess.Popen[str]] = field(default_factory=list)

    def listen(self, ns: str, addr: str, port: int) -> subprocess.Popen[str]:
        p = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-c", LISTEN, addr, str(port), str(WAIT)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.procs.append(p)
        assert p.stdout is not None
        ready, _w, _x = select.select([p.stdout], [], [], WAIT)
        assert ready, "listener did not start"
        assert p.stdout.readline().strip() == "ready"
        return p

    def connect(self, ns: str, addr: str, port: int, sport: int = 0, timeout: float = 3) -> str:
        p = subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, "-c", CONNECT]
            + [addr, str(port), str(sport), str(timeout)],
            capture_output=True,
            text=True,
            timeout=timeout + WAIT,
        )
        return p.stdout.strip()

    def peer(self, listener: subprocess.Popen[str]) -> tuple[str, int]:
        """Who connected to a listener (address and port as it saw them)."""
        out, _err = listener.communicate(timeout=WAIT)
        addr, port = out.split()[:2]
        return addr, int(port)

    def stop(self, listener: subprocess.Popen[str]) -> None:
        listener.kill()
        listener.wait(timeout=WAIT)

    def apply(self, net: NetworkDef) -> None:
        trio.run(firewall.apply, self.host, net)

    def remove(self, net: NetworkDef) -> None:
        trio.run(firewall.remove, self.host, net)


@pytest.fixture
def topo() -> Iterator[Topology]:
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    names = [make_netns_name(t) for t in ("h", "g", "u")]
    made: list[str] = []
    t = Topology(*names)
    try:
        for n in names:
            subprocess.run(["ip", "netns", "add", n], check=True)
            made.append(n)
            ip("link", "set", "lo", "up", netns=n)
        h, g, u = names
        ip("link", "add", "nfbr0", "type", "bridge", netns=h)
        ip("addr", "add", "10.71.0.1/24", "dev", "nfbr0", netns=h)
        ip("link", "set", "nfbr0", "up", netns=h)
        ip("link", "add", "gh0", "type", "veth", "peer", "name", "gv0", "netns", g, netns=h)
        ip("link", "set", "gh0", "master", "nfbr0", "up", netns=h)
        ip("addr", "add", "10.71.0.2/24", "dev", "gv0", netns=g)
        ip("link", "set", "gv0", "up", netns=g)
        ip("route", "add", "default", "via", "10.71.0.1", netns=g)
        for i, (hn, un) in enumerate(
            [("198.51.100.1", "198.51.100.2"), ("203.0.113.1", "203.0.113.2")]
        ):
            ip(
                "link",
                "add",
                f"uh{i}",
                "type",
                "veth",
                "peer",
                "name",
                f"uv{i}",
                "netns",
                u,
                netns=h,
            )
            ip("addr", "add", f"{hn}/24", "dev", f"uh{i}", netns=h)
            ip("link", "set", f"uh{i}", "up", netns=h)
            ip("addr", "add", f"{un}/24", "dev", f"uv{i}", netns=u)
            ip("link", "set", f"uv{i}", "up", netns=u)
        ip("route", "add", "10.71.0.0/24", "via", "198.51.100.1", netns=u)
        # IP forwarding on inside the host namespace (as a start does for nat/route)
        nsexec.run_sync(h, ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
        assert nsexec.run_sync(h, ["sysctl", "-n", "net.ipv4.ip_forward"]).stdout.strip() == b"1"
        yield t
    finally:
        for p in t.procs:
            if p.poll() is None:
                p.kill()
            try:
                p.communicate(timeout=WAIT)
            except subprocess.TimeoutExpired:
                pass
        for n in made:
            subprocess.run(["ip", "netns", "del", n], check=False)


def network(mode: str, dev: str | None = None) -> NetworkDef:
    fwd = ""
    if mode != "none":
        fwd = f"<forward mode='{mode}'" + (f" dev='{dev}'" if dev else "") + "/>"
    return parse_network(
        f"<network><name>t{mode}</name><bridge name='nfbr0'/>{fwd}"
        "<ip address='10.71.0.1' netmask='255.255.255.0'/></network>"
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
