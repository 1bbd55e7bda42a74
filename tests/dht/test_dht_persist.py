"""Routing table and own records survive a restart (sqlite in the data dir)."""

from __future__ import annotations

import time
from pathlib import Path

from dht_helpers import FakeClock, Swarm, wait_for

from p2pmarket.audit.evidence import proof_host_id
from p2pmarket.core.genesis import Genesis
from p2pmarket.core.identity import Identity
from p2pmarket.dht import DhtNode, ResourceAd
from p2pmarket.dht.persist import DhtState

CPU = {"cpu": ResourceAd(capacity=4000, price=10, hour_avg=9)}


async def test_restart_rejoins_through_saved_contacts_and_republishes(
        swarm: Swarm, genesis: Genesis, tmp_path: Path) -> None:
    clock = FakeClock(time.time_ns() // 1000)
    nodes = await swarm.grow(6, clock=clock, republish_s=10.0)
    ident = Identity.generate()
    db = tmp_path / "dht.sqlite"
    first = DhtNode(ident, genesis, proof_verifier=proof_host_id, clock=clock, republish_s=10.0,
                    db_path=db, rpc_timeout=1.0)
    await first.start("127.0.0.1", 0)
    first.url = "http://127.0.0.1:8123"
    assert await first.bootstrap([nodes[0].address]) > 0
    document = b"attestations and labels " * 500
    rec = await first.publish_host(CPU, document=document)
    await first.publish_offer("cpu", 100, 5)
    known = {c.id for c in first.protocol.router.contacts()}
    await first.close()
    saved = DhtState(db)
    assert {c[0] for c in saved.contacts()} == known
    saved.close()

    clock.advance(30)  # past the expiry: nothing of it is left anywhere
    assert await nodes[2].get_host(ident.node_id) is None

    again = DhtNode(ident, genesis, proof_verifier=proof_host_id, clock=clock, republish_s=10.0,
                    db_path=db, rpc_timeout=1.0)
    await again.start("127.0.0.1", 0)  # a new port, no bootstrap peer given
    try:
        assert again.url == "http://127.0.0.1:8123"
        assert await again.bootstrap([]) > 0  # rejoined through the saved table

        async def back() -> bool:
            got = await nodes[2].get_host(ident.node_id)
            return got is not None and got.seq > rec.seq
        for _ in range(100):
            if await back():
                break
            await wait_for(lambda: True)
        got = await nodes[2].get_host(ident.node_id)
        assert got is not None and got.seq > rec.seq and got.doc == rec.doc
        assert got.dht == again.address
        assert rec.doc is not None and again.document(rec.doc.sha256) == document
        offers = await nodes[3].find_offers(["cpu"])
        assert [o.node_id for o in offers] == [ident.node_id]
        assert again.metrics()["own_records"] == 2
    finally:
        await again.close()
