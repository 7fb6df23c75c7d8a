"""Forward mode bridge with a ``<bridge name>`` (incl. openvswitch): the host's bridge.

Nothing is created or removed: start and stop only mark the network, and the
bridge's existence is not checked at start (as libvirt). It counts as running
while a netdev of that name exists (libvirt's networkUpdateState, at daemon
start); the core's link monitor applies the same rule live: when that netdev
is deleted, the network becomes inactive.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from netfs.model.network import NetworkDef
    from netfs.netlink import Netlink


class HostBridgeDriver:
    async def start(self, net: NetworkDef, nl: Netlink) -> None:
        return None

    async def stop(self, net: NetworkDef, nl: Netlink) -> None:
        return None

    async def is_running(self, net: NetworkDef, nl: Netlink) -> bool:
        name = net.bridge.name
        if not name:
            return False
        return await nl.link(name) is not None

    async def repair(self, net: NetworkDef, nl: Netlink) -> None:
        return None

    def watched_link(self, net: NetworkDef) -> str | None:
        return net.bridge.name or None
