"""Benchmark of the firewall: `python -m bench firewall [--quick]`.

Everything runs in a network namespace made for the run and always deleted.

Figures (median and p90 of R rounds), each beside its floor measured in the
same run:

- apply of one NAT network (libvirt's default: one IPv4 subnet) through
  netfs.firewall.apply (one `nft -f`, setns in the child), beside a plain
  `ip netns exec NS nft -f FILE` of the same text;
- its removal through netfs.firewall.remove, beside the same for the
  removal text;
- the same two with N other NAT networks in the table (they must not grow
  with N: a network's rules are one transaction of its own);
- check and repair with N active networks (the table read once), beside a
  plain `ip netns exec NS nft -s list table inet netfs`.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable

import trio

from netfs import firewall
from netfs.model import firewall as model
from netfs.model.network import NetworkDef, parse_network


def nat_net(i: int) -> NetworkDef:
    a, b = divmod(i, 250)
    return parse_network(
        f"<network><name>bench{i}</name><bridge name='nfbb{i}'/><forward/>"
        f"<ip address='10.{100 + a}.{b}.1' netmask='255.255.255.0'>"
        f"<dhcp><range start='10.{100 + a}.{b}.2' end='10.{100 + a}.{b}.254'/></dhcp>"
        "</ip></network>"
    )


def _pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p * (len(s) - 1))))]


def ms(x: float) -> str:
    return f"{x * 1000:7.2f} ms"


def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


async def atimed(fn: Callable[[], Awaitable[object]]) -> float:
    t = time.perf_counter()
    await fn()
    return time.perf_counter() - t


def plain_nft(ns: str, path: str) -> None:
    subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", path], check=True)


def row(what: str, got: list[float], floor: list[float]) -> None:
    m, f = statistics.median(got), statistics.median(floor)
    print(
        f"  {what:<34} {ms(m)} (p90 {ms(_pct(got, 0.9))})   floor {ms(f)} "
        f"(p90 {ms(_pct(floor, 0.9))})   {m / f:4.2f}x"
    )


async def one_network(ns: str, rounds: int, net: NetworkDef, tmp: str) -> None:
    add_file = os.path.join(tmp, "add.nft")
    del_file = os.path.join(tmp, "del.nft")
    with open(add_file, "w") as f:
        f.write(model.add_script(net))
    with open(del_file, "w") as f:
        f.write(model.remove_script(net))
    apply_t, remove_t, fl_add, fl_del = [], [], [], []
    for _ in range(rounds):
        apply_t.append(await atimed(lambda: firewall.apply(ns, net)))
        remove_t.append(await atimed(lambda: firewall.remove(ns, net)))
        fl_add.append(timed(lambda: plain_nft(ns, add_file)))
        fl_del.append(timed(lambda: plain_nft(ns, del_file)))
    row("apply (one NAT network)", apply_t, fl_add)
    row("remove (one NAT network)", remove_t, fl_del)


async def run(ns: str, rounds: int, n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        net = nat_net(0)
        print(f"firewall: {rounds} rounds; nft -f of one NAT network's rules")
        # warm up (the table and its base chains are made once)
        await firewall.apply(ns, net)
        await firewall.remove(ns, net)
        await one_network(ns, rounds, net, tmp)
        others = [nat_net(i) for i in range(1, n + 1)]
        for o in others:
            await firewall.apply(ns, o)
        print(f"  with {n} other NAT networks in the table:")
        await one_network(ns, rounds, net, tmp)
        everyone = [net, *others]
        await firewall.apply(ns, net)
        chk, rep, fl = [], [], []
        for _ in range(rounds):
            chk.append(await atimed(lambda: firewall.check(ns, everyone)))
            rep.append(await atimed(lambda: firewall.repair(ns, everyone)))
            fl.append(
                timed(
                    lambda: subprocess.run(
                        ["ip", "netns", "exec", ns, "nft", "-s", "list", "table"]
                        + ["inet", "netfs"],
                        check=True,
                        capture_output=True,
                    )
                )
            )
        row(f"check, {n + 1} active networks", chk, fl)
        row(f"repair (nothing to do), {n + 1}", rep, fl)


def main(flags: list[str]) -> int:
    quick = "--quick" in flags
    rounds = 10 if quick else 30
    n = 50 if quick else 200
    ns = f"nfbenchfw{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        trio.run(run, ns, rounds, n)
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
    return 0
