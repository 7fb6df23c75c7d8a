"""The driver core: one engine for every way in.

Every change of a network goes through :class:`Driver`, whatever caused it: a
write through the mount, the daemon's own autostart or recovery, or a bridge
that vanished behind our back (the link monitor). The core keeps the
in-memory picture of all networks, serialises the transitions of one network
with a trio lock (different networks proceed concurrently), writes the state
store (:mod:`netfs.state`), asks the sub-driver of the network's forward mode
(:mod:`netfs.subdrivers`) to do the kernel work, and emits one
:class:`Event` per change to every subscriber.

Decisions (libvirt has no filesystem, so some are ours):

* Start of an active network and stop of an inactive one are no-op
  successes (writing the value a file already has changes nothing).
* A transition, once its lock is taken, runs shielded from cancellation: a
  half-done start or stop is worse than a slightly late cancel.
* Start order: stale port files removed, live = a copy of the definition,
  sub-driver start, **status file written last**, then marked active. If the
  status write fails the sub-driver's stop undoes the kernel work.
* Stop order: **status file removed first**, sub-driver stop (a failure is
  logged and recorded as the network's error but the network is stopped:
  libvirt ignores bridge-deletion errors too; a bridge that stays behind is
  tagged and removed at the next recovery), port files removed
  (``port-deleted`` each), marked inactive, a transient network disappears.
  Events: ``port-deleted``..., ``stopped``, then ``undefined`` for a
  transient network.
* Undefining an active network with ``if_active="transient"`` keeps it
  running as a transient network (libvirt); this emits ``updated`` (its
  directory stays, its config and autostart are gone) and ``undefined``
  follows its stop.
* A redefinition whose XML carries no ``<uuid>`` keeps the existing
  network's uuid (libvirt would generate one and then refuse the mismatch;
  for ``cat net.xml > definition.xml`` keeping it is what a user means).
  Likewise a virtual network's redefinition without ``<mac>`` or without a
  bridge name keeps the current ones instead of getting new generated ones.
* Writing the definition a network already has changes nothing: when the
  new definition (with the uuid, MAC and bridge name kept as above) formats
  exactly as the current persistent one, define succeeds without saving
  and without an event.
* Recovery at :meth:`Driver.startup`: a network with a status file is active
  if its sub-driver's ``is_running`` says so (then ``repair`` gives its bridge
  back what it lost); otherwise its status file and port files are removed
  and ``stopped`` is emitted (the state on disk said active; subscribers
  that exist this early learn it was found down). A status file that cannot
  be parsed is left in place and its network is inactive (its problem is the
  network's error). A bridge carrying our alias ``netfs:<uuid>`` with no
  active network of that uuid (a crash between bridge creation and status
  write, or between status removal and bridge deletion) is deleted. Then
  autostart, once per host boot (marker ``<state_dir>/autostarted``, written
  after autostart so a crash in the middle retries it). The kernel checks of
  recovery read one dump of the links (addresses and routes: one dump each,
  on first use) instead of a round trip per network.
* Start intents: the kernel ignores IFLA_IFALIAS when a bridge is created,
  so the tag arrives in a second request. Before a virtual network's bridge
  is created the core records ``<state_dir>/NAME/starting`` (uuid, bridge
  name); it is removed once the start succeeded or failed. At recovery, an
  untagged bridge named in the intent of a network that is not active is
  deleted too (a crash between the two requests), and the intents are
  cleared.
* Live reconciliation (:meth:`Driver.run_monitor`): a deleted link that is
  (by alias, or by name: the sub-driver's ``watched_link``, the bridge of a
  virtual network or the host bridge of a forward-bridge network) the
  bridge of an active network triggers a check of that network, under its lock, with the sub-driver's ``is_running``; if it
  is down the network is marked inactive without calling the sub-driver's
  stop (the bridge is gone, and a same-named link someone made meanwhile is
  not ours to delete). An ``overrun`` resynchronises every active network.
* Connection counts (libvirt's ``connections``): the live definition of an
  active network carries the number of its ports, and each forward pool
  entry the number of ports plugged into it; they are set (on a new object,
  see :func:`netfs.model.port.count_connections`) when a port is created or
  deleted and when the status and port files are loaded. ``status_xml``
  (served from memory) always shows them. The status file on disk is not
  rewritten for a port event (libvirt rewrites it only for some): it keeps
  the counts of its start, and a restart counts the port files again.
* State-file calls run in one dedicated thread (:class:`_StateThread`),
  one at a time, in order: a hop to it costs a fraction of
  ``trio.to_thread``. A virtual network's kernel work is one submission to
  the netlink worker after its collision check (see
  :class:`netfs.netlink.NetlinkBatch`), so a start is four thread hops:
  start intent, route check, bridge and steps, status file.
* Every failed operation records its message as the network's ``error``
  (when the network exists) and logs it; success leaves it in place. Every
  recorded error (failed operation, autostart, recovery, a definition with a
  problem found at start-up or reload, :meth:`Driver.set_error`) emits the
  internal event ``error`` (not a word of the events file).
"""

from __future__ import annotations

import copy
import errno
import ipaddress
import logging
import queue
import socket
import threading
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import outcome
import trio

from netfs import subdrivers
from netfs.errors import NetfsError
from netfs.model.names import escape_field
from netfs.model.network import NetworkDef, format_network, is_virtual, parse_network
from netfs.model.port import (
    NetworkPort,
    allocate_port,
    count_connections,
    format_port,
    parse_port,
    pci_key,
    portgroup_virtualport,
)
from netfs.model.validate import random_mac, validate_network
from netfs.model.virtualport import format_virtualport
from netfs.model.xmlsafe import parse_document
from netfs.netlink import AddrInfo, LinkInfo, Netlink, RouteInfo
from netfs.state import StateStore, check_name, format_status

log = logging.getLogger(__name__)

ALIAS_PREFIX = "netfs:"
EVENT_BUFFER = 4096
# the kinds of the `events` file, then the internal kind "error": a network's
# error was recorded (its text is NetworkState.error). The filesystem does
# not print "error" in the events file; it uses it to notify the error file.
EVENT_KINDS = frozenset(
    {
        "defined",
        "undefined",
        "started",
        "stopped",
        "updated",
        "port-created",
        "port-deleted",
        "error",
    }
)


# define parses a document larger than this in a worker thread (a thread
# hop costs ~0.1 ms; parsing 1 MiB, ~0.5 s)
PARSE_IN_THREAD_BYTES = 64 * 1024


@dataclass(frozen=True)
class Event:
    """One change of one network, as a line of the ``events`` file.

    ``kind`` is one of the words of the events file (defined undefined
    started stopped updated port-created port-deleted) or the internal
    ``error``: the core recorded an error for the network (any cause: a
    failed operation, autostart, recovery, reload, :meth:`Driver.set_error`);
    the text is the network's ``error``. ``line()`` renders it like the
    others ("... testA error"), but it is not a word of the events file:
    the filesystem does not print it there."""

    time: datetime
    network: str
    kind: str
    port: str | None = None

    def line(self) -> str:
        """``TIMESTAMP NAME EVENT [PORT]``, one space between fields; in the
        names every byte that is not printable ASCII, and space and
        backslash, is written ``\\xNN`` (netfs.model.names.escape_field)."""
        network = escape_field(self.network)
        text = f"{self.time.isoformat(timespec='milliseconds')} {network} {self.kind}"
        return text if self.port is None else f"{text} {escape_field(self.port)}"


@dataclass(frozen=True)
class NetworkState:
    """A read-only snapshot of one network (the defs are shared, never mutated)."""

    name: str
    uuid: str
    definition: NetworkDef
    live: NetworkDef | None
    active: bool
    autostart: bool
    persistent: bool
    error: str
    problem: str | None
    ports: dict[str, NetworkPort]
    error_seq: int = 0  # how many errors were recorded: a repeated text is a new error


@dataclass
class _Net:
    name: str
    definition: NetworkDef
    live: NetworkDef | None = None
    persistent: bool = True
    autostart: bool = False
    error: str = ""
    error_seq: int = 0
    problem: str | None = None
    ports: dict[str, NetworkPort] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        return self.live is not None

    @property
    def uuid(self) -> str:
        return (self.live or self.definition).uuid


def _bridge_of(net: NetworkDef | None) -> str | None:
    if net is None:
        return None
    return net.bridge.name if net.bridge is not None else None


def _keep_generated(net: NetworkDef, current: NetworkDef) -> None:
    """A redefinition that omits the MAC or the bridge name of a virtual
    network keeps the current definition's (as it keeps its uuid) instead of
    getting new generated ones."""
    if not (is_virtual(net.forward.mode) and is_virtual(current.forward.mode)):
        return
    if not net.bridge.name and current.bridge.name and "%d" not in current.bridge.name:
        net.bridge.name = current.bridge.name
    if net.mac is None and current.mac is not None:
        net.mac = current.mac


def _with_name(xml: bytes | str, name: str) -> bytes | str:
    """Give a definition without ``<name>`` the directory's name."""
    from lxml import etree

    root = parse_document(xml)
    if root.tag != "network" or root.find("name") is not None:
        return xml
    el = etree.Element("name")
    el.text = name
    root.insert(0, el)
    return etree.tostring(root)


def _qos(ports: dict[str, NetworkPort]) -> tuple[set[int], int]:
    """The QoS class ids the ports hold and the sum of their inbound floors
    (libvirt's floor accounting: only ports given a class id count)."""
    ids: set[int] = set()
    floor_sum = 0
    for q in ports.values():
        bw = q.bandwidth
        if bw is None or not bw.class_id:
            continue
        ids.add(bw.class_id)
        if bw.inbound is not None:
            floor_sum += bw.inbound.floor
    return ids, floor_sum


def _device_usage(ports: dict[str, NetworkPort]) -> dict[str, int]:
    """How many ports use each pool device (netdev name, PCI key)."""
    usage: Counter[str] = Counter()
    for q in ports.values():
        if q.plug is None:
            continue
        if q.plug.dev:
            usage[q.plug.dev] += 1
        elif q.plug.address is not None:
            usage[pci_key(q.plug.address)] += 1
    return dict(usage)


class _StateThread:
    """One dedicated thread for the state store's blocking calls (file writes
    with fsync), handed work through a queue like the netlink worker: a hop
    costs a queue put and a ``run_sync_soon`` wake-up, a fraction of
    ``trio.to_thread.run_sync`` (measured ~60 µs against ~300 µs). Calls run
    one at a time in submission order. A call, once submitted, is not
    cancellable (a cancellation is seen at the caller's next checkpoint).
    The thread is started on demand and ends after ``IDLE`` seconds without
    work (so a Driver needs no close)."""

    IDLE = 10.0

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[Any, tuple[Any, ...], Any]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._running = False

    async def run(self, fn: Any, *args: Any) -> Any:
        await trio.lowlevel.checkpoint_if_cancelled()
        task = trio.lowlevel.current_task()
        token = trio.lowlevel.current_trio_token()

        def done(result: outcome.Outcome[Any]) -> None:
            token.run_sync_soon(trio.lowlevel.reschedule, task, result)

        with self._lock:
            self._jobs.put((fn, args, done))
            if not self._running:
                self._running = True
                threading.Thread(target=self._loop, name="netfs-state", daemon=True).start()

        def abort(_raise_cancel: Any) -> trio.lowlevel.Abort:
            return trio.lowlevel.Abort.FAILED  # the call is under way: wait for it

        return await trio.lowlevel.wait_task_rescheduled(abort)

    def _loop(self) -> None:
        while True:
            try:
                fn, args, done = self._jobs.get(timeout=self.IDLE)
            except queue.Empty:
                with self._lock:  # a submitter holds it while it puts a job
                    if self._jobs.empty():
                        self._running = False
                        return
                continue
            result = outcome.capture(fn, *args)
            try:
                done(result)
            except trio.RunFinishedError:
                log.warning("state call result dropped: trio run finished")


class _KernelSnapshot:
    """A Netlink stand-in for recovery: ``link``/``links`` answer from one
    dump, ``addresses``/``routes`` from one dump each (made on first use);
    every other call (the repairs) goes to the real adapter. Each network
    only reads its own bridge before changing it, so the snapshot stays
    true for what is asked of it."""

    def __init__(self, nl: Netlink, links: list[LinkInfo]) -> None:
        self._nl = nl
        self._links = {link.name: link for link in links}
        self._addrs: dict[str, list[AddrInfo]] | None = None
        self._routes: dict[int, list[RouteInfo]] = {}

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._nl, attr)

    async def link(self, name: str) -> LinkInfo | None:
        return self._links.get(name)

    async def links(self) -> list[LinkInfo]:
        return list(self._links.values())

    async def addresses(self, ifname: str | None = None) -> list[AddrInfo]:
        if self._addrs is None:
            self._addrs = {}
            for a in await self._nl.addresses():
                self._addrs.setdefault(a.ifname, []).append(a)
        if ifname is None:
            return [a for lst in self._addrs.values() for a in lst]
        return list(self._addrs.get(ifname, []))

    async def routes(
        self, family: int = socket.AF_INET, *, match: Iterable[tuple[str, int]] | None = None
    ) -> list[RouteInfo]:
        if family not in self._routes:
            self._routes[family] = await self._nl.routes(family)
        if match is None:
            return list(self._routes[family])
        want = {(str(ipaddress.ip_address(a)), int(p)) for a, p in match}
        return [r for r in self._routes[family] if (r.dst, r.prefixlen) in want]


class Driver:
    """The network driver: see the module docstring for the rules."""

    def __init__(self, config_dir: Path, state_dir: Path, netlink: Netlink) -> None:
        self.store = StateStore(config_dir, state_dir)
        self._state_thread = _StateThread()
        self.nl = netlink
        self._nets: dict[str, _Net] = {}
        self._locks: dict[str, trio.Lock] = {}
        self._subscribers: dict[int, trio.MemorySendChannel[Event]] = {}
        # netdevs the monitor watches (sub-driver's watched_link of active
        # networks) -> names of the networks (host bridges may be shared)
        self._watched: dict[str, set[str]] = {}
        self._checking: set[str] = set()
        self._renamed: dict[str, str] = {}  # network -> the new name of its renamed bridge
        # bridge being started -> its network, until the network is live (a
        # deletion seen then is checked once the start is over)
        self._starting: dict[str, str] = {}
        self._lost_in_start: set[str] = set()
        # define/undefine/autostart changes made through the core, numbered:
        # a reload does not apply what it read before such a change
        self._change_seq = 0
        self._changed_at: dict[str, int] = {}
        self._resyncing = False
        self._resync_again = False
        self.ready = trio.Event()
        # receive buffer of the link monitor socket (tests make it small)
        self.monitor_rcvbuf = 8 * 1024 * 1024
        self.overruns = 0  # link-monitor overflows seen (each one resyncs)

    # ------------------------------------------------------------------ events

    def subscribe(self) -> trio.MemoryReceiveChannel[Event]:
        """Every event from now on. A subscriber that falls more than
        EVENT_BUFFER events behind loses events (logged), never blocks the core."""
        send, recv = trio.open_memory_channel[Event](EVENT_BUFFER)
        self._subscribers[id(recv)] = send
        return recv

    def unsubscribe(self, ch: trio.MemoryReceiveChannel[Event]) -> None:
        send = self._subscribers.pop(id(ch), None)
        if send is not None:
            send.close()

    def _emit(self, network: str, kind: str, port: str | None = None) -> None:
        assert kind in EVENT_KINDS, kind
        ev = Event(datetime.now(UTC), network, kind, port)
        log.info("event: %s", ev.line())
        for key, send in list(self._subscribers.items()):
            try:
                send.send_nowait(ev)
            except trio.WouldBlock:
                log.warning("event subscriber %x is too slow: dropped %s", key, ev.line())
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._subscribers.pop(key, None)

    # ------------------------------------------------------------------ queries

    def names(self) -> list[str]:
        return sorted(self._nets)

    def _get(self, name: str) -> _Net:
        n = self._nets.get(name)
        if n is None:
            raise NetfsError(errno.ENOENT, f"no network with matching name '{name}'")
        return n

    def get(self, name: str) -> NetworkState:
        n = self._get(name)
        return NetworkState(
            name=n.name,
            uuid=n.uuid,
            definition=n.definition,
            live=n.live,
            active=n.active,
            autostart=n.autostart,
            persistent=n.persistent,
            error=n.error,
            problem=n.problem,
            ports=dict(n.ports),
            error_seq=n.error_seq,
        )

    def definition_xml(self, name: str) -> str:
        return format_network(self._get(name).definition, inactive=True)

    def status_xml(self, name: str) -> str | None:
        n = self._get(name)
        if n.live is None:
            return None
        ids, floor_sum = _qos(n.ports)
        return format_status(n.live, header=False, class_ids=ids, floor_sum=floor_sum).decode()

    def _port(self, name: str, port: str) -> NetworkPort:
        p = self._get(name).ports.get(port)
        if p is None:
            raise NetfsError(errno.ENOENT, f"network '{name}' has no port '{port}'")
        return p

    def port_xml(self, name: str, port: str) -> str:
        return format_port(self._port(name, port))

    def port_virtualport_xml(self, name: str, port: str) -> str | None:
        return format_virtualport(self._port(name, port).virtualport, 0) or None

    def portgroup_virtualport_xml(self, name: str, portgroup: str) -> str | None:
        """The network's virtualport merged with the portgroup's: taken from the
        live definition while active (what ports get), else the persistent one."""
        n = self._get(name)
        net = n.live or n.definition
        if not any(pg.name == portgroup for pg in net.portgroups):
            raise NetfsError(errno.ENOENT, f"network '{name}' has no portgroup '{portgroup}'")
        return format_virtualport(portgroup_virtualport(net, portgroup), 0) or None

    def set_error(self, name: str, message: str, *, logged: bool = False) -> None:
        """Record ``message`` as the network's error (if it exists) and emit
        an ``error`` event; every error the core records goes through here.
        ``logged``: the caller has logged it already (not logged twice)."""
        if not logged:
            log.warning("network %s: %s", name, message)
        n = self._nets.get(name)
        if n is not None:
            n.error = message
            n.error_seq += 1
            self._emit(name, "error")

    # ------------------------------------------------------------------ helpers

    def _lock(self, name: str) -> trio.Lock:
        lock = self._locks.get(name)
        if lock is None:
            lock = self._locks[name] = trio.Lock()
        return lock

    @asynccontextmanager
    async def _transition(self, name: str) -> AsyncIterator[None]:
        """Take the network's lock, then run shielded; record failures."""
        with self._recording(name):
            async with self._lock(name):
                with trio.CancelScope(shield=True):
                    yield

    @contextmanager
    def _recording(self, name: str | None) -> Iterator[None]:
        try:
            yield
        except NetfsError as e:
            if name is not None:
                self.set_error(name, e.message)
            raise
        except OSError as e:
            err = NetfsError(e.errno or errno.EIO, f"{e.strerror or e}: {e.filename or ''}")
            if name is not None:
                self.set_error(name, err.message)
            raise err from e

    def _set_live(self, n: _Net, live: NetworkDef | None) -> None:
        if n.live is not None:
            old = subdrivers.for_mode(n.live.forward.mode, n.live).watched_link(n.live)
            users = self._watched.get(old or "")
            if users is not None:
                users.discard(n.name)
                if not users:
                    del self._watched[old or ""]
        n.live = live
        if live is not None:
            link = subdrivers.for_mode(live.forward.mode, live).watched_link(live)
            if link:
                self._watched.setdefault(link, set()).add(n.name)

    @staticmethod
    def _recount(n: _Net) -> None:
        """Give the live definition libvirt's connection counts for its ports
        (a new object: snapshots handed out keep theirs)."""
        if n.live is not None:
            n.live = count_connections(n.live, n.ports.values())

    async def _link_names(self) -> set[str]:
        return {link.name for link in await self.nl.links()}

    async def _store(self, fn: Any, *args: Any) -> Any:
        return await self._state_thread.run(fn, *args)

    # ------------------------------------------------------------------ define

    async def define(self, xml: bytes | str, *, name: str | None = None) -> str:
        """Define (or redefine) a network strictly; returns its name.

        ``name`` is the directory the definition was written to: the XML's
        ``<name>`` must equal it (EINVAL), and a definition without ``<name>``
        takes it. Emits ``defined`` (new) or ``updated`` (redefinition); a
        redefinition of an active network becomes effective at its next start.
        """
        with self._recording(name if name in self._nets else None):
            if name is not None:
                check_name(name)
                xml = _with_name(xml, name)
            # a large document is parsed off the loop that serves the others
            big = len(xml) > PARSE_IN_THREAD_BYTES
            net = await trio.to_thread.run_sync(parse_network, xml) if big else parse_network(xml)
            if "\n" in net.name:  # libvirt's own refusal, before ours below
                raise NetfsError(errno.EINVAL, "invalid char in name: \n")
            if name is not None and net.name != name:
                raise NetfsError(
                    errno.EINVAL,
                    f"network name '{net.name}' does not match directory name '{name}'",
                )
            check_name(net.name)
            explicit_uuid = not net.uuid_generated
        async with self._transition(net.name):
            current = self._nets.get(net.name)  # stable: its lock is held
            if current is not None:
                _keep_generated(net, current.definition)
            # host devices matter only when a bridge name is generated (libvirt)
            auto = is_virtual(net.forward.mode) and (not net.bridge.name or "%d" in net.bridge.name)
            links = await self._link_names() if auto else set()
            # no checkpoint from here to the reservation below
            old = self._nets.get(net.name)
            # libvirt's order: the uuid is looked up first, then the name
            for other in self._nets.values():
                if other.name != net.name and other.uuid == net.uuid:
                    raise NetfsError(
                        errno.EEXIST,
                        f"network '{other.name}' is already defined with uuid {net.uuid}",
                    )
            if old is not None and old.uuid != net.uuid:
                if explicit_uuid:
                    raise NetfsError(
                        errno.EEXIST,
                        f"network '{net.name}' already exists with uuid {old.uuid}",
                    )
                net.uuid = old.uuid
            in_use: set[str] = set()
            for other in self._nets.values():
                if other.name != net.name:
                    in_use.update(
                        b for b in (_bridge_of(other.definition), _bridge_of(other.live)) if b
                    )
            try:
                validate_network(net, bridges_in_use=in_use, device_exists=links.__contains__)
            except NetfsError as e:
                if e.errno == errno.EINVAL and "already in use" in e.message:
                    raise NetfsError(errno.EADDRINUSE, e.message) from None
                raise
            if (
                old is not None
                and old.persistent
                and old.problem is None
                and format_network(old.definition, inactive=True)
                == format_network(net, inactive=True)
            ):
                return net.name  # the definition it already has: nothing changes
            if old is None:
                n = _Net(name=net.name, definition=net)
                self._nets[net.name] = n  # reserve the name, bridge and uuid
                try:
                    await self._store(self.store.write_config, net)
                except BaseException:
                    del self._nets[net.name]
                    raise
                self._note_change(net.name)
                self._emit(net.name, "defined")
            else:
                await self._store(self.store.write_config, net)
                self._note_change(net.name)
                old.definition = net
                old.problem = None
                old.persistent = True
                self._emit(net.name, "updated")
            return net.name

    def _note_change(self, name: str) -> None:
        """A config-directory change of ``name`` made through the core (a
        reload that read the directory before it must not undo it)."""
        self._change_seq += 1
        self._changed_at[name] = self._change_seq

    # ------------------------------------------------------------------ undefine

    async def undefine(self, name: str, *, if_active: str = "refuse") -> None:
        """Remove a network's definition (config file and autostart link).

        ``if_active="refuse"``: EBUSY when it is active or has ports (rmdir).
        ``if_active="transient"``: libvirt's way; an active network keeps
        running as a transient one and vanishes when it stops.
        """
        if if_active not in ("refuse", "transient"):
            raise ValueError(f"if_active must be 'refuse' or 'transient', not {if_active!r}")
        async with self._transition(name):
            n = self._get(name)
            if not n.persistent:
                raise NetfsError(errno.EINVAL, "can't undefine transient network")
            if if_active == "refuse" and (n.active or n.ports):
                raise NetfsError(errno.EBUSY, f"network '{name}' is active")
            await self._store(self.store.delete_config, name)
            self._note_change(name)
            n.autostart = False
            if n.active:
                n.persistent = False
                self._emit(name, "updated")
            else:
                del self._nets[name]
                self._emit(name, "undefined")

    # ------------------------------------------------------------------ start / stop

    async def start(self, name: str) -> None:
        """Start a network; already active is a no-op success."""
        async with self._transition(name):
            n = self._get(name)
            if not n.active:
                await self._start_locked(n)

    async def _start_locked(self, n: _Net) -> None:
        if n.problem:
            raise NetfsError(errno.EINVAL, n.problem)
        # definitions are never changed in place (a change is a new object),
        # so the live copy may share their parts: a shallow copy suffices
        live = copy.copy(n.definition)
        mode = live.forward.mode
        if is_virtual(mode) and live.mac is None:
            live.mac = random_mac()  # a lenient-loaded definition without one
        await self._store(self._prepare_start, n.name, live)
        sub = subdrivers.for_mode(mode, live)
        link = sub.watched_link(live)
        self._lost_in_start.discard(n.name)
        if link:
            self._starting[link] = n.name
        try:
            committed = False
            try:
                await sub.start(live, self.nl)
                try:
                    # status written, then the intent removed: one thread hop
                    await self._store(self._commit_start, n.name, live)
                    committed = True
                except BaseException:
                    try:
                        await sub.stop(live, self.nl)
                    except Exception:
                        log.exception("network %s: undoing a failed start", n.name)
                    raise
            finally:
                if not committed:
                    await self._store(self.store.delete_intent, n.name)
            n.ports = {}
            self._set_live(n, live)
        finally:
            if link:
                self._starting.pop(link, None)
        self._emit(n.name, "started")
        if n.name in self._lost_in_start:
            # its bridge was deleted while it started (before the monitor
            # could know it as this network's)
            self._lost_in_start.discard(n.name)
            if not await sub.is_running(live, self.nl):
                log.warning(
                    "network %s: its bridge vanished while it started: now inactive", n.name
                )
                await self._store(self.store.delete_status, n.name)
                await self._finish_stop(n)

    def _prepare_start(self, name: str, live: NetworkDef) -> None:
        self.store.delete_ports(name)
        if is_virtual(live.forward.mode):
            self.store.write_intent(name, live.uuid, _bridge_of(live))

    def _commit_start(self, name: str, live: NetworkDef) -> None:
        self.store.write_status(live)
        try:  # the network is started now: a stale intent is cleared at recovery
            self.store.delete_intent(name)
        except OSError as e:
            log.warning("network %s: cannot remove its start intent: %s", name, e)

    async def stop(self, name: str) -> None:
        """Stop a network; already inactive is a no-op success. Frees its ports."""
        async with self._transition(name):
            n = self._get(name)
            if n.live is None:
                return
            live = n.live
            await self._store(self.store.delete_status, name)
            try:
                await subdrivers.for_mode(live.forward.mode, live).stop(live, self.nl)
            except Exception as e:
                msg = e.message if isinstance(e, NetfsError) else str(e)
                self.set_error(name, msg)
                log.exception("network %s: stopping", name)
            await self._finish_stop(n)

    async def _finish_stop(self, n: _Net) -> None:
        """After the status file is gone and the kernel side is down."""
        ports = list(n.ports)
        await self._store(self.store.delete_ports, n.name, None)
        n.ports = {}
        for p in ports:
            self._emit(n.name, "port-deleted", p)
        self._set_live(n, None)
        self._emit(n.name, "stopped")
        if not n.persistent:
            del self._nets[n.name]
            self._emit(n.name, "undefined")

    async def set_autostart(self, name: str, on: bool) -> None:
        """Create or remove the autostart link; emits ``updated`` on a change."""
        async with self._transition(name):
            n = self._get(name)
            if n.autostart == bool(on):
                return  # the current value: a no-op, also for a transient network
            if not n.persistent:
                raise NetfsError(errno.EINVAL, "cannot set autostart for transient network")
            await self._store(self.store.set_autostart, name, bool(on))
            self._note_change(name)
            n.autostart = bool(on)
            self._emit(name, "updated")

    # ------------------------------------------------------------------ ports

    async def create_port(self, name: str, port: str, xml: bytes | str) -> NetworkPort:
        """Allocate a port on an active network and record it."""
        async with self._transition(name):
            check_name(port, "port")
            n = self._get(name)
            # libvirt's order: parse, active, plug, allocate, then the uuid
            p = parse_port(xml, strict=True, owner_name=port)
            if n.live is None:
                raise NetfsError(errno.ENETDOWN, f"network '{name}' is not active")
            if p.source_network is not None and p.source_network != name:
                raise NetfsError(
                    errno.EINVAL,
                    f"interface's source network '{p.source_network}' "
                    f"does not match network '{name}'",
                )
            if port in n.ports:
                raise NetfsError(errno.EEXIST, f"port '{port}' already exists in network '{name}'")
            if p.plug is not None:
                # libvirt: a plug means "reclaim a running guest's port", a
                # flag netfs's way in does not have
                raise NetfsError(
                    errno.EINVAL, "Port reclaim not requested but plug type is not none"
                )
            ids, floor_sum = _qos(n.ports)
            allocated = allocate_port(
                n.live,
                p,
                device_usage=_device_usage(n.ports),
                floor_sum=floor_sum,
                class_ids_in_use=ids,
            )
            for q in n.ports.values():
                if q.uuid == p.uuid:
                    raise NetfsError(
                        errno.EEXIST, f"Network port with UUID {p.uuid} already exists"
                    )
            await self._store(self.store.write_port, name, port, allocated)
            n.ports[port] = allocated
            self._recount(n)
            if _qos({port: allocated})[0]:
                await self._save_qos(n)
            self._emit(name, "port-created", port)
            return allocated

    async def delete_port(self, name: str, port: str) -> None:
        async with self._transition(name):
            n = self._get(name)
            if port not in n.ports:
                raise NetfsError(errno.ENOENT, f"network '{name}' has no port '{port}'")
            await self._store(self.store.delete_port, name, port)
            gone = n.ports.pop(port)
            self._recount(n)
            if _qos({port: gone})[0]:
                await self._save_qos(n)
            self._emit(name, "port-deleted", port)

    async def _save_qos(self, n: _Net) -> None:
        """Rewrite the status file after a port's floor was plugged or
        unplugged (as libvirt does): its class ids and floor sum changed. A
        failure is logged; the port files are the record recovery counts."""
        if n.live is None:
            return
        ids, floor_sum = _qos(n.ports)
        try:
            await self._store(self.store.write_status, n.live, ids, floor_sum)
        except OSError as e:
            log.warning("network %s: cannot rewrite its status file: %s", n.name, e)

    # ------------------------------------------------------------------ start-up

    async def startup(self) -> None:
        """Load the state leniently, reconcile with the kernel, autostart."""
        await self._store(self.store.ensure_dirs)
        await self._store(self.store.remove_stale_temp_files)
        loaded = await self._store(self.store.load)
        for path, problem in loaded.problems:
            log.warning("%s: %s", path, problem)
        bad_status = loaded.bad_statuses
        for name, cfg in loaded.configs.items():
            self._nets[name] = _Net(
                name=name,
                definition=cfg.definition,
                autostart=cfg.autostart,
                problem=cfg.problem,
                error=cfg.problem or bad_status.get(name, ""),
            )
            if self._nets[name].error:  # logged above with its file
                self._emit(name, "error")
        for name, st in loaded.statuses.items():
            n = self._nets.get(name)
            if n is None:
                n = self._nets[name] = _Net(name=name, definition=st.live, persistent=False)
            n.ports = st.ports
            self._set_live(n, st.live)
            self._recount(n)  # the status file's counts may be stale: count the ports

        # one dump of the kernel's links (and, if asked, addresses and routes)
        # serves every network's check instead of a round trip per network
        snap = _KernelSnapshot(self.nl, await self.nl.links())
        for n in list(self._nets.values()):
            if n.active:
                await self._recover_one(n, snap)
        await self._delete_orphan_bridges(await snap.links())
        if not await self._store(self.store.autostarted):
            await self._autostart()
            await self._store(self.store.mark_autostarted)
        self.ready.set()

    async def _recover_one(self, n: _Net, snap: _KernelSnapshot) -> None:
        assert n.live is not None
        live = n.live
        sub = subdrivers.for_mode(live.forward.mode, live)
        nl = cast(Netlink, snap)
        async with self._lock(n.name):
            try:
                running = await sub.is_running(live, nl)
            except Exception:
                log.exception("network %s: checking whether it runs", n.name)
                running = False
            if running:
                try:
                    await sub.repair(live, nl)
                except Exception as e:
                    msg = e.message if isinstance(e, NetfsError) else str(e)
                    self.set_error(n.name, f"repair failed: {msg}")
                return
            log.warning("network %s: recorded active but not running: now inactive", n.name)
            await self._store(self.store.delete_status, n.name)
            await self._finish_stop(n)

    async def _delete_orphan_bridges(self, links: list[LinkInfo]) -> None:
        """Delete bridges a crash left behind: tagged ``netfs:<uuid>`` with no
        active network of that uuid, or (untagged, or tagged with the uuid)
        named in a start intent of a network that did not become active --
        the daemon died between creating the bridge and tagging it."""
        ours = {n.live.uuid for n in self._nets.values() if n.live is not None}
        intents = await self._store(self.store.load_intents)
        pending = {
            bridge: uuid
            for name, (uuid, bridge) in intents.items()
            if bridge and not (name in self._nets and self._nets[name].active)
        }
        for link in links:
            alias = link.alias or ""
            if alias.startswith(ALIAS_PREFIX):
                if alias[len(ALIAS_PREFIX) :] in ours:
                    continue
            elif not (link.name in pending and link.kind == "bridge" and not alias):
                continue
            log.warning("deleting orphan bridge %s (%s)", link.name, alias or "untagged")
            try:
                await self.nl.delete_link(link.name)
            except NetfsError as e:
                log.warning("cannot delete orphan bridge %s: %s", link.name, e.message)
        for name in intents:
            await self._store(self.store.delete_intent, name)

    async def _autostart(self) -> None:
        for name in sorted(self._nets):
            n = self._nets.get(name)
            if n is None or not n.autostart or n.active:
                continue
            try:
                await self.start(name)
            except NetfsError as e:
                log.warning("autostart of network %s failed: %s", name, e.message)

    # ------------------------------------------------------------------ reload

    async def reload(self) -> None:
        """SIGHUP: re-read the config directory, then autostart again.

        New configs are added (``defined``), changed ones replace the
        definition (``updated``); a persistent network whose file is gone is
        removed if inactive (``undefined``) or becomes transient if active
        (``updated``). A file that no longer parses leaves the network as it
        is (lenient: never dropped because of a bad file).
        """
        # what this reload reads may be overtaken by a define, undefine or
        # autostart change made while it runs: those networks are skipped
        mark = self._change_seq
        configs, problems = await self._store(self.store.load_configs)
        bad = {p.name[: -len(".xml")] for p, _ in problems if p.parent == self.store.config_dir}
        for path, problem in problems:
            stem = path.name[: -len(".xml")]
            if (
                path.parent == self.store.config_dir
                and stem in self._nets
                and stem not in configs
                and self._changed_at.get(stem, 0) <= mark
            ):
                # the network stays as it was; its `error` says why the edit was not taken
                self.set_error(stem, f"cannot reload {path}: {problem}")
            else:
                log.warning("%s: %s", path, problem)
        for name, cfg in configs.items():
            async with self._lock(name):
                if self._changed_at.get(name, 0) > mark:
                    continue
                n = self._nets.get(name)
                if n is None:
                    self._nets[name] = _Net(
                        name=name,
                        definition=cfg.definition,
                        autostart=cfg.autostart,
                        problem=cfg.problem,
                    )
                    self._emit(name, "defined")
                    if cfg.problem:
                        self.set_error(name, cfg.problem)
                    continue
                if cfg.unsaved_uuid:  # generated again: keep the one it has
                    cfg.definition.uuid = n.definition.uuid
                if cfg.unsaved_mac and n.definition.mac is not None:
                    cfg.definition.mac = n.definition.mac
                changed = (
                    format_network(n.definition, inactive=True)
                    != format_network(cfg.definition, inactive=True)
                    or n.autostart != cfg.autostart
                    or not n.persistent
                    or n.problem != cfg.problem
                )
                if changed:
                    n.definition = cfg.definition
                    n.autostart = cfg.autostart
                    n.problem = cfg.problem
                    n.persistent = True
                    self._emit(name, "updated")
                    if cfg.problem:
                        self.set_error(name, cfg.problem)
        for name in list(self._nets):
            if name in configs or name in bad:
                continue
            async with self._lock(name):
                n = self._nets.get(name)
                if n is None or not n.persistent or self._changed_at.get(name, 0) > mark:
                    continue
                if await self._store(self.store.config_path(name).exists):
                    continue
                if n.autostart:  # undefined by hand: its autostart link goes too
                    await self._store(self.store.set_autostart, name, False)
                n.autostart = False
                if n.active:
                    n.persistent = False
                    self._emit(name, "updated")
                else:
                    del self._nets[name]
                    self._emit(name, "undefined")
        await self._autostart()

    # ------------------------------------------------------------------ monitor

    async def run_monitor(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Follow link events; reconcile networks whose bridge vanished.

        Runs until cancelled. Never raises because of what the monitor
        yields: a failing monitor is logged, resynchronised and reopened.
        """
        started = False
        async with trio.open_nursery() as nursery:
            while True:
                try:
                    async with self.nl.monitor(rcvbuf=self.monitor_rcvbuf) as events:
                        if not started:
                            started = True
                            task_status.started()
                        else:
                            nursery.start_soon(self.resync)
                        async for ev in events:
                            try:
                                self._on_link_event(ev, nursery)
                            except Exception:
                                log.exception("link event %r", ev)
                except Exception:
                    log.exception("link monitor failed; reopening")
                await trio.sleep(0.1)  # do not spin if it keeps ending

    def _on_link_event(self, ev: Any, nursery: trio.Nursery) -> None:
        kind = getattr(ev, "kind", None)
        if kind == "overrun":
            self.overruns += 1
            log.warning("link monitor overrun: resynchronising")
            nursery.start_soon(self.resync)
            return
        alias = getattr(ev, "alias", None) or ""
        if kind == "new":
            self._on_new_link(ev.name, alias, nursery)
            return
        if kind != "del":
            return
        names: set[str] = set()
        if alias.startswith(ALIAS_PREFIX):
            uuid = alias[len(ALIAS_PREFIX) :]
            for n in self._nets.values():
                if n.live is not None and n.live.uuid == uuid:
                    names.add(n.name)
                    break
        if getattr(ev, "name", None):
            names.update(self._watched.get(ev.name, ()))
            starting = self._starting.get(ev.name)
            if starting is not None:
                self._lost_in_start.add(starting)
        for name in sorted(names - self._checking):
            self._checking.add(name)
            nursery.start_soon(self._check_running, name)

    def _on_new_link(self, ifname: str, alias: str, nursery: trio.Nursery) -> None:
        """A link carrying an active network's tag under another name than
        the network's bridge: the bridge was renamed behind our back. The
        network no longer has its bridge (it stops, as for a deletion); the
        renamed link is left to whoever renamed it."""
        if not alias.startswith(ALIAS_PREFIX) or not ifname:
            return
        uuid = alias[len(ALIAS_PREFIX) :]
        for n in self._nets.values():
            if n.live is None or n.live.uuid != uuid:
                continue
            bridge = subdrivers.for_mode(n.live.forward.mode, n.live).watched_link(n.live)
            if bridge and bridge != ifname and n.name not in self._checking:
                self._renamed[n.name] = ifname
                self._checking.add(n.name)
                nursery.start_soon(self._check_running, n.name)
            return

    async def _check_running(self, name: str) -> None:
        try:
            async with self._transition(name):
                self._checking.discard(name)
                n = self._nets.get(name)
                if n is None or n.live is None:
                    return
                live = n.live
                sub = subdrivers.for_mode(live.forward.mode, live)
                if await sub.is_running(live, self.nl):
                    return
                renamed = self._renamed.pop(name, None)
                if renamed is None:
                    log.warning("network %s: its bridge vanished: now inactive", name)
                else:
                    log.warning(
                        "network %s: its bridge was renamed to %s: now inactive "
                        "(%s is left as it is, without netfs's tag)",
                        name,
                        renamed,
                        renamed,
                    )
                    await self._untag(renamed, live.uuid)
                await self._store(self.store.delete_status, name)
                await self._finish_stop(n)
        except Exception:
            log.exception("network %s: reconciling", name)
        finally:
            self._checking.discard(name)
            self._renamed.pop(name, None)

    async def _untag(self, ifname: str, uuid: str) -> None:
        """Clear our tag from a link that is no longer a network's bridge (so
        a later start-up does not take it for an orphan of ours)."""
        try:
            link = await self.nl.link(ifname)
            if link is not None and link.alias == ALIAS_PREFIX + uuid:
                await self.nl.set_alias(ifname, "")
        except NetfsError as e:
            log.warning("cannot clear the tag of %s: %s", ifname, e.message)

    async def resync(self) -> None:
        """Compare every active network with the kernel (after an overrun)."""
        if self._resyncing:
            self._resync_again = True
            return
        self._resyncing = True
        try:
            while True:
                self._resync_again = False
                async with trio.open_nursery() as nursery:
                    for n in list(self._nets.values()):
                        if n.active and n.name not in self._checking:
                            self._checking.add(n.name)
                            nursery.start_soon(self._check_running, n.name)
                if not self._resync_again:
                    break
        finally:
            self._resyncing = False
