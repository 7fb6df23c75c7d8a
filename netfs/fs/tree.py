"""The tree of filesystem.md, declared once (configfs-style).

Each directory type lists its entries — name, file or directory, how a file
is shown (a function of the core's state), how a write to it is stored (a
function calling the core), whether it is polled and watched, when it is
present — and, for directories whose children are named by the user or the
core (networks, portgroups, ports), the type of those children, how they are
listed, and the make/drop hooks of ``mkdir``/``rmdir``. Lookup, listing,
attributes, content, writability and notification all read this declaration
(:mod:`netfs.fs.space`, :mod:`netfs.fs.notifier`, :mod:`netfs.fs.ops`).

Adding an attribute file to a network is one :class:`File` in
:data:`NETWORK` (plus its paragraph in the man page), e.g.::

    File("leases", show=_show_leases, presence=Presence.DEFINED, polled=True, watched=True)

(``cacheable=True`` only if every change of its content is a change of the
core's network state or goes through a declared store.)

No pyfuse3 here.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, Union

import trio

from netfs.fs import acts

if TYPE_CHECKING:
    from netfs.core import Event, NetworkState
    from netfs.fs.space import Space
    from netfs.model.network import NetworkDef
    from netfs.model.port import NetworkPort

Path = tuple[str, ...]

# core event kinds that are not lines of `events` (kind "error" touches the
# `error` file only, "leases" the `leases` file, "firewall" the `firewall`
# file): netfs.core.INTERNAL_KINDS
HIDDEN_EVENTS = frozenset({"error", "leases", "firewall"})


class Core(Protocol):
    """What the filesystem needs from :class:`netfs.core.Driver`."""

    def names(self) -> list[str]: ...
    def get(self, name: str) -> NetworkState: ...
    def definition_xml(self, name: str) -> str: ...
    def status_xml(self, name: str) -> str | None: ...
    def port_xml(self, name: str, port: str) -> str: ...
    def port_virtualport_xml(self, name: str, port: str) -> str | None: ...
    def portgroup_virtualport_xml(self, name: str, portgroup: str) -> str | None: ...
    def set_error(self, name: str, message: str, *, logged: bool = False) -> None: ...
    def leases_text(self, name: str) -> str: ...
    def firewall_text(self, name: str) -> str: ...
    async def define(
        self, xml: bytes | str, *, name: str | None = None, privileged: bool = True
    ) -> str: ...
    async def undefine(self, name: str, *, if_active: str = "refuse") -> None: ...
    async def start(self, name: str) -> None: ...
    async def stop(self, name: str) -> None: ...
    async def set_autostart(self, name: str, on: bool) -> None: ...
    async def create_port(self, name: str, port: str, xml: bytes | str) -> NetworkPort: ...
    async def delete_port(self, name: str, port: str) -> None: ...
    def subscribe(self) -> trio.MemoryReceiveChannel[Event]: ...
    @property
    def events_emitted(self) -> int: ...
    def unsubscribe(self, ch: trio.MemoryReceiveChannel[Event]) -> None: ...


class Presence(enum.Enum):
    """When an entry is in its directory (the directory being there)."""

    ALWAYS = "always"  # also in a mkdir'd network directory without a definition
    DEFINED = "defined"  # while the network has a definition (announced: IN_CREATE)
    ACTIVE = "active"  # while the network is active (announced)
    SHOWN = "shown"  # while its show function gives content (or fails)


class Write(enum.Enum):
    """How writes to a file act."""

    FLAG = "flag"  # "0" or "1": each write acts at once (active, autostart)
    DOCUMENT = "document"  # buffered; acts at close, fsync, or a rename onto it


# how a file is shown: (space, its path, its network's state or None) -> bytes
Show = Callable[["Space", Path, "NetworkState | None"], "bytes | None"]
# how a write is stored: (core, the file's path, the value) -> the core call;
# a document's also gets whether its writer is privileged (root, or the
# daemon's own user): netfs.core.Driver.define's `privileged`
StoreFlag = Callable[[Core, Path, bool], Awaitable[None]]
StoreDocument = Callable[[Core, Path, bytes, bool], Awaitable[object]]
# the names of a directory's children, in listing order
Items = Callable[["Space", Path, "NetworkState | None"], Iterable[str]]
# mkdir/rmdir of a child directory (the child's path)
Hook = Callable[["Space", Path], Awaitable[None]]


@dataclass(frozen=True, eq=False)
class File:
    name: str
    show: Show | None = None  # None: a stream with its own handle (events)
    # how a write is stored (neither: read-only, 0444)
    flag: StoreFlag | None = None  # "0" or "1", acting at each write
    document: StoreDocument | None = None  # a document, acting at close
    presence: Presence = Presence.ALWAYS
    polled: bool = False  # poll() reports changes (POLLPRI|POLLERR)
    watched: bool = False  # the notifier announces changes (IN_MODIFY, IN_CLOSE_WRITE)
    # part of what was announced besides the content (the error's sequence
    # number: a new error with the same words is still a change)
    seq: Callable[[Space, str], int] | None = None
    # read through the kernel's page cache, kept across opens: the content
    # changes only with the core's state, and every such change invalidates
    # the network's cacheable files before it is visible (see
    # netfs.fs.notifier). False: every read asks the daemon (direct_io), for
    # content that changes without the network's state (or per reader).
    cacheable: bool = False
    # every content has this many bytes ("0\n" or "1\n"): a size the kernel
    # keeps from a reply of the attributes is never stale, so such a reply
    # exposes nothing of the network (see Space.exposed)
    size: int | None = None
    # how writes act, from the store given (None: read-only)
    write: Write | None = field(init=False, default=None)

    is_dir = False

    def __post_init__(self) -> None:
        write = Write.FLAG if self.flag else Write.DOCUMENT if self.document else None
        object.__setattr__(self, "write", write)


@dataclass(eq=False)
class Dir:
    kind: str  # root, network, portgroups, portgroup, ports, port
    entries: dict[str, Node] = field(default_factory=dict)
    presence: Presence = Presence.ALWAYS  # as an entry of its parent
    scratch: bool = False  # editors may create temporary files here
    # children named by the user or the core
    item: Dir | None = None
    items: Items | None = None
    make: Hook | None = None  # mkdir of a child (None: EPERM)
    drop: Hook | None = None  # rmdir of a child (None: EPERM)

    is_dir = True

    def child(self, name: str) -> Node | None:
        """The type of the entry `name` (fixed entries shadow items)."""
        node = self.entries.get(name)
        if node is not None:
            return node
        return self.item

    @property
    def writable(self) -> bool:
        """Something may be created here (mkdir, an editor's file): 0775 with --group."""
        return self.scratch or self.make is not None


Node = Union[File, Dir]  # noqa: UP007 (a runtime alias used before the classes exist)


# ================================================================ shows


def line(value: bool) -> bytes:
    return b"1\n" if value else b"0\n"


def _error_text(msg: str) -> bytes:
    return (msg.rstrip("\n") + "\n").encode() if msg else b""


def _show_definition(sp: Space, path: Path, st: NetworkState | None) -> bytes | None:
    if st is None:  # a mkdir'd directory's is empty until a definition is stored
        return b"" if sp.is_pending(path[0], st) else None
    return sp.cached(path, st.definition, sp.core.definition_xml, path[0])


def _show_error(sp: Space, path: Path, st: NetworkState | None) -> bytes | None:
    if st is None:
        return _error_text(sp.pending_error(path[0]))
    return _error_text(st.error)


def _error_seq(sp: Space, name: str) -> int:
    st = sp.state(name)
    return st.error_seq if st is not None else sp.pending_error_seq(name)


def _show_active(sp: Space, path: Path, st: NetworkState | None) -> bytes | None:
    return None if st is None else line(st.active)


def _show_autostart(sp: Space, path: Path, st: NetworkState | None) -> bytes | None:
    return None if st is None else line(st.autostart)


def _show_uuid(sp: Space, path: Path, st: NetworkState | None) -> bytes | None:
    return None if st is None else f"{st.uuid}\n".encode()


def _show_status(sp: Space, path: Path, st: NetworkState | None) -> bytes | None:
    if st is None or st.live is None:
        return None
    return sp.cached(path, st.live, sp.core.status_xml, path[0])


def _net(st: NetworkState) -> NetworkDef:
    """The definition portgroups are read from: the live one while active."""
    return st.live or st.definition


def _show_pg_default(sp: Space, path: Path, st: NetworkState | None) -> bytes | None:
    if st is None:
        return None
    return line(any(g.name == path[2] and g.default for g in _net(st).portgroups))


def _show_pg_virtualport(sp: Space, path: Path, st: NetworkState | None) -> bytes | None:
    if st is None:
        return None
    make = sp.core.portgroup_virtualport_xml
    return sp.cached(path, _net(st), make, path[0], path[2])


def _port(sp: Space, path: Path, st: NetworkState | None) -> NetworkPort | None:
    return st.ports.get(path[2]) if st is not None else None


def _show_port(sp: Space, path: Path, st: NetworkState | None) -> bytes | None:
    if sp.is_pending_port(path[0], path[2]):
        return b""  # a mkdir'd port directory: empty until a port is stored
    port = _port(sp, path, st)
    return None if port is None else sp.cached(path, port, sp.core.port_xml, path[0], path[2])


def _show_port_virtualport(sp: Space, path: Path, st: NetworkState | None) -> bytes | None:
    if sp.is_pending_port(path[0], path[2]):
        return None
    port = _port(sp, path, st)
    if port is None:
        return None
    return sp.cached(path, port, sp.core.port_virtualport_xml, path[0], path[2])


def _show_leases(sp: Space, path: Path, st: NetworkState | None) -> bytes | None:
    # one line per current lease (traffic.md's format, escaped by the core)
    return None if st is None else sp.core.leases_text(path[0]).encode(errors="surrogateescape")


def _show_firewall(sp: Space, path: Path, st: NetworkState | None) -> bytes | None:
    # the rules in place as `nft list` prints them; '' while inactive
    return None if st is None else sp.core.firewall_text(path[0]).encode(errors="surrogateescape")


# ================================================================ stores


async def _store_active(core: Core, path: Path, value: bool) -> None:
    if value:
        await core.start(path[0])
    else:
        await core.stop(path[0])


async def _store_autostart(core: Core, path: Path, value: bool) -> None:
    await core.set_autostart(path[0], value)


async def _store_definition(core: Core, path: Path, data: bytes, privileged: bool) -> object:
    return await core.define(data, name=path[0], privileged=privileged)


async def _store_port(core: Core, path: Path, data: bytes, privileged: bool) -> object:
    return await core.create_port(path[0], path[2], data)


# ================================================================ items and hooks


def _networks(sp: Space, path: Path, st: NetworkState | None) -> list[str]:
    return sp.network_names()


def _portgroups(sp: Space, path: Path, st: NetworkState | None) -> list[str]:
    return [pg.name for pg in _net(st).portgroups] if st is not None else []


def _ports(sp: Space, path: Path, st: NetworkState | None) -> list[str]:
    return sp.port_names(path[0], st)


# ================================================================ the tree

F_DEFINITION = "definition.xml"
F_ERROR = "error"
F_PORT = "port.xml"
F_VIRTUALPORT = "virtualport.xml"
EVENTS = File("events")
EVENTS_PATH: Path = (EVENTS.name,)

PORT = Dir(
    "port",
    {
        F_PORT: File(F_PORT, _show_port, document=_store_port, cacheable=True),
        F_VIRTUALPORT: File(
            F_VIRTUALPORT, _show_port_virtualport, presence=Presence.SHOWN, cacheable=True
        ),
    },
    scratch=True,
    make=None,
)

PORTGROUP = Dir(
    "portgroup",
    {
        "default": File("default", _show_pg_default, cacheable=True),
        # also present when the merge fails (conflicting profiles): the
        # directory still lists and stats, only reading it is EINVAL
        F_VIRTUALPORT: File(
            F_VIRTUALPORT, _show_pg_virtualport, presence=Presence.SHOWN, cacheable=True
        ),
    },
)

NETWORK = Dir(
    "network",
    {
        F_DEFINITION: File(
            F_DEFINITION,
            _show_definition,
            document=_store_definition,
            watched=True,
            cacheable=True,
        ),
        "active": File(
            "active",
            _show_active,
            flag=_store_active,
            presence=Presence.DEFINED,
            polled=True,
            watched=True,
            cacheable=True,
            size=2,
        ),
        "autostart": File(
            "autostart",
            _show_autostart,
            flag=_store_autostart,
            presence=Presence.DEFINED,
            polled=True,
            watched=True,
            cacheable=True,
            size=2,
        ),
        "status.xml": File(
            "status.xml", _show_status, presence=Presence.ACTIVE, watched=True, cacheable=True
        ),
        "uuid": File("uuid", _show_uuid, presence=Presence.DEFINED, watched=True, cacheable=True),
        # recorded also by failures above the core (a refused name at mkdir):
        # read from the daemon each time
        F_ERROR: File(F_ERROR, _show_error, polled=True, watched=True, seq=_error_seq),
        # changed by the core's internal "leases" event (a lease granted,
        # renewed, released) and by start/stop/"repaired firewall": the
        # notifier compares the watched files at every event of the network
        "leases": File(
            "leases", _show_leases, presence=Presence.DEFINED, polled=True, watched=True
        ),
        "firewall": File(
            "firewall", _show_firewall, presence=Presence.DEFINED, polled=True, watched=True
        ),
        "portgroups": Dir(
            "portgroups", presence=Presence.DEFINED, item=PORTGROUP, items=_portgroups
        ),
        "ports": Dir(
            "ports",
            presence=Presence.DEFINED,
            item=PORT,
            items=_ports,
            make=acts.make_port,
            drop=acts.drop_port,
        ),
    },
    scratch=True,
)

ROOT = Dir(
    "root",
    {"events": EVENTS},
    item=NETWORK,
    items=_networks,
    make=acts.make_network,
    drop=acts.drop_network,
)


def watched() -> list[File]:
    """The network directory's files the notifier compares and announces."""
    return [f for f in NETWORK.entries.values() if isinstance(f, File) and f.watched]


def resolve(path: Path) -> Node | None:
    """The declared type of `path` (None: nothing can be there)."""
    node: Node = ROOT
    for name in path:
        if not isinstance(node, Dir):
            return None
        child = node.child(name)
        if child is None:
            return None
        node = child
    return node
