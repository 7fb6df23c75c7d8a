"""The traffic guard: what keeps active networks carrying traffic (part of
:mod:`netfs.core`).

One :class:`TrafficGuard` per driver, running inside the core's monitor task
(:meth:`netfs.core.Driver.run_monitor`), costs nothing per idle network:

- **dnsmasq**: one pidfd per running dnsmasq of an active network, waited on
  by trio's epoll (no polling). When it becomes readable (the process
  exited) the network's lock is taken; if the network is still active, still
  needs a dnsmasq and none runs (a stop or a restart of our own is not an
  exit), dnsmasq is started again with the same files (leases kept: the
  helper's ``init``) -> event ``repaired dnsmasq``. A failing restart is the
  network's ``error`` and is retried with a growing delay (1 s .. 30 s).
- **firewall**: one ``nft monitor`` process inside the namespace; any line it
  prints (any change of any table) asks for a check, made at most every
  half second: the table ``inet netfs`` is read once for all networks and
  put right in one transaction (:func:`netfs.firewall.repair` with the
  networks registered in :attr:`Services.rules`): missing or changed rules
  put back without duplicates -> ``repaired firewall`` for each such
  network; rules of no registered network removed. Without ``nft monitor``
  the check runs every second.
- **leases**: inotify on the lease records (:class:`netfs.leases.LeaseWatch`):
  per change ``lease-added MAC ADDRESS`` / ``lease-removed MAC ADDRESS`` and
  the internal ``leases`` event (the file changed, renewals included).

Recovery (:meth:`TrafficGuard.recover`, after every active network's own
repair adopted or started its dnsmasq): the table is read once and only
missing rules are added; dnsmasq processes and rules of networks that are not
active are removed (unless some status could not be read).

Live changes (:meth:`TrafficGuard.live_update`): a redefinition of an active
network that differs only in ``<dhcp>`` hosts/ranges and ``<dns>``
hosts/txt/srv/forwarders is applied to the running dnsmasq.
"""

from __future__ import annotations

import copy
import errno
import logging
import os
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from netfs import firewall, leases, nsexec, subdrivers
from netfs.errors import NetfsError
from netfs.model import firewall as fwmodel
from netfs.model.dnsmasq import needs_dnsmasq
from netfs.model.network import NetworkDef
from netfs.state import TMP_PREFIX

if TYPE_CHECKING:
    from netfs.core import Driver
    from netfs.netrecord import NetRecord
    from netfs.subdrivers.services import Services

log = logging.getLogger(__name__)

CHECK_GAP = 0.5  # seconds between two reads of the table
POLL = 1.0  # seconds: the check without nft monitor
DEBOUNCE = 0.02  # a change's burst of monitor lines is one check
_COUNTERS = re.compile(r"counter packets [0-9]+ bytes [0-9]+")


def dhcp_prefixes(net: NetworkDef) -> dict[str, int] | None:
    """The prefix of the first address of each family (what ``leases``
    shows after an address), or None when the network has no DHCP."""
    if not any(ip.ranges or ip.hosts for ip in net.ips):
        return None
    out: dict[str, int] = {}
    for ip in net.ips:
        fam = "ipv6" if ip.family == "ipv6" else "ipv4"
        if fam not in out:
            prefix = ip.prefix_len()
            if prefix >= 0:
                out[fam] = prefix
    return out


class TrafficGuard:
    def __init__(self, core: Driver) -> None:
        self.core = core
        self.svc: Services | None = core.services
        self._nursery: trio.Nursery | None = None
        self._watching: dict[str, int] = {}  # network -> the dnsmasq pid waited on
        self._check = trio.Event()
        self._listing = fwmodel.Listing()
        self._listing_at = 0.0
        self._read_at = -CHECK_GAP  # trio.current_time() of the last read of the table
        self._ahead: _ReadAhead | None = None
        # the ruleset generation recovery's read showed (None: unknown)
        self._recovered_gen: int | None = None
        self._shown: dict[str, str] = {}  # per network: its rules as last announced
        self.checks = 0  # reads of the table by the guard (tests, benches)
        # set once the first nft monitor listens and it is decided whether
        # the table needs a check (tests: then check_pending tells)
        self.monitoring = trio.Event()

    # ------------------------------------------------------------ the task

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        svc = self.svc
        if svc is None:
            task_status.started()
            await trio.sleep_forever()
            return
        watch = leases.LeaseWatch(svc.dnsmasq.leases_dir)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._leases, watch)
                nursery.start_soon(self._firewall_checks)
                await nursery.start(self._nft_monitor)
                nursery.start_soon(self._watch_recovered)
                task_status.started()
        finally:
            self._nursery = None
            self._watching.clear()
            watch.close()

    async def _watch_recovered(self) -> None:
        """Watch the dnsmasq of every network active at start-up: their pids
        looked up in a worker thread (200 networks: ~20 ms of /proc reads,
        while the mount starts to answer). A network started meanwhile is
        watched already; a pid that exited meanwhile counts as an exit (the
        network's lock then decides whether it is one)."""
        svc = self.svc
        assert svc is not None
        names = [name for name, n in self.core._nets.items() if n.live is not None]
        pids = await trio.to_thread.run_sync(lambda: [svc.dnsmasq.pid(name) for name in names])
        nursery = self._nursery
        for name, pid in zip(names, pids, strict=True):
            n = self.core._nets.get(name)
            if pid is None or n is None or n.live is None or name in self._watching:
                continue
            if nursery is not None:
                self._watching[name] = pid
                nursery.start_soon(self._watch_pid, name, pid)

    def started(self, name: str) -> None:
        """A network became active (or was recovered): watch its dnsmasq."""
        svc, nursery = self.svc, self._nursery
        if svc is None or nursery is None:
            return
        n = self.core._nets.get(name)
        if n is None or n.live is None or not needs_dnsmasq(n.live):
            return  # no dnsmasq to watch (and no pid file to read on the start's path)
        pid = svc.dnsmasq.pid(name)
        if pid is None or self._watching.get(name) == pid:
            return
        self._watching[name] = pid
        nursery.start_soon(self._watch_pid, name, pid)

    # ------------------------------------------------------------ dnsmasq

    async def _watch_pid(self, name: str, pid: int) -> None:
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            fd = -1
        if fd >= 0:
            try:
                await trio.lowlevel.wait_readable(fd)
            finally:
                os.close(fd)
        if self._watching.get(name) != pid:
            return  # watched again meanwhile (another pid)
        del self._watching[name]
        delay = 1.0
        while not await self._dnsmasq_exited(name, pid):
            await trio.sleep(delay)
            delay = min(delay * 2, 30.0)
        self.started(name)

    async def _dnsmasq_exited(self, name: str, pid: int) -> bool:
        """Start dnsmasq again if its network still wants it; False: failed
        (try again later)."""
        core, svc = self.core, self.svc
        assert svc is not None
        async with core._lock(name):
            n = core._nets.get(name)
            if n is None or n.live is None or not needs_dnsmasq(n.live):
                return True
            if svc.dnsmasq.pid(name) is not None:
                return True  # restarted by us meanwhile
            log.warning("network %s: dnsmasq (pid %d) exited: starting it again", name, pid)
            try:
                await trio.to_thread.run_sync(svc.start_dnsmasq, n.live)
            except NetfsError as e:
                core.set_error(name, f"cannot start dnsmasq again: {e.message}")
                return False
            log.warning("network %s: repaired dnsmasq", name)
            core._emit(name, "repaired", detail="dnsmasq")
            return True

    # ------------------------------------------------------------ firewall

    def want_check(self) -> None:
        self._check.set()

    @property
    def check_pending(self) -> bool:
        """Has a check of the table been asked for and not begun yet?"""
        return self._check.is_set()

    async def _nft_monitor(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        assert self.svc is not None
        netns = self.svc.netns
        started = False
        while True:
            proc = None
            try:
                proc = nsexec.Watcher(netns, [firewall.NFT, "monitor"])
                if not started:
                    # once the process exists (nft, exec'd: a watcher of the
                    # daemon's processes never sees a second daemon), not
                    # once it listens: what changes before it listens is
                    # caught by the decision below
                    started = True
                    task_status.started()
                if not await self._unchanged_since_recovery(proc):
                    self.want_check()  # whatever happened while it was not watching
                self.monitoring.set()
                async for _chunk in proc.stdout:
                    self.want_check()
                log.warning("nft monitor ended: checking every %g s until it is back", POLL)
            except (OSError, NetfsError) as e:
                log.warning("no nft monitor (%s): checking every %g s", e, POLL)
            finally:
                if proc is not None:
                    with trio.CancelScope(shield=True):
                        if proc.returncode is None:
                            proc.kill()
                        await proc.wait()
            if not started:
                started = True
                task_status.started()
            # without the monitor: a check every POLL for a while, then try it again
            self.monitoring.set()
            for _ in range(30):
                self.want_check()
                await trio.sleep(POLL)

    async def _unchanged_since_recovery(self, proc: nsexec.Watcher) -> bool:
        """Once the monitor listens (its socket subscribed; at most 2 s
        waited for that): is the ruleset still the one recovery read (the
        same generation; first monitor only)? Then there is nothing to
        check: the 200 networks' table is not read again (~90 ms of nft,
        ~20 ms of parsing) while the mount starts to answer. False: check
        (a change made before the monitor listened is not missed)."""
        gen, self._recovered_gen = self._recovered_gen, None
        deadline = trio.current_time() + 2.0
        while not firewall.monitor_subscribed(proc.pid):
            if trio.current_time() > deadline or proc.returncode is not None:
                return False
            await trio.sleep(0.002)
        if gen is None or self.svc is None:
            return False
        return await firewall.generation(self.svc.netns) == gen

    async def _firewall_checks(self) -> None:
        assert self.svc is not None
        while True:
            await self._check.wait()
            # a burst of changes is one check, and the table is read at most
            # every CHECK_GAP (recovery's read counts: the check the monitor
            # asks for when it starts comes after the mount answers)
            await trio.sleep_until(max(trio.current_time() + DEBOUNCE, self._read_at + CHECK_GAP))
            self._check = trio.Event()
            if not self.svc.rules:
                continue  # no rules to keep in place (orphans go at recovery and stop)
            try:
                await self.check_firewall()
            except Exception as e:
                msg = e.message if isinstance(e, NetfsError) else str(e)
                log.warning("firewall check: %s", msg)

    async def check_firewall(
        self, *, orphans: bool = True, announce: bool = True, text: str | None = None
    ) -> firewall.Report:
        """Read the table once (or take ``text``, read a moment ago); put
        back what registered networks lack, remove what belongs to none.
        ``repaired firewall`` per network put right."""
        svc = self.svc
        assert svc is not None
        nets = list(svc.rules.values())
        if text is None:
            self._read_at = trio.current_time()
        report = await firewall.repair(svc.netns, nets, orphans=orphans, text=text)
        self.checks += 1
        self._listing = report.listing
        self._listing_at = time.monotonic()
        self._announce_listing({n.name for n in nets}, announce)
        repaired = {}
        for d in report.diffs:
            repaired[d.name] = d.state
        if not report.base_ok:
            # the table's own chains serve every network: all were affected
            for n in nets:
                repaired.setdefault(n.name, "the table's base chains")
        for name, state in sorted(repaired.items()):
            if svc.rules.get(name) is not None and name not in svc.applying:
                log.warning("network %s: repaired firewall (%s)", name, state)
                self.core._emit(name, "repaired", detail="firewall")
        if report.diffs or report.orphans or not report.base_ok:
            self._listing_at = 0.0  # what was read is not what is there now
            self.want_check()
        return report

    def _announce_listing(self, names: set[str], announce: bool) -> None:
        """The internal "firewall" event for each network whose rules as
        shown (``firewall_text``, counters aside) differ from the last read:
        the filesystem announces the change of ``NAME/firewall`` (a start's
        rules are first read just after its ``started``). Not at recovery
        (``announce`` False): nothing was shown before it."""
        for name in sorted(names | set(self._shown)):
            shown = _COUNTERS.sub("counter", firewall.render_listing(self._listing, name))
            if announce and self._shown.get(name, "") != shown and name in self.core._nets:
                self.core._emit(name, "firewall")
            if shown:
                self._shown[name] = shown
            else:
                self._shown.pop(name, None)

    def firewall_text(self, n: NetRecord) -> str:
        if self.svc is None or n.live is None:
            return ""
        if self.svc.rules and time.monotonic() - self._listing_at > 1.0:
            # shown as last read; read again soon (a check reads nothing
            # while no network has rules: no wake-up of its task for it)
            self.want_check()
        return firewall.render_listing(self._listing, n.name)

    async def firewall_listing(self, n: NetRecord) -> str:
        if self.svc is None or n.live is None:
            return ""
        return await firewall.listing(self.svc.netns, n.name)

    # ------------------------------------------------------------ leases

    async def _leases(self, watch: leases.LeaseWatch) -> None:
        core = self.core
        async for change in watch.changes():
            name = change.network
            if name not in core._nets:
                continue
            for mac, address in change.removed:
                core._emit(name, "lease-removed", detail=_pair(mac, address))
            for mac, address in change.added:
                core._emit(name, "lease-added", detail=_pair(mac, address))
            core._emit(name, "leases")

    def leases_text(self, n: NetRecord) -> str:
        """``NAME/leases``, made once per change of the network's lease
        records (or of its prefixes) and per expiry of a lease in it; a
        read in between costs one stat (:class:`netfs.leases.LeasesText`)."""
        if self.svc is None:
            return ""
        prefixes = dhcp_prefixes(n.live or n.definition)
        if prefixes is None:
            return ""
        texts = self._leases_texts
        if texts is None:
            texts = self._leases_texts = leases.LeasesText()
        return texts.text(self.svc.dnsmasq.leases_dir, n.name, time.time(), prefixes)

    _leases_texts: leases.LeasesText | None = None  # made at the first read

    async def forget(self, name: str) -> None:
        """The network is undefined: its lease records and files go."""
        svc = self.svc
        if svc is None:
            return

        def drop() -> None:
            svc.dnsmasq.remove_files(name)
            leases.drop_records(svc.dnsmasq.state_dir, name)

        try:
            await trio.to_thread.run_sync(drop)
        except (OSError, ValueError) as e:
            log.warning("network %s: cannot remove its lease records: %s", name, e)

    # ------------------------------------------------------------ recovery

    def read_ahead(self, nursery: trio.Nursery) -> None:
        """Recovery, first thing: read the table now, in the background (nft
        takes ~90 ms for 200 networks, on a core of its own), while the state
        is loaded and each network recovered; :meth:`recover` uses that read
        unless netfs changed the table since (a network found down)."""
        svc = self.svc
        if svc is None:
            return
        ahead = self._ahead = _ReadAhead(firewall.changes(svc.netns), trio.current_time())
        nursery.start_soon(ahead.run, svc.netns)

    async def _table_ahead(self) -> str | None:
        """What :meth:`read_ahead` read, if it is still the table as netfs
        left it; None: read it again."""
        ahead, self._ahead = self._ahead, None
        if ahead is None or self.svc is None:
            return None
        await ahead.done.wait()
        if ahead.text is None or ahead.changes != firewall.changes(self.svc.netns):
            return None
        self._read_at = ahead.at
        self._recovered_gen = ahead.generation
        return ahead.text

    async def recover(self, *, sweep: bool) -> None:
        """After every active network's own repair: the firewall of all of
        them from one read (the one :meth:`read_ahead` started, if any);
        orphans (rules, dnsmasq) removed when ``sweep``."""
        svc = self.svc
        if svc is None:
            return
        svc.rules = {
            name: n.live
            for name, n in self.core._nets.items()
            if n.live is not None and not fwmodel.expected_rules(n.live).empty()
        }
        # the rules and the processes are independent: the dnsmasq orphans
        # are looked for (a /proc scan, in a worker thread) while the table
        # is compared
        active = {name for name, n in self.core._nets.items() if n.live is not None}
        failed: list[BaseException] = []

        async def stop_orphans() -> None:
            assert svc is not None
            try:
                await trio.to_thread.run_sync(svc.dnsmasq.stop_orphans, active)
            except Exception as e:  # raised below as it is, not in a group
                failed.append(e)

        async with trio.open_nursery() as nursery:
            if sweep:
                nursery.start_soon(stop_orphans)
            await self._recover_firewall(sweep)
        if failed:
            raise failed[0]
        await trio.to_thread.run_sync(_remove_stale_temp_files, svc)

    async def _recover_firewall(self, sweep: bool) -> None:
        svc = self.svc
        assert svc is not None
        text = await self._table_ahead()
        try:
            try:
                await self.check_firewall(orphans=sweep, announce=False, text=text)
            except NetfsError as e:
                if text is None or e.errno == errno.ENOENT:
                    raise
                # changed by someone else since it was read: read it again
                log.info("recovery of the firewall rules: %s; reading the table again", e.message)
                await self.check_firewall(orphans=sweep, announce=False)
        except NetfsError as e:
            log.warning("recovery of the firewall rules: %s", e.message)
            for name in svc.rules:
                self.core.set_error(name, f"cannot check the firewall rules: {e.message}")

    def reporter(self, name: str) -> Callable[[str], None]:
        """What a network's steps call for each repair: logged, one
        ``repaired WHAT`` event."""

        def repaired(what: str) -> None:
            log.warning("network %s: repaired %s", name, what)
            self.core._emit(name, "repaired", detail=what)

        return repaired

    # ------------------------------------------------------------ live changes

    async def redefined(self, n: NetRecord, net: NetworkDef) -> None:
        """A saved redefinition of the active network ``n`` (its lock held):
        applied to it now if only DHCP/DNS entries differ (the live
        definition and status file become the new ones); a failure is its
        error (the definition stays saved, for the next start)."""
        core = self.core
        try:
            live = await self.live_update(n, net)
        except NetfsError as e:
            core.set_error(n.name, f"saved, but not applied to the running network: {e.message}")
            return
        if live is not None:
            core._set_live(n, live)
            n.recount()
            await core._ports._save_qos(n)  # the status file: the new live definition

    async def live_update(self, n: NetRecord, new: NetworkDef) -> NetworkDef | None:
        """Apply a redefinition of the active network ``n`` to its running
        dnsmasq if it differs only in DHCP hosts/ranges and DNS records
        (the caller holds the network's lock). Returns the new live
        definition (a copy of ``new`` completed like a start's), or None
        when the change waits for the next start."""
        old = n.live
        if old is None or self.svc is None:
            return None
        live = copy.copy(new)
        if live.mac is None:
            live.mac = old.mac
        if not subdrivers.for_mode(old.forward.mode, old).changes_live(old, live):
            return None
        svc = self.svc
        was, now = needs_dnsmasq(old), needs_dnsmasq(live)
        if was or now:
            old_files = svc.render(old) if was else None
            new_files = svc.render(live) if now else None
            if old_files != new_files:
                await trio.to_thread.run_sync(_apply_dnsmasq, svc, live, old_files, new_files)
        if fwmodel.expected_rules(old) != fwmodel.expected_rules(live):
            if not fwmodel.expected_rules(live).empty():
                svc.rules[live.name] = live
                await firewall.apply(svc.netns, live)
        elif live.name in svc.rules:
            svc.rules[live.name] = live
        return live

    async def down(self, live: NetworkDef) -> None:
        """An active network found without its bridge: its programs go."""
        svc = self.svc
        if svc is None:
            return
        svc.rules.pop(live.name, None)
        try:
            await firewall.remove(svc.netns, live)
        except NetfsError as e:
            log.warning("network %s: removing its rules: %s", live.name, e.message)
        try:
            await trio.to_thread.run_sync(svc.stop_dnsmasq, live.name)
        except (NetfsError, OSError) as e:
            log.warning("network %s: stopping its dnsmasq: %s", live.name, e)


class _ReadAhead:
    """One read of the table started before recovery needs it."""

    def __init__(self, changes: int, at: float) -> None:
        self.changes = changes  # firewall.changes() when the read started
        self.at = at
        self.text: str | None = None  # None: failed (recovery reads again)
        self.generation: int | None = None  # of the ruleset read, if known
        self.done = trio.Event()

    async def run(self, netns: str | None) -> None:
        try:
            before = await firewall.generation(netns)
            self.text = await firewall.read_text(netns)
            if before is not None and await firewall.generation(netns) == before:
                self.generation = before
        except Exception as e:  # recovery reads again, and reports
            log.debug("reading the firewall rules ahead: %s", e)
        finally:
            self.done.set()


def _apply_dnsmasq(
    svc: Services,
    live: NetworkDef,
    old: tuple[str, str, str] | None,
    new: tuple[str, str, str] | None,
) -> None:
    d = svc.dnsmasq
    name = live.name
    if new is None:
        svc.stop_dnsmasq(name)
        return
    if old is not None and old[0] == new[0] and d.pid(name) is not None:
        d.write_hosts(name, new[1], new[2])
        if d.reload(name):
            log.info("network %s: hosts files rewritten, dnsmasq reloaded", name)
            return
    d.write_files(name, *new)
    if d.pid(name) is not None:
        d.restart(name)
    else:
        d.start(name)
    log.info("network %s: dnsmasq restarted with its new configuration", name)


def _remove_stale_temp_files(svc: Services) -> None:
    """Temporary files a crash left in the dnsmasq and leases directories
    (a lease helper's only when its process is gone)."""
    d = svc.dnsmasq
    for directory in (d.dir, d.leases_dir):
        try:
            entries = list(os.scandir(directory))
        except OSError:
            continue
        for e in entries:
            stale = e.name.startswith(TMP_PREFIX)
            if not stale and e.name.startswith(".") and ".tmp" in e.name:
                pid = e.name.rsplit(".tmp", 1)[1]
                stale = pid.isdigit() and not os.path.exists(f"/proc/{pid}")
            if stale:
                try:
                    os.unlink(e.path)
                    log.info("removed stale temporary file %s", e.path)
                except OSError:
                    pass


def _pair(mac: str, address: str) -> str:
    return f"{leases.escape(mac)} {leases.escape(address)}"
