"""The one error type of netfs.

Every layer raises :class:`NetfsError`; it carries an errno (what a syscall
returns to the user) and a message (libvirt's text where libvirt has one,
shown in a network's ``error`` file and in logs). Outer layers only map it.
"""

from __future__ import annotations

import errno as _errno


class NetfsError(Exception):
    """An operation failed: ``errno`` for the kernel, ``message`` for people."""

    def __init__(self, errno: int, message: str) -> None:
        super().__init__(message)
        self.errno = errno
        self.message = message

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        name = _errno.errorcode.get(self.errno, str(self.errno))
        return f"NetfsError({name}, {self.message!r})"


def invalid(message: str) -> NetfsError:
    """EINVAL: malformed or invalid input (XML, values, merge conflicts)."""
    return NetfsError(_errno.EINVAL, message)
