"""Floods against a DHT of real nodes on loopback (issue 10, item 3): fresh keys
cannot empty the market index."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest
import umsgpack  # type: ignore[import-untyped]
from dht_helpers import Swarm

from p2pmarket.core.clock import now_us
from p2pmarket.core.identity import Identity
from p2pmarket.dht import DhtNode, ResourceAd
from p2pmarket.dht.offers import make_offer_entry, pack_offer_set
from p2pmarket.dht.records import key_digest

CPU = {"cpu": ResourceAd(capacity=4000, price=10, hour_avg=9)}
FLOOD = 30
SKEW_AHEAD_US = 55_000_000


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
    anyone's, in a /24 of its own) dated 55 s ahead at every target, from one socket;
    returns their node ids once every target has processed every store."""
    transport, attacker = await peer()
    try:
        sender, ids = Identity.generate().node_id, []
        dkey = key_digest("offers/cpu")
        for i in range(count):
            ident = Identity.generate()
            ids.append(ident.node_id)
            entry = make_offer_entry(ident, resource_type="cpu", url=f"http://198.18.{i}.1:80",
                                     capacity=8000, price=1,
                                     now_us=now_us() + SKEW_AHEAD_US, ttl_us=600_000_000)
            value = pack_offer_set("offers/cpu", [entry])
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
        held = {e.node_id for e in node.storage.offer_entries(key_digest("offers/cpu"))}
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
        held = {e.node_id for e in node.storage.offer_entries(key_digest("offers/cpu"))}
        assert real <= held
    assert await market_ids(reader, 10) == real
    assert await market_ids(nodes[0], 3) == real
