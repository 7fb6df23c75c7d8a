"""The state store: the config directory and the state directory on disk.

Layout (as libvirt's network driver keeps it)::

    <config_dir>/NAME.xml                 persistent definition (inactive XML)
    <config_dir>/autostart/NAME.xml       symlink to ../NAME.xml: autostart on
    <state_dir>/NAME.xml                  status file of an active network
    <state_dir>/NAME/ports/PORT.xml       allocated ports of an active network
    <state_dir>/NAME/starting             start intent (uuid, link) while a start runs
    <state_dir>/NAME/run/                 runtime files of the network's start steps
    <state_dir>/autostarted               marker: autostart ran since host boot

Writes are atomic: a temporary file in the same directory is written,
fsync'ed, renamed over the target, and the directory is fsync'ed. A crash
leaves either the old or the new file, never a torn one; a stray temporary
file (name starting with ``.netfs-tmp-``) is ignored by the loaders and
removed by :meth:`StateStore.remove_stale_temp_files`.

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

Every method here is synchronous and may block (fsync): the core calls them
from a worker thread.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from lxml import etree

from netfs.errors import NetfsError
from netfs.model.network import NetworkDef, format_network, is_virtual, parse_network
from netfs.model.port import NetworkPort, format_port, parse_port
from netfs.model.validate import random_mac, validate_network
from netfs.model.xmlsafe import parse_document

log = logging.getLogger(__name__)

TMP_PREFIX = ".netfs-tmp-"
AUTOSTARTED = "autostarted"

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


def check_name(name: str, what: str = "network") -> None:
    """Refuse names that cannot be a file name in our directories (EINVAL)."""
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
        raise NetfsError(errno.EINVAL, f"invalid {what} name '{name}'")


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data``: temp file, fsync, rename, fsync dir."""
    directory = path.parent
    # short: a 250-byte network name makes a 254-byte file name already
    tmp = directory / f"{TMP_PREFIX}{secrets.token_hex(6)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(directory)


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
    body = "".join("  " + line + "\n" if line else "\n" for line in inner.splitlines())
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

    # -- paths ---------------------------------------------------------------

    def config_path(self, name: str) -> Path:
        check_name(name)
        return self.config_dir / f"{name}.xml"

    def autostart_path(self, name: str) -> Path:
        check_name(name)
        return self.autostart_dir / f"{name}.xml"

    def status_path(self, name: str) -> Path:
        check_name(name)
        return self.state_dir / f"{name}.xml"

    def ports_dir(self, name: str) -> Path:
        check_name(name)
        return self.state_dir / name / "ports"

    def run_dir(self, name: str) -> Path:
        """The network's own directory for runtime files of its start steps
        (beside its ports; made by the step that needs it)."""
        return self.ports_dir(name).parent / "run"

    def port_path(self, name: str, port: str) -> Path:
        check_name(port, "port")
        return self.ports_dir(name) / f"{port}.xml"

    # -- set-up --------------------------------------------------------------

    def ensure_dirs(self) -> None:
        for d in (self.config_dir, self.autostart_dir, self.state_dir):
            d.mkdir(parents=True, exist_ok=True)

    def remove_stale_temp_files(self) -> list[Path]:
        """Remove temporary files a crash left behind (only our own prefix)."""
        removed = []
        dirs = [self.config_dir, self.autostart_dir, self.state_dir]
        try:
            dirs += [Path(e.path) / "ports" for e in os.scandir(self.state_dir) if e.is_dir()]
        except FileNotFoundError:
            pass
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
        data = _header(net.name) + format_network(net, inactive=True).encode()
        atomic_write(self.config_path(net.name), data)

    def delete_config(self, name: str) -> None:
        self.set_autostart(name, False)
        remove_file(self.config_path(name))

    def set_autostart(self, name: str, on: bool) -> None:
        link = self.autostart_path(name)
        if on:
            self.autostart_dir.mkdir(parents=True, exist_ok=True)
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
            if net.mac is None and is_virtual(net.forward.mode):
                net.mac = random_mac()
                new_mac = True
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
        atomic_write(
            self.status_path(live.name),
            format_status(live, class_ids=class_ids, floor_sum=floor_sum),
        )

    def delete_status(self, name: str) -> bool:
        return remove_file(self.status_path(name))

    def has_status(self, name: str) -> bool:
        return self.status_path(name).exists()

    def load_statuses(self) -> tuple[dict[str, StoredStatus], list[Problem]]:
        statuses: dict[str, StoredStatus] = {}
        problems: list[Problem] = []
        try:  # networks with a directory (ports, intent): one listing, not a scandir each
            with_dir = {e.name for e in os.scandir(self.state_dir) if e.is_dir()}
        except OSError:
            with_dir = set()
        for path in _xml_files(self.state_dir):
            try:
                live = parse_status(path.read_bytes())
                _check_filename(path, live)
            except Exception as e:
                problems.append((path, _as_oserror_problem(e)))
                continue
            ports: dict[str, NetworkPort] = {}
            if live.name in with_dir:
                ports, port_problems = self.load_ports(live.name)
                problems += port_problems
            statuses[live.name] = StoredStatus(live=live, path=path, ports=ports)
        return statuses, problems

    def load(self) -> Loaded:
        statuses, p1 = self.load_statuses()
        configs, p2 = self.load_configs({k: v.live for k, v in statuses.items()})
        return Loaded(configs=configs, statuses=statuses, problems=p1 + p2)

    # -- ports -----------------------------------------------------------------

    def write_port(self, name: str, port_name: str, port: NetworkPort) -> None:
        path = self.port_path(name, port_name)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, format_port(port).encode())

    def delete_port(self, name: str, port_name: str) -> bool:
        return remove_file(self.port_path(name, port_name))

    def port_names(self, name: str) -> list[str]:
        return [p.name[: -len(".xml")] for p in _xml_files(self.ports_dir(name))]

    def delete_ports(self, name: str, port_names: Iterable[str] | None = None) -> list[str]:
        """Delete the port files of a network (all of them by default)."""
        names = self.port_names(name) if port_names is None else list(port_names)
        removed = [p for p in names if self._unlink_quiet(self.port_path(name, p))]
        if removed:
            fsync_dir(self.ports_dir(name))
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
                check_name(port_name, "port")
                ports[port_name] = parse_port(path.read_bytes(), strict=False, owner_name=port_name)
            except Exception as e:
                problems.append((path, _as_oserror_problem(e)))
        return ports, problems

    # -- start intents ---------------------------------------------------------

    def intent_path(self, name: str) -> Path:
        return self.state_dir / name / "starting"

    def write_intent(self, name: str, uuid: str, bridge: str | None) -> None:
        """Record "about to create BRIDGE for network NAME (uuid)".

        The kernel ignores IFLA_IFALIAS when a bridge is created, so our tag
        arrives in a second request: a crash in between leaves an untagged
        bridge that only this record can identify as ours. Not fsync'ed: it
        guards against a crash of the daemon; a crash of the host takes the
        bridges (and the state directory, a tmpfs) with it.
        """
        path = self.intent_path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{uuid} {bridge or ''}\n")

    def delete_intent(self, name: str) -> None:
        path = self.intent_path(name)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        # the network's directory goes too when nothing else is in it
        with contextlib.suppress(OSError):
            os.rmdir(path.parent)

    def load_intents(self) -> dict[str, tuple[str, str | None]]:
        """Networks whose start was under way: name -> (uuid, bridge name)."""
        out: dict[str, tuple[str, str | None]] = {}
        try:
            entries = [e for e in os.scandir(self.state_dir) if e.is_dir()]
        except FileNotFoundError:
            return out
        for e in entries:
            try:
                text = (Path(e.path) / "starting").read_text()
            except (FileNotFoundError, NotADirectoryError, UnicodeDecodeError):
                continue
            parts = text.split()
            if parts:
                out[e.name] = (parts[0], parts[1] if len(parts) > 1 else None)
        return out

    # -- once per boot ---------------------------------------------------------

    def autostarted(self) -> bool:
        return (self.state_dir / AUTOSTARTED).exists()

    def mark_autostarted(self) -> None:
        atomic_write(self.state_dir / AUTOSTARTED, b"", mode=0o644)
