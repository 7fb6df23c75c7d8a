"""The driver core: one engine for every way in.

Every change of a network goes through :class:`Driver`, whatever caused it: a
write through the mount, the daemon's own autostart or recovery, or a link
that vanished behind our back (the link monitor). The core keeps the
in-memory picture of all networks (:class:`netfs.netrecord.NetRecord`),
serialises the transitions of one network with a trio lock (different
networks proceed concurrently), writes the state store (:mod:`netfs.state`)
from one worker thread (a start's status file is staged first in the
start's netlink submission; the metadata-only steps, renaming it into
place or discarding it, run on the loop), hands the kernel work to the sub-driver of the
network's forward mode (:mod:`netfs.subdrivers`; the core never asks which
mode it has) with a :class:`~netfs.subdrivers.steps.StepContext` it builds,
and emits one :class:`Event` per change to every subscriber.

Three parts live in modules of their own: start-up recovery and SIGHUP
reload (:mod:`netfs.recovery`), the link monitor (:mod:`netfs.reconcile`)
and the ports of active networks (:mod:`netfs.ports`).

The rules (order of a start and a stop, no-op transitions, what a
redefinition keeps, recovery, reconciliation, connection counts, errors) are
described once, in docs/internals.md ("Core"); the user-visible ones in
man/netfs.8.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import logging
import math
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple, TypeVar, TypeVarTuple

import trio

from netfs import subdrivers
from netfs.errors import NetfsError
from netfs.model.dnsmasq import check_name as check_dnsmasq_name
from netfs.model.dnsmasq import has_raw_options
from netfs.model.names import escape_field
from netfs.model.network import NetworkDef, format_network, parse_network
from netfs.model.port import (
    NetworkPort,
    format_port,
    portgroup_virtualport,
)
from netfs.model.validate import validate_network
from netfs.model.virtualport import format_virtualport
from netfs.model.xmlsafe import parse_document
from netfs.netlink import NetlinkAdapter, NetlinkOps
from netfs.netrecord import NetRecord, qos
from netfs.ports import Ports
from netfs.reconcile import LinkReconciler
from netfs.recovery import Recovery
from netfs.state import Staged, StateStore, check_name, format_status
from netfs.subdrivers.services import Services
from netfs.subdrivers.steps import StepContext
from netfs.traffic import TrafficGuard
from netfs.worker import Worker

log = logging.getLogger(__name__)

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

EVENT_BUFFER = 4096
LOG_LATE = 0.05  # longest delay of an event's log line, seconds
LOG_DEFER = 0.001  # an event's log line is not looked at before this, seconds
# the kinds of the `events` file; the internal kinds, which the filesystem
# does not print there, are INTERNAL_KINDS below
EVENT_KINDS = frozenset(
    {
        "defined",
        "undefined",
        "started",
        "stopped",
        "updated",
        "port-created",
        "port-deleted",
        "lease-added",
        "lease-removed",
        "repaired",
        "error",
        "leases",
        "firewall",
    }
)
# kinds that are not lines of `events`: "error" (the network's error was
# recorded: the `error` file changed), "leases" (its lease records
# changed: the `leases` file changed; renewals included) and "firewall"
# (its rules as last read changed: firewall_text changed, e.g. once the
# table was read after a start)
INTERNAL_KINDS = frozenset({"error", "leases", "firewall"})


# define parses a document larger than this in a worker thread (a thread
# hop costs ~0.1 ms; parsing 1 MiB, ~0.5 s)
PARSE_IN_THREAD_BYTES = 64 * 1024


@dataclass(frozen=True)
class Event:
    """One change of one network, as a line of the ``events`` file.

    ``kind`` is one of the words of the events file (defined undefined
    started stopped updated port-created port-deleted lease-added
    lease-removed repaired; ``detail`` is the rest of their line) or one of
    :data:`INTERNAL_KINDS`: ``leases`` (the network's lease records
    changed), ``firewall`` (its rules as last read changed) or ``error``:
    the core recorded an error for the network (any cause: a failed
    operation, autostart, recovery, reload, :meth:`Driver.set_error`); the
    text is the network's ``error``. ``line()`` renders these like the
    others ("... testA error"), but they are not words of the events file:
    the filesystem does not print them there."""

    time: datetime
    network: str
    kind: str
    port: str | None = None
    # the rest of the line: "MAC ADDRESS" (lease-added/-removed), WHAT (repaired)
    detail: str | None = None
    # its number among the core's events (1, 2, ...; 0: not numbered):
    # Driver.events_emitted
    seq: int = 0

    def line(self) -> str:
        """``TIMESTAMP NAME EVENT [PORT] [DETAIL]``, one space between
        fields; in the names every byte that is not printable ASCII, and
        space and backslash, is written ``\\xNN``
        (netfs.model.names.escape_field). The detail ("MAC ADDRESS", WHAT)
        is made by netfs and needs no escaping."""
        network = escape_field(self.network)
        text = f"{self.time.isoformat(timespec='milliseconds')} {network} {self.kind}"
        if self.port is not None:
            text = f"{text} {escape_field(self.port)}"
        return text if self.detail is None else f"{text} {self.detail}"


class NetworkState(NamedTuple):
    """A read-only snapshot of one network (the defs are shared, never
    mutated). A named tuple: made for every look at a network (a start
    makes several), at a quarter of a frozen dataclass's cost."""

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


def _bridge_of(net: NetworkDef | None) -> str | None:
    if net is None:
        return None
    return net.bridge.name if net.bridge is not None else None


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


def _parse_definition(xml: bytes | str, name: str | None) -> NetworkDef:
    """Parse a definition written to directory ``name`` (None: no directory):
    its ``<name>`` must equal the directory's, a missing one takes it."""
    if name is not None:
        check_name(name)
        xml = _with_name(xml, name)
    net = parse_network(xml)
    if "\n" in net.name:  # libvirt's own refusal, before ours below
        raise NetfsError(errno.EINVAL, "invalid char in name: \n")
    if name is not None and net.name != name:
        raise NetfsError(
            errno.EINVAL,
            f"network name '{net.name}' does not match directory name '{name}'",
        )
    check_name(net.name)
    return net


def _check_identity(nets: dict[str, NetRecord], net: NetworkDef, explicit_uuid: bool) -> None:
    """libvirt's order: the uuid is looked up first, then the name. A
    redefinition without ``<uuid>`` keeps the network's."""
    for other in nets.values():
        if other.name != net.name and other.uuid == net.uuid:
            raise NetfsError(
                errno.EEXIST,
                f"network '{other.name}' is already defined with uuid {net.uuid}",
            )
    old = nets.get(net.name)
    if old is not None and old.uuid != net.uuid:
        if explicit_uuid:
            raise NetfsError(
                errno.EEXIST,
                f"network '{net.name}' already exists with uuid {old.uuid}",
            )
        net.uuid = old.uuid


class _EventHub:
    """The subscribers of a Driver's events."""

    def __init__(self) -> None:
        self._subscribers: dict[int, trio.MemorySendChannel[Event]] = {}
        # events whose log line is not written yet, and the sleep of the
        # task that writes them (None: it is not running, lines are written
        # at once)
        self._unlogged: deque[Event] = deque()
        self._log_sleep: trio.CancelScope | None = None

    def subscribe(self) -> trio.MemoryReceiveChannel[Event]:
        send, recv = trio.open_memory_channel[Event](EVENT_BUFFER)
        self._subscribers[id(recv)] = send
        return recv

    def unsubscribe(self, ch: trio.MemoryReceiveChannel[Event]) -> None:
        send = self._subscribers.pop(id(ch), None)
        if send is not None:
            send.close()

    def emit(self, ev: Event) -> None:
        sleep = self._log_sleep
        if sleep is None:
            self._log(ev)
        else:
            self._unlogged.append(ev)
            if sleep.deadline == math.inf:
                # the writer wakes by its deadline, not in the loop's next
                # tick: that tick is on the path of the change told of
                sleep.deadline = trio.current_time() + LOG_DEFER
        for key, send in list(self._subscribers.items()):
            try:
                send.send_nowait(ev)
            except trio.WouldBlock:
                log.warning("event subscriber %x is too slow: dropped %s", key, ev.line())
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._subscribers.pop(key, None)

    @staticmethod
    def _log(ev: Event) -> None:
        if ev.kind in INTERNAL_KINDS:
            # not lines of `events` (every renewal, every read of the rules;
            # an error is logged with its text where it is recorded)
            log.debug("event: %s", ev.line())
        else:
            log.info("event: %s", ev.line())

    async def log_lines(
        self,
        idle: Callable[[], Awaitable[None]],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Write the events' log lines when `idle` says (the netlink
        adapter's: nothing to do for a moment, see Netlink.idle), at most
        LOG_LATE later: a line costs the loop ~30 µs, which is then not
        spent on the path of the change it tells of (a start's reply, its
        announcements) nor of the next one (its kernel requests)."""
        self._log_sleep = trio.CancelScope()
        task_status.started()
        try:
            while True:
                # until LOG_DEFER after an event (emit sets the deadline)
                with self._log_sleep:
                    await trio.sleep_forever()
                with trio.move_on_after(LOG_LATE):
                    await idle()
                while self._unlogged:
                    self._log(self._unlogged.popleft())
                # (no checkpoint since the last line: nothing new is waiting)
                self._log_sleep = trio.CancelScope()
        finally:
            self._log_sleep = None
            while self._unlogged:
                self._log(self._unlogged.popleft())


class Driver:
    """The network driver: see the module docstring for the rules."""

    def __init__(
        self,
        config_dir: Path,
        state_dir: Path,
        netlink: NetlinkAdapter,
        *,
        services: bool = True,
    ) -> None:
        """``services``: run the programs of virtual networks (nft rules,
        dnsmasq) in the netlink adapter's namespace; False: the bridge side
        only (tests against an in-memory kernel)."""
        self.store = StateStore(config_dir, state_dir)
        self.services = Services(Path(state_dir), netlink.netns) if services else None
        self._state_thread = Worker("netfs-state", idle=10.0)
        self.nl = netlink
        self._nets: dict[str, NetRecord] = {}
        # network -> (its live definition at its start, that start's status.xml)
        self._started_text: dict[str, tuple[NetworkDef, str]] = {}
        self._locks: dict[str, trio.Lock] = {}
        self._events = _EventHub()
        self._event_seq = 0
        self._links = LinkReconciler(self)
        self._recovery = Recovery(self)
        self._ports = Ports(self)
        self.traffic = TrafficGuard(self)
        # define/undefine/autostart changes made through the core, numbered:
        # a reload does not apply what it read before such a change
        self._change_seq = 0
        self._changed_at: dict[str, int] = {}
        self.ready = trio.Event()
        # receive buffer of the link monitor socket (tests make it small)
        self.monitor_rcvbuf = 8 * 1024 * 1024
        self.overruns = 0  # link-monitor overflows seen (each one resyncs)

    # ------------------------------------------------------------------ events

    def subscribe(self) -> trio.MemoryReceiveChannel[Event]:
        """Every event from now on. A subscriber that falls more than
        EVENT_BUFFER events behind loses events (logged), never blocks the core."""
        return self._events.subscribe()

    def unsubscribe(self, ch: trio.MemoryReceiveChannel[Event]) -> None:
        self._events.unsubscribe(ch)

    def _emit(
        self, network: str, kind: str, port: str | None = None, detail: str | None = None
    ) -> None:
        assert kind in EVENT_KINDS, kind
        self._event_seq += 1
        self._events.emit(
            Event(datetime.now(UTC), network, kind, port, detail, seq=self._event_seq)
        )

    @property
    def events_emitted(self) -> int:
        """How many events this core emitted (the last one's ``seq``): each
        is emitted after the change it tells of, so what is read now
        includes the changes of all of them."""
        return self._event_seq

    # ------------------------------------------------------------------ queries

    def names(self) -> list[str]:
        return sorted(self._nets)

    def _get(self, name: str) -> NetRecord:
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
        started = self._started_text.get(name)
        if started is not None and started[0] is n.live and not n.ports:
            return started[1]  # formatted by the start's staging, beside its kernel work
        ids, floor_sum = qos(n.ports)
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
        """Take the network's lock, then run shielded; record failures. A
        free lock is taken without a checkpoint (a tick of the loop on the
        path of every start and stop)."""
        lock = self._lock(name)
        with self._recording(name):
            if lock.locked():
                await lock.acquire()
            else:
                lock.acquire_nowait()
            try:
                with trio.CancelScope(shield=True):
                    yield
            finally:
                lock.release()

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

    def _set_live(self, n: NetRecord, live: NetworkDef | None) -> None:
        if n.live is not None:
            self._links.track(n.name, n.live, False)
        n.live = live
        if live is None:
            self._started_text.pop(n.name, None)
        if live is not None:
            self._links.track(n.name, live, True)

    def _context(self, live: NetworkDef, nl: NetlinkOps | None = None) -> StepContext:
        """What a sub-driver's steps get for one network."""
        return StepContext(
            net=live,
            nl=self.nl if nl is None else nl,
            run_dir=self.store.run_dir(live.name),
            netns=self.nl.netns,
            services=self.services,
            on_repair=self.traffic.reporter(live.name),
        )

    async def _store(self, fn: Callable[[*Ts], T], *args: *Ts) -> T:
        return await self._state_thread.call(fn, *args)

    # ------------------------------------------------------------------ define

    async def define(
        self, xml: bytes | str, *, name: str | None = None, privileged: bool = True
    ) -> str:
        """Define (or redefine) a network strictly; returns its name.

        ``name`` is the directory the definition was written to: the XML's
        ``<name>`` must equal it (EINVAL), and a definition without ``<name>``
        takes it. Emits ``defined`` (new) or ``updated`` (redefinition); a
        redefinition of an active network becomes effective at its next
        start, unless it differs only in DHCP hosts/ranges and DNS records:
        those are applied to the running network at once
        (:meth:`netfs.traffic.TrafficGuard.live_update`). ``privileged``:
        the caller may define ``<dnsmasq:options>`` (the filesystem decides
        who: :func:`netfs.fs.acts.privileged`); anyone else gets EPERM.
        """
        with self._recording(name if name in self._nets else None):
            # a large document is parsed off the loop that serves the others
            if len(xml) > PARSE_IN_THREAD_BYTES:
                net = await trio.to_thread.run_sync(_parse_definition, xml, name)
            else:
                net = _parse_definition(xml, name)
            if not privileged and has_raw_options(net):
                raise NetfsError(
                    errno.EPERM,
                    "only root may define <dnsmasq:options>: "
                    "raw dnsmasq options can run programs as root",
                )
            explicit_uuid = not net.uuid_generated
        async with self._transition(net.name):
            sub = subdrivers.for_mode(net.forward.mode, net)
            current = self._nets.get(net.name)  # stable: its lock is held
            if current is not None:
                sub.keep_generated(net, current.definition)
            links: set[str] = set()
            if sub.needs_link_names(net):
                links = {link.name for link in await self.nl.links()}
            # no checkpoint from here to the reservation below
            old = self._nets.get(net.name)
            _check_identity(self._nets, net, explicit_uuid)
            in_use = {
                b
                for other in self._nets.values()
                if other.name != net.name
                for b in (_bridge_of(other.definition), _bridge_of(other.live))
                if b
            }
            try:
                validate_network(net, bridges_in_use=in_use, device_exists=links.__contains__)
            except NetfsError as e:
                if e.errno == errno.EINVAL and "already in use" in e.message:
                    raise NetfsError(errno.EADDRINUSE, e.message) from None
                raise
            check_dnsmasq_name(net)  # '"' too: the pid-file line has the name as it is
            if (
                old is not None
                and old.persistent
                and old.problem is None
                and format_network(old.definition, inactive=True)
                == format_network(net, inactive=True)
            ):
                return net.name  # the definition it already has: nothing changes
            if old is None:
                n = NetRecord(name=net.name, definition=net)
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
                if old.live is not None:
                    await self.traffic.redefined(old, net)
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
                await self.traffic.forget(name)
                self._emit(name, "undefined")

    # ------------------------------------------------------------------ start / stop

    async def start(self, name: str) -> None:
        """Start a network; already active is a no-op success."""
        async with self._transition(name):
            n = self._get(name)
            if not n.active:
                await self._start_locked(n)

    async def _start_locked(self, n: NetRecord) -> None:
        if n.problem:
            raise NetfsError(errno.EINVAL, n.problem)
        # definitions are never changed in place (a change is a new object),
        # so the live copy may share their parts: a shallow copy suffices
        live = copy.copy(n.definition)
        sub = subdrivers.for_mode(live.forward.mode, live)
        sub.prepare(live)
        ctx = self._context(live)
        link = sub.watched_link(live)
        self._links.lost_in_start.discard(n.name)
        if link:
            self._links.starting[link] = n.name
        try:
            await self._run_start(sub, ctx)
            n.ports = {}
            self._set_live(n, live)
        finally:
            if link:
                self._links.starting.pop(link, None)
        self._emit(n.name, "started")
        self.traffic.started(n.name)
        if n.name in self._links.lost_in_start:
            # its link was deleted while it started (before the monitor
            # could know it as this network's)
            self._links.lost_in_start.discard(n.name)
            if not await sub.is_running(ctx):
                log.warning(
                    "network %s: its bridge vanished while it started: now inactive", n.name
                )
                await self._mark_down(n)

    async def _run_start(self, sub: subdrivers.SubDriver, ctx: StepContext) -> None:
        """The sub-driver's start, with the status file staged (the stale
        port files removed, the file written and fsync'ed as the start's
        intent, ``starting``: the steps never change the live definition)
        by the netlink thread as the first call of the start's submission
        -- no thread hop of its own (two wake-ups cost more than the write)
        and never on the loop; renamed into place once the network is up,
        so it is written last. A failure of either undoes the other."""
        staged: list[Staged] = []
        batch = self.nl.batch()
        batch.call(lambda: staged.append(self.store.stage_status(ctx.net)))
        try:
            await sub.start(ctx.joining(batch))
            await batch.flush()  # a start that sent nothing: the staging alone
        except BaseException:
            for s in staged:
                with contextlib.suppress(Exception):
                    self.store.discard_staged(s)
            raise
        try:
            self.store.publish_staged(staged[0])
            # status.xml until the live definition changes (a port is a
            # new live object): what the staging formatted, as it is
            self._started_text[ctx.net.name] = (ctx.net, staged[0].text.decode())
        except BaseException:
            try:
                await sub.stop(ctx)
            except Exception:
                log.exception("network %s: undoing a failed start", ctx.net.name)
            raise

    async def stop(self, name: str) -> None:
        """Stop a network; already inactive is a no-op success. Frees its ports."""
        async with self._transition(name):
            n = self._get(name)
            if n.live is None:
                return
            live = n.live
            await self._store(self.store.delete_status, name)
            try:
                await subdrivers.for_mode(live.forward.mode, live).stop(self._context(live))
            except Exception as e:
                msg = e.message if isinstance(e, NetfsError) else str(e)
                self.set_error(name, msg)
                log.exception("network %s: stopping", name)
            await self._finish_stop(n)

    async def _mark_down(self, n: NetRecord) -> None:
        """An active network found not running (recovery, the monitor): its
        status file goes, then it is stopped without its sub-driver (its
        programs, dnsmasq and rules, are stopped)."""
        await self._store(self.store.delete_status, n.name)
        if n.live is not None:
            await self.traffic.down(n.live)
        await self._finish_stop(n)

    async def _finish_stop(self, n: NetRecord) -> None:
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
            await self.traffic.forget(n.name)
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
        """Allocate a port on an active network and record it (:mod:`netfs.ports`)."""
        return await self._ports.create(name, port, xml)

    async def delete_port(self, name: str, port: str) -> None:
        await self._ports.delete(name, port)

    # ------------------------------------------------------------------ the parts

    async def startup(self) -> None:
        """Check the state directory, load the state leniently, reconcile with
        the kernel, autostart once per boot (:mod:`netfs.recovery`)."""
        await self._recovery.startup()

    async def reload(self) -> None:
        """SIGHUP: re-read the config directory, then autostart again.

        New configs are added (``defined``), changed ones replace the
        definition (``updated``); a persistent network whose file is gone is
        removed if inactive (``undefined``) or becomes transient if active
        (``updated``). A file that no longer parses leaves the network as it
        is (lenient: never dropped because of a bad file).
        """
        await self._recovery.reload()

    async def run_monitor(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Follow link events; reconcile networks whose link vanished
        (:mod:`netfs.reconcile`); keep dnsmasq and the firewall rules of
        active networks in place and report lease changes
        (:mod:`netfs.traffic`). Runs until cancelled; a failing monitor is
        logged, resynchronised and reopened."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self._events.log_lines, self.nl.idle)
            await nursery.start(self.traffic.run)
            await nursery.start(self._links.run)
            task_status.started()

    # ------------------------------------------------------------------ traffic

    def leases_text(self, name: str) -> str:
        """``NAME/leases``: the network's current DHCP leases, one line
        each ('' for a network without DHCP)."""
        return self.traffic.leases_text(self._get(name))

    def firewall_text(self, name: str) -> str:
        """``NAME/firewall``: the network's rules in place as ``nft list``
        prints them, as last read (the guard reads the table at every change
        of it, and at most a second after a read of this asks for it); ''
        when inactive or without rules (mode open)."""
        return self.traffic.firewall_text(self._get(name))

    async def firewall_listing(self, name: str) -> str:
        """Like :meth:`firewall_text`, read from the kernel now."""
        return await self.traffic.firewall_listing(self._get(name))

    async def resync(self) -> None:
        """Compare every active network with the kernel (after an overrun)."""
        await self._links.resync()

    async def repair(self, name: str) -> None:
        """A triggered repair (e.g. periodic): an active network that is
        still running gets back what it lost (every step's ``repair``, as at
        recovery); one that is not is marked inactive. A no-op for an
        inactive network; a failed repair is recorded as its error."""
        self._get(name)
        await self._links.check(name, repair=True)
