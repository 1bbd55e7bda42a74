"""Notary rules: in-order certification, durable locks, evidence, supply."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from ledger_helpers import core, dump

from p2pmarket.api.rpc import CallContext
from p2pmarket.core.domains import AUDIT_ENTRY, CHAIN_ENTRY
from p2pmarket.core.identity import Identity
from p2pmarket.ledger import notaryrpc
from p2pmarket.ledger.certificate import Certificate, notary_sig_valid
from p2pmarket.ledger.chain import (
    MAX_AMOUNT,
    Authenticator,
    Entry,
    auth_message,
    equivocation,
    next_entry,
    recv_body,
)
from p2pmarket.ledger.errors import LedgerError
from p2pmarket.ledger.notary import NotaryService
from tests.support.local_committee import LocalCommittee

CTX = CallContext(sender=bytes(32), ts=0)


def submit(service: NotaryService, chain: Any, entry: Entry | None = None) -> bytes:
    entry = chain.entries[-1] if entry is None else entry
    return service.certify(entry, Authenticator.sign(chain.ident, entry).sig,
                           send=chain.sends.get(entry.seq))


def cert_of(service: NotaryService, chain: Any, entry: Entry, sig: bytes) -> Certificate:
    return Certificate(entry, Authenticator.sign(chain.ident, entry).sig,
                       ((service.key, sig),))


@pytest.fixture
def notary(committee: LocalCommittee) -> NotaryService:
    return committee.services[committee.notaries[0].public_key]


@pytest.fixture
def funded(committee: LocalCommittee, notary: NotaryService, chain_of: Any) -> Any:
    """The mint's chain (OPEN, MINT 100) certified at ``notary``."""
    mint = chain_of(committee.mint)
    mint.open()
    submit(notary, mint)
    mint.mint(100)
    submit(notary, mint)
    return mint


def test_resubmission_and_conflict_within_one_transaction(notary: NotaryService,
                                                          funded: Any) -> None:
    """Entries certified in a transaction are written at its end; a resubmission or a
    conflicting entry later in the same transaction still sees them."""
    from p2pmarket.ledger.notarystate import Item

    alice = Identity.generate().public_key
    send = funded.send(alice, 5, "a")
    other = next_entry(funded.key, funded.entries[-2], "SEND",
                       {"to": alice, "amount": 6, "memo": "b"}, 1)
    assert other.seq == send.seq
    sig, other_sig = (Authenticator.sign(funded.ident, e).sig for e in (send, other))
    first, again, conflict = notary.certify_items(
        [Item(send, sig), Item(send, sig), Item(other, other_sig)])
    assert isinstance(first, bytes) and again == first
    assert isinstance(conflict, LedgerError) and "already certified" in conflict.message
    assert notary.authenticator(funded.key, send.seq) == Authenticator.of(send, sig)
    [(certified, bad)] = notary.evidence(funded.key)
    assert certified.hash == send.hash() and bad.hash == other.hash()
    assert notary.stats()["entries"] == 3


def test_certifies_in_order_and_tracks_supply(notary: NotaryService, funded: Any,
                                               chain_of: Any) -> None:
    alice = chain_of(Identity.generate())
    send = funded.send(alice.key, 30, "x")
    sig = submit(notary, funded)
    assert notary_sig_valid(send, notary.key, sig)
    assert notary.head(funded.key) == {"owner": funded.key, "seq": 2, "hash": send.hash(),
                                       "balance": 70}
    assert core(notary.supply()) == {"minted": 100, "balances": 70, "pending": 30, "early": 0,
                               "ok": True}
    [inbox] = notary.inbox(alice.key)
    assert inbox.entry == send
    alice.open()
    submit(notary, alice)
    alice.recv(cert_of(notary, funded, send, sig))
    submit(notary, alice)
    assert notary.inbox(alice.key) == []
    assert core(notary.supply()) == {"minted": 100, "balances": 100, "pending": 0, "early": 0,
                               "ok": True}
    assert notary.balance(alice.key) == 30


def test_refusals_leave_state_unchanged(committee: LocalCommittee, notary: NotaryService,
                                        funded: Any, chain_of: Any) -> None:
    alice = chain_of(Identity.generate())
    send = funded.send(alice.key, 30)
    sig = submit(notary, funded)
    good = cert_of(notary, funded, send, sig)
    alice.open()
    submit(notary, alice)
    alice.recv(good)
    submit(notary, alice)
    before = dump(notary)

    def refused(entry: Entry, owner_sig: bytes, match: str,
                send: Certificate | None = None) -> None:
        with pytest.raises(LedgerError, match=match):
            notary.certify(entry, owner_sig, send=send)
        assert dump(notary) == before

    # bad owner signature
    nxt = funded.make("SEND", {"to": alice.key, "amount": 1, "memo": ""})
    refused(nxt, bytes(64), "signature")
    refused(nxt, alice.ident.sign(CHAIN_ENTRY, b"anything"), "signature")
    # the owner's own signature of (owner, seq, hash), but as an audit log entry's
    refused(nxt, funded.ident.sign(AUDIT_ENTRY, auth_message(nxt.owner, nxt.seq, nxt.hash())),
            "signature")
    # seq gap, wrong prev, first entry not OPEN
    gap = Entry(funded.key, 4, nxt.prev, "MINT", {"amount": 1}, 1)
    refused(gap, Authenticator.sign(funded.ident, gap).sig, "next")
    wrong_prev = Entry(funded.key, 3, b"\x01" * 32, "MINT", {"amount": 1}, 1)
    refused(wrong_prev, Authenticator.sign(funded.ident, wrong_prev).sig, "prev")
    bob = chain_of(Identity.generate())
    bob.open()
    not_open = bob.send(alice.key, 1)
    refused(not_open, bob.auths[1].sig, "next")
    # overspend, mint by a non-mint key
    over = funded.make("SEND", {"to": alice.key, "amount": 71, "memo": ""})
    refused(over, Authenticator.sign(funded.ident, over).sig, "insufficient")
    fake_mint = alice.make("MINT", {"amount": 5})
    refused(fake_mint, Authenticator.sign(alice.ident, fake_mint).sig, "mint")
    # RECV: twice; without the SEND certificate beside it; with one lacking a quorum,
    # of another SEND, or not matching what the RECV names
    again = alice.make("RECV", recv_body(send))
    refused(again, Authenticator.sign(alice.ident, again).sig, "already received", good)
    send2 = funded.send(alice.key, 5, "two")
    fresh = alice.make("RECV", recv_body(send2))
    fresh_sig = Authenticator.sign(alice.ident, fresh).sig
    refused(fresh, fresh_sig, "needs the certificate")
    refused(fresh, fresh_sig, "quorum", Certificate(send2, funded.auths[-1].sig, ()))
    refused(fresh, fresh_sig, "does not match", good)
    cert2 = cert_of(notary, funded, send2, submit(notary, funded))
    before = dump(notary)  # send2 is certified now: the new baseline
    for name, value in (("amount", 6), ("memo", "one"), ("hash", bytes(32))):
        bad = alice.make("RECV", {**recv_body(send2), name: value})
        refused(bad, Authenticator.sign(alice.ident, bad).sig, "does not match", cert2)


def test_resubmitting_is_idempotent(notary: NotaryService, funded: Any) -> None:
    before = dump(notary)
    sig = submit(notary, funded, funded.entries[1])
    assert sig == submit(notary, funded, funded.entries[1])
    assert dump(notary) == before
    assert notary.supply()["minted"] == 100


def test_conflicting_entry_gives_evidence(notary: NotaryService, funded: Any) -> None:
    other = Entry(funded.key, 1, funded.entries[0].hash(), "MINT", {"amount": 999}, 5)
    other_sig = Authenticator.sign(funded.ident, other).sig
    before = dump(notary)
    with pytest.raises(LedgerError, match="different entry") as err:
        notary.certify(other, other_sig)
    assert dump(notary, skip=("nt_evidence",)) == before  # only the evidence is kept
    [(certified, kept)] = notary.evidence(funded.key)
    assert certified == funded.auths[1] and kept == Authenticator.of(other, other_sig)
    assert equivocation(certified, kept)
    evidence = Authenticator.from_wire(err.value.value["authenticator"])
    submitted = Authenticator.from_wire(err.value.value["submitted"])
    # two valid owner signatures for one (owner, seq): proof of equivocation
    assert evidence.verify() and submitted.verify()
    assert (evidence.owner, evidence.seq) == (submitted.owner, submitted.seq)
    assert evidence.hash != submitted.hash
    assert evidence == funded.auths[1]


def test_lock_survives_reopening(tmp_path: Path, committee: LocalCommittee,
                                 notary: NotaryService, funded: Any) -> None:
    sig = submit(notary, funded, funded.entries[1])
    committee.reopen(tmp_path / "notaries")
    reopened = committee.services[notary.key]
    assert reopened is not notary
    other = Entry(funded.key, 1, funded.entries[0].hash(), "MINT", {"amount": 999}, 5)
    with pytest.raises(LedgerError, match="different entry"):
        reopened.certify(other, Authenticator.sign(funded.ident, other).sig)
    assert submit(reopened, funded, funded.entries[1]) == sig
    assert reopened.head(funded.key)["seq"] == 1
    assert reopened.supply()["minted"] == 100


def test_only_committee_members_serve(tmp_path: Path, committee: LocalCommittee) -> None:
    with pytest.raises(LedgerError, match="committee"):
        NotaryService(Identity.generate(), committee.genesis, tmp_path / "x.db")


def test_total_supply_is_capped(notary: NotaryService, funded: Any) -> None:
    funded.mint(MAX_AMOUNT - 100)
    submit(notary, funded)
    big = funded.make("MINT", {"amount": 1})
    with pytest.raises(LedgerError, match="maximum"):
        submit(notary, funded, big)


async def test_handlers(notary: NotaryService, funded: Any, chain_of: Any) -> None:
    h = notaryrpc.handlers(notary)
    assert set(h) == {"certify", "certify_batch", "deliver", "inbox", "head", "supply",
                      "evidence"}
    alice = chain_of(Identity.generate())
    send = funded.send(alice.key, 10, "m")
    result = await h["certify"](CTX, {"entry": send.to_wire(), "sig": funded.auths[-1].sig})
    assert result["notary"] == notary.key
    assert notary_sig_valid(send, notary.key, result["sig"])
    inbox = await h["inbox"](CTX, {"owner": alice.key})
    assert [Certificate.from_wire(c).entry for c in inbox["certs"]] == [send]
    assert inbox["more"] is False
    head = await h["head"](CTX, {"owner": funded.key})
    assert (head["seq"], head["hash"], head["balance"]) == (2, send.hash(), 90)
    empty = await h["head"](CTX, {"owner": alice.key})
    assert (empty["seq"], empty["balance"]) == (-1, 0)
    assert (await h["supply"](CTX, {}))["ok"] is True


@pytest.mark.parametrize("name,args", [
    ("certify", {}),
    ("certify", {"entry": "x", "sig": bytes(64)}),
    ("certify", {"entry": {}, "sig": bytes(64)}),
    ("certify", {"entry": None, "sig": b"short", "extra": 1}),
    ("inbox", {"owner": b"short"}),
    ("inbox", {"owner": "a" * 32}),
    ("inbox", {}),
    ("head", {"owner": 5}),
    ("head", {"owner": bytes(32), "x": 1}),
    ("supply", {"x": 1}),
])
async def test_handlers_refuse_bad_arguments(notary: NotaryService, funded: Any,
                                             name: str, args: dict[str, Any]) -> None:
    before = dump(notary)
    with pytest.raises(LedgerError):
        await notaryrpc.handlers(notary)[name](CTX, args)
    assert dump(notary) == before


async def test_certify_handler_refuses_bad_signature(notary: NotaryService,
                                                     funded: Any) -> None:
    nxt = funded.make("MINT", {"amount": 1})
    before = dump(notary)
    with pytest.raises(LedgerError):
        await notaryrpc.handlers(notary)["certify"](CTX, {"entry": nxt.to_wire(), "sig": bytes(64)})
    assert dump(notary) == before


def test_recv_before_send_is_accounted_as_early(committee4: LocalCommittee,
                                                chain_of: Any) -> None:
    """A notary that missed a SEND may still certify its RECV; supply stays consistent."""
    services = [committee4.services[n.public_key] for n in committee4.notaries]
    late = services[3]
    mint = chain_of(committee4.mint)
    alice = chain_of(Identity.generate())
    for chain in (mint, alice):
        chain.open()
        for s in services:
            submit(s, chain)
    mint.mint(50)
    for s in services:
        submit(s, mint)
    send = mint.send(alice.key, 20)
    sigs = tuple((s.key, submit(s, mint)) for s in services[:3])  # the late one misses it
    cert = Certificate(send, mint.auths[-1].sig, sigs)
    alice.recv(cert)
    for s in services:
        submit(s, alice)
    assert core(late.supply()) == {"minted": 50, "balances": 70, "pending": 0, "early": 20,
                             "ok": True}
    assert core(services[0].supply()) == {"minted": 50, "balances": 50, "pending": 0, "early": 0,
                                    "ok": True}
    submit(late, mint)  # catches up with the SEND: matched, no inbox entry
    assert core(late.supply()) == {"minted": 50, "balances": 50, "pending": 0, "early": 0,
                             "ok": True}
    assert late.inbox(alice.key) == []
