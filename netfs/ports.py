"""Ports of active networks: allocation and release (part of :mod:`netfs.core`).

A port is allocated on an active network (libvirt's networkAllocatePort, see
:func:`netfs.model.port.allocate_port`), saved as
``<state_dir>/NAME/ports/PORT.xml`` and counted in the live definition's
connection counts; an inbound floor is accounted (QoS class ids and the floor
sum, written to the status file as libvirt does).
"""

from __future__ import annotations

import errno
import logging
from typing import TYPE_CHECKING

from netfs.errors import NetfsError
from netfs.model.port import NetworkPort, allocate_port, parse_port
from netfs.netrecord import NetRecord, device_usage, qos
from netfs.state import check_name

if TYPE_CHECKING:
    from netfs.core import Driver

log = logging.getLogger(__name__)


def _check_new_port(n: NetRecord, port: str, p: NetworkPort) -> None:
    """What refuses a new port before its allocation."""
    if p.source_network is not None and p.source_network != n.name:
        raise NetfsError(
            errno.EINVAL,
            f"interface's source network '{p.source_network}' does not match network '{n.name}'",
        )
    if port in n.ports:
        raise NetfsError(errno.EEXIST, f"port '{port}' already exists in network '{n.name}'")
    if p.plug is not None:
        # libvirt: a plug means "reclaim a running guest's port", a flag
        # netfs's way in does not have
        raise NetfsError(errno.EINVAL, "Port reclaim not requested but plug type is not none")
    for q in n.ports.values():
        if q.uuid == p.uuid:
            raise NetfsError(errno.EEXIST, f"Network port with UUID {p.uuid} already exists")


class Ports:
    def __init__(self, core: Driver) -> None:
        self.core = core

    async def create(self, name: str, port: str, xml: bytes | str) -> NetworkPort:
        """Allocate a port on an active network and record it."""
        core = self.core
        async with core._transition(name):
            check_name(port, "port")
            n = core._get(name)
            if n.live is None:
                raise NetfsError(errno.ENETDOWN, f"network '{name}' is not active")
            p = parse_port(xml, strict=True, owner_name=port)
            _check_new_port(n, port, p)
            ids, floor_sum = qos(n.ports)
            allocated = allocate_port(
                n.live,
                p,
                device_usage=device_usage(n.ports),
                floor_sum=floor_sum,
                class_ids_in_use=ids,
            )
            await core._store(core.store.write_port, name, port, allocated)
            n.ports[port] = allocated
            n.recount()
            if qos({port: allocated})[0]:
                await self._save_qos(n)
            core._emit(name, "port-created", port)
            return allocated

    async def delete(self, name: str, port: str) -> None:
        core = self.core
        async with core._transition(name):
            n = core._get(name)
            if port not in n.ports:
                raise NetfsError(errno.ENOENT, f"network '{name}' has no port '{port}'")
            await core._store(core.store.delete_port, name, port)
            gone = n.ports.pop(port)
            n.recount()
            if qos({port: gone})[0]:
                await self._save_qos(n)
            core._emit(name, "port-deleted", port)

    async def _save_qos(self, n: NetRecord) -> None:
        """Rewrite the status file after a port's floor was plugged or
        unplugged (as libvirt does): its class ids and floor sum changed. A
        failure is logged; the port files are the record recovery counts."""
        if n.live is None:
            return
        ids, floor_sum = qos(n.ports)
        core = self.core
        try:
            await core._store(core.store.write_status, n.live, ids, floor_sum)
        except OSError as e:
            log.warning("network %s: cannot rewrite its status file: %s", n.name, e)
