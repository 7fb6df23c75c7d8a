"""A virtual network's firewall rules, put in place by ``nft`` in the managed
namespace (rules and table layout: :mod:`netfs.model.firewall`).

Every change is one ``nft -f`` transaction: a network's rules appear and
disappear at once, and a failed change leaves the table as it was. Reading
is one ``nft list table inet netfs`` for everything (recovery and repair
read the ruleset once, whatever the number of networks). Only the table
``inet netfs`` is ever listed or changed.

As start steps (signature of :class:`netfs.subdrivers.virtual.Step`):
``start_step`` (apply) and ``stop_step`` (remove). Recovery and the repair
loop call :func:`repair` with every active network.

Errors: NetfsError; a missing ``nft`` names the program and its package
(ENOENT, from :mod:`netfs.nsexec`), a refused transaction is EIO with nft's
own words.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import socket
import struct
import threading
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import trio

from netfs import nsexec
from netfs.errors import NetfsError
from netfs.model import firewall as model
from netfs.model.firewall import Diff, Listing, NetRules
from netfs.model.network import NetworkDef

__all__ = [
    "Report",
    "apply",
    "changes",
    "check",
    "listing",
    "monitor",
    "parse",
    "read",
    "read_text",
    "remove",
    "repair",
    "start_step",
    "stop_step",
]

log = logging.getLogger(__name__)

NFT = "nft"
_LIST = [NFT, "list", "table", model.FAMILY, model.TABLE]
_COUNTER = re.compile(r"counter packets [0-9]+ bytes [0-9]+")


@dataclass
class Report:
    """What :func:`check` found or :func:`repair` put right: the active
    networks whose rules were missing or changed, the networks whose rules
    were there although they are not active (orphans), and whether the
    table's own chains and maps were damaged."""

    diffs: list[Diff] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    base_ok: bool = True
    text: str = ""  # the table as read (with counters), before any change
    # the same, parsed (rules without counters, each chain's block as printed)
    listing: Listing = field(default_factory=Listing)

    @property
    def clean(self) -> bool:
        return not self.diffs and not self.orphans and self.base_ok


# one change at a time per namespace: a repair builds its script from what
# it read, and must not interleave with a start or stop of this process
_locks: dict[tuple[int, str | None], trio.Lock] = {}


def _lock(netns: str | None) -> trio.Lock:
    key = (id(trio.lowlevel.current_trio_token()), netns)
    lock = _locks.get(key)
    if lock is None:
        lock = _locks[key] = trio.Lock()
    return lock


# Every transaction of netfs's own ends by adding and deleting this chain:
# `nft monitor` shows it, so :func:`monitor` tells netfs's changes from
# anyone else's without knowing nft's process id.
MARK = "netfs_own"
_MARK_LINES = f"add chain {model.QTABLE} {MARK}\ndelete chain {model.QTABLE} {MARK}\n"


# transactions of this process per namespace (started, failed ones too): a
# read of the table is still what is there if none ran since (:func:`changes`)
_changes: dict[str | None, int] = {}


def changes(netns: str | None) -> int:
    """How many transactions this process has run in the namespace so far:
    a listing read when this was N still shows netfs's own rules as they are
    if it is still N (changes by others are the monitor's business)."""
    return _changes.get(netns, 0)


async def _run(netns: str | None, script: str, what: str) -> None:
    _changes[netns] = _changes.get(netns, 0) + 1
    try:
        await nsexec.run(netns, [NFT, "-f", "-"], stdin=(script + _MARK_LINES).encode())
    except NetfsError as e:
        if e.errno == errno.ENOENT:
            raise
        raise NetfsError(e.errno, f"{what}: {e.message}") from None


async def _list(netns: str | None, *, stateless: bool) -> str:
    argv = [NFT, "-s", *_LIST[1:]] if stateless else _LIST
    done = await nsexec.run(netns, argv, check=False)
    if done.returncode == 0:
        return done.stdout.decode("utf-8", "replace")
    if b"No such file or directory" in done.stderr:
        return ""  # no table yet: nothing of ours is there
    raise NetfsError(errno.EIO, f"cannot read the firewall rules: nft: {nsexec.words(done)}")


# NETLINK_NETFILTER: the ruleset's generation (NFT_MSG_GETGEN), which every
# committed transaction of any process raises
_NETLINK_NETFILTER = 12
_GETGEN = (10 << 8) | 16  # NFNL_SUBSYS_NFTABLES, NFT_MSG_GETGEN
_NEWGEN = (10 << 8) | 15
_NLMSG_ERROR = 2
_NFTA_GEN_ID = 1
NFNLGRP_NFTABLES = 7  # the multicast group `nft monitor` listens to


def _generation_sync(netns: str | None) -> int:
    fd = nsexec.open_netns(netns) if netns else None
    box: list[socket.socket] = []
    error: list[BaseException] = []

    def make() -> None:  # a thread of its own: setns() changes only it
        try:
            if fd is not None:
                nsexec.setns_fd(fd)
            box.append(
                socket.socket(
                    socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, _NETLINK_NETFILTER
                )
            )
        except BaseException as e:
            error.append(e)

    try:
        t = threading.Thread(target=make, name="netfs-nftgen")
        t.start()
        t.join()
    finally:
        if fd is not None:
            os.close(fd)
    if error:
        raise error[0]
    with box[0] as sock:
        sock.settimeout(5.0)
        body = struct.pack("=BBH", socket.AF_UNSPEC, 0, 0)
        sock.send(struct.pack("=LHHLL", 16 + len(body), _GETGEN, 1, 1, 0) + body)  # NLM_F_REQUEST
        data = sock.recv(65536)
    off = 0
    while off + 16 <= len(data):
        length, typ, _flags, _seq, _pid = struct.unpack_from("=LHHLL", data, off)
        if length < 16:
            break
        if typ == _NLMSG_ERROR:
            code = -struct.unpack_from("=i", data, off + 16)[0]
            raise OSError(code, os.strerror(code))
        if typ == _NEWGEN:
            a = off + 20  # nlmsghdr + nfgenmsg
            while a + 4 <= off + length:
                alen, atype = struct.unpack_from("=HH", data, a)
                if alen < 4:
                    break
                if atype & 0x3FFF == _NFTA_GEN_ID and alen >= 8:
                    return int(struct.unpack_from(">I", data, a + 4)[0])
                a += (alen + 3) & ~3
        off += (length + 3) & ~3
    raise OSError(errno.EPROTO, "no generation in the kernel's answer")


async def generation(netns: str | None) -> int | None:
    """The namespace's ruleset generation: the same number twice means no
    table of the namespace changed in between. None if it cannot be read."""
    try:
        return await trio.to_thread.run_sync(_generation_sync, netns)
    except (OSError, NetfsError) as e:
        log.debug("ruleset generation: %s", e)
        return None


def monitor_subscribed(pid: int) -> bool:
    """Does process ``pid`` hold a netfilter netlink socket subscribed to
    nftables' changes (an `nft monitor` ready to print them)? False also
    when it cannot be told."""
    try:
        inodes = set()
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    inodes.add(link[len("socket:[") : -1])
        with open(f"/proc/{pid}/net/netlink") as f:
            next(f, None)
            for line in f:
                cols = line.split()
                if (
                    len(cols) >= 10
                    and cols[1] == str(_NETLINK_NETFILTER)
                    and cols[-1] in inodes
                    and int(cols[3], 16) & (1 << (NFNLGRP_NFTABLES - 1))
                ):
                    return True
    except (OSError, ValueError):
        pass
    return False


async def read(netns: str | None) -> Listing:
    """The table read once (counters left out, for comparison)."""
    return model.parse_listing(await _list(netns, stateless=True))


async def read_text(netns: str | None) -> str:
    """The table as ``nft list`` prints it (counters included; '' when it
    does not exist): what :func:`repair` may be given as ``text``."""
    return await _list(netns, stateless=False)


def parse(text: str) -> Listing:
    """A listing with counters, parsed once: each chain's block as printed
    (``Listing.text``, what :func:`render_listing` shows) and its rules
    without the counters' values (what is compared with what is expected)."""
    lst = model.parse_listing(text)
    for nr in lst.nets.values():
        for c, rules in nr.chains.items():
            nr.chains[c] = [_COUNTER.sub("counter", r) for r in rules]
    for c, (hook, rules) in lst.base.items():
        lst.base[c] = (hook, [_COUNTER.sub("counter", r) for r in rules])
    return lst


async def apply(netns: str | None, net: NetworkDef) -> None:
    """Put a network's rules in place, in one transaction (the table, its
    maps and base chains are made if missing). Idempotent: applying again
    replaces the network's rules, it never duplicates them. Nothing for
    mode open and the non-virtual modes."""
    script = model.add_script(net)
    if not script:
        return
    async with _lock(netns):
        await _run(netns, script, f"cannot add the firewall rules of network '{net.name}'")


async def remove(netns: str | None, net: NetworkDef | str) -> None:
    """Remove a network's rules in one transaction. Given the definition
    they were made from (the live one, at stop), no read is needed; given
    only a name, or when the rules were changed behind our back so that
    the direct removal is refused, the table is read and whatever belongs
    to the network is removed. Nothing there: nothing done."""
    name = net if isinstance(net, str) else net.name
    what = f"cannot remove the firewall rules of network '{name}'"
    async with _lock(netns):
        if isinstance(net, NetworkDef):
            script = model.remove_script(net)
            if not script:
                return
            try:
                await _run(netns, script, what)
                return
            except NetfsError as e:
                if e.errno == errno.ENOENT:
                    raise
                log.info("network %s: direct removal refused (%s); reading the table", name, e)
        found = (await read(netns)).found(name)
        if not found.empty():
            await _run(netns, model.remove_script(found), what)


async def listing(netns: str | None, name: str) -> str:
    """What ``NAME/firewall`` shows: the network's part of the table as
    ``nft list`` prints it (its map elements and its chains, with their
    counters), inside the ``table inet netfs { }`` block; '' when the
    network has no rules in place."""
    text = await _list(netns, stateless=False)
    return render_listing(model.parse_listing(text), name)


def render_listing(lst: Listing, name: str) -> str:
    found = lst.found(name)
    if found.empty():
        return ""
    blocks: list[list[str]] = []
    for m, (typ, interval) in model.MAPS.items():
        elems = found.elements.get(m)
        if not elems:
            continue
        block = [f"\tmap {m} {{", f"\t\ttype {typ} : verdict"]
        if interval:
            block.append("\t\tflags interval")
        items = [f"{model.key_text(m, k)} : jump {c}" for k, c in elems.items()]
        block.append("\t\telements = { " + ", ".join(items) + " }")
        block.append("\t}")
        blocks.append(block)
    blocks += [lst.text[c] for c in found.chains if c in lst.text]
    lines = [f"table {model.QTABLE} {{"]
    for i, block in enumerate(blocks):
        if i:
            lines.append("")
        lines += block
    lines.append("}")
    return "\n".join(lines) + "\n"


def _report(
    lst: Listing, nets: Sequence[NetworkDef], diffs: list[Diff], orphans: list[NetRules]
) -> Report:
    if lst.exists:
        base_ok = lst.base_ok()
    else:  # no table: fine as long as no network needs one
        base_ok = all(model.expected_rules(n).empty() for n in nets)
    return Report(diffs, [o.name for o in orphans], base_ok)


async def check(
    netns: str | None, nets: Sequence[NetworkDef], *, keep: Collection[str] = ()
) -> Report:
    """Read the table once and compare: which of ``nets`` (the active
    networks) have rules missing or changed, which rules belong to no
    network of ``nets`` (orphans). Changes nothing."""
    lst = await read(netns)
    _script, diffs, orphans = model.repair_script(list(nets), lst, keep)
    return _report(lst, nets, diffs, orphans)


def _plan(
    text: str, nets: list[NetworkDef], keep: Collection[str]
) -> tuple[Listing, str, list[Diff], list[NetRules]]:
    lst = parse(text)
    script, diffs, found_orphans = model.repair_script(nets, lst, keep)
    return lst, script, diffs, found_orphans


async def repair(
    netns: str | None,
    nets: Sequence[NetworkDef],
    *,
    keep: Collection[str] = (),
    orphans: bool = True,
    text: str | None = None,
) -> Report:
    """Make the table what ``nets`` (every active network) expect, reading
    it once and changing it in one transaction: missing or changed rules
    put back (no duplicates), orphans removed, the base chains and maps put
    back. ``keep``: names of networks in the middle of a start or stop,
    whose rules are left as they are (neither put back nor orphans).
    Returns what was wrong (clean: nothing was done) and the table as
    read (``Report.text``, counters included: what ``listing`` renders).
    With ``orphans=False`` the rules of other networks stay (their state is
    unknown) and each damaged network is applied again on its own.
    ``text``: the table as :func:`read_text` read it a moment ago (none of
    this process's transactions ran since: :func:`changes`), instead of a
    read now. Parsing and comparing run in a worker thread (200 networks:
    ~20 ms that would hold up the event loop)."""
    async with _lock(netns):
        if text is None:
            text = await _list(netns, stateless=False)
        lst, script, diffs, found_orphans = await trio.to_thread.run_sync(
            _plan, text, list(nets), keep
        )
        report = _report(lst, nets, diffs, found_orphans)
        report.text = text
        report.listing = lst
        if not orphans:
            report.orphans = []
            by_name = {n.name: n for n in nets}
            for d in diffs:
                net = by_name[d.name]
                await _run(netns, model.add_script(net), f"cannot repair the rules of {d.name}")
        elif script:
            await _run(netns, script, "cannot repair the firewall rules")
        for d in diffs:
            log.info("network %s: firewall rules %s, put back: %s", d.name, d.state, d.details)
        for o in report.orphans:
            log.info("firewall rules of inactive network %s removed", o)
        return report


# ------------------------------------------------------------ changes


def _foreign(batch: list[str]) -> bool:
    """One transaction as `nft monitor` prints it: does it touch our table,
    and was it made by someone other than netfs?"""
    ours = f" {model.QTABLE} "
    touches = any(ours in f"{line} " for line in batch)
    return touches and not any(f"chain {model.QTABLE} {MARK}" in line for line in batch)


async def monitor(
    netns: str | None,
    notify: Callable[[list[str]], None],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Watch the namespace's ruleset with `nft monitor` until cancelled and
    call ``notify(lines)`` after each transaction that changed ``table inet
    netfs`` and was not made by netfs (a rule deleted, a chain flushed, the
    table deleted ...), with that transaction as nft printed it (for the
    log): the moment to :func:`repair`. Costs nothing while nobody touches
    the table (no polling). Changes made before ``started`` may be missed:
    repair once after it (recovery does)."""
    proc = nsexec.Watcher(netns, [NFT, "monitor"])
    try:
        task_status.started()
        buf = b""
        batch: list[str] = []
        async for chunk in proc.stdout:
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for raw in lines:
                line = raw.decode("utf-8", "replace")
                if line.startswith("# new generation"):
                    if _foreign(batch):
                        notify(batch)
                    batch = []
                elif line:
                    batch.append(line)
        raise NetfsError(errno.EIO, "nft monitor exited")
    finally:
        with trio.CancelScope(shield=True):
            if proc.returncode is None:
                proc.kill()
            await proc.wait()


# ------------------------------------------------------------ start steps


class _InNamespace(Protocol):
    @property
    def netns(self) -> str | None: ...


async def start_step(net: NetworkDef, nl: _InNamespace) -> None:
    """Start step: the network's rules (libvirt adds them before the
    bridge's addresses)."""
    await apply(nl.netns, net)


async def stop_step(net: NetworkDef, nl: _InNamespace) -> None:
    """Stop step (and undo of a failed start): the network's rules go."""
    await remove(nl.netns, net)
