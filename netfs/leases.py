"""DHCP lease records: dnsmasq's lease helper, the `leases` text, a change watch.

dnsmasq runs with ``--leasefile-ro`` and ``--dhcp-script`` pointing at a tiny
entry script that calls :func:`helper_main` (as libvirt's leases helper does):

- ``init``: print the current leases in dnsmasq's lease-file format, so a
  restarted dnsmasq (or network, or daemon) knows them and a guest keeps its
  address;
- ``add``/``old`` (granted/renewed) and ``del`` (released/expired): update the
  records of the network.

The records of network NAME are ``<leases dir>/NAME.json`` (the leases dir is
``STATE/dnsmasq/leases``): written atomically (temporary file + rename), under
an flock of ``<leases dir>/.NAME.lock`` against concurrent helper runs. The
network is named by the environment dnsmasq was started with
(``NETFS_NETWORK``, ``NETFS_LEASES_DIR``), never by anything a guest sends.
What guests send (host name, client id) is stored as it came and escaped when
shown (:func:`format_leases`); only well-formed values go back to dnsmasq.

The helper must start fast: this module imports only the standard library at
its top (trio and ctypes only inside the watch).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import sys
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import NamedTuple

ENV_NETWORK = "NETFS_NETWORK"
ENV_DIR = "NETFS_LEASES_DIR"
SUFFIX = ".json"

# what may go back to dnsmasq in `init` (anything else is replaced by `*` or dropped)
_MAC = re.compile(r"[0-9A-Fa-f]{2}([:-][0-9A-Fa-f]{2})*\Z")
_HEX = re.compile(r"[0-9A-Fa-f]{1,2}(:[0-9A-Fa-f]{1,2})*\Z")
_IAID = re.compile(r"T?[0-9]{1,10}\Z")
_HOST = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.-]{0,252})\Z")
_ADDR = re.compile(r"[0-9A-Fa-f.:]{2,45}\Z")


class Lease(NamedTuple):
    """One DHCP lease (IPv4, or IPv6 when ``iaid`` is set)."""

    address: str
    mac: str | None
    expiry: int  # absolute epoch seconds; 0: never expires
    hostname: str | None = None
    client_id: str | None = None  # client id (IPv4) or client DUID (IPv6)
    iaid: str | None = None

    @property
    def protocol(self) -> str:
        return "ipv6" if ":" in self.address else "ipv4"

    def expired(self, now: float) -> bool:
        return 0 < self.expiry < now


class Records(NamedTuple):
    leases: tuple[Lease, ...] = ()
    server_duid: str | None = None


class LeaseChange(NamedTuple):
    """What changed in one network's records; added/removed are (mac, address)."""

    network: str
    added: tuple[tuple[str, str], ...]
    removed: tuple[tuple[str, str], ...]


def leases_dir(state_dir: str | os.PathLike[str]) -> str:
    return os.path.join(os.fspath(state_dir), "dnsmasq", "leases")


def records_path(directory: str | os.PathLike[str], name: str) -> str:
    return os.path.join(os.fspath(directory), name + SUFFIX)


def _check_name(name: str) -> str:
    if not name or "/" in name or name in (".", "..") or name.startswith("."):
        raise ValueError(f"bad network name for lease records: {name!r}")
    return name


# -- the records file ------------------------------------------------------------


def _lease_to_json(lease: Lease) -> dict[str, object]:
    d: dict[str, object] = {"address": lease.address, "expiry": lease.expiry}
    for key in ("mac", "hostname", "client_id", "iaid"):
        value = getattr(lease, key)
        if value is not None:
            d[key] = value
    return d


def _opt_str(d: Mapping[str, object], key: str) -> str | None:
    v = d.get(key)
    return v if isinstance(v, str) else None


def parse_records(data: bytes) -> Records:
    """The records of a file's content; anything malformed is left out."""
    if not data.strip():
        return Records()
    try:
        doc = json.loads(data)
    except ValueError:
        return Records()
    if not isinstance(doc, dict):
        return Records()
    out = []
    for d in doc.get("leases", ()):
        if not isinstance(d, dict):
            continue
        addr, expiry = d.get("address"), d.get("expiry")
        if not isinstance(addr, str) or not isinstance(expiry, int):
            continue
        out.append(
            Lease(
                address=addr,
                mac=_opt_str(d, "mac"),
                expiry=expiry,
                hostname=_opt_str(d, "hostname"),
                client_id=_opt_str(d, "client_id"),
                iaid=_opt_str(d, "iaid"),
            )
        )
    return Records(tuple(out), _opt_str(doc, "server_duid"))


def format_records(records: Records) -> bytes:
    doc: dict[str, object] = {"leases": [_lease_to_json(x) for x in records.leases]}
    if records.server_duid is not None:
        doc["server_duid"] = records.server_duid
    return (json.dumps(doc, indent=1) + "\n").encode()


def read_records(directory: str | os.PathLike[str], name: str) -> Records:
    """The records of a network (empty when it has none)."""
    try:
        with open(records_path(directory, name), "rb") as f:
            return parse_records(f.read())
    except FileNotFoundError:
        return Records()


def read_leases(state_dir: str | os.PathLike[str], name: str) -> list[Lease]:
    """The leases of network `name` under the daemon's state directory."""
    return list(read_records(leases_dir(state_dir), name).leases)


def write_records(directory: str | os.PathLike[str], name: str, records: Records) -> None:
    """Atomically replace a network's records (temporary file, fsync, rename)."""
    final = records_path(directory, _check_name(name))
    tmp = os.path.join(os.fspath(directory), f".{name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, format_records(records))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, final)


def drop_records(state_dir: str | os.PathLike[str], name: str) -> bool:
    """Forget a network's leases (when it is undefined). True if there were any."""
    d = leases_dir(state_dir)
    for path in (records_path(d, _check_name(name)), os.path.join(d, f".{name}.lock")):
        try:
            os.unlink(path)
        except FileNotFoundError:
            if path.endswith(SUFFIX):
                return False
    return True


class _Locked:
    """flock of the network's lock file for the duration of a helper run."""

    def __init__(self, directory: str, name: str) -> None:
        self.path = os.path.join(directory, f".{name}.lock")
        self.fd = -1

    def __enter__(self) -> _Locked:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)  # releases the lock


# -- the helper that dnsmasq runs --------------------------------------------------


def _env_int(env: Mapping[str, str], key: str) -> int | None:
    try:
        return int(env[key])
    except (KeyError, ValueError):
        return None


def lease_from_event(argv: Sequence[str], env: Mapping[str, str], now: float) -> Lease | None:
    """The lease an `add`/`old` call describes (argv: action, mac|duid, address[, name])."""
    if len(argv) < 3:
        return None
    address = argv[2]
    iaid = env.get("DNSMASQ_IAID")
    if iaid is not None:  # DHCPv6: argv[1] is the client's DUID
        mac = env.get("DNSMASQ_MAC") or None
        client_id: str | None = argv[1] or None
    else:
        mac = argv[1] or None
        client_id = env.get("DNSMASQ_CLIENT_ID") or None
    hostname = (
        (argv[3] if len(argv) > 3 else "")
        or env.get("DNSMASQ_SUPPLIED_HOSTNAME")
        or env.get("DNSMASQ_OLD_HOSTNAME")
        or None
    )
    expires = _env_int(env, "DNSMASQ_LEASE_EXPIRES")
    if expires is None:  # dnsmasq built with HAVE_BROKEN_RTC gives a length
        length = _env_int(env, "DNSMASQ_TIME_REMAINING")
        expires = int(now) + length if length else 0
    return Lease(address, mac, expires, hostname, client_id, iaid)


def apply_event(
    records: Records, argv: Sequence[str], env: Mapping[str, str], now: float
) -> Records:
    """The records after dnsmasq's call `argv` (action first); expired leases dropped."""
    action = argv[0] if argv else ""
    kept = [x for x in records.leases if not x.expired(now)]
    duid = records.server_duid
    if action in ("add", "old"):
        lease = lease_from_event(argv, env, now)
        if lease is not None:
            before = [x for x in kept if x.address == lease.address]
            if lease.hostname is None and before and before[0].mac == lease.mac:
                lease = lease._replace(hostname=before[0].hostname)
            kept = [x for x in kept if x.address != lease.address] + [lease]
            duid = env.get("DNSMASQ_SERVER_DUID") or duid
    elif action == "del" and len(argv) >= 3:
        kept = [x for x in kept if x.address != argv[2]]
    return Records(tuple(kept), duid)


def init_lines(records: Records, now: float) -> str:
    """dnsmasq's lease-file format for `init`: only well-formed values go back."""

    def field(value: str | None, pattern: re.Pattern[str]) -> str:
        return value if value is not None and pattern.match(value) else "*"

    v4, v6 = [], []
    for x in records.leases:
        if x.expired(now) or not _ADDR.match(x.address):
            continue
        host, cid = field(x.hostname, _HOST), field(x.client_id, _HEX)
        if x.iaid is None:
            if x.mac is not None and _MAC.match(x.mac):
                v4.append(f"{x.expiry} {x.mac} {x.address} {host} {cid}\n")
        elif _IAID.match(x.iaid):
            v6.append(f"{x.expiry} {x.iaid} {x.address} {host} {cid}\n")
    out = "".join(v4)
    if v6:
        if records.server_duid and _HEX.match(records.server_duid):
            out += f"duid {records.server_duid}\n"
        out += "".join(v6)
    return out


def helper_main(
    argv: Sequence[str], env: Mapping[str, str] | None = None, now: float | None = None
) -> int:
    """The lease helper: `argv` as dnsmasq passes it (without the program)."""
    env = os.environ if env is None else env
    now = time.time() if now is None else now
    name, directory = env.get(ENV_NETWORK), env.get(ENV_DIR)
    if not name or not directory:
        print(f"netfs lease helper: {ENV_NETWORK} and {ENV_DIR} must be set", file=sys.stderr)
        return 1
    try:
        _check_name(name)
    except ValueError as e:
        print(f"netfs lease helper: {e}", file=sys.stderr)
        return 1
    action = argv[0] if argv else ""
    try:
        os.makedirs(directory, mode=0o755, exist_ok=True)
        if action == "init":
            sys.stdout.write(init_lines(read_records(directory, name), now))
            sys.stdout.flush()
            return 0
        if action not in ("add", "old", "del"):
            return 0  # tftp, arp, relay-snoop: not leases
        with _Locked(directory, name):
            records = read_records(directory, name)
            updated = apply_event(records, argv, env, now)
            if updated != records:
                write_records(directory, name, updated)
    except OSError as e:
        print(f"netfs lease helper: {e}", file=sys.stderr)
        return 1
    return 0


def entry_script(python: str, package_parent: str) -> str:
    """The executable dnsmasq runs (stdlib-only start: -I -S, no site)."""
    return (
        f"#!{python} -IS\n"
        "import sys\n"
        f"sys.path.insert(0, {package_parent!r})\n"
        "from netfs.leases import helper_main\n"
        "sys.exit(helper_main(sys.argv[1:]))\n"
    )


# -- what NAME/leases shows -------------------------------------------------------

_SAFE = frozenset(range(0x21, 0x7F)) - {0x5C}


def escape(value: str | None) -> str:
    """A field: `-` for none; non-printable ASCII, space and backslash as \\xNN."""
    if value is None or value == "":
        return "-"
    raw = value.encode("utf-8", "surrogateescape")
    return "".join(chr(b) if b in _SAFE else f"\\x{b:02x}" for b in raw)


def format_expiry(expiry: int) -> str:
    if expiry == 0:
        return "never"
    return time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(expiry))


def format_leases(
    leases: Iterable[Lease], now: float, prefixes: Mapping[str, int] | None = None
) -> str:
    """NAME/leases: `EXPIRY MAC PROTOCOL ADDRESS/PREFIX HOSTNAME CLIENTID` per line.

    `prefixes` maps `ipv4`/`ipv6` to the prefix of the network's first address
    of that family (default 32/128). Expired leases are left out."""
    prefixes = prefixes or {}
    lines = []
    for x in leases:
        if x.expired(now):
            continue
        prefix = prefixes.get(x.protocol, 128 if x.protocol == "ipv6" else 32)
        lines.append(
            " ".join(
                (
                    format_expiry(x.expiry),
                    escape(x.mac),
                    x.protocol,
                    escape(f"{x.address}/{prefix}"),
                    escape(x.hostname),
                    escape(x.client_id),
                )
            )
            + "\n"
        )
    return "".join(lines)


# -- change notification -------------------------------------------------------------


def _pairs(records: Records, now: float) -> set[tuple[str, str]]:
    return {(x.mac or "-", x.address) for x in records.leases if not x.expired(now)}


def diff(network: str, old: Records, new: Records, now: float) -> LeaseChange:
    a, b = _pairs(old, now), _pairs(new, now)
    return LeaseChange(network, tuple(sorted(b - a)), tuple(sorted(a - b)))


IN_CLOSE_WRITE = 0x8
IN_MOVED_TO = 0x80
IN_DELETE = 0x200
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000


class LeaseWatch:
    """inotify on the leases directory: every change of a network's records.

    ``async for change in watch.changes()`` yields a :class:`LeaseChange` per
    rewrite of a records file (added/removed may both be empty: a renewal),
    against what the watch saw before (it starts from the files as they are).
    Close with :meth:`close`."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        import ctypes

        self.directory = os.fspath(directory)
        os.makedirs(self.directory, mode=0o755, exist_ok=True)
        libc = ctypes.CDLL(None, use_errno=True)
        fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))
        mask = IN_CLOSE_WRITE | IN_MOVED_TO | IN_DELETE
        if libc.inotify_add_watch(fd, os.fsencode(self.directory), mask) < 0:
            code = ctypes.get_errno()
            os.close(fd)
            raise OSError(code, os.strerror(code))
        self.fd = fd
        self.known: dict[str, Records] = {}
        for entry in os.listdir(self.directory):
            if entry.endswith(SUFFIX) and not entry.startswith("."):
                name = entry[: -len(SUFFIX)]
                self.known[name] = read_records(self.directory, name)

    def close(self) -> None:
        if self.fd >= 0:
            import trio

            try:  # wakes a task waiting in changes() (it then ends)
                trio.lowlevel.notify_closing(self.fd)
            except RuntimeError:  # not inside trio
                pass
            os.close(self.fd)
            self.fd = -1

    def _names(self, data: bytes) -> list[str]:
        names, i = [], 0
        while i + 16 <= len(data):
            length = int.from_bytes(data[i + 12 : i + 16], sys.byteorder)
            raw = data[i + 16 : i + 16 + length].rstrip(b"\0")
            i += 16 + length
            name = os.fsdecode(raw)
            if name.endswith(SUFFIX) and not name.startswith("."):
                stem = name[: -len(SUFFIX)]
                if stem not in names:
                    names.append(stem)
        return names

    def poll(self, now: float | None = None) -> list[LeaseChange]:
        """The changes pending now (non-blocking)."""
        now = time.time() if now is None else now
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return []
        out = []
        for name in self._names(data):
            new = read_records(self.directory, name)
            out.append(diff(name, self.known.get(name, Records()), new, now))
            if new.leases or new.server_duid:
                self.known[name] = new
            else:
                self.known.pop(name, None)
        return out

    async def changes(self) -> AsyncIterator[LeaseChange]:
        import trio

        while True:
            if self.fd < 0:
                return
            try:
                await trio.lowlevel.wait_readable(self.fd)
            except trio.ClosedResourceError:
                return
            for change in self.poll():
                yield change


if __name__ == "__main__":
    sys.exit(helper_main(sys.argv[1:]))
