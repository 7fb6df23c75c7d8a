"""netfs.firewall against the real nft, in a namespace the test makes."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest
import trio

from netfs import firewall
from netfs.errors import NetfsError
from netfs.model import firewall as model
from netfs.model.network import NetworkDef, parse_network
from tests.conftest import CONFORMANCE, ip

T = TypeVar("T")

FWDATA = CONFORMANCE / "networkxml2firewalldata"
CASES = sorted(p.stem for p in FWDATA.glob("*.xml")) if FWDATA.is_dir() else []


def run(fn: Callable[..., Awaitable[T]], *args: object) -> T:
    return trio.run(fn, *args)


def nft(netns: str, *args: str, stdin: str | None = None, check: bool = True) -> str:
    p = subprocess.run(
        ["ip", "netns", "exec", netns, "nft", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=30,
    )
    if check and p.returncode != 0:
        raise AssertionError(f"nft {args}: {p.stderr}")
    return p.stdout


def make(name: str, bridge: str, subnet: str, mode: str = "nat", extra: str = "") -> NetworkDef:
    fwd = f"<forward mode='{mode}'>{extra}</forward>" if mode != "none" else ""
    return parse_network(
        f"<network><name>{name}</name><bridge name='{bridge}'/>{fwd}"
        f"<ip address='{subnet}.1' netmask='255.255.255.0'/></network>"
    )


OTHER = """table ip other {
\tchain fw_other {
\t\ttype filter hook forward priority -10; policy accept;
\t\tip saddr 10.9.9.0/24 counter packets 0 bytes 0 drop
\t}
}
table inet filter {
\tchain forward {
\t\ttype filter hook forward priority 0; policy accept;
\t}
}
"""


def rule_count(netns: str) -> int:
    out = nft(netns, "-s", "list", "table", "inet", "netfs", check=False)
    return sum(
        1
        for line in out.splitlines()
        if line.startswith("\t\t") and "counter" in line or "vmap" in line
    )


@pytest.mark.parametrize("name", CASES)
def test_corpus_loads_lists_and_goes(netns: str, name: str) -> None:
    net = parse_network((FWDATA / f"{name}.xml").read_text())
    run(firewall.apply, netns, net)
    report = run(firewall.check, netns, [net])
    assert report.clean, report
    shown = run(firewall.listing, netns, net.name)
    for chain, rules in model.expected_rules(net).chains.items():
        assert f"\tchain {chain} {{" in shown
        for rule in rules:
            # as nft prints them: with the counters' values
            assert rule.replace("counter", "counter packets 0 bytes 0") in shown
    run(firewall.remove, netns, net)
    assert run(firewall.listing, netns, net.name) == ""
    assert run(firewall.read, netns).nets == {}


def test_apply_twice_no_duplicates_and_others_untouched(netns: str) -> None:
    nft(netns, "-f", "-", stdin=OTHER)
    before = [nft(netns, "list", "table", *t) for t in (("ip", "other"), ("inet", "filter"))]
    a = make("a", "nfbra", "10.20.1")
    b = make("b b", "nfbrb", "10.20.2", "route")
    run(firewall.apply, netns, a)
    count = rule_count(netns)
    run(firewall.apply, netns, a)
    run(firewall.apply, netns, b)
    run(firewall.apply, netns, b)
    assert rule_count(netns) == count + sum(len(r) for r in model.expected_rules(b).chains.values())
    assert run(firewall.check, netns, [a, b]).clean
    run(firewall.remove, netns, a)
    run(firewall.remove, netns, "b b")  # by name only: read, then removed
    run(firewall.remove, netns, "b b")  # nothing left: no error
    assert run(firewall.read, netns).nets == {}
    # other tables are exactly as they were; netfs's table holds only its base
    after = [nft(netns, "list", "table", *t) for t in (("ip", "other"), ("inet", "filter"))]
    assert after == before
    assert nft(netns, "list", "tables").split("\n")[:3] == [
        "table ip other",
        "table inet filter",
        "table inet netfs",
    ]


def _handle_of(netns: str, chain: str, needle: str) -> str:
    out = nft(netns, "-a", "list", "chain", "inet", "netfs", chain)
    for line in out.splitlines():
        if needle in line and "# handle" in line:
            return line.rsplit("# handle", 1)[1].strip()
    raise AssertionError(f"{needle!r} not in {out}")


def test_rule_deleted_behind_our_back_is_put_back_once(netns: str) -> None:
    a = make("a", "nfbra", "10.20.1")
    b = make("b", "nfbrb", "10.20.2")
    run(firewall.apply, netns, a)
    run(firewall.apply, netns, b)
    full = rule_count(netns)
    h = _handle_of(netns, "guest_nat.a", "udp ip saddr 10.20.1.0/24")
    nft(netns, "delete", "rule", "inet", "netfs", "guest_nat.a", "handle", h)
    nft(netns, "add", "rule", "inet", "netfs", "guest_output.b", "counter", "accept")
    report = run(firewall.check, netns, [a, b])
    assert {d.name: d.state for d in report.diffs} == {"a": "changed", "b": "changed"}
    assert not report.orphans
    fixed = run(firewall.repair, netns, [a, b])
    assert len(fixed.diffs) == 2
    assert run(firewall.check, netns, [a, b]).clean
    assert rule_count(netns) == full
    # nothing to do a second time
    assert run(firewall.repair, netns, [a, b]).clean


def test_element_chain_and_table_deleted_are_put_back(netns: str) -> None:
    a = make("a", "nfbra", "10.20.1")
    run(firewall.apply, netns, a)
    full = nft(netns, "-s", "list", "table", "inet", "netfs")
    nft(netns, "delete", "element", "inet", "netfs", "nat_ipv4", "{ 10.20.1.0/24 }")
    assert [d.state for d in run(firewall.check, netns, [a]).diffs] == ["changed"]
    run(firewall.repair, netns, [a])
    assert nft(netns, "-s", "list", "table", "inet", "netfs") == full
    nft(netns, "flush", "chain", "inet", "netfs", "forward")
    report = run(firewall.check, netns, [a])
    assert not report.base_ok and not report.diffs
    run(firewall.repair, netns, [a])
    assert nft(netns, "-s", "list", "table", "inet", "netfs") == full
    nft(netns, "delete", "table", "inet", "netfs")
    assert [d.state for d in run(firewall.check, netns, [a]).diffs] == ["missing"]
    run(firewall.repair, netns, [a])
    assert nft(netns, "-s", "list", "table", "inet", "netfs") == full


def test_orphans_removed_actives_kept(netns: str) -> None:
    nft(netns, "-f", "-", stdin=OTHER)
    other = nft(netns, "list", "table", "ip", "other")
    a = make("a", "nfbra", "10.20.1")
    gone = make("gone", "nfbrg", "10.20.3", "none")
    run(firewall.apply, netns, a)
    run(firewall.apply, netns, gone)
    report = run(firewall.check, netns, [a])
    assert report.orphans == ["gone"] and not report.diffs
    run(firewall.repair, netns, [a])
    assert set(run(firewall.read, netns).nets) == {"a"}
    assert run(firewall.check, netns, [a]).clean
    assert nft(netns, "list", "table", "ip", "other") == other
    assert "10.9.9.0/24" in other


def test_remove_after_rules_changed_behind_our_back(netns: str) -> None:
    """The definition's removal script is refused when an element was
    changed; the table is then read and everything of the network goes."""
    a = make("a", "nfbra", "10.20.1")
    run(firewall.apply, netns, a)
    nft(netns, "delete", "element", "inet", "netfs", "to_bridge", '{ "nfbra" }')
    nft(netns, "add", "element", "inet", "netfs", "to_bridge", '{ "nfbra" : jump guest_output.a }')
    run(firewall.remove, netns, a)
    assert run(firewall.read, netns).nets == {}


def test_overlapping_nat_subnet_refused_with_nfts_words(netns: str) -> None:
    run(firewall.apply, netns, make("a", "nfbra", "10.20.1"))
    wide = parse_network(
        "<network><name>w</name><bridge name='nfbrw'/><forward/>"
        "<ip address='10.20.0.1' prefix='16'/></network>"
    )
    with pytest.raises(NetfsError) as e:
        run(firewall.apply, netns, wide)
    assert e.value.errno == errno.EIO
    assert "network 'w'" in e.value.message and "overlaps" in e.value.message
    # the failed transaction left nothing of it
    assert set(run(firewall.read, netns).nets) == {"a"}


def test_listing_empty_for_open_and_unknown(netns: str) -> None:
    assert run(firewall.listing, netns, "x") == ""
    run(firewall.apply, netns, make("o", "nfbro", "10.20.4", "open"))
    assert run(firewall.listing, netns, "o") == ""
    assert nft(netns, "list", "tables") == ""


def test_steps_use_the_netlink_namespace(netns: str) -> None:
    class NL:
        def __init__(self, netns: str) -> None:
            self.netns = netns

    a = make("a", "nfbra", "10.20.1", "route")
    run(firewall.start_step, a, NL(netns))
    assert "guest_input.a" in run(firewall.listing, netns, "a")
    run(firewall.stop_step, a, NL(netns))
    assert run(firewall.listing, netns, "a") == ""


def test_missing_nft_is_named(netns: str) -> None:
    """nft hidden by a bind mount in a private mount namespace."""
    code = textwrap.dedent(
        f"""
        import trio
        from netfs import firewall
        from netfs.errors import NetfsError
        from tests.test_firewall_nft import make
        try:
            trio.run(firewall.apply, {netns!r}, make("a", "nfbra", "10.20.1"))
        except NetfsError as e:
            print(e.errno, e.message)
        """
    )
    nft_path = "/usr/sbin/nft"
    if not os.path.exists(nft_path):
        pytest.skip("nft is not in /usr/sbin")
    p = subprocess.run(
        [
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            f'mount --bind /dev/null {nft_path} && exec "$0" -c "$1"',
            sys.executable,
            code,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    assert p.stdout.strip() == (
        f"{errno.ENOENT} program nft not found (install the Debian package nftables)"
    ), p.stderr
    assert ip("link", netns=netns).returncode == 0
