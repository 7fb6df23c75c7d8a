"""Forward mode bridge with a ``<bridge name>`` (incl. openvswitch): the host's bridge.

Nothing is created or removed: start and stop only mark the network, and the
bridge's existence is not checked at start (as libvirt). It counts as running
while a netdev of that name exists (libvirt's networkUpdateState, at daemon
start); the core's link monitor applies the same rule live: when that netdev
is deleted, the network becomes inactive.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from netfs.subdrivers.direct import DirectDriver

if TYPE_CHECKING:
    from netfs.model.network import NetworkDef
    from netfs.subdrivers.steps import StepContext


class HostBridgeDriver(DirectDriver):
    async def is_running(self, ctx: StepContext) -> bool:
        name = ctx.net.bridge.name
        if not name:
            return False
        return await ctx.nl.link(name) is not None

    def watched_link(self, net: NetworkDef) -> str | None:
        return net.bridge.name or None
