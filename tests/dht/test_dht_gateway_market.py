"""The HTTP gateway for nodes that cannot send UDP, and market queries over several types."""

from __future__ import annotations

import time

import aiohttp
import pytest
from aiohttp import web
from dht_helpers import FakeClock, Swarm, serve

from p2pmarket.audit.evidence import proof_host_id
from p2pmarket.core.domains import DHT_RECORD
from p2pmarket.core.identity import Identity
from p2pmarket.core.wire import seal
from p2pmarket.dht import DhtNode, ResourceAd
from p2pmarket.dht.checks import DhtError
from p2pmarket.dht.gateway import GatewayClient, GatewayDht, gateway_routes
from p2pmarket.dht.offerquery import market_doc
from p2pmarket.dht.records import host_key, key_digest

CPU = {"cpu": ResourceAd(capacity=4000, price=10, hour_avg=9)}


async def test_proxied_node_publishes_and_reads_through_a_gateway(swarm: Swarm) -> None:
    nodes = await swarm.grow(5)
    public = nodes[0]
    runner, base = await serve(gateway_routes(public))
    proxied = GatewayDht(Identity.generate(), base, proof_verifier=proof_host_id, url="http://127.0.0.1:9")
    try:
        rec = await proxied.publish_host({"cpu": ResourceAd(500, 2, 2)})
        await proxied.publish_offer("cpu", 500, 2)
        # the proxied host is in the DHT for everyone
        got = await nodes[3].get_host(proxied.identity.node_id)
        assert got == rec
        # and reads through the gateway, verifying every record itself
        await nodes[2].publish_host(CPU)
        await nodes[2].publish_offer("cpu", 4000, 10)
        assert await proxied.get_host(nodes[2].node_id) is not None
        assert await proxied.get_host(Identity.generate().node_id) is None
        offers = await proxied.find_offers(["cpu"], n=5)
        assert [o.node_id for o in offers] == [nodes[2].node_id, proxied.identity.node_id]
        hosts = await proxied.market(["cpu"], n=5, max_price=5)
        assert [h.node_id for h in hosts] == [proxied.identity.node_id]
        # a price move to another band: the withdrawal hides the old entry
        await proxied.publish_offer("cpu", 500, 50)   # band 3 (was 7, below 4000 at 10)
        offers = await proxied.find_offers(["cpu"], n=5)
        assert [(o.node_id, o.price) for o in offers] == [
            (nodes[2].node_id, 10), (proxied.identity.node_id, 50)]
        # the format-1 route answers 410 with a message saying the index is sharded
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{base}/dht/offers/cpu") as resp:
                assert resp.status == 410 and "format 2" in await resp.text()
            async with session.get(f"{base}/dht/offers/cpu/99") as resp:
                assert resp.status == 400
        # republishing goes through the gateway too
        await proxied.republish()
        again = await nodes[4].get_host(proxied.identity.node_id)
        assert again is not None and again.seq > rec.seq
        # a forged record is refused by the gateway like any DHT store
        body = dict(rec.envelope.body, url="http://evil")
        forged = seal(Identity.generate(), DHT_RECORD, "dht.host", body,
                      ts=rec.envelope.ts).encode()
        with pytest.raises(DhtError) as err:
            await proxied.store(host_key(proxied.identity.node_id), forged)
        assert err.value.value == "refused"
    finally:
        await proxied.close()
        await runner.cleanup()


async def test_gateway_answers_are_verified_and_rate_limited(swarm: Swarm) -> None:
    nodes = await swarm.grow(3)
    honest = await nodes[1].publish_host(CPU)

    async def lying(request: web.Request) -> web.Response:  # a gateway that tampers
        raw = bytearray(honest.value)
        raw[-1] ^= 1
        return web.Response(body=bytes(raw))
    runner, base = await serve([web.get("/dht/host/{node_id}", lying)])
    runner2, base2 = await serve(gateway_routes(nodes[0], rate=0.001, burst=2))
    client = GatewayClient(base, proof_verifier=proof_host_id)
    client2 = GatewayClient(base2, proof_verifier=proof_host_id)
    try:
        assert await client.get_host(nodes[1].node_id) is None
        assert client.rejected == 1
        assert await client2.get_host(nodes[1].node_id) == honest
        await client2.get_host(nodes[1].node_id)
        with pytest.raises(DhtError):  # 429 after the burst
            await client2.get_host(nodes[1].node_id)
        assert nodes[0].storage.counters["gateway_limited"] == 1
    finally:
        await client.close()
        await client2.close()
        await runner.cleanup()
        await runner2.cleanup()


async def test_market_over_several_types_and_a_stopped_host_disappears(swarm: Swarm) -> None:
    clock = FakeClock(time.time_ns() // 1000)
    nodes = await swarm.grow(6, clock=clock, republish_s=10.0)
    for i, node in enumerate(nodes):
        resources = {"cpu": ResourceAd(1000 * (i + 1), 5, 9 + i)}
        if i % 2 == 0:
            resources["memory"] = ResourceAd(1 << 20, 5 + i, 5)
        await node.publish_host(resources, availability_ppm=900_000 + i)
        for rtype, ad in resources.items():
            await node.publish_offer(rtype, ad.capacity, ad.price)
    reader = nodes[1]
    hosts = await reader.market(["cpu", "memory"], n=10)
    # hosts offering both, best cpu capacity per price first
    assert [h.node_id for h in hosts] == [nodes[i].node_id for i in (4, 2, 0)]
    doc = market_doc(hosts[0])
    assert doc["resources"]["cpu"] == {"capacity": 5000, "price": 5, "hour_avg": 13}
    assert doc["availability_ppm"] == 900_004 and doc["resources"]["memory"]["price"] == 9
    assert set(doc["offers"]) == {"cpu"}   # the other types come from the record
    assert [h.node_id for h in await reader.market(["cpu", "memory"], n=10,
                                                   max_price=8)] == [nodes[2].node_id,
                                                                      nodes[0].node_id]
    assert [h.node_id for h in await reader.market(["cpu"], n=2, min_capacity=3000)] == [
        nodes[5].node_id, nodes[4].node_id]
    assert await reader.market(["gpu"], n=3) == []

    victim = nodes[4]
    await victim.close()  # stops: no more republishing
    for _ in range(2):
        clock.advance(10)
        for node in nodes:
            if node is not victim:
                await node.republish()
    clock.advance(6)  # 26 s after its last publish: past 2.5 x republish_s
    hosts = await reader.market(["cpu", "memory"], n=10)
    assert [h.node_id for h in hosts] == [nodes[2].node_id, nodes[0].node_id]
    assert victim.node_id not in {o.node_id for o in await reader.find_offers(["cpu"], n=10)}
    assert reader.storage.host_record(key_digest(host_key(victim.node_id))) is None
    assert DhtNode


async def test_a_gateway_that_does_not_answer_is_skipped_for_the_next(swarm: Swarm) -> None:
    """A proxied node whose gateway is cut off still publishes (say, that its relay
    moved) and reads through the next one, which stays current."""
    nodes = await swarm.grow(4)
    runner, live = await serve(gateway_routes(nodes[0]))
    dead_runner, dead = await serve(gateway_routes(nodes[1]))
    await dead_runner.cleanup()                        # nothing listens there any more
    proxied = GatewayDht(Identity.generate(), dead, proof_verifier=proof_host_id,
                         url="http://127.0.0.1:9/relay/x", fallbacks=[dead, live])
    try:
        assert proxied.bases == [dead, live]
        rec = await proxied.publish_host({"cpu": ResourceAd(500, 2, 2)})
        assert proxied.base_url == live
        got = await nodes[3].get_host(proxied.identity.node_id)
        assert got == rec and got.url == "http://127.0.0.1:9/relay/x"
        assert await proxied.get_host(proxied.identity.node_id) == rec
        # every gateway cut off: the error says so
        only_dead = GatewayDht(Identity.generate(), dead, proof_verifier=proof_host_id,
                               url="http://127.0.0.1:9")
        with pytest.raises(DhtError, match="gateway unreachable") as err:
            await only_dead.publish_host({"cpu": ResourceAd(500, 2, 2)})
        assert err.value.value == "gateway"
        await only_dead.close()
    finally:
        await proxied.close()
        await runner.cleanup()
