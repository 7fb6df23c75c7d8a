"""The tree as it is now: the declaration of :mod:`netfs.fs.tree` over the core.

:class:`Space` answers what the request handlers ask — is this path there,
what does it list, what does it show, may it be written — and holds the
presentation state the core does not know: directories made by ``mkdir``
that have no definition (or port) yet ("pending"), editors' scratch files,
inode numbers, modification times, formatted documents. What a write
stores and what a directory's make and drop hooks do is in
:mod:`netfs.fs.acts`. No pyfuse3 here: errors are NetfsError.
"""

from __future__ import annotations

import errno
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Union

from netfs.errors import NetfsError
from netfs.fs import tree
from netfs.fs.scratch import ScratchStore
from netfs.fs.tree import Core, Dir, File, Node, Path, Presence
from netfs.model.xmlsafe import MAX_INPUT_BYTES

if TYPE_CHECKING:
    from netfs.core import NetworkState
    from netfs.fs.notifier import Notifier

log = logging.getLogger("netfs.fs")

ROOT_INODE = 1
# the largest document handle buffer or editor scratch file: what a document
# may be at parse time (a larger size fails at once with EFBIG)
MAX_FILE_BYTES = MAX_INPUT_BYTES


class _Unset:
    """ "Not fetched yet", for a network state argument."""


UNSET = _Unset()
# a network's state argument: known (a state, or None: no such network) or UNSET
StateArg = Union["NetworkState", None, _Unset]


@dataclass
class Pending:
    """A network directory made by mkdir, without a definition yet."""

    error: str = ""
    seq: int = 0  # how many errors were recorded for it


class Space:
    """The live tree (see the module docstring)."""

    def __init__(self, core: Core, *, gid: int | None = None) -> None:
        self.core = core
        self.uid = 0
        self.gid = gid if gid is not None else 0
        self.group_writable = gid is not None
        self.notifier: Notifier  # set by the notifier itself
        self._next_ino = itertools.count(ROOT_INODE + 1)
        self.inos: dict[Path, int] = {(): ROOT_INODE}
        # inode -> its path and declared type (None: a scratch file)
        self.nodes: dict[int, tuple[Path, Node | None]] = {ROOT_INODE: ((), tree.ROOT)}
        # network -> the inodes of its cacheable files (what a change of its
        # state must invalidate in the kernel: content and size)
        self.cached_inos: dict[str, set[int]] = {}
        # networks whose cacheable files the kernel may hold something of
        # (a size, content) since their last invalidation: the adapter adds
        # a network when it replies with such a file's attributes, opens one
        # through the page cache, or answers a READ of one
        self.exposed: set[str] = set()
        self.pending: dict[str, Pending] = {}
        self.pending_ports: dict[str, set[str]] = {}
        self.scratch = ScratchStore()
        self.mtimes: dict[Path, int] = {}
        self.start_ns = time.time_ns()
        # formatted documents: path -> (the object formatted, its bytes)
        self._texts: dict[Path, tuple[object, bytes | None]] = {}

    # ================================================================ inodes

    def ino(self, path: Path) -> int:
        ino = self.inos.get(path)
        if ino is None:
            ino = next(self._next_ino)
            self.inos[path] = ino
            node = tree.resolve(path)
            self.nodes[ino] = (path, node)
            if isinstance(node, File) and node.cacheable:
                self.cached_inos.setdefault(path[0], set()).add(ino)
        return ino

    def new_ino(self) -> int:
        return next(self._next_ino)

    def node(self, ino: int) -> tuple[Path, Node | None]:
        """The path and declared type of inode `ino` (ENOENT: forgotten)."""
        hit = self.nodes.get(ino)
        if hit is None:
            raise NetfsError(errno.ENOENT, "no such inode")
        return hit

    def drop_inos(self, prefix: Path) -> None:
        """The kernel marks a removed directory's inode dead for good: a
        directory made later under the same name must get new inode numbers
        (with the old ones it would be listed but refuse every lookup and
        create in it with ENOENT)."""
        k = len(prefix)
        for p in [p for p in self.inos if p[:k] == prefix]:
            ino = self.inos.pop(p)
            hit = self.nodes.get(ino)
            if hit is not None and hit[0] == p:
                del self.nodes[ino]
            cached = self.cached_inos.get(p[0]) if p else None
            if cached is not None:
                cached.discard(ino)

    # ================================================================ the core's view

    def state(self, name: str) -> NetworkState | None:
        try:
            return self.core.get(name)
        except NetfsError:
            return None

    def network_names(self) -> list[str]:
        return sorted(set(self.core.names()) | set(self.pending))

    def port_names(self, name: str, st: NetworkState | None) -> list[str]:
        names = set(self.pending_ports.get(name, ()))
        if st is not None:
            names.update(st.ports)
        return sorted(names)

    # ================================================================ pending

    def is_pending(self, name: str, st: StateArg = UNSET) -> bool:
        """Is `name` a directory made by mkdir that has no definition yet? A
        pending name the core has now (defined through the mount, or from
        the config directory at SIGHUP) is adopted on the way: from then on
        it is an ordinary network directory."""
        if name not in self.pending:
            return False
        if isinstance(st, _Unset):
            st = self.state(name)
        if st is None:
            return True
        self._adopt(name)
        return False

    def _adopt(self, name: str) -> None:
        """The core has the pending network `name`: drop the pending state.
        The directory's last error stays the network's error (a success
        leaves the last error in place), unless the core recorded one of its
        own already; it is the same error, so it is not announced again."""
        p = self.pending.pop(name)
        st = self.state(name)
        if not p.error or st is None or st.error_seq:
            return
        self.core.set_error(name, p.error, logged=True)  # logged when it was recorded
        told = tree._error_text(p.error) + b"\0%d" % p.seq
        self.notifier.reannounced_error(name, told)

    def add_pending(self, name: str) -> None:
        self.pending[name] = Pending()

    def pending_error(self, name: str) -> str:
        p = self.pending.get(name)
        return p.error if p is not None else ""

    def pending_error_seq(self, name: str) -> int:
        p = self.pending.get(name)
        return p.seq if p is not None else 0

    def is_pending_port(self, name: str, port: str) -> bool:
        ports = self.pending_ports.get(name)
        return ports is not None and port in ports

    # ================================================================ presence

    def exists(self, path: Path, own: bool = False, st: StateArg = UNSET) -> bool:
        """Is `path` in the tree (as everyone sees it, or as the notifier's
        helper sees it when `own`: only what has been announced)? `st`: the
        network's state, when known."""
        if not path:
            return True
        if path in self.scratch.by_path:
            return True
        if len(path) == 1 and path[0] in tree.ROOT.entries:
            return True  # the root's own files (events)
        name = path[0]
        if isinstance(st, _Unset):
            st = self.state(name)
        if own:
            pub = self.notifier.published.get(name)
            if pub is None:
                return False
        else:
            pub = None
            if st is None and name not in self.pending:
                return False
        node: Node = tree.NETWORK
        last = len(path) - 1
        for i in range(1, last + 1):
            if not isinstance(node, Dir):
                return False
            sub = path if i == last else path[: i + 1]
            child = node.entries.get(path[i])
            if child is not None:
                if pub is not None and child.presence in (Presence.DEFINED, Presence.ACTIVE):
                    if sub not in pub:
                        return False
                elif not self.present(child, sub, st):
                    return False
            elif node.item is not None and node.items is not None:
                if pub is not None:
                    if sub not in pub:
                        return False
                elif path[i] not in node.items(self, path[:i], st):
                    return False
                child = node.item
            else:
                return False
            node = child
        return True

    def present(self, node: Node, path: Path, st: NetworkState | None) -> bool:
        """Is the fixed entry `node` at `path` there (its parent being there)?"""
        p = node.presence
        if p is Presence.ALWAYS:
            return True
        if p is Presence.DEFINED:
            return st is not None
        if p is Presence.ACTIVE:
            return st is not None and st.active
        # SHOWN: also when showing it fails (a portgroup whose profile
        # conflicts with the network's still lists and stats)
        try:
            return self.content(path, st, node) is not None
        except NetfsError:
            return True

    def listing(self, path: Path, node: Dir) -> list[str]:
        st = self.state(path[0]) if path else None
        names = [
            e
            for e, child in node.entries.items()
            if not path or self.present(child, path + (e,), st)
        ]
        if node.items is not None:
            # a network called "events" (from the config directory) is
            # shadowed by the events file: listed once
            names += [i for i in node.items(self, path, st) if i not in node.entries]
        return names + self.scratch.names_in(path)

    def writable(self, path: Path, node: Node | None) -> bool:
        if path in self.scratch.by_path:
            return True
        if node is None:
            return False
        if isinstance(node, Dir):
            return node.writable
        return node.write is not None

    # ================================================================ content

    def content(
        self,
        path: Path,
        st: StateArg = UNSET,
        node: Node | None = None,
    ) -> bytes | None:
        """The bytes a read of `path` shows now (None: it has none). `st` is
        the network's state when the caller already has it."""
        if node is None:
            node = tree.resolve(path)
        if not isinstance(node, File) or node.show is None:
            return None
        name = path[0]
        if isinstance(st, _Unset):
            st = self.state(name)
        if name in self.pending:
            self.is_pending(name, st)  # adopted once the core has it
        return node.show(self, path, st)

    def safe_content(
        self, path: Path, st: StateArg = UNSET, node: Node | None = None
    ) -> bytes | None:
        try:
            return self.content(path, st, node)
        except NetfsError:
            return None

    def cached(
        self, path: Path, version: object, make: Callable[..., str | None], *args: str
    ) -> bytes | None:
        """Documents are formatted once per version: the core replaces (never
        mutates) a definition, a live definition or a port when it changes,
        so the formatted text is cached keyed on that object's identity."""
        hit = self._texts.get(path)
        if hit is not None and hit[0] is version:
            return hit[1]
        text = make(*args)
        data = None if text is None else text.encode()
        self._texts[path] = (version, data)
        return data

    def touched(self, path: Path) -> None:
        self.mtimes[path] = time.time_ns()

    # ================================================================ errors

    def record(self, name: str, message: str) -> None:
        """A failure found above the core: it becomes the network's error."""
        p = self.pending.get(name)
        if p is not None and self.is_pending(name):
            p.error = message
            p.seq += 1
            log.warning("network %s: %s", name, message)
        else:
            self.core.set_error(name, message)
        self.notifier.queue_reconcile(name)

    def check_size(self, path: Path, size: int) -> None:
        """A document buffer or scratch file may not grow past the document
        limit: EFBIG at once, with the reason in the network's error, and
        nothing allocated."""
        if size <= MAX_FILE_BYTES:
            return
        if path and (self.state(path[0]) is not None or path[0] in self.pending):
            self.record(
                path[0],
                f"{'/'.join(path[1:])}: size {size} is larger than the limit of 1 MiB"
                f" ({MAX_FILE_BYTES} bytes) for a document or an editor's temporary file",
            )
        raise NetfsError(errno.EFBIG, "too large")

    def refuse_reserved(self, dirpath: Path, dirnode: Dir, name: str) -> None:
        """Creating a file with the name of an entry of the tree: EACCES (a
        read-only file, like status.xml of an inactive network), but ENOENT
        in a directory made by mkdir that has no definition yet: `active`,
        `uuid` and the rest do not exist there."""
        entry = dirnode.entries.get(name)
        if entry is None:
            return
        if entry.presence in (Presence.DEFINED, Presence.ACTIVE) and self.is_pending(dirpath[0]):
            self.record(dirpath[0], f"network '{dirpath[0]}' has no definition yet")
            raise NetfsError(errno.ENOENT, "no definition yet")
        raise NetfsError(errno.EACCES, "an entry of the tree")

    # ================================================================ structure

    def forget_net(self, name: str) -> None:
        """The network directory `name` is gone (for watchers too)."""
        self.pending_ports.pop(name, None)
        for p in [p for p in self._texts if p[0] == name]:
            del self._texts[p]
        self.scratch.drop_under((name,))
        self.notifier.forget(name)

    def transient(self, name: str, st: NetworkState | None) -> set[tuple[Path, str]]:
        """The entries of network `name` that come and go while it stays
        (status.xml, portgroups, ports), as (parent, name)."""
        out: set[tuple[Path, str]] = set()
        if st is None:
            return out
        top = (name,)
        for e, child in tree.NETWORK.entries.items():
            if child.presence is Presence.ACTIVE and st.active:
                out.add((top, e))
            if isinstance(child, Dir) and child.items is not None:
                sub = top + (e,)
                out.update((sub, i) for i in child.items(self, sub, st))
        return out
