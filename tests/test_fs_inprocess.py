"""The filesystem operations called in-process against a fake core: no mount,
no root, no kernel. Lookup, listing, attributes, open/read/write of the
declared tree, errno mapping and writability rules.

What needs the kernel (inotify through the mount, poll wake-ups, dentry
caching, permissions checked by the kernel) stays in the other test_fs_*
files, against a real mount.
"""

from __future__ import annotations

import errno
import os
import select
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pyfuse3
import pytest
import trio

from netfs.core import Event, NetworkState
from netfs.errors import NetfsError
from netfs.fs import tree
from netfs.fs.ops import NetfsOperations
from netfs.model.network import NetworkDef, format_network, parse_network
from netfs.model.port import NetworkPort, format_port, parse_port, portgroup_virtualport
from netfs.model.virtualport import format_virtualport

XML = """<network>
  <name>{name}</name>
  <uuid>{uuid}</uuid>
  <bridge name='br-{name}'/>
  <portgroup name='eng' default='yes'/>
  <portgroup name='sales'/>
</network>
"""
UUID_A = "11111111-2222-3333-4444-555555555555"
PORT_XML = "<networkport><uuid>{uuid}</uuid><owner><name>vm</name><uuid>{uuid}</uuid></owner><mac address='52:54:00:00:00:01'/><plug type='network' bridge='br-testA'/></networkport>"
PORT_UUID = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"


@dataclass
class _FakeNet:
    definition: NetworkDef
    active: bool = False
    autostart: bool = False
    error: str = ""
    error_seq: int = 0
    ports: dict[str, NetworkPort] = field(default_factory=dict)


class FakeCore:
    """The core's contract (netfs.fs.tree.Core) over plain dictionaries:
    documents parsed and formatted by the real model, no kernel."""

    def __init__(self) -> None:
        self.nets: dict[str, _FakeNet] = {}
        self.calls: list[tuple[str, ...]] = []
        self._subs: list[trio.MemorySendChannel[Event]] = []
        # its events are not numbered (seq 0): each one is reconciled
        self.events_emitted = 0

    def _n(self, name: str) -> _FakeNet:
        n = self.nets.get(name)
        if n is None:
            raise NetfsError(errno.ENOENT, f"no network with matching name '{name}'")
        return n

    def _emit(self, name: str, kind: str) -> None:
        ev = Event(datetime.now(UTC), name, kind)
        for s in self._subs:
            s.send_nowait(ev)

    def names(self) -> list[str]:
        return sorted(self.nets)

    def get(self, name: str) -> NetworkState:
        n = self._n(name)
        return NetworkState(
            name=name,
            uuid=n.definition.uuid,
            definition=n.definition,
            live=n.definition if n.active else None,
            active=n.active,
            autostart=n.autostart,
            persistent=True,
            error=n.error,
            problem=None,
            ports=dict(n.ports),
            error_seq=n.error_seq,
        )

    def definition_xml(self, name: str) -> str:
        return format_network(self._n(name).definition, inactive=True)

    def status_xml(self, name: str) -> str | None:
        n = self._n(name)
        return format_network(n.definition) if n.active else None

    def port_xml(self, name: str, port: str) -> str:
        return format_port(self._n(name).ports[port])

    def port_virtualport_xml(self, name: str, port: str) -> str | None:
        return format_virtualport(self._n(name).ports[port].virtualport, 0) or None

    def portgroup_virtualport_xml(self, name: str, portgroup: str) -> str | None:
        net = self._n(name).definition
        return format_virtualport(portgroup_virtualport(net, portgroup), 0) or None

    def set_error(self, name: str, message: str, *, logged: bool = False) -> None:
        n = self.nets.get(name)
        if n is not None:
            n.error = message
            n.error_seq += 1
            self._emit(name, "error")

    def leases_text(self, name: str) -> str:
        self._n(name)
        return ""

    def firewall_text(self, name: str) -> str:
        self._n(name)
        return ""

    async def define(
        self, xml: bytes | str, *, name: str | None = None, privileged: bool = True
    ) -> str:
        self.calls.append(
            ("define", str(name)) if privileged else ("define-unprivileged", str(name))
        )
        try:
            net = parse_network(xml)
        except NetfsError as e:
            if name in self.nets:
                self.set_error(name, e.message)
            raise
        if name is not None and net.name != name:
            msg = f"network name '{net.name}' does not match directory '{name}'"
            if name in self.nets:
                self.set_error(name, msg)
            raise NetfsError(errno.EINVAL, msg)
        old = self.nets.get(net.name)
        self.nets[net.name] = _FakeNet(net, *(() if old is None else (old.active, old.autostart)))
        self._emit(net.name, "defined")
        return net.name

    async def undefine(self, name: str, *, if_active: str = "refuse") -> None:
        if self._n(name).active:
            raise NetfsError(errno.EBUSY, f"network '{name}' is still active")
        del self.nets[name]
        self._emit(name, "undefined")

    async def start(self, name: str) -> None:
        self.calls.append(("start", name))
        self._n(name).active = True
        self._emit(name, "started")

    async def stop(self, name: str) -> None:
        self.calls.append(("stop", name))
        self._n(name).active = False
        self._emit(name, "stopped")

    async def set_autostart(self, name: str, on: bool) -> None:
        self._n(name).autostart = on

    async def create_port(self, name: str, port: str, xml: bytes | str) -> NetworkPort:
        p = parse_port(xml, strict=True, owner_name=port)
        self._n(name).ports[port] = p
        self._emit(name, "port-created")
        return p

    async def delete_port(self, name: str, port: str) -> None:
        if self._n(name).ports.pop(port, None) is None:
            raise NetfsError(errno.ENOENT, f"network '{name}' has no port '{port}'")

    def subscribe(self) -> trio.MemoryReceiveChannel[Event]:
        send, recv = trio.open_memory_channel[Event](100)
        self._subs.append(send)
        return recv

    def unsubscribe(self, ch: trio.MemoryReceiveChannel[Event]) -> None:
        ch.close()


USER = SimpleNamespace(pid=os.getpid(), uid=0, gid=0, umask=0o022)


class FS:
    """NetfsOperations over a FakeCore, with path-based helpers."""

    def __init__(self, core: FakeCore, gid: int | None = None) -> None:
        self.core = core
        self.ops = NetfsOperations(core, "/nonexistent-netfs-mount", gid=gid)

    async def lookup(self, path: str) -> pyfuse3.EntryAttributes:
        ino = pyfuse3.ROOT_INODE
        attr = await self.ops.getattr(pyfuse3.ROOT_INODE, USER)  # type: ignore[arg-type]
        for part in [p for p in path.split("/") if p]:
            attr = await self.ops.lookup(ino, part.encode(), USER)  # type: ignore[arg-type]
            ino = attr.st_ino
        return attr

    async def ino(self, path: str) -> int:
        return int((await self.lookup(path)).st_ino)

    async def listdir(self, path: str, monkeypatch: pytest.MonkeyPatch) -> list[str]:
        names: list[str] = []

        def reply(token: object, name: bytes, attr: object, next_id: int) -> bool:
            names.append(os.fsdecode(name))
            return True

        monkeypatch.setattr(pyfuse3, "readdir_reply", reply)
        fh = await self.ops.opendir(await self.ino(path), USER)  # type: ignore[arg-type]
        try:
            await self.ops.readdir(fh, 0, None)  # type: ignore[arg-type]
        finally:
            await self.ops.releasedir(fh)
        return names

    async def read(self, path: str) -> bytes:
        fi = await self.ops.open(await self.ino(path), os.O_RDONLY, USER)  # type: ignore[arg-type]
        try:
            return await self.ops.read(fi.fh, 0, 1 << 20)
        finally:
            await self.ops.flush(fi.fh)
            await self.ops.release(fi.fh)

    async def write(
        self,
        path: str,
        data: bytes,
        flags: int = os.O_WRONLY | os.O_TRUNC,
        ctx: SimpleNamespace = USER,
    ) -> None:
        fi = await self.ops.open(await self.ino(path), flags, ctx)  # type: ignore[arg-type]
        try:
            await self.ops.write(fi.fh, 0, data)
            await self.ops.flush(fi.fh)
        finally:
            await self.ops.release(fi.fh)

    async def mkdir(self, path: str) -> pyfuse3.EntryAttributes:
        parent, _, name = path.rstrip("/").rpartition("/")
        pino = await self.ino(parent)
        return await self.ops.mkdir(pino, name.encode(), 0o755, USER)  # type: ignore[arg-type]

    async def rmdir(self, path: str) -> None:
        parent, _, name = path.rstrip("/").rpartition("/")
        await self.ops.rmdir(await self.ino(parent), name.encode(), USER)  # type: ignore[arg-type]


def errno_of(exc: pytest.ExceptionInfo[Any]) -> int:
    return int(exc.value.errno)


@pytest.fixture
def core() -> FakeCore:
    c = FakeCore()
    c.nets["testA"] = _FakeNet(parse_network(XML.format(name="testA", uuid=UUID_A)))
    return c


@pytest.fixture
def fs(core: FakeCore) -> FS:
    return FS(core)


@pytest.fixture(autouse=True)
def no_kernel(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[int, bytes]]]:
    """Dentry invalidations are recorded, not sent (there is no mount)."""
    calls: list[tuple[int, bytes]] = []
    monkeypatch.setattr(pyfuse3, "invalidate_entry", lambda ino, name: calls.append((ino, name)))
    yield calls


# ================================================================ lookup and listing


async def test_root_lists_events_then_networks(fs: FS, monkeypatch: pytest.MonkeyPatch) -> None:
    assert await fs.listdir("", monkeypatch) == [".", "..", "events", "testA"]


async def test_network_directory_lists_the_declared_entries(
    fs: FS, core: FakeCore, monkeypatch: pytest.MonkeyPatch
) -> None:
    inactive = [".", "..", "definition.xml", "active", "autostart", "uuid", "error"]
    inactive += ["leases", "firewall", "portgroups", "ports"]
    assert await fs.listdir("testA", monkeypatch) == inactive
    core.nets["testA"].active = True
    listed = await fs.listdir("testA", monkeypatch)
    assert listed == inactive[:5] + ["status.xml"] + inactive[5:]
    assert await fs.listdir("testA/portgroups", monkeypatch) == [".", "..", "eng", "sales"]
    assert await fs.listdir("testA/portgroups/eng", monkeypatch) == [".", "..", "default"]
    assert await fs.listdir("testA/ports", monkeypatch) == [".", ".."]


async def test_lookup_of_what_is_not_there_is_enoent(fs: FS) -> None:
    for path in ["nosuch", "testA/nosuch", "testA/status.xml", "testA/portgroups/x", "events/x"]:
        with pytest.raises(pyfuse3.FUSEError) as e:
            await fs.lookup(path)
        assert errno_of(e) == errno.ENOENT, path


async def test_every_declared_entry_resolves_to_its_type(fs: FS, core: FakeCore) -> None:
    core.nets["testA"].active = True
    for name, node in tree.NETWORK.entries.items():
        ino = await fs.ino(f"testA/{name}")
        assert fs.ops.space.nodes[ino] == (("testA", name), node)
    ino = await fs.ino("testA/portgroups/sales")
    assert fs.ops.space.nodes[ino][1] is tree.PORTGROUP


# ================================================================ attributes


async def test_modes_follow_writability(fs: FS, core: FakeCore) -> None:
    core.nets["testA"].active = True
    modes = {
        "": stat.S_IFDIR | 0o755,
        "events": stat.S_IFREG | 0o444,
        "testA": stat.S_IFDIR | 0o755,
        "testA/definition.xml": stat.S_IFREG | 0o644,
        "testA/active": stat.S_IFREG | 0o644,
        "testA/autostart": stat.S_IFREG | 0o644,
        "testA/status.xml": stat.S_IFREG | 0o444,
        "testA/uuid": stat.S_IFREG | 0o444,
        "testA/error": stat.S_IFREG | 0o444,
        "testA/portgroups": stat.S_IFDIR | 0o755,
        "testA/portgroups/eng/default": stat.S_IFREG | 0o444,
        "testA/ports": stat.S_IFDIR | 0o755,
    }
    for path, mode in modes.items():
        assert (await fs.lookup(path)).st_mode == mode, path
    assert (await fs.lookup("testA/uuid")).st_size == len(UUID_A) + 1


async def test_group_option_opens_what_is_writable_to_the_group(core: FakeCore) -> None:
    fs = FS(core, gid=1234)
    for path, mode, gid in [
        ("", 0o775, 1234),
        ("testA", 0o775, 1234),
        ("testA/active", 0o664, 1234),
        ("testA/definition.xml", 0o664, 1234),
        ("testA/ports", 0o775, 1234),
        ("testA/portgroups", 0o755, 0),
        ("testA/portgroups/eng", 0o755, 0),
        ("testA/uuid", 0o444, 0),
    ]:
        a = await fs.lookup(path)
        assert (stat.S_IMODE(a.st_mode), a.st_gid) == (mode, gid), path


# ================================================================ reading and writing


async def test_reads_show_the_core(fs: FS, core: FakeCore) -> None:
    assert await fs.read("testA/active") == b"0\n"
    assert await fs.read("testA/uuid") == f"{UUID_A}\n".encode()
    assert await fs.read("testA/error") == b""
    assert await fs.read("testA/portgroups/eng/default") == b"1\n"
    assert await fs.read("testA/portgroups/sales/default") == b"0\n"
    assert (await fs.read("testA/definition.xml")).decode() == core.definition_xml("testA")


async def test_writing_active_calls_the_core_and_shows_the_new_value(
    fs: FS, core: FakeCore, no_kernel: list[tuple[int, bytes]]
) -> None:
    await fs.write("testA/active", b"1\n")
    assert core.calls[-1] == ("start", "testA")
    assert await fs.read("testA/active") == b"1\n"
    assert (await fs.lookup("testA/status.xml")).st_mode == stat.S_IFREG | 0o444
    await fs.write("testA/active", b"0")
    assert core.calls[-1] == ("stop", "testA")
    # status.xml went away: its cached dentry is dropped before the write returns
    net_ino = await fs.ino("testA")
    assert (net_ino, b"status.xml") in no_kernel


async def test_files_of_a_declared_size_always_show_that_many_bytes(fs: FS, core: FakeCore) -> None:
    """active and autostart are always 2 bytes: the size the kernel keeps
    from a lookup of them is never stale, so such a lookup (every
    `echo 1 > active` makes one) does not count as exposing the network's
    cached files (no invalidation at the change); other files' sizes do."""
    sized = [f for f in tree.NETWORK.entries.values() if isinstance(f, tree.File) and f.size]
    assert sorted(f.name for f in sized) == ["active", "autostart"]
    for active in (False, True):
        for autostart in (False, True):
            core.nets["testA"].active = active
            core.nets["testA"].autostart = autostart
            for f in sized:
                assert (await fs.lookup(f"testA/{f.name}")).st_size == f.size
                assert "testA" not in fs.ops.space.exposed
                assert len(await fs.read(f"testA/{f.name}")) == f.size
                fs.ops.space.exposed.discard("testA")  # a cached open exposes it
    await fs.lookup("testA/uuid")
    assert "testA" in fs.ops.space.exposed


async def test_a_bad_value_is_einval_with_the_reason_in_error(fs: FS, core: FakeCore) -> None:
    with pytest.raises(pyfuse3.FUSEError) as e:
        await fs.write("testA/active", b"1\n\n")
    assert errno_of(e) == errno.EINVAL
    assert core.calls == []
    assert await fs.read("testA/error") == b"invalid value for active: '1\\n\\n' (write 0 or 1)\n"
    # every byte shown (not a replacement character), a long value cut and marked
    for value, shown in [(b"\xff1", b"'\\xff1'"), (b"1" * 41, b"'" + b"1" * 40 + b"'...")]:
        with pytest.raises(pyfuse3.FUSEError):
            await fs.write("testA/active", value)
        assert (
            await fs.read("testA/error") == b"invalid value for active: %s (write 0 or 1)\n" % shown
        )
    assert core.calls == []


async def test_read_only_files_refuse_writing_and_truncation(fs: FS, core: FakeCore) -> None:
    core.nets["testA"].active = True
    for path in ["testA/uuid", "testA/status.xml", "testA/error", "events"]:
        for flags in (os.O_WRONLY, os.O_RDONLY | os.O_TRUNC):
            with pytest.raises(pyfuse3.FUSEError) as e:
                await fs.ops.open(await fs.ino(path), flags, USER)  # type: ignore[arg-type]
            assert errno_of(e) == errno.EACCES, (path, flags)


async def test_directories_open_as_files_is_eisdir(fs: FS) -> None:
    with pytest.raises(pyfuse3.FUSEError) as e:
        await fs.ops.open(await fs.ino("testA/ports"), os.O_RDONLY, USER)  # type: ignore[arg-type]
    assert errno_of(e) == errno.EISDIR


async def test_a_definition_is_stored_at_close(fs: FS, core: FakeCore) -> None:
    new = XML.format(name="testA", uuid=UUID_A).replace("br-testA", "br-other")
    await fs.write("testA/definition.xml", new.encode())
    assert core.calls == [("define", "testA")]
    assert "br-other" in (await fs.read("testA/definition.xml")).decode()


async def test_a_refused_definition_keeps_the_old_one(fs: FS, core: FakeCore) -> None:
    before = await fs.read("testA/definition.xml")
    with pytest.raises(pyfuse3.FUSEError) as e:
        await fs.write("testA/definition.xml", b"<network><name>other</name></network>")
    assert errno_of(e) == errno.EINVAL
    assert await fs.read("testA/definition.xml") == before
    assert b"does not match" in await fs.read("testA/error")


async def test_too_large_a_document_is_efbig(fs: FS) -> None:
    fi = await fs.ops.open(await fs.ino("testA/definition.xml"), os.O_WRONLY, USER)  # type: ignore[arg-type]
    try:
        with pytest.raises(pyfuse3.FUSEError) as e:
            await fs.ops.write(fi.fh, 2 << 20, b"x")
        assert errno_of(e) == errno.EFBIG
    finally:
        await fs.ops.release(fi.fh)
    assert b"larger than the limit" in await fs.read("testA/error")


# ================================================================ structure


async def test_mkdir_makes_a_pending_network_until_its_definition(
    fs: FS, core: FakeCore, monkeypatch: pytest.MonkeyPatch
) -> None:
    await fs.mkdir("testB")
    assert await fs.listdir("testB", monkeypatch) == [".", "..", "definition.xml", "error"]
    assert await fs.read("testB/definition.xml") == b""
    # active does not exist yet: creating it is ENOENT, with the reason
    pino = await fs.ino("testB")
    with pytest.raises(pyfuse3.FUSEError) as e:
        await fs.ops.create(pino, b"active", 0o644, os.O_WRONLY, USER)  # type: ignore[arg-type]
    assert errno_of(e) == errno.ENOENT
    assert b"has no definition yet" in await fs.read("testB/error")
    await fs.write(
        "testB/definition.xml", XML.format(name="testB", uuid=UUID_A[:-1] + "6").encode()
    )
    assert "testB" in core.nets
    assert "active" in await fs.listdir("testB", monkeypatch)


async def test_structure_errnos(fs: FS, core: FakeCore) -> None:
    cases = [
        (fs.mkdir("testA"), errno.EEXIST),
        (fs.mkdir("testA/portgroups/x"), errno.EPERM),
        (fs.mkdir("testA/x"), errno.EPERM),
        (fs.rmdir("testA/portgroups/eng"), errno.EPERM),
        (fs.rmdir("testA/ports/nosuch"), errno.ENOENT),
        (fs.rmdir("nosuch"), errno.ENOENT),
    ]
    for coro, code in cases:
        with pytest.raises(pyfuse3.FUSEError) as e:
            await coro
        assert errno_of(e) == code
    core.nets["testA"].active = True
    with pytest.raises(pyfuse3.FUSEError) as e:
        await fs.rmdir("testA")
    assert errno_of(e) == errno.EBUSY
    core.nets["testA"].active = False
    await fs.rmdir("testA")
    assert "testA" not in core.nets


async def test_a_port_is_made_by_mkdir_and_port_xml(fs: FS, core: FakeCore) -> None:
    await fs.mkdir("testA/ports/vm1")
    assert await fs.read("testA/ports/vm1/port.xml") == b""
    await fs.write("testA/ports/vm1/port.xml", PORT_XML.format(uuid=PORT_UUID).encode())
    assert "vm1" in core.nets["testA"].ports
    assert PORT_UUID.encode() in await fs.read("testA/ports/vm1/port.xml")
    await fs.rmdir("testA/ports/vm1")
    assert core.nets["testA"].ports == {}


async def test_an_editor_renames_its_scratch_file_onto_the_definition(
    fs: FS, core: FakeCore
) -> None:
    ops = fs.ops
    net = await fs.ino("testA")
    fi, attr = await ops.create(net, b".def.swp", 0o600, os.O_WRONLY, USER)  # type: ignore[arg-type]
    new = XML.format(name="testA", uuid=UUID_A).replace("br-testA", "br-edit")
    await ops.write(fi.fh, 0, new.encode())
    await ops.release(fi.fh)
    assert stat.S_IMODE(attr.st_mode) == 0o600
    await ops.rename(net, b".def.swp", net, b"definition.xml", 0, USER)  # type: ignore[arg-type]
    assert "br-edit" in core.definition_xml("testA")
    # renaming onto a file that is not a document is refused
    fi, _ = await ops.create(net, b"tmp", 0o600, os.O_WRONLY, USER)  # type: ignore[arg-type]
    await ops.release(fi.fh)
    with pytest.raises(pyfuse3.FUSEError) as e:
        await ops.rename(net, b"tmp", net, b"uuid", 0, USER)  # type: ignore[arg-type]
    assert errno_of(e) == errno.EPERM


async def test_an_unexpected_exception_is_eio(fs: FS, core: FakeCore) -> None:
    def broken(name: str) -> NetworkState:
        raise RuntimeError("boom")

    core.get = broken  # type: ignore[method-assign]
    with pytest.raises(pyfuse3.FUSEError) as e:
        await fs.read("testA/nosuch")
    assert errno_of(e) == errno.EIO


async def test_errnos_out_of_range_become_eio(fs: FS, core: FakeCore) -> None:
    async def odd(name: str) -> None:
        raise NetfsError(600, "not an errno the kernel takes")

    core.start = odd  # type: ignore[method-assign]
    with pytest.raises(pyfuse3.FUSEError) as e:
        await fs.write("testA/active", b"1")
    assert errno_of(e) == errno.EIO


# ================================================================ the declaration


def _declared_files(node: tree.Dir, prefix: str) -> list[str]:
    """Every file and fixed directory of the declared tree, written as the
    man page writes them (NAME, PG and P for the names users choose)."""
    placeholder = {"network": "NAME", "portgroup": "PG", "port": "P"}
    out = []
    for name, child in node.entries.items():
        if isinstance(child, tree.Dir):
            out.append(f"{prefix}{name}/")
            out += _declared_files(child, f"{prefix}{name}/")
        else:
            out.append(prefix + name)
    if node.item is not None:
        out += _declared_files(node.item, f"{prefix}{placeholder[node.item.kind]}/")
    return out


def test_every_declared_file_is_in_the_man_page() -> None:
    """An entry added to the declaration without its paragraph fails here."""
    from tests.test_manpage import _rendered_text, needs_groff

    if needs_groff.args[0]:
        pytest.skip("groff not installed")
    files = _declared_files(tree.ROOT, "")
    assert "NAME/ports/P/port.xml" in files and "events" in files
    text = _rendered_text()
    assert [f for f in files if f not in text] == []


async def test_a_new_attribute_file_is_one_entry(
    fs: FS, core: FakeCore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the next attribute files (leases, firewall) cost: one File in
    the network directory's declaration. It is listed, looked up, read,
    read-only, absent without a definition, and watched by the notifier."""

    def show(sp: object, path: tuple[str, ...], st: NetworkState | None) -> bytes | None:
        return None if st is None else f"{len(st.ports)} leases\n".encode()

    leases = tree.File("leases", show, presence=tree.Presence.DEFINED, polled=True, watched=True)
    monkeypatch.setitem(tree.NETWORK.entries, "leases", leases)
    assert "leases" in await fs.listdir("testA", monkeypatch)
    a = await fs.lookup("testA/leases")
    assert a.st_mode == stat.S_IFREG | 0o444
    assert a.st_size == len(b"0 leases\n")
    assert await fs.read("testA/leases") == b"0 leases\n"
    with pytest.raises(pyfuse3.FUSEError) as e:
        await fs.ops.open(await fs.ino("testA/leases"), os.O_WRONLY, USER)  # type: ignore[arg-type]
    assert errno_of(e) == errno.EACCES
    # announced: the notifier compares it with what watchers were told
    fs.ops.notifier.publish_initial()
    assert fs.ops.notifier.told(("testA", "leases")) == b"0 leases\n"
    # polled: a handle that read it sees the change at its next poll
    fi = await fs.ops.open(await fs.ino("testA/leases"), os.O_RDONLY, USER)  # type: ignore[arg-type]
    assert await fs.ops.read(fi.fh, 0, 100) == b"0 leases\n"
    assert fs.ops._handle(fi.fh).poll(fi.fh, None, 0) & select.POLLPRI == 0
    await fs.mkdir("testA/ports/vm1")
    await fs.write("testA/ports/vm1/port.xml", PORT_XML.format(uuid=PORT_UUID).encode())
    assert fs.ops._handle(fi.fh).poll(fi.fh, None, 0) & select.POLLPRI
    await fs.ops.release(fi.fh)
    # a mkdir'd directory without a definition has none
    await fs.mkdir("testB")
    with pytest.raises(pyfuse3.FUSEError) as e:
        await fs.lookup("testB/leases")
    assert errno_of(e) == errno.ENOENT


def test_the_kinds_that_only_add_entries_are_event_kinds() -> None:
    """The notifier's pump skips the search for vanished entries after
    these (a misspelt kind would make it skip nothing, silently)."""
    from netfs.core import EVENT_KINDS
    from netfs.fs.notifier import ONLY_ADDS

    assert ONLY_ADDS <= EVENT_KINDS
    assert not ONLY_ADDS & {"stopped", "undefined", "updated", "port-deleted", "defined"}


def test_the_filesystem_hides_exactly_the_cores_internal_event_kinds() -> None:
    from netfs.core import EVENT_KINDS, INTERNAL_KINDS

    assert tree.HIDDEN_EVENTS == INTERNAL_KINDS and INTERNAL_KINDS <= EVENT_KINDS
