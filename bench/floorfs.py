"""The FUSE floor for bench.fs: the smallest pyfuse3 filesystem serving one
constant file, mounted the way netfs mounts (pyfuse3 + trio, 1 s entry and
attribute timeouts, direct_io without page cache, allow_other and
default_permissions) and answering FLUSH and RELEASE as no-ops, as netfs
must (it acts at flush for its documents, so the kernel sends FLUSH at every
close).

    python -m bench.floorfs MOUNTPOINT [--hang | --cached]

Serves MOUNTPOINT/value ("0\\n") until SIGTERM or SIGINT, then unmounts.

--cached: the file is opened through the page cache, kept across opens
(FOPEN_KEEP_CACHE, no direct_io): what a FUSE read costs at least when only
OPEN, FLUSH and RELEASE reach the daemon (pyfuse3 cannot ask for
FOPEN_NOFLUSH).

--hang (for tests/test_fs_daemon.py): a lookup of MOUNTPOINT/hang is never
answered, and the process itself looks it up from a thread and prints
"hanging" once the request has reached the handler. Killed with SIGKILL in
that state, the process cannot exit (its thread waits, uninterruptibly, for
an answer nobody will give) and the mount hangs every caller: what a netfs
daemon killed during one of its own writes through its mount leaves behind.
"""

from __future__ import annotations

import errno
import os
import signal
import stat
import sys
import threading
from typing import Any

import pyfuse3
import trio

VALUE = b"0\n"
NAME = b"value"
FILE_INO = pyfuse3.ROOT_INODE + 1
TIMEOUT = 1.0


class FloorFS(pyfuse3.Operations):
    cached = False

    def _attr(self, ino: int) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = ino
        a.entry_timeout = TIMEOUT
        a.attr_timeout = TIMEOUT
        if ino == pyfuse3.ROOT_INODE:
            a.st_mode = stat.S_IFDIR | 0o755
            a.st_nlink = 2
        else:
            a.st_mode = stat.S_IFREG | 0o444
            a.st_nlink = 1
            a.st_size = len(VALUE)
        a.st_uid = 0
        a.st_gid = 0
        return a

    async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        if inode not in (pyfuse3.ROOT_INODE, FILE_INO):
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attr(inode)

    async def lookup(self, parent_inode: int, name: bytes, ctx: Any = None) -> Any:
        if parent_inode != pyfuse3.ROOT_INODE or name != NAME:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attr(FILE_INO)

    async def opendir(self, inode: int, ctx: Any) -> Any:
        if inode != pyfuse3.ROOT_INODE:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode

    async def readdir(self, fh: Any, start_id: int, token: Any) -> None:
        if start_id == 0:
            pyfuse3.readdir_reply(token, NAME, self._attr(FILE_INO), 1)

    async def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        if inode != FILE_INO:
            raise pyfuse3.FUSEError(errno.EISDIR)
        if flags & (os.O_WRONLY | os.O_RDWR):
            raise pyfuse3.FUSEError(errno.EACCES)
        return pyfuse3.FileInfo(fh=inode, direct_io=not self.cached, keep_cache=self.cached)

    async def read(self, fh: Any, off: int, size: int) -> bytes:
        return VALUE[off : off + size]

    async def flush(self, fh: Any) -> None:
        return None

    async def release(self, fh: Any) -> None:
        return None


class HangFS(FloorFS):
    def __init__(self, mountpoint: str) -> None:
        super().__init__()
        self.mountpoint = mountpoint

    async def lookup(self, parent_inode: int, name: bytes, ctx: Any = None) -> Any:
        if name == b"hang":
            print("hanging", flush=True)
            await trio.sleep_forever()
        return await super().lookup(parent_inode, name, ctx)

    def stat_self(self) -> None:
        try:
            os.stat(os.path.join(self.mountpoint, "hang"))
        except OSError as e:
            print(f"hang: {e}", flush=True)


async def _serve(fs: FloorFS) -> None:
    async with trio.open_nursery() as nursery:
        if isinstance(fs, HangFS):
            threading.Thread(target=fs.stat_self, daemon=True).start()

        async def on_signal() -> None:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as sigs:
                async for _ in sigs:
                    pyfuse3.terminate()
                    return

        nursery.start_soon(on_signal)
        await pyfuse3.main()
        nursery.cancel_scope.cancel()


def main(argv: list[str]) -> int:
    hang = "--hang" in argv
    cached = "--cached" in argv
    argv = [a for a in argv if a not in ("--hang", "--cached")]
    if len(argv) != 1:
        print("usage: python -m bench.floorfs MOUNTPOINT [--hang | --cached]", file=sys.stderr)
        return 2
    opts = set(pyfuse3.default_options)
    opts |= {"fsname=floorfs", "allow_other", "default_permissions"}
    fs = HangFS(argv[0]) if hang else FloorFS()
    fs.cached = cached
    pyfuse3.init(fs, argv[0], opts)
    try:
        trio.run(_serve, fs)
    finally:
        pyfuse3.close(unmount=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
