"""Issue 9, items 8 and 14: every name accepted comes back identical from
disk; the others are refused with EINVAL when they are given. Pure: no root."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import cast

import pytest

from netfs.core import Driver
from netfs.errors import NetfsError
from netfs.model.network import parse_network
from netfs.model.port import parse_port
from netfs.model.validate import validate_network
from netfs.netlink import Netlink
from netfs.state import StateStore, check_name

ODD = [
    "cr\rx",
    "esc\x1b[31mred",
    "one\x01",
    "tab\tx",
    "nl\nx",
    "del\x7f",
    "c1\x85x",
    "nonchar\ufffe",
    "sp ace",
    " lead",
    "trail ",
    "testA stopped",
    "amp&lt;",
    "quote'\"",
    "<tag>",
    "]]>",
    "back\\slash",
    "a--b",
    "x-",
    "-",
    "%d",
    "caf\u00e9",
    "line\u2028sep",
    "emoji\U0001f600",
    "q" * 250,
]

INTERFACE = """<interface type='network'>
  <mac address='52:54:00:7b:35:94'/>
  <source network='net'/>
</interface>
"""


def network_xml(name: str) -> str:
    from netfs.model.xmlsafe import escape

    return (
        f"<network><name>{escape(name)}</name>"
        "<uuid>81ff0d90-c91e-6742-64da-4a736edb9a01</uuid>"
        "<forward mode='bridge'/><bridge name='br0'/></network>"
    )


def accepted(name: str, what: str) -> bool:
    try:
        check_name(name, what)
    except NetfsError as e:
        assert e.errno == errno.EINVAL
        return False
    return True


@pytest.mark.parametrize("name", ODD)
def test_accepted_network_names_come_back_identical(tmp_path: Path, name: str) -> None:
    if not accepted(name, "network"):
        return
    store = StateStore(tmp_path / "etc", tmp_path / "run")
    store.ensure_dirs()
    net = parse_network(network_xml(name))
    assert net.name == name
    store.write_config(net)
    store.write_status(net)
    loaded = store.load()
    assert loaded.problems == []
    assert list(loaded.configs) == [name] and list(loaded.statuses) == [name]
    assert loaded.configs[name].definition.name == name
    assert loaded.statuses[name].live.name == name


@pytest.mark.parametrize("name", ODD)
def test_accepted_port_names_come_back_identical(tmp_path: Path, name: str) -> None:
    if not accepted(name, "port"):
        return
    store = StateStore(tmp_path / "etc", tmp_path / "run")
    store.ensure_dirs()
    port = parse_port(INTERFACE, owner_name=name)
    store.write_port("net", name, port)
    ports, problems = store.load_ports("net")
    assert problems == []
    assert list(ports) == [name] and ports[name].owner_name == name


@pytest.mark.parametrize("name", ["cr\rx", "esc\x1b[31m", "one\x01", "del\x7f", "c1\x85"])
def test_control_characters_refused(name: str) -> None:
    for what in ("network", "port"):
        with pytest.raises(NetfsError) as e:
            check_name(name, what)
        assert e.value.errno == errno.EINVAL
        assert "\\x" in e.value.message  # shown escaped, not raw
        assert not any(ord(c) < 0x20 for c in e.value.message)


@pytest.fixture
def driver(tmp_path: Path) -> Driver:
    d = Driver(tmp_path / "etc", tmp_path / "run", cast(Netlink, None), services=False)
    d.store.ensure_dirs()
    return d


@pytest.mark.parametrize("name", ["cr\rx", "esc\x1b", "one\x01"])
async def test_define_refuses_control_characters_with_einval(driver: Driver, name: str) -> None:
    for kwargs in ({"name": name}, {}):  # as a directory name, and in <name>
        xml = (
            network_xml(name).replace("\r", "&#13;")
            if not kwargs
            else ("<network><forward mode='bridge'/><bridge name='br0'/></network>")
        )
        with pytest.raises(NetfsError) as e:
            await driver.define(xml, **kwargs)
        assert e.value.errno == errno.EINVAL
    assert driver.names() == []


# --------------------------------------------------------------------------- item 14


@pytest.mark.parametrize(
    "pg", [".", "..", "a/b", "nl&#10;x", "cr&#13;x", "tab&#9;x", "c1&#133;x", "p" * 256]
)
def test_portgroup_names_that_cannot_be_directory_entries_refused(pg: str) -> None:
    doc = (
        "<network><name>n</name><forward mode='bridge'/><bridge name='br0'/>"
        f"<portgroup name='ok'/><portgroup name='{pg}'/></network>"
    )
    net = parse_network(doc)  # parsing stays libvirt's (a saved one still loads)
    with pytest.raises(NetfsError) as e:
        validate_network(net)
    assert e.value.errno == errno.EINVAL
    assert e.value.message.startswith("invalid portgroup name '")


@pytest.mark.parametrize("pg", ["p" * 255, "caf\u00e9", "sp ace", "...", ".hidden", "a\\b"])
def test_portgroup_names_that_can_be_entries_accepted(pg: str) -> None:
    doc = (
        "<network><name>n</name><forward mode='bridge'/><bridge name='br0'/>"
        f"<portgroup name='{pg}'/></network>"
    )
    validate_network(parse_network(doc))
