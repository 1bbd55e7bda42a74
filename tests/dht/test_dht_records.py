"""Pure tests of the DHT record formats, merging and ranking."""

from __future__ import annotations

import pytest
from dht_helpers import ALICE, MALLORY, NOW, TTL, host, host_body, offer

from p2pmarket.audit.evidence import proof_host_id
from p2pmarket.core.domains import AUDIT_ENTRY, DHT_RECORD, ENVELOPE, LEASE, Domain
from p2pmarket.core.identity import Identity
from p2pmarket.core.limits import DEFAULT_MAX_CAPACITY, MAX_PRICE
from p2pmarket.core.wire import Envelope, pack, seal, unpack
from p2pmarket.dht.checks import MAX_VALUE_BYTES, DhtError
from p2pmarket.dht.offers import (
    MAX_OFFERS,
    OfferEntry,
    fit_offer_set,
    make_offer_entry,
    merge_offers,
    pack_offer_set,
    parse_offer_set,
    rank_offers,
)
from p2pmarket.dht.records import (
    HostRecord,
    ResourceAd,
    host_key,
    newer_host,
)
from p2pmarket.dht.storage import parse_record


def test_host_record_round_trip() -> None:
    rec = host()
    again = HostRecord.from_bytes(rec.value, NOW)
    assert again == rec
    assert again.node_id == ALICE.node_id
    assert again.key == f"host/{ALICE.node_id.hex()}"
    assert again.resources["cpu"] == ResourceAd(4000, 10, 9)
    assert again.dht == ("127.0.0.1", 9000)
    assert again.expires == NOW + TTL
    assert len(rec.value) < 1024
    assert parse_record(rec.value, NOW, proof_host_id) == rec


def test_host_record_signed_by_another_key_refused() -> None:
    # Mallory signs a record that names Alice's node id and key
    env = seal(MALLORY, DHT_RECORD, "dht.host", host_body(ALICE), ts=NOW)
    with pytest.raises(DhtError) as err:
        HostRecord.from_envelope(env, NOW)
    assert err.value.value == "wrong_signer"


@pytest.mark.parametrize("domain", [ENVELOPE, LEASE, AUDIT_ENTRY])
def test_a_record_signed_for_another_purpose_is_refused(domain: Domain) -> None:
    """Alice's own signature of her own record body, made as an RPC, a lease or an
    audit entry, is no record: host records and offer entries are dht.record's."""
    for make in (lambda: seal(ALICE, domain, "dht.host", host_body(ALICE), ts=NOW),
                 lambda: seal(ALICE, domain, "dht.offer2", offer(ALICE).envelope.body,
                              ts=NOW)):
        env = make()
        with pytest.raises(DhtError) as err:
            if env.kind == "dht.host":
                HostRecord.from_envelope(env, NOW)
            else:
                OfferEntry.from_envelope(env, NOW)
        assert err.value.value == "bad_signature"
    with pytest.raises(DhtError) as err:   # stored as a record, it is refused too
        parse_record(seal(ALICE, domain, "dht.host", host_body(ALICE), ts=NOW).encode(), NOW,
                     proof_host_id)
    assert err.value.value == "bad_signature"


def test_host_record_key_must_name_signer() -> None:
    env = seal(ALICE, DHT_RECORD, "dht.host", host_body(ALICE, key=host_key(MALLORY.node_id)),
               ts=NOW)
    with pytest.raises(DhtError) as err:
        HostRecord.from_envelope(env, NOW)
    assert err.value.value == "wrong_key"


def test_tampered_host_record_refused() -> None:
    doc = unpack(host().value)
    doc["body"]["seq"] = 99
    with pytest.raises(DhtError) as err:
        HostRecord.from_bytes(pack(doc), NOW)
    assert err.value.value == "bad_signature"


@pytest.mark.parametrize("changes", [
    {"url": ""}, {"dht": ["127.0.0.1"]}, {"dht": ["h", 0]}, {"availability_ppm": 1_000_001},
    {"seq": -1}, {"seq": True}, {"resources": {"CPU!": {}}},
    {"resources": {"cpu": {"capacity": 1, "price": 1}}},
    {"resources": {"cpu": {"capacity": 1.5, "price": 1, "hour_avg": 1}}},
])
def test_malformed_host_bodies_refused(changes: dict[str, object]) -> None:
    body = host_body(ALICE, **changes)
    try:
        env = seal(ALICE, DHT_RECORD, "dht.host", body, ts=NOW)
    except Exception:  # floats cannot even be signed
        return
    with pytest.raises(DhtError):
        HostRecord.from_envelope(env, NOW)


def test_extra_field_and_wrong_kind_refused() -> None:
    with pytest.raises(DhtError):
        HostRecord.from_envelope(seal(ALICE, DHT_RECORD, "dht.host", host_body(ALICE, x=1),
                                      ts=NOW), NOW)
    with pytest.raises(DhtError) as err:
        HostRecord.from_envelope(seal(ALICE, DHT_RECORD, "dht.offer2", host_body(ALICE),
                                      ts=NOW), NOW)
    assert err.value.value == "wrong_kind"


def test_expired_and_far_future_refused() -> None:
    rec = host()
    with pytest.raises(DhtError) as err:
        HostRecord.from_bytes(rec.value, NOW + TTL)
    assert err.value.value == "expired"
    HostRecord.from_bytes(rec.value, NOW + TTL - 1)
    with pytest.raises(DhtError) as err:
        host(ttl_us=25 * 3600 * 1_000_000)
    assert err.value.value == "too_long"


def test_record_signed_in_the_future_refused() -> None:
    with pytest.raises(DhtError) as err:
        OfferEntry.from_bytes(offer(ALICE, now=NOW + 61_000_000).value, NOW)
    assert err.value.value == "future"
    with pytest.raises(DhtError) as err:
        HostRecord.from_bytes(host(now=NOW + 61_000_000).value, NOW)
    assert err.value.value == "future"
    OfferEntry.from_bytes(offer(ALICE, now=NOW + 59_000_000).value, NOW)


def test_oversize_refused_and_offer_sets_trimmed_to_fit() -> None:
    big = b"\x00" * (MAX_VALUE_BYTES + 1)
    for parse in (HostRecord.from_bytes, parse_offer_set,
                  lambda value, now: parse_record(value, now, proof_host_id)):
        with pytest.raises(DhtError) as err:
            parse(big, NOW)
        assert err.value.value == "too_large"
    with pytest.raises(DhtError):
        host(resources={f"r{i}": ResourceAd(1, 1, 1) for i in range(17)})
    # the largest legal host record stays far below the limit
    widest = host(url="http://" + "a" * 249, dht=("h" * 253, 65535), resources={
        f"{i:02d}" + "r" * 30: ResourceAd(DEFAULT_MAX_CAPACITY, MAX_PRICE, MAX_PRICE)
        for i in range(16)})
    assert len(widest.value) < MAX_VALUE_BYTES // 2
    # entries with long urls: the container keeps the freshest that fit
    idents = [Identity(bytes([i + 100]) * 32) for i in range(MAX_OFFERS)]
    fat = [make_offer_entry(ident, resource_type="cpu", url="http://" + "u" * 249,
                            capacity=1, price=1, now_us=NOW + i, ttl_us=TTL)
           for i, ident in enumerate(idents)]
    merged = merge_offers(fat, NOW + 100)
    value, kept = fit_offer_set("offers/cpu/0", merged)
    assert len(value) <= MAX_VALUE_BYTES
    assert 0 < len(kept) < len(merged)
    assert kept == merged[: len(kept)]
    assert list(parse_offer_set(value, NOW + 100).entries) == kept


def test_higher_seq_wins() -> None:
    a, b = host(seq=1), host(seq=2)
    assert newer_host(a, b) is b
    assert newer_host(b, a) is b


def test_offer_round_trip_and_wrong_signer() -> None:
    entry = offer(ALICE)
    assert OfferEntry.from_bytes(entry.value, NOW) == entry
    assert entry.key == "offers/cpu/3"
    body = {"key": "offers/cpu/3", "node_id": ALICE.node_id, "url": "http://x", "type": "cpu",
            "capacity": 1, "price": 1, "expires": NOW + TTL}
    with pytest.raises(DhtError) as err:
        OfferEntry.from_envelope(seal(MALLORY, DHT_RECORD, "dht.offer2", body, ts=NOW), NOW)
    assert err.value.value == "wrong_signer"
    body = {**body, "node_id": MALLORY.node_id, "key": "offers/memory/0"}
    with pytest.raises(DhtError) as err:
        OfferEntry.from_envelope(seal(MALLORY, DHT_RECORD, "dht.offer2", body, ts=NOW), NOW)
    assert err.value.value == "wrong_key"


def test_offer_set_merge_newest_per_signer_and_expired_dropped() -> None:
    idents = [Identity(bytes([i]) * 32) for i in range(2, 6)]
    old = offer(idents[0], capacity=1, now=NOW)
    new = offer(idents[0], capacity=2, now=NOW + 10)
    short = offer(idents[1], now=NOW, ttl=1_000)
    other = offer(idents[2], now=NOW + 5)
    merged = merge_offers([new, short, old, other], NOW + 2_000)
    assert merged == [new, other]  # freshest first, one per signer, expired gone
    assert merge_offers([old, new], NOW) == merge_offers([new, old], NOW) == [new]


def test_offer_set_of_many_signers_round_trips() -> None:
    # (this test used to pin "the cap keeps the freshest by the signer's ts": the flood
    # of issue 10; which entries a storer keeps is now tests/dht/test_dht_offerkeep.py)
    idents = [Identity(bytes([i + 10]) * 32) for i in range(MAX_OFFERS + 6)]
    entries = [offer(ident, now=NOW + i) for i, ident in enumerate(idents)]
    merged = merge_offers(entries, NOW + 100)
    assert merged == entries  # one per signer, in order of first appearance
    value, kept = fit_offer_set("offers/cpu/3", merged[:MAX_OFFERS])
    assert kept == merged[:MAX_OFFERS] and len(value) <= MAX_VALUE_BYTES
    parsed = parse_offer_set(value, NOW + 100)
    assert parsed.key == "offers/cpu/3" and list(parsed.entries) == kept


def test_offer_set_drops_bad_entries() -> None:
    good = offer(ALICE)
    doc = unpack(offer(MALLORY).value)
    doc["body"]["capacity"] = 10**6  # breaks the signature
    other_key = offer(MALLORY, rtype="memory")
    expired = offer(Identity(b"\x07" * 32), ttl=10)
    value = pack({"kind": "dht.offers2", "key": "offers/cpu/3",
                  "entries": [good.value, pack(doc), other_key.value, expired.value, b"junk"]})
    parsed = parse_offer_set(value, NOW + 100)
    assert parsed.entries == (good,)
    assert parsed.dropped == 4
    with pytest.raises(DhtError):
        parse_offer_set(pack({"kind": "dht.offers2", "key": "host/xx", "entries": []}), NOW)
    with pytest.raises(DhtError):
        parse_offer_set(pack([1, 2]), NOW)
    with pytest.raises(DhtError):
        pack_offer_set("offers/memory", [good])


def test_parse_record_refuses_unknown_kinds() -> None:
    env: Envelope = seal(ALICE, DHT_RECORD, "dht.unknown", {"key": "evidence/aa"}, ts=NOW)
    with pytest.raises(DhtError) as err:
        parse_record(env.encode(), NOW, proof_host_id)
    assert err.value.value == "unsupported"


def test_rank_offers_by_cost_efficiency_with_filters() -> None:
    idents = [Identity(bytes([i + 50]) * 32) for i in range(6)]
    a = offer(idents[0], capacity=100, price=10)   # 10
    b = offer(idents[1], capacity=300, price=20)   # 15
    c = offer(idents[2], capacity=50, price=2)     # 25
    d = offer(idents[3], capacity=30, price=3)     # 10, smaller than a
    e = offer(idents[4], capacity=40, price=1)     # 40: first (no price is below 1)
    huge = offer(idents[5], capacity=2**27, price=2**27 - 1)  # just over 1
    entries = [a, b, c, d, e, huge]
    assert rank_offers(entries, 10) == [e, c, b, a, d, huge]
    assert rank_offers(entries, 2) == [e, c]
    assert rank_offers(entries, 10, min_capacity=60) == [b, a, huge]
    assert rank_offers(entries, 10, max_price=10) == [e, c, a, d]
    assert rank_offers(entries, 10, min_capacity=60, max_price=10) == [a]
    assert rank_offers(entries, 0) == []
