"""Pieces shared by ``<network>`` and ``<networkport>``: ``<bandwidth>``,
``<vlan>``, ``<port isolated>``, plus the low-level value parsers libvirt
uses for them (C ``strtoull`` number forms, liberal UUIDs, MAC addresses,
yes/no attributes).

Everything here follows libvirt's parse rules and error texts (facts taken
from src/conf/netdev_bandwidth_conf.c, netdev_vlan_conf.c, network_conf.c
and src/util/virxml.c, virstring.c, viruuid.c, virmacaddr.c).

Formatters return complete lines, each ending in ``"\\n"`` and indented by
``indent`` spaces, 2 spaces per nesting level, single-quoted attributes.
"""

from __future__ import annotations

from dataclasses import dataclass

from lxml import etree

from netfs.errors import invalid
from netfs.model.xmlsafe import escape as xml_attr

Element = etree._Element

__all__ = [
    "Bandwidth",
    "Rate",
    "Vlan",
    "child",
    "tag_name",
    "format_bandwidth",
    "format_mac",
    "format_port_isolated",
    "format_vlan",
    "parse_bandwidth",
    "parse_mac",
    "parse_port_isolated",
    "parse_tristate_bool",
    "parse_uuid",
    "parse_vlan",
    "strtoul_ui",
    "strtoul_uip",
    "strtoull_p",
    "xml_attr",
    "xml_text",
]

UINT_MAX = 0xFFFFFFFF
ULLONG_MAX = 0xFFFFFFFFFFFFFFFF

# g_ascii_isspace: space and \t \n \v \f \r
_ASCII_SPACE = " \t\n\v\f\r"
_HEX = "0123456789abcdefABCDEF"


# ---------------------------------------------------------------------------
# XML escaping and small element helpers


def xml_text(value: str) -> str:
    """Escape element text content (libvirt escapes quotes there too)."""
    return xml_attr(value)


def tag_name(elem: Element) -> str:
    """The element's name as text."""
    tag = elem.tag
    return tag if isinstance(tag, str) else ""


def child(elem: Element, name: str) -> Element | None:
    """The first child element called ``name`` (libvirt's ``./name`` node)."""
    for c in elem:
        if isinstance(c.tag, str) and c.tag == name:
            return c
    return None


# ---------------------------------------------------------------------------
# C number parsing (g_ascii_strtoull and libvirt's virStrToLong_* wrappers)


def _strtoull(s: str, base: int) -> tuple[int, int, bool, bool]:
    """g_ascii_strtoull: returns (value mod 2**64, end index, negative, error).

    ``error`` is True on overflow (ERANGE). When nothing was converted the
    end index is 0 (callers treat that as an error).
    """
    i = 0
    n = len(s)
    while i < n and s[i] in _ASCII_SPACE:
        i += 1
    neg = False
    if i < n and s[i] in "+-":
        neg = s[i] == "-"
        i += 1
    if i < n and s[i] == "0":
        if base in (0, 16) and i + 1 < n and s[i + 1] in "xX":
            # "0x" followed by no hex digit converts just the "0"
            if i + 2 < n and s[i + 2] in _HEX:
                i += 2
                base = 16
            else:
                return 0, i + 1, neg, False
        elif base == 0:
            base = 8
    elif base == 0:
        base = 10
    digits = "0123456789abcdef"[:base]
    start = i
    val = 0
    while i < n and s[i].lower() in digits and s[i] in _HEX:
        val = val * base + int(s[i], 16)
        i += 1
    if i == start:
        return 0, 0, neg, False
    if val > ULLONG_MAX:
        return ULLONG_MAX, i, neg, True
    if neg:
        val = (-val) & ULLONG_MAX
    return val, i, neg, False


def strtoul_ui(s: str, base: int = 10) -> int | None:
    """virStrToLong_ui with no end pointer: an unsigned int, allowing
    two's-complement wraparound of negative numbers. None when invalid."""
    val, end, neg, err = _strtoull(s, base)
    if neg and end:
        if ((-val) & ULLONG_MAX) > UINT_MAX:
            err = True
        else:
            val &= UINT_MAX
    if err or end == 0 or end != len(s) or val > UINT_MAX:
        return None
    return val


def strtoul_uip(s: str, base: int = 10) -> int | None:
    """virStrToLong_uip: an unsigned int, any '-' sign refused."""
    val, end, neg, err = _strtoull(s, base)
    if neg or err or end == 0 or end != len(s) or val > UINT_MAX:
        return None
    return val


def strtoull_p(s: str, base: int = 10) -> int | None:
    """virStrToLong_ullp: an unsigned long long, any '-' sign refused."""
    val, end, neg, err = _strtoull(s, base)
    if neg or err or end == 0 or end != len(s):
        return None
    return val


# ---------------------------------------------------------------------------
# UUIDs and MAC addresses


def parse_uuid(s: str) -> str | None:
    """libvirt's liberal UUID scan: surrounding whitespace, exactly 32 hex
    digits in pairs, '-' or ' ' allowed before any pair. Returns canonical
    lowercase 8-4-4-4-12 text, or None when it is not a UUID."""
    i = 0
    n = len(s)
    while i < n and s[i] in _ASCII_SPACE:
        i += 1
    out: list[str] = []
    while len(out) < 16:
        if i >= n:
            return None
        if s[i] in "- ":
            i += 1
            continue
        if s[i] not in _HEX or i + 1 >= n or s[i + 1] not in _HEX:
            return None
        out.append(s[i : i + 2].lower())
        i += 2
    while i < n:
        if s[i] not in _ASCII_SPACE:
            return None
        i += 1
    h = "".join(out)
    return f"{h[0:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def parse_mac(s: str) -> str | None:
    """virMacAddrParse: six groups of 1-2 hex digits separated by ':'; anything
    at or below ' ' may follow the last group. Returns lowercase aa:bb:.. text."""
    i = 0
    n = len(s)
    octets: list[int] = []
    for k in range(6):
        if i >= n or s[i] not in _HEX:
            return None
        j = i
        while j < n and s[j] in _HEX and j - i < 3:
            j += 1
        if j - i > 2:
            return None
        octets.append(int(s[i:j], 16))
        if k == 5:
            if j < n and ord(s[j]) > 0x20:
                return None
            break
        if j >= n or s[j] != ":":
            return None
        i = j + 1
    return format_mac(octets)


def format_mac(octets: list[int] | bytes) -> str:
    return ":".join(f"{o:02x}" for o in octets)


# ---------------------------------------------------------------------------
# yes/no attributes (virXMLPropTristateBool)


def _bad_value(attr: str, elem: Element, value: str) -> str:
    return f"Invalid value for attribute '{attr}' in element '{tag_name(elem)}': '{value}'."


def parse_tristate_bool(elem: Element | None, attr: str) -> bool | None:
    """``yes``/``no`` (exact, lowercase) or absent (None); anything else,
    including ``default``, is libvirt's invalid-value error."""
    if elem is None:
        return None
    value = elem.get(attr)
    if value is None:
        return None
    if value == "yes":
        return True
    if value == "no":
        return False
    raise invalid(_bad_value(attr, elem, value))


def _yes_no(value: bool) -> str:
    return "yes" if value else "no"


# ---------------------------------------------------------------------------
# <bandwidth>


@dataclass(frozen=True)
class Rate:
    """One of ``<inbound>``/``<outbound>``; 0 means "not given" (as libvirt)."""

    average: int = 0
    peak: int = 0
    burst: int = 0
    floor: int = 0


@dataclass(frozen=True)
class Bandwidth:
    """``<bandwidth>``: at least one of inbound/outbound is present.

    ``class_id`` is the ``classID`` attribute a ``<networkport>`` carries
    (0: none; only printed when non-zero)."""

    inbound: Rate | None = None
    outbound: Rate | None = None
    class_id: int = 0

    def has_floor(self) -> bool:
        return self.inbound is not None and self.inbound.floor != 0


def _parse_ull_attr(elem: Element, attr: str) -> int | None:
    value = elem.get(attr)
    if value is None:
        return None
    parsed = strtoull_p(value, 10)
    if parsed is None:
        raise invalid(
            f"Invalid value for attribute '{attr}' in element '{tag_name(elem)}': "
            f"'{value}'. Expected non-negative integer value"
        )
    return parsed


def _parse_rate(elem: Element, allow_floor: bool) -> Rate:
    average = _parse_ull_attr(elem, "average")
    peak = _parse_ull_attr(elem, "peak")
    burst = _parse_ull_attr(elem, "burst")
    floor = _parse_ull_attr(elem, "floor")
    if average is None and floor is None:
        raise invalid("Missing mandatory average or floor attributes")
    if (peak is not None or burst is not None) and average is None:
        raise invalid("'peak' and 'burst' require 'average' attribute")
    if floor is not None and not allow_floor:
        raise invalid("floor attribute is not supported for this config")
    return Rate(average=average or 0, peak=peak or 0, burst=burst or 0, floor=floor or 0)


def parse_bandwidth(
    elem: Element | None, *, allow_floor: bool = True, allow_class_id: bool = False
) -> Bandwidth | None:
    """Parse a ``<bandwidth>`` element (libvirt's virNetDevBandwidthParse).

    ``allow_floor``: whether ``floor`` may appear on ``<inbound>`` (it is never
    allowed on ``<outbound>``). ``allow_class_id``: whether the context takes a
    ``classID`` attribute (only ``<networkport>``). Returns None when neither
    ``<inbound>`` nor ``<outbound>`` is present (libvirt keeps no bandwidth).
    """
    if elem is None:
        return None
    class_id = 0
    raw = elem.get("classID")
    if raw is not None:
        parsed = strtoul_uip(raw, 10)
        if parsed is None:
            raise invalid(
                f"Invalid value for attribute 'classID' in element '{tag_name(elem)}': "
                f"'{raw}'. Expected non-negative integer value"
            )
        if not allow_class_id:
            raise invalid("classID attribute not supported on <bandwidth> in this usage context")
        class_id = parsed
    in_el = child(elem, "inbound")
    out_el = child(elem, "outbound")
    inbound = _parse_rate(in_el, allow_floor) if in_el is not None else None
    outbound = _parse_rate(out_el, False) if out_el is not None else None
    if inbound is None and outbound is None:
        return None
    return Bandwidth(inbound=inbound, outbound=outbound, class_id=class_id)


def _format_rate(rate: Rate | None, name: str, pad: str) -> str:
    if rate is None or not (rate.average or rate.floor):
        return ""
    s = f"{pad}<{name}"
    if rate.average:
        s += f" average='{rate.average}'"
    if rate.peak:
        s += f" peak='{rate.peak}'"
    if rate.floor:
        s += f" floor='{rate.floor}'"
    if rate.burst:
        s += f" burst='{rate.burst}'"
    return s + "/>\n"


def format_bandwidth(bw: Bandwidth | None, indent: int, *, class_id: bool = True) -> str:
    """``<bandwidth>`` as libvirt prints it ('' for None). ``classID`` is
    printed when non-zero and ``class_id`` is True."""
    if bw is None:
        return ""
    pad = " " * indent
    inner = " " * (indent + 2)
    head = f"{pad}<bandwidth"
    if class_id and bw.class_id:
        head += f" classID='{bw.class_id}'"
    return (
        head
        + ">\n"
        + _format_rate(bw.inbound, "inbound", inner)
        + _format_rate(bw.outbound, "outbound", inner)
        + f"{pad}</bandwidth>\n"
    )


# ---------------------------------------------------------------------------
# <vlan>

NATIVE_MODES = ("tagged", "untagged")


@dataclass(frozen=True)
class Vlan:
    """``<vlan>``: libvirt's model (tag ids, trunk, one native mode + tag).

    ``native_mode`` is None ("default") or 'tagged'/'untagged'; it applies to
    every tag whose id equals ``native_tag`` when printed (as libvirt)."""

    tags: tuple[int, ...]
    trunk: bool = False
    native_mode: str | None = None
    native_tag: int = 0


def parse_vlan(elem: Element | None) -> Vlan | None:
    """Parse ``<vlan>`` (libvirt's virNetDevVlanParse, newest rules)."""
    if elem is None:
        return None
    tag_elems = [c for c in elem if isinstance(c.tag, str) and c.tag == "tag"]
    if not tag_elems:
        raise invalid(
            "missing tag id - each <vlan> must have at least one <tag id='n'/> subelement"
        )
    tags: list[int] = []
    native_mode: str | None = None
    native_tag = 0
    for t in tag_elems:
        raw = t.get("id")
        if raw is None:
            raise invalid("Missing required attribute 'id' in element 'tag'")
        tid = strtoul_uip(raw, 10)
        if tid is None:
            raise invalid(
                f"Invalid value for attribute 'id' in element 'tag': '{raw}'. "
                "Expected non-negative integer value"
            )
        if tid > 4095:
            raise invalid(f"vlan tag id {tid} too large (maximum 4095)")
        mode = t.get("nativeMode")
        if mode is not None:
            if mode not in NATIVE_MODES:
                raise invalid(_bad_value("nativeMode", t, mode))
            if native_mode is not None:
                raise invalid("duplicate native vlan setting")
            native_mode = mode
            native_tag = tid
        tags.append(tid)
    trunk = len(tags) > 1
    raw_trunk = elem.get("trunk")
    if raw_trunk:  # an empty value counts as absent
        trunk = raw_trunk.lower() == "yes"
        if not trunk:
            if len(tags) > 1:
                raise invalid(
                    f"invalid \"trunk='{raw_trunk}'\" in <vlan> - trunk='yes' is "
                    "required for more than one vlan tag"
                )
            if native_mode is not None:
                raise invalid(
                    "invalid configuration in <vlan> - \"trunk='no'\" is not "
                    "allowed with a native vlan id"
                )
            if raw_trunk.lower() != "no":
                raise invalid(f"invalid \"trunk='{raw_trunk}'\" in <vlan> - must be yes or no")
    return Vlan(tags=tuple(tags), trunk=trunk, native_mode=native_mode, native_tag=native_tag)


def format_vlan(vlan: Vlan | None, indent: int) -> str:
    if vlan is None or not vlan.tags:
        return ""
    pad = " " * indent
    inner = " " * (indent + 2)
    s = f"{pad}<vlan trunk='yes'>\n" if vlan.trunk else f"{pad}<vlan>\n"
    for tid in vlan.tags:
        if vlan.native_mode is not None and tid == vlan.native_tag:
            s += f"{inner}<tag id='{tid}' nativeMode='{vlan.native_mode}'/>\n"
        else:
            s += f"{inner}<tag id='{tid}'/>\n"
    return s + f"{pad}</vlan>\n"


# ---------------------------------------------------------------------------
# <port isolated='yes|no'/>


def parse_port_isolated(parent: Element) -> bool | None:
    """The ``isolated`` attribute of ``parent``'s first ``<port>`` child
    (libvirt's virNetworkPortOptionsParseXML). None when absent."""
    return parse_tristate_bool(child(parent, "port"), "isolated")


def format_port_isolated(isolated: bool | None, indent: int) -> str:
    if isolated is None:
        return ""
    return f"{' ' * indent}<port isolated='{_yes_no(isolated)}'/>\n"
