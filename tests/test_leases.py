"""netfs.leases: the helper dnsmasq runs, the records, the `leases` text, the watch.

Pure tests (no root): the helper is called as dnsmasq calls it, with argv and
the DNSMASQ_* environment, on a temporary directory.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import trio

from netfs import leases
from netfs.leases import Lease, Records

NOW = 1_796_300_000  # 2026-12-03T12:13:20Z
MAC = "52:54:00:aa:bb:01"


def env_for(d: Path, name: str = "net1", **extra: str) -> dict[str, str]:
    return {leases.ENV_NETWORK: name, leases.ENV_DIR: str(d), **extra}


def call(d: Path, *argv: str, name: str = "net1", now: float = NOW, **env: str) -> int:
    return leases.helper_main(list(argv), env_for(d, name, **env), now=now)


def test_add_old_del_keep_one_record_per_address(tmp_path: Path) -> None:
    exp = str(NOW + 3600)
    assert call(tmp_path, "add", MAC, "10.0.0.5", "guest1", DNSMASQ_LEASE_EXPIRES=exp) == 0
    got = leases.read_records(tmp_path, "net1").leases
    assert got == (Lease("10.0.0.5", MAC, NOW + 3600, "guest1"),)
    # renewal: same address, new expiry; the host name stays when not sent again
    call(tmp_path, "old", MAC, "10.0.0.5", DNSMASQ_LEASE_EXPIRES=str(NOW + 7200))
    got = leases.read_records(tmp_path, "net1").leases
    assert got == (Lease("10.0.0.5", MAC, NOW + 7200, "guest1"),)
    call(tmp_path, "add", "52:54:00:aa:bb:02", "10.0.0.6", DNSMASQ_LEASE_EXPIRES=exp)
    call(tmp_path, "del", MAC, "10.0.0.5")
    got = leases.read_records(tmp_path, "net1").leases
    assert [x.address for x in got] == ["10.0.0.6"]
    # networks are apart (any name libvirt allows, also one starting with a dot)
    assert leases.read_records(tmp_path, "net2").leases == ()
    call(tmp_path, "add", MAC, "10.0.0.9", name=".dot", DNSMASQ_LEASE_EXPIRES="0")
    assert [x.address for x in leases.read_records(tmp_path, ".dot").leases] == ["10.0.0.9"]
    assert [x.address for x in leases.read_records(tmp_path, "net1").leases] == ["10.0.0.6"]


def test_expired_leases_are_dropped(tmp_path: Path) -> None:
    call(tmp_path, "add", MAC, "10.0.0.5", DNSMASQ_LEASE_EXPIRES=str(NOW + 10))
    call(
        tmp_path,
        "add",
        "52:54:00:aa:bb:02",
        "10.0.0.6",
        DNSMASQ_LEASE_EXPIRES=str(NOW + 500),
        now=NOW + 100,
    )
    assert [x.address for x in leases.read_records(tmp_path, "net1").leases] == ["10.0.0.6"]
    assert leases.format_leases(leases.read_records(tmp_path, "net1").leases, NOW + 600) == ""


def test_infinite_lease_is_never(tmp_path: Path) -> None:
    call(tmp_path, "add", MAC, "10.0.0.5", "h", DNSMASQ_LEASE_EXPIRES="0")
    text = leases.format_leases(leases.read_records(tmp_path, "net1").leases, NOW + 10**8)
    assert text == f"never {MAC} ipv4 10.0.0.5/32 h -\n"


def test_ipv6_lease_and_init_replay(tmp_path: Path) -> None:
    call(tmp_path, "add", MAC, "10.0.0.5", "g4", DNSMASQ_LEASE_EXPIRES=str(NOW + 60),
         DNSMASQ_CLIENT_ID="01:52:54:00:aa:bb:01")  # fmt: skip
    call(
        tmp_path,
        "add",
        "00:01:00:01:2a:3b:4c:5d:52:54:00:aa:bb:01",
        "fd00::10",
        "g6",
        DNSMASQ_IAID="12345",
        DNSMASQ_MAC=MAC,
        DNSMASQ_SERVER_DUID="00:01:00:01:11:22:33:44:52:54:00:00:00:01",
        DNSMASQ_LEASE_EXPIRES=str(NOW + 120),
    )
    recs = leases.read_records(tmp_path, "net1")
    v6 = recs.leases[1]
    assert v6.protocol == "ipv6" and v6.iaid == "12345" and v6.mac == MAC
    assert v6.client_id == "00:01:00:01:2a:3b:4c:5d:52:54:00:aa:bb:01"
    assert recs.server_duid == "00:01:00:01:11:22:33:44:52:54:00:00:00:01"
    assert leases.init_lines(recs, NOW) == (
        f"{NOW + 60} {MAC} 10.0.0.5 g4 01:52:54:00:aa:bb:01\n"
        "duid 00:01:00:01:11:22:33:44:52:54:00:00:00:01\n"
        f"{NOW + 120} 12345 fd00::10 g6 00:01:00:01:2a:3b:4c:5d:52:54:00:aa:bb:01\n"
    )
    text = leases.format_leases(recs.leases, NOW, {"ipv4": 24, "ipv6": 64})
    assert text.splitlines()[1] == (
        "2026-12-03T12:15:20+00:00 52:54:00:aa:bb:01 ipv6 fd00::10/64 g6 "
        "00:01:00:01:2a:3b:4c:5d:52:54:00:aa:bb:01"
    )


def test_init_prints_dnsmasq_lease_lines_through_the_entry_script(tmp_path: Path) -> None:
    call(tmp_path, "add", MAC, "10.0.0.5", "guest1", DNSMASQ_LEASE_EXPIRES=str(NOW + 10**9))
    script = tmp_path / "helper"
    script.write_text(leases.entry_script(os.path.realpath(sys.executable)))
    script.chmod(0o755)
    out = subprocess.run(
        [str(script), "init"], env=env_for(tmp_path), capture_output=True, check=True
    )
    assert out.stdout == f"{NOW + 10**9} {MAC} 10.0.0.5 guest1 *\n".encode()
    # the other calls run netfs.leases with the standard library only
    env = env_for(tmp_path, DNSMASQ_LEASE_EXPIRES="0")
    subprocess.run([str(script), "add", MAC, "10.0.0.7", "g2"], env=env, check=True)
    assert [x.address for x in leases.read_records(tmp_path, "net1").leases] == [
        "10.0.0.5",
        "10.0.0.7",
    ]
    out = subprocess.run([str(script), "init"], env=env, capture_output=True, check=True)
    assert out.stdout.endswith(f"0 {MAC} 10.0.0.7 g2 *\n".encode())
    # no records yet: an empty answer, not a failure (dnsmasq would refuse to start)
    out = subprocess.run(
        [str(script), "init"], env=env_for(tmp_path, "none"), capture_output=True, check=True
    )
    assert out.stdout == b"" and out.returncode == 0


HOSTILE = "a b\nc;$(reboot)`x`|{}\"'\\ \x1b[31m\t\u00e9\udcff"


def test_hostile_values_are_escaped_and_never_replayed(tmp_path: Path) -> None:
    call(tmp_path, "add", MAC, "10.0.0.5", DNSMASQ_SUPPLIED_HOSTNAME=HOSTILE,
         DNSMASQ_CLIENT_ID="01 02\n", DNSMASQ_LEASE_EXPIRES=str(NOW + 60))  # fmt: skip
    recs = leases.read_records(tmp_path, "net1")
    assert recs.leases[0].hostname == HOSTILE  # kept as it came
    text = leases.format_leases(recs.leases, NOW, {"ipv4": 24})
    assert text.count("\n") == 1 and len(text.split(" ")) == 6
    host = text.split(" ")[4]
    assert host == ("a\\x20b\\x0ac;$(reboot)`x`|{}\"'\\x5c\\x20\\x1b[31m\\x09\\xc3\\xa9\\xff")
    assert text.split(" ")[5] == "01\\x2002\\x0a\n"
    # never back to dnsmasq: `*` instead
    assert leases.init_lines(recs, NOW) == f"{NOW + 60} {MAC} 10.0.0.5 * *\n"


def test_network_comes_from_the_environment_only(tmp_path: Path) -> None:
    assert leases.helper_main(["add", MAC, "10.0.0.5"], {}, now=NOW) == 1
    bad = {leases.ENV_NETWORK: "../x", leases.ENV_DIR: str(tmp_path)}
    assert leases.helper_main(["add", MAC, "10.0.0.5"], bad, now=NOW) == 1
    assert list(tmp_path.iterdir()) == []
    # a guest's name is data, never a path
    call(tmp_path, "add", MAC, "10.0.0.5", "../../etc/passwd", DNSMASQ_LEASE_EXPIRES="0")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".net1.lock", "net1.init", "net1.records"]


def test_other_actions_and_broken_files_are_harmless(tmp_path: Path) -> None:
    assert call(tmp_path, "tftp", "100", "10.0.0.5", "/srv/x") == 0
    assert not (tmp_path / "net1.records").exists()
    (tmp_path / "net1.records").write_bytes(b"{not json")
    assert call(tmp_path, "init") == 0
    assert call(tmp_path, "add", MAC, "10.0.0.5", DNSMASQ_LEASE_EXPIRES="0") == 0
    assert len(leases.read_records(tmp_path, "net1").leases) == 1


def test_records_round_trip() -> None:
    recs = Records(
        (
            Lease("10.0.0.5", MAC, 5, "h", "01:02", None),
            Lease("fd::1", None, 0, None, "0a", "7"),
            Lease("10.0.0.6", MAC, 9, HOSTILE, "-", "\\x41"),
        ),
        "00:01",
    )
    data = leases.format_records(recs)
    assert data.count(b"\n") == 5 and data.isascii()
    assert leases.parse_records(data) == recs
    assert leases.parse_records(b"") == leases.parse_records(b"junk\nlease x") == Records()


def test_escape() -> None:
    assert leases.escape(None) == "-"
    assert leases.escape("") == "-"
    assert leases.escape("ok.name-1") == "ok.name-1"
    assert leases.escape("a\\b c") == "a\\x5cb\\x20c"
    assert leases.escape("\x7f\x00") == "\\x7f\\x00"


def test_drop_records(tmp_path: Path) -> None:
    state = tmp_path
    d = leases.leases_dir(state)
    os.makedirs(d)
    leases.write_records(d, "n", Records((Lease("10.0.0.5", MAC, 0),)))
    assert [x.address for x in leases.read_leases(state, "n")] == ["10.0.0.5"]
    assert leases.drop_records(state, "n") is True
    assert leases.read_leases(state, "n") == [] and os.listdir(d) == []
    assert leases.drop_records(state, "n") is False


def test_watch_reports_added_renewed_removed(tmp_path: Path) -> None:
    d = tmp_path / "leases"

    async def main() -> list[leases.LeaseChange]:
        watch = leases.LeaseWatch(d)
        seen: list[leases.LeaseChange] = []

        async def consume() -> None:
            async for change in watch.changes():
                seen.append(change)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(consume)
            for argv, expiry in (
                (("add", MAC, "10.0.0.5", "g"), NOW + 10**9),
                (("old", MAC, "10.0.0.5", "g"), NOW + 10**9 + 1),
                (("del", MAC, "10.0.0.5"), NOW + 10**9 + 1),
            ):
                env = env_for(d, DNSMASQ_LEASE_EXPIRES=str(expiry))
                leases.helper_main(list(argv), env, now=NOW)
                await wait_for(seen, argv[0])
            watch.close()
        return seen

    async def wait_for(seen: list[leases.LeaseChange], action: str) -> None:
        count = ("add", "old", "del").index(action) + 1
        with trio.fail_after(5):
            while len(seen) < count:
                await trio.sleep(0.001)

    seen = trio.run(main)
    assert seen == [
        leases.LeaseChange("net1", ((MAC, "10.0.0.5"),), ()),
        leases.LeaseChange("net1", (), ()),
        leases.LeaseChange("net1", (), ((MAC, "10.0.0.5"),)),
    ]


def test_a_renewal_keeps_place_mac_and_name(tmp_path: Path) -> None:
    duid = "00:01:00:01:2a:3b:4c:5d:52:54:00:aa:bb:01"
    v6 = {"DNSMASQ_IAID": "7", "DNSMASQ_LEASE_EXPIRES": str(NOW + 60)}
    call(tmp_path, "add", duid, "fd00::10", "g6", DNSMASQ_MAC=MAC, **v6)
    call(tmp_path, "add", "52:54:00:aa:bb:02", "10.0.0.6", DNSMASQ_LEASE_EXPIRES="0")
    # dnsmasq's `old` at its start: no MAC for a DHCPv6 lease it loaded, no name
    call(tmp_path, "old", duid, "fd00::10", **{**v6, "DNSMASQ_LEASE_EXPIRES": str(NOW + 90)})
    got = leases.read_records(tmp_path, "net1").leases
    assert got[0] == Lease("fd00::10", MAC, NOW + 90, "g6", duid, "7")
    assert got[1].address == "10.0.0.6"


def test_a_lease_deleted_at_its_expiry_is_removed_once(tmp_path: Path) -> None:
    """dnsmasq's `del` for an expired lease comes once it has expired: the
    watch still reports it removed (lease-removed), and only once."""
    d = tmp_path / "leases"
    call(d, "add", MAC, "10.0.0.5", "g", DNSMASQ_LEASE_EXPIRES=str(NOW + 120))
    old = leases.live(leases.read_records(d, "net1"), NOW)  # what the watch saw, live
    later = NOW + 121  # expired: dnsmasq calls `del`
    call(d, "del", MAC, "10.0.0.5", now=later)
    new = leases.read_records(d, "net1")
    assert leases.diff("net1", old, new, later) == leases.LeaseChange(
        "net1", (), ((MAC, "10.0.0.5"),)
    )
    # a records file that still holds the expired lease (another lease's
    # change came first): removed now, and not again at its `del`
    call(d, "add", MAC, "10.0.0.5", "g", DNSMASQ_LEASE_EXPIRES=str(NOW + 120))
    old = leases.live(leases.read_records(d, "net1"), NOW)
    stale = Records(
        old.leases + (Lease("10.0.0.6", "52:54:00:aa:bb:02", NOW + 999),), old.server_duid
    )
    first = leases.diff("net1", old, stale, later)
    assert first.removed == ((MAC, "10.0.0.5"),)
    seen = leases.live(stale, later)
    call(d, "del", MAC, "10.0.0.5", now=later)
    assert leases.diff("net1", seen, stale, later).removed == ()


def _uncached(d: Path, name: str, now: float, prefixes: dict[str, int]) -> str:
    return leases.format_leases(leases.read_records(d, name).leases, now, prefixes)


def test_leases_text_is_made_once_per_change_and_per_expiry(tmp_path: Path) -> None:
    v4 = {"ipv4": 24}
    cache = leases.LeasesText()
    assert cache.text(tmp_path, "net1", NOW, v4) == "" and cache.builds == 0  # no records
    records = Records(
        (
            Lease("10.0.0.5", MAC, NOW + 100, "a", "01:52:54:00:aa:bb:01"),
            Lease("10.0.0.6", "52:54:00:aa:bb:02", 0, "b\\ c"),  # never expires
            Lease("10.0.0.7", "52:54:00:aa:bb:03", NOW + 50, None),
            Lease("10.0.0.8", "52:54:00:aa:bb:04", NOW - 1, "gone"),  # expired already
        )
    )
    leases.write_records(tmp_path, "net1", records, NOW)
    text = cache.text(tmp_path, "net1", NOW, v4)
    assert text == _uncached(tmp_path, "net1", NOW, v4)
    assert [line.split()[3] for line in text.splitlines()] == [
        "10.0.0.5/24",
        "10.0.0.6/24",
        "10.0.0.7/24",
    ]
    # read again, up to the first expiry (second NOW + 50 included): made once
    for now in (NOW, NOW + 10, NOW + 50):
        assert cache.text(tmp_path, "net1", now, v4) == text
    assert cache.builds == 1
    # past it, without any change of the file: the lease has gone
    text = cache.text(tmp_path, "net1", NOW + 51, v4)
    assert "10.0.0.7" not in text and "10.0.0.5" in text
    assert text == _uncached(tmp_path, "net1", NOW + 51, v4) and cache.builds == 2
    assert cache.text(tmp_path, "net1", NOW + 100, v4) == text and cache.builds == 2
    assert cache.text(tmp_path, "net1", NOW + 101, v4) == _uncached(tmp_path, "net1", NOW + 101, v4)
    # the records change (a renewal of the same size): the new text at once
    renewed = Records(
        (Lease("10.0.0.5", MAC, NOW + 300, "z", "01:52:54:00:aa:bb:01"), *records.leases[1:])
    )
    size = os.stat(leases.records_path(tmp_path, "net1")).st_size
    leases.write_records(tmp_path, "net1", renewed, NOW + 101)
    assert os.stat(leases.records_path(tmp_path, "net1")).st_size == size
    text = cache.text(tmp_path, "net1", NOW + 101, v4)
    assert text == _uncached(tmp_path, "net1", NOW + 101, v4)
    assert text.split()[4] == "z"
    # other prefixes (a redefinition), and a clock set back: made again
    assert "10.0.0.5/16" in cache.text(tmp_path, "net1", NOW + 101, {"ipv4": 16})
    assert cache.text(tmp_path, "net1", NOW - 10, v4) == _uncached(tmp_path, "net1", NOW - 10, v4)
    # networks apart; the records dropped (undefined): empty, the entry gone
    leases.write_records(tmp_path, "net2", records, NOW)
    assert cache.text(tmp_path, "net2", NOW, v4) == _uncached(tmp_path, "net2", NOW, v4)
    os.unlink(leases.records_path(tmp_path, "net1"))
    assert cache.text(tmp_path, "net1", NOW + 101, v4) == ""
    assert cache.text(tmp_path, "net2", NOW, v4) == _uncached(tmp_path, "net2", NOW, v4)
