"""The state store: the config directory and the state directory on disk.

Layout::

    <config_dir>/NAME.xml                 persistent definition (inactive XML)
    <config_dir>/autostart/NAME.xml       symlink to ../NAME.xml: autostart on
    <state_dir>/NAME/status.xml           status file of an active network
    <state_dir>/NAME/ports/PORT.xml       allocated ports of an active network
    <state_dir>/NAME/starting             a start under way: its status file, staged
    <state_dir>/NAME/run/                 runtime files of the network's start steps
    <state_dir>/autostarted               marker: autostart ran since host boot
    <state_dir>/.lock                     held (flock) by the running daemon

The config directory is libvirt's. In the state directory every network has
a directory of its own, so no two networks' files can meet (network names
cannot start with a dot or be ``autostarted``). The previous layout kept a
status file at ``<state_dir>/NAME.xml``: :meth:`StateStore.ensure_dirs`
moves such files into place once (a regular ``*.xml`` file at the top is
never anything else).

Writes are atomic: a temporary file in the same directory is written
(created with O_EXCL), fsync'ed, renamed over the target, and the directory
is fsync'ed. A crash leaves either the old or the new file, never a torn
one; a stray temporary file (name starting with ``.netfs-tmp-``) is ignored
by the loaders and removed by :meth:`StateStore.remove_stale_temp_files`.
Nothing written follows a symbolic link: the file's directory is opened
with O_NOFOLLOW and the file created in it (O_EXCL) and renamed there;
files of the state directory are read with O_NOFOLLOW too. Directories are
made with explicit modes (0755 for the directories given, 0700 for a
network's). A write that fails (ENOSPC...) leaves no file behind and its
error names the path.

Loading is lenient and never deletes anything: the loaders return what they
could load plus a list of ``(path, problem)`` for the files they could not
use. The one write a load makes is libvirt's (its config load, step 2): a
config file without ``<uuid>``, or of a virtual mode (none, nat, route, open)
without ``<mac>``, gets the generated values saved back (atomically, in the
canonical form), so that they are generated once and not at every load. A
file that does not parse, whose name does not match, or that today's
validation refuses is never rewritten. A definition that parses but that today's define-time
validation would refuse is loaded with its problem recorded (only starting it
is refused, by the core). A saved port is re-read with ``strict=False``, so a
guest ``<ip>``/``<route>`` saved by an older version does not make it vanish.

A start's files are the exception to "fsync the directory", because they
describe kernel state that a crash of the host takes with it: the status
file of a start is staged before the kernel work (written and fsync'ed as
``starting``, :meth:`StateStore.stage_status`), which makes it the start
intent too: the kernel ignores IFLA_IFALIAS when a bridge is created, so
netfs's tag arrives in a second request, and a crash in between leaves an
untagged bridge that only this file (its live definition names the bridge)
identifies as ours. Once the network is up the file is renamed to
``status.xml`` without a directory fsync (:func:`publish_staged`). What a
crash of the daemon (kill -9) finds is the same either way (the page cache
survives it); after a crash of the host an older complete status file or
none is the same truth to recovery (the network is not running), and none
is ever torn.

Every method here is synchronous. Those that fsync may block: the core calls
them from a worker thread (a start's staging: the netlink thread, as the
first call of the start's submission). The metadata-only steps of a start
(publishing or discarding the staged file) never fsync; the core makes them
on its loop, saving a thread hop each.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import operator
import os
import secrets
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from lxml import etree

from netfs.errors import NetfsError
from netfs.model.names import name_problem
from netfs.model.names import shown as shown_name
from netfs.model.network import NetworkDef, format_network, parse_network
from netfs.model.port import NetworkPort, format_port, parse_port
from netfs.model.validate import give_mac, validate_network
from netfs.model.xmlsafe import MAX_INPUT_BYTES, parse_document

log = logging.getLogger(__name__)

DEFAULT_CONFIG_DIR = "/etc/netfs/networks"  # netfs mount's defaults
DEFAULT_STATE_DIR = "/run/netfs/networks"
TMP_PREFIX = ".netfs-tmp-"
AUTOSTARTED = "autostarted"
STATUS = "status.xml"
STARTING = "starting"  # a start under way: its staged status file
LOCK = ".lock"
NETWORK_DIR_MODE = 0o700
STATUS_MEMO = 32  # networks whose last status document is kept (see stage_status)
DIR_MEMO = 1024  # networks whose directory path is kept (see network_dir)

Problem = tuple[Path, str]


def _header(name: str) -> bytes:
    # Our own words: a warning that the file is generated, kept valid XML
    # (a comment may not contain "--", and a network name may).
    safe = name.replace("-", "\N{HYPHEN}") if "--" in name else name
    return (
        "<!--\n"
        "netfs: generated file, rewritten whenever the network changes.\n"
        "Change it through the netfs mount, e.g. by writing\n"
        f"  <mount>/{safe}/definition.xml\n"
        "-->\n"
    ).encode()


def _check_component(name: str, what: str = "network") -> None:
    """Refuse names that cannot be a file name in our directories (EINVAL):
    what every path built from a name checks (loading too)."""
    try:
        name.encode()
    except UnicodeEncodeError:  # undecodable bytes from the kernel (surrogateescape)
        shown = name.encode(errors="surrogateescape").decode(errors="replace")
        raise NetfsError(errno.EINVAL, f"invalid {what} name '{shown}': not UTF-8") from None
    if (
        not name
        or "/" in name
        or "\0" in name
        or name.startswith(".")
        or name == AUTOSTARTED
        or len(name.encode()) > 250
    ):
        raise NetfsError(errno.EINVAL, f"invalid {what} name '{shown_name(name)}'")


def check_name(name: str, what: str = "network") -> None:
    """Refuse a new network or port name (EINVAL) that could not be saved and
    read back identical: not a file name (see _check_component), or holding a
    control character (XML cannot hold most; a carriage return reads back
    as a newline). Loading is lenient: a saved name is only path-checked."""
    _check_component(name, what)
    problem = name_problem(name)
    if problem is not None:
        raise NetfsError(errno.EINVAL, f"invalid {what} name '{shown_name(name)}': {problem}")


class TooLarge(NetfsError, OSError):  # type: ignore[misc]
    """EFBIG: a file would be larger than its loader accepts, so it is not
    written (what is saved must load again). Also an OSError, so that the
    callers that tolerate a failed rewrite (a status file's QoS counts, a
    generated uuid saved back) tolerate this one too."""


def check_loadable(data: bytes, what: str) -> None:
    """Refuse (EFBIG) to save ``data`` when the loader would refuse it."""
    if len(data) > MAX_INPUT_BYTES:
        raise TooLarge(
            errno.EFBIG,
            f"{what} would be saved as {len(data)} bytes, over the "
            f"{MAX_INPUT_BYTES} bytes (1 MiB) that loading accepts",
        )


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _open_dir(directory: Path) -> int:
    """The directory, its last component not followed if it is a symlink."""
    return os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)


def _named(e: OSError, path: Path) -> OSError:
    """``e`` naming ``path`` (a write's ENOSPC names no file by itself)."""
    if e.filename is not None or not e.errno:
        return e
    return OSError(e.errno, e.strerror, str(path))


def _stage(
    dfd: int, path: Path, data: bytes, mode: int, sync: bool, name: str | None = None
) -> str:
    """``data`` in a new temporary file beside ``path`` (in the directory
    ``dfd``), fsync'ed if ``sync``; its name. On failure nothing is left.
    ``name``: a fixed name instead of a random one; whatever is there
    already (a file a crash left, a planted symlink or FIFO) is replaced,
    never written through."""
    # short: a 250-byte network name makes a 254-byte file name already
    tmp = name or f"{TMP_PREFIX}{secrets.token_hex(6)}"
    # a write's error names the file it made when that has a name of its own
    named = path.parent / name if name else path
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        try:
            fd = os.open(tmp, flags, mode, dir_fd=dfd)
        except FileExistsError:
            if name is None:
                raise
            os.unlink(tmp, dir_fd=dfd)
            fd = os.open(tmp, flags, mode, dir_fd=dfd)
    except OSError as e:
        raise _named(e, named) from None
    try:
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException as e:
        _discard(dfd, tmp)
        if isinstance(e, OSError):
            raise _named(e, named) from None
        raise
    return tmp


def _publish(dfd: int, tmp: str, path: Path) -> None:
    """Rename the temporary file ``tmp`` over ``path`` (both in ``dfd``);
    on failure the temporary file is removed."""
    try:
        os.rename(tmp, path.name, src_dir_fd=dfd, dst_dir_fd=dfd)
    except BaseException as e:
        _discard(dfd, tmp)
        if isinstance(e, OSError):
            raise _named(e, path) from None
        raise


def _discard(dfd: int, tmp: str) -> None:
    try:
        os.unlink(tmp, dir_fd=dfd)
    except OSError:
        pass


def _open_parent(path: Path) -> int:
    try:
        return _open_dir(path.parent)
    except OSError as e:
        raise _named(e, path.parent) from None


def atomic_write(path: Path, data: bytes, *, mode: int = 0o600, sync: bool = True) -> None:
    """Replace ``path`` with ``data``: temp file (O_EXCL, in the directory
    opened without following a symlink), fsync, rename, fsync dir. On any
    failure no temporary file is left and the target is as it was."""
    dfd = _open_parent(path)
    try:
        _publish(dfd, _stage(dfd, path, data, mode, sync), path)
        if sync:
            os.fsync(dfd)
    finally:
        os.close(dfd)


@dataclass(frozen=True)
class Staged:
    """A file written and fsync'ed under the name ``tmp`` beside ``path``
    (a start's status file: ``starting``), not yet in place
    (:meth:`StateStore.stage_status`)."""

    path: Path
    tmp: str
    # what the file shows without its header (a status file: the view's
    # status.xml of the network's start, formatted once)
    text: bytes = b""


def publish_staged(staged: Staged) -> None:
    """The rename of a staged file into place, metadata only (the directory
    is not fsync'ed: for what that suits, see the module docstring). On
    failure the temporary file is removed and the target is as it was."""
    dfd = _open_parent(staged.path)
    try:
        _publish(dfd, staged.tmp, staged.path)
    finally:
        os.close(dfd)


def discard_staged(staged: Staged) -> None:
    """Remove a staged file that will not be published (missing is fine)."""
    try:
        dfd = _open_parent(staged.path)
    except OSError:
        return
    try:
        _discard(dfd, staged.tmp)
    finally:
        os.close(dfd)


def _clear_ports(dfd: int, ports: Path) -> None:
    """Remove the port files in the directory ``ports`` (in ``dfd``) and it,
    never through a symlink (whatever else is at its name is removed); its
    directory is not fsync'ed."""
    try:
        fd = os.open(
            ports.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd
        )
    except FileNotFoundError:
        return
    except OSError as e:
        if e.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise _named(e, ports) from None
        _discard(dfd, ports.name)
        return
    try:
        for entry in os.listdir(fd):
            if entry.endswith(".xml") or entry.startswith(TMP_PREFIX):
                _discard(fd, entry)
    finally:
        os.close(fd)
    with contextlib.suppress(OSError):
        os.rmdir(ports.name, dir_fd=dfd)


def read_nofollow(path: Path) -> bytes:
    """The content of ``path``, refused (ELOOP) if it is a symbolic link."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        return f.read(MAX_INPUT_BYTES + 1)


def make_dir(path: Path, mode: int = 0o755) -> None:
    """Create ``path`` and its missing parents with ``mode`` exactly (not
    the umask's); an existing directory is left as it is, a symlink refused."""
    try:  # the usual cases first: the parent exists (one or two calls)
        os.mkdir(path, mode)
    except FileExistsError:
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            raise OSError(errno.ENOTDIR, "not a directory (a symbolic link?)", str(path)) from None
        return
    except FileNotFoundError:
        pass  # a parent is missing: made below
    else:
        os.chmod(path, mode)
        return
    missing = []
    p = path
    while not os.path.lexists(p):
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, mode)
        except FileExistsError:
            continue
        os.chmod(d, mode)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise OSError(errno.ENOTDIR, "not a directory (a symbolic link?)", str(path))


def atomic_symlink(path: Path, target: str) -> None:
    """Point the symlink ``path`` at ``target`` atomically."""
    directory = path.parent
    tmp = directory / f"{TMP_PREFIX}{secrets.token_hex(6)}.link"
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass
    os.symlink(target, tmp)
    try:
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(directory)


def remove_file(path: Path) -> bool:
    """Unlink ``path`` (missing is fine) and fsync its directory. True if removed."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    fsync_dir(path.parent)
    return True


def _as_oserror_problem(e: Exception) -> str:
    if isinstance(e, NetfsError):
        return e.message
    if isinstance(e, OSError):
        return e.strerror or str(e)
    return str(e) or type(e).__name__


@dataclass
class StoredConfig:
    """A definition read from the config directory."""

    definition: NetworkDef
    autostart: bool
    path: Path
    problem: str | None = None  # why it will not start (today's validation)
    # values generated at this load that are not in the file (it could not be
    # rewritten): a reload keeps the network's current ones instead
    unsaved_uuid: bool = False
    unsaved_mac: bool = False


@dataclass
class StoredStatus:
    """A status file (an active network) and its saved ports."""

    live: NetworkDef
    path: Path
    ports: dict[str, NetworkPort] = field(default_factory=dict)


@dataclass
class Loaded:
    configs: dict[str, StoredConfig] = field(default_factory=dict)
    statuses: dict[str, StoredStatus] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    # network name -> why its status file could not be read completely
    bad_statuses: dict[str, str] = field(default_factory=dict)
    # every name with a config or status file that could not be loaded
    # (config: its file's stem) -> the reason: never an orphan
    unreadable: dict[str, str] = field(default_factory=dict)


def _xml_files(directory: Path) -> list[Path]:
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return []
    out = []
    for e in entries:
        if e.name.startswith(".") or not e.name.endswith(".xml") or len(e.name) <= 4:
            continue
        try:
            if not e.is_file():
                continue
        except OSError:
            continue
        out.append(Path(e.path))
    out.sort()
    return out


def network_problems(net: NetworkDef) -> str | None:
    """What define-time validation says about ``net`` today (None: nothing).

    validate_network fills in only the bridge name and the MAC, and here
    both are off, so ``net`` is checked in place: the copy that
    netfs.model.validate.network_problems makes cost ~0.25 ms per network,
    a quarter of loading 1000 of them."""
    try:
        validate_network(net, assign_bridge=False, generate_mac=False)
    except NetfsError as e:
        return e.message
    return None


def _check_filename(path: Path, net: NetworkDef) -> None:
    stem = path.name[: -len(".xml")]
    if stem != net.name:
        raise NetfsError(
            errno.EINVAL,
            f"Network config filename '{path}' does not match network name '{net.name}'",
        )


def format_status(
    live: NetworkDef,
    *,
    header: bool = True,
    class_ids: Iterable[int] = (),
    floor_sum: int = 0,
) -> bytes:
    """The status document: ``<networkstatus>`` wrapping the live ``<network>``.

    Structure as libvirt's (§3.4): the QoS class ids in use (``0-2`` are
    always reserved; ``class_ids`` are those of ports with an inbound floor),
    the sum of those floors, then the live network.
    """
    inner = format_network(live)
    # split at newlines only: splitlines() would also split at U+2028 and
    # other line breaks a name may hold, and change it
    lines = inner.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    body = "".join("  " + line + "\n" if line else "\n" for line in lines)
    bitmap = format_bitmap({0, 1, 2} | set(class_ids))
    return (
        (_header(live.name) if header else b"")
        + f"<networkstatus>\n  <class_id bitmap='{bitmap}'/>\n  <floor sum='{floor_sum}'/>\n".encode()
        + body.encode()
        + b"</networkstatus>\n"
    )


def format_bitmap(bits: Iterable[int]) -> str:
    """A set of numbers as libvirt prints a bitmap: ranges joined by commas
    (``0-4,7``)."""
    out: list[str] = []
    run: list[int] = []
    for b in sorted(set(bits)):
        if run and b == run[-1] + 1:
            run.append(b)
            continue
        if run:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [b]
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(out)


def parse_status(data: bytes) -> NetworkDef:
    """Parse a status file: ``<networkstatus>`` or (older form) a bare ``<network>``."""
    root = parse_document(data)
    tag = etree.QName(root).localname
    if tag == "network":
        return parse_network(data)
    if tag != "networkstatus":
        raise NetfsError(errno.EINVAL, f"unexpected root element <{tag}> in status file")
    inner = root.find("network")
    if inner is None:
        raise NetfsError(errno.EINVAL, "Could not find any 'network' element in status file")
    return parse_network(etree.tostring(inner))


class StateStore:
    """Files of netfs: see the module docstring for the layout and the rules."""

    def __init__(self, config_dir: Path, state_dir: Path) -> None:
        self.config_dir = Path(config_dir)
        self.state_dir = Path(state_dir)
        self.autostart_dir = self.config_dir / "autostart"
        # network -> (the parts of the live definition, body, document) of
        # its last staged status file (see stage_status); a few at most
        self._status_memo: dict[str, tuple[tuple[object, ...], bytes, bytes]] = {}
        # network -> its directory (a start asks for it a few times)
        self._dirs: dict[str, Path] = {}

    # -- paths ---------------------------------------------------------------

    def config_path(self, name: str) -> Path:
        _check_component(name)
        return self.config_dir / f"{name}.xml"

    def autostart_path(self, name: str) -> Path:
        _check_component(name)
        return self.autostart_dir / f"{name}.xml"

    def network_dir(self, name: str) -> Path:
        d = self._dirs.get(name)
        if d is None:
            _check_component(name)
            d = self.state_dir / name
            if len(self._dirs) >= DIR_MEMO:
                self._dirs.clear()
            self._dirs[name] = d
        return d

    def status_path(self, name: str) -> Path:
        return self.network_dir(name) / STATUS

    def ports_dir(self, name: str) -> Path:
        return self.network_dir(name) / "ports"

    def run_dir(self, name: str) -> Path:
        """The network's own directory for runtime files of its start steps
        (beside its ports; made by the step that needs it)."""
        return self.network_dir(name) / "run"

    def port_path(self, name: str, port: str) -> Path:
        _check_component(port, "port")
        return self.ports_dir(name) / f"{port}.xml"

    # -- set-up --------------------------------------------------------------

    def ensure_dirs(self) -> None:
        """Create the directories (mode 0755) and move status files of the
        previous layout into place."""
        for d in (self.config_dir, self.autostart_dir, self.state_dir):
            make_dir(d)
        self.migrate_layout()

    def migrate_layout(self) -> list[str]:
        """Move each status file of the previous layout, ``<state_dir>/NAME.xml``,
        to ``<state_dir>/NAME/status.xml``; returns the names moved. Its ports
        and start intent were in ``<state_dir>/NAME/`` already. Idempotent and
        safe to interrupt (one rename per network); a status file already in
        the new place wins (the old one is left, and logged)."""
        moved = []
        for path in _xml_files(self.state_dir):
            name = path.name[: -len(".xml")]
            try:
                _check_component(name)
                target = self.status_path(name)
                make_dir(target.parent, NETWORK_DIR_MODE)
                if os.path.lexists(target):
                    log.warning("%s: left as it is: %s exists", path, target)
                    continue
                os.rename(path, target)
            except (OSError, NetfsError) as e:
                log.warning("%s: cannot move it to the state layout: %s", path, e)
                continue
            fsync_dir(target.parent)
            moved.append(name)
        if moved:
            fsync_dir(self.state_dir)
            log.info(
                "state directory %s: moved to the layout NAME/status.xml: %d",
                self.state_dir,
                len(moved),
            )
        return moved

    def _network_dirs(self) -> list[os.DirEntry[str]]:
        """The networks' directories (not symlinks, not our dot files)."""
        try:
            entries = list(os.scandir(self.state_dir))
        except FileNotFoundError:
            return []
        out = []
        for e in entries:
            try:
                if not e.name.startswith(".") and e.is_dir(follow_symlinks=False):
                    out.append(e)
            except OSError:
                continue
        return out

    def remove_stale_temp_files(self) -> list[Path]:
        """Remove temporary files a crash left behind (only our own prefix)."""
        removed = []
        dirs = [self.config_dir, self.autostart_dir, self.state_dir]
        for e in self._network_dirs():
            dirs += [Path(e.path), Path(e.path) / "ports"]
        for d in dirs:
            try:
                entries = list(os.scandir(d))
            except (FileNotFoundError, NotADirectoryError):
                continue
            for e in entries:
                if e.name.startswith(TMP_PREFIX):
                    try:
                        os.unlink(e.path)
                        removed.append(Path(e.path))
                    except OSError:
                        pass
        return removed

    # -- definitions -----------------------------------------------------------

    def write_config(self, net: NetworkDef) -> None:
        """Save a definition; EFBIG (nothing written) when it, or the status
        file that starting it writes, would be too large to load again."""
        data = _header(net.name) + format_network(net, inactive=True).encode()
        check_loadable(data, f"the definition of network '{shown_name(net.name)}'")
        check_loadable(format_status(net), f"the status file of network '{shown_name(net.name)}'")
        atomic_write(self.config_path(net.name), data)

    def delete_config(self, name: str) -> None:
        self.set_autostart(name, False)
        remove_file(self.config_path(name))

    def set_autostart(self, name: str, on: bool) -> None:
        link = self.autostart_path(name)
        if on:
            make_dir(self.autostart_dir)
            atomic_symlink(link, os.path.join("..", f"{name}.xml"))
        else:
            try:
                os.unlink(link)
            except FileNotFoundError:
                return
            fsync_dir(self.autostart_dir)

    def is_autostart(self, name: str) -> bool:
        """True iff the autostart link exists and points at the config file."""
        link = self.autostart_path(name)
        try:
            if os.readlink(link) == f"../{name}.xml":  # ours (the usual case)
                return self.config_path(name).is_file()
        except OSError:
            return False
        try:
            return link.resolve(strict=True) == self.config_path(name).resolve(strict=True)
        except (OSError, RuntimeError):
            return False

    def load_config(
        self, path: Path, known: NetworkDef | None = None, autostart_names: set[str] | None = None
    ) -> StoredConfig:
        """Read one config file (raises NetfsError/OSError when unusable).

        ``known``: the live definition of the same name, if any. When the file
        is byte for byte what :meth:`write_config` writes for it (the usual
        case: no pending redefinition), that object is reused instead of
        parsing the file again (formatting is ~70x cheaper than parsing;
        parse(format(x)) == x is the model's fixed-point property).
        """
        data = path.read_bytes()
        net = None
        if (
            known is not None
            and path.name == f"{known.name}.xml"
            and data == _header(known.name) + format_network(known, inactive=True).encode()
        ):
            net = known
        new_uuid = new_mac = False
        if net is None:
            net = parse_network(data)
            _check_filename(path, net)
            new_uuid = net.uuid_generated
            new_mac = give_mac(net)
        problem = network_problems(net)
        if (new_uuid or new_mac) and problem is None:
            try:
                self.write_config(net)
            except OSError as e:
                log.warning("%s: cannot save its generated uuid/MAC: %s", path, e)
            else:
                log.info("%s: generated uuid/MAC saved", path)
                net.uuid_generated = new_uuid = new_mac = False
        return StoredConfig(
            definition=net,
            autostart=(
                self.is_autostart(net.name)
                if autostart_names is None or f"{net.name}.xml" in autostart_names
                else False
            ),
            path=path,
            problem=problem,
            unsaved_uuid=new_uuid,
            unsaved_mac=new_mac,
        )

    def load_configs(
        self, known: dict[str, NetworkDef] | None = None
    ) -> tuple[dict[str, StoredConfig], list[Problem]]:
        configs: dict[str, StoredConfig] = {}
        problems: list[Problem] = []
        known = known or {}
        try:  # one listing instead of a readlink per config
            autostart_names = set(os.listdir(self.autostart_dir))
        except OSError:
            autostart_names = set()
        for path in _xml_files(self.config_dir):
            try:
                cfg = self.load_config(path, known.get(path.name[: -len(".xml")]), autostart_names)
            except Exception as e:  # lenient: report and go on
                problems.append((path, _as_oserror_problem(e)))
                continue
            configs[cfg.definition.name] = cfg
            if cfg.problem:
                problems.append((path, cfg.problem))
        return configs, problems

    # -- status ----------------------------------------------------------------

    def write_status(
        self, live: NetworkDef, class_ids: Iterable[int] = (), floor_sum: int = 0
    ) -> None:
        data = format_status(live, class_ids=class_ids, floor_sum=floor_sum)
        check_loadable(data, f"the status file of network '{shown_name(live.name)}'")
        path = self.status_path(live.name)
        make_dir(path.parent, NETWORK_DIR_MODE)
        atomic_write(path, data)

    def stage_status(self, live: NetworkDef) -> Staged:
        """A start's status file (no ports yet), made before the kernel work
        (in the same netlink submission), after the network's stale port
        files are removed (not fsync'ed: a host crash that kept them has
        them removed at the next start). It is written and fsync'ed as
        ``<state_dir>/NAME/starting``: the start intent, which names the
        live definition and so the link the start is about to create
        (:meth:`load_intents`). The core renames it into place
        (:meth:`publish_staged`, on its loop) once the network is up, or
        removes it (:meth:`discard_staged`). ``Staged.text``: the document
        without its header, the network's status.xml until its live
        definition changes."""
        # a start of the same definition as the last one (the same parts:
        # a definition is never changed in place, a change is a new object)
        # has the same document: formatted and checked once
        parts = tuple(vars(live).values())
        memo = self._status_memo.get(live.name)
        if (
            memo is not None
            and len(memo[0]) == len(parts)
            and all(map(operator.is_, memo[0], parts))
        ):
            _parts, body, data = memo
        else:
            body = format_status(live, header=False)
            data = _header(live.name) + body
            check_loadable(data, f"the status file of network '{shown_name(live.name)}'")
            if len(self._status_memo) >= STATUS_MEMO:
                self._status_memo.clear()
            self._status_memo[live.name] = (parts, body, data)
        path = self.status_path(live.name)
        make_dir(path.parent, NETWORK_DIR_MODE)
        dfd = _open_parent(path)
        try:
            _clear_ports(dfd, path.parent / "ports")
            tmp = _stage(dfd, path, data, 0o600, True, STARTING)
        finally:
            os.close(dfd)
        return Staged(path, tmp, body)

    def publish_staged(self, staged: Staged) -> None:
        """Rename a staged file into place (:func:`publish_staged`)."""
        publish_staged(staged)

    def discard_staged(self, staged: Staged) -> None:
        """Remove a staged file (a start's intent with it); the network's
        directory goes too when nothing else is in it."""
        discard_staged(staged)
        self._remove_network_dir(staged.path.parent.name)

    def delete_status(self, name: str) -> bool:
        removed = remove_file(self.status_path(name))
        self._remove_network_dir(name)
        return removed

    def _remove_network_dir(self, name: str) -> None:
        """A network's directory goes when nothing is left in it."""
        d = self.network_dir(name)
        with contextlib.suppress(OSError):
            os.rmdir(d / "ports")
        with contextlib.suppress(OSError):
            os.rmdir(d)

    def has_status(self, name: str) -> bool:
        return os.path.lexists(self.status_path(name))

    def load_statuses(
        self, unreadable: dict[str, str] | None = None
    ) -> tuple[dict[str, StoredStatus], list[Problem]]:
        """The status files and their ports. ``unreadable`` (if given) gets
        the names of networks whose status file exists but could not be
        read completely, with the reason."""
        statuses: dict[str, StoredStatus] = {}
        problems: list[Problem] = []
        for e in self._network_dirs():
            path = Path(e.path) / STATUS
            try:
                data = read_nofollow(path)
            except FileNotFoundError:
                continue  # no status: an inactive network's leftovers
            except OSError as err:
                problems.append((path, _as_oserror_problem(err)))
                if unreadable is not None:
                    unreadable[e.name] = _as_oserror_problem(err)
                continue
            try:
                live = parse_status(data)
                if live.name != e.name:
                    raise NetfsError(
                        errno.EINVAL,
                        f"Network status file '{path}' does not match network name '{live.name}'",
                    )
            except Exception as err:
                problems.append((path, _as_oserror_problem(err)))
                if unreadable is not None:
                    unreadable[e.name] = _as_oserror_problem(err)
                continue
            ports, port_problems = self.load_ports(live.name)
            problems += port_problems
            statuses[live.name] = StoredStatus(live=live, path=path, ports=ports)
        return statuses, problems

    def load(self) -> Loaded:
        """Everything: statuses (with ports), then configs. ``unreadable``
        names every network with a file that exists but could not be loaded
        (a config or a status file), so that such a network is never taken
        for gone (its bridge is not an orphan)."""
        bad_statuses: dict[str, str] = {}
        statuses, p1 = self.load_statuses(bad_statuses)
        configs, p2 = self.load_configs({k: v.live for k, v in statuses.items()})
        unreadable = dict(bad_statuses)
        for path, problem in p2:
            stem = path.name[: -len(".xml")]
            if path.parent == self.config_dir and stem not in configs:
                unreadable.setdefault(stem, problem)
        return Loaded(
            configs=configs,
            statuses=statuses,
            problems=p1 + p2,
            bad_statuses=bad_statuses,
            unreadable=unreadable,
        )

    # -- ports -----------------------------------------------------------------

    def write_port(self, name: str, port_name: str, port: NetworkPort) -> None:
        path = self.port_path(name, port_name)
        data = format_port(port).encode()
        check_loadable(data, f"port '{shown_name(port_name)}'")
        make_dir(path.parent.parent, NETWORK_DIR_MODE)
        make_dir(path.parent, NETWORK_DIR_MODE)
        atomic_write(path, data)

    def delete_port(self, name: str, port_name: str) -> bool:
        return remove_file(self.port_path(name, port_name))

    def port_names(self, name: str) -> list[str]:
        return [p.name[: -len(".xml")] for p in _xml_files(self.ports_dir(name))]

    def delete_ports(
        self, name: str, port_names: Iterable[str] | None = None, *, sync: bool = True
    ) -> list[str]:
        """Delete the port files of a network (all of them by default);
        ``sync=False``: the directory is not fsync'ed (stale files removed
        at a start, removed again at the next one if a host crash kept them)."""
        if port_names is None and not os.path.lexists(self.ports_dir(name)):
            return []  # no ports directory: nothing to delete or tidy
        names = self.port_names(name) if port_names is None else list(port_names)
        removed = [p for p in names if self._unlink_quiet(self.port_path(name, p))]
        if removed and sync:
            fsync_dir(self.ports_dir(name))
        if port_names is None:
            self._remove_network_dir(name)
        return removed

    @staticmethod
    def _unlink_quiet(path: Path) -> bool:
        try:
            os.unlink(path)
            return True
        except FileNotFoundError:
            return False

    def load_ports(self, name: str) -> tuple[dict[str, NetworkPort], list[Problem]]:
        ports: dict[str, NetworkPort] = {}
        problems: list[Problem] = []
        for path in _xml_files(self.ports_dir(name)):
            try:
                port_name = path.name[: -len(".xml")]
                _check_component(port_name, "port")
                data = read_nofollow(path)
                ports[port_name] = parse_port(data, strict=False, owner_name=port_name)
            except Exception as e:
                problems.append((path, _as_oserror_problem(e)))
        return ports, problems

    # -- start intents ---------------------------------------------------------

    def intent_path(self, name: str) -> Path:
        return self.network_dir(name) / STARTING

    def load_intents(
        self, link_of: Callable[[NetworkDef], str | None]
    ) -> dict[str, tuple[str, str | None]]:
        """Networks whose start was under way: name -> (uuid, the link it
        was about to create). The intent is the start's staged status file
        (:meth:`stage_status`): ``link_of`` names the link of its live
        definition (the sub-driver's answer). An intent of the previous
        form, one line ``UUID LINK``, is read too. One that cannot be read
        names no link."""
        out: dict[str, tuple[str, str | None]] = {}
        for e in self._network_dirs():
            try:
                data = read_nofollow(Path(e.path) / STARTING)
            except OSError:
                continue
            try:
                if data.lstrip().startswith(b"<"):
                    live = parse_status(data)
                    out[e.name] = (live.uuid, link_of(live))
                    continue
                parts = data.decode().split()
            except Exception as err:
                log.warning("network %s: its start intent is unreadable: %s", e.name, err)
                out[e.name] = ("", None)
                continue
            # an empty one (a crash as it was written) names nothing either
            out[e.name] = (parts[0], parts[1] if len(parts) > 1 else None) if parts else ("", None)
        return out

    def delete_intent(self, name: str) -> None:
        path = self.intent_path(name)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        # the network's directory goes too when nothing else is in it
        self._remove_network_dir(name)

    # -- once per boot ---------------------------------------------------------

    def autostarted(self) -> bool:
        return (self.state_dir / AUTOSTARTED).exists()

    def mark_autostarted(self) -> None:
        atomic_write(self.state_dir / AUTOSTARTED, b"")
