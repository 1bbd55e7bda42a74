"""RecordStorage: every store validated against its digest key, merges, seq, expiry."""

from __future__ import annotations

from dht_helpers import ALICE, MALLORY, NOW, TTL, FakeClock, host, host_body, offer

from p2pmarket.audit.evidence import proof_host_id
from p2pmarket.core.domains import DHT_RECORD
from p2pmarket.core.identity import Identity
from p2pmarket.core.wire import seal
from p2pmarket.dht.checks import MAX_VALUE_BYTES
from p2pmarket.dht.offers import pack_offer_set, parse_offer_set
from p2pmarket.dht.records import host_key, key_digest
from p2pmarket.dht.storage import RecordStorage

ALICE_KEY = key_digest(host_key(ALICE.node_id))
CPU_KEY = key_digest("offers/cpu/3")


def storage() -> tuple[RecordStorage, FakeClock]:
    clock = FakeClock()
    return RecordStorage(proof_host_id, clock), clock


def test_digest_matches_kademlia() -> None:
    from kademlia.utils import digest
    assert key_digest("offers/cpu/3") == digest("offers/cpu/3")


def test_valid_host_record_stored_and_returned() -> None:
    st, _ = storage()
    rec = host()
    assert st.put(ALICE_KEY, rec.value)
    assert st.get(ALICE_KEY) == rec.value
    assert st[ALICE_KEY] == rec.value
    assert st.host_record(ALICE_KEY) == rec
    assert list(st) == [(ALICE_KEY, rec.value)]
    assert st.counters == {"stored": 1}


def test_invalid_values_for_the_digest_refused_and_counted() -> None:
    st, _ = storage()
    rec = host()
    forged = seal(MALLORY, DHT_RECORD, "dht.host", host_body(ALICE), ts=NOW).encode()
    cases = {
        "wrong_key": (key_digest("host/" + "00" * 20), rec.value),  # valid record, other key
        "wrong_signer": (ALICE_KEY, forged),
        "malformed": (ALICE_KEY, b"\xc1garbage"),
        "too_large": (ALICE_KEY, b"\x00" * (MAX_VALUE_BYTES + 1)),
    }
    for reason, (dkey, value) in cases.items():
        assert not st.put(dkey, value), reason
        assert st.counters[f"rejected.{reason}"] == 1
    st[ALICE_KEY] = forged  # the kademlia interface refuses the same way
    assert st.counters["rejected"] == len(cases) + 1
    assert st.get(ALICE_KEY) is None
    assert len(st) == 0
    # an offer set stored under a host key is refused too
    assert not st.put(ALICE_KEY, pack_offer_set("offers/cpu/3", [offer(ALICE)]))
    assert st.counters["rejected.wrong_key"] == 2


def test_stale_seq_refused() -> None:
    st, _ = storage()
    assert st.put(ALICE_KEY, host(seq=5).value)
    assert not st.put(ALICE_KEY, host(seq=4).value)
    assert not st.put(ALICE_KEY, host(seq=5, url="http://other").value)  # same seq, new body
    assert st.put(ALICE_KEY, host(seq=5).value)  # the same record again is fine
    assert st.counters["rejected.stale_seq"] == 2
    newer = host(seq=6)
    assert st.put(ALICE_KEY, newer.value)
    assert st.get(ALICE_KEY) == newer.value


def test_expired_dropped_on_read_and_never_iterated() -> None:
    st, clock = storage()
    assert st.put(ALICE_KEY, host().value)
    clock.advance(TTL / 1e6 / 2)
    assert st.iter_older_than(1) == [(ALICE_KEY, host().value)]
    clock.advance(TTL / 1e6)
    assert st.iter_older_than(1) == []
    assert list(st) == []
    assert st.get(ALICE_KEY) is None
    assert st.counters["expired"] == 1
    # an old-seq record may be stored again once the newer one has expired
    assert st.put(ALICE_KEY, host(seq=1, now=clock.now).value)


def test_offer_sets_merge_and_expire_per_entry() -> None:
    st, clock = storage()
    bob, carol = Identity(b"\xb0" * 32), Identity(b"\xc0" * 32)
    a1 = offer(ALICE, capacity=101, now=NOW)
    b1 = offer(bob, now=NOW + 1, ttl=10_000_000)
    assert st.put(CPU_KEY, pack_offer_set("offers/cpu/3", [a1]))
    assert st.put(CPU_KEY, pack_offer_set("offers/cpu/3", [b1]))
    a2 = offer(ALICE, capacity=102, now=NOW + 2)
    assert st.put(CPU_KEY, pack_offer_set("offers/cpu/3", [a2, b1]))
    assert not st.put(CPU_KEY, pack_offer_set("offers/cpu/3", []))  # empty set refused
    assert st.put(CPU_KEY, pack_offer_set("offers/cpu/3", [a1]))  # older entry: no effect
    assert st.offer_entries(CPU_KEY) == [a2, b1]
    got = st.get(CPU_KEY)
    assert got is not None
    assert list(parse_offer_set(got, clock.now).entries) == [a2, b1]
    clock.advance(11)  # bob's entry expires, alice's stays
    assert st.offer_entries(CPU_KEY) == [a2]
    got = st.get(CPU_KEY)
    assert got is not None and list(parse_offer_set(got, clock.now).entries) == [a2]
    assert st.counters["expired"] == 1
    # a set with one forged entry is refused whole (no honest node passes one on), and
    # the sender is banned by the protocol; the honest entry alone is accepted
    c1 = offer(carol, now=clock.now)
    forged = seal(MALLORY, DHT_RECORD, "dht.offer2", {
        "key": "offers/cpu/3", "node_id": carol.node_id, "url": "http://evil", "type": "cpu",
        "capacity": 150, "price": 10, "expires": clock.now + TTL}, ts=clock.now + 5)
    from p2pmarket.core.wire import pack
    value = pack({"kind": "dht.offers2", "key": "offers/cpu/3",
                  "entries": [c1.value, forged.encode()]})
    assert st.put_reason(CPU_KEY, value) == "forged"
    assert st.counters["dropped_entries"] == 1
    assert st.put(CPU_KEY, pack_offer_set("offers/cpu/3", [c1]))
    assert {e.node_id for e in st.offer_entries(CPU_KEY)} == {ALICE.node_id, carol.node_id}
    assert [e for e in st.offer_entries(CPU_KEY) if e.node_id == carol.node_id] == [c1]


def test_storage_is_bounded() -> None:
    clock = FakeClock()
    st = RecordStorage(proof_host_id, clock, max_keys=2)
    recs = [host(Identity(bytes([i + 1]) * 32), ttl_us=10_000_000) for i in range(3)]
    keys = [key_digest(r.key) for r in recs]
    assert st.put(keys[0], recs[0].value)
    assert st.put(keys[1], recs[1].value)
    assert not st.put(keys[2], recs[2].value)
    assert st.counters["rejected.full"] == 1
    clock.advance(11)  # the old ones expire and make room
    fresh = host(Identity(b"\x03" * 32), now=clock.now)
    assert st.put(keys[2], fresh.value)
