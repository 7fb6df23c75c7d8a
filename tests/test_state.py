"""The state store: atomic writes, lenient loads, autostart links (temp dirs only)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from lxml import etree

from netfs import state as state_mod
from netfs.errors import NetfsError
from netfs.model.network import format_network, parse_network
from netfs.state import TMP_PREFIX, StateStore, atomic_write, check_name, parse_status

NET = """<network>
  <name>{name}</name>
  <uuid>{uuid}</uuid>
  <bridge name='{bridge}'/>
  <mac address='52:54:00:11:22:33'/>
  <ip address='192.168.150.1' netmask='255.255.255.0'/>
</network>
"""

# parses, but define-time validation refuses it: two default portgroups
TWO_DEFAULTS = """<network>
  <name>twodef</name>
  <uuid>81ff0d90-c91e-6742-64da-4a736edb9a9b</uuid>
  <forward mode='bridge'/>
  <bridge name='br0'/>
  <portgroup name='a' default='yes'/>
  <portgroup name='b' default='yes'/>
</network>
"""

U1 = "81ff0d90-c91e-6742-64da-4a736edb9a01"
U2 = "81ff0d90-c91e-6742-64da-4a736edb9a02"

PORT = """<networkport>
  <uuid>5d744f21-ba4a-4d6e-bdb4-c36ab1d8e6cb</uuid>
  <owner>
    <name>vm1</name>
    <uuid>c7a5fdbd-edaf-9455-926a-d65c16db1809</uuid>
  </owner>
  <mac address='52:54:00:7b:35:93'/>
  <plug type='network' bridge='virbr0'/>
</networkport>
"""

GUEST_IP = """<interface type='network'>
  <mac address='52:54:00:7b:35:94'/>
  <source network='a'/>
  <ip address='192.168.150.7' prefix='24'/>
</interface>
"""


def net(name: str = "a", uuid: str = U1, bridge: str = "vbr-a"):  # type: ignore[no-untyped-def]
    return parse_network(NET.format(name=name, uuid=uuid, bridge=bridge))


@pytest.fixture
def store(tmp_path: Path) -> StateStore:
    s = StateStore(tmp_path / "etc", tmp_path / "run")
    s.ensure_dirs()
    return s


def listing(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path: Path) -> None:
    p = tmp_path / "f.xml"
    atomic_write(p, b"one")
    atomic_write(p, b"two")
    assert p.read_bytes() == b"two"
    assert listing(tmp_path) == ["f.xml"]


def test_atomic_write_failure_keeps_old_content(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    p = tmp_path / "f.xml"
    atomic_write(p, b"old")

    def boom(*a: object, **k: object) -> None:
        raise OSError(errno.EIO, "simulated crash before rename")

    monkeypatch.setattr(state_mod.os, "rename", boom)
    with pytest.raises(OSError):
        atomic_write(p, b"new")
    monkeypatch.undo()
    assert p.read_bytes() == b"old"
    assert listing(tmp_path) == ["f.xml"]


def test_config_round_trip_with_header(store: StateStore) -> None:
    n = net()
    store.write_config(n)
    data = store.config_path("a").read_bytes()
    assert data.startswith(b"<!--")
    assert b"netfs" in data.split(b"-->")[0]
    etree.fromstring(data)  # a comment before the root keeps it well-formed XML
    configs, problems = store.load_configs()
    assert problems == []
    assert list(configs) == ["a"]
    cfg = configs["a"]
    assert cfg.problem is None and cfg.autostart is False
    assert format_network(cfg.definition, inactive=True) == format_network(n, inactive=True)
    assert listing(store.config_dir) == ["a.xml", "autostart"]


def test_header_stays_well_formed_for_dashed_names(store: StateStore) -> None:
    n = net(name="a--b")
    store.write_config(n)
    etree.fromstring(store.config_path("a--b").read_bytes())
    configs, problems = store.load_configs()
    assert problems == [] and list(configs) == ["a--b"]


def test_lenient_load_reports_and_never_touches_bad_files(store: StateStore) -> None:
    store.write_config(net("good", U1, "vbr-g"))
    bad = store.config_dir / "bad.xml"
    bad.write_bytes(b"<network><name>bad</name")  # torn / malformed
    invalid = store.config_dir / "twodef.xml"
    invalid.write_text(TWO_DEFAULTS)
    wrongname = store.config_dir / "other.xml"
    wrongname.write_text(NET.format(name="inside", uuid=U2, bridge="vbr-i"))
    before = {p: p.read_bytes() for p in (bad, invalid, wrongname)}
    mtimes = {p: p.stat().st_mtime_ns for p in before}

    configs, problems = store.load_configs()

    assert sorted(configs) == ["good", "twodef"]
    assert configs["twodef"].problem and "default" in configs["twodef"].problem
    by_path = {p.name: msg for p, msg in problems}
    assert set(by_path) == {"bad.xml", "twodef.xml", "other.xml"}
    assert (
        by_path["other.xml"]
        == f"Network config filename '{wrongname}' does not match network name 'inside'"
    )
    for p, data in before.items():  # never deleted, never rewritten
        assert p.read_bytes() == data
        assert p.stat().st_mtime_ns == mtimes[p]


def test_loaders_ignore_and_cleanup_stale_temp_files(store: StateStore) -> None:
    store.write_config(net())
    # what a crash between create and rename leaves behind
    torn = store.config_dir / f"{TMP_PREFIX}b.xml.123.abc"
    torn.write_bytes(b"<network><na")
    (store.state_dir / f"{TMP_PREFIX}a.xml.1.2").write_bytes(b"")
    configs, problems = store.load_configs()
    assert list(configs) == ["a"] and problems == []
    statuses, problems = store.load_statuses()
    assert statuses == {} and problems == []
    removed = store.remove_stale_temp_files()
    assert len(removed) == 2
    assert listing(store.config_dir) == ["a.xml", "autostart"]


def test_autostart_link(store: StateStore) -> None:
    store.write_config(net())
    assert not store.is_autostart("a")
    store.set_autostart("a", True)
    link = store.autostart_path("a")
    assert link.is_symlink()
    assert os.readlink(link) == "../a.xml"
    assert store.is_autostart("a")
    assert store.load_configs()[0]["a"].autostart is True
    store.set_autostart("a", True)  # idempotent
    store.set_autostart("a", False)
    assert not link.exists() and not link.is_symlink()
    store.set_autostart("a", False)  # removing a missing link is fine
    # a link pointing somewhere else is not autostart
    os.symlink("/etc/hostname", link)
    assert not store.is_autostart("a")
    os.unlink(link)
    # a dangling link (config deleted behind our back) is not autostart either
    store.set_autostart("a", True)
    os.unlink(store.config_path("a"))
    assert not store.is_autostart("a")


def test_delete_config_removes_autostart(store: StateStore) -> None:
    store.write_config(net())
    store.set_autostart("a", True)
    store.delete_config("a")
    assert listing(store.config_dir) == ["autostart"]
    assert listing(store.autostart_dir) == []


def test_status_file_structure_and_round_trip(store: StateStore) -> None:
    n = net()
    store.write_status(n)
    data = store.status_path("a").read_bytes()
    root = etree.fromstring(data)
    assert root.tag == "networkstatus"
    assert [c.tag for c in root] == ["class_id", "floor", "network"]
    assert root[0].get("bitmap") == "0-2"
    assert root[1].get("sum") == "0"
    assert root[2].findtext("name") == "a"
    statuses, problems = store.load_statuses()
    assert problems == []
    assert format_network(statuses["a"].live) == format_network(n)
    assert store.delete_status("a") is True
    assert store.delete_status("a") is False
    assert listing(store.state_dir) == []


def test_staged_status_follows_the_definition(store: StateStore, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A start of the same definition stages the document formatted for the
    last one (a live copy shares the definition's parts); another
    definition, or another generated MAC, gets its own."""
    import copy

    calls: list[str] = []
    real = state_mod.format_status

    def counting(live, **kw):  # type: ignore[no-untyped-def]
        calls.append(live.name)
        return real(live, **kw)

    monkeypatch.setattr(state_mod, "format_status", counting)

    def staged_text(live) -> bytes:  # type: ignore[no-untyped-def]
        st = store.stage_status(live)
        store.publish_staged(st)
        return store.status_path("a").read_bytes()

    d = net()
    first = staged_text(copy.copy(d))
    assert staged_text(copy.copy(d)) == first
    assert len(calls) == 1  # formatted once
    other = parse_network(NET.format(name="a", uuid=U1, bridge="vbr-a").replace("150", "151"))
    changed = staged_text(copy.copy(other))
    assert b"192.168.151.1" in changed and b"192.168.150.1" not in changed
    live = copy.copy(other)
    live.mac = "52:54:00:aa:bb:cc"  # a generated MAC: a new part
    assert b"52:54:00:aa:bb:cc" in staged_text(live)
    assert len(calls) == 3
    statuses, problems = store.load_statuses()
    assert problems == [] and statuses["a"].live.mac == "52:54:00:aa:bb:cc"


def test_status_older_bare_network_form(store: StateStore) -> None:
    store.status_path("a").parent.mkdir()
    store.status_path("a").write_text(NET.format(name="a", uuid=U1, bridge="vbr-a"))
    statuses, problems = store.load_statuses()
    assert problems == [] and statuses["a"].live.uuid == U1


def test_status_name_mismatch_and_garbage(store: StateStore) -> None:
    store.write_status(net("b", U2, "vbr-b"))
    os.rename(store.network_dir("b"), store.network_dir("a"))
    store.network_dir("c").mkdir()
    store.status_path("c").write_bytes(b"\x00garbage")
    unreadable: dict[str, str] = {}
    statuses, problems = store.load_statuses(unreadable)
    assert statuses == {}
    msgs = {p.parent.name: m for p, m in problems}
    path_a = store.status_path("a")
    assert msgs["a"] == f"Network status file '{path_a}' does not match network name 'b'"
    assert "c" in msgs
    assert sorted(unreadable) == ["a", "c"]
    assert sorted(listing(store.state_dir)) == ["a", "c"]
    assert listing(store.network_dir("a")) == listing(store.network_dir("c")) == ["status.xml"]


def test_parse_status_refuses_other_roots() -> None:
    with pytest.raises(NetfsError) as ei:
        parse_status(b"<domain/>")
    assert ei.value.errno == errno.EINVAL


def test_ports_saved_loaded_and_deleted(store: StateStore) -> None:
    from netfs.model.port import format_port, parse_port

    n = net()
    store.write_status(n)
    p = parse_port(PORT)
    store.write_port("a", "vm1", p)
    assert store.port_path("a", "vm1").read_text() == format_port(p)
    ports, problems = store.load_ports("a")
    assert problems == [] and list(ports) == ["vm1"]
    assert ports["vm1"].uuid == p.uuid
    statuses, _ = store.load_statuses()
    assert list(statuses["a"].ports) == ["vm1"]
    store.write_port("a", "vm2", p)
    assert store.delete_port("a", "vm2") is True
    assert store.delete_ports("a") == ["vm1"]
    assert store.port_names("a") == []


def test_saved_port_with_guest_ip_is_reloaded(store: StateStore) -> None:
    from netfs.model.port import parse_port

    with pytest.raises(NetfsError):
        parse_port(GUEST_IP, strict=True, owner_name="vm9")
    d = store.ports_dir("a")
    d.mkdir(parents=True)
    (d / "vm9.xml").write_text(GUEST_IP)
    (d / "broken.xml").write_text("<networkport>")
    ports, problems = store.load_ports("a")
    assert list(ports) == ["vm9"]
    assert [p.name for p, _ in problems] == ["broken.xml"]
    assert (d / "broken.xml").exists()
    # and what netfs itself writes for such a port reads back with its <ip>
    store.write_port("a", "vm8", ports["vm9"])
    again, problems = store.load_ports("a")
    assert again["vm8"].ips == ports["vm9"].ips and len(again["vm8"].ips) == 1


def test_longest_name_is_saved_and_loaded(store: StateStore) -> None:
    """A 250-byte name (the longest check_name takes) makes a 254-byte file
    name; the temporary file beside it must fit in 255 bytes too."""
    name = "q" * 250
    check_name(name)
    store.write_config(net(name))
    store.set_autostart(name, True)
    configs, problems = store.load_configs()
    assert problems == [] and list(configs) == [name] and configs[name].autostart


def test_non_utf8_name_is_einval_with_a_printable_reason() -> None:
    with pytest.raises(NetfsError) as ei:
        check_name("q\udcff")
    assert ei.value.errno == errno.EINVAL
    assert ei.value.message == "invalid network name 'q\ufffd': not UTF-8"


def test_autostarted_marker(store: StateStore) -> None:
    assert not store.autostarted()
    store.mark_autostarted()
    assert store.autostarted()
    assert (store.state_dir / "autostarted").stat().st_mode & 0o7777 == 0o600  # man, ACCESS


@pytest.mark.parametrize(
    "bad", ["", ".", "..", ".hidden", "a/b", "autostarted", "x" * 300, "q\udcff"]
)
def test_check_name_refuses(bad: str) -> None:
    with pytest.raises(NetfsError) as ei:
        check_name(bad)
    assert ei.value.errno == errno.EINVAL


def test_autostart_absolute_link_and_listing(store: StateStore) -> None:
    store.write_config(net("a"))
    store.write_config(net("b", uuid=U1.replace("1", "2"), bridge="vbr-b"))
    # libvirt writes absolute link targets
    os.symlink(store.config_path("b"), store.autostart_path("b"))
    store.set_autostart("a", True)
    configs, problems = store.load_configs()
    assert problems == []
    assert configs["a"].autostart and configs["b"].autostart
    assert store.is_autostart("b")
    store.set_autostart("a", False)
    configs, _ = store.load_configs()
    assert not configs["a"].autostart and configs["b"].autostart


def test_problem_check_leaves_the_bridge_name_alone(store: StateStore) -> None:
    # no bridge name: validation at load must not fill it in (libvirt does not)
    path = store.config_dir / "bare.xml"
    path.write_text("<network><name>bare</name><uuid>" + U1 + "</uuid></network>")
    configs, problems = store.load_configs()
    d = configs["bare"].definition
    assert d.bridge.name is None
    assert configs["bare"].problem is None and problems == []


def test_generated_uuid_and_mac_saved_once(store: StateStore) -> None:
    # libvirt's config load: a missing uuid, or a virtual mode's missing MAC,
    # is generated and the config saved back, so the next load has the same
    path = store.config_dir / "bare.xml"
    path.write_text("<network><name>bare</name><bridge name='vbr-b'/></network>")
    configs, problems = store.load_configs()
    assert problems == []
    d = configs["bare"].definition
    assert d.mac is not None and d.mac.startswith("52:54:00:")
    assert not (configs["bare"].unsaved_uuid or configs["bare"].unsaved_mac)
    text = path.read_bytes()
    assert f"<uuid>{d.uuid}</uuid>".encode() in text
    assert f"<mac address='{d.mac}'/>".encode() in text
    assert listing(store.config_dir) == ["autostart", "bare.xml"]  # no temp file left
    again, _ = store.load_configs()
    assert format_network(again["bare"].definition, inactive=True) == format_network(
        d, inactive=True
    )
    assert path.read_bytes() == text
    # a host-bridge network gets no MAC; only its missing uuid is saved
    hb = store.config_dir / "hb.xml"
    hb.write_text("<network><name>hb</name><forward mode='bridge'/><bridge name='br0'/></network>")
    cfg = store.load_configs()[0]["hb"]
    assert cfg.definition.mac is None
    assert f"<uuid>{cfg.definition.uuid}</uuid>" in hb.read_text()
    # a complete file is left as it is
    store.write_config(net())
    before = store.config_path("a").stat().st_mtime_ns
    store.load_configs()
    assert store.config_path("a").stat().st_mtime_ns == before


def test_generated_values_not_saved_into_a_refused_file(store: StateStore) -> None:
    path = store.config_dir / "twodef.xml"
    path.write_text(
        TWO_DEFAULTS.replace("  <uuid>81ff0d90-c91e-6742-64da-4a736edb9a9b</uuid>\n", "")
    )
    data = path.read_bytes()
    cfg = store.load_configs()[0]["twodef"]
    assert cfg.problem and cfg.unsaved_uuid and not cfg.unsaved_mac
    assert path.read_bytes() == data
