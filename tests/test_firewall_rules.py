"""netfs.model.firewall (pure): the rules per mode, held against what
libvirt's nftables backend does in networkxml2firewalldata/.

libvirt's expected files are command lists for its own ``ip``/``ip6``
tables; netfs keeps one ``inet`` table with per-network chains. So the two
are compared by meaning: every rule is reduced to (family, chain, matches,
action), libvirt's rules in the order its inserts leave them in each chain,
netfs's split by family (a rule without a family match holds for both).
"""

from __future__ import annotations

import errno
import shlex

import pytest

from netfs.errors import NetfsError
from netfs.model import firewall as fw
from netfs.model.network import NetworkDef, parse_network
from tests.conftest import CONFORMANCE

FWDATA = CONFORMANCE / "networkxml2firewalldata"
CASES = sorted(p.stem for p in FWDATA.glob("*.xml")) if FWDATA.is_dir() else []

Rule = tuple[frozenset[tuple[str, str]], str]


def _net(name: str) -> NetworkDef:
    return parse_network((FWDATA / f"{name}.xml").read_text())


def _meaning(words: list[str]) -> Rule:
    """A rule's matches (a set: order of matches does not change what a
    rule does) and its action, with device matches by index or by name
    taken as the same."""
    conds: set[tuple[str, str]] = set()
    i = 0
    action = ""
    while i < len(words):
        w = words[i]
        if w in ("iif", "iifname"):
            conds.add(("in", words[i + 1].strip('"')))
            i += 2
        elif w in ("oif", "oifname"):
            conds.add(("out", words[i + 1].strip('"')))
            i += 2
        elif w in ("ip", "ip6") and words[i + 1] in ("saddr", "daddr"):
            op = ""
            val = words[i + 2]
            if val == "!=":
                op, val = "!=", words[i + 3]
                i += 1
            if val == "255.255.255.255":
                val += "/32"
            conds.add((f"{words[i + 1]}{op}", val))
            i += 3
        elif w == "ct" and words[i + 1] == "state":
            conds.add(("ct", ",".join(sorted(words[i + 2].split(",")))))
            i += 3
        elif w == "meta" and words[i + 1] == "l4proto":
            conds.add(("l4proto", words[i + 2]))
            i += 3
        elif w == "meta" and words[i + 1] == "nfproto":
            i += 3  # the family: taken out by the caller
        elif w == "counter":
            i += 1
        elif w in ("accept", "return"):
            action = w
            i += 1
        elif w == "reject":
            action = "reject"
            i = len(words)  # "with icmp port-unreachable" is inet's way of saying it
        elif w == "masquerade":
            action = "masquerade" + (f" {words[i + 2]}" if i + 2 < len(words) else "")
            i = len(words)
        elif w == "snat":
            rest = [x for x in words[i + 1 :] if x not in ("ip", "to")]
            action = "snat " + " ".join(rest)
            i = len(words)
        else:
            raise AssertionError(f"unexpected word {w!r} in {words}")
    return frozenset(conds), action


def _families(words: list[str]) -> list[str]:
    if "nfproto" in words:
        return [words[words.index("nfproto") + 1].replace("ipv4", "ip").replace("ipv6", "ip6")]
    fams = {w for w in words if w in ("ip", "ip6")}
    return sorted(fams) if fams else ["ip", "ip6"]


def libvirt_chains(name: str) -> dict[tuple[str, str], list[Rule]]:
    """(family, chain) -> rules in chain order, from NAME-linux.nftables."""
    text = (FWDATA / f"{name}-linux.nftables").read_text().replace("\\\n", " ")
    chains: dict[tuple[str, str], list[Rule]] = {}
    for line in text.splitlines():
        words = shlex.split(line)
        if not words:
            continue
        assert words[:4] == ["nft", "-ae", "insert", "rule"], line
        fam, table, chain = words[4:7]
        assert table == "libvirt_network"
        # insert: each rule goes to the top of its chain
        chains.setdefault((fam, chain), []).insert(0, _meaning(words[7:]))
    return chains


def netfs_chains(net: NetworkDef) -> dict[tuple[str, str], list[Rule]]:
    """The same view of netfs's rules: guest_input.NET's rules that match
    in and out of the bridge are libvirt's guest_cross."""
    rules = fw.expected_rules(net)
    br = net.bridge.name
    chains: dict[tuple[str, str], list[Rule]] = {}
    for cname, body in rules.chains.items():
        kind = cname.split(".")[0]
        for rule in body:
            words = shlex.split(rule)
            meaning = _meaning(words)
            chain = kind
            if kind == "guest_input" and {("in", br), ("out", br)} <= meaning[0]:
                chain = "guest_cross"
            for fam in _families(words):
                chains.setdefault((fam, chain), []).append(meaning)
    return chains


@pytest.mark.parametrize("name", CASES)
def test_same_meaning_as_libvirt(name: str) -> None:
    net = _net(name)
    assert netfs_chains(net) == libvirt_chains(name)


@pytest.mark.parametrize("name", CASES)
def test_every_rule_is_reached_only_through_its_dispatch(name: str) -> None:
    """The maps send a packet to a network's chain only by the bridge (in,
    out) or the source subnet (nat); every libvirt rule of that chain
    carries that match, so nothing is lost by the dispatch."""
    net = _net(name)
    rules = fw.expected_rules(net)
    br = net.bridge.name
    for cname, body in rules.chains.items():
        kind = cname.split(".")[0]
        for rule in body:
            conds = _meaning(shlex.split(rule))[0]
            if kind == "guest_input":
                assert ("out", br) in conds
            elif kind == "guest_output":
                assert ("in", br) in conds
            else:
                saddr = {v for k, v in conds if k == "saddr"}
                keys = set(rules.elements.get("nat_ipv4", {})) | set(
                    rules.elements.get("nat_ipv6", {})
                )
                assert saddr and saddr <= keys


def test_corpus_is_there() -> None:
    if not FWDATA.is_dir():
        pytest.skip("conformance data not found")
    assert len(CASES) >= 11
    print(f"firewall semantics: {len(CASES)} cases of networkxml2firewalldata")


# ------------------------------------------------------------ per mode, spelled out


def _all(net: NetworkDef) -> list[str]:
    return [r for body in fw.expected_rules(net).chains.values() for r in body]


def test_nat_masquerade_ports_and_exemptions() -> None:
    rules = _all(_net("nat-default"))
    sub = "192.168.122.0/24"
    assert f"ip saddr {sub} ip daddr 224.0.0.0/24 counter return" in rules
    assert f"ip saddr {sub} ip daddr 255.255.255.255 counter return" in rules
    for proto in ("tcp", "udp"):
        assert (
            f"meta l4proto {proto} ip saddr {sub} ip daddr != {sub} counter masquerade to :1024-65535"
            in rules
        )
    assert f"ip saddr {sub} ip daddr != {sub} counter masquerade" in rules
    nat = fw.expected_rules(_net("nat-default")).chains["guest_nat.default"]
    # exemptions before any masquerade
    assert [r.endswith("return") for r in nat] == [True, True, False, False, False]
    # back in only what belongs to a connection made from inside
    assert f'oifname "virbr0" ip daddr {sub} ct state established,related counter accept' in rules


def test_nat_port_range() -> None:
    rules = _all(_net("nat-port-range"))
    assert sum(r.endswith("masquerade to :500-1000") for r in rules) == 4  # tcp+udp, two <ip>
    assert not any("1024-65535" in r for r in rules)


def test_isolated_rejects_both_ways_and_keeps_the_bridge() -> None:
    net = _net("isolated")
    rules = fw.expected_rules(net)
    assert rules.chains == {
        "guest_input.default": [
            'iifname "virbr0" oifname "virbr0" counter accept',
            'oifname "virbr0" counter reject',
        ],
        "guest_output.default": ['iifname "virbr0" counter reject'],
    }
    assert "nat_ipv4" not in rules.elements


def test_route_forwards_both_ways_without_nat() -> None:
    rules = fw.expected_rules(_net("route-default"))
    assert (
        'ip daddr 192.168.122.0/24 oifname "virbr0" counter accept'
        in (rules.chains["guest_input.default"])
    )
    assert (
        'ip saddr 192.168.122.0/24 iifname "virbr0" counter accept'
        in (rules.chains["guest_output.default"])
    )
    assert not any(c.startswith("guest_nat") for c in rules.chains)


def test_forward_dev_restricts_the_way_out() -> None:
    rules = _all(_net("forward-dev"))
    assert 'ip saddr 192.168.122.0/24 iifname "virbr0" oifname "enp0s7" counter accept' in rules
    assert (
        'iifname "enp0s7" oifname "virbr0" ip daddr 192.168.122.0/24 '
        "ct state established,related counter accept"
    ) in rules
    masq = [r for r in rules if "masquerade" in r or "return" in r]
    assert masq and all('oifname "enp0s7"' in r for r in masq)


def test_ipv6_nat_only_when_asked() -> None:
    plain = fw.expected_rules(_net("nat-ipv6"))
    assert "nat_ipv6" not in plain.elements
    assert (
        'ip6 daddr 2001:db8:ca2:2::/64 oifname "virbr0" counter accept'
        in (plain.chains["guest_input.default"])
    )
    masq = fw.expected_rules(_net("nat-ipv6-masquerade"))
    assert masq.elements["nat_ipv6"] == {"2001:db8:ca2:2::/64": "guest_nat.default"}
    nat = masq.chains["guest_nat.default"]
    assert "ip6 saddr 2001:db8:ca2:2::/64 ip6 daddr ff02::/16 counter return" in nat
    assert not any("ip6" in r and "255.255.255.255" in r for r in nat)


def test_ipv4_only_network_leaves_ipv6_alone() -> None:
    rules = _all(_net("nat-default"))
    general = [r for r in rules if "reject" in r or 'oifname "virbr0" counter accept' in r]
    assert general and all(r.startswith("meta nfproto ipv4 ") for r in general)
    v6 = _all(_net("nat-ipv6"))
    assert 'oifname "virbr0" counter reject' in v6  # both families


XML = """<network><name>{name}</name><bridge name='{br}'/>{fwd}
<ip address='10.1.0.1' netmask='255.255.255.0'/></network>"""


def _xml(fwd: str = "<forward mode='nat'/>", name: str = "n1", br: str = "nfbr1") -> NetworkDef:
    return parse_network(XML.format(name=name, br=br, fwd=fwd))


def test_open_and_other_modes_have_no_rules() -> None:
    assert fw.add_script(_xml("<forward mode='open'/>")) == ""
    assert fw.remove_script(_xml("<forward mode='open'/>")) == ""
    assert fw.expected_rules(_xml("<forward mode='open'/>")).empty()


def test_nat_address_range_gives_snat() -> None:
    net = _xml(
        "<forward mode='nat'><nat><address start='192.0.2.10' end='192.0.2.20'/>"
        "<port start='2000' end='3000'/></nat></forward>"
    )
    nat = fw.expected_rules(net).chains["guest_nat.n1"]
    assert (
        "meta l4proto tcp ip saddr 10.1.0.0/24 ip daddr != 10.1.0.0/24 counter "
        "snat ip to 192.0.2.10-192.0.2.20:2000-3000"
    ) in nat
    assert (
        "ip saddr 10.1.0.0/24 ip daddr != 10.1.0.0/24 counter snat ip to 192.0.2.10-192.0.2.20"
        in nat
    )
    one = _xml(
        "<forward mode='nat'><nat><address start='192.0.2.10' end='192.0.2.10'/></nat></forward>"
    )
    assert (
        "ip saddr 10.1.0.0/24 ip daddr != 10.1.0.0/24 counter snat ip to 192.0.2.10"
        in (fw.expected_rules(one).chains["guest_nat.n1"])
    )


def test_single_port_range_is_refused_as_libvirt_does() -> None:
    net = _xml("<forward mode='nat'><nat><port start='500' end='500'/></nat></forward>")
    with pytest.raises(NetfsError) as e:
        fw.add_script(net)
    assert e.value.errno == errno.EINVAL
    assert e.value.message == "Invalid port range '500-500'."


@pytest.mark.parametrize("dev", ['eth"0', "a b", "x;y z", "enp0s7enp0s7enp0s7", "a\\b"])
def test_forward_dev_cannot_add_syntax(dev: str) -> None:
    from xml.sax.saxutils import quoteattr

    net = _xml(f"<forward mode='nat' dev={quoteattr(dev)}/>")
    with pytest.raises(NetfsError) as e:
        fw.add_script(net)
    assert e.value.errno == errno.EINVAL and "forward dev" in e.value.message


def test_chain_names_carry_any_network_name() -> None:
    for name in ["default", "a b", "ünï", "x_y", "a.b-c", "'q\"", "1st"]:
        c = fw.chain_name("guest_nat", name)
        assert all(ch.isalnum() or ch in "._-" for ch in c) and c.isascii()
        owner = fw.network_of_chain(c)
        assert owner is not None and owner[0] == "guest_nat"
        assert fw.display_name(owner[1]) == name
    assert fw.chain_name("guest_nat", "a_b") != fw.chain_name("guest_nat", "a.b")
    long = fw.chain_name("guest_input", "x" * 255)
    assert len(long) <= 250 and long != fw.chain_name("guest_input", "x" * 254)
    assert fw.network_of_chain("forward") is None
    assert fw.network_of_chain("mine.default") is None


def test_subnets_inside_another_share_its_dispatch() -> None:
    net = parse_network(
        "<network><name>m</name><bridge name='b1'/><forward/>"
        "<ip address='10.0.0.1' prefix='16'/><ip address='10.0.1.1' prefix='24'/>"
        "<ip address='10.0.0.2' prefix='16'/></network>"
    )
    assert fw.expected_rules(net).elements["nat_ipv4"] == {"10.0.0.0/16": "guest_nat.m"}


def test_forwarding_sysctls() -> None:
    assert fw.forwarding_sysctls(_net("nat-ipv6")) == [
        "/proc/sys/net/ipv4/ip_forward",
        "/proc/sys/net/ipv6/conf/all/forwarding",
    ]
    assert fw.forwarding_sysctls(_net("route-default")) == ["/proc/sys/net/ipv4/ip_forward"]
    assert fw.forwarding_sysctls(_net("isolated")) == []


# ------------------------------------------------------------ scripts and listings


def test_add_script_is_one_declaration_then_contents() -> None:
    s = fw.add_script(_net("nat-default"))
    assert s.startswith("table inet netfs {\n")
    assert "insert" not in s and "delete" not in s
    # the network's chains are emptied before they are filled: running it
    # twice gives the same rules, never duplicates
    for c in ("guest_input.default", "guest_output.default", "guest_nat.default"):
        assert f"flush chain inet netfs {c}\n" in s
    assert s.count("add element") == 3


def test_remove_script_from_definition_and_from_listing() -> None:
    net = _net("nat-default")
    s = fw.remove_script(net)
    assert 'delete element inet netfs to_bridge { "virbr0" }' in s
    assert "delete element inet netfs nat_ipv4 { 192.168.122.0/24 }" in s
    assert s.index("delete element") < s.index("delete chain")
    lst = fw.parse_listing(LISTING)
    s2 = fw.remove_script(lst.found("default"))
    assert "table inet netfs {" not in s2
    assert s2.count("delete chain") == 3 and s2.count("delete element") == 3


LISTING = """table inet netfs {
\tmap to_bridge {
\t\ttype ifname : verdict
\t\telements = { "virbr0" : jump guest_input.default,
\t\t\t     "virbr9" : jump guest_input.gone }
\t}

\tmap from_bridge {
\t\ttype ifname : verdict
\t\telements = { "virbr0" : jump guest_output.default }
\t}

\tmap nat_ipv4 {
\t\ttype ipv4_addr : verdict
\t\tflags interval
\t\telements = { 192.168.122.0/24 : jump guest_nat.default }
\t}

\tmap nat_ipv6 {
\t\ttype ipv6_addr : verdict
\t\tflags interval
\t}

\tchain forward {
\t\ttype filter hook forward priority filter; policy accept;
\t\toifname vmap @to_bridge
\t\tiifname vmap @from_bridge
\t}

\tchain postrouting {
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\tip saddr vmap @nat_ipv4
\t\tip6 saddr vmap @nat_ipv6
\t}

\tchain guest_input.default {
\t\tmeta nfproto ipv4 iifname "virbr0" oifname "virbr0" counter accept
\t\toifname "virbr0" ip daddr 192.168.122.0/24 ct state established,related counter accept
\t\tmeta nfproto ipv4 oifname "virbr0" counter reject with icmp port-unreachable
\t}

\tchain guest_output.default {
\t\tip saddr 192.168.122.0/24 iifname "virbr0" counter accept
\t\tmeta nfproto ipv4 iifname "virbr0" counter reject with icmp port-unreachable
\t}

\tchain guest_nat.default {
\t\tip saddr 192.168.122.0/24 ip daddr 224.0.0.0/24 counter return
\t\tip saddr 192.168.122.0/24 ip daddr 255.255.255.255 counter return
\t\tmeta l4proto tcp ip saddr 192.168.122.0/24 ip daddr != 192.168.122.0/24 counter masquerade to :1024-65535
\t\tmeta l4proto udp ip saddr 192.168.122.0/24 ip daddr != 192.168.122.0/24 counter masquerade to :1024-65535
\t}

\tchain guest_input.gone {
\t\toifname "virbr9" counter reject
\t}

\tchain someone_elses {
\t\tcounter accept
\t}
}
"""


def test_listing_parsed_and_compared() -> None:
    lst = fw.parse_listing(LISTING)
    assert lst.exists and lst.base_ok()
    assert set(lst.nets) == {"default", "gone"}
    assert lst.nets["gone"].elements == {"to_bridge": {"virbr9": "guest_input.gone"}}
    d = fw.compare(fw.expected_rules(_net("nat-default")), lst.found("default"))
    # the generic masquerade rule was deleted behind our back
    assert d.state == "changed"
    assert any("ip daddr != 192.168.122.0/24 counter masquerade'" in x for x in d.details)
    assert fw.compare(fw.expected_rules(_xml()), lst.found("n1")).state == "missing"
    assert fw.parse_listing("") == fw.Listing()
    assert not fw.parse_listing("").base_ok()


def test_compare_sees_an_intact_network_as_ok() -> None:
    net = _net("nat-default")
    exp = fw.expected_rules(net)
    lst = fw.parse_listing(LISTING)
    found = lst.found("default")
    found.chains["guest_nat.default"] = list(exp.chains["guest_nat.default"])
    assert fw.compare(exp, found).ok


def test_repair_script_puts_back_and_removes_orphans() -> None:
    net = _net("nat-default")
    lst = fw.parse_listing(LISTING)
    script, diffs, orphans = fw.repair_script([net], lst)
    assert [d.name for d in diffs] == ["default"]
    assert [o.name for o in orphans] == ["gone"]
    assert 'delete element inet netfs to_bridge { "virbr9" }' in script
    assert "delete chain inet netfs guest_input.gone" in script
    assert "flush chain inet netfs guest_nat.default" in script
    # the intact dispatch elements are not deleted, only added again (a no-op)
    assert 'delete element inet netfs to_bridge { "virbr0" }' not in script
    # someone else's chain in the table is left alone
    assert "someone_elses" not in script


def test_repair_script_empty_when_all_is_in_place() -> None:
    net = _net("nat-default")
    lst = fw.parse_listing(LISTING)
    found = lst.nets["default"]
    found.chains["guest_nat.default"] = list(fw.expected_rules(net).chains["guest_nat.default"])
    del lst.nets["gone"]
    assert fw.repair_script([net], lst) == ("", [], [])
    # nothing expected and nothing there: nothing to do either
    assert fw.repair_script([], fw.parse_listing(""))[0] == ""


def test_repair_of_a_deleted_table() -> None:
    net = _net("route-default")
    script, diffs, _o = fw.repair_script([net], fw.parse_listing(""))
    assert [d.state for d in diffs] == ["missing"]
    assert script.startswith("table inet netfs {")
    assert "add rule inet netfs forward oifname vmap @to_bridge" in script
