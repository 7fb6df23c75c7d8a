"""The `netfs` command: argument parsing only; the work is done below."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from netfs.errors import NetfsError

if TYPE_CHECKING:
    from netfs.daemon import MountConfig


def _read_input(path: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    with open(path, "rb") as f:
        return f.read()


def validate_document(data: bytes, owner_name: str = "stdin") -> str:
    """Strict rules, then the canonical XML as libvirt would print it.

    A <network> is treated as `virsh net-define` then `virsh net-dumpxml
    --inactive` on a host with no other networks; a <networkport> or guest
    <interface> as a port document. A guest <interface> names no owner: it
    takes `owner_name`, as a port directory's name is taken in the filesystem.
    """
    from netfs.model import xmlsafe
    from netfs.model.network import format_network, parse_network
    from netfs.model.port import format_port, parse_port
    from netfs.model.validate import validate_network

    root = xmlsafe.root_name(data)
    if root in ("networkport", "interface"):
        return format_port(parse_port(data, strict=True, owner_name=owner_name))
    net = parse_network(data)
    validate_network(net)
    return format_network(net, inactive=True)


def cmd_validate(args: argparse.Namespace) -> int:
    status = 0
    for path in args.files:
        try:
            data = _read_input(path)
        except OSError as e:
            print(f"error: {path}: {e.strerror}", file=sys.stderr)
            status = 1
            continue
        try:
            owner = "stdin" if path == "-" else os.path.splitext(os.path.basename(path))[0]
            sys.stdout.write(validate_document(data, owner))
        except NetfsError as e:
            print(f"error: {e.message}", file=sys.stderr)
            status = 1
    sys.stdout.flush()
    return status


def cmd_dnsmasq_conf(args: argparse.Namespace) -> int:
    """Print the dnsmasq configuration that starting the network would write."""
    from netfs.model import dnsmasq
    from netfs.model.network import parse_network
    from netfs.model.validate import validate_network

    try:
        data = _read_input(args.file)
    except OSError as e:
        print(f"error: {args.file}: {e.strerror}", file=sys.stderr)
        return 1
    try:
        net = parse_network(data)
        validate_network(net)
        files = dnsmasq.render(net, args.dir.rstrip("/") or "/")
    except NetfsError as e:
        print(f"error: {e.message}", file=sys.stderr)
        return 1
    sys.stdout.write(files.conf)
    sys.stdout.flush()
    if not dnsmasq.needs_dnsmasq(net):
        print(f"note: network '{net.name}' needs no dnsmasq: none is started", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="netfs", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "validate",
        help="check network or port XML with libvirt's define-time rules and print it canonically",
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="XML file, or - for stdin")
    p.set_defaults(func=cmd_validate)

    from netfs.model.dnsmasq import DEFAULT_DIR

    p = sub.add_parser(
        "dnsmasq-conf",
        help="print the dnsmasq configuration that starting the network in FILE would write",
    )
    p.add_argument(
        "--dir",
        default=DEFAULT_DIR,
        help=f"dnsmasq's directory named in the configuration (default {DEFAULT_DIR})",
    )
    p.add_argument("file", metavar="FILE", help="network XML file, or - for stdin")
    p.set_defaults(func=cmd_dnsmasq_conf)

    p = sub.add_parser(
        "mount",
        help="run the daemon: mount the network tree at MOUNTPOINT",
    )
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    _add_mount_options(p)
    p.set_defaults(func=cmd_mount)
    return parser


def _add_mount_options(p: argparse.ArgumentParser) -> None:
    from netfs.state import DEFAULT_CONFIG_DIR, DEFAULT_STATE_DIR

    p.add_argument(
        "--config-dir",
        default=None,
        help=f"where definitions are saved (default {DEFAULT_CONFIG_DIR})",
    )
    p.add_argument(
        "--state-dir",
        default=None,
        help=f"where the state of active networks is kept (default {DEFAULT_STATE_DIR})",
    )
    p.add_argument("--netns", default=None, help="manage the bridges of this network namespace")
    p.add_argument("--group", default=None, help="members of this group may write too")
    p.add_argument(
        "--log-file",
        default=None,
        metavar="FILE",
        help="append the daemon's log to FILE (default: stderr; a detached daemon "
        "without it logs only to the journal, when stderr is one)",
    )
    p.add_argument("-f", "--foreground", action="store_true", help="stay in the foreground")
    p.add_argument(
        "-o",
        dest="options",
        action="append",
        metavar="OPTS",
        help="comma-separated mount options: config_dir=, state_dir=, netns=, group=, "
        "log_file=, and FUSE options",
    )


def cmd_mount(args: argparse.Namespace) -> int:
    from netfs.daemon import MountConfig, apply_options, run
    from netfs.guard import Refused

    cfg = MountConfig(mountpoint=args.mountpoint)
    apply_options(cfg, args.options)
    # explicit flags win over -o
    for key in ("config_dir", "state_dir", "netns", "group", "log_file"):
        value = getattr(args, key)
        if value is not None:
            setattr(cfg, key, value)
    cfg.foreground = bool(args.foreground)
    try:
        check_mount_paths(cfg)
    except (Refused, NetfsError) as e:
        print(f"netfs: {e}", file=sys.stderr)
        return 1
    return run(cfg)


def check_mount_paths(cfg: MountConfig) -> None:
    """What the daemon writes through (netfs.guard.check_path), all of it
    looked at before anything is made: the mount point's directories (the
    mount point itself is looked at once no stale mount can hang the look:
    netfs.fs.mounts.cleanup_stale), the configuration and state
    directories, and the log file (and first that the namespace to manage
    can be opened); the mount point becomes its real path
    (which the daemon and its helper use from then on). netfs.guard.prepare
    and open_log then make what is missing, under the daemon's umask,
    walking again."""
    from netfs import guard
    from netfs.netlink import check_netns

    if cfg.netns:
        check_netns(cfg.netns)
    cfg.mountpoint = guard.mount_point(cfg.mountpoint)
    guard.check_path(cfg.config_dir, "configuration directory", dry=True)
    guard.check_path(cfg.state_dir, "state directory", dry=True)
    if cfg.log_file:
        guard.check_log(cfg.log_file)


def _mount_helper_parser() -> argparse.ArgumentParser:
    """mount.fuse's calling form: `netfs SOURCE MOUNTPOINT -o OPTS`."""
    p = argparse.ArgumentParser(prog="netfs", description="mount helper form")
    p.add_argument("source", metavar="SOURCE")
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    _add_mount_options(p)
    for flag in ("-s", "-n", "-v", "-r", "-w"):
        p.add_argument(flag, action="store_true", help=argparse.SUPPRESS)
    p.add_argument("-t", dest="fstype", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_mount)
    return p


MOUNT_VALUE_OPTIONS = (
    "-o",
    "-t",
    "--config-dir",
    "--state-dir",
    "--netns",
    "--group",
    "--log-file",
)


def _is_mount_helper_form(argv: Sequence[str]) -> bool:
    commands = {"validate", "dnsmasq-conf", "mount", "-h", "--help"}
    if not argv or argv[0] in commands or argv[0].startswith("-"):
        return False
    positionals = [
        a
        for i, a in enumerate(argv)
        if not a.startswith("-") and (i == 0 or argv[i - 1] not in MOUNT_VALUE_OPTIONS)
    ]
    return len(positionals) == 2


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if _is_mount_helper_form(args_list):
        args = _mount_helper_parser().parse_args(args_list)
        if args.r:
            args.options = (args.options or []) + ["ro"]
        return int(args.func(args))
    parser = build_parser()
    args = parser.parse_args(args_list)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
