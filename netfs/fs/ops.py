"""The pyfuse3 request handlers: the only module that imports pyfuse3.

Each handler resolves its inode to a path and a declared type of
:mod:`netfs.fs.tree` (one dictionary lookup), asks :class:`~netfs.fs.space.Space`
what is there, acts through a handle of :mod:`netfs.fs.handles` or a
declared hook, and maps :class:`NetfsError` to its errno. Requests from the
notifier's helper process (:mod:`netfs.fs.notifier`) only record what has
been published.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import stat
import time
from collections.abc import Callable, Coroutine, Iterable
from functools import wraps
from typing import Any, ParamSpec, TypeVar

import pyfuse3
import trio
from pyfuse3 import FileHandleT, FileNameT, FlagT, InodeT, ModeT

from netfs.errors import NetfsError
from netfs.fs import editors, mounts, tree
from netfs.fs.handles import (
    MAX_BLOCKED_TOTAL,
    ContentHandle,
    DirHandle,
    DocumentHandle,
    EventReaders,
    EventsHandle,
    FlagHandle,
    Handle,
    OwnHandle,
    ScratchHandle,
    hold,
)
from netfs.fs.interrupts import Interrupts
from netfs.fs.notifier import Notifier
from netfs.fs.space import UNSET, Space, StateArg
from netfs.fs.tree import Core, Dir, File, Node, Path, Presence, Write

log = logging.getLogger("netfs.fs")

TIMEOUT = 1.0  # entry and attribute timeouts, seconds
WORKERS = 1000  # pyfuse3 worker tasks for requests other than waiting reads
# idle pyfuse3 workers kept (pyfuse3's default, 1, ends a worker after a
# request and starts a new one at the next: a task made per request)
IDLE_WORKERS = 4
# a read waiting on `events` is a parked pyfuse3 worker (pyfuse3 answers a
# request from the task that read it): the limit counts them on top
MAX_TASKS = WORKERS + MAX_BLOCKED_TOTAL
BASE_OPTIONS = frozenset({"default_permissions", "allow_other", "fsname=netfs", "subtype=netfs"})


def _err(code: int) -> pyfuse3.FUSEError:
    # errno values >= 512 make the kernel reject the reply and hang the caller
    return pyfuse3.FUSEError(code if 0 < code < 512 else errno.EIO)


def _fuse_error(e: Exception, where: str) -> pyfuse3.FUSEError:
    """The errno for an exception leaving a handler (call it in the except
    block): NetfsError keeps its errno, anything unexpected is logged and
    becomes EIO (an exception other than FUSEError would stop pyfuse3's main
    loop)."""
    if isinstance(e, pyfuse3.FUSEError):
        return e
    if isinstance(e, NetfsError):
        return _err(e.errno)
    log.exception("internal error in %s", where)
    return _err(errno.EIO)


P = ParamSpec("P")
R = TypeVar("R")


def _handler(fn: Callable[P, Coroutine[Any, Any, R]]) -> Callable[P, Coroutine[Any, Any, R]]:
    """NetfsError -> errno; anything unexpected is logged and becomes EIO."""

    @wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(*args, **kwargs)
        except Exception as e:
            raise _fuse_error(e, fn.__name__) from None

    return wrapper


def _name(raw: bytes) -> str:
    return os.fsdecode(raw)


def attributes(
    sp: Space,
    ino: int,
    path: Path,
    node: Node | None,
    st: StateArg = UNSET,
    *,
    kept: bool = True,
) -> pyfuse3.EntryAttributes:
    """What stat shows of `path` (inode `ino`, declared type `node`).
    `kept`: the kernel keeps them (for the timeouts), so a cacheable file's
    network counts as exposed (see Space.exposed)."""
    a = pyfuse3.EntryAttributes()
    a.st_ino = InodeT(ino)
    a.generation = 0
    a.entry_timeout = TIMEOUT
    a.attr_timeout = TIMEOUT
    a.st_blksize = 4096
    sc = sp.scratch.by_ino.get(ino)
    if sc is not None:
        a.st_mode = ModeT(stat.S_IFREG | (sc.mode & 0o7777))
        a.st_nlink = 1 if path in sp.scratch else 0
        a.st_uid, a.st_gid = sc.uid, sc.gid
        a.st_size = len(sc.data)
        a.st_atime_ns, a.st_mtime_ns, a.st_ctime_ns = sc.atime_ns, sc.mtime_ns, sc.ctime_ns
        a.st_blocks = (a.st_size + 511) // 512
        return a
    gw = sp.group_writable
    writable = sp.writable(path, node)
    if isinstance(node, Dir):
        mode = stat.S_IFDIR | (0o775 if writable and gw else 0o755)
        a.st_nlink = 2
        a.st_size = 0
    else:
        if not writable:
            mode = stat.S_IFREG | 0o444
        else:
            mode = stat.S_IFREG | (0o664 if gw else 0o644)
        if node is tree.EVENTS or node is None:
            a.st_size = 0
        else:
            content = sp.safe_content(path, st, node)
            a.st_size = len(content) if content is not None else 0
            if node.cacheable and kept and node.size is None:
                sp.exposed.add(path[0])  # the kernel keeps this size
        a.st_nlink = 1
    a.st_mode = ModeT(mode)
    a.st_uid = sp.uid
    a.st_gid = sp.gid if (writable and gw) else 0
    t = sp.mtimes.get(path, sp.start_ns)
    a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = t
    a.st_blocks = (a.st_size + 511) // 512
    return a


class NetfsOperations(pyfuse3.Operations):
    """pyfuse3 operations over a :class:`netfs.core.Driver`."""

    supports_dot_lookup = True
    enable_writeback_cache = False

    def __init__(self, driver: Core, mountpoint: str, *, gid: int | None = None) -> None:
        super().__init__()
        self.space = Space(driver, gid=gid)
        self.notifier = Notifier(
            self.space, mountpoint, self._invalidate, invalidate_inode=self._invalidate_inode
        )
        self._fhs = itertools.count(1)
        self._handles: dict[int, Handle] = {}
        self._dirs: dict[int, DirHandle] = {}
        self.readers = EventReaders(Interrupts())
        # the mount left this mount namespace while copies of it elsewhere
        # kept the connection (see _watch_unmount): nothing to unmount at close
        self.unmounted = False

    # ================================================================ helpers

    def _is_self(self, ctx: pyfuse3.RequestContext | None) -> bool:
        return ctx is not None and self.notifier.is_self(ctx.pid)

    def _node(self, ino: int) -> tuple[Path, Node | None]:
        hit = self.space.nodes.get(ino)
        if hit is None:
            raise _err(errno.ENOENT)
        return hit

    def _dir(self, ino: int) -> tuple[Path, Dir]:
        path, node = self._node(ino)
        if not isinstance(node, Dir) or path in self.space.scratch:
            raise _err(errno.ENOENT)
        return path, node

    def _attr(
        self, ino: int, path: Path, node: Node | None, st: StateArg = UNSET, *, kept: bool = True
    ) -> pyfuse3.EntryAttributes:
        return attributes(self.space, ino, path, node, st, kept=kept)

    def _entry(
        self, path: Path, st: StateArg = UNSET, *, kept: bool = True
    ) -> pyfuse3.EntryAttributes:
        sc = self.space.scratch.get(path)
        ino = sc.ino if sc is not None else self.space.ino(path)
        return self._attr(ino, path, self.space.nodes[ino][1], st, kept=kept)

    def _own_entry(self, path: Path) -> pyfuse3.EntryAttributes:
        """An entry as the helper sees it. The kernel's dentry cache is
        shared by everyone: what the own view shows (a network not yet
        announced, status.xml not yet removed) must not be cached, or others
        would see it too."""
        a = self._entry(path, kept=False)  # (timeouts 0: the kernel asks again)
        a.entry_timeout = 0
        a.attr_timeout = 0
        return a

    def _invalidate(self, parent: Path, name: str) -> None:
        """Drop a dentry the kernel cached, so it asks us again (and the own
        view says absent instead of the kernel failing with EEXIST)."""
        ino = self.space.inos.get(parent)
        if ino is None:
            return
        try:
            pyfuse3.invalidate_entry(InodeT(ino), os.fsencode(name))
        except OSError:
            pass

    @staticmethod
    def _invalidate_inode(ino: int) -> None:
        """Drop the kernel's cached content and attributes of inode `ino`
        (from a worker thread only: see netfs.fs.notifier)."""
        try:
            pyfuse3.invalidate_inode(InodeT(ino), attr_only=False)
        except OSError:
            pass  # not in the kernel's cache (ENOENT), or not mounted

    def _handle(self, fh: int) -> Handle:
        h = self._handles.get(fh)
        if h is None:
            raise _err(errno.EBADF)
        return h

    def _open_handle(
        self, h: Handle, *, nonseekable: bool = False, cached: bool = False
    ) -> pyfuse3.FileInfo:
        """`cached`: reads go through the page cache, which this open keeps
        (a file declared cacheable, opened read-only); else direct_io."""
        fh = next(self._fhs)
        self._handles[fh] = h
        fi = pyfuse3.FileInfo(fh=FileHandleT(fh), direct_io=not cached, keep_cache=cached)
        if nonseekable:
            fi.nonseekable = True
        return fi

    # ================================================================ lookups

    # The handlers on the read path (lookup, getattr, open, read, flush,
    # release) translate errors inline rather than through @_handler: one
    # coroutine less per request.

    async def lookup(
        self, parent_inode: InodeT, name: FileNameT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        try:
            ppath, pnode = self._node(parent_inode)
            n = _name(name)
            if n == ".":
                return self._entry(ppath)
            if n == "..":
                return self._entry(ppath[:-1])
            if not isinstance(pnode, Dir) or ppath in self.space.scratch.by_path:
                raise _err(errno.ENOENT)
            path = ppath + (n,)
            st = self.space.state(ppath[0]) if ppath else UNSET
            own = self._is_self(ctx)
            if not self.space.exists(path, own, st):
                raise _err(errno.ENOENT)
            return self._own_entry(path) if own else self._entry(path, st)
        except Exception as e:
            raise _fuse_error(e, "lookup") from None

    async def getattr(self, inode: InodeT, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        try:
            path, node = self._node(inode)
            return self._attr(inode, path, node)
        except Exception as e:
            raise _fuse_error(e, "getattr") from None

    @_handler
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = 4096
        s.f_namemax = 255
        s.f_files = len(self.space.inos)
        return s

    # ================================================================ directories

    @_handler
    async def opendir(self, inode: InodeT, ctx: pyfuse3.RequestContext) -> FileHandleT:
        path, node = self._dir(inode)
        if not self.space.exists(path, self._is_self(ctx)):
            raise _err(errno.ENOENT)
        fh = next(self._fhs)
        self._dirs[fh] = DirHandle(path, self.space.listing(path, node))
        return FileHandleT(fh)

    @_handler
    async def readdir(self, fh: FileHandleT, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        d = self._dirs.get(fh)
        entries = d.entries if d is not None else []
        for i in range(start_id, len(entries)):
            name, path = entries[i]
            try:
                attr = self._entry(path)
            except (NetfsError, pyfuse3.FUSEError):
                continue
            if not pyfuse3.readdir_reply(token, os.fsencode(name), attr, i + 1):
                break

    @_handler
    async def releasedir(self, fh: FileHandleT) -> None:
        self._dirs.pop(fh, None)

    @_handler
    async def fsyncdir(self, fh: FileHandleT, datasync: bool) -> None:
        return None

    @_handler
    async def mkdir(
        self, parent_inode: InodeT, name: FileNameT, mode: ModeT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        ppath, pnode = self._node(parent_inode)
        path = ppath + (_name(name),)
        if self._is_self(ctx):
            self.notifier.publish(path)
            return self._own_entry(path)
        if not isinstance(pnode, Dir) or pnode.make is None:
            raise _err(errno.EPERM)
        await pnode.make(self.space, path)
        return self._entry(path)

    @_handler
    async def rmdir(
        self, parent_inode: InodeT, name: FileNameT, ctx: pyfuse3.RequestContext
    ) -> None:
        ppath, pnode = self._node(parent_inode)
        path = ppath + (_name(name),)
        if self._is_self(ctx):
            self.notifier.unpublish(path)
        elif isinstance(pnode, Dir) and pnode.drop is not None:
            await pnode.drop(self.space, path)
        else:
            raise _err(errno.EPERM if self.space.exists(path) else errno.ENOENT)
        self.space.drop_inos(path)

    # ================================================================ scratch files

    @_handler
    async def create(
        self,
        parent_inode: InodeT,
        name: FileNameT,
        mode: ModeT,
        flags: FlagT,
        ctx: pyfuse3.RequestContext,
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        ppath, pnode = self._node(parent_inode)
        n = _name(name)
        path = ppath + (n,)
        if self._is_self(ctx):
            self.notifier.publish(path)
            own = OwnHandle(path)
            return self._open_handle(own), self._own_entry(path)
        sc = editors.new_scratch(self.space, ppath, pnode, n, mode, ctx.uid, ctx.gid)
        h = ScratchHandle(self.space, path, sc, ctx.uid)
        return self._open_handle(h), self._attr(sc.ino, path, None)

    @_handler
    async def mknod(
        self,
        parent_inode: InodeT,
        name: FileNameT,
        mode: ModeT,
        rdev: int,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        ppath, pnode = self._node(parent_inode)
        n = _name(name)
        path = ppath + (n,)
        if self._is_self(ctx):
            self.notifier.publish(path)
            return self._own_entry(path)
        if not isinstance(pnode, Dir) or not self.space.exists(ppath):
            raise _err(errno.ENOENT)
        if not stat.S_ISREG(mode):
            raise _err(errno.EPERM)
        sc = editors.new_scratch(self.space, ppath, pnode, n, mode, ctx.uid, ctx.gid)
        return self._attr(sc.ino, path, None)

    @_handler
    async def symlink(
        self,
        parent_inode: InodeT,
        name: FileNameT,
        target: FileNameT,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        raise _err(errno.EPERM)  # a change of structure the tree does not allow

    @_handler
    async def link(
        self,
        inode: InodeT,
        new_parent_inode: InodeT,
        new_name: FileNameT,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        raise _err(errno.EPERM)

    @_handler
    async def unlink(
        self, parent_inode: InodeT, name: FileNameT, ctx: pyfuse3.RequestContext
    ) -> None:
        ppath, _ = self._node(parent_inode)
        path = ppath + (_name(name),)
        if self._is_self(ctx):
            self.notifier.unpublish(path)
            return
        sc = self.space.scratch.unlink(path)
        if sc is not None:
            sc.ctime_ns = time.time_ns()
            return
        raise _err(errno.EPERM if self.space.exists(path) else errno.ENOENT)

    @_handler
    async def rename(
        self,
        parent_inode_old: InodeT,
        name_old: FileNameT,
        parent_inode_new: InodeT,
        name_new: FileNameT,
        flags: FlagT,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        src = self._node(parent_inode_old)[0] + (_name(name_old),)
        dpath, dnode = self._node(parent_inode_new)
        await editors.rename_scratch(
            self.space,
            src,
            dpath,
            dnode,
            _name(name_new),
            exchange=bool(flags & pyfuse3.RENAME_EXCHANGE),
            noreplace=bool(flags & pyfuse3.RENAME_NOREPLACE),
            uid=ctx.uid,
        )

    @_handler
    async def setattr(
        self,
        inode: InodeT,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: FileHandleT | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        sp = self.space
        path, node = self._node(inode)
        sc = sp.scratch.by_ino.get(inode)
        if sc is not None:
            if fields.update_size:
                sp.check_size(path, attr.st_size)
                hold(sp, path, attr.st_size - len(sc.data), ctx.uid)
            sp.scratch.setattr(
                sc,
                size=attr.st_size if fields.update_size else None,
                mode=attr.st_mode if fields.update_mode else None,
                uid=attr.st_uid if fields.update_uid else None,
                gid=attr.st_gid if fields.update_gid else None,
                atime_ns=attr.st_atime_ns if fields.update_atime else None,
                mtime_ns=attr.st_mtime_ns if fields.update_mtime else None,
            )
            return self._attr(inode, path, node)
        if self._is_self(ctx):
            return self._attr(inode, path, node)
        if fields.update_mode or fields.update_uid or fields.update_gid:
            raise _err(errno.EPERM)
        if fields.update_size:
            if not isinstance(node, File) or node.write is None:
                raise _err(errno.EACCES)
            h = self._handles.get(fh) if fh is not None else None
            if h is not None:
                h.truncate(sp, attr.st_size)
            else:
                sp.check_size(path, attr.st_size)
        return self._attr(inode, path, node)

    # ================================================================ files

    async def open(
        self, inode: InodeT, flags: FlagT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.FileInfo:
        try:
            return self._open(inode, flags, ctx)
        except Exception as e:
            raise _fuse_error(e, "open") from None

    def _open(self, inode: InodeT, flags: FlagT, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        sp = self.space
        path, node = self._node(inode)
        if self._is_self(ctx):
            return self._open_handle(OwnHandle(path))
        write = (flags & os.O_ACCMODE) in (os.O_WRONLY, os.O_RDWR)
        sc = sp.scratch.by_ino.get(inode)
        if sc is not None:
            if flags & os.O_TRUNC:
                sp.scratch.resize(sc, 0)
                sc.mtime_ns = time.time_ns()
            return self._open_handle(ScratchHandle(sp, path, sc, ctx.uid))
        if node is tree.EVENTS:
            if write or flags & os.O_TRUNC:
                raise _err(errno.EACCES)
            h = EventsHandle(sp, path, ctx.uid, self.readers, nonblock=bool(flags & os.O_NONBLOCK))
            return self._open_handle(h, nonseekable=True)
        if not isinstance(node, File):
            raise _err(errno.EISDIR if node is not None else errno.ENOENT)
        if not sp.exists(path):
            raise _err(errno.ENOENT)
        if (write or flags & os.O_TRUNC) and node.write is None:
            raise _err(errno.EACCES)  # O_RDONLY|O_TRUNC too: it asks to truncate
        if write and node.write is Write.DOCUMENT:
            trunc = bool(flags & os.O_TRUNC)
            return self._open_handle(DocumentHandle(sp, path, node, trunc=trunc, uid=ctx.uid))
        # a write open is never cached: a write through the page cache would
        # hold the page's lock while the write handler waits for the
        # invalidation of that very page
        cached = node.cacheable and not write and not flags & os.O_TRUNC
        if cached and node.presence is Presence.SHOWN and sp.safe_content(path, node=node) is None:
            cached = False  # showing it fails: its size is 0, and only a READ says why
        if cached:
            sp.exposed.add(path[0])
        if node.write is Write.FLAG:
            return self._open_handle(FlagHandle(sp, path, node), cached=cached)
        return self._open_handle(ContentHandle(sp, path, node), cached=cached)

    async def read(self, fh: FileHandleT, off: int, size: int) -> bytes:
        try:
            h = self._handle(fh)
            if h.blocking:
                return await h.read_wait(fh, off, size)
            if isinstance(h, ContentHandle) and h.node.cacheable:
                self.space.exposed.add(h.path[0])  # the page cache keeps what we answer
            return h.read(off, size)
        except Exception as e:
            raise _fuse_error(e, "read") from None

    @_handler
    async def write(self, fh: FileHandleT, off: int, buf: bytes) -> int:
        return await self._handle(fh).write(off, buf)

    async def flush(self, fh: FileHandleT) -> None:
        try:
            work = self._handle(fh).flush()
            if work is not None:
                await work
        except Exception as e:
            raise _fuse_error(e, "flush") from None

    @_handler
    async def fsync(self, fh: FileHandleT, datasync: bool) -> None:
        await self._handle(fh).fsync()

    async def release(self, fh: FileHandleT) -> None:
        h = self._handles.pop(fh, None)
        if h is None:
            return
        try:
            work = h.release(fh)
            if work is not None:
                await work
        except Exception as e:
            raise _fuse_error(e, "release") from None

    @_handler
    async def poll(
        self,
        inode: InodeT,
        fh: FileHandleT,
        poll_handle: pyfuse3.PollHandle | None,
        ctx: pyfuse3.RequestContext,
    ) -> int:
        return self._handle(fh).poll(fh, poll_handle, ctx.uid)

    # ================================================================ lifecycle

    def request_reconcile_all(self) -> None:
        """Compare every network with what watchers were told (after SIGHUP)."""
        self.notifier.request_reconcile_all()

    def cancel_blocked_reads(self) -> None:
        self.notifier.close()
        for cs in list(self.readers.scopes):
            cs.cancel()


def mount(mountpoint: str, ops: NetfsOperations, options: Iterable[str] = ()) -> None:
    """Mount (synchronously; no thread is started, so the caller may fork)."""
    opts = set(BASE_OPTIONS) | set(options)
    pyfuse3.init(ops, mountpoint, opts)


async def serve(
    ops: NetfsOperations, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run the FUSE main loop and the notifier until the file system is
    unmounted or :func:`terminate` is called."""
    async with trio.open_nursery() as nursery:
        await nursery.start(ops.notifier.run)
        nursery.start_soon(_watch_unmount, ops)

        async def main() -> None:
            try:
                await pyfuse3.main(min_tasks=IDLE_WORKERS, max_tasks=MAX_TASKS)
            finally:
                nursery.cancel_scope.cancel()

        nursery.start_soon(main)
        task_status.started()


async def _watch_unmount(ops: NetfsOperations) -> None:
    """End the main loop once the mount is gone from the daemon's mount
    namespace (umount(8)), also when copies of it live on in other mount
    namespaces (made by `ip netns exec` or `unshare -m` while it was
    mounted, where the mount is private): the kernel would keep the
    connection, and the daemon, until the last of them ends. Those copies
    are cut off (ENOTCONN) when the daemon closes its connection, and the
    daemon unmounts nothing then (the mount point may hold a new mount
    already)."""
    mountpoint = ops.notifier.mountpoint
    found = mounts.fuse_mounts_at(mountpoint)
    if not found:
        return  # not a mount of ours (tests calling serve() without one)
    conn = found[-1].connection
    fd = os.open("/proc/self/mountinfo", os.O_RDONLY | os.O_CLOEXEC)
    try:
        while mounts.connection_mounted(conn):
            await trio.to_thread.run_sync(mounts.wait_mount_change, fd, abandon_on_cancel=True)
    finally:
        os.close(fd)
    log.info("%s was unmounted: closing the connection", mountpoint)
    ops.unmounted = True
    terminate(ops)


def terminate(ops: NetfsOperations | None = None) -> None:
    """End the main loop (from the trio thread); serve() then returns."""
    if ops is not None:
        ops.cancel_blocked_reads()
    pyfuse3.terminate()


def close(unmount: bool = True) -> None:
    pyfuse3.close(unmount=unmount)
