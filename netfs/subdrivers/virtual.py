"""Virtual networks (forward mode none, nat, route, open): a bridge made by netlink.

Start, in order (libvirt's networkStartNetworkVirtual, minus what later
issues add):

1. collision check against the namespace's IPv4 main routing table (what
   /proc/net/route shows): an ``<ip>`` subnet already routed ->
   ``Network is already in use by interface X``; a static ``<route>`` equal to
   an existing route -> ``Route address 'A' conflicts with IP address for 'X'``
   (both EADDRINUSE);
2. no bridge name -> EINVAL ``network 'N' has no bridge name defined``;
3. create the bridge in one request (MAC, STP, delay, up; MTU and the alias
   ``netfs:<uuid>`` in a follow-up, see netfs.netlink). An existing link of
   that name -> EADDRINUSE ``error creating bridge interface X: File exists``;
   that link is never touched. The bridge and the requests of the steps
   below are recorded in a :class:`~netfs.netlink.NetlinkBatch` and made in
   one submission to the netlink worker thread (a step that queries the
   kernel flushes what was recorded before it);
4. then the per-start steps of :attr:`VirtualDriver.steps`, in order:
   ``ipv6-sysctls``, ``addresses``, ``routes``. Hook points for later
   issues: the firewall belongs before ``addresses`` (libvirt adds rules
   before the addresses), IP forwarding and dnsmasq after ``routes``. A step
   is a :class:`Step` with ``start`` and an optional ``stop``; ``stop`` runs
   (in reverse order) when the network stops, and when a later step fails.
   The three built-in steps are ``batched`` (netlink requests only: they go
   to the kernel with the bridge, in one submission); a step that is not
   runs once everything before it is in the kernel.

Any failure once the bridge exists: the ``stop`` of each step already done
runs (reverse order, errors logged), the bridge we just created is deleted,
and the error is raised again.

Stop: every step's ``stop`` in reverse order, then RTM_DELLINK of the bridge,
but only if it carries our alias ``netfs:<uuid>``; a missing bridge is fine.

Running: a link of the bridge name exists, is a bridge and carries our alias.

Repair (libvirt has none): set the bridge up, re-add any missing ``<ip>``
address and then any missing static route.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import trio

from netfs.errors import NetfsError

if TYPE_CHECKING:
    from netfs.model.network import IPDef, NetworkDef, RouteDef
    from netfs.netlink import Netlink

log = logging.getLogger(__name__)

StepFn = Callable[["NetworkDef", "Netlink"], Awaitable[None]]


@dataclass(frozen=True)
class Step:
    """A per-start step. ``batched``: its ``start`` only makes netlink
    requests (and queries), so it may be given a NetlinkBatch whose changes
    reach the kernel later, in one submission with the bridge's creation;
    a step that is not (the default) runs once everything before it is in
    the kernel, with the Netlink itself."""

    name: str
    start: StepFn
    stop: StepFn | None = None
    batched: bool = False


def alias_of(net: NetworkDef) -> str:
    """The IFLA_IFALIAS that marks a bridge as this network's."""
    return f"netfs:{net.uuid}"


def _family(family: str) -> int:
    return socket.AF_INET6 if family == "ipv6" else socket.AF_INET


def _network(address: str, prefix: int) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(f"{address}/{prefix}", strict=False)


# ------------------------------------------------------------------ checks


async def check_route_collision(net: NetworkDef, nl: Netlink) -> None:
    """libvirt's networkCheckRouteCollision, against the namespace's main table."""
    ips4 = [ip for ip in net.ips if ip.family != "ipv6"]
    routes4 = [r for r in net.routes if r.family != "ipv6"]
    if not ips4 and not routes4:
        return
    mine: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str, str]] = []
    for ip in ips4:
        prefix = ip.prefix_len()
        if 0 <= prefix <= 32:
            mine.append((_network(ip.address, prefix), "ip", ip.address))
    for r in routes4:
        prefix = r.prefix_len()
        if 0 <= prefix <= 32:
            mine.append((_network(r.address, prefix), "route", r.address))
    # only the routes to our subnets come back: the cost does not grow with
    # the number of interfaces (names are resolved for the collisions alone)
    match = [(str(subnet.network_address), subnet.prefixlen) for subnet, _w, _a in mine]
    for route in await nl.routes(socket.AF_INET, match=match):
        try:
            existing = _network(route.dst, route.prefixlen)
        except ValueError:
            continue
        iface = route.ifname or "*"
        for subnet, what, _addr in mine:
            if subnet != existing:
                continue
            if what == "ip":
                raise NetfsError(
                    errno.EADDRINUSE, f"Network is already in use by interface {iface}"
                )
            raise NetfsError(
                errno.EADDRINUSE,
                f"Route address '{subnet.network_address}' conflicts with IP address for '{iface}'",
            )


def bridge_name(net: NetworkDef) -> str:
    name = net.bridge.name
    if not name:
        raise NetfsError(errno.EINVAL, f"network '{net.name}' has no bridge name defined")
    return name


# ------------------------------------------------------------------ steps


async def ipv6_sysctls(net: NetworkDef, nl: Netlink) -> None:
    has_v6 = any(ip.family == "ipv6" for ip in net.ips)
    await nl.set_ipv6_sysctls(bridge_name(net), disable=not has_v6)


def _ip_prefix(net: NetworkDef, ip: IPDef) -> int:
    prefix = ip.prefix_len()
    limit = 128 if ip.family == "ipv6" else 32
    if prefix < 0 or prefix > limit:
        raise NetfsError(
            errno.EINVAL,
            f"bridge '{net.bridge.name}' has an invalid netmask or IP address",
        )
    return prefix


async def add_addresses(net: NetworkDef, nl: Netlink) -> None:
    name = bridge_name(net)
    for ip in net.ips:
        await nl.add_address(name, ip.address, _ip_prefix(net, ip))


async def _add_route(net: NetworkDef, nl: Netlink, r: RouteDef) -> None:
    # libvirt ignores failures of static routes; the adapter logs them
    name = bridge_name(net)
    await nl.add_route(
        r.address,
        r.prefix_len(),
        gateway=r.gateway,
        metric=r.metric,
        ifname=name,
        best_effort=True,
    )


async def add_routes(net: NetworkDef, nl: Netlink) -> None:
    for r in net.routes:
        if r.gateway:
            await _add_route(net, nl, r)


# ------------------------------------------------------------------ driver


class VirtualDriver:
    """The bridge of an isolated/NAT/routed/open network."""

    def __init__(self) -> None:
        # checks before the bridge exists (nothing to undo)
        self.checks: list[StepFn] = [check_route_collision]
        # per-start steps once the bridge exists; later issues insert here:
        # firewall before "addresses", forwarding and dnsmasq after "routes".
        self.steps: list[Step] = [
            Step("ipv6-sysctls", ipv6_sysctls, batched=True),
            Step("addresses", add_addresses, batched=True),
            Step("routes", add_routes, batched=True),
        ]

    def insert_step(
        self, step: Step, *, before: str | None = None, after: str | None = None
    ) -> None:
        """Add a per-start step before or after a named one (or at the end)."""
        names = [s.name for s in self.steps]
        if before is not None:
            self.steps.insert(names.index(before), step)
        elif after is not None:
            self.steps.insert(names.index(after) + 1, step)
        else:
            self.steps.append(step)

    async def start(self, net: NetworkDef, nl: Netlink) -> None:
        for check in self.checks:
            await check(net, nl)
        name = bridge_name(net)
        # the bridge and every step's changes go to the kernel in one worker
        # submission (a step's query flushes what is recorded before it)
        batch = nl.batch()
        # EEXIST (a link of that name, ours or not) is refused here and
        # nothing is rolled back: the existing link is never touched
        await batch.create_bridge(
            name,
            mac=net.mac,
            mtu=net.mtu,
            stp=net.bridge.stp,
            forward_delay=net.bridge.delay,
            alias=alias_of(net),
            up=True,
        )
        ends: list[int] = []  # position in the batch after each step
        try:
            for step in self.steps:
                if step.batched:
                    await step.start(net, cast("Netlink", batch))
                else:
                    await batch.flush()
                    await step.start(net, nl)
                ends.append(len(batch))
            await batch.flush()
        except BaseException:
            # what the steps before the failure asked for happens, as it
            # would have without the batch; then all of it is undone
            with trio.CancelScope(shield=True), contextlib.suppress(Exception):
                await batch.flush()
            if batch.completed == 0:
                raise  # the bridge was not created: nothing to undo
            # done: the steps that returned and whose requests all completed
            done = [s for s, end in zip(self.steps, ends, strict=False) if end <= batch.completed]
            # also on cancellation: never leave a half-made network behind
            with trio.CancelScope(shield=True):
                await self._undo(net, nl, done)
                try:
                    await nl.delete_link(name)
                except NetfsError as e:
                    log.warning("network %s: cannot delete bridge %s: %s", net.name, name, e)
            raise

    async def _undo(self, net: NetworkDef, nl: Netlink, done: list[Step]) -> None:
        for step in reversed(done):
            if step.stop is None:
                continue
            try:
                await step.stop(net, nl)
            except Exception as e:  # keep going: the rest must still be undone
                log.warning("network %s: undoing %s failed: %s", net.name, step.name, e)

    async def stop(self, net: NetworkDef, nl: Netlink) -> None:
        await self._undo(net, nl, self.steps)
        name = net.bridge.name
        if not name:
            return
        link = await nl.link(name)
        if link is None:
            return
        if link.alias != alias_of(net):
            log.warning(
                "network %s: %s is not our bridge (alias %r); not deleted",
                net.name,
                name,
                link.alias,
            )
            return
        await nl.delete_link(name)

    async def is_running(self, net: NetworkDef, nl: Netlink) -> bool:
        name = net.bridge.name
        if not name:
            return False
        link = await nl.link(name)
        return link is not None and link.kind == "bridge" and link.alias == alias_of(net)

    async def repair(self, net: NetworkDef, nl: Netlink) -> None:
        name = bridge_name(net)
        link = await nl.link(name)
        if link is None or link.alias != alias_of(net):
            raise NetfsError(errno.ENODEV, f"bridge {name} of network '{net.name}' is gone")
        if not link.up:
            log.info("network %s: setting %s up again", net.name, name)
            await nl.set_up(name)
        present = {(ipaddress.ip_address(a.address), a.prefixlen) for a in await nl.addresses(name)}
        for ip in net.ips:
            prefix = _ip_prefix(net, ip)
            if (ipaddress.ip_address(ip.address), prefix) not in present:
                log.info("network %s: re-adding %s/%d to %s", net.name, ip.address, prefix, name)
                await nl.add_address(name, ip.address, prefix)
        wanted = [r for r in net.routes if r.gateway]
        if not wanted:
            return
        have: set[tuple[int, object, int]] = set()
        for fam in {_family(r.family) for r in wanted}:
            for route in await nl.routes(fam):
                if route.ifname == name:
                    have.add((fam, _network(route.dst, route.prefixlen), route.prefixlen))
        for r in wanted:
            try:
                key = (_family(r.family), _network(r.address, r.prefix_len()), r.prefix_len())
            except ValueError:
                continue
            if key not in have:
                log.info("network %s: re-adding route %s/%d", net.name, r.address, r.prefix_len())
                await _add_route(net, nl, r)

    def watched_link(self, net: NetworkDef) -> str | None:
        return net.bridge.name or None
