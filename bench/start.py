"""A start through the mount beside the netlink floor: `python -m bench start [--quick]`.

`echo 1 > MNT/x/active` of an isolated network with one IPv4 address,
written by a shell (bash: `echo` is a builtin, so each sample is the
redirection's open, the write and the close, timed with $EPOCHREALTIME until
the command returns), beside the minimal kernel work of such a start made
directly with pyroute2 in a thread inside a namespace of its own: a bridge
with its MAC, its address, up -- three requests, no files, no trio. The two
are measured in the same run, in alternating blocks (so that load from other
processes weighs on both alike), and the ratio of the medians is printed.
Target: <= 1.5x.

Everything runs in network namespaces, directories and a mount made for the
run and always removed (the daemon is `netfs mount MNT --netns NS -f`; its
config directory on disk, its state directory on tmpfs).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

TOP = Path(__file__).resolve().parent.parent

NET = (
    "<network><name>x</name><uuid>5a0f3d9c-61a7-4c43-9d7e-0b1c2d3e4f50</uuid>"
    "<bridge name='nfsx0'/><mac address='52:54:00:00:5a:01'/>"
    "<ip address='10.198.0.1' netmask='255.255.255.0'/></network>\n"
)

# one bash process per block: N starts (and stops, not timed), one line each
_BASH = r"""
f=$1/x/active
for ((i = 0; i < $2; i++)); do
    a=$EPOCHREALTIME
    echo 1 > "$f" || exit 1
    b=$EPOCHREALTIME
    echo 0 > "$f" || exit 1
    echo "${a/./} ${b/./}"
done
"""


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check)


def _is_mounted(path: Path) -> bool:
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == str(path) for line in f)


class Floor:
    """pyroute2 in a thread that entered the floor's namespace: the same
    kernel work as the start, three requests (bridge with MAC, address, up)."""

    def __init__(self, ns: str) -> None:
        self.ns = ns

    def block(self, n: int) -> list[float]:
        box: dict[str, Any] = {}
        t = threading.Thread(target=self._run, args=(n, box))
        t.start()
        t.join()
        if "error" in box:
            raise box["error"]
        out: list[float] = box["times"]
        return out

    def _run(self, n: int, box: dict[str, Any]) -> None:
        try:
            from pyroute2 import IPRoute  # benchmarks may use pyroute2 directly

            from netfs.nsexec import open_netns, setns_fd

            fd = open_netns(self.ns)
            try:
                setns_fd(fd)
            finally:
                os.close(fd)
            times: list[float] = []
            with IPRoute() as ipr:
                for _ in range(n):
                    t0 = time.perf_counter()
                    ipr.link("add", ifname="nfsfl0", kind="bridge", address="52:54:00:00:5a:02")
                    idx = socket.if_nametoindex("nfsfl0")
                    ipr.addr(
                        "add",
                        index=idx,
                        address="10.199.0.1",
                        prefixlen=24,
                        broadcast="10.199.0.255",
                    )
                    ipr.link("set", index=idx, state="up")
                    times.append(time.perf_counter() - t0)
                    ipr.link("del", index=idx)
            box["times"] = times
        except BaseException as e:  # handed to the caller
            box["error"] = e


def shell_block(mnt: Path, n: int) -> list[float]:
    out = _run("bash", "-c", _BASH, "bash", str(mnt), str(n))
    values = []
    for line in out.stdout.split("\n"):
        if line:
            a, b = line.split()
            values.append((int(b) - int(a)) / 1e6)
    return values


def measure(mnt: Path, floor: Floor, n: int, rounds: int = 10) -> tuple[list[float], list[float]]:
    mount: list[float] = []
    fl: list[float] = []
    block = max(1, n // rounds)
    shell_block(mnt, 2)  # warm-up: imports, caches, the state thread
    floor.block(2)
    for r in range(rounds):
        if r % 2:
            fl += floor.block(block)
            mount += shell_block(mnt, block)
        else:
            mount += shell_block(mnt, block)
            fl += floor.block(block)
    return mount, fl


def _pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p * (len(s) - 1))))]


def ms(x: float) -> str:
    return f"{x * 1000:7.2f} ms"


def main(flags: list[str]) -> int:
    if os.geteuid() != 0:
        print("bench start: needs root (network namespaces, FUSE)")
        return 1
    n = 40 if "--quick" in flags else 200
    tag = f"{os.getpid() % 100000}"
    ns, ns_floor = f"nfsbst{tag}a", f"nfsbst{tag}b"
    tmp = Path(tempfile.mkdtemp(prefix="netfs-bench-start-"))
    shm = Path(tempfile.mkdtemp(prefix="netfs-bench-start-", dir="/dev/shm"))
    mnt, conf, state = tmp / "mnt", tmp / "config", shm / "state"
    proc: subprocess.Popen[bytes] | None = None
    made: list[str] = []
    try:
        for d in (mnt, conf, state):
            d.mkdir()
        for name in (ns, ns_floor):
            _run("ip", "netns", "add", name)
            made.append(name)
            _run("ip", "-n", name, "link", "set", "lo", "up")
        (conf / "x.xml").write_text(NET)
        argv = [sys.executable, "-m", "netfs.cli", "mount", str(mnt), "--netns", ns]
        argv += ["--config-dir", str(conf), "--state-dir", str(state), "-f"]
        with open(tmp / "daemon.log", "ab") as log:
            proc = subprocess.Popen(argv, cwd=TOP, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        deadline = time.monotonic() + 60
        while not (_is_mounted(mnt) and (mnt / "x" / "active").exists()):
            if proc.poll() is not None or time.monotonic() > deadline:
                print((tmp / "daemon.log").read_text())
                raise RuntimeError("the daemon did not come up")
            time.sleep(0.05)
        mount, fl = measure(mnt, Floor(ns_floor), n)
        up = _run("ip", "-n", ns, "-br", "link", "show", "nfsx0", check=False).stdout
        med, fmed = statistics.median(mount), statistics.median(fl)
        ratio = med / fmed
        print(f"-- start of an isolated network, one IPv4 address ({len(mount)} each, interleaved)")
        print(
            f"  mount: bash `echo 1 > MNT/x/active`    median {ms(med)}  p90 {ms(_pct(mount, 0.9))}"
        )
        print(
            f"  floor: pyroute2 bridge+MAC, addr, up   median {ms(fmed)}  p90 {ms(_pct(fl, 0.9))}"
        )
        verdict = "ok" if ratio <= 1.5 else "MISSED"
        print(f"  ratio {ratio:4.2f} (target <= 1.5x: {verdict})")
        if "nfsx0" in up:
            print("  !! the bridge is still there after the last `echo 0`")
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if _is_mounted(mnt):
            _run("umount", "-l", str(mnt), check=False)
        for name in made:
            _run("ip", "netns", "del", name, check=False)
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(shm, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
