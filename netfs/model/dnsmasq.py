"""dnsmasq's files for a virtual network, as libvirt writes them (pure).

libvirt's network driver runs one dnsmasq per virtual network that needs
one and writes three files for it into its dnsmasq state directory: the
configuration (``NAME.conf``), the DHCP hosts file (``NAME.hostsfile``) and
the DNS hosts file (``NAME.addnhosts``). :func:`render` produces the same
bytes from a validated :class:`~netfs.model.network.NetworkDef`, with the
directory a parameter (facts from libvirt's bridge_driver.c and
virdnsmasq.c, re-implemented; see the spec, section 1).

:func:`check_values` is the define-time trust rule: no value of a definition
may add a line, an option or a field to a file written for dnsmasq. libvirt
passes some such values through; netfs refuses them (EINVAL), naming the
element and attribute. :func:`check_name` is its rule for the network's
name, which is part of the paths in the configuration.
"""

from __future__ import annotations

import copy
import ipaddress
import re
from dataclasses import dataclass

from netfs.errors import NetfsError, invalid
from netfs.model.names import shown
from netfs.model.network import DHCPLease, DNSSrv, IPDef, NetworkDef, format_network, is_virtual

__all__ = [
    "DEFAULT_DIR",
    "DnsmasqFiles",
    "addnhosts_path",
    "check_name",
    "check_values",
    "conf_path",
    "has_raw_options",
    "hostsfile_path",
    "live_changeable",
    "name_problem",
    "needs_dnsmasq",
    "render",
    "value_problem",
]

DEFAULT_DIR = "/run/netfs/networks/.dnsmasq"
"""The daemon's default state directory (``DEFAULT_STATE_DIR``) + ``/.dnsmasq``."""


@dataclass(frozen=True)
class DnsmasqFiles:
    """What starting a network writes for its dnsmasq: the contents and the
    paths. libvirt writes all three files every time (the two hosts files
    possibly empty, so entries can be added at run time)."""

    conf: str
    hosts: str
    addnhosts: str
    conf_path: str
    hosts_path: str
    addnhosts_path: str


# ---------------------------------------------------------------------------
# Which networks get a dnsmasq


def needs_dnsmasq(net: NetworkDef) -> bool:
    """libvirt's rule: only modes none, nat, route and open; at least one
    ``<ip>``; then any DHCP range, DHCP host or TFTP root, or else DNS not
    disabled (``<dns enable='no'>``)."""
    if not is_virtual(net.forward.mode) or not net.ips:
        return False
    if any(ip.ranges or ip.hosts or ip.tftp_root for ip in net.ips):
        return True
    return net.dns.enable is not False


def has_raw_options(net: NetworkDef) -> bool:
    """Whether the definition carries ``<dnsmasq:options>`` (raw options
    given to dnsmasq as they are: only root may define them)."""
    return bool(net.dnsmasq_options)


def _strip_live(net: NetworkDef) -> NetworkDef:
    """A copy without what a live change may change (DHCP hosts and ranges,
    DNS hosts, txt, srv, forwarders)."""
    c = copy.deepcopy(net)
    for ip in c.ips:
        ip.ranges = []
        ip.hosts = []
    c.dns.hosts = []
    c.dns.txts = []
    c.dns.srvs = []
    c.dns.forwarders = []
    return c


def live_changeable(old: NetworkDef, new: NetworkDef) -> bool:
    """Do ``old`` and ``new`` differ only in what a running dnsmasq can take
    without a restart of its network?"""
    return format_network(_strip_live(old), inactive=True) == format_network(
        _strip_live(new), inactive=True
    )


# ---------------------------------------------------------------------------
# Paths


def _path_escape(name: str) -> str:
    """libvirt's virBufferEscapeString on the name in the two hosts-file
    paths: XML entities for < > & ' ", control characters other than tab,
    newline and carriage return dropped."""
    out = []
    for ch in name:
        if ch == "&":
            out.append("&amp;")
        elif ch == "<":
            out.append("&lt;")
        elif ch == ">":
            out.append("&gt;")
        elif ch == '"':
            out.append("&quot;")
        elif ch == "'":
            out.append("&apos;")
        elif ord(ch) >= 0x20 or ch in "\t\n\r":
            out.append(ch)
    return "".join(out)


def conf_path(net: NetworkDef, directory: str = DEFAULT_DIR) -> str:
    """``DIR/NAME.conf`` (the name as it is)."""
    return f"{directory}/{net.name}.conf"


def hostsfile_path(net: NetworkDef, directory: str = DEFAULT_DIR) -> str:
    """``DIR/NAME.hostsfile`` with the name XML-escaped, as libvirt does."""
    return f"{directory}/{_path_escape(net.name)}.hostsfile"


def addnhosts_path(net: NetworkDef, directory: str = DEFAULT_DIR) -> str:
    """``DIR/NAME.addnhosts`` with the name XML-escaped, as libvirt does."""
    return f"{directory}/{_path_escape(net.name)}.addnhosts"


# ---------------------------------------------------------------------------
# Rendering


def _lease(lease: DHCPLease | None) -> str | None:
    """dnsmasq's lease time: ``infinite``, or the number and the first
    letter of the unit."""
    if lease is None:
        return None
    if lease.expiry == 0:
        return "infinite"
    return f"{lease.expiry}{lease.unit[0]}"


def _netmask(prefix: int) -> str:
    bits = ((1 << prefix) - 1) << (32 - prefix) if prefix else 0
    return str(ipaddress.IPv4Address(bits))


def _is_v4(ip: IPDef) -> bool:
    return ip.family == "ipv4"


def _ptr_domain(ip: IPDef) -> str:
    """The reverse zone of an ``<ip localPtr='yes'>``: whole octets (IPv4)
    or nibbles (IPv6) covered by the prefix, reversed."""
    prefix = ip.prefix_len()
    addr = ipaddress.ip_address(ip.address)
    if _is_v4(ip):
        if prefix <= 0 or prefix >= 32 or prefix % 8:
            raise _ptr_error("IPv4", prefix)
        octets = addr.packed[: prefix // 8]
        return "".join(f"{o}." for o in reversed(octets)) + "in-addr.arpa"
    if prefix <= 0 or prefix >= 128 or prefix % 4:
        raise _ptr_error("IPv6", prefix)
    nibbles = f"{int(addr):032x}"[: prefix // 4]
    return "".join(f"{n}." for n in reversed(nibbles)) + "ip6.arpa"


def _ptr_error(family: str, prefix: int) -> NetfsError:
    return invalid(
        f"PTR domain for {family} network with prefix {prefix & 0xFFFFFFFF} "
        "cannot be automatically created"
    )


def _srv_line(srv: DNSSrv) -> str:
    line = f"srv-host=_{srv.service}._{srv.protocol}"
    if srv.domain is not None:
        line += f".{srv.domain}"
    # no target, or ".": the service is decidedly not available (RFC 2782);
    # port, priority and weight are then left out. Otherwise each is written
    # when it or one after it is set (dnsmasq reads them by position).
    if srv.target is not None and srv.target != ".":
        line += f",{srv.target}"
        if srv.port or srv.priority or srv.weight:
            line += f",{srv.port or 1}"
        if srv.priority or srv.weight:
            line += f",{srv.priority}"
        if srv.weight:
            line += f",{srv.weight}"
    return line


def _dhcp_block(ip: IPDef, bridge: str, hosts: list[str]) -> tuple[list[str], int]:
    """The dhcp-range lines of one ``<ip>`` (plus the IPv4-only lines) and
    its number of leases; its host entries are appended to ``hosts``."""
    lines: list[str] = []
    prefix = ip.prefix_len()
    if prefix < 0:
        raise invalid(f"bridge '{bridge}' has an invalid prefix")
    leases = 0
    for r in ip.ranges:
        size = f"{prefix}" if not _is_v4(ip) else _netmask(prefix)
        line = f"dhcp-range={r.start},{r.end},{size}"
        lease = _lease(r.lease)
        if lease is not None:
            line += f",{lease}"
        lines.append(line)
        leases += int(ipaddress.ip_address(r.end)) - int(ipaddress.ip_address(r.start)) + 1
    if not ip.ranges and ip.hosts:
        # static-only DHCP still needs a dhcp-range to switch the service on
        line = f"dhcp-range={ip.address},static"
        if not _is_v4(ip):
            line += f",{prefix}"
        lines.append(line)
    for h in ip.hosts:
        if h.ip is None:
            continue
        if not _is_v4(ip):
            if h.name is not None and h.id is not None:
                entry = f"id:{h.id},{h.name}"
            elif h.name is not None:
                entry = h.name
            elif h.id is not None:
                entry = f"id:{h.id}"
            else:
                entry = ""
            entry += f",[{h.ip}]"
        elif h.name is not None and h.mac is not None:
            entry = f"{h.mac},{h.ip},{h.name}"
        elif h.name is not None:
            entry = f"{h.name},{h.ip}"
        else:
            entry = f"{h.mac},{h.ip}"
        lease = _lease(h.lease)
        if lease is not None:
            entry += f",{lease}"
        hosts.append(entry)
    if _is_v4(ip):
        if ip.ranges or ip.hosts:
            lines += ["dhcp-no-override", "dhcp-authoritative"]
        if ip.bootp_file is not None:
            if ip.bootp_server is not None:
                lines.append(f"dhcp-boot={ip.bootp_file},,{ip.bootp_server}")
            else:
                lines.append(f"dhcp-boot={ip.bootp_file}")
    return lines, leases


def _addnhosts(net: NetworkDef) -> str:
    """One line per address, its names merged in document order, each name
    followed by a tab."""
    by_ip: dict[str, list[str]] = {}
    for host in net.dns.hosts:
        by_ip.setdefault(host.ip, []).extend(host.hostnames)
    return "".join(
        ip + "\t" + "".join(f"{n}\t" for n in names) + "\n" for ip, names in by_ip.items()
    )


def render(
    net: NetworkDef, directory: str = DEFAULT_DIR, *, pidfile: str | None = None
) -> DnsmasqFiles:
    """The three files libvirt writes when it starts ``net``'s dnsmasq, byte
    for byte, with ``directory`` as its dnsmasq state directory.

    ``net`` is a validated definition (bridge name assigned). ``pidfile``
    adds libvirt's run-time ``pid-file=`` line (its test data has none);
    with it, the name must pass :func:`check_name` with ``quotes`` (the
    line holds the name as it is).
    Raises NetfsError(EINVAL) with libvirt's message for what libvirt
    refuses only when it starts the network (a reverse zone that cannot be
    made from the prefix, an address without a usable prefix), and for a
    network libvirt runs no dnsmasq for at all (modes other than none, nat,
    route and open).
    """
    if not is_virtual(net.forward.mode):
        raise invalid(
            f"network '{net.name}' with forward mode='{net.forward.mode}' has no DHCP/DNS server"
        )
    if pidfile is not None:
        check_name(net, quotes=True)  # also a name saved before this rule
    bridge = net.bridge.name
    if not bridge:
        raise invalid(f"network '{net.name}' has no bridge name")
    dns = net.dns
    want_dns = dns.enable is not False
    out = [
        "##WARNING:  THIS IS AN AUTO-GENERATED FILE. CHANGES TO IT ARE LIKELY TO BE",
        "##OVERWRITTEN AND LOST.  Changes to this configuration should be made using:",
        f"##    virsh net-edit {net.name}",
        "## or other application using the libvirt API.",
        "##",
        "## dnsmasq conf file created by libvirt",
        "strict-order",
    ]
    if not want_dns:
        out.append("port=0")
    if want_dns and dns.forwarders:
        no_resolv = False
        for fwd in dns.forwarders:
            line = "server="
            if fwd.domain is not None:
                line += f"/{fwd.domain}/"
            if fwd.addr is not None:
                line += fwd.addr
                if fwd.port:
                    line += f"#{fwd.port}"
                if fwd.domain is None:
                    no_resolv = True
            else:
                line += "#"  # don't forward this domain
            out.append(line)
        if no_resolv:
            out.append("no-resolv")
    dom = net.domain
    if dom is not None and dom.name:
        if dom.local_only is True:
            out.append(f"local=/{dom.name}/")
        out += [f"domain={dom.name}", "expand-hosts"]
    if want_dns:
        out += [f"local=/{_ptr_domain(ip)}/" for ip in net.ips if ip.local_ptr is True]
        if dns.forward_plain_names is False:
            out += ["domain-needed", "local=//"]
    if pidfile is not None:
        out.append(f"pid-file={pidfile}")
    out += ["except-interface=lo", "bind-dynamic", f"interface={bridge}"]
    if net.forward.mode == "none":
        # isolated: no default route, no upstream DNS, RA route lifetime 0
        out += ["dhcp-option=3", "no-resolv", "ra-param=*,0,0"]
    if want_dns:
        out += [f"txt-record={t.name},{t.value}" for t in dns.txts]
        out += [_srv_line(s) for s in dns.srvs]
    v4: IPDef | None = None
    v6: IPDef | None = None
    tftp = False
    for ip in net.ips:
        has_dhcp = bool(ip.ranges or ip.hosts)
        if _is_v4(ip):
            if has_dhcp:
                if v4 is not None:
                    raise invalid("For IPv4, multiple DHCP definitions cannot be specified.")
                v4 = ip
            if ip.tftp_root is not None:
                if not tftp:
                    out.append("enable-tftp")
                    tftp = True
                out.append(f"tftp-root={ip.tftp_root}")
        elif has_dhcp:
            if v6 is not None:
                raise invalid("For IPv6, multiple DHCP definitions cannot be specified.")
            v6 = ip
    hosts: list[str] = []
    leases = 0
    for dhcp_ip in (v4, v6):
        if dhcp_ip is not None:
            lines, n = _dhcp_block(dhcp_ip, bridge, hosts)
            out += lines
            leases += n
    if leases > 0:
        out.append(f"dhcp-lease-max={leases}")
    hosts_path = hostsfile_path(net, directory)
    addn_path = addnhosts_path(net, directory)
    if v4 is not None or v6 is not None:
        out.append(f"dhcp-hostsfile={hosts_path}")
    if want_dns:
        out.append(f"addn-hosts={addn_path}")
    if net.mtu:
        out.append(f"dhcp-option=option:mtu,{net.mtu}")
    if v6 is not None:
        out.append("enable-ra")
    else:
        out += [
            f"dhcp-range={ip.address},ra-only"
            for ip in net.ips
            if not _is_v4(ip) and not (ip.ranges or ip.hosts)
        ]
    out += net.dnsmasq_options
    return DnsmasqFiles(
        conf="".join(f"{line}\n" for line in out),
        hosts="".join(f"{h}\n" for h in hosts),
        addnhosts=_addnhosts(net),
        conf_path=conf_path(net, directory),
        hosts_path=hosts_path,
        addnhosts_path=addn_path,
    )


# ---------------------------------------------------------------------------
# Trust: no value may add a line, an option or a field to dnsmasq's files

_HOSTNAME_CHARS = re.compile(r"[A-Za-z0-9._-]*")
# what dnsmasq reads in a dhcp-host field before it takes it as a name
_DHCP_NOT_A_NAME = re.compile(r"infinite|ignore|[0-9]+[wWdDhHmMsS]?|[0-9.]+")


def _control(value: str) -> str | None:
    for ch in value:
        if ord(ch) < 0x20:
            return ch
    return None


def _where(element: str, attribute: str | None, net: NetworkDef) -> str:
    what = (
        f"attribute '{attribute}' of element '{element}'" if attribute else f"element '{element}'"
    )
    return f"{what} in network '{net.name}'"


def _check(
    net: NetworkDef,
    value: str | None,
    element: str,
    attribute: str | None,
    forbidden: str = "",
) -> None:
    """Refuse a control character (a new line in dnsmasq's files) and any of
    ``forbidden`` (a field separator in the line the value goes to)."""
    if value is None:
        return
    ch = _control(value)
    if ch is not None:
        raise invalid(
            f"control character U+{ord(ch):04X} in {_where(element, attribute, net)}: "
            "values that reach dnsmasq's files cannot contain line breaks or control characters"
        )
    for ch in forbidden:
        if ch in value:
            shown = "space" if ch == " " else f"'{ch}'"
            raise invalid(
                f"{shown} in {_where(element, attribute, net)}: it would add a field "
                "to a file written for dnsmasq"
            )


def _check_dhcp_name(net: NetworkDef, name: str | None) -> None:
    if name is None:
        return
    _check(net, name, "host", "name", ",")
    where = _where("host", "name", net)
    if not _HOSTNAME_CHARS.fullmatch(name):
        raise invalid(
            f"DHCP host name '{name}' in {where}: only letters, digits, '-', '.' and '_' "
            "can be used (dnsmasq reads other characters as other fields)"
        )
    if _DHCP_NOT_A_NAME.fullmatch(name):
        raise invalid(
            f"DHCP host name '{name}' in {where}: dnsmasq would read it as a lease time, "
            "an address or a keyword, not as a name"
        )


def _check_mac(net: NetworkDef, mac: str | None) -> None:
    # libvirt accepts (and writes as written) anything after a control
    # character or space that follows the sixth group
    if mac is not None and not re.fullmatch(r"[0-9A-Fa-f:]*", mac):
        _check(net, mac, "host", "mac", " ")
        raise invalid(f"invalid characters in {_where('host', 'mac', net)}")


# What dnsmasq's configuration reader treats specially in a line (option.c,
# read_file; checked with dnsmasq 2.90): '"' opens a quoted part (the quotes
# go, '\' escapes inside it), '#' after whitespace starts a comment (the rest
# of the line is gone), whitespace becomes one space and is trimmed at the
# ends of the value. Refused in a name whatever comes before or after them.
_NAME_SPECIAL = {
    "#": "'#' (after a space, dnsmasq reads the rest of the line as a comment)",
    '"': "'\"' (dnsmasq reads it as a quote and drops it)",
    "\\": "a backslash (dnsmasq reads it as an escape inside quotes)",
}


def name_problem(net: NetworkDef, *, quotes: bool = True) -> str | None:
    """Why ``net``'s name cannot be used in the paths of its dnsmasq
    configuration (None: it can, or the network runs no dnsmasq).

    The name is written as it is in ``pid-file=`` (netfs's run-time line)
    and, with only XML's five characters escaped as libvirt does, in
    ``dhcp-hostsfile=`` and ``addn-hosts=``. ``quotes`` False leaves out
    '"', which libvirt's escaping turns into ``&quot;`` in the two hosts
    files: the configuration ``netfs dnsmasq-conf`` prints has no pid-file
    line, and libvirt's own test data has such a name."""
    if not needs_dnsmasq(net):
        return None
    special = [ch for ch in net.name if ch in _NAME_SPECIAL and (quotes or ch != '"')]
    if special:
        what = _NAME_SPECIAL[special[0]]
    else:
        space = [ch for ch in net.name if ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F]
        if not space:
            return None
        ch = space[0]
        what = "a space" if ch == " " else f"whitespace or a control character U+{ord(ch):04X}"
        what += " (dnsmasq folds it into one space and trims it at the end of a value)"
    return (
        f"network name '{shown(net.name)}' has {what}: a network that runs dnsmasq "
        "cannot have it in its name (the paths of its files in dnsmasq's "
        "configuration would not be read as written)"
    )


def check_name(net: NetworkDef, *, quotes: bool = True) -> None:
    """Raise NetfsError(EINVAL) with :func:`name_problem`'s message."""
    problem = name_problem(net, quotes=quotes)
    if problem is not None:
        raise invalid(problem)


def check_values(net: NetworkDef) -> None:
    """Raise NetfsError(EINVAL) when a value of ``net`` could add a line, an
    option or a field to a file written for dnsmasq (values libvirt passes
    through as they are), or when its name could not be read back from the
    paths there (:func:`check_name`; '"' aside, see there: the daemon
    refuses that too, when it defines). Runs at define time
    (``validate_network``)."""
    check_name(net, quotes=False)
    _check(net, net.bridge.name, "bridge", "name", ", ")
    if net.domain is not None:
        _check(net, net.domain.name, "domain", "name", ",")
    dns = net.dns
    for fwd in dns.forwarders:
        _check(net, fwd.domain, "forwarder", "domain")
    for txt in dns.txts:
        _check(net, txt.name, "txt", "name")
        _check(net, txt.value, "txt", "value")
    for srv in dns.srvs:
        _check(net, srv.service, "srv", "service", ",")
        _check(net, srv.protocol, "srv", "protocol", ",")
        _check(net, srv.domain, "srv", "domain", ",")
        _check(net, srv.target, "srv", "target", ",")
    for host in dns.hosts:
        for hostname in host.hostnames:
            _check(net, hostname, "hostname", None, " ")
    for ip in net.ips:
        _check(net, ip.tftp_root, "tftp", "root", ",")
        _check(net, ip.bootp_file, "bootp", "file", ",")
        for h in ip.hosts:
            _check_mac(net, h.mac)
            _check(net, h.id, "host", "id", ",")
            _check_dhcp_name(net, h.name)
    for opt in net.dnsmasq_options:
        _check(net, opt, "dnsmasq:option", "value")


def value_problem(net: NetworkDef) -> str | None:
    """What :func:`check_values` would say about ``net`` (None if nothing)."""
    try:
        check_values(net)
    except NetfsError as e:
        return e.message
    return None
