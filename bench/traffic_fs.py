"""Benchmark of networks that carry traffic, through the mount:
`python -m bench traffic_fs [--quick] [--only=start,leases,restart]`.

bench.traffic measures the same through the driver core; this one goes
through a mounted daemon (`netfs mount MNT --netns NS -f`, a subprocess),
as a user does. Everything runs in a network namespace made for the run
(and a guest namespace), deleted after it with every process left in them
killed; the state directory is on tmpfs (/dev/shm, like /run).

Figures, each beside floors measured in the same run, interleaved round by
round (median, p90):

- start of a NAT network with DHCP by open/write("1")/close of
  ``NAME/active`` (what ``echo 1 > active`` does, without the shell), against
  the sum of bench.traffic's three floors (bridge+address+up by pyroute2;
  ``nft -f`` of the same rules; plain dnsmasq until its pid file exists).
  Target <= 1.3x.
- stop by writing "0", against ``nft -f`` of the rules' removal + the
  bridge's deletion. Target <= 1.2x.
- lease granted -> IN_MODIFY of ``NAME/leases`` seen by an inotify watcher
  on the mount: a guest namespace gets a new lease per round by busybox
  udhcpc; from its script running (it has its address) to the event.
  Target <= 50 ms.
- daemon restart (SIGTERM, a new daemon) with N (200; 50 with --quick)
  active NAT+DHCP networks: from the new daemon's spawn until the mount
  lists all of them and every ``active`` reads 1, 5 times (3 with --quick),
  the median; each beside the same restart of a daemon with no networks
  (the interpreter, its imports and the mount: the floor of any restart).
  Checked: the same dnsmasq pids, the table unchanged. Target <= 1 s.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.dnsmasq import GUEST_SCRIPT
from bench.fs import Inotify, write_value
from bench.traffic import Floor, kill_inside, net_xml, ruleset_lines, stats
from netfs.dnsmasq import Dnsmasq

TOP = Path(__file__).resolve().parent.parent
IN_MODIFY = 0x2
IN_CLOSE_WRITE = 0x8


def _is_mounted(path: Path) -> bool:
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == str(path) for line in f)


class Mount:
    """One daemon at a time on one mount point."""

    def __init__(self, ns: str, top: Path, etc: Path, state: Path) -> None:
        self.ns, self.etc, self.state = ns, etc, state
        self.mnt = top / "mnt"
        self.mnt.mkdir(exist_ok=True)
        self.log = top / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.phases: dict[str, float] = {}  # of the last start: "mounted", "listed"

    def start(self, ready: list[str]) -> float:
        """Spawn; seconds until the mount lists `ready` and each `active` reads 1."""
        argv = [sys.executable, "-m", "netfs.cli", "mount", str(self.mnt), "--netns", self.ns]
        argv += ["--config-dir", str(self.etc), "--state-dir", str(self.state), "-f"]
        t0 = time.perf_counter()
        self.phases = {}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                argv, cwd=TOP, stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        deadline = time.monotonic() + 120
        while not self._answers(ready, t0):
            if self.proc.poll() is not None:
                raise RuntimeError(f"the daemon exited {self.proc.returncode}; see {self.log}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.mnt} not ready after 120 s")
            time.sleep(0.002)
        return time.perf_counter() - t0

    def _answers(self, ready: list[str], t0: float) -> bool:
        if not _is_mounted(self.mnt):
            return False
        self.phases.setdefault("mounted", time.perf_counter() - t0)
        try:
            names = set(os.listdir(self.mnt))
            if "events" not in names or not set(ready) <= names:
                return False
            self.phases.setdefault("listed", time.perf_counter() - t0)
            return all((self.mnt / n / "active").read_bytes() == b"1\n" for n in ready)
        except OSError:
            return False

    def stop(self) -> None:
        p, self.proc = self.proc, None
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if _is_mounted(self.mnt):
            subprocess.run(["umount", "-l", str(self.mnt)], check=False)


def define(mnt: Path, name: str, xml: str) -> None:
    (mnt / name).mkdir()
    (mnt / name / "definition.xml").write_text(xml)


def ratio(got: list[float], floor: list[float], target: float) -> str:
    r = statistics.median(got) / statistics.median(floor)
    return f"{r:4.2f}x (target <= {target}x: {'ok' if r <= target else 'MISSED'})"


def start_stop(m: Mount, floor: Floor, rounds: int) -> list[str]:
    active = m.mnt / "bench" / "active"
    write_value(active, b"1\n")  # warm up: the table and its base chains exist after it
    write_value(active, b"0\n")
    floor.round()
    starts, stops, fl = [], [], []
    for _ in range(rounds):
        starts.append(write_value(active, b"1\n"))
        stops.append(write_value(active, b"0\n"))
        fl.append(floor.round())
    fl_start = [a + b + c for a, b, c, _, _ in fl]
    fl_stop = [x + y for _, _, _, x, y in fl]
    cols = list(zip(*fl, strict=True))
    return [
        f"NAT network with DHCP through the mount, {rounds} rounds:",
        f"  echo 1 > active  {stats(starts)}   {ratio(starts, fl_start, 1.3)}",
        f"    floor sum          {stats(fl_start)}",
        f"      bridge (pyroute2)  {stats(list(cols[0]))}",
        f"      nft -f rules       {stats(list(cols[1]))}",
        f"      dnsmasq, pid file  {stats(list(cols[2]))}",
        f"  echo 0 > active  {stats(stops)}   {ratio(stops, fl_stop, 1.2)}",
        f"    floor sum          {stats(fl_stop)}",
        f"      nft -f removal     {stats(list(cols[3]))}",
        f"      bridge delete      {stats(list(cols[4]))}",
    ]


def lease_latency(m: Mount, ns: str, top: Path, rounds: int) -> list[str]:
    guest = f"{ns}g"
    mark = top / "mark"
    mark.mkdir()
    script = top / "guest.sh"
    script.write_text(GUEST_SCRIPT)
    script.chmod(0o755)
    write_value(m.mnt / "bench" / "active", b"1\n")
    subprocess.run(["ip", "netns", "add", guest], check=True)
    ino = Inotify()
    lat: list[float] = []
    missing = 0
    try:
        h = ["ip", "-n", ns]
        subprocess.run(
            [*h, "link", "add", "vh0", "type", "veth", "peer", "name", "vg0", "netns", guest],
            check=True,
        )
        subprocess.run([*h, "link", "set", "vh0", "master", "nbtr0", "up"], check=True)
        wd_leases = ino.watch(m.mnt / "bench" / "leases", IN_MODIFY)
        wd_mark = ino.watch(mark, IN_CLOSE_WRITE)
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "BENCH_MARK": str(mark)}
        for i in range(rounds):
            mac = f"52:54:00:cc:{i // 256:02x}:{i % 256:02x}"
            for argv in (["down"], ["address", mac], ["up"]):
                subprocess.run(["ip", "-n", guest, "link", "set", "vg0", *argv], check=True)
            after = len(ino.events)
            argv = ["ip", "netns", "exec", guest, "busybox", "udhcpc", "-i", "vg0"]
            argv += ["-n", "-q", "-f", "-t", "5", "-T", "2", "-s", str(script)]
            subprocess.run(argv, env=env, capture_output=True, timeout=60, check=True)
            bound = ino.wait_for(after, wd_mark, IN_CLOSE_WRITE, "bound", timeout=10)
            seen = ino.wait_for(after, wd_leases, IN_MODIFY, None, timeout=10)
            if bound is None or seen is None:
                missing += 1
            else:
                lat.append(seen - bound)
            (mark / "bound").unlink(missing_ok=True)
    finally:
        ino.close()
        kill_inside(guest)
        subprocess.run(["ip", "netns", "del", guest], check=False)
        write_value(m.mnt / "bench" / "active", b"0\n")
    worst = statistics.median(lat) if lat else float("inf")
    verdict = "ok" if worst <= 0.05 and not missing else "MISSED"
    return [
        f"lease granted (guest's script ran) -> IN_MODIFY of NAME/leases, {rounds} leases: "
        f"{stats(lat) if lat else '-'}  (target <= 50 ms: {verdict}; missed: {missing}; "
        "negative: the event came first)"
    ]


def restart(m: Mount, ns: str, n: int, top: Path, rounds: int) -> list[str]:
    names = [f"n{i}" for i in range(n)]
    t0 = time.perf_counter()
    for i, name in enumerate(names):
        define(m.mnt, name, net_xml(name, f"nbn{i}", i + 1))
        write_value(m.mnt / name / "active", b"1\n")
    out = [f"{n} NAT+DHCP networks defined and started through the mount: "]
    out[0] += f"{time.perf_counter() - t0:6.2f} s"
    dm = Dnsmasq(m.state, ns)
    pids = dm.running()
    rules = ruleset_lines(ns)
    # the floor: the same daemon with no network at all (the interpreter,
    # its imports, the mount), restarted in the same rounds; in a namespace
    # of its own (its recovery would take the table's rules for orphans)
    etc, state = top / "etc0", top / "run0"
    for d in (etc, state):
        d.mkdir()
        os.chmod(d, 0o755)
    ns0 = f"{ns}e"
    subprocess.run(["ip", "netns", "add", ns0], check=True)
    empty = Mount(ns0, top / "empty", etc, state)
    took: list[float] = []
    floor: list[float] = []
    phases: list[dict[str, float]] = []
    one_pass = float("nan")
    try:
        empty.start([])
        for _ in range(rounds):
            m.stop()
            took.append(m.start(names))
            phases.append(m.phases)
            t0 = time.perf_counter()
            assert m._answers(names, t0)
            one_pass = time.perf_counter() - t0  # what reading the answer costs the reader
            empty.stop()
            floor.append(empty.start([]))
    finally:
        empty.stop()
        kill_inside(ns0)
        subprocess.run(["ip", "netns", "del", ns0], check=False)
    same = dm.running() == pids
    time.sleep(1.5)  # the guard's first check of the table, had anything been missing
    rules_after = ruleset_lines(ns)
    med = statistics.median(took)
    verdict = "ok" if med <= 1.0 else "MISSED"
    out.append(
        f"daemon restart with {n} active NAT+DHCP networks, spawn -> the mount lists all, "
        f"every active reads 1, median of {rounds}: {med:6.3f} s (target <= 1 s: {verdict})"
    )
    out.append("  each: " + ", ".join(f"{t:.3f}" for t in took) + " s")
    out.append(
        "  of which (median): mounted {mounted:6.3f} s, all listed {listed:6.3f} s; one more"
        " pass of listing + reading the {n} active files (the reader's own cost): {p:6.3f} s".format(
            mounted=statistics.median(p.get("mounted", float("nan")) for p in phases),
            listed=statistics.median(p.get("listed", float("nan")) for p in phases),
            n=n,
            p=one_pass,
        )
    )
    out.append(
        f"  floor: the same restart with no network, median {statistics.median(floor):6.3f} s"
        " (each: " + ", ".join(f"{t:.3f}" for t in floor) + " s)"
    )
    out.append(
        f"  dnsmasq pids unchanged: {same} ({len(pids)}); table unchanged: {rules_after == rules}"
    )
    for name in names:
        write_value(m.mnt / name / "active", b"0\n")
    return out


PARTS = ("start", "leases", "restart")


def main(flags: list[str]) -> int:
    quick = "--quick" in flags
    only = set(PARTS)
    for f in flags:
        if f.startswith("--only="):
            only = set(f[len("--only=") :].split(","))
            if not only <= set(PARTS):
                print(f"bench traffic_fs: --only= takes {','.join(PARTS)}")
                return 2
    rounds = 10 if quick else 30
    n = 50 if quick else 200
    if os.geteuid() != 0:
        print("bench traffic_fs: needs root (network namespaces, FUSE)")
        return 1
    ns = f"nfsbtf{os.getpid()}"
    top = Path(tempfile.mkdtemp(prefix="netfs-bench-trafficfs-", dir="/dev/shm"))
    os.chmod(top, 0o755)  # dnsmasq reads its hosts files as its own user
    (top / "empty").mkdir()
    etc, state = top / "etc", top / "run"
    for d in (etc, state):
        d.mkdir()
        os.chmod(d, 0o755)
    limit = Path("/proc/sys/fs/inotify/max_user_instances")
    old_limit = int(limit.read_text())
    if old_limit < n + 128:
        limit.write_text(str(n + 128))
        print(f"fs.inotify.max_user_instances {old_limit} -> {n + 128} for this run")
    subprocess.run(["ip", "netns", "add", ns], check=True)
    m = Mount(ns, top, etc, state)
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        floor = Floor(ns, top)
        m.start([])
        define(m.mnt, "bench", net_xml("bench", "nbtr0", 0))
        if "start" in only:
            for line in start_stop(m, floor, rounds):
                print(line, flush=True)
        if "leases" in only:
            for line in lease_latency(m, ns, top, max(4, rounds // 3)):
                print(line, flush=True)
        if "restart" in only:
            for line in restart(m, ns, n, top, 3 if quick else 5):
                print(line, flush=True)
    finally:
        m.stop()
        if old_limit < n + 128:
            limit.write_text(str(old_limit))
        kill_inside(ns)
        subprocess.run(["ip", "netns", "del", ns], check=False)
        subprocess.run(["rm", "-rf", str(top)], check=False)
    return 0
