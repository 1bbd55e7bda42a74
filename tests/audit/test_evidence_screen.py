"""The notaries' evidence screen: proofs published in the DHT reach the local
evidence store (so ``shun`` refuses the owner), each owner is looked up at most
once per TTL, concurrent requests share a look-up, invalid proofs and a silent
DHT change nothing, and nothing waits longer than the timeout."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from p2pmarket.api.rpc import CallContext
from p2pmarket.audit.entry import AuditAuthenticator
from p2pmarket.audit.evidence import inconsistency_proof
from p2pmarket.audit.evidencestore import EvidenceStore
from p2pmarket.audit.witnessing import EvidenceScreen
from p2pmarket.core.domains import AUDIT_ENTRY
from p2pmarket.core.errors import P2PMarketError
from p2pmarket.core.identity import Identity, node_id_of
from p2pmarket.ledger import notaryrpc
from p2pmarket.ledger.chain import auth_message
from p2pmarket.ledger.errors import LedgerError
from p2pmarket.ledger.notary import NotaryService

CHEAT, HONEST = Identity.generate(), Identity.generate()
CTX = CallContext(Identity.generate().public_key, 0)


def proof_against(ident: Identity) -> bytes:
    a, b = (AuditAuthenticator(ident.public_key, 7, h, ident.sign(AUDIT_ENTRY,
        auth_message(ident.public_key, 7, h))) for h in (b"\1" * 32, b"\2" * 32))
    return inconsistency_proof(a, b)


class FakeDht:
    def __init__(self) -> None:
        self.published: dict[bytes, list[bytes]] = {}
        self.asked: list[bytes] = []
        self.delay = 0.0
        self.fail = False

    async def get_evidence(self, host_id: bytes) -> list[bytes]:
        self.asked.append(host_id)
        await asyncio.sleep(self.delay)
        if self.fail:
            raise P2PMarketError("no answer")
        return self.published.get(host_id, [])


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_published_proof_reaches_the_store_and_is_looked_up_once_per_ttl() -> None:
    dht, store, clock = FakeDht(), EvidenceStore(), Clock()
    dht.published[CHEAT.node_id] = [proof_against(CHEAT)]
    screen = EvidenceScreen(dht, store, ttl_s=60, clock=clock)
    assert not store.is_exposed(CHEAT.public_key)
    await screen.screen([CHEAT.public_key, HONEST.public_key])
    assert store.is_exposed(CHEAT.public_key) and not store.is_exposed(HONEST.public_key)
    assert sorted(dht.asked) == sorted([CHEAT.node_id, HONEST.node_id])
    await screen.screen([CHEAT.public_key, HONEST.public_key])   # within the TTL
    assert len(dht.asked) == 2
    clock.now += 61
    await screen.screen([HONEST.public_key, CHEAT.public_key])  # the exposed one: never again
    assert dht.asked[2:] == [HONEST.node_id]


async def test_concurrent_requests_share_one_lookup() -> None:
    dht, store = FakeDht(), EvidenceStore()
    dht.delay = 0.05
    dht.published[CHEAT.node_id] = [proof_against(CHEAT)]
    screen = EvidenceScreen(dht, store)
    await asyncio.gather(*(screen.screen([CHEAT.public_key]) for _ in range(5)))
    assert dht.asked == [CHEAT.node_id] and store.is_exposed(CHEAT.node_id)


async def test_invalid_proofs_and_failures_change_nothing() -> None:
    dht, store, clock = FakeDht(), EvidenceStore(), Clock()
    forged = bytearray(proof_against(CHEAT))
    forged[-5] ^= 1
    dht.published[HONEST.node_id] = [bytes(forged), proof_against(CHEAT)[:40], b"junk"]
    screen = EvidenceScreen(dht, store, clock=clock)
    await screen.screen([HONEST.public_key])
    assert store.proofs() == [] and not store.is_exposed(HONEST.public_key)
    dht.fail = True
    clock.now += 120
    await screen.screen([HONEST.public_key])
    assert store.proofs() == [] and len(dht.asked) == 2


async def test_a_slow_dht_delays_at_most_the_timeout_and_lands_later() -> None:
    dht, store = FakeDht(), EvidenceStore()
    dht.delay = 0.6
    dht.published[CHEAT.node_id] = [proof_against(CHEAT)]
    screen = EvidenceScreen(dht, store, timeout_s=0.05)
    loop = asyncio.get_running_loop()
    t = loop.time()
    await screen.screen([CHEAT.public_key])
    assert loop.time() - t < 0.5 and not store.is_exposed(CHEAT.public_key)
    await asyncio.sleep(0.8)   # the look-up finished in the background
    assert store.is_exposed(CHEAT.public_key) and node_id_of(CHEAT.public_key) in dht.asked


async def test_a_notary_refuses_an_owner_exposed_only_in_the_dht(net: Any, chain_of: Any
                                                                  ) -> None:
    dht, store = FakeDht(), EvidenceStore()
    dht.published[CHEAT.node_id] = [proof_against(CHEAT)]
    notary = NotaryService(net.notaries[0], net.genesis, ":memory:", shun=store.is_exposed,
                           screen=EvidenceScreen(dht, store).screen)
    certify = notaryrpc.handlers(notary)["certify"]
    cheat, honest = chain_of(CHEAT), chain_of(HONEST)
    for c in (cheat, honest):
        c.open()
    before = notary.head(CHEAT.public_key)
    with pytest.raises(LedgerError) as refused:
        await certify(CTX, {"entry": cheat.entries[0].to_wire(), "sig": cheat.auths[0].sig})
    assert refused.value.value == "shunned" and notary.head(CHEAT.public_key) == before
    got = await certify(CTX, {"entry": honest.entries[0].to_wire(), "sig": honest.auths[0].sig})
    assert isinstance(got["sig"], bytes) and dht.asked == [CHEAT.node_id, HONEST.node_id]
    notary.close()
