"""Issue 9, model side: linear validation (item 6) and portgroup names that
can be directory entries (item 14). Pure: no root, no I/O.

Linear work is asserted by counting the comparisons the checks make (a
pairwise check makes n*(n-1)/2 of them), never by timing (speed is in
bench/large.py)."""

from __future__ import annotations

import errno
from typing import Any

import pytest

from netfs.errors import NetfsError
from netfs.model import network as network_mod
from netfs.model.network import PortGroupDef, parse_network
from netfs.model.validate import validate_network

N = 3000  # pairwise: ~4.5 million comparisons; linear: a few thousand


class CountingStr(str):
    """A name that counts how often it is compared for equality."""

    compared = 0

    def __eq__(self, other: object) -> bool:
        CountingStr.compared += 1
        return str.__eq__(self, other)

    __hash__ = str.__hash__


def bridge_net(portgroups: str = "") -> str:
    return (
        "<network><name>big</name><forward mode='bridge'/>"
        f"<bridge name='br0'/>{portgroups}</network>"
    )


def test_duplicate_portgroup_check_is_linear() -> None:
    net = parse_network(bridge_net())
    net.portgroups = [PortGroupDef(name=CountingStr(f"pg{i}")) for i in range(N)]
    CountingStr.compared = 0
    validate_network(net)
    assert CountingStr.compared < 10 * N


def test_duplicate_portgroup_still_found_with_libvirts_message() -> None:
    pgs = "<portgroup name='a'/><portgroup name='b'/><portgroup name='a'/>"
    with pytest.raises(NetfsError) as e:
        validate_network(parse_network(bridge_net(pgs)))
    assert e.value.errno == errno.EINVAL
    assert e.value.message == (
        "multiple <portgroup> elements with the same name (a) in network 'big'"
    )


def test_duplicate_reported_before_a_later_portgroups_problem() -> None:
    # libvirt reports the duplicate at its first occurrence, before a
    # problem of a portgroup that comes between the two
    pgs = (
        "<portgroup name='a'/>"
        "<portgroup name='b'><bandwidth><inbound average='1'/></bandwidth></portgroup>"
        "<portgroup name='a'/>"
    )
    doc = (
        "<network><name>big</name><forward mode='hostdev'>"
        "<address type='pci' domain='0' bus='1' slot='0' function='0'/></forward>"
        f"{pgs}</network>"
    )
    with pytest.raises(NetfsError) as e:
        validate_network(parse_network(doc))
    assert "same name (a)" in e.value.message


class _Counter:
    reads = 0


def _counting_forward_if(monkeypatch: pytest.MonkeyPatch) -> None:
    base = network_mod.ForwardIf

    class CountingForwardIf(base):  # type: ignore[misc,valid-type]
        def __getattribute__(self, attr: str) -> Any:
            if attr in ("dev", "pci"):
                _Counter.reads += 1
            return super().__getattribute__(attr)

    monkeypatch.setattr(network_mod, "ForwardIf", CountingForwardIf)
    _Counter.reads = 0


def test_forward_interface_duplicates_found_in_linear_work(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _counting_forward_if(monkeypatch)
    ifs = "".join(f"<interface dev='eth{i}'/>" for i in range(N))
    net = parse_network(
        f"<network><name>p</name><forward mode='passthrough'>{ifs}</forward></network>"
    )
    assert len(net.forward.ifs) == N
    assert _Counter.reads < 10 * N
    with pytest.raises(NetfsError, match="interface 'eth1' can only be listed once"):
        parse_network(
            "<network><name>p</name><forward mode='passthrough' dev='eth1'>"
            "<interface dev='eth1'/><interface dev='eth2'/><interface dev='eth1'/>"
            "</forward></network>"
        )


def test_forward_pci_duplicates_found_in_linear_work(monkeypatch: pytest.MonkeyPatch) -> None:
    _counting_forward_if(monkeypatch)
    addrs = "".join(
        f"<address type='pci' domain='0' bus='{i // 256}' slot='{(i // 8) % 32}' "
        f"function='{i % 8}'/>"
        for i in range(N)
    )
    net = parse_network(
        f"<network><name>h</name><forward mode='hostdev'>{addrs}</forward></network>"
    )
    assert len(net.forward.ifs) == N
    assert _Counter.reads < 10 * N
    dup = "<address type='pci' domain='0' bus='1' slot='0' function='0'/>"
    with pytest.raises(NetfsError, match="can only be listed once"):
        parse_network(
            f"<network><name>h</name><forward mode='hostdev'>{dup}{dup}</forward></network>"
        )


def test_route_gateways_checked_in_linear_work(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = 0
    real = network_mod._mask_by_prefix

    def counting(a: Any, prefix: int) -> int | None:
        nonlocal calls
        calls += 1
        return real(a, prefix)

    monkeypatch.setattr(network_mod, "_mask_by_prefix", counting)
    n = 600
    ips = "".join(f"<ip address='10.{i // 250}.{i % 250}.1' prefix='24'/>" for i in range(n))
    routes = "".join(
        f"<route address='172.16.{i // 250}.{i % 250}' prefix='32' "
        f"gateway='10.{i // 250}.{i % 250}.9'/>"
        for i in range(n)
    )
    net = parse_network(f"<network><name>r</name><forward mode='route'/>{ips}{routes}</network>")
    assert len(net.routes) == n
    assert calls < 10 * n  # pairwise: 2 * n * n / 2
    with pytest.raises(NetfsError, match="unreachable static route gateway '10.9.9.9'"):
        parse_network(
            "<network><name>r</name><ip address='10.0.0.1' prefix='24'/>"
            "<ip family='ipv6' address='fd00::1' prefix='64'/>"
            "<route address='172.16.0.0' prefix='16' gateway='10.9.9.9'/></network>"
        )
