"""End to end: the tree, its modes and reads, mkdir/rmdir, permissions."""
# ruff: noqa: F811  (fixtures imported from fs_support are pytest arguments)

from __future__ import annotations

import errno
import os
import signal
import stat
import time
from pathlib import Path

import pytest
from fs_support import (
    OVS_TESTA,
    Daemon,
    EventReader,
    bash,
    daemon_factory,  # noqa: F401  (fixture)
    define,
    mounted,  # noqa: F401  (fixture)
    virtual_xml,
    wait_for,
)

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(120)]


def mode(p: Path) -> str:
    return stat.filemode(os.stat(p).st_mode)


def test_tree_modes_and_reads(mounted: Daemon) -> None:
    mnt = mounted.mnt
    assert os.listdir(mnt) == ["events"]
    define(mnt, "testA", virtual_xml("testA", "nfsbr0"))
    net = mnt / "testA"
    assert sorted(os.listdir(net)) == sorted(
        ["definition.xml", "active", "autostart", "uuid", "error", "leases", "firewall"]
        + ["portgroups", "ports"]
    )
    assert mode(mnt) == "drwxr-xr-x"
    assert mode(net) == "drwxr-xr-x"
    assert mode(net / "ports") == "drwxr-xr-x"
    for f in ("definition.xml", "active", "autostart"):
        assert mode(net / f) == "-rw-r--r--", f
    for f in ("uuid", "error"):
        assert mode(net / f) == "-r--r--r--", f
    assert mode(mnt / "events") == "-r--r--r--"
    st = os.stat(net / "definition.xml")
    assert st.st_uid == 0 and st.st_gid == 0
    text = (net / "definition.xml").read_text()
    assert "<name>testA</name>" in text and text.endswith("</network>\n")
    # real sizes
    assert st.st_size == len(text.encode())
    assert (net / "active").read_text() == "0\n"
    assert (net / "autostart").read_text() == "0\n"
    uuid = (net / "uuid").read_text()
    assert len(uuid.strip()) == 36 and uuid.endswith("\n")
    assert f"<uuid>{uuid.strip()}</uuid>" in text
    assert (net / "error").read_text() == ""
    # status.xml only while active
    assert not (net / "status.xml").exists()
    r = bash(f"echo 1 > {net}/active && cat {net}/status.xml")
    assert r.returncode == 0, r.stderr
    assert "<name>testA</name>" in r.stdout
    assert mode(net / "status.xml") == "-r--r--r--"
    assert "status.xml" in os.listdir(net)
    r = bash(f"echo 0 > {net}/active; cat {net}/status.xml")
    assert r.returncode == 1 and "No such file or directory" in r.stderr
    assert "status.xml" not in os.listdir(net)


def test_portgroups(mounted: Daemon) -> None:
    mnt = mounted.mnt
    define(mnt, "testA", OVS_TESTA)
    pg = mnt / "testA" / "portgroups"
    assert sorted(os.listdir(pg)) == ["engineering", "sales"]
    assert (pg / "engineering" / "default").read_text() == "1\n"
    assert (pg / "sales" / "default").read_text() == "0\n"
    assert mode(pg / "sales" / "default") == "-r--r--r--"
    vp = (pg / "sales" / "virtualport.xml").read_text()
    assert "type='openvswitch'" in vp and "profileid='sales'" in vp
    assert mode(pg / "sales" / "virtualport.xml") == "-r--r--r--"
    # the network's virtualport alone still merges into engineering
    assert "type='openvswitch'" in (pg / "engineering" / "virtualport.xml").read_text()
    r = bash(f"mkdir {pg}/new")
    assert r.returncode == 1 and "Operation not permitted" in r.stderr


CONFLICTING_PG = """<network><name>qbg</name>
  <forward mode='vepa'><interface dev='eth1'/></forward>
  <virtualport type='802.1Qbg'><parameters typeid='1193047' typeidversion='2'/></virtualport>
  <portgroup name='eng'>
    <virtualport type='802.1Qbh'><parameters profileid='eng'/></virtualport>
  </portgroup>
</network>
"""


def test_conflicting_portgroup_profile_still_lists(mounted: Daemon) -> None:
    """libvirt accepts a portgroup whose profile conflicts with the network's
    (merges happen for ports): its directory lists and stats, `find` and
    recursive watches work, and only reading virtualport.xml is EINVAL."""
    mnt = mounted.mnt
    define(mnt, "qbg", CONFLICTING_PG)
    eng = mnt / "qbg" / "portgroups" / "eng"
    assert sorted(os.listdir(eng)) == ["default", "virtualport.xml"]
    assert mode(eng / "virtualport.xml") == "-r--r--r--"
    r = bash(f"cat {eng}/virtualport.xml")
    assert r.returncode == 1 and "Invalid argument" in r.stderr
    r = bash(f"find {mnt}/qbg > /dev/null && inotifywait -r -t 1 {mnt}")
    assert "Invalid argument" not in r.stderr, r.stderr
    assert r.returncode == 2, r.stderr  # inotifywait: timed out, watches were set


def test_read_only_files_refuse_o_trunc_even_read_only(mounted: Daemon) -> None:
    """EACCES for truncating a read-only file, also as root and also with
    O_RDONLY|O_TRUNC (the kernel lets root through: the daemon refuses)."""
    mnt = mounted.mnt
    define(mnt, "testA", virtual_xml("testA", "nfsbr0"))
    for f in (mnt / "testA" / "uuid", mnt / "testA" / "error", mnt / "events"):
        with pytest.raises(PermissionError):
            os.close(os.open(f, os.O_RDONLY | os.O_TRUNC))
    assert len((mnt / "testA" / "uuid").read_text()) == 37


def test_directories_list_dot_and_dotdot(mounted: Daemon) -> None:
    """As sysfs and configfs: `ls -a` shows . and .. (os.listdir leaves them out)."""
    mnt = mounted.mnt
    define(mnt, "testA", OVS_TESTA)
    for d in (mnt, mnt / "testA", mnt / "testA" / "portgroups", mnt / "testA" / "ports"):
        r = bash(f"ls -a {d}")
        assert r.returncode == 0 and r.stdout.split()[:2] == [".", ".."], r
    assert sorted(os.listdir(mnt / "testA" / "portgroups")) == ["engineering", "sales"]
    assert os.stat(mnt / "testA" / ".").st_ino == os.stat(mnt / "testA").st_ino


def test_mkdir_pending_and_rmdir(mounted: Daemon) -> None:
    mnt = mounted.mnt
    r = bash(f"mkdir {mnt}/pend && ls {mnt}/pend && cat {mnt}/pend/definition.xml")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["definition.xml", "error"]
    assert "pend" in os.listdir(mnt)
    # not saved until a definition is written
    assert list(mounted.config_dir.glob("*.xml")) == []
    r = bash(f"mkdir {mnt}/pend")
    assert r.returncode == 1 and "File exists" in r.stderr
    r = bash(f"rmdir {mnt}/pend")
    assert r.returncode == 0, r.stderr
    assert "pend" not in os.listdir(mnt)
    # a definition without <name> takes the directory's name
    r = bash(
        f"mkdir {mnt}/anon && echo \"<network><bridge name='nfsbr3'/></network>\" "
        f"> {mnt}/anon/definition.xml && cat {mnt}/anon/definition.xml"
    )
    assert r.returncode == 0, r.stderr
    assert "<name>anon</name>" in r.stdout
    assert (mounted.config_dir / "anon.xml").exists()
    r = bash(f"rmdir {mnt}/anon")
    assert r.returncode == 0, r.stderr
    assert not (mounted.config_dir / "anon.xml").exists()
    assert "anon" not in os.listdir(mnt)


def test_errnos_of_the_tree(mounted: Daemon) -> None:
    mnt = mounted.mnt
    define(mnt, "testA", virtual_xml("testA", "nfsbr0"))
    net = mnt / "testA"
    # ENOENT
    r = bash(f"cat {mnt}/nosuch/active")
    assert r.returncode == 1 and "No such file or directory" in r.stderr
    r = bash(f"rmdir {mnt}/nosuch")
    assert r.returncode == 1 and "No such file or directory" in r.stderr
    # EEXIST
    r = bash(f"mkdir {net}")
    assert r.returncode == 1 and "File exists" in r.stderr
    # EINVAL: a name netfs refuses
    r = bash(f"mkdir {mnt}/.hidden")
    assert r.returncode == 1 and "Invalid argument" in r.stderr
    # EACCES: read-only files, even for root
    for f in ("uuid", "error"):
        r = bash(f"echo x > {net}/{f}")
        assert r.returncode == 1 and "Permission denied" in r.stderr, f
    r = bash(f"echo x > {mnt}/events")
    assert r.returncode == 1 and "Permission denied" in r.stderr
    # EBUSY: rmdir of an active network
    r = bash(f"echo 1 > {net}/active && rmdir {net}")
    assert r.returncode == 1 and "Device or resource busy" in r.stderr
    assert (net / "active").read_text() == "1\n"
    r = bash(f"echo 0 > {net}/active && rmdir {net}")
    assert r.returncode == 0, r.stderr
    # EPERM: what the tree does not allow
    define(mnt, "testB", virtual_xml("testB", "nfsbr1"))
    r = bash(f"rm {mnt}/testB/uuid")
    assert r.returncode == 1 and "Operation not permitted" in r.stderr
    r = bash(f"mkdir {mnt}/testB/sub")
    assert r.returncode == 1 and "Operation not permitted" in r.stderr


def test_non_root_reads_but_cannot_write(mounted: Daemon) -> None:
    mnt = mounted.mnt
    define(mnt, "testA", virtual_xml("testA", "nfsbr0"))
    net = mnt / "testA"
    r = bash(f"cat {net}/active {net}/uuid {net}/definition.xml; ls {mnt}", user="nobody")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("0\n")
    for script in (
        f"echo 1 > {net}/active",
        f"echo 1 > {net}/autostart",
        f"cat {net}/definition.xml > {net}/definition.xml",
        f"mkdir {mnt}/other",
        f"mkdir {net}/ports/p1",
        f"rmdir {net}",
        f"touch {net}/scratch",
    ):
        r = bash(script, user="nobody")
        assert r.returncode != 0, script
        assert "Permission denied" in r.stderr, (script, r.stderr)
    assert (net / "active").read_text() == "0\n"
    assert "other" not in os.listdir(mnt)


def test_group_option(daemon_factory: object) -> None:
    d: Daemon = daemon_factory(["--group", "65534"])  # type: ignore[operator]
    d.start()
    mnt = d.mnt
    define(mnt, "testA", virtual_xml("testA", "nfsbr0"))
    net = mnt / "testA"
    assert mode(mnt) == "drwxrwxr-x"
    assert mode(net / "active") == "-rw-rw-r--"
    assert mode(net / "uuid") == "-r--r--r--"
    assert os.stat(net / "active").st_gid == 65534
    # fixed directories, where nothing can be created, are 0755
    r = bash(
        f"mkdir {mnt}/pgn && echo \"<network><bridge name='nfsbr8'/>"
        f"<portgroup name='pg1'/></network>\" > {mnt}/pgn/definition.xml"
    )
    assert r.returncode == 0, r.stderr
    assert mode(mnt / "pgn" / "portgroups" / "pg1") == "drwxr-xr-x"
    assert mode(mnt / "pgn" / "portgroups") == "drwxr-xr-x"
    assert mode(mnt / "pgn" / "ports") == "drwxrwxr-x"
    assert mode(mnt / "pgn") == "drwxrwxr-x"
    # a member of the group may write; anyone else may not
    member = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    import subprocess

    r = subprocess.run(
        member + ["bash", "-c", f"echo 1 > {net}/autostart"], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    assert (net / "autostart").read_text() == "1\n"
    r = subprocess.run(
        [
            "setpriv",
            "--reuid=65533",
            "--regid=65533",
            "--clear-groups",
            "bash",
            "-c",
            f"echo 0 > {net}/autostart",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 1 and "Permission denied" in r.stderr


def test_names_follow_the_core_rules(mounted: Daemon) -> None:
    mnt = mounted.mnt
    # the state directory's own marker is not a network name
    for bad in ("autostarted", ".x", "..", "a\nb"):
        r = bash(f"mkdir '{mnt}/{bad}'")
        assert r.returncode == 1, bad
        assert "Invalid argument" in r.stderr or "File exists" in r.stderr, (bad, r.stderr)
    assert os.listdir(mnt) == ["events"]
    # a network called "events" (saved in the config directory) is listed once
    (mounted.config_dir / "events.xml").write_text(virtual_xml("events", "nfsbr9"))
    assert mounted.proc is not None
    define(mnt, "testA", virtual_xml("testA", "nfsbr0"))
    mounted.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: bash(f"ls {mnt}").stdout.split() == ["events", "testA"], "reload")
    assert os.listdir(mnt).count("events") == 1
    assert not (mnt / "events").is_dir()


def test_documents_opened_without_truncation_behave_like_files(mounted: Daemon) -> None:
    mnt = mounted.mnt
    define(mnt, "testA", virtual_xml("testA", "nfsbr0"))
    d = mnt / "testA" / "definition.xml"
    before = d.read_text()
    # `>>` appends to what the document holds: a trailing comment is harmless
    r = bash(f"echo '<!-- note -->' >> {d}")
    assert r.returncode == 0, r.stderr
    assert d.read_text() == before
    # read-write without writing acts on nothing
    with open(d, "r+b") as f:
        assert f.read() == before.encode()
    assert d.read_text() == before
    # in place, shorter: the rest is truncated by the writer, as on any file
    text = before.replace("stp='on'", "stp='off'")
    with open(d, "r+") as f:
        f.write(text)
        f.truncate()
    assert "stp='off'" in d.read_text()


def test_mknod(mounted: Daemon) -> None:
    mnt = mounted.mnt
    define(mnt, "testA", virtual_xml("testA", "nfsbr0"))
    net = mnt / "testA"
    os.mknod(net / "scratch1", stat.S_IFREG | 0o600)
    assert "scratch1" in os.listdir(net)
    assert os.stat(net / "scratch1").st_size == 0
    os.unlink(net / "scratch1")
    assert "scratch1" not in os.listdir(net)
    for name, kind, code in (
        ("fifo", stat.S_IFIFO, errno.EPERM),
        ("uuid", stat.S_IFREG, errno.EEXIST),
    ):
        try:
            os.mknod(net / name, kind | 0o600)
        except OSError as e:
            assert e.errno == code, (name, e)
        else:
            raise AssertionError(f"mknod {name} succeeded")
    try:
        os.mknod(mnt / "top", stat.S_IFREG | 0o600)
    except OSError as e:
        assert e.errno == errno.EPERM
    else:
        raise AssertionError("mknod at the top succeeded")


def test_directory_made_again_after_rmdir_is_usable(mounted: Daemon) -> None:
    """The kernel marks a removed directory dead: one made again under the
    same name must be a new inode, whatever removed the first (the user, or
    the daemon when the core dropped the network)."""
    mnt = mounted.mnt
    for _ in range(5):
        r = bash(
            f"mkdir {mnt}/again && echo '<network><bad/>' > {mnt}/again/definition.xml; "
            f"rmdir {mnt}/again && mkdir {mnt}/again && ls {mnt}/again && "
            f"cat {mnt}/again/error && rmdir {mnt}/again"
        )
        assert r.returncode == 0, r.stderr
        assert r.stdout.split() == ["definition.xml", "error"], r.stdout
    define(mnt, "testA", OVS_TESTA)
    r = bash(
        f"echo 1 > {mnt}/testA/active && mkdir {mnt}/testA/ports/vm1 && "
        f"rmdir {mnt}/testA/ports/vm1 && mkdir {mnt}/testA/ports/vm1 && "
        f"ls {mnt}/testA/ports/vm1"
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["port.xml"]


def test_no_stale_entries_right_after_a_change(mounted: Daemon) -> None:
    mnt = mounted.mnt
    define(mnt, "testA", OVS_TESTA)
    guest = (
        "<interface type='network'><source network='testA' portgroup='sales'/>"
        "<virtualport><parameters interfaceid='09b11c53-8b5c-4eeb-8f00-d84eaa0aaa4f'/>"
        "</virtualport></interface>"
    )
    r = bash(
        f"cd {mnt}/testA && echo 1 > active && mkdir ports/vm1 && "
        f'echo "{guest}" > ports/vm1/port.xml && '
        "cat status.xml ports/vm1/virtualport.xml portgroups/sales/default > /dev/null && "
        "echo 0 > active && "
        "for f in status.xml ports/vm1 ports/vm1/virtualport.xml; do [ -e $f ] && echo $f; done; "
        "true"
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout == ""
    # a redefinition that drops a portgroup
    text = (mnt / "testA" / "definition.xml").read_text()
    start = text.index("  <portgroup name='sales'")
    end = text.index("</portgroup>", start) + len("</portgroup>\n")
    (mnt / "testA" / "definition.xml").write_text(text[:start] + text[end:])
    assert not (mnt / "testA" / "portgroups" / "sales").exists()


def test_sighup_adopts_a_pending_directory(mounted: Daemon) -> None:
    """A config file put by hand for a mkdir'd, still undefined directory:
    after SIGHUP the directory is an ordinary network directory."""
    mnt = mounted.mnt
    assert mounted.proc is not None
    r = bash(f"mkdir {mnt}/qa3q && echo '<network><bad/>' > {mnt}/qa3q/definition.xml")
    assert r.returncode == 0, r.stderr
    (mounted.config_dir / "qa3q.xml").write_text(virtual_xml("qa3q", "nfsbr7"))
    ev = EventReader(mnt)
    try:
        mounted.proc.send_signal(signal.SIGHUP)
        ev.wait("qa3q", "defined")
        net = mnt / "qa3q"
        assert (net / "active").read_text() == "0\n"
        assert (net / "autostart").read_text() == "0\n"
        uuid = (net / "uuid").read_text().strip()
        assert len(uuid) == 36
        assert "<name>qa3q</name>" in (net / "definition.xml").read_text()
        assert sorted(os.listdir(net)) == sorted(
            ["definition.xml", "active", "autostart", "uuid", "error", "leases", "firewall"]
            + ["portgroups", "ports"]
        )
        # rmdir undefines it
        r = bash(f"rmdir {net}")
        assert r.returncode == 0, r.stderr
        ev.wait("qa3q", "undefined")
        assert not (mounted.config_dir / "qa3q.xml").exists()
        assert "qa3q" not in os.listdir(mnt)
    finally:
        ev.close()


def test_small_contract_details(mounted: Daemon) -> None:
    mnt = mounted.mnt
    define(mnt, "testA", virtual_xml("testA", "nfsbr0"))
    net = mnt / "testA"
    # a refused value is shown unambiguously
    fd = os.open(net / "active", os.O_WRONLY)
    try:
        os.write(fd, b"1\n\n")  # one write(2)
    except OSError as e:
        assert e.errno == errno.EINVAL
    else:
        raise AssertionError("accepted")
    finally:
        os.close(fd)
    assert (net / "active").read_text() == "0\n"
    assert (net / "error").read_text() == "invalid value for active: '1\\n\\n' (write 0 or 1)\n"
    # a directory without a definition has no `active`
    r = bash(f"mkdir {mnt}/g && echo 1 > {mnt}/g/active")
    assert r.returncode == 1 and "No such file or directory" in r.stderr, r.stderr
    assert (mnt / "g" / "error").read_text() == "network 'g' has no definition yet\n"
    assert sorted(os.listdir(mnt / "g")) == ["definition.xml", "error"]
    # symlink and link are changes of structure the tree does not allow
    for call in (
        lambda: os.symlink("x", net / "sym"),
        lambda: os.link(net / "uuid", net / "hard"),
    ):
        try:
            call()
        except OSError as e:
            assert e.errno == errno.EPERM, e
        else:
            raise AssertionError("succeeded")
    # status.xml appears with the time it appeared, not the mount's
    before = time.time_ns()
    assert bash(f"echo 1 > {net}/active").returncode == 0
    assert os.stat(net / "status.xml").st_mtime_ns >= before
