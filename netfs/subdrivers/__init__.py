"""Sub-drivers: what a network's forward mode means, behind one protocol.

The driver core asks :func:`for_mode` for the sub-driver of a network and
calls it; it never asks which mode it has. Everything mode-specific lives in
the sub-driver: the start policies (:meth:`SubDriver.prepare`,
:meth:`SubDriver.keep_generated`, :meth:`SubDriver.needs_link_names`), the
kernel work (a start recipe of steps with one undo path and repairs, see
:mod:`netfs.subdrivers.steps`), the link its network lives on
(:meth:`SubDriver.watched_link`), the tag that marks the links it made
(:meth:`SubDriver.tag`), what a renamed link needs (:meth:`SubDriver.release`)
and the sweeping of orphans a crash left (:meth:`SubDriver.sweep_orphans`,
asked of every sub-driver in :data:`ALL` at recovery). A new forward type is
a new entry in ``TABLE`` below (a mode name mapped to a chooser of the
sub-driver).

| forward mode                          | sub-driver  | start / stop                     | running when            |
|---------------------------------------|-------------|----------------------------------|-------------------------|
| none, nat, route, open                | virtual     | bridge by netlink / delete ours  | our bridge exists       |
| bridge with ``<bridge name>``         | hostbridge  | mark only                        | that netdev exists      |
| bridge without a name, private, vepa, | direct      | mark only                        | always                  |
| passthrough                           |             |                                  |                         |
| hostdev                               | hostdev     | mark only                        | always                  |
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from netfs.errors import NetfsError
from netfs.subdrivers.direct import DirectDriver
from netfs.subdrivers.hostbridge import HostBridgeDriver
from netfs.subdrivers.hostdev import HostdevDriver
from netfs.subdrivers.steps import Recipe, Step, StepContext
from netfs.subdrivers.virtual import VirtualDriver

if TYPE_CHECKING:
    from netfs.model.network import NetworkDef
    from netfs.netlink import LinkInfo, NetlinkOps

__all__ = ["ALL", "TABLE", "Recipe", "Step", "StepContext", "SubDriver", "for_mode"]


class SubDriver(Protocol):
    # -- policies (pure) ---------------------------------------------------------

    def prepare(self, live: NetworkDef) -> None:
        """Complete a live definition before its start (e.g. a MAC that a
        leniently loaded definition lacks)."""

    def keep_generated(self, net: NetworkDef, current: NetworkDef) -> None:
        """A redefinition keeps what was generated for ``current`` (MAC,
        bridge name) where ``net`` omits it."""

    def needs_link_names(self, net: NetworkDef) -> bool:
        """Does defining ``net`` need the names of the host's links (a
        generated bridge name must avoid them)?"""

    def changes_live(self, old: NetworkDef, new: NetworkDef) -> bool:
        """May an active network's ``old`` definition become ``new`` without
        a restart (its dnsmasq and firewall rules changed where it runs)?"""

    def intent(self, live: NetworkDef) -> str | None:
        """The link a start of ``live`` (prepared) is about to create, or
        None: recovery asks it of the live definition a start intent holds
        (its staged status file), to find that link after a crash."""

    # -- the kernel ----------------------------------------------------------------

    async def start(self, ctx: StepContext) -> None:
        """Make the network's kernel side exist (or just accept it); a start
        that cannot work (e.g. a subnet in use) is refused before any change."""

    async def stop(self, ctx: StepContext) -> None:
        """Undo start; never touches what this network did not create."""

    async def is_running(self, ctx: StepContext) -> bool:
        """Is an active network still there (daemon restart, link monitor)?"""

    async def repair(self, ctx: StepContext) -> None:
        """Give a running network back what it lost (recovery)."""

    # -- its links -------------------------------------------------------------------

    def watched_link(self, net: NetworkDef) -> str | None:
        """The netdev whose deletion may end the network (the link monitor
        then asks is_running); None when no deletion does."""

    def tag(self, net: NetworkDef) -> str | None:
        """The alias the links made for ``net`` carry (a link showing it
        under another name than watched_link was renamed), or None."""

    async def release(self, nl: NetlinkOps, net: NetworkDef, ifname: str) -> None:
        """``ifname`` carried ``net``'s tag but is not its link any more
        (renamed behind our back): make it not ours."""

    async def sweep_orphans(
        self,
        nl: NetlinkOps,
        links: list[LinkInfo],
        live: list[NetworkDef],
        intents: dict[str, str],
    ) -> None:
        """At recovery, remove what a crash left behind: ``links`` is one dump,
        ``live`` the active networks, ``intents`` the links named in start
        intents of networks that are not active (link -> network)."""


VIRTUAL = VirtualDriver()
HOSTBRIDGE = HostBridgeDriver()
DIRECT = DirectDriver()
HOSTDEV = HostdevDriver()


def _bridge(net: NetworkDef | None) -> SubDriver:
    # forward mode bridge: a named host bridge (incl. openvswitch), or macvtap
    if net is not None and net.bridge.name:
        return HOSTBRIDGE
    return DIRECT


ALL: tuple[SubDriver, ...] = (VIRTUAL, HOSTBRIDGE, DIRECT, HOSTDEV)


def _fixed(driver: SubDriver) -> Callable[[NetworkDef | None], SubDriver]:
    return lambda _net: driver


TABLE: dict[str, Callable[[NetworkDef | None], SubDriver]] = {
    "none": _fixed(VIRTUAL),
    "nat": _fixed(VIRTUAL),
    "route": _fixed(VIRTUAL),
    "open": _fixed(VIRTUAL),
    "bridge": _bridge,
    "private": _fixed(DIRECT),
    "vepa": _fixed(DIRECT),
    "passthrough": _fixed(DIRECT),
    "hostdev": _fixed(HOSTDEV),
}


def for_mode(mode: str, net: NetworkDef | None = None) -> SubDriver:
    """The sub-driver for a forward mode (``net`` decides between host bridge
    and macvtap for mode bridge)."""
    try:
        choose = TABLE[mode]
    except KeyError:
        raise NetfsError(errno.EINVAL, f"unsupported forward mode '{mode}'") from None
    return choose(net)
