"""The nftables rules of a virtual network (pure: text in, text out).

Semantics are libvirt's nftables backend (network_nftables.c), re-expressed
for one table of netfs's own, ``table inet netfs`` in the managed namespace:

* every mode but ``open`` rejects what is forwarded out of the bridge
  (``iifname B``) and into it (``oifname B``) unless a rule below accepts
  it, and accepts what crosses the bridge (in and out of B);
* ``nat`` (IPv4; IPv6 only with ``<nat ipv6='yes'>``): out of the subnet
  accepted (only out of ``<forward dev>`` when given), back in only for
  established/related connections; masquerade to everything outside the
  subnet, tcp/udp with source ports 1024-65535 (or ``<nat><port>``), a
  ``<nat><address>`` range gives ``snat`` instead; no masquerade to
  224.0.0.0/24 and 255.255.255.255 (ff02::/16 for IPv6);
* ``route`` (and ``nat`` for IPv6 without ``ipv6='yes'``): the subnet
  forwarded both ways, nothing translated;
* ``none`` (isolated): only the reject/cross rules, nothing forwarded;
  DHCP and DNS between guests and host are not filtered (libvirt's table
  has no input rules either);
* ``open``: no rules at all.

IPv6 packets are covered only when the network has an IPv6 address or
``<network ipv6='yes'>`` (else the rules say ``meta nfproto ipv4``).

Layout (one table for both families, so one listing reads everything)::

    table inet netfs
      map to_bridge   { type ifname : verdict }       oifname B -> jump guest_input.NET
      map from_bridge { type ifname : verdict }       iifname B -> jump guest_output.NET
      map nat_ipv4    { type ipv4_addr : verdict; flags interval }  subnet -> jump guest_nat.NET
      map nat_ipv6    { type ipv6_addr : verdict; flags interval }
      chain forward     (hook forward, priority filter): oifname vmap @to_bridge,
                                                         iifname vmap @from_bridge
      chain postrouting (hook postrouting, priority srcnat): ip saddr vmap @nat_ipv4,
                                                         ip6 saddr vmap @nat_ipv6
      chain guest_input.NET / guest_output.NET / guest_nat.NET   one network's rules

The order of evaluation is libvirt's: into a bridge (cross first, then
input) before out of a bridge. A network is its three chains and the map
elements that jump to them: added by one ``nft -f`` (idempotent: it also
repairs) and removed by one, without rule handles. NET is the network name
with every byte outside ``[A-Za-z0-9.-]`` written as ``_xx``.

Rules are rendered in the form ``nft -s list`` prints them, so a listing
compares line by line (:func:`compare`).
"""

from __future__ import annotations

import errno
import hashlib
import ipaddress
from dataclasses import dataclass, field

from netfs.errors import NetfsError
from netfs.model.network import IPDef, NetworkDef

__all__ = [
    "FAMILY",
    "KINDS",
    "TABLE",
    "Diff",
    "Listing",
    "NetRules",
    "MAPS",
    "QTABLE",
    "add_script",
    "chain_name",
    "compare",
    "expected_rules",
    "forwarding_sysctls",
    "key_text",
    "network_of_chain",
    "parse_listing",
    "remove_script",
    "repair_script",
]

FAMILY = "inet"
TABLE = "netfs"
QTABLE = f"{FAMILY} {TABLE}"

MAP_TO = "to_bridge"
MAP_FROM = "from_bridge"
MAP_NAT4 = "nat_ipv4"
MAP_NAT6 = "nat_ipv6"
MAPS = {
    MAP_TO: ("ifname", False),
    MAP_FROM: ("ifname", False),
    MAP_NAT4: ("ipv4_addr", True),
    MAP_NAT6: ("ipv6_addr", True),
}
BASE_CHAINS = {
    "forward": (
        "type filter hook forward priority filter; policy accept;",
        (f"oifname vmap @{MAP_TO}", f"iifname vmap @{MAP_FROM}"),
    ),
    "postrouting": (
        "type nat hook postrouting priority srcnat; policy accept;",
        (f"ip saddr vmap @{MAP_NAT4}", f"ip6 saddr vmap @{MAP_NAT6}"),
    ),
}
# per-network chains: kind -> the map whose elements jump to it
KINDS = {"guest_input": MAP_TO, "guest_output": MAP_FROM, "guest_nat": None}

MCAST4 = "224.0.0.0/24"
MCAST6 = "ff02::/16"
BCAST4 = "255.255.255.255"  # /32: nft prints it without the prefix
DEFAULT_PORTS = (1024, 65535)

_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-")
_MAX_CHAIN = 250  # NFT_CHAIN_MAXNAMELEN is 256 with the NUL


# ---------------------------------------------------------------- naming


def _encode(name: str) -> str:
    out = []
    for ch in name:
        if ch in _NAME_CHARS:
            out.append(ch)
        else:
            out.extend(f"_{b:02x}" for b in ch.encode("utf-8", "surrogateescape"))
    return "".join(out)


def _decode(enc: str) -> str | None:
    raw = bytearray()
    i = 0
    while i < len(enc):
        ch = enc[i]
        if ch == "_":
            try:
                raw.append(int(enc[i + 1 : i + 3], 16))
            except ValueError:
                return None
            i += 3
        elif ch in _NAME_CHARS:
            raw += ch.encode()
            i += 1
        else:
            return None
    return raw.decode("utf-8", "surrogateescape")


def chain_name(kind: str, name: str) -> str:
    """The chain of kind ``guest_input``/``guest_output``/``guest_nat`` for a
    network (a long name is cut and given a hash: still one chain per name)."""
    enc = _encode(name)
    full = f"{kind}.{enc}"
    if len(full) > _MAX_CHAIN:
        digest = hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:16]
        full = f"{kind}.{enc[: _MAX_CHAIN - len(kind) - 20]}_~{digest}"
    return full


def network_of_chain(chain: str) -> tuple[str, str] | None:
    """(kind, encoded network) of a per-network chain, None for any other."""
    kind, dot, enc = chain.partition(".")
    if not dot or kind not in KINDS or not enc:
        return None
    return kind, enc


def _enc_of(name: str) -> str:
    """The suffix of a network's chains (what a Listing is keyed by)."""
    return chain_name("guest_input", name).partition(".")[2]


def display_name(enc: str) -> str:
    """The network name behind an encoded chain suffix (as is if it is a hash)."""
    return _decode(enc) or enc


# ---------------------------------------------------------------- rules


@dataclass
class NetRules:
    """One network's part of the table: its chains (rules in order, as
    ``nft -s list`` prints them) and the map elements that jump to them
    (map -> key -> chain)."""

    name: str
    chains: dict[str, list[str]] = field(default_factory=dict)
    elements: dict[str, dict[str, str]] = field(default_factory=dict)

    def empty(self) -> bool:
        return not self.chains and not any(self.elements.values())


def _ifname(what: str, value: str) -> str:
    """A device name as an nft string; a name nft cannot carry is refused
    (no definition value can add syntax to the script)."""
    ok = (
        0 < len(value.encode()) <= 15
        and value.isprintable()
        and not any(c in value for c in '"\\/: \t')
    )
    if not ok:
        raise NetfsError(errno.EINVAL, f"{what} '{value}' cannot be used in firewall rules")
    return f'"{value}"'


def _subnet(net: NetworkDef, ip: IPDef) -> tuple[str, str]:
    """(family keyword, NET/prefix) of an <ip>, libvirt's network address."""
    prefix = ip.prefix_len()
    limit = 128 if ip.family == "ipv6" else 32
    if prefix < 0 or prefix > limit:
        raise NetfsError(
            errno.EINVAL, f"Invalid prefix or netmask for '{net.bridge.name or net.name}'"
        )
    sub = ipaddress.ip_network(f"{ip.address}/{prefix}", strict=False)
    fam = "ip6" if ip.family == "ipv6" else "ip"
    return fam, _prefix_text(sub)


def _prefix_text(sub: ipaddress.IPv4Network | ipaddress.IPv6Network) -> str:
    """A subnet as nft prints it: a host prefix (/32, /128) as the address."""
    if sub.prefixlen == sub.max_prefixlen:
        return str(sub.network_address)
    return f"{sub.network_address}/{sub.prefixlen}"


def _ports(net: NetworkDef) -> str:
    start, end = net.forward.nat_port_start, net.forward.nat_port_end
    if start == 0 and end == 0:
        start, end = DEFAULT_PORTS
    if not (start < end <= 65535):
        raise NetfsError(errno.EINVAL, f"Invalid port range '{start}-{end}'.")
    return f":{start}-{end}"


def _masquerade(net: NetworkDef, fam: str, sub: str, dev: str | None, proto: str | None) -> str:
    parts = []
    if proto:
        parts.append(f"meta l4proto {proto}")
    parts.append(f"{fam} saddr {sub} {fam} daddr != {sub}")
    if dev:
        parts.append(f"oifname {dev}")
    ports = _ports(net) if proto else ""
    start, end = net.forward.nat_start, net.forward.nat_end
    if fam == "ip" and start:
        to = start if not end or end == start else f"{start}-{end}"
        parts.append(f"counter snat ip to {to}{ports}")
    else:
        parts.append("counter masquerade" + (f" to {ports}" if ports else ""))
    return " ".join(parts)


def expected_rules(net: NetworkDef) -> NetRules:
    """What a network puts into the table (empty for open and non-virtual)."""
    rules = NetRules(net.name)
    mode = net.forward.mode
    if mode not in ("none", "nat", "route"):
        return rules
    if not net.bridge.name:
        raise NetfsError(errno.EINVAL, f"network '{net.name}' has no bridge name defined")
    br = _ifname("bridge", net.bridge.name)
    dev_name = net.forward.dev if mode in ("nat", "route") else None
    dev = _ifname("forward dev", dev_name) if dev_name else None
    has_v6 = net.ipv6 or any(ip.family == "ipv6" for ip in net.ips)
    only4 = "" if has_v6 else "meta nfproto ipv4 "

    cross = f"{only4}iifname {br} oifname {br} counter accept"
    if has_v6:
        reject_in = f"oifname {br} counter reject"
        reject_out = f"iifname {br} counter reject"
    else:
        reject_in = f"{only4}oifname {br} counter reject with icmp port-unreachable"
        reject_out = f"{only4}iifname {br} counter reject with icmp port-unreachable"

    # libvirt inserts each rule at the top of its chain: per chain, the
    # rules of later <ip>s come first, and inside one <ip> the reverse of
    # the order they are added in
    inp: list[str] = []
    out: list[str] = []
    nat: list[str] = []
    nat_subnets: dict[str, list[str]] = {MAP_NAT4: [], MAP_NAT6: []}
    for ip in net.ips:
        if mode == "none":
            continue
        fam, sub = _subnet(net, ip)
        masq = mode == "nat" and (fam == "ip" or net.forward.nat_ipv6 is True)
        out.insert(
            0,
            f"{fam} saddr {sub} iifname {br}"
            + (f" oifname {dev}" if dev else "")
            + " counter accept",
        )
        if masq:
            inp.insert(
                0,
                (f"iifname {dev} " if dev else "")
                + f"oifname {br} {fam} daddr {sub} ct state established,related counter accept",
            )
            block = [
                _masquerade(net, fam, sub, dev, None),
                _masquerade(net, fam, sub, dev, "udp"),
                _masquerade(net, fam, sub, dev, "tcp"),
            ]
            pre = f"oifname {dev} " if dev else ""
            if fam == "ip":
                block.append(f"{pre}ip saddr {sub} ip daddr {BCAST4} counter return")
            mcast = MCAST4 if fam == "ip" else MCAST6
            block.append(f"{pre}{fam} saddr {sub} {fam} daddr {mcast} counter return")
            nat[0:0] = reversed(block)
            key = MAP_NAT4 if fam == "ip" else MAP_NAT6
            if sub not in nat_subnets[key]:
                nat_subnets[key].append(sub)
        elif fam in ("ip", "ip6"):
            inp.insert(
                0,
                f"{fam} daddr {sub}"
                + (f" iifname {dev}" if dev else "")
                + f" oifname {br} counter accept",
            )

    cin = chain_name("guest_input", net.name)
    cout = chain_name("guest_output", net.name)
    rules.chains[cin] = [cross, *inp, reject_in]
    rules.chains[cout] = [*out, reject_out]
    rules.elements[MAP_TO] = {net.bridge.name: cin}
    rules.elements[MAP_FROM] = {net.bridge.name: cout}
    if nat:
        cnat = chain_name("guest_nat", net.name)
        rules.chains[cnat] = nat
        for key, subs in nat_subnets.items():
            if subs:
                rules.elements[key] = {s: cnat for s in _outermost(subs)}
    return rules


def _outermost(subnets: list[str]) -> list[str]:
    """The subnets not inside another one of the list: the dispatch map
    takes no overlapping intervals, and one jump covers the inner ones."""
    nets = [ipaddress.ip_network(s) for s in subnets]
    return [
        s
        for s, n in zip(subnets, nets, strict=True)
        if not any(o != n and n.subnet_of(o) for o in nets)  # type: ignore[arg-type]
    ]


def forwarding_sysctls(net: NetworkDef) -> list[str]:
    """The /proc/sys files libvirt writes ``1`` to when the network starts
    (nat and route; IPv4 and/or IPv6 by its addresses). Never undone."""
    if net.forward.mode not in ("nat", "route"):
        return []
    paths = []
    if any(ip.family != "ipv6" for ip in net.ips):
        paths.append("/proc/sys/net/ipv4/ip_forward")
    if any(ip.family == "ipv6" for ip in net.ips):
        paths.append("/proc/sys/net/ipv6/conf/all/forwarding")
    return paths


# ---------------------------------------------------------------- scripts


def key_text(mapname: str, key: str) -> str:
    return f'"{key}"' if MAPS[mapname][0] == "ifname" else key


def _base(chains: list[str]) -> list[str]:
    """Declare the table, maps, base chains and the given chains (a no-op
    for what exists), then put the base chains' dispatch rules back."""
    lines = [f"table {QTABLE} {{"]
    for m, (typ, interval) in MAPS.items():
        flags = " flags interval;" if interval else ""
        lines.append(f"\tmap {m} {{ type {typ} : verdict;{flags} }}")
    for c, (hook, _r) in BASE_CHAINS.items():
        lines.append(f"\tchain {c} {{ {hook} }}")
    lines.extend(f"\tchain {c} {{ }}" for c in chains)
    lines.append("}")
    for c, (_h, body) in BASE_CHAINS.items():
        lines.append(f"flush chain {QTABLE} {c}")
        lines.extend(f"add rule {QTABLE} {c} {r}" for r in body)
    return lines


def _fill(rules: NetRules) -> list[str]:
    lines = []
    for c, body in rules.chains.items():
        lines.append(f"flush chain {QTABLE} {c}")
        lines.extend(f"add rule {QTABLE} {c} {r}" for r in body)
    for m, elems in rules.elements.items():
        for key, c in elems.items():
            lines.append(f"add element {QTABLE} {m} {{ {key_text(m, key)} : jump {c} }}")
    return lines


def _drop(found: NetRules, keep: NetRules | None = None) -> list[str]:
    """Delete what ``found`` holds and ``keep`` does not (elements first,
    then chains: a chain some element jumps to cannot go)."""
    lines = []
    for m, elems in found.elements.items():
        want = keep.elements.get(m, {}) if keep else {}
        for key, c in elems.items():
            if want.get(key) != c:
                lines.append(f"delete element {QTABLE} {m} {{ {key_text(m, key)} }}")
    for c in found.chains:
        if keep is None or c not in keep.chains:
            lines.append(f"flush chain {QTABLE} {c}")
            lines.append(f"delete chain {QTABLE} {c}")
    return lines


def add_script(net: NetworkDef) -> str:
    """One ``nft -f`` transaction that puts the network's rules in place:
    creates the table, maps and base chains if missing, replaces the
    network's chains' contents and adds its map elements. Running it again
    changes nothing (no duplicates). Empty for a network without rules."""
    rules = expected_rules(net)
    if rules.empty():
        return ""
    return "\n".join([*_base(list(rules.chains)), *_fill(rules)]) + "\n"


def remove_script(what: NetworkDef | NetRules) -> str:
    """One transaction that removes a network's rules: given its definition
    (what apply put there), or what a listing found of it. The definition's
    form first makes sure each piece exists (so it deletes what is there
    without failing on what is not), as long as nothing else changed it."""
    if isinstance(what, NetworkDef):
        rules = expected_rules(what)
        if rules.empty():
            return ""
        lines = _base(list(rules.chains))
        for m, elems in rules.elements.items():
            for key, c in elems.items():
                lines.append(f"add element {QTABLE} {m} {{ {key_text(m, key)} : jump {c} }}")
        lines += _drop(rules)
        return "\n".join(lines) + "\n"
    if what.empty():
        return ""
    return "\n".join(_drop(what)) + "\n"


# ---------------------------------------------------------------- listing


@dataclass
class Listing:
    """``nft -s list table inet netfs`` read once: the base's state and
    every network's part, keyed by the encoded name of its chains."""

    exists: bool = False
    maps: dict[str, tuple[str, bool]] = field(default_factory=dict)  # name -> (type, interval)
    base: dict[str, tuple[str, list[str]]] = field(default_factory=dict)  # chain -> (hook, rules)
    nets: dict[str, NetRules] = field(default_factory=dict)  # encoded name -> found
    text: dict[str, list[str]] = field(default_factory=dict)  # chain -> its block as printed

    def base_ok(self) -> bool:
        if not self.exists or self.maps != MAPS:
            return False
        for c, (hook, body) in BASE_CHAINS.items():
            if self.base.get(c) != (hook, list(body)):
                return False
        return True

    def found(self, name: str) -> NetRules:
        """What the listing holds of a network (empty NetRules if nothing)."""
        return self.nets.get(_enc_of(name), NetRules(name))


def _split_elements(text: str) -> list[tuple[str, str]]:
    out = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, verdict = item.rpartition(" : ")
        if not sep:
            continue
        words = verdict.split()
        if len(words) == 2 and words[0] in ("jump", "goto"):
            out.append((key.strip().strip('"'), words[1]))
    return out


def _canon_key(mapname: str, key: str) -> str:
    if MAPS.get(mapname, ("", False))[0] in ("ipv4_addr", "ipv6_addr"):
        try:
            return _prefix_text(ipaddress.ip_network(key, strict=False))
        except ValueError:
            return key
    return key


def parse_listing(text: str) -> Listing:
    """Parse what ``nft -s list table inet netfs`` printed ('' when the
    table does not exist). Only netfs's own names are interpreted; any
    other chain in the table is left out (and left alone)."""
    lst = Listing()
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        s = line.strip()
        if s == f"table {QTABLE} {{":
            lst.exists = True
        elif s.startswith(("map ", "chain ")) and s.endswith("{"):
            what, name = s[:-1].split()[:2]
            block = [line]
            i += 1
            while i < len(lines) and lines[i].strip() != "}":
                block.append(lines[i])
                i += 1
            if i < len(lines):
                block.append(lines[i])
            if what == "map":
                _parse_map(lst, name, block[1:-1])
            else:
                _parse_chain(lst, name, block)
        i += 1
    return lst


def _parse_map(lst: Listing, name: str, body: list[str]) -> None:
    typ = ""
    interval = False
    joined = ""
    in_elems = False
    for raw in body:
        s = raw.strip()
        if in_elems:
            joined += " " + s
        elif s.startswith("type "):
            typ = s[5:].split(" : ")[0].strip()
        elif s.startswith("flags "):
            interval = "interval" in s[6:].replace(",", " ").split()
        elif s.startswith("elements = {"):
            in_elems = True
            joined = s[len("elements = {") :]
    if name not in MAPS:
        return
    lst.maps[name] = (typ, interval)
    joined = joined.strip()
    if joined.endswith("}"):
        joined = joined[:-1]
    for key, chain in _split_elements(joined):
        owner = network_of_chain(chain)
        if owner is None:
            continue
        nr = lst.nets.setdefault(owner[1], NetRules(display_name(owner[1])))
        nr.elements.setdefault(name, {})[_canon_key(name, key)] = chain


def _parse_chain(lst: Listing, name: str, block: list[str]) -> None:
    hook = ""
    rules = []
    for raw in block[1:-1]:
        s = raw.strip()
        if not s:
            continue
        if s.startswith("type ") and " hook " in s:
            hook = s
        elif s.startswith("comment "):
            continue
        else:
            rules.append(s)
    if name in BASE_CHAINS:
        lst.base[name] = (hook, rules)
        return
    owner = network_of_chain(name)
    if owner is None:
        return
    nr = lst.nets.setdefault(owner[1], NetRules(display_name(owner[1])))
    nr.chains[name] = rules
    lst.text[name] = block


# ---------------------------------------------------------------- compare


@dataclass
class Diff:
    """A network's rules against a listing: ``missing`` (nothing of it is
    there), ``changed`` (some rules or elements differ, are missing or are
    extra), each with what differs, for logs."""

    name: str
    state: str  # "ok" | "missing" | "changed"
    details: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.state == "ok"


def compare(expected: NetRules, found: NetRules) -> Diff:
    """Compare the expected rules of a network with what a listing found."""
    if expected.empty():
        return Diff(expected.name, "changed" if not found.empty() else "ok", [])
    if found.empty():
        return Diff(expected.name, "missing", ["no rules"])
    details = []
    for c, body in expected.chains.items():
        have = found.chains.get(c)
        if have is None:
            details.append(f"chain {c} missing")
        elif have != body:
            gone = [r for r in body if r not in have]
            extra = [r for r in have if r not in body]
            details.append(f"chain {c}: missing {gone}, extra {extra}" if gone or extra else c)
    details += [f"chain {c} extra" for c in found.chains if c not in expected.chains]
    for m in MAPS:
        want = expected.elements.get(m, {})
        got = found.elements.get(m, {})
        if want != got:
            details.append(f"map {m}: want {want}, found {got}")
    return Diff(expected.name, "changed" if details else "ok", details)


def repair_script(nets: list[NetworkDef], lst: Listing) -> tuple[str, list[Diff], list[NetRules]]:
    """One transaction that makes the table what ``nets`` (the active
    networks) expect: missing or changed networks put back (without
    duplicates), orphans (parts of networks not in ``nets``) removed, the
    base put back if broken. Returns (script, the networks that differed,
    the orphans); the script is '' when everything is in place."""
    wanted: dict[str, tuple[NetworkDef, NetRules]] = {}
    for net in nets:
        wanted[_enc_of(net.name)] = (net, expected_rules(net))
    diffs = []
    fix: list[str] = []
    chains: list[str] = []
    for enc, (net, exp) in wanted.items():
        found = lst.nets.get(enc, NetRules(net.name))
        d = compare(exp, found)
        if d.ok:
            continue
        diffs.append(d)
        fix += _drop(found, exp)
        chains += list(exp.chains)
        fix += _fill(exp)
    orphans = [nr for enc, nr in lst.nets.items() if enc not in wanted]
    for nr in orphans:
        fix += _drop(nr)
    base_broken = not lst.base_ok() and any(not w[1].empty() for w in wanted.values())
    if not fix and not base_broken:
        return "", diffs, orphans
    lines = _base(chains) if (base_broken or chains) else []
    return "\n".join(lines + fix) + "\n", diffs, orphans
