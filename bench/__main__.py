"""Run the benchmarks: `python -m bench [MODULE ...] [--quick]`.

Each benchmark module prints its figures side by side with a floor measured
in the same run. Modules: bench.start (a start through the mount beside the
netlink floor), bench.core (driver and netlink), bench.fs (the mounted
filesystem), bench.firewall (nft rules per network), bench.dnsmasq (dnsmasq
per network, lease updates), bench.large (large definitions), bench.traffic
(a NAT+DHCP network through the core, restart with many), bench.traffic_fs
(the same through the mount: echo 1 > active, leases IN_MODIFY, restart),
bench.leases_read (other users' reads while many threads read a full
``leases``).
"""

from __future__ import annotations

import importlib
import sys

MODULES = [
    "start",
    "core",
    "fs",
    "firewall",
    "dnsmasq",
    "large",
    "traffic",
    "traffic_fs",
    "leases_read",
]


def main(argv: list[str]) -> int:
    names = [a for a in argv if not a.startswith("-")] or MODULES
    flags = [a for a in argv if a.startswith("-")]
    status = 0
    for name in names:
        if name not in MODULES:
            print(f"unknown benchmark {name!r}; choose from {', '.join(MODULES)}", file=sys.stderr)
            return 2
        try:
            mod = importlib.import_module(f"bench.{name}")
        except ModuleNotFoundError as e:
            print(f"== bench {name}: not available ({e})")
            continue
        print(f"== bench {name}")
        status |= int(mod.main(flags) or 0)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
