"""NETLINK_ROUTE on a plain socket: messages built and parsed with struct.

The worker thread of :mod:`netfs.netlink` sends its changes and queries on a
:class:`RtnlSocket` it opened after entering the namespace, and the link
monitor decodes its datagrams with :func:`decode_link_events`. Only the
attributes the result types (:class:`LinkInfo`, :class:`AddrInfo`,
:class:`RouteInfo`, :class:`LinkEvent`) carry are read. No pyroute2 here:
it decoded every attribute of every message (~0.5 ms a message), several
times the kernel's own work.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

IFF_UP = 0x1
IFA_F_NODAD = 0x02
USER_HZ = 100  # the unit of IFLA_BR_FORWARD_DELAY is clock_t
RT_TABLE_MAIN = 254


@dataclass(frozen=True)
class LinkInfo:
    index: int
    name: str
    kind: str | None  # IFLA_INFO_KIND ("bridge", "veth", ...), None for plain devices
    mac: str | None
    mtu: int
    alias: str | None
    up: bool  # IFF_UP (administratively up)
    stp_state: int | None  # bridges only
    forward_delay: float | None  # bridges only, in seconds


@dataclass(frozen=True)
class AddrInfo:
    ifname: str
    family: int  # socket.AF_INET / AF_INET6
    address: str
    prefixlen: int


@dataclass(frozen=True)
class RouteInfo:
    dst: str  # network address ("0.0.0.0" / "::" for a default route)
    prefixlen: int
    ifname: str | None  # None for routes without an output device
    gateway: str | None
    metric: int | None = None


@dataclass(frozen=True)
class LinkEvent:
    kind: str  # "new", "del" or "overrun" (events were lost: resync)
    index: int
    name: str
    alias: str | None


def strerror(code: int) -> str:
    try:
        return os.strerror(code)
    except ValueError:
        return f"error {code}"


# --------------------------------------------------------------------------
# The queries (link, links, addresses, routes) go out on a plain
# NETLINK_ROUTE socket and the answers are parsed with struct, reading only
# the attributes LinkInfo/AddrInfo/RouteInfo carry. pyroute2 decodes every
# attribute of every message (~0.6 ms per link of a dump); this is ~20x less.
# With NETLINK_GET_STRICT_CHK the kernel filters dumps itself (routes by
# table, addresses by ifindex); the parsers filter again, so an old kernel
# that ignores the filters gives the same answers.

SOL_NETLINK = 270
NETLINK_GET_STRICT_CHK = 12
NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_ACK = 0x4
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLA_F_NESTED = 0x8000
NLM_F_DUMP = 0x300
NLMSG_ERROR = 2
NLMSG_DONE = 3
RTM_NEWLINK = 16
RTM_DELLINK = 17
RTM_GETLINK = 18
RTM_NEWADDR = 20
RTM_GETADDR = 22
RTM_GETROUTE = 26
IFLA_ADDRESS = 1
IFLA_IFNAME = 3
IFLA_MTU = 4
IFLA_LINKINFO = 18
IFLA_IFALIAS = 20
IFLA_EXT_MASK = 29
IFLA_INFO_KIND = 1
IFLA_INFO_DATA = 2
IFLA_BR_FORWARD_DELAY = 1
IFLA_BR_STP_STATE = 5
RTEXT_FILTER_SKIP_STATS = 1 << 3
IFA_ADDRESS = 1
IFA_LOCAL = 2
IFA_BROADCAST = 4
RTA_DST = 1
RTA_OIF = 4
RTA_GATEWAY = 5
RTA_PRIORITY = 6
RTA_TABLE = 15
NLA_TYPE_MASK = 0x3FFF
RECV_BUFSIZE = 1 << 16

NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
NLATTR = struct.Struct("=HH")
IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
RTMSG = struct.Struct(
    "=BBBBBBBBI"
)  # family, dst_len, src_len, tos, table, proto, scope, type, flags
U32 = struct.Struct("=I")
I32 = struct.Struct("=i")
IFREQ_INDEX = struct.Struct("=16si12x")  # struct ifreq: name, ifr_ifindex (40 bytes)
SIOCGIFINDEX = 0x8933
Buf = bytes | bytearray


def nlattr(kind: int, payload: bytes) -> bytes:
    length = NLATTR.size + len(payload)
    return NLATTR.pack(length, kind) + payload + b"\0" * (-length % 4)


def ignore(_buf: Buf, _start: int, _end: int) -> None:
    return None


def nlattrs(buf: Buf, start: int, end: int) -> dict[int, tuple[int, int]]:
    """Attribute type -> (offset, end) of its payload in buf[start:end]."""
    out: dict[int, tuple[int, int]] = {}
    unpack = NLATTR.unpack_from
    while start + 4 <= end:
        length, kind = unpack(buf, start)
        if length < 4:
            break
        out[kind & NLA_TYPE_MASK] = (start + 4, start + length)
        start += (length + 3) & ~3
    return out


def cstr(buf: Buf, span: tuple[int, int]) -> str:
    return bytes(buf[span[0] : span[1]]).split(b"\0", 1)[0].decode(errors="replace")


def mac_text(raw: Buf) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def parse_link(buf: Buf, off: int, end: int) -> LinkInfo:
    """One RTM_NEWLINK message body (ifinfomsg + attributes)."""
    _fam, _type, index, flags, _change = IFINFOMSG.unpack_from(buf, off)
    a = nlattrs(buf, off + IFINFOMSG.size, end)
    kind = stp_state = None
    forward_delay = None
    li = a.get(IFLA_LINKINFO)
    if li is not None:
        info = nlattrs(buf, li[0], li[1])
        k = info.get(IFLA_INFO_KIND)
        kind = cstr(buf, k) if k is not None else None
        d = info.get(IFLA_INFO_DATA)
        if kind == "bridge" and d is not None:
            data = nlattrs(buf, d[0], d[1])
            s = data.get(IFLA_BR_STP_STATE)
            if s is not None:
                stp_state = U32.unpack_from(buf, s[0])[0]
            fd = data.get(IFLA_BR_FORWARD_DELAY)
            if fd is not None:
                forward_delay = U32.unpack_from(buf, fd[0])[0] / USER_HZ
    mac = a.get(IFLA_ADDRESS)
    mtu = a.get(IFLA_MTU)
    alias = a.get(IFLA_IFALIAS)
    name = a.get(IFLA_IFNAME)
    return LinkInfo(
        index=index,
        name=cstr(buf, name) if name is not None else "",
        kind=kind,
        mac=mac_text(buf[mac[0] : mac[1]]) if mac is not None and mac[1] > mac[0] else None,
        mtu=U32.unpack_from(buf, mtu[0])[0] if mtu is not None else 0,
        alias=cstr(buf, alias) if alias is not None else None,
        up=bool(flags & IFF_UP),
        stp_state=stp_state,
        forward_delay=forward_delay,
    )


class RtnlSocket:
    """A plain NETLINK_ROUTE socket for queries, owned by the worker thread
    (so it belongs to the namespace the thread entered)."""

    def __init__(self) -> None:
        self.sock = self._open()
        self.seq = 0
        self.buf = bytearray(RECV_BUFSIZE)

    @staticmethod
    def _open() -> socket.socket:
        sock = socket.socket(
            socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE
        )
        try:
            sock.bind((0, 0))
            try:
                sock.setsockopt(SOL_NETLINK, NETLINK_GET_STRICT_CHK, 1)
            except OSError:  # kernel < 4.20: no filtering in the kernel
                log.debug("NETLINK_GET_STRICT_CHK not supported")
        except BaseException:
            sock.close()
            raise
        return sock

    def close(self) -> None:
        self.sock.close()

    def index(self, ifname: str) -> int:
        """The index of link ``ifname`` in the socket's namespace
        (SIOCGIFINDEX on this socket: no socket of its own, as
        if_nametoindex makes); OSError ENODEV when there is none."""
        name = ifname.encode()
        if len(name) >= 16:
            raise OSError(errno.ENODEV, os.strerror(errno.ENODEV))
        got = fcntl.ioctl(self.sock.fileno(), SIOCGIFINDEX, IFREQ_INDEX.pack(name, 0))
        return int(IFREQ_INDEX.unpack(got)[1])

    def request(
        self,
        mtype: int,
        flags: int,
        body: bytes,
        callback: Callable[[Buf, int, int], None],
        needles: list[bytes] | None = None,
    ) -> None:
        """Send one request; call ``callback(buf, start, end)`` with the body
        of every message of the answer (buf is reused: the callback copies
        what it keeps). With ``needles``, the messages of a received chunk
        that contains none of them are skipped without a callback (a search
        in C instead of a parse in Python). A kernel error raises OSError
        with its errno."""
        try:
            self._request(mtype, flags, body, callback, needles)
        except OSError as e:
            if isinstance(e, KernelError):
                raise OSError(e.errno, e.strerror) from None
            self._reset()
            raise
        except BaseException:
            # an answer may be half read: a fresh socket for the next request
            self._reset()
            raise

    def _reset(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()
        self.sock = self._open()

    def _request(
        self,
        mtype: int,
        flags: int,
        body: bytes,
        callback: Callable[[Buf, int, int], None],
        needles: list[bytes] | None,
    ) -> None:
        self.seq = (self.seq + 1) & 0xFFFFFFFF
        seq = self.seq
        self.sock.send(NLMSGHDR.pack(NLMSGHDR.size + len(body), mtype, flags, seq, 0) + body)
        dump = bool(flags & NLM_F_DUMP)
        view = memoryview(self.buf)
        buf = self.buf
        while True:
            n = self.sock.recv_into(view)
            off = 0
            wanted = needles is None or any(buf.find(x, 0, n) >= 0 for x in needles)
            while off + NLMSGHDR.size <= n:
                length, t, fl, mseq, _pid = NLMSGHDR.unpack_from(buf, off)
                if length < NLMSGHDR.size:
                    break
                end = off + length
                at = off + NLMSGHDR.size
                off = (end + 3) & ~3
                if mseq != seq:
                    continue
                if t in (NLMSG_ERROR, NLMSG_DONE):
                    code = I32.unpack_from(buf, at)[0] if end - at >= 4 else 0
                    if code < 0:
                        raise KernelError(-code, strerror(-code))
                    return
                if wanted:
                    callback(buf, at, end)
                if not dump and not fl & NLM_F_MULTI:
                    return


class KernelError(OSError):
    """An error answered by the kernel (the socket is still in step)."""


def decode_link_events(data: bytes) -> list[LinkEvent]:
    """The RTM_NEWLINK/RTM_DELLINK messages of one datagram (parsed with
    struct, as the queries are: pyroute2's decoder cost ~0.5 ms a message
    on the event loop)."""
    out = []
    off, n = 0, len(data)
    while off + NLMSGHDR.size <= n:
        length, mtype, _flags, _seq, _pid = NLMSGHDR.unpack_from(data, off)
        if length < NLMSGHDR.size or off + length > n:
            break
        at, end = off + NLMSGHDR.size, off + length
        off = (end + 3) & ~3
        if mtype == RTM_NEWLINK:
            kind = "new"
        elif mtype == RTM_DELLINK:
            kind = "del"
        else:
            continue
        if end - at < IFINFOMSG.size:
            continue
        index = IFINFOMSG.unpack_from(data, at)[2]
        a = nlattrs(data, at + IFINFOMSG.size, end)
        name = a.get(IFLA_IFNAME)
        alias = a.get(IFLA_IFALIAS)
        out.append(
            LinkEvent(
                kind,
                index,
                cstr(data, name) if name is not None else "",
                cstr(data, alias) if alias is not None else None,
            )
        )
    return out
