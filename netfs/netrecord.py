"""The core's mutable in-memory record of one network (see :mod:`netfs.core`).

Only the core and its parts (:mod:`netfs.recovery`, :mod:`netfs.reconcile`)
hold these; everything outside gets :class:`netfs.core.NetworkState`
snapshots.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from netfs.model.network import NetworkDef
from netfs.model.port import NetworkPort, count_connections, pci_key


@dataclass
class NetRecord:
    name: str
    definition: NetworkDef
    live: NetworkDef | None = None
    persistent: bool = True
    autostart: bool = False
    error: str = ""
    error_seq: int = 0
    problem: str | None = None
    ports: dict[str, NetworkPort] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        return self.live is not None

    @property
    def uuid(self) -> str:
        return (self.live or self.definition).uuid

    def recount(self) -> None:
        """Give the live definition libvirt's connection counts for its ports
        (a new object: snapshots handed out keep theirs)."""
        if self.live is not None:
            self.live = count_connections(self.live, self.ports.values())


def qos(ports: dict[str, NetworkPort]) -> tuple[set[int], int]:
    """The QoS class ids the ports hold and the sum of their inbound floors
    (libvirt's floor accounting: only ports given a class id count)."""
    ids: set[int] = set()
    floor_sum = 0
    for q in ports.values():
        bw = q.bandwidth
        if bw is None or not bw.class_id:
            continue
        ids.add(bw.class_id)
        if bw.inbound is not None:
            floor_sum += bw.inbound.floor
    return ids, floor_sum


def device_usage(ports: dict[str, NetworkPort]) -> dict[str, int]:
    """How many ports use each pool device (netdev name, PCI key)."""
    usage: Counter[str] = Counter()
    for q in ports.values():
        if q.plug is None:
            continue
        if q.plug.dev:
            usage[q.plug.dev] += 1
        elif q.plug.address is not None:
            usage[pci_key(q.plug.address)] += 1
    return dict(usage)
