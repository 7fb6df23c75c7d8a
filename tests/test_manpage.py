"""man/netfs.8: groff renders it without a warning, and it covers the contract."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

MANPAGE = Path(__file__).resolve().parent.parent / "man" / "netfs.8"

# Every path of the tree of ../shared/design/filesystem.md, as the page writes it.
TREE_PATHS = [
    "events",
    "NAME/",
    "NAME/definition.xml",
    "NAME/active",
    "NAME/autostart",
    "NAME/status.xml",
    "NAME/uuid",
    "NAME/error",
    "NAME/portgroups/",
    "NAME/portgroups/PG/default",
    "NAME/portgroups/PG/virtualport.xml",
    "NAME/ports/",
    "NAME/ports/P/",
    "NAME/ports/P/port.xml",
    "NAME/ports/P/virtualport.xml",
]

MOUNT_OPTIONS = [
    "--config-dir",
    "--state-dir",
    "--netns",
    "--group",
    "-f",
    "-o",
    "config_dir=",
    "state_dir=",
    "netns=",
    "group=",
]

ERRNOS = ["EINVAL", "EADDRINUSE", "EBUSY", "EEXIST", "ENOENT", "EACCES", "EIO", "ENETDOWN"]

EVENT_WORDS = [
    "defined",
    "undefined",
    "started",
    "stopped",
    "updated",
    "port-created",
    "port-deleted",
]

needs_groff = pytest.mark.skipif(shutil.which("groff") is None, reason="groff not installed")


def _groff(*extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["groff", "-man", "-ww", "-Tutf8", *extra, str(MANPAGE)],
        capture_output=True,
        text=True,
        check=False,
    )


def _rendered_text() -> str:
    """The page as a reader sees it, with formatting and line breaks undone."""
    # -P-cbou: plain text, no overstriking; a wide line so that nothing wraps
    # in the middle of a path.
    out = _groff("-rLL=300n", "-P-cbou")
    assert out.returncode == 0, out.stderr
    text = out.stdout.replace("\u2010", "-").replace("\u2212", "-")
    text = re.sub(r"-\n\s*", "-", text)  # a break after a hyphen
    return re.sub(r"\s+", " ", text)


@needs_groff
def test_groff_prints_no_warning() -> None:
    out = _groff()
    assert out.returncode == 0
    assert out.stderr == ""
    assert "NETFS(8)" in out.stdout


@needs_groff
def test_every_path_of_the_tree_is_documented() -> None:
    text = _rendered_text()
    missing = [p for p in TREE_PATHS if p not in text]
    assert missing == []


@needs_groff
def test_the_tree_diagram_names_every_file() -> None:
    text = _rendered_text()
    section = text[text.index("THE TREE") : text.index("In the descriptions below")]
    for name in [
        "events",
        "definition.xml",
        "active",
        "autostart",
        "status.xml",
        "uuid",
        "error",
        "portgroups/",
        "default",
        "virtualport.xml",
        "ports/",
        "port.xml",
    ]:
        assert name in section


@needs_groff
def test_every_mount_option_is_documented() -> None:
    text = _rendered_text()
    synopsis = text[text.index("SYNOPSIS") : text.index("DESCRIPTION")]
    for opt in ["--config-dir", "--state-dir", "--netns", "--group", "-f", "-o"]:
        assert opt in synopsis
    assert "netfs SOURCE MOUNTPOINT -o OPTS" in synopsis
    assert "netfs validate FILE" in synopsis
    options = text[text.index("OPTIONS") : text.index("EXIT STATUS")]
    for opt in MOUNT_OPTIONS:
        assert opt in options
    assert "/etc/netfs/networks" in options
    assert "/run/netfs/networks" in options


@needs_groff
def test_errnos_events_and_signals_are_documented() -> None:
    text = _rendered_text()
    for name in ERRNOS:
        assert name in text
    for word in EVENT_WORDS:
        assert word in text
    assert "2026-11-22T10:15:02.118+00:00 testA started" in text
    assert "testA port-created vm1" in text
    for sig in ["SIGTERM", "SIGINT", "SIGHUP"]:
        assert sig in text
    for section in ["STATE ON DISK", "RECOVERY", "ACCESS", "EXAMPLES", "SEE ALSO"]:
        assert section in text
    assert "netfs /net fuse.netfs defaults,netns=lab 0 0" in text
    assert "netfs:UUID" in text
