"""What needs no libfuse: `netfs validate` and the pyfuse3-free modules of the
filesystem adapter run where `import pyfuse3` fails."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.test_cli_validate import BAD, BAD_MSG, GOOD, GOOD_OUT

# a meta path finder that refuses pyfuse3 (as on a machine without libfuse),
# then the program; the proof that the blocker works is part of the run
BLOCK = """
import sys
class _NoFuse:
    def find_spec(self, name, path=None, target=None):
        if name == "pyfuse3" or name.startswith("pyfuse3."):
            raise ImportError("No module named 'pyfuse3' (blocked by the test)")
        return None
sys.meta_path.insert(0, _NoFuse())
try:
    import pyfuse3  # noqa: F401
except ImportError:
    pass
else:
    raise SystemExit("the blocker did not block pyfuse3")
"""


def run_blocked(code: str, *, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-c", BLOCK + code],
        input=stdin,
        capture_output=True,
        timeout=60,
        cwd=Path(__file__).resolve().parent.parent,
    )


def test_validate_runs_without_pyfuse3(tmp_path: Path) -> None:
    good = tmp_path / "lab.xml"
    good.write_text(GOOD)
    code = f"import sys; from netfs.cli import main; sys.exit(main(['validate', {str(good)!r}]))"
    p = run_blocked(code)
    assert p.returncode == 0, p.stderr.decode()
    assert p.stdout.decode() == GOOD_OUT
    # a refused document is still refused with libvirt's message
    code = "import sys; from netfs.cli import main; sys.exit(main(['validate', '-']))"
    p = run_blocked(code, stdin=BAD.encode())
    assert p.returncode == 1
    assert BAD_MSG in p.stderr.decode()
    assert "pyfuse3" not in p.stderr.decode()


def test_validate_loads_no_daemon(tmp_path: Path) -> None:
    """A pure-model command loads neither the daemon nor trio (they were
    loaded for the mount subcommand's help: ~90 ms more per run)."""
    good = tmp_path / "lab.xml"
    good.write_text(GOOD)
    code = (
        f"import sys; from netfs.cli import main; status = main(['validate', {str(good)!r}])\n"
        "loaded = sorted(m for m in ('trio', 'netfs.daemon', 'pyroute2') if m in sys.modules)\n"
        "sys.exit(f'loaded: {loaded}' if loaded else status)"
    )
    p = run_blocked(code)
    assert p.returncode == 0, p.stderr.decode()


def test_mount_hygiene_and_help_import_without_pyfuse3() -> None:
    code = (
        "import netfs.fs, netfs.fs.mounts, netfs.fs.helper, netfs.daemon\n"
        "import netfs.fs.tree, netfs.fs.space, netfs.fs.acts, netfs.fs.handles\n"
        "import netfs.fs.notifier, netfs.fs.scratch, netfs.fs.editors\n"
        "from netfs.cli import build_parser\n"
        "build_parser()\n"
        "assert 'pyfuse3' not in sys.modules\n"
        "print('ok')\n"
    )
    p = run_blocked(code)
    assert p.returncode == 0, p.stderr.decode()
    assert p.stdout == b"ok\n"


def test_the_blocker_blocks() -> None:
    """The test above would prove nothing if pyfuse3 still imported."""
    p = run_blocked("import netfs.fs.ops")
    assert p.returncode != 0
    assert b"blocked by the test" in p.stderr
