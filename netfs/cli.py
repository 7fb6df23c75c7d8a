"""The `netfs` command: argument parsing only; the work is done below."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from netfs.errors import NetfsError


def _read_input(path: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    with open(path, "rb") as f:
        return f.read()


def validate_document(data: bytes) -> str:
    """Strict rules, then the canonical XML as libvirt would print it.

    A <network> is treated as `virsh net-define` then `virsh net-dumpxml
    --inactive` on a host with no other networks; a <networkport> or guest
    <interface> as a port document.
    """
    from netfs.model import xmlsafe
    from netfs.model.network import format_network, parse_network
    from netfs.model.port import format_port, parse_port
    from netfs.model.validate import validate_network

    root = xmlsafe.root_name(data)
    if root in ("networkport", "interface"):
        return format_port(parse_port(data, strict=True))
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
            sys.stdout.write(validate_document(data))
        except NetfsError as e:
            print(f"error: {e.message}", file=sys.stderr)
            status = 1
    sys.stdout.flush()
    return status


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="netfs", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "validate",
        help="check network or port XML with libvirt's define-time rules and print it canonically",
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="XML file, or - for stdin")
    p.set_defaults(func=cmd_validate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
