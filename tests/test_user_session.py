"""A reviewer's shell session, end to end: only what README.md and man/netfs.8
document, done with bash, cp, sed -i, vim, tee, dd, inotifywait, `cat events`,
setpriv and `ip -n`, on a real mount in a private network namespace.

What one operation does through the mount is tested in tests/test_fs_*.py;
here are the sessions that string several together as a user would.
"""
# ruff: noqa: F811  (fixtures imported from fs_support are pytest arguments)

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from conftest import CONFORMANCE
from fs_support import (
    LIVENESS,
    OVS_TESTA,
    PYTHON,
    QBG_TESTA,
    ROOT,
    Daemon,
    EventReader,
    Watch,
    bash,
    daemon_factory,  # noqa: F401  (fixture)
    force_unmount,
    mounted,  # noqa: F401  (fixture)
    virtual_xml,
    wait_for,
)

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(300)]

IFACE_ID = "09b11c53-8b5c-4eeb-8f00-d84eaa0aaa4f"

# the guest interface of the man page's EXAMPLES section
OVS_GUEST = """<interface type='network'>
  <mac address='52:54:00:12:34:56'/>
  <source network='testA' portgroup='sales'/>
  <virtualport type='openvswitch'>
    <parameters interfaceid='09b11c53-8b5c-4eeb-8f00-d84eaa0aaa4f'/>
  </virtualport>
</interface>
"""

QBG_GUEST = """<interface type='network'>
  <mac address='52:54:00:12:34:56'/>
  <source network='testA' portgroup='sales'/>
  <virtualport type='802.1Qbg'>
    <parameters instanceid='09b11c53-8b5c-4eeb-8f00-d84eaa0aaa4f'/>
  </virtualport>
</interface>
"""


# ---------------------------------------------------------------- helpers


def sh(script: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return bash(script, **kw)  # type: ignore[arg-type]


def ok(script: str) -> str:
    r = sh(script)
    assert r.returncode == 0, f"{script!r}: rc={r.returncode} stderr={r.stderr!r}"
    return r.stdout


def put(path: Path, text: str) -> subprocess.CompletedProcess[str]:
    """Write `text` with tee (which reports errors at close, unlike echo)."""
    return subprocess.run(
        ["tee", str(path)], input=text, capture_output=True, text=True, timeout=LIVENESS
    )


def define(mnt: Path, name: str, xml: str) -> None:
    (mnt / name).mkdir()
    r = put(mnt / name / "definition.xml", xml)
    assert r.returncode == 0, r.stderr + read(mnt / name / "error")


def read(path: Path) -> str:
    return path.read_text()


def ip(netns: str, *args: str, check: bool = True) -> str:
    r = subprocess.run(["ip", "-n", netns, *args], capture_output=True, text=True, check=check)
    return r.stdout


def link_exists(netns: str, name: str) -> bool:
    r = subprocess.run(["ip", "-n", netns, "link", "show", name], capture_output=True, text=True)
    return r.returncode == 0


def daemon_pid(d: Daemon) -> int:
    assert d.proc is not None
    return d.proc.pid


# ---------------------------------------------------------------- define, read back


def test_define_start_stop_reads_back_generated_values(mounted: Daemon) -> None:
    mnt, ns = mounted.mnt, mounted.netns
    ok(f"mkdir {mnt}/testA")
    # an empty network directory: not a network yet
    assert sorted(os.listdir(mnt / "testA")) == ["definition.xml", "error"]
    assert not (mounted.config_dir / "testA.xml").exists()
    ok(f"cp {ROOT}/examples/testA.xml {mnt}/testA/definition.xml")
    back = read(mnt / "testA" / "definition.xml")
    uuid = read(mnt / "testA" / "uuid")
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\n", uuid)
    assert f"<uuid>{uuid.strip()}</uuid>" in back
    mac = re.search(r"<mac address='(52:54:00:[0-9a-f:]{8})'/>", back)
    assert mac, back
    assert "<bridge name='testA0' stp='on' delay='0'/>" in back
    assert back.endswith("</network>\n")
    assert read(mnt / "testA" / "active") == "0\n"
    assert read(mnt / "testA" / "autostart") == "0\n"
    assert not (mnt / "testA" / "status.xml").exists()
    assert (mounted.config_dir / "testA.xml").exists()

    ok(f"echo 1 > {mnt}/testA/active")
    assert read(mnt / "testA" / "active") == "1\n"
    link = ip(ns, "-d", "link", "show", "testA0")
    assert mac.group(1) in link
    assert f"alias netfs:{uuid.strip()}" in link
    assert "UP" in link.split("\n")[0]
    assert "192.168.150.1/24" in ip(ns, "addr", "show", "testA0")
    assert "<name>testA</name>" in read(mnt / "testA" / "status.xml")
    # the same value again is not an error
    ok(f"echo 1 > {mnt}/testA/active")

    ok(f"echo 0 > {mnt}/testA/active")
    assert not link_exists(ns, "testA0")
    assert not (mnt / "testA" / "status.xml").exists()
    ok(f"rmdir {mnt}/testA")
    assert not (mounted.config_dir / "testA.xml").exists()


def test_generated_bridge_name_skips_foreign_links(mounted: Daemon) -> None:
    mnt, ns = mounted.mnt, mounted.netns
    ip(ns, "link", "add", "virbr0", "type", "veth", "peer", "name", "qaveth0")
    define(mnt, "g1", "<network>\n  <ip address='10.9.0.1' prefix='24'/>\n</network>\n")
    assert "<bridge name='virbr1' stp='on' delay='0'/>" in read(mnt / "g1" / "definition.xml")
    define(mnt, "g2", "<network>\n  <ip address='10.9.1.1' prefix='24'/>\n</network>\n")
    assert "<bridge name='virbr2'" in read(mnt / "g2" / "definition.xml")
    # a template
    define(mnt, "g3", "<network>\n  <bridge name='qa%d'/>\n</network>\n")
    assert "<bridge name='qa0'" in read(mnt / "g3" / "definition.xml")


def test_one_value_files_right_and_wrong_values(mounted: Daemon) -> None:
    mnt = mounted.mnt
    define(mnt, "testA", virtual_xml("testA", "qabr0"))
    for f in ("active", "autostart"):
        path = mnt / "testA" / f
        for good, want in (("1", "1\n"), ("0\n", "0\n"), ("1\n", "1\n"), ("0", "0\n")):
            r = sh(f"printf '{good}' > {path}")
            assert r.returncode == 0, (f, good, r.stderr)
            assert read(path) == want
        for bad in ("2", "2\\n", "x", "\\n", " 1", "1 ", "yes", "01", "10", "-1"):
            r = sh(f"printf -- '{bad}' > {path}")
            assert r.returncode == 1, (f, bad)
            assert "write error: Invalid argument" in r.stderr, (f, bad, r.stderr)
            assert read(path) == "0\n"
    # every tool reports it, and error says why
    r = sh(f"/bin/echo 2 > {mnt}/testA/active")
    assert r.returncode == 1 and "Invalid argument" in r.stderr
    r = put(mnt / "testA" / "active", "2\n")
    assert r.returncode == 1 and "Invalid argument" in r.stderr
    assert "active" in read(mnt / "testA" / "error")
    # autostart is the link of the configuration directory
    ok(f"echo 1 > {mnt}/testA/autostart")
    link = mounted.config_dir / "autostart" / "testA.xml"
    assert link.is_symlink() and os.readlink(link) == "../testA.xml"
    ok(f"echo 0 > {mnt}/testA/autostart")
    assert not link.exists() and not link.is_symlink()


def test_read_only_files_refuse_root_too(mounted: Daemon) -> None:
    mnt = mounted.mnt
    define(mnt, "testA", OVS_TESTA)
    ok(f"echo 1 > {mnt}/testA/active")
    for f in (
        "events",
        "testA/uuid",
        "testA/error",
        "testA/status.xml",
        "testA/portgroups/sales/default",
        "testA/portgroups/sales/virtualport.xml",
    ):
        r = sh(f"echo x > {mnt}/{f}")
        assert r.returncode == 1 and "Permission denied" in r.stderr, (f, r.stderr)
    # the tree's own structure cannot be changed
    for script in (
        f"rmdir {mnt}/testA/ports",
        f"rm {mnt}/testA/active",
        f"mkdir {mnt}/testA/portgroups/new",
        f"rm {mnt}/events",
    ):
        assert sh(script).returncode != 0, script


def test_names(mounted: Daemon) -> None:
    mnt = mounted.mnt
    r = sh(f"mkdir {mnt}/.hidden")
    assert r.returncode == 1 and "Invalid argument" in r.stderr
    r = sh(f"mkdir {mnt}/events")
    assert r.returncode == 1 and "File exists" in r.stderr
    define(mnt, "testA", virtual_xml("testA", "qabr0"))
    r = sh(f"mkdir {mnt}/testA")
    assert r.returncode == 1 and "File exists" in r.stderr
    # names libvirt accepts, quotes and spaces included
    for name, bridge in (("sp ace", "qasp0"), ("q'uo\"te", "qaq0"), ("-dash", "qad0")):
        (mnt / name).mkdir()
        r = put(
            mnt / name / "definition.xml", f"<network>\n  <bridge name='{bridge}'/>\n</network>\n"
        )
        assert r.returncode == 0, (name, read(mnt / name / "error"))
        escaped = name.replace("'", "&apos;").replace('"', "&quot;")
        back = read(mnt / name / "definition.xml")
        assert f"<name>{name}</name>" in back or f"<name>{escaped}</name>" in back, back
        assert (mounted.config_dir / f"{name}.xml").exists()


def test_name_mismatch_and_missing_name(mounted: Daemon) -> None:
    mnt = mounted.mnt
    (mnt / "netB").mkdir()
    other = virtual_xml("other", "qabr1")
    r = put(mnt / "netB" / "definition.xml", other)
    assert r.returncode == 1 and "Invalid argument" in r.stderr
    assert (
        read(mnt / "netB" / "error")
        == "network name 'other' does not match directory name 'netB'\n"
    )
    assert not (mounted.config_dir / "netB.xml").exists()
    # cp reports it at close
    Path(tempfile.gettempdir(), "qa-other.xml").write_text(other)
    try:
        r = sh(f"cp {tempfile.gettempdir()}/qa-other.xml {mnt}/netB/definition.xml")
        assert (
            r.returncode == 1 and "failed to close" in r.stderr and "Invalid argument" in r.stderr
        )
    finally:
        Path(tempfile.gettempdir(), "qa-other.xml").unlink()
    # builtin echo is silent (documented): error tells
    r = sh(f"echo '<network><name>x' > {mnt}/netB/definition.xml")
    assert read(mnt / "netB" / "error").startswith("XML error:")
    # no <name>: takes the directory's
    r = put(mnt / "netB" / "definition.xml", "<network>\n  <bridge name='qabr1'/>\n</network>\n")
    assert r.returncode == 0
    assert "<name>netB</name>" in read(mnt / "netB" / "definition.xml")
    # newline in the name: libvirt refuses it, and so does mkdir (EINVAL) at once
    r = sh(f"mkdir $'{mnt}/a\\nb'")
    assert r.returncode == 1 and "Invalid argument" in r.stderr
    assert not (mnt / "a\nb").exists()


def test_redefine_while_active_keeps_live_state(mounted: Daemon) -> None:
    mnt, ns = mounted.mnt, mounted.netns
    define(mnt, "testA", virtual_xml("testA", "qabr0"))
    ok(f"echo 1 > {mnt}/testA/active")
    events = EventReader(mnt)
    try:
        ok(f"sed -i 's/192.168.150.1/192.168.151.1/; s/qabr0/qabr9/' {mnt}/testA/definition.xml")
        events.wait("testA", "updated")
    finally:
        events.close()
    assert "192.168.151.1" in read(mnt / "testA" / "definition.xml")
    status = read(mnt / "testA" / "status.xml")
    assert "192.168.150.1" in status and "qabr0" in status
    assert read(mnt / "testA" / "active") == "1\n"
    assert "192.168.150.1/24" in ip(ns, "addr", "show", "qabr0")
    ok(f"echo 0 > {mnt}/testA/active")
    assert not link_exists(ns, "qabr0")  # the live bridge is the one stopped
    ok(f"echo 1 > {mnt}/testA/active")
    assert "192.168.151.1/24" in ip(ns, "addr", "show", "qabr9")
    assert "qabr9" in read(mnt / "testA" / "status.xml")


def test_invalid_redefinition_leaves_everything_as_it_was(mounted: Daemon) -> None:
    mnt = mounted.mnt
    define(mnt, "testA", virtual_xml("testA", "qabr0"))
    before = read(mnt / "testA" / "definition.xml")
    cfg_before = (mounted.config_dir / "testA.xml").read_text()
    r = sh(f"sed -i 's/<name>testA/<name>testB/' {mnt}/testA/definition.xml")
    assert r.returncode != 0 and "Invalid argument" in r.stderr
    assert read(mnt / "testA" / "definition.xml") == before
    assert (mounted.config_dir / "testA.xml").read_text() == cfg_before
    # truncating alone (vim's first step, or `: >`) does not destroy the definition
    ok(f": > {mnt}/testA/definition.xml")
    assert read(mnt / "testA" / "definition.xml") == before
    # dd with a tiny block size, and ed, and vim (with and without a swap file)
    ok(f"dd if={mounted.config_dir}/testA.xml of={mnt}/testA/definition.xml bs=7 status=none")
    ok(f"printf ',s/192.168.150.1/192.168.152.1/\\nw\\nq\\n' | ed -s {mnt}/testA/definition.xml")
    assert "192.168.152.1" in read(mnt / "testA" / "definition.xml")
    if shutil.which("vim"):
        for flags in ("-n", ""):
            ok(
                f"vim -u NONE -N {flags} -es -c '%s/192.168.152.1/192.168.153.1/e' "
                f"-c '%s/192.168.153.1/192.168.152.1/e' -c 'wq' {mnt}/testA/definition.xml </dev/null"
            )
        r = sh(
            f"vim -u NONE -N -es -c '%s/<name>testA/<name>bad/' -c 'wq' "
            f"{mnt}/testA/definition.xml </dev/null"
        )
        assert r.returncode != 0
        assert "192.168.152.1" in read(mnt / "testA" / "definition.xml")
        assert "<name>testA</name>" in read(mnt / "testA" / "definition.xml")


def test_sed_invalid_result_leaves_no_temporary_file(mounted: Daemon) -> None:
    """man, EDITORS AND TOOLS: an invalid rename leaves the temporary file where it was
    and sed removes its own."""
    mnt = mounted.mnt
    define(mnt, "testA", virtual_xml("testA", "qabr0"))
    r = sh(f"sed -i 's/<name>testA/<name>testB/' {mnt}/testA/definition.xml")
    assert r.returncode != 0 and "cannot rename" in r.stderr and "Invalid argument" in r.stderr
    assert sorted(os.listdir(mnt / "testA")) == [
        "active",
        "autostart",
        "definition.xml",
        "error",
        "firewall",
        "leases",
        "portgroups",
        "ports",
        "uuid",
    ]
    # a temporary file made by hand stays after a refused rename
    ok(f"sed 's/<name>testA/<name>testB/' {mnt}/testA/definition.xml > {mnt}/testA/tmpdef")
    r = sh(f"mv {mnt}/testA/tmpdef {mnt}/testA/definition.xml")
    # rename(2) fails with EINVAL, which mv words as "to a subdirectory of itself"
    assert r.returncode == 1 and "subdirectory of itself" in r.stderr
    assert read(mnt / "testA" / "error").startswith("network name 'testB' does not match")
    assert (mnt / "testA" / "tmpdef").exists()
    ok(f"rm {mnt}/testA/tmpdef")


# ---------------------------------------------------------------- conformance


def _normalize(text: str) -> str:
    text = re.sub(r"<uuid>[^<]*</uuid>\n\s*", "", text)
    text = re.sub(r"<mac address='[^']*'/>\n\s*", "", text)
    return re.sub(r" name='virbr\d+'", "", text)


def test_every_libvirt_conformance_input_through_cp(mounted: Daemon) -> None:
    data = CONFORMANCE / "networkxmlconfdata"
    if not data.is_dir():
        pytest.skip(f"no conformance data at {data}")
    must_fail = {
        "routed-network-no-dns-extra-elements": "Extra data in disabled network 'local'",
        "hostdev-duplicate": "PCI device '0000:03:00.3' can only be listed once in network hostdev",
        "passthrough-duplicate": "interface 'eth3' can only be listed once in network passthrough-duplicate",
        "passthrough-pf": "Unsupported <ip> element in network local with forward mode='passthrough'",
        # netfs's own rule (not libvirt's): the daemon writes the name as it is
        # into dnsmasq's pid-file line, where dnsmasq reads '"' as a quote
        "nat-network-name-with-quotes": (
            "network name 'default\"with\"quotes\"' has '\"' (dnsmasq reads it as a quote "
            "and drops it): a network that runs dnsmasq cannot have it in its name (the paths "
            "of its files in dnsmasq's configuration would not be read as written)"
        ),
    }
    problems: list[str] = []
    checked = 0
    for f in sorted(data.glob("*.xml")):
        if f.name.endswith(".expect.xml"):
            continue
        base = f.name[: -len(".xml")]
        name = ET.parse(f).getroot().findtext("name")
        assert name
        d = mounted.mnt / name
        d.mkdir()
        r = subprocess.run(
            ["cp", str(f), str(d / "definition.xml")], capture_output=True, text=True
        )
        if "No such file" in r.stderr:
            # the ghost directory of test_mkdir_after_rmdir_of_refused_network_is_usable
            d.rmdir()
            time.sleep(0.5)
            d.mkdir()
            r = subprocess.run(
                ["cp", str(f), str(d / "definition.xml")], capture_output=True, text=True
            )
        err = read(d / "error")
        if base in must_fail:
            if r.returncode == 0 or err.strip() != must_fail[base]:
                problems.append(f"{base}: rc={r.returncode} error={err!r}")
        elif r.returncode != 0:
            problems.append(f"{base}: refused: {err!r}")
        else:
            expect = data / f"{base}.expect.xml"
            if expect.exists():
                got = read(d / "definition.xml")
                if _normalize(got) != _normalize(expect.read_text()):
                    problems.append(f"{base}: read back differs:\n{got}")
                checked += 1
        assert subprocess.run(["rmdir", str(d)]).returncode == 0, base
    assert checked >= 15
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------- errno table


def test_errno_of_each_situation(mounted: Daemon) -> None:
    mnt = mounted.mnt
    define(mnt, "testA", virtual_xml("testA", "qabr0"))
    r = sh(f"cat {mnt}/testA/status.xml")
    assert r.returncode == 1 and "No such file or directory" in r.stderr
    r = sh(f"cat {mnt}/nosuch/active")
    assert r.returncode == 1 and "No such file or directory" in r.stderr
    ok(f"mkdir {mnt}/testA/ports/vm1")
    r = sh(f"mkdir {mnt}/testA/ports/vm1")
    assert r.returncode == 1 and "File exists" in r.stderr
    r = put(mnt / "testA" / "ports" / "vm1" / "port.xml", OVS_GUEST.replace("testA", "x"))
    assert r.returncode == 1 and "Network is down" in r.stderr
    assert read(mnt / "testA" / "error") == "network 'testA' is not active\n"
    ok(f"echo 1 > {mnt}/testA/active")
    r = sh(f"rmdir {mnt}/testA")
    assert r.returncode == 1 and "Device or resource busy" in r.stderr
    ok(f"echo 0 > {mnt}/testA/active")
    ok(f"rmdir {mnt}/testA")


def test_start_refused_bridge_name_taken_by_foreign_link(mounted: Daemon) -> None:
    mnt, ns = mounted.mnt, mounted.netns
    ip(ns, "link", "add", "qafor0", "type", "veth", "peer", "name", "qafor1")
    define(mnt, "fb", virtual_xml("fb", "qafor0", "10.8.0.1"))
    r = sh(f"echo 1 > {mnt}/fb/active")
    assert r.returncode == 1 and "Address already in use" in r.stderr
    assert read(mnt / "fb" / "error") == "error creating bridge interface qafor0: File exists\n"
    assert read(mnt / "fb" / "active") == "0\n"
    assert link_exists(ns, "qafor0")  # the foreign link is left alone


def test_start_refused_subnet_in_use(mounted: Daemon) -> None:
    mnt, ns = mounted.mnt, mounted.netns
    ip(ns, "link", "add", "qaveth0", "type", "veth", "peer", "name", "qaveth1")
    ip(ns, "addr", "add", "10.9.0.5/24", "dev", "qaveth0")
    ip(ns, "link", "set", "qaveth0", "up")
    define(mnt, "g1", virtual_xml("g1", "qabr1", "10.9.0.1"))
    r = sh(f"echo 1 > {mnt}/g1/active")
    assert r.returncode == 1 and "Address already in use" in r.stderr
    assert read(mnt / "g1" / "error") == "Network is already in use by interface qaveth0\n"
    assert not link_exists(ns, "qabr1")
    # the same against another netfs network
    define(mnt, "a", virtual_xml("a", "qabr2", "10.7.0.1"))
    define(mnt, "b", virtual_xml("b", "qabr3", "10.7.0.9"))
    ok(f"echo 1 > {mnt}/a/active")
    r = sh(f"echo 1 > {mnt}/b/active")
    assert r.returncode == 1 and "Address already in use" in r.stderr
    assert read(mnt / "b" / "error") == "Network is already in use by interface qabr2\n"


def test_uuid_and_bridge_conflicts(mounted: Daemon) -> None:
    """libvirt's messages in `error`; the errno is netfs's choice (libvirt only
    has an error code): EEXIST for a UUID clash, EADDRINUSE for a bridge name
    another network uses."""
    mnt = mounted.mnt
    define(mnt, "testA", virtual_xml("testA", "qabr0"))
    uuid = read(mnt / "testA" / "uuid").strip()
    (mnt / "dupu").mkdir()
    r = put(mnt / "dupu" / "definition.xml", f"<network>\n  <uuid>{uuid}</uuid>\n</network>\n")
    assert r.returncode == 1 and "File exists" in r.stderr
    assert read(mnt / "dupu" / "error") == f"network 'testA' is already defined with uuid {uuid}\n"
    other = "11111111-2222-3333-4444-555555555555"
    r = put(mnt / "testA" / "definition.xml", f"<network>\n  <uuid>{other}</uuid>\n</network>\n")
    assert r.returncode == 1 and "File exists" in r.stderr
    assert read(mnt / "testA" / "error") == f"network 'testA' already exists with uuid {uuid}\n"
    r = put(mnt / "dupu" / "definition.xml", "<network>\n  <bridge name='qabr0'/>\n</network>\n")
    assert r.returncode == 1 and "Address already in use" in r.stderr
    assert read(mnt / "dupu" / "error") == "bridge name 'qabr0' already in use.\n"
    assert not (mounted.config_dir / "dupu.xml").exists()
    # a redefinition without <uuid> keeps the network's UUID
    r = put(mnt / "testA" / "definition.xml", "<network>\n  <bridge name='qabr0'/>\n</network>\n")
    assert r.returncode == 0
    assert read(mnt / "testA" / "uuid").strip() == uuid


def test_status_xml_is_the_status_document(mounted: Daemon) -> None:
    define(mounted.mnt, "testA", virtual_xml("testA", "qabr0"))
    ok(f"echo 1 > {mounted.mnt}/testA/active")
    status = read(mounted.mnt / "testA" / "status.xml")
    assert status.startswith("<networkstatus>\n  <class_id bitmap='0-2'/>\n  <floor sum='0'/>\n")
    assert "<bridge name='qabr0' stp='on' delay='0'/>" in status


def test_status_xml_counts_connections(mounted: Daemon) -> None:
    mnt = mounted.mnt
    define(mnt, "testA", OVS_TESTA)
    ok(f"echo 1 > {mnt}/testA/active")
    ok(f"mkdir {mnt}/testA/ports/vm1")
    assert put(mnt / "testA/ports/vm1/port.xml", OVS_GUEST).returncode == 0
    assert "<network connections='1'>" in read(mnt / "testA" / "status.xml")


# ---------------------------------------------------------------- ports


def test_seed_openvswitch_example(mounted: Daemon) -> None:
    mnt = mounted.mnt
    define(mnt, "testA", OVS_TESTA)
    assert read(mnt / "testA/portgroups/sales/virtualport.xml") == (
        "<virtualport type='openvswitch'>\n  <parameters profileid='sales'/>\n</virtualport>\n"
    )
    assert read(mnt / "testA/portgroups/engineering/virtualport.xml") == (
        "<virtualport type='openvswitch'/>\n"
    )
    assert read(mnt / "testA/portgroups/engineering/default") == "1\n"
    assert read(mnt / "testA/portgroups/sales/default") == "0\n"
    ok(f"echo 1 > {mnt}/testA/active")
    ok(f"mkdir {mnt}/testA/ports/vm1")
    assert read(mnt / "testA/ports/vm1/port.xml") == ""
    events = EventReader(mnt)
    try:
        r = sh(f"cat > {mnt}/testA/ports/vm1/port.xml <<'EOF'\n{OVS_GUEST}EOF")
        assert r.returncode == 0, r.stderr
        events.wait("testA", "port-created", "vm1")
        assert read(mnt / "testA/ports/vm1/virtualport.xml") == (
            "<virtualport type='openvswitch'>\n"
            f"  <parameters interfaceid='{IFACE_ID}' profileid='sales'/>\n"
            "</virtualport>\n"
        )
        port = read(mnt / "testA/ports/vm1/port.xml")
        assert port.startswith("<networkport>\n  <uuid>")
        assert "<group>sales</group>" in port
        assert "<mac address='52:54:00:12:34:56'/>" in port
        assert "<plug type='bridge' bridge='ovsbr0'/>" in port
        assert (mounted.state_dir / "testA" / "ports").is_dir()
        r = sh(f"rmdir {mnt}/testA")
        assert r.returncode == 1 and "Device or resource busy" in r.stderr
        ok(f"rmdir {mnt}/testA/ports/vm1")
        events.wait("testA", "port-deleted", "vm1")
    finally:
        events.close()


def test_seed_8021qbg_example(mounted: Daemon) -> None:
    mnt = mounted.mnt
    define(mnt, "testA", QBG_TESTA)
    assert read(mnt / "testA/portgroups/sales/virtualport.xml") == (
        "<virtualport type='802.1Qbg'>\n"
        "  <parameters managerid='55' typeid='1193047' typeidversion='2'/>\n"
        "</virtualport>\n"
    )
    ok(f"echo 1 > {mnt}/testA/active")
    ok(f"mkdir {mnt}/testA/ports/vm1")
    assert put(mnt / "testA/ports/vm1/port.xml", QBG_GUEST).returncode == 0
    want = (
        "<virtualport type='802.1Qbg'>\n"
        f"  <parameters managerid='55' typeid='1193047' typeidversion='2' instanceid='{IFACE_ID}'/>\n"
        "</virtualport>\n"
    )
    assert read(mnt / "testA/ports/vm1/virtualport.xml") == want
    assert "<plug type='direct' dev='eth1' mode='private'/>" in read(
        mnt / "testA/ports/vm1/port.xml"
    )
    # a <networkport> without instanceid: generated
    ok(f"mkdir {mnt}/testA/ports/vm2")
    np = (
        "<networkport>\n  <uuid>5d744f21-ba4a-4d6e-bdb2-30a35ff3207d</uuid>\n"
        "  <owner>\n    <name>memtest</name>\n"
        "    <uuid>d54df46f-1ab5-4a22-8618-4560ef5fac2c</uuid>\n  </owner>\n"
        "  <group>sales</group>\n  <mac address='52:54:00:7b:35:93'/>\n</networkport>\n"
    )
    assert put(mnt / "testA/ports/vm2/port.xml", np).returncode == 0
    assert re.search(r"instanceid='[0-9a-f-]{36}'", read(mnt / "testA/ports/vm2/virtualport.xml"))
    # the same port uuid again
    ok(f"mkdir {mnt}/testA/ports/vm3")
    r = put(mnt / "testA/ports/vm3/port.xml", np)
    assert r.returncode == 1
    assert read(mnt / "testA/error") == (
        "Network port with UUID 5d744f21-ba4a-4d6e-bdb2-30a35ff3207d already exists\n"
    )
    # stopping frees the ports
    ok(f"echo 0 > {mnt}/testA/active")
    assert "vm1" not in os.listdir(mnt / "testA/ports")
    assert sh(f"cat {mnt}/testA/ports/vm1/virtualport.xml").returncode == 1


def test_port_refusals(mounted: Daemon) -> None:
    mnt = mounted.mnt
    define(mnt, "testA", QBG_TESTA)
    define(mnt, "virt", virtual_xml("virt", "qabr0").replace("</network>", _SALES))
    ok(f"echo 1 > {mnt}/testA/active && echo 1 > {mnt}/virt/active")
    p = mnt / "testA/ports/p"
    p.mkdir()

    def refused(path: Path, xml: str, net: str, message: str) -> None:
        r = put(path, xml)
        assert r.returncode == 1 and "Invalid argument" in r.stderr, (xml, r.stderr)
        assert read(mnt / net / "error") == message + "\n"
        assert read(path) == ""

    refused(
        p / "port.xml",
        QBG_GUEST.replace("instanceid='09b11c53-8b5c-4eeb-8f00-d84eaa0aaa4f'", "typeid='12'"),
        "testA",
        "attempt to merge virtualports with mismatched typeids (12 and 1193047)",
    )
    refused(
        p / "port.xml",
        QBG_GUEST.replace("802.1Qbg", "openvswitch").replace("instanceid", "interfaceid"),
        "testA",
        "attempt to merge virtualports with mismatched types (openvswitch and 802.1Qbg)",
    )
    # no portgroup: the network's profile alone is incomplete
    refused(
        p / "port.xml",
        "<interface type='network'>\n  <source network='testA'/>\n</interface>\n",
        "testA",
        "missing managerid in <virtualport type='802.1Qbg'>",
    )
    for extra in (
        "  <ip address='10.0.0.5' prefix='24'/>\n",
        "  <route address='10.0.0.0' prefix='24' gateway='10.0.0.1'/>\n",
    ):
        xml = QBG_GUEST.replace("</interface>", extra + "</interface>")
        r = put(p / "port.xml", xml)
        assert r.returncode == 1 and "Invalid argument" in r.stderr
        assert read(mnt / "testA/error").startswith(
            "Invalid attempt to set network interface guest-side IP route and/or address info"
        )
    # a virtual network takes no virtualport at all
    v = mnt / "virt/ports/p"
    v.mkdir()
    refused(
        v / "port.xml",
        "<interface type='network'>\n  <source network='virt'/>\n"
        "  <virtualport type='openvswitch'/>\n</interface>\n",
        "virt",
        "<virtualport type='openvswitch'> not supported for network 'virt' which uses IP forwarding",
    )
    # ... but a typeless portgroup profile merges to nothing: allowed
    assert (
        put(
            v / "port.xml",
            "<interface type='network'>\n  <source network='virt' portgroup='sales'/>\n</interface>\n",
        ).returncode
        == 0
    )
    assert not (v / "virtualport.xml").exists()
    assert "<plug type='network' bridge='qabr0'/>" in read(v / "port.xml")


_SALES = """  <portgroup name='sales'>
    <virtualport>
      <parameters profileid='sales'/>
    </virtualport>
  </portgroup>
</network>"""


def test_port_xml_of_an_allocated_port_is_eexist(mounted: Daemon) -> None:
    """man: EEXIST for a port.xml written for a port already allocated, even with the
    content it has (an exception to 'writing the value a file already has succeeds')."""
    mnt = mounted.mnt
    define(mnt, "testA", OVS_TESTA)
    ok(f"echo 1 > {mnt}/testA/active && mkdir {mnt}/testA/ports/vm1")
    assert put(mnt / "testA/ports/vm1/port.xml", OVS_GUEST).returncode == 0
    same = read(mnt / "testA/ports/vm1/port.xml")
    r = put(mnt / "testA/ports/vm1/port.xml", same)
    assert r.returncode == 1 and "File exists" in r.stderr
    assert read(mnt / "testA/error") == "port 'vm1' already exists in network 'testA'\n"
    assert read(mnt / "testA/ports/vm1/port.xml") == same


def test_same_definition_again_changes_nothing(mounted: Daemon) -> None:
    mnt = mounted.mnt
    define(mnt, "testA", virtual_xml("testA", "qabr0"))
    same = read(mnt / "testA" / "definition.xml")
    events = EventReader(mnt)
    try:
        assert put(mnt / "testA" / "definition.xml", same).returncode == 0
        ok(f"echo 1 > {mnt}/testA/active")
        events.wait("testA", "started")
        assert not any(line.endswith(" testA updated") for line in events.lines)
    finally:
        events.close()


# ---------------------------------------------------------------- notifications


def test_inotify_and_events_for_every_cause(daemon_factory: object) -> None:
    d: Daemon = daemon_factory()  # type: ignore[operator]
    d.start()
    mnt, ns = d.mnt, d.netns
    define(mnt, "testA", virtual_xml("testA", "qabr0"))
    watch = Watch(mnt / "testA" / "active", mnt / "testA", mnt)
    events = EventReader(mnt)
    try:
        # a write
        ok(f"echo 1 > {mnt}/testA/active")
        watch.wait(mnt / "testA" / "status.xml", "CREATE")
        events.wait("testA", "started")
        ok(f"echo 0 > {mnt}/testA/active")
        watch.wait(mnt / "testA" / "status.xml", "DELETE")
        watch.wait(mnt / "testA" / "active", "MODIFY")
        events.wait("testA", "stopped")
        # the bridge deleted behind the daemon's back
        ok(f"echo 1 > {mnt}/testA/active")
        events.lines.clear()
        watch.lines.clear()
        ip(ns, "link", "del", "qabr0")
        watch.wait(mnt / "testA" / "status.xml", "DELETE")
        watch.wait(mnt / "testA" / "active", "CLOSE_WRITE")
        events.wait("testA", "stopped")
        assert read(mnt / "testA" / "active") == "0\n"
        assert not (d.state_dir / "testA.xml").exists()
        # SIGHUP after editing the configuration directory
        (d.config_dir / "hup.xml").write_text(virtual_xml("hup", "qahup0", "10.5.0.1"))
        (d.config_dir / "autostart" / "hup.xml").symlink_to("../hup.xml")
        cfg = d.config_dir / "testA.xml"
        cfg.write_text(cfg.read_text().replace("qabr0", "qabr5"))
        os.kill(daemon_pid(d), signal.SIGHUP)
        watch.wait(mnt / "hup", "CREATE")
        events.wait("hup", "defined")
        events.wait("testA", "updated")
        events.wait("hup", "started")
        assert link_exists(ns, "qahup0")
        assert "qabr5" in read(mnt / "testA" / "definition.xml")
        # ports
        ok(f"mkdir {mnt}/hup/ports/p1")
        watch2 = Watch(mnt / "hup" / "ports")
        try:
            r = put(
                mnt / "hup/ports/p1/port.xml",
                "<interface type='network'>\n  <source network='hup'/>\n</interface>\n",
            )
            assert r.returncode == 0
            events.wait("hup", "port-created", "p1")
            ok(f"echo 0 > {mnt}/hup/active")
            events.wait("hup", "port-deleted", "p1")
            events.wait("hup", "stopped")
        finally:
            watch2.close()
        # undefine by removing the file
        ok(f"rm {d.config_dir}/autostart/hup.xml {d.config_dir}/hup.xml")
        os.kill(daemon_pid(d), signal.SIGHUP)
        watch.wait(mnt / "hup", "DELETE")
        events.wait("hup", "undefined")
        line = events.lines[-1]
        assert re.fullmatch(
            r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d hup undefined", line
        ), line
    finally:
        events.close()
        watch.close()


# ---------------------------------------------------------------- users


def test_non_root_reads_everything_and_writes_nothing(mounted: Daemon) -> None:
    mnt = mounted.mnt
    define(mnt, "testA", OVS_TESTA)
    ok(f"echo 1 > {mnt}/testA/active && mkdir {mnt}/testA/ports/vm1")
    assert put(mnt / "testA/ports/vm1/port.xml", OVS_GUEST).returncode == 0
    r = sh(
        f"cd {mnt} && cat testA/active testA/uuid testA/definition.xml testA/status.xml "
        "testA/error testA/portgroups/sales/virtualport.xml testA/ports/vm1/port.xml "
        "testA/ports/vm1/virtualport.xml >/dev/null && ls -R . >/dev/null",
        user="nobody",
    )
    assert r.returncode == 0, r.stderr
    for script in (
        "echo 0 > testA/active",
        "echo 1 > testA/autostart",
        "cat testA/definition.xml > testA/definition.xml",
        "echo x > testA/ports/vm1/port.xml",
        "mkdir x",
        "mkdir testA/ports/vm2",
        "rmdir testA/ports/vm1",
        "rmdir testA",
        "touch testA/tmpfile",
        "mv testA/definition.xml testA/x",
    ):
        r = sh(f"cd {mnt} && {script}", user="nobody")
        assert r.returncode == 1 and "Permission denied" in r.stderr, (script, r.stderr)
    assert read(mnt / "testA" / "active") == "1\n"
    assert (mnt / "testA/ports/vm1/virtualport.xml").exists()


def test_group_member_may_write(daemon_factory: object) -> None:
    d: Daemon = daemon_factory(["--group", "nogroup"])  # type: ignore[operator]
    d.start()
    mnt = d.mnt
    st = os.stat(mnt / "events")
    assert st.st_uid == 0
    r = sh(
        f"cd {mnt} && mkdir n && printf \"<network>\\n  <bridge name='qagrp0'/>\\n</network>\\n\" "
        "| tee n/definition.xml >/dev/null && echo 1 > n/active && cat n/active",
        user="nobody",
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout == "1\n"
    assert oct(os.stat(mnt / "n" / "active").st_mode & 0o777) == "0o664"
    assert oct(os.stat(mnt / "n").st_mode & 0o777) == "0o775"


# ---------------------------------------------------------------- daemon life


def test_kill9_remount_recovers_state(daemon_factory: object) -> None:
    d: Daemon = daemon_factory()  # type: ignore[operator]
    d.start()
    mnt, ns = d.mnt, d.netns
    define(mnt, "testA", virtual_xml("testA", "qabr0"))
    define(mnt, "hup", virtual_xml("hup", "qahup0", "10.5.0.1"))
    define(mnt, "ovs", OVS_TESTA.replace("testA", "ovs"))
    # host bridge networks: one whose bridge exists, one whose bridge does not
    ip(ns, "link", "add", "ovsbr0", "type", "bridge")
    define(mnt, "gone", OVS_TESTA.replace("testA", "gone").replace("ovsbr0", "qagone0"))
    ok(f"echo 1 > {mnt}/gone/active")
    ok(f"echo 1 > {mnt}/testA/active && echo 1 > {mnt}/hup/active && echo 1 > {mnt}/ovs/active")
    ok(f"mkdir {mnt}/ovs/ports/vm1")
    assert put(mnt / "ovs/ports/vm1/port.xml", OVS_GUEST.replace("testA", "ovs")).returncode == 0
    port_before = read(mnt / "ovs/ports/vm1/port.xml")
    d.kill9()
    r = sh(f"ls {mnt}")
    assert r.returncode != 0  # a dead daemon's mount answers with an error
    # behind its back: addresses removed, a bridge deleted, an orphan made
    ip(ns, "addr", "flush", "dev", "qabr0")
    ip(ns, "link", "set", "qabr0", "down")
    ip(ns, "link", "del", "qahup0")
    ip(ns, "link", "add", "qaorph0", "type", "bridge")
    ip(ns, "link", "set", "qaorph0", "alias", "netfs:12345678-1234-1234-1234-123456789abc")
    ip(ns, "link", "add", "qaforgn0", "type", "bridge")
    d2: Daemon = daemon_factory()  # type: ignore[operator]
    d2.start()
    log = d2.logtext()
    assert read(mnt / "ovs" / "active") == "1\n", log
    assert read(mnt / "testA" / "active") == "1\n"
    assert "192.168.150.1/24" in ip(ns, "addr", "show", "qabr0")
    assert "UP" in ip(ns, "link", "show", "qabr0").split("\n")[0].split(">")[0]
    assert read(mnt / "hup" / "active") == "0\n"
    assert not (d.state_dir / "hup.xml").exists()
    assert read(mnt / "ovs/ports/vm1/port.xml") == port_before
    # man, RECOVERY: a host bridge network whose bridge is gone is inactive (libvirt's rule)
    assert read(mnt / "gone" / "active") == "0\n"
    assert not link_exists(ns, "qaorph0")
    assert link_exists(ns, "qaforgn0")


def test_autostart_once_per_boot(daemon_factory: object) -> None:
    d: Daemon = daemon_factory()  # type: ignore[operator]
    d.start()
    mnt, ns = d.mnt, d.netns
    define(mnt, "auto", virtual_xml("auto", "qaauto0"))
    ok(f"echo 1 > {mnt}/auto/autostart")
    d.stop()
    (d.state_dir / "autostarted").unlink(missing_ok=True)
    d2: Daemon = daemon_factory()  # type: ignore[operator]
    d2.start()
    assert read(mnt / "auto" / "active") == "1\n"
    assert link_exists(ns, "qaauto0")
    assert (d.state_dir / "autostarted").exists()
    ok(f"echo 0 > {mnt}/auto/active")
    d2.stop()
    d3: Daemon = daemon_factory()  # type: ignore[operator]
    d3.start()
    assert read(mnt / "auto" / "active") == "0\n"  # not again in the same boot


def test_config_without_uuid_gets_one_saved_at_first_load(daemon_factory: object) -> None:
    """man, STATE ON DISK: a hand-made file without <uuid> (or, for a virtual mode,
    without <mac>) gets them generated once and saved back, as libvirt does: later
    loads (SIGHUP, daemon start) keep the same values."""
    d: Daemon = daemon_factory()  # type: ignore[operator]
    d.start()
    (d.config_dir / "hand.xml").write_text(
        "<network>\n  <name>hand</name>\n  <bridge name='qahand0'/>\n</network>\n"
    )
    os.kill(daemon_pid(d), signal.SIGHUP)
    wait_for(lambda: (d.mnt / "hand" / "uuid").exists(), "hand")
    first = read(d.mnt / "hand" / "uuid")
    saved = (d.config_dir / "hand.xml").read_text()
    assert f"<uuid>{first.strip()}</uuid>" in saved and "<mac address=" in saved
    os.kill(daemon_pid(d), signal.SIGHUP)
    time.sleep(0.5)
    assert read(d.mnt / "hand" / "uuid") == first
    d.stop()
    d2: Daemon = daemon_factory()  # type: ignore[operator]
    d2.start()
    assert read(d.mnt / "hand" / "uuid") == first


def test_mount_errors(daemon_factory: object, tmp_path: Path) -> None:
    d: Daemon = daemon_factory()  # type: ignore[operator]
    d.start()
    base = [PYTHON, "-m", "netfs.cli", "mount"]
    dirs = ["--config-dir", str(tmp_path / "c2"), "--state-dir", str(tmp_path / "s2")]
    other = tmp_path / "m2"
    other.mkdir()
    try:
        r = subprocess.run(
            base + [str(d.mnt), "--netns", d.netns, *dirs],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=LIVENESS,
        )
        assert r.returncode != 0 and "already mounted" in r.stderr
        r = subprocess.run(
            base + [str(other), "--bogus"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=LIVENESS,
        )
        assert r.returncode == 2
        r = subprocess.run(
            base + [str(tmp_path / "nonexistent"), "--netns", d.netns, *dirs],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=LIVENESS,
        )
        assert r.returncode == 1 and "not a directory" in r.stderr
    finally:
        force_unmount(other)


def test_missing_netns_message(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    m = tmp_path / "m"
    m.mkdir()
    try:
        r = subprocess.run(
            [
                PYTHON,
                "-m",
                "netfs.cli",
                "mount",
                str(m),
                "--netns",
                "qa-no-such-netns",
                "--config-dir",
                str(tmp_path / "c"),
                "--state-dir",
                str(tmp_path / "s"),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=LIVENESS,
        )
    finally:
        force_unmount(m)
    assert r.returncode != 0
    assert "Trio" not in r.stderr and "Traceback" not in r.stderr
    assert "cannot open network namespace qa-no-such-netns" in r.stderr


_PASSTHROUGH_WITH_IP = """<network>
  <name>st</name>
  <forward mode='passthrough'>
    <interface dev='eth3'/>
  </forward>
  <ip address='10.0.0.1' prefix='24'/>
</network>
"""


def test_mkdir_after_rmdir_of_refused_network_is_usable(mounted: Daemon, tmp_path: Path) -> None:
    mnt = mounted.mnt
    bad = tmp_path / "bad.xml"
    bad.write_text(_PASSTHROUGH_WITH_IP)
    broken: list[str] = []
    for i in range(300):
        (mnt / "st").mkdir()
        r = subprocess.run(
            ["cp", str(bad), str(mnt / "st" / "definition.xml")], capture_output=True, text=True
        )
        if "Invalid argument" not in r.stderr or not read(mnt / "st" / "error"):
            broken.append(f"{i}: {r.stderr.strip()!r} {sorted(os.listdir(mnt / 'st'))}")
        (mnt / "st").rmdir()
        if len(broken) >= 3:
            break
    assert not broken, broken
