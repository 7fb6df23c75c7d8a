"""``<network>``: the definition model, parse-time rules and libvirt's format.

``parse_network`` applies the rules libvirt checks on *every* parse (define,
reload, status load), in libvirt's order and with its messages (facts read
from src/conf/network_conf.c, networkcommon_conf.c, virsocketaddr.c,
virxml.c, device_conf.c). Define-time rules live in :mod:`validate`.

``format_network`` prints a definition byte for byte as libvirt's
virNetworkDefFormat does (2-space indentation, single-quoted attributes,
libvirt's choice of escaped and unescaped values).

Addresses are kept as canonical text (IPv4 dotted quad, IPv6 as the C
library's inet_ntop prints it), so other layers can use them directly.
"""

from __future__ import annotations

import copy
import functools
import ipaddress
import socket
import uuid as _uuid
from dataclasses import dataclass, field

from lxml import etree

from netfs.errors import NetfsError, invalid
from netfs.model import xmlsafe
from netfs.model.netcommon import (
    Bandwidth,
    Vlan,
    _strtoull,
    format_bandwidth,
    format_port_isolated,
    format_vlan,
    parse_bandwidth,
    parse_mac,
    parse_port_isolated,
    parse_tristate_bool,
    parse_uuid,
    parse_vlan,
    strtoul_ui,
    strtoul_uip,
    strtoull_p,
)
from netfs.model.virtualport import VirtualPort, format_virtualport, parse_virtualport
from netfs.model.xmlsafe import Element, escape

__all__ = [
    "DNSMASQ_NS",
    "FORWARD_MODES",
    "BridgeDef",
    "DHCPHost",
    "DHCPLease",
    "DHCPRange",
    "DNSDef",
    "DNSForwarder",
    "DNSHost",
    "DNSSrv",
    "DNSTxt",
    "DomainDef",
    "ForwardDef",
    "ForwardIf",
    "IPDef",
    "NetworkDef",
    "PCIAddress",
    "PortGroupDef",
    "RouteDef",
    "format_network",
    "is_virtual",
    "parse_network",
]

DNSMASQ_NS = "http://libvirt.org/schemas/network/dnsmasq/1.0"

FORWARD_MODES = (
    "none",
    "nat",
    "route",
    "open",
    "bridge",
    "private",
    "vepa",
    "passthrough",
    "hostdev",
)
_VIRTUAL_MODES = ("none", "nat", "route", "open")
_LEASE_UNITS = ("seconds", "minutes", "hours")
_PCI_DRIVER_NAMES = ("kvm", "vfio", "xen")  # "default" is refused (NONZERO)
_DNS_RECORD_LENGTH_SRV = 512 - 30
_PROTOCOL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-+/")
_SERVICE_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-+/*")


def is_virtual(mode: str) -> bool:
    """Modes whose bridge libvirt itself creates: none, nat, route, open."""
    return mode in _VIRTUAL_MODES


# ---------------------------------------------------------------------------
# Socket addresses (virSocketAddrParse / virSocketAddrFormat)

IPAddr = ipaddress.IPv4Address | ipaddress.IPv6Address


def _inet_aton_exact(s: str) -> int | None:
    """glibc's numeric IPv4 forms (as getaddrinfo AI_NUMERICHOST takes
    them): 1 to 4 parts of C numbers (0x hex, leading-0 octal, decimal)."""
    parts = s.split(".")
    if not 1 <= len(parts) <= 4:
        return None
    vals: list[int] = []
    for p in parts:
        if not p or not p[0].isdigit() or not p.isascii():
            return None
        if p[:2] in ("0x", "0X"):
            digits = p[2:]
            if digits and not all(c in "0123456789abcdefABCDEF" for c in digits):
                return None
            v = int(digits, 16) if digits else 0
        elif len(p) > 1 and p[0] == "0":
            if not all(c in "01234567" for c in p):
                return None
            v = int(p, 8)
        else:
            if not p.isdigit():
                return None
            v = int(p)
        vals.append(v)
    limits = {1: [0xFFFFFFFF], 2: [255, 0xFFFFFF], 3: [255, 255, 0xFFFF], 4: [255] * 4}
    for v, lim in zip(vals, limits[len(vals)], strict=True):
        if v > lim:
            return None
    res = 0
    for v in vals[:-1]:
        res = (res << 8) | v
    return (res << (8 * (5 - len(vals)))) | vals[-1] if len(vals) > 1 else vals[0]


def _parse_ip(s: str, family: str | None = None) -> IPAddr | None:
    """A numeric address, or None (libvirt's getaddrinfo AI_NUMERICHOST)."""
    if family in (None, "ipv4"):
        v4 = _inet_aton_exact(s)
        if v4 is not None:
            return ipaddress.IPv4Address(v4)
        if family == "ipv4":
            return None
    if "%" in s:
        return None
    try:
        return ipaddress.IPv6Address(socket.inet_pton(socket.AF_INET6, s))
    except (OSError, ValueError):
        return None


def fmt_ip(a: IPAddr) -> str:
    """Canonical text of an address (inet_ntop for IPv6)."""
    if isinstance(a, ipaddress.IPv6Address):
        return socket.inet_ntop(socket.AF_INET6, a.packed)
    return str(a)


@functools.lru_cache(maxsize=1024)
def _ip(s: str) -> IPAddr:
    """Re-parse canonical address text kept in the model (the objects are
    immutable: a start asks for the same few again and again)."""
    return ipaddress.ip_address(s)


def _addr_parse_or_report(s: str, family: str | None = None) -> IPAddr:
    """virSocketAddrParse with its own error report."""
    a = _parse_ip(s, family)
    if a is None:
        if family == "ipv4" and _parse_ip(s) is not None:
            raise invalid(
                f"Cannot parse socket address '{s}': Address family for hostname not supported"
            )
        raise invalid(f"Cannot parse socket address '{s}': Name or service not known")
    return a


def _bits(a: IPAddr) -> int:
    return 32 if isinstance(a, ipaddress.IPv4Address) else 128


@functools.lru_cache(maxsize=256)
def _netmask_bits(mask: IPAddr) -> int:
    """virSocketAddrGetNumNetmaskBits: -1 for a non-contiguous mask."""
    n = _bits(mask)
    v = int(mask)
    ones = 0
    while ones < n and v & (1 << (n - 1 - ones)):
        ones += 1
    rest = v & ((1 << (n - ones)) - 1) if ones < n else 0
    return -1 if rest else ones


def _ip_prefix(address: IPAddr | None, netmask: IPAddr | None, prefix: int) -> int:
    """virSocketAddrGetIPPrefix."""
    if prefix > 0:
        return prefix
    if netmask is not None:
        return _netmask_bits(netmask)
    if isinstance(address, ipaddress.IPv4Address):
        v = int(address)
        if v == 0:
            return 0
        octet = v >> 24
        if octet & 0x80 == 0:
            return 8
        if octet & 0xC0 == 0x80:
            return 16
        if octet & 0xE0 == 0xC0:
            return 24
        return -1
    if isinstance(address, ipaddress.IPv6Address):
        return 0 if int(address) == 0 else 64
    return 0


def _mask_by_prefix(a: IPAddr, prefix: int) -> int | None:
    n = _bits(a)
    if prefix < 0 or prefix > n:
        return None
    mask = ((1 << prefix) - 1) << (n - prefix) if prefix else 0
    return int(a) & mask


# ---------------------------------------------------------------------------
# The model


@dataclass
class PCIAddress:
    domain: int = 0
    bus: int = 0
    slot: int = 0
    function: int = 0
    multifunction: str | None = None  # 'on' / 'off'

    def key(self) -> tuple[int, int, int, int]:
        return (self.domain, self.bus, self.slot, self.function)

    def text(self) -> str:
        return f"{self.domain:04x}:{self.bus:02x}:{self.slot:02x}.{self.function:x}"


@dataclass
class ForwardIf:
    """One pool entry: a netdev (``dev``) or a PCI address (``pci``)."""

    type: str  # 'netdev' or 'pci'
    dev: str | None = None
    pci: PCIAddress | None = None
    connections: int = 0


@dataclass
class ForwardDef:
    mode: str = "none"
    managed: bool = False
    driver_name: str | None = None  # kvm / vfio / xen; None = default
    driver_model: str | None = None
    ifs: list[ForwardIf] = field(default_factory=list)
    pfs: list[str] = field(default_factory=list)
    nat_start: str | None = None
    nat_end: str | None = None
    nat_port_start: int = 0
    nat_port_end: int = 0
    nat_ipv6: bool | None = None

    @property
    def dev(self) -> str | None:
        """The first netdev of the pool (libvirt's forward dev)."""
        if self.ifs and self.ifs[0].type == "netdev":
            return self.ifs[0].dev
        return None

    def netdevs(self) -> list[str]:
        return [i.dev for i in self.ifs if i.type == "netdev" and i.dev is not None]

    def pci_addresses(self) -> list[PCIAddress]:
        return [i.pci for i in self.ifs if i.type == "pci" and i.pci is not None]


@dataclass
class BridgeDef:
    name: str | None = None
    zone: str | None = None
    stp: bool = True
    delay: int = 0
    mac_table_manager: str | None = None  # 'kernel' / 'libvirt'


@dataclass
class DomainDef:
    name: str | None = None
    local_only: bool | None = None
    register: bool | None = None


@dataclass
class DNSForwarder:
    domain: str | None = None
    addr: str | None = None
    port: int | None = None


@dataclass
class DNSTxt:
    name: str
    value: str


@dataclass
class DNSSrv:
    service: str
    protocol: str
    domain: str | None = None
    target: str | None = None
    port: int = 0
    priority: int = 0
    weight: int = 0


@dataclass
class DNSHost:
    ip: str
    hostnames: list[str] = field(default_factory=list)


@dataclass
class DNSDef:
    enable: bool | None = None
    forward_plain_names: bool | None = None
    forwarders: list[DNSForwarder] = field(default_factory=list)
    txts: list[DNSTxt] = field(default_factory=list)
    srvs: list[DNSSrv] = field(default_factory=list)
    hosts: list[DNSHost] = field(default_factory=list)

    def has_records(self) -> bool:
        return bool(self.txts or self.srvs or self.hosts)


@dataclass
class DHCPLease:
    expiry: int  # 0 = infinite
    unit: str = "minutes"


@dataclass
class DHCPRange:
    start: str
    end: str
    lease: DHCPLease | None = None


@dataclass
class DHCPHost:
    mac: str | None = None  # as written
    id: str | None = None
    name: str | None = None
    ip: str | None = None
    lease: DHCPLease | None = None


@dataclass
class IPDef:
    """``<ip>``. ``family`` is the effective family ('ipv4'/'ipv6');
    ``family_attr`` is the attribute as written (None when absent)."""

    address: str
    family: str = "ipv4"
    family_attr: str | None = None
    netmask: str | None = None
    prefix: int = 0  # 0: not given
    local_ptr: bool | None = None
    tftp_root: str | None = None
    ranges: list[DHCPRange] = field(default_factory=list)
    hosts: list[DHCPHost] = field(default_factory=list)
    bootp_file: str | None = None
    bootp_server: str | None = None

    def prefix_len(self) -> int:
        """libvirt's virNetworkIPDefPrefix: prefix, netmask, or the classful
        default (IPv4 A/B/C; -1 for classes D/E) or 64 for IPv6."""
        return _ip_prefix(
            _ip(self.address), _ip(self.netmask) if self.netmask else None, self.prefix
        )

    def has_dhcp(self) -> bool:
        return bool(self.ranges or self.hosts)


@dataclass
class RouteDef:
    """``<route>``; ``family`` effective, ``family_attr`` as written."""

    address: str
    gateway: str
    family: str = "ipv4"
    family_attr: str | None = None
    netmask: str | None = None
    prefix: int = 0
    has_prefix: bool = False
    metric: int | None = None

    def prefix_len(self) -> int:
        return _ip_prefix(
            _ip(self.address), _ip(self.netmask) if self.netmask else None, self.prefix
        )


@dataclass
class PortGroupDef:
    name: str
    default: bool = False
    trust_guest_rx_filters: bool | None = None
    virtualport: VirtualPort | None = None
    vlan: Vlan | None = None
    bandwidth: Bandwidth | None = None


@dataclass
class NetworkDef:
    name: str
    uuid: str
    uuid_generated: bool = False
    title: str | None = None
    description: str | None = None
    metadata: str | None = None  # the formatted <metadata> block (indented lines)
    ipv6: bool = False
    trust_guest_rx_filters: bool | None = None
    forward: ForwardDef = field(default_factory=ForwardDef)
    bridge: BridgeDef = field(default_factory=BridgeDef)
    mtu: int | None = None
    mac: str | None = None  # lowercase
    domain: DomainDef | None = None
    dns: DNSDef = field(default_factory=DNSDef)
    vlan: Vlan | None = None
    bandwidth: Bandwidth | None = None
    isolated_port: bool | None = None
    ips: list[IPDef] = field(default_factory=list)
    routes: list[RouteDef] = field(default_factory=list)
    virtualport: VirtualPort | None = None
    portgroups: list[PortGroupDef] = field(default_factory=list)
    dnsmasq_options: list[str] = field(default_factory=list)
    connections: int = 0

    def portgroup(self, name: str | None) -> PortGroupDef | None:
        """libvirt's virPortGroupFindByName: by name, or the default one."""
        for pg in self.portgroups:
            if name is not None:
                if pg.name == name:
                    return pg
            elif pg.default:
                return pg
        return None

    def copy(self) -> NetworkDef:
        return copy.deepcopy(self)


# ---------------------------------------------------------------------------
# XML access helpers with libvirt's semantics


def _xstr(node: Element, path: str) -> str | None:
    """virXPathString: the XPath string value, None when empty."""
    try:
        val = node.xpath(f"string({path})")
    except etree.XPathError:  # pragma: no cover - fixed expressions
        return None
    s = str(val)
    return s or None


def _xnode(node: Element, path: str) -> Element | None:
    res = node.xpath(path)
    if isinstance(res, list):
        for r in res:
            if isinstance(r, etree._Element):
                return r
    return None


def _xnodes(node: Element, path: str) -> list[Element]:
    res = node.xpath(path)
    if isinstance(res, list):
        return [r for r in res if isinstance(r, etree._Element)]
    return []


def _subelements(node: Element, name: str) -> list[Element]:
    """virXMLNodeGetSubelementList: element children with that local name."""
    out = []
    for c in node:
        if isinstance(c.tag, str) and etree.QName(c).localname == name:
            out.append(c)
    return out


def _subelement(node: Element, name: str) -> Element | None:
    subs = _subelements(node, name)
    return subs[0] if subs else None


def _prop(node: Element | None, name: str) -> str | None:
    """virXMLPropString: the attribute as written ('' kept)."""
    if node is None:
        return None
    return node.get(name)


def _tristate(node: Element | None, name: str) -> bool | None:
    return parse_tristate_bool(node, name)


def _elname(node: Element) -> str:
    return etree.QName(node).localname


def _prop_uint(node: Element, name: str, base: int = 10) -> int | None:
    """virXMLPropUInt with no flags (None when absent)."""
    raw = node.get(name)
    if raw is None:
        return None
    val = strtoul_uip(raw, base)
    if val is None:
        raise invalid(
            f"Invalid value for attribute '{name}' in element '{_elname(node)}': "
            f"'{raw}'. Expected non-negative integer value"
        )
    return val


def _xpath_uint(raw: str | None) -> tuple[int, int]:
    """virXPathUInt on an already-extracted string: (rc, value) where rc is
    0 (ok), -1 (absent/empty) or -2 (not an unsigned int)."""
    if not raw:
        return -1, 0
    val = strtoul_uip(raw, 10)
    if val is None:
        return -2, 0
    return 0, val


def _xpath_ulong(raw: str | None) -> tuple[int, int]:
    """virXPathULong (virStrToLong_ul: negative numbers wrap)."""
    if not raw:
        return -1, 0
    val, end, _neg, err = _strtoull(raw, 10)
    if err or end == 0 or end != len(raw):
        return -2, 0
    return 0, val


def _c_strtol_i(raw: str) -> int | None:
    """virStrToLong_i: a C int in base 10."""
    val, end, neg, err = _strtoull(raw, 10)
    if err or end == 0 or end != len(raw):
        return None
    signed = val - (1 << 64) if neg and val else val
    if neg and val == 0:
        signed = 0
    if not -(2**31) <= signed < 2**31:
        return None
    return signed


# ---------------------------------------------------------------------------
# Parsing


def _parse_lease(node: Element) -> DHCPLease | None:
    raw = node.get("expiry")
    if raw is None:
        return None
    expiry = strtoull_p(raw, 0)
    if expiry is None:
        raise invalid(
            f"Invalid value for attribute 'expiry' in element '{_elname(node)}': "
            f"'{raw}'. Expected non-negative integer value"
        )
    unit = node.get("unit")
    if unit is None:
        unit = "minutes"
    elif unit not in _LEASE_UNITS:
        raise invalid(f"Invalid value for attribute 'unit' in element '{_elname(node)}': '{unit}'.")
    if expiry > 0 and ((unit == "seconds" and expiry < 120) or (unit == "minutes" and expiry < 2)):
        raise invalid("The minimum lease time should be greater than 2 minutes")
    return DHCPLease(expiry=expiry, unit=unit)


def _check_range(start: IPAddr, end: IPAddr, network: IPAddr | None, prefix: int) -> None:
    """virSocketAddrGetRange with its messages."""
    s, e = fmt_ip(start), fmt_ip(end)
    if type(start) is not type(end):
        raise invalid(f"mismatch of address family in range {s} - {e}")
    if network is not None:
        net = fmt_ip(network)
        if type(start) is not type(network):
            raise invalid(f"mismatch of address family in range {s} - {e} for network {net}")
        n = _bits(network)
        if prefix < 0 or prefix > n:
            raise invalid(f"bad prefix {prefix} for network {net} when checking range {s} - {e}")
        mask = ((1 << prefix) - 1) << (n - prefix) if prefix else 0
        if (int(start) & mask) != (int(network) & mask) or (int(end) & mask) != (
            int(network) & mask
        ):
            raise invalid(f"range {s} - {e} is not entirely within network {net}/{prefix}")
        if n == 32:
            netaddr = int(network) & mask
            broadcast = int(network) | (~mask & 0xFFFFFFFF)
            if int(start) == netaddr:
                raise invalid(
                    f"start of range {s} - {e} in network {net}/{prefix} is the network address"
                )
            if int(end) == broadcast:
                raise invalid(
                    f"end of range {s} - {e} in network {net}/{prefix} is the broadcast address"
                )
    if isinstance(start, ipaddress.IPv4Address):
        if (int(start) >> 16) != (int(end) >> 16):
            raise invalid(f"range {s} - {e} is too large (> 65535)")
        if (int(end) & 0xFFFF) - (int(start) & 0xFFFF) < 0:
            raise invalid(f"range {s} - {e} is reversed ")
    else:
        if (int(start) >> 16) != (int(end) >> 16):
            raise invalid(f"range {s} - {e} is too large (> 65535)")
        if (int(end) & 0xFFFF) - (int(start) & 0xFFFF) < 0:
            raise invalid(f"range {s} - {e} start larger than end")


def _parse_dhcp(net_name: str, node: Element, ip: IPDef) -> None:
    ip_addr = _ip(ip.address)
    for rnode in _subelements(node, "range"):
        start_s = rnode.get("start")
        if start_s is None:
            raise invalid(f"Missing 'start' attribute in dhcp range for network '{net_name}'")
        start = _addr_parse_or_report(start_s)
        end_s = rnode.get("end")
        if end_s is None:
            raise invalid(f"Missing 'end' attribute in dhcp range for network '{net_name}'")
        end = _addr_parse_or_report(end_s)
        _check_range(start, end, ip_addr, ip.prefix_len())
        lease_node = _subelement(rnode, "lease")
        lease = _parse_lease(lease_node) if lease_node is not None else None
        ip.ranges.append(DHCPRange(start=fmt_ip(start), end=fmt_ip(end), lease=lease))
    is_v6 = ip.family == "ipv6"
    for hnode in _subelements(node, "host"):
        mac = hnode.get("mac")
        if mac is not None:
            if is_v6:
                raise invalid(
                    f"Invalid to specify MAC address '{mac}' in network '{net_name}' "
                    "IPv6 static host definition"
                )
            parsed = parse_mac(mac)
            if parsed is None:
                raise invalid(f"Cannot parse MAC address '{mac}' in network '{net_name}'")
            if int(parsed[:2], 16) & 1:
                raise invalid(
                    f"expected unicast mac address, found multicast '{mac}' in network '{net_name}'"
                )
        hid = hnode.get("id")
        if hid is not None:
            for ch in hid:
                if ch not in "0123456789abcdefABCDEF:":
                    raise invalid(f"Invalid character '{ch}' in id '{hid}' of network '{net_name}'")
        name = hnode.get("name")
        if name is not None and not (name[:1].isascii() and name[:1].isalnum()):
            raise invalid(f"Cannot use host name '{name}' in network '{net_name}'")
        ip_s = hnode.get("ip")
        host_ip: IPAddr | None = None
        if ip_s is not None:
            host_ip = _parse_ip(ip_s)
            if host_ip is None:
                raise invalid(
                    f"Invalid IP address in static host definition for network '{net_name}'"
                )
        if is_v6:
            if not (hid or name is not None):
                raise invalid(
                    f"Static host definition in IPv6 network '{net_name}' "
                    "must have id or name attribute"
                )
        elif mac is None and name is None:
            raise invalid(
                f"Static host definition in IPv4 network '{net_name}' "
                "must have mac or name attribute"
            )
        if ip_s is None:
            raise invalid(f"Missing IP address in static host definition for network '{net_name}'")
        lease_node = _subelement(hnode, "lease")
        lease = _parse_lease(lease_node) if lease_node is not None else None
        ip.hosts.append(
            DHCPHost(
                mac=mac,
                id=hid,
                name=name,
                ip=fmt_ip(host_ip) if host_ip is not None else None,
                lease=lease,
            )
        )
    bootp = _subelement(node, "bootp")
    if bootp is not None and ip.family == "ipv4":
        server = bootp.get("server")
        bfile = bootp.get("file")
        if bfile is None:
            raise invalid("Missing required attribute 'file' in element 'bootp'")
        ip.bootp_file = bfile
        if server is not None:
            ip.bootp_server = fmt_ip(_addr_parse_or_report(server))


def _parse_ip_def(net_name: str, node: Element) -> IPDef:
    family = _xstr(node, "./@family")
    address = _xstr(node, "./@address")
    if not address:
        raise invalid(f"Missing required address attribute in network '{net_name}'")
    addr = _parse_ip(address)
    if addr is None:
        raise invalid(f"Invalid address '{address}' in network '{net_name}'")
    netmask = _xstr(node, "./@netmask")
    mask: IPAddr | None = None
    if netmask:
        mask = _parse_ip(netmask)
        if mask is None:
            raise invalid(f"Invalid netmask '{netmask}' in network '{net_name}'")
    prefix = _prop_uint(node, "prefix") or 0
    local_ptr = _tristate(node, "localPtr")
    if family is None or family == "ipv4":
        if not isinstance(addr, ipaddress.IPv4Address):
            raise invalid(
                f"{'no' if family is None else 'ipv4'} family specified for non-IPv4 "
                f"address '{address}' in network '{net_name}'"
            )
        if netmask:
            if not isinstance(mask, ipaddress.IPv4Address):
                raise invalid(
                    f"Invalid netmask '{netmask}' for address '{address}' in network "
                    f"'{net_name}' (both must be IPv4)"
                )
            if prefix > 0:
                raise invalid(
                    f"Network '{net_name}' IP address cannot have both a prefix and a netmask"
                )
        elif prefix > 32:
            raise invalid(f"Invalid IPv4 prefix '{prefix}' in network '{net_name}'")
        eff = "ipv4"
    elif family == "ipv6":
        if not isinstance(addr, ipaddress.IPv6Address):
            raise invalid(
                f"Family 'ipv6' specified for non-IPv6 address '{address}' in network '{net_name}'"
            )
        if netmask:
            raise invalid(
                f"netmask not allowed for IPv6 address '{address}' in network '{net_name}'"
            )
        if prefix > 128:
            raise invalid(f"Invalid IPv6 prefix '{prefix}' in network '{net_name}'")
        eff = "ipv6"
    else:
        raise invalid(f"Unrecognized family '{family}' in network '{net_name}'")
    ip = IPDef(
        address=fmt_ip(addr),
        family=eff,
        family_attr=family,
        netmask=fmt_ip(mask) if mask is not None else None,
        prefix=prefix,
        local_ptr=local_ptr,
    )
    dhcp = _xnode(node, "./dhcp[1]")
    if dhcp is not None:
        _parse_dhcp(net_name, dhcp, ip)
    if _xnode(node, "./tftp[1]") is not None:
        if eff != "ipv4":
            raise invalid(f"Unsupported <tftp> element in an IPv6 element in network '{net_name}'")
        ip.tftp_root = _xstr(node, "./tftp[1]/@root")
    return ip


def _parse_route(net_name: str, node: Element) -> RouteDef:
    d = net_name
    family = _xstr(node, "./@family")
    address = _xstr(node, "./@address")
    netmask = _xstr(node, "./@netmask")
    gateway = _xstr(node, "./@gateway")
    rc, prefix = _xpath_ulong(_xstr(node, "./@prefix"))
    if rc == -2:
        raise invalid(f"{d}: Invalid prefix specified in route definition")
    has_prefix = rc == 0
    rc, metric = _xpath_ulong(_xstr(node, "./@metric"))
    if rc == -2:
        raise invalid(f"{d}: Invalid metric specified in route definition")
    has_metric = rc == 0
    if has_metric and metric == 0:
        raise invalid(f"{d}: Invalid metric value, must be > 0 in route definition")
    if not address:
        raise invalid(f"{d}: Missing required address attribute in route definition")
    if not gateway:
        raise invalid(f"{d}: Missing required gateway attribute in route definition")
    addr = _parse_ip(address)
    if addr is None:
        raise invalid(f"{d}: Bad network address '{address}' in route definition")
    gw = _parse_ip(gateway)
    if gw is None:
        raise invalid(f"{d}: Bad gateway address '{gateway}' in route definition")
    mask: IPAddr | None = None
    if family is None or family == "ipv4":
        if not isinstance(addr, ipaddress.IPv4Address):
            what = "No family" if family is None else "IPv4 family"
            raise invalid(
                f"{d}: {what} specified for non-IPv4 address '{address}' in route definition"
            )
        if not isinstance(gw, ipaddress.IPv4Address):
            what = "No family" if family is None else "IPv4 family"
            raise invalid(
                f"{d}: {what} specified for non-IPv4 gateway '{address}' in route definition"
            )
        if netmask:
            mask = _parse_ip(netmask)
            if mask is None:
                raise invalid(f"{d}: Bad netmask address '{netmask}' in route definition")
            if not isinstance(mask, ipaddress.IPv4Address):
                raise invalid(
                    f"{d}: Invalid netmask '{netmask}' for address '{address}' (both must be IPv4)"
                )
            if has_prefix:
                raise invalid(f"{d}: Route definition cannot have both a prefix and a netmask")
        if prefix > 32:
            raise invalid(
                f"{d}: Invalid prefix {prefix & 0xFFFFFFFF} specified in route "
                "definition, must be 0 - 32"
            )
        eff = "ipv4"
    elif family == "ipv6":
        if not isinstance(addr, ipaddress.IPv6Address):
            raise invalid(
                f"{d}: ipv6 family specified for non-IPv6 address '{address}' in route definition"
            )
        if netmask:
            raise invalid(
                f"{d}: Specifying netmask invalid for IPv6 address '{address}' in route definition"
            )
        if not isinstance(gw, ipaddress.IPv6Address):
            raise invalid(
                f"{d}: ipv6 specified for non-IPv6 gateway address '{gateway}' in route definition"
            )
        if prefix > 128:
            raise invalid(
                f"{d}: Invalid prefix {prefix & 0xFFFFFFFF} specified in route "
                "definition, must be 0 - 128"
            )
        eff = "ipv6"
    else:
        raise invalid(f"{d}: Unrecognized family '{family}' in route definition")
    if mask is not None:
        network = int(addr) & int(mask)
    else:
        masked = _mask_by_prefix(addr, prefix)
        if masked is None:  # pragma: no cover - ranges checked above
            raise invalid(
                f"{d}: Error converting address '{address}' with prefix {prefix} "
                "to network-address in route definition"
            )
        network = masked
    if network != int(addr):
        raise invalid(f"{d}: Address '{address}' in route definition is not a network address")
    return RouteDef(
        address=fmt_ip(addr),
        gateway=fmt_ip(gw),
        family=eff,
        family_attr=family,
        netmask=fmt_ip(mask) if mask is not None else None,
        prefix=prefix,
        has_prefix=has_prefix,
        metric=metric if has_metric else None,
    )


def _parse_dns(net_name: str, node: Element) -> DNSDef:
    dns = DNSDef()
    dns.enable = _tristate(node, "enable")
    dns.forward_plain_names = _tristate(node, "forwardPlainNames")
    fwd_nodes = _xnodes(node, "./forwarder")
    for f in fwd_nodes:
        addr_s = f.get("addr")
        fw = DNSForwarder()
        if addr_s is not None:
            a = _parse_ip(addr_s)
            if a is None:
                raise invalid(f"Invalid forwarder IP address '{addr_s}' in network '{net_name}'")
            fw.addr = fmt_ip(a)
            raw_port = f.get("port")
            if raw_port is not None:
                port = _c_strtol_i(raw_port)
                if port is None:
                    raise invalid(
                        f"Invalid value for attribute 'port' in element 'forwarder': "
                        f"'{raw_port}'. Expected integer value"
                    )
                if port < 0:
                    raise invalid(
                        f"Invalid value for attribute 'port' in element 'forwarder': "
                        f"'{raw_port}'. Expected non-negative value"
                    )
                if port == 0:
                    raise invalid(
                        "Invalid value for attribute 'port' in element 'forwarder': "
                        "Zero is not permitted"
                    )
                if port > 65535:
                    raise invalid(f"port '{port}' out of range")
                fw.port = port
        fw.domain = f.get("domain")
        if addr_s is None and fw.domain is None:
            raise invalid("Invalid forwarder element, must contain at least one of addr or domain")
        dns.forwarders.append(fw)
    host_nodes = _xnodes(node, "./host")
    for h in host_nodes:
        names: list[str] = []
        hn_nodes = _subelements(h, "hostname")
        ip_s = h.get("ip")
        if hn_nodes:
            for hn in hn_nodes:
                text = "".join(hn.itertext())
                if text == "":
                    raise invalid(f"Missing hostname in network '{net_name}' DNS HOST record")
                names.append(text)
        else:
            raise invalid(f"Missing hostname in network '{net_name}' DNS HOST record")
        if ip_s is None:
            raise invalid(f"Missing IP address in network '{net_name}' DNS HOST record")
        a = _parse_ip(ip_s)
        if a is None:
            raise invalid(f"Invalid IP address in network '{net_name}' DNS HOST record")
        dns.hosts.append(DNSHost(ip=fmt_ip(a), hostnames=names))
    srv_nodes = _xnodes(node, "./srv")
    for s in srv_nodes:
        dns.srvs.append(_parse_srv(net_name, s))
    txt_nodes = _xnodes(node, "./txt")
    for t in txt_nodes:
        tname = t.get("name")
        if tname is None:
            raise invalid(
                f"missing required name attribute in DNS TXT record of network {net_name}"
            )
        if " " in tname or "," in tname:
            raise invalid(
                f"prohibited character in DNS TXT record name '{tname}' of network {net_name}"
            )
        tvalue = t.get("value")
        if tvalue is None:
            raise invalid(
                f"missing required value attribute in DNS TXT record named '{tname}' "
                f"of network {net_name}"
            )
        dns.txts.append(DNSTxt(name=tname, value=tvalue))
    if dns.enable is False and (fwd_nodes or host_nodes or srv_nodes or txt_nodes):
        raise invalid(f"Extra data in disabled network '{net_name}'")
    return dns


def _parse_srv(net_name: str, node: Element) -> DNSSrv:
    service = node.get("service")
    if service is None:
        raise invalid(
            f"missing required service attribute in DNS SRV record of network '{net_name}'"
        )
    if len(service.encode("utf-8")) > _DNS_RECORD_LENGTH_SRV:
        raise invalid(
            f"service attribute '{service}' in network '{net_name}' is too long, "
            f"limit is {_DNS_RECORD_LENGTH_SRV} bytes"
        )
    if any(c not in _SERVICE_CHARS for c in service):
        raise invalid(
            f"invalid character in service attribute '{service}' in DNS SRV record "
            f"of network '{net_name}'"
        )
    protocol = node.get("protocol")
    if protocol is None:
        raise invalid(
            f"missing required protocol attribute in DNS SRV record '{service}' "
            f"of network '{net_name}'"
        )
    if any(c not in _PROTOCOL_CHARS for c in protocol):
        raise invalid(
            f"invalid character in protocol attribute '{protocol}' in DNS SRV record "
            f"of network '{net_name}'"
        )
    srv = DNSSrv(service=service, protocol=protocol)
    srv.domain = node.get("domain")
    srv.target = node.get("target")
    where = f"for service '{service}' in network '{net_name}'"
    rc, srv.port = _xpath_uint(_xstr(node, "./@port"))
    if rc >= 0 and srv.target is None:
        raise invalid(f"DNS SRV port attribute not permitted without target {where}")
    if rc == -2 or (rc >= 0 and not 1 <= srv.port <= 65535):
        raise invalid(f"invalid DNS SRV port attribute {where}")
    rc, srv.priority = _xpath_uint(_xstr(node, "./@priority"))
    if rc >= 0 and srv.target is None:
        raise invalid(f"DNS SRV priority attribute not permitted without target {where}")
    if rc == -2 or (rc >= 0 and srv.priority > 65535):
        raise invalid(f"Invalid DNS SRV priority attribute {where}")
    rc, srv.weight = _xpath_uint(_xstr(node, "./@weight"))
    if rc >= 0 and srv.target is None:
        raise invalid(f"DNS SRV weight attribute not permitted without target {where}")
    if rc == -2 or (rc >= 0 and srv.weight > 65535):
        raise invalid(f"invalid DNS SRV weight attribute {where}")
    return srv


def _parse_portgroup(node: Element) -> PortGroupDef:
    # attributes and children read directly, not by XPath (the same values:
    # an empty attribute counts as absent; the first child of each name):
    # a definition may hold tens of thousands of portgroups
    name = node.get("name") or None
    if name is None:
        raise invalid("Missing required name attribute in portgroup")
    is_default = node.get("default") or None
    pg = PortGroupDef(name=name, default=bool(is_default and is_default.lower() == "yes"))
    pg.trust_guest_rx_filters = _tristate(node, "trustGuestRxFilters")
    first: dict[str, Element] = {}
    for c in node:
        if isinstance(c.tag, str) and c.tag in ("virtualport", "bandwidth", "vlan"):
            first.setdefault(c.tag, c)
    vp = first.get("virtualport")
    if vp is not None:
        pg.virtualport = parse_virtualport(vp)
    bw = first.get("bandwidth")
    if bw is not None:
        pg.bandwidth = parse_bandwidth(bw, allow_floor=False)
    vl = first.get("vlan")
    if vl is not None:
        pg.vlan = parse_vlan(vl)
    return pg


def _parse_pci_address(node: Element) -> PCIAddress:
    addr = PCIAddress()
    addr.domain = _prop_uint(node, "domain", 0) or 0
    addr.bus = _prop_uint(node, "bus", 0) or 0
    addr.slot = _prop_uint(node, "slot", 0) or 0
    addr.function = _prop_uint(node, "function", 0) or 0
    multi = node.get("multifunction")
    if multi is not None:
        if multi not in ("on", "off"):
            raise invalid(
                f"Invalid value for attribute 'multifunction' in element "
                f"'{_elname(node)}': '{multi}'."
            )
        addr.multifunction = multi
    empty = not (addr.domain or addr.bus or addr.slot)
    if not empty:
        if addr.domain > 0xFFFF:
            raise invalid(f"Invalid PCI address domain='0x{addr.domain:x}', must be <= 0xFFFF")
        if addr.bus > 0xFF:
            raise invalid(f"Invalid PCI address bus='0x{addr.bus:x}', must be <= 0xFF")
        if addr.slot > 0x1F:
            raise invalid(f"Invalid PCI address slot='0x{addr.slot:x}', must be <= 0x1F")
        if addr.function > 7:
            raise invalid(f"Invalid PCI address function=0x{addr.function:x}, must be <= 7")
    return addr


def _parse_nat(net_name: str, node: Element, fwd: ForwardDef) -> None:
    if fwd.mode != "nat":
        raise invalid(
            "The <nat> element can only be used when <forward> 'mode' is 'nat' "
            f"in network {net_name}"
        )
    fwd.nat_ipv6 = _tristate(node, "ipv6")
    addr_nodes = _xnodes(node, "./address")
    start = end = None
    if len(addr_nodes) > 1:
        raise invalid(
            f"Only one <address> element is allowed in <nat> in <forward> in network {net_name}"
        )
    if len(addr_nodes) == 1:
        start = addr_nodes[0].get("start")
        if start is None:
            raise invalid(
                "missing 'start' attribute in <address> element in <nat> in <forward> "
                f"in network {net_name}"
            )
        end = addr_nodes[0].get("end")
        if end is None:
            raise invalid(
                "missing 'end' attribute in <address> element in <nat> in <forward> "
                f"in network {net_name}"
            )
    start_a = end_a = None
    if start is not None:
        start_a = _parse_ip(start, "ipv4")
        if start_a is None:
            raise invalid(
                f"Bad ipv4 start address '{start}' in <nat> in <forward> in network '{net_name}'"
            )
    if end is not None:
        end_a = _parse_ip(end, "ipv4")
        if end_a is None:
            raise invalid(
                f"Bad ipv4 end address '{end}' in <nat> in <forward> in network '{net_name}'"
            )
    if start_a is not None and end_a is not None:
        _check_range(start_a, end_a, None, 0)
        fwd.nat_start = fmt_ip(start_a)
        fwd.nat_end = fmt_ip(end_a)
    port_nodes = _xnodes(node, "./port")
    if len(port_nodes) > 1:
        raise invalid(
            f"Only one <port> element is allowed in <nat> in <forward> in network {net_name}"
        )
    if len(port_nodes) == 1:
        rc, pstart = _xpath_uint(_xstr(node, "./port[1]/@start"))
        if rc < 0 or pstart > 65535:
            raise invalid(
                "Missing or invalid 'start' attribute in <port> in <nat> in <forward> "
                f"in network {net_name}"
            )
        rc, pend = _xpath_uint(_xstr(node, "./port[1]/@end"))
        if rc < 0 or pend > 65535 or pend < pstart:
            raise invalid(
                "Missing or invalid 'end' attribute in <port> in <nat> in <forward> "
                f"in network {net_name}"
            )
        fwd.nat_port_start = pstart
        fwd.nat_port_end = pend


def _parse_forward(net_name: str, node: Element) -> ForwardDef:
    fwd = ForwardDef()
    mode = _xstr(node, "./@mode")
    if mode is None:
        fwd.mode = "nat"
    elif mode in FORWARD_MODES:
        fwd.mode = mode
    else:
        raise invalid(f"unknown forwarding type '{mode}'")
    managed = _xstr(node, "./@managed")
    fwd.managed = bool(managed and managed.lower() == "yes")
    driver = _xnode(node, "./driver")
    if driver is not None:
        dname = driver.get("name")
        if dname is not None:
            if dname not in _PCI_DRIVER_NAMES:
                raise invalid(f"Invalid value for attribute 'name' in element 'driver': '{dname}'.")
            fwd.driver_name = dname
        fwd.driver_model = driver.get("model")
    if_nodes = _xnodes(node, "./interface")
    addr_nodes = _xnodes(node, "./address")
    pf_nodes = _xnodes(node, "./pf")
    nat_nodes = _xnodes(node, "./nat")
    if len(nat_nodes) > 1:
        raise invalid(f"Only one <nat> element is allowed in <forward> of network {net_name}")
    if len(nat_nodes) == 1:
        _parse_nat(net_name, nat_nodes[0], fwd)
    forward_dev = _xstr(node, "./@dev")
    if forward_dev and (addr_nodes or pf_nodes):
        raise invalid(
            "the <forward> 'dev' attribute cannot be used when <address> or <pf> "
            f"sub-elements are present in network {net_name}"
        )
    if if_nodes or forward_dev:
        if forward_dev:
            fwd.ifs.append(ForwardIf(type="netdev", dev=forward_dev))
        seen_devs = {forward_dev} if forward_dev else set()
        for i, inode in enumerate(if_nodes):
            dev = inode.get("dev")
            if dev is None:
                raise invalid(
                    "Missing required dev attribute in <forward> <interface> element "
                    f"of network {net_name}"
                )
            if i == 0 and forward_dev:
                if dev != forward_dev:
                    raise invalid(
                        f"<forward dev='{forward_dev}'> must match first "
                        f"<interface dev='{dev}'/> in network {net_name}"
                    )
                continue
            if dev in seen_devs:
                raise invalid(f"interface '{dev}' can only be listed once in network {net_name}")
            seen_devs.add(dev)
            fwd.ifs.append(ForwardIf(type="netdev", dev=dev))
    elif addr_nodes:
        seen_pci: set[tuple[int, int, int, int]] = set()
        for anode in addr_nodes:
            atype = anode.get("type")
            if atype is None:
                raise invalid(f"missing address type in network {net_name}")
            if atype not in ("none", "pci", "netdev"):
                raise invalid(f"unknown address type '{atype}' in network {net_name}")
            if atype != "pci":
                raise invalid(f"unsupported address type '{atype}' in network {net_name}")
            pci = _parse_pci_address(anode)
            if pci.key() in seen_pci:
                raise invalid(
                    f"PCI device '{pci.text()}' can only be listed once in network {net_name}"
                )
            seen_pci.add(pci.key())
            fwd.ifs.append(ForwardIf(type="pci", pci=pci))
    elif len(pf_nodes) > 1:
        raise invalid(f"Only one <pf> element is allowed in <forward> of network {net_name}")
    elif len(pf_nodes) == 1:
        pdev = pf_nodes[0].get("dev")
        if pdev is None:
            raise invalid(f"Missing required dev attribute in <pf> element of network '{net_name}'")
        fwd.pfs.append(pdev)
    return fwd


def _format_metadata(node: Element) -> str | None:
    """The sanitised ``<metadata>`` block as libvirt prints it at indent 2:
    only namespaced element children, the first per namespace, pretty-printed
    by libxml2; None when the element has no element child."""
    if not any(isinstance(c.tag, str) for c in node):
        return None
    meta = copy.deepcopy(node)
    meta.text = None
    seen: set[str] = set()
    for c in list(meta):
        ns = etree.QName(c).namespace if isinstance(c.tag, str) else None
        if ns is None or ns in seen:
            meta.remove(c)
            continue
        seen.add(ns)
        c.tail = None
    meta.tail = None
    wrapper = etree.Element("x")
    wrapper.append(meta)
    text = etree.tostring(wrapper, pretty_print=True, encoding="unicode")
    head, tail = "<x>\n", "</x>\n"
    if not (text.startswith(head) and text.endswith(tail)):  # pragma: no cover
        return None
    return text[len(head) : -len(tail)]


def parse_network(data: str | bytes) -> NetworkDef:
    """Parse a ``<network>`` document with libvirt's parse-time rules.

    A missing ``<uuid>`` is generated (``uuid_generated`` is then True).
    Raises NetfsError(EINVAL) with libvirt's message on the first problem.
    """
    root = xmlsafe.parse_document(data)
    rname = etree.QName(root).localname
    if rname != "network":
        raise invalid(f"expecting root element of 'network', not '{rname}'")
    try:
        return _parse_root(root)
    except NetfsError:
        raise
    except (ValueError, TypeError, OverflowError, RecursionError, etree.LxmlError) as e:
        raise invalid(f"XML error: {e}") from None


def _parse_root(root: Element) -> NetworkDef:
    name = _xstr(root, "./name[1]")
    if name is None:
        raise invalid("missing name information")
    if "/" in name:
        raise invalid("invalid char in name: /")
    uuid_s = _xstr(root, "./uuid[1]")
    if uuid_s is None:
        uuid_text = str(_uuid.uuid4())
        generated = True
    else:
        parsed = parse_uuid(uuid_s)
        if parsed is None:
            raise invalid("malformed uuid element")
        uuid_text = parsed
        generated = False
    net = NetworkDef(name=name, uuid=uuid_text, uuid_generated=generated)
    net.title = _xstr(root, "./title[1]")
    if net.title is not None and "\n" in net.title:
        raise invalid("Network title can't contain newlines")
    net.description = _xstr(root, "./description[1]")
    ipv6 = _xstr(root, "./@ipv6")
    if ipv6 is not None:
        if ipv6 not in ("yes", "no"):
            raise invalid(f"Invalid ipv6 setting '{ipv6}' in network '{name}'")
        net.ipv6 = ipv6 == "yes"
    net.trust_guest_rx_filters = _tristate(root, "trustGuestRxFilters")

    domain_node = _xnode(root, "./domain[1]")
    if domain_node is not None:
        dom = DomainDef(name=domain_node.get("name"))
        dom.local_only = _tristate(domain_node, "localOnly")
        dom.register = _tristate(domain_node, "register")
        if dom.register is True and dom.local_only is not True:
            raise invalid(
                "attribute 'register=yes' in <domain> element requires 'localOnly=yes' "
                f"in network {name}"
            )
        net.domain = dom

    bw_node = _xnode(root, "./bandwidth")
    if bw_node is not None:
        net.bandwidth = parse_bandwidth(bw_node, allow_floor=False)
    vlan_node = _xnode(root, "./vlan")
    if vlan_node is not None:
        net.vlan = parse_vlan(vlan_node)
    net.isolated_port = parse_port_isolated(root)

    br = net.bridge
    br.name = _xstr(root, "./bridge[1]/@name")
    br.zone = _xstr(root, "./bridge[1]/@zone")
    stp = _xstr(root, "./bridge[1]/@stp")
    br.stp = stp != "off"
    delay = _xstr(root, "./bridge[1]/@delay")
    if delay is not None:
        val = strtoull_p(delay, 10)
        if val is None:
            raise invalid(f"Invalid delay value in network '{name}'")
        br.delay = val
    mtm = _xstr(root, "./bridge[1]/@macTableManager")
    if mtm is not None:
        if mtm not in ("kernel", "libvirt"):
            raise invalid(f"Invalid macTableManager setting '{mtm}' in network '{name}'")
        br.mac_table_manager = mtm

    mac = _xstr(root, "./mac[1]/@address")
    if mac is not None:
        parsed_mac = parse_mac(mac)
        if parsed_mac is None:
            raise invalid(f"Invalid bridge mac address '{mac}' in network '{name}'")
        if int(parsed_mac[:2], 16) & 1:
            raise invalid(f"Invalid multicast bridge mac address '{mac}' in network '{name}'")
        net.mac = parsed_mac

    mtu = _xstr(root, "./mtu/@size")
    if mtu is not None:
        mval = strtoul_ui(mtu, 10)
        if mval is None:
            raise invalid(f"Invalid mtu size '{mtu}' in network '{name}'")
        net.mtu = mval or None

    dns_node = _xnode(root, "./dns")
    if dns_node is not None:
        net.dns = _parse_dns(name, dns_node)

    vp_node = _xnode(root, "./virtualport")
    if vp_node is not None:
        net.virtualport = parse_virtualport(vp_node, require_type=True)

    for pg_node in _xnodes(root, "./portgroup"):
        net.portgroups.append(_parse_portgroup(pg_node))

    for ip_node in _xnodes(root, "./ip"):
        net.ips.append(_parse_ip_def(name, ip_node))

    for r_node in _xnodes(root, "./route"):
        net.routes.append(_parse_route(name, r_node))
    # each route's gateway must lie in the subnet of one of the addresses:
    # the subnets by (family, prefix), then one lookup per distinct prefix
    # (at most 129), not one comparison per address (linear, not pairwise)
    subnets: dict[tuple[type, int], set[int]] = {}
    for ip in net.ips:
        addr = _ip(ip.address)
        prefix = ip.prefix_len()
        a = _mask_by_prefix(addr, prefix)
        if a is not None:
            subnets.setdefault((type(addr), prefix), set()).add(a)
    for route in net.routes:
        gw = _ip(route.gateway)
        matched = False
        for (family, prefix), nets in subnets.items():
            if family is type(gw) and _mask_by_prefix(gw, prefix) in nets:
                matched = True
                break
        if not matched:
            raise invalid(
                f"unreachable static route gateway '{route.gateway}' specified for network '{name}'"
            )

    fwd_node = _xnode(root, "./forward")
    if fwd_node is not None:
        net.forward = _parse_forward(name, fwd_node)
    _check_forward(net, stp)

    if net.mtu and not is_virtual(net.forward.mode):
        raise invalid(
            "mtu size only allowed in open, route, nat, and isolated mode, "
            f"not in {net.forward.mode} (network '{name}')"
        )

    meta_node = _xnode(root, "./metadata[1]")
    if meta_node is not None:
        net.metadata = _format_metadata(meta_node)

    for opt in _xnodes_ns(root):
        value = opt.get("value")
        if value is None:
            raise invalid("No dnsmasq options value specified")
        net.dnsmasq_options.append(value)
    return net


def _xnodes_ns(root: Element) -> list[Element]:
    res = root.xpath("./dnsmasq:options/dnsmasq:option", namespaces={"dnsmasq": DNSMASQ_NS})
    if isinstance(res, list):
        return [r for r in res if isinstance(r, etree._Element)]
    return []


def _check_forward(net: NetworkDef, stp: str | None) -> None:
    """The cross-checks libvirt runs after parsing <forward>."""
    mode = net.forward.mode
    name = net.name
    fwd = net.forward
    br = net.bridge
    if mode in ("route", "nat"):
        if not net.ips:
            raise invalid(
                f"{mode} forwarding requested, but no IP address provided for network '{name}'"
            )
        if len(fwd.ifs) > 1:
            raise invalid(
                f"multiple forwarding interfaces specified for network '{name}', "
                "only one is supported"
            )
    elif mode == "open":
        if fwd.ifs:
            raise invalid(
                f"forward dev not allowed for network '{name}' with forward mode='{mode}'"
            )
    elif mode in ("private", "vepa", "passthrough", "hostdev", "bridge"):
        if mode != "bridge":
            if br.name:
                raise invalid(f"bridge name not allowed in {mode} mode (network '{name}')")
            if br.zone:
                raise invalid(f"bridge zone not allowed in {mode} mode (network '{name}')")
            if br.mac_table_manager:
                raise invalid(
                    f"bridge macTableManager setting not allowed in {mode} mode (network '{name}')"
                )
        if br.delay or stp or br.zone:
            raise invalid(
                "bridge delay/stp/zone options only allowed in open, route, nat, and "
                f"isolated mode, not in {mode} (network '{name}')"
            )
        if br.name and (fwd.ifs or fwd.pfs):
            raise invalid(
                f"A network with forward mode='{mode}' can specify a bridge name or a "
                f"forward dev, but not both (network '{name}')"
            )


# ---------------------------------------------------------------------------
# Formatting


def _yn(v: bool) -> str:
    return "yes" if v else "no"


def _raw_attr(name: str, value: str | None) -> str:
    """An attribute libvirt prints without escaping (virBufferAsprintf). We
    escape it anyway: the same bytes for every value without < > & ' ", and
    for one with them (a DHCP host name "a'b" passes libvirt's checks) a
    document that still parses instead of libvirt's broken one."""
    return "" if value is None else f" {name}='{escape(value)}'"


def _esc_attr(name: str, value: str | None) -> str:
    return "" if value is None else f" {name}='{escape(value)}'"


def _format_lease(lease: DHCPLease | None, pad: str) -> str:
    if lease is None:
        return ""
    if not lease.expiry:
        return f"{pad}<lease expiry='0'/>\n"
    return f"{pad}<lease expiry='{lease.expiry}' unit='{lease.unit}'/>\n"


def _element(pad: str, name: str, attrs: str, children: str) -> str:
    """virXMLFormatElement: nothing when both parts are empty."""
    if not attrs and not children:
        return ""
    if children:
        return f"{pad}<{name}{attrs}>\n{children}{pad}</{name}>\n"
    return f"{pad}<{name}{attrs}/>\n"


def _format_ip(ip: IPDef, indent: int) -> str:
    pad = " " * indent
    p1 = " " * (indent + 2)
    p2 = " " * (indent + 4)
    p3 = " " * (indent + 6)
    attrs = _raw_attr("family", ip.family_attr)
    attrs += f" address='{ip.address}'"
    attrs += _raw_attr("netmask", ip.netmask)
    if ip.prefix > 0:
        attrs += f" prefix='{ip.prefix}'"
    if ip.local_ptr is not None:
        attrs += f" localPtr='{_yn(ip.local_ptr)}'"
    children = ""
    if ip.tftp_root is not None:
        children += f"{p1}<tftp root='{escape(ip.tftp_root)}'/>\n"
    if ip.ranges or ip.hosts:
        dhcp = ""
        for r in ip.ranges:
            dhcp += _element(
                p2, "range", f" start='{r.start}' end='{r.end}'", _format_lease(r.lease, p3)
            )
        for h in ip.hosts:
            hattrs = _raw_attr("mac", h.mac) + _raw_attr("id", h.id) + _raw_attr("name", h.name)
            hattrs += _raw_attr("ip", h.ip)
            dhcp += _element(p2, "host", hattrs, _format_lease(h.lease, p3))
        if ip.bootp_file is not None:
            battrs = _esc_attr("file", ip.bootp_file) + _esc_attr("server", ip.bootp_server)
            dhcp += _element(p2, "bootp", battrs, "")
        children += _element(p1, "dhcp", "", dhcp)
    return _element(pad, "ip", attrs, children)


def _format_route(r: RouteDef, indent: int) -> str:
    s = " " * indent + "<route"
    s += _raw_attr("family", r.family_attr)
    s += f" address='{r.address}'"
    s += _raw_attr("netmask", r.netmask)
    if r.has_prefix:
        s += f" prefix='{r.prefix & 0xFFFFFFFF}'"
    s += f" gateway='{r.gateway}'"
    if r.metric is not None and r.metric > 0:
        s += f" metric='{r.metric & 0xFFFFFFFF}'"
    return s + "/>\n"


def _format_dns(dns: DNSDef, indent: int) -> str:
    records = dns.forwarders or dns.hosts or dns.srvs or dns.txts
    if dns.enable is None and dns.forward_plain_names is None and not records:
        return ""
    pad = " " * indent
    p1 = " " * (indent + 2)
    p2 = " " * (indent + 4)
    s = f"{pad}<dns"
    if dns.enable is not None:
        s += f" enable='{_yn(dns.enable)}'"
    if dns.forward_plain_names is not None:
        s += f" forwardPlainNames='{_yn(dns.forward_plain_names)}'"
    if not records:
        return s + "/>\n"
    s += ">\n"
    for f in dns.forwarders:
        s += f"{p1}<forwarder" + _esc_attr("domain", f.domain)
        if f.addr is not None:
            s += f" addr='{f.addr}'"
            if f.port:
                s += f" port='{f.port}'"
        s += "/>\n"
    for t in dns.txts:
        s += f"{p1}<txt name='{escape(t.name)}' value='{escape(t.value)}'/>\n"
    for v in dns.srvs:
        s += f"{p1}<srv service='{escape(v.service)}' protocol='{escape(v.protocol)}'"
        s += _esc_attr("domain", v.domain) + _esc_attr("target", v.target)
        if v.port:
            s += f" port='{v.port}'"
        if v.priority:
            s += f" priority='{v.priority}'"
        if v.weight:
            s += f" weight='{v.weight}'"
        s += "/>\n"
    for h in dns.hosts:
        s += f"{p1}<host ip='{h.ip}'>\n"
        for hn in h.hostnames:
            s += f"{p2}<hostname>{escape(hn)}</hostname>\n"
        s += f"{p1}</host>\n"
    return s + f"{pad}</dns>\n"


def _format_pci(pci: PCIAddress, pad: str) -> str:
    s = (
        f"{pad}<address type='pci' domain='0x{pci.domain:04x}' bus='0x{pci.bus:02x}' "
        f"slot='0x{pci.slot:02x}' function='0x{pci.function:x}'"
    )
    if pci.multifunction is not None:
        s += f" multifunction='{pci.multifunction}'"
    return s + "/>\n"


def _format_forward(net: NetworkDef, indent: int, inactive: bool) -> str:
    fwd = net.forward
    if fwd.mode == "none":
        return ""
    pad = " " * indent
    p1 = " " * (indent + 2)
    p2 = " " * (indent + 4)
    dev = fwd.dev if not fwd.pfs else None
    s = f"{pad}<forward" + _esc_attr("dev", dev) + f" mode='{fwd.mode}'"
    if fwd.mode == "hostdev":
        s += f" managed='{_yn(fwd.managed)}'"
    nat_data = bool(fwd.nat_start or fwd.nat_end or fwd.nat_port_start or fwd.nat_port_end)
    short = not (fwd.ifs or fwd.pfs or nat_data or fwd.driver_name or fwd.nat_ipv6 is not None)
    s += "/>\n" if short else ">\n"
    dattrs = _raw_attr("name", fwd.driver_name) + _esc_attr("model", fwd.driver_model)
    s += _element(p1, "driver", dattrs, "")
    if fwd.mode == "nat" and (nat_data or fwd.nat_ipv6 is not None):
        s += f"{p1}<nat"
        if fwd.nat_ipv6 is not None:
            s += f" ipv6='{_yn(fwd.nat_ipv6)}'"
        if not nat_data:
            s += "/>\n"
        else:
            s += ">\n"
            if fwd.nat_start:
                s += f"{p2}<address start='{fwd.nat_start}'"
                if fwd.nat_end:
                    s += f" end='{fwd.nat_end}'"
                s += "/>\n"
            if fwd.nat_port_start or fwd.nat_port_end:
                s += f"{p2}<port start='{fwd.nat_port_start}'"
                if fwd.nat_port_end:
                    s += f" end='{fwd.nat_port_end}'"
                s += "/>\n"
            s += f"{p1}</nat>\n"
    if fwd.pfs:
        s += f"{p1}<pf dev='{escape(fwd.pfs[0])}'/>\n"
    if fwd.ifs and (not fwd.pfs or not inactive):
        for i in fwd.ifs:
            if i.type == "netdev":
                s += f"{p1}<interface" + _esc_attr("dev", i.dev)
                if not inactive and i.connections > 0:
                    s += f" connections='{i.connections}'"
                s += "/>\n"
            elif i.pci is not None:
                s += _format_pci(i.pci, p1)
    if not short:
        s += f"{pad}</forward>\n"
    return s


def _format_bridge(net: NetworkDef, indent: int) -> str:
    br = net.bridge
    hasbridge = is_virtual(net.forward.mode)
    if not (hasbridge or br.name or br.mac_table_manager):
        return ""
    s = " " * indent + "<bridge" + _esc_attr("name", br.name) + _esc_attr("zone", br.zone)
    if hasbridge:
        delay = br.delay - (1 << 64) if br.delay >= (1 << 63) else br.delay
        s += f" stp='{'on' if br.stp else 'off'}' delay='{delay}'"
    if br.mac_table_manager:
        s += f" macTableManager='{br.mac_table_manager}'"
    return s + "/>\n"


def _format_portgroup(pg: PortGroupDef, indent: int) -> str:
    pad = " " * indent
    s = f"{pad}<portgroup name='{escape(pg.name)}'"
    if pg.default:
        s += " default='yes'"
    if pg.trust_guest_rx_filters is not None:
        s += f" trustGuestRxFilters='{_yn(pg.trust_guest_rx_filters)}'"
    s += ">\n"
    s += format_vlan(pg.vlan, indent + 2)
    s += format_virtualport(pg.virtualport, indent + 2)
    s += format_bandwidth(pg.bandwidth, indent + 2, class_id=False)
    return s + f"{pad}</portgroup>\n"


def format_network(net: NetworkDef, *, inactive: bool = False) -> str:
    """The definition as libvirt's virNetworkDefFormat prints it.

    ``inactive`` is VIR_NETWORK_XML_INACTIVE: no connection counts, and the
    pool entries are hidden when a ``<pf>`` is present.
    """
    p1 = "  "
    s = "<network"
    if net.dnsmasq_options:
        s += f" xmlns:dnsmasq='{DNSMASQ_NS}'"
    if not inactive and net.connections > 0:
        s += f" connections='{net.connections}'"
    if net.ipv6:
        s += " ipv6='yes'"
    if net.trust_guest_rx_filters is not None:
        s += f" trustGuestRxFilters='{_yn(net.trust_guest_rx_filters)}'"
    s += ">\n"
    s += f"{p1}<name>{escape(net.name)}</name>\n"
    s += f"{p1}<uuid>{net.uuid}</uuid>\n"
    if net.title is not None:
        s += f"{p1}<title>{escape(net.title)}</title>\n"
    if net.description is not None:
        s += f"{p1}<description>{escape(net.description)}</description>\n"
    if net.metadata is not None:
        s += net.metadata
    s += _format_forward(net, 2, inactive)
    s += _format_bridge(net, 2)
    if net.mtu:
        s += f"{p1}<mtu size='{net.mtu}'/>\n"
    if net.mac is not None:
        s += f"{p1}<mac address='{net.mac}'/>\n"
    dom = net.domain
    if dom is not None and dom.name is not None:
        s += f"{p1}<domain name='{escape(dom.name)}'"
        if dom.local_only is not None:
            s += f" localOnly='{_yn(dom.local_only)}'"
        if dom.register is not None:
            s += f" register='{_yn(dom.register)}'"
        s += "/>\n"
    s += _format_dns(net.dns, 2)
    s += format_vlan(net.vlan, 2)
    s += format_bandwidth(net.bandwidth, 2, class_id=False)
    s += format_port_isolated(net.isolated_port, 2)
    for ip in net.ips:
        s += _format_ip(ip, 2)
    for r in net.routes:
        s += _format_route(r, 2)
    s += format_virtualport(net.virtualport, 2)
    for pg in net.portgroups:
        s += _format_portgroup(pg, 2)
    if net.dnsmasq_options:
        s += f"{p1}<dnsmasq:options>\n"
        for opt in net.dnsmasq_options:
            s += f"{p1}  <dnsmasq:option value='{escape(opt)}'/>\n"
        s += f"{p1}</dnsmasq:options>\n"
    return s + "</network>\n"
