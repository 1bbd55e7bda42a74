"""Offline receipt (Wallet.accept): a certified SEND is credited with no notary, the
RECV certified later; durable across a crash; never received twice."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from ledger_helpers import core

from p2pmarket.core.identity import Identity
from p2pmarket.ledger.certificate import Certificate
from p2pmarket.ledger.chain import RECV
from p2pmarket.ledger.errors import LedgerError
from p2pmarket.ledger.store import ChainStore
from p2pmarket.ledger.wallet import Wallet
from tests.support.local_committee import LocalCommittee


def make_wallet(c: LocalCommittee, path: Path, ident: Identity | None = None) -> Wallet:
    return Wallet(ident or Identity.generate(), ChainStore(path), c.genesis, c.transport)


def recvs(w: Wallet) -> list[tuple[int, bool]]:
    return [(e.seq, w.store.certified(w.key, e.seq)) for e in w.store.entries(w.key)
            if e.kind == RECV]


async def funded(c: LocalCommittee, tmp_path: Path, host: Wallet, amount: int
                 ) -> Certificate:
    mint = make_wallet(c, tmp_path / "mint.db", c.mint)
    await mint.mint(amount)
    cert = await mint.send(host.key, amount, "pay")
    await mint.close()
    mint.store.close()
    return cert


def down(c: LocalCommittee, is_down: bool) -> None:
    for n in c.notaries:
        (c.transport.down.add if is_down else c.transport.down.discard)(n.public_key)


async def test_accept_offline_then_certify_after_a_crash(
        tmp_path: Path, committee4: LocalCommittee) -> None:
    c = committee4
    ident = Identity.generate()
    host = make_wallet(c, tmp_path / "host.db", ident)
    await host.ensure_open()
    cert = await funded(c, tmp_path, host, 700)
    down(c, True)
    calls = c.transport.calls
    assert host.accept(cert) == 700
    assert c.transport.calls == calls   # not one notary call
    assert host.uncertified.is_set()
    assert recvs(host) == [(1, False)] and host.balance() == 0
    assert host.store.balance(host.key, include_pending=True) == 700
    assert host.accept(cert) == 700 and len(recvs(host)) == 1   # idempotent
    with pytest.raises(LedgerError):
        await host.resume()   # the committee is unreachable: stays pending
    # crash: the pending RECV and its receipt survive in the store
    await host.close()
    host.store.close()
    again = make_wallet(c, tmp_path / "host.db", ident)
    assert recvs(again) == [(1, False)]
    assert again.accept(cert) == 700 and len(recvs(again)) == 1   # no second credit
    down(c, False)
    await again.resume()
    assert recvs(again) == [(1, True)] and again.balance() == 700
    assert await again.sync() == 0   # the notaries' inbox copy is not received again
    assert len(recvs(again)) == 1
    for n in c.notaries:
        figures = core(c.services[n.public_key].supply())
        assert figures["minted"] == 700 and figures["pending"] == 0, figures


async def test_an_offline_receipt_is_certified_by_the_next_operation(
        tmp_path: Path, committee: LocalCommittee) -> None:
    c = committee
    host = make_wallet(c, tmp_path / "host.db")
    await host.ensure_open()
    cert = await funded(c, tmp_path, host, 500)
    other = await funded(c, tmp_path, host, 300)
    # a checkpoint in flight (the notary stalls) while a receipt is accepted offline
    gate, asked = asyncio.Event(), asyncio.Event()
    real = c.transport.call

    async def gated(notary: Any, name: str, args: dict[str, Any]) -> dict[str, Any]:
        asked.set()
        await gate.wait()
        return await real(notary, name, args)

    c.transport.call = gated  # type: ignore[method-assign]
    checkpoint = asyncio.create_task(host.checkpoint())
    await asyncio.wait_for(asked.wait(), 5)
    assert host.accept(cert) == 500   # not blocked by the wallet's lock
    gate.set()
    await asyncio.wait_for(checkpoint, 5)
    c.transport.call = real  # type: ignore[method-assign]
    assert [e.kind for e, _ in host.store.pending_entries(host.key)] == ["RECV"]
    paid = await host.send(Identity.generate().public_key, 200, "spend")
    assert paid.entry.seq == host.store.head_seq(host.key)
    assert host.store.pending_entries(host.key) == []
    assert host.balance() == 300
    await host.receive(other)
    assert host.balance() == 600


async def test_accept_refuses_what_is_not_a_payment_to_us(
        tmp_path: Path, committee: LocalCommittee) -> None:
    c = committee
    host = make_wallet(c, tmp_path / "host.db")
    cert = await funded(c, tmp_path, host, 100)
    with pytest.raises(LedgerError, match="not open"):
        host.accept(cert)   # no chain yet
    await host.ensure_open()
    stranger = make_wallet(c, tmp_path / "other.db")
    await stranger.ensure_open()
    with pytest.raises(LedgerError, match="not a SEND to this wallet"):
        stranger.accept(cert)
    forged = Certificate(cert.entry, cert.owner_sig, ())
    with pytest.raises(LedgerError):
        host.accept(forged)
    assert recvs(host) == [] and recvs(stranger) == []
