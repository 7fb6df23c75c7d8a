"""`netfs validate` as a user runs it: a subprocess."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

GOOD = (
    "<network><name>lab</name><uuid>81ff0d90-c91e-6742-64da-4a736edb9a9b</uuid>"
    "<forward dev='eth1'/><bridge name='virbr9'/><mac address='52:54:00:AB:CD:EF'/>"
    "<ip address='192.168.50.1' netmask='255.255.255.0'><dhcp>"
    "<range start='192.168.50.2' end='192.168.50.9'/></dhcp></ip></network>"
)
GOOD_OUT = (
    "<network>\n"
    "  <name>lab</name>\n"
    "  <uuid>81ff0d90-c91e-6742-64da-4a736edb9a9b</uuid>\n"
    "  <forward dev='eth1' mode='nat'>\n"
    "    <interface dev='eth1'/>\n"
    "  </forward>\n"
    "  <bridge name='virbr9' stp='on' delay='0'/>\n"
    "  <mac address='52:54:00:ab:cd:ef'/>\n"
    "  <ip address='192.168.50.1' netmask='255.255.255.0'>\n"
    "    <dhcp>\n"
    "      <range start='192.168.50.2' end='192.168.50.9'/>\n"
    "    </dhcp>\n"
    "  </ip>\n"
    "</network>\n"
)
BAD = (
    "<network><name>br</name><forward mode='bridge'/><bridge name='br0'/>"
    "<ip address='10.0.0.1' prefix='24'/></network>"
)
BAD_MSG = "Unsupported <ip> element in network br with forward mode='bridge'"


def run(*args: str, stdin: str | bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    data = stdin.encode() if isinstance(stdin, str) else stdin
    return subprocess.run(
        [sys.executable, "-m", "netfs.cli", "validate", *args],
        input=data,
        capture_output=True,
        timeout=60,
    )


def test_canonical_output(tmp_path: Path) -> None:
    f = tmp_path / "lab.xml"
    f.write_text(GOOD)
    p = run(str(f))
    assert p.returncode == 0, p.stderr
    assert p.stdout.decode() == GOOD_OUT
    assert p.stderr == b""
    # the canonical output is a fixed point
    f.write_text(GOOD_OUT)
    assert run(str(f)).stdout.decode() == GOOD_OUT


def test_generated_bridge_and_mac(tmp_path: Path) -> None:
    f = tmp_path / "n.xml"
    f.write_text("<network><name>iso</name></network>")
    p = run(str(f))
    assert p.returncode == 0, p.stderr
    out = p.stdout.decode()
    assert "  <bridge name='virbr0' stp='on' delay='0'/>\n" in out
    assert "  <mac address='52:54:00:" in out
    assert "<uuid>" in out


def test_error_exit_and_message(tmp_path: Path) -> None:
    f = tmp_path / "bad.xml"
    f.write_text(BAD)
    p = run(str(f))
    assert p.returncode == 1
    assert p.stdout == b""
    assert BAD_MSG in p.stderr.decode()


def test_stdin() -> None:
    p = run("-", stdin=GOOD)
    assert p.returncode == 0, p.stderr
    assert p.stdout.decode() == GOOD_OUT
    p = run("-", stdin=BAD)
    assert p.returncode == 1
    assert BAD_MSG in p.stderr.decode()


def test_several_files(tmp_path: Path) -> None:
    a = tmp_path / "a.xml"
    b = tmp_path / "b.xml"
    c = tmp_path / "c.xml"
    a.write_text(GOOD)
    b.write_text(BAD)
    c.write_text(GOOD)
    p = run(str(a), str(b), str(c), str(tmp_path / "missing.xml"))
    assert p.returncode == 1
    assert p.stdout.decode() == GOOD_OUT + GOOD_OUT
    err = p.stderr.decode()
    assert BAD_MSG in err
    assert "missing.xml" in err


def test_hostile_input_fails_cleanly() -> None:
    bomb = (
        '<!DOCTYPE n [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">'
        '<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">]><network><name>&c;</name></network>'
    )
    p = run("-", stdin=bomb)
    assert p.returncode == 1
    assert p.stderr.decode().startswith("error: ")
    p = run("-", stdin=b"\xff\xfe garbage")
    assert p.returncode == 1


# -- from the shell session (tests/test_user_session.py) -------------------------

NETFS = Path(sys.executable).parent / "netfs"  # the installed command
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "testA.xml"
OVS_GUEST = """<interface type='network'>
  <mac address='52:54:00:12:34:56'/>
  <source network='testA' portgroup='sales'/>
  <virtualport type='openvswitch'>
    <parameters interfaceid='09b11c53-8b5c-4eeb-8f00-d84eaa0aaa4f'/>
  </virtualport>
</interface>
"""


def test_the_netfs_command(conformance_dir: Path) -> None:
    """The installed `netfs` command: generated values, the error prefixes,
    a missing file beside a good one, and a port document printed as is."""
    r = subprocess.run([str(NETFS), "validate", str(EXAMPLE)], capture_output=True, text=True)
    assert r.returncode == 0
    assert re.search(r"<uuid>[0-9a-f-]{36}</uuid>", r.stdout)
    assert "<mac address='52:54:00:" in r.stdout
    r = subprocess.run(
        [str(NETFS), "validate", "-"],
        input="<network><name>a</name>",
        capture_output=True,
        text=True,
    )
    assert r.returncode == 1 and r.stderr.startswith("error: XML error:")
    r = subprocess.run(
        [str(NETFS), "validate", "/nonexistent-qa", str(EXAMPLE)], capture_output=True, text=True
    )
    assert r.returncode == 1 and "<name>testA</name>" in r.stdout
    assert "error: /nonexistent-qa: No such file or directory" in r.stderr
    port = conformance_dir / "virnetworkportxml2xmldata" / "plug-direct.xml"
    r = subprocess.run([str(NETFS), "validate", str(port)], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout == port.read_text()


def test_validate_checks_a_guest_interface() -> None:
    """man: netfs validate checks a guest <interface> as port.xml would take it; the
    owner name is the file's name (stdin for -), like a port directory's name."""
    p = run("-", stdin=OVS_GUEST)
    assert p.returncode == 0, p.stderr
    out = p.stdout.decode()
    assert "<name>stdin</name>" in out
    assert "interfaceid='09b11c53-8b5c-4eeb-8f00-d84eaa0aaa4f'" in out
    bad = OVS_GUEST.replace("</interface>", "  <ip address='10.0.0.2'/>\n</interface>")
    p = run("-", stdin=bad)
    assert p.returncode == 1 and p.stderr.decode().startswith("error: ")
