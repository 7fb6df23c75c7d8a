"""What `sh dev.sh run` runs: netfs mounted over a private network namespace.

    python -m netfs.demo [--no-wait]

Makes a network namespace of its own, temporary config and state
directories and a temporary mount point, puts examples/testA.xml in the
config directory, starts `netfs mount MNT --netns NS -f`, and shows the
filesystem at work: starting a network makes its bridge, portgroup and port
virtualports are merged, inotifywait sees a network stop (its bridge deleted
from outside) and start. Then a NAT network with DHCP (examples/natnet.xml):
a guest namespace with a veth into its bridge gets an address from the
network's dnsmasq (busybox udhcpc), `NAME/leases` shows it (inotifywait sees
it change), `NAME/firewall` shows the rules, and the guest connects to an
upstream namespace, which sees the host's address (masquerading). `events`
tells the story. Then it waits until Ctrl-C or SIGTERM (or exits at once
with --no-wait), stops the NAT network (and its dnsmasq) and the daemon,
unmounts, kills whatever still runs in its namespaces, and removes them and
the temporary directories.

Nothing touches the host's own network namespace.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import IO

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TOP = EXAMPLES.parent


# the guest's DHCP client script (busybox udhcpc calls it with the lease)
UDHCPC_SCRIPT = """#!/bin/sh
case "$1" in
bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/$mask" dev "$interface"
    [ -n "$router" ] && ip route replace default via "${router%% *}" dev "$interface"
    ;;
esac
exit 0
"""

# the upstream's TCP listener: prints the address a connection came from
LISTEN = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(1)
print("listening", flush=True)
c, peer = s.accept()
print("connection from", peer[0], flush=True)
"""

CONNECT = """
import socket, sys
socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5).close()
print("connected to", sys.argv[1])
"""

UPSTREAM = "198.51.100.2"  # the upstream namespace (TEST-NET-2)
UPLINK = "198.51.100.1"  # the managed namespace's address towards it


def kill_inside(netns: str) -> None:
    """SIGKILL every process whose network namespace is `netns` (the last
    resort for a dnsmasq or udhcpc still running there)."""
    try:
        want = os.stat(f"/run/netns/{netns}").st_ino
    except OSError:
        return
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if os.stat(f"/proc/{entry}/ns/net").st_ino == want:
                os.kill(int(entry), signal.SIGKILL)


class _Stop(Exception):
    """SIGTERM or SIGINT: leave, cleaning up."""


def _on_signal(signum: int, frame: FrameType | None) -> None:
    raise _Stop(signal.Signals(signum).name)


_print_lock = threading.Lock()


def say(text: str = "") -> None:
    """Print a line; a reader that went away (`| head`) must not stop the cleanup."""
    with _print_lock:
        try:
            print(text, flush=True)
        except (BrokenPipeError, ValueError):
            with contextlib.suppress(OSError):
                # Point stdout at /dev/null so interpreter shutdown stays quiet.
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def is_mounted(path: Path) -> bool:
    try:
        with open("/proc/self/mounts") as f:
            return any(line.split()[1] == str(path) for line in f)
    except OSError:
        return False


class _Background:
    """A process whose output lines are collected (and optionally echoed)."""

    def __init__(
        self, argv: list[str], cwd: Path, *, echo_prefix: str | None = None, stderr: bool = False
    ) -> None:
        self.lines: list[str] = []
        self.err_lines: list[str] = []
        self.proc = subprocess.Popen(
            argv,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE if stderr else subprocess.DEVNULL,
            text=True,
        )
        self._echo = echo_prefix
        self._threads = [threading.Thread(target=self._pump, args=(self.proc.stdout, self.lines))]
        if stderr:
            self._threads.append(
                threading.Thread(target=self._pump, args=(self.proc.stderr, self.err_lines))
            )
        for t in self._threads:
            t.daemon = True
            t.start()

    def _pump(self, stream: IO[str] | None, into: list[str]) -> None:
        if stream is None:
            return
        for line in stream:
            line = line.rstrip("\n")
            into.append(line)
            if self._echo is not None and into is self.lines:
                say(f"{self._echo}{line}")

    def wait_for(self, text: str, timeout: float, *, err: bool = False) -> bool:
        lines = self.err_lines if err else self.lines
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(text in line for line in lines):
                return True
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        return any(text in line for line in lines)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for t in self._threads:
            t.join(timeout=2)


class Demo:
    def __init__(self) -> None:
        self.netns = f"netfsdemo{os.getpid()}"
        self.guest = f"{self.netns}g"  # the NAT network's guest
        self.upstream = f"{self.netns}u"  # what lies beyond the NAT
        self.tmp = Path(tempfile.mkdtemp(prefix="netfs-demo-"))
        # dnsmasq (its own unprivileged user) reads its files in the state dir
        self.tmp.chmod(0o755)
        self.conf = self.tmp / "config"
        self.state = self.tmp / "state"
        self.mnt = self.tmp / "mnt"
        self.log = self.tmp / "daemon.log"
        self.daemon: subprocess.Popen[bytes] | None = None
        self.background: list[_Background] = []
        self.netns_made: list[str] = []
        self.nat_active = False
        self.failures: list[str] = []
        self.env = dict(os.environ, EX=str(EXAMPLES), NS=self.netns, G=self.guest, U=self.upstream)

    # -- running commands, transcript style ------------------------------

    def watch(self, path: str) -> _Background:
        """`inotifywait -m` on `path` in the background, once it watches."""
        say(f"$ inotifywait -m -e modify,close_write {path} &")
        watch = _Background(
            ["inotifywait", "-m", "-e", "modify,close_write", path],
            self.mnt,
            echo_prefix="[inotifywait] ",
            stderr=True,
        )
        self.background.append(watch)
        if not watch.wait_for("Watches established", 10, err=True):
            say("(inotifywait did not start)")
            self.failures.append(f"inotifywait on {path}")
        return watch

    def sh(
        self, cmd: str, *, expect_fail: bool = False, quiet: bool = False, check: bool = True
    ) -> str:
        """Run `cmd` with bash in the mount point, print it and its output."""
        if not quiet:
            say(f"$ {cmd}")
        out = subprocess.run(
            ["bash", "-c", cmd],
            cwd=self.mnt,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        text = out.stdout + out.stderr
        if not quiet:
            with _print_lock:
                sys.stdout.write(text)
                if out.returncode != 0:
                    sys.stdout.write(f"[exit status {out.returncode}]\n")
                sys.stdout.flush()
        if check and (out.returncode != 0) != expect_fail:
            self.failures.append(cmd)
        return out.stdout

    def note(self, text: str) -> None:
        say()
        say(f"# {text}")

    def wait_until(self, cmd: str, want: str, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.sh(cmd, quiet=True, check=False).strip() == want:
                return True
            time.sleep(0.02)
        return False

    # -- setup and teardown ----------------------------------------------

    def setup(self) -> None:
        for d in (self.conf, self.state, self.mnt):
            d.mkdir()
        subprocess.run(["ip", "netns", "add", self.netns], check=True)
        self.netns_made.append(self.netns)
        subprocess.run(["ip", "-n", self.netns, "link", "set", "lo", "up"], check=True)
        shutil.copy(EXAMPLES / "testA.xml", self.conf / "testA.xml")
        argv = [
            sys.executable,
            "-m",
            "netfs.cli",
            "mount",
            str(self.mnt),
            "--netns",
            self.netns,
            "--config-dir",
            str(self.conf),
            "--state-dir",
            str(self.state),
            "-f",
        ]
        say("netfs demo")
        say(f"  namespace:   {self.netns}")
        say(f"  mount point: {self.mnt}")
        say(f"  config dir:  {self.conf}")
        say(f"  state dir:   {self.state}")
        say(f"  daemon log:  {self.log}")
        say()
        say("$ " + " ".join(["netfs mount", str(self.mnt), "--netns", self.netns, "..."]))
        with open(self.log, "wb") as log:
            self.daemon = subprocess.Popen(
                argv, cwd=TOP, stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        deadline = time.monotonic() + 30
        while not self._ready():
            if self.daemon.poll() is not None:
                raise RuntimeError(f"the daemon exited with status {self.daemon.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError("the mount did not appear within 30 s")
            time.sleep(0.05)

    def _ready(self) -> bool:
        if not is_mounted(self.mnt):
            return False
        try:
            return "testA" in os.listdir(self.mnt)
        except OSError:
            return False

    def teardown(self) -> None:
        for bg in self.background:
            bg.stop()
        if self.nat_active and self.daemon is not None and self.daemon.poll() is None:
            # its dnsmasq keeps running when the daemon stops: stop the network
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                self.sh("echo 0 > natnet/active", quiet=True, check=False)
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.send_signal(signal.SIGTERM)
            try:
                self.daemon.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
                self.daemon.wait()
        if is_mounted(self.mnt):
            subprocess.run(["umount", "-l", str(self.mnt)], check=False)
        for ns in self.netns_made:
            kill_inside(ns)  # anything left (dnsmasq, udhcpc, a listener)
            subprocess.run(["ip", "netns", "del", ns], check=False)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def show_daemon_log(self) -> None:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return
        if text.strip():
            say("--- daemon log ---")
            say(text.rstrip())
            say("------------------")

    # -- the demo itself -----------------------------------------------------

    def run(self) -> None:
        self.background.append(_Background(["cat", "events"], self.mnt))
        say(f"$ cd {self.mnt}")
        say(f"$ EX={EXAMPLES} NS={self.netns}")

        self.note("testA was put in the config directory before the daemon started")
        self.sh("ls")
        self.sh("ls testA testA/portgroups")
        self.sh("cat testA/definition.xml")
        self.sh("cat testA/active testA/uuid")

        self.note("start it: the bridge appears in the namespace")
        self.sh("echo 1 > testA/active")
        self.sh("cat testA/active")
        self.sh('ip -n "$NS" -br link show type bridge')
        self.sh('ip -n "$NS" -br addr show dev testA0')
        self.sh("ls testA")

        self.note("a bad value is refused by the write itself")
        self.sh("echo 2 > testA/active", expect_fail=True)

        self.note(
            "portgroup sales of testA has a virtualport with no type, and testA has none:\n"
            "# libvirt's merge gives no profile, so there is no virtualport.xml"
        )
        self.sh("ls testA/portgroups/sales")
        self.sh("cat testA/portgroups/sales/default")
        self.sh("cat testA/portgroups/sales/virtualport.xml", check=False)

        self.note(
            "ports with a virtualport need a network that allows one: an Open vSwitch\n"
            "# host bridge network, defined through the mount"
        )
        self.sh("mkdir ovsnet && cp $EX/ovsnet.xml ovsnet/definition.xml")
        self.sh("echo 1 > ovsnet/active")
        self.note(
            "portgroup sales of ovsnet: the network's virtualport merged with the portgroup's"
        )
        self.sh("cat ovsnet/portgroups/sales/virtualport.xml")
        self.sh("mkdir ovsnet/ports/vm1 && cat $EX/vm1-interface.xml > ovsnet/ports/vm1/port.xml")
        self.note("interface + portgroup + network, merged (the port is the most specific)")
        self.sh("cat ovsnet/ports/vm1/virtualport.xml")
        self.sh("cat ovsnet/ports/vm1/port.xml")

        self.note(
            "inotifywait on testA/active while the bridge is deleted from outside\n"
            "# (the daemon notices and stops the network) and it is started again"
        )
        watch = self.watch("testA/active")
        self.sh('ip -n "$NS" link del testA0')
        if not self.wait_until("cat testA/active", "0"):
            self.failures.append("testA did not become inactive")
        self.sh("cat testA/active")
        self.sh("echo 1 > testA/active")
        self.sh("cat testA/active")
        self.sh('ip -n "$NS" -br link show type bridge')
        time.sleep(0.3)
        watch.stop()

        self.nat()

        self.note("events: `cat events` was opened when the demo began; it blocks for more")
        time.sleep(0.2)
        say("$ cat events")
        events = self.background[0]
        for line in events.lines:
            say(line)
        if not any(line.endswith(" testA started") for line in events.lines):
            self.failures.append("no 'testA started' event")
        if self.nat_active and not any(" natnet lease-added " in line for line in events.lines):
            self.failures.append("no 'natnet lease-added' event")
        events.stop()

    def _ns(self, ns: str, *argv: str) -> None:
        subprocess.run(["ip", "-n", ns, *argv], check=True, capture_output=True)

    def nat(self) -> None:
        """A NAT network with DHCP: a guest gets its address, reaches upstream."""
        missing = [p for p in ("dnsmasq", "nft", "busybox") if not _which(p)]
        if missing:
            self.note(f"no NAT network with DHCP: {', '.join(missing)} not installed")
            self.failures.append("missing " + ", ".join(missing))
            return
        # the guest and upstream namespaces, wired to the managed one
        for ns in (self.guest, self.upstream):
            subprocess.run(["ip", "netns", "add", ns], check=True)
            self.netns_made.append(ns)
            self._ns(ns, "link", "set", "lo", "up")
        self._ns(
            self.netns,
            "link",
            "add",
            "guest0",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            self.guest,
        )
        self._ns(self.guest, "link", "set", "eth0", "address", "52:54:00:de:00:01", "up")
        self._ns(
            self.netns,
            "link",
            "add",
            "up0",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            self.upstream,
        )
        self._ns(self.netns, "addr", "add", f"{UPLINK}/24", "dev", "up0")
        self._ns(self.netns, "link", "set", "up0", "up")
        self._ns(self.upstream, "addr", "add", f"{UPSTREAM}/24", "dev", "eth0")
        self._ns(self.upstream, "link", "set", "eth0", "up")
        script = self.tmp / "udhcpc.sh"
        script.write_text(UDHCPC_SCRIPT)
        script.chmod(0o755)

        self.note(
            "a NAT network with DHCP: its start adds firewall rules (table inet netfs),\n"
            "# switches IP forwarding on and starts its dnsmasq, all in the namespace"
        )
        self.sh("cat $EX/natnet.xml")
        self.sh("mkdir natnet && cp $EX/natnet.xml natnet/definition.xml")
        self.sh("echo 1 > natnet/active")
        self.nat_active = True
        self.sh("cat natnet/active")
        self.wait_until("grep -c 'chain guest_nat' natnet/firewall", "1")
        self.sh("cat natnet/firewall")
        self.sh(
            'ps -o pid,user,args -p "$(ip netns pids "$NS" | paste -sd,)" | grep -e PID -e natnet'
        )

        self.note(
            "a guest namespace ($G) with a veth into the bridge asks for an address;\n"
            "# inotifywait sees natnet/leases change"
        )
        watch = self.watch("natnet/leases")
        self.sh('ip -n "$NS" link set guest0 master natnet0 up')
        self.sh(
            f'ip netns exec "$G" busybox udhcpc -i eth0 -n -q -f -t 5 -T 2 -x hostname:guest1 -s {script}'
        )
        self.sh('ip -n "$G" -br addr show dev eth0')
        if not watch.wait_for("natnet/leases", 5):
            self.failures.append("no change of natnet/leases seen")
        self.sh("cat natnet/leases")
        if "52:54:00:de:00:01" not in self.sh("cat natnet/leases", quiet=True):
            self.failures.append("the guest's lease is not in natnet/leases")
        watch.stop()

        self.note(
            f"the guest connects to the upstream namespace ($U, {UPSTREAM}):\n"
            "# upstream sees the managed namespace's address, not the guest's (NAT)"
        )
        say(f'$ ip netns exec "$U" python3 -c "<listen on {UPSTREAM}:8080>" &')
        listener = _Background(
            ["ip", "netns", "exec", self.upstream, sys.executable, "-c", LISTEN, UPSTREAM, "8080"],
            self.mnt,
            echo_prefix="[upstream] ",
        )
        self.background.append(listener)
        if not listener.wait_for("listening", 10):
            self.failures.append("the upstream listener")
        say(f'$ ip netns exec "$G" python3 -c "<connect to {UPSTREAM}:8080>"')
        argv = ["ip", "netns", "exec", self.guest, sys.executable, "-c", CONNECT, UPSTREAM, "8080"]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
        say((done.stdout + done.stderr).rstrip())
        if done.returncode != 0:
            self.failures.append("the guest's connection upstream")
        if not listener.wait_for(f"connection from {UPLINK}", 10):
            self.failures.append(f"upstream did not see {UPLINK}")
        listener.stop()

    def explore(self, wait: bool) -> None:
        say()
        say("netfs is mounted; explore it from another shell:")
        say(f"  ls -l {self.mnt}/testA")
        say(f"  cat {self.mnt}/events")
        say(f"  echo 0 > {self.mnt}/testA/active")
        say(f"  ip netns exec {self.netns} ip -br link")
        say(f"  ip netns exec {self.netns} bash     # a shell inside the namespace")
        if self.nat_active:
            say(f"  cat {self.mnt}/natnet/leases {self.mnt}/natnet/firewall")
            say(f"  ip netns exec {self.guest} ping -c 1 {UPSTREAM}   # the guest, through NAT")
        say(f"  man {TOP / 'man' / 'netfs.8'}")
        if not wait:
            return
        say("Press Ctrl-C to stop the daemon, unmount and remove everything.")
        assert self.daemon is not None
        while self.daemon.poll() is None:
            time.sleep(0.5)
        say(f"the daemon exited (status {self.daemon.returncode})")


def _which(prog: str) -> bool:
    return shutil.which(prog) is not None or os.path.exists(f"/usr/sbin/{prog}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m netfs.demo", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--no-wait", action="store_true", help="run the demo, clean up and exit at once"
    )
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("netfs demo: run as root (FUSE mount and network namespace)", file=sys.stderr)
        return 1
    for tool in ("ip", "inotifywait", "bash"):
        if shutil.which(tool) is None:
            print(f"netfs demo: {tool} not found", file=sys.stderr)
            return 1

    old = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    demo = Demo()
    status = 0
    try:
        demo.setup()
        demo.run()
        if demo.failures:
            say()
            say("these steps did not do what was expected: " + "; ".join(demo.failures))
            demo.show_daemon_log()
            status = 1
        demo.explore(wait=not args.no_wait)
    except _Stop:
        say()
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        say(f"netfs demo: {e}")
        demo.show_daemon_log()
        status = 1
    finally:
        # A second Ctrl-C must not interrupt the cleanup.
        for s in old:
            signal.signal(s, signal.SIG_IGN)
        try:
            say(
                "cleaning up: stopping the NAT network and the daemon, unmounting,"
                " removing the namespaces"
            )
        finally:
            demo.teardown()
        for s, h in old.items():
            signal.signal(s, h)
    return status


if __name__ == "__main__":
    sys.exit(main())
