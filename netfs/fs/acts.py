"""What the tree's writes and directory hooks do: store a value through the
core, make and drop network and port directories.

The declaration (:mod:`netfs.fs.tree`) names these: a file's store function
(its ``flag`` or ``document``) is the core call alone; :func:`store_flag`
and :func:`store_document` wrap it with what every write needs (the error a
refused value leaves, the pending directory adopted, the notifier told,
stale dentries dropped). No pyfuse3 here: errors are NetfsError.
"""

from __future__ import annotations

import errno
import logging
import os
from typing import TYPE_CHECKING

from netfs.errors import NetfsError
from netfs.state import check_name

if TYPE_CHECKING:
    from netfs.core import NetworkState
    from netfs.fs.space import Space
    from netfs.fs.tree import File, Path

log = logging.getLogger("netfs.fs")

# directories made by mkdir that have no definition yet (each costs memory)
MAX_PENDING_NETWORKS = 1024


def _check_new(sp: Space, path: Path, what: str) -> None:
    if sp.exists(path):
        raise NetfsError(errno.EEXIST, "exists")
    n = path[-1]
    try:
        check_name(n, what)  # the rules the core applies when it saves
        if "\n" in n:  # libvirt refuses it in a name: never definable
            raise NetfsError(errno.EINVAL, f"invalid char in {what} name '{n}'")
    except NetfsError as e:
        if len(path) > 1:
            sp.record(path[0], e.message)
        else:
            log.warning("%s", e.message)
        raise NetfsError(errno.EINVAL, e.message) from None


async def make_network(sp: Space, path: Path) -> None:
    _check_new(sp, path, "network")
    if len(sp.pending) >= MAX_PENDING_NETWORKS:
        log.warning("%d network directories wait for a definition: none more", len(sp.pending))
        raise NetfsError(errno.ENOSPC, "too many network directories without a definition")
    name = path[0]
    sp.add_pending(name)
    sp.notifier.made_pending_network(name)


async def make_port(sp: Space, path: Path) -> None:
    if sp.state(path[0]) is None:
        raise NetfsError(errno.EPERM, "no such network")
    _check_new(sp, path, "port")
    sp.pending_ports.setdefault(path[0], set()).add(path[2])
    sp.notifier.publish(path)


async def drop_network(sp: Space, path: Path) -> None:
    name = path[0]
    if sp.is_pending(name):
        del sp.pending[name]
    elif sp.state(name) is None:
        raise NetfsError(errno.ENOENT, "no such network")
    else:
        await sp.core.undefine(name, if_active="refuse")
    sp.forget_net(name)


async def drop_port(sp: Space, path: Path) -> None:
    name, port = path[0], path[2]
    if sp.is_pending_port(name, port):
        sp.pending_ports[name].discard(port)
    elif not sp.exists(path):
        raise NetfsError(errno.ENOENT, "no such port")
    else:
        try:
            await sp.core.delete_port(name, port)
        finally:
            await sp.notifier.invalidate_net(name)  # status.xml's connections
            sp.notifier.queue_reconcile(name)
    sp.notifier.unpublish(path)
    sp.scratch.drop_under(path)


SHOWN_BYTES = 40  # of a refused value, in the network's error


async def store_flag(sp: Space, path: Path, node: File, buf: bytes) -> None:
    """A write to a 0/1 file: it acts at once."""
    name = path[0]
    value = {b"0": False, b"0\n": False, b"1": True, b"1\n": True}.get(bytes(buf))
    if value is None:
        # every byte shown, control characters and bytes past ASCII
        # escaped ('1\n\n', '\xff'); a long value cut, and marked so
        shown = repr(bytes(buf[:SHOWN_BYTES]))[1:] + ("..." if len(buf) > SHOWN_BYTES else "")
        sp.record(name, f"invalid value for {node.name}: {shown} (write 0 or 1)")
        raise NetfsError(errno.EINVAL, "write 0 or 1")
    assert node.flag is not None
    # what a 0 may remove (a 1 removes no entry: a start adds status.xml)
    before = None if value else sp.state(name)
    try:
        await node.flag(sp.core, path, value)
    finally:
        # the kernel's cached copies go before anyone hears of the change
        await sp.notifier.invalidate_net(name)
        sp.notifier.written(path, node)
        sp.notifier.queue_reconcile(name)
        await drop_stale_entries(sp, name, before)


def privileged(uid: int) -> bool:
    """May a writer with this uid define what only root may
    (<dnsmasq:options>)? Root, and the daemon's own user (a user session:
    its dnsmasq runs as that user anyway); not a member of --group."""
    return uid == 0 or uid == os.geteuid()


async def store_document(
    sp: Space,
    path: Path,
    node: File,
    data: bytes,
    *,
    uid: int,
    renamed: bool = False,
) -> None:
    """A document written (at close or fsync) or renamed onto `path` by a
    process of user `uid` (the writer who opened it, or who renamed)."""
    name = path[0]
    pending = sp.is_pending(name)
    before = None if pending else sp.state(name)
    assert node.document is not None
    try:
        try:
            await node.document(sp.core, path, data, privileged(uid))
        except NetfsError as e:
            p = sp.pending.get(name)
            if p is not None and sp.is_pending(name):
                p.error = e.message
                p.seq += 1
                log.warning("network %s: %s", name, e.message)
            raise
        if pending:
            sp.is_pending(name)  # adopted, with its error
        if len(path) > 2 and path[2] in sp.pending_ports.get(name, ()):
            sp.pending_ports[name].discard(path[2])
        await drop_stale_entries(sp, name, before)
    finally:
        await sp.notifier.invalidate_net(name)  # before the store returns
        sp.notifier.queue_reconcile(name)
    if node.watched:
        sp.touched(path)
    if not renamed:
        # the kernel keeps the size the writer left; the saved document
        # is the canonical form, of another size: drop the entry so the
        # next open looks it up again (`>>` appends at the real end).
        # Never from rename(): the kernel holds the directory's lock
        # until rename returns (and a renamed-over entry is new anyway).
        await sp.notifier.drop_entries([(path[:-1], path[-1])])


async def drop_stale_entries(sp: Space, name: str, before: NetworkState | None) -> None:
    """Entries that a change made through a handler removed (status.xml
    after a stop, the ports it freed, portgroups a redefinition dropped)
    may sit in the kernel's dentry cache for the entry timeout: drop them
    before the write returns, so that `echo 0 > active; [ -e status.xml ]`
    is false at once."""
    if before is None:
        return
    gone = sp.transient(name, before) - sp.transient(name, sp.state(name))
    await sp.notifier.drop_entries(sorted(gone))
