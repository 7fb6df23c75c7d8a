"""Issue 9, item 13: `events` lines and the log are unambiguous and safe on a
terminal whatever a name holds. Pure: no root."""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime

import pytest

from netfs.core import Event
from netfs.daemon import _Formatter

T = datetime(2026, 12, 3, 10, 15, 2, 118000, tzinfo=UTC)
FIELD = re.compile(r"(?:[\x21-\x5b\x5d-\x7e]|\\x[0-9a-f]{2})+")


def unescape(field: str) -> str:
    return re.sub(
        rb"\\x([0-9a-f]{2})", lambda m: bytes([int(m.group(1), 16)]), field.encode()
    ).decode()


def parse(line: str) -> tuple[str, str, str, str | None]:
    """A strict reader: TIMESTAMP NAME EVENT [PORT], one space between."""
    fields = line.split(" ")
    assert len(fields) in (3, 4), line
    assert all(FIELD.fullmatch(f) for f in fields), line
    return (
        fields[0],
        unescape(fields[1]),
        fields[2],
        unescape(fields[3]) if len(fields) > 3 else None,
    )


@pytest.mark.parametrize(
    "name",
    ["testA", "testA stopped", "esc\x1b[2J\x1b[31m", "back\\x41slash", "caf\u00e9", "\x85\x7f"],
)
def test_event_line_is_one_parseable_field_per_name(name: str) -> None:
    line = Event(T, name, "started").line()
    assert parse(line) == ("2026-12-03T10:15:02.118+00:00", name, "started", None)
    port_line = Event(T, "net", "port-created", name).line()
    assert parse(port_line)[3] == name
    for text in (line, port_line):
        assert text.isascii() and text.isprintable()


def test_forged_stop_does_not_read_as_a_stop() -> None:
    line = Event(T, "testA stopped", "started").line()
    _, name, kind, _ = parse(line)
    assert (name, kind) == ("testA stopped", "started")
    assert " testA stopped" not in line


def test_plain_names_unchanged() -> None:
    assert Event(T, "testA", "port-created", "vm1").line() == (
        "2026-12-03T10:15:02.118+00:00 testA port-created vm1"
    )


@pytest.mark.parametrize("stamps", [False, True])
def test_log_records_escape_control_characters(stamps: bool) -> None:
    record = logging.LogRecord(
        "netfs", logging.WARNING, __file__, 1, "network %s: %s", ("a\x1b[2Jb\x9bc", "x\ry"), None
    )
    text = _Formatter(journal=False, stamps=stamps).format(record)
    assert "a\\x1b[2Jb\\x9bc" in text and "x\\x0dy" in text
    assert text.isprintable()
