#!/usr/bin/env python3
"""DHT benchmark: N in-process nodes on loopback UDP, ours and the stock kademlia package.

    .venv/bin/python scripts/bench/dht.py --nodes 1000 --churn 0 --json
    .venv/bin/python scripts/bench/dht.py --nodes 200 --churn 0.2 --json

One process, one event loop, 127.0.0.1 only. For each implementation (stock
first, then ours) it builds a seeded random network (each node joins through a
random earlier node, ``--join-batch`` at a time), publishes ``--records`` host
records (and, for ours, offers of two resource types) from random nodes, stops
``churn`` x N random nodes, then runs ``--gets`` gets (and, for ours,
``--queries`` offer queries) from random live nodes, ``--concurrency`` at a
time. Every loop is bounded in count and each operation in time
(``--op-timeout``). The last line printed is one JSON object (with ``--json``)
with at least: nodes, churn, success_rate, get_p50_ms, get_p95_ms, get_max_ms,
query_p95_ms, join_s, lookup_rpcs, lookup_hops, and the same measures of the
stock package as ``stock_*``.

Market mode (issue 12), instead of the above:

    .venv/bin/python scripts/bench/dht.py --market-hosts 2000 --nodes 60 --json

builds ``--nodes`` DHT nodes, and publishes ``--market-hosts`` hosts' records and
cpu offers *through* them (many host identities per node: each host signs its
own records, as a gateway client would, and a node stores them; 2,000 full nodes
do not fit 2 cores), moves ``--market-moves`` of the prices (many across bands),
then runs ``--queries`` reads from random nodes: ``find_offers(["cpu"], n=20)``
and ``market(["cpu"], n=20)``, each compared with the true top 20 computed
independently from what was published. Fields: market_hosts, top20_equal (every
find_offers answer), market_top20_equal (every market answer), walk_lookups_p50 /
_max (shard reads per walk), query_lookups_p50 / _max (all DHT lookups of a
market query, host records included), find_p50_ms / _max_ms, market_p50_ms /
_max_ms, publish_s, bands_read_p50.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import random
import resource
import sys
import time
from collections.abc import Awaitable, Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from kademlia import network as stock_network
from kademlia.crawling import ValueSpiderCrawl
from kademlia.network import Server
from kademlia.protocol import KademliaProtocol

from p2pmarket.audit.evidence import proof_host_id
from p2pmarket.core.clock import now_us
from p2pmarket.core.genesis import Genesis, NotaryInfo
from p2pmarket.core.identity import Identity
from p2pmarket.dht import DhtNode, ResourceAd
from p2pmarket.dht.offers import make_offer_entries, pack_offer_set
from p2pmarket.dht.offershards import band_of
from p2pmarket.dht.records import host_key, make_host_record

HOST = "127.0.0.1"
TYPES = ("cpu", "memory")


def raise_nofile(want: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def ms(x: float) -> float:
    return round(x * 1000, 1)


async def bounded(jobs: list[Callable[[], Awaitable[Any]]], limit: int) -> list[Any]:
    sem = asyncio.Semaphore(limit)

    async def one(job: Callable[[], Awaitable[Any]]) -> Any:
        async with sem:
            return await job()
    return await asyncio.gather(*(one(j) for j in jobs))


async def timed(coro: Awaitable[Any], timeout: float) -> tuple[float, Any]:
    start = time.perf_counter()
    try:
        result = await asyncio.wait_for(coro, timeout)
    except TimeoutError:
        result = None
    return time.perf_counter() - start, result


def _batch_start(i: int, batch: int) -> int:
    """Nodes join in batches from index 1; a joiner's bootstrap peer is a random node of
    an earlier batch (one that has already joined)."""
    return 1 + (i - 1) // batch * batch


def settle() -> None:
    """Same for both implementations: collect, then freeze the network built so far, so
    that full garbage collections of thousands of nodes' objects do not land inside the
    timed gets (they would add a few hundred ms to random gets of either side)."""
    gc.collect()
    gc.freeze()


def genesis() -> Genesis:
    notary = Identity(b"\x01" * 32)
    return Genesis(network="dht-bench", mint_key=notary.public_key,
                   notaries=(NotaryInfo(notary.public_key, "http://127.0.0.1:1"),),
                   puzzle_bits=0)


# -- stock kademlia --------------------------------------------------------------

class _Counting:
    rpcs = 0
    rounds = 0


class CountingProtocol(KademliaProtocol):  # type: ignore[misc]
    async def call_find_value(self, node_to_ask: Any, node_to_find: Any) -> Any:
        _Counting.rpcs += 1
        return await super().call_find_value(node_to_ask, node_to_find)


class CountingCrawl(ValueSpiderCrawl):  # type: ignore[misc]
    async def find(self) -> Any:
        _Counting.rounds += 1
        return await super().find()


class StockServer(Server):  # type: ignore[misc]
    protocol_class = CountingProtocol


async def run_stock(args: argparse.Namespace, rng: random.Random) -> dict[str, Any]:
    stock_network.ValueSpiderCrawl = CountingCrawl
    servers: list[Server] = []
    for _ in range(args.nodes):
        s = StockServer(ksize=20, alpha=3, node_id=rng.randbytes(20))
        await s.listen(0, interface=HOST)
        servers.append(s)
    addr = {id(s): (HOST, s.transport.get_extra_info("sockname")[1]) for s in servers}
    t0 = time.perf_counter()

    async def join(i: int) -> None:
        await asyncio.wait_for(servers[i].bootstrap([addr[id(servers[rng_join[i]])]]),
                               args.op_timeout)
    rng_join = [0] + [rng.randrange(_batch_start(i, args.join_batch))
                      for i in range(1, args.nodes)]
    for lo in range(1, args.nodes, args.join_batch):
        await asyncio.gather(*(join(i) for i in range(lo, min(args.nodes, lo + args.join_batch))),
                             return_exceptions=True)
    join_s = time.perf_counter() - t0
    publishers = rng.sample(range(args.nodes), min(args.records, args.nodes))
    values = {i: (f"host/{i:040x}", rng.randbytes(420)) for i in publishers}
    await bounded([lambda i=i: asyncio.wait_for(servers[i].set(*values[i]), args.op_timeout)
                   for i in publishers], args.concurrency)
    settle()
    dead = set(rng.sample(range(args.nodes), round(args.churn * args.nodes)))
    for i in dead:
        servers[i].stop()
    live = [i for i in range(args.nodes) if i not in dead]
    plan = [(rng.choice(live), rng.choice(publishers)) for _ in range(args.gets)]
    _Counting.rpcs = _Counting.rounds = 0

    async def get(reader: int, owner: int) -> tuple[float, bool]:
        key, value = values[owner]
        took, got = await timed(servers[reader].get(key), args.op_timeout)
        return took, got == value
    results = await bounded([lambda r=r, o=o: get(r, o) for r, o in plan], args.concurrency)
    lat = [t for t, _ in results]
    found = sum(1 for _, ok in results if ok)
    for s in servers:
        s.stop()
    gc.unfreeze()
    return {"stock_success_rate": round(found / max(1, len(plan)), 4),
            "stock_found": found, "stock_gets": len(plan),
            "stock_get_p50_ms": ms(pct(lat, 0.5)), "stock_get_p95_ms": ms(pct(lat, 0.95)),
            "stock_get_max_ms": ms(max(lat, default=0.0)),
            "stock_join_s": round(join_s, 2),
            "stock_lookup_rpcs": round(_Counting.rpcs / max(1, len(plan)), 2),
            "stock_lookup_rounds": round(_Counting.rounds / max(1, len(plan)), 2)}


# -- ours ------------------------------------------------------------------------

async def start_nodes(args: argparse.Namespace, rng: random.Random) -> list[DhtNode]:
    """``--nodes`` of our DHT nodes on loopback, seeded identities, not yet joined."""
    gen = genesis()
    nodes: list[DhtNode] = []
    for _ in range(args.nodes):
        node = DhtNode(Identity(rng.randbytes(32)), gen, proof_verifier=proof_host_id,
                       rpc_timeout=args.rpc_timeout)
        await node.start(HOST, 0)
        node.url = f"http://{HOST}:{node.port}"
        nodes.append(node)
    return nodes


async def run_ours(args: argparse.Namespace, rng: random.Random) -> dict[str, Any]:
    nodes = await start_nodes(args, rng)
    try:
        return await _ours(args, rng, nodes)
    finally:
        await asyncio.gather(*(n.close() for n in nodes), return_exceptions=True)


async def _ours(args: argparse.Namespace, rng: random.Random,
                nodes: list[DhtNode]) -> dict[str, Any]:
    t0 = time.perf_counter()
    rng_join = [0] + [rng.randrange(_batch_start(i, args.join_batch))
                      for i in range(1, args.nodes)]
    join_lat: list[float] = []

    async def join(i: int) -> None:
        took, _ = await timed(nodes[i].bootstrap([nodes[rng_join[i]].address]),
                              args.op_timeout)
        join_lat.append(took)
    for lo in range(1, args.nodes, args.join_batch):
        await asyncio.gather(*(join(i) for i in range(lo, min(args.nodes, lo + args.join_batch))))
    join_s = time.perf_counter() - t0
    publishers = rng.sample(range(args.nodes), min(args.records, args.nodes))
    seqs: dict[int, int] = {}

    async def publish(i: int) -> None:
        node = nodes[i]
        rec = await node.publish_host({t: ResourceAd(1000 + i, 10 + i % 7, 10) for t in TYPES})
        seqs[i] = rec.seq
        for t in TYPES:
            await node.publish_offer(t, 1000 + i, 10 + i % 7)
    t1 = time.perf_counter()
    await bounded([lambda i=i: asyncio.wait_for(publish(i), args.op_timeout)
                   for i in publishers], args.concurrency)
    publish_s = time.perf_counter() - t1
    settle()
    dead = set(rng.sample(range(args.nodes), round(args.churn * args.nodes)))
    for i in dead:
        nodes[i].stop()
    live = [i for i in range(args.nodes) if i not in dead]
    plan = [(rng.choice(live), rng.choice(publishers)) for _ in range(args.gets)]
    before = [(n.stats.lookups, n.stats.rpcs, n.stats.hops) for n in nodes]

    async def get(reader: int, owner: int) -> tuple[float, bool]:
        took, rec = await timed(nodes[reader].get_host(nodes[owner].node_id), args.op_timeout)
        return took, rec is not None and rec.seq == seqs.get(owner) \
            and rec.key == host_key(nodes[owner].node_id)
    results = await bounded([lambda r=r, o=o: get(r, o) for r, o in plan], args.concurrency)
    after = [(n.stats.lookups, n.stats.rpcs, n.stats.hops) for n in nodes]
    lookups = sum(a[0] - b[0] for a, b in zip(after, before, strict=True))
    rpcs = sum(a[1] - b[1] for a, b in zip(after, before, strict=True))
    hops = sum(a[2] - b[2] for a, b in zip(after, before, strict=True))
    lat = [t for t, _ in results]
    found = sum(1 for _, ok in results if ok)
    live_pub = [i for i in publishers if i not in dead]
    want = min(10, len(publishers))

    async def query(reader: int) -> tuple[float, bool]:
        took, offers = await timed(nodes[reader].find_offers(["cpu"], n=10), args.op_timeout)
        return took, offers is not None and len(offers) >= want
    qres = await bounded([lambda r=r: query(r) for r in
                          (rng.choice(live) for _ in range(args.queries))], args.concurrency)
    qlat = [t for t, _ in qres]
    return {"success_rate": round(found / max(1, len(plan)), 4), "found": found,
            "gets": len(plan), "get_p50_ms": ms(pct(lat, 0.5)), "get_p95_ms": ms(pct(lat, 0.95)),
            "get_max_ms": ms(max(lat, default=0.0)),
            "query_p50_ms": ms(pct(qlat, 0.5)), "query_p95_ms": ms(pct(qlat, 0.95)),
            "query_max_ms": ms(max(qlat, default=0.0)),
            "query_success_rate": round(sum(ok for _, ok in qres) / max(1, len(qres)), 4),
            "join_s": round(join_s, 2), "join_p50_ms": ms(pct(join_lat, 0.5)),
            "join_p95_ms": ms(pct(join_lat, 0.95)), "publish_s": round(publish_s, 2),
            "lookup_rpcs": round(rpcs / max(1, lookups), 2),
            "lookup_hops": round(hops / max(1, lookups), 2),
            "lookup_rounds": round(hops / max(1, lookups), 2),  # no lock-step rounds: hops
            "live_publishers": len(live_pub),
            "contacts_avg": round(sum(nodes[i].contact_count() for i in live) / len(live), 1)}


# -- market mode (issue 12) -------------------------------------------------------

class VirtualHost:
    """A host that signs its own record and offers and stores them through a DHT node
    (its URL a claim in 198.18.0.0/15, four hosts per /24, never contacted)."""

    def __init__(self, index: int, rng: random.Random, ttl_us: int = 1_800_000_000) -> None:
        self.identity = Identity(rng.randbytes(32))
        net = index // 4
        self.url = f"http://198.{18 + net // 256 % 2}.{net % 256}.{index % 4 + 1}:80"
        self.ttl_us = ttl_us
        self.ad: tuple[int, int] | None = None
        self.ts = 0

    def _next(self) -> int:
        self.ts = max(now_us(), self.ts + 1)
        return self.ts

    async def publish(self, via: DhtNode, capacity: int, price: int) -> None:
        record = make_host_record(self.identity, url=self.url, dht=("0.0.0.0", 1),
                                  resources={"cpu": ResourceAd(capacity, price, price)},
                                  availability_ppm=1_000_000, seq=self._next(),
                                  now_us=now_us(), ttl_us=self.ttl_us)
        entries = []
        if self.ad is not None and band_of(*self.ad) != band_of(capacity, price):
            entries += make_offer_entries(self.identity, resource_type="cpu", url=self.url,
                                          capacity=0, price=self.ad[1], now_us=self._next(),
                                          ttl_us=self.ttl_us, band=band_of(*self.ad))
        entries += make_offer_entries(self.identity, resource_type="cpu", url=self.url,
                                      capacity=capacity, price=price, now_us=self._next(),
                                      ttl_us=self.ttl_us)
        self.ad = (capacity, price)
        await asyncio.gather(via.store_value(record.key, record.value),
                             *(via.store_value(e.key, pack_offer_set(e.key, [e]))
                               for e in entries))


def market_truth(hosts: list[VirtualHost], n: int, by_capacity: bool) -> list[bytes]:
    """The true top n by capacity/price: find_offers' ties (larger capacity, lower price,
    node id) or market()'s (node id)."""
    def exact(h: VirtualHost) -> tuple[Any, ...]:
        assert h.ad is not None
        c, p = h.ad
        return (-Fraction(c, p), *((-c, p) if by_capacity else ()), h.identity.node_id)
    return [h.identity.node_id for h in sorted(hosts, key=exact)[:n]]


async def run_market(args: argparse.Namespace, rng: random.Random) -> dict[str, Any]:
    nodes = await start_nodes(args, rng)
    try:
        for i in range(1, args.nodes):
            await asyncio.wait_for(nodes[i].bootstrap([nodes[rng.randrange(i)].address]),
                                   args.op_timeout)
        hosts = [VirtualHost(i, rng) for i in range(args.market_hosts)]
        # a market of a few kinds of machine and prices spread over a few octaves
        ads = {id(h): (rng.choice((2000, 4000, 8000, 16000)), rng.randint(5, 400))
               for h in hosts}
        t0 = time.perf_counter()
        await bounded([lambda h=h, i=i: asyncio.wait_for(
            h.publish(nodes[i % len(nodes)], *ads[id(h)]), args.op_timeout)
            for i, h in enumerate(hosts)], args.concurrency)
        movers = rng.sample(hosts, round(args.market_moves * len(hosts)))
        for i, h in enumerate(movers):
            c, p = ads[id(h)]
            ads[id(h)] = (c, max(1, p // 3 if i % 2 else p * 3))
        await bounded([lambda h=h, i=i: asyncio.wait_for(
            h.publish(nodes[i % len(nodes)], *ads[id(h)]), args.op_timeout)
            for i, h in enumerate(movers)], args.concurrency)
        publish_s = time.perf_counter() - t0
        settle()
        want_find = market_truth(hosts, 20, by_capacity=True)
        want_market = market_truth(hosts, 20, by_capacity=False)
        find_ok = market_ok = 0
        find_t: list[float] = []
        market_t: list[float] = []
        walk_l: list[float] = []
        query_l: list[float] = []
        bands_l: list[float] = []
        for _ in range(args.queries):
            reader = nodes[rng.randrange(len(nodes))]
            walk = reader.walk("cpu")
            took, top = await timed(walk.top(20), args.op_timeout)
            find_t.append(took)
            walk_l.append(walk.lookups)
            bands_l.append(walk.bands_read)
            find_ok += top is not None and [e.node_id for e in top[:20]] == want_find
            before = reader.stats.lookups
            took, found = await timed(reader.market(["cpu"], n=20), args.op_timeout)
            market_t.append(took)
            query_l.append(reader.stats.lookups - before)
            market_ok += found is not None and [h.node_id for h in found] == want_market
        return {"market_hosts": len(hosts), "market_nodes": len(nodes),
                "market_moves": len(movers), "queries": args.queries,
                "top20_equal": find_ok == args.queries,
                "market_top20_equal": market_ok == args.queries,
                "top20_equal_count": find_ok, "market_top20_equal_count": market_ok,
                "walk_lookups_p50": pct(walk_l, 0.5), "walk_lookups_max": max(walk_l),
                "query_lookups_p50": pct(query_l, 0.5), "query_lookups_max": max(query_l),
                "bands_read_p50": pct(bands_l, 0.5),
                "find_p50_ms": ms(pct(find_t, 0.5)), "find_max_ms": ms(max(find_t)),
                "market_p50_ms": ms(pct(market_t, 0.5)), "market_max_ms": ms(max(market_t)),
                "publish_s": round(publish_s, 1)}
    finally:
        await asyncio.gather(*(n.close() for n in nodes), return_exceptions=True)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    if args.market_hosts:
        t = time.perf_counter()
        out = await run_market(args, random.Random(args.seed))
        out["wall_s"] = round(time.perf_counter() - t, 1)
        return out
    out: dict[str, Any] = {"nodes": args.nodes, "churn": args.churn, "seed": args.seed,
                           "records": min(args.records, args.nodes), "concurrency":
                           args.concurrency}
    if not args.no_stock:
        t = time.perf_counter()
        out.update(await run_stock(args, random.Random(args.seed)))
        out["stock_wall_s"] = round(time.perf_counter() - t, 1)
        await asyncio.sleep(0.1)
    t = time.perf_counter()
    out.update(await run_ours(args, random.Random(args.seed)))
    out["wall_s"] = round(time.perf_counter() - t, 1)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nodes", type=int, default=200)
    p.add_argument("--churn", type=float, default=0.0)
    p.add_argument("--json", action="store_true")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--records", type=int, default=200)
    p.add_argument("--gets", type=int, default=200)
    p.add_argument("--queries", type=int, default=50)
    p.add_argument("--concurrency", type=int, default=10)
    p.add_argument("--join-batch", type=int, default=20)
    p.add_argument("--op-timeout", type=float, default=30.0)
    p.add_argument("--rpc-timeout", type=float, default=5.0)
    p.add_argument("--no-stock", action="store_true")
    p.add_argument("--market-hosts", type=int, default=0,
                   help="market mode: this many hosts published through --nodes nodes")
    p.add_argument("--market-moves", type=float, default=0.2,
                   help="market mode: the share of hosts whose price moves")
    args = p.parse_args()
    if not 2 <= args.nodes <= 5000 or not 0 <= args.churn < 0.9:
        p.error("--nodes must be 2..5000 and --churn 0..0.9")
    if not 0 <= args.market_hosts <= 20000 or not 0 <= args.market_moves <= 1:
        p.error("--market-hosts must be 0..20000 and --market-moves 0..1")
    raise_nofile(max(4096, 4 * args.nodes + 256))
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    for name in ("kademlia", "rpcudp", "asyncio", "p2pmarket"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    result = asyncio.run(main_async(args))
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:>22}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
