"""Readers of ``NAME/leases`` against everyone else's reads:
`python -m bench leases_read [--quick]` (as root).

A daemon is mounted (`netfs mount MNT --netns NS -f`, a subprocess) in a
network namespace made for the run; network ``victim`` (NAT + DHCP, not
started: its ``leases`` shows the records all the same) gets 253 leases
written straight into its records file (63-character host names, 61-byte
client ids, a whole /24), as a hostile guest spoofing MACs can take. Then
N threads of an unprivileged user (uid 65534, by setpriv) open and read
``victim/leases`` in a loop, while another user (uid 65533) opens and reads
a small file (``other/autostart``) every 20 ms for 10 s (4 s with --quick): the latency of that read
(median, p90, max) is printed for N = 0 (the floor: the same reads with no
reader), and for N = 32 and 200 (8 and 32 with --quick), with the readers'
total reads per second.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.traffic import kill_inside, net_xml
from bench.traffic_fs import Mount, define
from netfs import leases

READER = """
import sys, threading, time
path, n, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
count = [0] * n
end = time.monotonic() + secs
def loop(i):
    while time.monotonic() < end:
        with open(path, "rb") as f:
            while f.read(65536):
                pass
        count[i] += 1
ts = [threading.Thread(target=loop, args=(i,)) for i in range(n)]
for t in ts: t.start()
for t in ts: t.join()
print(sum(count))
"""


def records(now: int) -> leases.Records:
    out = []
    for i in range(2, 255):
        mac = f"52:54:00:aa:{i // 256:02x}:{i % 256:02x}"
        host = (f"h{i:03d}-" + "x" * 63)[:63]
        cid = ":".join(["ff"] * 20) + f":{i % 16:x}"  # 61 bytes
        out.append(leases.Lease(f"10.100.0.{i}", mac, now + 3600, host, cid))
    return leases.Records(tuple(out))


def as_user(uid: int, argv: list[str]) -> list[str]:
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *argv]


MEASURE = """
import sys, time
path, secs = sys.argv[1], float(sys.argv[2])
end = time.monotonic() + secs
while time.monotonic() < end:
    t0 = time.perf_counter()
    with open(path, "rb") as f:
        f.read()
    print(time.perf_counter() - t0)
    time.sleep(0.02)
"""


def read_latency(path: Path, secs: float) -> list[float]:
    """Seconds per open+read+close of `path` by another user (uid 65533),
    one every 20 ms for `secs` seconds."""
    argv = as_user(65533, [sys.executable, "-c", MEASURE, str(path), str(secs)])
    out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
    return [float(x) for x in out.split()]


def line(label: str, values: list[float]) -> str:
    s = sorted(values)
    p90 = s[min(len(s) - 1, round(0.9 * (len(s) - 1)))]
    return (
        f"  {label:<34} median {statistics.median(s) * 1000:8.2f} ms  "
        f"p90 {p90 * 1000:8.2f} ms  max {s[-1] * 1000:8.2f} ms"
    )


def main(flags: list[str]) -> int:
    quick = "--quick" in flags
    threads = (8, 32) if quick else (32, 200)
    secs = 4.0 if quick else 10.0
    top = Path(tempfile.mkdtemp(prefix="netfs-bench-leases-", dir="/dev/shm"))
    os.chmod(top, 0o755)
    etc, state = top / "etc", top / "state"
    for d in (etc, state):
        d.mkdir()
        os.chmod(d, 0o755)
    ns = f"netfs-bl-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    m = Mount(ns, top, etc, state)
    try:
        m.start([])
        define(m.mnt, "victim", net_xml("victim", "nbl0", 0))
        define(m.mnt, "other", net_xml("other", "nbl1", 1))
        records_dir = leases.leases_dir(state)
        os.makedirs(records_dir, exist_ok=True)
        leases.write_records(records_dir, "victim", records(int(time.time())))
        text = (m.mnt / "victim" / "leases").read_bytes()
        print(f"  victim/leases: {len(text.splitlines())} lines, {len(text)} bytes")
        small = m.mnt / "other" / "autostart"
        read_latency(small, 0.5)  # warm up
        print(line("read other/autostart, no reader", read_latency(small, secs)), flush=True)
        for n in threads:
            reader = subprocess.Popen(
                as_user(65534, [sys.executable, "-c", READER, str(m.mnt / "victim/leases")])
                + [str(n), str(secs + 2.0)],
                stdout=subprocess.PIPE,
                text=True,
            )
            time.sleep(1.0)
            got = read_latency(small, secs)
            out, _ = reader.communicate()
            reads = int(out.strip() or 0)
            print(line(f"read other/autostart, {n} readers", got), flush=True)
            print(f"    the readers: {reads / (secs + 2.0):9.0f} reads of victim/leases per second")
    finally:
        m.stop()
        kill_inside(ns)
        subprocess.run(["ip", "netns", "del", ns], check=False)
        subprocess.run(["rm", "-rf", str(top)], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
