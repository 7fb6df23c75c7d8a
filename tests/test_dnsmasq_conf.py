"""dnsmasq's files for a network, against libvirt's corpus and own cases (pure)."""

from __future__ import annotations

import contextlib
import errno
import io
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CONFORMANCE

from netfs.cli import main
from netfs.errors import NetfsError
from netfs.model import dnsmasq
from netfs.model.dnsmasq import needs_dnsmasq, render
from netfs.model.network import NetworkDef, parse_network
from netfs.model.validate import validate_network

LIBVIRT_DIR = "/var/lib/libvirt/dnsmasq"
CORPUS = CONFORMANCE / "networkxml2confdata-dnsmasq"
PAIRS = sorted(p.stem for p in CORPUS.glob("*.xml")) if CORPUS.is_dir() else []

HEADER = (
    "##WARNING:  THIS IS AN AUTO-GENERATED FILE. CHANGES TO IT ARE LIKELY TO BE\n"
    "##OVERWRITTEN AND LOST.  Changes to this configuration should be made using:\n"
    "##    virsh net-edit {name}\n"
    "## or other application using the libvirt API.\n"
    "##\n"
    "## dnsmasq conf file created by libvirt\n"
)


def defined(xml: str | bytes) -> NetworkDef:
    """What `virsh net-define` keeps: parse and define-time validation."""
    net = parse_network(xml)
    validate_network(net)
    return net


def dnsmasq_conf(*args: str) -> tuple[int, str, str]:
    """`netfs dnsmasq-conf ARGS` run in this process: (status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(["dnsmasq-conf", *args])
    return status, out.getvalue(), err.getvalue()


def corpus_result(stem: str) -> tuple[bool, bool | None]:
    """(conf equal, hostsfile equal or None when libvirt has none): the
    configuration through `netfs dnsmasq-conf --dir`, the hosts file from
    the renderer."""
    status, out, _ = dnsmasq_conf("--dir", LIBVIRT_DIR, str(CORPUS / f"{stem}.xml"))
    conf_ok = status == 0 and out == (CORPUS / f"{stem}.conf").read_text()
    files = render(defined((CORPUS / f"{stem}.xml").read_bytes()), LIBVIRT_DIR)
    hosts = CORPUS / f"{stem}.hostsfile"
    if hosts.exists():
        return conf_ok, files.hosts == hosts.read_text()
    # the harness fails when a hosts file is produced that libvirt has not
    return conf_ok, None if files.hosts == "" else False


@pytest.mark.parametrize("stem", PAIRS)
def test_corpus_pair(stem: str) -> None:
    status, out, err = dnsmasq_conf("--dir", LIBVIRT_DIR, str(CORPUS / f"{stem}.xml"))
    assert (status, out) == (0, (CORPUS / f"{stem}.conf").read_text()), err
    files = render(defined((CORPUS / f"{stem}.xml").read_bytes()), LIBVIRT_DIR)
    assert files.conf == out
    hosts = CORPUS / f"{stem}.hostsfile"
    assert files.hosts == (hosts.read_text() if hosts.exists() else "")


def test_corpus_count(capsys: pytest.CaptureFixture[str], conformance_dir: Path) -> None:
    """Every pair of libvirt's corpus, byte for byte; the count is printed."""
    assert PAIRS, "no pairs found"
    confs = hosts = hosts_total = 0
    failed = []
    for stem in PAIRS:
        conf_ok, hosts_ok = corpus_result(stem)
        confs += conf_ok
        if hosts_ok is not None:
            hosts_total += 1
            hosts += hosts_ok
        if not conf_ok or hosts_ok is False:
            failed.append(stem)
    with capsys.disabled():
        print(
            f"\ndnsmasq conformance: {confs}/{len(PAIRS)} .conf, "
            f"{hosts}/{hosts_total} .hostsfile byte for byte"
        )
    assert not failed


# ---------------------------------------------------------------------------
# Own cases: branches the corpus lacks


def net_xml(body: str, *, mode: str | None = "nat", name: str = "t", extra: str = "") -> str:
    fwd = f"<forward mode='{mode}'/>" if mode else ""
    return (
        f"<network{extra}><name>{name}</name><uuid>81ff0d90-c91e-6742-64da-4a736edb9a9b</uuid>"
        f"{fwd}<bridge name='br7'/>{body}</network>"
    )


def conf(body: str, mode: str | None = "nat") -> str:
    return render(defined(net_xml(body, mode=mode)), "/d").conf


def test_dual_stack_dhcp() -> None:
    net = defined(
        net_xml(
            "<ip address='10.1.0.1' prefix='16'><dhcp>"
            "<range start='10.1.0.10' end='10.1.0.19'><lease expiry='2' unit='hours'/></range>"
            "<range start='10.1.1.0' end='10.1.1.4'><lease expiry='0'/></range>"
            "<host mac='52:54:00:AA:bb:01' ip='10.1.0.50'><lease expiry='30'/></host>"
            "<host name='n1' ip='10.1.0.51'/>"
            "</dhcp></ip>"
            "<ip family='ipv6' address='fd00::1' prefix='64'><dhcp>"
            "<range start='fd00::100' end='fd00::1ff'><lease expiry='600' unit='seconds'/></range>"
            "<host id='0:3:0:1:0:16:3e:11:22:33' name='h6' ip='fd00::20'/>"
            "<host name='only' ip='fd00::21'><lease expiry='5' unit='minutes'/></host>"
            "<host id='0:3:0:1:0:16:3e:11:22:34' ip='fd00::22'/>"
            "</dhcp></ip>"
            "<ip family='ipv6' address='fd01::1' prefix='64'/>"
        )
    )
    files = render(net, "/d")
    assert files.conf == HEADER.format(name="t") + (
        "strict-order\n"
        "except-interface=lo\n"
        "bind-dynamic\n"
        "interface=br7\n"
        "dhcp-range=10.1.0.10,10.1.0.19,255.255.0.0,2h\n"
        "dhcp-range=10.1.1.0,10.1.1.4,255.255.0.0,infinite\n"
        "dhcp-no-override\n"
        "dhcp-authoritative\n"
        "dhcp-range=fd00::100,fd00::1ff,64,600s\n"
        "dhcp-lease-max=271\n"
        "dhcp-hostsfile=/d/t.hostsfile\n"
        "addn-hosts=/d/t.addnhosts\n"
        "enable-ra\n"
    )
    # IPv4 hosts first, the MAC as written, then IPv6 in brackets
    assert files.hosts == (
        "52:54:00:AA:bb:01,10.1.0.50,30m\n"
        "n1,10.1.0.51\n"
        "id:0:3:0:1:0:16:3e:11:22:33,h6,[fd00::20]\n"
        "only,[fd00::21],5m\n"
        "id:0:3:0:1:0:16:3e:11:22:34,[fd00::22]\n"
    )
    assert files.addnhosts == ""
    assert (files.conf_path, files.hosts_path, files.addnhosts_path) == (
        "/d/t.conf",
        "/d/t.hostsfile",
        "/d/t.addnhosts",
    )


def test_static_only_dhcp() -> None:
    c = conf(
        "<ip address='10.2.0.1' netmask='255.255.255.0'><dhcp>"
        "<host mac='52:54:00:00:00:01' name='a' ip='10.2.0.5'/></dhcp></ip>"
        "<ip family='ipv6' address='fd02::1' prefix='80'><dhcp>"
        "<host name='b' ip='fd02::5'/></dhcp></ip>",
        mode="route",
    )
    assert c.endswith(
        "interface=br7\n"
        "dhcp-range=10.2.0.1,static\n"
        "dhcp-no-override\n"
        "dhcp-authoritative\n"
        "dhcp-range=fd02::1,static,80\n"
        "dhcp-hostsfile=/d/t.hostsfile\n"
        "addn-hosts=/d/t.addnhosts\n"
        "enable-ra\n"
    )
    assert "dhcp-lease-max" not in c


def test_tftp_and_bootp() -> None:
    c = conf(
        "<ip address='10.3.0.1' prefix='24'><tftp root='/srv/a'/></ip>"
        "<ip address='10.4.0.1' prefix='24'><tftp root='/srv/b'/><dhcp>"
        "<range start='10.4.0.2' end='10.4.0.3'/>"
        "<bootp file='pxelinux.0' server='10.4.0.9'/></dhcp></ip>",
        mode="open",
    )
    # TFTP lines come before the DHCP lines, enable-tftp once
    assert c == HEADER.format(name="t") + (
        "strict-order\n"
        "except-interface=lo\n"
        "bind-dynamic\n"
        "interface=br7\n"
        "enable-tftp\n"
        "tftp-root=/srv/a\n"
        "tftp-root=/srv/b\n"
        "dhcp-range=10.4.0.2,10.4.0.3,255.255.255.0\n"
        "dhcp-no-override\n"
        "dhcp-authoritative\n"
        "dhcp-boot=pxelinux.0,,10.4.0.9\n"
        "dhcp-lease-max=2\n"
        "dhcp-hostsfile=/d/t.hostsfile\n"
        "addn-hosts=/d/t.addnhosts\n"
    )
    c2 = conf(
        "<ip address='10.4.0.1' prefix='24'><dhcp><range start='10.4.0.2' end='10.4.0.3'/>"
        "<bootp file='boot.img'/></dhcp></ip>"
    )
    assert "dhcp-authoritative\ndhcp-boot=boot.img\ndhcp-lease-max=2\n" in c2


def test_dns_lines() -> None:
    c = conf(
        "<domain name='lab.example' localOnly='yes'/>"
        "<dns forwardPlainNames='no'>"
        "<forwarder addr='192.0.2.53'/>"
        "<forwarder domain='corp.example' addr='2001:db8::35' port='5353'/>"
        "<forwarder domain='blocked.example'/>"
        "<txt name='info' value='hello, world'/>"
        "<srv service='ldap' protocol='tcp' domain='lab.example' target='dc.lab.example' "
        "port='389' priority='10' weight='5'/>"
        "<srv service='a' protocol='udp' target='x.example' priority='3'/>"
        "<srv service='b' protocol='tcp' target='x.example' weight='7'/>"
        "<srv service='c' protocol='tcp' target='x.example'/>"
        "<srv service='d' protocol='tcp' target='.' port='9'/>"
        "<host ip='10.5.0.7'><hostname>one</hostname><hostname>uno</hostname></host>"
        "<host ip='fd05::7'><hostname>six</hostname></host>"
        "<host ip='10.5.0.7'><hostname>eins</hostname></host>"
        "</dns>"
        "<mtu size='9000'/>"
        "<ip address='10.5.0.1' netmask='255.255.255.0' localPtr='yes'/>"
        "<ip address='10.6.0.1' prefix='16' localPtr='yes'/>"
        "<ip family='ipv6' address='fd05::1' prefix='64' localPtr='yes'/>"
        "<ip family='ipv6' address='fd06::1' prefix='48'/>",
        mode=None,
    )
    assert c == HEADER.format(name="t") + (
        "strict-order\n"
        "server=192.0.2.53\n"
        "server=/corp.example/2001:db8::35#5353\n"
        "server=/blocked.example/#\n"
        "no-resolv\n"
        "local=/lab.example/\n"
        "domain=lab.example\n"
        "expand-hosts\n"
        "local=/0.5.10.in-addr.arpa/\n"
        "local=/6.10.in-addr.arpa/\n"
        "local=/0.0.0.0.0.0.0.0.0.0.0.0.5.0.d.f.ip6.arpa/\n"
        "domain-needed\n"
        "local=//\n"
        "except-interface=lo\n"
        "bind-dynamic\n"
        "interface=br7\n"
        "dhcp-option=3\n"
        "no-resolv\n"
        "ra-param=*,0,0\n"
        "txt-record=info,hello, world\n"
        "srv-host=_ldap._tcp.lab.example,dc.lab.example,389,10,5\n"
        "srv-host=_a._udp,x.example,1,3\n"
        "srv-host=_b._tcp,x.example,1,0,7\n"
        "srv-host=_c._tcp,x.example\n"
        "srv-host=_d._tcp\n"
        "addn-hosts=/d/t.addnhosts\n"
        "dhcp-option=option:mtu,9000\n"
        "dhcp-range=fd05::1,ra-only\n"
        "dhcp-range=fd06::1,ra-only\n"
    )
    net = defined(net_xml(
        "<dns><host ip='10.5.0.7'><hostname>one</hostname><hostname>uno</hostname></host>"
        "<host ip='fd05::7'><hostname>six</hostname></host>"
        "<host ip='10.5.0.7'><hostname>eins</hostname></host></dns>"
        "<ip address='10.5.0.1' prefix='24'/>"
    ))  # fmt: skip
    assert render(net, "/d").addnhosts == "10.5.0.7\tone\tuno\teins\t\nfd05::7\tsix\t\n"


def test_forwarders_with_domains_only_keep_resolv() -> None:
    c = conf(
        "<dns forwardPlainNames='yes'><forwarder domain='a.example' addr='192.0.2.1'/>"
        "<forwarder domain='b.example'/></dns><ip address='10.7.0.1' prefix='24'/>"
    )
    assert "server=/a.example/192.0.2.1\nserver=/b.example/#\nexcept-interface=lo\n" in c
    assert "no-resolv" not in c and "domain-needed" not in c


def test_dns_disabled_with_dhcp() -> None:
    net = defined(
        net_xml(
            "<domain name='quiet.example'/><dns enable='no'/>"
            "<ip address='10.8.0.1' prefix='24' localPtr='yes'><dhcp>"
            "<range start='10.8.0.2' end='10.8.0.2'/></dhcp></ip>",
            mode="route",
        )
    )
    assert needs_dnsmasq(net)
    assert render(net, "/d").conf == HEADER.format(name="t") + (
        "strict-order\n"
        "port=0\n"
        "domain=quiet.example\n"
        "expand-hosts\n"
        "except-interface=lo\n"
        "bind-dynamic\n"
        "interface=br7\n"
        "dhcp-range=10.8.0.2,10.8.0.2,255.255.255.0\n"
        "dhcp-no-override\n"
        "dhcp-authoritative\n"
        "dhcp-lease-max=1\n"
        "dhcp-hostsfile=/d/t.hostsfile\n"
    )


def test_pidfile_line_and_options_order() -> None:
    net = defined(
        net_xml(
            "<dns forwardPlainNames='no'/><ip address='10.9.0.1' prefix='24'/>"
            "<dnsmasq:options><dnsmasq:option value='z=1'/><dnsmasq:option value='a=2'/>"
            "</dnsmasq:options>",
            extra=" xmlns:dnsmasq='http://libvirt.org/schemas/network/dnsmasq/1.0'",
        )
    )
    c = render(net, "/d", pidfile="/run/x/t.pid").conf
    assert "local=//\npid-file=/run/x/t.pid\nexcept-interface=lo\n" in c
    assert c.endswith("addn-hosts=/d/t.addnhosts\nz=1\na=2\n")
    assert dnsmasq.has_raw_options(net)
    assert not dnsmasq.has_raw_options(defined(net_xml("", mode=None)))


def test_name_escaped_in_paths_only() -> None:
    net = defined(net_xml("<ip address='10.10.0.1' prefix='24'/>", name="a&amp;b&lt;'c"))
    files = render(net, "/d")
    assert "##    virsh net-edit a&b<'c\n" in files.conf
    assert files.addnhosts_path == "/d/a&amp;b&lt;&apos;c.addnhosts"
    assert files.conf_path == "/d/a&b<'c.conf"


@pytest.mark.parametrize(
    ("body", "mode", "needed"),
    [
        ("<ip address='10.0.0.1' prefix='24'/>", "nat", True),
        ("<ip address='10.0.0.1' prefix='24'/>", "open", True),
        ("<ip address='10.0.0.1' prefix='24'/>", None, True),
        ("", None, False),
        ("<dns enable='no'/><ip address='10.0.0.1' prefix='24'/>", "route", False),
        ("<dns enable='no'/><ip address='10.0.0.1' prefix='24'><tftp root='/t'/></ip>", None, True),
        (
            "<dns enable='no'/><ip family='ipv6' address='fd00::1' prefix='64'><dhcp>"
            "<host name='x' ip='fd00::9'/></dhcp></ip>",
            "route",
            True,
        ),
    ],
)
def test_needs_dnsmasq(body: str, mode: str | None, needed: bool) -> None:
    assert needs_dnsmasq(defined(net_xml(body, mode=mode))) is needed


def test_no_dnsmasq_for_other_modes() -> None:
    net = defined("<network><name>h</name><forward mode='bridge'/><bridge name='br0'/></network>")
    assert not needs_dnsmasq(net)
    with pytest.raises(NetfsError) as e:
        render(net)
    assert e.value.errno == errno.EINVAL


@pytest.mark.parametrize(
    ("ip", "message"),
    [
        (
            "<ip address='10.0.0.1' prefix='20' localPtr='yes'/>",
            "PTR domain for IPv4 network with prefix 20 cannot be automatically created",
        ),
        (
            "<ip family='ipv6' address='fd00::1' prefix='62' localPtr='yes'/>",
            "PTR domain for IPv6 network with prefix 62 cannot be automatically created",
        ),
    ],
)
def test_start_time_refusals(ip: str, message: str) -> None:
    net = defined(net_xml(ip))
    with pytest.raises(NetfsError) as e:
        render(net)
    assert (e.value.errno, e.value.message) == (errno.EINVAL, message)
    # with DNS disabled the reverse zone is not needed
    assert "in-addr" not in render(defined(net_xml("<dns enable='no'/>" + ip))).conf


def test_default_dir_is_the_daemons() -> None:
    from netfs.daemon import DEFAULT_STATE_DIR
    from netfs.dnsmasq import SUBDIR

    assert f"{DEFAULT_STATE_DIR}/{SUBDIR}" == dnsmasq.DEFAULT_DIR
    net = defined(net_xml("<ip address='10.0.0.1' prefix='24'/>"))
    assert render(net).addnhosts_path == f"{DEFAULT_STATE_DIR}/.dnsmasq/t.addnhosts"


# ---------------------------------------------------------------------------
# The command


def test_command_as_users_run_it(tmp_path: Path) -> None:
    """A subprocess with the default directory."""
    f = tmp_path / "n.xml"
    f.write_text(net_xml("<ip address='10.0.0.1' prefix='24'/>", name="n"))
    p = subprocess.run(
        [sys.executable, "-m", "netfs.cli", "dnsmasq-conf", str(f)],
        capture_output=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.decode().endswith(
        f"interface=br7\naddn-hosts={dnsmasq.DEFAULT_DIR}/n.addnhosts\n"
    )
    assert p.stderr == b""


def test_command_needs_no_pyfuse3(tmp_path: Path) -> None:
    """The command's own work runs where pyfuse3 cannot be imported."""
    f = tmp_path / "n.xml"
    f.write_text(net_xml("<ip address='10.0.0.1' prefix='24'/>", name="n"))
    code = (
        "import argparse, sys; sys.modules['pyfuse3'] = None; "
        "from netfs.cli import cmd_dnsmasq_conf; "
        "sys.exit(cmd_dnsmasq_conf(argparse.Namespace(file=sys.argv[1], dir='/x')))"
    )
    p = subprocess.run([sys.executable, "-c", code, str(f)], capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.decode().endswith("addn-hosts=/x/n.addnhosts\n")


def test_command_stdin_and_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(net_xml(
        "<ip address='10.0.0.1' prefix='24'><dhcp><range start='10.0.0.2' end='10.0.0.3'/>"
        "</dhcp></ip>").encode())))  # fmt: skip
    status, out, err = dnsmasq_conf("--dir", "/srv/dm/", "-")
    assert (status, err) == (0, "")
    assert "dhcp-hostsfile=/srv/dm/t.hostsfile\naddn-hosts=/srv/dm/t.addnhosts\n" in out


def test_command_refuses_bad_documents(tmp_path: Path) -> None:
    f = tmp_path / "bad.xml"
    # define-time rule (validate), not only parse
    f.write_text(
        "<network><name>br</name><forward mode='bridge'/><bridge name='br0'/>"
        "<ip address='10.0.0.1' prefix='24'/></network>"
    )
    assert dnsmasq_conf(str(f)) == (
        1,
        "",
        "error: Unsupported <ip> element in network br with forward mode='bridge'\n",
    )
    f.write_text(net_xml("<ip address='10.0.0.1' prefix='24'><dhcp><range start='10.0.1.2' "
                         "end='10.0.1.3'/></dhcp></ip>"))  # fmt: skip
    status, out, err = dnsmasq_conf(str(f))
    assert (status, out) == (1, "")
    assert err == "error: range 10.0.1.2 - 10.0.1.3 is not entirely within network 10.0.0.1/24\n"
    status, out, err = dnsmasq_conf(str(tmp_path / "missing.xml"))
    assert (status, out) == (1, "")
    assert "No such file or directory" in err


def test_command_network_without_dnsmasq(tmp_path: Path) -> None:
    f = tmp_path / "quiet.xml"
    f.write_text(net_xml("<dns enable='no'/><ip address='10.0.0.1' prefix='24'/>", mode="route"))
    status, out, err = dnsmasq_conf(str(f))
    assert status == 0
    assert out.endswith("port=0\nexcept-interface=lo\nbind-dynamic\ninterface=br7\n")
    assert err == "note: network 't' needs no dnsmasq: none is started\n"


# ---------------------------------------------------------------------------
# Trust: no value may add a line, an option or a field to dnsmasq's files

NL = "&#10;"
V4 = "<ip address='10.0.0.1' prefix='24'>{}</ip>"


def v4_dhcp(host: str = "", extra: str = "") -> str:
    return V4.format(f"<dhcp><range start='10.0.0.2' end='10.0.0.9'/>{host}{extra}</dhcp>")


# (body placed in the network, element, attribute or None for element text)
INJECTIONS = [
    (f"<domain name='lab{NL}dhcp-script=/bin/sh'/>" + V4.format(""), "domain", "name"),
    (f"<dns><forwarder domain='a{NL}x=1' addr='192.0.2.1'/></dns>" + V4.format(""),
     "forwarder", "domain"),
    (f"<dns><txt name='t{NL}x' value='v'/></dns>" + V4.format(""), "txt", "name"),
    (f"<dns><txt name='t' value='v{NL}dhcp-script=/tmp/x'/></dns>" + V4.format(""),
     "txt", "value"),
    (f"<dns><srv service='s' protocol='tcp' domain='d{NL}x=1'/></dns>" + V4.format(""),
     "srv", "domain"),
    (f"<dns><srv service='s' protocol='tcp' target='t{NL}x=1' port='1'/></dns>" + V4.format(""),
     "srv", "target"),
    ("<dns><host ip='10.0.0.5'><hostname>a\n10.0.0.6 evil</hostname></host></dns>"
     + V4.format(""), "hostname", None),
    (V4.format(f"<tftp root='/srv{NL}enable-dbus'/>"), "tftp", "root"),
    (v4_dhcp(extra=f"<bootp file='pxe{NL}x=1'/>"), "bootp", "file"),
    (v4_dhcp(f"<host mac='52:54:00:00:00:01' name='a{NL}b' ip='10.0.0.5'/>"), "host", "name"),
    (v4_dhcp(f"<host mac='52:54:00:00:00:01{NL}52:54:00:00:00:02,10.0.0.6,x' ip='10.0.0.5'/>"),
     "host", "mac"),
    (f"<dnsmasq:options><dnsmasq:option value='a=1{NL}dhcp-script=/bin/sh'/></dnsmasq:options>"
     + V4.format(""), "dnsmasq:option", "value"),
]  # fmt: skip


def refusal(xml: str) -> str:
    with pytest.raises(NetfsError) as e:
        defined(xml)
    assert e.value.errno == errno.EINVAL
    return e.value.message


DNSMASQ_NS_ATTR = " xmlns:dnsmasq='http://libvirt.org/schemas/network/dnsmasq/1.0'"


@pytest.mark.parametrize(("body", "element", "attribute"), INJECTIONS)
def test_line_breaks_are_refused_at_define(
    body: str, element: str, attribute: str | None, tmp_path: Path
) -> None:
    xml = net_xml(body, extra=DNSMASQ_NS_ATTR)
    parse_network(xml)  # libvirt's own parse takes it ...
    message = refusal(xml)  # ... define-time validation does not
    where = f"attribute '{attribute}' of element '{element}'" if attribute else element
    assert where in message and "network 't'" in message
    assert "\n" not in message
    # the same for `netfs validate` and `netfs dnsmasq-conf`
    f = tmp_path / "t.xml"
    f.write_text(xml)
    assert dnsmasq_conf(str(f)) == (1, "", f"error: {message}\n")
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        assert main(["validate", str(f)]) == 1
    assert (out.getvalue(), err.getvalue()) == ("", f"error: {message}\n")


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ("<domain name='lab,10.0.0.0/24,local'/>" + V4.format(""), "element 'domain'"),
        (
            "<dns><srv service='s' protocol='tcp' domain='d,evil.example' target='t' port='1'/>"
            "</dns>" + V4.format(""),
            "attribute 'domain' of element 'srv'",
        ),
        (
            "<dns><srv service='s' protocol='tcp' target='t,9,9,9' port='1'/></dns>"
            + V4.format(""),
            "attribute 'target' of element 'srv'",
        ),
        (V4.format("<tftp root='/srv,eth0'/>"), "element 'tftp'"),
        (v4_dhcp(extra="<bootp file='pxe,evil,10.9.9.9'/>"), "element 'bootp'"),
        (
            v4_dhcp("<host mac='52:54:00:00:00:01' name='a,set:evil' ip='10.0.0.5'/>"),
            "attribute 'name' of element 'host'",
        ),
        (
            "<dns><host ip='10.0.0.5'><hostname>a b</hostname></host></dns>" + V4.format(""),
            "element 'hostname'",
        ),
    ],
)
def test_field_separators_are_refused(body: str, where: str) -> None:
    message = refusal(net_xml(body))
    assert where in message
    assert "it would add a field to a file written for dnsmasq" in message


def test_bridge_name_cannot_widen_the_interfaces() -> None:
    xml = net_xml(V4.format("")).replace("<bridge name='br7'/>", "<bridge name='br7,eth0'/>")
    assert "attribute 'name' of element 'bridge'" in refusal(xml)


@pytest.mark.parametrize(
    "name", ["infinite", "ignore", "300", "5h", "10m", "1.2.3.4", "set:x", "id:1", "a b", "a[x]"]
)
def test_dhcp_host_names_dnsmasq_reads_as_other_fields(name: str) -> None:
    xml = net_xml(v4_dhcp(f"<host mac='52:54:00:00:00:01' name='{name}' ip='10.0.0.5'/>"))
    message = refusal(xml)
    assert "DHCP host name" in message or "field" in message


def test_mac_with_trailing_text_is_refused() -> None:
    # libvirt takes anything after a space that follows the sixth group
    xml = net_xml(v4_dhcp("<host mac='52:54:00:00:00:01 x' name='a' ip='10.0.0.5'/>"))
    assert "attribute 'mac' of element 'host'" in refusal(xml)


def test_what_libvirt_refuses_keeps_libvirts_message() -> None:
    xml = net_xml("<dns><txt name='a,b' value='v'/></dns>" + V4.format(""))
    assert refusal(xml) == "prohibited character in DNS TXT record name 'a,b' of network t"
    xml = net_xml("<dns><srv service='a,b' protocol='tcp'/></dns>" + V4.format(""))
    assert refusal(xml) == (
        "invalid character in service attribute 'a,b' in DNS SRV record of network 't'"
    )


def test_ordinary_values_still_pass() -> None:
    net = defined(
        net_xml(
            "<domain name='lab.example'/>"
            "<dns><txt name='t' value='v=spf1 a, b; c'/>"
            "<forwarder domain='corp.example' addr='192.0.2.1'/>"
            "<srv service='_x-y' protocol='tcp' domain='lab.example' target='h.lab.example' "
            "port='80'/><host ip='10.0.0.5'><hostname>web-1.lab</hostname></host></dns>"
            + v4_dhcp(
                "<host mac='52:54:00:00:00:01' name='Host_1.lab-x' ip='10.0.0.5'/>"
                "<host mac='52:54:00:00:00:02' name='9lives' ip='10.0.0.6'/>",
                "<bootp file='/boot/pxelinux.0'/>",
            ).replace("</ip>", "<tftp root='/srv/tftp boot'/></ip>")
        )
    )
    files = render(net, "/d")
    assert "txt-record=t,v=spf1 a, b; c\n" in files.conf
    assert "tftp-root=/srv/tftp boot\n" in files.conf
    assert (
        files.hosts
        == "52:54:00:00:00:01,10.0.0.5,Host_1.lab-x\n52:54:00:00:00:02,10.0.0.6,9lives\n"
    )
    assert dnsmasq.value_problem(net) is None


# --------------------------------------------------------------------------- names
# dnsmasq's configuration reader: '#' after whitespace starts a comment, '"'
# quotes (and goes), '\' escapes inside quotes, whitespace is folded and trimmed

BAD_NAMES = [
    ("netfs-leases-helper #", "'#'"),
    ("a#b", "'#'"),
    ("sp ace", "a space"),
    ("tab\tx", "U+0009"),
    ("nb\u00a0sp", "U+00A0"),
    ("back\\slash", "a backslash"),
    ("trailing ", "a space"),
]


@pytest.mark.parametrize(("name", "what"), BAD_NAMES)
def test_names_dnsmasq_would_misread_are_refused(name: str, what: str, tmp_path: Path) -> None:
    xml = net_xml(v4_dhcp(), name=name.replace("\t", "&#9;"))
    parse_network(xml)  # a name libvirt takes ...
    message = refusal(xml)  # ... but not for a network that runs dnsmasq
    assert message.startswith("network name '") and what in message
    assert "a network that runs dnsmasq cannot have it in its name" in message
    assert "\n" not in message and "\t" not in message
    f = tmp_path / "t.xml"
    f.write_text(xml)
    assert dnsmasq_conf(str(f)) == (1, "", f"error: {message}\n")
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        assert main(["validate", str(f)]) == 1
    assert err.getvalue() == f"error: {message}\n"
    # the same name on a network that needs no dnsmasq: defined
    for body, mode in (("", None), ("<dns enable='no'/>" + V4.format(""), "route")):
        net = defined(net_xml(body, mode=mode, name=name.replace("\t", "&#9;")))
        assert net.name == name and not needs_dnsmasq(net)


def test_a_quote_in_the_name_only_where_the_name_is_written_as_it_is() -> None:
    # libvirt writes it escaped in the hosts-file paths (its own test data has
    # such a name: the corpus pair above); the daemon's pid-file line would not
    net = defined(net_xml(v4_dhcp(), name="q&quot;uo&quot;te"))
    assert dnsmasq.name_problem(net, quotes=False) is None
    files = render(net, "/d")
    assert '"' not in files.conf.split("\n", 3)[3]  # only in the header comment
    message = dnsmasq.name_problem(net)
    assert message is not None and "'\"'" in message
    with pytest.raises(NetfsError) as e:
        render(net, "/d", pidfile="/d/x.pid")
    assert (e.value.errno, e.value.message) == (errno.EINVAL, message)
    # names dnsmasq reads as written pass, pid-file line included
    for name in ("a&amp;b&lt;'c", "x,y", "dot.name-_", "ünïcode"):
        ok = defined(net_xml(v4_dhcp(), name=name))
        assert dnsmasq.name_problem(ok) is None
        assert f"pid-file=/d/{ok.name}.pid\n" in render(ok, "/d", pidfile=f"/d/{ok.name}.pid").conf
