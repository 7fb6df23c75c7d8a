"""Define-time validation: libvirt's networkValidate (bridge_driver.c).

Runs only when a network is defined or created, never when a stored
definition is re-read (see the spec, "strict on define, lenient on reload").
It also fills in what libvirt generates at define time: the bridge name of a
virtual network (first free ``virbr%d`` or the user's ``%d`` template) and
its MAC address (``52:54:00:xx:xx:xx``).
"""

from __future__ import annotations

import copy
import secrets
from collections import Counter
from collections.abc import Callable, Iterable

from netfs.errors import NetfsError, invalid
from netfs.model.dnsmasq import check_values as check_dnsmasq_values
from netfs.model.names import entry_name_problem, shown
from netfs.model.network import NetworkDef, is_virtual

__all__ = [
    "MAX_BRIDGE_ID",
    "network_problems",
    "give_mac",
    "random_mac",
    "set_mac_source",
    "validate_network",
]

MAX_BRIDGE_ID = 256

_mac_source: Callable[[], bytes] = lambda: secrets.token_bytes(3)  # noqa: E731


def set_mac_source(source: Callable[[], bytes] | None) -> None:
    """Replace the random source of :func:`random_mac` (three bytes per
    call); None restores the default. Tests use ``lambda: b"\\0\\0\\0"`` to
    get libvirt's mocked ``52:54:00:00:00:00``."""
    global _mac_source
    _mac_source = source if source is not None else (lambda: secrets.token_bytes(3))


def give_mac(net: NetworkDef) -> bool:
    """A network with a bridge of its own (modes none, nat, route and open)
    and no MAC gets a random one, as libvirt gives it; True if it got one."""
    if net.mac is None and is_virtual(net.forward.mode):
        net.mac = random_mac()
        return True
    return False


def random_mac() -> str:
    """A random MAC in libvirt's 52:54:00 range, lowercase."""
    tail = _mac_source()[:3]
    return "52:54:00:" + ":".join(f"{b:02x}" for b in tail)


def _template_ok(name: str) -> bool:
    """libvirt uses the name as a printf template when it holds exactly one
    '%' and that is followed by 'd'."""
    p = name.find("%")
    return p >= 0 and p == name.rfind("%") and name[p + 1 : p + 2] == "d"


def _assign_bridge(
    net: NetworkDef,
    bridges_in_use: Iterable[str],
    device_exists: Callable[[str], bool] | None,
) -> None:
    in_use = set(bridges_in_use)
    name = net.bridge.name
    if name and "%d" not in name:
        if name in in_use:
            raise invalid(f"bridge name '{name}' already in use.")
        return
    templ = name if name and _template_ok(name) else "virbr%d"
    for i in range(MAX_BRIDGE_ID + 1):
        candidate = templ.replace("%d", str(i), 1)
        if candidate in in_use:
            continue
        if device_exists is not None and device_exists(candidate):
            continue
        net.bridge.name = candidate
        return
    raise invalid(f"Bridge generation exceeded max id {MAX_BRIDGE_ID}")


def validate_network(
    net: NetworkDef,
    *,
    bridges_in_use: Iterable[str] = (),
    device_exists: Callable[[str], bool] | None = None,
    assign_bridge: bool = True,
    generate_mac: bool = True,
) -> None:
    """libvirt's networkValidate: raises NetfsError(EINVAL) with libvirt's
    message on the first problem; fills in the bridge name and MAC of a
    virtual network.

    ``bridges_in_use``: bridge names used by the *other* networks (live and
    persistent definitions). ``device_exists(name)``: whether a host device
    of that name exists (None: assume none does). ``assign_bridge=False``
    is libvirt's test harness (no driver: no bridge name is chosen).
    """
    name = net.name
    mode = net.forward.mode
    if "\n" in name:
        raise invalid("invalid char in name: \n")

    bandwidth_allowed = False
    if is_virtual(mode):
        if assign_bridge:
            _assign_bridge(net, bridges_in_use, device_exists)
        if generate_mac:
            give_mac(net)
        bandwidth_allowed = True
    else:
        if mode == "bridge" and net.bridge.name is not None:
            bandwidth_allowed = True
        if net.mac is not None:
            raise invalid(f"Unsupported <mac> element in network {name} with forward mode='{mode}'")
        if net.ips:
            raise invalid(f"Unsupported <ip> element in network {name} with forward mode='{mode}'")
        if net.dns.has_records():
            raise invalid(f"Unsupported <dns> element in network {name} with forward mode='{mode}'")
        if net.domain is not None and net.domain.name is not None:
            raise invalid(
                f"Unsupported <domain> element in network {name} with forward mode='{mode}'"
            )

    if net.bandwidth is not None and not bandwidth_allowed:
        raise invalid(
            f"Unsupported network-wide <bandwidth> element in network {name} "
            f"with forward mode='{mode}'"
        )

    uses_interface = uses_address = False
    for iface in net.forward.ifs:
        if iface.type == "netdev":
            uses_interface = True
            if mode == "hostdev":
                raise invalid(
                    f"hostdev network '{name}' lists '{iface.dev}' in the device pool, "
                    "but hostdev networks require all devices to be listed by PCI "
                    "address, not network device name"
                )
        elif iface.type == "pci":
            uses_address = True
            if mode != "hostdev":
                raise invalid(
                    f"network '{name}' has forward mode '{mode}' but lists a device by "
                    "PCI address in the device pool. This is only supported for "
                    "networks with forward mode 'hostdev'"
                )
            # libvirt also checks sysfs that the device is an SR-IOV VF; the
            # model does no I/O, so that host check is left out here.
    if (1 if net.forward.pfs else 0) + uses_interface + uses_address > 1:
        raise invalid(
            f"<address>, <interface>, and <pf> elements of <forward> in network {name} "
            "are mutually exclusive"
        )

    v4 = v6 = False
    for ip in net.ips:
        if not ip.has_dhcp():
            continue
        if ip.family == "ipv4":
            if v4:
                raise invalid(
                    "Multiple IPv4 dhcp sections found -- dhcp is supported only for a "
                    "single IPv4 address on each network"
                )
            v4 = True
        else:
            if v6:
                raise invalid(
                    "Multiple IPv6 dhcp sections found -- dhcp is supported only for a "
                    "single IPv6 address on each network"
                )
            v6 = True

    vp = net.virtualport
    vlan_allowed = (
        mode in ("hostdev", "passthrough")
        or (mode == "bridge" and vp is not None and vp.type == "openvswitch")
        or (mode == "bridge" and vp is None)
    )
    vlan_used = net.vlan is not None and len(net.vlan.tags) > 0
    bad_vlan = False
    default_pg = None
    pgs = net.portgroups
    # libvirt compares each portgroup with the later ones; a name that occurs
    # more than once is reported at its first occurrence, as there
    # (counted once: linear, not pairwise)
    name_count = Counter(pg.name for pg in pgs)
    for pg in pgs:
        if vlan_used or (pg.vlan is not None and len(pg.vlan.tags) > 0):
            if pg.virtualport is not None:
                if mode != "bridge" or pg.virtualport.type != "openvswitch":
                    bad_vlan = True
            elif not vlan_allowed:
                bad_vlan = True
        if pg.default:
            if default_pg is not None:
                raise invalid(
                    f"network '{name}' has multiple default <portgroup> elements "
                    f"({default_pg.name} and {pg.name}), but only one default is allowed"
                )
            default_pg = pg
        if name_count[pg.name] > 1:
            raise invalid(
                f"multiple <portgroup> elements with the same name ({pg.name}) in network '{name}'"
            )
        if pg.bandwidth is not None and not bandwidth_allowed:
            raise invalid(
                f"Unsupported <bandwidth> element in network '{name}' in portgroup "
                f"'{pg.name}' with forward mode='{mode}'"
            )
    if bad_vlan or (vlan_used and not vlan_allowed and default_pg is None):
        raise invalid(
            f"<vlan> element specified for network {name}, whose type doesn't support "
            "vlan configuration"
        )

    if mode == "hostdev":
        for pg in pgs:
            if pg.bandwidth is not None:
                raise invalid(
                    f"unsupported <bandwidth> element in <portgroup name='{pg.name}'> of "
                    f"network '{name}' with forward mode='{mode}'"
                )

    # netfs's own rule, after libvirt's: a portgroup is a directory entry
    # (NAME/portgroups/PG), so its name must be one that can be
    for pg in pgs:
        problem = entry_name_problem(pg.name)
        if problem is not None:
            raise invalid(
                f"invalid portgroup name '{shown(pg.name)}' in network '{shown(name)}': {problem}"
            )

    # netfs's own rule: nothing may add a line, option or field to dnsmasq's files
    check_dnsmasq_values(net)


def network_problems(net: NetworkDef) -> str | None:
    """What networkValidate would say about ``net`` (None if nothing), on a
    copy and without generating a bridge name or MAC."""
    try:
        validate_network(copy.deepcopy(net), assign_bridge=False, generate_mac=False)
    except NetfsError as e:
        return e.message
    return None
