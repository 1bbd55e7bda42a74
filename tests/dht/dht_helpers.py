"""Helpers shared by the DHT tests (a unique module name: other rooms have conftests too)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from p2pmarket.audit.evidence import proof_host_id
from p2pmarket.core.clock import now_us
from p2pmarket.core.genesis import Genesis, NotaryInfo
from p2pmarket.core.identity import Identity
from p2pmarket.dht import DhtNode
from p2pmarket.dht.offers import OfferEntry, make_offer_entry
from p2pmarket.dht.records import HostRecord, ResourceAd, host_key, make_host_record

NOW = 1_700_000_000_000_000
TTL = 1_500_000_000
ALICE = Identity(b"\xa1" * 32)
MALLORY = Identity(b"\x3a" * 32)


class FakeClock:
    def __init__(self, now: int = NOW) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += int(seconds * 1_000_000)


def make_genesis(puzzle_bits: int = 0) -> Genesis:
    notary = Identity(b"\x01" * 32)
    return Genesis(network="dht-test", mint_key=notary.public_key,
                   notaries=(NotaryInfo(notary.public_key, "http://127.0.0.1:1"),),
                   puzzle_bits=puzzle_bits)


def host(ident: Identity = ALICE, seq: int = 1, now: int = NOW, **kw: Any) -> HostRecord:
    args: dict[str, Any] = {
        "url": "http://127.0.0.1:8000", "dht": ("127.0.0.1", 9000),
        "resources": {"cpu": ResourceAd(4000, 10, 9)}, "availability_ppm": 990_000,
        "seq": seq, "now_us": now, "ttl_us": TTL}
    args.update(kw)
    return make_host_record(ident, **args)


def offer(ident: Identity, capacity: int = 100, price: int = 10, now: int = NOW,
          rtype: str = "cpu", ttl: int = TTL) -> OfferEntry:
    return make_offer_entry(ident, resource_type=rtype, url="http://127.0.0.1:8000",
                            capacity=capacity, price=price, now_us=now, ttl_us=ttl)


def host_body(ident: Identity, **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "key": host_key(ident.node_id), "node_id": ident.node_id, "url": "http://x",
        "dht": ["127.0.0.1", 9000], "resources": {}, "availability_ppm": 0, "seq": 5,
        "expires": NOW + TTL}
    body.update(changes)
    return body


async def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll ``predicate`` until true (bounded)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


class Swarm:
    """Nodes on 127.0.0.1 with ephemeral ports, all joined through the first one."""

    def __init__(self, genesis: Genesis) -> None:
        self.genesis = genesis
        self.nodes: list[DhtNode] = []

    async def add(self, clock: Callable[[], int] | None = None,
                  republish_s: float = 600.0, policy: Any = None) -> DhtNode:
        node = DhtNode(Identity.generate(), self.genesis, proof_verifier=proof_host_id,
                       clock=clock or now_us, republish_s=republish_s, rpc_timeout=1.0,
                       policy=policy)
        await node.start("127.0.0.1", 0)
        node.url = f"http://127.0.0.1:{node.port + 1}"
        if self.nodes:
            await node.bootstrap([self.nodes[0].address])
        self.nodes.append(node)
        return node

    async def grow(self, n: int, clock: Callable[[], int] | None = None,
                   republish_s: float = 600.0, policy: Any = None) -> list[DhtNode]:
        first = [] if self.nodes else [await self.add(clock, republish_s, policy)]
        rest = await asyncio.gather(*(self.add(clock, republish_s, policy)
                                      for _ in range(n - len(first))))
        return [*first, *rest]

    async def close(self) -> None:
        await asyncio.gather(*(n.close() for n in self.nodes))


async def serve(routes: list[Any]) -> tuple[Any, str]:
    """An aiohttp app with ``routes`` on 127.0.0.1 (ephemeral port): (runner, base url)."""
    from aiohttp import web
    app = web.Application()
    app.add_routes(routes)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


def make_protocol(storage: Any = None, ksize: int = 20,
                  monotonic: Callable[[], float] = time.monotonic, **config: Any) -> Any:
    """A DhtProtocol with no socket (for table and hand-off tests); spawned coroutines
    become tasks kept in ``proto.test_tasks``."""
    from kademlia.node import Node

    from p2pmarket.dht.protocol import DhtProtocol
    from p2pmarket.dht.routing import UNCAPPED
    from p2pmarket.dht.rpc import ProtocolConfig
    from p2pmarket.dht.storage import RecordStorage
    ident = Identity.generate()
    tasks: list[asyncio.Task[Any]] = []
    config.setdefault("policy", UNCAPPED)
    storage = storage or RecordStorage(proof_host_id, FakeClock())
    proto = DhtProtocol(Node(ident.node_id), storage, ksize, identity=ident,
                        config=ProtocolConfig(**config), monotonic=monotonic,
                        spawn=lambda coro: tasks.append(asyncio.ensure_future(coro)))
    proto.test_tasks = tasks
    return proto


class VirtualHost:
    """A host that publishes its record and offers through someone else's DHT node (as a
    gateway client would): many hosts from few nodes. Its URL is a claim in its own
    /24 of 198.18.0.0/15 (four hosts per /24), never contacted."""

    def __init__(self, index: int, ttl_us: int = 600_000_000) -> None:
        self.identity = Identity.generate()
        net = index // 4
        self.url = f"http://198.{18 + net // 256 % 2}.{net % 256}.{index % 4 + 1}:80"
        self.ttl_us = ttl_us
        self.offers: dict[str, tuple[int, int]] = {}
        self.ts = 0

    @property
    def node_id(self) -> bytes:
        return self.identity.node_id

    def _next(self) -> int:
        self.ts = max(now_us(), self.ts + 1)
        return self.ts

    async def publish(self, via: DhtNode, resources: dict[str, tuple[int, int]],
                      availability_ppm: int = 1_000_000) -> None:
        """Publish the host record and one offer per type (withdrawing moved ones)."""
        from p2pmarket.dht.offers import make_offer_entries, pack_offer_set
        from p2pmarket.dht.offershards import band_of
        record = make_host_record(
            self.identity, url=self.url, dht=("0.0.0.0", 1),
            resources={t: ResourceAd(c, p, p) for t, (c, p) in resources.items()},
            availability_ppm=availability_ppm, seq=self._next(), now_us=now_us(),
            ttl_us=self.ttl_us)
        entries = []
        for rtype, (capacity, price) in resources.items():
            old = self.offers.get(rtype)
            if old is not None and band_of(*old) != band_of(capacity, price):
                entries += make_offer_entries(self.identity, resource_type=rtype,
                                              url=self.url, capacity=0, price=old[1],
                                              now_us=self._next(), ttl_us=self.ttl_us,
                                              band=band_of(*old))
            entries += make_offer_entries(self.identity, resource_type=rtype, url=self.url,
                                          capacity=capacity, price=price,
                                          now_us=self._next(), ttl_us=self.ttl_us)
            self.offers[rtype] = (capacity, price)
        await asyncio.gather(via.store_value(record.key, record.value),
                             *(via.store_value(e.key, pack_offer_set(e.key, [e]))
                               for e in entries))
