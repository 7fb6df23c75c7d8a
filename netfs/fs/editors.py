"""Editors' files in the tree: created where the declaration allows them,
moved, and stored when renamed onto a document (``sed -i``, vim, ``mv``).

No pyfuse3 here: errors are NetfsError.
"""

from __future__ import annotations

import errno
import logging
import time
from typing import TYPE_CHECKING

from netfs.errors import NetfsError
from netfs.fs.acts import store_document
from netfs.fs.tree import Dir, File, Node, Path, Write

if TYPE_CHECKING:
    from netfs.fs.scratch import Scratch
    from netfs.fs.space import Space

log = logging.getLogger("netfs.fs")

# editors' temporary files of users other than root, all of them (each costs
# memory, empty or not; their bytes are bounded by scratch.MAX_HELD_BYTES)
MAX_SCRATCH_FILES = 4096


def new_scratch(
    sp: Space, ppath: Path, pnode: Node | None, name: str, mode: int, uid: int, gid: int
) -> Scratch:
    """An editor's file `name` created in `ppath` (ENOENT: no such
    directory; EPERM: none may be created there; EACCES or ENOENT: the name
    of an entry of the tree)."""
    if not isinstance(pnode, Dir) or not sp.exists(ppath):
        raise NetfsError(errno.ENOENT, "no such directory")
    if not pnode.scratch:
        raise NetfsError(errno.EPERM, "no files may be created here")
    sp.refuse_reserved(ppath, pnode, name)
    if uid != 0 and len(sp.scratch.by_ino) >= MAX_SCRATCH_FILES:
        # empty ones too: each costs the daemon memory (root's are not counted)
        log.warning("editors' temporary files: %d exist, none more", len(sp.scratch.by_ino))
        raise NetfsError(errno.ENOSPC, "too many editors' temporary files")
    path = ppath + (name,)
    ino = sp.new_ino()
    sc = sp.scratch.new(path, ino, mode, uid, gid)
    sp.nodes[ino] = (path, None)
    return sc


async def rename_scratch(
    sp: Space,
    src: Path,
    dpath: Path,
    dnode: Node | None,
    name: str,
    *,
    exchange: bool,
    noreplace: bool,
    uid: int,
) -> None:
    """Only editors' files move; one renamed onto a document stores it."""
    dst = dpath + (name,)
    sc = sp.scratch.get(src)
    if sc is None:
        raise NetfsError(errno.EPERM if sp.exists(src) else errno.ENOENT, "not movable")
    if exchange:
        raise NetfsError(errno.EINVAL, "RENAME_EXCHANGE")
    if not isinstance(dnode, Dir) or not dnode.scratch or not sp.exists(dpath):
        raise NetfsError(errno.EPERM, "no files may be moved here")
    if src == dst:
        return
    target = dnode.entries.get(name)
    if target is not None:
        if not isinstance(target, File) or target.write is not Write.DOCUMENT:
            raise NetfsError(errno.EPERM, "not a document")
        await store_document(sp, dst, target, bytes(sc.data), uid=uid, renamed=True)
        # the kernel now believes the renamed inode is that file
        sp.scratch.unlink(src)
        sp.scratch.forget(sc)
        sp.nodes[sc.ino] = (dst, target)
        return
    if noreplace and dst in sp.scratch.by_path:
        raise NetfsError(errno.EEXIST, "exists")
    sp.scratch.move(src, dst)
    sp.nodes[sc.ino] = (dst, None)
    sc.ctime_ns = time.time_ns()
