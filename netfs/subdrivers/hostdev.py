"""Forward mode hostdev (PCI passthrough pool).

Nothing happens in the kernel when the network starts or stops (the virtual
functions are handed to guests), and such a network is always "still
running": the same steps as the macvtap modes, kept as its own table entry so
that hostdev-specific work (e.g. building the pool from a PF) has its place.
"""

from __future__ import annotations

from netfs.subdrivers.direct import DirectDriver


class HostdevDriver(DirectDriver):
    pass
