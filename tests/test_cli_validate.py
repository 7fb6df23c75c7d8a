"""`netfs validate` as a user runs it: a subprocess."""

from __future__ import annotations

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
