"""The host's own steps of the pure auction, driven in memory at explicit times: ticks
and their deadline, settings changes and usage reports."""

from __future__ import annotations

from dataclasses import replace

from p2pmarket.auction.buyersteps import account_id_for
from p2pmarket.auction.hoststeps import allocations_digest
from p2pmarket.auction.machine import plain_digest
from p2pmarket.auction.snapshot import state_digest
from tests.support.auction_harness import T0, AuctionHarness, S

ALICE = bytes([0xA]) * 32
BIDS = {"cpu": "1,0,1", "memory": "1,0,1"}
AID = account_id_for(b"pay-1")


def opened(interval_s: int = 100, amount: int = 100_000) -> AuctionHarness:
    h = AuctionHarness.new()
    h.call(ALICE, "create_account", {"payment": {}, "bids": BIDS, "interval_s": interval_s},
           payment=(b"pay-1", amount))
    return h


def test_the_first_tick_is_due_at_any_time_then_one_tick_length_after_the_last() -> None:
    h = opened()
    assert h.next_tick_at is None
    h.tick(T0 + 5)
    assert h.next_tick_at == T0 + 5 + S
    h.tick(T0 + 5 + S)
    assert h.next_tick_at == T0 + 5 + 2 * S
    h.tick(T0 + 10 * S)                    # late ticks are taken; the deadline follows
    assert h.next_tick_at == T0 + 11 * S
    h.settings(tick_us=5 * S)              # a new tick length moves it
    assert h.next_tick_at == T0 + 15 * S


def test_a_tick_charges_what_the_fund_spends() -> None:
    h = opened()
    st = h.tick(T0 + S)
    # 99 s left: ceil(100,000 / 99) = 1011 to spend, 505 on each resource (the odd
    # micro-credit stays); alone, the buyer pays its bids; the price is the sum of
    # the bids, the root's 1 included
    assert st.tick is not None
    assert st.outputs == [("out.tick", {
        "charges": {AID: 1010}, "contingency_charges": {}, "events": [],
        "prices": {"cpu": 506, "memory": 506}, "interval_ends": {},
        "allocations": allocations_digest(st.tick), "refunds": [],
        "state": state_digest(h.state)})]
    assert dict(st.tick.columns) == {"cpu": [505 * 1000 // 506],
                                     "memory": [505 * 1_000_000 // 506]}
    assert h.state.accounts[AID].fund == 100_000 - 1010
    assert h.state.last_tick == T0 + S


def test_a_tick_too_early_is_refused_and_changes_nothing() -> None:
    h = opened()
    h.tick(T0 + S)
    before = h.state
    st = h.tick(T0 + 2 * S - 1)
    assert st.outputs == [("out.tick", {"error": "tick too early",
                                        "error_value": {"now": T0 + 2 * S - 1,
                                                        "last": T0 + S}})]
    assert st.error is not None and st.tick is None
    assert h.state is before and h.next_tick_at == T0 + 2 * S
    assert h.tick(T0 + 2 * S).error is None


def test_an_expired_account_that_loses_its_claims_is_closed_and_refunded() -> None:
    h = AuctionHarness.new()
    h.call(ALICE, "create_account", {"payment": {}, "bids": {"cpu": "1,0.1,1",
                                                             "memory": "2,0.1,1"},
                                     "interval_s": 2}, payment=(b"pay-1", 10_000))
    # the last second spends the fund: 1/3 and 2/3 of 10,000, rounded down
    assert h.tick(T0 + S).outputs[0][1]["charges"] == {AID: 3333 + 6666}
    st = h.tick(T0 + 2 * S)
    # the interval ends with 1 left: expired; spending 1 over the long interval buys
    # nothing, so both claims fall below their min, and the account is collected
    long_end = T0 + 2 * S + h.state.long_us
    rid = plain_digest(["gc", AID, T0 + 2 * S])[:8].hex()
    doc = st.outputs[0][1]
    assert doc["events"] == [[AID, "", "expired", 1, long_end],
                             [AID, "cpu", "below_min", 0, 100],
                             [AID, "memory", "below_min", 0, 100_000]]
    assert (doc["charges"], doc["interval_ends"], doc["refunds"]) == \
        ({}, {AID: long_end}, [[rid, AID, 1]])
    assert AID not in h.state.accounts
    assert [(r.refund_id, r.holder, r.amount) for r in st.refunds] == [(rid, ALICE, 1)]


def test_settings_and_usage() -> None:
    h = opened()
    cfg = h.state.config
    st = h.settings(replace(cfg, capacities={**cfg.capacities, "cpu": 2000}))
    assert [k for k, _ in st.outputs] == ["out.settings"]
    assert st.outputs[0][1]["state"] == state_digest(h.state)
    assert h.state.config.capacities["cpu"] == 2000
    assert h.state.accounts[AID].allocation["cpu"] == 500 * 2000 // 501
    st = h.usage({AID: (10, 5)})
    assert st.outputs == [] and dict(h.state.usage) == {AID: (10, 5)}
    assert h.kinds() == ["in.create_account", "out.lease", "out.create_account",
                         "in.settings", "out.settings", "in.usage"]
