"""Live reconciliation: the core's link monitor (part of :mod:`netfs.core`).

The core tells :class:`LinkReconciler` which link each active network lives
on (its sub-driver's ``watched_link``) and which tag its links carry (the
sub-driver's ``tag``). A deleted link that is an active network's (by tag or
by name) triggers a check of that network under its lock, with the
sub-driver's ``is_running``; if it is down the network is marked inactive
without the sub-driver's stop (the link is gone, and a same-named link made
meanwhile is not ours to delete). A link that shows a network's tag under
another name was renamed behind our back: the network stops the same way and
the sub-driver's ``release`` makes the renamed link not ours. An ``overrun``
of the monitor socket resynchronises every active network; when the
monitor first listens, one dump of the links catches what changed since
recovery looked (:meth:`LinkReconciler.first_look`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

from netfs import subdrivers
from netfs.netlink import LinkEvent

if TYPE_CHECKING:
    from netfs.core import Driver
    from netfs.model.network import NetworkDef

log = logging.getLogger(__name__)


class LinkReconciler:
    def __init__(self, core: Driver) -> None:
        self.core = core
        # netdevs watched (sub-driver's watched_link of active networks) ->
        # names of the networks (host bridges may be shared)
        self.watched: dict[str, set[str]] = {}
        self.tags: dict[str, str] = {}  # a sub-driver's tag -> its network
        self.checking: set[str] = set()
        self.renamed: dict[str, str] = {}  # network -> the new name of its renamed link
        # link being started -> its network, until the network is live (a
        # deletion seen then is checked once the start is over)
        self.starting: dict[str, str] = {}
        self.lost_in_start: set[str] = set()
        self._resyncing = False
        self._resync_again = False

    # -- what the core tells it --------------------------------------------------

    def track(self, name: str, live: NetworkDef, on: bool) -> None:
        sub = subdrivers.for_mode(live.forward.mode, live)
        link = sub.watched_link(live)
        tag = sub.tag(live)
        if on:
            if link:
                self.watched.setdefault(link, set()).add(name)
            if tag:
                self.tags[tag] = name
            return
        users = self.watched.get(link or "")
        if users is not None:
            users.discard(name)
            if not users:
                del self.watched[link or ""]
        if tag and self.tags.get(tag) == name:
            del self.tags[tag]

    # -- the monitor ---------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        started = False
        async with trio.open_nursery() as nursery:
            while True:
                try:
                    async with self.core.nl.monitor(rcvbuf=self.core.monitor_rcvbuf) as events:
                        if not started:
                            started = True
                            task_status.started()
                            nursery.start_soon(self.first_look, nursery)
                        else:
                            nursery.start_soon(self.resync)
                        async for ev in events:
                            try:
                                self.on_event(ev, nursery)
                            except Exception:
                                log.exception("link event %r", ev)
                except Exception:
                    log.exception("link monitor failed; reopening")
                await trio.sleep(0.1)  # do not spin if it keeps ending

    async def first_look(self, nursery: trio.Nursery) -> None:
        """Once the monitor first listens: a link deleted or renamed after
        recovery looked at the kernel but before the subscription (at
        daemon start) sent its event to nobody; one dump finds it, and it
        is handled as its event would have been."""
        try:
            links = await self.core.nl.links()
        except Exception:
            log.exception("link monitor: the first look at the links")
            return
        present = {link.name for link in links}
        for link in links:
            owner = self.tags.get(link.alias or "")
            if owner is not None:
                self._on_tagged_link(owner, link.name, nursery)
        for ifname, names in list(self.watched.items()):
            if ifname not in present:
                for name in sorted(names - self.checking):
                    self._check_soon(name, nursery)

    def on_event(self, ev: LinkEvent, nursery: trio.Nursery) -> None:
        if ev.kind == "overrun":
            self.core.overruns += 1
            log.warning("link monitor overrun: resynchronising")
            nursery.start_soon(self.resync)
            return
        owner = self.tags.get(ev.alias or "")
        if ev.kind == "new":
            if owner is not None and ev.name:
                self._on_tagged_link(owner, ev.name, nursery)
            return
        if ev.kind != "del":
            return
        names: set[str] = set()
        if owner is not None:
            names.add(owner)
        if ev.name:
            names.update(self.watched.get(ev.name, ()))
            starting = self.starting.get(ev.name)
            if starting is not None:
                self.lost_in_start.add(starting)
        for name in sorted(names - self.checking):
            self._check_soon(name, nursery)

    def _on_tagged_link(self, name: str, ifname: str, nursery: trio.Nursery) -> None:
        """A link carrying an active network's tag under another name than
        the network's link: renamed behind our back. The network no longer
        has its link (it stops, as for a deletion); the renamed link is left
        to whoever renamed it."""
        n = self.core._nets.get(name)
        if n is None or n.live is None:
            return
        link = subdrivers.for_mode(n.live.forward.mode, n.live).watched_link(n.live)
        if link and link != ifname and name not in self.checking:
            self.renamed[name] = ifname
            self._check_soon(name, nursery)

    def _check_soon(self, name: str, nursery: trio.Nursery) -> None:
        self.checking.add(name)
        nursery.start_soon(self.check, name)

    async def check(self, name: str, *, repair: bool = False) -> None:
        """Is the active network ``name`` still running? If not, mark it
        down; if it is and ``repair``, its sub-driver gives it back what it
        lost (a failure is recorded as its error)."""
        core = self.core
        try:
            async with core._transition(name):
                self.checking.discard(name)
                n = core._nets.get(name)
                if n is None or n.live is None:
                    return
                live = n.live
                sub = subdrivers.for_mode(live.forward.mode, live)
                ctx = core._context(live)
                if await sub.is_running(ctx):
                    if repair:
                        try:
                            await sub.repair(ctx)
                        except Exception as e:
                            msg = getattr(e, "message", None) or str(e)
                            core.set_error(name, f"repair failed: {msg}")
                    return
                renamed = self.renamed.pop(name, None)
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
                    try:
                        await sub.release(core.nl, live, renamed)
                    except Exception as e:
                        log.warning("cannot clear the tag of %s: %s", renamed, e)
                await core._mark_down(n)
        except Exception:
            log.exception("network %s: reconciling", name)
        finally:
            self.checking.discard(name)
            self.renamed.pop(name, None)

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
                    for n in list(self.core._nets.values()):
                        if n.active and n.name not in self.checking:
                            self._check_soon(n.name, nursery)
                if not self._resync_again:
                    break
        finally:
            self._resyncing = False
