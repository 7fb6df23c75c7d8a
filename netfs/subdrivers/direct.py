"""macvtap modes (bridge without a name, private, vepa, passthrough).

Nothing happens in the kernel when the network starts or stops (the macvtap
devices belong to guests); such a network is always "still running". The
class is also the base of the other sub-drivers that make nothing: every
policy and link hook is a no-op here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from netfs.model.network import NetworkDef
    from netfs.netlink import LinkInfo, NetlinkOps
    from netfs.subdrivers.steps import StepContext


class DirectDriver:
    def prepare(self, live: NetworkDef) -> None:
        return None

    def keep_generated(self, net: NetworkDef, current: NetworkDef) -> None:
        return None

    def changes_live(self, old: NetworkDef, new: NetworkDef) -> bool:
        return False  # no programs of its own: a change waits for the next start

    def needs_link_names(self, net: NetworkDef) -> bool:
        return False

    def intent(self, live: NetworkDef) -> str | None:
        return None

    async def start(self, ctx: StepContext) -> None:
        return None

    async def stop(self, ctx: StepContext) -> None:
        return None

    async def repair(self, ctx: StepContext) -> None:
        return None

    async def is_running(self, ctx: StepContext) -> bool:
        return True

    def watched_link(self, net: NetworkDef) -> str | None:
        return None

    def tag(self, net: NetworkDef) -> str | None:
        return None

    async def release(self, nl: NetlinkOps, net: NetworkDef, ifname: str) -> None:
        return None

    async def sweep_orphans(
        self,
        nl: NetlinkOps,
        links: list[LinkInfo],
        live: list[NetworkDef],
        intents: dict[str, str],
    ) -> None:
        return None
