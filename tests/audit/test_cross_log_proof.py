"""Issue 10, item 1: a buyer cannot frame an honest host with its payment chain.

A host's node key signs both its payment chain and its audit log. A buyer who got a
refund holds the host's signed ledger entry at some seq s, and ``host.audit_log``
(open to anyone) gives the host's audit entry at the same seq. Before signature
domains the two authenticators had one form, so the pair passed ``verify_proof`` as
"two different entries signed for seq s", and witnesses and the DHT took it. Here
the attack is run end to end, in process, as the attacker did it (the proof built by
hand from bytes); it must fail at every step."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from audit_world import BIDS, World

from p2pmarket.auction.accounts import Payment
from p2pmarket.audit.evidence import PROOF_VERSION, EvidenceError, proof_host_id, verify_proof
from p2pmarket.audit.evidencestore import EvidenceStore
from p2pmarket.audit.watched import TRUSTED
from p2pmarket.core.errors import P2PMarketError
from p2pmarket.core.identity import Identity
from p2pmarket.core.wire import pack
from p2pmarket.dht.evidence_records import EVIDENCE_SET_KIND, EVIDENCE_TTL_US
from p2pmarket.dht.records import evidence_key, key_digest
from p2pmarket.dht.storage import RecordStorage
from p2pmarket.ledger.certificate import Certificate
from tests.support.chains import Chain, Net

BUYER = Identity.generate()


class HostWallet:
    """The host's payment chain, on the host's node key: it receives the buyer's
    payment and pays refunds back, every entry certified by the test committee."""

    def __init__(self, net: Net, host: Identity) -> None:
        self.net, self.chain = net, Chain(host)
        self.chain.open()
        self.refunds: list[Certificate] = []

    async def accept(self, payer: bytes, doc: dict[str, Any]) -> Payment:
        cert = Certificate.from_wire(doc)
        self.net.certify(self.chain.recv(cert), self.chain.ident)
        return Payment(cert.entry.hash(), cert.entry.amount)

    async def refund(self, holder: bytes, amount: int, memo: str) -> dict[str, Any]:
        cert = self.net.certify(self.chain.send(holder, amount, memo), self.chain.ident)
        self.refunds.append(cert)
        return cert.to_wire()


Auth = tuple[int, bytes, bytes]   # (seq, hash, sig) as they travel


async def refunded_buyer(world: World) -> tuple[Any, Auth, Auth, bytes]:
    """An honest host that paid the buyer one refund. Returns the host, the host's
    ledger authenticator the buyer holds (from the refund's certificate), the host's
    audit authenticator at the same seq (from ``host.audit_log``) and the audit entry
    after it (its bytes)."""
    net = world.ledger   # the committee the witnesses hold (they check refund certificates)
    h = world.host()
    wallet = HostWallet(net, h.identity)
    h.auct.accept_payment = wallet.accept
    h.auct.refund_payment = wallet.refund
    buyer = Chain(BUYER)
    buyer.open()
    pay = net.certify(buyer.send(h.key, 10**9, "pay"), BUYER)
    acc = await world.call(BUYER, h, "create_account", {
        "payment": pay.to_wire(), "bids": BIDS, "interval_s": 600})
    await world.tick(h)
    await world.call(BUYER, h, "refund", {"account_id": acc["account_id"], "amount": 10**6})
    await world.tick(h)    # the runner pays the pending refund
    assert len(wallet.refunds) == 1
    refund = wallet.refunds[0]            # what the buyer receives
    assert refund.entry.body["to"] == BUYER.public_key
    ledger = (refund.entry.seq, refund.entry.hash(), refund.owner_sig)
    log = await world.net.client(BUYER).call(h.url, h.key, "host.audit_log",
                                             {"since": ledger[0], "limit": 2})
    raw, sig = log["entries"][0], log["sigs"][0]
    audit = (ledger[0], hashlib.sha256(raw).digest(), sig)
    assert audit[1] != ledger[1]
    return h, ledger, audit, log["entries"][1]


def inconsistency(host: bytes, a: Auth, b: Auth) -> bytes:
    """The attacker's proof: two authenticators for one seq, by hand."""
    return pack({"v": PROOF_VERSION, "type": "inconsistency", "host": host,
                 "a": list(a), "b": list(b)})


def dht_keeps(storage: RecordStorage, node_id: bytes, proof: bytes, now: int) -> int:
    """How many evidence entries the storage keeps after a store of ``proof``."""
    key = evidence_key(node_id)
    value = pack({"kind": EVIDENCE_SET_KIND, "key": key,
                  "entries": [{"proof": proof, "expires": now + EVIDENCE_TTL_US}]})
    storage.put(key_digest(key), value)
    return len(storage.evidence_entries(key_digest(key)))


async def test_a_refund_cannot_frame_the_host(world: World) -> None:
    ws = [world.witness() for _ in range(3)]
    h, ledger, audit, _ = await refunded_buyer(world)
    await world.audit_round()
    assert {w.service.status(h.key)["hosts"][0]["state"] for w in ws} == {TRUSTED}

    for proof in (inconsistency(h.key, ledger, audit), inconsistency(h.key, audit, ledger)):
        with pytest.raises(EvidenceError, match="not the host's audit"):
            verify_proof(proof)
        with pytest.raises(EvidenceError):
            EvidenceStore().add(proof)
        # the DHT refuses to store it as evidence
        storage = RecordStorage(proof_host_id, lambda: world.clock.now)
        assert dht_keeps(storage, h.identity.node_id, proof, world.clock.now) == 0
        assert storage.counters.get("stored", 0) == 0 or \
            storage.evidence_entries(key_digest(evidence_key(h.identity.node_id))) == []

    # pushed to the witnesses as an audit authenticator, it is refused
    for w in ws:
        with pytest.raises(P2PMarketError, match="not signed by the host"):
            await world.net.client(BUYER).call(w.url, w.identity.public_key, "witness.push",
                                               {"host": h.key, "auths": [list(ledger)]})
    await world.audit_round()
    for w in ws:
        st = w.service.status(h.key)["hosts"][0]
        assert st["state"] == TRUSTED and st["proofs"] == [], st
        assert w.service.evidence.proofs(h.key) == []


async def test_an_honest_proof_still_verifies(world: World) -> None:
    """The same shape with two audit authenticators of the host is still a proof."""
    h, _, audit, _ = await refunded_buyer(world)
    from p2pmarket.audit.entry import AuditEntry, sign_entry
    other = sign_entry(h.identity, AuditEntry(audit[0], b"\x07" * 32, "out.tick", {}, 1))
    proof = inconsistency(h.key, audit, (other.seq, other.hash, other.sig))
    assert verify_proof(proof, h.identity.node_id).seq == audit[0]
    assert dht_keeps(RecordStorage(proof_host_id, lambda: world.clock.now),
                     h.identity.node_id, proof, world.clock.now) == 1


async def test_the_fork_form_needs_an_audit_authenticator(world: World) -> None:
    """The fork form (an authenticator and the host's signed next entry) does not take
    the host's ledger authenticator in place of an audit one."""
    h, ledger, audit, next_raw = await refunded_buyer(world)
    log = await world.net.client(BUYER).call(h.url, h.key, "host.audit_log",
                                             {"since": ledger[0] + 1, "limit": 1})
    assert log["entries"][0] == next_raw
    proof = pack({"v": PROOF_VERSION, "type": "inconsistency", "host": h.key,
                  "a": list(ledger), "entry": next_raw, "sig": log["sigs"][0]})
    with pytest.raises(EvidenceError, match="not the host's audit"):
        verify_proof(proof)
    # and an audit authenticator against the very entry that follows it proves nothing
    honest = pack({"v": PROOF_VERSION, "type": "inconsistency", "host": h.key,
                   "a": list(audit), "entry": next_raw, "sig": log["sigs"][0]})
    with pytest.raises(EvidenceError, match="does not contradict"):
        verify_proof(honest)
