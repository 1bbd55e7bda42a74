"""A host must pay every refund it recorded exactly: one certified SEND of its own, to
the refund's holder, of the refund's amount, with the refund's memo. A host that logs
a short payment, a payment to someone else, one that is not its own, an uncertified
one, or pays one refund twice is exposed by the replay; a host that short-pays and
logs nothing is exposed when the buyer pushes the SEND it received; a refund never
paid makes the host suspected. Every proof verifies offline (with the genesis where
it checks the notaries' certificate). An honest host stays trusted."""

from __future__ import annotations

from typing import Any

import pytest
from audit_world import BIDS, FakeBank, HostNode, S, World, cert, log_refund_paid, signed_ctx

from p2pmarket.api.rpc import CallContext
from p2pmarket.auction.accounts import refund_memo
from p2pmarket.auction.machine import SNAPSHOT_VERSION
from p2pmarket.audit.evidence import REFUND_PAYMENT, EvidenceError, verify_proof
from p2pmarket.audit.evidencestore import EvidenceStore
from p2pmarket.audit.log import AuditLog
from p2pmarket.audit.refunds import REFUND_GRACE_US
from p2pmarket.audit.replay import replay
from p2pmarket.audit.watched import EXPOSED, SUSPECTED, TRUSTED
from p2pmarket.audit.witness import WitnessService, push_refund_to_witnesses
from p2pmarket.cli.audit import verify_file
from p2pmarket.core.config import Settings
from p2pmarket.core.errors import P2PMarketError
from p2pmarket.core.identity import Identity
from p2pmarket.core.wire import WireError, pack, unpack
from p2pmarket.host.accountstore import AccountStore
from p2pmarket.host.auctioneer import Auctioneer, domain_prefix
from p2pmarket.host.journal import OldLogError
from p2pmarket.host.vmm.libvirt_backend import LibvirtVMM
from p2pmarket.ledger.certificate import Certificate
from tests.support.refunds import RefundPayer

ALICE, BOB = Identity.generate(), Identity.generate()
REFUND = 1_000_000


async def with_refund(world: World, **cheat: Any) -> tuple[HostNode, RefundPayer, str]:
    """Three witnesses, a host paying refunds, Alice's account and her refund of
    1,000,000 µc (``r1``), paid by the host's payer told to ``cheat``. Returns the host,
    its payer and the refund's memo."""
    for _ in range(3):
        world.witness()
    h = world.host(pay_refunds=True)
    payer = h.auct.refund_payment
    assert isinstance(payer, RefundPayer)
    for name, value in cheat.items():
        setattr(payer, name, value)
    a = await world.call(ALICE, h, "create_account", {"payment": cert(10**9), "bids": BIDS,
                                                      "interval_s": 600})
    await world.call(ALICE, h, "refund", {"account_id": a["account_id"], "amount": REFUND,
                                          "refund_id": "r1"})
    return h, payer, refund_memo("r1", a["account_id"])


def states(world: World, h: HostNode) -> set[str]:
    return {w.service.status(h.key)["hosts"][0]["state"] for w in world.witnesses}


def the_proof(world: World, h: HostNode) -> bytes:
    proofs = {p for w in world.witnesses for p in w.service.evidence.proofs(h.key)}
    assert len(proofs) >= 1
    return sorted(proofs)[0]


def raws(h: HostNode) -> list[bytes]:
    return [r[1] for r in h.auct.audit.raw(0, 10**6)]


async def test_honest_refunds_keep_the_host_trusted(world: World) -> None:
    h, payer, _ = await with_refund(world)
    aid = h.auct.accounts()[0].account_id
    await world.call(ALICE, h, "refund", {"account_id": aid, "amount": 5, "refund_id": "r2"})
    await world.tick(h)
    await world.call(ALICE, h, "refund", {"account_id": aid, "close": True})
    await world.tick(h)
    await world.audit_round()
    assert states(world, h) == {TRUSTED}
    r = replay(raws(h), host=h.key, genesis=world.ledger.genesis)
    assert r.fault is None and r.state is not None and r.state.paid is not None
    assert set(r.state.paid) == set(r.state.refunds or {}) and len(r.state.paid) == 3
    assert r.state.unpaid() == [] and not h.store.pending_refunds()
    # the buyer pushes what it received: exact, nothing to expose
    for sent in payer.sent.values():
        answers = await push_refund_to_witnesses(world.net.client(ALICE), world.directory,
                                                 h.key, sent.to_wire())
        assert [a["result"] for a in answers] == ["exact"] * 3
    assert states(world, h) == {TRUSTED}
    # a restarted witness resumes with the refunds paid and keeps auditing
    w0 = world.witnesses[0]
    store = w0.service.store
    again = world.witness(w0.identity, store=store)
    await world.tick(h)
    await again.service.audit(h.key)
    assert again.service.status(h.key)["hosts"][0]["state"] == TRUSTED
    assert again.service.hosts[h.key].replayer.state.paid == r.state.paid  # type: ignore[union-attr]


async def test_short_paid_refund_logged_is_exposed(world: World) -> None:
    # records 1,000,000 µc, pays 500,000 and logs that payment as the refund's
    h, payer, memo = await with_refund(world, skim=500_000)
    assert h.store.refund("r1").status == "pending"   # type: ignore[union-attr]
    log_refund_paid(h.auct, "r1", payer.sent[memo])
    await world.audit_round()
    assert states(world, h) == {EXPOSED}
    for genesis in (world.ledger.genesis, None):   # the amount is plain in the log
        proof = verify_proof(the_proof(world, h), h.key, genesis)
        assert proof.type == "nonconformance"
        assert proof.rule == "refund r1 is paid with a SEND that pays 500000, not the " \
                             "1000000 recorded", proof.rule


async def test_refund_paid_to_someone_else_is_exposed(world: World) -> None:
    h, payer, memo = await with_refund(world, to=BOB.public_key)
    log_refund_paid(h.auct, "r1", payer.sent[memo])
    await world.audit_round()
    assert states(world, h) == {EXPOSED}
    proof = verify_proof(the_proof(world, h), h.key, world.ledger.genesis)
    assert proof.rule == "refund r1 is paid with a SEND that pays another key than its holder"


async def test_refund_paid_twice_is_exposed(world: World) -> None:
    h, payer, memo = await with_refund(world)
    assert h.store.refund("r1").status == "done"   # type: ignore[union-attr]
    log_refund_paid(h.auct, "r1", payer.sent[memo], through_step=False)
    await world.audit_round()
    assert states(world, h) == {EXPOSED}
    assert verify_proof(the_proof(world, h), h.key).rule == "refund r1 is paid twice"


async def test_refund_paid_with_a_send_not_the_hosts_is_exposed(world: World) -> None:
    h, _, memo = await with_refund(world, skim=1)   # the host's own payment is refused
    other = RefundPayer(BOB, world.ledger)          # someone else's SEND, to Alice, exact
    log_refund_paid(h.auct, "r1", Certificate.from_wire(
        await other(ALICE.public_key, REFUND, memo)))
    await world.audit_round()
    assert states(world, h) == {EXPOSED}
    assert verify_proof(the_proof(world, h), h.key).rule == \
        "refund r1 is paid with a SEND that is not the host's"


async def test_uncertified_full_payment_logged_is_exposed_with_the_genesis(
        world: World) -> None:
    # the notaries certified a 500,000 µc SEND; the host logs a 1,000,000 µc one whose
    # notary signatures it forged
    h, payer, memo = await with_refund(world, skim=500_000)
    assert payer.sent[memo].entry.seq == 1
    forger = RefundPayer(h.identity, world.ledger, certified=False)   # same seq, forged
    log_refund_paid(h.auct, "r1", Certificate.from_wire(
        await forger(ALICE.public_key, REFUND, memo)))
    await world.audit_round()
    assert states(world, h) == {EXPOSED}
    data = the_proof(world, h)
    proof = verify_proof(data, h.key, world.ledger.genesis)
    assert proof.rule.startswith("the SEND paying refund r1 is not certified by the notaries")
    with pytest.raises(EvidenceError):   # only the genesis tells a forged quorum
        verify_proof(data, h.key)
    assert replay(raws(h), host=h.key).fault is None


async def test_short_payment_never_logged_is_exposed_by_the_buyers_push(
        world: World) -> None:
    # pays 500,000 µc with the refund's memo and never logs a payment
    h, payer, memo = await with_refund(world, skim=500_000)
    await world.tick(h)   # the runner retries: the same short SEND, still not logged
    await world.audit_round()
    assert states(world, h) == {TRUSTED}
    received = payer.sent[memo]
    assert received.entry.body["amount"] == 500_000
    answers = await push_refund_to_witnesses(world.net.client(ALICE), world.directory,
                                             h.key, received.to_wire())
    assert [a["result"] for a in answers] == ["exposed"] * 3
    assert states(world, h) == {EXPOSED}
    data = the_proof(world, h)
    proof = verify_proof(data, h.key, world.ledger.genesis)
    assert proof.type == REFUND_PAYMENT
    assert proof.rule == "a certified SEND of the host names refund r1 but pays 500000, " \
                         "not the 1000000 recorded"
    with pytest.raises(EvidenceError, match="genesis"):
        verify_proof(data, h.key)
    # p2pmarket audit verify PROOF --genesis FILE
    (world.tmp / "proof.bin").write_bytes(data)
    assert verify_file(world.tmp / "proof.bin", h.key.hex(), world.ledger.genesis)[
        "type"] == REFUND_PAYMENT
    with pytest.raises(EvidenceError, match="genesis"):
        verify_file(world.tmp / "proof.bin", h.key.hex())
    # a proof about another payment, or with the payment amended, does not verify
    other = Certificate.from_wire(await RefundPayer(h.identity, world.ledger)(
        ALICE.public_key, REFUND, memo))
    doc = unpack(data)
    with pytest.raises(EvidenceError):
        verify_proof(pack({**doc, "payment": other.to_wire()}), h.key, world.ledger.genesis)


async def test_pushed_refund_payments_are_checked(world: World) -> None:
    h, payer, memo = await with_refund(world)
    w = world.witnesses[0]
    client = world.net.client(ALICE)
    sent = payer.sent[memo].to_wire()

    async def push(payment: Any, host: bytes = h.key) -> dict[str, Any]:
        return await client.call(w.url, w.identity.public_key, "witness.refund",
                                 {"host": host, "payment": payment})

    assert (await push(sent))["result"] == "exact"
    forged = RefundPayer(h.identity, world.ledger, certified=False)
    for bad, why in [({"entry": 1}, "must be a certificate"),
                     (sent, "SEND of that host"),
                     (await forged(ALICE.public_key, 5, memo), "not certified"),
                     (await payer(ALICE.public_key, 5, "not a refund"), "names no refund")]:
        with pytest.raises(P2PMarketError, match=why):
            await push(bad, BOB.public_key if why == "SEND of that host" else h.key)
    # a refund the host never recorded: nothing to compare with
    unknown = await payer(ALICE.public_key, 5, refund_memo("zz", "00"))
    assert (await push(unknown))["result"] == "unknown refund"
    assert states(world, h) == {TRUSTED}
    # a witness without the genesis cannot check certificates
    blind = WitnessService(Identity.generate(), client, EvidenceStore())
    with pytest.raises(P2PMarketError, match="no genesis"):
        await blind.rpc_refund(CallContext(ALICE.public_key, 0, None),
                               {"host": h.key, "payment": sent})


async def test_refund_never_paid_makes_the_host_suspected(world: World) -> None:
    for _ in range(3):
        world.witness()
    h = world.host()   # records refunds, never pays them
    a = await world.call(ALICE, h, "create_account", {"payment": cert(10**9), "bids": BIDS,
                                                      "interval_s": 600})
    await world.call(ALICE, h, "refund", {"account_id": a["account_id"], "amount": REFUND,
                                          "refund_id": "r1"})
    await world.audit_round()
    assert states(world, h) == {TRUSTED}
    world.clock.now += REFUND_GRACE_US
    await world.tick(h)
    await world.audit_round()
    assert states(world, h) == {SUSPECTED}
    status = world.witnesses[0].service.status(h.key)["hosts"][0]
    assert status["overdue_refunds"] == ["r1"] and status["proofs"] == []
    # paid at last: trusted again
    h.auct.refund_payment = RefundPayer(h.identity, world.ledger)
    await world.tick(h)
    await world.audit_round()
    assert states(world, h) == {TRUSTED}


async def test_a_log_of_an_older_format_is_refused(world: World, tmp_path: Any) -> None:
    ident = Identity.generate()
    old = AuditLog(":memory:", ident)
    old.append("in.genesis", {"v": SNAPSHOT_VERSION - 1}, 1)
    store, vmm = AccountStore(tmp_path / "h.sqlite"), LibvirtVMM("test:///default")
    with pytest.raises(OldLogError, match=f"version {SNAPSHOT_VERSION - 1}"):
        Auctioneer(ident, Settings(), store, vmm, FakeBank().accept, audit=old)
    store.close()
    vmm.close()
    # a witness refuses to replay it (no proof: the host broke no rule)
    with pytest.raises(WireError, match="older logs are refused"):
        replay([r[1] for r in old.raw()], host=ident.public_key)


async def test_refunds_paid_survive_a_restart_and_a_crash_before_logging(
        world: World, tmp_path: Any) -> None:
    ident = Identity.generate()
    payer = RefundPayer(ident, world.ledger)
    started: list[Auctioneer] = []

    def start() -> Auctioneer:
        started.append(Auctioneer(
            ident, Settings(cpu_mhz=4000, memory_kib=4 * 1024 * 1024),
            AccountStore(tmp_path / "host.sqlite"),
            LibvirtVMM("test:///default", prefix=domain_prefix(ident)), FakeBank().accept,
            world.clock, audit=AuditLog(tmp_path / "audit.sqlite", ident),
            refund_payment=payer))
        return started[-1]

    auct = start()
    a = await auct.create_account(signed_ctx(ALICE, ident, "create_account", args := {
        "payment": cert(10**9), "bids": BIDS, "interval_s": 600}, world.clock.now), args)
    aid = a["account_id"]

    def refund_args(rid: str) -> dict[str, Any]:
        return {"account_id": aid, "amount": REFUND, "refund_id": rid}

    world.clock.now += 1
    got = await auct.refund(signed_ctx(ALICE, ident, "refund", refund_args("r1"),
                                       world.clock.now), refund_args("r1"))
    assert got["refund"]["status"] == "done"
    # the host dies after the notaries certified r2's SEND, before it logged it
    real = auct.journal.apply

    def crash(kind: str, body: Any, now: int) -> Any:
        if kind == "in.refund_paid":
            raise OSError("power cut")
        return real(kind, body, now)

    auct.journal.apply = crash   # type: ignore[method-assign]
    world.clock.now += 1
    got = await auct.refund(signed_ctx(ALICE, ident, "refund", refund_args("r2"),
                                       world.clock.now), refund_args("r2"))
    assert got["refund"]["status"] == "pending" and len(payer.sent) == 2
    again = start()
    assert again.state.paid is not None and set(again.state.paid) == {"r1"}
    assert [r.refund_id for r in again.store.pending_refunds()] == ["r2"]
    world.clock.now += 2 * S
    await again.tick(world.clock.now)   # retried: the same SEND, logged once
    assert set(again.state.paid) == {"r1", "r2"} and len(payer.sent) == 2
    assert again.store.refund("r2").status == "done"   # type: ignore[union-attr]
    r = replay([x[1] for x in again.audit.raw(0, 10**6)], host=ident.public_key,
               genesis=world.ledger.genesis)
    assert r.fault is None and r.state is not None and r.state.unpaid() == []
    for x in started:
        for info in x.vmm.list():
            x.vmm.undefine(info.account_id)
        x.vmm.close()
        x.store.close()
        x.audit.close()
