"""Wallets that pipeline: group commit, batches, lagging notaries, deliveries, checkpoints."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from ledger_helpers import core

from p2pmarket.core.genesis import NotaryInfo
from p2pmarket.core.identity import Identity
from p2pmarket.ledger.certificate import verify_certificate
from p2pmarket.ledger.chain import CHECKPOINT, MINT, SEND
from p2pmarket.ledger.committee import MAX_BACKOFF_S, MIN_BACKOFF_S, Backoff
from p2pmarket.ledger.errors import LedgerError
from p2pmarket.ledger.store import ChainStore
from p2pmarket.ledger.wallet import Wallet
from tests.support.local_committee import LocalCommittee, LocalTransport


class CountingTransport:
    def __init__(self, inner: LocalTransport) -> None:
        self.inner = inner
        self.calls: dict[str, int] = {}

    async def call(self, notary: NotaryInfo, name: str, args: dict[str, Any]) -> dict[str, Any]:
        self.calls[name] = self.calls.get(name, 0) + 1
        await asyncio.sleep(0)
        return await self.inner.call(notary, name, args)


def wallet(c: LocalCommittee, path: Path, ident: Identity | None = None,
           transport: Any = None) -> Wallet:
    return Wallet(ident or Identity.generate(), ChainStore(path), c.genesis,
                  transport or c.transport)


def supplies(c: LocalCommittee) -> list[dict[str, Any]]:
    return [c.services[n.public_key].supply() for n in c.notaries]


async def test_concurrent_sends_are_grouped(tmp_path: Path, committee4: LocalCommittee) -> None:
    c = committee4
    counting = CountingTransport(c.transport)
    mint = wallet(c, tmp_path / "mint.db", c.mint, counting)
    alice = wallet(c, tmp_path / "alice.db")
    await mint.mint(10_000)
    before = counting.calls["certify_batch"]
    certs = await asyncio.gather(*(mint.send(alice.key, 1 + i, f"p{i}") for i in range(40)))
    batches = counting.calls["certify_batch"] - before
    assert batches <= 3 * 4  # 40 sends in at most three groups of one batch per notary
    assert [ct.entry.seq for ct in certs] == sorted(ct.entry.seq for ct in certs)
    for ct in certs:
        verify_certificate(ct, c.genesis)
    assert mint.balance() == 10_000 - sum(range(1, 41))
    assert await alice.sync() == sum(range(1, 41))
    assert mint.verify() == mint.balance() and alice.verify() == alice.balance()
    for s in supplies(c):
        assert core(s) == {"minted": 10_000, "balances": 10_000, "pending": 0, "early": 0,
                           "ok": True}
    await mint.close()


async def test_send_many_and_mint_to(tmp_path: Path, committee4: LocalCommittee) -> None:
    c = committee4
    mint = wallet(c, tmp_path / "mint.db", c.mint)
    alice = wallet(c, tmp_path / "alice.db")
    bob = Identity.generate()
    cert = await mint.mint_to(alice.key, 500)
    assert cert.entry.kind == SEND and mint.balance() == 0
    assert [h["kind"] for h in mint.history()] == ["OPEN", MINT, SEND]
    assert await alice.receive(cert) == 500
    certs = await alice.send_many([(bob.public_key, 10 * (i + 1), "") for i in range(5)])
    assert [ct.entry.amount for ct in certs] == [10, 20, 30, 40, 50]
    assert alice.balance() == 350
    # one bad payment in a group fails alone; the others go through
    with pytest.raises(LedgerError, match="insufficient"):
        await alice.send_many([(bob.public_key, 100, ""), (bob.public_key, 10_000, ""),
                               (bob.public_key, 50, "")])
    assert alice.balance() == 200 and alice.store.pending(alice.key) is None
    await mint.close()
    await alice.close()


async def test_lagging_notary_is_caught_up_by_the_wallet(tmp_path: Path,
                                                         committee4: LocalCommittee) -> None:
    c = committee4
    late = c.notaries[3].public_key
    mint = wallet(c, tmp_path / "mint.db", c.mint)
    alice = wallet(c, tmp_path / "alice.db")
    await mint.mint(1_000)
    await alice.ensure_open()
    await mint.flush()
    c.transport.down.add(late)
    for amount in (1, 2, 3, 4):
        await mint.send(alice.key, amount)
    assert c.services[late].head(mint.key)["seq"] == 1
    c.transport.down.discard(late)
    await mint.send(alice.key, 5)  # the lane re-sends seq 2.. with their certificates
    await mint.flush()
    lane = mint.lanes[late]
    assert lane.catch_ups == 1 and lane.acked == 6
    assert c.services[late].head(mint.key) == c.services[c.notaries[0].public_key].head(mint.key)
    assert all(core(s) == core(supplies(c)[0]) for s in supplies(c))
    # with another notary down now, the caught-up one makes the quorum
    c.transport.down.add(c.notaries[0].public_key)
    await mint.send(alice.key, 6)
    assert await alice.sync() == 21
    await mint.close()
    await alice.close()


def test_delivery_backoff_doubles_up_to_its_cap_and_starts_over() -> None:
    b = Backoff()
    assert b.wait(0.0) is None  # nothing failed yet: due
    b = b.failed(10.0)
    assert (b.delay, b.due) == (MIN_BACKOFF_S, 10.0 + MIN_BACKOFF_S)
    assert b.wait(10.25) == pytest.approx(0.25) and b.wait(10.5) is None
    for _ in range(20):
        b = b.failed(10.0)
    assert (b.delay, b.due) == (MAX_BACKOFF_S, 10.0 + MAX_BACKOFF_S)
    assert b.due_now().wait(10.0) is None and b.due_now().delay == MAX_BACKOFF_S
    assert b.succeeded().failed(20.0).delay == MIN_BACKOFF_S


async def test_deliver_lets_sync_work_when_a_notary_missed_the_send(
        tmp_path: Path, committee4: LocalCommittee) -> None:
    c = committee4
    n0, n3 = c.notaries[0].public_key, c.notaries[3].public_key
    mint = wallet(c, tmp_path / "mint.db", c.mint)
    alice = wallet(c, tmp_path / "alice.db")
    await mint.mint(100)
    await alice.ensure_open()
    c.transport.down.add(n3)  # misses the SEND
    cert = await mint.send(alice.key, 40)
    assert n3 not in cert.keys
    await mint.flush()
    assert mint.lanes[n3].undelivered == 1  # kept for when it is back
    assert mint.lanes[n3].backoff.delay == MIN_BACKOFF_S  # and tried again later
    c.transport.down.discard(n3)
    await mint.redeliver()
    assert mint.lanes[n3].undelivered == 0
    assert c.services[n3].inbox(alice.key)[0].keys == cert.keys
    c.transport.down.add(n0)
    # inboxes of n1, n2 (one signature each) and n3 (the whole certificate)
    assert await alice.sync() == 40
    assert alice.balance() == 40
    await mint.close()
    await alice.close()


async def test_checkpoint_and_segment_verification(tmp_path: Path,
                                                   committee4: LocalCommittee) -> None:
    c = committee4
    mint = wallet(c, tmp_path / "mint.db", c.mint)
    alice = wallet(c, tmp_path / "alice.db")
    await alice.receive(await mint.mint_to(alice.key, 300))
    checkpoint = await alice.checkpoint()
    assert checkpoint.entry.kind == CHECKPOINT and checkpoint.entry.body == {"balance": 300}
    await alice.send(mint.key, 100)
    await mint.mint(50)
    await alice.receive(await mint.send(alice.key, 50))
    assert alice.verify() == 250 == alice.verify(from_checkpoint=True)
    assert alice.store.last_checkpoint(alice.key) == checkpoint
    assert [h["kind"] for h in alice.history()] == ["OPEN", "RECV", CHECKPOINT, SEND, "RECV"]
    # a notary refuses a checkpoint that misstates the balance
    head = alice.store.head(alice.key)
    assert head is not None
    from p2pmarket.ledger.chain import Authenticator, next_entry

    wrong = next_entry(alice.key, head, CHECKPOINT, {"balance": 251}, 1)
    svc = c.services[c.notaries[0].public_key]
    with pytest.raises(LedgerError, match="checkpoint balance"):
        svc.certify(wrong, Authenticator.sign(alice.identity, wrong).sig)
    await mint.close()
    await alice.close()


async def test_wallet_reopened_mid_pipeline_resumes_every_pending_entry(
        tmp_path: Path, committee4: LocalCommittee) -> None:
    c = committee4
    mint = wallet(c, tmp_path / "mint.db", c.mint)
    alice = Identity.generate()
    await mint.mint(1_000)
    for n in c.notaries[:2]:
        c.transport.down.add(n.public_key)
    with pytest.raises(LedgerError, match="stays pending"):
        await mint.send_many([(alice.public_key, a, "") for a in (1, 2, 3)])
    assert len(mint.store.pending_entries(mint.key)) == 3
    await mint.close()
    mint.store.close()
    c.transport.down.clear()
    again = wallet(c, tmp_path / "mint.db", c.mint)
    cert = await again.resume()
    assert cert is not None and cert.entry.amount == 3
    assert again.store.pending(again.key) is None and again.balance() == 994
    assert again.verify() == 994
    await again.close()
