"""Start/stop of an isolated bridge network: the virtual sub-driver vs a pyroute2 floor.

``measure(rounds)`` creates a private network namespace, runs ``rounds``
start/stop cycles of an isolated network (bridge, one IPv4 address) through
``netfs.subdrivers`` + ``netfs.netlink`` from trio, then the same kernel
requests made directly with a synchronous pyroute2 IPRoute in a thread that
entered the namespace (the floor), deletes the namespace and returns the
figures in milliseconds (median and p90 of each phase), plus the per-request
overhead of a no-op round trip through the netlink worker thread in µs.

Run alone: ``python -m bench.netlink_floor [rounds]`` (root).
"""

from __future__ import annotations

import ctypes
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from typing import Any

import trio

from netfs.model.network import parse_network
from netfs.netlink import Netlink
from netfs.subdrivers import for_mode

XML = (
    "<network><name>benchnet</name><uuid>0badbeef-0000-4000-8000-000000000001</uuid>"
    "<bridge name='benchbr0' stp='on' delay='0'/><mac address='52:54:00:be:0c:01'/>"
    "<ip address='192.168.251.1' prefix='24'/></network>"
)


def _stats(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)
    p90 = s[min(len(s) - 1, int(round(0.9 * (len(s) - 1))))]
    return {"median_ms": statistics.median(s) * 1e3, "p90_ms": p90 * 1e3}


async def _subdriver(netns: str, rounds: int) -> dict[str, Any]:
    net = parse_network(XML)
    drv = for_mode(net.forward.mode, net)
    starts: list[float] = []
    stops: list[float] = []
    async with Netlink(netns) as nl:
        for _ in range(rounds):
            t0 = time.perf_counter()
            await drv.start(net, nl)
            t1 = time.perf_counter()
            await drv.stop(net, nl)
            t2 = time.perf_counter()
            starts.append(t1 - t0)
            stops.append(t2 - t1)
        n = 2000
        t0 = time.perf_counter()
        for _ in range(n):
            await nl.ping()
        ping_us = (time.perf_counter() - t0) / n * 1e6
    return {"start": _stats(starts), "stop": _stats(stops), "request_overhead_us": ping_us}


def _floor(netns: str, rounds: int) -> dict[str, Any]:
    from pyroute2 import IPRoute  # the floor only; netfs imports it in netfs.netlink alone

    out: dict[str, Any] = {}

    def run() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
        try:
            if libc.setns(fd, 0x40000000) != 0:
                raise OSError(ctypes.get_errno(), "setns")
        finally:
            os.close(fd)
        ipr = IPRoute()
        starts: list[float] = []
        stops: list[float] = []
        try:
            for _ in range(rounds):
                t0 = time.perf_counter()
                ipr.route("dump", family=socket.AF_INET)
                ipr.link(
                    "add",
                    ifname="benchbr0",
                    kind="bridge",
                    address="52:54:00:be:0c:01",
                    br_stp_state=1,
                    br_forward_delay=0,
                    state="up",
                )
                idx = socket.if_nametoindex("benchbr0")
                ipr.link("set", index=idx, ifalias="netfs:x")
                for key, val in (("disable_ipv6", "1"), ("accept_ra", "0"), ("autoconf", "0")):
                    with open(f"/proc/sys/net/ipv6/conf/benchbr0/{key}", "w") as f:
                        f.write(val)
                ipr.addr(
                    "add",
                    index=idx,
                    address="192.168.251.1",
                    prefixlen=24,
                    broadcast="192.168.251.255",
                )
                t1 = time.perf_counter()
                ipr.link("get", ifname="benchbr0")
                ipr.link("del", ifname="benchbr0")
                t2 = time.perf_counter()
                starts.append(t1 - t0)
                stops.append(t2 - t1)
        finally:
            ipr.close()
        out["start"] = _stats(starts)
        out["stop"] = _stats(stops)

    th = threading.Thread(target=run)
    th.start()
    th.join()
    return out


def measure(rounds: int = 20) -> dict[str, Any]:
    """Figures for the sub-driver and the pyroute2 floor, in a namespace of our own."""
    netns = f"nfsbench{os.getpid()}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        sub = trio.run(_subdriver, netns, rounds)
        floor = _floor(netns, rounds)
    finally:
        subprocess.run(["ip", "netns", "del", netns], check=False)
    return {"rounds": rounds, "subdriver": sub, "floor": floor}


def report(fig: dict[str, Any]) -> str:
    lines = [f"isolated bridge + 1 IPv4 address, {fig['rounds']} rounds (ms: median / p90)"]
    for phase in ("start", "stop"):
        s, f = fig["subdriver"][phase], fig["floor"][phase]
        lines.append(
            f"  {phase:5}  netfs {s['median_ms']:7.2f} / {s['p90_ms']:7.2f}"
            f"   pyroute2 floor {f['median_ms']:7.2f} / {f['p90_ms']:7.2f}"
        )
    lines.append(
        f"  netlink worker round trip (no-op): {fig['subdriver']['request_overhead_us']:.1f} µs"
    )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    rounds = int(argv[0]) if argv else 20
    print(report(measure(rounds)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
