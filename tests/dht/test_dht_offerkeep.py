"""Which entries an offer set keeps (dht/offerkeep.py): a flood of fresh keys, each
with a valid signature and a ts up to the skew ahead, never pushes out established
signers (issue 10, item 3). Pure tests, some with hypothesis."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from dht_helpers import NOW, TTL
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pmarket.audit.evidence import proof_host_id
from p2pmarket.core.genesis import ConfigError, Genesis, NotaryInfo
from p2pmarket.core.identity import Identity, meets_puzzle
from p2pmarket.dht.offerkeep import FRESH_PLACES, HeldOffer, KeptOffers, keep_offers
from p2pmarket.dht.offers import (
    MAX_OFFERS,
    OfferEntry,
    make_offer_entry,
    pack_offer_set,
    parse_offer_set,
)
from p2pmarket.dht.prefixes import LOOPBACK, PrefixPolicy
from p2pmarket.dht.records import key_digest
from p2pmarket.dht.storage import RecordStorage

KEY = "offers/cpu/3"
SKEW = 59_000_000
HONEST = [Identity(bytes([1, i]) + bytes(30)) for i in range(MAX_OFFERS)]
FLOOD = [Identity(bytes([2, i]) + bytes(30)) for i in range(64)]
POLICIES = [None, PrefixPolicy(), PrefixPolicy(claimed_exempt=LOOPBACK),
            PrefixPolicy(offers_cap=1)]


def entry(ident: Identity, ts: int = NOW, url: str = "http://127.0.0.1:8000",
          capacity: int = 100, price: int = 10, ttl: int = TTL) -> OfferEntry:
    return make_offer_entry(ident, resource_type="cpu", url=url, capacity=capacity,
                            price=price, now_us=ts, ttl_us=ttl)


class Storer:
    """A storer's state for one key, driven through the pure rule."""

    def __init__(self, policy: PrefixPolicy | None = None, cap: int = MAX_OFFERS,
                 fresh: int = FRESH_PLACES, puzzle_bits: int = 0) -> None:
        self.held: Sequence[HeldOffer] = ()
        self.arrivals = 0
        self.kw = {"cap": cap, "fresh": fresh, "policy": policy, "puzzle_bits": puzzle_bits}
        self.last: KeptOffers | None = None

    def store(self, entries: Sequence[OfferEntry], now: int = NOW) -> KeptOffers:
        kept = keep_offers(KEY, self.held, entries, now, self.arrivals, **self.kw)  # type: ignore[arg-type]
        self.held, self.arrivals, self.last = kept.held, kept.next_arrival, kept
        return kept

    def signers(self) -> set[bytes]:
        return {h.entry.node_id for h in self.held}


flood_store = st.lists(st.tuples(st.integers(0, len(FLOOD) - 1), st.integers(0, SKEW),
                                 st.integers(0, 255), st.integers(1, 10**6)),
                       min_size=1, max_size=MAX_OFFERS)


@settings(max_examples=60, deadline=None)
@given(honest=st.integers(1, MAX_OFFERS - FRESH_PLACES), policy=st.sampled_from(POLICIES),
       steps=st.lists(st.one_of(flood_store, st.just("republish")), min_size=1,
                      max_size=8))
def test_fresh_keys_never_push_out_established_signers(
        honest: int, policy: PrefixPolicy | None, steps: list[object]) -> None:
    storer = Storer(policy)
    # established hosts, each in its own /24 (a policy cap of one per prefix holds)
    urls = [f"http://198.51.{i}.1:8000" for i in range(honest)]
    for i in range(honest):
        storer.store([entry(HONEST[i], url=urls[i])])
    mine = {HONEST[i].node_id for i in range(honest)}
    clock = NOW
    for step in steps:
        clock += 1_000_000
        if step == "republish":
            storer.store([entry(HONEST[i], ts=clock, url=urls[i]) for i in range(honest)],
                         now=clock)
        else:
            assert isinstance(step, list)
            # fresh keys, any claimed URL (loopback too), ts up to the skew ahead, prices
            # better than anyone's in the same band (15 per unit of price, band 3)
            storer.store([entry(FLOOD[k], ts=clock + ahead, capacity=15 * p, price=p,
                                url=f"http://{'127.0.0' if net == 0 else f'203.0.{net}'}.9:1")
                          for k, ahead, net, p in step], now=clock)
        assert mine <= storer.signers()
        assert len(storer.held) <= MAX_OFFERS


def test_fresh_places_go_to_the_latest_arrivals() -> None:
    storer = Storer()
    for ident in HONEST[:16]:
        storer.store([entry(ident)])
    assert len(storer.held) == 16
    flood = [entry(FLOOD[i], ts=NOW + SKEW) for i in range(8)]
    storer.store(flood)
    assert len(storer.held) == 24
    # a newcomer still gets in: the earliest arrival among the fresh places makes room
    newcomer = entry(FLOOD[40])
    kept = storer.store([newcomer])
    assert FLOOD[40].node_id in storer.signers()
    assert kept.refused == (flood[0],)
    assert {i.node_id for i in HONEST[:16]} <= storer.signers()
    # a fresh key's future ts does not help it: arrival counts, not the signer's clock
    late = entry(FLOOD[41], ts=NOW)
    storer.store([late, entry(FLOOD[42], ts=NOW + SKEW)])
    assert {FLOOD[41].node_id, FLOOD[42].node_id} <= storer.signers()


def test_newest_envelope_per_signer_keeps_the_signers_place() -> None:
    storer = Storer(cap=3, fresh=1)
    storer.store([entry(HONEST[0])])
    storer.store([entry(HONEST[1])])
    storer.store([entry(FLOOD[0], ts=NOW + SKEW)])
    # a republish (newer ts) keeps seniority; an older envelope changes nothing
    newer = entry(HONEST[0], ts=NOW + 5, price=7)
    storer.store([newer, entry(HONEST[1], ts=NOW - 5)])
    assert [h.entry for h in storer.held][:2] == [newer, entry(HONEST[1])]
    assert storer.held[0].first_seen == 0
    # another fresh key takes the fresh place only
    storer.store([entry(FLOOD[1], ts=NOW + SKEW)])
    assert storer.signers() == {HONEST[0].node_id, HONEST[1].node_id, FLOOD[1].node_id}


def test_an_entry_that_lapses_loses_its_place() -> None:
    storer = Storer(cap=2, fresh=0)
    storer.store([entry(HONEST[0], ttl=1_000)])
    storer.store([entry(HONEST[1])])
    storer.store([entry(FLOOD[0])])
    assert FLOOD[0].node_id not in storer.signers()
    storer.store([entry(FLOOD[0])], now=NOW + 2_000)   # HONEST[0] expired: room again
    assert storer.signers() == {HONEST[1].node_id, FLOOD[0].node_id}
    storer.store([entry(HONEST[0], ts=NOW + 3_000)], now=NOW + 3_000)
    assert HONEST[0].node_id not in storer.signers()   # back, but now the newcomer


def test_the_container_passes_the_ranking_on() -> None:
    first = Storer(cap=6, fresh=2)
    for ident in HONEST[:4]:
        first.store([entry(ident)])
    first.store([entry(FLOOD[i], ts=NOW + SKEW) for i in range(4)])
    assert first.last is not None
    sent = parse_offer_set(first.last.value, NOW).entries
    assert list(sent) == first.last.entries
    # a storer that receives the set in one store ranks its entries in the same order
    second = Storer(cap=6, fresh=2)
    second.store(list(sent))
    assert second.last is not None and second.last.entries == first.last.entries
    second.store([entry(FLOOD[10], ts=NOW + SKEW)])
    assert {i.node_id for i in HONEST[:4]} <= second.signers()


def test_prefix_cap_ranks_a_crowded_network_last() -> None:
    policy = PrefixPolicy(offers_cap=2)
    lan = [entry(HONEST[i], url=f"http://198.51.100.{i + 1}:80") for i in range(5)]
    storer = Storer(policy, cap=6, fresh=2)
    for e in lan:   # one network may fill free places...
        storer.store([e])
    assert len(storer.held) == 5
    others = [entry(FLOOD[i], url=f"http://203.0.{i}.1:80") for i in range(3)]
    storer.store(others)
    # ...but its entries past the cap yield to other networks' (its first two never do)
    assert storer.signers() >= {HONEST[0].node_id, HONEST[1].node_id}
    assert {e.node_id for e in others} <= storer.signers()
    assert len(storer.held) == 6
    # a name counts by its last two labels; loopback only where the policy exempts it
    assert policy.claimed_prefix("a.example.org") == policy.claimed_prefix("B.Example.org.")
    assert policy.claimed_prefix("127.0.0.1") == "127.0.0.0/24"
    assert policy.claimed_prefix("localhost") == "127.0.0.0/24"
    assert PrefixPolicy(claimed_exempt=LOOPBACK).claimed_prefix("localhost") is None
    assert policy.prefix("127.0.0.1") is None   # contact addresses: exempt by default
    assert policy.prefix("::ffff:198.51.100.7") == "198.51.100.0/24"


def test_loopback_urls_exempt_only_on_a_loopback_network() -> None:
    assert PrefixPolicy.for_network(["127.0.0.1", "localhost"]).claimed_exempt == LOOPBACK
    assert PrefixPolicy.for_network(["127.0.0.1", "198.51.100.1"]).claimed_exempt == ()
    assert PrefixPolicy.for_network([]).claimed_exempt == ()


def test_signers_that_miss_the_puzzle_are_not_kept() -> None:
    cheap = next(i for i in FLOOD if not meets_puzzle(i.node_id, 4))
    costly = next(Identity(bytes([3, n]) + bytes(30)) for n in range(256)
                  if meets_puzzle(Identity(bytes([3, n]) + bytes(30)).node_id, 4))
    storer = Storer(puzzle_bits=4)
    storer.store([entry(cheap), entry(costly)])
    assert storer.signers() == {costly.node_id}
    st_ = RecordStorage(proof_host_id, lambda: NOW, puzzle_bits=4)
    assert st_.put_reason(key_digest(KEY), pack_offer_set(KEY, [entry(cheap)])) == "puzzle"
    assert st_.put(key_digest(KEY), pack_offer_set(KEY, [entry(costly)]))


def test_storage_turns_over_fresh_places_only() -> None:
    st_ = RecordStorage(proof_host_id, lambda: NOW, max_offers=3)
    dkey = key_digest(KEY)
    for ident in HONEST[:2]:
        assert st_.put(dkey, pack_offer_set(KEY, [entry(ident)]))
    fresh = [entry(FLOOD[i], ts=NOW + SKEW) for i in range(4)]
    assert st_.put(dkey, pack_offer_set(KEY, fresh[:1]))
    # the fresh place turns over; the established ones do not
    assert st_.put(dkey, pack_offer_set(KEY, fresh[1:2]))
    assert {e.node_id for e in st_.offer_entries(dkey)} == {
        HONEST[0].node_id, HONEST[1].node_id, FLOOD[1].node_id}
    # a republish of a held signer is always taken
    assert st_.put(dkey, pack_offer_set(KEY, [entry(HONEST[0], ts=NOW + 9)]))
    assert st_.counters["capped_entries"] == 1


def test_shared_prefixes_of_a_private_deployment_are_free_of_the_caps() -> None:
    """A genesis's shared_prefixes exempt both contact addresses and claimed URL hosts
    there; every other prefix keeps its /24 caps."""
    policy = PrefixPolicy.for_network(["198.18.0.11"], ["198.18.0.0/15"])
    for host in ("198.18.0.21", "198.19.4.10"):
        assert policy.prefix(host) is None
        assert policy.claimed_prefix(host) is None
    assert policy.prefix("198.51.100.7") == "198.51.100.0/24"
    assert policy.claimed_prefix("198.51.100.7") == "198.51.100.0/24"
    assert policy.claimed_prefix("127.0.0.1") == "127.0.0.0/24"   # not a loopback network
    assert policy.prefix("127.0.0.1") is None
    base = Genesis("t", b"\x01" * 32, (NotaryInfo(b"\x02" * 32, "http://198.18.0.11:7400"),))
    genesis = Genesis.from_doc({**base.to_doc(), "shared_prefixes": ["198.18.0.0/15"]})
    assert genesis.shared_prefixes == ("198.18.0.0/15",)
    assert genesis.network_id != base.network_id
    assert Genesis.from_doc(base.to_doc()).network_id == base.network_id
    with pytest.raises(ConfigError):
        Genesis.from_doc({**base.to_doc(), "shared_prefixes": ["not a network"]})
