"""mount-helper/: install.sh, mount.fuse.netfs (also installed as
mount.netfs) and the unit.

The install tests write into a temporary root only.  The mount tests run a
real daemon in a namespace the test creates; `mount -t fuse.netfs` and
`mount -t netfs` themselves run in a private mount namespace where /usr/sbin is overlaid with the
helper, so nothing is installed on the host.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES, fd_targets, ip

TOP = Path(__file__).resolve().parent.parent
HELPER_DIR = TOP / "mount-helper"
INSTALL = HELPER_DIR / "install.sh"
HELPER = HELPER_DIR / "mount.fuse.netfs"
UNIT = HELPER_DIR / "netfs.service"


def sh(*args: str | os.PathLike[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args],
        capture_output=True,
        text=True,
        check=False,
        **kw,  # type: ignore[call-overload]
    )


@pytest.fixture
def recorder(tmp_path: Path) -> Path:
    """A fake netfs that records its arguments, one per line."""
    rec = tmp_path / "fake-netfs"
    rec.write_text(
        "#!/bin/sh\n"
        f"out={tmp_path}/argv\n"
        ': > "$out"\n'
        'for a in "$@"; do printf "%s\\n" "$a" >> "$out"; done\n'
        'printf "PATH=%s\\n" "$PATH" > "$out.env"\n'
    )
    rec.chmod(0o755)
    return rec


@pytest.fixture
def root(tmp_path: Path, recorder: Path) -> Path:
    """The helper installed into a temporary root, used in place."""
    r = tmp_path / "root"
    out = install(r, recorder)
    assert out.returncode == 0, out.stderr
    return r


def install(r: Path, netfs: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return sh(
        "sh",
        INSTALL,
        "--netfs",
        netfs,
        "--prefix",
        r / "usr",
        "--sbin-dir",
        r / "sbin",
        "--unit-dir",
        r / "etc/systemd/system",
        *extra,
    )


def recorded(tmp_path: Path) -> list[str]:
    return (tmp_path / "argv").read_text().splitlines()


# -- the scripts themselves --------------------------------------------------


@pytest.mark.parametrize("script", [INSTALL, HELPER])
def test_scripts_parse(script: Path) -> None:
    assert sh("sh", "-n", script).returncode == 0
    if shutil.which("dash"):
        assert sh("dash", "-n", script).returncode == 0
    if shutil.which("shellcheck"):
        out = sh("shellcheck", "-s", "sh", script)
        assert out.returncode == 0, out.stdout


def test_unit_file() -> None:
    text = UNIT.read_text()
    lines = {
        line.split("=", 1)[0]: line.split("=", 1)[1] for line in text.splitlines() if "=" in line
    }
    assert lines["Type"] in ("forking", "notify")
    assert lines["ExecStart"].startswith("/usr/sbin/netfs mount /net")
    assert lines["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert lines["Restart"] == "on-failure"
    assert lines["Documentation"] == "man:netfs(8)"
    assert "[Install]" in text


# -- install.sh ----------------------------------------------------------------


def test_install_writes_everything(root: Path, recorder: Path) -> None:
    wrapper = root / "usr/sbin/netfs"
    helper = root / "sbin/mount.fuse.netfs"
    # the same helper under the name mount(8) runs for `-t netfs`
    short = root / "sbin/mount.netfs"
    assert os.access(short, os.X_OK)
    assert short.read_bytes() == helper.read_bytes()
    unit = root / "etc/systemd/system/netfs.service"
    manpage = root / "usr/share/man/man8/netfs.8"
    for f in (wrapper, helper):
        assert os.access(f, os.X_OK)
    assert unit.is_file() and manpage.is_file()
    assert str(recorder) in wrapper.read_text()
    assert f"NETFS='{wrapper}'" in helper.read_text()
    assert f"ExecStart={wrapper} mount /net" in unit.read_text()
    assert manpage.read_bytes() == (TOP / "man/netfs.8").read_bytes()


def test_install_is_idempotent(tmp_path: Path, root: Path, recorder: Path) -> None:
    def snapshot() -> dict[str, tuple[bytes, int]]:
        return {
            str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mode)
            for p in root.rglob("*")
            if p.is_file()
        }

    before = snapshot()
    out = install(root, recorder)
    assert out.returncode == 0, out.stderr
    assert snapshot() == before
    assert not [p for p in root.rglob("*.tmp.*")]


def test_dest_root_stages_with_final_paths(tmp_path: Path, recorder: Path) -> None:
    stage = tmp_path / "stage"
    out = sh("sh", INSTALL, "--netfs", recorder, "--dest-root", stage)
    assert out.returncode == 0, out.stderr
    helper = stage / "sbin/mount.fuse.netfs"
    assert "NETFS='/usr/sbin/netfs'" in helper.read_text()
    assert "NETFS='/usr/sbin/netfs'" in (stage / "sbin/mount.netfs").read_text()
    assert (
        "ExecStart=/usr/sbin/netfs mount /net"
        in (stage / "etc/systemd/system/netfs.service").read_text()
    )
    assert str(recorder) in (stage / "usr/sbin/netfs").read_text()
    out = sh("sh", INSTALL, "--dest-root", stage, "--uninstall")
    assert out.returncode == 0, out.stderr
    assert [p for p in stage.rglob("*") if p.is_file()] == []


def test_install_refuses_bad_arguments(tmp_path: Path) -> None:
    assert sh("sh", INSTALL, "--bogus").returncode != 0
    assert sh("sh", INSTALL, "--netfs", tmp_path / "missing", "--dest-root", tmp_path).returncode
    assert sh("sh", INSTALL, "--prefix", "relative", "--dest-root", tmp_path).returncode


# -- mount.fuse.netfs: what mount(8) passes, what netfs gets ------------------


def run_helper(
    root: Path, *args: str, name: str = "mount.fuse.netfs"
) -> subprocess.CompletedProcess[str]:
    # As mount(8) and mount.fuse run it: no environment at all.
    return sh("env", "-i", root / "sbin" / name, *args)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["netfs", "/net", "-o", "rw,netns=lab"],
            ["netfs", "/net", "-o", "rw,netns=lab"],
        ),
        (
            # fstab `defaults,netns=lab,nofail` with mount's own flags
            [
                "netfs",
                "/net",
                "-n",
                "-o",
                "rw,defaults,netns=lab,nofail,_netdev",
                "-t",
                "fuse.netfs",
            ],
            ["netfs", "/net", "-o", "rw,netns=lab"],
        ),
        (
            ["netfs", "/mnt/a b", "-o", "group=netadm", "-o", "config_dir=/x,x-systemd.automount"],
            ["netfs", "/mnt/a b", "-o", "group=netadm,config_dir=/x"],
        ),
        (
            ["netfs", "/net", "-sr", "-ostate_dir=/s"],
            ["netfs", "/net", "-o", "ro,state_dir=/s"],
        ),
        (
            ["netfs", "/net"],
            ["mount", "/net"],
        ),
        (
            ["netfs", "/net", "-o", "defaults,noauto,user"],
            ["mount", "/net"],
        ),
    ],
)
def test_helper_passes_netfs_its_options(
    tmp_path: Path, root: Path, args: list[str], expected: list[str]
) -> None:
    out = run_helper(root, *args)
    assert out.returncode == 0, out.stderr
    assert recorded(tmp_path) == expected
    # the wrapper gives the daemon a PATH even though mount(8) gave none
    assert "/usr/sbin" in (tmp_path / "argv.env").read_text()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        # `mount -t netfs none /net -o netns=lab` (no -t: the type has no dot)
        (["none", "/net", "-o", "rw,netns=lab"], ["none", "/net", "-o", "rw,netns=lab"]),
        # fstab `none /net netfs defaults,netns=lab,nofail 0 0`
        (
            ["none", "/net", "-n", "-o", "rw,defaults,netns=lab,nofail"],
            ["none", "/net", "-o", "rw,netns=lab"],
        ),
        (["none", "/net"], ["mount", "/net"]),
    ],
)
def test_short_name_helper_passes_netfs_its_options(
    tmp_path: Path, root: Path, args: list[str], expected: list[str]
) -> None:
    out = run_helper(root, *args, name="mount.netfs")
    assert out.returncode == 0, out.stderr
    assert recorded(tmp_path) == expected


def test_short_name_helper_goes_by_its_name(tmp_path: Path, root: Path) -> None:
    out = run_helper(root, "none", "/net", "-f", "-o", "netns=lab", name="mount.netfs")
    assert out.returncode == 0
    assert out.stderr.startswith("mount.netfs: ") and "-o netns=lab" in out.stderr
    out = run_helper(root, "none", name="mount.netfs")
    assert out.returncode == 1 and out.stderr.startswith("usage: mount.netfs ")
    assert not (tmp_path / "argv").exists()


def test_helper_fake_mount_runs_nothing(tmp_path: Path, root: Path) -> None:
    out = run_helper(root, "netfs", "/net", "-f", "-o", "netns=lab")
    assert out.returncode == 0
    assert "-o netns=lab" in out.stderr
    assert not (tmp_path / "argv").exists()


@pytest.mark.parametrize(
    "args",
    [[], ["netfs"], ["-o", "x", "/net"], ["netfs", "/net", "-o"], ["netfs", "/net", "extra"]],
)
def test_helper_refuses_bad_usage(tmp_path: Path, root: Path, args: list[str]) -> None:
    out = run_helper(root, *args)
    assert out.returncode == 1
    assert "usage" in out.stderr
    assert not (tmp_path / "argv").exists()


def test_helper_refuses_another_type(tmp_path: Path, root: Path) -> None:
    out = run_helper(root, "netfs", "/net", "-t", "fuse.other")
    assert out.returncode == 1
    assert not (tmp_path / "argv").exists()


def test_helper_without_netfs_says_so(tmp_path: Path) -> None:
    r = tmp_path / "r"
    (r / "sbin").mkdir(parents=True)
    text = HELPER.read_text().replace("NETFS=/usr/sbin/netfs", f"NETFS={r}/nothing")
    (r / "sbin/mount.fuse.netfs").write_text(text)
    out = sh("env", "-i", "sh", r / "sbin/mount.fuse.netfs", "netfs", "/net")
    assert out.returncode == 1
    assert "install.sh" in out.stderr


def test_wrapper_keeps_arguments(tmp_path: Path, root: Path) -> None:
    out = sh("env", "-i", root / "usr/sbin/netfs", "a b", "", "*", "-o", "x=$y")
    assert out.returncode == 0
    assert recorded(tmp_path) == ["a b", "", "*", "-o", "x=$y"]


# -- a real mount ----------------------------------------------------------------


def _daemon_available() -> bool:
    out = sh(sys.executable, "-m", "netfs.cli", "mount", "--help", cwd=TOP)
    return out.returncode == 0


def _pids_mentioning(marker: str) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            cmdline = (d / "cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline:
            pids.append(int(d.name))
    return pids


def _fuse_mounted(path: Path) -> bool:
    with open("/proc/mounts") as f:
        return any(line.split()[1] == str(path) for line in f)


needs_daemon = pytest.mark.skipif(
    os.geteuid() != 0 or not Path("/dev/fuse").exists(), reason="needs root and /dev/fuse"
)


@pytest.fixture
def mount_env(tmp_path: Path, netns: str) -> Iterator[dict[str, Path | str]]:
    """Config dir with testA, state dir, mount point, the helper installed
    against the project's netfs; afterwards no daemon and no mount remain."""
    if not _daemon_available():
        pytest.skip("`netfs mount` is not implemented yet")
    netfs = Path(sys.executable).parent / "netfs"
    if not netfs.exists():
        pytest.skip(f"{netfs} not installed")
    r = tmp_path / "root"
    out = install(r, netfs, "--no-systemd")
    assert out.returncode == 0, out.stderr
    conf = tmp_path / "conf"
    state = tmp_path / "state"
    mnt = tmp_path / "mnt"
    for d in (conf, state, mnt):
        d.mkdir()
    shutil.copy(EXAMPLES / "testA.xml", conf / "testA.xml")
    env: dict[str, Path | str] = {
        "root": r,
        "conf": conf,
        "state": state,
        "mnt": mnt,
        "netns": netns,
        "opts": f"netns={netns},config_dir={conf},state_dir={state}",
    }
    try:
        yield env
    finally:
        if _fuse_mounted(mnt):
            sh("umount", "-l", mnt)
        deadline = time.monotonic() + 5
        while _pids_mentioning(str(mnt)) and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in _pids_mentioning(str(mnt)):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if _fuse_mounted(mnt):
            sh("umount", "-l", mnt)
        ip("link", "del", "testA0", netns=netns, check=False)


def _private_sh(script: str) -> subprocess.CompletedProcess[str]:
    """`sh -c script` in a private mount namespace, its output to a pipe
    (so the daemons `mount` leaves behind must keep none of the caller's
    descriptors; the timeout only bounds a hang)."""
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        check=False,
        timeout=120,
    )


def _wait_gone(marker: str) -> bool:
    deadline = time.monotonic() + 10
    while _pids_mentioning(marker):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@needs_daemon
@pytest.mark.kernel
@pytest.mark.slow
def test_helper_mounts_like_mount_fuse_does(mount_env: dict[str, Path | str]) -> None:
    """Run the helper the way mount(8) runs it (no environment), use the
    mount, unmount it: the daemon is gone."""
    mnt = mount_env["mnt"]
    netns = str(mount_env["netns"])
    assert isinstance(mnt, Path)
    # Output to pipes: the daemon the helper leaves behind keeps none of
    # them, so run() returns once the mount is ready (the timeout only
    # bounds a hang).
    done = subprocess.run(
        [
            "env",
            "-i",
            str(Path(mount_env["root"]) / "sbin/mount.fuse.netfs"),
            "netfs",
            str(mnt),
            "-o",
            f"rw,defaults,{mount_env['opts']}",
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert _fuse_mounted(mnt)
    assert "testA" in os.listdir(mnt)
    (mnt / "testA/active").write_text("1\n")
    assert "testA0" in ip("-br", "link", "show", "type", "bridge", netns=netns).stdout
    (mnt / "testA/active").write_text("0\n")
    out = sh("umount", mnt)
    assert out.returncode == 0, out.stderr
    assert not _fuse_mounted(mnt)
    assert _wait_gone(str(mnt))


@needs_daemon
@pytest.mark.kernel
@pytest.mark.slow
def test_helper_daemon_keeps_no_inherited_descriptor(
    tmp_path: Path, mount_env: dict[str, Path | str]
) -> None:
    """Descriptors above stderr that mount(8)'s caller left open reach the
    daemon through the helper and the wrapper; the detached daemon closes
    them: a pipe on fd 9 sees EOF once the mount is ready (the timeout only
    bounds a hang) and a file open on fd 7 is not held."""
    mnt = mount_env["mnt"]
    assert isinstance(mnt, Path)
    held = tmp_path / "held"
    helper = Path(mount_env["root"]) / "sbin/mount.fuse.netfs"
    q = shlex.quote
    script = (
        f"exec 7>{q(str(held))}\n"
        f"{{ env -i {q(str(helper))} netfs {q(str(mnt))} -o {q(str(mount_env['opts']))} 2>&1;"
        " echo status=$?; } 9>&1 | cat"
    )
    done = subprocess.run(
        ["bash", "-c", script],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "status=0\n", ""), done
    assert _fuse_mounted(mnt)
    pids = _pids_mentioning(str(mnt))
    assert len(pids) == 1, pids
    targets = fd_targets(pids[0])
    assert str(held) not in targets, targets
    assert "testA" in os.listdir(mnt)
    out = sh("umount", mnt)
    assert out.returncode == 0, out.stderr
    assert _wait_gone(str(mnt))


@needs_daemon
@pytest.mark.kernel
@pytest.mark.slow
@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare")
def test_mount_t_fuse_netfs_and_fstab(tmp_path: Path, mount_env: dict[str, Path | str]) -> None:
    """`mount -t fuse.netfs` and an fstab line, for real, in a private mount
    namespace whose /usr/sbin is overlaid with the installed helper."""
    mnt = mount_env["mnt"]
    netns = str(mount_env["netns"])
    root = Path(mount_env["root"])
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    shutil.copy(root / "sbin/mount.fuse.netfs", overlay / "mount.fuse.netfs")
    fstab = tmp_path / "fstab"
    fstab.write_text(f"netfs {mnt} fuse.netfs defaults,{mount_env['opts']} 0 0\n")
    script = f"""
set -e
mount -t overlay overlay -o lowerdir={overlay}:/usr/sbin /usr/sbin
trap 'umount -l {mnt} 2>/dev/null || true' EXIT
mount -t fuse.netfs netfs {mnt} -o {mount_env["opts"]}
echo "first: $(cat {mnt}/testA/uuid)"
echo 1 > {mnt}/testA/active
ip -n {netns} -br link show type bridge
echo 0 > {mnt}/testA/active
umount {mnt}
mount -T {fstab} {mnt}
echo "fstab: $(ls {mnt})"
umount {mnt}
trap - EXIT
"""
    done = _private_sh(script)
    stdout = done.stdout
    assert done.returncode == 0, stdout
    assert "first: " in stdout and len(stdout.split("first: ")[1].split()[0]) == 36
    assert "testA0" in stdout
    assert "fstab: " in stdout and "testA" in stdout.split("fstab: ")[1]
    assert _wait_gone(str(mnt))


@needs_daemon
@pytest.mark.kernel
@pytest.mark.slow
@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare")
def test_mount_t_netfs_and_fstab(tmp_path: Path, mount_env: dict[str, Path | str]) -> None:
    """`mount -t netfs none DIR` and an fstab line of type netfs, for real, in
    a private mount namespace whose /usr/sbin (/sbin links to it here; mount(8)
    looks in /sbin) is overlaid with the helper installed as mount.netfs
    only; `umount` stops each daemon, which kept no descriptor of its
    caller's."""
    mnt = mount_env["mnt"]
    netns = str(mount_env["netns"])
    root = Path(mount_env["root"])
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    shutil.copy(root / "sbin/mount.netfs", overlay / "mount.netfs")
    fstab = tmp_path / "fstab"
    fstab.write_text(f"none {mnt} netfs defaults,{mount_env['opts']} 0 0\n")
    # netf[s]: the pattern must not match this script's own command line
    daemon = f"bin/netf[s] none {mnt} "
    script = f"""
set -e
mount -t overlay overlay -o lowerdir={overlay}:/usr/sbin /usr/sbin
trap 'umount -l {mnt} 2>/dev/null || true' EXIT
gone() {{
    i=0
    while kill -0 "$1" 2>/dev/null; do
        i=$((i + 1))
        [ $i -lt 300 ] || return 1
        sleep 0.1
    done
}}
exec 7>{tmp_path}/held
mount -t netfs none {mnt} -o {mount_env["opts"]}
grep " {mnt} " /proc/self/mounts
pid=$(pgrep -f -- "{daemon}")
# the caller's fd 7 reached the daemon through mount(8): it closed it
ls -l /proc/$pid/fd | grep -q "{tmp_path}/held" || echo "fd 7 not held"
echo "first: $(cat {mnt}/testA/uuid)"
echo 1 > {mnt}/testA/active
ip -n {netns} -br link show type bridge
echo 0 > {mnt}/testA/active
umount {mnt}
gone "$pid" && echo "first daemon gone"
mount -T {fstab} {mnt}
pid=$(pgrep -f -- "{daemon}")
echo "fstab: $(ls {mnt})"
umount {mnt}
gone "$pid" && echo "fstab daemon gone"
trap - EXIT
"""
    done = _private_sh(script)
    stdout = done.stdout
    assert done.returncode == 0, stdout
    assert f" {mnt} fuse.netfs " in stdout
    assert "first: " in stdout and len(stdout.split("first: ")[1].split()[0]) == 36
    assert "testA0" in stdout
    assert "first daemon gone" in stdout
    assert "fd 7 not held" in stdout
    assert "fstab: " in stdout and "testA" in stdout.split("fstab: ")[1]
    assert "fstab daemon gone" in stdout
    assert _wait_gone(str(mnt))


# -- from the shell session (tests/test_user_session.py) -------------------------


def test_uninstalled_helper_fake_mode_names_what_it_would_run() -> None:
    """mount -f through the helper of the checkout: the default netfs path
    and only netfs's own options (defaults, _netdev, nofail, x-* dropped)."""
    r = sh("sh", HELPER, "netfs", "/net", "-f", "-o", "defaults,_netdev,netns=lab,nofail,x-a=b")
    assert r.returncode == 0
    assert r.stderr.strip() == "mount.fuse.netfs: /usr/sbin/netfs netfs /net -o netns=lab"


def test_install_defaults_to_the_checkouts_netfs(tmp_path: Path) -> None:
    """Without --netfs, the wrapper runs the netfs of the checkout's .venv."""
    stage = tmp_path / "stage"
    r = sh("sh", INSTALL, "--dest-root", stage)
    assert r.returncode == 0, r.stderr
    assert str(TOP / ".venv" / "bin" / "netfs") in (stage / "usr/sbin/netfs").read_text()


def test_uninstall_no_systemd_keeps_the_unit(tmp_path: Path) -> None:
    """--no-systemd leaves a unit file that is there (someone else's) alone,
    on install and on uninstall."""
    stage = tmp_path / "stage"
    unit = stage / "etc/systemd/system/netfs.service"
    unit.parent.mkdir(parents=True)
    unit.write_text("[Unit]\nDescription=someone else's\n")
    for extra in ([], ["--uninstall"]):
        r = sh("sh", INSTALL, "--dest-root", stage, "--no-systemd", *extra)
        assert r.returncode == 0, r.stderr
    assert unit.read_text() == "[Unit]\nDescription=someone else's\n"
