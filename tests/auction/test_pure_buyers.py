"""The buyers' steps of the pure auction, driven in memory (no VMM, store or bank):
the exact entries each input gives, and refused inputs that change nothing."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from p2pmarket.auction import HostError
from p2pmarket.auction.allocation import current
from p2pmarket.auction.buyersteps import account_id_for, precheck, refund_id_for
from p2pmarket.auction.seen import recorded
from p2pmarket.core.wire import digest, pack
from tests.support.auction_harness import HOST_ID, T0, AuctionHarness, S

ALICE, BOB = bytes([0xA]) * 32, bytes([0xB]) * 32
BIDS = {"cpu": "1,0,1", "memory": "1,0,1"}     # weight 1, no min, up to everything
PAY = (b"pay-1", 100_000)
AID = account_id_for(PAY[0])
# alone on a 1000 MHz / 1,000,000 KiB host, 100 s to go: 100,000 spends 1000 a second,
# 500 per resource; the root bids 1, so the buyer gets 500/501 of each
CPU, MEM = 500 * 1000 // 501, 500 * 1_000_000 // 501


def lease_body(balance: int = 100_000, cpu: int = CPU, mem: int = MEM,
               end: int = T0 + 100 * S) -> dict[str, Any]:
    return {"lease_id": AID, "host_id": HOST_ID, "holder": ALICE,
            "resources": {"cpu": {"min": 0, "max": 1000, "alloc": cpu},
                          "memory": {"min": 0, "max": 1_000_000, "alloc": mem}},
            "start": T0, "end": end, "balance": balance, "audit": None}


def opened() -> AuctionHarness:
    h = AuctionHarness.new()
    h.call(ALICE, "create_account", {"payment": {}, "bids": BIDS, "interval_s": 100},
           payment=PAY)
    h.advance(1)
    return h


def test_open_an_account() -> None:
    h = AuctionHarness.new()
    st = h.call(ALICE, "create_account", {"payment": {}, "bids": BIDS, "interval_s": 100},
                payment=PAY)
    assert st.outputs == [("out.lease", lease_body()),
                          ("out.create_account", {"account_id": AID})]
    assert st.result == {"account_id": AID} and st.error is None and st.leases == [AID]
    acc = h.state.accounts[AID]
    assert (acc.holder, acc.fund, acc.contingency, acc.interval_end_us) == \
        (ALICE, 100_000, 0, T0 + 100 * S)
    assert current(h.state, acc).allocation == {"cpu": CPU, "memory": MEM}
    assert h.state.payment_account(PAY[0]) == AID
    assert h.state.requests == recorded({}, ALICE, T0)
    assert h.kinds() == ["in.create_account", "out.lease", "out.create_account"]


def test_a_retried_create_is_answered_again_without_a_new_lease() -> None:
    h = opened()
    before = h.state
    st = h.call(ALICE, "create_account", {"payment": {}, "bids": BIDS, "interval_s": 100},
                payment=PAY)
    assert st.outputs == [("out.create_account", {"account_id": AID})]
    assert replace(h.state, requests=before.requests) == before
    st = h.call(BOB, "create_account", {"payment": {}, "bids": BIDS, "interval_s": 100},
                payment=PAY)
    assert st.outputs == [("out.create_account", {
        "error": "payment already used for another account", "error_value": AID})]


def test_bid_fund_lease() -> None:
    h = opened()
    # the cpu weight 3: 3/4 of the spend on cpu, 1/4 on memory
    st = h.call(ALICE, "bid", {"account_id": AID, "bids": {"cpu": "3"}})
    cpu, mem = 750 * 1000 // 751, 250 * 1_000_000 // 251
    assert st.outputs == [("out.lease", lease_body(cpu=cpu, mem=mem)),
                          ("out.bid", {"account_id": AID})]
    # the same bid again changes nothing, so no new lease
    assert h.call(ALICE, "bid", {"account_id": AID, "bids": {"cpu": "3"}}).outputs == \
        [("out.bid", {"account_id": AID})]
    st = h.call(ALICE, "fund", {"account_id": AID, "payment": {}}, payment=(b"pay-2", 1000))
    assert st.outputs[-1] == ("out.fund", {"account_id": AID, "amount": 1000,
                                           "balance": 101_000})
    assert [k for k, _ in st.outputs] == ["out.lease", "out.fund"]
    assert st.outputs[0][1]["balance"] == 101_000
    # the lease RPC hands out the current terms: unchanged, so only the reply
    assert h.call(ALICE, "lease", {"account_id": AID}).outputs == \
        [("out.lease_reply", {"account_id": AID})]


def test_refund_then_close() -> None:
    h = opened()
    st = h.call(ALICE, "refund", {"account_id": AID, "amount": 30_000, "refund_id": "r1"})
    memo = f"p2pmarket refund r1 of account {AID}"
    assert st.outputs[-1] == ("out.refund", {
        "account_id": AID, "refund": {"refund_id": "r1", "account_id": AID, "amount": 30_000,
                                      "memo": memo},
        "balance": 70_000, "state": "active"})
    assert [(r.refund_id, r.holder, r.amount, r.created_us) for r in st.refunds] == \
        [("r1", ALICE, 30_000, T0 + 1)]
    # a retry answers again and refunds nothing more
    again = h.call(ALICE, "refund", {"account_id": AID, "amount": 30_000, "refund_id": "r1"})
    assert again.outputs == [st.outputs[-1]] and again.refunds == []
    # closing refunds the rest, under an id derived from the request
    ts = h.advance(1)
    st = h.call(ALICE, "refund", {"account_id": AID, "close": True})
    rid = digest(pack(["refund", ALICE, ts, AID]))[:8].hex()
    assert st.outputs == [("out.refund", {
        "account_id": AID, "refund": {"refund_id": rid, "account_id": AID, "amount": 70_000,
                                      "memo": f"p2pmarket refund {rid} of account {AID}"},
        "balance": 0, "state": "closed"})]
    assert AID not in h.state.accounts and h.state.refund(rid) is not None


def _error(kind: str, message: str, value: Any) -> list[tuple[str, Any]]:
    return [(kind, {"error": message, "error_value": value})]


BAD = [
    ("create_account", {"payment": {}, "bids": BIDS}, _error(
        "out.create_account", "missing argument 'interval_s'", ["interval_s"])),
    ("create_account", {"payment": {}, "bids": BIDS, "interval_s": 0}, _error(
        "out.create_account", "interval_s must be an integer from 1 to 315360000", "0")),
    ("create_account", {"payment": "cert", "bids": BIDS, "interval_s": 9}, _error(
        "out.create_account", "payment must be a certificate map", "str")),
    ("create_account", {"payment": {}, "bids": {"disk": "1"}, "interval_s": 9}, _error(
        "out.create_account", "disk is not offered by this host",
        {"resource": "disk", "offered": ["cpu", "memory"]})),
    ("create_account", {"payment": {}, "bids": BIDS, "interval_s": 9, "contingency": "2"},
     _error("out.create_account", "contingency must be a ratio from 0 to 1", "2")),
    ("bid", {"account_id": AID, "bids": BIDS, "replace": "yes"}, _error(
        "out.bid", "replace must be true or false", "'yes'")),
    ("bid", {"account_id": AID, "bids": [1]}, _error(
        "out.bid", "bids must be a map of resource to bid", "list")),
    ("bid", {"account_id": "nobody", "bids": BIDS}, _error(
        "out.bid", "no such account of yours", "nobody")),
    ("bid", {"account_id": AID, "bids": {"memory": "1,0.5,0.25"}}, _error(
        "out.bid", "memory: min is larger than max", {"min": "0.5", "max": "0.25"})),
    ("fund", {"account_id": AID}, _error("out.fund", "missing argument 'payment'",
                                         ["payment"])),
    ("refund", {"account_id": AID}, _error(
        "out.refund", "give an amount, or close the account", "amount")),
    ("refund", {"account_id": AID, "amount": 10**9}, _error(
        "out.refund", "refund is larger than the account's money",
        {"amount": 10**9, "balance": 100_000})),
    ("refund", {"account_id": AID, "amount": 5, "refund_id": "no spaces"}, _error(
        "out.refund", "refund_id must be a short string of letters, digits, - or _",
        "'no spaces'")),
    ("lease", {"account_id": 7}, _error("out.lease_reply", "account_id must be a short string",
                                        "7")),
    ("lease", {"account_id": AID, "x": 1}, _error("out.lease_reply", "unknown argument 'x'",
                                                  ["x"])),
    ("bid", "unencodable", _error("out.bid", "arguments must not contain floats",
                                  "unencodable")),
    ("fund", [1, 2], _error("out.fund", "RPC arguments must be a map", "list")),
]


@pytest.mark.parametrize(("name", "args", "outputs"), BAD)
def test_a_bad_argument_gives_its_error_and_changes_nothing(
        name: str, args: Any, outputs: list[tuple[str, Any]]) -> None:
    h = opened()
    before = h.state
    st = h.call(ALICE, name, args, payment=(b"pay-3", 50) if name == "fund" else None)
    assert st.outputs == outputs
    assert isinstance(st.error, HostError) and st.result is None and st.refunds == []
    # only the request is recorded as taken
    assert replace(h.state, requests=before.requests) == before
    assert h.state.requests == recorded(before.requests, ALICE, h.now)


def test_a_refused_payment_gives_the_bank_s_error() -> None:
    h = opened()
    before = h.state
    st = h.call(ALICE, "fund", {"account_id": AID, "payment": {}},
                payment_error=HostError("invalid certificate", {"why": "expired"}))
    assert st.outputs == _error("out.fund", "invalid certificate", {"why": "expired"})
    assert replace(h.state, requests=before.requests) == before


def test_a_create_refused_after_payment_refunds_the_money() -> None:
    """Issue 12: not kept in an account with no bids, but paid back at once."""
    h = opened()
    accounts = h.state.accounts
    st = h.call(BOB, "create_account", {"payment": {}, "bids": {"memory": "1,0.9,1"},
                                        "interval_s": 100}, payment=(b"pay-b", 10))
    rid = refund_id_for(b"pay-b")
    assert st.error is not None and st.error.message.endswith(
        f"the payment (10 µcredits) is refunded (refund {rid})")
    assert st.outputs == _error("out.create_account", st.error.message,
                                {"refund_id": rid, "amount": 10,
                                 "cause": st.error.value["cause"]})
    assert h.state.accounts == accounts
    [made] = st.refunds
    assert (made.refund_id, made.holder, made.amount) == (rid, BOB, 10)
    assert h.state.refund(rid) == made
    assert h.state.payment_account(b"pay-b") == account_id_for(b"pay-b")
    # the same payment again: refunded once, whatever the bids
    again = h.call(BOB, "create_account", {"payment": {}, "bids": {"memory": "1,0.9,1"},
                                           "interval_s": 100}, payment=(b"pay-b", 10))
    assert again.error is not None and again.refunds == []
    other = h.call(BOB, "create_account", {"payment": {}, "bids": {"memory": "1,0,1"},
                                           "interval_s": 100}, payment=(b"pay-b", 10))
    assert other.error is not None and "already refunded" in other.error.message
    assert h.state.accounts == accounts


def test_malformed_input() -> None:
    h = opened()
    st = h.step("in.bid", {"from": "not a key", "ts": 1, "args": {}})
    assert st.outputs == _error("out.bid", "malformed input", "bid")


def test_precheck_is_what_the_step_checks_before_the_payment() -> None:
    h = opened()
    precheck(h.state, "fund", ALICE, {"account_id": AID, "payment": {}})
    with pytest.raises(HostError, match="no such account"):
        precheck(h.state, "fund", BOB, {"account_id": AID, "payment": {}})
    with pytest.raises(HostError, match="not offered"):
        precheck(h.state, "create_account", BOB, {"payment": {}, "bids": {"disk": "1"},
                                                  "interval_s": 9})
