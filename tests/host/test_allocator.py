"""The pure allocator: worked examples checked by hand, then properties."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from p2pmarket.host.allocator import (
    AccountState,
    AllocationInput,
    AllocationResult,
    AllocEvent,
    Bid,
    allocate,
    split_by_weight,
    tick_spend,
    water_fill,
)

S = 1_000_000  # one second in µs
NOW = 1_000 * S


def acc(aid: str, fund: int, bids: dict[str, Bid], seconds_left: int = 100) -> AccountState:
    return AccountState(aid, fund, NOW + seconds_left * S, bids)


def run(capacities: dict[str, int], *accounts: AccountState, root_bid: int = 1) -> AllocationResult:
    return allocate(AllocationInput(capacities, tuple(accounts), NOW, S, root_bid))


# -- spending -----------------------------------------------------------------------

def test_tick_spend_is_fund_over_remaining_rounded_up() -> None:
    assert tick_spend(1_000_000, NOW + 100 * S, NOW, S) == 10_000
    assert tick_spend(10, NOW + 100 * S, NOW, S) == 1          # ceil: a funded bid is never 0
    assert tick_spend(1001, NOW + 100 * S, NOW, S) == 11
    assert tick_spend(0, NOW + 100 * S, NOW, S) == 0


def test_tick_spend_last_tick_spends_everything() -> None:
    assert tick_spend(777, NOW + S // 2, NOW, S) == 777
    assert tick_spend(777, NOW - 5 * S, NOW, S) == 777


def test_split_by_weight_adds_up() -> None:
    assert split_by_weight(10_000, {"cpu": 1, "memory": 2}) == {"cpu": 3333, "memory": 6667}
    assert split_by_weight(10, {"a": 1, "b": 1, "c": 1}) == {"a": 4, "b": 3, "c": 3}
    assert split_by_weight(10, {"a": 0}) == {"a": 0}
    assert split_by_weight(0, {"a": 5}) == {"a": 0}


# -- worked examples ----------------------------------------------------------------

def test_one_bidder() -> None:
    # spend = 1e6 * 1 s / 100 s = 10000; B = 10000 + root 1; share = 10000*1000//10001
    r = run({"cpu": 1000}, acc("a", 1_000_000, {"cpu": Bid(S, 0, 1000)}))
    assert r.allocations == {"a": {"cpu": 999}}
    assert r.free == {"cpu": 1}
    assert r.charges == {"a": 10_000}
    assert r.revenue == {"cpu": 10_000}
    assert r.prices == {"cpu": 10_001}   # micro-credits per second (tick = 1 s)
    assert r.events == ()


def test_two_bidders_three_to_one() -> None:
    r = run({"cpu": 4000},
            acc("a", 300_000, {"cpu": Bid(S, 0, 4000)}),
            acc("b", 100_000, {"cpu": Bid(S, 0, 4000)}))
    # bids 3000 and 1000, root 1: 3000*4000//4001 = 2999, 1000*4000//4001 = 999
    assert r.allocations == {"a": {"cpu": 2999}, "b": {"cpu": 999}}
    assert r.free == {"cpu": 2}
    assert r.charges == {"a": 3000, "b": 1000}
    assert r.prices == {"cpu": 4001}


def test_max_cap_water_fills_the_excess() -> None:
    r = run({"cpu": 1000},
            acc("a", 300_000, {"cpu": Bid(S, 0, 500)}),
            acc("b", 100_000, {"cpu": Bid(S, 0, 1000)}))
    # uncapped a would get 749 > 500: capped at 500; the other 500 go to b and root
    # by 1000:1 -> b gets 1000*500//1001 = 499, root 1.
    assert r.allocations == {"a": {"cpu": 500}, "b": {"cpu": 499}}
    assert r.free == {"cpu": 1}
    # a pays its 500 at the clearing price 1001/500 per unit: ceil(500*1001/500) = 1001
    assert r.charges == {"a": 1001, "b": 1000}
    assert r.revenue == {"cpu": 2001}


def test_below_min_drops_the_claim_and_shares_again() -> None:
    r = run({"cpu": 1000},
            acc("a", 300_000, {"cpu": Bid(S, 0, 1000)}),
            acc("b", 100_000, {"cpu": Bid(S, 300, 1000)}))
    # b would get 1000*1000//4001 = 249 < 300: dropped, not charged; a gets 3000*1000//3001
    assert r.allocations == {"a": {"cpu": 999}, "b": {"cpu": 0}}
    assert r.charges == {"a": 3000, "b": 0}
    assert r.events == (AllocEvent("b", "cpu", "below_min", 249, 300),)
    assert r.prices == {"cpu": 3001}


def test_worst_shortfall_dropped_first() -> None:
    # c's shortfall is worse than b's; once c is gone b meets its min
    r = run({"cpu": 1000},
            acc("a", 100_000, {"cpu": Bid(S, 0, 1000)}),
            acc("b", 100_000, {"cpu": Bid(S, 400, 1000)}),
            acc("c", 100_000, {"cpu": Bid(S, 900, 1000)}))
    assert [e.account_id for e in r.events] == ["c"]
    assert r.allocations["b"]["cpu"] == 1000 * 1000 // 2001
    assert r.allocations["c"]["cpu"] == 0


def test_two_resources_split_by_weight() -> None:
    r = run({"cpu": 1000, "memory": 1 << 20},
            acc("a", 1_000_000, {"cpu": Bid(S, 0, 1000), "memory": Bid(3 * S, 0, 1 << 20)}))
    assert r.charges == {"a": 10_000}
    assert r.revenue == {"cpu": 2500, "memory": 7500}
    assert r.allocations["a"]["memory"] == 7500 * (1 << 20) // 7501


def test_unoffered_resource_gets_nothing_and_costs_nothing() -> None:
    # the whole spend goes to the offered resources
    r = run({"cpu": 1000}, acc("a", 1_000_000, {"cpu": Bid(S, 0, 1000), "disk": Bid(S, 0, 5)}))
    assert r.charges == {"a": 10_000}
    assert r.allocations == {"a": {"cpu": 999, "disk": 0}}
    assert r.events == (AllocEvent("a", "disk", "not_offered", 0, 0),)


def test_empty_market_has_root_price() -> None:
    r = run({"cpu": 1000, "memory": 10}, root_bid=7)
    assert r.prices == {"cpu": 7, "memory": 7}
    assert r.free == {"cpu": 1000, "memory": 10}


def test_water_fill_root_only() -> None:
    share = water_fill(100, {}, {}, 1)
    assert share.alloc == {} and share.cap_total == 100


# -- properties ---------------------------------------------------------------------

RES = ("cpu", "memory")


@st.composite
def inputs(draw: st.DrawFn) -> AllocationInput:
    caps = {r: draw(st.integers(0, 10**7)) for r in RES if draw(st.booleans()) or r == "cpu"}
    n = draw(st.integers(0, 6))
    accounts = []
    for i in range(n):
        bids = {}
        for r in (*RES, "disk"):
            if draw(st.booleans()):
                lo = draw(st.integers(0, 10**7))
                hi = draw(st.integers(lo, 2 * 10**7))
                bids[r] = Bid(draw(st.integers(0, 5 * S)), lo, hi)
        accounts.append(AccountState(f"acc{i}", draw(st.integers(0, 10**12)),
                                     NOW + draw(st.integers(-10 * S, 10**4 * S)), bids))
    return AllocationInput(caps, tuple(accounts), NOW, draw(st.integers(1, 10 * S)),
                           draw(st.integers(1, 1000)))


@settings(max_examples=300, deadline=None)
@given(inputs())
def test_properties(inp: AllocationInput) -> None:
    r = allocate(inp)
    assert r == allocate(inp)                                   # deterministic
    shuffled = list(inp.accounts)
    random.Random(1).shuffle(shuffled)
    assert r == allocate(AllocationInput(inp.capacities, tuple(shuffled), inp.now_us,
                                         inp.tick_us, inp.root_bid))   # order-free
    dropped = {(e.account_id, e.resource) for e in r.events}
    for res, cap in inp.capacities.items():
        given_out = sum(r.allocations[a.account_id].get(res, 0) for a in inp.accounts)
        assert given_out <= cap
        assert given_out + r.free[res] == cap
        assert r.prices[res] >= inp.root_bid * 1_000_000 // inp.tick_us
    for a in inp.accounts:
        charge = r.charges[a.account_id]
        assert 0 <= charge <= tick_spend(a.fund, a.interval_end_us, inp.now_us, inp.tick_us)
        assert charge <= a.fund
        for res, bid in a.bids.items():
            got = r.allocations[a.account_id][res]
            assert got <= bid.max
            assert got >= bid.min or ((a.account_id, res) in dropped and got == 0)
    assert sum(r.charges.values()) == sum(r.revenue.values())   # no rounding leak
