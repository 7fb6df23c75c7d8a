"""Network ports: libvirt's ``<networkport>`` (and a guest ``<interface
type='network'>`` as another way to ask for one), its format, and the port
allocation logic of libvirt's networkAllocatePort.

Facts from src/conf/virnetworkportdef.c and src/network/bridge_driver.c.

Behaviour is libvirt 9.0's (checked against it): a ``<networkport>``
without ``<uuid>`` is refused ("network port has no uuid"); a ``midonet``
profile brought by a port is not checked for extra parameters (9.0's
CheckNoExtras has no midonet rule), so such a port fails at allocation with
the forward-mode error, as every midonet port does; in a hostdev network the
free device is picked before the profile is checked against the mode.

Differences from libvirt, on purpose:

- A guest ``<interface>`` is accepted too: ``<source portgroup>`` gives the
  group, ``<source network>`` is kept as ``source_network`` (for the caller
  to check against the network), a missing ``<mac>`` becomes a random 52:54:00 address, the owner
  name comes from the caller, the owner uuid and port uuid are generated.
- Guest-side ``<ip>``/``<route>`` (in an ``<interface>`` or in a
  ``<networkport>``) are refused when ``strict`` (a definition being written),
  since netfs cannot enforce addresses or routes inside a guest; when not
  strict (a saved port being reloaded) they are kept and printed after
  ``<plug>`` as ``<ip .../>`` and ``<route .../>`` children of
  ``<networkport>``, so that a save/reload keeps them.
"""

from __future__ import annotations

import random as _random
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from netfs.errors import invalid
from netfs.model import virtualport as _vp
from netfs.model.netcommon import (
    Bandwidth,
    Vlan,
    child,
    format_bandwidth,
    format_port_isolated,
    format_vlan,
    parse_bandwidth,
    parse_mac,
    parse_port_isolated,
    parse_tristate_bool,
    parse_uuid,
    parse_vlan,
    strtoul_uip,
    tag_name,
    xml_attr,
)
from netfs.model.network import ForwardIf, NetworkDef, is_virtual
from netfs.model.virtualport import (
    VirtualPort,
    check_complete,
    check_forward_mode,
    format_virtualport,
    merge3,
    parse_virtualport,
)
from netfs.model.xmlsafe import Element, parse_document

__all__ = [
    "GuestItem",
    "NetworkPort",
    "PciAddress",
    "Plug",
    "allocate_port",
    "count_connections",
    "format_port",
    "generate_mac",
    "parse_port",
    "pci_key",
    "portgroup_virtualport",
]

PLUG_TYPES = ("network", "bridge", "direct", "hostdev-pci")
MACVLAN_MODES = ("vepa", "private", "bridge", "passthrough")  # libvirt's enum order
MAC_TABLE_MANAGERS = ("kernel", "libvirt")
DRIVER_NAMES = ("kvm", "vfio", "xen")

GUEST_IP_MESSAGE = (
    "Invalid attempt to set network interface guest-side IP route and/or address info, "
    "not supported by netfs (guest-side addresses and routes cannot be enforced)"
)


def _random_mac() -> str:
    rnd = _random.SystemRandom()
    return "52:54:00:" + ":".join(f"{rnd.randrange(256):02x}" for _ in range(3))


#: MAC generator for guest interfaces without ``<mac>``; replace it in tests.
generate_mac: Callable[[], str] = _random_mac


# ---------------------------------------------------------------------------
# model


@dataclass(frozen=True)
class PciAddress:
    domain: int = 0
    bus: int = 0
    slot: int = 0
    function: int = 0


def pci_key(addr: PciAddress) -> str:
    """The key of a PCI device in ``device_usage``: ``dddd:bb:ss.f``."""
    return f"{addr.domain:04x}:{addr.bus:02x}:{addr.slot:02x}.{addr.function:x}"


@dataclass(frozen=True)
class Plug:
    """How the port is connected: ``type`` is network, bridge, direct or
    hostdev-pci (libvirt's "none" is ``NetworkPort.plug = None``)."""

    type: str
    bridge: str | None = None  # network, bridge
    mac_table_manager: str | None = None  # network, bridge: kernel | libvirt
    dev: str | None = None  # direct
    mode: str = "vepa"  # direct: vepa | private | bridge | passthrough
    managed: bool | None = None  # hostdev-pci
    driver: str | None = None  # hostdev-pci: kvm | vfio
    address: PciAddress | None = None  # hostdev-pci


@dataclass(frozen=True)
class GuestItem:
    """A kept guest-side ``<ip>`` or ``<route>`` (lenient loads only):
    element name and attributes in document order."""

    tag: str
    attrs: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class NetworkPort:
    uuid: str
    owner_name: str
    owner_uuid: str
    mac: str
    group: str | None = None
    virtualport: VirtualPort | None = None
    bandwidth: Bandwidth | None = None
    vlan: Vlan | None = None
    isolated: bool | None = None
    trust_guest_rx_filters: bool | None = None
    plug: Plug | None = None
    ips: tuple[GuestItem, ...] = field(default=())
    routes: tuple[GuestItem, ...] = field(default=())
    # a guest <interface>'s <source network=...> as written (None: absent, or
    # a <networkport>); the caller checks it names the network. Not formatted.
    source_network: str | None = field(default=None, compare=False)


# ---------------------------------------------------------------------------
# parse helpers


def _xpath_string(elem: Element, path: str) -> str | None:
    """libvirt's virXPathString: the XPath string value, None when empty."""
    value = elem.xpath(f"string({path})")
    if not isinstance(value, str) or value == "":
        return None
    return str(value)


def _guest_items(elem: Element, strict: bool) -> tuple[tuple[GuestItem, ...], ...]:
    ips: list[GuestItem] = []
    routes: list[GuestItem] = []
    for c in elem:
        name = tag_name(c)
        if name in ("ip", "route"):
            if strict:
                raise invalid(GUEST_IP_MESSAGE)
            item = GuestItem(name, tuple((str(k), str(v)) for k, v in c.attrib.items()))
            (ips if name == "ip" else routes).append(item)
    return tuple(ips), tuple(routes)


def _parse_pci_address(elem: Element) -> PciAddress:
    vals: dict[str, int] = {}
    for name in ("domain", "bus", "slot", "function"):
        raw = elem.get(name)
        if raw is None:
            vals[name] = 0
            continue
        v = strtoul_uip(raw, 0)
        if v is None:
            raise invalid(
                f"Invalid value for attribute '{name}' in element '{tag_name(elem)}': "
                f"'{raw}'. Expected non-negative integer value"
            )
        vals[name] = v
    mf = elem.get("multifunction")
    if mf is not None and mf not in ("on", "off"):
        raise invalid(
            f"Invalid value for attribute 'multifunction' in element '{tag_name(elem)}': '{mf}'."
        )
    addr = PciAddress(**vals)
    if addr != PciAddress():
        if addr.bus > 0xFF:
            raise invalid(f"Invalid PCI address bus='0x{addr.bus:x}', must be <= 0xff")
        if addr.slot > 0x1F:
            raise invalid(f"Invalid PCI address slot='0x{addr.slot:x}', must be <= 0x1f")
        if addr.function > 7:
            raise invalid(f"Invalid PCI address function=0x{addr.function:x}, must be <= 7")
    return addr


def _parse_plug(root: Element) -> Plug | None:
    plug = child(root, "plug")
    if plug is None:
        return None
    ptype = plug.get("type")
    if ptype is None:
        return None
    if ptype not in PLUG_TYPES:
        if ptype == "none":
            return None
        raise invalid(f"Invalid value for attribute 'type' in element 'plug': '{ptype}'.")
    if ptype in ("network", "bridge"):
        bridge = plug.get("bridge")
        if bridge is None:
            raise invalid("Missing network port bridge name")
        mgr = plug.get("macTableManager")
        if mgr is not None and mgr not in MAC_TABLE_MANAGERS:
            raise invalid(f"Invalid macTableManager setting '{mgr}' in network port")
        return Plug(type=ptype, bridge=bridge, mac_table_manager=mgr)
    if ptype == "direct":
        dev = plug.get("dev")
        if dev is None:
            raise invalid("Missing network port link device name")
        mode = plug.get("mode")
        if mode is not None and mode not in MACVLAN_MODES:
            raise invalid(f"Invalid mode setting '{mode}' in network port")
        return Plug(type="direct", dev=dev, mode=mode or "vepa")
    # hostdev-pci
    managed = parse_tristate_bool(plug, "managed")
    driver = _xpath_string(root, "./plug/driver/@name")
    if driver is not None and driver not in DRIVER_NAMES:
        raise invalid("Missing network port driver name")
    addr_el = child(plug, "address")
    if addr_el is None:
        raise invalid("Missing network port PCI address")
    return Plug(
        type="hostdev-pci", managed=managed, driver=driver, address=_parse_pci_address(addr_el)
    )


def _parse_networkport(root: Element, strict: bool) -> NetworkPort:
    raw_uuid = _xpath_string(root, "./uuid")
    if raw_uuid is None:
        raise invalid("network port has no uuid")
    port_uuid = parse_uuid(raw_uuid)
    if port_uuid is None:
        raise invalid(f"Unable to parse UUID '{raw_uuid}'")
    owner_name = _xpath_string(root, "./owner/name")
    if owner_name is None:
        raise invalid("network port has no owner name")
    raw_owner_uuid = _xpath_string(root, "./owner/uuid")
    if raw_owner_uuid is None:
        raise invalid("network port has no owner UUID")
    owner_uuid = parse_uuid(raw_owner_uuid)
    if owner_uuid is None:
        raise invalid(f"Unable to parse UUID '{raw_owner_uuid}'")
    group = _xpath_string(root, "./group")
    vport = parse_virtualport(child(root, "virtualport"), midonet_extras=False)
    raw_mac = _xpath_string(root, "./mac/@address")
    if raw_mac is None:
        raise invalid("network port has no mac")
    mac = parse_mac(raw_mac)
    if mac is None:
        raise invalid(f"Unable to parse MAC '{raw_mac}'")
    bandwidth = parse_bandwidth(child(root, "bandwidth"), allow_floor=True, allow_class_id=True)
    vlan = parse_vlan(child(root, "vlan"))
    isolated = parse_port_isolated(root)
    trust = parse_tristate_bool(child(root, "rxfilters"), "trustGuest")
    plug = _parse_plug(root)
    ips, routes = _guest_items(root, strict)
    return NetworkPort(
        uuid=port_uuid,
        owner_name=owner_name,
        owner_uuid=owner_uuid,
        mac=mac,
        group=group,
        virtualport=vport,
        bandwidth=bandwidth,
        vlan=vlan,
        isolated=isolated,
        trust_guest_rx_filters=trust,
        plug=plug,
        ips=ips,
        routes=routes,
    )


def _parse_interface(root: Element, strict: bool, owner_name: str | None) -> NetworkPort:
    itype = root.get("type")
    if itype != "network":
        raise invalid(
            f"unsupported interface type '{itype or ''}': only <interface type='network'> "
            "can be connected to a network"
        )
    source = child(root, "source")
    group = source.get("portgroup") if source is not None else None
    source_network = source.get("network") if source is not None else None
    mac_el = child(root, "mac")
    raw_mac = mac_el.get("address") if mac_el is not None else None
    if raw_mac is None:
        mac = generate_mac()
    else:
        parsed_mac = parse_mac(raw_mac)
        if parsed_mac is None:
            raise invalid(f"unable to parse mac address '{raw_mac}'")
        if int(parsed_mac[:2], 16) & 1:
            raise invalid(f"expected unicast mac address, found multicast '{raw_mac}'")
        mac = parsed_mac
    vport = parse_virtualport(child(root, "virtualport"), generate=True, midonet_extras=False)
    bandwidth = parse_bandwidth(child(root, "bandwidth"), allow_floor=True)
    vlan = parse_vlan(child(root, "vlan"))
    isolated = parse_port_isolated(root)
    trust = parse_tristate_bool(root, "trustGuestRxFilters")
    ips, routes = _guest_items(root, strict)
    if not owner_name:
        raise invalid("network port has no owner name")
    return NetworkPort(
        uuid=_vp.generate_uuid(),
        owner_name=owner_name,
        owner_uuid=_vp.generate_uuid(),
        mac=mac,
        group=group or None,
        virtualport=vport,
        bandwidth=bandwidth,
        vlan=vlan,
        isolated=isolated,
        trust_guest_rx_filters=trust,
        ips=ips,
        routes=routes,
        source_network=source_network,
    )


def parse_port(
    data: bytes | str, *, strict: bool = True, owner_name: str | None = None
) -> NetworkPort:
    """Parse a ``<networkport>`` or a guest ``<interface type='network'>``.

    ``strict`` (writes) refuses guest-side ``<ip>``/``<route>``; otherwise
    (reloads) they are kept. ``owner_name`` names the owner of an
    ``<interface>`` (a ``<networkport>`` carries its own).
    """
    root = parse_document(data)
    name = tag_name(root)
    if name == "networkport":
        return _parse_networkport(root, strict)
    if name == "interface":
        return _parse_interface(root, strict, owner_name)
    raise invalid("unknown root element for network port")


# ---------------------------------------------------------------------------
# format


def _format_plug(plug: Plug | None) -> str:
    if plug is None:
        return ""
    s = f"  <plug type='{plug.type}'"
    if plug.type in ("network", "bridge"):
        if plug.bridge is not None:
            s += f" bridge='{xml_attr(plug.bridge)}'"
        if plug.mac_table_manager in MAC_TABLE_MANAGERS:
            s += f" macTableManager='{plug.mac_table_manager}'"
        return s + "/>\n"
    if plug.type == "direct":
        if plug.dev is not None:
            s += f" dev='{xml_attr(plug.dev)}'"
        return s + f" mode='{plug.mode}'/>\n"
    if plug.managed is not None:
        s += f" managed='{'yes' if plug.managed else 'no'}'"
    s += ">\n"
    if plug.driver:
        s += f"    <driver name='{plug.driver}'/>\n"
    a = plug.address or PciAddress()
    s += (
        f"    <address domain='0x{a.domain:04x}' bus='0x{a.bus:02x}' "
        f"slot='0x{a.slot:02x}' function='0x{a.function}'/>\n"
    )
    return s + "  </plug>\n"


def _format_guest(items: tuple[GuestItem, ...]) -> str:
    out = ""
    for it in items:
        attrs = "".join(f" {k}='{xml_attr(v)}'" for k, v in it.attrs)
        out += f"  <{it.tag}{attrs}/>\n"
    return out


def format_port(port: NetworkPort) -> str:
    """The port as ``virsh net-port-dumpxml`` prints it (plus kept guest
    ``<ip>``/``<route>`` of a lenient load, after ``<plug>``)."""
    s = "<networkport>\n"
    s += f"  <uuid>{port.uuid}</uuid>\n"
    s += "  <owner>\n"
    s += f"    <name>{xml_attr(port.owner_name)}</name>\n"
    s += f"    <uuid>{port.owner_uuid}</uuid>\n"
    s += "  </owner>\n"
    if port.group is not None:
        s += f"  <group>{xml_attr(port.group)}</group>\n"
    s += f"  <mac address='{port.mac}'/>\n"
    s += format_virtualport(port.virtualport, 2)
    s += format_bandwidth(port.bandwidth, 2)
    s += format_vlan(port.vlan, 2)
    s += format_port_isolated(port.isolated, 2)
    if port.trust_guest_rx_filters is not None:
        s += f"  <rxfilters trustGuest='{'yes' if port.trust_guest_rx_filters else 'no'}'/>\n"
    s += _format_plug(port.plug)
    s += _format_guest(port.ips)
    s += _format_guest(port.routes)
    return s + "</networkport>\n"


# ---------------------------------------------------------------------------
# allocation (networkAllocatePort)


def portgroup_virtualport(net: NetworkDef, pg_name: str) -> VirtualPort | None:
    """What ``portgroups/PG/virtualport.xml`` shows: the network's profile
    merged with the portgroup's (None when the portgroup is unknown or there
    is no typed profile)."""
    pg = next((p for p in net.portgroups if p.name == pg_name), None)
    if pg is None:
        return None
    return merge3(None, net.virtualport, pg.virtualport)


def _vlan_present(vlan: Vlan | None) -> bool:
    return vlan is not None and len(vlan.tags) > 0


def _pci(a: Any) -> PciAddress:
    return PciAddress(domain=a.domain, bus=a.bus, slot=a.slot, function=a.function)


def _usage(device_usage: Mapping[str, int] | None, key: str, iface: ForwardIf) -> int:
    if device_usage is not None:
        return int(device_usage.get(key, 0))
    return iface.connections


FIRST_CLASS_ID = 3  # 0 (root), 1 (1:1) and 2 (1:2) are the network's own


def _plug_bandwidth(
    net: NetworkDef,
    mac: str,
    bw: Bandwidth | None,
    floor_sum: int,
    class_ids_in_use: Collection[int],
) -> int | None:
    """networkCheckBandwidth + the class id pick of networkPlugBandwidth: the
    class id to record, or None when no QoS class is needed."""
    has_floor = bw is not None and bw.has_floor()
    if has_floor and not is_virtual(net.forward.mode):
        raise invalid(
            f"Invalid use of 'floor' on interface with MAC address {mac} - 'floor' is only "
            "supported for interface type 'network' with forward type 'nat', 'route', "
            "'open' or none"
        )
    net_in = net.bandwidth.inbound if net.bandwidth is not None else None
    if has_floor and net_in is None:
        raise invalid(
            f"Invalid use of 'floor' on interface with MAC address {mac} - "
            f"network '{net.name}' has no inbound QoS set"
        )
    if net_in is None or not has_floor or bw is None or bw.inbound is None:
        return None
    total = floor_sum + bw.inbound.floor
    bridge = net.bridge.name or ""
    if net_in.peak:
        if total > net_in.peak:
            raise invalid(
                f"Cannot plug '{mac}' interface into '{bridge}' because new combined inbound "
                f"floor={total} would overcommit peak={net_in.peak} on network '{net.name}'"
            )
    elif total > net_in.average:
        raise invalid(
            f"Cannot plug '{mac}' interface into '{bridge}' because new combined inbound "
            f"floor={total} would overcommit average={net_in.average} on network '{net.name}'"
        )
    used = set(class_ids_in_use)
    cid = FIRST_CLASS_ID
    while cid in used:
        cid += 1
    return cid


def allocate_port(
    net: NetworkDef,
    port: NetworkPort,
    *,
    device_usage: Mapping[str, int] | None = None,
    floor_sum: int = 0,
    class_ids_in_use: Collection[int] = (),
) -> NetworkPort:
    """libvirt's networkAllocatePort, minus the "network is active" check and
    the bookkeeping (connection counts, MAC map, hooks), which the caller owns.

    ``device_usage`` maps pool devices to their current number of ports (a
    netdev by name, a PCI device by :func:`pci_key`); absent devices count 0.
    ``floor_sum`` is the sum of the inbound floors of the network's other
    ports and ``class_ids_in_use`` their QoS class ids (for libvirt's floor
    accounting; a port with a floor on a network with inbound QoS gets the
    first free class id from 3 up). Returns a new port; ``port`` is not
    changed.
    """
    name = net.name
    pg = net.portgroup(port.group or None)

    bandwidth = port.bandwidth
    if bandwidth is None and pg is not None and pg.bandwidth is not None:
        bandwidth = pg.bandwidth

    vlan = port.vlan
    if not _vlan_present(vlan):
        if pg is not None and _vlan_present(pg.vlan):
            vlan = pg.vlan
        elif _vlan_present(net.vlan):
            vlan = net.vlan

    trust = port.trust_guest_rx_filters
    if trust is None:
        if pg is not None and pg.trust_guest_rx_filters is not None:
            trust = pg.trust_guest_rx_filters
        elif net.trust_guest_rx_filters is not None:
            trust = net.trust_guest_rx_filters

    isolated = port.isolated
    if isolated is None:
        isolated = net.isolated_port

    merged = merge3(port.virtualport, net.virtualport, pg.virtualport if pg is not None else None)
    vport = merged if merged is not None else port.virtualport

    mode = net.forward.mode
    bridge_name = net.bridge.name
    mgr = (
        net.bridge.mac_table_manager if net.bridge.mac_table_manager in MAC_TABLE_MANAGERS else None
    )

    def check_mode() -> None:
        check_forward_mode(vport, mode, bridge_named=bool(bridge_name), network_name=name)

    # each branch checks the profile against the mode where libvirt does:
    # before picking a device, except for hostdev (device first)
    plug: Plug
    if mode in ("none", "nat", "route", "open"):
        check_mode()
        plug = Plug(type="network", bridge=bridge_name, mac_table_manager=mgr)
    elif mode == "bridge" and bridge_name:
        check_mode()
        plug = Plug(type="bridge", bridge=bridge_name, mac_table_manager=mgr)
    elif mode == "hostdev":
        chosen_pci: PciAddress | None = None
        for iface in net.forward.ifs:
            if iface.pci is None:
                continue
            addr = _pci(iface.pci)
            if _usage(device_usage, pci_key(addr), iface) == 0:
                chosen_pci = addr
                break
        if chosen_pci is None:
            raise invalid(
                f"network '{name}' requires exclusive access to interfaces, but none are available"
            )
        driver = net.forward.driver_name
        plug = Plug(
            type="hostdev-pci",
            address=chosen_pci,
            driver=driver if driver in DRIVER_NAMES else None,
            # libvirt stores the bool in a yes/absent tristate: never 'no'
            managed=True if net.forward.managed else None,
        )
        check_mode()
    elif mode in MACVLAN_MODES:
        check_mode()
        ifs = net.forward.ifs
        if not ifs and not net.forward.pfs:
            raise invalid(
                f"network '{name}' uses a direct mode, but has no forward dev and no interface pool"
            )
        devs = [(iface.dev, iface) for iface in ifs if iface.dev is not None]
        exclusive = mode == "passthrough" or (
            mode == "private" and vport is not None and vport.type == "802.1Qbh"
        )
        chosen: str | None = None
        if exclusive:
            for d, iface in devs:
                if _usage(device_usage, d, iface) == 0:
                    chosen = d
                    break
        elif devs:
            best = min(range(len(devs)), key=lambda i: _usage(device_usage, *devs[i]))
            chosen = devs[best][0]
        if chosen is None:
            raise invalid(
                f"network '{name}' requires exclusive access to interfaces, but none are available"
            )
        plug = Plug(type="direct", dev=chosen, mode=mode)
    else:
        raise invalid(f"unknown forwarding type '{mode}'")

    class_id = _plug_bandwidth(net, port.mac, bandwidth, floor_sum, class_ids_in_use)
    if class_id is not None and bandwidth is not None:
        bandwidth = replace(bandwidth, class_id=class_id)

    vport = check_complete(vport, generate=True)

    return replace(
        port,
        bandwidth=bandwidth,
        vlan=vlan,
        trust_guest_rx_filters=trust,
        isolated=isolated,
        virtualport=vport,
        plug=plug,
    )


# ---------------------------------------------------------------------------
# connection counts (libvirt raises them at allocation, lowers them at release)


def count_connections(net: NetworkDef, ports: Iterable[NetworkPort]) -> NetworkDef:
    """``net`` (a live definition) with libvirt's connection counts for
    ``ports``: ``connections`` on the network (every port) and on each pool
    entry (the ports whose plug uses that netdev or PCI device).

    Returns a new definition sharing everything else with ``net`` (``net``
    is not changed). The formatter prints the counts only in live output and
    only when greater than 0: on ``<network>`` and on ``<interface dev>``
    pool entries; libvirt keeps a count on PCI ``<address>`` entries too but
    does not print it.
    """
    total = 0
    usage: dict[str, int] = {}
    for p in ports:
        total += 1
        if p.plug is None:
            continue
        if p.plug.dev:
            key = p.plug.dev
        elif p.plug.address is not None:
            key = "pci:" + pci_key(p.plug.address)
        else:
            continue
        usage[key] = usage.get(key, 0) + 1
    ifs = []
    for iface in net.forward.ifs:
        if iface.type == "netdev" and iface.dev is not None:
            n = usage.get(iface.dev, 0)
        elif iface.pci is not None:
            n = usage.get("pci:" + pci_key(_pci(iface.pci)), 0)
        else:
            n = 0
        ifs.append(iface if iface.connections == n else replace(iface, connections=n))
    if total == net.connections and all(a is b for a, b in zip(ifs, net.forward.ifs, strict=True)):
        return net
    return replace(net, connections=total, forward=replace(net.forward, ifs=ifs))
