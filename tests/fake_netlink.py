"""An in-memory netlink adapter for the no-root tiers: the core's rules
without a kernel (what a real namespace would hold, as plain data)."""

from __future__ import annotations

import contextlib
import errno
import socket
from collections.abc import AsyncIterator, Callable, Iterable

import trio

from netfs.errors import NetfsError
from netfs.netlink import (
    AddrInfo,
    Batch,
    LinkEvent,
    LinkInfo,
    NetlinkAdapter,
    RouteInfo,
    RouteVerdict,
    sysctl_path,
)


class FakeKernel:
    """An in-memory namespace: what the netlink adapter would change."""

    def __init__(self) -> None:
        self.links: dict[str, LinkInfo] = {}
        self.addrs: list[AddrInfo] = []
        self.routes: list[RouteInfo] = []
        self.sysctls: dict[str, str] = {}
        self.requests = 0


class FakeNetlink:
    """NetlinkAdapter over a FakeKernel; every change is one request."""

    def __init__(self, kernel: FakeKernel | None = None) -> None:
        self.k = kernel or FakeKernel()

    @property
    def netns(self) -> str | None:
        return "fake"

    def _need(self, name: str) -> LinkInfo:
        link = self.k.links.get(name)
        if link is None:
            raise NetfsError(errno.ENODEV, f"no such interface: {name}")
        return link

    def _set(self, name: str, **changes: object) -> None:
        old = self._need(name)
        self.k.links[name] = LinkInfo(**{**old.__dict__, **changes})  # type: ignore[arg-type]

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
        self.k.requests += 1
        if name in self.k.links:
            raise NetfsError(
                errno.EADDRINUSE, f"error creating bridge interface {name}: File exists"
            )
        index = len(self.k.links) + 2
        self.k.links[name] = LinkInfo(
            index, name, "bridge", mac, mtu or 1500, alias, up, int(stp), float(forward_delay)
        )
        return index

    async def delete_link(self, name: str) -> bool:
        self.k.requests += 1
        if self.k.links.pop(name, None) is None:
            return False
        self.k.addrs = [a for a in self.k.addrs if a.ifname != name]
        self.k.routes = [r for r in self.k.routes if r.ifname != name]
        return True

    async def set_up(self, name: str) -> None:
        self.k.requests += 1
        self._set(name, up=True)

    async def set_alias(self, name: str, alias: str) -> None:
        self.k.requests += 1
        self._set(name, alias=alias or None)

    async def add_address(self, ifname: str, address: str, prefixlen: int) -> None:
        self.k.requests += 1
        self._need(ifname)
        a = AddrInfo(
            ifname, socket.AF_INET6 if ":" in address else socket.AF_INET, address, prefixlen
        )
        if a in self.k.addrs:
            raise NetfsError(errno.EEXIST, f"Failed to add IP address {address}/{prefixlen}")
        self.k.addrs.append(a)

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
        self.k.requests += 1
        self.k.routes.append(RouteInfo(dst, prefixlen, ifname, gateway, metric))

    async def set_ipv6_sysctls(self, ifname: str, *, disable: bool) -> None:
        base = f"net/ipv6/conf/{ifname}"
        for key, value in (("disable_ipv6", str(int(disable))), ("accept_ra", "0")):
            await self.write_sysctl(f"{base}/{key}", value)

    async def write_sysctl(self, key: str, value: str, *, missing_ok: bool = False) -> None:
        self.k.requests += 1
        self.k.sysctls[sysctl_path(key)] = value

    async def read_sysctl(self, path: str) -> str | None:
        return self.k.sysctls.get(sysctl_path(path))

    async def link(self, name: str) -> LinkInfo | None:
        return self.k.links.get(name)

    async def links(self) -> list[LinkInfo]:
        return list(self.k.links.values())

    async def addresses(self, ifname: str | None = None) -> list[AddrInfo]:
        return [a for a in self.k.addrs if ifname is None or a.ifname == ifname]

    async def routes(
        self, family: int = socket.AF_INET, *, match: Iterable[tuple[str, int]] | None = None
    ) -> list[RouteInfo]:
        want = None if match is None else set(match)
        return [r for r in self.k.routes if want is None or (r.dst, r.prefixlen) in want]

    async def check_routes(
        self, family: int, match: list[tuple[str, int]], verdict: RouteVerdict
    ) -> None:
        verdict(await self.routes(family, match=match))

    def batch(self) -> Batch:
        return FakeBatch(self)

    async def idle(self) -> None:
        await trio.lowlevel.checkpoint()

    @contextlib.asynccontextmanager
    async def monitor(self, *, rcvbuf: int = 0) -> AsyncIterator[AsyncIterator[LinkEvent]]:
        async def nothing() -> AsyncIterator[LinkEvent]:
            await trio.sleep_forever()
            yield LinkEvent("overrun", 0, "", None)  # never reached

        yield nothing()


class FakeBatch(FakeNetlink):
    """A batch that sends at once: ``completed`` counts what succeeded."""

    def __init__(self, nl: FakeNetlink) -> None:
        super().__init__(nl.k)
        self.completed = 0
        self._made = 0

    def __len__(self) -> int:
        return self._made

    async def flush(self) -> None:
        return None

    def call(self, fn: Callable[[], object]) -> None:
        self._made += 1
        fn()
        self.completed += 1

    def batch(self) -> Batch:
        return self

    async def create_bridge(self, name: str, **kw: object) -> int | None:  # type: ignore[override]
        self._made += 1
        index = await super().create_bridge(name, **kw)  # type: ignore[arg-type]
        self.completed += 1
        return index

    async def add_address(self, ifname: str, address: str, prefixlen: int) -> None:
        self._made += 1
        await super().add_address(ifname, address, prefixlen)
        self.completed += 1

    async def set_ipv6_sysctls(self, ifname: str, *, disable: bool) -> None:
        self._made += 1
        await super().set_ipv6_sysctls(ifname, disable=disable)
        self.completed += 1


def _adapter(nl: FakeNetlink) -> NetlinkAdapter:
    return nl  # mypy: the fake implements the protocol
