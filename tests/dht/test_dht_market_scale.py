"""The sharded offer index on a DHT of real nodes (issue 12): with many more hosts than
one set holds, and after prices move, the top n a reader finds is the true top n."""

from __future__ import annotations

import random
from fractions import Fraction

from dht_helpers import Swarm, VirtualHost

from p2pmarket.dht import DhtNode
from p2pmarket.dht.offers import MAX_OFFERS
from p2pmarket.dht.offershards import band_of, max_lookups

HOSTS = 5 * MAX_OFFERS


def truth(hosts: list[VirtualHost], n: int, rtype: str = "cpu", min_capacity: int = 0,
          max_price: int | None = None) -> list[bytes]:
    """The top n by capacity/price, ties to the larger capacity, the lower price, the lower
    node id (rank_offers' order), computed independently."""
    rows = [(h.offers[rtype], h.node_id) for h in hosts if rtype in h.offers]
    rows = [r for r in rows if r[0][0] >= min_capacity
            and (max_price is None or r[0][1] <= max_price)]
    rows.sort(key=lambda r: (-Fraction(r[0][0], r[0][1]), -r[0][0], r[0][1], r[1]))
    return [node_id for _, node_id in rows[:n]]


def market_truth(hosts: list[VirtualHost], n: int) -> list[bytes]:
    """market()'s order: efficiency, then node id."""
    rows = sorted(hosts, key=lambda h: (-Fraction(*h.offers["cpu"]), h.node_id))
    return [h.node_id for h in rows[:n]]


async def publish_all(hosts: list[VirtualHost], via: list[DhtNode],
                      prices: dict[bytes, tuple[int, int]]) -> None:
    for i, h in enumerate(hosts):
        await h.publish(via[i % len(via)], {"cpu": prices[h.node_id]})


async def test_top_n_over_many_hosts_equals_the_truth_as_prices_move(swarm: Swarm) -> None:
    rng = random.Random(12)
    nodes = await swarm.grow(10)
    hosts = [VirtualHost(i) for i in range(HOSTS)]
    # a few bands, each crowded (more signers than a set's fresh places): sub-shards used
    prices = {h.node_id: (rng.choice((2000, 4000, 8000)), rng.randint(20, 60)) for h in hosts}
    await publish_all(hosts, nodes[:4], prices)
    assert len({band_of(*p) for p in prices.values()}) <= 4
    reader = nodes[9]
    before = reader.stats.lookups
    for n in (1, 10, 20):
        got = await reader.find_offers(["cpu"], n=n)
        assert [e.node_id for e in got] == truth(hosts, n)
    walk = reader.walk("cpu")
    top = await walk.top(20)
    assert walk.lookups <= max_lookups("cpu") and walk.bands_read < 40
    assert [e.node_id for e in top[:20]] == truth(hosts, 20)
    assert reader.stats.lookups > before

    # a third of the hosts move their prices (many across bands: withdrawals follow)
    movers = rng.sample(hosts, HOSTS // 3)
    for i, h in enumerate(movers):
        cap, price = prices[h.node_id]
        prices[h.node_id] = (cap, max(1, price // 3 if i % 2 else price * 3))
        await h.publish(nodes[i % 4], {"cpu": prices[h.node_id]})
    for n in (1, 10, 20):
        assert [e.node_id for e in await nodes[8].find_offers(["cpu"], n=n)] == truth(hosts, n)
    # the filters: max price, min capacity
    got = await nodes[7].find_offers(["cpu"], n=15, min_capacity=4000, max_price=40)
    assert [e.node_id for e in got] == truth(hosts, 15, min_capacity=4000, max_price=40)

    # market(): records fetched, min availability filtered on the record
    found = await nodes[6].market(["cpu"], n=20)
    assert [h.node_id for h in found] == market_truth(hosts, 20)


async def test_market_min_availability_and_several_types(swarm: Swarm) -> None:
    rng = random.Random(5)
    nodes = await swarm.grow(6)
    hosts = [VirtualHost(i) for i in range(40)]
    avail = {}
    for i, h in enumerate(hosts):
        avail[h.node_id] = rng.choice((500_000, 900_000, 999_000))
        await h.publish(nodes[i % 3], {"cpu": (4000, rng.randint(5, 50)),
                                       "memory": (2**22, rng.randint(5, 50))},
                        availability_ppm=avail[h.node_id])
    reader = nodes[5]
    found = await reader.market(["cpu"], n=10, min_availability_ppm=900_000)
    good = [h for h in hosts if avail[h.node_id] >= 900_000]
    assert [h.node_id for h in found] == market_truth(good, 10)
    # two types: ranked by cpu, then memory (from the records), then node id
    both = await reader.market(["cpu", "memory"], n=10)
    want = sorted(hosts, key=lambda h: (-Fraction(*h.offers["cpu"]),
                                        -Fraction(*h.offers["memory"]), h.node_id))
    assert [h.node_id for h in both] == [h.node_id for h in want[:10]]
    assert all(set(h.record.resources) == {"cpu", "memory"} for h in both)


async def test_a_gateway_serves_the_sharded_index(swarm: Swarm) -> None:
    from dht_helpers import serve

    from p2pmarket.audit.evidence import proof_host_id
    from p2pmarket.dht.gateway import GatewayClient, gateway_routes
    rng = random.Random(7)
    nodes = await swarm.grow(6)
    hosts = [VirtualHost(i) for i in range(3 * MAX_OFFERS)]
    for i, h in enumerate(hosts):
        await h.publish(nodes[i % 3], {"cpu": (4000, rng.randint(5, 40))})
    runner, base = await serve(gateway_routes(nodes[5]))
    client = GatewayClient(base, proof_verifier=proof_host_id)
    try:
        got = await client.find_offers(["cpu"], n=20)
        assert [e.node_id for e in got] == truth(hosts, 20)
        found = await client.market(["cpu"], n=10)
        assert [h.node_id for h in found] == market_truth(hosts, 10)
        assert client.rejected == 0
        # one walk request per query, not one request per shard
        assert nodes[5].storage.counters.get("gateway_offers", 0) <= 4
    finally:
        await client.close()
        await runner.cleanup()
