"""The programs around a virtual network's bridge: firewall rules, IP
forwarding, dnsmasq (start steps of :mod:`netfs.subdrivers.virtual`).

The virtual sub-driver's recipe orders them (libvirt's
networkStartNetworkVirtual, with the firewall beside the netlink steps and
dnsmasq: see :mod:`netfs.subdrivers.virtual`): IP forwarding only once the
rules are in place. Each step tells whether the network needs it at all
(``has_rules``, ``has_dnsmasq``, ``has_forwarding``). Each step here has its
undo (``stop``) and, where recovery needs one, a ``repair``:

- ``firewall``: the network's rules in the namespace's ``table inet netfs``,
  one nft transaction (:mod:`netfs.firewall`); nothing for mode open. The
  network is registered in :attr:`Services.rules` before its rules are added
  and unregistered before they are removed: the repair of the whole table
  (:mod:`netfs.traffic`) puts back exactly the rules of the registered
  networks, so a network in the middle of its start or stop is never taken
  for an orphan. No per-network repair: recovery and the guard read the
  table once for every network.
- ``forwarding``: ``1`` into ``/proc/sys/net/ipv4/ip_forward`` (IPv4
  address) and ``/proc/sys/net/ipv6/conf/all/forwarding`` (IPv6 address) for
  nat and route (:func:`netfs.model.firewall.forwarding_sysctls`); never
  undone, as libvirt. Repair: written again if it reads otherwise.
- ``dnsmasq``: only when :func:`netfs.model.dnsmasq.needs_dnsmasq`; the files
  rendered by :func:`netfs.model.dnsmasq.render` into ``STATE/.dnsmasq/``,
  then :meth:`netfs.dnsmasq.Dnsmasq.start` (a stale process of that name is
  stopped first). A failed start leaves neither files nor process. Stop:
  SIGTERM and files removed (the lease records stay); the step
  ``dnsmasq-exit``, first of the recipe so last of a stop, waits for the
  exit once the bridge is deleted. Repair (recovery): a
  running dnsmasq whose configuration is what the live definition renders is
  adopted as it is; otherwise the files are written and it is (re)started.

The steps do nothing with programs when the core runs without services
(``StepContext.services`` is None: tests of the bridge side alone).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from netfs import firewall
from netfs.dnsmasq import Dnsmasq, wait_exit
from netfs.errors import NetfsError
from netfs.model.dnsmasq import needs_dnsmasq, render
from netfs.model.firewall import expected_rules, forwarding_sysctls

if TYPE_CHECKING:
    from netfs.model.network import NetworkDef
    from netfs.subdrivers.steps import StepContext

log = logging.getLogger(__name__)

INOTIFY_HINT = (
    "every dnsmasq holds an inotify instance of its user: "
    "raise fs.inotify.max_user_instances (default 128)"
)


class Services:
    """What the program steps of one driver share: the dnsmasq runner of the
    state directory, the managed namespace, and the networks whose firewall
    rules must be in place."""

    def __init__(self, state_dir: Path, netns: str | None, *, user: str | None = None) -> None:
        self.netns = netns
        self.dnsmasq = Dnsmasq(state_dir, netns, user)
        self.rules: dict[str, NetworkDef] = {}
        self.exiting: dict[str, int] = {}  # network -> a dnsmasq told to stop
        # networks whose rules are being added: a check of the table that
        # finds them missing meanwhile adds them too, but that is no repair
        self.applying: set[str] = set()

    # -- dnsmasq (synchronous: called in a worker thread) -------------------------

    def render(self, net: NetworkDef) -> tuple[str, str, str]:
        """(conf, hostsfile, addnhosts) of the network's dnsmasq."""
        d = self.dnsmasq
        files = render(net, str(d.dir), pidfile=str(d.files(net.name).pid))
        return files.conf, files.hosts, files.addnhosts

    def start_dnsmasq(self, net: NetworkDef) -> int:
        """Write the files and start; nothing left behind when it fails."""
        d = self.dnsmasq
        conf, hosts, addn = self.render(net)
        self.wait_exit(net.name)  # the one of its last stop
        d.stop(net.name)  # a stale one (no network of that name is running)
        try:
            d.write_files(net.name, conf, hosts, addn)
            return d.start(net.name)
        except NetfsError as e:
            self._cleanup(net.name)
            if "inotify" in e.message:
                # one inotify instance per dnsmasq, all of them its user's
                raise NetfsError(e.errno, f"{e.message} ({INOTIFY_HINT})") from None
            raise
        except BaseException:
            self._cleanup(net.name)
            raise

    def _cleanup(self, name: str) -> None:
        d = self.dnsmasq
        try:
            d.stop(name)
            d.remove_files(name)
        except (OSError, NetfsError) as e:
            log.warning("network %s: cleaning up after dnsmasq: %s", name, e)

    def stop_dnsmasq(self, name: str) -> bool:
        self.wait_exit(name)
        d = self.dnsmasq
        was = d.stop(name)
        d.remove_files(name)
        return was

    def signal_stop(self, name: str) -> None:
        """The first half of a stop: SIGTERM, pid file and files removed;
        :meth:`wait_exit` waits for the process (dnsmasq takes ~15 ms to
        exit: the rest of the network's stop runs meanwhile)."""
        d = self.dnsmasq
        pid = d.signal_stop(name)
        if pid is not None:
            self.exiting[name] = pid
        d.remove_files(name)

    def wait_exit(self, name: str) -> None:
        """Wait for the exit of the dnsmasq :meth:`signal_stop` stopped
        (SIGKILL after 5 s)."""
        pid = self.exiting.pop(name, None)
        if pid is not None and not wait_exit(pid, 5.0):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            wait_exit(pid, 5.0)

    def current_conf(self, name: str) -> str | None:
        try:
            return self.dnsmasq.files(name).conf.read_text()
        except (OSError, UnicodeDecodeError):
            return None

    def adopt_or_start(self, net: NetworkDef) -> bool:
        """Recovery: True when dnsmasq had to be (re)started."""
        d = self.dnsmasq
        if not needs_dnsmasq(net):
            if d.pid(net.name) is not None:
                self.stop_dnsmasq(net.name)
                return True
            return False
        conf, hosts, addn = self.render(net)
        pid = d.pid(net.name)
        if pid is not None and self.current_conf(net.name) == conf:
            f = d.files(net.name)
            try:
                same = f.hostsfile.read_text() == hosts and f.addnhosts.read_text() == addn
            except (OSError, UnicodeDecodeError):
                same = False
            if not same:
                d.write_hosts(net.name, hosts, addn)
                d.reload(net.name)
            log.debug("network %s: dnsmasq pid %d adopted", net.name, pid)
            return False
        if pid is not None:
            d.stop(net.name)
        d.write_files(net.name, conf, hosts, addn)
        d.start(net.name)
        return True


def _services(ctx: StepContext) -> Services | None:
    return ctx.services


# ------------------------------------------------------------------ firewall


def has_rules(ctx: StepContext) -> bool:
    return ctx.services is not None and not expected_rules(ctx.net).empty()


def has_dnsmasq(ctx: StepContext) -> bool:
    return ctx.services is not None and needs_dnsmasq(ctx.net)


def has_forwarding(ctx: StepContext) -> bool:
    return bool(forwarding_sysctls(ctx.net))


async def add_rules(ctx: StepContext) -> None:
    svc = _services(ctx)
    net = ctx.net
    if svc is None or expected_rules(net).empty():
        return
    svc.rules[net.name] = net
    svc.applying.add(net.name)
    try:
        await firewall.apply(ctx.netns, net)
    except BaseException:
        if svc.rules.get(net.name) is net:
            del svc.rules[net.name]
        raise
    finally:
        svc.applying.discard(net.name)


async def remove_rules(ctx: StepContext) -> None:
    svc = _services(ctx)
    net = ctx.net
    if svc is None:
        return
    registered = svc.rules.pop(net.name, None)
    if registered is None and expected_rules(net).empty():
        return
    await firewall.remove(ctx.netns, net)


# ------------------------------------------------------------------ forwarding


async def enable_forwarding(ctx: StepContext) -> None:
    for path in forwarding_sysctls(ctx.net):
        await ctx.sysctl(path, "1")


async def repair_forwarding(ctx: StepContext) -> None:
    for path in forwarding_sysctls(ctx.net):
        value = await ctx.nl.read_sysctl(path)
        if value is not None and value.strip() != "1":
            log.info("network %s: %s was %s: set to 1 again", ctx.net.name, path, value.strip())
            await ctx.sysctl(path, "1")
            ctx.repaired("forwarding")


# ------------------------------------------------------------------ dnsmasq


async def start_dnsmasq(ctx: StepContext) -> None:
    svc = _services(ctx)
    if svc is None or not needs_dnsmasq(ctx.net):
        return
    net = ctx.net
    await trio.to_thread.run_sync(svc.start_dnsmasq, net)


async def stop_dnsmasq(ctx: StepContext) -> None:
    """SIGTERM only: the ``dnsmasq-exit`` step, the last of a stop, waits."""
    svc = _services(ctx)
    if svc is None:
        return
    await trio.to_thread.run_sync(svc.signal_stop, ctx.net.name)


async def wait_dnsmasq_exit(ctx: StepContext) -> None:
    svc = _services(ctx)
    if svc is None or ctx.net.name not in svc.exiting:
        return
    await trio.to_thread.run_sync(svc.wait_exit, ctx.net.name)


async def repair_dnsmasq(ctx: StepContext) -> None:
    svc = _services(ctx)
    if svc is None:
        return
    try:
        if svc.adopt_or_start(ctx.net):
            ctx.repaired("dnsmasq")
    except OSError as e:
        raise NetfsError(e.errno or errno.EIO, f"dnsmasq: {e.strerror or e}") from None
