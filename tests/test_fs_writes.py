"""End to end: how shell writes, editors and ports act through the mount."""
# ruff: noqa: F811  (fixtures imported from fs_support are pytest arguments)

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest
from fs_support import (
    OVS_TESTA,
    QBG_TESTA,
    Daemon,
    bash,
    daemon_factory,  # noqa: F401  (fixture)
    define,
    mounted,  # noqa: F401  (fixture)
    virtual_xml,
)

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(120)]

IFACE_ID = "09b11c53-8b5c-4eeb-8f00-d84eaa0aaa4f"


def bridges(netns: str) -> list[str]:
    r = subprocess.run(
        ["ip", "-n", netns, "-o", "link", "show", "type", "bridge"],
        capture_output=True,
        text=True,
        check=True,
    )
    return [line.split(":")[1].strip() for line in r.stdout.splitlines()]


def test_active_writes(mounted: Daemon) -> None:
    mnt, ns = mounted.mnt, mounted.netns
    define(mnt, "testA", virtual_xml("testA", "nfsbr0"))
    active = mnt / "testA" / "active"
    r = bash(f"echo 1 > {active}")
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    assert active.read_text() == "1\n"
    assert bridges(ns) == ["nfsbr0"]
    # the value it already has: success, nothing changes
    r = bash(f"echo 1 > {active}; printf 1 > {active}; echo 1 >> {active}")
    assert (r.returncode, r.stderr) == (0, "")
    assert bridges(ns) == ["nfsbr0"]
    # a bad value: the builtin echo shows the errno, state unchanged
    for bad in ("2", "yes", "", "1 1", "01"):
        r = bash(f"echo '{bad}' > {active}")
        assert r.returncode == 1, bad
        assert "write error: Invalid argument" in r.stderr, (bad, r.stderr)
        assert active.read_text() == "1\n"
    assert "invalid value for active" in (mnt / "testA" / "error").read_text()
    r = bash(f"/bin/echo 2 > {active}")
    assert r.returncode == 1 and "Invalid argument" in r.stderr
    # without newline, and by appending
    r = bash(f"printf 0 > {active}")
    assert r.returncode == 0, r.stderr
    assert active.read_text() == "0\n"
    assert bridges(ns) == []
    r = bash(f"echo 1 >> {active}")
    assert r.returncode == 0, r.stderr
    assert active.read_text() == "1\n"
    r = bash(f"echo 0 | tee {active}")
    assert r.returncode == 0, r.stderr
    assert active.read_text() == "0\n"


def test_autostart_writes(mounted: Daemon) -> None:
    mnt = mounted.mnt
    define(mnt, "testA", virtual_xml("testA", "nfsbr0"))
    autostart = mnt / "testA" / "autostart"
    r = bash(f"echo 1 > {autostart}")
    assert r.returncode == 0, r.stderr
    assert autostart.read_text() == "1\n"
    assert (mounted.config_dir / "autostart" / "testA.xml").exists()
    r = bash(f"echo on > {autostart}")
    assert r.returncode == 1 and "write error: Invalid argument" in r.stderr
    assert autostart.read_text() == "1\n"
    r = bash(f"echo 0 > {autostart}")
    assert r.returncode == 0
    assert not (mounted.config_dir / "autostart" / "testA.xml").exists()


def test_definition_writers(mounted: Daemon, tmp_path: Path) -> None:
    mnt = mounted.mnt
    define(mnt, "testA", virtual_xml("testA", "nfsbr0"))
    d = mnt / "testA" / "definition.xml"
    uuid = (mnt / "testA" / "uuid").read_text().strip()
    src = tmp_path / "net.xml"
    # cp, with a comment padding the document over several writes (dd bs=512)
    xml = virtual_xml("testA", "nfsbr0", "192.168.151.1").replace(
        "<network>", "<network>\n<!--" + "x" * 20000 + "-->"
    )
    src.write_text(xml)
    for cmd in (
        f"cp {src} {d}",
        f"cat {src} > {d}",
        f"tee {d} < {src} > /dev/null",
        f"dd if={src} of={d} bs=512 status=none",
    ):
        r = bash(cmd)
        assert (r.returncode, r.stderr) == (0, ""), cmd
        text = d.read_text()
        assert "192.168.151.1" in text and "xxxx" not in text, cmd
        # the uuid is kept when the document has none
        assert f"<uuid>{uuid}</uuid>" in text
    assert "192.168.151.1" in (mounted.config_dir / "testA.xml").read_text()


def test_append_right_after_a_write(mounted: Daemon) -> None:
    """The saved document is the canonical form, not what was written: `>>`
    right after a write must append at the end of what the file now holds."""
    mnt = mounted.mnt
    (mnt / "n2").mkdir()
    r = bash(
        f"printf \"<network><name>n2</name><bridge name='nfsbr2'/></network>\\n\" > {mnt}/n2/definition.xml"
        f" && echo '<!-- y -->' >> {mnt}/n2/definition.xml"
    )
    assert (r.returncode, r.stderr) == (0, "")
    assert (mnt / "n2" / "error").read_text() == ""
    text = (mnt / "n2" / "definition.xml").read_text()
    assert text.startswith("<network>\n  <name>n2</name>\n") and text.endswith("</network>\n")


def test_refused_definition_leaves_everything(mounted: Daemon, tmp_path: Path) -> None:
    mnt = mounted.mnt
    define(mnt, "testA", virtual_xml("testA", "nfsbr0"))
    r = bash(f"echo 1 > {mnt}/testA/active")
    assert r.returncode == 0
    d = mnt / "testA" / "definition.xml"
    before = d.read_text()
    saved = (mounted.config_dir / "testA.xml").read_text()
    status = (mnt / "testA" / "status.xml").read_text()
    bad = tmp_path / "bad.xml"
    for content, why in (
        ("<network><name>testA</name>", "malformed"),
        (virtual_xml("other", "nfsbr0"), "name mismatch"),
        ("<network><name>testA</name><forward mode='bogus'/></network>", "invalid"),
    ):
        bad.write_text(content)
        r = bash(f"cp {bad} {d}")
        assert r.returncode == 1, why
        assert "Invalid argument" in r.stderr, (why, r.stderr)
        assert d.read_text() == before, why
        assert (mounted.config_dir / "testA.xml").read_text() == saved
        assert (mnt / "testA" / "active").read_text() == "1\n"
        assert (mnt / "testA" / "status.xml").read_text() == status
        assert (mnt / "testA" / "error").read_text() != ""
    # the builtin echo sees nothing (the error comes at close), but nothing changed
    r = bash(f"echo '<network>' > {d}")
    assert r.returncode == 0
    assert d.read_text() == before
    # a pending network stays pending after a refused definition
    r = bash(f"mkdir {mnt}/newnet && cp {bad} {mnt}/newnet/definition.xml")
    assert r.returncode == 1 and "Invalid argument" in r.stderr
    assert (mnt / "newnet" / "definition.xml").read_text() == ""
    assert (mnt / "newnet" / "error").read_text() != ""
    assert not (mounted.config_dir / "newnet.xml").exists()


def test_redefine_while_active(mounted: Daemon) -> None:
    mnt = mounted.mnt
    define(mnt, "testA", virtual_xml("testA", "nfsbr0"))
    r = bash(f"echo 1 > {mnt}/testA/active")
    assert r.returncode == 0
    new = virtual_xml("testA", "nfsbr0", "192.168.152.1")
    r = bash(f"cat > {mnt}/testA/definition.xml <<'EOF'\n{new}EOF")
    assert r.returncode == 0, r.stderr
    assert "192.168.152.1" in (mnt / "testA" / "definition.xml").read_text()
    status = (mnt / "testA" / "status.xml").read_text()
    assert "192.168.150.1" in status and "192.168.152.1" not in status


def test_sed_in_place(mounted: Daemon) -> None:
    mnt = mounted.mnt
    define(mnt, "testA", virtual_xml("testA", "nfsbr0"))
    d = mnt / "testA" / "definition.xml"
    r = bash(f"sed -i 's/192.168.150.1/192.168.153.1/' {d}")
    assert (r.returncode, r.stderr) == (0, "")
    assert "192.168.153.1" in d.read_text()
    assert "192.168.153.1" in (mounted.config_dir / "testA.xml").read_text()
    # the temp file is gone
    assert sorted(os.listdir(mnt / "testA")) == sorted(
        ["definition.xml", "active", "autostart", "uuid", "error", "leases", "firewall"]
        + ["portgroups", "ports"]
    )
    # a refused rename: EINVAL, definition unchanged, the temp file stays
    before = d.read_text()
    r = bash(f"sed -i 's/<name>testA</<name>other</' {d}")
    assert r.returncode != 0
    assert "Invalid argument" in r.stderr
    assert d.read_text() == before
    # sed removes its temp file itself after the failed rename
    assert not [f for f in os.listdir(mnt / "testA") if f.startswith("sed")]
    # the file system keeps a temp file whose rename was refused
    tmp = mnt / "testA" / "def.tmp"
    tmp.write_text(virtual_xml("other", "nfsbr0"))
    with pytest.raises(OSError) as exc:
        os.rename(tmp, d)
    assert exc.value.errno == errno.EINVAL
    assert tmp.read_text() == virtual_xml("other", "nfsbr0")
    assert d.read_text() == before
    tmp.unlink()
    assert not tmp.exists()


VIM_SAVE = r"""
import os, sys
path, content = sys.argv[1], sys.argv[2].encode()
d = os.path.dirname(path)
swap = os.path.join(d, ".definition.xml.swp")
fd = os.open(swap, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
os.write(fd, b"b0VIM 9.0")
test = os.path.join(d, "4913")
t = os.open(test, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
os.fchown(t, 0, 0)
os.close(t)
os.unlink(test)
f = os.open(path, os.O_WRONLY)          # no O_TRUNC
os.ftruncate(f, 0)
for i in range(0, len(content), 100):
    os.write(f, content[i:i + 100])
try:
    os.fsync(f)
finally:
    os.close(f)
    os.close(fd)
    os.unlink(swap)
"""


def test_vim_save(mounted: Daemon, tmp_path: Path) -> None:
    mnt = mounted.mnt
    define(mnt, "testA", virtual_xml("testA", "nfsbr0"))
    d = mnt / "testA" / "definition.xml"
    script = tmp_path / "vim.py"
    script.write_text(VIM_SAVE)
    new = virtual_xml("testA", "nfsbr0", "192.168.154.1")
    r = subprocess.run(["python3", str(script), str(d), new], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "192.168.154.1" in d.read_text()
    assert not (mnt / "testA" / ".definition.xml.swp").exists()
    # an invalid save fails at fsync (vim's "E667: Fsync failed") and changes nothing
    before = d.read_text()
    r = subprocess.run(
        ["python3", str(script), str(d), "<network><name>zzz</name></network>"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 1 and "Invalid argument" in r.stderr
    assert d.read_text() == before


def test_start_refused_resource_taken(mounted: Daemon) -> None:
    mnt, ns = mounted.mnt, mounted.netns
    define(mnt, "testA", virtual_xml("testA", "nfsbr0"))
    subprocess.run(["ip", "-n", ns, "link", "add", "nfsbr0", "type", "bridge"], check=True)
    r = bash(f"echo 1 > {mnt}/testA/active")
    assert r.returncode == 1 and "Address already in use" in r.stderr
    assert (mnt / "testA" / "active").read_text() == "0\n"
    assert (mnt / "testA" / "error").read_text() != ""


def test_ports_openvswitch(mounted: Daemon) -> None:
    mnt = mounted.mnt
    define(mnt, "testA", OVS_TESTA)
    ports = mnt / "testA" / "ports"
    port_xml = (
        "<interface type='network'><mac address='52:54:00:11:22:33'/>"
        "<source network='testA' portgroup='sales'/>"
        f"<virtualport><parameters interfaceid='{IFACE_ID}'/></virtualport></interface>\n"
    )
    # inactive network: the port is refused
    r = bash(f'mkdir {ports}/vm1 && echo "{port_xml}" > {ports}/vm1/port.xml')
    assert r.returncode == 0  # bash's echo does not see the close error
    r = bash(f"cat > {ports}/vm1/port.xml <<'EOF'\n{port_xml}EOF")
    assert r.returncode == 1 and "Network is down" in r.stderr
    assert (ports / "vm1" / "port.xml").read_text() == ""
    r = bash(
        f"echo 1 > {mnt}/testA/active && cp /dev/stdin {ports}/vm1/port.xml <<'EOF'\n{port_xml}EOF"
    )
    assert (r.returncode, r.stderr) == (0, "")
    assert os.listdir(ports) == ["vm1"]
    assert sorted(os.listdir(ports / "vm1")) == ["port.xml", "virtualport.xml"]
    vp = (ports / "vm1" / "virtualport.xml").read_text()
    assert vp == (
        "<virtualport type='openvswitch'>\n"
        f"  <parameters interfaceid='{IFACE_ID}' profileid='sales'/>\n"
        "</virtualport>\n"
    )
    port = (ports / "vm1" / "port.xml").read_text()
    assert port.startswith("<networkport>") and "portgroup" not in port.split("\n")[0]
    assert "52:54:00:11:22:33" in port
    # a conflicting virtualport is refused
    bad = port_xml.replace("<virtualport>", "<virtualport type='802.1Qbh'>").replace(
        f"interfaceid='{IFACE_ID}'", "profileid='x'"
    )
    r = bash(f"mkdir {ports}/vm2 && cp /dev/stdin {ports}/vm2/port.xml <<'EOF'\n{bad}EOF")
    assert r.returncode == 1 and "Invalid argument" in r.stderr
    assert (ports / "vm2" / "port.xml").read_text() == ""
    # guest <ip> is refused
    guest = port_xml.replace("</interface>", "<ip address='10.0.0.2' family='ipv4'/></interface>")
    r = bash(f"cp /dev/stdin {ports}/vm2/port.xml <<'EOF'\n{guest}EOF")
    assert r.returncode == 1 and "Invalid argument" in r.stderr
    r = bash(f"rmdir {ports}/vm2")
    assert r.returncode == 0
    # stop frees the ports
    r = bash(f"echo 0 > {mnt}/testA/active; echo 1 > {mnt}/testA/active")
    assert r.returncode == 0
    assert os.listdir(ports) == []  # stop freed the port
    r = bash(f"cp /dev/stdin {ports}/vm1/port.xml <<'EOF'\n{port_xml}EOF")
    assert r.returncode == 1 and "No such file or directory" in r.stderr
    r = bash(f"mkdir {ports}/vm1 && cp /dev/stdin {ports}/vm1/port.xml <<'EOF'\n{port_xml}EOF")
    assert r.returncode == 0, r.stderr
    r = bash(f"rmdir {ports}/vm1")
    assert r.returncode == 0, r.stderr
    assert os.listdir(ports) == []


def test_ports_8021qbg(mounted: Daemon) -> None:
    mnt = mounted.mnt
    define(mnt, "testA", QBG_TESTA)
    ports = mnt / "testA" / "ports"
    iface = (
        "<interface type='network'><mac address='52:54:00:11:22:44'/>"
        "<source network='testA' portgroup='sales'/>"
        "<virtualport><parameters instanceid='09b11c53-8b5c-4eeb-8f00-d84eaa0aaa4f'/>"
        "</virtualport></interface>\n"
    )
    r = bash(
        f"echo 1 > {mnt}/testA/active && mkdir {ports}/vm1 && "
        f"cp /dev/stdin {ports}/vm1/port.xml <<'EOF'\n{iface}EOF"
    )
    assert (r.returncode, r.stderr) == (0, "")
    vp = (ports / "vm1" / "virtualport.xml").read_text()
    assert vp.startswith("<virtualport type='802.1Qbg'>")
    for attr in (
        "managerid='55'",
        "typeid='1193047'",
        "typeidversion='2'",
        "instanceid='09b11c53-8b5c-4eeb-8f00-d84eaa0aaa4f'",
    ):
        assert attr in vp, vp
    r = bash(f"rmdir {mnt}/testA")
    assert r.returncode == 1 and "Device or resource busy" in r.stderr


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_documents_and_scratch_files_are_capped(mounted: Daemon, tmp_path: Path) -> None:
    """A size past the document limit (1 MiB) fails at once with EFBIG, with
    the reason in `error`; nothing is allocated and nothing changes."""
    mnt = mounted.mnt
    assert mounted.proc is not None
    define(mnt, "testA", virtual_xml("testA", "nfsbr0"))
    net = mnt / "testA"
    d = net / "definition.xml"
    before = d.read_text()
    saved = (mounted.config_dir / "testA.xml").read_text()
    rss = _rss_kib(mounted.proc.pid)
    big = tmp_path / "big.xml"
    big.write_text("<network><name>testA</name><!--" + "x" * (2 << 20) + "--></network>\n")
    for script in (
        f"truncate -s 1G {d}",
        f"truncate -s 256M {net}/tmpfile",
        f"dd if=/dev/zero of={d} bs=512 count=1 seek=100000 status=none",
        f"dd if=/dev/zero of={net}/tmp2 bs=512 count=1 seek=100000 status=none",
        f"cp {big} {d}",
        f"cp {big} {net}/tmp3",
    ):
        r = bash(script)
        assert r.returncode == 1 and "File too large" in r.stderr, (script, r.stderr)
        assert d.read_text() == before, script
        assert "larger than the limit of 1 MiB" in (net / "error").read_text(), script
    # exactly the limit is still fine for a scratch file
    r = bash(f"truncate -s 1M {net}/tmp4 && truncate -s 1048577 {net}/tmp4")
    assert r.returncode == 1 and "File too large" in r.stderr, r.stderr
    assert os.stat(net / "tmp4").st_size == 1 << 20
    assert (mounted.config_dir / "testA.xml").read_text() == saved
    assert _rss_kib(mounted.proc.pid) < rss + 64 * 1024
    # a pending directory: the reason goes to its error file
    r = bash(f"mkdir {mnt}/p && truncate -s 2M {mnt}/p/definition.xml")
    assert r.returncode == 1 and "File too large" in r.stderr, r.stderr
    assert "larger than the limit" in (mnt / "p" / "error").read_text()


def test_first_definition_keeps_the_pending_error(mounted: Daemon, tmp_path: Path) -> None:
    """A later success leaves the last error in place, also when it is the
    first definition of a mkdir'd directory."""
    mnt = mounted.mnt
    bad = tmp_path / "bad.xml"
    bad.write_text("<network><name>d</name><forward mode='bogus'/></network>\n")
    good = tmp_path / "good.xml"
    good.write_text(virtual_xml("d", "nfsbr4"))
    r = bash(f"mkdir {mnt}/d && cp {bad} {mnt}/d/definition.xml")
    assert r.returncode == 1 and "Invalid argument" in r.stderr
    text = (mnt / "d" / "error").read_text()
    assert text != ""
    r = bash(f"cp {good} {mnt}/d/definition.xml")
    assert r.returncode == 0, r.stderr
    assert (mnt / "d" / "active").read_text() == "0\n"
    assert (mnt / "d" / "error").read_text() == text
    # the next failure replaces it
    r = bash(f"echo 2 > {mnt}/d/active")
    assert r.returncode == 1
    assert "invalid value for active" in (mnt / "d" / "error").read_text()
