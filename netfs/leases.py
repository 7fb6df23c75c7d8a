"""DHCP lease records: dnsmasq's lease helper, the `leases` text, a change watch.

dnsmasq runs with ``--leasefile-ro`` and ``--dhcp-script`` pointing at a tiny
entry script that calls :func:`helper_main` (as libvirt's leases helper does):

- ``init``: print the current leases in dnsmasq's lease-file format, so a
  restarted dnsmasq (or network, or daemon) knows them and a guest keeps its
  address;
- ``add``/``old`` (granted/renewed) and ``del`` (released/expired): update the
  records of the network.

The records of network NAME are ``<leases dir>/NAME.records`` (the leases dir is
``STATE/.dnsmasq/leases``): written atomically (temporary file + rename), under
an flock of ``<leases dir>/.NAME.lock`` against concurrent helper runs. The
network is named by the environment dnsmasq was started with
(``NETFS_NETWORK``, ``NETFS_LEASES_DIR``), never by anything a guest sends.
What guests send (host name, client id) is stored as it came and escaped when
shown (:func:`format_leases`); only well-formed values go back to dnsmasq.

The helper must start fast: this module imports only a few built-in modules
at its top (no json, re or typing; trio and ctypes only inside the watch).
"""

from __future__ import annotations

import fcntl
import os
import sys
import time

TYPE_CHECKING = False  # typing is not imported at run time (the helper starts fast)
if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence

ENV_NETWORK = "NETFS_NETWORK"
ENV_DIR = "NETFS_LEASES_DIR"
SUFFIX = ".records"
INIT_SUFFIX = ".init"  # the same leases in dnsmasq's lease-file format, for `init`
MAGIC = "netfs-leases 1"

# what may go back to dnsmasq in `init` (anything else is replaced by `*` or dropped)
_HEXDIGITS = frozenset("0123456789abcdefABCDEF")
_HOSTCHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


def _is_mac(v: str) -> bool:
    parts = v.replace("-", ":").split(":")
    return len(v) >= 2 and all(len(p) == 2 and set(p) <= _HEXDIGITS for p in parts)


def _is_hex(v: str) -> bool:
    return bool(v) and all(0 < len(p) <= 2 and set(p) <= _HEXDIGITS for p in v.split(":"))


def _is_iaid(v: str) -> bool:
    digits = v[1:] if v.startswith("T") else v
    return 0 < len(digits) <= 10 and digits.isascii() and digits.isdigit()


def _is_host(v: str) -> bool:
    return 0 < len(v) <= 253 and set(v) <= _HOSTCHARS and v[0] not in ".-"


def _is_addr(v: str) -> bool:
    return 2 <= len(v) <= 45 and set(v) <= _HEXDIGITS | {".", ":"}


class Lease:
    """One DHCP lease (IPv4, or IPv6 when ``iaid`` is set)."""

    __slots__ = ("address", "mac", "expiry", "hostname", "client_id", "iaid")

    def __init__(
        self,
        address: str,
        mac: str | None,
        expiry: int,  # absolute epoch seconds; 0: never expires
        hostname: str | None = None,
        client_id: str | None = None,  # client id (IPv4) or client DUID (IPv6)
        iaid: str | None = None,
    ) -> None:
        self.address = address
        self.mac = mac
        self.expiry = expiry
        self.hostname = hostname
        self.client_id = client_id
        self.iaid = iaid

    def _key(self) -> tuple[object, ...]:
        return (self.address, self.mac, self.expiry, self.hostname, self.client_id, self.iaid)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Lease) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return "Lease" + repr(self._key())

    def replace(self, hostname: str | None, mac: str | None = None) -> Lease:
        """The same lease with this host name (and this MAC, when given)."""
        mac = self.mac if mac is None else mac
        return Lease(self.address, mac, self.expiry, hostname, self.client_id, self.iaid)

    @property
    def protocol(self) -> str:
        return "ipv6" if ":" in self.address else "ipv4"

    def expired(self, now: float) -> bool:
        return 0 < self.expiry < now


class Records:
    """A network's leases and dnsmasq's server DUID (for DHCPv6)."""

    __slots__ = ("leases", "server_duid")

    def __init__(self, leases: tuple[Lease, ...] = (), server_duid: str | None = None) -> None:
        self.leases = leases
        self.server_duid = server_duid

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Records)
            and self.leases == other.leases
            and self.server_duid == other.server_duid
        )

    def __hash__(self) -> int:
        return hash((self.leases, self.server_duid))

    def __repr__(self) -> str:
        return f"Records({self.leases!r}, {self.server_duid!r})"


class LeaseChange:
    """What changed in one network's records; added/removed are (mac, address)."""

    __slots__ = ("network", "added", "removed")

    def __init__(
        self,
        network: str,
        added: tuple[tuple[str, str], ...],
        removed: tuple[tuple[str, str], ...],
    ) -> None:
        self.network = network
        self.added = added
        self.removed = removed

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LeaseChange) and (self.network, self.added, self.removed) == (
            other.network,
            other.added,
            other.removed,
        )

    def __hash__(self) -> int:
        return hash((self.network, self.added, self.removed))

    def __repr__(self) -> str:
        return f"LeaseChange({self.network!r}, {self.added!r}, {self.removed!r})"


def leases_dir(state_dir: str | os.PathLike[str]) -> str:
    return os.path.join(os.fspath(state_dir), ".dnsmasq", "leases")


def records_path(directory: str | os.PathLike[str], name: str) -> str:
    return os.path.join(os.fspath(directory), name + SUFFIX)


def _check_name(name: str) -> str:
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"bad network name for lease records: {name!r}")
    return name


# -- the records file ------------------------------------------------------------
#
# Text, one record a line, fields separated by one space, each field escaped
# as in `leases` (so a field never holds a space or a newline), `-` for none:
#
#     netfs-leases 1
#     duid SERVER-DUID
#     lease ADDRESS EXPIRY MAC HOSTNAME CLIENT-ID IAID


def _enc(value: str | None) -> str:
    if value is None:
        return "-"
    return "\\x2d" if value == "-" else escape(value)


def _dec(field: str) -> str | None:
    if field == "-":
        return None
    if "\\" not in field:
        return field
    out = bytearray()
    i = 0
    raw = field.encode("utf-8", "surrogateescape")
    while i < len(raw):
        if raw[i] == 0x5C and raw[i + 1 : i + 2] == b"x" and i + 4 <= len(raw):
            try:
                out.append(int(raw[i + 2 : i + 4], 16))
                i += 4
                continue
            except ValueError:
                pass
        out.append(raw[i])
        i += 1
    return out.decode("utf-8", "surrogateescape")


def parse_records(data: bytes) -> Records:
    """The records of a file's content; anything malformed is left out."""
    lines = data.decode("ascii", "replace").splitlines()
    if not lines or lines[0] != MAGIC:
        return Records()
    out = []
    duid = None
    for line in lines[1:]:
        f = line.split(" ")
        if f[0] == "duid" and len(f) == 2:
            duid = _dec(f[1])
        elif f[0] == "lease" and len(f) == 7:
            address, expiry = _dec(f[1]), f[2]
            if address is None or not expiry.isascii() or not expiry.isdigit():
                continue
            out.append(Lease(address, _dec(f[3]), int(expiry), _dec(f[4]), _dec(f[5]), _dec(f[6])))
    return Records(tuple(out), duid)


def format_records(records: Records) -> bytes:
    lines = [MAGIC]
    if records.server_duid is not None:
        lines.append(f"duid {_enc(records.server_duid)}")
    for x in records.leases:
        fields = (x.address, str(x.expiry), x.mac, x.hostname, x.client_id, x.iaid)
        lines.append("lease " + " ".join(_enc(v) for v in fields))
    return ("\n".join(lines) + "\n").encode("ascii")


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


def write_records(
    directory: str | os.PathLike[str], name: str, records: Records, now: float | None = None
) -> None:
    """Atomically replace a network's records and its `init` answer (temporary
    file, fsync, rename each; the records file last: that is the change)."""
    _check_name(name)
    now = time.time() if now is None else now
    for suffix, data in (
        (INIT_SUFFIX, init_lines(records, now).encode()),
        (SUFFIX, format_records(records)),
    ):
        final = os.path.join(os.fspath(directory), name + suffix)
        tmp = os.path.join(os.fspath(directory), f".{name}{suffix}.tmp{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, final)


def drop_records(state_dir: str | os.PathLike[str], name: str) -> bool:
    """Forget a network's leases (when it is undefined). True if there were any."""
    d = leases_dir(state_dir)
    paths = (
        records_path(d, _check_name(name)),
        os.path.join(d, name + INIT_SUFFIX),
        os.path.join(d, f".{name}.lock"),
    )
    existed = os.path.exists(paths[0])
    for path in paths:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    return existed


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
            if before and lease.mac is None and before[0].client_id == lease.client_id:
                lease = lease.replace(before[0].hostname, mac=before[0].mac)
            if lease.hostname is None and before and before[0].mac == lease.mac:
                lease = lease.replace(before[0].hostname)
            if before:  # a renewal or a change keeps its place
                kept = [lease if x.address == lease.address else x for x in kept]
            else:
                kept.append(lease)
            duid = env.get("DNSMASQ_SERVER_DUID") or duid
    elif action == "del" and len(argv) >= 3:
        kept = [x for x in kept if x.address != argv[2]]
    return Records(tuple(kept), duid)


def init_lines(records: Records, now: float) -> str:
    """dnsmasq's lease-file format for `init`: only well-formed values go back."""

    def field(value: str | None, ok: Callable[[str], bool]) -> str:
        return value if value is not None and ok(value) else "*"

    v4, v6 = [], []
    for x in records.leases:
        if x.expired(now) or not _is_addr(x.address):
            continue
        host, cid = field(x.hostname, _is_host), field(x.client_id, _is_hex)
        if x.iaid is None:
            if x.mac is not None and _is_mac(x.mac):
                v4.append(f"{x.expiry} {x.mac} {x.address} {host} {cid}\n")
        elif _is_iaid(x.iaid):
            v6.append(f"{x.expiry} {x.iaid} {x.address} {host} {cid}\n")
    out = "".join(v4)
    if v6:
        if records.server_duid and _is_hex(records.server_duid):
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
                write_records(directory, name, updated, now)
    except OSError as e:
        print(f"netfs lease helper: {e}", file=sys.stderr)
        return 1
    return 0


def entry_script(python: str, package_parent: str | None = None) -> str:
    """The executable dnsmasq runs as --dhcp-script.

    ``init`` (which dnsmasq waits for before it reports itself started) is
    answered by the shell from ``NAME.init``, kept beside the records in
    dnsmasq's lease-file format; every other call imports this module (from
    its compiled cache) with the standard library only (``-I -S``: no site,
    no venv) and runs :func:`helper_main`."""
    import shlex

    parent = package_parent or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = (
        "import sys; sys.path.insert(0, sys.argv.pop(1)); "
        "from netfs.leases import helper_main; sys.exit(helper_main(sys.argv[1:]))"
    )
    return (
        "#!/bin/sh\n"
        "# netfs lease helper, run by dnsmasq (--dhcp-script)\n"
        'if [ "$1" = init ]; then\n'
        f'    f="${ENV_DIR}/${ENV_NETWORK}{INIT_SUFFIX}"\n'
        '    [ -s "$f" ] && cat -- "$f" 2>/dev/null\n'
        "    exit 0\n"
        "fi\n"
        f'exec {shlex.quote(python)} -IS -c {shlex.quote(code)} {shlex.quote(parent)} "$@"\n'
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
    return format_leases_until(leases, now, prefixes)[0]


def format_leases_until(
    leases: Iterable[Lease], now: float, prefixes: Mapping[str, int] | None = None
) -> tuple[str, float]:
    """:func:`format_leases`, and the time up to which that text stays the
    same: the earliest expiry among the leases shown (a lease is shown up
    to its expiry second included; ``inf`` when none of them expires)."""
    prefixes = prefixes or {}
    lines = []
    until = float("inf")
    for x in leases:
        if x.expired(now):
            continue
        if 0 < x.expiry < until:
            until = x.expiry
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
    return "".join(lines), until


class LeasesText:
    """NAME/leases of each network, formatted once per version of its
    records file and kept until its first lease expires.

    A version is what ``stat`` says of the records file: device, inode,
    size, modification and change times. The helper replaces the file by a
    rename of a new, complete one (:func:`write_records`), so a change is
    a new inode and the content under an inode never changes; the times
    and size guard against an inode number used again. The text is kept
    with the prefixes it was made for and the span of time it is right
    for: from when it was made to the earliest expiry among its leases
    (``format_leases`` leaves out the leases expired by now). A read then
    costs one ``stat``; a change, an expiry, other prefixes or a clock set
    back make it again. Entries whose records file is gone (the network
    was undefined) are dropped when another is made."""

    __slots__ = ("_entries", "builds")

    def __init__(self) -> None:
        # network -> (version, prefixes, made at, valid until, text)
        self._entries: dict[
            str, tuple[tuple[int, ...], tuple[tuple[str, int], ...], float, float, str]
        ] = {}
        self.builds = 0  # texts made (tests, benches)

    def text(
        self,
        directory: str | os.PathLike[str],
        name: str,
        now: float,
        prefixes: Mapping[str, int] | None = None,
    ) -> str:
        """The leases text of network `name` whose records are in `directory`."""
        path = records_path(directory, name)
        pkey = tuple(sorted((prefixes or {}).items()))
        try:
            st = os.stat(path)
        except FileNotFoundError:
            self._entries.pop(name, None)
            return ""
        hit = self._entries.get(name)
        if (
            hit is not None
            and hit[0] == _version(st)
            and hit[1] == pkey
            and hit[2] <= now <= hit[3]
        ):
            return hit[4]
        try:  # the version of what is read: fstat of the open file
            with open(path, "rb") as f:
                version = _version(os.fstat(f.fileno()))
                data = f.read()
        except FileNotFoundError:
            self._entries.pop(name, None)
            return ""
        text, until = format_leases_until(parse_records(data).leases, now, prefixes)
        self.builds += 1
        self._prune(directory)
        self._entries[name] = (version, pkey, now, until, text)
        return text

    def _prune(self, directory: str | os.PathLike[str]) -> None:
        for name in [n for n in self._entries if not os.path.exists(records_path(directory, n))]:
            del self._entries[name]


def _version(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


# -- change notification -------------------------------------------------------------


def _pairs(records: Records, now: float | None) -> set[tuple[str, str]]:
    return {(x.mac or "-", x.address) for x in records.leases if now is None or not x.expired(now)}


def diff(network: str, old: Records, new: Records, now: float) -> LeaseChange:
    """`old`: the leases seen before, all live then; `new`: the records now.
    A lease of `old` that expired since is removed (dnsmasq's ``del`` at its
    expiry comes when it has expired already)."""
    a, b = _pairs(old, None), _pairs(new, now)
    return LeaseChange(network, tuple(sorted(b - a)), tuple(sorted(a - b)))


def live(records: Records, now: float) -> Records:
    """The records without the leases expired at `now`."""
    kept = tuple(x for x in records.leases if not x.expired(now))
    return records if len(kept) == len(records.leases) else Records(kept, records.server_duid)


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
        now = time.time()
        for entry in os.listdir(self.directory):
            if entry.endswith(SUFFIX):
                name = entry[: -len(SUFFIX)]
                self.known[name] = live(read_records(self.directory, name), now)

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
            if name.endswith(SUFFIX):  # not a lock, temporary or init file
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
            new = live(new, now)  # an expired lease is removed once
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
