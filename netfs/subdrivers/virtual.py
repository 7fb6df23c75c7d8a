"""Virtual networks (forward mode none, nat, route, open): a bridge made by netlink.

The start is one :class:`~netfs.subdrivers.steps.Recipe` (libvirt's
networkStartNetworkVirtual), in order:

0. ``dnsmasq-exit``: a step of the stop alone; being first, its stop is the last
   of a stop: it waits for the exit of the dnsmasq step 7 told to stop, so
   that dnsmasq's ~15 ms exit overlaps the removal of the rules and bridge;
1. the check ``check_route_collision`` (it changes nothing: its query and
   verdict go first in the submission of the first changes), against the
   namespace's IPv4 main routing table (what /proc/net/route shows): an ``<ip>`` subnet already routed ->
   ``Network is already in use by interface X``; a static ``<route>`` equal to
   an existing route -> ``Route address 'A' conflicts with IP address for 'X'``
   (both EADDRINUSE);
2. ``bridge``: no bridge name -> EINVAL ``network 'N' has no bridge name
   defined``; the bridge in one request (MAC, STP, delay, up; MTU and the
   tag ``netfs:<uuid>`` in a follow-up, see netfs.netlink). An existing link
   of that name -> EADDRINUSE ``error creating bridge interface X: File
   exists``; that link is never touched. Stop: RTM_DELLINK, only if the
   bridge carries our tag (a missing bridge is fine). Repair: the bridge
   must still be ours (else ENODEV), set up again if it is down;
3. ``ipv6-sysctls``: disable_ipv6 (unless an IPv6 address is defined),
   accept_ra = autoconf = 0;
4. ``firewall``: the network's nft rules, one transaction
   (:mod:`netfs.subdrivers.services`); none in mode open. It runs beside
   steps 5-7 (``nft -f`` needs nothing of the bridge: its rules name it);
5. ``addresses``: every ``<ip>`` (repair re-adds a missing one);
6. ``routes``: every static ``<route>`` with a gateway, best effort as
   libvirt (repair re-adds a missing one);
7. ``dnsmasq``: the DHCP/DNS server when the network needs one;
8. ``forwarding``: ip_forward (and IPv6 forwarding) on for nat and route,
   once the rules are in place (it waits for step 4).

libvirt runs the same steps one after the other, forwarding before dnsmasq;
here a NAT network's start costs the longer of ``nft -f`` and the rest, not
their sum, and forwarding still never comes before the rules. The netlink
steps (2, 3, 5, 6, 8) are ``batched``: with rules (modes none, nat and
route), the check and 2-3 reach the kernel in one submission before
``nft -f`` starts; 5-6 in the next, sent before dnsmasq starts or before
8 waits for the rules (8 joins them when the rules are already in);
otherwise 8 in a last one. Mode open has no rules and no forwarding: the
check and 2-6 go in one submission (before dnsmasq, if it has one). Any
failure once the bridge exists undoes the done steps in reverse order
(the bridge last), once the firewall step has ended too; stop does the same for every step. A repair reports what it
put back through ``StepContext.repaired`` (one ``repaired WHAT`` event).

Running: a link of the bridge name exists, is a bridge and carries our tag.
The tag is this sub-driver's alone: :meth:`VirtualDriver.tag` names it for
the core's link monitor, :meth:`VirtualDriver.sweep_orphans` deletes tagged
bridges no active network owns (and untagged ones named in a start intent:
a crash between the bridge's creation and its tag).
"""

from __future__ import annotations

import errno
import functools
import ipaddress
import logging
import socket
from typing import TYPE_CHECKING

from netfs.errors import NetfsError
from netfs.model.dnsmasq import live_changeable
from netfs.model.network import is_virtual
from netfs.model.validate import random_mac
from netfs.subdrivers import services
from netfs.subdrivers.steps import Recipe, Step, StepContext

if TYPE_CHECKING:
    from netfs.model.network import IPDef, NetworkDef, RouteDef
    from netfs.netlink import LinkInfo, NetlinkOps, RouteInfo

log = logging.getLogger(__name__)

TAG_PREFIX = "netfs:"


def alias_of(net: NetworkDef) -> str:
    """The IFLA_IFALIAS that marks a bridge as this network's."""
    return f"{TAG_PREFIX}{net.uuid}"


def _family(family: str) -> int:
    return socket.AF_INET6 if family == "ipv6" else socket.AF_INET


@functools.lru_cache(maxsize=1024)
def _network(address: str, prefix: int) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    # immutable; every start of a network asks for the same ones
    return ipaddress.ip_network(f"{address}/{prefix}", strict=False)


# ------------------------------------------------------------------ checks


async def check_route_collision(ctx: StepContext) -> None:
    """libvirt's networkCheckRouteCollision, against the namespace's main table."""
    net, nl = ctx.net, ctx.nl
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

    def verdict(routes: list[RouteInfo]) -> None:
        for route in routes:
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
                addr = subnet.network_address
                raise NetfsError(
                    errno.EADDRINUSE,
                    f"Route address '{addr}' conflicts with IP address for '{iface}'",
                )

    # only the routes to our subnets come back: the cost does not grow with
    # the number of interfaces (names are resolved for the collisions alone);
    # in the start's batch, the query and this verdict run in the same
    # submission as the changes, before them
    match = [(str(subnet.network_address), subnet.prefixlen) for subnet, _w, _a in mine]
    await nl.check_routes(socket.AF_INET, match, verdict)


def bridge_name(net: NetworkDef) -> str:
    name = net.bridge.name
    if not name:
        raise NetfsError(errno.EINVAL, f"network '{net.name}' has no bridge name defined")
    return name


# ------------------------------------------------------------------ steps


async def create_bridge(ctx: StepContext) -> None:
    net = ctx.net
    # EEXIST (a link of that name, ours or not) is refused here and the
    # step is not done: the existing link is never touched
    await ctx.nl.create_bridge(
        bridge_name(net),
        mac=net.mac,
        mtu=net.mtu,
        stp=net.bridge.stp,
        forward_delay=net.bridge.delay,
        alias=alias_of(net),
        up=True,
    )


async def delete_bridge(ctx: StepContext) -> None:
    net = ctx.net
    name = net.bridge.name
    if not name:
        return
    link = await ctx.nl.link(name)
    if link is None:
        return
    if link.alias != alias_of(net):
        log.warning(
            "network %s: %s is not our bridge (alias %r); not deleted", net.name, name, link.alias
        )
        return
    await ctx.nl.delete_link(name)


async def repair_bridge(ctx: StepContext) -> None:
    net = ctx.net
    name = bridge_name(net)
    link = await ctx.nl.link(name)
    if link is None or link.alias != alias_of(net):
        raise NetfsError(errno.ENODEV, f"bridge {name} of network '{net.name}' is gone")
    if not link.up:
        log.info("network %s: setting %s up again", net.name, name)
        await ctx.nl.set_up(name)
        ctx.repaired("bridge")


async def ipv6_sysctls(ctx: StepContext) -> None:
    has_v6 = any(ip.family == "ipv6" for ip in ctx.net.ips)
    await ctx.nl.set_ipv6_sysctls(bridge_name(ctx.net), disable=not has_v6)


def _ip_prefix(net: NetworkDef, ip: IPDef) -> int:
    prefix = ip.prefix_len()
    limit = 128 if ip.family == "ipv6" else 32
    if prefix < 0 or prefix > limit:
        raise NetfsError(
            errno.EINVAL,
            f"bridge '{net.bridge.name}' has an invalid netmask or IP address",
        )
    return prefix


async def add_addresses(ctx: StepContext) -> None:
    net = ctx.net
    name = bridge_name(net)
    for ip in net.ips:
        await ctx.nl.add_address(name, ip.address, _ip_prefix(net, ip))


async def repair_addresses(ctx: StepContext) -> None:
    net, nl = ctx.net, ctx.nl
    name = bridge_name(net)
    present = {(ipaddress.ip_address(a.address), a.prefixlen) for a in await nl.addresses(name)}
    for ip in net.ips:
        prefix = _ip_prefix(net, ip)
        if (ipaddress.ip_address(ip.address), prefix) not in present:
            log.info("network %s: re-adding %s/%d to %s", net.name, ip.address, prefix, name)
            await nl.add_address(name, ip.address, prefix)
            ctx.repaired("address")


async def _add_route(net: NetworkDef, nl: NetlinkOps, r: RouteDef) -> None:
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


async def add_routes(ctx: StepContext) -> None:
    for r in ctx.net.routes:
        if r.gateway:
            await _add_route(ctx.net, ctx.nl, r)


async def repair_routes(ctx: StepContext) -> None:
    net, nl = ctx.net, ctx.nl
    wanted = [r for r in net.routes if r.gateway]
    if not wanted:
        return
    name = bridge_name(net)
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
            ctx.repaired("route")


# ------------------------------------------------------------------ driver


class VirtualDriver:
    """The bridge of an isolated/NAT/routed/open network."""

    def __init__(self) -> None:
        self.recipe = Recipe(
            checks=[check_route_collision],
            steps=[
                # its stop, the last one, waits for dnsmasq's exit
                Step("dnsmasq-exit", None, services.wait_dnsmasq_exit),
                Step("bridge", create_bridge, delete_bridge, repair_bridge, batched=True),
                Step("ipv6-sysctls", ipv6_sysctls, batched=True),
                Step(
                    "firewall",
                    services.add_rules,
                    services.remove_rules,
                    needed=services.has_rules,
                    concurrent=True,  # nft needs nothing of the bridge
                ),
                Step("addresses", add_addresses, repair=repair_addresses, batched=True),
                Step("routes", add_routes, repair=repair_routes, batched=True),
                Step(
                    "dnsmasq",
                    services.start_dnsmasq,
                    services.stop_dnsmasq,
                    services.repair_dnsmasq,
                    needed=services.has_dnsmasq,
                ),
                Step(
                    "forwarding",
                    services.enable_forwarding,
                    repair=services.repair_forwarding,
                    batched=True,
                    needed=services.has_forwarding,
                    waits=("firewall",),  # never forwarding before the rules
                ),
            ],
        )

    @property
    def steps(self) -> list[Step]:
        return self.recipe.steps

    def insert_step(
        self, step: Step, *, before: str | None = None, after: str | None = None
    ) -> None:
        """Add a start step before or after a named one (or at the end)."""
        self.recipe.insert(step, before=before, after=after)

    # -- policies ------------------------------------------------------------

    def prepare(self, live: NetworkDef) -> None:
        if live.mac is None:
            live.mac = random_mac()  # a lenient-loaded definition without one

    def keep_generated(self, net: NetworkDef, current: NetworkDef) -> None:
        """A redefinition that omits the MAC or the bridge name keeps the
        current definition's (as it keeps its uuid) instead of getting new
        generated ones."""
        if not is_virtual(current.forward.mode):
            return
        if not net.bridge.name and current.bridge.name and "%d" not in current.bridge.name:
            net.bridge.name = current.bridge.name
        if net.mac is None and current.mac is not None:
            net.mac = current.mac

    def changes_live(self, old: NetworkDef, new: NetworkDef) -> bool:
        """Only DHCP hosts and ranges and DNS records change: its dnsmasq's
        files are rewritten and its rules follow (traffic.live_update)."""
        return live_changeable(old, new)

    def needs_link_names(self, net: NetworkDef) -> bool:
        # the host's devices matter only when a bridge name is generated (libvirt)
        return not net.bridge.name or "%d" in net.bridge.name

    def intent(self, live: NetworkDef) -> str | None:
        return live.bridge.name or None

    # -- the kernel ------------------------------------------------------------

    async def start(self, ctx: StepContext) -> None:
        await self.recipe.start(ctx)

    async def stop(self, ctx: StepContext) -> None:
        await self.recipe.stop(ctx)

    async def repair(self, ctx: StepContext) -> None:
        await self.recipe.repair(ctx)

    async def is_running(self, ctx: StepContext) -> bool:
        name = ctx.net.bridge.name
        if not name:
            return False
        link = await ctx.nl.link(name)
        return link is not None and link.kind == "bridge" and link.alias == alias_of(ctx.net)

    # -- its links ---------------------------------------------------------------

    def watched_link(self, net: NetworkDef) -> str | None:
        return net.bridge.name or None

    def tag(self, net: NetworkDef) -> str | None:
        return alias_of(net)

    async def release(self, nl: NetlinkOps, net: NetworkDef, ifname: str) -> None:
        """Clear our tag from a link that is no longer the network's bridge
        (renamed behind our back), so a later start-up does not take it for
        an orphan of ours."""
        link = await nl.link(ifname)
        if link is not None and link.alias == alias_of(net):
            await nl.set_alias(ifname, "")

    async def sweep_orphans(
        self,
        nl: NetlinkOps,
        links: list[LinkInfo],
        live: list[NetworkDef],
        intents: dict[str, str],
    ) -> None:
        """Delete bridges a crash left behind: tagged ``netfs:<uuid>`` with no
        active network of that uuid, or untagged and named in a start intent
        of a network that is not active (``intents``: bridge -> network) --
        the daemon died between creating the bridge and tagging it."""
        ours = {alias_of(n) for n in live}
        for link in links:
            alias = link.alias or ""
            if alias.startswith(TAG_PREFIX):
                if alias in ours:
                    continue
            elif not (link.name in intents and link.kind == "bridge" and not alias):
                continue
            log.warning("deleting orphan bridge %s (%s)", link.name, alias or "untagged")
            try:
                await nl.delete_link(link.name)
            except NetfsError as e:
                log.warning("cannot delete orphan bridge %s: %s", link.name, e.message)
