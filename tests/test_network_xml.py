"""Unit tests: network XML parse-time rules, define-time validation,
formatting details and the hardened parser."""

from __future__ import annotations

import errno

import pytest

from netfs.errors import NetfsError
from netfs.model import validate as V
from netfs.model import xmlsafe
from netfs.model.network import ForwardIf, format_network, is_virtual, parse_network
from netfs.model.validate import network_problems, random_mac, validate_network

NAT_IP = "<ip address='192.168.122.1' netmask='255.255.255.0'/>"


def net(body: str, attrs: str = "", name: str = "n") -> str:
    return f"<network{attrs}><name>{name}</name><uuid>81ff0d90-c91e-6742-64da-4a736edb9a9b</uuid>{body}</network>"


def parse_error(xml: str) -> str:
    with pytest.raises(NetfsError) as ei:
        parse_network(xml)
    assert ei.value.errno == errno.EINVAL
    return ei.value.message


def validate_error(xml: str, **kw: object) -> str:
    n = parse_network(xml)
    with pytest.raises(NetfsError) as ei:
        validate_network(n, **kw)  # type: ignore[arg-type]
    assert ei.value.errno == errno.EINVAL
    return ei.value.message


def canon(xml: str, *, inactive: bool = True, **kw: object) -> str:
    n = parse_network(xml)
    V.set_mac_source(lambda: b"\0\0\0")
    try:
        validate_network(n, **kw)  # type: ignore[arg-type]
    finally:
        V.set_mac_source(None)
    return format_network(n, inactive=inactive)


# ---------------------------------------------------------------------------
# parse-time rules, in libvirt's words

PARSE_ERRORS = [
    ("<network/>", "missing name information"),
    ("<network><name></name></network>", "missing name information"),
    ("<foo><name>x</name></foo>", "expecting root element of 'network', not 'foo'"),
    (net("", name="a/b"), "invalid char in name: /"),
    ("<network><name>x</name><uuid>nope</uuid></network>", "malformed uuid element"),
    (net("<title>a\nb</title>"), "Network title can't contain newlines"),
    (net("", " ipv6='maybe'"), "Invalid ipv6 setting 'maybe' in network 'n'"),
    (
        net("", " trustGuestRxFilters='on'"),
        "Invalid value for attribute 'trustGuestRxFilters' in element 'network': 'on'.",
    ),
    (
        net("<domain name='x' register='yes'/>"),
        "attribute 'register=yes' in <domain> element requires 'localOnly=yes' in network n",
    ),
    (net("<bridge delay='x'/>"), "Invalid delay value in network 'n'"),
    (net("<bridge delay='-1'/>"), "Invalid delay value in network 'n'"),
    (
        net("<bridge macTableManager='default'/>"),
        "Invalid macTableManager setting 'default' in network 'n'",
    ),
    (net("<mac address='zz'/>"), "Invalid bridge mac address 'zz' in network 'n'"),
    (
        net("<mac address='01:00:5e:00:00:01'/>"),
        "Invalid multicast bridge mac address '01:00:5e:00:00:01' in network 'n'",
    ),
    (net("<mtu size='big'/>"), "Invalid mtu size 'big' in network 'n'"),
    (net("<ip netmask='255.0.0.0'/>"), "Missing required address attribute in network 'n'"),
    (net("<ip address='bogus'/>"), "Invalid address 'bogus' in network 'n'"),
    (
        net("<ip address='10.0.0.1' netmask='ffff::'/>"),
        "Invalid netmask 'ffff::' for address '10.0.0.1' in network 'n' (both must be IPv4)",
    ),
    (
        net("<ip address='10.0.0.1' netmask='255.0.0.0' prefix='8'/>"),
        "Network 'n' IP address cannot have both a prefix and a netmask",
    ),
    (net("<ip address='10.0.0.1' prefix='33'/>"), "Invalid IPv4 prefix '33' in network 'n'"),
    (
        net("<ip family='ipv6' address='::1' prefix='129'/>"),
        "Invalid IPv6 prefix '129' in network 'n'",
    ),
    (
        net("<ip address='fd00::1'/>"),
        "no family specified for non-IPv4 address 'fd00::1' in network 'n'",
    ),
    (
        net("<ip family='ipv6' address='10.0.0.1'/>"),
        "Family 'ipv6' specified for non-IPv6 address '10.0.0.1' in network 'n'",
    ),
    (
        net("<ip family='ipv6' address='fd00::1' netmask='255.0.0.0'/>"),
        "netmask not allowed for IPv6 address 'fd00::1' in network 'n'",
    ),
    (net("<ip family='ipx' address='10.0.0.1'/>"), "Unrecognized family 'ipx' in network 'n'"),
    (
        net("<ip family='ipv6' address='fd00::1' prefix='64'><tftp root='/x'/></ip>"),
        "Unsupported <tftp> element in an IPv6 element in network 'n'",
    ),
    (
        net("<ip address='10.0.0.1' prefix='24'><dhcp><range start='10.0.0.2'/></dhcp></ip>"),
        "Missing 'end' attribute in dhcp range for network 'n'",
    ),
    (
        net(
            "<ip address='10.0.0.1' prefix='24'><dhcp>"
            "<range start='10.0.1.2' end='10.0.1.9'/></dhcp></ip>"
        ),
        "range 10.0.1.2 - 10.0.1.9 is not entirely within network 10.0.0.1/24",
    ),
    (
        net(
            "<ip address='10.0.0.1' prefix='24'><dhcp>"
            "<range start='10.0.0.9' end='10.0.0.2'/></dhcp></ip>"
        ),
        "range 10.0.0.9 - 10.0.0.2 is reversed ",
    ),
    (
        net(
            "<ip address='10.0.0.1' prefix='24'><dhcp>"
            "<range start='10.0.0.0' end='10.0.0.9'/></dhcp></ip>"
        ),
        "start of range 10.0.0.0 - 10.0.0.9 in network 10.0.0.1/24 is the network address",
    ),
    (
        net(
            "<ip address='10.0.0.1' prefix='24'><dhcp><range start='x' end='10.0.0.9'/></dhcp></ip>"
        ),
        "Cannot parse socket address 'x': Name or service not known",
    ),
    (
        net(
            "<ip address='10.0.0.1' prefix='24'><dhcp>"
            "<host mac='01:00:00:00:00:01' ip='10.0.0.5'/></dhcp></ip>"
        ),
        "expected unicast mac address, found multicast '01:00:00:00:00:01' in network 'n'",
    ),
    (
        net("<ip address='10.0.0.1' prefix='24'><dhcp><host ip='10.0.0.5'/></dhcp></ip>"),
        "Static host definition in IPv4 network 'n' must have mac or name attribute",
    ),
    (
        net(
            "<ip family='ipv6' address='fd00::1' prefix='64'><dhcp>"
            "<host mac='00:16:3e:00:00:01' ip='fd00::5'/></dhcp></ip>"
        ),
        "Invalid to specify MAC address '00:16:3e:00:00:01' in network 'n' IPv6 static "
        "host definition",
    ),
    (
        net("<ip address='10.0.0.1' prefix='24'><dhcp><host name='a'/></dhcp></ip>"),
        "Missing IP address in static host definition for network 'n'",
    ),
    (
        net(
            "<ip address='10.0.0.1' prefix='24'><dhcp>"
            "<range start='10.0.0.2' end='10.0.0.9'><lease expiry='1'/></range></dhcp></ip>"
        ),
        "The minimum lease time should be greater than 2 minutes",
    ),
    (
        net(
            "<ip address='10.0.0.1' prefix='24'><dhcp>"
            "<range start='10.0.0.2' end='10.0.0.9'>"
            "<lease expiry='119' unit='seconds'/></range></dhcp></ip>"
        ),
        "The minimum lease time should be greater than 2 minutes",
    ),
    (net("<forward mode='bogus'/>"), "unknown forwarding type 'bogus'"),
    (
        net("<forward mode='nat'/>"),
        "nat forwarding requested, but no IP address provided for network 'n'",
    ),
    (
        net("<forward mode='route'/>"),
        "route forwarding requested, but no IP address provided for network 'n'",
    ),
    (
        net("<forward mode='nat'><interface dev='a'/><interface dev='b'/></forward>" + NAT_IP),
        "multiple forwarding interfaces specified for network 'n', only one is supported",
    ),
    (
        net("<forward mode='open' dev='eth0'/>"),
        "forward dev not allowed for network 'n' with forward mode='open'",
    ),
    (
        net("<forward mode='route'><nat/></forward>" + NAT_IP),
        "The <nat> element can only be used when <forward> 'mode' is 'nat' in network n",
    ),
    (
        net("<forward mode='bridge' dev='a'><interface dev='b'/></forward>"),
        "<forward dev='a'> must match first <interface dev='b'/> in network n",
    ),
    (
        net("<forward mode='hostdev' dev='a'><pf dev='b'/></forward>"),
        "the <forward> 'dev' attribute cannot be used when <address> or <pf> sub-elements "
        "are present in network n",
    ),
    (
        net("<forward mode='vepa'><pf dev='a'/><pf dev='b'/></forward>"),
        "Only one <pf> element is allowed in <forward> of network n",
    ),
    (
        net("<bridge name='br0'/><forward mode='vepa'><interface dev='a'/></forward>"),
        "bridge name not allowed in vepa mode (network 'n')",
    ),
    (
        net("<bridge macTableManager='libvirt'/><forward mode='private'/>"),
        "bridge macTableManager setting not allowed in private mode (network 'n')",
    ),
    (
        net("<bridge name='br0' stp='on'/><forward mode='bridge'/>"),
        "bridge delay/stp/zone options only allowed in open, route, nat, and isolated mode, "
        "not in bridge (network 'n')",
    ),
    (
        net("<bridge name='br0'/><forward mode='bridge' dev='eth0'/>"),
        "A network with forward mode='bridge' can specify a bridge name or a forward dev, "
        "but not both (network 'n')",
    ),
    (
        net("<bridge name='br0'/><mtu size='9000'/><forward mode='bridge'/>"),
        "mtu size only allowed in open, route, nat, and isolated mode, not in bridge (network 'n')",
    ),
    (
        net(
            "<ip address='10.0.0.1' prefix='24'/>"
            "<route address='10.9.0.0' prefix='16' gateway='10.1.0.1'/>"
        ),
        "unreachable static route gateway '10.1.0.1' specified for network 'n'",
    ),
    (
        net(
            "<ip address='10.0.0.1' prefix='24'/><route address='10.9.0.1' prefix='16' gateway='10.0.0.2'/>"
        ),
        "n: Address '10.9.0.1' in route definition is not a network address",
    ),
    (net("<portgroup/>"), "Missing required name attribute in portgroup"),
    (net("<virtualport/>"), "missing required virtualport type"),
    (
        net("<dns enable='no'><forwarder addr='8.8.8.8'/></dns>"),
        "Extra data in disabled network 'n'",
    ),
    (
        net("<dns><srv service='x' protocol='tcp' port='80'/></dns>"),
        "DNS SRV port attribute not permitted without target for service 'x' in network 'n'",
    ),
    (
        net("<dns><txt name='a b' value='v'/></dns>"),
        "prohibited character in DNS TXT record name 'a b' of network n",
    ),
    (net("<dns><host ip='10.0.0.1'/></dns>"), "Missing hostname in network 'n' DNS HOST record"),
    (
        net("<dns><forwarder/></dns>"),
        "Invalid forwarder element, must contain at least one of addr or domain",
    ),
    (
        net("<dns><forwarder addr='8.8.8.8' port='70000'/></dns>"),
        "port '70000' out of range",
    ),
    (
        net(
            "<dnsmasq:options><dnsmasq:option/></dnsmasq:options>",
            " xmlns:dnsmasq='http://libvirt.org/schemas/network/dnsmasq/1.0'",
        ),
        "No dnsmasq options value specified",
    ),
]


@pytest.mark.parametrize(("xml", "message"), PARSE_ERRORS)
def test_parse_errors(xml: str, message: str) -> None:
    assert parse_error(xml) == message


def test_missing_uuid_is_generated() -> None:
    n = parse_network("<network><name>x</name></network>")
    assert n.uuid_generated
    assert len(n.uuid) == 36
    m = parse_network(net(""))
    assert not m.uuid_generated
    assert m.uuid == "81ff0d90-c91e-6742-64da-4a736edb9a9b"


def test_uuid_liberal_form() -> None:
    n = parse_network(
        "<network><name>x</name><uuid> 81FF0D90C91E674264DA4A736EDB9A9B </uuid></network>"
    )
    assert n.uuid == "81ff0d90-c91e-6742-64da-4a736edb9a9b"


def test_first_error_wins_in_libvirt_order() -> None:
    # the ip problem (parsed before forward) is reported, not the forward one
    xml = net("<forward mode='bogus'/><ip address='bad'/>")
    assert parse_error(xml) == "Invalid address 'bad' in network 'n'"
    # the bridge delay (parsed before dns) wins over a bad dns record
    xml = net("<dns><txt value='v'/></dns><bridge delay='x'/>")
    assert parse_error(xml) == "Invalid delay value in network 'n'"


# ---------------------------------------------------------------------------
# prefix computation


@pytest.mark.parametrize(
    ("attrs", "expected"),
    [
        ("address='10.1.2.3'", 8),
        ("address='172.16.0.1'", 16),
        ("address='192.168.1.1'", 24),
        ("address='224.0.0.1'", -1),
        ("address='0.0.0.0'", 0),
        ("address='10.1.2.3' netmask='255.255.255.128'", 25),
        ("address='10.1.2.3' netmask='255.0.255.0'", -1),
        ("address='10.1.2.3' prefix='20'", 20),
        ("family='ipv6' address='fd00::1'", 64),
        ("family='ipv6' address='fd00::1' prefix='48'", 48),
        ("family='ipv6' address='::'", 0),
    ],
)
def test_prefix_len(attrs: str, expected: int) -> None:
    n = parse_network(net(f"<ip {attrs}/>"))
    assert n.ips[0].prefix_len() == expected


def test_route_prefix_and_fields() -> None:
    n = parse_network(
        net(
            "<ip address='10.0.0.1' prefix='24'/>"
            "<route address='10.9.0.0' netmask='255.255.0.0' gateway='10.0.0.2' metric='5'/>"
        )
    )
    r = n.routes[0]
    assert (r.family, r.address, r.prefix_len(), r.gateway, r.metric) == (
        "ipv4",
        "10.9.0.0",
        16,
        "10.0.0.2",
        5,
    )


def test_is_virtual() -> None:
    assert [m for m in ("none", "nat", "route", "open", "bridge", "hostdev") if is_virtual(m)] == [
        "none",
        "nat",
        "route",
        "open",
    ]


# ---------------------------------------------------------------------------
# formatting details


def test_defaults_libvirt_adds() -> None:
    out = canon(net("<forward dev='eth1'/>" + NAT_IP), assign_bridge=False)
    assert "<forward dev='eth1' mode='nat'>\n    <interface dev='eth1'/>\n  </forward>\n" in out
    assert "<bridge stp='on' delay='0'/>" in out
    assert "<mac address='52:54:00:00:00:00'/>" in out


def test_hostdev_managed_always_printed() -> None:
    out = canon(net("<forward mode='hostdev'><pf dev='eth2'/></forward>"))
    assert "<forward mode='hostdev' managed='no'>" in out
    out = canon(net("<forward mode='hostdev' managed='YES'><pf dev='eth2'/></forward>"))
    assert "<forward mode='hostdev' managed='yes'>" in out


def test_inactive_hides_pool_with_pf() -> None:
    xml = net("<forward mode='hostdev' managed='yes'><pf dev='eth2'/></forward>")
    n = parse_network(xml)
    n.forward.ifs.append(ForwardIf(type="netdev", dev="vf0", connections=2))
    live = format_network(n)
    assert "<interface dev='vf0' connections='2'/>" in live
    assert "vf0" not in format_network(n, inactive=True)


def test_lease_units_and_metadata_and_misc() -> None:
    xml = net(
        "<metadata><a:x xmlns:a='urn:a'>1</a:x><b>dropped</b><a:y xmlns:a='urn:a'/></metadata>"
        "<domain name='example.com' localOnly='yes'/>"
        "<ip address='10.0.0.1' prefix='24' localPtr='no'><dhcp>"
        "<range start='10.0.0.2' end='10.0.0.9'><lease expiry='10'/></range>"
        "<host mac='00:16:3E:AA:BB:CC' name='h' ip='10.0.0.5'><lease expiry='0'/></host>"
        "<bootp file='pxe.img'/>"
        "</dhcp></ip>",
        " ipv6='yes' trustGuestRxFilters='no'",
    )
    out = canon(xml, assign_bridge=False)
    assert out == (
        "<network ipv6='yes' trustGuestRxFilters='no'>\n"
        "  <name>n</name>\n"
        "  <uuid>81ff0d90-c91e-6742-64da-4a736edb9a9b</uuid>\n"
        "  <metadata>\n"
        '    <a:x xmlns:a="urn:a">1</a:x>\n'
        "  </metadata>\n"
        "  <bridge stp='on' delay='0'/>\n"
        "  <mac address='52:54:00:00:00:00'/>\n"
        "  <domain name='example.com' localOnly='yes'/>\n"
        "  <ip address='10.0.0.1' prefix='24' localPtr='no'>\n"
        "    <dhcp>\n"
        "      <range start='10.0.0.2' end='10.0.0.9'>\n"
        "        <lease expiry='10' unit='minutes'/>\n"
        "      </range>\n"
        "      <host mac='00:16:3E:AA:BB:CC' name='h' ip='10.0.0.5'>\n"
        "        <lease expiry='0'/>\n"
        "      </host>\n"
        "      <bootp file='pxe.img'/>\n"
        "    </dhcp>\n"
        "  </ip>\n"
        "</network>\n"
    )
    assert canon(out, assign_bridge=False) == out


def test_metadata_without_element_child_is_dropped() -> None:
    assert "<metadata" not in canon(net("<metadata>text only</metadata>"), assign_bridge=False)


def test_escaping_and_portgroup_and_dns_format() -> None:
    xml = net(
        "<forward mode='bridge'/><bridge name='br&amp;0'/>"
        "<virtualport type='openvswitch'/>"
        "<portgroup name='pg' default='Yes' trustGuestRxFilters='yes'>"
        "<vlan><tag id='42'/></vlan></portgroup>"
        "<portgroup name='pg2'><virtualport/></portgroup>",
        name="a&lt;b'c\"d",
    )
    out = canon(xml)
    assert "<name>a&lt;b&apos;c&quot;d</name>" in out
    assert "<bridge name='br&amp;0'/>" in out
    assert (
        "  <virtualport type='openvswitch'/>\n"
        "  <portgroup name='pg' default='yes' trustGuestRxFilters='yes'>\n"
        "    <vlan>\n      <tag id='42'/>\n    </vlan>\n"
        "  </portgroup>\n"
        "  <portgroup name='pg2'>\n  </portgroup>\n"
    ) in out
    dns = canon(
        net(
            "<dns enable='yes' forwardPlainNames='no'><host ip='10.0.0.2'><hostname>h</hostname>"
            "</host><txt name='t' value='a&amp;b'/><forwarder domain='d' addr='1.1.1.1' port='53'/>"
            "</dns>" + NAT_IP
        ),
        assign_bridge=False,
    )
    assert (
        "  <dns enable='yes' forwardPlainNames='no'>\n"
        "    <forwarder domain='d' addr='1.1.1.1' port='53'/>\n"
        "    <txt name='t' value='a&amp;b'/>\n"
        "    <host ip='10.0.0.2'>\n      <hostname>h</hostname>\n    </host>\n"
        "  </dns>\n"
    ) in dns


def test_nat_ipv6_no_and_numbers_canonical() -> None:
    xml = net(
        "<forward mode='nat'><nat ipv6='no'/></forward>"
        "<bridge delay='0x10' stp='bogus'/>"
        "<ip family='ipv6' address='2001:DB8:0:0::1' prefix='64'/>"
    )
    with pytest.raises(NetfsError):  # delay is decimal only
        parse_network(xml)
    out = canon(xml.replace("0x10", "16"), assign_bridge=False)
    assert "<nat ipv6='no'/>" in out
    assert "<bridge stp='on' delay='16'/>" in out
    assert "address='2001:db8::1'" in out


# ---------------------------------------------------------------------------
# define-time validation


VALIDATE_ERRORS = [
    (
        net("<forward mode='bridge'/><bridge name='br0'/><mac address='52:54:00:00:00:01'/>"),
        "Unsupported <mac> element in network n with forward mode='bridge'",
    ),
    (
        net("<forward mode='bridge'/><bridge name='br0'/>" + NAT_IP),
        "Unsupported <ip> element in network n with forward mode='bridge'",
    ),
    (
        net("<forward mode='bridge'/><bridge name='br0'/><dns><txt name='a' value='b'/></dns>"),
        "Unsupported <dns> element in network n with forward mode='bridge'",
    ),
    (
        net("<forward mode='bridge'/><bridge name='br0'/><domain name='d'/>"),
        "Unsupported <domain> element in network n with forward mode='bridge'",
    ),
    (
        net("<forward mode='vepa' dev='eth0'/><bandwidth><inbound average='1'/></bandwidth>"),
        "Unsupported network-wide <bandwidth> element in network n with forward mode='vepa'",
    ),
    (
        net("<forward mode='hostdev'><interface dev='eth0'/></forward>"),
        "hostdev network 'n' lists 'eth0' in the device pool, but hostdev networks require "
        "all devices to be listed by PCI address, not network device name",
    ),
    (
        net(
            "<ip address='10.0.0.1' prefix='24'><dhcp><range start='10.0.0.2' end='10.0.0.3'/></dhcp></ip>"
            "<ip address='10.0.1.1' prefix='24'><dhcp><range start='10.0.1.2' end='10.0.1.3'/></dhcp></ip>"
        ),
        "Multiple IPv4 dhcp sections found -- dhcp is supported only for a single IPv4 "
        "address on each network",
    ),
    (
        net(
            "<forward mode='bridge'/><bridge name='br0'/><portgroup name='a' default='yes'/>"
            "<portgroup name='b' default='yes'/>"
        ),
        "network 'n' has multiple default <portgroup> elements (a and b), but only one default "
        "is allowed",
    ),
    (
        net(
            "<forward mode='bridge'/><bridge name='br0'/><portgroup name='a' default='yes'/>"
            "<portgroup name='a' default='yes'/>"
        ),
        "multiple <portgroup> elements with the same name (a) in network 'n'",
    ),
    (
        net(
            "<forward mode='vepa' dev='e'/><portgroup name='a'><bandwidth><inbound average='1'/>"
            "</bandwidth></portgroup>"
        ),
        "Unsupported <bandwidth> element in network 'n' in portgroup 'a' with forward mode='vepa'",
    ),
    (
        net("<vlan><tag id='5'/></vlan>"),
        "<vlan> element specified for network n, whose type doesn't support vlan configuration",
    ),
    (
        net(
            "<forward mode='bridge'/><bridge name='br0'/><portgroup name='a'><vlan><tag id='5'/></vlan>"
            "<virtualport type='802.1Qbh'/></portgroup>"
        ),
        "<vlan> element specified for network n, whose type doesn't support vlan configuration",
    ),
]


@pytest.mark.parametrize(("xml", "message"), VALIDATE_ERRORS)
def test_validate_errors(xml: str, message: str) -> None:
    assert validate_error(xml) == message


def test_name_newline_refused_at_validation_only() -> None:
    xml = net("", name="a\nb")
    parse_network(xml)
    assert validate_error(xml) == "invalid char in name: \n"


def test_bridge_assignment() -> None:
    n = parse_network(net(""))
    validate_network(n, bridges_in_use=["virbr0", "virbr1"])
    assert n.bridge.name == "virbr2"
    n = parse_network(net(""))
    validate_network(
        n, device_exists=lambda d: d in ("virbr0", "virbr2"), bridges_in_use=["virbr1"]
    )
    assert n.bridge.name == "virbr3"
    n = parse_network(net("<bridge name='lab%d'/>"))
    validate_network(n, bridges_in_use=["lab0"])
    assert n.bridge.name == "lab1"
    n = parse_network(net("<bridge name='br0'/>"))
    validate_network(n, device_exists=lambda d: True)  # explicit names: no device check
    assert n.bridge.name == "br0"
    assert (
        validate_error(net("<bridge name='br0'/>"), bridges_in_use=["br0"])
        == "bridge name 'br0' already in use."
    )
    assert (
        validate_error(net(""), device_exists=lambda d: True)
        == "Bridge generation exceeded max id 256"
    )
    n = parse_network(net(""))
    validate_network(n, assign_bridge=False)
    assert n.bridge.name is None


def test_mac_generation() -> None:
    mac = random_mac()
    assert mac.startswith("52:54:00:") and mac == mac.lower() and len(mac) == 17
    V.set_mac_source(lambda: b"\x01\xab\xff")
    try:
        assert random_mac() == "52:54:00:01:ab:ff"
    finally:
        V.set_mac_source(None)
    n = parse_network(net("<forward mode='bridge'/><bridge name='br0'/>"))
    validate_network(n)
    assert n.mac is None
    n = parse_network(net("<mac address='12:34:56:78:9A:BC'/>"))
    validate_network(n)
    assert n.mac == "12:34:56:78:9a:bc"
    n = parse_network(net(""))
    validate_network(n, generate_mac=False)
    assert n.mac is None


def test_network_problems() -> None:
    good = parse_network(net(""))
    assert network_problems(good) is None
    assert good.bridge.name is None and good.mac is None  # untouched
    bad = parse_network(net("<forward mode='bridge'/><bridge name='br0'/>" + NAT_IP))
    assert network_problems(bad) == (
        "Unsupported <ip> element in network n with forward mode='bridge'"
    )


# ---------------------------------------------------------------------------
# the hardened parser


HOSTILE = [
    b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
    b'<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">'
    b'<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>'
    b"<network><name>&lol3;</name></network>",
    b'<!DOCTYPE network [<!ENTITY x SYSTEM "file:///etc/passwd">]><network><name>&x;</name></network>',
    b'<!DOCTYPE network SYSTEM "http://example.invalid/x.dtd"><network><name>x</name></network>',
    b"<network>" + b"<a>" * 5000 + b"</a>" * 5000 + b"</network>",
    b"<network><name>&undefined;</name></network>",
    b"<network><name>x</name>" + b" " * (1024 * 1024) + b"</network>",
    b"",
    b"\x00\x01\x02",
    b"<network><name>x</name>",
    b'<xi:include xmlns:xi="http://www.w3.org/2001/XInclude" href="/etc/passwd"/>',
]


@pytest.mark.parametrize("data", HOSTILE)
def test_hostile_input_is_einval(data: bytes) -> None:
    with pytest.raises(NetfsError) as ei:
        parse_network(data)
    assert ei.value.errno == errno.EINVAL
    assert ei.value.message


def test_root_name_and_attr_helpers() -> None:
    assert xmlsafe.root_name("<networkport/>") == "networkport"
    assert xmlsafe.root_name(b"<x:interface xmlns:x='urn:x'/>") == "interface"
    assert xmlsafe.escape("<a&'\">") == "&lt;a&amp;&apos;&quot;&gt;"
    assert xmlsafe.attr("k", "a'b") == " k='a&apos;b'"
    assert xmlsafe.attr("k", None) == ""


def test_quotes_and_ampersands_in_names_round_trip() -> None:
    """Free text in attributes libvirt prints unescaped (a DHCP host name,
    which only needs a letter first) or that we printed unescaped (portgroup
    and domain names): the output must parse back to the same document."""
    xml = (
        "<network><name>q</name><uuid>81ff0d90-c91e-6742-64da-4a736edb9a9b</uuid>"
        "<bridge name='virbr9'/><mac address='52:54:00:00:00:09'/>"
        '<domain name="ex\'ample&amp;co"/>'
        "<ip address='192.168.122.1' netmask='255.255.255.0'><dhcp>"
        "<host mac='00:16:3e:77:e2:ed' name=\"a'.example.com\" ip='192.168.122.10'/>"
        "</dhcp></ip>"
        '<portgroup name="p&amp;g\'1"/></network>'
    )
    out = format_network(parse_network(xml), inactive=True)
    assert "name='a&apos;.example.com'" in out
    assert "<portgroup name='p&amp;g&apos;1'>" in out
    assert "<domain name='ex&apos;ample&amp;co'/>" in out
    again = parse_network(out)
    assert again.ips[0].hosts[0].name == "a'.example.com"
    assert format_network(again, inactive=True) == out
