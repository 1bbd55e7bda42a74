"""Each known fault of the stock kademlia 2.2.3 package, shown on the stock classes, and
the same scenario on ours (docs/design.md section 3)."""

from __future__ import annotations

import asyncio
import os
import random
import socket
import time
from typing import Any

import aiohttp
import pytest
from dht_helpers import NOW, TTL, FakeClock, Swarm, host, make_protocol, serve
from kademlia.network import Server
from kademlia.node import Node
from kademlia.protocol import KademliaProtocol
from kademlia.routing import RoutingTable
from kademlia.storage import ForgetfulStorage
from kademlia.utils import digest
from rpcudp.exceptions import MalformedMessage

from p2pmarket.audit.evidence import proof_host_id
from p2pmarket.core.genesis import Genesis
from p2pmarket.core.identity import Identity
from p2pmarket.dht import DhtNode, ResourceAd
from p2pmarket.dht.checks import DhtError
from p2pmarket.dht.gateway import fetch_document, gateway_routes
from p2pmarket.dht.records import host_key, key_digest
from p2pmarket.dht.routing import UNCAPPED, DhtRoutingTable, RttTable
from p2pmarket.dht.storage import RecordStorage

CPU = {"cpu": ResourceAd(capacity=4000, price=10, hour_avg=9)}


class _Stub:
    """What a routing table asks of its protocol when a bucket is full."""

    def __init__(self) -> None:
        self.pinged = 0

    async def call_ping(self, node: Node) -> None:
        self.pinged += 1

    def ping_head(self, node: Node) -> None:
        self.pinged += 1


def _members(table: RoutingTable) -> list[Node]:
    return [n for b in table.buckets for n in b.nodes.values()]


async def test_pr52_stock_neighbour_lists_come_back_short_ours_are_the_k_closest() -> None:
    rng = random.Random(52)
    own = Node(rng.randbytes(20))
    stock = RoutingTable(_Stub(), 20, own)
    ours = DhtRoutingTable(_Stub(), 20, own, policy=UNCAPPED)
    contacts = [Node(rng.randbytes(20), "127.0.0.1", 1000 + i) for i in range(200)]
    for contact in contacts:
        stock.add_contact(contact)
        ours.add_contact(contact)
    for contact in rng.sample(contacts, 100):  # churn: half of them went away
        stock.remove_contact(contact)
        ours.remove_contact(contact)
    await asyncio.sleep(0)  # let the stock table's bucket-head pings run
    short = wrong = 0
    for _ in range(300):
        target = Node(rng.randbytes(20))
        for table in (stock, ours):
            want = sorted(_members(table), key=lambda n: n.distance_to(target))[:20]
            assert len(want) == 20
            got = table.find_neighbors(target)
            if table is stock:
                short += len(got) < len(want)
                wrong += {n.id for n in got} != {n.id for n in want}
            else:
                assert [n.id for n in got] == [n.id for n in want]
    # the stock traverser stops when the buckets on one side run out (PR #52), and takes
    # the first k in bucket order rather than the k closest
    assert short >= 15 and wrong >= 200


async def test_issue23_stock_evicts_after_one_missed_reply_ours_after_several() -> None:
    peer = Node(Identity.generate().node_id, "127.0.0.1", 9)
    stock = KademliaProtocol(Node(os.urandom(20)), ForgetfulStorage(), 20)
    stock.router.add_contact(peer)
    stock.handle_call_response((False, None), peer)
    assert stock.router.is_new_node(peer)  # one lost datagram and it is gone

    ours = make_protocol(max_failures=3)
    other = Node(Identity.generate().node_id, "127.0.0.1", 10)
    ours.router.add_contact(peer)
    ours.router.add_contact(other)
    for _ in range(2):
        ours.handle_call_response((False, None), peer)
    assert ours.router.find(peer.id) is not None
    # a contact that missed a reply is offered after the healthy ones
    assert [n.id for n in ours.router.find_neighbors(Node(os.urandom(20)))] == [other.id,
                                                                               peer.id]
    ours.handle_call_response((True, peer.id), peer)  # a reply clears the count
    for _ in range(2):
        ours.handle_call_response((False, None), peer)
    assert ours.router.find(peer.id) is not None
    ours.handle_call_response((False, None), peer)
    assert ours.router.find(peer.id) is None
    assert ours._counters["evicted"] == 1


def test_issue104_stock_republish_resurrects_expired_values_ours_cannot() -> None:
    # stock: a value republished (Server._refresh_table -> set_digest -> rpc_store) one
    # second before it expires gets a new birthday at the receiver and lives on
    origin, peer = ForgetfulStorage(ttl=100), ForgetfulStorage(ttl=100)
    key = digest("k")
    origin[key] = b"v"
    origin.data[key] = (time.monotonic() - 99, b"v")  # 1 s left
    for k, v in origin.iter_older_than(50):
        peer[k] = v
    for store in (origin, peer):  # two seconds pass
        born, value = store.data[key]
        store.data[key] = (born - 2, value)
    assert origin.get(key) is None
    assert peer.get(key) == b"v"  # resurrected

    # ours: the expiry is inside the signed record; republishing cannot extend it
    clock = FakeClock()
    origin2, peer2 = RecordStorage(proof_host_id, clock), RecordStorage(proof_host_id, clock)
    rec = host()
    dkey = key_digest(rec.key)
    assert origin2.put(dkey, rec.value)
    clock.advance(TTL / 1e6 - 1)
    for k, v in origin2.iter_older_than(0):
        assert peer2.put(k, v)
    clock.advance(2)
    for store in (origin2, peer2):
        assert store.get(dkey) is None
        assert list(store) == [] and store.iter_older_than(0) == []
    assert not peer2.put(dkey, rec.value)
    assert peer2.counters["rejected.expired"] == 1


async def test_stock_floods_every_new_contact_ours_hands_off_a_bounded_few() -> None:
    newcomer = Node(Identity.generate().node_id, "127.0.0.1", 4000)
    stock = KademliaProtocol(Node(os.urandom(20)), ForgetfulStorage(), 20)
    for i in range(300):
        stock.storage[digest(f"key{i}")] = b"v" * 100
    sent: list[Any] = []

    async def stock_store(node: Node, key: bytes, value: bytes) -> Any:
        sent.append(key)
        return (True, True)
    stock.call_store = stock_store
    stock.welcome_if_new(newcomer)
    stock.router.remove_contact(newcomer)
    stock.welcome_if_new(newcomer)  # seen again (e.g. after an eviction): everything again
    await asyncio.sleep(0.01)
    assert len(sent) == 600

    clock = FakeClock()
    storage = RecordStorage(proof_host_id, clock)
    for i in range(300):
        rec = host(Identity(i.to_bytes(32, "big")))
        assert storage.put(key_digest(rec.key), rec.value)
    ours = make_protocol(storage, handoff_max=16)
    handed: list[bytes] = []

    async def our_store(node: Node, key: bytes, value: bytes) -> Any:
        handed.append(key)
        return (True, True)
    ours.call_store = our_store
    ours._admit(newcomer)
    ours._handoff()  # the batch timer would run it 50 ms later
    ours.router.remove_contact(newcomer)
    ours._admit(newcomer)
    ours._handoff()
    await asyncio.sleep(0.01)
    assert 0 < len(handed) <= 16  # bounded, and not again for the same contact

    # with a populated table, only values the newcomer is now among the k closest for,
    # and only from their closest older holder
    ours2 = make_protocol(storage, handoff_max=1000)
    ours2.call_store = our_store
    rng = random.Random(7)
    for i in range(60):
        ours2.router.add_contact(Node(rng.randbytes(20), "127.0.0.1", 5000 + i))
    handed.clear()
    ours2._admit(newcomer)
    ours2._handoff()
    await asyncio.sleep(0.01)
    assert len(handed) < 300
    for key in handed:
        target = Node(key)
        ranked = sorted(ours2.router.contacts(), key=lambda n: n.distance_to(target))
        older = [n for n in ranked if n.id != newcomer.id]
        assert ours2.source_node.distance_to(target) < older[0].distance_to(target)
        assert newcomer.id in [n.id for n in ranked[:20]]


def test_rtt_timeouts_follow_measured_round_trips() -> None:
    rtt = RttTable(initial=1.0, min_soft=0.05, min_hard=0.5, max_hard=5.0)
    fast, slow, unknown = ("127.0.0.1", 1), ("127.0.0.1", 2), ("127.0.0.1", 3)
    assert rtt.soft(unknown) == 1.0  # nothing measured yet
    for _ in range(20):
        rtt.observe(fast, 0.002)
    assert rtt.soft(fast) == 0.05 and rtt.hard(fast) == 0.5
    assert rtt.soft(unknown) == 0.05  # unknown peers: the measured overall RTT
    for _ in range(20):
        rtt.observe(slow, 0.8)
    assert 0.8 <= rtt.soft(slow) < 2 and 3.0 < rtt.hard(slow) <= 5.0
    assert rtt.soft(fast) == 0.05


async def test_stock_lookup_waits_out_a_silent_peer_ours_moves_past_it(
        swarm: Swarm, genesis: Genesis) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        silent_addr = silent.getsockname()
        # stock, alpha=1: the crawl asks the silent peer and waits its fixed timeout
        holder, reader = Server(alpha=1), Server(alpha=1)
        try:
            await holder.listen(0, interface="127.0.0.1")
            await reader.listen(0, interface="127.0.0.1")
            reader.protocol._wait_timeout = 0.5  # fixed (5 s stock), shortened for the test
            holder_port = holder.transport.get_extra_info("sockname")[1]
            await reader.bootstrap([("127.0.0.1", holder_port)])
            key = digest("k")
            holder.storage[key] = b"v"
            ghost = Node(bytes(a ^ b for a, b in zip(key, b"\x00" * 19 + b"\x01",
                                                     strict=True)), *silent_addr)
            reader.protocol.router.add_contact(ghost)
            assert await reader.get("k") == b"v"
            # get() returned only after the silent peer's timeout fired: by then it had
            # been dropped from the table and no call was outstanding
            assert reader.protocol.router.is_new_node(ghost)
            assert not reader.protocol._outstanding
        finally:
            holder.stop()
            reader.stop()

        # ours, alpha=1: the lookup sets the silent peer aside after its RTT-based soft
        # deadline and finds the record while the call to it is still open
        owner, _helper = await swarm.grow(2)
        ours = DhtNode(Identity.generate(), genesis, proof_verifier=proof_host_id, alpha=1,
                       rpc_timeout=5.0)
        await ours.start("127.0.0.1", 0)
        try:
            await ours.bootstrap([owner.address])
            await owner.publish_host(CPU)
            ours.protocol.rtt.min_hard = 3.0  # the open call outlives the lookup for sure
            dkey = key_digest(host_key(owner.node_id))
            ghost_id = bytes(a ^ b for a, b in zip(dkey, b"\x00" * 19 + b"\x01", strict=True))
            ours.protocol.router.add_contact(Node(ghost_id, *silent_addr))
            ours.storage._data.clear()
            rec = await ours.get_host(owner.node_id)
            assert rec is not None and rec.node_id == owner.node_id
            assert any(addr == silent_addr for _, addr in ours.protocol._sent.values())
            assert ours.protocol.router.find(ghost_id) is not None  # not evicted either
        finally:
            await ours.close()


async def test_stock_cannot_store_past_8kb_ours_keeps_values_compact_and_uses_http(
        swarm: Swarm) -> None:
    a, b = Server(), Server()
    try:
        await a.listen(0, interface="127.0.0.1")
        await b.listen(0, interface="127.0.0.1")
        await a.bootstrap([("127.0.0.1", b.transport.get_extra_info("sockname")[1])])
        with pytest.raises(MalformedMessage):
            await a.set("big", b"x" * 9000)
    finally:
        a.stop()
        b.stop()

    owner, reader = await swarm.grow(2)
    runner, base = await serve(gateway_routes(owner))
    try:
        owner.url = base
        document = os.urandom(200_000)  # e.g. attestations, labels, a VM image catalogue
        rec = await owner.publish_host(CPU, document=document)
        assert len(rec.value) < 1024 and rec.doc is not None
        got = await reader.get_host(owner.node_id)
        assert got is not None and got.doc == rec.doc
        async with aiohttp.ClientSession() as session:
            assert await fetch_document(got, session) == document
            owner._docs[rec.doc.sha256] = document[:-1] + b"!"  # a lying owner or proxy
            with pytest.raises(DhtError) as err:
                await fetch_document(got, session)
            assert err.value.value == "doc_mismatch"
        with pytest.raises(ValueError):  # and nothing oversized is ever sent
            owner.protocol.call(reader.address, "store", owner.node_id, b"k" * 20,
                                b"x" * 9000)
    finally:
        await runner.cleanup()


def test_stock_values_are_unauthenticated_and_last_writer_wins() -> None:
    stock = ForgetfulStorage()
    key = digest(host_key(b"\x01" * 20))
    stock[key] = b"honest"
    stock[key] = b"anyone's overwrite"
    assert stock[key] == b"anyone's overwrite"
    ours = RecordStorage(proof_host_id, FakeClock())
    rec = host()
    dkey = key_digest(rec.key)
    assert ours.put(dkey, rec.value)
    assert not ours.put(dkey, b"anyone's overwrite")
    assert not ours.put(dkey, host(seq=0).value)  # and no older seq either
    assert ours.get(dkey) == rec.value
    assert NOW  # the records above are signed at NOW by the helpers
