"""Wallet flows over an in-process committee."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from ledger_helpers import core

from p2pmarket.core.errors import RemoteError
from p2pmarket.core.genesis import NotaryInfo
from p2pmarket.core.identity import Identity
from p2pmarket.ledger.certificate import Certificate, verify_certificate
from p2pmarket.ledger.chain import MINT, OPEN, RECV, SEND
from p2pmarket.ledger.committee import NotaryTransport
from p2pmarket.ledger.errors import LedgerError
from p2pmarket.ledger.store import ChainStore
from p2pmarket.ledger.wallet import Wallet
from tests.support.local_committee import LocalCommittee, LocalTransport


def make_wallet(c: LocalCommittee, path: Path, ident: Identity | None = None,
                transport: NotaryTransport | None = None) -> Wallet:
    return Wallet(ident or Identity.generate(), ChainStore(path), c.genesis,
                  transport or c.transport)


def supplies(c: LocalCommittee) -> list[dict[str, Any]]:
    return [c.services[n.public_key].supply() for n in c.notaries]


async def test_mint_send_sync(tmp_path: Path, committee: LocalCommittee) -> None:
    mint = make_wallet(committee, tmp_path / "mint.db", committee.mint)
    alice = make_wallet(committee, tmp_path / "alice.db")
    await mint.mint(1_000)
    cert = await mint.send(alice.key, 250, "first")
    verify_certificate(cert, committee.genesis)
    assert cert.entry.kind == SEND and cert.entry.body["to"] == alice.key
    assert mint.balance() == 750 and alice.balance() == 0
    assert core(supplies(committee)[0]) == {"minted": 1000, "balances": 750, "pending": 250,
                                      "early": 0, "ok": True}
    assert await alice.sync() == 250
    assert alice.balance() == 250
    assert await alice.sync() == 0  # nothing new
    assert [h["kind"] for h in alice.history()] == [OPEN, RECV]
    assert [h["kind"] for h in mint.history()] == [OPEN, MINT, SEND]
    assert alice.verify() == 250 and mint.verify() == 750
    assert core(supplies(committee)[0]) == {"minted": 1000, "balances": 1000, "pending": 0,
                                      "early": 0, "ok": True}
    # alice pays back; mint receives directly from the certificate
    back = await alice.send(mint.key, 50)
    assert await mint.receive(back) == 50
    assert mint.balance() == 800 and alice.balance() == 200


async def test_receive_is_idempotent(tmp_path: Path, committee: LocalCommittee) -> None:
    mint = make_wallet(committee, tmp_path / "mint.db", committee.mint)
    alice = make_wallet(committee, tmp_path / "alice.db")
    await mint.mint(100)
    cert = await mint.send(alice.key, 40)
    assert not alice.has_received(cert)
    assert await alice.receive(cert) == 40
    assert alice.has_received(cert)
    entries = len(alice.history())
    assert await alice.receive(cert) == 40
    assert len(alice.history()) == entries
    assert alice.balance() == 40
    assert await alice.sync() == 0


async def test_receive_refuses_bad_certificates(tmp_path: Path,
                                                committee: LocalCommittee) -> None:
    mint = make_wallet(committee, tmp_path / "mint.db", committee.mint)
    alice = make_wallet(committee, tmp_path / "alice.db")
    bob = make_wallet(committee, tmp_path / "bob.db")
    await mint.mint(100)
    cert = await mint.send(alice.key, 40)
    with pytest.raises(LedgerError, match="not a SEND to this wallet"):
        await bob.receive(cert)
    forged = Certificate(cert.entry, cert.owner_sig, ())
    with pytest.raises(LedgerError, match="quorum"):
        await alice.receive(forged)
    with pytest.raises(LedgerError):
        await alice.receive(await mint.mint(1))  # a MINT certificate
    assert alice.history() == [] and bob.history() == []


async def test_refused_operations_append_nothing(tmp_path: Path,
                                                 committee: LocalCommittee) -> None:
    mint = make_wallet(committee, tmp_path / "mint.db", committee.mint)
    alice = make_wallet(committee, tmp_path / "alice.db")
    with pytest.raises(LedgerError, match="mint"):
        await alice.mint(5)
    await mint.mint(10)
    before = mint.history()
    for bad in [(alice.key, 11, ""), (alice.key, 0, ""), (alice.key, -1, ""),
                (mint.key, 1, ""), (b"short", 1, ""), (alice.key, 1, "m" * 300)]:
        with pytest.raises(LedgerError):
            await mint.send(*bad)
    assert mint.history() == before
    assert mint.store.pending(mint.key) is None
    assert supplies(committee)[0]["minted"] == 10


async def test_pending_entry_resumes_after_crash(tmp_path: Path,
                                                 committee: LocalCommittee) -> None:
    mint = make_wallet(committee, tmp_path / "mint.db", committee.mint)
    alice = Identity.generate()
    await mint.mint(100)
    committee.transport.down.add(committee.notaries[0].public_key)
    with pytest.raises(LedgerError, match="quorum"):
        await mint.send(alice.public_key, 30, "while down")
    pending = mint.store.pending(mint.key)
    assert pending is not None and pending[0].kind == SEND
    assert mint.balance() == 100
    mint.store.close()  # crash before certification

    committee.transport.down.clear()
    again = make_wallet(committee, tmp_path / "mint.db", committee.mint)
    cert = await again.resume()
    assert cert is not None and cert.entry == pending[0]
    assert again.store.pending(again.key) is None
    assert again.balance() == 70
    assert await again.resume() is None
    assert again.verify() == 70
    assert core(supplies(committee)[0]) == {"minted": 100, "balances": 70, "pending": 30,
                                      "early": 0, "ok": True}


class LosingTransport:
    """Delivers requests but loses the first ``lose`` certify replies."""

    def __init__(self, inner: LocalTransport, lose: int) -> None:
        self.inner = inner
        self.lose = lose

    async def call(self, notary: NotaryInfo, name: str,
                   args: dict[str, Any]) -> dict[str, Any]:
        result = await self.inner.call(notary, name, args)
        if name == "certify_batch" and self.lose > 0:
            self.lose -= 1
            raise RemoteError("reply lost", None)
        return result


async def test_lost_replies_are_recovered_by_resubmitting(
        tmp_path: Path, committee: LocalCommittee) -> None:
    lossy = LosingTransport(committee.transport, lose=1)
    mint = make_wallet(committee, tmp_path / "mint.db", committee.mint, transport=lossy)
    with pytest.raises(LedgerError, match="stays pending"):
        await mint.mint(5)  # OPEN and MINT certified by the notary, but we never heard
    assert len(mint.store.pending_entries(mint.key)) == 2
    cert = await mint.resume()  # resubmitted: the same signatures, nothing new at the notary
    assert cert is not None and cert.entry.kind == "MINT"
    assert mint.balance() == 5 and mint.verify() == 5
    assert supplies(committee)[0]["minted"] == 5
    await mint.mint(1)
    assert mint.balance() == 6 and supplies(committee)[0]["minted"] == 6


async def test_committee_of_four_with_one_down(tmp_path: Path,
                                               committee4: LocalCommittee) -> None:
    c = committee4
    c.transport.down.add(c.notaries[3].public_key)
    mint = make_wallet(c, tmp_path / "mint.db", c.mint)
    alice = make_wallet(c, tmp_path / "alice.db")
    await mint.mint(500)
    cert = await mint.send(alice.key, 120)
    assert len(cert.notary_sigs) == 3
    assert cert.valid_signers(c.genesis) == {n.public_key for n in c.notaries[:3]}
    assert await alice.sync() == 120  # merges single-notary inbox entries into a quorum
    assert alice.balance() == 120 and mint.balance() == 380
    for s in supplies(c)[:3]:
        assert core(s) == {"minted": 500, "balances": 500, "pending": 0, "early": 0, "ok": True}
    assert supplies(c)[3]["minted"] == 0
    # a second notary down: no quorum, the entry stays pending until one returns
    c.transport.down.add(c.notaries[2].public_key)
    with pytest.raises(LedgerError, match="quorum"):
        await alice.send(mint.key, 20)
    assert alice.store.pending(alice.key) is not None
    c.transport.down.discard(c.notaries[2].public_key)
    cert2 = await alice.resume()
    assert cert2 is not None
    assert await mint.receive(cert2) == 20
    assert mint.balance() == 400 and alice.balance() == 100
    assert mint.verify() == 400 and alice.verify() == 100


async def test_sync_needs_a_quorum_of_inboxes(tmp_path: Path,
                                              committee4: LocalCommittee) -> None:
    c = committee4
    mint = make_wallet(c, tmp_path / "mint.db", c.mint)
    alice = make_wallet(c, tmp_path / "alice.db")
    await alice.ensure_open()
    await mint.mint(10)
    await mint.send(alice.key, 10)
    for n in c.notaries[:2]:
        c.transport.down.add(n.public_key)
    assert await alice.sync() == 0  # only two inboxes answer: not a certificate
    c.transport.down.clear()
    assert await alice.sync() == 10
    assert alice.balance() == 10
