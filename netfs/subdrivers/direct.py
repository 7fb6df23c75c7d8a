"""macvtap modes (bridge without a name, private, vepa, passthrough).

Nothing happens in the kernel when the network starts or stops (the macvtap
devices belong to guests); such a network is always "still running".
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from netfs.model.network import NetworkDef
    from netfs.netlink import Netlink


class DirectDriver:
    async def start(self, net: NetworkDef, nl: Netlink) -> None:
        return None

    async def stop(self, net: NetworkDef, nl: Netlink) -> None:
        return None

    async def is_running(self, net: NetworkDef, nl: Netlink) -> bool:
        return True

    async def repair(self, net: NetworkDef, nl: Netlink) -> None:
        return None

    def watched_link(self, net: NetworkDef) -> str | None:
        return None
