"""Issue 9, state directory: one layout where no two networks' names meet
(item 11, with the migration of the previous layout), nothing written
through a planted symlink (item 10), names of what could not be loaded
(item 7), a full disk (item 15). Temp dirs only; pure (no kernel)."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from netfs import state as state_mod
from netfs.model.network import NetworkDef, format_network, parse_network
from netfs.model.port import format_port, parse_port
from netfs.state import TMP_PREFIX, StateStore

ROOT = Path(__file__).resolve().parent.parent
# what the previous state layout (commit bccda97) wrote: see
# test_previous_layout_loads_identically
PREVIOUS_LAYOUT = Path(__file__).resolve().parent / "data" / "previous-layout"

NET = """<network>
  <name>{name}</name>
  <uuid>81ff0d90-c91e-6742-64da-4a736edb9a{n:02x}</uuid>
  <bridge name='vbr{n}'/>
  <mac address='52:54:00:11:22:{n:02x}'/>
  <ip address='192.168.{n}.1' netmask='255.255.255.0'/>
</network>
"""

PORT = """<interface type='network'>
  <mac address='52:54:00:7b:35:{n:02x}'/>
  <source network='x'/>
</interface>
"""


def bridge_of(live: NetworkDef) -> str | None:
    return live.bridge.name or None


def net(name: str, n: int = 1):  # type: ignore[no-untyped-def]
    return parse_network(NET.format(name=name, n=n))


def port(owner: str, n: int = 1):  # type: ignore[no-untyped-def]
    return parse_port(PORT.format(n=n), owner_name=owner)


@pytest.fixture
def store(tmp_path: Path) -> StateStore:
    s = StateStore(tmp_path / "etc", tmp_path / "run")
    s.ensure_dirs()
    return s


# --------------------------------------------------------------------------- item 11


def test_network_names_never_meet(store: StateStore) -> None:
    names = ["foo", "foo.xml", "foo.xml.xml", "ports", "status.xml", "starting"]
    for i, name in enumerate(names, 1):
        store.stage_status(net(name, i))  # a start under way (its intent)
        store.write_status(net(name, i))
        store.write_port(name, "vm1", port(name, i))
    loaded = store.load()
    assert loaded.problems == []
    assert sorted(loaded.statuses) == sorted(names)
    for i, name in enumerate(names, 1):
        assert loaded.statuses[name].live.uuid.endswith(f"{i:02x}")
        assert list(loaded.statuses[name].ports) == ["vm1"]
        assert loaded.statuses[name].ports["vm1"].owner_name == name
    assert store.load_intents(bridge_of) == {
        n: (net(n, i).uuid, f"vbr{i}") for i, n in enumerate(names, 1)
    }


def test_previous_layout_loads_identically(tmp_path: Path) -> None:
    """The files of PREVIOUS_LAYOUT were written by netfs/state.py of
    commit bccda97 (the last with the previous layout): write_config of
    net(name, i) for a, b and c.xml, set_autostart("a"), write_status of a
    and c.xml, ports vm1 and vm2 of a (port(vm, n)), write_intent("b",
    "uuid-b", "vbr2") (a start under way) and mark_autostarted()."""
    etc, run = tmp_path / "etc", tmp_path / "run"
    for d in (etc, run):
        shutil.copytree(PREVIOUS_LAYOUT / d.name, d, symlinks=True)
        for path in d.rglob("*"):
            if path.is_file() and not path.is_symlink():
                path.chmod(0o644 if path.name in ("autostarted", "starting") else 0o600)
    after = StateStore(etc, run)
    after.ensure_dirs()  # migrates
    after.remove_stale_temp_files()
    loaded = after.load()
    assert loaded.problems == []
    assert sorted(loaded.configs) == ["a", "b", "c.xml"]
    for i, name in enumerate(["a", "b", "c.xml"], 1):
        got = loaded.configs[name]
        assert format_network(got.definition, inactive=True) == format_network(
            net(name, i), inactive=True
        )
        assert got.autostart == (name == "a")
    assert sorted(loaded.statuses) == ["a", "c.xml"]
    for i, name in ((1, "a"), (3, "c.xml")):
        assert format_network(loaded.statuses[name].live) == format_network(net(name, i))
    ports = loaded.statuses["a"].ports
    assert {k: (p.owner_name, p.mac) for k, p in ports.items()} == {
        "vm1": ("vm1", "52:54:00:7b:35:01"),
        "vm2": ("vm2", "52:54:00:7b:35:02"),
    }
    for k, p in ports.items():  # the same document, now where the new layout keeps it
        old_file = PREVIOUS_LAYOUT / "run" / "a" / "ports" / f"{k}.xml"
        assert format_port(p) == format_port(parse_port(old_file.read_bytes()))
    assert loaded.statuses["c.xml"].ports == {}
    assert after.load_intents(bridge_of) == {"b": ("uuid-b", "vbr2")}
    assert after.autostarted()
    assert sorted(os.listdir(run)) == ["a", "autostarted", "b", "c.xml"]
    assert after.migrate_layout() == []  # once


# --------------------------------------------------------------------------- item 10


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    v = tmp_path / "victim"
    v.write_bytes(b"root's secret\n")
    v.chmod(0o600)
    return v


def test_planted_symlink_as_intent_file_is_not_written_through(
    store: StateStore, victim: Path
) -> None:
    store.network_dir("n").mkdir()
    store.intent_path("n").symlink_to(victim)
    store.stage_status(net("n"))
    assert victim.read_bytes() == b"root's secret\n"
    assert store.load_intents(bridge_of) == {"n": (net("n").uuid, "vbr1")}


def test_planted_fifo_as_intent_file_does_not_hang_and_is_replaced(store: StateStore) -> None:
    store.network_dir("n").mkdir()
    os.mkfifo(store.intent_path("n"))
    store.stage_status(net("n"))  # created anew (O_EXCL), never opened through
    assert store.load_intents(bridge_of) == {"n": (net("n").uuid, "vbr1")}
    assert store.intent_path("n").is_file()


def test_an_unreadable_intent_names_no_link_and_a_previous_one_is_read(
    store: StateStore,
) -> None:
    for name, data in [("torn", b"<networkstatus><net"), ("old", b"uuid-o vbr9\n"), ("e", b"")]:
        store.network_dir(name).mkdir()
        store.intent_path(name).write_bytes(data)
    assert store.load_intents(bridge_of) == {
        "torn": ("", None),
        "old": ("uuid-o", "vbr9"),
        "e": ("", None),
    }


@pytest.mark.parametrize("what", ["status", "port", "intent"])
def test_planted_symlink_as_network_dir_is_refused(
    store: StateStore, tmp_path: Path, what: str
) -> None:
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "ports").mkdir(parents=True)
    store.network_dir("n").symlink_to(elsewhere)
    with pytest.raises(OSError):
        if what == "status":
            store.write_status(net("n"))
        elif what == "port":
            store.write_port("n", "vm1", port("vm1"))
        else:
            store.stage_status(net("n"))
    assert sorted(p.name for p in elsewhere.rglob("*")) == ["ports"]


def test_planted_symlink_as_ports_dir_is_refused(store: StateStore, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    store.network_dir("n").mkdir()
    store.ports_dir("n").symlink_to(elsewhere)
    with pytest.raises(OSError):
        store.write_port("n", "vm1", port("vm1"))
    assert list(elsewhere.iterdir()) == []


def test_state_files_are_not_read_through_symlinks(store: StateStore, victim: Path) -> None:
    victim.write_text(NET.format(name="n", n=1))
    store.network_dir("n").mkdir()
    store.status_path("n").symlink_to(victim)
    loaded = store.load()
    assert loaded.statuses == {}
    assert "n" in loaded.unreadable and "n" in loaded.bad_statuses


def test_directories_made_with_explicit_modes(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        s = StateStore(tmp_path / "new" / "etc", tmp_path / "new" / "run")
        s.ensure_dirs()
        s.write_status(net("n"))
        s.write_port("n", "vm1", port("vm1"))
    finally:
        os.umask(old)
    for d in (tmp_path / "new", s.config_dir, s.autostart_dir, s.state_dir):
        assert d.stat().st_mode & 0o777 == 0o755, d
    for d in (s.network_dir("n"), s.ports_dir("n")):
        assert d.stat().st_mode & 0o777 == 0o700, d
    assert s.status_path("n").stat().st_mode & 0o777 == 0o600


# --------------------------------------------------------------------------- item 7


def test_names_that_could_not_be_loaded_are_reported(store: StateStore) -> None:
    big = b"<network><name>big</name>" + b" " * (1 << 20) + b"</network>"
    (store.config_dir / "big.xml").write_bytes(big)
    (store.config_dir / "torn.xml").write_bytes(b"<network><name>torn</na")
    store.write_status(net("live", 2))
    store.status_path("live").write_bytes(big)
    store.write_config(net("good", 3))
    loaded = store.load()
    assert sorted(loaded.configs) == ["good"]
    assert sorted(loaded.unreadable) == ["big", "live", "torn"]
    assert "too large" in loaded.unreadable["big"]
    assert "too large" in loaded.bad_statuses["live"]


# --------------------------------------------------------------------------- item 15


def test_full_disk_names_the_path_and_leaves_no_starting_file(
    store: StateStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(fd: int, data: object) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(state_mod.os, "write", full)
    with pytest.raises(OSError) as e:
        store.stage_status(net("n"))
    assert e.value.errno == errno.ENOSPC
    assert e.value.filename == str(store.intent_path("n"))
    with pytest.raises(OSError) as e:
        store.write_status(net("n"))
    assert e.value.filename == str(store.status_path("n"))
    monkeypatch.undo()
    assert not os.path.lexists(store.intent_path("n"))
    assert not any(p.name.startswith(TMP_PREFIX) for p in store.state_dir.rglob("*"))


FULL_DISK = """
import errno, os, sys
from pathlib import Path
from netfs.state import StateStore
from netfs.model.network import parse_network
run = Path(sys.argv[1])
s = StateStore(run / "etc", run / "run")
s.ensure_dirs()
s.network_dir("n").mkdir()
fd = os.open(run / "filler", os.O_WRONLY | os.O_CREAT)  # fill the file system
try:
    while True:
        os.write(fd, b"x" * 4096)
except OSError as e:
    assert e.errno == errno.ENOSPC
os.close(fd)
big = parse_network("<network><name>n</name><description>" + "u" * 4000 + "</description></network>")
for write in (lambda: s.stage_status(big),):
    try:
        write()
    except OSError as e:
        print(e.errno, e.filename)
print(sorted(os.listdir(s.network_dir("n"))))
"""


@pytest.mark.kernel
@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare")
def test_really_full_disk_leaves_no_starting_file(tmp_path: Path) -> None:
    script = (
        f"mount -t tmpfs -o size=256k netfs-test {tmp_path} && "
        f"{sys.executable} -c '{FULL_DISK}' {tmp_path}"
    )
    r = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines == [f"{errno.ENOSPC} {tmp_path}/run/n/starting", "[]"], r.stdout


def test_dnsmasq_files_never_meet_a_network(tmp_path: Path) -> None:
    """dnsmasq's files and the lease records live in a directory no network
    name can take (a network named 'dnsmasq' has STATE/dnsmasq/ to itself)."""
    from netfs import leases
    from netfs.dnsmasq import Dnsmasq
    from netfs.errors import NetfsError
    from netfs.state import check_name

    store = StateStore(tmp_path / "etc", tmp_path / "run")
    store.ensure_dirs()
    d = Dnsmasq(tmp_path / "run")
    for path in (d.dir, Path(leases.leases_dir(tmp_path / "run")).parent):
        assert path.parent == tmp_path / "run"
        with pytest.raises(NetfsError):
            check_name(path.name)
    assert store.network_dir("dnsmasq") != d.dir
