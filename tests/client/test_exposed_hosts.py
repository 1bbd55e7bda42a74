"""Buyers skip hosts against which a proof of misbehaviour is published in the DHT."""

from __future__ import annotations

from pathlib import Path

from p2pmarket.audit.entry import AuditAuthenticator
from p2pmarket.audit.evidence import inconsistency_proof, verify_proof
from p2pmarket.client.discovery import MarketView
from p2pmarket.core.domains import AUDIT_ENTRY
from p2pmarket.ledger.chain import auth_message
from tests.market_helpers import local_market


async def test_market_leaves_out_a_host_with_evidence(tmp_path: Path) -> None:
    async with local_market(tmp_path / "m", n=3) as m:
        for node in m.nodes:
            await node.announced.wait()
        cheat = m.nodes[2]
        host = cheat.identity.public_key
        # the host signed two different log entries for seq 7: a proof anyone can check
        a, b = (AuditAuthenticator(host, 7, h, cheat.identity.sign(AUDIT_ENTRY,
                                                                   auth_message(host, 7, h)))
                for h in (b"\x01" * 32, b"\x02" * 32))
        proof = inconsistency_proof(a, b)
        assert verify_proof(proof, cheat.identity.node_id)
        assert await m.nodes[0].dht.publish_evidence(cheat.identity.node_id, proof) > 0

        async with MarketView(m.genesis) as market:
            views = await market.hosts(["cpu", "memory"], limit=10)
        assert {v.node_id for v in views} == {n.identity.node_id for n in m.nodes[:2]}
        assert market.exposed == [cheat.identity.node_id]


async def test_market_keeps_hosts_without_evidence(tmp_path: Path) -> None:
    async with local_market(tmp_path / "m", n=2) as m:
        for node in m.nodes:
            await node.announced.wait()
        async with MarketView(m.genesis) as market:
            views = await market.hosts(["cpu"], limit=10)
        assert len(views) == 2 and market.exposed == []
