"""Benchmark of dnsmasq per network and of lease updates: `python -m bench dnsmasq`.

Everything runs in two namespaces made for the run (a "host" one with a
bridge and an address, a guest one with a veth into it) and deleted after it,
with the state directory on tmpfs (/dev/shm, like /run). Figures, each beside
a floor measured in the same run (median and p90 of ROUNDS):

- start: netfs.dnsmasq's start (a configuration as libvirt writes it, run
  with --leasefile-ro and netfs's lease helper, dropping to the dnsmasq user,
  pid file checked against /proc) against the floor: plain `dnsmasq` with the
  same configuration, started inside the namespace until its daemonising
  parent has exited and its pid file exists;
- stop: netfs.dnsmasq's stop (SIGTERM, wait for the exit, pid file removed)
  against SIGTERM + wait of the plain dnsmasq;
- lease granted -> records file changed: a guest (busybox udhcpc) gets an
  address; from the moment its script starts (udhcpc has the DHCPACK, before
  it configures the address) to the rename of the network's records file,
  both seen by one inotify watch here (negative: the records changed first). Floor: the same with a one-line shell --dhcp-script that only
  touches a file. Target: <= 50 ms.
- recovery with N running dnsmasq (200, 50 with --quick; one bridge each):
  a new Dnsmasq object's survey() adopts every one and finds the orphans in
  one /proc scan (pid file, command line, state, namespace checked), against
  the floor: reading the N pid files and kill(pid, 0). Also the time to start the N (sequentially).
"""

from __future__ import annotations

import ctypes
import os
import select
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from netfs import leases, nsexec
from netfs.dnsmasq import Dnsmasq, run_user, wait_exit

NET = "bench"
BRIDGE = "nbbr0"


def _stats(values: list[float]) -> str:
    s = sorted(values)
    p90 = s[min(len(s) - 1, int(round(0.9 * (len(s) - 1))))]
    return f"median {statistics.median(s) * 1000:7.2f} ms  p90 {p90 * 1000:7.2f} ms"


def _conf(d: Path) -> str:
    return (
        "strict-order\n"
        "except-interface=lo\n"
        "bind-dynamic\n"
        f"interface={BRIDGE}\n"
        "dhcp-range=10.79.0.2,10.79.0.254,255.255.255.0\n"
        "dhcp-no-override\n"
        "dhcp-authoritative\n"
        "dhcp-lease-max=253\n"
        f"dhcp-hostsfile={d}/{NET}.hostsfile\n"
        f"addn-hosts={d}/{NET}.addnhosts\n"
    )


def _plain(ns: str, conf: Path, pidfile: Path, script: Path | None = None) -> int:
    """The floor: dnsmasq itself, started inside ns; returns once its pid file exists."""
    fd = os.open(f"/run/netns/{ns}", os.O_RDONLY | os.O_CLOEXEC)
    argv = ["/usr/sbin/dnsmasq", f"--conf-file={conf}", "--leasefile-ro"]
    argv += [f"--pid-file={pidfile}", f"--user={run_user()}"]
    if script is not None:
        argv.append(f"--dhcp-script={script}")
    try:
        subprocess.run(
            argv,
            check=True,
            preexec_fn=lambda: nsexec.setns_fd(fd),
            pass_fds=(fd,),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            start_new_session=True,
        )
    finally:
        os.close(fd)
    return int(pidfile.read_text())


def _stop_plain(pid: int, pidfile: Path) -> None:
    os.kill(pid, signal.SIGTERM)
    wait_exit(pid, 5.0)
    pidfile.unlink(missing_ok=True)


class _Watch:
    """inotify on directories; wait for a named entry to be written/renamed."""

    def __init__(self, *dirs: Path) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self.fd = libc.inotify_init1(os.O_CLOEXEC)
        for d in dirs:
            libc.inotify_add_watch(self.fd, os.fsencode(d), 0x8 | 0x80)  # CLOSE_WRITE|MOVED_TO

    def wait(self, names: set[str], limit: float = 30.0) -> dict[str, float]:
        """Monotonic time at which each of `names` was seen."""
        seen: dict[str, float] = {}
        deadline = time.monotonic() + limit
        while not names <= seen.keys():
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                raise TimeoutError(f"not seen: {names - seen.keys()}")
            data = os.read(self.fd, 65536)
            now = time.monotonic()
            i = 0
            while i + 16 <= len(data):
                length = int.from_bytes(data[i + 12 : i + 16], "little")
                name = data[i + 16 : i + 16 + length].rstrip(b"\0").decode()
                i += 16 + length
                if name in names and name not in seen:
                    seen[name] = now
        return seen

    def close(self) -> None:
        os.close(self.fd)


GUEST_SCRIPT = """#!/bin/sh
case "$1" in bound|renew) : > "$BENCH_MARK/bound"; ip addr flush dev "$interface"
ip addr add "$ip/$mask" dev "$interface" ;; esac
exit 0
"""


def _lease_latency(
    guest: str, run: Path, records: Path, name: str, rounds: int, start: Callable[[], object]
) -> list[float]:
    """From the guest's `bound` to `name` written in `records`, per new lease."""
    mark = run / "mark"
    mark.mkdir(exist_ok=True)
    script = run / "guest.sh"
    script.write_text(GUEST_SCRIPT)
    script.chmod(0o755)
    start()
    out = []
    watch = _Watch(mark, records)
    try:
        for i in range(rounds):
            mac = f"52:54:00:bb:{i // 256:02x}:{i % 256:02x}"
            subprocess.run(["ip", "-n", guest, "link", "set", "vg0", "down"], check=True)
            subprocess.run(["ip", "-n", guest, "link", "set", "vg0", "address", mac], check=True)
            subprocess.run(["ip", "-n", guest, "link", "set", "vg0", "up"], check=True)
            argv = ["ip", "netns", "exec", guest, "busybox", "udhcpc", "-i", "vg0"]
            argv += ["-n", "-q", "-f", "-t", "5", "-T", "2", "-s", str(script)]
            env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "BENCH_MARK": str(mark)}
            p = subprocess.Popen(
                argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            try:  # read the events as they come, while udhcpc runs
                seen = watch.wait({"bound", name})
            finally:
                p.wait(timeout=60)
            out.append(seen[name] - seen["bound"])
    finally:
        watch.close()
    return out


def _recovery(host: str, run: Path, n: int) -> None:
    many = Dnsmasq(run / "many", netns=host)
    names = [f"n{i}" for i in range(n)]
    try:
        for i, name in enumerate(names):
            sh = ["ip", "-n", host]
            subprocess.run([*sh, "link", "add", f"nbm{i}", "type", "bridge"], check=True)
            addr = f"10.80.{i}.1/24"
            subprocess.run([*sh, "addr", "add", addr, "dev", f"nbm{i}"], check=True)
            subprocess.run([*sh, "link", "set", f"nbm{i}", "up"], check=True)
            conf = (
                f"strict-order\nexcept-interface=lo\nbind-dynamic\ninterface=nbm{i}\n"
                f"dhcp-range=10.80.{i}.2,10.80.{i}.254,255.255.255.0\n"
                f"dhcp-hostsfile={many.dir}/{name}.hostsfile\n"
                f"addn-hosts={many.dir}/{name}.addnhosts\n"
            )
            many.write_files(name, conf)
        t0 = time.perf_counter()
        pids = {name: many.start(name) for name in names}
        t1 = time.perf_counter()
        print(f"start {n} dnsmasq (sequential)  total {(t1 - t0) * 1000:8.1f} ms")
        ours, floor = [], []
        for _ in range(5):
            t0 = time.perf_counter()
            again = Dnsmasq(run / "many", netns=host)
            adopted, orphans = again.survey(set(names))
            t1 = time.perf_counter()
            assert adopted == pids and orphans == [], (adopted, orphans)
            for name in names:
                os.kill(int(many.files(name).pid.read_text()), 0)
            t2 = time.perf_counter()
            ours.append(t1 - t0)
            floor.append(t2 - t1)
        ratio = statistics.median(ours) / statistics.median(floor)
        print(f"recovery: adopt {n} + orphan scan {_stats(ours)}  = {ratio:.1f}x floor")
        print(f"  floor: {n} pid files + kill 0  {_stats(floor)}")
    finally:
        for pid in many.running().values():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def main(flags: list[str]) -> int:
    quick = "--quick" in flags
    rounds = 10 if quick else 30
    lease_rounds = 4 if quick else 10
    if os.geteuid() != 0:
        print("bench dnsmasq: needs root (network namespaces)")
        return 1
    if shutil.which("dnsmasq") is None and not os.path.exists("/usr/sbin/dnsmasq"):
        print("bench dnsmasq: dnsmasq is not installed (Debian package dnsmasq-base)")
        return 1
    host, guest = f"nfsbdh{os.getpid()}", f"nfsbdg{os.getpid()}"
    run = Path(tempfile.mkdtemp(prefix="netfs-bench-dnsmasq-", dir="/dev/shm"))
    os.chmod(run, 0o755)
    d = Dnsmasq(run / "state", netns=host)
    plain_pids: list[int] = []
    try:
        for ns in (host, guest):
            subprocess.run(["ip", "netns", "add", ns], check=True)
        sh = ["ip", "-n", host]
        subprocess.run([*sh, "link", "add", BRIDGE, "type", "bridge"], check=True)
        subprocess.run([*sh, "addr", "add", "10.79.0.1/24", "dev", BRIDGE], check=True)
        subprocess.run([*sh, "link", "set", BRIDGE, "up"], check=True)
        subprocess.run(
            [*sh, "link", "add", "vh0", "type", "veth", "peer", "name", "vg0", "netns", guest],
            check=True,
        )
        subprocess.run([*sh, "link", "set", "vh0", "master", BRIDGE, "up"], check=True)
        d.write_files(NET, _conf(d.dir))
        conf, pidfile = d.files(NET).conf, run / "plain.pid"

        floor_start, floor_stop, start, stop = [], [], [], []
        for _ in range(rounds):
            t0 = time.perf_counter()
            pid = _plain(host, conf, pidfile)
            t1 = time.perf_counter()
            plain_pids.append(pid)
            _stop_plain(pid, pidfile)
            t2 = time.perf_counter()
            floor_start.append(t1 - t0)
            floor_stop.append(t2 - t1)
            t0 = time.perf_counter()
            d.start(NET)
            t1 = time.perf_counter()
            d.stop(NET)
            t2 = time.perf_counter()
            start.append(t1 - t0)
            stop.append(t2 - t1)
        ratio = statistics.median(start) / statistics.median(floor_start)
        print(f"dnsmasq start (netfs)          {_stats(start)}  = {ratio:.2f}x floor")
        print(f"  floor: plain dnsmasq         {_stats(floor_start)}")
        ratio = statistics.median(stop) / statistics.median(floor_stop)
        print(f"dnsmasq stop (netfs)           {_stats(stop)}  = {ratio:.2f}x floor")
        print(f"  floor: SIGTERM + wait        {_stats(floor_stop)}")

        # floor of the lease path: a shell --dhcp-script that only touches a file
        touch = run / "touch"
        touch.mkdir()
        tscript = run / "touch.sh"
        tscript.write_text(f'#!/bin/sh\n[ "$1" = init ] || : > {touch}/changed\n')
        tscript.chmod(0o755)

        def start_plain() -> None:
            plain_pids.append(_plain(host, conf, pidfile, tscript))

        floor_lease = _lease_latency(guest, run, touch, "changed", lease_rounds, start_plain)
        _stop_plain(plain_pids[-1], pidfile)
        ours = _lease_latency(
            guest, run, d.leases_dir, f"{NET}{leases.SUFFIX}", lease_rounds, lambda: d.start(NET)
        )
        print(f"lease granted -> records file  {_stats(ours)}  (target <= 50 ms)")
        print(f"  floor: shell --dhcp-script   {_stats(floor_lease)}")
        _recovery(host, run, 50 if quick else 200)
    finally:
        for pid in [*plain_pids, *d.running().values()]:
            try:
                os.kill(pid, signal.SIGKILL)
                wait_exit(pid, 5.0)
            except ProcessLookupError:
                pass
        for ns in (host, guest):
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)
        shutil.rmtree(run, ignore_errors=True)
    return 0
