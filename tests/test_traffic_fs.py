"""Networks that carry traffic, end to end through the mount, between
namespaces the test makes (tests/test_traffic_core.py's world):

    guest: gv0 (DHCP) --- gh0 [nfbr0 10.72.0.1/24]  host (the daemon's --netns)  uh0 --- uv0 :up

A daemon (a subprocess, as `netfs mount -f`) manages the "host" namespace;
everything is done with shell commands on the mount: `echo 1 > active`,
`cat leases`, `cat events`, `inotifywait`. Teardown: the daemons are stopped
and their mounts cleared, then the world kills every process left in its
namespaces (dnsmasq, udhcpc) and deletes them, also when a test fails.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests import fs_support
from tests.fs_support import Daemon, EventReader, Watch, bash, define, wait_for
from tests.test_traffic_core import GUEST_MAC, HOST, World, network, world  # noqa: F401

NET = "tnat"
LEASE_LINE = re.compile(
    r"^(?P<expiry>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00|never) (?P<mac>\S+) (?P<proto>ipv4|ipv6)"
    r" (?P<addr>\S+)/(?P<prefix>\d+) (?P<host>\S+) (?P<cid>\S+)$"
)
RAW = (
    "<network xmlns:dnsmasq='http://libvirt.org/schemas/network/dnsmasq/1.0'>"
    "<name>{name}</name><bridge name='nfbr5'/>"
    "<ip address='10.73.0.1' prefix='24'><dhcp><range start='10.73.0.10' end='10.73.0.20'/>"
    "</dhcp></ip><dnsmasq:options><dnsmasq:option value='dhcp-authoritative'/>"
    "</dnsmasq:options></network>\n"
)


@pytest.fixture
def daemons(world: World) -> Iterator[Callable[..., Daemon]]:  # noqa: F811
    """Makes daemons (not started) on the world's host namespace and
    directories; all stopped and their mount cleared afterwards."""
    top = world.state.parent
    mnt = top / "mnt"
    mnt.mkdir()
    for d in (world.etc, world.state):
        d.mkdir(exist_ok=True)
        os.chmod(d, 0o755)
    with fs_support.daemons(mnt, world.etc, world.state, world.host, top / "daemon.log") as make:
        yield make


def new_daemon(make: Callable[..., Daemon]) -> Daemon:
    """A daemon started on the world, with 65534 (nobody) as its --group."""
    d = make(["--group", "65534"])
    d.start()
    return d


def sh(script: str) -> str:
    r = bash(script)
    assert r.returncode == 0, (script, r.stderr)
    return r.stdout


def lease_lines(net: Path) -> list[str]:
    return [line for line in (net / "leases").read_text().splitlines() if line]


def nft_table(w: World) -> str:
    done = subprocess.run(
        ["ip", "netns", "exec", w.host, "nft", "-s", "list", "table", "inet", "netfs"],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout


def event_args(ev: EventReader, word: str, n: int = 1) -> list[list[str]]:
    """The arguments of the first `n` `word` lines of NET (TIMESTAMP NAME EVENT ARGS)."""
    found: list[list[str]] = []

    def match(line: str) -> bool:
        f = line.split(" ")
        if f[1:3] == [NET, word] and len([g for g in found if g == f[3:]]) < n:
            found.append(f[3:])
        return len(found) >= n

    ev.find(match, f"{n} {word} of {NET}", 15)
    return found


def test_nat_dhcp_network_through_the_mount(world: World, daemons: Callable[..., Daemon]) -> None:  # noqa: F811
    w = world
    d = new_daemon(daemons)
    mnt = d.mnt
    net = mnt / NET
    define(mnt, NET, network(NET, hosts="") + "\n")
    assert (net / "leases").read_text() == ""
    assert (net / "firewall").read_text() == ""
    for f in ("leases", "firewall"):
        assert oct(os.stat(net / f).st_mode & 0o777) == "0o444", f
        r = bash(f"echo x > {net}/{f}")
        assert r.returncode != 0 and "Permission denied" in r.stderr, (f, r.stderr)

    ev = EventReader(mnt)
    try:
        fw_watch = Watch(net / "firewall")
        try:
            sh(f"echo 1 > {net}/active")
            assert (net / "active").read_text() == "1\n"
            # the rules in place, as nft lists them; the change announced
            fw_watch.find(lambda li: li == f"{net}/firewall MODIFY", "IN_MODIFY on firewall", 15)
        finally:
            fw_watch.close()
        fw = (net / "firewall").read_text()
        assert fw.startswith("table inet netfs {") and "masquerade" in fw, fw

        # a guest gets an address by DHCP; a watcher of `leases` sees it change
        watch = Watch(net / "leases")
        try:
            w.plug()
            addr = w.dhcp("-x", "hostname:guest1")
            assert addr.startswith("10.72.0."), addr
            watch.find(
                lambda line: (
                    line.startswith(f"{net}/leases ")
                    and bool({"MODIFY", "CLOSE_WRITE"} & set(line.split(" ")[-1].split(",")))
                ),
                "IN_MODIFY on leases",
                15,
            )
        finally:
            watch.close()
        (line,) = lease_lines(net)
        m = LEASE_LINE.match(line)
        assert m is not None, line
        assert (m["mac"], m["proto"], m["addr"], m["prefix"], m["host"]) == (
            GUEST_MAC,
            "ipv4",
            addr,
            "24",
            "guest1",
        ), line
        assert event_args(ev, "lease-added") == [[GUEST_MAC, addr]]

        # the guest reaches the upstream namespace through NAT: upstream sees the host
        listener = w.listen(w.up, "198.51.100.2", 8080)
        assert w.connect(w.guest, "198.51.100.2", 8080) == "ok"
        assert w.peer(listener)[0] == "198.51.100.1"

        # kill -9 of the network's dnsmasq: started again, `repaired dnsmasq`
        (pid,) = w.dnsmasq_pids()
        os.kill(pid, signal.SIGKILL)
        assert event_args(ev, "repaired") == [["dnsmasq"]]
        wait_for(lambda: len(w.dnsmasq_pids()) == 1 and w.dnsmasq_pids() != [pid], "dnsmasq")
        assert lease_lines(net) == [line]
        # the lines of `events`: TIMESTAMP NAME EVENT [ARGS], single spaces
        for seen in ev.lines:
            assert re.match(
                r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00 \S+ [a-z-]+( \S+)*$", seen
            )
    finally:
        ev.close()

    # kill -9 of the daemon and a new mount: same dnsmasq, same rules, same leases
    wait_for(lambda: "guest_nat" in nft_table(w), "the rules")
    pids, table = w.dnsmasq_pids(), nft_table(w)
    d.kill9()
    d2 = new_daemon(daemons)
    assert (net / "active").read_text() == "1\n"
    assert w.dnsmasq_pids() == pids
    assert lease_lines(net) == [line]
    assert nft_table(w) == table
    assert table.count("masquerade") == nft_table(w).count("masquerade") > 0
    assert "guest_nat" in (net / "firewall").read_text()

    # a live change of DHCP hosts: `updated`, applied to the running dnsmasq
    ev = EventReader(mnt)
    try:
        changed = network(NET, hosts="<host mac='52:54:00:00:00:33' name='h33' ip='10.72.0.33'/>")
        sh(f"cat > {net}/definition.xml <<'EOF'\n{changed}\nEOF")
        ev.wait(NET, "updated")
        assert "10.72.0.33" in (net / "status.xml").read_text()
        assert w.dnsmasq_pids() == pids  # host entries only: re-read, same process
    finally:
        ev.close()

    # stop: no rules shown, no dnsmasq; the leases stay while it is defined
    sh(f"echo 0 > {net}/active")
    assert (net / "firewall").read_text() == ""
    assert w.dnsmasq_pids() == []
    assert lease_lines(net) == [line]
    assert d2.proc is not None and d2.proc.poll() is None


def test_raw_dnsmasq_options_only_from_root(world: World, daemons: Callable[..., Daemon]) -> None:  # noqa: F811
    d = new_daemon(daemons)
    mnt = d.mnt
    # a member of --group: a new network with <dnsmasq:options> is EPERM, the reason in error
    script = (
        f"mkdir {mnt}/traw && cat > {mnt}/traw/definition.xml <<'EOF'\n{RAW.format(name='traw')}EOF"
    )
    r = bash(script, user="nobody")
    assert r.returncode != 0 and "Operation not permitted" in r.stderr, r.stderr
    assert "only root may define <dnsmasq:options>" in (mnt / "traw" / "error").read_text()
    assert not (world.etc / "traw.xml").exists()
    # a member may define without it; redefining with it is refused, the definition stays
    plain = RAW.format(name="traw").split("<dnsmasq:options>")[0] + "</network>\n"
    r = bash(f"cat > {mnt}/traw/definition.xml <<'EOF'\n{plain}EOF", user="nobody")
    assert r.returncode == 0, r.stderr
    before = (mnt / "traw" / "definition.xml").read_text()
    r = bash(
        f"cat > {mnt}/traw/definition.xml <<'EOF'\n{RAW.format(name='traw')}EOF", user="nobody"
    )
    assert r.returncode != 0 and "Operation not permitted" in r.stderr, r.stderr
    assert (mnt / "traw" / "definition.xml").read_text() == before
    assert "dnsmasq:options" not in (world.etc / "traw.xml").read_text()
    # an editor's rename by the member: refused the same way
    r = bash(
        f"cat > {mnt}/traw/.def.tmp <<'EOF'\n{RAW.format(name='traw')}EOF\n"
        f"mv {mnt}/traw/.def.tmp {mnt}/traw/definition.xml",
        user="nobody",
    )
    assert r.returncode != 0 and "Operation not permitted" in r.stderr, r.stderr
    assert (mnt / "traw" / "definition.xml").read_text() == before
    # root may
    sh(f"cat > {mnt}/traw/definition.xml <<'EOF'\n{RAW.format(name='traw')}EOF")
    assert "dnsmasq:options" in (world.etc / "traw.xml").read_text()
