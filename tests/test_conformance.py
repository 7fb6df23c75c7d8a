"""libvirt's own network XML test data, run through our model.

Layout and expectations: ../shared/conformance/libvirt/README.md.

networkxmlconfdata (current libvirt): parse -> validate (no bridge name
assigned, MAC from a zeroed random source) -> format (INACTIVE only for
hostdev-pf and hostdev-pf-driver-model) must equal NAME.expect.xml byte for
byte; the listed parse and validation failures must fail with exactly the
listed message at the right step; every expected output must be a fixed
point of parse -> format.

networkxml2xmlin/out (historical): the old formatter wrote ``<ip ...>`` with
no children as an open/close pair, put a space before ``/>`` in some files
and printed the bridge MAC as written. The expected output is normalised
(see ``normalise_historical``) and then compared byte for byte. The old
harness did not validate, so a MAC is generated only when the stored output
shows the mocked one.

Each category is a parametrized test: pytest's own counts (``-v``, ``-rA``)
are the summary.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path

import pytest
from conftest import CONFORMANCE

from netfs.errors import NetfsError
from netfs.model import validate as V
from netfs.model.network import format_network, parse_network

DATA = CONFORMANCE
CONF = DATA / "networkxmlconfdata"
HIN = DATA / "networkxml2xmlin"
HOUT = DATA / "networkxml2xmlout"

INACTIVE = {"hostdev-pf", "hostdev-pf-driver-model"}
PARSE_FAIL = {
    "routed-network-no-dns-extra-elements": "Extra data in disabled network 'local'",
    "open-network-with-forward-dev": (
        "forward dev not allowed for network 'open' with forward mode='open'"
    ),
    "hostdev-duplicate": "PCI device '0000:03:00.3' can only be listed once in network hostdev",
    "passthrough-duplicate": (
        "interface 'eth3' can only be listed once in network passthrough-duplicate"
    ),
}
VALIDATE_FAIL = {
    "passthrough-pf": ("Unsupported <ip> element in network local with forward mode='passthrough'"),
    "passthrough-address-crash": (
        "network 'passthrough_001' has forward mode 'passthrough' but lists a device by "
        "PCI address in the device pool. This is only supported for networks with "
        "forward mode 'hostdev'"
    ),
}
# Historical pairs that cannot match the current parser, and why.
HISTORICAL_KNOWN = {
    "openvswitch-net": "the stored output has a third portgroup 'native' the input lacks",
    "passthrough-pf": (
        "the old parser kept both <pf> and <interface> entries; current libvirt "
        "ignores <pf> when <interface> entries are present (and refuses <ip> at "
        "validation)"
    ),
}


def _names(folder: Path, suffix: str) -> list[str]:
    if not folder.is_dir():
        return []
    return sorted(p.name[: -len(suffix)] for p in folder.glob("*" + suffix))


CONF_INPUTS = [n for n in _names(CONF, ".xml") if not n.endswith(".expect")]
CONF_EXPECTS = _names(CONF, ".expect.xml")
CONF_PAIRS = [n for n in CONF_INPUTS if n in CONF_EXPECTS]
CONF_INPUT_ONLY = [
    n
    for n in CONF_INPUTS
    if n not in CONF_EXPECTS and n not in PARSE_FAIL and n not in VALIDATE_FAIL
]
CONF_FAILS = [n for n in CONF_INPUTS if n in PARSE_FAIL or n in VALIDATE_FAIL]
HIST_IN = _names(HIN, ".xml")
HIST_OUT = _names(HOUT, ".xml")


@pytest.fixture(autouse=True)
def _zero_mac(conformance_dir: Path):  # type: ignore[no-untyped-def]
    V.set_mac_source(lambda: b"\0\0\0")
    yield
    V.set_mac_source(None)


def _diff(expected: str, actual: str) -> str:
    return "".join(
        difflib.unified_diff(
            expected.splitlines(True), actual.splitlines(True), "expected", "actual"
        )
    )


def run_current(name: str, data: bytes) -> str:
    """libvirt's networkxml2xmltest steps."""
    net = parse_network(data)
    V.validate_network(net, assign_bridge=False)
    return format_network(net, inactive=name in INACTIVE)


def normalise_historical(text: str) -> str:
    """Bring an old-formatter output to the current formatter's shape:
    ``' />'`` -> ``'/>'``; a childless ``<ip ...>`` + ``</ip>`` pair ->
    ``<ip .../>``; the bridge MAC in lowercase."""
    text = text.replace("' />", "'/>")
    text = re.sub(r"(<ip [^>]*[^/])>\n\s*</ip>", r"\1/>", text)
    return re.sub(
        r"<mac address='([0-9A-Fa-f:]+)'/>",
        lambda m: f"<mac address='{m.group(1).lower()}'/>",
        text,
    )


# ---------------------------------------------------------------------------
# networkxmlconfdata


@pytest.mark.parametrize("name", CONF_PAIRS)
def test_confdata_pair(name: str) -> None:
    expected = (CONF / f"{name}.expect.xml").read_text()
    actual = run_current(name, (CONF / f"{name}.xml").read_bytes())
    assert actual == expected, _diff(expected, actual)


@pytest.mark.parametrize("name", CONF_FAILS)
def test_confdata_failure(name: str) -> None:
    data = (CONF / f"{name}.xml").read_bytes()
    if name in PARSE_FAIL:
        with pytest.raises(NetfsError) as ei:
            parse_network(data)
        assert ei.value.message == PARSE_FAIL[name]
    else:
        net = parse_network(data)  # must parse
        with pytest.raises(NetfsError) as ei:
            V.validate_network(net, assign_bridge=False)
        assert ei.value.message == VALIDATE_FAIL[name]


@pytest.mark.parametrize("name", CONF_EXPECTS)
def test_confdata_expect_fixed_point(name: str) -> None:
    text = (CONF / f"{name}.expect.xml").read_text()
    inactive = name in INACTIVE
    out = format_network(parse_network(text), inactive=inactive)
    assert out == text, _diff(text, out)
    # validating the canonical output changes nothing
    assert run_current(name, text.encode()) == text


@pytest.mark.parametrize("name", CONF_INPUT_ONLY)
def test_confdata_input_only(name: str) -> None:
    """Inputs whose expected output was not copied: they must pass, and the
    result must be a fixed point; where a historical output exists, the
    result must equal it after normalisation when the data allows."""
    out = run_current(name, (CONF / f"{name}.xml").read_bytes())
    assert run_current(name, out.encode()) == out


# ---------------------------------------------------------------------------
# historical networkxml2xmlin / networkxml2xmlout


def run_historical(name: str, data: bytes, expected: str | None) -> str:
    net = parse_network(data)
    if expected is not None and "52:54:00:00:00:00" in expected and net.mac is None:
        V.validate_network(net, assign_bridge=False)
    inactive = name in INACTIVE or name == "passthrough-pf"
    return format_network(net, inactive=inactive)


@pytest.mark.parametrize("name", HIST_IN)
def test_historical_input(name: str) -> None:
    data = (HIN / f"{name}.xml").read_bytes()
    if name in PARSE_FAIL:
        with pytest.raises(NetfsError) as ei:
            parse_network(data)
        assert ei.value.message == PARSE_FAIL[name]
        return
    if name in VALIDATE_FAIL and name not in HIST_OUT:
        net = parse_network(data)
        with pytest.raises(NetfsError) as ei:
            V.validate_network(net, assign_bridge=False)
        assert ei.value.message == VALIDATE_FAIL[name]
        return
    if name not in HIST_OUT:
        out = run_historical(name, data, None)
        assert format_network(parse_network(out), inactive=name in INACTIVE) == out
        return
    expected = normalise_historical((HOUT / f"{name}.xml").read_text())
    actual = run_historical(name, data, expected)
    if name in HISTORICAL_KNOWN and actual != expected:
        pytest.xfail(HISTORICAL_KNOWN[name])
    assert actual == expected, _diff(expected, actual)


@pytest.mark.parametrize("name", HIST_OUT)
def test_historical_output_fixed_point(name: str) -> None:
    """Every historical output parses, and formats to its normalised self."""
    text = normalise_historical((HOUT / f"{name}.xml").read_text())
    out = format_network(parse_network(text))
    assert out == text, _diff(text, out)
