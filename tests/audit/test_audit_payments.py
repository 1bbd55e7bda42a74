"""A host must credit a buyer's payment exactly as the buyer's certificate says: a
host that credits one micro-credit less is exposed with a proof that verifies
offline; an honest host paid with real certificates stays trusted."""

from __future__ import annotations

from typing import Any

import pytest
from audit_world import BIDS, World

from p2pmarket.auction.accounts import Payment
from p2pmarket.audit.evidence import verify_proof
from p2pmarket.audit.replay import payment_mismatch, replay
from p2pmarket.audit.watched import EXPOSED, TRUSTED
from p2pmarket.core.identity import Identity
from p2pmarket.ledger.certificate import Certificate

ALICE = Identity.generate()


def paying(net: Any, chain_of: Any, to: bytes, amount: int) -> Certificate:
    """Alice's certified SEND of ``amount`` to ``to``."""
    alice = chain_of(ALICE)
    alice.open()
    return net.certify(alice.send(to, amount, "pay"), ALICE)  # type: ignore[no-any-return]


def crediting(skim: int) -> Any:
    async def accept(payer: bytes, doc: dict[str, Any]) -> Payment:
        cert = Certificate.from_wire(doc)
        return Payment(cert.entry.hash(), cert.entry.amount - skim)
    return accept


@pytest.mark.parametrize("skim", [0, 1])
async def test_credit_must_match_the_certificate(world: World, net: Any, chain_of: Any,
                                                 skim: int) -> None:
    ws = [world.witness() for _ in range(3)]
    h = world.host()
    h.auct.accept_payment = crediting(skim)
    cert = paying(net, chain_of, h.key, 10**9)
    got = await world.call(ALICE, h, "create_account", {
        "payment": cert.to_wire(), "bids": BIDS, "interval_s": 600})
    await world.tick(h)
    await world.audit_round()
    states = {w.service.status(h.key)["hosts"][0]["state"] for w in ws}
    raws = [r[1] for r in h.auct.audit.raw(0, 10**6)]
    if not skim:
        assert states == {TRUSTED} and replay(raws, host=h.key).fault is None
        assert got["account_id"]
        return
    assert states == {EXPOSED}
    proof = verify_proof(ws[0].service.evidence.proofs(h.key)[0], h.key)
    assert proof.type == "nonconformance" and "differs from the buyer's certificate" in \
        proof.rule, proof.rule


def test_payment_mismatch_rules(net: Any, chain_of: Any) -> None:
    host, other = Identity.generate(), Identity.generate()
    cert = paying(net, chain_of, host.public_key, 500)
    args = {"payment": cert.to_wire()}

    def body(**credit: Any) -> dict[str, Any]:
        return {"from": ALICE.public_key, "args": args, "payment": credit}

    exact = body(id=cert.entry.hash(), amount=500)
    assert payment_mismatch("in.fund", exact, host.node_id) is None
    assert "differs" in str(payment_mismatch("in.fund", body(id=cert.entry.hash(), amount=499),
                                             host.node_id))
    assert "differs" in str(payment_mismatch("in.create_account",
                                             body(id=b"x" * 32, amount=500), host.node_id))
    assert "not a transfer" in str(payment_mismatch("in.fund", exact, other.node_id))
    assert "not a transfer" in str(payment_mismatch(
        "in.fund", {**exact, "from": other.public_key}, host.node_id))
    # nothing credited, not a paid input, or no certificate at all: nothing to compare
    assert payment_mismatch("in.fund", {**exact, "payment": None}, host.node_id) is None
    assert payment_mismatch("in.bid", exact, host.node_id) is None
    assert payment_mismatch("in.fund", {**exact, "args": {"payment": {"id": "x"}}},
                            host.node_id) is None
