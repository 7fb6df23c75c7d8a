"""Benchmark of networks that carry traffic, through the driver core:
`python -m bench traffic [--quick]`.

Everything runs in a network namespace made for the run and deleted after
it (every process left in it killed); the state directory is on tmpfs
(/dev/shm, like /run), the config directory on disk (/tmp, like /etc).

Figures, each beside floors measured in the same run, interleaved round by
round (median, p90):

- start of a NAT network with DHCP (one IPv4 address, a range, a host, a DNS
  host) through ``Driver.start``: bridge, nft rules, addresses, forwarding,
  dnsmasq with libvirt's configuration and netfs's lease helper, its status
  file. Floor: the sum of three, made directly from a thread inside the
  namespace with no files of netfs and no trio: (1) the bridge by pyroute2
  (route dump, bridge, alias, IPv6 sysctls, address, up: the kernel work of
  the core's bridge part); (2) ``nft -f`` of the same network's rules
  (netfs.model.firewall.add_script: the same transaction as the core's);
  (3) plain ``dnsmasq`` with the same configuration (no lease helper) until
  its daemonising parent has exited and its pid file exists. Target <= 1.3x.
- stop through ``Driver.stop``, against ``nft -f`` of the rules' removal +
  the bridge's RTM_DELLINK (dnsmasq's exit is not in this floor; the core
  waits for it). Target <= 1.2x.
- daemon restart with N (200; 50 with --quick) active NAT+DHCP networks: a
  new Netlink + Driver over the same directories until ``startup()`` returns
  (every network checked, every dnsmasq adopted, the table read once), then
  until the guard runs (``run_monitor`` started: pidfds, nft monitor, lease
  watch). Checked: every network active, the same dnsmasq pids, no rule
  added or lost, no ``repaired`` event. Target <= 1 s.
- lease granted -> the core's ``leases`` event: a guest namespace gets a
  lease by busybox udhcpc; from its script running (it has its address) to
  the event the filesystem turns into IN_MODIFY of ``NAME/leases``.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import trio

from bench.dnsmasq import GUEST_SCRIPT, _Watch
from netfs import nsexec
from netfs.core import Driver, Event
from netfs.dnsmasq import Dnsmasq, run_user, wait_exit
from netfs.model import firewall as fwmodel
from netfs.model.dnsmasq import render
from netfs.model.network import parse_network
from netfs.netlink import Netlink

T = TypeVar("T")


def net_xml(name: str, bridge: str, i: int) -> str:
    a, b = divmod(i, 250)
    net = f"10.{100 + a}.{b}"
    return (
        f"<network><name>{name}</name><forward mode='nat'/><bridge name='{bridge}'/>"
        "<domain name='bench.test'/>"
        f"<dns><host ip='{net}.9'><hostname>web</hostname></host></dns>"
        f"<ip address='{net}.1' prefix='24'><dhcp>"
        f"<range start='{net}.100' end='{net}.200'/>"
        f"<host mac='52:54:00:12:34:56' name='fixed' ip='{net}.42'/>"
        "</dhcp></ip></network>"
    )


def _pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p * (len(s) - 1))))]


def ms(x: float) -> str:
    return f"{x * 1000:7.2f} ms"


def stats(values: list[float]) -> str:
    return f"median {ms(statistics.median(values))}  p90 {ms(_pct(values, 0.9))}"


def in_netns(ns: str, fn: Callable[[], T]) -> T:
    """fn() in a fresh thread that has entered the namespace (programs it
    spawns are born there)."""
    box: list[T] = []
    err: list[BaseException] = []

    def run() -> None:
        try:
            fd = nsexec.open_netns(ns)
            try:
                nsexec.setns_fd(fd)
            finally:
                os.close(fd)
            box.append(fn())
        except BaseException as e:  # handed back to the caller
            err.append(e)

    t = threading.Thread(target=run)
    t.start()
    t.join()
    if err:
        raise err[0]
    return box[0]


class Floor:
    """The three floors of a start and the two of a stop, one round at a time."""

    def __init__(self, ns: str, top: Path) -> None:
        self.ns = ns
        self.net = parse_network(net_xml("floor", "nbfl0", 0))
        self.net.bridge.name = "nbfl0"
        self.add = top / "add.nft"
        self.add.write_text(fwmodel.add_script(self.net))
        self.delete = top / "del.nft"
        self.delete.write_text(fwmodel.remove_script(self.net))
        d = top / "floor"
        d.mkdir()
        os.chmod(d, 0o755)
        self.pidfile = d / "floor.pid"
        files = render(self.net, str(d), pidfile=str(self.pidfile))
        self.conf = d / "floor.conf"
        self.conf.write_text(files.conf)
        (d / "floor.hostsfile").write_text(files.hosts)
        (d / "floor.addnhosts").write_text(files.addnhosts)
        self.nft = nsexec.find_program("nft")
        self.dnsmasq = nsexec.find_program("dnsmasq")

    def round(self) -> tuple[float, float, float, float, float]:
        """(bridge, rules, dnsmasq, rules removed, bridge deleted) in seconds."""
        from pyroute2 import IPRoute  # benchmarks may use pyroute2 directly

        def one() -> tuple[float, float, float, float, float]:
            with IPRoute() as ipr:
                t0 = time.perf_counter()
                ipr.route("dump", family=socket.AF_INET)
                ipr.link(
                    "add", ifname="nbfl0", kind="bridge", address="52:54:00:00:fe:01", state="up"
                )
                idx = socket.if_nametoindex("nbfl0")
                ipr.link("set", index=idx, ifalias="netfs:floor")
                for key, val in (("disable_ipv6", "1"), ("accept_ra", "0"), ("autoconf", "0")):
                    with open(f"/proc/sys/net/ipv6/conf/nbfl0/{key}", "w") as f:
                        f.write(val)
                ipr.addr("add", index=idx, address="10.100.0.1", prefixlen=24)
                t1 = time.perf_counter()
                subprocess.run([self.nft, "-f", str(self.add)], check=True, close_fds=True)
                t2 = time.perf_counter()
                subprocess.run(
                    [
                        self.dnsmasq,
                        f"--conf-file={self.conf}",
                        "--leasefile-ro",
                        f"--user={run_user()}",
                    ],
                    check=True,
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                )
                pid = int(self.pidfile.read_text())
                t3 = time.perf_counter()
                os.kill(pid, signal.SIGTERM)
                wait_exit(pid)
                self.pidfile.unlink(missing_ok=True)
                t4 = time.perf_counter()
                subprocess.run([self.nft, "-f", str(self.delete)], check=True, close_fds=True)
                t5 = time.perf_counter()
                ipr.link("del", index=idx)
                t6 = time.perf_counter()
            return t1 - t0, t2 - t1, t3 - t2, t5 - t4, t6 - t5

        return in_netns(self.ns, one)


async def lease_latency(d: Driver, ns: str, top: Path, rounds: int) -> str:
    """A guest namespace (busybox udhcpc, a veth into the network's bridge)
    gets a new lease per round: from its script running (it has its
    address) to the core's ``leases`` event for the network."""
    guest = f"{ns}g"
    mark = top / "mark"
    mark.mkdir()
    script = top / "guest.sh"
    script.write_text(GUEST_SCRIPT)
    script.chmod(0o755)
    await d.start("bench")
    ch = d.subscribe()
    seen: list[float] = []

    async def events() -> None:
        async for ev in ch:
            if ev.network == "bench" and ev.kind == "leases":
                seen.append(time.monotonic())

    def dhcp(i: int) -> float:
        mac = f"52:54:00:bb:{i // 256:02x}:{i % 256:02x}"
        for argv in (["down"], ["address", mac], ["up"]):
            subprocess.run(["ip", "-n", guest, "link", "set", "vg0", *argv], check=True)
        argv = ["ip", "netns", "exec", guest, "busybox", "udhcpc", "-i", "vg0"]
        argv += ["-n", "-q", "-f", "-t", "5", "-T", "2", "-s", str(script)]
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "BENCH_MARK": str(mark)}
        p = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            return watch.wait({"bound"})["bound"]
        finally:
            p.wait(timeout=60)

    subprocess.run(["ip", "netns", "add", guest], check=True)
    watch = _Watch(mark)
    lat: list[float] = []
    try:
        h = ["ip", "-n", ns]
        subprocess.run(
            [*h, "link", "add", "vh0", "type", "veth", "peer", "name", "vg0", "netns", guest],
            check=True,
        )
        subprocess.run([*h, "link", "set", "vh0", "master", "nbtr0", "up"], check=True)
        async with trio.open_nursery() as nursery:
            await nursery.start(d.run_monitor)  # the guard reports lease changes
            nursery.start_soon(events)
            for i in range(rounds):
                before = len(seen)
                bound = await trio.to_thread.run_sync(dhcp, i)
                with trio.fail_after(10):
                    while len(seen) == before:
                        await trio.sleep(0.001)
                # the first records change of this lease (may precede `bound`)
                lat.append(seen[before] - bound)
                (mark / "bound").unlink()
            nursery.cancel_scope.cancel()
    finally:
        watch.close()
        d.unsubscribe(ch)
        kill_inside(guest)
        subprocess.run(["ip", "netns", "del", guest], check=False)
        await d.stop("bench")
    return (
        f"lease granted (guest's script ran) -> core `leases` event, {rounds} leases: "
        f"{stats(lat)}  (negative: the event came first; target for the mount's "
        "IN_MODIFY <= 50 ms)"
    )


def ruleset_lines(ns: str) -> list[str]:
    out = nsexec.run_sync(ns, ["nft", "-s", "list", "table", "inet", "netfs"], check=False)
    return sorted(line.strip() for line in out.stdout.decode().splitlines())


async def run(ns: str, top: Path, rounds: int, n: int) -> list[str]:
    out: list[str] = []
    etc, state = top / "etc", top / "run"
    floor = Floor(ns, top)
    nl = Netlink(ns)
    await nl.open()
    d = Driver(etc, state, nl)
    await d.startup()
    await d.define(net_xml("bench", "nbtr0", 0))
    # warm up: the table and its base chains exist after the first start
    await d.start("bench")
    await d.stop("bench")
    await trio.to_thread.run_sync(floor.round)
    starts, stops = [], []
    fl: list[tuple[float, float, float, float, float]] = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        await d.start("bench")
        t1 = time.perf_counter()
        await d.stop("bench")
        t2 = time.perf_counter()
        starts.append(t1 - t0)
        stops.append(t2 - t1)
        fl.append(await trio.to_thread.run_sync(floor.round))
    fl_bridge, fl_rules, fl_dnsmasq, fl_unrules, fl_unbridge = (
        list(x) for x in zip(*fl, strict=True)
    )
    fl_start = [a + b + c for a, b, c, _, _ in fl]
    fl_stop = [x + y for _, _, _, x, y in fl]

    def ratio(got: list[float], floor_: list[float], target: float) -> str:
        r = statistics.median(got) / statistics.median(floor_)
        return f"{r:4.2f}x (target <= {target}x: {'ok' if r <= target else 'MISSED'})"

    out.append(f"NAT network with DHCP, {rounds} rounds:")
    out.append(f"  start  {stats(starts)}   {ratio(starts, fl_start, 1.3)}")
    out.append(f"    floor sum        {stats(fl_start)}")
    out.append(f"      bridge (pyroute2)  {stats(fl_bridge)}")
    out.append(f"      nft -f rules       {stats(fl_rules)}")
    out.append(f"      dnsmasq, pid file  {stats(fl_dnsmasq)}")
    out.append(f"  stop   {stats(stops)}   {ratio(stops, fl_stop, 1.2)}")
    out.append(f"    floor sum        {stats(fl_stop)}")
    out.append(f"      nft -f removal     {stats(fl_unrules)}")
    out.append(f"      bridge delete      {stats(fl_unbridge)}")
    out.append(await lease_latency(d, ns, top, max(4, rounds // 3)))
    await d.undefine("bench")

    # -- restart with n active networks
    names = [f"n{i}" for i in range(n)]
    t0 = time.perf_counter()
    for i, name in enumerate(names):
        await d.define(net_xml(name, f"nbn{i}", i + 1))
        await d.start(name)
    t1 = time.perf_counter()
    out.append(f"{n} NAT+DHCP networks defined and started: {t1 - t0:6.2f} s")
    dm = Dnsmasq(state, ns)
    pids = await trio.to_thread.run_sync(dm.running)
    rules = await trio.to_thread.run_sync(ruleset_lines, ns)
    await nl.close()
    del d
    t0 = time.perf_counter()
    nl = Netlink(ns)
    await nl.open()
    d2 = Driver(etc, state, nl)
    ch = d2.subscribe()
    await d2.startup()
    t1 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        await nursery.start(d2.run_monitor)
        t2 = time.perf_counter()
        await trio.sleep(1.5)  # the guard's first check of the table
        nursery.cancel_scope.cancel()
    events: list[Event] = []
    while True:
        try:
            events.append(ch.receive_nowait())
        except trio.WouldBlock:
            break
    active = sum(d2.get(x).active for x in names)
    same = await trio.to_thread.run_sync(dm.running) == pids
    rules_after = await trio.to_thread.run_sync(ruleset_lines, ns)
    repaired = [e.line() for e in events if e.kind == "repaired"]
    verdict = "ok" if t1 - t0 <= 1.0 else "MISSED"
    out.append(
        f"restart with {n} active NAT+DHCP networks: startup {t1 - t0:6.3f} s "
        f"(target <= 1 s: {verdict}), guard running {t2 - t0:6.3f} s"
    )
    out.append(
        f"  active {active}/{n}; dnsmasq pids unchanged: {same} ({len(pids)}); "
        f"table unchanged: {rules_after == rules}; repaired events: {len(repaired)}"
    )
    for line in repaired[:5]:
        out.append(f"    {line}")
    t0 = time.perf_counter()
    for name in names:
        await d2.stop(name)
    out.append(f"{n} networks stopped: {time.perf_counter() - t0:6.2f} s")
    await nl.close()
    return out


def kill_inside(ns: str) -> None:
    try:
        want = os.stat(f"/run/netns/{ns}").st_ino
    except OSError:
        return
    for e in os.listdir("/proc"):
        if e.isdigit() and int(e) != os.getpid():
            try:
                if os.stat(f"/proc/{e}/ns/net").st_ino == want:
                    os.kill(int(e), signal.SIGKILL)
            except OSError:
                pass


def main(flags: list[str]) -> int:
    quick = "--quick" in flags
    rounds = 10 if quick else 30
    n = 50 if quick else 200
    if os.geteuid() != 0:
        print("bench traffic: needs root (network namespaces)")
        return 1
    logging.getLogger("netfs").setLevel(logging.ERROR)
    ns = f"nfsbtr{os.getpid()}"
    top = Path(tempfile.mkdtemp(prefix="netfs-bench-traffic-", dir="/dev/shm"))
    os.chmod(top, 0o755)  # dnsmasq reads its hosts files as its own user
    # every dnsmasq holds an inotify instance of its user (dnsmasq): n of
    # them need a limit above n (libvirt's hosts need the same); put back after
    limit = Path("/proc/sys/fs/inotify/max_user_instances")
    old_limit = int(limit.read_text())
    if old_limit < n + 128:
        limit.write_text(str(n + 128))
        print(f"fs.inotify.max_user_instances {old_limit} -> {n + 128} for this run")
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        lines = trio.run(run, ns, top, rounds, n)
        for line in lines:
            print(line)
    finally:
        if old_limit < n + 128:
            limit.write_text(str(old_limit))
        kill_inside(ns)
        subprocess.run(["ip", "netns", "del", ns], check=False)
        subprocess.run(["rm", "-rf", str(top)], check=False)
    return 0
