"""The netlink adapter: the only module of netfs that imports pyroute2.

One :class:`Netlink` object serves one network namespace (``netns`` is a name
under ``/run/netns`` as ``ip netns add`` makes it, or None for the namespace
the daemon runs in). All requests run in ONE dedicated worker thread
(:class:`netfs.worker.Worker`). That thread first enters the namespace with
setns(2) on itself (setns of CLONE_NEWNET is per thread), then opens its
sockets, so no helper process is forked. Everything the thread opens
afterwards (its netlink sockets, the link-monitor socket, the ioctl socket
behind ``if_nametoindex``, files under ``/proc/sys``) belongs to the target
namespace. A request, once submitted, is not cancellable: the caller sees a
pending cancellation at its next checkpoint, so a kernel change is never
half-known.

What the core and the sub-drivers may ask is typed by :class:`NetlinkOps`
(implemented by :class:`Netlink`, :class:`NetlinkBatch`, the core's recovery
snapshot and the tests' in-memory fake); :class:`NetlinkAdapter` adds the
link monitor. Kernel errors become ``NetfsError(kernel errno, message)``.

Usage::

    async with Netlink("myns") as nl:
        index = await nl.create_bridge("virbr0", mac=..., mtu=None, stp=True,
                                       forward_delay=0, alias="netfs:<uuid>")

API (all async):

- ``create_bridge(name, *, mac, mtu, stp, forward_delay, alias, up=True) -> int``
  One RTM_NEWLINK (NLM_F_CREATE|NLM_F_EXCL, kind bridge) carrying the name,
  IFLA_ADDRESS, IFLA_BR_STP_STATE, IFLA_BR_FORWARD_DELAY (seconds x USER_HZ,
  the kernel's clock_t unit) and IFF_UP. Measured on Linux 6.18: the kernel
  ignores IFLA_IFALIAS on create, and an IFLA_MTU given on create is applied
  without the bridge's "MTU set by user" flag (the bridge then follows its
  ports' MTU, unlike libvirt's SIOCSIFMTU), so alias and MTU go in one
  follow-up RTM_NEWLINK (setlink). A failure there deletes the new bridge.
  Note: with STP on, the kernel raises a forward delay below 2 s to 2 s.
  EEXIST -> ``NetfsError(EADDRINUSE, "error creating bridge interface NAME:
  File exists")``. Returns the ifindex.
- ``delete_link(name) -> bool``: RTM_DELLINK; False when it did not exist.
- ``set_up(name)``: IFF_UP. ``set_alias(name, alias)``: IFLA_IFALIAS ('' clears).
- ``add_address(ifname, address, prefixlen)``: IPv4 with the broadcast
  address (as ``ip addr add A/P broadcast +``); IPv6 with IFA_F_NODAD.
- ``add_route(dst, prefixlen, *, gateway, metric, ifname, best_effort=False)``:
  ``best_effort`` logs a failure instead of raising it (libvirt ignores
  failures of static routes). The one request made through pyroute2.
- ``write_sysctl(key, value, *, missing_ok=False)``, ``read_sysctl(key)``:
  any sysctl of the namespace (``net.ipv4.ip_forward``, or slash-separated
  when a part holds a dot, see :func:`sysctl_path`), by the worker thread.
- ``set_ipv6_sysctls(ifname, *, disable)``: disable_ipv6 = 1/0, accept_ra = 0,
  autoconf = 0; a missing sysctl is skipped quietly.
- ``batch() -> NetlinkBatch``: changes recorded and run in ONE worker
  submission (one thread hop instead of one per request); queries flush it
  first; it tracks how many requests completed, for per-step rollback.
- ``link(name) -> LinkInfo | None``, ``links() -> list[LinkInfo]``.
- ``addresses(ifname=None) -> list[AddrInfo]``.
- ``routes(family, *, match=None) -> list[RouteInfo]``: the main table (what
  /proc/net/route shows for IPv4); ``match``, pairs (network address, prefix
  length), keeps only the routes to those destinations.
- ``check_routes(family, match, verdict)``: ``verdict`` (a start's check,
  raising NetfsError to refuse) of those routes; recorded in a batch, where
  it runs before the changes recorded after it, in the same submission.
- ``monitor(rcvbuf=...)``: an async context manager giving an async iterator
  of :class:`LinkEvent` (``new``/``del``/``overrun``) from a NETLINK_ROUTE
  socket subscribed to RTMGRP_LINK, opened by the worker thread inside the
  namespace. A receive-buffer overflow (ENOBUFS) yields one ``overrun`` event
  (the consumer resynchronises with ``links()``) and the monitor goes on.

Requests and answers go through a plain NETLINK_ROUTE socket of the worker
thread (:class:`netfs.rtnl.RtnlSocket`), built and parsed with struct
in :mod:`netfs.rtnl` (only the attributes the result types
carry); pyroute2 decoded ~0.5 ms a message and encoded a change in ~0.4 ms,
several times the kernel's own work. Queries use NETLINK_GET_STRICT_CHK (the
kernel filters route dumps by table and address dumps by ifindex) and ask
for links without statistics (IFLA_EXT_MASK = RTEXT_FILTER_SKIP_STATS);
interface names of addresses and routes come from if_indextoname, never from
a link dump. So ``link``, ``addresses(ifname)`` and ``routes(match=...)``
cost about the same with 1000 links as with one (a route dump still walks
every main-table route, but in ~1 µs each, and a receive chunk without the
wanted RTA_DST bytes is not parsed at all).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import ipaddress
import logging
import os
import socket
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, TypeVarTuple

import trio
import trio.testing  # wait_all_tasks_blocked: a core scheduling primitive

from netfs.errors import NetfsError
from netfs.rtnl import (
    IFA_ADDRESS,
    IFA_BROADCAST,
    IFA_F_NODAD,
    IFA_LOCAL,
    IFADDRMSG,
    IFF_UP,
    IFINFOMSG,
    IFLA_ADDRESS,
    IFLA_BR_FORWARD_DELAY,
    IFLA_BR_STP_STATE,
    IFLA_EXT_MASK,
    IFLA_IFALIAS,
    IFLA_IFNAME,
    IFLA_INFO_DATA,
    IFLA_INFO_KIND,
    IFLA_LINKINFO,
    IFLA_MTU,
    NLA_F_NESTED,
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_EXCL,
    NLM_F_REQUEST,
    RT_TABLE_MAIN,
    RTA_DST,
    RTA_GATEWAY,
    RTA_OIF,
    RTA_PRIORITY,
    RTA_TABLE,
    RTEXT_FILTER_SKIP_STATS,
    RTM_DELLINK,
    RTM_GETADDR,
    RTM_GETLINK,
    RTM_GETROUTE,
    RTM_NEWADDR,
    RTM_NEWLINK,
    RTMSG,
    U32,
    USER_HZ,
    AddrInfo,
    Buf,
    LinkEvent,
    LinkInfo,
    RouteInfo,
    RtnlSocket,
    decode_link_events,
    ignore,
    nlattr,
    nlattrs,
    parse_link,
    strerror,
)
from netfs.worker import Worker

if TYPE_CHECKING:
    from pyroute2.netlink.exceptions import NetlinkError

# pyroute2 is imported by the first add_route (~0.1 s of every daemon start otherwise)
RTMGRP_LINK = 1

log = logging.getLogger(__name__)

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

CLONE_NEWNET = 0x40000000
SO_RCVBUFFORCE = 33
DEFAULT_MONITOR_RCVBUF = 8 * 1024 * 1024

__all__ = [
    "AddrInfo",
    "Batch",
    "LinkEvent",
    "LinkInfo",
    "LinkMonitor",
    "Netlink",
    "NetlinkAdapter",
    "NetlinkBatch",
    "NetlinkOps",
    "RouteInfo",
    "RouteVerdict",
]


# judges the routes a start's check found: raises NetfsError to refuse the start
RouteVerdict = Callable[[list[RouteInfo]], None]


class NetlinkOps(Protocol):
    """What the core and a sub-driver's steps may ask of one namespace's kernel.

    :class:`Netlink` (one request per worker hop), :class:`NetlinkBatch`
    (changes recorded, run in one hop) and the core's recovery snapshot
    (queries answered from one dump) implement it; so does the in-memory
    fake of the tests. Errors are :class:`~netfs.errors.NetfsError`."""

    @property
    def netns(self) -> str | None:
        """The namespace (a name under /run/netns or a path; None: the daemon's own)."""

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
    ) -> int | None: ...
    async def delete_link(self, name: str) -> bool: ...
    async def set_up(self, name: str) -> None: ...
    async def set_alias(self, name: str, alias: str) -> None: ...
    async def add_address(self, ifname: str, address: str, prefixlen: int) -> None: ...
    async def add_route(
        self,
        dst: str,
        prefixlen: int,
        *,
        gateway: str | None = None,
        metric: int | None = None,
        ifname: str | None = None,
        best_effort: bool = False,
    ) -> None: ...
    async def set_ipv6_sysctls(self, ifname: str, *, disable: bool) -> None: ...
    async def write_sysctl(self, key: str, value: str, *, missing_ok: bool = False) -> None: ...
    async def read_sysctl(self, path: str) -> str | None: ...
    async def link(self, name: str) -> LinkInfo | None: ...
    async def links(self) -> list[LinkInfo]: ...
    async def addresses(self, ifname: str | None = None) -> list[AddrInfo]: ...
    async def routes(
        self, family: int = socket.AF_INET, *, match: Iterable[tuple[str, int]] | None = None
    ) -> list[RouteInfo]: ...
    async def check_routes(
        self, family: int, match: list[tuple[str, int]], verdict: RouteVerdict
    ) -> None:
        """``verdict(routes(family, match=match))``: a check of a start
        (``verdict`` raises NetfsError to refuse it). In a batch it is
        recorded like a change and runs right before the requests recorded
        after it, in the same submission: a refused start sends none."""
        ...

    def batch(self) -> Batch:
        """A recorder of changes sent in one submission (a batch's batch is itself)."""
        ...


class Batch(NetlinkOps, Protocol):
    """Changes recorded and sent in one submission (see :class:`NetlinkBatch`)."""

    completed: int

    def __len__(self) -> int: ...
    async def flush(self) -> None: ...
    def call(self, fn: Callable[[], object]) -> None:
        """A plain call to run in the worker thread in its place among the
        requests (a failure stops the submission as a refused request does;
        its result is not kept: it may store it)."""
        ...


class NetlinkAdapter(NetlinkOps, Protocol):
    """The whole adapter the core holds: :class:`NetlinkOps`, batches and the
    link monitor."""

    def monitor(
        self, *, rcvbuf: int = ...
    ) -> contextlib.AbstractAsyncContextManager[AsyncIterator[LinkEvent]]: ...

    async def idle(self) -> None:
        """Until the daemon has had nothing to do for a moment: when work
        that must not compete with a command's (the link monitor's reading,
        the events' log lines) may run."""
        ...


def sysctl_path(key: str) -> str:
    """``net.ipv4.ip_forward`` -> ``/proc/sys/net/ipv4/ip_forward``. A key
    with a slash is taken as slash-separated (``net/ipv6/conf/eth0.10/accept_ra``:
    an interface name may hold dots), a path under /proc/sys as it is."""
    if key.startswith("/proc/sys/"):
        path = key
    elif "/" in key:
        path = "/proc/sys/" + key.lstrip("/")
    else:
        path = "/proc/sys/" + key.replace(".", "/")
    if "/../" in path + "/" or "\0" in path:
        raise NetfsError(errno.EINVAL, f"invalid sysctl {key!r}")
    return path


def _kernel_error(e: NetlinkError | OSError, context: str) -> NetfsError:
    code = abs(getattr(e, "code", 0) or e.errno or errno.EIO)
    return NetfsError(code, f"{context}: {strerror(code)}")


def _open_netns(netns: str) -> int:
    path = netns if "/" in netns else f"/run/netns/{netns}"
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise NetfsError(
            e.errno or errno.ENOENT, f"cannot open network namespace {netns}: {e.strerror}"
        ) from None


def check_netns(netns: str) -> None:
    """Can namespace ``netns`` (a name under /run/netns or a path) be
    opened? (``netfs mount`` asks before it makes anything.)"""
    os.close(_open_netns(netns))


def _enter_netns(netns: str) -> None:
    """setns(2) the calling thread into /run/netns/NETNS."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = _open_netns(netns)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            code = ctypes.get_errno()
            raise NetfsError(code, f"cannot enter network namespace {netns}: {strerror(code)}")
    finally:
        os.close(fd)


class _Names(dict[int, str]):
    """ifindex -> name, each looked up at its first use (see _InNamespace._names)."""

    def __missing__(self, index: int) -> str:
        try:
            name = socket.if_indextoname(index)
        except OSError:
            name = ""
        self[index] = name
        return name


class _InNamespace:
    """The worker-thread side of :class:`Netlink`: synchronous requests on
    the sockets this thread opened after it entered the namespace. Only the
    worker thread calls these methods."""

    def __init__(self, netns: str | None) -> None:
        self.netns = netns
        self._ipr: Any = None
        self._raw: RtnlSocket | None = None
        # name -> index of the links made during the batch under way
        self._made: dict[str, int] = {}

    def setup(self) -> None:
        if self.netns is not None:
            _enter_netns(self.netns)
        self._raw = RtnlSocket()

    def teardown(self) -> None:
        if self._raw is not None:
            self._raw.close()
            self._raw = None
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None

    def _index(self, ifname: str) -> int:
        made = self._made.get(ifname)
        if made is not None:
            return made
        # the raw socket belongs to the namespace this thread entered
        try:
            return self._rtnl().index(ifname)
        except OSError:
            raise NetfsError(errno.ENODEV, f"no such interface: {ifname}") from None

    def _change(self, mtype: int, flags: int, body: bytes) -> None:
        """One change request on the raw socket, acknowledged by the kernel
        (OSError with the kernel's errno when it refuses)."""
        self._rtnl().request(mtype, NLM_F_REQUEST | NLM_F_ACK | flags, body, ignore)

    def create_bridge(
        self,
        name: str,
        mac: str | None,
        mtu: int | None,
        stp: bool,
        forward_delay: int,
        alias: str | None,
        up: bool,
    ) -> int:
        data = nlattr(IFLA_BR_STP_STATE, U32.pack(1 if stp else 0)) + nlattr(
            IFLA_BR_FORWARD_DELAY, U32.pack(int(forward_delay) * USER_HZ)
        )
        linkinfo = nlattr(IFLA_INFO_KIND, b"bridge\0") + nlattr(IFLA_INFO_DATA | NLA_F_NESTED, data)
        flag = IFF_UP if up else 0
        body = IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, flag, flag) + nlattr(
            IFLA_IFNAME, name.encode() + b"\0"
        )
        if mac:
            body += nlattr(IFLA_ADDRESS, bytes.fromhex(mac.replace(":", "")))
        body += nlattr(IFLA_LINKINFO | NLA_F_NESTED, linkinfo)
        try:
            self._change(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, body)
        except OSError as e:
            if e.errno == errno.EEXIST:
                raise NetfsError(
                    errno.EADDRINUSE, f"error creating bridge interface {name}: File exists"
                ) from None
            raise _kernel_error(e, f"error creating bridge interface {name}") from None
        try:
            index = self._index(name)
            follow = b""
            if mtu:
                follow += nlattr(IFLA_MTU, U32.pack(int(mtu)))
            if alias:
                follow += nlattr(IFLA_IFALIAS, alias.encode())
            if follow:
                try:
                    self._change(RTM_NEWLINK, 0, IFINFOMSG.pack(0, 0, index, 0, 0) + follow)
                except OSError as e:
                    what = (
                        f"cannot set MTU of {name} to {mtu}" if mtu else f"cannot configure {name}"
                    )
                    raise _kernel_error(e, what) from None
        except BaseException:
            with contextlib.suppress(OSError):
                self.delete_link(name)
            raise
        return index

    def delete_link(self, name: str) -> bool:
        body = IFINFOMSG.pack(0, 0, 0, 0, 0) + nlattr(IFLA_IFNAME, name.encode() + b"\0")
        try:
            self._change(RTM_DELLINK, 0, body)
        except OSError as e:
            if e.errno == errno.ENODEV:
                return False
            raise _kernel_error(e, f"error destroying network device {name}") from None
        return True

    def set_up(self, name: str) -> None:
        body = IFINFOMSG.pack(0, 0, self._index(name), IFF_UP, IFF_UP)
        try:
            self._change(RTM_NEWLINK, 0, body)
        except OSError as e:
            raise _kernel_error(e, f"failed to set interface {name} up") from None

    def set_alias(self, name: str, alias: str) -> None:
        body = IFINFOMSG.pack(0, 0, self._index(name), 0, 0) + nlattr(IFLA_IFALIAS, alias.encode())
        try:
            self._change(RTM_NEWLINK, 0, body)
        except OSError as e:
            raise _kernel_error(e, f"cannot set the alias of {name}") from None

    def add_address(self, ifname: str, address: str, prefixlen: int) -> None:
        ip = ipaddress.ip_address(address)
        family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
        flags = IFA_F_NODAD if ip.version == 6 else 0
        body = IFADDRMSG.pack(family, int(prefixlen), flags, 0, self._index(ifname))
        body += nlattr(IFA_LOCAL, ip.packed) + nlattr(IFA_ADDRESS, ip.packed)
        if ip.version == 4 and prefixlen < 31:
            net = ipaddress.ip_network(f"{ip}/{prefixlen}", strict=False)
            body += nlattr(IFA_BROADCAST, net.broadcast_address.packed)
        try:
            self._change(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, body)
        except OSError as e:
            raise _kernel_error(
                e, f"Failed to add IP address {address}/{prefixlen} to {ifname}"
            ) from None

    def add_route(
        self,
        dst: str,
        prefixlen: int,
        gateway: str | None,
        metric: int | None,
        ifname: str | None,
        best_effort: bool = False,
    ) -> None:
        try:
            self._add_route(dst, prefixlen, gateway, metric, ifname)
        except (NetfsError, ValueError) as e:
            if not best_effort:
                raise
            log.warning(
                "static route %s/%s via %s on %s not added: %s",
                dst,
                prefixlen,
                gateway,
                ifname or "-",
                e.message if isinstance(e, NetfsError) else e,
            )

    def batch(
        self, ops: list[tuple[Callable[..., Any], tuple[Any, ...]]]
    ) -> tuple[int, BaseException | None]:
        """Run recorded requests in order; stop at the first failure.
        Returns how many completed and the failure (None: all did). The
        index of a bridge made here is known to the requests after it (no
        lookup of its name each)."""
        try:
            for i, (fn, args) in enumerate(ops):
                try:
                    made = fn(*args)
                except Exception as e:
                    return i, e
                if fn == self.create_bridge:
                    self._made[args[0]] = made
            return len(ops), None
        finally:
            self._made.clear()

    def _add_route(
        self, dst: str, prefixlen: int, gateway: str | None, metric: int | None, ifname: str | None
    ) -> None:
        spec: dict[str, Any] = {"dst": dst, "dst_len": int(prefixlen)}
        if ipaddress.ip_address(dst).version == 6:
            spec["family"] = socket.AF_INET6
        if gateway:
            spec["gateway"] = gateway
        if metric:
            spec["priority"] = int(metric)
        if ifname:
            spec["oif"] = self._index(ifname)
        from pyroute2 import IPRoute
        from pyroute2.netlink.exceptions import NetlinkError

        if self._ipr is None:
            self._ipr = IPRoute()  # in this thread: inside the namespace
        try:
            self._ipr.route("add", **spec)
        except NetlinkError as e:
            raise _kernel_error(
                e, f"Failed to add route to {dst}/{prefixlen} via {gateway}"
            ) from None

    def _rtnl(self) -> RtnlSocket:
        assert self._raw is not None
        return self._raw

    def link(self, name: str) -> LinkInfo | None:
        body = (
            IFINFOMSG.pack(0, 0, 0, 0, 0)
            + nlattr(IFLA_IFNAME, name.encode() + b"\0")
            + nlattr(IFLA_EXT_MASK, U32.pack(RTEXT_FILTER_SKIP_STATS))
        )
        out: list[LinkInfo] = []
        try:
            self._rtnl().request(
                RTM_GETLINK, NLM_F_REQUEST, body, lambda b, s, e: out.append(parse_link(b, s, e))
            )
        except OSError as e:
            if e.errno == errno.ENODEV:
                return None
            raise _kernel_error(e, f"cannot get interface {name}") from None
        return out[0] if out else None

    def links(self) -> list[LinkInfo]:
        body = IFINFOMSG.pack(0, 0, 0, 0, 0) + nlattr(
            IFLA_EXT_MASK, U32.pack(RTEXT_FILTER_SKIP_STATS)
        )
        out: list[LinkInfo] = []
        try:
            self._rtnl().request(
                RTM_GETLINK,
                NLM_F_REQUEST | NLM_F_DUMP,
                body,
                lambda b, s, e: out.append(parse_link(b, s, e)),
            )
        except OSError as e:
            raise _kernel_error(e, "cannot list interfaces") from None
        return out

    def _names(self) -> dict[int, str]:
        """ifindex -> name, filled lazily by if_indextoname (an ioctl in this
        thread's namespace: much cheaper than a link dump)."""
        return _Names()

    def addresses(self, ifname: str | None) -> list[AddrInfo]:
        want = 0
        if ifname is not None:
            try:
                want = socket.if_nametoindex(ifname)
            except OSError:
                return []
        names = self._names()
        if ifname is not None:
            names[want] = ifname
        out: list[AddrInfo] = []

        def one(buf: Buf, at: int, end: int) -> None:
            family, prefixlen, _flags, _scope, index = IFADDRMSG.unpack_from(buf, at)
            if want and index != want:
                return
            if family not in (socket.AF_INET, socket.AF_INET6):
                return
            a = nlattrs(buf, at + IFADDRMSG.size, end)
            span = a.get(IFA_ADDRESS) or a.get(IFA_LOCAL)
            if span is None:
                return
            address = socket.inet_ntop(family, bytes(buf[span[0] : span[1]]))
            out.append(AddrInfo(names[index], family, address, prefixlen))

        # strict checking lets the kernel send only the addresses of `want`
        body = IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, want)
        try:
            self._rtnl().request(RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, body, one)
        except OSError as e:
            raise _kernel_error(e, "cannot list addresses") from None
        return out

    def check_routes(
        self, family: int, match: list[tuple[str, int]], verdict: RouteVerdict
    ) -> None:
        verdict(self.routes(family, match))

    def routes(self, family: int, match: Iterable[tuple[str, int]] | None) -> list[RouteInfo]:
        alen = 16 if family == socket.AF_INET6 else 4
        zero = b"\0" * alen
        wanted: set[tuple[bytes, int]] | None = None
        lens: set[int] = set()
        if match is not None:
            wanted = set()
            for dst, prefixlen in match:
                try:
                    packed = socket.inet_pton(family, dst)
                except (OSError, ValueError):
                    continue
                wanted.add((packed, int(prefixlen)))
                lens.add(int(prefixlen))
        names = self._names()
        out: list[RouteInfo] = []

        def one(buf: Buf, at: int, end: int) -> None:
            fam, dst_len, _src, _tos, table, _proto, _scope, _type, _flags = RTMSG.unpack_from(
                buf, at
            )
            if fam != family or (wanted is not None and dst_len not in lens):
                return
            a = nlattrs(buf, at + RTMSG.size, end)
            t = a.get(RTA_TABLE)
            if t is not None:
                table = U32.unpack_from(buf, t[0])[0]
            if table != RT_TABLE_MAIN:
                return
            d = a.get(RTA_DST)
            dst = bytes(buf[d[0] : d[1]]) if d is not None else zero
            if wanted is not None and (dst, dst_len) not in wanted:
                return
            oif = a.get(RTA_OIF)
            gw = a.get(RTA_GATEWAY)
            prio = a.get(RTA_PRIORITY)
            index = U32.unpack_from(buf, oif[0])[0] if oif is not None else 0
            out.append(
                RouteInfo(
                    dst=socket.inet_ntop(family, dst),
                    prefixlen=dst_len,
                    ifname=(names[index] or None) if index else None,
                    gateway=(
                        socket.inet_ntop(family, bytes(buf[gw[0] : gw[1]]))
                        if gw is not None
                        else None
                    ),
                    metric=U32.unpack_from(buf, prio[0])[0] if prio is not None else None,
                )
            )

        # strict checking lets the kernel send only the main table
        body = RTMSG.pack(family, 0, 0, 0, RT_TABLE_MAIN, 0, 0, 0, 0) + nlattr(
            RTA_TABLE, U32.pack(RT_TABLE_MAIN)
        )
        # a route to DST carries the bytes of the attribute RTA_DST=DST: a
        # chunk of the dump without any of them holds no route we look for
        # (a default route has no RTA_DST: then every chunk is parsed)
        needles = None
        if wanted is not None and 0 not in lens:
            needles = [nlattr(RTA_DST, packed) for packed, _len in wanted]
        try:
            self._rtnl().request(RTM_GETROUTE, NLM_F_REQUEST | NLM_F_DUMP, body, one, needles)
        except OSError as e:
            if e.errno == errno.ENOENT:  # no main table yet (no route ever added)
                return []
            raise _kernel_error(e, "cannot list routes") from None
        return out

    def write_sysctl(
        self, key: str, value: str, missing_ok: bool, at: tuple[int, str] | None = None
    ) -> None:
        """``at``: (a directory's descriptor, its path): ``key`` is a name in
        it (several sysctls written together: one path walk for all)."""
        path = sysctl_path(key) if at is None else f"{at[1]}/{key}"
        try:
            if at is None:
                fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            else:
                fd = os.open(key, os.O_WRONLY | os.O_CLOEXEC, dir_fd=at[0])
            try:
                os.write(fd, value.encode())
            finally:
                os.close(fd)
        except FileNotFoundError:
            if not missing_ok:
                raise NetfsError(errno.ENOENT, f"no sysctl {key}") from None
            log.debug("sysctl %s missing: skipped", path)
        except OSError as e:
            raise NetfsError(
                e.errno or errno.EIO, f"cannot set {path} = {value}: {e.strerror}"
            ) from None

    def set_ipv6_sysctls(self, ifname: str, disable: bool) -> None:
        base = f"/proc/sys/net/ipv6/conf/{ifname}"
        try:
            dfd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:  # a kernel without IPv6
            log.debug("sysctls %s missing: skipped", base)
            return
        except OSError as e:
            raise NetfsError(e.errno or errno.EIO, f"cannot open {base}: {e.strerror}") from None
        try:
            for key, value in (
                ("disable_ipv6", "1" if disable else "0"),
                ("accept_ra", "0"),
                ("autoconf", "0"),
            ):
                self.write_sysctl(key, value, True, (dfd, base))
        finally:
            os.close(dfd)

    def read_sysctl(self, path: str) -> str | None:
        try:
            with open(path) as f:
                return f.read().strip()
        except FileNotFoundError:
            return None

    def monitor_socket(self, rcvbuf: int) -> socket.socket:
        sock = socket.socket(
            socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE
        )
        try:
            try:
                sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
            except OSError:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.bind((0, RTMGRP_LINK))
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock


# when work that must not compete with a command's (the link monitor's
# reading, the events' log lines) may run: see Netlink.idle
IDLE_CUSHION = 0.001  # seconds of nothing to do
LONG_REQUEST = 0.005  # seconds after which a request under way is waiting in the kernel


class Netlink:
    """Netlink requests for one network namespace, from one worker thread."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        self._worker = Worker(f"netfs-netlink-{netns or 'host'}")
        self._open = False
        self._k = _InNamespace(netns)
        # requests under way in the worker thread, and the moment none is
        # (see LinkMonitor: its events wait for it)
        self._busy = 0
        self._busy_since = 0.0  # trio time the requests under way began
        self._quiet = trio.Event()
        self._quiet.set()

    # ------------------------------------------------------------------ plumbing

    async def open(self) -> None:
        if self._open:
            return
        self._open = True
        try:
            await self._worker.call(self._k.setup)
        except BaseException:
            # the namespace could not be entered (or its rtnetlink socket not
            # opened): end the thread
            self._open = False
            await self._worker.close()
            raise

    async def close(self) -> None:
        if not self._open:
            return
        self._open = False
        with trio.CancelScope(shield=True):
            await self._worker.call(self._k.teardown)
            await self._worker.close()

    async def __aenter__(self) -> Netlink:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _call(self, fn: Callable[[*Ts], T], *args: *Ts) -> T:
        """Run fn(*args) in the worker thread and return (or raise) its result."""
        if not self._open:
            raise NetfsError(errno.EBADF, "netlink is not open")
        if not self._busy:
            self._quiet = trio.Event()
            self._busy_since = trio.current_time()
        self._busy += 1
        try:
            return await self._worker.call(fn, *args)
        finally:
            self._busy -= 1
            if not self._busy:
                self._quiet.set()

    async def quiet(self) -> None:
        """Until no request is under way in the worker thread."""
        while self._busy:
            await self._quiet.wait()

    async def idle(self) -> None:
        """Until the daemon has nothing to do for IDLE_CUSHION: no task
        could run for that long, and no request is under way in the worker
        thread, or one that has been for LONG_REQUEST (it waits in the
        kernel, a bridge's deletion: the interpreter is free). Not in the
        short pauses of a command's work -- between a start's requests,
        between a reply and the process's next request (the shell's close,
        the helper's announcement), where the loop's CPU is wanted next."""
        while True:
            if self._busy:
                with trio.move_on_at(self._busy_since + LONG_REQUEST):
                    await self.quiet()
            await trio.testing.wait_all_tasks_blocked(IDLE_CUSHION)
            if not self._short_request():
                return

    def _short_request(self) -> bool:
        """A request is under way, for less than LONG_REQUEST."""
        return bool(self._busy) and trio.current_time() - self._busy_since < LONG_REQUEST

    # ---------------------------------------------------------------- the API

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
    ) -> int:
        return await self._call(
            self._k.create_bridge, name, mac, mtu, stp, forward_delay, alias, up
        )

    async def delete_link(self, name: str) -> bool:
        return await self._call(self._k.delete_link, name)

    async def set_up(self, name: str) -> None:
        await self._call(self._k.set_up, name)

    async def set_alias(self, name: str, alias: str) -> None:
        """Set the link's IFLA_IFALIAS ('' clears it)."""
        await self._call(self._k.set_alias, name, alias)

    async def add_address(self, ifname: str, address: str, prefixlen: int) -> None:
        await self._call(self._k.add_address, ifname, address, prefixlen)

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
        """Add a route; ``best_effort``: a failure is logged, not raised."""
        await self._call(self._k.add_route, dst, prefixlen, gateway, metric, ifname, best_effort)

    async def link(self, name: str) -> LinkInfo | None:
        return await self._call(self._k.link, name)

    async def links(self) -> list[LinkInfo]:
        return await self._call(self._k.links)

    async def addresses(self, ifname: str | None = None) -> list[AddrInfo]:
        return await self._call(self._k.addresses, ifname)

    async def routes(
        self, family: int = socket.AF_INET, *, match: Iterable[tuple[str, int]] | None = None
    ) -> list[RouteInfo]:
        """The main table's routes of ``family``; with ``match`` (pairs of
        network address and prefix length) only the routes to those
        destinations (cheaper: names are resolved for those alone)."""
        m = None if match is None else list(match)
        return await self._call(self._k.routes, family, m)

    async def check_routes(
        self, family: int, match: list[tuple[str, int]], verdict: RouteVerdict
    ) -> None:
        await self._call(self._k.check_routes, family, list(match), verdict)

    async def set_ipv6_sysctls(self, ifname: str, *, disable: bool) -> None:
        await self._call(self._k.set_ipv6_sysctls, ifname, disable)

    async def write_sysctl(self, key: str, value: str, *, missing_ok: bool = False) -> None:
        """Write a sysctl of the namespace (``net.ipv4.ip_forward``, see
        :func:`sysctl_path`); a missing one is ENOENT unless ``missing_ok``."""
        await self._call(self._k.write_sysctl, key, value, missing_ok)

    async def read_sysctl(self, path: str) -> str | None:
        """Read a sysctl as seen from the namespace (None if missing)."""
        return await self._call(self._k.read_sysctl, sysctl_path(path))

    def batch(self) -> NetlinkBatch:
        """A recorder of changes that runs them in one worker submission."""
        return NetlinkBatch(self)

    async def ping(self) -> None:
        """A no-op round trip through the worker thread (to measure overhead)."""
        await self._call(lambda: None)

    @contextlib.asynccontextmanager
    async def monitor(self, *, rcvbuf: int = DEFAULT_MONITOR_RCVBUF) -> AsyncIterator[LinkMonitor]:
        """Watch link events in the namespace: ``async with nl.monitor() as m:
        async for ev in m: ...``."""
        sock = await self._call(self._k.monitor_socket, rcvbuf)
        mon = LinkMonitor(sock, self.idle, self._short_request)
        try:
            yield mon
        finally:
            mon.close()


class LinkMonitor:
    """Async iterator of :class:`LinkEvent` from an RTMGRP_LINK socket.

    Events are read once the adapter's requests under way are done
    (``quiet``) and the other tasks wait for something: a start's own
    requests make several link events, and reading them while the worker
    thread makes the rest would take the interpreter from it, event by
    event, and reading them as soon as the requests are done would delay
    the rest of the start; then everything queued is read in one go (no
    loop tick per datagram). A request's first event still wakes the
    monitor (the socket is waited on all along: ending that wait at each
    request cost the loop more, on the path of every start, than the one
    wake-up does); it then only waits for the requests to end. The monitor
    is at most QUIET_WAIT late (a stream of requests without a pause: what
    is queued is read every QUIET_WAIT)."""

    BURST = 64  # datagrams read at most per wake-up
    QUIET_WAIT = 0.05  # longest wait for the requests under way, seconds

    def __init__(
        self,
        sock: socket.socket,
        idle: Callable[[], Awaitable[None]],
        busy: Callable[[], bool],
    ) -> None:
        self._raw = sock  # non-blocking
        self._idle = idle
        self._busy = busy
        self._pending: deque[LinkEvent] = deque()
        self._closed = False

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            with contextlib.suppress(Exception):  # also outside a trio run
                trio.lowlevel.notify_closing(self._raw)
            self._raw.close()

    def __aiter__(self) -> LinkMonitor:
        return self

    async def __anext__(self) -> LinkEvent:
        while not self._pending:
            if self._closed:
                raise StopAsyncIteration
            with trio.move_on_after(self.QUIET_WAIT) as late:
                await self._idle()
            if not late.cancelled_caught:  # between requests
                await trio.lowlevel.wait_readable(self._raw)
                if self._busy():  # a request's own events: read after it
                    with trio.move_on_after(self.QUIET_WAIT):
                        await self._idle()
            # (else requests without a pause: read what is queued now)
            for _ in range(self.BURST):
                try:
                    data = self._raw.recv(1 << 16)
                except BlockingIOError:
                    break
                except OSError as e:
                    if e.errno == errno.ENOBUFS:
                        self._drain()
                        return LinkEvent("overrun", 0, "", None)
                    if e.errno == errno.EBADF:
                        raise StopAsyncIteration from None
                    raise
                if not data:
                    raise StopAsyncIteration
                self._pending.extend(decode_link_events(data))
        return self._pending.popleft()

    def _drain(self) -> None:
        """Discard what is queued after an overrun.

        After reporting ENOBUFS the kernel marks the socket congested and
        drops further events *silently* until the receive queue has been
        emptied. Emptying it now means that everything after the consumer's
        resync dump (which follows the ``overrun`` event) is delivered again.
        """
        self._pending.clear()
        while True:
            try:
                self._raw.recv(1 << 16)
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno != errno.ENOBUFS:
                    raise


class NetlinkBatch:
    """Changes recorded to run in ONE submission to the worker thread.

    It implements :class:`NetlinkOps`. The changes ``create_bridge`` (which
    returns None here), ``set_up``, ``add_address``, ``add_route``,
    ``set_ipv6_sysctls`` and ``write_sysctl`` are recorded and return at
    once, without a checkpoint; every other call (the queries,
    ``delete_link``, ``set_alias``) first flushes what is recorded, then goes
    to the Netlink, so the kernel sees every request in the order it was
    made. :meth:`flush` runs the recorded requests in order in one worker
    submission and stops at the first failure, which it raises (the requests
    after it are dropped).

    ``len(batch)`` is the number of requests made so far (the position of
    the next one); ``completed`` the number that succeeded in the kernel. A
    caller that records the position after each of its steps knows, after
    a failure, exactly which steps were done (their requests all completed):
    so rollback stays per step, as with one submission per request.
    """

    def __init__(self, nl: Netlink) -> None:
        self._nl = nl
        self._ops: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
        self._made = 0
        self.completed = 0

    @property
    def netns(self) -> str | None:
        return self._nl.netns

    def __len__(self) -> int:
        return self._made

    def batch(self) -> NetlinkBatch:
        return self

    def _record(self, fn: Callable[..., Any], *args: Any) -> None:
        self._ops.append((fn, args))
        self._made += 1

    def call(self, fn: Callable[[], object]) -> None:
        self._record(fn)

    async def flush(self) -> None:
        if not self._ops:
            return
        ops, self._ops = self._ops, []
        done, error = await self._nl._call(self._nl._k.batch, ops)
        self.completed += done
        if error is not None:
            raise error

    # -- recorded ------------------------------------------------------------

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
    ) -> None:
        self._record(self._nl._k.create_bridge, name, mac, mtu, stp, forward_delay, alias, up)

    async def set_up(self, name: str) -> None:
        self._record(self._nl._k.set_up, name)

    async def add_address(self, ifname: str, address: str, prefixlen: int) -> None:
        self._record(self._nl._k.add_address, ifname, address, prefixlen)

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
        self._record(self._nl._k.add_route, dst, prefixlen, gateway, metric, ifname, best_effort)

    async def set_ipv6_sysctls(self, ifname: str, *, disable: bool) -> None:
        self._record(self._nl._k.set_ipv6_sysctls, ifname, disable)

    async def check_routes(
        self, family: int, match: list[tuple[str, int]], verdict: RouteVerdict
    ) -> None:
        self._record(self._nl._k.check_routes, family, list(match), verdict)

    async def write_sysctl(self, key: str, value: str, *, missing_ok: bool = False) -> None:
        sysctl_path(key)  # a bad key is refused now, not at the flush
        self._record(self._nl._k.write_sysctl, key, value, missing_ok)

    # -- flushed first -----------------------------------------------------

    async def delete_link(self, name: str) -> bool:
        await self.flush()
        return await self._nl.delete_link(name)

    async def set_alias(self, name: str, alias: str) -> None:
        await self.flush()
        await self._nl.set_alias(name, alias)

    async def read_sysctl(self, path: str) -> str | None:
        await self.flush()
        return await self._nl.read_sysctl(path)

    async def link(self, name: str) -> LinkInfo | None:
        await self.flush()
        return await self._nl.link(name)

    async def links(self) -> list[LinkInfo]:
        await self.flush()
        return await self._nl.links()

    async def addresses(self, ifname: str | None = None) -> list[AddrInfo]:
        await self.flush()
        return await self._nl.addresses(ifname)

    async def routes(
        self, family: int = socket.AF_INET, *, match: Iterable[tuple[str, int]] | None = None
    ) -> list[RouteInfo]:
        await self.flush()
        return await self._nl.routes(family, match=match)


def _conforms(nl: Netlink, batch: NetlinkBatch) -> tuple[NetlinkAdapter, Batch]:
    """For mypy: the adapter and its batch implement the protocols."""
    return nl, batch
