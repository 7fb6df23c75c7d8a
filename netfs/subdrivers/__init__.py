"""Sub-drivers: what starting, stopping and checking a network means per forward mode.

The driver core never branches on the forward mode; it asks :func:`for_mode`
for the sub-driver and calls it. A new forward type is a new entry in
``TABLE`` below (a mode name mapped to a chooser of the sub-driver).

| forward mode                          | sub-driver  | start / stop                     | running when            |
|---------------------------------------|-------------|----------------------------------|-------------------------|
| none, nat, route, open                | virtual     | bridge by netlink / delete ours  | our bridge exists       |
| bridge with ``<bridge name>``         | hostbridge  | mark only                        | that netdev exists      |
| bridge without a name, private, vepa, | direct      | mark only                        | always                  |
| passthrough                           |             |                                  |                         |
| hostdev                               | hostdev     | mark only                        | always                  |

The link monitor of the core watches the netdev that ``watched_link`` names
(the bridge of a virtual or host-bridge network): when it is deleted, the
core asks ``is_running`` and marks the network inactive if it is not.

Every sub-driver method but ``watched_link`` is ``async`` and takes the live
:class:`~netfs.model.network.NetworkDef` and the
:class:`~netfs.netlink.Netlink` of the namespace.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from netfs.errors import NetfsError
from netfs.subdrivers.direct import DirectDriver
from netfs.subdrivers.hostbridge import HostBridgeDriver
from netfs.subdrivers.hostdev import HostdevDriver
from netfs.subdrivers.virtual import VirtualDriver

if TYPE_CHECKING:
    from netfs.model.network import NetworkDef
    from netfs.netlink import Netlink

__all__ = ["TABLE", "SubDriver", "for_mode"]


class SubDriver(Protocol):
    async def start(self, net: NetworkDef, nl: Netlink) -> None:
        """Make the network's kernel side exist (or just accept it)."""

    async def stop(self, net: NetworkDef, nl: Netlink) -> None:
        """Undo start; never touches what this network did not create."""

    async def is_running(self, net: NetworkDef, nl: Netlink) -> bool:
        """Is an active network still there (daemon restart, link monitor)?"""

    async def repair(self, net: NetworkDef, nl: Netlink) -> None:
        """Give a running network back what it lost (recovery)."""

    def watched_link(self, net: NetworkDef) -> str | None:
        """The netdev whose deletion may end the network (the link monitor
        then asks is_running); None when no deletion does."""


VIRTUAL = VirtualDriver()
HOSTBRIDGE = HostBridgeDriver()
DIRECT = DirectDriver()
HOSTDEV = HostdevDriver()


def _bridge(net: NetworkDef | None) -> SubDriver:
    # forward mode bridge: a named host bridge (incl. openvswitch), or macvtap
    if net is not None and net.bridge.name:
        return HOSTBRIDGE
    return DIRECT


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
