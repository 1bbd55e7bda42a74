"""RECVs name their SEND, receipts travel beside them, coverage, pruned certificates."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from ledger_helpers import core, dump

from p2pmarket.api.rpc import CallContext
from p2pmarket.core.identity import Identity
from p2pmarket.ledger import notaryrpc
from p2pmarket.ledger.certificate import Certificate, verify_certificate
from p2pmarket.ledger.chain import RECV, Authenticator, Entry, recv_body
from p2pmarket.ledger.errors import LedgerError
from p2pmarket.ledger.notary import NotaryService
from p2pmarket.ledger.notarystate import Item
from p2pmarket.ledger.store import KEEP_EVERY, ChainStore
from p2pmarket.ledger.wallet import Wallet
from tests.support.local_committee import LocalCommittee

CTX = CallContext(sender=bytes(32), ts=0)


def services(c: LocalCommittee) -> list[NotaryService]:
    return [c.services[n.public_key] for n in c.notaries]


def wallet(c: LocalCommittee, path: Path, ident: Identity | None = None,
           max_batch: int = 512) -> Wallet:
    return Wallet(ident or Identity.generate(), ChainStore(path), c.genesis, c.transport,
                  max_batch=max_batch)


def kept(store: ChainStore, owner: bytes) -> list[int]:
    return [e.seq for e, _, sigs in store.segment(owner, 0, store.head_seq(owner)) if sigs]


def certify_at(svcs: list[NotaryService], chain: Any, start: int) -> list[Certificate]:
    """Certify chain.entries[start:] (SEND certificates beside RECVs) at ``svcs``."""
    items = [Item(e, a.sig, send=chain.sends.get(e.seq))
             for e, a in zip(chain.entries[start:], chain.auths[start:], strict=True)]
    results = [s.certify_items(items) for s in svcs]
    out = []
    for i, item in enumerate(items):
        sigs = tuple(sorted((s.key, r[i]) for s, r in zip(svcs, results, strict=True)))
        assert all(isinstance(sig, bytes) for _, sig in sigs), results
        out.append(Certificate(item.entry, item.owner_sig, sigs))
    return out


@pytest.fixture
def world(committee4: LocalCommittee, chain_of: Any) -> Any:
    """Mint (OPEN, MINT 1000) and alice (OPEN) certified at every notary."""
    mint, alice = chain_of(committee4.mint), chain_of(Identity.generate())
    mint.open()
    mint.mint(1000)
    alice.open()
    certify_at(services(committee4), mint, 0)
    certify_at(services(committee4), alice, 0)
    return committee4, mint, alice


async def test_wallet_keeps_signatures_only_where_needed(tmp_path: Path,
                                                         committee4: LocalCommittee) -> None:
    c = committee4
    mint = wallet(c, tmp_path / "mint.db", c.mint)
    alice = wallet(c, tmp_path / "alice.db")
    await mint.mint(10**6)
    certs = []
    for start in range(0, 150, 50):
        certs += await mint.send_many([(alice.key, 1 + start + k, "p") for k in range(50)])
    await mint.checkpoint()
    await mint.send(alice.key, 7)
    head = mint.store.head_seq(mint.key)
    assert kept(mint.store, mint.key) == [0, 64, 128, head - 1, head]  # CHECKPOINT at head-1
    assert mint.store.entry(mint.key, head - 1) is not None
    old = certs[10].entry.seq
    assert mint.store.certificate(mint.key, old) is None and mint.store.certified(mint.key, old)
    # the receipts of certified RECVs are gone; history still names each SEND
    assert await alice.sync() == sum(range(1, 151)) + 7
    assert alice.store.conn.execute("SELECT COUNT(*) FROM chain_receipt").fetchone()[0] == 0
    hist = alice.history()
    assert [h["send_seq"] for h in hist if h["kind"] == RECV] == \
        [ct.entry.seq for ct in certs] + [head]
    assert {h["memo"] for h in hist if h["kind"] == RECV} == {"p", ""}
    assert mint.verify(from_checkpoint=True) == mint.balance() and alice.verify() > 0
    await mint.close()
    await alice.close()


async def test_pruned_certificates_are_recovered_from_the_notaries(
        tmp_path: Path, committee4: LocalCommittee) -> None:
    c = committee4
    mint = wallet(c, tmp_path / "mint.db", c.mint)
    await mint.mint(10**6)
    payee = Identity.generate().public_key
    late = c.notaries[3].public_key
    c.transport.down.add(late)  # it misses every SEND below
    certs = await mint.send_many([(payee, 1 + k, f"m{k}") for k in range(100)])
    await mint.flush()
    c.transport.down.discard(late)
    target = certs[5]
    assert mint.store.certificate(mint.key, target.entry.seq) is None
    got = await mint.certificate(target.entry.seq)
    assert got is not None and got.entry == target.entry
    verify_certificate(got, c.genesis)
    assert got.keys == target.keys  # deterministic signatures: the very same ones
    # with a signer down the lagging notary is caught up and makes the quorum
    c.transport.down.add(c.notaries[0].public_key)
    got = await mint.certificate(certs[7].entry.seq)
    assert got is not None and late in got.keys
    verify_certificate(got, c.genesis)
    assert c.services[late].head(mint.key)["seq"] == certs[-1].entry.seq
    # a kept certificate comes from the store; absent or pending: None; no quorum: error
    assert await mint.certificate(certs[-1].entry.seq) == mint.store.certificate(
        mint.key, certs[-1].entry.seq)
    assert await mint.certificate(10_000) is None
    c.transport.down.add(c.notaries[1].public_key)
    with pytest.raises(LedgerError, match="quorum"):
        await mint.certificate(certs[9].entry.seq)
    with pytest.raises(LedgerError):
        await mint.send(payee, 1)
    assert await mint.certificate(mint.store.head_seq(mint.key)) is None  # pending
    await mint.close()


@pytest.mark.parametrize("max_batch", [40, 100])
async def test_lagging_notary_catches_up_past_pruned_certificates(
        tmp_path: Path, committee4: LocalCommittee, max_batch: int) -> None:
    """Catch-up batches end on entries with their certificates (coverage), with RECVs
    replayed without their SEND certificates."""
    c = committee4
    mint = wallet(c, tmp_path / "mint.db", c.mint, max_batch)
    alice = wallet(c, tmp_path / "alice.db", max_batch=max_batch)
    await mint.mint(10**6)
    await alice.ensure_open()
    await mint.flush()
    late = c.notaries[3].public_key
    c.transport.down.add(late)
    certs = await mint.send_many([(alice.key, 1 + k, "x") for k in range(150)])
    await alice.receive_many(certs)
    await alice.checkpoint()
    await alice.send(mint.key, 3)
    for w in (mint, alice):
        await w.flush()
    assert c.services[late].head(alice.key)["seq"] == 0
    c.transport.down.discard(late)
    await mint.send(alice.key, 1)
    await alice.send(mint.key, 2)
    for w in (mint, alice):
        await w.flush()
        assert w.lanes[late].catch_ups == 1
        assert c.services[late].head(w.key) == services(c)[0].head(w.key)
    assert all(core(s.supply()) == core(services(c)[0].supply()) for s in services(c))
    await mint.close()
    await alice.close()


def test_notary_coverage_rule(world: Any, chain_of: Any) -> None:
    c, mint, alice = world
    svcs = services(c)
    late, others = svcs[3], svcs[:3]
    start = len(mint.entries)
    sends = [mint.send(alice.key, 10 + k, "c") for k in range(3)]
    send_certs = certify_at(others, mint, start)
    a_start = len(alice.entries)
    for cert in send_certs:
        alice.recv(cert)
    recv_certs = certify_at(others, alice, a_start)
    bare = [Item(e, a.sig) for e, a in zip(alice.entries[a_start:], alice.auths[a_start:],
                                            strict=True)]
    before = dump(late)
    # no certificate anywhere: a fresh RECV needs its SEND certificate
    results = late.certify_items(bare)
    assert isinstance(results[0], LedgerError) and "needs the certificate" in results[0].message
    # a last item whose certificate lacks a quorum covers nothing
    weak = recv_certs[-1].notary_sigs[:2]
    results = late.certify_items([*bare[:-1], Item(bare[-1].entry, bare[-1].owner_sig, weak)])
    assert all(isinstance(r, LedgerError) for r in results)
    # a broken link (another entry at the first seq) breaks the coverage
    forked = Entry(alice.key, a_start, alice.entries[a_start - 1].hash(), RECV,
                   recv_body(sends[0]), 9)
    results = late.certify_items([Item(forked, Authenticator.sign(alice.ident, forked).sig),
                                  *bare[1:-1], Item(bare[-1].entry, bare[-1].owner_sig,
                                                    recv_certs[-1].notary_sigs)])
    assert isinstance(results[0], LedgerError) and "needs the certificate" in results[0].message
    assert dump(late) == before  # every refusal above changed nothing
    # the notary also missed the SENDs: catch up the payer, then the payee's RECVs
    # are covered by the last one's certificate: replayed without SEND certificates
    late.certify_items([Item(e, a.sig) for e, a in zip(mint.entries[start:-1],
                                                       mint.auths[start:-1], strict=True)]
                       + [Item(sends[-1], mint.auths[-1].sig, send_certs[-1].notary_sigs)])
    results = late.certify_items([*bare[:-1], Item(bare[-1].entry, bare[-1].owner_sig,
                                                   recv_certs[-1].notary_sigs)])
    assert all(isinstance(r, bytes) for r in results)
    assert late.head(alice.key) == svcs[0].head(alice.key)
    assert core(late.supply()) == core(svcs[0].supply())
    # covered entries are still replayed: a second RECV of the same SEND is refused
    again = alice.make(RECV, recv_body(sends[0]))
    [refused] = late.certify_items([Item(again, Authenticator.sign(alice.ident, again).sig,
                                         send=send_certs[0])])
    assert isinstance(refused, LedgerError) and "already received" in refused.message


async def test_certify_rpcs_take_the_send_certificate_beside_the_recv(world: Any) -> None:
    c, mint, alice = world
    s0 = services(c)[0]
    start = len(mint.entries)
    mint.send(alice.key, 5, "a")
    mint.send(alice.key, 6, "b")
    first, second = certify_at(services(c), mint, start)
    recv = alice.recv(first)
    sig = alice.auths[-1].sig
    before = dump(s0)

    async def batch(sends: list[Any]) -> dict[str, Any]:
        args = {"entries": [recv.encode()], "sigs": [sig], "certs": [[]], "sends": sends}
        result: dict[str, Any] = await notaryrpc.handlers(s0)["certify_batch"](CTX, args)
        return result

    for sends, match in (([None], "needs the certificate"),
                         ([second.encode()], "does not match"),
                         ([Certificate(first.entry, first.owner_sig,
                                       first.notary_sigs[:1]).encode()], "quorum")):
        result = await batch(sends)
        assert result["sigs"] == [None] and match in result["errors"][0][1]
        assert dump(s0) == before
    with pytest.raises(LedgerError, match="match"):  # lengths differ: refused whole
        await batch([None, None])
    with pytest.raises(LedgerError):
        await notaryrpc.handlers(s0)["certify"](CTX, {"entry": recv.to_wire(), "sig": sig})
    assert dump(s0) == before
    result = await batch([first.encode()])
    assert isinstance(result["sigs"][0], bytes) and result["errors"] == []
    # the single-entry RPC takes ``send`` too (here: a resubmission, same signature)
    again = await notaryrpc.handlers(s0)["certify"](CTX, {"entry": recv.to_wire(), "sig": sig,
                                                 "send": first.encode()})
    assert again["sig"] == result["sigs"][0]


def test_store_refuses_a_store_of_the_older_format(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE chain_entry (oid INTEGER, seq INTEGER, delta INTEGER)")
    conn.commit()
    conn.close()
    with pytest.raises(LedgerError, match="older format"):
        ChainStore(path)


def test_keep_every_fits_a_catch_up_batch() -> None:
    from p2pmarket.ledger.committee import MAX_BATCH
    from p2pmarket.ledger.notaryrpc import MAX_BATCH as NOTARY_MAX_BATCH

    # a catch-up batch extended to the next kept certificate stays within the limit
    assert KEEP_EVERY <= MAX_BATCH and MAX_BATCH + KEEP_EVERY <= NOTARY_MAX_BATCH


class HeldTransport:
    """Holds every call to one notary until ``release`` is set."""

    def __init__(self, inner: Any, held: bytes) -> None:
        self.inner, self.held = inner, held
        self.release = asyncio.Event()

    async def call(self, notary: Any, name: str, args: dict[str, Any]) -> dict[str, Any]:
        if notary.key == self.held:
            await self.release.wait()
        result: dict[str, Any] = await self.inner.call(notary, name, args)
        return result


async def test_slow_notary_gets_recvs_certified_meanwhile_by_coverage(
        tmp_path: Path, committee4: LocalCommittee) -> None:
    """A slow lane's RECVs were certified by the quorum (their receipts dropped) before
    it sends them: the batch ends on the certified head, whose certificate covers them."""
    c = committee4
    mint = wallet(c, tmp_path / "mint.db", c.mint)
    slow = c.notaries[3].public_key
    held = HeldTransport(c.transport, slow)
    alice = Wallet(Identity.generate(), ChainStore(tmp_path / "alice.db"), c.genesis, held)
    await mint.mint(10**6)
    certs = await mint.send_many([(alice.key, 1 + k, "s") for k in range(120)])
    held.release.set()
    await alice.ensure_open()
    await alice.flush()
    held.release.clear()
    for start in range(0, 120, 40):  # three batches, each certified without the slow one
        await alice.receive_many(certs[start:start + 40])
    assert alice.store.conn.execute("SELECT COUNT(*) FROM chain_receipt").fetchone()[0] == 0
    held.release.set()
    await alice.flush()
    assert c.services[slow].head(alice.key) == services(c)[0].head(alice.key)
    assert all(core(s.supply()) == core(services(c)[0].supply()) for s in services(c))
    await mint.close()
    await alice.close()


def test_audit_checks_each_recv_against_the_send_it_names(net: Any, chain_of: Any) -> None:
    from p2pmarket.ledger.supply import audit_chains

    mint, alice = chain_of(net.mint), chain_of(Identity.generate())
    mint.open()
    mint.mint(100)
    send = mint.send(alice.key, 30, "r")
    alice.open()
    alice.recv(net.certify(send, net.mint))
    chains = {w.key: (w.entries, w.auths) for w in (mint, alice)}
    assert audit_chains(chains, net.genesis)["ok"]
    forged = chain_of(alice.ident)
    forged.open()
    forged.add(RECV, {**recv_body(send), "amount": 31})
    with pytest.raises(LedgerError, match="does not match"):
        audit_chains({mint.key: (mint.entries, mint.auths),
                      alice.key: (forged.entries, forged.auths)}, net.genesis)
