"""The event-driven allocator against a plain reference of the same rules, and its rules
one by one (docs/design.md §6, "event-driven allocation")."""

from __future__ import annotations

import contextlib
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from p2pmarket.auction.allocator import run_tick
from p2pmarket.auction.book import AccountState, build_book
from p2pmarket.auction.livebook import LiveBook, Refused
from p2pmarket.auction.model import AllocEvent, Bid
from p2pmarket.auction.unique import id_key
from tests.auction.reference_livebook import ReferenceBook

T = 1_000_000
CAPS = {"cpu": 100, "memory": 1000, "disk": 500}
ROOT = {"cpu": 3, "memory": 5, "disk": 4}
LONG = 50 * T
# reserves per tick: three ports with a reserve, one free, an address; 40000 not offered
UNIQUE = {"tcp_port,30000-30002": 2, "tcp_port,30003": 0, "ipv4_address,198.18.0.5": 9}
PORTS = ["tcp_port,30000", "tcp_port,30001", "tcp_port,30000-30003", "tcp_port,40000",
         "ipv4_address,198.18.0.5"]

bids_st = st.dictionaries(
    st.sampled_from(["cpu", "memory", "disk", "gpu"]),
    st.builds(Bid, st.integers(0, 5), st.integers(0, 60) | st.integers(0, 400),
              st.integers(0, 1200)),
    max_size=3) | st.builds(
    lambda d, u: {**d, **u},
    st.dictionaries(st.sampled_from(["cpu", "memory"]),
                    st.builds(Bid, st.integers(0, 5), st.integers(0, 60),
                              st.integers(0, 1200)), max_size=2),
    st.dictionaries(st.sampled_from(PORTS),   # a unique bid's min: its own, per second
                    st.builds(Bid, st.integers(0, 5), st.integers(0, 30), st.just(0)),
                    min_size=1, max_size=3))
usage_st = st.dictionaries(   # account -> (used, floor)
    st.sampled_from("abcdef"),
    st.integers(0, 400).flatmap(lambda u: st.tuples(st.just(u), st.integers(0, u))),
    max_size=4)
op_st = st.one_of(
    st.tuples(st.just("put"), st.sampled_from("abcdef"), st.integers(0, 5000),
              st.integers(0, 300), st.integers(0, 48), bids_st),
    st.tuples(st.just("money"), st.sampled_from("abcdef"), st.integers(-2000, 4000),
              st.integers(-500, 2000)),
    st.tuples(st.just("remove"), st.sampled_from("abcdef")),
    st.tuples(st.just("tick"), st.integers(1, 12)),   # quarter ticks since the last op
    st.tuples(st.just("tick"), st.integers(1, 12)),
    st.tuples(st.just("wait"), st.integers(1, 3)),   # quarter ticks, between ticks
    st.tuples(st.just("usage"), usage_st),
)


# a few accounts contending for the ports and the disk, with some cpu beside
unique_bids_st = st.dictionaries(
    st.sampled_from([*PORTS[:3], "cpu", "disk"]),
    st.builds(Bid, st.integers(0, 3), st.integers(0, 20), st.sampled_from([100, 500])),
    max_size=3)
unique_op_st = st.one_of(
    st.tuples(st.just("usage"), st.dictionaries(
        st.sampled_from("abc"),
        st.integers(0, 500).flatmap(lambda u: st.tuples(st.just(u), st.integers(0, u))),
        max_size=3)),
    st.tuples(st.just("put"), st.sampled_from("abc"), st.integers(0, 300),
              st.just(0), st.integers(0, 48), unique_bids_st),
    st.tuples(st.just("money"), st.sampled_from("abc"), st.integers(-100, 200),
              st.just(0)),
    st.tuples(st.just("remove"), st.sampled_from("abc")),
    st.tuples(st.just("tick"), st.integers(1, 12)),
)


def books() -> tuple[LiveBook, ReferenceBook]:
    return LiveBook(CAPS, ROOT, T, LONG, UNIQUE), ReferenceBook(CAPS, ROOT, T, LONG, UNIQUE)


def run(book: Any, op: tuple[Any, ...], now: int) -> Any:
    kind = op[0]
    try:
        if kind == "put":
            _, aid, fund, cont, end_q, bids = op   # interval end in quarter ticks
            return book.put(aid, fund, cont, now + end_q * T // 4, bids, now)
        if kind == "money":
            _, aid, fund, cont = op
            if aid not in book.accounts:
                return "absent"
            return book.add_money(aid, fund, cont, now)
        if kind == "usage":
            return book.set_usage(op[1])
        if kind == "remove":
            if op[1] not in book.accounts:
                return "absent"
            return book.remove(op[1]), book.events
        return book.tick(now)
    except Refused as exc:
        return ("refused", exc.event)
    except ValueError as exc:
        return ("value", str(exc))


def observe(book: Any) -> dict[str, Any]:
    return {"accounts": {aid: (book.money(aid), book.allocation(aid), book.rates(aid),
                               book.won(aid)) for aid in sorted(book.accounts)},
            "prices": {r: book.price(r) for r in CAPS},
            "winners": book.winners(), "id_prices": book.id_prices(),
            "below_usage": book.below_usage()}


@settings(max_examples=300, deadline=None)
@given(st.lists(op_st, max_size=60))
def test_live_book_equals_the_reference(ops: list[tuple[Any, ...]]) -> None:
    same_as_the_reference(ops)


@settings(max_examples=100, deadline=None)
@given(st.lists(unique_op_st, max_size=25))
def test_live_book_equals_the_reference_on_contended_ports_and_disk(
        ops: list[tuple[Any, ...]]) -> None:
    same_as_the_reference(ops)


def same_as_the_reference(ops: list[tuple[Any, ...]]) -> None:
    live, ref = books()
    now = 1000 * T
    for op in ops:
        if op[0] == "wait":
            now += op[1] * T // 4
            continue
        if op[0] == "tick":
            now += op[1] * T // 4
        assert run(live, op, now) == run(ref, op, now), op
        assert observe(live) == observe(ref), op


def test_money_is_charged_exactly_and_conserved() -> None:
    live = LiveBook(CAPS, ROOT, T, LONG)
    now = 1000 * T
    live.put("a", 1000, 0, now + 10 * T + 1, {"cpu": Bid(1, 0, 100)}, now)
    live.put("b", 3000, 0, now + 10 * T + 1, {"cpu": Bid(1, 0, 100)}, now)
    assert live.rates("a") == (100, 0) and live.rates("b") == (300, 0)
    assert live.allocation("a") == {"cpu": 100 * 100 // 403}
    for k in range(1, 11):
        live.tick(now + k * T)
    assert live.money("a") == (0, 0) and live.money("b") == (0, 0)
    # at the next tick their fund (0) is below their spend: a new spend, of nothing
    assert live.tick(now + 11 * T) == [AllocEvent("a", "", "exhausted", 0, 100),
                                       AllocEvent("b", "", "exhausted", 0, 300)]
    assert live.rates("a") == (0, 0)
    assert live.tick(now + 12 * T) == []   # no money: nothing expires, nothing is due


def test_a_bid_below_its_min_is_refused_and_changes_nothing() -> None:
    live = LiveBook(CAPS, ROOT, T, LONG)
    now = 1000 * T
    live.put("a", 10_000, 0, now + 10 * T, {"cpu": Bid(1, 0, 100)}, now)
    before = (live.money("a"), live.allocation("a"), live.price("cpu"))
    with pytest.raises(Refused) as got:
        live.put("b", 10, 0, now + 10 * T, {"cpu": Bid(1, 50, 100)}, now)
    assert got.value.event == AllocEvent("b", "cpu", "below_min", 0, 50)
    assert "b" not in live.accounts
    assert (live.money("a"), live.allocation("a"), live.price("cpu")) == before


def test_a_richer_bidder_drops_a_poorer_one_below_its_min() -> None:
    live = LiveBook(CAPS, ROOT, T, LONG)
    now = 1000 * T
    live.put("a", 1000, 0, now + 10 * T, {"cpu": Bid(1, 40, 100)}, now)
    assert live.allocation("a") == {"cpu": 97}
    events = live.put("b", 100_000, 0, now + 10 * T, {"cpu": Bid(1, 0, 100)}, now)
    assert events == [AllocEvent("a", "cpu", "below_min", 100 * 100 // 10_103, 40)]
    assert live.allocation("a") == {} and live.rates("a") == (0, 0)


def test_contingency_tops_up_and_the_top_up_ends_with_the_money() -> None:
    live = LiveBook(CAPS, ROOT, T, LONG)
    now = 1000 * T
    live.put("a", 1000, 30, now + 10 * T, {"cpu": Bid(1, 50, 100)}, now)
    events = live.put("b", 1000, 0, now + 10 * T, {"cpu": Bid(1, 0, 100)}, now)
    # a needs ceil(50 * 103 / 50) = 103 per tick: top-up 3 from its contingency fund
    assert events == [AllocEvent("a", "cpu", "topped_up", 3, 50)]
    assert live.allocation("a")["cpu"] >= 50 and live.rates("a") == (100, 3)
    out = [live.tick(now + k * T) for k in range(1, 12)]
    ended = [e for evs in out for e in evs if e.kind == "topup_ended"]
    assert ended == [AllocEvent("a", "", "topup_ended", 0, 3)]
    assert live.money("a")[1] == 0


def test_an_interval_end_expires_with_a_long_interval() -> None:
    live = LiveBook(CAPS, ROOT, T, LONG)
    now = 1000 * T
    live.put("a", 1000, 0, now + 2 * T, {"cpu": Bid(1, 0, 5)}, now)
    assert live.allocation("a") == {"cpu": 5} and live.rates("a") == (1, 0)  # capped
    live.tick(now + T)
    events = live.tick(now + 2 * T)
    assert events == [AllocEvent("a", "", "expired", 999, now + 2 * T + LONG)]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abcdefghij"), st.integers(0, 50_000),
                          st.integers(1, 40), bids_st), max_size=12),
       st.sampled_from([T, 250_000]), usage_st)
def test_between_events_it_charges_what_the_per_tick_allocator_charges(
        puts: list[tuple[str, int, int, dict[str, Bid]]], tick: int,
        usage: dict[str, tuple[int, int]]) -> None:
    """With the spends frozen, one tick of the per-tick allocator (run_tick) on the same
    bids gives the same allocations, unique winners, charges and prices (no contingency
    funds here, so no top-ups; nobody is short once the events have dropped them), its
    ``outbid`` events are the losing bids standing in the book and its disk events the
    accounts below their usage."""
    live = LiveBook(CAPS, ROOT, tick, LONG, UNIQUE, usage)
    now = 1000 * T
    for aid, fund, end_q, bids in puts:
        with contextlib.suppress(Refused):
            events = live.put(aid, fund, 0, now + end_q * T // 4, bids, now)
            # a claim dropped leaves its part of the spend unspent (until its account's
            # next event): the per-tick allocator would split it over the others
            assume(all(e.kind != "below_min" for e in events))
    accs = tuple(AccountState(aid, a.spend, now + tick, dict(a.bids))
                 for aid, a in sorted(live.accounts.items()))
    result = run_tick(build_book(CAPS, accs, UNIQUE), [a.fund for a in accs],
                      [0] * len(accs), [a.interval_end_us for a in accs], now, tick, ROOT,
                      usage)
    assert [e for e in result.events if e.kind not in ("not_offered", "outbid")
            and not e.kind.startswith("disk_")] == []
    assert [e for e in result.events if e.kind.startswith("disk_")] == list(
        live.below_usage().values())
    for aid in live.accounts:
        assert live.allocation(aid) == result.allocation(aid)
        assert live.won(aid) == dict(result.unique_won.get(aid, {}))
        assert live.rates(aid) == (result.charges[aid], 0)
    for r in CAPS:
        assert live.price(r) == result.prices[r] * tick // 1_000_000
    assert live.winners() == result.winners
    assert live.id_prices() == {k: v for k, v in result.prices.items() if "," in k}
    losing = sorted((aid, id_key(*ident), o.amount, s.price())
                    for ident, s in live.unique.idents.items()
                    for (aid, _), o in s.offers.items() if (aid, _) != s.winner())
    assert sorted((e.account_id, e.resource, e.amount, e.limit) for e in result.events
                  if e.kind == "outbid") == losing


# -- unique resources, rule by rule ------------------------------------------------

PORT = "tcp_port,30000"


def test_a_sealed_bid_wins_at_the_second_price_and_losers_pay_their_bid() -> None:
    live = LiveBook(CAPS, ROOT, T, LONG, UNIQUE)
    now = 1000 * T
    end = now + 10 * T   # a fund of F spends F / 10 per tick
    # alone: pays the reserve (2), not its bid (10)
    assert live.put("a", 100, 0, end, {PORT: Bid(1, 0, 0)}, now) == [
        AllocEvent("a", PORT, "won", 10, 2)]
    assert live.rates("a") == (2, 0) and live.winners() == {PORT: "a"}
    assert live.id_prices() == {PORT: 2} and live.allocation("a") == {PORT: 1}
    # a lower bid loses, pays itself, and sets the winner's price
    assert live.put("b", 60, 0, end, {PORT: Bid(1, 0, 0)}, now) == [
        AllocEvent("b", PORT, "outbid", 6, 6)]
    assert live.rates("a") == (6, 0) and live.rates("b") == (6, 0)
    assert live.won("b") == {} and live.allocation("b") == {PORT: 0}
    # a tie goes to the smaller account id
    assert live.put("c", 100, 0, end, {PORT: Bid(1, 0, 0)}, now) == [
        AllocEvent("c", PORT, "outbid", 10, 10)]
    assert live.winners() == {PORT: "a"} and live.rates("a") == (10, 0)
    # more money wins: the winner before is outbid, at no refusal (2/7)
    assert live.add_money("b", 140, 0, now) == [AllocEvent("a", PORT, "outbid", 10, 10),
                                                AllocEvent("b", PORT, "won", 20, 10)]
    assert live.rates("a") == (10, 0) and live.rates("b") == (10, 0)
    # the winner leaves: the best of the rest wins
    live.remove("b")
    assert live.events == [AllocEvent("a", PORT, "won", 10, 10)]
    assert live.winners() == {PORT: "a"} and live.rates("c") == (10, 0)


def test_a_winner_pays_its_own_min_and_a_bid_below_the_reserve_cannot_win() -> None:
    live = LiveBook(CAPS, ROOT, T, LONG, UNIQUE)
    now = 1000 * T
    live.put("a", 100, 0, now + 10 * T, {PORT: Bid(1, 7, 0)}, now)   # own min 7/s
    assert live.rates("a") == (7, 0) and live.id_prices() == {PORT: 7}
    ip = "ipv4_address,198.18.0.5"    # reserve 9 per tick
    assert live.put("d", 50, 0, now + 10 * T, {ip: Bid(1, 0, 0)}, now) == [
        AllocEvent("d", ip, "outbid", 5, 9)]
    assert live.rates("d") == (5, 0) and ip not in live.winners()
    assert live.id_prices()[ip] == 9


def test_a_range_splits_its_money_over_the_offered_ports_and_loses_them_one_by_one(
        ) -> None:
    live = LiveBook(CAPS, ROOT, T, LONG, UNIQUE)
    now = 1000 * T
    rng = "tcp_port,30000-30009"   # covers the four offered, 30000 to 30003
    events = live.put("e", 1000, 0, now + 10 * T, {"cpu": Bid(1, 0, 100),
                                                    rng: Bid(1, 0, 0)}, now)
    # spend 100: 50 to cpu, 50 to the range, 50 // 4 = 12 on each port
    assert events == [AllocEvent("e", f"tcp_port,{p}", "won", 12, r)
                      for p, r in ((30000, 2), (30001, 2), (30002, 2), (30003, 0))]
    assert live.rates("e") == (50 + 2 + 2 + 2 + 0, 0)
    assert live.won("e") == {rng: 4} and live.allocation("e") == {"cpu": 50 * 100 // 53, rng: 4}
    assert live.put("f", 200, 0, now + 10 * T, {"tcp_port,30001": Bid(1, 0, 0)}, now) == [
        AllocEvent("e", "tcp_port,30001", "outbid", 12, 12),
        AllocEvent("f", "tcp_port,30001", "won", 20, 12)]
    assert live.rates("e") == (50 + 2 + 12 + 2 + 0, 0) and live.won("e") == {rng: 3}
    assert live.allocation("e")["cpu"] == 94   # losing a port changes nothing else
    # e's own event that loses it two more ports is not refused: 1 per port now
    assert live.add_money("e", -900, 0, now) == [
        AllocEvent("e", "tcp_port,30000", "outbid", 1, 2),
        AllocEvent("e", "tcp_port,30002", "outbid", 1, 2)]
    assert live.won("e") == {rng: 1} and live.winners()["tcp_port,30003"] == "e"
    assert live.rates("e") == (5 + 1 + 1 + 1 + 0, 0)


def test_a_bid_on_what_is_not_offered_is_reported_and_gets_no_money() -> None:
    live = LiveBook(CAPS, ROOT, T, LONG, UNIQUE)
    now = 1000 * T
    events = live.put("g", 1000, 0, now + 10 * T, {
        "cpu": Bid(1, 0, 100), "gpu": Bid(1, 0, 1), "tcp_port,40000": Bid(1, 0, 0)}, now)
    assert events == [AllocEvent("g", "gpu", "not_offered", 0, 0),
                      AllocEvent("g", "tcp_port,40000", "not_offered", 0, 0)]
    assert live.rates("g") == (100, 0) and set(live.record("g").bids) == {"cpu"}


def digest_from_scratch(book: LiveBook) -> bytes:
    import hashlib

    from p2pmarket.core.wire import pack_plain
    total = sum(int.from_bytes(hashlib.sha256(pack_plain(rec.row(aid))).digest(), "big")
                for aid, rec in book.records().items()) % (1 << 256)
    return hashlib.sha256(pack_plain([book.ticks, total.to_bytes(32, "big")])).digest()


@settings(max_examples=150, deadline=None)
@given(st.lists(op_st, max_size=40), st.lists(op_st, max_size=15))
def test_records_restore_the_book_and_the_digest_follows_them(
        ops: list[tuple[Any, ...]], more: list[tuple[Any, ...]]) -> None:
    """A book restored from its records is the same book: same records, digest and
    observations, and the same outputs for whatever comes next; the incremental digest
    is the one computed from scratch; ``changed`` names exactly the records that
    changed."""
    live = LiveBook(CAPS, ROOT, T, LONG, UNIQUE)
    now = 1000 * T
    for op in ops:
        now += op[1] * T // 4 if op[0] in ("tick", "wait") else 0
        if op[0] == "wait":
            continue
        before = live.records()
        if run(live, op, now) == "absent":
            continue
        after = live.records()
        assert live.changed == {aid for aid in before.keys() | after.keys()
                                if before.get(aid) != after.get(aid)}, op
        assert live.digest() == digest_from_scratch(live)
    copy = LiveBook.restore(CAPS, ROOT, T, LONG, live.ticks, live.records(), UNIQUE,
                            live.disk.usage)
    assert copy.records() == live.records() and copy.digest() == live.digest()
    assert observe(copy) == observe(live)
    for op in more:
        now += op[1] * T // 4 if op[0] in ("tick", "wait") else 0
        if op[0] == "wait":
            continue
        assert run(copy, op, now) == run(live, op, now)
        assert observe(copy) == observe(live) and copy.digest() == live.digest()


def test_restore_refuses_records_no_book_could_hold() -> None:
    live = LiveBook(CAPS, ROOT, T, LONG)
    now = 1000 * T
    live.put("a", 1000, 0, now + 10 * T, {"cpu": Bid(1, 0, 100)}, now)
    rec = live.record("a")
    for bad in ({"a": replace(rec, fund=-1)}, {"a": replace(rec, topups={"memory": 1})},
                {"a": replace(rec, since=5)}, {"a": replace(rec, spend=-1)},
                {"a": replace(rec, bids={"cpu": Bid(1, 99, 100)})},
                {"a": replace(rec, bids={**rec.bids, PORT: Bid(1, 0, 0)},
                              topups={PORT: 1})}):
        with pytest.raises(ValueError):
            LiveBook.restore(CAPS, ROOT, T, LONG, live.ticks, bad, UNIQUE)


# -- disk usage ----------------------------------------------------------------------

def test_a_disk_below_its_usage_shrinks_or_goes_and_an_own_event_may_not_delete_it(
        ) -> None:
    live = LiveBook(CAPS, ROOT, T, LONG, UNIQUE)
    now = 1000 * T
    live.put("a", 960, 0, now + 10 * T, {"disk": Bid(1, 0, 500)}, now)
    assert live.allocation("a") == {"disk": 480}   # 96 * 500 / 100, exactly
    assert live.set_usage({"a": (480, 0)}) == []     # it gets what it uses: not below
    assert live.set_usage({"a": (481, 0)}) == [AllocEvent("a", "disk", "disk_shrink",
                                                          480, 481)]
    assert live.set_usage({}) == [] and live.below_usage() == {}
    live.put("a", 1000, 0, now + 10 * T, {"disk": Bid(1, 0, 500)}, now)
    assert live.allocation("a") == {"disk": 100 * 500 // 104}   # 480
    # 480 below the 490 used, above the 300 it can shrink to
    assert live.set_usage({"a": (490, 300)}) == [AllocEvent("a", "disk", "disk_shrink",
                                                            480, 490)]
    assert live.set_usage({"a": (490, 300)}) == []   # once, not at every call or tick
    assert live.put("c", 10, 0, now + 10 * T, {"disk": Bid(1, 0, 500)}, now) == []
    assert live.allocation("a") == {"disk": 100 * 500 // 105}   # still below, as before
    live.remove("c")
    assert live.tick(now + T) == []
    # another's bid may take it below what it can shrink to (not refused: not b's
    # disk); b spends ceil(1000 / 9) = 112, a still its frozen 100
    assert live.put("b", 1000, 0, now + 10 * T, {"disk": Bid(1, 0, 500)}, now + T) == [
        AllocEvent("a", "disk", "disk_delete", 100 * 500 // 216, 490)]
    # a's own event that leaves it there is refused (6/27), one that lifts it is not
    with pytest.raises(Refused) as got:
        live.add_money("a", -400, 0, now + T)
    assert got.value.event.kind == "disk_delete"
    assert live.add_money("a", 9000, 0, now + T) == [   # spends 9900 / 9 = 1100
        AllocEvent("a", "disk", "disk_shrink", 1100 * 500 // 1216, 490)]
    assert live.below_usage() == {"a": AllocEvent("a", "disk", "disk_shrink", 452, 490)}
    assert live.set_usage({}) == [] and live.below_usage() == {}
