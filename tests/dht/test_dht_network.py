"""DhtNode over real UDP on 127.0.0.1: ~20 in-process nodes with ephemeral ports."""

from __future__ import annotations

import asyncio
import time

import pytest
from dht_helpers import NOW, FakeClock, Swarm, wait_for

from p2pmarket.audit.evidence import proof_host_id
from p2pmarket.core.domains import DHT_RECORD
from p2pmarket.core.genesis import Genesis
from p2pmarket.core.identity import Identity, meets_puzzle
from p2pmarket.core.wire import seal
from p2pmarket.dht import DhtError, DhtNode, ResourceAd
from p2pmarket.dht.records import host_key, key_digest, make_host_record

N = 20
CPU = {"cpu": ResourceAd(capacity=4000, price=10, hour_avg=9)}


async def publish_all(nodes: list[DhtNode]) -> None:
    async def one(i: int, node: DhtNode) -> None:
        await node.publish_host(CPU)
        await node.publish_offer("cpu", capacity=100 + i, price=10)
    await asyncio.gather(*(one(i, n) for i, n in enumerate(nodes)))


async def test_twenty_nodes_find_every_host_and_all_offers(swarm: Swarm) -> None:
    started = time.monotonic()
    nodes = await swarm.grow(N)
    assert all(n.contact_count() >= N // 2 for n in nodes)
    await publish_all(nodes)

    async def check(reader: DhtNode) -> None:
        for target in nodes:
            rec = await reader.get_host(target.node_id)
            assert rec is not None, "host record not found"
            assert rec.node_id == target.node_id
            assert rec.url == target.url
            assert rec.dht == target.address
            assert rec.resources == CPU
        offers = await reader.find_offers(["cpu"], n=N + 5)
        assert len(offers) == N
        assert {o.node_id for o in offers} == {n.node_id for n in nodes}
        assert [o.capacity for o in offers] == sorted((o.capacity for o in offers), reverse=True)

    await asyncio.gather(*(check(n) for n in nodes))
    top = await nodes[3].find_offers(["cpu"], n=3, min_capacity=101, max_price=10)
    assert [o.capacity for o in top] == [100 + N - 1, 100 + N - 2, 100 + N - 3]
    assert await nodes[3].find_offers(["cpu"], n=5, max_price=9) == []
    assert await nodes[3].find_offers(["memory"], n=5) == []
    assert await nodes[0].get_host(Identity(b"\x09" * 32).node_id) is None
    assert time.monotonic() - started < 20


async def test_forged_record_refused_and_honest_lookup_wins(swarm: Swarm) -> None:
    nodes = await swarm.grow(8)
    victim, reader = nodes[0], nodes[5]
    honest = await victim.publish_host(CPU)
    mallory = Identity.generate()
    body = {"key": host_key(victim.node_id), "node_id": victim.node_id, "url": "http://evil",
            "dht": ["127.0.0.1", 1], "resources": {}, "availability_ppm": 0,
            "seq": honest.seq + 1000, "expires": time.time_ns() // 1000 + 60_000_000}
    forged = seal(mallory, DHT_RECORD, "dht.host", body, ts=time.time_ns() // 1000).encode()
    dkey = key_digest(host_key(victim.node_id))
    # Mallory's own record, stored under the victim's key: valid signature, wrong key
    own = make_host_record(mallory, url="http://evil", dht=("127.0.0.1", 1), resources={},
                           availability_ppm=0, seq=10**15, now_us=time.time_ns() // 1000,
                           ttl_us=60_000_000)
    # the attacker is nobody's contact (a live contact is spared: see below)
    attacker = DhtNode(Identity.generate(), swarm.genesis, proof_verifier=proof_host_id,
                       rpc_timeout=1.0)
    await attacker.start("127.0.0.1", 0)
    swarm.nodes.append(attacker)
    for target in nodes[:7]:
        ok, accepted = await attacker.protocol.store(target.address, attacker.node_id,
                                                     dkey, forged)
        assert ok and accepted is False
        # the sender's address is then ignored: no answer at all
        ok, _ = await attacker.protocol.call(target.address, "store", attacker.node_id,
                                             dkey, own.value, timeout=0.2)
        assert not ok
        assert target.protocol.router.find(attacker.node_id) is None
    assert all(n.storage.counters.get("rejected.wrong_signer", 0) == 1 for n in nodes[:7])
    assert all(n.storage.counters.get("banned.wrong_signer", 0) == 1 for n in nodes[:7])
    # the same datagram from a live contact's address is refused, but may be spoofed:
    # the contact is kept (it answers our calls) and its address still answered
    liar, target = nodes[7], nodes[0]
    assert target.protocol.router.find(liar.node_id) is not None
    ok, accepted = await liar.protocol.store(target.address, liar.node_id, dkey, forged)
    assert ok and accepted is False
    assert target.storage.counters.get("spared_contact", 0) == 1
    assert target.protocol.router.find(liar.node_id) is not None
    assert (await liar.protocol.call(target.address, "ping", liar.node_id))[0]
    # Mallory's own valid record under the victim's key, from a fresh sender
    other = nodes[6]
    ok, accepted = await other.protocol.store(nodes[0].address, other.node_id, dkey, own.value)
    assert ok and accepted is False
    assert nodes[0].storage.counters.get("rejected.wrong_key", 0) == 1
    rec = await reader.get_host(victim.node_id)
    assert rec is not None
    assert rec.value == honest.value and rec.url == victim.url


async def test_forged_answers_in_lookups_are_ignored(swarm: Swarm,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    nodes = await swarm.grow(6)
    victim, liar, reader = nodes[1], nodes[2], nodes[4]
    honest = await victim.publish_host(CPU)
    mallory = Identity.generate()
    body = {"key": host_key(victim.node_id), "node_id": victim.node_id, "url": "http://evil",
            "dht": ["127.0.0.1", 1], "resources": {}, "availability_ppm": 0,
            "seq": honest.seq + 1, "expires": time.time_ns() // 1000 + 60_000_000}
    forged = seal(mallory, DHT_RECORD, "dht.host", body, ts=time.time_ns() // 1000).encode()
    # the liar answers find_value with the forged bytes, bypassing its own storage
    monkeypatch.setattr(liar.protocol, "rpc_find_value",
                        lambda sender, nodeid, key: {"id": liar.node_id, "value": forged})
    reader.host_quorum = 99  # walk every close node, so the liar is surely asked
    rec = await reader.get_host(victim.node_id)
    assert rec is not None and rec.value == honest.value
    assert reader.storage.counters.get("lookup_rejected.wrong_signer") == 1
    # the liar is out of the reader's table and ignored from now on
    assert reader.protocol.router.find(liar.node_id) is None
    assert reader.protocol.is_banned(liar.node_id, liar.address)


async def test_higher_seq_replaces_lower_across_the_network(swarm: Swarm) -> None:
    nodes = await swarm.grow(6)
    first = await nodes[0].publish_host(CPU)
    second = await nodes[0].publish_host({"cpu": ResourceAd(8000, 20, 15)})
    assert second.seq > first.seq
    for node in nodes[1:]:
        rec = await node.get_host(nodes[0].node_id)
        assert rec is not None and rec.seq == second.seq
        assert rec.resources["cpu"].capacity == 8000
    # replaying the first record is refused everywhere
    for node in nodes[1:]:
        ok, accepted = await nodes[0].protocol.store(
            node.address, nodes[0].node_id, key_digest(first.key), first.value)
        assert ok and accepted is False


async def test_records_expire_and_republish_restores_them(swarm: Swarm) -> None:
    clock = FakeClock(time.time_ns() // 1000)
    nodes = await swarm.grow(5, clock=clock, republish_s=10.0)
    owner, reader = nodes[0], nodes[3]
    first = await owner.publish_host(CPU)
    await owner.publish_offer("cpu", 100, 5)
    assert await reader.get_host(owner.node_id) == first
    clock.advance(25)  # 2.5 x republish_s: expired everywhere
    assert await reader.get_host(owner.node_id) is None
    assert await reader.find_offers(["cpu"]) == []
    assert all(list(n.storage) == [] for n in nodes)
    await owner.republish()
    again = await reader.get_host(owner.node_id)
    assert again is not None and again.seq > first.seq and again.expires > clock.now
    assert [o.node_id for o in await reader.find_offers(["cpu"])] == [owner.node_id]


async def test_republish_loop_runs_and_stop_cancels_it(swarm: Swarm) -> None:
    nodes = await swarm.grow(3, republish_s=0.05)
    owner = nodes[0]
    rec = await owner.publish_host(CPU)
    dkey = key_digest(rec.key)

    def refreshed() -> bool:
        held = nodes[1].storage.host_record(dkey)
        return held is not None and held.seq > rec.seq
    await wait_for(refreshed)
    owner.stop()
    await wait_for(lambda: not owner._tasks)
    stored = nodes[1].storage.counters["stored"]
    await asyncio.sleep(0.15)  # three republish periods: nothing new may arrive...
    assert nodes[1].storage.counters["stored"] == stored
    assert nodes[1].storage.host_record(dkey) is None  # ...and 2.5 periods later it is gone


async def test_late_joiner_is_handed_records(swarm: Swarm) -> None:
    nodes = await swarm.grow(4)
    await publish_all(nodes)
    late = await swarm.add()
    rec = await late.get_host(nodes[2].node_id)
    assert rec is not None and rec.node_id == nodes[2].node_id
    assert len(await late.find_offers(["cpu"], n=10)) == 4


async def test_lone_node_and_bad_usage(genesis: Genesis) -> None:
    node = DhtNode(Identity.generate(), genesis, proof_verifier=proof_host_id, clock=FakeClock(NOW))
    with pytest.raises(DhtError) as err:
        await node.publish_host(CPU)
    assert err.value.value == "no_url"
    node.url = "http://127.0.0.1:1"
    with pytest.raises(DhtError) as err:
        await node.publish_host(CPU)
    assert err.value.value == "not_started"
    await node.start("127.0.0.1", 0)
    try:
        assert node.port > 0
        assert await node.bootstrap([]) == 0
        rec = await node.publish_host(CPU)  # no peers: kept locally, served to joiners
        assert await node.get_host(node.node_id) == rec
        entry = await node.publish_offer("cpu", 10, 1)
        # the same offer, signed under its group's key (the group held it whole)
        [found] = await node.find_offers(["cpu", "memory"])
        assert (found.node_id, found.url, found.capacity, found.price, found.expires) == (
            entry.node_id, entry.url, entry.capacity, entry.price, entry.expires)
        assert (found.key, entry.key) == ("offers/cpu/g0", "offers/cpu/3")   # band 3: 10 at 1
        with pytest.raises(DhtError):
            await node.publish_offer("CPU/evil", 10, 1)
    finally:
        await node.close()


def test_node_id_must_meet_the_genesis_puzzle(genesis: Genesis) -> None:
    hard = Genesis(genesis.network, genesis.mint_key, genesis.notaries, puzzle_bits=12)
    weak = Identity(b"\x00" * 32)
    assert not meets_puzzle(weak.node_id, 12)
    with pytest.raises(DhtError) as err:
        DhtNode(weak, hard, proof_verifier=proof_host_id)
    assert err.value.value == "puzzle"


async def test_garbage_and_bad_rpcs_are_counted_and_ignored(swarm: Swarm) -> None:
    import socket

    import umsgpack  # type: ignore[import-untyped]

    nodes = await swarm.grow(2)
    target = nodes[1]
    proto = target.protocol
    assert proto.rpc_store(("127.0.0.1", 1), b"short", b"k" * 20, b"v") is False
    assert proto.rpc_store(("127.0.0.1", 1), nodes[0].node_id, b"k", b"v") is False
    assert proto.rpc_find_value(("127.0.0.1", 1), nodes[0].node_id, 123) is None
    assert target.storage.counters["rejected.bad_sender"] == 1
    assert target.storage.counters["rejected.malformed"] == 1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(b"\x00" + b"m" * 20 + b"\xc1\xc1", target.address)  # not msgpack
        sock.sendto(b"\x00" + b"n" * 20 + umsgpack.packb(["store", [1]]), target.address)
        await wait_for(lambda: target.storage.counters.get("rejected.bad_datagram", 0) == 1
                       and target.storage.counters.get("rejected.bad_request", 0) == 1)
    # still serving
    rec = await nodes[0].publish_host(CPU)
    assert await target.get_host(nodes[0].node_id) == rec
