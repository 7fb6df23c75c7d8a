"""``<virtualport>`` profiles: parse, CheckNoExtras, CheckComplete, format,
Merge3 and the forward-mode check of port allocation.

Rules and messages follow libvirt (src/conf/netdev_vport_profile_conf.c,
src/util/virnetdevvportprofile.c, networkAllocatePort in
src/network/bridge_driver.c); see the spec, section 1.

Model: ``type`` None is libvirt's internal "none" (no ``type`` attribute).
An attribute is "specified" when it is not None; an empty ``profileid``
counts as absent, as in libvirt. UUIDs are canonical lowercase text.

UUID generation goes through :data:`generate_uuid` (a module attribute, so
tests may replace it) unless a ``gen`` callable is passed explicitly.
"""

from __future__ import annotations

import uuid as _uuid
from collections.abc import Callable
from dataclasses import dataclass, replace

from lxml import etree

from netfs.errors import invalid
from netfs.model.netcommon import child, parse_uuid, strtoul_ui, xml_attr

Element = etree._Element

__all__ = [
    "TYPES",
    "VirtualPort",
    "check_complete",
    "check_forward_mode",
    "check_no_extras",
    "format_virtualport",
    "generate_uuid",
    "merge3",
    "parse_virtualport",
]

QBG = "802.1Qbg"
QBH = "802.1Qbh"
OVS = "openvswitch"
MIDONET = "midonet"
TYPES = (QBG, QBH, OVS, MIDONET)
PROFILEID_MAX = 39  # bytes (a 40-byte buffer with its terminating NUL)


def _uuid4() -> str:
    return str(_uuid.uuid4())


#: The UUID generator (instanceid/interfaceid); replace it in tests.
generate_uuid: Callable[[], str] = _uuid4


def _gen(gen: Callable[[], str] | None) -> str:
    return (gen or generate_uuid)()


@dataclass(frozen=True)
class VirtualPort:
    type: str | None = None
    managerid: int | None = None
    typeid: int | None = None
    typeidversion: int | None = None
    instanceid: str | None = None
    interfaceid: str | None = None
    profileid: str | None = None

    def type_name(self) -> str:
        """libvirt's name for the type ('none' when there is none)."""
        return self.type if self.type is not None else "none"

    def has_parameters(self) -> bool:
        return (
            self.managerid is not None
            or self.typeid is not None
            or self.typeidversion is not None
            or self.instanceid is not None
            or bool(self.profileid)
            or self.interfaceid is not None
        )


# ---------------------------------------------------------------------------
# parse


def _parse_uint(raw: str, name: str, maximum: int, range_msg: str) -> int:
    val = strtoul_ui(raw, 0)
    if val is None:
        raise invalid(f"cannot parse value of {name} parameter")
    if val > maximum:
        raise invalid(range_msg)
    return val


def parse_virtualport(
    elem: Element | None,
    *,
    require_type: bool = False,
    generate: bool = False,
    require_all: bool = False,
    gen: Callable[[], str] | None = None,
    midonet_extras: bool = True,
) -> VirtualPort | None:
    """Parse a ``<virtualport>`` element (None when ``elem`` is None).

    Flags as libvirt's: REQUIRE_TYPE, GENERATE_MISSING_DEFAULTS,
    REQUIRE_ALL_ATTRIBUTES. CheckNoExtras always runs; ``midonet_extras``
    False leaves a midonet profile unchecked there, as libvirt 9.0 does
    (ports are matched against 9.0; networks follow today's rule).
    """
    if elem is None:
        return None
    vtype: str | None = None
    raw_type = elem.get("type")
    if raw_type is not None:
        if raw_type not in TYPES:
            raise invalid(f"unknown virtualport type {raw_type}")
        vtype = raw_type
    if vtype is None and require_type:
        raise invalid("missing required virtualport type")

    params = child(elem, "parameters")
    get = params.get if params is not None else (lambda _name: None)
    raw_mgr = get("managerid")
    raw_tid = get("typeid")
    raw_tidv = get("typeidversion")
    raw_inst = get("instanceid")
    raw_prof = get("profileid")
    raw_ifid = get("interfaceid")

    managerid = typeid = typeidversion = None
    instanceid = interfaceid = profileid = None
    if raw_mgr is not None:
        managerid = _parse_uint(raw_mgr, "managerid", 0xFF, "value of managerid out of range")
    if raw_tid is not None:
        typeid = _parse_uint(raw_tid, "typeid", 0xFFFFFF, "value for typeid out of range")
    if raw_tidv is not None:
        typeidversion = _parse_uint(
            raw_tidv, "typeidversion", 0xFF, "value of typeidversion out of range"
        )
    if raw_inst is not None:
        instanceid = parse_uuid(raw_inst)
        if instanceid is None:
            raise invalid("cannot parse instanceid parameter as a uuid")
    if raw_prof is not None:
        if len(raw_prof.encode("utf-8")) > PROFILEID_MAX:
            raise invalid("profileid parameter too long")
        profileid = raw_prof or None
    if raw_ifid is not None:
        interfaceid = parse_uuid(raw_ifid)
        if interfaceid is None:
            raise invalid("cannot parse interfaceid parameter as a uuid")

    if generate:
        if instanceid is None and vtype in (QBG, None):
            instanceid = _gen(gen)
        if interfaceid is None and vtype in (OVS, None):
            interfaceid = _gen(gen)

    vp = VirtualPort(
        type=vtype,
        managerid=managerid,
        typeid=typeid,
        typeidversion=typeidversion,
        instanceid=instanceid,
        interfaceid=interfaceid,
        profileid=profileid,
    )
    if require_all:
        check_complete(vp, generate=False)
    check_no_extras(vp, midonet=midonet_extras)
    return vp


# ---------------------------------------------------------------------------
# checks


def check_complete(
    vp: VirtualPort | None, *, generate: bool, gen: Callable[[], str] | None = None
) -> VirtualPort | None:
    """CheckComplete: the first missing required attribute is an error.

    With ``generate``, a missing 802.1Qbg instanceid or openvswitch
    interfaceid is generated instead; the (possibly completed) profile is
    returned (the input is never mutated).
    """
    if vp is None or vp.type is None:
        return vp
    missing: str | None = None
    if vp.type == QBG:
        if vp.managerid is None:
            missing = "managerid"
        elif vp.typeid is None:
            missing = "typeid"
        elif vp.typeidversion is None:
            missing = "typeidversion"
        elif vp.instanceid is None:
            if generate:
                vp = replace(vp, instanceid=_gen(gen))
            else:
                missing = "instanceid"
    elif vp.type == QBH:
        if not vp.profileid:
            missing = "profileid"
    elif vp.type == OVS:
        if vp.interfaceid is None:
            if generate:
                vp = replace(vp, interfaceid=_gen(gen))
            else:
                missing = "interfaceid"
    elif vp.type == MIDONET and vp.interfaceid is None:
        missing = "interfaceid"
    if missing is not None:
        raise invalid(f"missing {missing} in <virtualport type='{vp.type}'>")
    return vp


def check_no_extras(vp: VirtualPort | None, *, midonet: bool = True) -> None:
    """CheckNoExtras: an attribute the type does not take is an error.

    ``midonet`` False: a midonet profile passes whatever it carries
    (libvirt 9.0 had no midonet rule here; later versions added it).
    """
    if vp is None or vp.type is None or (vp.type == MIDONET and not midonet):
        return
    extra: str | None = None
    qbg_attrs = (
        ("managerid", vp.managerid is not None),
        ("typeid", vp.typeid is not None),
        ("typeidversion", vp.typeidversion is not None),
        ("instanceid", vp.instanceid is not None),
    )
    if vp.type == QBG:
        if vp.profileid:
            extra = "profileid"
        elif vp.interfaceid is not None:
            extra = "interfaceid"
    elif vp.type == QBH:
        for name, present in (*qbg_attrs, ("interfaceid", vp.interfaceid is not None)):
            if present:
                extra = name
                break
    elif vp.type in (OVS, MIDONET):
        if vp.type == MIDONET and vp.profileid:
            extra = "profileid"
        for name, present in qbg_attrs:
            if present:
                extra = name
                break
    if extra is not None:
        raise invalid(f"extra {extra} unsupported in <virtualport type='{vp.type}'>")


# ---------------------------------------------------------------------------
# format


def format_virtualport(vp: VirtualPort | None, indent: int) -> str:
    """``<virtualport>`` as libvirt prints it; '' when libvirt prints nothing
    (no profile, or a typeless one without parameters).

    Unlike libvirt (which prints profileid raw) the profileid is XML-escaped,
    so that the output always parses back to the same value."""
    if vp is None:
        return ""
    pad = " " * indent
    t = vp.type
    if not vp.has_parameters():
        if t is None:
            return ""
        return f"{pad}<virtualport type='{t}'/>\n"
    head = f"{pad}<virtualport>\n" if t is None else f"{pad}<virtualport type='{t}'>\n"
    qbg_ok = t in (QBG, None)
    attrs = ""
    if vp.managerid is not None and qbg_ok:
        attrs += f" managerid='{vp.managerid}'"
    if vp.typeid is not None and qbg_ok:
        attrs += f" typeid='{vp.typeid}'"
    if vp.typeidversion is not None and qbg_ok:
        attrs += f" typeidversion='{vp.typeidversion}'"
    if vp.instanceid is not None and qbg_ok:
        attrs += f" instanceid='{vp.instanceid}'"
    if vp.interfaceid is not None and t in (MIDONET, OVS, None):
        attrs += f" interfaceid='{vp.interfaceid}'"
    if vp.profileid and t in (OVS, QBH, None):
        attrs += f" profileid='{xml_attr(vp.profileid)}'"
    return f"{head}{pad}  <parameters{attrs}/>\n{pad}</virtualport>\n"


# ---------------------------------------------------------------------------
# Merge3


def _merge(orig: VirtualPort, mods: VirtualPort | None) -> VirtualPort:
    if mods is None:
        return orig
    otype = orig.type
    if mods.type is not None:
        if otype is not None and otype != mods.type:
            raise invalid(
                f"attempt to merge virtualports with mismatched types ({otype} and {mods.type})"
            )
        otype = mods.type
    out = replace(orig, type=otype)
    qbg_ok = otype in (QBG, None)

    if mods.managerid is not None and qbg_ok:
        if out.managerid is not None and out.managerid != mods.managerid:
            raise invalid(
                "attempt to merge virtualports with mismatched managerids "
                f"({out.managerid} and {mods.managerid})"
            )
        out = replace(out, managerid=mods.managerid)
    if mods.typeid is not None and qbg_ok:
        if out.typeid is not None and out.typeid != mods.typeid:
            raise invalid(
                "attempt to merge virtualports with mismatched typeids "
                f"({out.typeid} and {mods.typeid})"
            )
        out = replace(out, typeid=mods.typeid)
    if mods.typeidversion is not None and qbg_ok:
        if out.typeidversion is not None and out.typeidversion != mods.typeidversion:
            raise invalid(
                "attempt to merge virtualports with mismatched typeidversions "
                f"({out.typeidversion} and {mods.typeidversion})"
            )
        out = replace(out, typeidversion=mods.typeidversion)
    if mods.instanceid is not None and qbg_ok:
        if out.instanceid is not None and out.instanceid != mods.instanceid:
            raise invalid(
                "attempt to merge virtualports with mismatched instanceids "
                f"('{out.instanceid}' and '{mods.instanceid}')"
            )
        out = replace(out, instanceid=mods.instanceid)
    if mods.interfaceid is not None and otype in (OVS, None):
        if out.interfaceid is not None and out.interfaceid != mods.interfaceid:
            raise invalid(
                "attempt to merge virtualports with mismatched interfaceids "
                f"('{out.interfaceid}' and '{mods.interfaceid}')"
            )
        out = replace(out, interfaceid=mods.interfaceid)
    if mods.profileid and otype in (OVS, QBH, None):
        if out.profileid and out.profileid != mods.profileid:
            raise invalid(
                "attempt to merge virtualports with mismatched profileids "
                f"('{out.profileid}' and '{mods.profileid}')"
            )
        out = replace(out, profileid=mods.profileid)
    return out


def merge3(
    iface: VirtualPort | None, net: VirtualPort | None, portgroup: VirtualPort | None
) -> VirtualPort | None:
    """libvirt's Merge3: interface (highest priority), network, portgroup.

    None when none of the three has a type (typeless parameters are then
    dropped). Conflicting values are errors; attributes the resulting type
    does not take are skipped silently. The result is not re-checked.
    """
    if all(p is None or p.type is None for p in (iface, net, portgroup)):
        return None
    result = iface if iface is not None else VirtualPort()
    result = _merge(result, net)
    return _merge(result, portgroup)


# ---------------------------------------------------------------------------
# forward-mode check (networkAllocatePort)

VIRTUAL_MODES = ("none", "nat", "route", "open")
MACVTAP_MODES = ("bridge", "private", "vepa", "passthrough")


def check_forward_mode(
    vp: VirtualPort | None, mode: str, *, bridge_named: bool, network_name: str
) -> None:
    """Whether a port's (merged) profile suits the network's forward mode.

    Virtual modes take no profile at all (even a typeless one); bridge with a
    bridge name takes openvswitch only; macvtap modes and hostdev take
    802.1Qbg or 802.1Qbh. midonet is never accepted.
    """
    if vp is None:
        return
    name = vp.type_name()
    allowed: tuple[str, ...]
    if mode in VIRTUAL_MODES:
        allowed, where = (), "uses IP forwarding"
    elif mode == "bridge" and bridge_named:
        allowed, where = (OVS,), "uses a bridge device"
    elif mode in MACVTAP_MODES:
        allowed, where = (QBG, QBH), "uses a macvtap device"
    elif mode == "hostdev":
        allowed, where = (QBG, QBH), "uses an SR-IOV Virtual Function via PCI passthrough"
    else:
        return
    if vp.type not in allowed:
        raise invalid(
            f"<virtualport type='{name}'> not supported for network '{network_name}' which {where}"
        )
