"""The DHT as the audit needs it: adapters from :class:`DhtNode` to the witness
protocols of :mod:`p2pmarket.ledger.witness` and :mod:`p2pmarket.ledger.evidence`.

A host's witnesses are the ψ+1 nodes nearest SHA-256("witness" + host id) in the
DHT (DESIGN.md section 5), found with an ordinary node lookup; each one's key
and URL come from its signed host record, so a witness can only be reached under
the key its id belongs to.
"""

from __future__ import annotations

import asyncio

from p2pmarket.dht.node import DhtNode
from p2pmarket.identity import node_id_of
from p2pmarket.ledger.witness import Peer


def _distance(a: bytes, b: bytes) -> int:
    return int.from_bytes(a, "big") ^ int.from_bytes(b, "big")


class DhtWitnessDirectory:
    """``closest(key, n)``: the ``n`` nodes with host records nearest ``key[:20]``,
    this node included when it is among them (it is then a witness itself)."""

    def __init__(self, dht: DhtNode, own: Peer | None = None) -> None:
        self.dht = dht
        self.own = own

    async def closest(self, key: bytes, n: int) -> list[Peer]:
        target = key[:20]
        found = await self.dht.lookup(target, find_value=False)
        ids = sorted({node.id for node in found.closest}, key=lambda i: _distance(i, target))
        records = await asyncio.gather(*(self.dht.get_host(i) for i in ids[: 2 * n]))
        peers = [Peer(r.node_id, r.envelope.sender, r.url) for r in records if r is not None]
        if self.own is not None:
            peers.append(self.own)
        peers.sort(key=lambda p: _distance(p.node_id, target))
        unique: dict[bytes, Peer] = {}
        for p in peers:
            unique.setdefault(p.node_id, p)
        return list(unique.values())[:n]


class DhtHostLocator:
    """``locate(host_key)``: the URL in the host's signed record, if it has one."""

    def __init__(self, dht: DhtNode) -> None:
        self.dht = dht

    async def locate(self, host_key: bytes) -> str | None:
        record = await self.dht.get_host(node_id_of(host_key))
        if record is None or record.envelope.sender != host_key:
            return None
        return record.url


class DhtEvidenceSink:
    """``publish(host_id, proof)``: store the proof at ``evidence/<host id>``, where every
    storer verifies it before keeping it (small proofs inline, large ones by hash)."""

    def __init__(self, dht: DhtNode) -> None:
        self.dht = dht

    async def publish(self, host_id: bytes, proof: bytes) -> None:
        await self.dht.publish_evidence(host_id, proof)
