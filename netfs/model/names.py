"""Names that must survive a round trip and be safe to show.

Pure helpers shared by the model (portgroup names at define time), the
state store (network and port names, which are file names and XML text)
and the event lines:

- :func:`name_problem`: why a name cannot be kept (None if it can): a
  control character (C0, DEL, C1: XML cannot hold most of them, reads back
  a carriage return as a newline, and a terminal acts on them), a code
  point XML 1.0 excludes (U+FFFE, U+FFFF), or text that is not UTF-8;
- :func:`entry_name_problem`: the same plus what a directory entry cannot
  be (empty, ``.``, ``..``, a ``/``, longer than 255 bytes);
- :func:`escape_field`: one field of a line (events, the log): every byte of
  the UTF-8 form that is not printable ASCII, and space and backslash,
  becomes ``\\xNN`` -- the rule of the ``leases`` file;
- :func:`shown`: a name quoted in a message: the same escaping (spaces
  kept), cut after 64 characters.
"""

from __future__ import annotations

import unicodedata

__all__ = ["entry_name_problem", "escape_field", "name_problem", "shown"]

MAX_ENTRY_BYTES = 255


def name_problem(name: str) -> str | None:
    try:
        name.encode()
    except UnicodeEncodeError:
        return "not UTF-8"
    for ch in name:
        if unicodedata.category(ch) == "Cc" or ch in "\ufffe\uffff":
            return f"control or non-XML character \\x{ord(ch):02x}"
    return None


def entry_name_problem(name: str) -> str | None:
    if name in ("", ".", ".."):
        return "not a possible directory entry"
    if "/" in name:
        return "contains '/'"
    problem = name_problem(name)
    if problem is not None:
        return problem
    if len(name.encode()) > MAX_ENTRY_BYTES:
        return f"longer than {MAX_ENTRY_BYTES} bytes"
    return None


def _escape(text: str, keep: bytes) -> str:
    raw = text.encode(errors="surrogateescape")
    if all(0x21 <= b <= 0x7E and b != 0x5C for b in raw):
        return text
    return "".join(
        chr(b) if (0x21 <= b <= 0x7E and b != 0x5C) or b in keep else f"\\x{b:02x}" for b in raw
    )


def escape_field(text: str) -> str:
    """One space-free, printable-ASCII field (``\\xNN`` for the rest)."""
    return _escape(text, b"")


def shown(name: str, limit: int = 64) -> str:
    """``name`` as a message may quote it (escaped, spaces kept, cut)."""
    cut = name if len(name) <= limit else name[:limit]
    out = _escape(cut, b" ")
    return out if cut is name else out + "..."
