"""Plausibility bounds on advertised capacities and prices (issue 10, item 2): a record
or offer claiming more than one machine can have, or a price below 1, is refused at
store time, by every node; an honest host cannot set such a capacity."""

from __future__ import annotations

from typing import Any

import pytest
from dht_helpers import ALICE, MALLORY, NOW, TTL, FakeClock, Swarm, host, host_body, offer

from p2pmarket.auction import HostError
from p2pmarket.auction.hostconfig import HostConfig
from p2pmarket.audit.evidence import proof_host_id
from p2pmarket.core.domains import DHT_RECORD
from p2pmarket.core.limits import DEFAULT_MAX_CAPACITY, MAX_CAPACITY, MAX_PRICE
from p2pmarket.core.wire import Envelope, pack, seal, unpack
from p2pmarket.dht.checks import MALICIOUS, DhtError
from p2pmarket.dht.offers import OfferEntry, pack_offer_set, parse_offer_set
from p2pmarket.dht.offershards import band_key, band_of
from p2pmarket.dht.records import HostRecord, ResourceAd, key_digest
from p2pmarket.dht.storage import RecordStorage

PHANTOM = {"capacity": 2**62, "price": 1, "hour_avg": 1}


def host_env(resources: dict[str, Any]) -> Envelope:
    """A host record signed as-is (not through make_host_record, which checks too)."""
    return seal(MALLORY, DHT_RECORD, "dht.host", host_body(MALLORY, resources=resources), ts=NOW)


def offer_env(capacity: int, price: int, rtype: str = "cpu") -> Envelope:
    body = {"key": band_key(rtype, band_of(capacity, price)), "node_id": MALLORY.node_id, "url": "http://x",
            "type": rtype, "capacity": capacity, "price": price, "expires": NOW + TTL}
    return seal(MALLORY, DHT_RECORD, "dht.offer2", body, ts=NOW)


def refusal(parse: Any, env: Envelope) -> str:
    with pytest.raises(DhtError) as err:
        parse(env, NOW)
    return str(err.value.value)


def test_capacities_beyond_one_machine_and_prices_below_one_are_refused() -> None:
    parse = HostRecord.from_envelope
    assert refusal(parse, host_env({"cpu": PHANTOM})) == "implausible"
    for rtype, top in MAX_CAPACITY.items():
        at = {"capacity": top, "price": 1, "hour_avg": 0}
        assert parse(host_env({rtype: at}), NOW).resources[rtype].capacity == top
        over = {**at, "capacity": top + 1}
        assert refusal(parse, host_env({rtype: over})) == "implausible"
    # a type this version does not know: the default bound
    assert parse(host_env({"gpu": {**PHANTOM, "capacity": DEFAULT_MAX_CAPACITY}}), NOW)
    assert refusal(parse, host_env({"gpu": {**PHANTOM, "capacity": DEFAULT_MAX_CAPACITY + 1}})
                   ) == "implausible"
    assert refusal(parse, host_env({"cpu": {"capacity": 4000, "price": 0, "hour_avg": 0}})
                   ) == "implausible"
    assert refusal(parse, host_env({"cpu": {"capacity": 4000, "price": MAX_PRICE + 1,
                                            "hour_avg": 0}})) == "implausible"
    assert refusal(parse, host_env({"cpu": {"capacity": 4000, "price": 1,
                                            "hour_avg": MAX_PRICE + 1}})) == "malformed"
    assert refusal(parse, host_env({"cpu": {"capacity": -1, "price": 1, "hour_avg": 0}})
                   ) == "malformed"
    # offers: the same bounds
    assert refusal(OfferEntry.from_envelope, offer_env(2**62, 1)) == "implausible"
    assert refusal(OfferEntry.from_envelope, offer_env(4000, 0)) == "implausible"
    assert refusal(OfferEntry.from_envelope, offer_env(2**17, 1, "tcp_port")) == "implausible"
    assert OfferEntry.from_envelope(offer_env(MAX_CAPACITY["cpu"], 1), NOW).price == 1
    # the owner's own signing refuses them too, with the reason
    with pytest.raises(DhtError, match="cpu capacity must be from 0 to"):
        host(resources={"cpu": ResourceAd(2**62, 1, 1)})
    with pytest.raises(DhtError, match="price must be from 1"):
        offer(ALICE, price=0)
    assert "implausible" in MALICIOUS   # the sender is banned for a while


def test_storage_refuses_the_phantom_and_drops_its_offer_from_a_set() -> None:
    st = RecordStorage(proof_host_id, FakeClock())
    env = host_env({"cpu": PHANTOM, "memory": PHANTOM})
    assert st.put_reason(key_digest(env.body["key"]), env.encode()) == "implausible"
    assert st.counters["rejected.implausible"] == 1
    honest = offer(ALICE)
    raw = pack_offer_set("offers/cpu/3", [honest])
    parsed = parse_offer_set(raw, NOW)
    assert list(parsed.entries) == [honest]
    # a set carrying the phantom's entry keeps the honest entry only, and counts a forgery
    doc = unpack(raw)
    doc["entries"].append(offer_env(2**62, 1).encode())
    parsed = parse_offer_set(pack(doc), NOW)
    assert list(parsed.entries) == [honest] and parsed.forged == 1


async def test_no_node_stores_a_phantom_record(swarm: Swarm) -> None:
    nodes = await swarm.grow(4)
    env = host_env({"cpu": PHANTOM, "memory": PHANTOM})
    dkey = key_digest(env.body["key"])
    sender = nodes[0]
    for target in nodes[1:]:
        ok, accepted = await sender.protocol.call(target.address, "store", sender.node_id,
                                                  dkey, env.encode())
        assert ok and accepted is False
        assert target.storage.counters.get("rejected.implausible", 0) >= 1
        assert target.storage.host_record(dkey) is None
    # a gateway publish of the same bytes is refused too
    with pytest.raises(DhtError):
        await sender.store_value(env.body["key"], env.encode())


def test_an_owner_cannot_set_a_capacity_beyond_one_machine() -> None:
    config = HostConfig.defaults(4000, 4 << 20, 1)
    assert config.with_capacity("memory", "64TiB").capacities["memory"] == 2**36
    with pytest.raises(HostError, match="memory capacity must be from 0 to"):
        config.with_capacity("memory", "65TiB")
    with pytest.raises(HostError):
        config.with_capacity("cpu", 2**62)
    assert config.with_capacity("disk", 2**44).capacities["disk"] == 2**44
