"""netfs.model.port: <networkport>/<interface> parse, format, allocate."""

from __future__ import annotations

import itertools

import pytest
from conftest import CONFORMANCE
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netfs.errors import NetfsError
from netfs.model import port as portmod
from netfs.model import virtualport as vpmod
from netfs.model.netcommon import Bandwidth, Rate, Vlan
from netfs.model.network import parse_network
from netfs.model.port import (
    GUEST_IP_MESSAGE,
    NetworkPort,
    PciAddress,
    Plug,
    allocate_port,
    format_port,
    parse_port,
    portgroup_virtualport,
)
from netfs.model.virtualport import VirtualPort, format_virtualport

DATA = CONFORMANCE / "virnetworkportxml2xmldata"
FILES = sorted(DATA.glob("*.xml")) if DATA.is_dir() else []
U1 = "09b11c53-8b5c-4eeb-8f00-d84eaa0aaa4f"
U2 = "c7a5fdbd-edaf-9455-926a-d65c16db1809"
MAC = "52:54:00:7b:35:93"


def err(fn, *a, **k) -> str:
    with pytest.raises(NetfsError) as ei:
        fn(*a, **k)
    assert ei.value.errno == 22
    return ei.value.message


@pytest.fixture
def uuids(monkeypatch):
    counter = itertools.count(1)

    def gen() -> str:
        return f"00000000-0000-4000-8000-{next(counter):012x}"

    monkeypatch.setattr(vpmod, "generate_uuid", gen)
    monkeypatch.setattr(portmod, "generate_mac", lambda: "52:54:00:aa:bb:cc")


def NP(body: str = "", *, uuid: bool = True, owner: bool = True, mac: bool = True) -> str:
    s = "<networkport>\n"
    if uuid:
        s += "  <uuid>5d744f21-ba4a-4d6e-bdb2-30a35ff3207d</uuid>\n"
    if owner:
        s += "  <owner>\n    <name>memtest</name>\n    <uuid>d54df46f-1ab5-4a22-8618-4560ef5fac2c</uuid>\n  </owner>\n"
    if mac:
        s += f"  <mac address='{MAC}'/>\n"
    return s + body + "</networkport>\n"


# --- libvirt's round-trip data ----------------------------------------------


def test_nine_files_present(conformance_dir):
    assert len(sorted((conformance_dir / "virnetworkportxml2xmldata").glob("*.xml"))) == 9


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_round_trip_byte_for_byte(path):
    data = path.read_text()
    assert format_port(parse_port(data)) == data
    assert format_port(parse_port(data.encode(), strict=False)) == data


def test_parsed_fields(conformance_dir):
    p = parse_port((DATA / "plug-network.xml").read_text())
    assert p.uuid == "5d744f21-ba4a-4d6e-bdb2-30a35ff3207d"
    assert p.owner_name == "memtest"
    assert p.group == "web1"
    assert p.mac == MAC
    assert p.bandwidth == Bandwidth(Rate(1000, 4000, 1024, 2000), Rate(128, 256, 32768), 1729)
    assert p.vlan == Vlan((2, 1729), True)
    assert p.isolated is True
    assert p.trust_guest_rx_filters is True
    assert p.plug == Plug("network", bridge="virbr0")
    h = parse_port((DATA / "plug-hostdev-pci-unmanaged.xml").read_text())
    assert h.plug == Plug(
        "hostdev-pci", managed=False, driver="vfio", address=PciAddress(1, 2, 3, 4)
    )


# --- <networkport> parse rules ------------------------------------------------


def test_missing_uuid_refused_but_guest_interface_gets_one(uuids):
    # libvirt 9.0: an internal error, here EINVAL as every parse error
    assert err(parse_port, NP(uuid=False)) == "network port has no uuid"
    assert err(parse_port, NP(uuid=False, owner=False)) == "network port has no uuid"
    # an empty <uuid/> is no uuid either
    assert err(parse_port, NP("<uuid/>", uuid=False)) == "network port has no uuid"
    # a guest <interface> carries no port uuid: one is generated, as before
    p = parse_port("<interface type='network'/>", owner_name="vm1")
    assert p.uuid == "00000000-0000-4000-8000-000000000001"


@pytest.mark.parametrize(
    "doc,msg",
    [
        (NP(owner=False), "network port has no owner name"),
        (
            "<networkport><uuid>5d744f21-ba4a-4d6e-bdb2-30a35ff3207d</uuid>"
            "<owner><name>x</name></owner><mac address='52:54:00:00:00:01'/></networkport>",
            "network port has no owner UUID",
        ),
        (NP(mac=False), "network port has no mac"),
        (
            NP().replace(MAC, "52:54:00:7b:35"),
            "Unable to parse MAC '52:54:00:7b:35'",
        ),
        (
            NP().replace("5d744f21-ba4a", "zz744f21-ba4a"),
            "Unable to parse UUID 'zz744f21-ba4a-4d6e-bdb2-30a35ff3207d'",
        ),
        (
            NP().replace("d54df46f-", "d54df46f-x"),
            "Unable to parse UUID 'd54df46f-x1ab5-4a22-8618-4560ef5fac2c'",
        ),
        ("<network/>", "unknown root element for network port"),
        (
            NP("<plug type='bogus'/>"),
            "Invalid value for attribute 'type' in element 'plug': 'bogus'.",
        ),
        (NP("<plug type='bridge'/>"), "Missing network port bridge name"),
        (
            NP("<plug type='network' bridge='b' macTableManager='default'/>"),
            "Invalid macTableManager setting 'default' in network port",
        ),
        (NP("<plug type='direct'/>"), "Missing network port link device name"),
        (
            NP("<plug type='direct' dev='e' mode='x'/>"),
            "Invalid mode setting 'x' in network port",
        ),
        (
            NP("<plug type='hostdev-pci'><driver name='default'/><address/></plug>"),
            "Missing network port driver name",
        ),
        (NP("<plug type='hostdev-pci'/>"), "Missing network port PCI address"),
        (
            NP("<plug type='hostdev-pci' managed='maybe'><address/></plug>"),
            "Invalid value for attribute 'managed' in element 'plug': 'maybe'.",
        ),
        (
            NP("<plug type='hostdev-pci'><address bus='0x100'/></plug>"),
            "Invalid PCI address bus='0x100', must be <= 0xff",
        ),
        (
            NP("<plug type='hostdev-pci'><address slot='0x20'/></plug>"),
            "Invalid PCI address slot='0x20', must be <= 0x1f",
        ),
        (
            NP("<plug type='hostdev-pci'><address function='8'/></plug>"),
            "Invalid PCI address function=0x8, must be <= 7",
        ),
        (
            NP("<rxfilters trustGuest='default'/>"),
            "Invalid value for attribute 'trustGuest' in element 'rxfilters': 'default'.",
        ),
        (NP("<virtualport type='none'/>"), "unknown virtualport type none"),
        (
            NP("<vlan/>"),
            "missing tag id - each <vlan> must have at least one <tag id='n'/> subelement",
        ),
        (NP("<bandwidth><inbound/></bandwidth>"), "Missing mandatory average or floor attributes"),
    ],
)
def test_networkport_messages(doc, msg):
    assert err(parse_port, doc) == msg


def test_networkport_details():
    # plug type none, direct mode defaults to vepa, typeless virtualport kept
    assert parse_port(NP("<plug type='none'/>")).plug is None
    p = parse_port(NP("<plug type='direct' dev='eth0'/>"))
    assert p.plug == Plug("direct", dev="eth0", mode="vepa")
    assert "<plug type='direct' dev='eth0' mode='vepa'/>" in format_port(p)
    p = parse_port(NP("<virtualport/>"))
    assert p.virtualport == VirtualPort()
    # no generation for <networkport>
    assert parse_port(NP("<virtualport type='openvswitch'/>")).virtualport == VirtualPort(
        "openvswitch"
    )
    # escaping of owner name and group
    p = parse_port(NP("<group>a&amp;b</group>").replace("memtest", "m&lt;t"))
    text = format_port(p)
    assert "<name>m&lt;t</name>" in text and "<group>a&amp;b</group>" in text
    assert parse_port(text) == p


def test_hostile_xml_refused():
    with pytest.raises(NetfsError):
        parse_port('<!DOCTYPE x [<!ENTITY a "b">]><networkport/>')
    with pytest.raises(NetfsError):
        parse_port(b"\xff\xfe")
    with pytest.raises(NetfsError):
        parse_port("")


# --- guest <interface> --------------------------------------------------------

IFACE = (
    "<interface type='network'>\n"
    "  <source network='testA' portgroup='sales'/>\n"
    "  <mac address='52:54:00:11:22:33'/>\n"
    f"  <virtualport><parameters interfaceid='{U1}'/></virtualport>\n"
    "</interface>\n"
)


def test_interface_parse(uuids):
    p = parse_port(IFACE, owner_name="vm1")
    assert p.owner_name == "vm1"
    assert p.group == "sales"
    assert p.mac == "52:54:00:11:22:33"
    assert p.uuid.startswith("00000000-") and p.owner_uuid.startswith("00000000-")
    # typeless: generation of the missing instanceid (as libvirt for type='network')
    assert p.virtualport is not None and p.virtualport.interfaceid == U1
    assert p.virtualport.instanceid is not None
    p = parse_port("<interface type='network'><source network='x'/></interface>", owner_name="v")
    assert p.mac == "52:54:00:aa:bb:cc"
    assert p.group is None
    assert p.source_network == "x"
    p = parse_port("<interface type='network'><source portgroup='g'/></interface>", owner_name="v")
    assert p.source_network is None
    assert parse_port("<interface type='network'/>", owner_name="v").source_network is None
    assert parse_port(NP()).source_network is None


def test_interface_rest():
    p = parse_port(
        "<interface type='network' trustGuestRxFilters='yes'><source network='x'/>"
        "<bandwidth><inbound average='10' floor='5'/></bandwidth>"
        "<vlan><tag id='7'/></vlan><port isolated='no'/></interface>",
        owner_name="v",
    )
    assert p.trust_guest_rx_filters is True
    assert p.bandwidth == Bandwidth(Rate(average=10, floor=5))
    assert p.vlan == Vlan((7,))
    assert p.isolated is False


@pytest.mark.parametrize(
    "doc,msg",
    [
        (
            "<interface type='bridge'/>",
            "unsupported interface type 'bridge': only <interface type='network'> can be "
            "connected to a network",
        ),
        (
            "<interface type='network'><mac address='52:54'/></interface>",
            "unable to parse mac address '52:54'",
        ),
        (
            "<interface type='network'><mac address='01:00:5e:00:00:01'/></interface>",
            "expected unicast mac address, found multicast '01:00:5e:00:00:01'",
        ),
        (
            "<interface type='network'><bandwidth classID='3'><inbound average='1'/></bandwidth></interface>",
            "classID attribute not supported on <bandwidth> in this usage context",
        ),
        (
            "<interface type='network'><virtualport type='none'/></interface>",
            "unknown virtualport type none",
        ),
    ],
)
def test_interface_messages(doc, msg):
    assert err(parse_port, doc, owner_name="v") == msg


def test_interface_needs_owner():
    assert err(parse_port, "<interface type='network'/>") == "network port has no owner name"


GUEST = (
    "<interface type='network'><source network='x'/><mac address='52:54:00:00:00:09'/>"
    "<ip address='192.168.122.5' prefix='24'/>"
    "<route family='ipv4' address='10.0.0.0' prefix='8' gateway='192.168.122.1'/>"
    "</interface>"
)


def test_guest_ip_route_strict_refused():
    msg = err(parse_port, GUEST, owner_name="vm")
    assert msg == GUEST_IP_MESSAGE
    assert msg.startswith(
        "Invalid attempt to set network interface guest-side IP route and/or address info"
    )
    assert "cannot be enforced" in msg
    assert err(parse_port, NP("<ip address='1.2.3.4'/>")) == GUEST_IP_MESSAGE


def test_guest_ip_route_lenient_kept_through_save_reload():
    p = parse_port(GUEST, strict=False, owner_name="vm")
    assert [i.tag for i in p.ips] == ["ip"] and [r.tag for r in p.routes] == ["route"]
    text = format_port(p)
    assert text.endswith(
        "  <ip address='192.168.122.5' prefix='24'/>\n"
        "  <route family='ipv4' address='10.0.0.0' prefix='8' gateway='192.168.122.1'/>\n"
        "</networkport>\n"
    )
    again = parse_port(text, strict=False)
    assert again == p
    assert format_port(again) == text
    # allocation keeps them too
    net = parse_network("<network><name>n</name><bridge name='virbr9'/></network>")
    assert allocate_port(net, p).ips == p.ips


# --- allocation ---------------------------------------------------------------


def net(xml_body: str, name: str = "testA") -> object:
    return parse_network(f"<network><name>{name}</name>{xml_body}</network>")


def port(**kw) -> NetworkPort:
    base = {"uuid": U2, "owner_name": "vm", "owner_uuid": U1, "mac": "52:54:00:00:00:01"}
    base.update(kw)
    return NetworkPort(**base)  # type: ignore[arg-type]


OVS_NET = (
    "<forward mode='bridge'/><bridge name='ovsbr0'/><virtualport type='openvswitch'/>"
    "<portgroup name='sales'><virtualport><parameters profileid='sales'/></virtualport>"
    "</portgroup>"
)


def test_seed_openvswitch(uuids):
    n = net(OVS_NET)
    p = parse_port(IFACE, owner_name="vm1")
    a = allocate_port(n, p)
    assert format_virtualport(a.virtualport, 0) == (
        "<virtualport type='openvswitch'>\n"
        f"  <parameters interfaceid='{U1}' profileid='sales'/>\n"
        "</virtualport>\n"
    )
    assert a.plug == Plug("bridge", bridge="ovsbr0")
    # the same from a <networkport>
    p2 = parse_port(
        NP(f"<group>sales</group><virtualport><parameters interfaceid='{U1}'/></virtualport>")
    )
    assert format_virtualport(allocate_port(n, p2).virtualport, 0) == format_virtualport(
        a.virtualport, 0
    )
    assert portgroup_virtualport(n, "sales") == VirtualPort("openvswitch", profileid="sales")
    assert portgroup_virtualport(n, "nope") is None


QBG_NET = (
    "<forward mode='vepa'><interface dev='eth0'/><interface dev='eth1'/></forward>"
    "<virtualport type='802.1Qbg'><parameters typeid='1193047' typeidversion='2'/></virtualport>"
    "<portgroup name='sales'><virtualport><parameters managerid='55'/></virtualport></portgroup>"
)


def test_seed_qbg():
    n = net(QBG_NET)
    p = parse_port(
        NP(f"<group>sales</group><virtualport><parameters instanceid='{U2}'/></virtualport>")
    )
    a = allocate_port(n, p)
    assert format_virtualport(a.virtualport, 2) == (
        "  <virtualport type='802.1Qbg'>\n"
        "    <parameters managerid='55' typeid='1193047' typeidversion='2'"
        f" instanceid='{U2}'/>\n"
        "  </virtualport>\n"
    )
    assert a.plug == Plug("direct", dev="eth0", mode="vepa")
    assert portgroup_virtualport(n, "sales") == VirtualPort("802.1Qbg", 55, 1193047, 2)


def test_qbg_instanceid_generated_at_allocation(uuids):
    n = net(QBG_NET)
    a = allocate_port(n, port(group="sales"))
    assert a.virtualport == VirtualPort(
        "802.1Qbg", 55, 1193047, 2, "00000000-0000-4000-8000-000000000001"
    )


def test_virtual_mode_refusal():
    n = net(
        "<forward mode='nat'/><bridge name='virbr5'/><ip address='10.0.0.1' prefix='24'/>"
        "<virtualport type='openvswitch'/>"
    )
    assert err(allocate_port, n, port()) == (
        "<virtualport type='openvswitch'> not supported for network 'testA' which uses IP forwarding"
    )
    # even a typeless profile the port brings (Merge3 gives none; the port keeps its own)
    n2 = net("<bridge name='virbr5'/>")
    assert err(allocate_port, n2, port(virtualport=VirtualPort(profileid="x"))) == (
        "<virtualport type='none'> not supported for network 'testA' which uses IP forwarding"
    )


def test_mismatch_midonet_and_typeless():
    n = net(OVS_NET)
    assert err(allocate_port, n, port(virtualport=VirtualPort("802.1Qbh"))) == (
        "attempt to merge virtualports with mismatched types (802.1Qbh and openvswitch)"
    )
    assert err(
        allocate_port, n, port(group="sales", virtualport=VirtualPort(profileid="other"))
    ) == ("attempt to merge virtualports with mismatched profileids ('other' and 'sales')")
    bridge = net("<forward mode='bridge'/><bridge name='br0'/>")
    assert err(allocate_port, bridge, port(virtualport=VirtualPort("midonet", interfaceid=U1))) == (
        "<virtualport type='midonet'> not supported for network 'testA' which uses a bridge device"
    )
    macvtap = net("<forward mode='private'><interface dev='eth0'/></forward>")
    assert err(allocate_port, macvtap, port(virtualport=VirtualPort("midonet"))) == (
        "<virtualport type='midonet'> not supported for network 'testA' which uses a macvtap device"
    )
    # typeless everywhere on a bridge network: the port's own typeless profile stays and fails
    assert err(allocate_port, bridge, port(virtualport=VirtualPort(interfaceid=U1))) == (
        "<virtualport type='none'> not supported for network 'testA' which uses a bridge device"
    )
    # no profile at all: fine, nothing merged
    assert allocate_port(bridge, port()).virtualport is None


def test_qbh_needs_profileid():
    n = net("<forward mode='vepa'><interface dev='eth0'/></forward>")
    assert err(allocate_port, n, port(virtualport=VirtualPort("802.1Qbh"))) == (
        "missing profileid in <virtualport type='802.1Qbh'>"
    )


def test_network_plug_and_inheritance():
    n = net(
        "<bridge name='virbr3' macTableManager='libvirt'/><ip address='10.1.0.1' prefix='24'/>"
        "<forward mode='route'/>"
        "<vlan><tag id='10'/></vlan><port isolated='yes'/>"
        "<portgroup name='web' default='yes' trustGuestRxFilters='no'>"
        "<vlan><tag id='20'/></vlan><bandwidth><inbound average='100'/></bandwidth></portgroup>"
        "<portgroup name='db'/>",
    )
    n.trust_guest_rx_filters = True  # type: ignore[attr-defined]
    a = allocate_port(n, port())
    assert a.plug == Plug("network", bridge="virbr3", mac_table_manager="libvirt")
    assert a.vlan == Vlan((20,))
    assert a.bandwidth == Bandwidth(Rate(average=100))
    assert a.trust_guest_rx_filters is False
    assert a.isolated is True
    # named group without vlan/bandwidth: network vlan, no bandwidth
    b = allocate_port(n, port(group="db"))
    assert b.vlan == Vlan((10,)) and b.bandwidth is None and b.trust_guest_rx_filters is True
    # unknown group silently means no portgroup
    c = allocate_port(n, port(group="nope"))
    assert c.vlan == Vlan((10,)) and c.bandwidth is None and c.group == "nope"
    # the port's own values win
    d = allocate_port(
        n,
        port(
            vlan=Vlan((5,)),
            bandwidth=Bandwidth(outbound=Rate(average=1)),
            trust_guest_rx_filters=True,
            isolated=False,
        ),
    )
    assert d.vlan == Vlan((5,)) and d.bandwidth == Bandwidth(outbound=Rate(average=1))
    assert d.trust_guest_rx_filters is True and d.isolated is False
    assert "<plug type='network' bridge='virbr3' macTableManager='libvirt'/>" in format_port(a)


def test_input_not_mutated():
    n = net(OVS_NET)
    p = port(group="sales", virtualport=VirtualPort(interfaceid=U1))
    before = repr(p)
    allocate_port(n, p)
    assert repr(p) == before


def test_direct_pool_selection():
    n = net("<forward mode='bridge'><interface dev='eth0'/><interface dev='eth1'/></forward>")
    assert allocate_port(n, port()).plug == Plug("direct", dev="eth0", mode="bridge")
    a = allocate_port(n, port(), device_usage={"eth0": 2, "eth1": 1})
    assert a.plug == Plug("direct", dev="eth1", mode="bridge")
    a = allocate_port(n, port(), device_usage={"eth0": 1, "eth1": 1})
    assert a.plug is not None and a.plug.dev == "eth0"


def test_direct_exclusive():
    pt = net("<forward mode='passthrough'><interface dev='eth0'/><interface dev='eth1'/></forward>")
    assert allocate_port(pt, port(), device_usage={"eth0": 1}).plug == Plug(
        "direct", dev="eth1", mode="passthrough"
    )
    assert err(allocate_port, pt, port(), device_usage={"eth0": 1, "eth1": 1}) == (
        "network 'testA' requires exclusive access to interfaces, but none are available"
    )
    priv = net("<forward mode='private'><interface dev='eth0'/></forward>")
    qbh = VirtualPort("802.1Qbh", profileid="p")
    assert err(allocate_port, priv, port(virtualport=qbh), device_usage={"eth0": 1}) == (
        "network 'testA' requires exclusive access to interfaces, but none are available"
    )
    # private without 802.1Qbh shares
    assert allocate_port(priv, port(), device_usage={"eth0": 5}).plug == Plug(
        "direct", dev="eth0", mode="private"
    )


def test_direct_without_pool():
    n = net("<forward mode='vepa'/>")
    assert err(allocate_port, n, port()) == (
        "network 'testA' uses a direct mode, but has no forward dev and no interface pool"
    )


def test_hostdev():
    n = net(
        "<forward mode='hostdev' managed='yes'><driver name='vfio'/>"
        "<address type='pci' domain='0x0001' bus='0x02' slot='0x03' function='0x4'/>"
        "<address type='pci' domain='0x0001' bus='0x02' slot='0x03' function='0x5'/>"
        "</forward>"
    )
    a = allocate_port(n, port(), device_usage={"0001:02:03.4": 1})
    assert a.plug == Plug(
        "hostdev-pci", managed=True, driver="vfio", address=PciAddress(1, 2, 3, 5)
    )
    assert format_port(a).endswith(
        "  <plug type='hostdev-pci' managed='yes'>\n"
        "    <driver name='vfio'/>\n"
        "    <address domain='0x0001' bus='0x02' slot='0x03' function='0x5'/>\n"
        "  </plug>\n</networkport>\n"
    )
    assert (
        err(allocate_port, n, port(), device_usage={"0001:02:03.4": 1, "0001:02:03.5": 1})
        == "network 'testA' requires exclusive access to interfaces, but none are available"
    )
    assert err(allocate_port, n, port(virtualport=VirtualPort("openvswitch"))) == (
        "<virtualport type='openvswitch'> not supported for network 'testA' which uses an "
        "SR-IOV Virtual Function via PCI passthrough"
    )
    # unmanaged: libvirt leaves managed absent
    n2 = net(
        "<forward mode='hostdev'>"
        "<address type='pci' domain='0x0001' bus='0x02' slot='0x03' function='0x4'/></forward>"
    )
    assert allocate_port(n2, port()).plug == Plug(
        "hostdev-pci", managed=None, driver=None, address=PciAddress(1, 2, 3, 4)
    )


def test_floor_accounting():
    floor = Bandwidth(Rate(average=10, floor=30))
    nat = net("<bridge name='virbr7'/><bandwidth><inbound average='100'/></bandwidth>")
    a = allocate_port(nat, port(bandwidth=floor))
    assert a.bandwidth == Bandwidth(Rate(average=10, floor=30), class_id=3)
    b = allocate_port(nat, port(bandwidth=floor), floor_sum=60, class_ids_in_use=[3, 4])
    assert b.bandwidth is not None and b.bandwidth.class_id == 5
    assert err(allocate_port, nat, port(bandwidth=floor), floor_sum=71) == (
        "Cannot plug '52:54:00:00:00:01' interface into 'virbr7' because new combined inbound "
        "floor=101 would overcommit average=100 on network 'testA'"
    )
    peak = net("<bridge name='virbr7'/><bandwidth><inbound average='100' peak='200'/></bandwidth>")
    assert allocate_port(peak, port(bandwidth=floor), floor_sum=150).bandwidth.class_id == 3  # type: ignore[union-attr]
    assert err(allocate_port, peak, port(bandwidth=floor), floor_sum=171) == (
        "Cannot plug '52:54:00:00:00:01' interface into 'virbr7' because new combined inbound "
        "floor=201 would overcommit peak=200 on network 'testA'"
    )
    noqos = net("<bridge name='virbr7'/>")
    assert err(allocate_port, noqos, port(bandwidth=floor)) == (
        "Invalid use of 'floor' on interface with MAC address 52:54:00:00:00:01 - "
        "network 'testA' has no inbound QoS set"
    )
    bridge = net("<forward mode='bridge'/><bridge name='br0'/>")
    assert err(allocate_port, bridge, port(bandwidth=floor)).startswith(
        "Invalid use of 'floor' on interface with MAC address 52:54:00:00:00:01 - 'floor' is "
        "only supported for interface type 'network' with forward type 'nat', 'route', 'open' "
        "or none"
    )
    # no floor: no class
    assert allocate_port(nat, port(bandwidth=Bandwidth(Rate(average=5)))).bandwidth == Bandwidth(
        Rate(average=5)
    )


# --- properties ---------------------------------------------------------------

xml_bytes = st.one_of(
    st.binary(max_size=200),
    st.sampled_from([f.read_bytes() for f in FILES] or [b"<networkport/>"]).flatmap(
        lambda b: st.integers(0, len(b)).map(lambda i: b[:i])
    ),
    st.sampled_from([f.read_text() for f in FILES] or ["<networkport/>"]).flatmap(
        lambda s: st.tuples(st.integers(0, len(s)), st.text(max_size=8)).map(
            lambda t: s[: t[0]] + t[1] + s[t[0] :]
        )
    ),
)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(xml_bytes, st.booleans())
def test_parse_port_only_raises_netfs_error(data, strict):
    try:
        p = parse_port(data, strict=strict, owner_name="o")
    except NetfsError:
        return
    assert isinstance(p, NetworkPort)


name_text = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=12
)


@st.composite
def ports(draw):
    vp_type = draw(st.sampled_from([None, "802.1Qbg", "802.1Qbh", "openvswitch"]))
    vp = None
    if draw(st.booleans()):
        if vp_type == "802.1Qbg":
            vp = VirtualPort(vp_type, draw(st.integers(0, 255)), 7, 1, U1)
        elif vp_type == "802.1Qbh":
            vp = VirtualPort(vp_type, profileid=draw(name_text))
        elif vp_type == "openvswitch":
            vp = VirtualPort(vp_type, interfaceid=U2, profileid=draw(st.none() | name_text))
        else:
            vp = VirtualPort(profileid=draw(name_text))
    plug = draw(
        st.sampled_from(
            [
                None,
                Plug("network", bridge="virbr0"),
                Plug("bridge", bridge="br0", mac_table_manager="kernel"),
                Plug("direct", dev="eth0", mode="passthrough"),
                Plug("hostdev-pci", managed=False, driver="kvm", address=PciAddress(0, 1, 2, 3)),
            ]
        )
    )
    return NetworkPort(
        uuid=str(draw(st.uuids())),
        owner_name=draw(name_text),
        owner_uuid=str(draw(st.uuids())),
        mac=":".join(f"{b:02x}" for b in draw(st.binary(min_size=6, max_size=6))),
        group=draw(st.none() | name_text),
        virtualport=vp,
        bandwidth=draw(
            st.none()
            | st.builds(
                Bandwidth,
                st.builds(Rate, st.integers(1, 10**6), st.integers(0, 9), st.integers(0, 9)),
                st.none(),
                st.integers(0, 99),
            )
        ),
        vlan=draw(st.none() | st.builds(Vlan, st.tuples(st.integers(0, 4095)))),
        isolated=draw(st.none() | st.booleans()),
        trust_guest_rx_filters=draw(st.none() | st.booleans()),
        plug=plug,
    )


@settings(max_examples=100, deadline=None)
@given(ports())
def test_port_format_parse_fixed_point(p):
    text = format_port(p)
    again = parse_port(text)
    assert again == p
    assert format_port(again) == text


def test_count_connections():
    from netfs.model.network import format_network
    from netfs.model.port import count_connections

    n = net("<forward mode='bridge'><interface dev='eth0'/><interface dev='eth1'/></forward>")
    assert count_connections(n, []) is n
    a = allocate_port(n, port())
    b = allocate_port(n, port(), device_usage={"eth0": 1})
    live = count_connections(n, [a, a, b])
    assert (live.connections, [i.connections for i in live.forward.ifs]) == (3, [2, 1])
    assert n.connections == 0 and [i.connections for i in n.forward.ifs] == [0, 0]
    out = format_network(live)
    assert out.startswith("<network connections='3'>\n")
    assert "<interface dev='eth0' connections='2'/>" in out
    assert "connections" not in format_network(live, inactive=True)
    assert format_network(count_connections(live, [])) == format_network(n)
    # PCI entries are counted (exclusive use) but libvirt does not print the count
    h = net(
        "<forward mode='hostdev'>"
        "<address type='pci' domain='0x0001' bus='0x02' slot='0x03' function='0x4'/>"
        "<address type='pci' domain='0x0001' bus='0x02' slot='0x03' function='0x5'/>"
        "</forward>"
    )
    p = allocate_port(h, port())
    live = count_connections(h, [p])
    assert [i.connections for i in live.forward.ifs] == [1, 0]
    assert allocate_port(live, port()).plug == Plug("hostdev-pci", address=PciAddress(1, 2, 3, 5))
    out = format_network(live)
    assert out.startswith("<network connections='1'>\n")
    assert out.count("connections") == 1


# --- libvirt 9.0's order of checks (issue 7 item 8) ----------------------------

TYPELESS_PG_BRIDGE = (
    "<forward mode='bridge'/><bridge name='br0'/>"
    "<portgroup name='pg' default='yes'><virtualport><parameters profileid='x'/>"
    "</virtualport></portgroup>"
)


@pytest.mark.parametrize(
    "params",
    ["profileid='prof'", "managerid='1' profileid='prof'", "", f"interfaceid='{U1}'"],
)
def test_midonet_port_gets_the_forward_mode_error(params):
    """9.0 parses a midonet profile without checking its parameters; the
    allocation's forward-mode check refuses it (midonet never passes)."""
    n = net(TYPELESS_PG_BRIDGE, name="mido")
    vp = f"<virtualport type='midonet'><parameters {params}/></virtualport>"
    p = parse_port(NP(vp))
    assert p.virtualport is not None and p.virtualport.type == "midonet"
    assert err(allocate_port, n, p) == (
        "<virtualport type='midonet'> not supported for network 'mido' which uses a bridge device"
    )
    # the same through a guest <interface>
    g = parse_port(f"<interface type='network'>{vp}</interface>", owner_name="vm1")
    assert err(allocate_port, n, g) == (
        "<virtualport type='midonet'> not supported for network 'mido' which uses a bridge device"
    )
    # on a NAT network: the IP-forwarding message
    nat = net("<bridge name='virbr9'/>", name="mido")
    assert err(allocate_port, nat, p) == (
        "<virtualport type='midonet'> not supported for network 'mido' which uses IP forwarding"
    )


def test_extras_of_other_types_still_refused_at_parse():
    """For 802.1Qbg/Qbh/openvswitch the extra-parameter check runs when the
    port is parsed, before any network is looked at (libvirt 9.0 too)."""
    doc = NP("<virtualport type='openvswitch'><parameters managerid='1'/></virtualport>")
    assert err(parse_port, doc) == "extra managerid unsupported in <virtualport type='openvswitch'>"


def test_hostdev_picks_the_device_before_checking_the_profile():
    """libvirt's hostdev branch looks for a free device first: with none
    free, that is the error even when the profile would not fit either."""
    n = net(
        "<forward mode='hostdev'>"
        "<address type='pci' domain='0x0001' bus='0x02' slot='0x03' function='0x4'/></forward>"
    )
    ovs = port(virtualport=VirtualPort("openvswitch", interfaceid=U1))
    assert err(allocate_port, n, ovs, device_usage={"0001:02:03.4": 1}) == (
        "network 'testA' requires exclusive access to interfaces, but none are available"
    )
    # a free device: then the profile is checked
    assert err(allocate_port, n, ovs) == (
        "<virtualport type='openvswitch'> not supported for network 'testA' which uses an "
        "SR-IOV Virtual Function via PCI passthrough"
    )
    # a network without any device at all: the same order
    empty = net("<forward mode='hostdev'><pf dev='eth9'/></forward>")
    assert err(allocate_port, empty, ovs) == (
        "network 'testA' requires exclusive access to interfaces, but none are available"
    )


def test_macvtap_checks_the_profile_before_the_pool():
    """The macvtap branch checks the profile first, then the pool."""
    n = net("<forward mode='vepa'/>")
    ovs = port(virtualport=VirtualPort("openvswitch", interfaceid=U1))
    assert err(allocate_port, n, ovs) == (
        "<virtualport type='openvswitch'> not supported for network 'testA' which uses a "
        "macvtap device"
    )
    pt = net("<forward mode='passthrough'><interface dev='eth0'/></forward>")
    assert err(allocate_port, pt, ovs, device_usage={"eth0": 1}) == (
        "<virtualport type='openvswitch'> not supported for network 'testA' which uses a "
        "macvtap device"
    )
