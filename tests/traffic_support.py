"""Namespaces that carry traffic, shared by the tests that run dnsmasq,
udhcpc, dig and nft between them (test_dnsmasq_run.py, test_firewall_traffic.py,
test_traffic_core.py, and through its `world` test_traffic_fs.py):

    guest: gv0 --- gh0 [bridge]  host  uh0 --- uv0  :up

A fixture builds its namespaces with `namespaces(...)` and its files in
`scratch_dir(...)`; on the way out, also when the test fails, every process
left in the namespaces is killed, the namespaces are deleted and the
directory removed. The processes a test starts itself (listeners, udhcpc) go
through a `Lab`, whose `reap()` the fixture calls in its `finally`.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from netfs import nsexec
from tests.conftest import ip, kill_inside, make_netns_name

WAIT = 15.0  # seconds: a bound so that a bug cannot hang the run, not a timing claim

# busybox udhcpc's script: configure what the server offered, write the address
UDHCPC_SCRIPT = """#!/bin/sh
case "$1" in
bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/$mask" dev "$interface"
    [ -n "$router" ] && ip route replace default via "${router%% *}" dev "$interface"
    echo "$ip" > "$NETFS_TEST_OUT"
    ;;
esac
exit 0
"""

# argv: ADDRESS PORT TIMEOUT; prints "ready", then the peer's "ADDRESS PORT"
LISTEN = textwrap.dedent(
    """
    import socket, sys
    fam = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((sys.argv[1], int(sys.argv[2])))
    s.listen(1)
    s.settimeout(float(sys.argv[3]))
    print("ready", flush=True)
    try:
        c, peer = s.accept()
    except OSError as e:
        print("none", e, flush=True)
        sys.exit(1)
    print(peer[0], peer[1], flush=True)
    c.close()
    """
)

# argv: ADDRESS PORT SOURCE-PORT (0: any) TIMEOUT; prints "ok", "timeout" or the errno's name
CONNECT = textwrap.dedent(
    """
    import errno, socket, sys
    v6 = ":" in sys.argv[1]
    s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_STREAM)
    if sys.argv[3] != "0":
        s.bind(("::" if v6 else "0.0.0.0", int(sys.argv[3])))
    s.settimeout(float(sys.argv[4]))
    try:
        s.connect((sys.argv[1], int(sys.argv[2])))
        print("ok")
    except socket.timeout:
        print("timeout")
    except OSError as e:
        print(errno.errorcode.get(e.errno, str(e.errno)))
    """
)


def skip_unless_root(*programs: str) -> None:
    """Skip the test without root or without one of `programs`."""
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    for prog in programs:
        if shutil.which(prog) is None and not os.path.exists(f"/usr/sbin/{prog}"):
            pytest.skip(f"{prog} is not installed")


@contextlib.contextmanager
def namespaces(*tags: str) -> Iterator[list[str]]:
    """New network namespaces (loopback up), one per tag; afterwards, also
    when the test failed, every process inside them is killed and they are
    deleted."""
    names = [make_netns_name(t) for t in tags]
    made: list[str] = []
    try:
        for n in names:
            subprocess.run(["ip", "netns", "add", n], check=True)
            made.append(n)
            ip("link", "set", "lo", "up", netns=n)
        yield names
    finally:
        for n in made:
            kill_inside(n)
            subprocess.run(["ip", "netns", "del", n], check=False)


@contextlib.contextmanager
def scratch_dir(prefix: str) -> Iterator[Path]:
    """A directory in /dev/shm that others may enter (not pytest's tmp_path,
    0700: dnsmasq reads its hosts files as its own user); removed afterwards."""
    top = Path(tempfile.mkdtemp(prefix=prefix, dir="/dev/shm"))
    try:
        os.chmod(top, 0o755)
        yield top
    finally:
        shutil.rmtree(top, ignore_errors=True)


def add_bridge(ns: str, name: str, cidr: str) -> None:
    """A bridge with an address, up."""
    ip("link", "add", name, "type", "bridge", netns=ns)
    ip("addr", "add", cidr, "dev", name, netns=ns)
    ip("link", "set", name, "up", netns=ns)


def add_guest_link(host: str, guest: str, *, bridge: str | None = None, mac: str = "") -> None:
    """The guest's veth: gh0 in `host` (into `bridge` and up when given; the
    test plugs it in later otherwise), gv0 in `guest` (with `mac`) up."""
    ip("link", "add", "gh0", "type", "veth", "peer", "name", "gv0", "netns", guest, netns=host)
    if bridge is not None:
        ip("link", "set", "gh0", "master", bridge, "up", netns=host)
    ip("link", "set", "gv0", *(["address", mac] if mac else []), "up", netns=guest)


def add_uplink(host: str, up: str, n: int, host_cidr: str, up_cidr: str) -> None:
    """A veth uhN (in `host`, `host_cidr`) --- uvN (in `up`, `up_cidr`), up."""
    ip("link", "add", f"uh{n}", "type", "veth", "peer", "name", f"uv{n}", "netns", up, netns=host)
    ip("addr", "add", host_cidr, "dev", f"uh{n}", netns=host)
    ip("link", "set", f"uh{n}", "up", netns=host)
    ip("addr", "add", up_cidr, "dev", f"uv{n}", netns=up)
    ip("link", "set", f"uv{n}", "up", netns=up)


def bind_udp_in(ns: str, addr: str, port: int) -> socket.socket:
    """A UDP socket bound to `addr`:`port` inside `ns` (from a thread that
    entered it), without SO_REUSEADDR: nobody else binds beside it."""
    sock: list[socket.socket] = []

    def bind() -> None:
        fd = nsexec.open_netns(ns)
        try:
            nsexec.setns_fd(fd)
        finally:
            os.close(fd)
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((addr, port))
        sock.append(s)

    t = threading.Thread(target=bind)
    t.start()
    t.join()
    assert sock, f"could not bind {addr}:{port} in {ns}"
    return sock[0]


def uid_of(pid: int) -> int:
    """The real user id of process `pid`."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError("no Uid line")


@dataclass
class Lab:
    """The processes a test starts in its namespaces (all reaped by `reap`)
    and connections between the namespaces."""

    procs: list[subprocess.Popen[str]] = field(default_factory=list, kw_only=True)

    def listen(self, ns: str, addr: str, port: int) -> subprocess.Popen[str]:
        """A listener in `ns` on `addr`:`port`, accepting one connection."""
        p = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-c", LISTEN, addr, str(port), "10"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.procs.append(p)
        assert p.stdout is not None
        ready, _w, _x = select.select([p.stdout], [], [], WAIT)
        assert ready, "listener did not start"
        assert p.stdout.readline().strip() == "ready"
        return p

    def connect(self, ns: str, addr: str, port: int, sport: int = 0, timeout: float = 3) -> str:
        """One connection from `ns`: "ok", "timeout" or the errno's name."""
        p = subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, "-c", CONNECT]
            + [addr, str(port), str(sport), str(timeout)],
            capture_output=True,
            text=True,
            timeout=timeout + WAIT,
        )
        return p.stdout.strip()

    def peer(self, listener: subprocess.Popen[str]) -> tuple[str, int]:
        """Who connected to a listener (address and port as it saw them)."""
        out, _err = listener.communicate(timeout=WAIT)
        addr, port = out.split()[:2]
        return addr, int(port)

    def stop(self, listener: subprocess.Popen[str]) -> None:
        listener.kill()
        listener.wait(timeout=WAIT)

    def reap(self) -> None:
        """Kill what still runs of the test's processes and wait for them."""
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.communicate(timeout=WAIT)


@dataclass
class GuestLab(Lab):
    """A guest namespace whose gv0 takes its address by DHCP (busybox udhcpc)
    and asks a DNS server (dig)."""

    guest: str
    server: str  # the address dig asks
    files: Path  # where the udhcpc script and what it writes are

    @property
    def script(self) -> Path:
        return self.files / "udhcpc.sh"

    @property
    def out(self) -> Path:
        """Where the udhcpc script writes the address it configured."""
        return self.files / "udhcpc.out"

    def write_script(self) -> None:
        self.script.write_text(UDHCPC_SCRIPT)
        self.script.chmod(0o755)

    def set_mac(self, mac: str) -> None:
        ip("link", "set", "gv0", "down", netns=self.guest)
        ip("link", "set", "gv0", "address", mac, netns=self.guest)
        ip("link", "set", "gv0", "up", netns=self.guest)

    def dhcp(self, *extra: str) -> str:
        """One udhcpc run in the guest: the address it got (and configured)."""
        with contextlib.suppress(FileNotFoundError):
            self.out.unlink()
        argv = ["ip", "netns", "exec", self.guest, "busybox", "udhcpc", "-i", "gv0"]
        argv += ["-n", "-q", "-f", "-t", "5", "-T", "2", "-s", str(self.script), *extra]
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "NETFS_TEST_OUT": str(self.out)}
        p = subprocess.Popen(
            argv,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
        self.procs.append(p)
        out, _ = p.communicate(timeout=60)
        assert p.returncode == 0, out
        return self.out.read_text().strip()

    def dig(self, name: str, qtype: str = "A") -> list[str]:
        """What the server answers the guest for `name` (dig +short)."""
        argv = ["dig", f"@{self.server}", "+short", "+time=2", "+tries=3", name, qtype]
        done = subprocess.run(
            ["ip", "netns", "exec", self.guest, *argv], capture_output=True, text=True, timeout=30
        )
        return done.stdout.split()
