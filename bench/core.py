"""Benchmark of the driver core: `python -m bench core [--quick]`.

Everything runs in a network namespace made for the run and always deleted
(with whatever is left in it). The config directory is on disk (/tmp, like
/etc), the state directory on tmpfs (/dev/shm, like /run).

Figures, each beside its target:

- start and stop of an isolated network with one IPv4 address (median, p90),
  beside the floor measured in the same run: the same kernel operations
  (route dump, RTM_NEWLINK bridge, alias/MTU setlink, IPv6 sysctls, address;
  link get + RTM_DELLINK for stop) made directly with a synchronous pyroute2
  IPRoute in a thread inside the namespace, with no files and no trio.
  Targets: start <= 1.5x floor, stop <= 1.2x floor.
- live reconciliation: from the start of `ip link del` of an active network's
  bridge to the `stopped` event, so including the ip process and the kernel's
  device teardown (target: 100 ms).
- N networks (1000, 100 with --quick): define all, start all, stop all
  (totals); the median of one start among the first 10 and the last 10%
  (equal when a start does not grow with N); beside them the floors for N:
  the kernel work of N starts and of N bridge deletions made directly with
  pyroute2 (the deletion of a bridge costs the kernel ~35-45 ms: that, not
  netfs, is what stopping 1000 networks takes).
- daemon restart with N active networks until the core is ready
  (Netlink open + new Driver + startup()). Target: <= 1 s for 1000.
- resident memory with N networks (active), and its growth over the baseline.
"""

from __future__ import annotations

import ctypes
import logging
import os
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from netfs.core import Driver
from netfs.netlink import Netlink

CLONE_NEWNET = 0x40000000


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p * (len(s) - 1))))]


def _in_netns_thread(ns: str, fn: Callable[[], Any]) -> Any:
    """Run fn in a fresh thread that first setns()es into the namespace."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns")
            finally:
                os.close(fd)
            box["result"] = fn()
        except BaseException as e:  # handed back to the caller
            box["error"] = e

    t = threading.Thread(target=run)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["result"]


def floor(ns: str, rounds: int) -> tuple[list[float], list[float]]:
    """The same kernel work as a start/stop of the benchmark network, raw."""
    from pyroute2 import IPRoute  # benchmarks may use pyroute2 directly

    def loop() -> tuple[list[float], list[float]]:
        starts: list[float] = []
        stops: list[float] = []
        with IPRoute() as ipr:
            for _ in range(rounds):
                t0 = time.perf_counter()
                ipr.route("dump", family=socket.AF_INET)
                ipr.link(
                    "add",
                    ifname="nfsfl0",
                    kind="bridge",
                    address="52:54:00:00:fe:01",
                    br_stp_state=1,
                    br_forward_delay=0,
                    state="up",
                )
                idx = socket.if_nametoindex("nfsfl0")
                ipr.link("set", index=idx, ifalias="netfs:floor")
                for key, val in (("disable_ipv6", "1"), ("accept_ra", "0"), ("autoconf", "0")):
                    with open(f"/proc/sys/net/ipv6/conf/nfsfl0/{key}", "w") as f:
                        f.write(val)
                idx = socket.if_nametoindex("nfsfl0")
                ipr.addr(
                    "add", index=idx, address="10.199.0.1", prefixlen=24, broadcast="10.199.0.255"
                )
                t1 = time.perf_counter()
                ipr.link("get", ifname="nfsfl0")
                ipr.link("del", ifname="nfsfl0")
                t2 = time.perf_counter()
                starts.append(t1 - t0)
                stops.append(t2 - t1)
        return starts, stops

    result: tuple[list[float], list[float]] = _in_netns_thread(ns, loop)
    return result


def floor_many(ns: str, n: int) -> tuple[float, float]:
    """The kernel work of starting n isolated networks (bridge, alias, IPv6
    sysctls, one address each; no collision check) and of deleting their
    bridges, made directly with pyroute2: totals in seconds."""
    from pyroute2 import IPRoute

    def run() -> tuple[float, float]:
        with IPRoute() as ipr:
            t0 = time.perf_counter()
            for i in range(n):
                name = f"nfsfm{i}"
                ipr.link("add", ifname=name, kind="bridge", br_stp_state=1, state="up")
                idx = socket.if_nametoindex(name)
                ipr.link("set", index=idx, ifalias="netfs:floor")
                for key, val in (("disable_ipv6", "1"), ("accept_ra", "0"), ("autoconf", "0")):
                    with open(f"/proc/sys/net/ipv6/conf/{name}/{key}", "w") as f:
                        f.write(val)
                a, b = 100 + i // 250, i % 250
                ipr.addr(
                    "add",
                    index=idx,
                    address=f"10.{a}.{b}.1",
                    prefixlen=24,
                    broadcast=f"10.{a}.{b}.255",
                )
            t1 = time.perf_counter()
            for i in range(n):
                ipr.link("del", ifname=f"nfsfm{i}")
            t2 = time.perf_counter()
        return t1 - t0, t2 - t1

    result: tuple[float, float] = _in_netns_thread(ns, run)
    return result


def net_xml(name: str, bridge: str, i: int, mac: str | None = None) -> str:
    a, b = 100 + i // 250, i % 250
    mac_el = f"<mac address='{mac}'/>" if mac else ""
    return (
        f"<network><name>{name}</name><bridge name='{bridge}'/>{mac_el}"
        f"<ip address='10.{a}.{b}.1' netmask='255.255.255.0'/></network>"
    )


def ms(x: float) -> str:
    return f"{x * 1000:8.2f} ms"


async def run(ns: str, n: int, rounds: int, etc: Path, state: Path) -> list[str]:
    out: list[str] = []
    base_rss = _rss_kib()
    fl_start, fl_stop = floor(ns, rounds)

    nl = Netlink(ns)
    await nl.open()
    d = Driver(etc, state, nl)
    await d.startup()
    await d.define(net_xml("bench", "nfsbe0", 9999 % 250, mac="52:54:00:00:fe:02"))
    starts: list[float] = []
    stops: list[float] = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        await d.start("bench")
        t1 = time.perf_counter()
        await d.stop("bench")
        t2 = time.perf_counter()
        starts.append(t1 - t0)
        stops.append(t2 - t1)
    # live reconciliation: bridge deleted behind the core's back -> `stopped`
    lat: list[float] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(d.run_monitor)
        ch = d.subscribe()
        for _ in range(max(3, rounds // 3)):
            await d.start("bench")
            t0 = time.perf_counter()
            await trio.to_thread.run_sync(
                lambda: subprocess.run(["ip", "-n", ns, "link", "del", "nfsbe0"], check=True)
            )
            async for ev in ch:
                if ev.network == "bench" and ev.kind == "stopped":
                    break
            lat.append(time.perf_counter() - t0)
        d.unsubscribe(ch)
        nursery.cancel_scope.cancel()
    await d.undefine("bench")

    def row(what: str, core: list[float], fl: list[float], target: float) -> None:
        med, fmed = statistics.median(core), statistics.median(fl)
        ratio = med / fmed
        ok = "ok" if ratio <= target else "MISSED"
        out.append(
            f"{what:<6} median {ms(med)}  p90 {ms(_pct(core, 0.9))}   "
            f"floor median {ms(fmed)}  p90 {ms(_pct(fl, 0.9))}   "
            f"ratio {ratio:4.2f} (target <= {target}x: {ok})"
        )

    out.append(f"isolated network, one IPv4 address, {rounds} rounds:")
    row("start", starts, fl_start, 1.5)
    row("stop", stops, fl_stop, 1.2)

    out.append(
        f"`ip link del` started -> inactive + `stopped` (includes the ip process and the kernel's ~40 ms teardown): median {ms(statistics.median(lat))}  "
        f"max {ms(max(lat))} (target <= 100 ms)"
    )

    names = [f"n{i}" for i in range(n)]
    t0 = time.perf_counter()
    for i, name in enumerate(names):
        await d.define(net_xml(name, f"nfsn{i}", i))
    t1 = time.perf_counter()
    per: list[float] = []
    for name in names:
        s0 = time.perf_counter()
        await d.start(name)
        per.append(time.perf_counter() - s0)
    t2 = time.perf_counter()
    tail = per[-max(10, n // 10) :]
    out.append(f"{n} networks: define all {t1 - t0:7.2f} s   start all {t2 - t1:7.2f} s")
    out.append(
        f"  one start: median of the first 10 {ms(statistics.median(per[:10]))}, "
        f"of the last {len(tail)} {ms(statistics.median(tail))} (flat = no growth with N)"
    )
    rss_active = _rss_kib()

    # daemon restart: a fresh netlink worker and Driver over the same state
    await nl.close()
    del d
    t0 = time.perf_counter()
    nl = Netlink(ns)
    await nl.open()
    d2 = Driver(etc, state, nl)
    await d2.startup()
    t1 = time.perf_counter()
    active = sum(d2.get(x).active for x in d2.names())
    target = "target <= 1 s" if n >= 1000 else "target <= 1 s at 1000"
    out.append(f"restart with {active} active networks until ready: {t1 - t0:6.3f} s ({target})")
    out.append(
        f"resident memory with {n} active networks: {rss_active / 1024:6.1f} MiB "
        f"(+{(rss_active - base_rss) / 1024:.1f} MiB over the process before the core)"
    )

    t0 = time.perf_counter()
    for name in names:
        await d2.stop(name)
    t1 = time.perf_counter()
    stop_all = t1 - t0
    await nl.close()
    fl_start_all, fl_stop_all = floor_many(ns, n)
    out.append(
        f"{n} networks: start all floor {fl_start_all:7.2f} s (pyroute2, same kernel work, "
        f"no files, no collision check)"
    )
    out.append(
        f"{n} networks: stop all {stop_all:7.2f} s   floor {fl_stop_all:7.2f} s "
        f"(RTM_DELLINK of {n} bridges by pyroute2: the kernel's bridge teardown, "
        f"{fl_stop_all / n * 1000:.1f} ms each)"
    )
    return out


def main(flags: list[str]) -> int:
    quick = "--quick" in flags
    # the floors delete bridges behind the driver's back on purpose: its
    # "bridge vanished" warnings are expected here, not news
    logging.getLogger("netfs").setLevel(logging.ERROR)
    n = 100 if quick else 1000
    rounds = 15 if quick else 40
    if os.geteuid() != 0:
        print("bench core: needs root (network namespaces)")
        return 1
    ns = f"nfsbench{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        shm = Path("/dev/shm") if Path("/dev/shm").is_dir() else None
        with (
            tempfile.TemporaryDirectory(prefix="netfs-bench-etc-") as etc,
            tempfile.TemporaryDirectory(prefix="netfs-bench-run-", dir=shm) as state,
        ):
            lines = trio.run(run, ns, n, rounds, Path(etc), Path(state))
        for line in lines:
            print(line)
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
    return 0
