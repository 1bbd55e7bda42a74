"""200 in-process nodes on loopback UDP, a seeded random network, 20 % and 40 % of the
nodes killed while gets are running: every record is still found, and the network
still takes new records."""

from __future__ import annotations

import asyncio
import random

import pytest

from p2pmarket.audit.evidence import proof_host_id
from p2pmarket.core.genesis import Genesis
from p2pmarket.core.identity import Identity
from p2pmarket.dht import DhtNode, ResourceAd

N = 200
PUBLISHERS = 30


async def _gets(nodes: list[DhtNode], live: list[int], publishers: list[int],
                seqs: dict[int, int], rng: random.Random, count: int) -> list[bool]:
    sem = asyncio.Semaphore(10)
    plan = [(rng.choice(live), rng.choice(publishers)) for _ in range(count)]

    async def one(reader: int, owner: int) -> bool:
        async with sem:
            rec = await asyncio.wait_for(nodes[reader].get_host(nodes[owner].node_id), 20)
            return rec is not None and rec.seq == seqs[owner]
    return list(await asyncio.gather(*(one(r, o) for r, o in plan)))


@pytest.mark.slow
@pytest.mark.parametrize("fraction", [0.2, 0.4])
async def test_200_nodes_keep_every_record_when_nodes_are_killed_mid_run(
        genesis: Genesis, fraction: float) -> None:
    rng = random.Random(3000 + int(fraction * 100))
    nodes = [DhtNode(Identity(rng.randbytes(32)), genesis, proof_verifier=proof_host_id,
                     rpc_timeout=2.0) for _ in range(N)]
    try:
        for node in nodes:
            await node.start("127.0.0.1", 0)
            node.url = f"http://127.0.0.1:{node.port}"
        for lo in range(1, N, 20):  # each joins through a random node already joined
            await asyncio.gather(*(nodes[i].bootstrap([nodes[rng.randrange(lo)].address])
                                   for i in range(lo, min(N, lo + 20))))
        assert min(n.contact_count() for n in nodes) >= 10
        publishers = rng.sample(range(N), PUBLISHERS)
        seqs: dict[int, int] = {}

        async def publish(i: int) -> None:
            rec = await nodes[i].publish_host({"cpu": ResourceAd(1000 + i, 5 + i % 3, 5)})
            seqs[i] = rec.seq
            await nodes[i].publish_offer("cpu", 1000 + i, 5 + i % 3)
        await asyncio.gather(*(publish(i) for i in publishers))

        victims = rng.sample(range(N), int(fraction * N))
        alive = set(range(N))
        found: list[bool] = []
        for wave in range(3):
            live = sorted(alive - set(victims))  # readers are not killed under their feet
            gets = asyncio.ensure_future(_gets(nodes, live, publishers, seqs, rng, 60))
            await asyncio.sleep(0.005)
            if wave < 2:  # kill half of the victims while this wave's gets run
                for i in victims[wave::2]:
                    nodes[i].stop()
                    alive.discard(i)
            found += await gets
        assert all(found), f"{found.count(False)} of {len(found)} gets failed"

        # the network still works: new records from live nodes are found by live nodes
        live = sorted(alive)
        fresh = [i for i in rng.sample(live, 8) if i not in seqs]
        await asyncio.gather(*(publish(i) for i in fresh))
        found = await _gets(nodes, live, fresh, seqs, rng, 40)
        assert all(found)
        offers = await nodes[live[0]].find_offers(["cpu"], n=100)
        assert {nodes[i].node_id for i in fresh} <= {o.node_id for o in offers}
        assert len(offers) >= 24
    finally:
        await asyncio.gather(*(n.close() for n in nodes))
