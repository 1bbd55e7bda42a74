"""Client mode: a node that only queries finds records but never enters routing tables."""

from __future__ import annotations

from dht_helpers import Swarm

from p2pmarket.audit.evidence import proof_host_id
from p2pmarket.core.identity import Identity
from p2pmarket.dht import DhtNode, ResourceAd

CPU = {"cpu": ResourceAd(capacity=4000, price=10, hour_avg=9)}


def knows(node: DhtNode, other: DhtNode) -> bool:
    return any(c.id == other.node_id for b in node.protocol.router.buckets
               for c in b.get_nodes())


async def test_client_finds_records_and_leaves_no_contact(swarm: Swarm) -> None:
    nodes = await swarm.grow(8)
    for i, n in enumerate(nodes):
        await n.publish_host(CPU)
        await n.publish_offer("cpu", capacity=100 + i, price=10)

    client = DhtNode(Identity.generate(), swarm.genesis, proof_verifier=proof_host_id,
                     client_mode=True, rpc_timeout=1.0)
    await client.start("127.0.0.1", 0)
    try:
        assert await client.bootstrap([nodes[0].address]) > 0
        record = await client.get_host(nodes[5].node_id)
        assert record is not None and record.node_id == nodes[5].node_id
        offers = await client.find_offers(["cpu"], n=20)
        assert {o.node_id for o in offers} == {n.node_id for n in nodes}
        assert not any(knows(n, client) for n in nodes)
    finally:
        await client.close()


async def test_server_mode_peer_does_enter_routing_tables(swarm: Swarm) -> None:
    # the control case: the same steps in server mode leave the contact behind
    nodes = await swarm.grow(4)
    peer = DhtNode(Identity.generate(), swarm.genesis, proof_verifier=proof_host_id,
                   rpc_timeout=1.0)
    await peer.start("127.0.0.1", 0)
    try:
        await peer.bootstrap([nodes[0].address])
        await peer.get_host(nodes[2].node_id)
        assert any(knows(n, peer) for n in nodes)
    finally:
        await peer.close()


async def test_client_mode_switches_at_run_time(swarm: Swarm) -> None:
    """A node that finds out it is not reachable turns client; peers it queries from then
    on do not add it, and turning back makes it a full peer again."""
    nodes = await swarm.grow(3)
    late = DhtNode(Identity.generate(), swarm.genesis, proof_verifier=proof_host_id,
                   rpc_timeout=1.0)
    late.set_client_mode(True)   # before start: applied when the socket opens
    await late.start("127.0.0.1", 0)
    try:
        assert late.protocol.client_mode
        assert await late.bootstrap([nodes[0].address]) > 0
        await late.get_host(nodes[2].node_id)
        assert not any(knows(n, late) for n in nodes)
        late.set_client_mode(False)
        await late.bootstrap([nodes[0].address])
        await late.get_host(nodes[1].node_id)
        assert any(knows(n, late) for n in nodes)
    finally:
        await late.close()
