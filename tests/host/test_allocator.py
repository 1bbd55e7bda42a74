"""The pure allocator: worked examples checked by hand, then properties."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from p2pmarket.auction.allocator import (
    DEFAULT_LONG_INTERVAL_US,
    AllocationInput,
    AllocationResult,
    allocate,
    split_by_weight,
    tick_spend,
)
from p2pmarket.auction.book import AccountState
from p2pmarket.auction.model import AllocEvent, Bid
from p2pmarket.auction.shares import water_fill

S = 1_000_000  # one second in µs
NOW = 1_000 * S
W1 = S         # weight 1 in ppm


def acc(aid: str, fund: int, bids: dict[str, Bid], seconds_left: int = 100,
        contingency: int = 0) -> AccountState:
    return AccountState(aid, fund, NOW + seconds_left * S, bids, contingency)


def run(capacities: dict[str, int], *accounts: AccountState, root_bid: int = 1,
        unique: dict[str, int] | None = None,
        disk_usage: dict[str, tuple[int, int]] | None = None) -> AllocationResult:
    return allocate(AllocationInput(capacities, tuple(accounts), NOW, S, root_bid,
                                    unique=unique or {}, disk_usage=disk_usage or {}))


def cpu(w: int = 1, lo: int = 0, hi: int = 10**9) -> dict[str, Bid]:
    return {"cpu": Bid(w * W1, lo, hi)}


# -- spending -----------------------------------------------------------------------

def test_tick_spend_is_fund_over_remaining_rounded_up() -> None:
    assert tick_spend(1_000_000, NOW + 100 * S, NOW, S) == 10_000
    assert tick_spend(10, NOW + 100 * S, NOW, S) == 1          # ceil: a funded bid is never 0
    assert tick_spend(1001, NOW + 100 * S, NOW, S) == 11
    assert tick_spend(0, NOW + 100 * S, NOW, S) == 0


def test_tick_spend_last_tick_spends_everything() -> None:
    assert tick_spend(777, NOW + S // 2, NOW, S) == 777
    assert tick_spend(777, NOW - 5 * S, NOW, S) == 777


def test_split_by_weight_rounds_down() -> None:
    assert split_by_weight(10_000, {"cpu": 1, "memory": 2}) == {"cpu": 3333, "memory": 6666}
    assert split_by_weight(10, {"a": 1, "b": 1, "c": 1}) == {"a": 3, "b": 3, "c": 3}
    assert split_by_weight(10, {"a": 0}) == {"a": 0}


# -- divisible resources: worked examples -------------------------------------------

def test_one_bidder() -> None:
    # spend = 1e6 * 1 s / 100 s = 10000; B = 10000 + root 1; share = 10000*1000//10001
    r = run({"cpu": 1000}, acc("a", 1_000_000, cpu(hi=1000)))
    assert r.allocations == {"a": {"cpu": 999}}
    assert r.free == {"cpu": 1}
    assert r.charges == {"a": 10_000}
    assert r.revenue == {"cpu": 10_000}
    assert r.prices == {"cpu": 10_001}   # micro-credits per second (tick = 1 s)
    assert r.events == ()


def test_two_bidders_three_to_one() -> None:
    r = run({"cpu": 4000}, acc("a", 300_000, cpu()), acc("b", 100_000, cpu()))
    # bids 3000 and 1000, root 1: 3000*4000//4001 = 2999, 1000*4000//4001 = 999
    assert r.allocations == {"a": {"cpu": 2999}, "b": {"cpu": 999}}
    assert r.free == {"cpu": 2}
    assert r.charges == {"a": 3000, "b": 1000}
    assert r.prices == {"cpu": 4001}


def test_three_bidders() -> None:
    r = run({"cpu": 6000}, acc("a", 300_000, cpu()), acc("b", 200_000, cpu()),
            acc("c", 100_000, cpu()))
    # B = 3000 + 2000 + 1000 + 1 = 6001: 18e6//6001 = 2999, 12e6//6001 = 1999, 6e6//6001 = 999
    assert r.allocations == {"a": {"cpu": 2999}, "b": {"cpu": 1999}, "c": {"cpu": 999}}
    assert r.free == {"cpu": 3}
    assert r.charges == {"a": 3000, "b": 2000, "c": 1000}


def test_max_cap_water_fills_the_excess() -> None:
    r = run({"cpu": 1000}, acc("a", 300_000, cpu(hi=500)), acc("b", 100_000, cpu(hi=1000)))
    # uncapped a would get 749 > 500: capped at 500; the other 500 go to b and root
    # by 1000:1 -> b gets 1000*500//1001 = 499, root 1.
    assert r.allocations == {"a": {"cpu": 500}, "b": {"cpu": 499}}
    assert r.free == {"cpu": 1}
    # a pays its 500 at the clearing price 1001/500 per unit: ceil(500*1001/500) = 1001
    assert r.charges == {"a": 1001, "b": 1000}
    assert r.revenue == {"cpu": 2001}


def test_below_min_drops_the_claim_and_shares_again() -> None:
    r = run({"cpu": 1000}, acc("a", 300_000, cpu(hi=1000)), acc("b", 100_000, cpu(1, 300, 1000)))
    # b would get 1000*1000//4001 = 249 < 300: dropped, not charged; a gets 3000*1000//3001
    assert r.allocations == {"a": {"cpu": 999}, "b": {"cpu": 0}}
    assert r.charges == {"a": 3000, "b": 0}
    assert r.events == (AllocEvent("b", "cpu", "below_min", 249, 300),)
    assert r.prices == {"cpu": 3001}


def test_worst_shortfall_dropped_first() -> None:
    # c's shortfall is worse than b's; once c is gone b meets its min
    r = run({"cpu": 1000}, acc("a", 100_000, cpu(hi=1000)), acc("b", 100_000, cpu(1, 400, 1000)),
            acc("c", 100_000, cpu(1, 900, 1000)))
    assert [(e.account_id, e.kind) for e in r.events] == [("c", "below_min")]
    assert r.allocations["b"]["cpu"] == 1000 * 1000 // 2001
    assert r.allocations["c"]["cpu"] == 0


def test_contingency_tops_up_to_the_min() -> None:
    r = run({"cpu": 1000}, acc("a", 300_000, cpu()),
            acc("b", 100_000, cpu(1, 300, 1000), contingency=10_000))
    # b's 1000 would get 249 < 300. Others bid B' = 3000 + root 1 = 3001, so the min costs
    # x = ceil(300 * 3001 / (1000 - 300)) = ceil(1286.14) = 1287: a top-up of 287.
    # Then B = 3000 + 1287 + 1 = 4288: b gets 1287000//4288 = 300, a 3000000//4288 = 699.
    assert r.allocations == {"a": {"cpu": 699}, "b": {"cpu": 300}}
    assert r.events == (AllocEvent("b", "cpu", "topped_up", 287, 300),)
    assert r.charges == {"a": 3000, "b": 1000}
    assert r.contingency_charges == {"b": 287}
    assert r.revenue == {"cpu": 4287}
    assert r.prices == {"cpu": 4288}


def test_contingency_too_small_leaves_it_untouched() -> None:
    r = run({"cpu": 1000}, acc("a", 300_000, cpu()),
            acc("b", 100_000, cpu(1, 300, 1000), contingency=286))
    assert r.events == (AllocEvent("b", "cpu", "below_min", 249, 300),)
    assert r.contingency_charges == {} and r.charges["b"] == 0


def test_shared_contingency_goes_by_weight() -> None:
    a = acc("a", 600_000, {"cpu": Bid(W1, 0, 1000), "memory": Bid(W1, 0, 1000)})
    b = acc("b", 150_000, {"cpu": Bid(2 * W1, 300, 1000), "memory": Bid(W1, 300, 1000)},
            contingency=500)
    r = run({"cpu": 1000, "memory": 1000}, a, b)
    # a spends 6000 (3000 + 3000); b 1500: cpu 1500*2/3 = 1000, memory 500.
    # cpu: b gets 249 < 300, the min costs 1287 - 1000 = 287; memory: b gets 142 < 300,
    # costs ceil(300*3001/700) - 500 = 787. The pool of 500 covers cpu (weight 2) first;
    # 213 left cannot cover memory, whose claim is dropped.
    assert r.events == (AllocEvent("b", "cpu", "topped_up", 287, 300),
                        AllocEvent("b", "memory", "below_min", 142, 300))
    assert r.allocations["b"] == {"cpu": 300, "memory": 0}
    assert r.allocations["a"] == {"cpu": 699, "memory": 999}
    assert r.charges == {"a": 6000, "b": 1000} and r.contingency_charges == {"b": 287}


def test_two_resources_split_by_weight() -> None:
    r = run({"cpu": 1000, "memory": 1 << 20},
            acc("a", 1_000_000, {"cpu": Bid(W1, 0, 1000), "memory": Bid(3 * W1, 0, 1 << 20)}))
    assert r.charges == {"a": 10_000}
    assert r.revenue == {"cpu": 2500, "memory": 7500}
    assert r.allocations["a"]["memory"] == 7500 * (1 << 20) // 7501


def test_unoffered_resource_gets_nothing_and_costs_nothing() -> None:
    r = run({"cpu": 1000}, acc("a", 1_000_000, {"cpu": Bid(W1, 0, 1000), "disk": Bid(W1, 0, 5)}))
    assert r.charges == {"a": 10_000}
    assert r.allocations == {"a": {"cpu": 999, "disk": 0}}
    assert r.events == (AllocEvent("a", "disk", "not_offered", 0, 0),)


def test_empty_market_has_root_price() -> None:
    r = run({"cpu": 1000, "memory": 10}, root_bid=7)
    assert r.prices == {"cpu": 7, "memory": 7}
    assert r.free == {"cpu": 1000, "memory": 10}


def test_water_fill_root_only() -> None:
    share = water_fill(100, [], [], [], 1)
    assert share.alloc == [] and share.cap_total == 100


def test_expiry_with_money_left_resets_with_a_long_interval() -> None:
    r = run({"cpu": 1000}, acc("a", 5_000, cpu(), seconds_left=-1))
    assert r.events == (AllocEvent("a", "", "expired", 5_000, NOW + DEFAULT_LONG_INTERVAL_US),)
    assert r.interval_ends == {"a": NOW + DEFAULT_LONG_INTERVAL_US}
    assert r.charges == {"a": 1}   # ceil(5000 * 1 s / 30 days) = 1: it now spends slowly
    # an empty account whose interval ended is not "expired with money left"
    assert run({"cpu": 10}, acc("b", 0, cpu(), seconds_left=-1)).events == ()


def test_disk_usage_events() -> None:
    caps = {"disk": 1000}
    disk = {"disk": Bid(W1, 0, 1000)}
    usage = {"a": (800, 500)}
    alone = run(caps, acc("a", 100_000, disk), disk_usage=usage)
    assert alone.events == () and alone.allocations["a"]["disk"] == 999
    # b takes 1000 of 2001 bid: a gets 1000*1000//2001 = 499 < floor 500: delete
    shared = run(caps, acc("a", 100_000, disk), acc("b", 100_000, disk), disk_usage=usage)
    assert shared.events == (AllocEvent("a", "disk", "disk_delete", 499, 800),)
    # with a floor it can shrink to, the file system is shrunk instead
    shrink = run(caps, acc("a", 100_000, disk), acc("b", 100_000, disk),
                 disk_usage={"a": (800, 400)})
    assert shrink.events == (AllocEvent("a", "disk", "disk_shrink", 499, 800),)


# -- unique resources ---------------------------------------------------------------

PORT = "tcp_port,30000"


def test_unique_second_price_with_a_second_bidder() -> None:
    r = run({}, acc("a", 100_000, {PORT: Bid(W1, 0, 1)}), acc("b", 60_000, {PORT: Bid(W1, 0, 1)}),
            unique={PORT: 5})
    # sealed bids 1000 and 600: a wins and pays max(own min 0, second 600, reserve 5);
    # b loses and pays its bid (5/23/2007)
    assert r.allocations == {"a": {PORT: 1}, "b": {PORT: 0}}
    assert r.charges == {"a": 600, "b": 600}
    assert r.revenue == {PORT: 1200} and r.prices == {PORT: 600}
    assert r.winners == {PORT: "a"}
    assert r.events == (AllocEvent("b", PORT, "outbid", 600, 600),)


def test_unique_without_a_second_bidder_pays_reserve_or_own_min() -> None:
    alone = run({}, acc("a", 100_000, {PORT: Bid(W1, 0, 1)}), unique={PORT: 5})
    assert alone.charges == {"a": 5} and alone.allocations == {"a": {PORT: 1}}
    own = run({}, acc("a", 100_000, {PORT: Bid(W1, 50, 1)}), unique={PORT: 5})
    assert own.charges == {"a": 50} and own.prices == {PORT: 50}
    # below the reserve: cannot win, still pays its bid
    low = run({}, acc("a", 100, {PORT: Bid(W1, 0, 1)}), unique={PORT: 5})
    assert low.allocations == {"a": {PORT: 0}} and low.charges == {"a": 1}
    assert low.events == (AllocEvent("a", PORT, "outbid", 1, 5),)


def test_unique_range_losing_one_keeps_the_rest() -> None:
    rng = "tcp_port,30000-30001"
    r = run({"cpu": 1000},
            acc("a", 200_000, {rng: Bid(W1, 0, 1), "cpu": Bid(W1, 0, 1000)}),
            acc("b", 60_000, {"tcp_port,30001": Bid(W1, 0, 1)}),
            unique={"tcp_port,30000-30010": 5})
    # a spends 2000: 1000 to cpu, 1000 to the range = 500 per port.
    # 30000: a alone pays the reserve 5. 30001: b's 600 beats 500, pays 500; a pays 500.
    assert r.allocations["a"] == {rng: 1, "cpu": 999}
    assert r.charges == {"a": 1000 + 5 + 500, "b": 500}
    assert r.events == (AllocEvent("a", "tcp_port,30001", "outbid", 500, 500),)
    assert r.winners == {"tcp_port,30000": "a", "tcp_port,30001": "b"}


def test_unique_not_offered() -> None:
    r = run({}, acc("a", 100_000, {"ipv4_address,198.18.0.9": Bid(W1, 0, 1)}),
            unique={"ipv4_address,198.18.0.5": 1})
    assert r.events == (AllocEvent("a", "ipv4_address,198.18.0.9", "not_offered", 0, 0),)
    assert r.charges == {"a": 0}


# -- properties ---------------------------------------------------------------------

RES = ("cpu", "memory", "disk")
KEYS = ("tcp_port,30000", "tcp_port,30000-30002", "ipv4_address,198.18.0.1")


@st.composite
def inputs(draw: st.DrawFn) -> AllocationInput:
    caps = {r: draw(st.integers(0, 10**7)) for r in RES if draw(st.booleans()) or r == "cpu"}
    n = draw(st.integers(0, 6))
    accounts = []
    for i in range(n):
        bids = {}
        for r in (*RES, "net_in"):
            if draw(st.booleans()):
                lo = draw(st.integers(0, 10**7))
                hi = draw(st.integers(lo, 2 * 10**7))
                bids[r] = Bid(draw(st.integers(0, 5 * S)), lo, hi)
        for k in KEYS:
            if draw(st.integers(0, 3)) == 0:
                bids[k] = Bid(draw(st.integers(0, 5 * S)), draw(st.integers(0, 10**4)), 1)
        accounts.append(AccountState(f"acc{i}", draw(st.integers(0, 10**12)),
                                     NOW + draw(st.integers(-10 * S, 10**4 * S)), bids,
                                     draw(st.integers(0, 10**9))))
    unique = {"tcp_port,30000-30001": draw(st.integers(0, 100))} if draw(st.booleans()) else {}
    usage = {f"acc{i}": (draw(st.integers(0, 10**7)), draw(st.integers(0, 10**7)))
             for i in range(n) if draw(st.booleans())}
    return AllocationInput(caps, tuple(accounts), NOW, draw(st.integers(1, 10 * S)),
                           draw(st.integers(1, 1000)), unique=unique, disk_usage=usage)


@settings(max_examples=300, deadline=None)
@given(inputs())
def test_properties(inp: AllocationInput) -> None:
    r = allocate(inp)
    again = allocate(inp)
    assert (r.allocations, r.charges, r.contingency_charges, r.events, r.prices, r.revenue,
            r.free, r.interval_ends, r.winners) == \
        (again.allocations, again.charges, again.contingency_charges, again.events,
         again.prices, again.revenue, again.free, again.interval_ends, again.winners)
    shuffled = list(inp.accounts)
    random.Random(1).shuffle(shuffled)
    other = allocate(AllocationInput(inp.capacities, tuple(shuffled), inp.now_us, inp.tick_us,
                                     inp.root_bid, unique=inp.unique, disk_usage=inp.disk_usage))
    assert (other.allocations, other.charges, other.events) == \
        (r.allocations, r.charges, r.events)                      # order-free
    why = {(e.account_id, e.resource) for e in r.events}
    for res, cap in inp.capacities.items():
        if cap <= 0:
            continue
        given_out = sum(r.allocations[a.account_id].get(res, 0) for a in inp.accounts)
        assert given_out <= cap                                   # capacity never exceeded
        assert given_out + r.free[res] == cap
        assert r.prices[res] >= inp.root_bid * 1_000_000 // inp.tick_us
    for a in inp.accounts:
        charge = r.charges[a.account_id]
        end = r.interval_ends.get(a.account_id, a.interval_end_us)
        assert 0 <= charge <= tick_spend(a.fund, end, inp.now_us, inp.tick_us) <= a.fund
        assert 0 <= r.contingency_charges.get(a.account_id, 0) <= a.contingency
        for res, bid in a.bids.items():
            got = r.allocations[a.account_id][res]
            if "," in res:
                assert got in (0, 1, 2, 3)
                continue
            assert got <= bid.max
            # within [min, max], or an event says why not
            assert got >= min(bid.min, bid.max) or (a.account_id, res) in why
    # every micro-credit charged is revenue: no rounding leak
    assert r.total_charged() == sum(r.revenue.values())
