"""Editors' temporary files (sed -i, vim swap files), kept in memory.

A scratch file lives in a directory of the tree that allows them (a network
or port directory); it has an inode of its own, survives its unlink while
open (its inode stays known until then), and may be renamed onto a document
of the tree, which stores it. Sizes are bounded by the caller (EFBIG).

Its data is freed as soon as nothing can reach it: unlinked (or its
directory removed, or replaced by a rename) with no open handle, at the last
close of an unlinked one, or once renamed onto a document. The store also
keeps the count of bytes held by scratch files and by open documents'
buffers together (:meth:`ScratchStore.reserve`), bounded by MAX_HELD_BYTES.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

Path = tuple[str, ...]

MAX_HELD_BYTES = 64 << 20  # editors' temporary files and document buffers, in all


@dataclass(eq=False)
class Scratch:
    ino: int
    data: bytearray
    mode: int
    uid: int
    gid: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    opens: int = 0  # open handles
    linked: bool = True  # has a name in the tree


class ScratchStore:
    """The scratch files by path (those linked in the tree) and by inode
    (also those unlinked but still open, until they are forgotten)."""

    def __init__(self, limit: int = MAX_HELD_BYTES) -> None:
        self.limit = limit
        self.held = 0  # bytes of scratch data and document buffers
        self.freed = 0  # bytes of scratch data freed so far
        self.by_path: dict[Path, Scratch] = {}
        self.by_ino: dict[int, Scratch] = {}
        self._by_dir: dict[Path, dict[str, Scratch]] = {}

    def __contains__(self, path: Path) -> bool:
        return path in self.by_path

    def get(self, path: Path) -> Scratch | None:
        return self.by_path.get(path)

    def new(self, path: Path, ino: int, mode: int, uid: int, gid: int) -> Scratch:
        now = time.time_ns()
        sc = Scratch(ino, bytearray(), mode & 0o7777, uid, gid, now, now, now)
        self._link(path, sc)
        self.by_ino[ino] = sc
        return sc

    def _link(self, path: Path, sc: Scratch) -> None:
        self.by_path[path] = sc
        self._by_dir.setdefault(path[:-1], {})[path[-1]] = sc

    # ------------------------------------------------------------ bytes held

    def reserve(self, delta: int, *, force: bool = False) -> bool:
        """Account for `delta` more bytes (negative: fewer); False, and
        nothing counted, when that would pass the limit (unless `force`)."""
        if delta > 0 and not force and self.held + delta > self.limit:
            return False
        self.held += delta
        return True

    def _free(self, sc: Scratch) -> None:
        n = len(sc.data)
        sc.data = bytearray()
        self.held -= n
        self.freed += n
        self.by_ino.pop(sc.ino, None)

    def opened(self, sc: Scratch) -> None:
        sc.opens += 1

    def closed(self, sc: Scratch) -> None:
        sc.opens -= 1
        if sc.opens <= 0 and not sc.linked:
            self._free(sc)

    def resize(self, sc: Scratch, size: int) -> None:
        """Truncate or extend (the caller reserved the bytes)."""
        if size < len(sc.data):
            self.held -= len(sc.data) - size
            del sc.data[size:]
        else:
            sc.data.extend(b"\0" * (size - len(sc.data)))

    # ------------------------------------------------------------ names

    def unlink(self, path: Path) -> Scratch | None:
        """Take `path` out of the tree; its data goes now, or at its last
        close."""
        sc = self._unlink(path)
        if sc is not None:
            sc.linked = False
            if sc.opens <= 0:
                self._free(sc)
        return sc

    def _unlink(self, path: Path) -> Scratch | None:
        sc = self.by_path.pop(path, None)
        if sc is not None:
            d = self._by_dir.get(path[:-1])
            if d is not None:
                d.pop(path[-1], None)
                if not d:
                    del self._by_dir[path[:-1]]
        return sc

    def move(self, src: Path, dst: Path) -> None:
        sc = self._unlink(src)
        if sc is not None:
            self.unlink(dst)
            self._link(dst, sc)

    def forget(self, sc: Scratch) -> None:
        """`sc` is no scratch file any more (it was renamed onto a document,
        which stored its data)."""
        sc.linked = False
        self._free(sc)

    def setattr(
        self,
        sc: Scratch,
        *,
        size: int | None = None,
        mode: int | None = None,
        uid: int | None = None,
        gid: int | None = None,
        atime_ns: int | None = None,
        mtime_ns: int | None = None,
    ) -> None:
        now = time.time_ns()
        if size is not None:
            self.resize(sc, size)
            sc.mtime_ns = now
        if mode is not None:
            sc.mode = mode & 0o7777
        if uid is not None:
            sc.uid = uid
        if gid is not None:
            sc.gid = gid
        if atime_ns is not None:
            sc.atime_ns = atime_ns
        if mtime_ns is not None:
            sc.mtime_ns = mtime_ns
        sc.ctime_ns = now

    def names_in(self, dirpath: Path) -> list[str]:
        return sorted(self._by_dir.get(dirpath, ()))

    def drop_under(self, prefix: Path) -> None:
        k = len(prefix)
        for p in [p for p in self.by_path if p[:k] == prefix]:
            self.unlink(p)
