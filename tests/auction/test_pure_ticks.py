"""The host's own steps of the pure auction, driven in memory at explicit times: ticks
and their deadline, settings changes and usage reports."""

from __future__ import annotations

from dataclasses import replace

from p2pmarket.auction.allocation import current
from p2pmarket.auction.buyersteps import account_id_for
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


def test_a_tick_charges_the_spend_frozen_at_the_accounts_event() -> None:
    h = opened()
    # opened at T0 with 100 s to go: it spends ceil(100,000 / 100) = 1000 per tick,
    # 500 on each resource, until its next event; alone, it pays its bids; the price
    # is the sum of the bids, the root's 1 included
    acc = h.state.accounts[AID]
    assert (acc.spend, acc.since) == (1000, 0)
    st = h.tick(T0 + S)
    assert st.tick == ()
    assert st.outputs == [("out.tick", {
        "events": [], "prices": {"cpu": 501, "memory": 501}, "interval_ends": {},
        "refunds": [], "state": state_digest(h.state)})]
    now = current(h.state, h.state.accounts[AID])
    assert now.allocation == {"cpu": 500 * 1000 // 501, "memory": 500 * 1_000_000 // 501}
    assert now.fund == 100_000 - 1000
    # charged lazily: the record is as of its event, the money follows the ticks
    assert h.state.accounts[AID].fund == 100_000 and h.state.ticks == 1
    h.tick(T0 + 2 * S)
    assert current(h.state, h.state.accounts[AID]).fund == 100_000 - 2000
    assert h.state.last_tick == T0 + 2 * S


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
    h.call(ALICE, "create_account", {"payment": {}, "bids": {"cpu": "1,0.6,1",
                                                             "memory": "2,0.6,1"},
                                     "interval_s": 3}, payment=(b"pay-1", 10_000))
    # 3 s to go: ceil(10,000 / 3) = 3334 per tick, 1111 and 2222 (1/3 and 2/3, rounded
    # down; the rest stays in the fund)
    assert h.state.accounts[AID].spend == 3334
    assert h.tick(T0 + S).outputs[0][1]["events"] == []
    assert h.tick(T0 + 2 * S).outputs[0][1]["events"] == []
    assert current(h.state, h.state.accounts[AID]).fund == 10_000 - 2 * 3333
    st = h.tick(T0 + 3 * S)
    # the interval ends with 3334 left: expired, a new spend over the long interval (1
    # per tick, split 0 and 0) buys less than the mins: both claims are dropped and
    # the account without claims is collected
    long_end = T0 + 3 * S + h.state.long_us
    rid = plain_digest(["gc", AID, T0 + 3 * S])[:8].hex()
    doc = st.outputs[0][1]
    assert doc["events"] == [[AID, "", "expired", 3334, long_end],
                             [AID, "cpu", "below_min", 0, 600],
                             [AID, "memory", "below_min", 0, 600_000]]
    assert (doc["interval_ends"], doc["refunds"]) == ({AID: long_end}, [[rid, AID, 3334]])
    assert AID not in h.state.accounts
    assert [(r.refund_id, r.holder, r.amount) for r in st.refunds] == [(rid, ALICE, 3334)]


def test_settings_and_usage() -> None:
    h = opened()
    cfg = h.state.config
    st = h.settings(replace(cfg, capacities={**cfg.capacities, "cpu": 2000}))
    assert [k for k, _ in st.outputs] == ["out.settings"]
    assert st.outputs[0][1]["state"] == state_digest(h.state)
    assert h.state.config.capacities["cpu"] == 2000
    assert current(h.state, h.state.accounts[AID]).allocation["cpu"] == 500 * 2000 // 501
    st = h.usage({AID: (10, 5)})
    assert st.outputs == [] and dict(h.state.usage) == {AID: (10, 5)}
    assert h.kinds() == ["in.create_account", "out.lease", "out.create_account",
                         "in.settings", "out.settings", "in.usage"]


def test_the_state_digest_is_kept_up_to_date_step_by_step() -> None:
    """The accounts' host-row digest follows each step (never recomputed from scratch
    once known) and equals the one computed from scratch."""
    from p2pmarket.auction.allocation import host_sum
    h = opened()
    h.call(ALICE, "create_account", {"payment": {}, "bids": BIDS, "interval_s": 50},
           payment=(b"pay-2", 50_000))
    state_digest(h.state)
    for k in range(1, 6):
        h.tick(T0 + k * S)
        known = h.state.host_sum
        assert known >= 0
        fresh = replace(h.state, host_sum=-1)
        assert host_sum(fresh) == known
        assert state_digest(fresh) == state_digest(h.state)
