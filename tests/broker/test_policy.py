"""The broker's pure decisions (broker/policy.py): the oversubscription limit, posted
prices, room over time, bundle allocation, adverts' offers, replacements and refund
shares; and a property test that no sequence of purchases ever promises more than the
limit at any instant."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pmarket.broker.policy import (
    HOUR_US,
    MAX_ITEMS,
    MAX_OVERSUB_PPM,
    BrokerError,
    Holding,
    Item,
    Sale,
    SiteOffer,
    allocate,
    check_oversub,
    limit,
    offers,
    price_of,
    promised,
    refund_share,
    replacement,
    room,
)
from p2pmarket.core.identity import Identity
from p2pmarket.sharp.claims import Rset, Term, anchor
from p2pmarket.sharp.tree import peak

SITE, SITE2, BROKER = (Identity(bytes([n]) * 32) for n in (11, 12, 13))
S1, S2 = SITE.public_key, SITE2.public_key
T0 = 1_000_000_000
TERM = Term(T0, T0 + 4 * HOUR_US)
_serials = itertools.count(1)
_sale_ids = itertools.count(1)


def holding(count: int, rtype: str = "cpu", term: Term = TERM, site: Identity = SITE,
            ident: str | None = None) -> Holding:
    """An anchor from ``site`` to the broker (a fresh serial: a fresh claim id)."""
    serial = next(_serials).to_bytes(4, "big")
    return Holding(anchor(site, BROKER.public_key, Rset(rtype, count, ident), term, serial))


def sale(parent: Holding, count: int, term: Term = TERM, live: bool = True) -> Sale:
    return Sale(next(_sale_ids).to_bytes(16, "big"), parent.claim_id, count, term, live)


def hours(a: float, b: float) -> Term:
    return Term(T0 + int(a * HOUR_US), T0 + int(b * HOUR_US))


def refused(exc: pytest.ExceptionInfo[BrokerError]) -> object:
    return exc.value.value


# -- limit, prices ---------------------------------------------------------------------

def test_limit_is_floor_of_count_times_the_oversubscription() -> None:
    assert limit(25, 0) == 25
    assert limit(25, 40_000) == 26
    assert limit(40, 250_000) == 50
    assert limit(3, 250_000) == 3          # 3.75, floored
    assert limit(1, 999_999) == 1          # 1.999999, floored
    assert limit(1, 1_000_000) == 2
    assert limit(7, MAX_OVERSUB_PPM) == 77


def test_price_is_count_times_price_times_hours_rounded_up() -> None:
    prices = {"cpu": 1000, "memory": 7}
    # 3 units at 1000 µc/unit-hour for 1.5 h: exactly 4500
    assert price_of([Item(S1, "cpu", 3)], hours(0, 1.5), prices) == 4500
    # one µs more than an hour of one unit at 1000: 1000.0000003 -> 1001
    assert price_of([Item(S1, "cpu", 1)], Term(T0, T0 + HOUR_US + 1), prices) == 1001
    # 10 units at 7 for 30 min: 35 exactly; for 30 min + 1 µs: 36
    assert price_of([Item(S1, "memory", 10)], hours(0, 0.5), prices) == 35
    assert price_of([Item(S1, "memory", 10)], Term(T0, T0 + HOUR_US // 2 + 1), prices) == 36
    # items add up
    assert price_of([Item(S1, "cpu", 3), Item(S2, "memory", 10)], hours(0, 1.5),
                    prices) == 4500 + 105


def test_price_is_at_least_one_per_item() -> None:
    # 7 µc/unit-hour for one second is 7/3600 µc: rounded up to 1
    assert price_of([Item(S1, "memory", 1)], Term(T0, T0 + 1_000_000), {"memory": 7}) == 1
    # a free type still costs 1 per item
    assert price_of([Item(S1, "cpu", 5), Item(S2, "cpu", 5)], TERM, {"cpu": 0}) == 2


def test_a_type_without_a_price_is_refused() -> None:
    with pytest.raises(BrokerError) as exc:
        price_of([Item(S1, "cpu", 1), Item(S1, "gpu", 1)], TERM, {"cpu": 10})
    assert refused(exc) == "no_price"
    assert "gpu" in exc.value.message


# -- room over time --------------------------------------------------------------------

def test_no_room_when_the_holding_does_not_cover_the_term() -> None:
    h = holding(10, term=hours(0, 4))
    assert room(h, [], hours(0, 4), 0) == 10
    assert room(h, [], Term(T0 - 1, T0 + HOUR_US), 0) == 0       # starts before
    assert room(h, [], hours(3, 5), 0) == 0                      # ends after
    assert room(h, [], hours(5, 6), 250_000) == 0                # wholly after
    assert room(h, [], Term(T0, T0 + 4 * HOUR_US + 1), 0) == 0   # one µs too long


def test_room_counts_only_the_sales_overlapping_the_asked_term() -> None:
    h = holding(10)
    sales = [sale(h, 7, hours(0, 2))]
    assert room(h, sales, hours(2, 4), 0) == 10     # the sale ended: half-open terms
    assert room(h, sales, hours(1, 3), 0) == 3
    assert room(h, sales, hours(0, 4), 0) == 3
    sales.append(sale(h, 3, hours(2, 4)))           # fills the second half
    assert room(h, sales, hours(0, 4), 0) == 3       # the peak, not the sum (7 + 3)
    assert room(h, sales, hours(2, 3), 0) == 7
    sales.append(sale(h, 2, hours(1.5, 2.5)))        # 7 + 2 at 1.5 h, 2 + 3 at 2 h
    assert promised(h, sales, hours(0, 4)) == 9
    assert room(h, sales, hours(0, 4), 0) == 1
    assert room(h, sales, hours(2.5, 4), 0) == 7


def test_room_ignores_dead_sales_and_other_holdings_and_uses_the_limit() -> None:
    h, other = holding(10), holding(10)
    sales = [sale(h, 6, live=False), sale(other, 10), sale(h, 4)]
    assert promised(h, sales, TERM) == 4
    assert room(h, sales, TERM, 0) == 6
    assert room(h, sales, TERM, 250_000) == 12 - 4
    sales.append(sale(h, 8))
    assert room(h, sales, TERM, 0) == 0              # oversold: 0, never negative
    assert room(h, sales, TERM, 250_000) == 0
    assert room(h, sales, TERM, 500_000) == 3


# -- allocate --------------------------------------------------------------------------

def test_a_bundle_sees_its_own_first_item() -> None:
    h = holding(10)
    with pytest.raises(BrokerError) as exc:
        allocate([h], [], [Item(S1, "cpu", 6), Item(S1, "cpu", 6)], TERM, 0)
    assert refused(exc) == "sold_out"
    assert exc.value.message.startswith("item 1:")
    assert allocate([h], [], [Item(S1, "cpu", 6), Item(S1, "cpu", 4)], TERM, 0) == [h, h]
    # with 20 % oversubscription (limit 12) the two sixes fit
    assert allocate([h], [], [Item(S1, "cpu", 6), Item(S1, "cpu", 6)], TERM, 200_000) \
        == [h, h]


def test_a_bundle_spreads_over_two_holdings_when_one_is_not_enough() -> None:
    a, b = holding(10), holding(10)
    lo, hi = sorted([a, b], key=lambda h: h.claim_id)
    got = allocate([a, b], [], [Item(S1, "cpu", 6), Item(S1, "cpu", 6)], TERM, 0)
    assert got == [lo, hi]      # the tie to the lower id first, then the other has room


def test_all_or_none_names_the_first_item_that_does_not_fit() -> None:
    c, m = holding(10), holding(100, "memory")
    sales = [sale(c, 2)]
    before = list(sales)
    items = [Item(S1, "cpu", 4), Item(S1, "memory", 50), Item(S1, "memory", 51),
             Item(S1, "cpu", 100)]
    with pytest.raises(BrokerError) as exc:
        allocate([c, m], sales, items, TERM, 0)
    assert refused(exc) == "sold_out"
    assert exc.value.message.startswith("item 2:")
    assert sales == before            # the placeholders never reach the caller's list
    assert allocate([c, m], sales, items[:2], TERM, 0) == [c, m]


def test_allocate_picks_the_most_room_ties_to_the_lower_claim_id() -> None:
    small, big = holding(10), holding(20)
    assert allocate([small, big], [], [Item(S1, "cpu", 5)], TERM, 0) == [big]
    assert allocate([big, small], [], [Item(S1, "cpu", 5)], TERM, 0) == [big]
    # sales can turn it around: big has 8 left, small 10
    sales = [sale(big, 12)]
    assert allocate([small, big], sales, [Item(S1, "cpu", 5)], TERM, 0) == [small]
    # a tie: both 10
    twin = holding(10)
    lo = min(small, twin, key=lambda h: h.claim_id)
    assert allocate([small, twin], [], [Item(S1, "cpu", 1)], TERM, 0) == [lo]
    assert allocate([twin, small], [], [Item(S1, "cpu", 1)], TERM, 0) == [lo]


def test_allocate_matches_site_type_and_term_and_skips_unique_identifiers() -> None:
    elsewhere = holding(50, site=SITE2)
    memory = holding(50, "memory")
    short = holding(50, term=hours(0, 1))
    ip = holding(1, "ipv4_address", ident="10.0.0.1")
    ok = holding(5)
    hs = [elsewhere, memory, short, ip, ok]
    assert allocate(hs, [], [Item(S1, "cpu", 5)], TERM, 0) == [ok]
    assert allocate(hs, [], [Item(S1, "cpu", 50)], hours(0, 1), 0) == [short]
    assert allocate(hs, [], [Item(S2, "cpu", 50)], TERM, 0) == [elsewhere]
    with pytest.raises(BrokerError) as exc:
        allocate(hs, [], [Item(S1, "ipv4_address", 1)], TERM, 0)
    assert refused(exc) == "sold_out"
    with pytest.raises(BrokerError) as exc:
        allocate(hs, [], [Item(S1, "cpu", 6)], TERM, 0)
    assert refused(exc) == "sold_out"


def test_allocate_respects_exclude() -> None:
    big, small = holding(20), holding(10)
    assert allocate([big, small], [], [Item(S1, "cpu", 5)], TERM, 0,
                    exclude=frozenset({big.claim_id})) == [small]
    with pytest.raises(BrokerError) as exc:
        allocate([big, small], [], [Item(S1, "cpu", 11)], TERM, 0,
                 exclude=frozenset({big.claim_id}))
    assert refused(exc) == "sold_out"
    with pytest.raises(BrokerError) as exc:
        allocate([big, small], [], [Item(S1, "cpu", 1)], TERM, 0,
                 exclude=frozenset({big.claim_id, small.claim_id}))
    assert refused(exc) == "sold_out"


def test_allocate_takes_one_to_max_items() -> None:
    h = holding(100)
    with pytest.raises(BrokerError) as exc:
        allocate([h], [], [], TERM, 0)
    assert refused(exc) == "items"
    with pytest.raises(BrokerError) as exc:
        allocate([h], [], [Item(S1, "cpu", 1)] * (MAX_ITEMS + 1), TERM, 0)
    assert refused(exc) == "items"
    assert allocate([h], [], [Item(S1, "cpu", 1)] * MAX_ITEMS, TERM, 0) == [h] * MAX_ITEMS


# -- offers ----------------------------------------------------------------------------

def test_offers_best_per_site_and_type_without_ended_or_full_sorted() -> None:
    now = T0 + HOUR_US
    cpu1 = holding(10)                                     # room 10 from now
    cpu1_less = holding(30)                                # 25 sold: room 5
    ended = holding(99, term=hours(0, 1))                  # ends at now
    cpu2_full = holding(5, site=SITE2)                     # sold out
    cpu2 = holding(8, site=SITE2, term=hours(2, 6))        # not started: from its start
    mem1 = holding(100, "memory")
    ip = holding(1, "ipv4_address", ident="10.0.0.1")
    sales = [sale(cpu1, 10, hours(0, 1)),                  # over before now
             sale(cpu1_less, 25), sale(cpu2_full, 5), sale(mem1, 40, hours(1, 2))]
    got = offers([ended, cpu1_less, cpu1, cpu2_full, cpu2, mem1, ip], sales, 0, now)
    # the amount counts from now (cpu1's sale before now is over), the term is the
    # held ticket's own
    expected = {
        ("cpu", S1): SiteOffer(S1, "cpu", 10, TERM),
        ("cpu", S2): SiteOffer(S2, "cpu", 8, hours(2, 6)),
        ("memory", S1): SiteOffer(S1, "memory", 60, TERM),
    }
    assert got == [expected[k] for k in sorted(expected)]
    assert [o.rtype for o in got] == ["cpu", "cpu", "memory"]
    assert [o.site for o in got[:2]] == sorted([S1, S2])


def test_offers_count_oversubscription_and_leave_out_what_is_full() -> None:
    h = holding(40)
    sales = [sale(h, 40)]
    assert offers([h], sales, 0, T0) == []
    assert offers([h], sales, 250_000, T0) == [SiteOffer(S1, "cpu", 10, TERM)]
    assert offers([h], [], 0, TERM.end) == []
    assert offers([h], [], 0, TERM.end - 1) == [SiteOffer(S1, "cpu", 40, TERM)]
    # a sale over before now does not count; one still running does
    early, late = sale(h, 30, hours(0, 1)), sale(h, 15, hours(1, 2))
    assert offers([h], [early], 0, T0 + HOUR_US) == [SiteOffer(S1, "cpu", 40, TERM)]
    assert offers([h], [early, late], 0, T0 + HOUR_US) == [SiteOffer(S1, "cpu", 25, TERM)]
    assert offers([h], [early, late], 0, T0) == [SiteOffer(S1, "cpu", 10, TERM)]


# -- replacement -----------------------------------------------------------------------

def test_replacement_uses_real_room_elsewhere() -> None:
    parent = holding(100)                       # lots of room but it is the rejected's
    conflicted = holding(100)                   # the claim the proof names
    tight = holding(10)                         # 8 sold: real room 2
    exact = holding(10)                         # 6 sold: real room 4
    other_site = holding(100, site=SITE2)
    rejected = sale(parent, 4)
    sales = [rejected, sale(tight, 8), sale(exact, 6)]
    hs = [parent, conflicted, tight, exact, other_site]
    assert replacement(hs, sales, rejected, conflicted.claim_id) is exact
    # without `exact`, only oversubscribed room would be left: a refund
    assert replacement([parent, conflicted, tight, other_site], sales, rejected,
                       conflicted.claim_id) is None


def test_replacement_excludes_the_conflicted_claim_and_the_parent() -> None:
    parent, conflicted = holding(100), holding(100)
    rejected = sale(parent, 4)
    hs = [parent, conflicted]
    assert replacement(hs, [rejected], rejected, conflicted.claim_id) is None
    # the parent is excluded even when the proof names another claim
    assert replacement(hs, [rejected], rejected, b"\x07" * 16) is conflicted


def test_replacement_needs_a_holding_covering_the_term_and_a_known_parent() -> None:
    parent = holding(10)
    short = holding(10, term=hours(0, 2))
    rejected = sale(parent, 1, hours(1, 3))
    assert replacement([parent, short], [rejected], rejected, parent.claim_id) is None
    fits = sale(parent, 1, hours(0, 2))
    assert replacement([parent, short], [fits], fits, parent.claim_id) is short
    unknown = Sale(b"\x01" * 16, b"\x02" * 16, 1, TERM)
    assert replacement([parent, short], [unknown], unknown, parent.claim_id) is None


# -- refunds, settings -----------------------------------------------------------------

def test_refund_share_whole_for_one_item_proportional_for_two() -> None:
    prices = {"cpu": 1000, "memory": 10}
    term = hours(0, 1)
    assert refund_share(12345, [Item(S1, "cpu", 4)], term, prices, 0) == 12345
    assert refund_share(77, [Item(S1, "gpu", 4)], term, prices, 0) == 77
    items = [Item(S1, "cpu", 4), Item(S1, "memory", 1000)]    # parts 4000 and 10000
    assert refund_share(14000, items, term, prices, 0) == 4000
    assert refund_share(14000, items, term, prices, 1) == 10000
    assert refund_share(7001, items, term, prices, 0) == 2000     # 2000.28..., floored
    assert refund_share(7001, items, term, prices, 1) == 5000     # 5000.71..., floored


def test_refund_share_of_an_unpriced_item_counts_one() -> None:
    items = [Item(S1, "cpu", 1), Item(S1, "gpu", 1)]
    prices = {"cpu": 3 * 3600}          # 3 µc per unit-second
    term = Term(T0, T0 + 1_000_000)     # one second: cpu part 3, gpu part 1
    assert refund_share(400, items, term, prices, 0) == 300
    assert refund_share(400, items, term, prices, 1) == 100


def test_check_oversub_bounds() -> None:
    assert check_oversub(0) == 0
    assert check_oversub(MAX_OVERSUB_PPM) == MAX_OVERSUB_PPM
    assert check_oversub(250_000) == 250_000
    for bad in (True, False, -1, MAX_OVERSUB_PPM + 1, 1.5, "0", None):
        with pytest.raises(BrokerError) as exc:
            check_oversub(bad)
        assert refused(exc) == "oversubscription"


# -- the property ----------------------------------------------------------------------

SLOT = 1_000_000        # the property's time grid: 1 s
SLOTS = 60


def load(sales: Sequence[Sale], parent: bytes, t: int) -> int:
    """What the live sales from ``parent`` hold at instant ``t`` (a direct count)."""
    return sum(s.count for s in sales if s.live and s.parent == parent and s.term.holds(t))


def peak_in(sales: Sequence[Sale], parent: bytes, term: Term) -> int:
    """The most held at one instant of ``term`` (a direct sweep: the load only rises
    where a sale starts)."""
    instants = {term.start} | {s.term.start for s in sales if term.holds(s.term.start)}
    return max(load(sales, parent, t) for t in instants)


def cap_of(h: Holding, oversub_ppm: int) -> int:
    """The most ``h`` may promise at one instant, computed here (floor of n * (1 + ppm))."""
    return h.rset.count * (1_000_000 + oversub_ppm) // 1_000_000


buy = st.tuples(st.just("buy"), st.integers(1, 25), st.integers(0, SLOTS - 1),
                st.integers(1, SLOTS))
drop = st.tuples(st.just("drop"), st.integers(0, 1000), st.just(0), st.just(0))


@settings(max_examples=200, deadline=None)
@given(counts=st.lists(st.integers(1, 30), min_size=1, max_size=2),
       oversub=st.integers(0, 500_000),
       ops=st.lists(st.one_of(buy, buy, buy, drop), min_size=10, max_size=40))
def test_no_instant_is_promised_beyond_the_limit(
        counts: list[int], oversub: int, ops: list[tuple[str, int, int, int]]) -> None:
    base = Term(T0, T0 + SLOTS * SLOT)
    hs = [holding(c, term=base) for c in counts]
    sales: list[Sale] = []
    for kind, a, b, c in ops:
        if kind == "drop":
            if sales:
                i = a % len(sales)
                sales[i] = dataclasses.replace(sales[i], live=False)
            continue
        count, start = a, b
        end = min(SLOTS, start + c)
        term = Term(T0 + start * SLOT, T0 + end * SLOT)
        rooms = {h.claim_id: cap_of(h, oversub) - peak_in(sales, h.claim_id, term)
                 for h in hs}
        try:
            [got] = allocate(hs, sales, [Item(S1, "cpu", count)], term, oversub)
        except BrokerError as exc:
            assert exc.value == "sold_out"
            # refused: every holding would have gone over at some instant of the term
            assert all(r < count for r in rooms.values())
            continue
        # the choice: most room (as the direct sweep counts it), ties to the lower id
        fit = [h for h in hs if rooms[h.claim_id] >= count]
        assert got == min(fit, key=lambda h: (-rooms[h.claim_id], h.claim_id))
        assert room(got, sales, term, oversub) == rooms[got.claim_id]
        sales.append(Sale(len(sales).to_bytes(16, "big"), got.claim_id, count, term))
        for h in hs:
            cap = cap_of(h, oversub)
            assert cap == limit(h.rset.count, oversub)
            assert peak_in(sales, h.claim_id, base) <= cap
            mine = [(s.term, s.count) for s in sales if s.live and s.parent == h.claim_id]
            assert peak(mine, base.start, base.end)[0] <= cap
