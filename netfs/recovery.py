"""Reading the disk back: start-up recovery and SIGHUP reload (part of :mod:`netfs.core`).

The rules (which network counts as active, what is an orphan, when autostart
runs, what a reload changes) are described once, in docs/internals.md
(Core, Rules: "Recovery"). In short: nothing destructive happens unless the
state directory is writable and the state was read completely.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import secrets
import socket
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from netfs import subdrivers
from netfs.errors import NetfsError
from netfs.model.network import NetworkDef, format_network
from netfs.netlink import AddrInfo, Batch, LinkInfo, NetlinkOps, RouteInfo, RouteVerdict
from netfs.netrecord import NetRecord
from netfs.state import TMP_PREFIX

if TYPE_CHECKING:
    from netfs.core import Driver

log = logging.getLogger(__name__)


def _link_of(live: NetworkDef) -> str | None:
    """The link a start of ``live`` was about to create (its sub-driver's
    answer): what a start intent names."""
    return subdrivers.for_mode(live.forward.mode, live).intent(live)


class KernelSnapshot:
    """:class:`NetlinkOps` for recovery: ``link``/``links`` answer from one
    dump, ``addresses``/``routes`` from one dump each (made on first use),
    ``read_sysctl`` from one read per file until a sysctl is written;
    every change (the repairs) goes to the real adapter. Each network only
    reads its own links before changing them, so the snapshot stays true for
    what is asked of it."""

    def __init__(self, nl: NetlinkOps, links: list[LinkInfo]) -> None:
        self._nl = nl
        self._links = {link.name: link for link in links}
        self._addrs: dict[str, list[AddrInfo]] | None = None
        self._routes: dict[int, list[RouteInfo]] = {}
        self._sysctls: dict[str, str | None] = {}  # read once (every NAT network asks)

    @property
    def netns(self) -> str | None:
        return self._nl.netns

    # -- answered from the dumps -------------------------------------------------

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

    async def check_routes(
        self, family: int, match: list[tuple[str, int]], verdict: RouteVerdict
    ) -> None:
        verdict(await self.routes(family, match=match))

    async def read_sysctl(self, path: str) -> str | None:
        if path not in self._sysctls:
            self._sysctls[path] = await self._nl.read_sysctl(path)
        return self._sysctls[path]

    # -- changes: to the kernel ------------------------------------------------------

    def batch(self) -> Batch:
        self._sysctls.clear()  # a batch may write one
        return self._nl.batch()

    async def create_bridge(
        self,
        name: str,
        *,
        mac: str | None,
        mtu: int | None,
        stp: bool,
        forward_delay: int,
        alias: str | None,
        up: bool = True,
    ) -> int | None:
        return await self._nl.create_bridge(
            name, mac=mac, mtu=mtu, stp=stp, forward_delay=forward_delay, alias=alias, up=up
        )

    async def delete_link(self, name: str) -> bool:
        return await self._nl.delete_link(name)

    async def set_up(self, name: str) -> None:
        await self._nl.set_up(name)

    async def set_alias(self, name: str, alias: str) -> None:
        await self._nl.set_alias(name, alias)

    async def add_address(self, ifname: str, address: str, prefixlen: int) -> None:
        await self._nl.add_address(ifname, address, prefixlen)

    async def add_route(
        self,
        dst: str,
        prefixlen: int,
        *,
        gateway: str | None = None,
        metric: int | None = None,
        ifname: str | None = None,
        best_effort: bool = False,
    ) -> None:
        await self._nl.add_route(
            dst, prefixlen, gateway=gateway, metric=metric, ifname=ifname, best_effort=best_effort
        )

    async def set_ipv6_sysctls(self, ifname: str, *, disable: bool) -> None:
        self._sysctls.clear()
        await self._nl.set_ipv6_sysctls(ifname, disable=disable)

    async def write_sysctl(self, key: str, value: str, *, missing_ok: bool = False) -> None:
        self._sysctls.clear()  # read again after any change
        await self._nl.write_sysctl(key, value, missing_ok=missing_ok)


def check_writable(directory: Path) -> None:
    """Create and remove a file in ``directory``: NetfsError naming it if
    the daemon cannot write its own state there."""
    probe = directory / f"{TMP_PREFIX}probe-{secrets.token_hex(4)}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        code = e.errno or errno.EIO
        raise NetfsError(
            code,
            f"state directory {directory} is not writable ({os.strerror(code)}): "
            "netfs does not start without it (nothing was changed)",
        ) from None


class Recovery:
    def __init__(self, core: Driver) -> None:
        self.core = core

    async def startup(self) -> None:
        failed: Exception | None = None
        async with trio.open_nursery() as nursery:
            # nft lists 200 networks' rules in ~90 ms: on the other core,
            # while the state is read and each network recovered
            self.core.traffic.read_ahead(nursery)
            try:
                await self._startup()
            except Exception as e:  # raised as it is, not in a group
                failed = e
                nursery.cancel_scope.cancel()
        if failed is not None:
            raise failed

    async def _startup(self) -> None:
        core = self.core
        store = core.store
        # before anything is changed: the daemon must be able to record
        # what it does (a read-only state directory changes nothing)
        await core._store(check_writable, store.state_dir)
        await core._store(store.ensure_dirs)
        await core._store(store.remove_stale_temp_files)
        loaded = await core._store(store.load)
        for path, problem in loaded.problems:
            log.warning("%s: %s", path, problem)
        # status files that could not be read completely: their networks'
        # kernel side is unknown, so nothing is taken for an orphan
        bad_status = {
            name: f"cannot read its status file {store.status_path(name)}: {msg}"
            for name, msg in loaded.bad_statuses.items()
        }
        for name, cfg in loaded.configs.items():
            error = cfg.problem or bad_status.get(name, "")
            core._nets[name] = NetRecord(
                name=name,
                definition=cfg.definition,
                autostart=cfg.autostart,
                problem=cfg.problem,
                error=error,
            )
            if error:  # logged above with its file
                core._emit(name, "error")
        for name, st in loaded.statuses.items():
            n = core._nets.get(name)
            if n is None:
                n = core._nets[name] = NetRecord(name=name, definition=st.live, persistent=False)
            n.ports = st.ports
            core._set_live(n, st.live)
            n.recount()  # the status file's counts may be stale: count the ports

        # one dump of the kernel's links (and, if asked, addresses and routes)
        # serves every network's check instead of a round trip per network
        snap = KernelSnapshot(core.nl, await core.nl.links())
        for n in list(core._nets.values()):
            if n.active:
                await self._recover_one(n, snap)
        if bad_status:
            log.warning(
                "not looking for orphan links: the status of %s could not be read",
                ", ".join(sorted(bad_status)),
            )
        else:
            await self._sweep_orphans(snap)
        # the firewall of every active network from one read of the table;
        # dnsmasq processes and rules of inactive networks removed
        await core.traffic.recover(sweep=not bad_status)
        if not await core._store(store.autostarted):
            await self.autostart(skip=set(bad_status))
            await core._store(store.mark_autostarted)

    async def _recover_one(self, n: NetRecord, snap: KernelSnapshot) -> None:
        core = self.core
        assert n.live is not None
        live = n.live
        sub = subdrivers.for_mode(live.forward.mode, live)
        ctx = core._context(live, snap)
        async with core._lock(n.name):
            try:
                running = await sub.is_running(ctx)
            except Exception as e:  # unknown is not "down": leave it as it is
                msg = e.message if isinstance(e, NetfsError) else str(e)
                core.set_error(n.name, f"cannot check whether it runs: {msg}")
                return
            if running:
                try:
                    await sub.repair(ctx)
                except Exception as e:
                    msg = e.message if isinstance(e, NetfsError) else str(e)
                    core.set_error(n.name, f"repair failed: {msg}")
                return
            log.warning("network %s: recorded active but not running: now inactive", n.name)
            await core._mark_down(n)

    async def _sweep_orphans(self, snap: KernelSnapshot) -> None:
        """Every sub-driver removes what a crash left behind; then the start
        intents are cleared."""
        core = self.core
        live = [n.live for n in core._nets.values() if n.live is not None]
        intents = await core._store(core.store.load_intents, _link_of)
        pending = {
            link: name
            for name, (_uuid, link) in intents.items()
            if link and not (name in core._nets and core._nets[name].active)
        }
        links = await snap.links()
        for sub in subdrivers.ALL:
            await sub.sweep_orphans(core.nl, links, live, pending)
        for name in intents:
            await core._store(core.store.delete_intent, name)

    async def autostart(self, skip: Iterable[str] = ()) -> None:
        core = self.core
        skip = set(skip)
        for name in sorted(core._nets):
            n = core._nets.get(name)
            if n is None or not n.autostart or n.active or name in skip:
                continue
            try:
                await core.start(name)
            except NetfsError as e:
                log.warning("autostart of network %s failed: %s", name, e.message)

    async def reload(self) -> None:
        core = self.core
        store = core.store
        # what this reload reads may be overtaken by a define, undefine or
        # autostart change made while it runs: those networks are skipped
        mark = core._change_seq
        configs, problems = await core._store(store.load_configs)
        bad = {p.name[: -len(".xml")] for p, _ in problems if p.parent == store.config_dir}
        for path, problem in problems:
            stem = path.name[: -len(".xml")]
            if (
                path.parent == store.config_dir
                and stem in core._nets
                and stem not in configs
                and core._changed_at.get(stem, 0) <= mark
            ):
                # the network stays as it was; its `error` says why the edit was not taken
                core.set_error(stem, f"cannot reload {path}: {problem}")
            else:
                log.warning("%s: %s", path, problem)
        for name, cfg in configs.items():
            async with core._lock(name):
                if core._changed_at.get(name, 0) > mark:
                    continue
                n = core._nets.get(name)
                if n is None:
                    core._nets[name] = NetRecord(
                        name=name,
                        definition=cfg.definition,
                        autostart=cfg.autostart,
                        problem=cfg.problem,
                    )
                    core._emit(name, "defined")
                    if cfg.problem:
                        core.set_error(name, cfg.problem)
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
                    core._emit(name, "updated")
                    if cfg.problem:
                        core.set_error(name, cfg.problem)
        for name in list(core._nets):
            if name in configs or name in bad:
                continue
            async with core._lock(name):
                n = core._nets.get(name)
                if n is None or not n.persistent or core._changed_at.get(name, 0) > mark:
                    continue
                if await core._store(store.config_path(name).exists):
                    continue
                if n.autostart:  # undefined by hand: its autostart link goes too
                    await core._store(store.set_autostart, name, False)
                n.autostart = False
                if n.active:
                    n.persistent = False
                    core._emit(name, "updated")
                else:
                    del core._nets[name]
                    core._emit(name, "undefined")
        await self.autostart()
