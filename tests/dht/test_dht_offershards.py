"""The shard rules of the offer index (pure) and the format bump from the single key."""

from __future__ import annotations

import asyncio
import random
from fractions import Fraction

import pytest
from dht_helpers import ALICE, MALLORY, NOW, TTL, offer
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pmarket.audit.evidence import proof_host_id
from p2pmarket.core.domains import DHT_RECORD
from p2pmarket.core.identity import Identity
from p2pmarket.core.limits import MAX_CAPACITY, MAX_PRICE
from p2pmarket.core.wire import pack, seal
from p2pmarket.dht.checks import DhtError
from p2pmarket.dht.offerquery import GROUP_LOOKAHEAD, ShardRead, Walk
from p2pmarket.dht.offers import (
    MAX_OFFERS,
    OfferEntry,
    live_offers,
    make_offer_entries,
    make_offer_entry,
    pack_offer_set,
    parse_offer_set,
    rank_offers,
)
from p2pmarket.dht.offershards import (
    LOWEST_BAND,
    SUB_SHARDS,
    band_key,
    band_of,
    bands,
    bottom_band,
    floor_log2_ratio,
    group_of,
    is_crowded,
    key_fits,
    max_lookups,
    parse_shard_key,
    sub_of,
    top_band,
)
from p2pmarket.dht.records import key_digest
from p2pmarket.dht.storage import RecordStorage, parse_record


@given(st.integers(1, 2**70), st.integers(1, 2**70))
def test_floor_log2_ratio_is_exact(a: int, b: int) -> None:
    k = floor_log2_ratio(a, b)
    assert Fraction(2) ** k <= Fraction(a, b) < Fraction(2) ** (k + 1)


def test_bands_order_offers_by_efficiency() -> None:
    assert band_of(4000, 10) == 8 and band_of(4096, 16) == 8 and band_of(4095, 16) == 7
    assert band_of(1, 2) == -1 and band_of(1, MAX_PRICE) == -62
    assert band_of(0, 5) == LOWEST_BAND < band_of(1, MAX_PRICE)
    assert top_band("cpu") == 27 == band_of(MAX_CAPACITY["cpu"], 1)
    assert bottom_band() == LOWEST_BAND
    assert bottom_band(1000, 10) == band_of(1000, 10) == 6
    assert bottom_band(1000) == band_of(1000, MAX_PRICE)
    assert bands("cpu", 1000, 10) == list(range(27, 5, -1))
    assert max_lookups("cpu", 1000, 10) == 4 + 22 * (1 + SUB_SHARDS)   # groups 3 to 0
    assert group_of(8) == group_of(15) == 1 and group_of(-1) == -1 and group_of(-8) == -1


@given(st.lists(st.tuples(st.integers(0, 2**27), st.integers(1, 2**40)), min_size=2,
                max_size=30))
def test_a_higher_band_always_ranks_higher(ads: list[tuple[int, int]]) -> None:
    for (c1, p1) in ads:
        for (c2, p2) in ads:
            if band_of(c1, p1) > band_of(c2, p2):
                assert Fraction(c1, p1) > Fraction(c2, p2)


def test_key_names_and_the_old_single_key() -> None:
    node = bytes.fromhex("a7") + bytes(19)
    assert sub_of(node) == "a"
    assert band_key("cpu", -3) == "offers/cpu/-3"
    assert parse_shard_key("offers/cpu/12") == ("cpu", 12, None)
    assert parse_shard_key("offers/cpu/12/f") == ("cpu", 12, "f")
    assert parse_shard_key("offers/cpu/g-2") == ("cpu", -2, "g")
    assert parse_shard_key("offers/cpu/g3") == ("cpu", 3, "g")
    with pytest.raises(DhtError) as err:
        parse_shard_key("offers/cpu")
    assert err.value.value == "old_format" and "format 2" in err.value.message
    for bad in ("offers/cpu/+3", "offers/cpu/03", "offers/cpu/28", "offers/cpu/-64",
                "offers/cpu/3/g", "offers/cpu/3/ab", "offers/cpu/3/a/b", "offers/CPU/3",
                "host/cpu/3", "offers/cpu/x", "offers/cpu/g4", "offers/cpu/g01",
                "offers/cpu/g1/a", "offers/cpu/g"):
        with pytest.raises(DhtError) as err:
            parse_shard_key(bad)
        assert err.value.value in ("wrong_key", "bad_type"), bad
    # an entry sits in its own band and sub-shard; a withdrawal in any band of its type
    assert key_fits("offers/cpu/8", "cpu", node, 4000, 10)
    assert key_fits("offers/cpu/8/a", "cpu", node, 4000, 10)
    assert not key_fits("offers/cpu/8/b", "cpu", node, 4000, 10)
    assert not key_fits("offers/cpu/9", "cpu", node, 4000, 10)
    assert not key_fits("offers/memory/8", "cpu", node, 4000, 10)
    assert key_fits("offers/cpu/20/a", "cpu", node, 0, 10)
    assert key_fits("offers/cpu/g1", "cpu", node, 4000, 10)
    assert not key_fits("offers/cpu/g0", "cpu", node, 4000, 10)
    assert key_fits("offers/cpu/g-3", "cpu", node, 0, 10)
    assert is_crowded(24, 100) and is_crowded(1, 7000) and not is_crowded(23, 3000)


def test_an_entry_under_another_band_is_refused() -> None:
    body = {"key": "offers/cpu/9", "node_id": ALICE.node_id, "url": "http://x",
            "type": "cpu", "capacity": 4000, "price": 10, "expires": NOW + TTL}
    with pytest.raises(DhtError) as err:
        OfferEntry.from_envelope(seal(ALICE, DHT_RECORD, "dht.offer2", body, ts=NOW), NOW)
    assert err.value.value == "wrong_key"
    entries = make_offer_entries(ALICE, resource_type="cpu", url="http://x", capacity=4000,
                                 price=10, now_us=NOW, ttl_us=TTL)
    assert [e.key for e in entries] == ["offers/cpu/8", f"offers/cpu/8/{sub_of(ALICE.node_id)}",
                                        "offers/cpu/g1"]


def test_format_one_records_are_refused_with_a_clear_error() -> None:
    body = {"key": "offers/cpu", "node_id": MALLORY.node_id, "url": "http://x",
            "type": "cpu", "capacity": 100, "price": 10, "expires": NOW + TTL}
    old_entry = seal(MALLORY, DHT_RECORD, "dht.offer", body, ts=NOW).encode()
    old_set = pack({"kind": "dht.offers", "key": "offers/cpu", "entries": [old_entry]})
    with pytest.raises(DhtError) as err:
        parse_offer_set(old_set, NOW)
    assert err.value.value == "old_format" and "format 1" in err.value.message
    with pytest.raises(DhtError) as err:
        parse_record(old_set, NOW, proof_host_id)
    assert err.value.value == "old_format"
    with pytest.raises(DhtError) as err:
        OfferEntry.from_bytes(old_entry, NOW)
    assert err.value.value == "old_format" and "format 1" in err.value.message
    st_ = RecordStorage(proof_host_id, clock=lambda: NOW)
    assert st_.put_reason(key_digest("offers/cpu"), old_set) == "old_format"
    # a new set under the old key name: refused too
    new = offer(ALICE)
    with pytest.raises(DhtError) as err:
        pack_offer_set("offers/cpu", [new])
    assert err.value.value == "wrong_key"
    raw = pack({"kind": "dht.offers2", "key": "offers/cpu", "entries": [new.value]})
    assert st_.put_reason(key_digest("offers/cpu"), raw) == "old_format"


def test_withdrawals_hide_a_stale_entry_in_a_higher_band() -> None:
    stale = make_offer_entry(ALICE, resource_type="cpu", url="http://x", capacity=4000,
                             price=10, now_us=NOW, ttl_us=TTL)
    gone = make_offer_entries(ALICE, resource_type="cpu", url="http://x", capacity=0,
                              price=10, now_us=NOW + 1, ttl_us=TTL, band=8)
    moved = make_offer_entry(ALICE, resource_type="cpu", url="http://x", capacity=4000,
                             price=40, now_us=NOW + 2, ttl_us=TTL)
    assert {e.key for e in gone} == {"offers/cpu/8", f"offers/cpu/8/{sub_of(ALICE.node_id)}",
                                     "offers/cpu/g1"}
    assert live_offers([stale, *gone], NOW) == []
    assert live_offers([stale, *gone, moved], NOW) == [moved]
    assert live_offers([stale], NOW) == [stale]


def _walk_market(ads: list[tuple[int, int]], n: int, min_capacity: int,
                 max_price: int | None) -> tuple[list[bytes], list[bytes], Walk]:
    """A market of ``ads`` held by ideal storers that keep MAX_OFFERS signers per key
    (the lowest node ids: a stand-in for seniority), walked for the top n."""
    idents = [Identity(i.to_bytes(4, "big") + bytes(28)) for i in range(len(ads))]
    entries = [e for ident, (c, p) in zip(idents, ads, strict=True)
               for e in make_offer_entries(ident, resource_type="cpu", url="http://x",
                                           capacity=c, price=p, now_us=NOW, ttl_us=TTL)]
    by_key: dict[str, list[OfferEntry]] = {}
    for e in entries:
        by_key.setdefault(e.key, []).append(e)

    async def read(key: str) -> ShardRead:
        held = sorted(by_key.get(key, []), key=lambda e: e.node_id)[:MAX_OFFERS]
        return ShardRead(tuple(held), 200 * len(held))

    walk = Walk("cpu", read, NOW, min_capacity=min_capacity, max_price=max_price)
    got = asyncio.run(walk.top(n))[:n]
    want = rank_offers([e for e in entries if e.key.count("/") == 2 and "/g" not in e.key],
                       n, min_capacity,
                       max_price)
    return [e.node_id for e in got], [e.node_id for e in want], walk


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10**6), count=st.integers(1, 300), n=st.integers(1, 24),
       spread=st.integers(0, 12))
def test_the_walk_finds_the_true_top_n(seed: int, count: int, n: int, spread: int) -> None:
    rng = random.Random(seed)
    # many hosts, few bands (crowded: > MAX_OFFERS per band), sub-shards hold the rest
    ads = [(rng.randint(1000, 8000), rng.randint(1, 2 ** spread)) for _ in range(count)]
    got, want, walk = _walk_market(ads, n, 0, None)
    assert got == want
    assert walk.lookups <= max_lookups("cpu")
    got, want, _ = _walk_market(ads, n, 3000, 2 ** max(0, spread - 1))
    assert got == want


def test_the_walk_stops_early() -> None:
    ads = [(4000, 10)] * 30 + [(4000, 1000)] * 30   # bands 8 and 1
    got, want, walk = _walk_market(ads, 10, 0, None)
    assert got == want
    top = top_band("cpu")
    # empty groups skipped with one lookup each (read GROUP_LOOKAHEAD at a time: the
    # last step's look-ahead reads GROUP_LOOKAHEAD - 1 groups past group 1); group 1's
    # bands down to band 8, band 8 through its sub-shards, nothing below
    assert walk.bands_read == top - 8 + 1
    assert walk.lookups == ((group_of(top) - 1) + 1 + (GROUP_LOOKAHEAD - 1) + 8
                            + SUB_SHARDS)


def test_walk_answers_are_verified() -> None:
    from p2pmarket.dht.gatewaywalk import parse_walk_answer
    good = offer(ALICE)
    value = pack_offer_set(good.key, [good])
    other = pack_offer_set(good.key, [offer(MALLORY)])
    raw = pack({"read": [good.key, "offers/cpu/9"], "sets": [value, b"junk"]})
    served, rejected = parse_walk_answer(raw, NOW)
    assert served[good.key].entries == (good,) and served["offers/cpu/9"].entries == ()
    assert rejected == 1
    # a set for a key the answer does not say it read is dropped
    served, rejected = parse_walk_answer(pack({"read": ["offers/cpu/9"], "sets": [other]}),
                                         NOW)
    assert set(served) == {"offers/cpu/9"} and rejected == 1
    for bad in (b"junk", pack([1]), pack({"read": ["offers/cpu"], "sets": []}),
                pack({"read": "x", "sets": []})):
        with pytest.raises(DhtError) as err:
            parse_walk_answer(bad, NOW)
        assert err.value.value == "gateway"
