"""netfs.model.netcommon: <bandwidth>, <vlan>, <port isolated> and value parsers."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree

from netfs.errors import NetfsError
from netfs.model.netcommon import (
    Bandwidth,
    Rate,
    Vlan,
    format_bandwidth,
    format_mac,
    format_port_isolated,
    format_vlan,
    parse_bandwidth,
    parse_mac,
    parse_port_isolated,
    parse_uuid,
    parse_vlan,
    strtoul_ui,
    strtoul_uip,
    strtoull_p,
)


def E(s: str) -> etree._Element:
    return etree.fromstring(s)


def err(fn, *a, **k) -> str:
    with pytest.raises(NetfsError) as ei:
        fn(*a, **k)
    assert ei.value.errno == 22
    return ei.value.message


# --- numbers -----------------------------------------------------------------


@pytest.mark.parametrize(
    "text,value",
    [
        ("0", 0),
        ("11", 11),
        ("0x0b", 11),
        ("0X1F", 31),
        ("010", 8),
        ("  7", 7),
        ("+5", 5),
        ("-0", 0),
        ("-1", 0xFFFFFFFF),
        ("-4294967295", 1),
        ("4294967295", 0xFFFFFFFF),
    ],
)
def test_strtoul_ui_base0(text, value):
    assert strtoul_ui(text, 0) == value


@pytest.mark.parametrize(
    "text", ["", " ", "x", "08", "0x", "1 ", "4294967296", "-4294967296", "1.0", "٣", "- 1", "+-1"]
)
def test_strtoul_ui_rejects(text):
    assert strtoul_ui(text, 0) is None


def test_strtoul_uip_and_ullp_refuse_minus():
    assert strtoul_uip("-0") is None
    assert strtoull_p("-1") is None
    assert strtoull_p("18446744073709551615") == 2**64 - 1
    assert strtoull_p("18446744073709551616") is None
    assert strtoul_uip("4294967296") is None
    assert strtoul_uip("0x10", 10) is None


# --- uuid / mac --------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "09b11c53-8b5c-4eeb-8f00-d84eaa0aaa4f",
        "09B11C538B5C4EEB8F00D84EAA0AAA4F",
        "  09b11c53 8b5c 4eeb 8f00 d84eaa0aaa4f\t",
        "--09-b1-1c-53-8b5c-4eeb-8f00-d84eaa0aaa4f",
    ],
)
def test_parse_uuid_liberal(text):
    assert parse_uuid(text) == "09b11c53-8b5c-4eeb-8f00-d84eaa0aaa4f"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "09b11c53-8b5c-4eeb-8f00-d84eaa0aaa4",
        "09b11c53-8b5c-4eeb-8f00-d84eaa0aaa4f0",
        "09b11c53-8b5c-4eeb-8f00-d84eaa0aaa4f-",
        "0-9b11c53-8b5c-4eeb-8f00-d84eaa0aaa4f",
        "g9b11c53-8b5c-4eeb-8f00-d84eaa0aaa4f",
    ],
)
def test_parse_uuid_rejects(text):
    assert parse_uuid(text) is None


def test_mac():
    assert parse_mac("52:54:0:7B:35:93") == "52:54:00:7b:35:93"
    assert parse_mac("52:54:00:7b:35:93 trailing") == "52:54:00:7b:35:93"
    for bad in ("52:54:00:7b:35", "52:54:00:7b:35:93:11", "52-54-00-7b-35-93", "+2:54:00:7b:35:93"):
        assert parse_mac(bad) is None
    assert parse_mac("052:54:00:7b:35:93") is None
    assert format_mac([1, 2, 3, 4, 5, 255]) == "01:02:03:04:05:ff"


# --- bandwidth ---------------------------------------------------------------

PORT_BW = (
    "<bandwidth classID='1729'>\n"
    "  <inbound average='1000' peak='4000' floor='2000' burst='1024'/>\n"
    "  <outbound average='128' peak='256' burst='32768'/>\n"
    "</bandwidth>\n"
)


def test_bandwidth_round_trip_with_class_id():
    bw = parse_bandwidth(E(PORT_BW), allow_class_id=True)
    assert bw == Bandwidth(Rate(1000, 4000, 1024, 2000), Rate(128, 256, 32768, 0), 1729)
    assert format_bandwidth(bw, 0) == PORT_BW
    indented = "".join("    " + line + "\n" for line in PORT_BW.splitlines())
    assert format_bandwidth(bw, 4) == indented


def test_bandwidth_messages():
    assert (
        err(parse_bandwidth, E("<bandwidth classID='1'><inbound average='1'/></bandwidth>"))
        == "classID attribute not supported on <bandwidth> in this usage context"
    )
    assert err(parse_bandwidth, E("<bandwidth classID='x'/>"), allow_class_id=True) == (
        "Invalid value for attribute 'classID' in element 'bandwidth': 'x'. "
        "Expected non-negative integer value"
    )
    assert (
        err(parse_bandwidth, E("<bandwidth><inbound peak='5'/></bandwidth>"))
        == "Missing mandatory average or floor attributes"
    )
    assert (
        err(parse_bandwidth, E("<bandwidth><inbound floor='5' peak='5'/></bandwidth>"))
        == "'peak' and 'burst' require 'average' attribute"
    )
    assert (
        err(parse_bandwidth, E("<bandwidth><inbound floor='5'/></bandwidth>"), allow_floor=False)
        == "floor attribute is not supported for this config"
    )
    assert (
        err(parse_bandwidth, E("<bandwidth><outbound average='1' floor='5'/></bandwidth>"))
        == "floor attribute is not supported for this config"
    )
    assert err(parse_bandwidth, E("<bandwidth><inbound average='-1'/></bandwidth>")) == (
        "Invalid value for attribute 'average' in element 'inbound': '-1'. "
        "Expected non-negative integer value"
    )


def test_bandwidth_empty_and_first_child():
    assert parse_bandwidth(E("<bandwidth/>")) is None
    assert parse_bandwidth(None) is None
    bw = parse_bandwidth(
        E("<bandwidth><inbound average='1'/><inbound average='2'/><foo/></bandwidth>")
    )
    assert bw is not None and bw.inbound == Rate(average=1)
    # floor only: average omitted from output
    bw = parse_bandwidth(E("<bandwidth><inbound floor='7'/></bandwidth>"))
    assert format_bandwidth(bw, 0) == "<bandwidth>\n  <inbound floor='7'/>\n</bandwidth>\n"
    # zero rates are not printed (libvirt prints the empty shell)
    bw = parse_bandwidth(E("<bandwidth><inbound average='0'/></bandwidth>"))
    assert format_bandwidth(bw, 0) == "<bandwidth>\n</bandwidth>\n"


# --- vlan --------------------------------------------------------------------


def test_vlan_round_trip():
    text = (
        "<vlan trunk='yes'>\n  <tag id='2'/>\n  <tag id='1729' nativeMode='untagged'/>\n</vlan>\n"
    )
    v = parse_vlan(E(text))
    assert v == Vlan((2, 1729), True, "untagged", 1729)
    assert format_vlan(v, 0) == text
    # two tags imply trunk
    assert parse_vlan(E("<vlan><tag id='1'/><tag id='2'/></vlan>")).trunk
    # trunk='no' with one tag is accepted and dropped
    assert format_vlan(parse_vlan(E("<vlan trunk='No'><tag id='4095'/></vlan>")), 2) == (
        "  <vlan>\n    <tag id='4095'/>\n  </vlan>\n"
    )
    assert parse_vlan(E("<vlan trunk=''><tag id='1'/></vlan>")).trunk is False
    assert parse_vlan(E("<vlan trunk='YES'><tag id='1'/></vlan>")).trunk is True


@pytest.mark.parametrize(
    "xml,msg",
    [
        ("<vlan/>", "missing tag id - each <vlan> must have at least one <tag id='n'/> subelement"),
        ("<vlan><tag/></vlan>", "Missing required attribute 'id' in element 'tag'"),
        (
            "<vlan><tag id='x'/></vlan>",
            "Invalid value for attribute 'id' in element 'tag': 'x'. Expected non-negative integer value",
        ),
        ("<vlan><tag id='4096'/></vlan>", "vlan tag id 4096 too large (maximum 4095)"),
        (
            "<vlan><tag id='1' nativeMode='default'/></vlan>",
            "Invalid value for attribute 'nativeMode' in element 'tag': 'default'.",
        ),
        (
            "<vlan trunk='yes'><tag id='1' nativeMode='tagged'/><tag id='2' nativeMode='untagged'/></vlan>",
            "duplicate native vlan setting",
        ),
        (
            "<vlan trunk='no'><tag id='1'/><tag id='2'/></vlan>",
            "invalid \"trunk='no'\" in <vlan> - trunk='yes' is required for more than one vlan tag",
        ),
        (
            "<vlan trunk='no'><tag id='1' nativeMode='tagged'/></vlan>",
            "invalid configuration in <vlan> - \"trunk='no'\" is not allowed with a native vlan id",
        ),
        (
            "<vlan trunk='maybe'><tag id='1'/></vlan>",
            "invalid \"trunk='maybe'\" in <vlan> - must be yes or no",
        ),
    ],
)
def test_vlan_messages(xml, msg):
    assert err(parse_vlan, E(xml)) == msg


# --- port isolated -----------------------------------------------------------


def test_port_isolated():
    assert parse_port_isolated(E("<n><port isolated='yes'/></n>")) is True
    assert parse_port_isolated(E("<n><port isolated='no'/></n>")) is False
    assert parse_port_isolated(E("<n><port/></n>")) is None
    assert parse_port_isolated(E("<n/>")) is None
    assert (
        err(parse_port_isolated, E("<n><port isolated='default'/></n>"))
        == "Invalid value for attribute 'isolated' in element 'port': 'default'."
    )
    assert format_port_isolated(True, 2) == "  <port isolated='yes'/>\n"
    assert format_port_isolated(False, 0) == "<port isolated='no'/>\n"
    assert format_port_isolated(None, 0) == ""


# --- properties --------------------------------------------------------------

rates = st.builds(
    Rate,
    average=st.integers(1, 2**64 - 1),
    peak=st.integers(0, 2**64 - 1),
    burst=st.integers(0, 2**64 - 1),
    floor=st.integers(0, 2**64 - 1),
)


@settings(max_examples=60, deadline=None)
@given(
    st.one_of(st.none(), rates),
    st.one_of(st.none(), rates.map(lambda r: Rate(r.average, r.peak, r.burst, 0))),
    st.integers(0, 2**32 - 1),
)
def test_bandwidth_fixed_point(inb, outb, cid):
    if inb is None and outb is None:
        return
    bw = Bandwidth(inb, outb, cid)
    text = format_bandwidth(bw, 0)
    assert parse_bandwidth(E(text), allow_class_id=True) == bw


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(0, 4095), min_size=1, max_size=5, unique=True),
    st.sampled_from([None, "tagged", "untagged"]),
    st.data(),
)
def test_vlan_fixed_point(tags, mode, data):
    native = data.draw(st.sampled_from(tags)) if mode else 0
    trunk = len(tags) > 1 or (mode is not None) or data.draw(st.booleans())
    v = Vlan(tuple(tags), trunk, mode, native)
    assert parse_vlan(E(format_vlan(v, 0))) == v
