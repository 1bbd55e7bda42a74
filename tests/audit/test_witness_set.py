"""A host is never its own witness (issue 10, item 7).

The witnesses of a host are the nodes nearest SHA-256("witness" + host id); when
the host itself is among them it must be left out, or it would vouch for its own
log: buyers would push it their authenticators and it would answer "trusted".
"""

from __future__ import annotations

from typing import Any

from p2pmarket.audit.evidencestore import EvidenceStore
from p2pmarket.audit.witness import (
    Peer,
    WitnessService,
    push_to_witnesses,
    witness_key,
    witnesses_of,
)
from p2pmarket.core.identity import Identity


def _distance(a: bytes, b: bytes) -> int:
    return int.from_bytes(a, "big") ^ int.from_bytes(b, "big")


class Directory:
    """The DHT's answer: every known node, nearest to the key first."""

    def __init__(self, peers: list[Peer]) -> None:
        self.peers = peers

    async def closest(self, key: bytes, n: int) -> list[Peer]:
        return sorted(self.peers, key=lambda p: _distance(p.node_id, key[:20]))[:n]


class Caller:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    async def call(self, url: str, server_key: bytes, name: str,
                   args: dict[str, Any]) -> dict[str, Any]:
        self.calls.append((url, name))
        return {"held": 1, "state": "trusted"}


def _peer(ident: Identity, url: str) -> Peer:
    return Peer(ident.node_id, ident.public_key, url)


def _host_nearest_its_witness_key(others: list[Identity]) -> Identity:
    """A host whose own id is nearer its witness key than every other node's."""
    for _ in range(10_000):
        host = Identity.generate()
        target = witness_key(host.node_id)[:20]
        if all(_distance(host.node_id, target) < _distance(o.node_id, target) for o in others):
            return host
    raise AssertionError("no such host found")


NODES = [Identity(bytes([i]) * 32) for i in range(1, 7)]


async def test_the_host_is_left_out_of_its_own_witnesses() -> None:
    host = _host_nearest_its_witness_key(NODES)
    directory = Directory([_peer(host, "http://host"),
                           *(_peer(n, f"http://n{i}") for i, n in enumerate(NODES))])
    assert (await directory.closest(witness_key(host.node_id), 1))[0].node_id == host.node_id
    witnesses = await witnesses_of(directory, host.node_id, 3)
    assert len(witnesses) == 3 and host.node_id not in {w.node_id for w in witnesses}
    target = witness_key(host.node_id)[:20]
    nearest_others = sorted(NODES, key=lambda n: _distance(n.node_id, target))[:3]
    assert [w.node_id for w in witnesses] == [n.node_id for n in nearest_others]


async def test_a_buyer_never_pushes_to_the_host_as_its_witness() -> None:
    host = _host_nearest_its_witness_key(NODES)
    directory = Directory([_peer(host, "http://host"),
                           *(_peer(n, f"http://n{i}") for i, n in enumerate(NODES))])
    caller = Caller()
    auth = {"owner": host.public_key, "seq": 0, "hash": b"\x00" * 32, "sig": b"\x00" * 64}
    took = await push_to_witnesses(caller, directory, host.public_key, [auth], psi=2)
    assert took == 3
    assert "http://host" not in {url for url, _ in caller.calls}


async def test_the_host_refuses_to_witness_itself() -> None:
    host = _host_nearest_its_witness_key(NODES)
    directory = Directory([_peer(host, "http://host"),
                           *(_peer(n, f"http://n{i}") for i, n in enumerate(NODES))])
    evidence = EvidenceStore()
    service = WitnessService(host, Caller(), evidence, directory=directory)
    try:
        assert not await service._is_witness(host.public_key)
        other = NODES[0]
        mine = await witnesses_of(directory, other.node_id, 3)
        assert await service._is_witness(other.public_key) == (
            host.node_id in {p.node_id for p in mine})
    finally:
        evidence.close()
