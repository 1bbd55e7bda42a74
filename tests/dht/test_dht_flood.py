"""Floods and false claims against a DHT of real nodes on loopback (issue 10, items 3
and 4): fresh keys cannot empty the market index, and a datagram that merely claims a
node's id never bans or evicts that node."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest
import umsgpack  # type: ignore[import-untyped]
from dht_helpers import Swarm, wait_for
from kademlia.node import Node

from p2pmarket.core.clock import now_us
from p2pmarket.core.domains import DHT_IDENT
from p2pmarket.core.identity import Identity
from p2pmarket.dht import DhtNode, ResourceAd
from p2pmarket.dht.offers import make_offer_entry, pack_offer_set
from p2pmarket.dht.records import key_digest

CPU = {"cpu": ResourceAd(capacity=4000, price=10, hour_avg=9)}
FLOOD = 30
SKEW_AHEAD_US = 55_000_000
CPU_BAND = "offers/cpu/8"
"""The band of 4000 at 10 (and of the fakes' 4000 at 9: better priced, same band)."""


class Peer(asyncio.DatagramProtocol):
    """A bare UDP socket speaking rpcudp's wire format, answering ``ident`` requests
    with junk (a throw-away attacker, no DhtNode behind it)."""

    def __init__(self) -> None:
        self.transport: Any = None
        self.pending: dict[bytes, asyncio.Future[Any]] = {}
        self.requests: list[str] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        msg_id, doc = data[1:21], umsgpack.unpackb(data[21:])
        if data[:1] == b"\x01":
            fut = self.pending.pop(msg_id, None)
            if fut is not None and not fut.done():
                fut.set_result(doc)
            return
        self.requests.append(doc[0])
        if doc[0] == "ident":   # a bad answer: a key and a signature that prove nothing
            self.send(addr, b"\x01" + msg_id, [os.urandom(32), os.urandom(64)])

    def send(self, addr: tuple[str, int], head: bytes, doc: Any) -> None:
        assert self.transport is not None
        self.transport.sendto(head + umsgpack.packb(doc), addr)

    def request(self, addr: tuple[str, int], name: str, *args: Any) -> asyncio.Future[Any]:
        msg_id = os.urandom(20)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending[msg_id] = fut
        self.send(addr, b"\x00" + msg_id, [name, list(args)])
        return fut

    @property
    def address(self) -> tuple[str, int]:
        assert self.transport is not None
        addr: tuple[str, int] = self.transport.get_extra_info("sockname")[:2]
        return addr


async def peer() -> tuple[asyncio.BaseTransport, Peer]:
    transport, proto = await asyncio.get_running_loop().create_datagram_endpoint(
        Peer, local_addr=("127.0.0.1", 0))
    return transport, proto


async def flood_offers(targets: list[DhtNode], count: int) -> list[bytes]:
    """``count`` throw-away keys each store an ordinary-looking offer (better priced than
    anyone's in the real hosts' band, in a /24 of its own) dated 55 s ahead at every
    target, from one socket; returns their node ids once every target has processed every store."""
    transport, attacker = await peer()
    try:
        sender, ids = Identity.generate().node_id, []
        dkey = key_digest(CPU_BAND)
        for i in range(count):
            ident = Identity.generate()
            ids.append(ident.node_id)
            entry = make_offer_entry(ident, resource_type="cpu", url=f"http://198.18.{i}.1:80",
                                     capacity=4000, price=9, key=CPU_BAND,
                                     now_us=now_us() + SKEW_AHEAD_US, ttl_us=600_000_000)
            value = pack_offer_set(CPU_BAND, [entry])
            for target in targets:
                attacker.request(target.address, "store_c", sender, dkey, value)
        # datagrams arrive in order and are handled one at a time: the answer to a ping
        # sent after the stores means every store before it was handled
        await asyncio.gather(*(asyncio.wait_for(attacker.request(t.address, "ping_c", sender),
                                                5.0) for t in targets))
        return ids
    finally:
        transport.close()


async def market_ids(reader: DhtNode, n: int) -> set[bytes]:
    return {h.node_id for h in await reader.market(["cpu"], n=n)}


@pytest.mark.parametrize("loopback_exempt", [False, True])
async def test_fresh_keys_dated_ahead_do_not_empty_the_market(swarm: Swarm,
                                                              loopback_exempt: bool) -> None:
    policy = None
    if loopback_exempt:   # the policy of a one-machine network (URLs on loopback exempt)
        from p2pmarket.dht.prefixes import LOOPBACK, PrefixPolicy
        policy = PrefixPolicy(claimed_exempt=LOOPBACK)
    nodes = await swarm.grow(8, policy=policy)
    hosts, reader = nodes[1:4], nodes[7]
    for h in hosts:
        await h.publish_host(CPU)
        await h.publish_offer("cpu", capacity=4000, price=10)
    real = {h.node_id for h in hosts}
    assert await market_ids(reader, 10) == real

    fakes = await flood_offers(nodes, FLOOD)   # every node is among the k closest
    for node in nodes:   # every storer still holds every real host's entry
        held = {e.node_id for e in node.storage.offer_entries(key_digest(CPU_BAND))}
        assert real <= held
        assert len(held & set(fakes)) >= 1   # the flood did land (in free places)
    assert await market_ids(reader, 10) == real
    # the fakes rank first (cheaper) and have no host record: they cannot crowd the real
    # hosts out of a small answer either
    assert await market_ids(reader, 3) == real

    # the real hosts republish (a fresh ts, now older than the fakes'); a second flood
    for h in hosts:
        await h.republish()
    await flood_offers(nodes, FLOOD)
    for node in nodes:
        held = {e.node_id for e in node.storage.offer_entries(key_digest(CPU_BAND))}
        assert real <= held
    assert await market_ids(reader, 10) == real
    assert await market_ids(nodes[0], 3) == real


# -- claims of an id (item 4) -------------------------------------------------------

async def joined(swarm: Swarm) -> tuple[DhtNode, DhtNode]:
    nodes = await swarm.grow(4)
    b, x = nodes[1], nodes[2]
    await wait_for(lambda: b.protocol.router.find(x.node_id) is not None)
    return b, x


async def still_there(b: DhtNode, x: DhtNode) -> None:
    """``x`` is in ``b``'s table at its own address, unbanned, and both still talk."""
    contact = b.protocol.router.find(x.node_id)
    assert contact is not None and contact.same_home_as(Node(x.node_id, *x.address))
    assert not b.protocol.is_banned(x.node_id, x.address)
    ok, answer = await b.protocol.call_ping(contact)           # b uses x
    assert ok and answer == x.node_id
    ok, answer = await x.protocol.call_ping(Node(b.node_id, *b.address))   # b answers x
    assert ok and answer == b.node_id
    near = x.node_id[:-1] + bytes([x.node_id[-1] ^ 1])   # (a lookup leaves its target out)
    found = await b.lookup(near, find_value=False)
    assert found.closest[0].id == x.node_id


async def test_junk_store_claiming_an_id_bans_only_the_sender_address(swarm: Swarm) -> None:
    b, x = await joined(swarm)
    transport, attacker = await peer()
    try:
        answer = await asyncio.wait_for(attacker.request(
            b.address, "store_c", x.node_id, key_digest(CPU_BAND), b"junk"), 5.0)
        assert answer is False
        assert b.storage.counters["rejected.malformed"] >= 1
        assert b.protocol.is_banned(None, attacker.address)
    finally:
        transport.close()
    await still_there(b, x)


async def test_bad_ident_answer_for_a_claimed_id_bans_only_that_address(
        swarm: Swarm) -> None:
    b, x = await joined(swarm)
    transport, attacker = await peer()
    try:
        # "I am x" from another address: b asks that address to prove it, gets junk
        answer = await asyncio.wait_for(attacker.request(b.address, "ping", x.node_id), 5.0)
        assert answer == b.node_id
        await wait_for(lambda: b.storage.counters.get("ident_refused", 0) >= 1)
        assert "ident" in attacker.requests
        assert b.protocol.is_banned(None, attacker.address)
    finally:
        transport.close()
    await still_there(b, x)


async def test_a_lying_reply_under_a_claimed_id_bans_only_its_address(swarm: Swarm) -> None:
    b, x = await joined(swarm)
    liar = ("127.0.0.1", 9)   # answered a lookup's call for "x" with a forged record
    b._refused(Node(x.node_id, *liar), "forged")
    assert b.protocol.is_banned(None, liar)
    await still_there(b, x)
    # a contact whose id was proven at its address loses both
    c = next(n for n in swarm.nodes if n not in (b, x)
             and b.protocol.router.find(n.node_id) is not None)
    b._refused(Node(c.node_id, *c.address), "forged")
    assert b.protocol.is_banned(c.node_id, None) and b.protocol.router.find(c.node_id) is None


async def test_misses_at_another_address_do_not_evict_a_contact(swarm: Swarm) -> None:
    b, x = await joined(swarm)
    claimed = Node(x.node_id, "127.0.0.1", 9)   # x's id listed at a dead address
    for _ in range(5):
        b.protocol.handle_call_response((False, None), claimed)
    await still_there(b, x)
    for _ in range(3):   # x's own misses still count
        b.protocol.handle_call_response((False, None), Node(x.node_id, *x.address))
    assert b.protocol.router.find(x.node_id) is None


async def test_one_socket_cannot_fill_a_table_with_ids(swarm: Swarm) -> None:
    """Routing-table poisoning from one address: a socket holding many keys answers each
    ``ident`` correctly; loopback is exempt from the /24 caps, not from one id per
    address."""
    from p2pmarket.dht.contacts import ident_message
    b, _ = await joined(swarm)
    keys = [Identity.generate() for _ in range(6)]
    transport, sybil = await peer()
    current: list[Identity] = []

    def answer(data: bytes, addr: tuple[str, int]) -> None:
        msg_id, doc = data[1:21], umsgpack.unpackb(data[21:])
        if data[:1] == b"\x00" and doc[0] == "ident":
            nonce, requester = doc[1][1], doc[1][0]
            key = current[-1]
            sybil.send(addr, b"\x01" + msg_id,
                       [key.public_key, key.sign(DHT_IDENT, ident_message(nonce, requester))])
        else:
            Peer.datagram_received(sybil, data, addr)
    sybil.datagram_received = answer  # type: ignore[method-assign]
    try:
        for i, key in enumerate(keys):
            current.append(key)
            await asyncio.wait_for(sybil.request(b.address, "ping", key.node_id), 5.0)
            # admitted, or refused (the i-th refusal): either way b is done with this key
            await wait_for(lambda k=key, i=i: b.protocol.router.find(k.node_id) is not None
                           or 0 < i <= b.storage.counters.get("refused_prefix", 0))
    finally:
        transport.close()
    held = [k for k in keys if b.protocol.router.find(k.node_id) is not None]
    assert len(held) == 1
    assert b.storage.counters["refused_prefix"] == len(keys) - 1



async def test_an_address_frees_when_its_id_leaves_the_table() -> None:
    from dht_helpers import make_protocol

    from p2pmarket.dht.prefixes import PrefixPolicy
    proto = make_protocol(policy=PrefixPolicy())
    table = proto.router
    first, second = (Node(Identity.generate().node_id, "127.0.0.1", 7) for _ in range(2))
    assert table.add_contact(first)
    assert not table.add_contact(second)     # one id per address, loopback included
    assert table.add_contact(first)          # the holder is refreshed
    assert table.add_contact(Node(second.id, "127.0.0.1", 8))   # another port: fine
    table.remove_contact(first)
    assert table.add_contact(Node(Identity.generate().node_id, "127.0.0.1", 7))


# -- eclipse of a key from one network ------------------------------------------------

class _Net:
    """A fake network for :func:`p2pmarket.dht.lookup.lookup`: each node answers
    ``find_node`` from a fixed contact list."""

    def __init__(self, me: Node, contacts: list[Node], answers: dict[bytes, list[Node]]
                 ) -> None:
        from p2pmarket.dht.prefixes import PrefixPolicy
        from p2pmarket.dht.routing import RttTable
        self.source_node = me
        self.answers = answers
        self.rtt = RttTable()
        self.contacts = contacts
        self.router = self
        self.policy = PrefixPolicy()

    def find_neighbors(self, target: Node, k: int) -> list[Node]:
        return sorted(self.contacts, key=lambda n: n.distance_to(target))[:k]

    def is_banned(self, node_id: bytes, addr: tuple[str, int]) -> bool:
        return False

    def query(self, peer: Node, key: bytes, find_value: bool) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        nodes = [[n.id, n.ip, n.port] for n in self.answers.get(peer.id, [])]
        fut.set_result((True, {"id": peer.id, "nodes": nodes}))
        return fut


def _near(key: bytes, i: int) -> bytes:
    return key[:-2] + (int.from_bytes(key[-2:], "big") ^ i).to_bytes(2, "big")


async def test_sybils_from_one_network_cannot_fill_a_lookups_closest() -> None:
    from p2pmarket.dht.lookup import lookup
    key = os.urandom(20)
    honest = [Node(_near(key, 0x100 + i), f"198.51.{i}.1", 4000) for i in range(30)]
    # 20 ids right next to the key, all from one /24 (ports differ), vouching for each
    # other; one of them is in our table
    sybils = [Node(_near(key, i + 1), "203.0.113.7", 5000 + i) for i in range(20)]
    answers = {n.id: honest[:20] for n in honest}
    answers[honest[0].id] = [sybils[0], *honest[:19]]
    answers.update({s.id: sybils for s in sybils})
    net = _Net(Node(os.urandom(20)), honest[:10], answers)
    found = await lookup(net, key, 20, 3, 0, False)  # type: ignore[arg-type]
    assert len(found.closest) == 20
    assert sum(1 for n in found.closest if n.ip == "203.0.113.7") <= net.policy.table_cap


async def test_made_up_offers_cannot_use_up_a_querys_record_lookups() -> None:
    """A lying storer answers with as many cheap made-up entries as it likes (no host
    behind them): the query still reaches the hosts most storers hold."""
    from dht_helpers import host

    from p2pmarket.dht.offerquery import MAX_RECORD_LOOKUPS, ShardRead, Walk, query
    from p2pmarket.dht.offershards import parse_shard_key, sub_of
    now = now_us()
    real = [Identity.generate() for _ in range(3)]
    records = {i.node_id: host(i, now=now) for i in real}
    fakes = [make_offer_entry(Identity.generate(), resource_type="cpu", url="http://x:1",
                              capacity=8000, price=1, now_us=now, ttl_us=60_000_000)
             for _ in range(MAX_RECORD_LOOKUPS + 30)]
    offers = [make_offer_entry(i, resource_type="cpu", url="http://127.0.0.1:1",
                               capacity=4000, price=10, now_us=now, ttl_us=60_000_000)
              for i in real]
    asked: list[bytes] = []

    async def read(key: str) -> ShardRead:
        # the lying storer of band 12 (8000 at 1) makes up entries; band 8 (4000 at 10)
        # is held by three storers
        _, place, sub = parse_shard_key(key)
        if sub == "g":   # group 1 holds bands 8 to 15: the liar's entries crowd it
            if place != 1:
                return ShardRead(())
            both = [*fakes, *offers]
            return ShardRead(tuple(both), 7000, {e.node_id: 1 for e in both})
        made = {12: (fakes, 1), 8: (offers, 3)}.get(place, ([], 1))
        got = [e for e in made[0] if sub is None or sub_of(e.node_id) == sub]
        return ShardRead(tuple(got), 7000 if got else 0, {e.node_id: made[1] for e in got})

    async def get_host(node_id: bytes) -> Any:
        asked.append(node_id)
        return records.get(node_id)

    found = await query(["cpu"], 3, Walk("cpu", read, now), get_host)
    assert {h.node_id for h in found} == set(records)
    assert len(asked) <= MAX_RECORD_LOOKUPS
