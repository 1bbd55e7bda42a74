"""Notary batches: certify_batch, catch-up with certificates, deliver, evidence, supply."""

from __future__ import annotations

from typing import Any

import pytest
from ledger_helpers import core, dump

from p2pmarket.api.rpc import CallContext
from p2pmarket.core.identity import Identity
from p2pmarket.ledger import notaryrpc
from p2pmarket.ledger.certificate import Certificate, notary_sig_valid
from p2pmarket.ledger.chain import CHECKPOINT, Authenticator, Entry
from p2pmarket.ledger.errors import LedgerError
from p2pmarket.ledger.notary import NotaryService
from p2pmarket.ledger.notarystate import Item
from p2pmarket.ledger.supply import audit_chains, summarize
from tests.support.local_committee import LocalCommittee

CTX = CallContext(sender=bytes(32), ts=0)


def services(c: LocalCommittee) -> list[NotaryService]:
    return [c.services[n.public_key] for n in c.notaries]


def items(chain: Any, start: int = 0) -> list[Item]:
    return [Item(e, a.sig, send=chain.sends.get(e.seq))
            for e, a in zip(chain.entries[start:], chain.auths[start:], strict=True)]


def batch_args(chain: Any, start: int = 0, certs: dict[int, Certificate] | None = None
               ) -> dict[str, Any]:
    certs = certs or {}
    return {"entries": [e.encode() for e in chain.entries[start:]],
            "sigs": [a.sig for a in chain.auths[start:]],
            "certs": [[[k, s] for k, s in certs[e.seq].notary_sigs] if e.seq in certs else []
                      for e in chain.entries[start:]]}


def certify_all(svcs: list[NotaryService], chain: Any, start: int = 0) -> list[Certificate]:
    """Certify chain.entries[start:] at every service; the quorum certificates."""
    sigs = [s.certify_items(items(chain, start)) for s in svcs]
    out = []
    for i, (e, a) in enumerate(zip(chain.entries[start:], chain.auths[start:], strict=True)):
        pairs = tuple(sorted((s.key, r[i]) for s, r in zip(svcs, sigs, strict=True)
                             if isinstance(r[i], bytes)))
        out.append(Certificate(e, a.sig, pairs[:3]))
    return out


@pytest.fixture
def world(committee4: LocalCommittee, chain_of: Any) -> Any:
    mint = chain_of(committee4.mint)
    alice = chain_of(Identity.generate())
    mint.open()
    mint.mint(1000)
    alice.open()
    certify_all(services(committee4), mint)
    certify_all(services(committee4), alice)
    return committee4, mint, alice


async def test_certify_batch_in_order_with_per_item_errors(world: Any) -> None:
    c, mint, alice = world
    s0 = services(c)[0]
    start = len(mint.entries)
    for amount in (10, 20, 2000, 30):  # the third overspends: it and the fourth fail
        mint.send(alice.key, amount)
    result = await notaryrpc.handlers(s0)["certify_batch"](CTX, batch_args(mint, start))
    sigs = result["sigs"]
    assert [isinstance(x, bytes) for x in sigs] == [True, True, False, False]
    assert all(notary_sig_valid(e, s0.key, sig)
               for e, sig in zip(mint.entries[start:start + 2], sigs[:2], strict=False))
    [[i2, msg2, _], [i3, msg3, val3]] = result["errors"]
    assert (i2, i3) == (2, 3) and "insufficient" in msg2 and "next" in msg3
    assert val3 == {"expected": start + 2, "got": start + 3}
    assert s0.head(mint.key)["seq"] == start + 1
    # resubmitting the whole batch: same signatures, same refusals, nothing new
    before = dump(s0)
    again = await notaryrpc.handlers(s0)["certify_batch"](CTX, batch_args(mint, start))
    assert again["sigs"][:2] == sigs[:2]
    assert dump(s0) == before


@pytest.mark.parametrize("args", [
    {},
    {"entries": [], "sigs": [], "certs": []},
    {"entries": [b"x"], "sigs": [bytes(64)], "certs": [[]]},
    {"entries": ["not bytes"], "sigs": [bytes(64)], "certs": [[]]},
    {"entries": [b"\x80"], "sigs": [bytes(64), bytes(64)], "certs": [[]]},
    {"entries": [b"\x80"] * 1025, "sigs": [bytes(64)] * 1025, "certs": [[]] * 1025},
])
async def test_malformed_batches_change_nothing(world: Any, args: dict[str, Any]) -> None:
    c, _, _ = world
    s0 = services(c)[0]
    before = dump(s0)
    with pytest.raises(LedgerError):
        await notaryrpc.handlers(s0)["certify_batch"](CTX, args)
    assert dump(s0) == before


async def test_malformed_item_refuses_the_whole_batch(world: Any) -> None:
    c, mint, alice = world
    s0 = services(c)[0]
    start = len(mint.entries)
    mint.send(alice.key, 1)
    args = batch_args(mint, start)
    args["entries"].append(args["entries"][0][:-1])  # truncated entry
    args["sigs"].append(bytes(64))
    args["certs"].append([])
    before = dump(s0)
    with pytest.raises(LedgerError):
        await notaryrpc.handlers(s0)["certify_batch"](CTX, args)
    assert dump(s0) == before


async def test_lagging_notary_catches_up_from_certificates(world: Any) -> None:
    c, mint, alice = world
    svcs = services(c)
    late = svcs[3]
    start = len(mint.entries)
    for amount in (1, 2, 3):
        mint.send(alice.key, amount)
    certs = certify_all(svcs[:3], mint, start)  # notary 3 was down
    mint.send(alice.key, 4)
    # the new entry alone does not follow its head
    [refused] = late.certify_items(items(mint, len(mint.entries) - 1))
    assert isinstance(refused, LedgerError) and refused.value["expected"] == start
    # given the missing certified entries with their certificates, it advances
    by_seq = {ct.entry.seq: ct for ct in certs}
    result = await notaryrpc.handlers(late)["certify_batch"](CTX, batch_args(mint, start, by_seq))
    assert all(isinstance(x, bytes) for x in result["sigs"]) and result["errors"] == []
    assert late.head(mint.key) == {"owner": mint.key, "seq": len(mint.entries) - 1,
                                   "hash": mint.entries[-1].hash(), "balance": 990}
    assert late.supply()["ok"] and late.supply()["pending"] == 10


async def test_catch_up_certificate_is_checked(world: Any) -> None:
    c, mint, alice = world
    svcs = services(c)
    start = len(mint.entries)
    mint.send(alice.key, 1)
    [cert] = certify_all(svcs[:3], mint, start)
    weak = Certificate(cert.entry, cert.owner_sig, cert.notary_sigs[:2])
    before = dump(svcs[3])
    result = await notaryrpc.handlers(svcs[3])["certify_batch"](CTX, batch_args(mint, start,
                                                                       {start: weak}))
    assert result["sigs"] == [None] and "quorum" in result["errors"][0][1]
    assert dump(svcs[3]) == before


async def test_certified_entries_pass_a_shunning_notary(committee4: LocalCommittee,
                                                         chain_of: Any) -> None:
    svcs = services(committee4)
    mint = chain_of(committee4.mint)
    mint.open()
    [cert] = certify_all(svcs[:3], mint)
    svcs[3].shun = lambda owner: owner == mint.key
    [refused] = svcs[3].certify_items(items(mint))
    assert isinstance(refused, LedgerError) and refused.value == "shunned"
    [sig] = svcs[3].certify_items([Item(cert.entry, cert.owner_sig, cert.notary_sigs)])
    assert isinstance(sig, bytes)


async def test_deliver_fills_the_inbox_of_a_notary_that_missed_the_send(world: Any) -> None:
    c, mint, alice = world
    svcs = services(c)
    start = len(mint.entries)
    mint.send(alice.key, 25, "rent")
    [cert] = certify_all(svcs[:3], mint, start)
    late = svcs[3]
    assert late.inbox(alice.key) == []
    result = await notaryrpc.handlers(late)["deliver"](CTX, {"certs": [cert.encode()]})
    assert result == {"notary": late.key, "accepted": 1, "errors": []}
    [held] = late.inbox(alice.key)
    assert held == cert  # every signature: a whole certificate from one notary
    # delivered but not certified here: not counted in its supply
    assert late.supply()["delivered"] == 25 and late.supply()["pending"] == 0
    assert late.supply()["ok"]
    # once it catches up with the SEND it counts it and adds its own signature
    late.certify_items(items(mint, start))
    [held] = late.inbox(alice.key)
    assert late.key in held.keys and late.supply()["pending"] == 25
    assert late.supply()["delivered"] == 0 and late.supply()["ok"]
    # delivering again, or to a notary that certified it, changes nothing but signatures
    await notaryrpc.handlers(svcs[0])["deliver"](CTX, {"certs": [cert.encode()]})
    assert set(svcs[0].inbox(alice.key)[0].keys) == cert.keys
    # after the RECV the certificate leaves the inbox; a late deliver is ignored
    alice.recv(cert)
    certify_all(svcs, alice, len(alice.entries) - 1)
    before = dump(late)
    result = await notaryrpc.handlers(late)["deliver"](CTX, {"certs": [cert.encode()]})
    assert result["accepted"] == 1
    assert dump(late) == before and late.inbox(alice.key) == []
    assert all(core(s.supply()) == {"minted": 1000, "balances": 1000, "pending": 0,
                                    "early": 0, "ok": True} for s in svcs)


async def test_deliver_refuses_bad_certificates(world: Any) -> None:
    c, mint, alice = world
    svcs = services(c)
    start = len(mint.entries)
    mint.send(alice.key, 5)
    [cert] = certify_all(svcs[:3], mint, start)
    s3 = svcs[3]
    weak = Certificate(cert.entry, cert.owner_sig, cert.notary_sigs[:2])
    forged = Certificate(cert.entry, bytes(64), cert.notary_sigs)
    mint_cert = certify_all(svcs[:3], mint, 1)[0]  # a MINT
    before = dump(s3)
    result = await notaryrpc.handlers(s3)["deliver"](
        CTX, {"certs": [weak.encode(), forged.encode(), mint_cert.encode()]})
    assert result["accepted"] == 0 and [e[0] for e in result["errors"]] == [0, 1, 2]
    assert dump(s3) == before
    with pytest.raises(LedgerError):
        await notaryrpc.handlers(s3)["deliver"](CTX, {"certs": [b"\x93garbage"]})
    assert dump(s3) == before


async def test_conflicting_certificate_at_a_certified_seq(world: Any, chain_of: Any) -> None:
    """A forked payer whose two SENDs each reached some notaries: delivering one to a
    notary that certified the other is refused, and the evidence kept."""
    c, mint, alice = world
    svcs = services(c)
    start = len(mint.entries)
    x = mint.make("SEND", {"to": alice.key, "amount": 5, "memo": "x"})
    y = Entry(mint.key, x.seq, x.prev, "SEND", {"to": alice.key, "amount": 6, "memo": "y"}, 2)
    sx, sy = Authenticator.sign(mint.ident, x).sig, Authenticator.sign(mint.ident, y).sig
    assert isinstance(svcs[3].certify(x, sx), bytes)
    ysigs = tuple(sorted((s.key, s.certify(y, sy)) for s in svcs[:3]))
    ycert = Certificate(y, sy, ysigs)
    result = await notaryrpc.handlers(svcs[3])["deliver"](CTX, {"certs": [ycert.encode()]})
    assert result["accepted"] == 0 and "different entry" in result["errors"][0][1]
    [(certified, other)] = svcs[3].evidence(mint.key)
    assert certified.hash == x.hash() and other.hash == y.hash()
    proofs = (await notaryrpc.handlers(svcs[3])["evidence"](CTX, {"owner": mint.key}))["proofs"]
    assert len(proofs) == 1 and proofs[0]["certified"]["seq"] == start


def test_audit_chains_and_summary(world: Any, chain_of: Any) -> None:
    c, mint, alice = world
    svcs = services(c)
    start = len(mint.entries)
    mint.send(alice.key, 30)
    mint.send(alice.key, 12)
    certs = certify_all(svcs, mint, start)
    alice.recv(certs[0])
    alice.add(CHECKPOINT, {"balance": 30})
    certify_all(svcs, alice, 1)
    chains = {ch.key: (ch.entries, ch.auths) for ch in (mint, alice)}
    assert audit_chains(chains, c.genesis) == {"minted": 1000, "balances": 988,
                                                "in_flight": 12, "ok": True, "chains": 2}
    rows = [s.supply() for s in svcs]
    summary = summarize(c.genesis, rows)
    assert summary["ok"] and summary["supply"] == 1000 and summary["agree"] == 4
    lagging = dict(rows[3], minted=900, balances=900 - 12)
    broken = dict(rows[2], balances=1)
    summary = summarize(c.genesis, [rows[0], rows[1], broken, lagging])
    assert [n["status"] for n in summary["notaries"]] == ["ok", "ok", "mismatch", "lagging"]
    assert summary["errors"] == 2 and summary["supply"] is None  # only 2 of 3 agree
    summary = summarize(c.genesis, [rows[0], rows[1], rows[2], {"error": "down"}])
    assert summary["supply"] == 1000 and summary["errors"] == 1
