"""`python -m netfs.demo --no-wait`: what `sh dev.sh run` shows, and that it
cleans up after itself."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

TOP = Path(__file__).resolve().parent.parent

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.slow,
    pytest.mark.skipif(
        os.geteuid() != 0 or not Path("/dev/fuse").exists(), reason="needs root and /dev/fuse"
    ),
]

MERGED = (
    "<virtualport type='openvswitch'>\n"
    "  <parameters interfaceid='09b11c53-8b5c-4eeb-8f00-d84eaa0aaa4f' profileid='sales'/>\n"
    "</virtualport>\n"
)


def test_demo_shows_the_bridge_virtualports_and_a_nat_dhcp_guest_and_leaves_nothing() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "netfs.demo", "--no-wait"],
        cwd=TOP,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    text = out.stdout
    assert out.returncode == 0, text + out.stderr

    netns = re.search(r"namespace:\s+(\S+)", text)
    mnt = re.search(r"mount point:\s+(\S+)", text)
    assert netns and mnt
    netns_name, mount_point = netns.group(1), mnt.group(1)

    # the bridge, shown by `ip -n NS -br link show type bridge` after `echo 1 > active`
    after_start = text.split("$ echo 1 > testA/active", 1)[1]
    assert re.search(r"^testA0\s+\S+\s+52:54:00:", after_start, re.M)
    assert "192.168.150.1/24" in after_start
    # the bad value is refused by the write
    assert "write error: Invalid argument" in text
    # the portgroup and the port virtualports, merged
    assert "<parameters profileid='sales'/>" in text
    assert MERGED in text.split("$ cat ovsnet/ports/vm1/virtualport.xml", 1)[1]
    # inotifywait saw the stop (bridge deleted from outside) and the start
    assert "[inotifywait] testA/active MODIFY" in text
    # the events file
    events = text.split("$ cat events", 1)[1]
    for what in ["testA started", "ovsnet defined", "ovsnet port-created vm1", "testA stopped"]:
        assert re.search(
            r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00 " + what + "$", events, re.M
        )

    # a NAT network with DHCP: the guest's lease in natnet/leases (seen changing),
    # the rules in natnet/firewall, and upstream sees the host's address
    assert "[inotifywait] natnet/leases MODIFY" in text
    lease = re.search(
        r"^\S+\+00:00 52:54:00:de:00:01 ipv4 (10\.74\.0\.\d+)/24 guest1 \S+$",
        text.split("$ cat natnet/leases", 1)[1],
        re.M,
    )
    assert lease is not None, text
    assert re.search(r"^eth0\S*\s+UP\s+" + re.escape(lease.group(1)) + "/24", text, re.M)
    assert "chain guest_nat.natnet {" in text.split("$ cat natnet/firewall", 1)[1]
    assert "[upstream] connection from 198.51.100.1" in text
    assert re.search(r" natnet lease-added 52:54:00:de:00:01 " + re.escape(lease.group(1)), events)

    # nothing left behind: no namespace, no process of the demo (dnsmasq)
    for ns in (netns_name, netns_name + "g", netns_name + "u"):
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert ns not in listed.split()
    tmp = str(Path(mount_point).parent)
    left = subprocess.run(["pgrep", "-f", tmp], capture_output=True, text=True).stdout
    assert left == "", left
    assert (
        netns_name
        not in subprocess.run(
            ["ip", "netns", "list"], capture_output=True, text=True, check=True
        ).stdout
    )
    with open("/proc/mounts") as f:
        assert mount_point not in f.read()
    assert not Path(mount_point).exists()
    assert not Path(mount_point).parent.exists()
