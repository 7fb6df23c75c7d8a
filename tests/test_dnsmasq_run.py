"""netfs.dnsmasq and netfs.leases against the real dnsmasq, udhcpc and dig.

Every test works in namespaces it makes: a "host" namespace with a bridge and
an address (where netfs's dnsmasq runs) and a guest namespace with a veth into
the bridge (where busybox udhcpc and dig run). Teardown kills every dnsmasq
of the test's state directory and every udhcpc it started, also on failure,
and removes the namespaces. The dnsmasq configuration is written here in the
shape libvirt writes it. The namespaces, links, udhcpc and dig come from
tests/traffic_support.py.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from netfs import dnsmasq as dnsmasq_mod
from netfs import leases
from netfs.dnsmasq import Dnsmasq
from netfs.errors import NetfsError
from tests.conftest import ip
from tests.fs_support import wait_for
from tests.traffic_support import (
    GuestLab,
    add_bridge,
    add_guest_link,
    bind_udp_in,
    namespaces,
    scratch_dir,
    skip_unless_root,
    uid_of,
)

NET = "testnet"
BRIDGE = "nbr0"
HOST_ADDR = "10.77.0.1"
FIXED_MAC = "52:54:00:12:34:56"
FIXED_ADDR = "10.77.0.42"
GUEST_MAC = "52:54:00:00:00:07"


def libvirt_like_conf(d: Path, name: str = NET, extra: str = "") -> str:
    return (
        "strict-order\n"
        "domain=netfs.test\n"
        "expand-hosts\n"
        "except-interface=lo\n"
        "bind-dynamic\n"
        f"interface={BRIDGE}\n"
        "dhcp-range=10.77.0.100,10.77.0.200,255.255.255.0\n"
        "dhcp-no-override\n"
        "dhcp-authoritative\n"
        "dhcp-lease-max=101\n"
        f"dhcp-hostsfile={d}/{name}.hostsfile\n"
        f"addn-hosts={d}/{name}.addnhosts\n" + extra
    )


HOSTSFILE = f"{FIXED_MAC},{FIXED_ADDR},fixed1\n"
ADDNHOSTS = "10.77.0.9\tweb\t\n"


@dataclass
class Lan(GuestLab):
    host: str
    state: Path
    d: Dnsmasq

    def write(self, extra: str = "") -> None:
        self.d.write_files(NET, libvirt_like_conf(self.d.dir, extra=extra), HOSTSFILE, ADDNHOSTS)

    def records(self) -> list[leases.Lease]:
        return leases.read_leases(self.state, NET)


@pytest.fixture
def lan() -> Iterator[Lan]:
    skip_unless_root("dnsmasq", "busybox", "dig")
    with scratch_dir("netfs-dnsmasq-") as state, namespaces("h", "g") as (host, guest):
        d = Dnsmasq(state, netns=host)
        lan = Lan(guest=guest, server=HOST_ADDR, files=state, host=host, state=state, d=d)
        try:
            add_bridge(host, BRIDGE, f"{HOST_ADDR}/24")
            add_guest_link(host, guest, bridge=BRIDGE, mac=GUEST_MAC)
            lan.write_script()
            yield lan
        finally:
            lan.reap()
            for pid in Dnsmasq(state).running().values():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                    dnsmasq_mod.wait_exit(pid, 5.0)


def test_guest_gets_an_address_and_names_resolve(lan: Lan) -> None:
    lan.write()
    pid = lan.d.start(NET)
    assert lan.d.pid(NET) == pid and lan.d.is_running(NET)
    # not root, own session, stdio on /dev/null, in the host namespace
    assert uid_of(pid) != 0
    assert os.getsid(pid) != os.getsid(0)
    assert all(os.readlink(f"/proc/{pid}/fd/{n}") == "/dev/null" for n in (0, 1, 2))
    assert os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(f"/run/netns/{lan.host}").st_ino

    got = lan.dhcp("-x", "hostname:guest1")
    assert got.startswith("10.77.0.") and 100 <= int(got.rsplit(".", 1)[1]) <= 200
    wait_for(lambda: any(x.address == got for x in lan.records()), "lease recorded")
    (lease,) = lan.records()
    assert (lease.mac, lease.hostname, lease.protocol) == (GUEST_MAC, "guest1", "ipv4")
    text = leases.format_leases(lan.records(), time.time(), {"ipv4": 24})
    fields = text.rstrip("\n").split(" ")
    assert fields[1:5] == [GUEST_MAC, "ipv4", f"{got}/24", "guest1"] and len(fields) == 6
    assert fields[0].endswith("+00:00") and fields[0] > time.strftime("%Y-%m-%dT%H:%M:%S")

    assert lan.dig("web") == ["10.77.0.9"]  # addn-hosts
    assert lan.dig("guest1.netfs.test") == [got]  # a DHCP host name in the domain


def test_dhcp_host_gets_its_fixed_address_and_reload_rereads_hosts(lan: Lan) -> None:
    lan.write()
    pid = lan.d.start(NET)
    lan.set_mac(FIXED_MAC)
    assert lan.dhcp() == FIXED_ADDR
    assert lan.dig("fixed1.netfs.test") == [FIXED_ADDR]
    assert lan.dig("db") == []
    lan.d.write_hosts(NET, HOSTSFILE, ADDNHOSTS + "10.77.0.10\tdb\t\n")
    assert lan.d.reload(NET)
    wait_for(lambda: lan.dig("db") == ["10.77.0.10"], "db resolves after SIGHUP")
    assert lan.d.pid(NET) == pid


def test_leases_survive_kill_and_restart_of_dnsmasq(lan: Lan) -> None:
    lan.write()
    first = lan.d.start(NET)
    got = lan.dhcp("-x", "hostname:guest1")
    wait_for(lambda: any(x.address == got for x in lan.records()), "lease recorded")
    os.kill(first, signal.SIGKILL)
    assert dnsmasq_mod.wait_exit(first, 5.0)
    assert not lan.d.is_running(NET)
    second = lan.d.start(NET)
    assert second != first
    # the new dnsmasq knows the lease from `init` before the guest says anything
    assert lan.dig("guest1.netfs.test") == [got]
    # another machine asking for that address does not get it
    lan.set_mac("52:54:00:00:00:99")
    other = lan.dhcp("-r", got)
    assert other != got
    # the guest renews and keeps its address
    lan.set_mac(GUEST_MAC)
    assert lan.dhcp("-r", got) == got
    assert lan.dhcp() == got
    wait_for(lambda: len(lan.records()) == 2, "both leases recorded")
    # and a restart (stop, start) keeps them too
    third = lan.d.restart(NET)
    assert third not in (first, second)
    assert lan.dig("guest1.netfs.test") == [got]


def test_adopt_after_daemon_restart_and_orphans(lan: Lan) -> None:
    lan.write()
    pid = lan.d.start(NET)
    again = Dnsmasq(lan.state, netns=lan.host)  # a new daemon, same state directory
    assert again.adopt(NET) == pid
    assert again.start(NET) == pid  # not restarted
    assert again.running() == {NET: pid}
    assert again.orphans({NET}) == []
    assert again.orphans(set()) == [(NET, pid)]
    assert again.survey({NET, "other"}) == ({NET: pid, "other": None}, [])
    # a pid file naming another process is not ours
    lan.d.files(NET).pid.write_text(f"{os.getpid()}\n")
    assert again.adopt(NET) is None
    lan.d.files(NET).pid.write_text(f"{pid}\n")
    # nor is a dnsmasq of ours in another namespace than the daemon's
    assert Dnsmasq(lan.state, netns=lan.guest).adopt(NET) is None
    assert Dnsmasq(lan.state, netns=lan.guest).orphans({NET}) == [(NET, pid)]
    assert again.stop_orphans(set()) == [(NET, pid)]
    assert not Path(f"/proc/{pid}").exists() or not dnsmasq_mod._alive(pid)
    assert again.running() == {} and not lan.d.files(NET).pid.exists()


def test_stop_waits_for_the_exit_and_removes_the_pid_file(lan: Lan) -> None:
    lan.write()
    pid = lan.d.start(NET)
    assert lan.d.stop(NET) is True
    assert not dnsmasq_mod._alive(pid)
    assert not lan.d.files(NET).pid.exists()
    assert lan.d.stop(NET) is False
    assert lan.d.reload(NET) is False
    # in two halves: signal, then wait
    pid = lan.d.start(NET)
    assert lan.d.signal_stop(NET) == pid and not lan.d.files(NET).pid.exists()
    assert dnsmasq_mod.wait_exit(pid) and not dnsmasq_mod._alive(pid)
    assert lan.d.running() == {}


HOSTILE = "\x1b[31m;$(touch\n/tmp/pwned)`id`|{}\\'\"#\tx y"


def test_hostile_host_name_leaves_well_formed_leases(lan: Lan) -> None:
    lan.write()
    lan.d.start(NET)
    got = lan.dhcp("-x", f"hostname:{HOSTILE}")
    wait_for(lambda: any(x.address == got for x in lan.records()), "lease recorded")
    text = leases.format_leases(lan.records(), time.time(), {"ipv4": 24})
    assert text.endswith("\n") and text.count("\n") == 1
    fields = text[:-1].split(" ")
    assert len(fields) == 6 and fields[3] == f"{got}/24"
    assert all(0x21 <= b < 0x7F for b in text[:-1].replace(" ", "").encode())
    # what the guest sent arrived (dnsmasq cuts it at the tab) and is escaped
    assert fields[4].startswith("\\x1b[31m;$(touch\\x0a/tmp/pwned)`id`|{}\\x5c")
    assert "\n" in lan.records()[0].hostname
    assert not os.path.exists("/tmp/pwned")
    # dnsmasq still serves and replays nothing malformed
    lan.d.restart(NET)
    assert lan.dhcp("-r", got) == got


def test_taken_port_is_eaddrinuse_and_nothing_left(lan: Lan) -> None:
    lan.write()
    sock = bind_udp_in(lan.host, HOST_ADDR, 53)
    try:
        with pytest.raises(NetfsError) as e:
            lan.d.start(NET)
        assert e.value.errno == errno.EADDRINUSE
        assert "Address already in use" in e.value.message
        assert lan.d.running() == {} and not lan.d.files(NET).pid.exists()
    finally:
        sock.close()
    assert lan.d.start(NET) > 0


def test_refused_configuration_is_eio_with_dnsmasqs_words(lan: Lan) -> None:
    lan.write(extra="no-such-option-at-all\n")
    with pytest.raises(NetfsError) as e:
        lan.d.start(NET)
    assert e.value.errno == errno.EIO and "bad option" in e.value.message
    assert lan.d.running() == {}


def test_missing_dnsmasq_is_named(lan: Lan, monkeypatch: pytest.MonkeyPatch) -> None:
    lan.write()
    monkeypatch.setattr(dnsmasq_mod, "PROGRAM", "netfs-no-such-dnsmasq")
    with pytest.raises(NetfsError) as e:
        lan.d.start(NET)
    assert e.value.errno == errno.ENOENT and "netfs-no-such-dnsmasq" in e.value.message


def test_watch_sees_leases_granted_and_removed(lan: Lan) -> None:
    # no dhcp-host at first: the guest gets an address from the range
    lan.d.write_files(NET, libvirt_like_conf(lan.d.dir), "", ADDNHOSTS)
    lan.d.start(NET)
    lan.set_mac(FIXED_MAC)
    watch = leases.LeaseWatch(lan.d.leases_dir)
    added: list[tuple[str, str]] = []
    removed: list[tuple[str, str]] = []

    def seen(want_added: int, want_removed: int) -> bool:
        if select.select([watch.fd], [], [], 0.05)[0]:
            for change in watch.poll():
                assert change.network == NET
                added.extend(change.added)
                removed.extend(change.removed)
        return len(added) >= want_added and len(removed) >= want_removed

    try:
        first = lan.dhcp()
        assert first != FIXED_ADDR
        wait_for(lambda: seen(1, 0), "the lease seen")
        assert added == [(FIXED_MAC, first)] and removed == []
        # a dhcp-host entry for it now (live: hosts file + SIGHUP): its next
        # request is refused, it gets its fixed address, the old lease goes
        lan.d.write_hosts(NET, HOSTSFILE, ADDNHOSTS)
        assert lan.d.reload(NET)
        assert lan.dhcp("-r", first) == FIXED_ADDR
        wait_for(lambda: seen(2, 1), "the new lease and the removal seen")
        assert added == [(FIXED_MAC, first), (FIXED_MAC, FIXED_ADDR)]
        assert removed == [(FIXED_MAC, first)]
        assert [x.address for x in lan.records()] == [FIXED_ADDR]
    finally:
        watch.close()


def test_ipv6_and_ipv4_leases_are_replayed_at_start(lan: Lan) -> None:
    ip("addr", "add", "fd00:77::1/64", "dev", BRIDGE, "nodad", netns=lan.host)
    lan.write(extra="dhcp-range=fd00:77::100,fd00:77::1ff,64\n")
    exp = int(time.time()) + 3600
    duid = "00:01:00:01:2a:3b:4c:5d:52:54:00:00:00:07"
    recs = leases.Records(
        (
            leases.Lease("10.77.0.150", GUEST_MAC, exp, "guest4", "01:52:54:00:00:00:07"),
            leases.Lease("fd00:77::150", GUEST_MAC, exp, "guest6", duid, "7"),
        ),
        "00:01:00:01:11:22:33:44:52:54:00:00:00:01",
    )
    # (write_files made the leases directory)
    leases.write_records(lan.d.leases_dir, NET, recs)
    lan.d.start(NET)
    ip("addr", "add", "10.77.0.50/24", "dev", "gv0", netns=lan.guest)
    # dnsmasq loaded both from `init`: their names resolve at once
    assert lan.dig("guest4.netfs.test") == ["10.77.0.150"]
    assert lan.dig("guest6.netfs.test", "AAAA") == ["fd00:77::150"]
    assert lan.records() == list(recs.leases)


def test_a_pid_file_elsewhere_is_eio_and_nothing_left(lan: Lan) -> None:
    lan.write(extra=f"pid-file={lan.state}/elsewhere.pid\n")
    with pytest.raises(NetfsError) as e:
        lan.d.start(NET)
    assert e.value.errno == errno.EIO and "pid file" in e.value.message
    assert lan.d.running() == {}
    # the same path as ours is fine (libvirt writes pid-file= at run time)
    lan.write(extra=f"pid-file={lan.d.files(NET).pid}\n")
    assert lan.d.start(NET) == lan.d.pid(NET)
