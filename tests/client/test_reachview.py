"""The buyer's reading of a host record's reach list (pure): each entry checked on its
own; a URL nothing backs is unreachable and the host is skipped."""

from __future__ import annotations

from p2pmarket.client.reachview import reach_of
from p2pmarket.core.clock import US_PER_S
from p2pmarket.core.identity import Identity
from p2pmarket.dht.records import HostRecord, ResourceAd, make_host_record
from p2pmarket.nat.attestation import make_attestation
from p2pmarket.nat.reservation import make_reservation, relayed_url
from p2pmarket.nat.table import ReachClass

NOW = 1_800_000_000 * US_PER_S
HOST = Identity(b"\x31" * 32)
OTHER = Identity(b"\x32" * 32)
REGISTRARS = [Identity(bytes([0x40 + i]) * 32) for i in range(4)]
RELAY = Identity(b"\x50" * 32)
RELAY_URL = "http://198.18.0.11:7400"
CPU = {"cpu": ResourceAd(capacity=4000, price=10, hour_avg=9)}


def record(url: str, reach: list[bytes]) -> HostRecord:
    return make_host_record(HOST, url=url, dht=("198.18.0.21", 7401), resources=CPU,
                            availability_ppm=1_000_000, seq=1, now_us=NOW,
                            ttl_us=600 * US_PER_S, reach=reach)


def attest(cls: ReachClass, host: str, verified: bool, by: Identity = REGISTRARS[0],
           node: Identity = HOST, ts: int = NOW) -> bytes:
    return make_attestation(by, node_id=node.node_id, host=host, port=7400, reach_class=cls,
                            verified=verified, ts=ts)


def voucher(expires: int = NOW + 3600 * US_PER_S, node: Identity = HOST) -> bytes:
    return make_reservation(RELAY, url=RELAY_URL, node_id=node.node_id, expires=expires,
                            ts=expires - 3600 * US_PER_S)


def test_no_reach_entries_is_unattested_and_reachable() -> None:
    view = reach_of(record("http://198.18.0.21:7400", []), NOW)
    assert (view.reach_class, view.registrars, view.reachable, view.label) == (
        None, 0, True, "unattested")


def test_a_public_host_at_its_verified_address() -> None:
    reach = [attest(ReachClass.PUBLIC, "198.18.0.21", True, by=r) for r in REGISTRARS[:3]]
    view = reach_of(record("http://198.18.0.21:7400", reach), NOW)
    assert (view.reach_class, view.registrars, view.reachable, view.refused) == (
        ReachClass.PUBLIC, 3, True, 0)
    assert view.label == "public (3)"


def test_forged_and_foreign_attestations_are_refused_and_do_not_count() -> None:
    good = attest(ReachClass.PUBLIC, "198.18.0.21", True)
    forged = bytearray(attest(ReachClass.PUBLIC, "198.18.0.21", True, by=REGISTRARS[1]))
    forged[-1] ^= 1                                                  # a broken signature
    foreign = attest(ReachClass.PUBLIC, "198.18.0.21", True, by=REGISTRARS[2], node=OTHER)
    stale = attest(ReachClass.PUBLIC, "198.18.0.21", True, by=REGISTRARS[3],
                   ts=NOW - 4 * 3600 * US_PER_S)
    view = reach_of(record("http://198.18.0.21:7400", [good, bytes(forged), foreign, stale]),
                    NOW)
    assert (view.registrars, view.refused, view.reachable) == (1, 3, True)


def test_a_url_no_attestation_verified_is_unreachable() -> None:
    """A NAT'd host that advertises its LAN address: its registrars could not call it
    back there, so buyers skip it."""
    reach = [attest(ReachClass.NAT, "198.19.1.10", False, by=r) for r in REGISTRARS[:3]]
    view = reach_of(record("http://198.19.1.10:7400", reach), NOW)
    assert (view.reach_class, view.reachable) == (ReachClass.NAT, False)
    assert view.label == "nat (3), unreachable"
    only_forged = bytearray(attest(ReachClass.PUBLIC, "198.18.0.21", True))
    only_forged[-1] ^= 1
    view = reach_of(record("http://198.18.0.21:7400", [bytes(only_forged)]), NOW)
    assert (view.reachable, view.refused) == (False, 1)


def test_a_relayed_host_is_reached_through_its_vouchers_relay() -> None:
    url = relayed_url(RELAY_URL, HOST.node_id)
    reach = [attest(ReachClass.NAT, "198.19.1.10", False, by=r) for r in REGISTRARS[:3]]
    view = reach_of(record(url, [*reach, voucher()]), NOW)
    assert (view.reach_class, view.relayed_by, view.reachable) == (ReachClass.NAT,
                                                                   RELAY_URL, True)
    assert view.label == f"nat via {RELAY_URL}"
    # an expired voucher, or one made out to another host, backs nothing
    for bad in (voucher(expires=NOW - 1), voucher(node=OTHER)):
        view = reach_of(record(url, [*reach, bad]), NOW)
        assert (view.relayed_by, view.reachable, view.refused) == (None, False, 1)
    # a voucher for this host, but the record names another relay URL
    view = reach_of(record("http://198.18.0.12:7400/relay/" + HOST.node_id.hex(),
                           [*reach, voucher()]), NOW)
    assert (view.relayed_by, view.reachable) == (None, False)
