"""Refunds paid in the pure auction: ``in.refund_paid`` marks a recorded refund paid,
once; the record is part of the state, its snapshot and its digest (snapshot version
3); a snapshot of another version is refused by name; refund memos name their refund."""

from __future__ import annotations

from typing import Any

import pytest

from p2pmarket.auction import HostError
from p2pmarket.auction.accounts import RefundPaid, memo_refund_id, refund_memo
from p2pmarket.auction.buyersteps import account_id_for
from p2pmarket.auction.machine import SNAPSHOT_VERSION, MissingState
from p2pmarket.auction.snapshot import from_snapshot, snapshot, state_digest
from tests.support.auction_harness import AuctionHarness

ALICE = bytes([0xA]) * 32
PAY = (b"pay-1", 100_000)
AID = account_id_for(PAY[0])
SEND_HASH = bytes(range(32))


def refunded() -> AuctionHarness:
    h = AuctionHarness.new()
    h.call(ALICE, "create_account", {"payment": {}, "bids": {"cpu": "1,0,1"},
                                     "interval_s": 100}, payment=PAY)
    h.advance(1)
    h.call(ALICE, "refund", {"account_id": AID, "amount": 30_000, "refund_id": "r1"})
    h.advance(1)
    return h


def paid(rid: str = "r1", pid: bytes = SEND_HASH) -> dict[str, Any]:
    return RefundPaid(rid, pid, {"entry": {}, "owner_sig": b"", "notaries": []}).body()


def test_a_refund_paid_is_marked_once() -> None:
    h = refunded()
    assert [r.refund_id for r in h.state.unpaid()] == ["r1"]
    before = state_digest(h.state)
    st = h.step("in.refund_paid", paid())
    assert st.outputs == [] and st.paid == [RefundPaid.from_body(paid())]
    assert h.state.refund_paid("r1") == SEND_HASH and h.state.unpaid() == []
    assert state_digest(h.state) != before
    # once: paying it again, or a refund never recorded, is refused (no honest host logs it)
    with pytest.raises(HostError, match="already paid"):
        h.step("in.refund_paid", paid())
    with pytest.raises(HostError, match="no such refund"):
        h.step("in.refund_paid", paid("r2"))
    with pytest.raises(HostError, match="refund_id, payment_id, payment"):
        h.step("in.refund_paid", {"refund_id": "r1", "payment_id": SEND_HASH})
    with pytest.raises(HostError, match="32 bytes"):
        h.step("in.refund_paid", {**paid(), "payment_id": b"short"})


def test_refunds_paid_are_in_the_snapshot_and_its_digest() -> None:
    h = refunded()
    h.step("in.refund_paid", paid())
    snap = snapshot(h.state)
    assert snap["v"] == SNAPSHOT_VERSION == 5 and snap["paid"] == [["r1", SEND_HASH]]
    back = from_snapshot(snap)
    assert back == h.state and state_digest(back) == state_digest(h.state)
    # the records must match their chain hash
    with pytest.raises(HostError, match="refunds paid do not match"):
        from_snapshot({**snap, "paid": [["r1", bytes(32)]]})
    # a trimmed snapshot leaves them out with the refunds, the digest still covers them
    trimmed = from_snapshot(snapshot(h.state, refunds=False))
    assert state_digest(trimmed) == state_digest(h.state)
    with pytest.raises(MissingState):
        trimmed.refund_paid("r1")


def test_a_snapshot_of_another_version_is_refused_by_name() -> None:
    snap = snapshot(refunded().state)
    with pytest.raises(HostError, match="version 3; this version reads only version 5"):
        from_snapshot({**snap, "v": 3})


def test_refund_memos_name_their_refund() -> None:
    memo = refund_memo("r1", AID)
    assert memo == f"p2pmarket refund r1 of account {AID}"
    assert memo_refund_id(memo) == "r1"
    for other in ("", "p2pmarket refund r1", f"p2pmarket refund r1 of account {AID} x",
                  f"p2pmarket refund  of account {AID}", f"fund account at {AID}", 7, None):
        assert memo_refund_id(other) is None
    # the steps use it: the refund recorded carries exactly this memo
    h = refunded()
    assert h.state.refund("r1").memo == memo  # type: ignore[union-attr]
