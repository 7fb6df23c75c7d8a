"""man/netfs.8: groff renders it without a warning, and it covers the contract."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
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
    "NAME/leases",
    "NAME/firewall",
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

# The contract's table, then what the implementation adds (netfs/fs.py, core.py).
ERRNOS = [
    "EINVAL",
    "EADDRINUSE",
    "EBUSY",
    "EEXIST",
    "ENOENT",
    "EACCES",
    "EIO",
    "ENETDOWN",
    "EPERM",
    "EINTR",
    "EAGAIN",
    "ESPIPE",
    "EFBIG",
    "EOPNOTSUPP",
]

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


def _sections() -> dict[str, str]:
    """The rendered page by section (.SH): title -> text, as _rendered_text."""
    out = _groff("-rLL=300n", "-P-cbou")
    assert out.returncode == 0, out.stderr
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in out.stdout.splitlines():
        if line and not line[0].isspace() and line.upper() == line and "(8)" not in line:
            current = sections.setdefault(line.strip(), [])
        elif current is not None:
            current.append(line)
    result = {}
    for title, lines in sections.items():
        text = "\n".join(lines).replace("\u2010", "-").replace("\u2212", "-")
        text = re.sub(r"-\n\s*", "-", text)
        result[title] = re.sub(r"\s+", " ", text)
    return result


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
        "leases",
        "firewall",
        "portgroups/",
        "default",
        "virtualport.xml",
        "ports/",
        "port.xml",
    ]:
        assert name in section


@needs_groff
def test_every_entry_the_tree_declares_is_documented() -> None:
    """The page follows netfs.fs.tree: each entry of a network directory
    (fixed files and directories) has its paragraph."""
    from netfs.fs import tree

    text = _rendered_text()
    declared = [f"NAME/{n}{'/' if node.is_dir else ''}" for n, node in tree.NETWORK.entries.items()]
    assert {"NAME/leases", "NAME/firewall"} <= set(declared)
    assert [p for p in declared if p not in text] == []


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


def _mount_help_options() -> list[str]:
    from netfs.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    mount = sub.choices["mount"]
    return [
        opt
        for action in mount._actions
        if not isinstance(action, argparse._HelpAction)
        for opt in action.option_strings
    ]


@needs_groff
def test_every_option_of_mount_help_is_documented() -> None:
    """Whatever `netfs mount --help` lists is in SYNOPSIS and OPTIONS."""
    sections = _sections()
    synopsis, options = sections["SYNOPSIS"], sections["OPTIONS"]
    opts = _mount_help_options()
    assert "--foreground" in opts
    assert [o for o in opts if o not in synopsis] == []
    assert [o for o in opts if o not in options] == []


@needs_groff
def test_mount_option_handling_is_documented() -> None:
    """Own -o options, the dropped mount(8) options and the defaults."""
    from netfs import daemon

    options = _sections()["OPTIONS"]
    for key in daemon.OWN_OPTIONS:
        assert f"{key}=" in options
    for opt in sorted(daemon.IGNORED_OPTIONS):
        assert re.search(rf"(?<![\\w-]){re.escape(opt)}(?![\\w-])", options), opt
    for prefix in daemon.IGNORED_PREFIXES:
        assert prefix in options
    assert "allow_other" in options
    assert "default_permissions" in options
    assert daemon.DEFAULT_CONFIG_DIR in options
    assert daemon.DEFAULT_STATE_DIR in options


@needs_groff
def test_every_event_word_of_the_core_is_documented() -> None:
    """Every kind the core emits that is a line of `events` (the filesystem
    hides the internal ones, such as "error")."""
    from netfs.core import EVENT_KINDS, INTERNAL_KINDS
    from netfs.fs.tree import HIDDEN_EVENTS

    events = _sections()["EVENTS"]
    words = sorted(EVENT_KINDS - HIDDEN_EVENTS - INTERNAL_KINDS)
    assert set(EVENT_WORDS) <= set(words)
    assert [k for k in words if k not in events] == []


@needs_groff
def test_errors_section_lists_every_errno() -> None:
    errors = _sections()["ERRORS"]
    assert [e for e in ERRNOS if e not in errors] == []


@needs_groff
def test_modes_logging_and_libvirt_differences_are_documented() -> None:
    sections = _sections()
    for mode in ["0644", "0664", "0444", "0755", "0775"]:
        assert mode in sections["ACCESS"]
    for word in ["NETFS_LOG", "JOURNAL_STREAM"]:
        assert word in sections["ENVIRONMENT"]
    assert "--log-file" in sections["LOGGING"]
    diff = sections["DIFFERENCES FROM LIBVIRT"]
    for topic in ["reconciliation", "repair", "EADDRINUSE", "<ip>", "<uuid>"]:
        assert topic in diff


def test_no_decision_left_open() -> None:
    """A `DECISION:` comment marks a point not settled in the code yet; once
    the text states the implemented behaviour, the comment goes."""
    lines = MANPAGE.read_text().splitlines()
    decisions = [line for line in lines if line.startswith('.\\" DECISION:')]
    assert decisions == []


@needs_groff
def test_recent_behaviour_is_documented() -> None:
    """Behaviour that changed after the page was first synced: document
    buffers, connection counts, names, recovery, saved generated values."""
    sections = _sections()
    text = _rendered_text()
    # gone: statements the code no longer makes true
    assert "starts from an empty buffer" not in text
    assert "new generated one each time it is loaded" not in text
    assert "host bridge networks are not watched" not in text
    editors = sections["EDITORS AND TOOLS"]
    assert "O_TRUNC" in editors and ">> appends" in editors
    tree = sections["THE TREE"]
    assert "connections='N'" in tree
    assert "interface's source network 'X' does not match network 'NAME'" in tree
    assert "newline" in tree and "autostarted" in tree
    assert "changes nothing: nothing is saved and no event" in tree
    recovery = sections["RECOVERY AND RECONCILIATION"]
    assert "/sys/fs/fuse/connections/N/abort" in recovery
    assert "umount -l MOUNTPOINT" in recovery
    assert "already mounted by a running daemon" in recovery
    assert "however slow it is to answer" in recovery
    assert "host bridge network becomes inactive" in recovery
    state = sections["STATE ON DISK"]
    assert "saved back atomically in canonical form" in state
    notifications = sections["NOTIFICATIONS"]
    assert "never lines of events" in notifications
    assert "without IN_CLOSE_WRITE" in notifications
    options = sections["OPTIONS"]
    assert "/dev/null" in options and "| cat" in options
    assert "cannot open network namespace" in options
    assert "new inode numbers" in text


def test_quoted_messages_match_the_code() -> None:
    """Messages the page quotes are the ones the code produces (wherever in
    the package they are raised)."""
    root = MANPAGE.parent.parent / "netfs"
    code = "\n".join(p.read_text() for p in sorted(root.rglob("*.py")))
    for message in (
        "interface's source network '",
        "does not match network '",
        "is already mounted by a running daemon",
        "cannot open network namespace",
        "network port has no uuid",
    ):
        assert message in code, message


def _netfs_constants(name: str) -> set[object]:
    """The values of the module-level constant `name` across the netfs
    package (one value when it is defined once, however it is re-exported)."""
    import netfs

    values: set[object] = set()
    for info in pkgutil.walk_packages(netfs.__path__, "netfs."):
        module = importlib.import_module(info.name)
        if name in vars(module):
            values.add(vars(module)[name])
    return values


@needs_groff
def test_numbers_and_paths_the_page_promises_are_the_codes() -> None:
    """RECOVERY promises the fusectl path (and no probe timeout: a live
    daemon is never taken over, however slow): the code uses the same."""
    recovery = _sections()["RECOVERY AND RECONCILIATION"]
    assert "does not answer within" not in recovery
    assert "/sys/fs/fuse/connections/N/abort" in recovery
    assert _netfs_constants("FUSECTL") == {"/sys/fs/fuse/connections"}
