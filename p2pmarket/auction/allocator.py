"""The pure Tycoon allocator (docs/design.md §6): integers in, integers out, no clocks or I/O.

``allocate(AllocationInput) -> AllocationResult`` allocates one tick; a witness
replays it bit for bit. For speed it runs in two parts:
:func:`~p2pmarket.auction.book.build_book` turns the accounts' bids into columns
(done again only when bids or capacities change; the auctioneer caches it) and
:func:`run_tick` does the per-tick money work on those columns, as named phases
that follow the rules below. ``allocate`` is exactly ``run_tick(build_book(...),
...)``. Sharing one resource among fixed bids (water-filling, drops) is
:mod:`p2pmarket.auction.shares`.

Rules, in order:

1. **Expiry** (seed 6/20). An account whose interval has ended (``now >=
   interval_end``) with money left (fund + contingency > 0) gets event
   ``expired`` and a new interval end ``now + long_interval`` (in
   ``interval_ends``); the auctioneer shuts its VM down. It keeps its bids and
   spends slowly from now on, so it can still lose its claims when outbid.
2. **Spend** (expected-value fund). Each account spends ``ceil(fund * tick /
   remaining)`` this tick (at most its fund), ``remaining = max(end - now,
   tick)``. The spend is split over its *offered* bids by weight, each part
   rounded down; the few micro-credits of rounding stay in the fund (never
   charged, so nothing leaks). Bids on resources the host does not offer get
   event ``not_offered`` and no money.
3. **Divisible resources** (cpu, memory, disk, net_in, net_out) are shared in
   proportion to the bids. The host's root account bids ``root_bids[r]`` (or
   ``root_bid``) every tick, so no price is ever zero (seed 6/13). Max caps are
   water-filled: a bidder whose share would exceed its max gets its max and
   the rest is shared again among the others; shares are rounded down and
   the root keeps what is left (``free``).
4. **Contingency** (seed 2/21, 10/24, 1/17). If an account's share of a
   resource is below its min and it has a contingency fund, the fund tops the
   bid up to what the min costs at this tick's prices (others' bids held
   fixed): ``x = ceil(min * B' / (C - min))``. The fund is shared by all the
   account's resources: top-ups are granted in order of weight (ties by name)
   while the fund covers them in full. Event ``topped_up``.
5. **Below min** (seed 6/9). A bidder still below its min loses its claim:
   allocation 0, no charge, event ``below_min`` (amount = the share it would
   have had). Dropping one raises the others' shares, so the furthest below
   (smallest bid/min; ties by account id) goes first, until everyone left
   meets its min. For disk, a claim that stays but is smaller than the
   account's usage gives ``disk_shrink`` (allocation >= what the file system
   can shrink to) or ``disk_delete``.
6. **Charges**. An uncapped bidder pays its bid; a capped one pays its max at
   the clearing price ``B/C`` of the uncapped set (root included), rounded up,
   never more than its bid. A payment is taken from the fund part of the bid
   first, the rest from the contingency fund.
7. **Unique resources** (ipv4_address, tcp_port; seed 5/23/2007, 2/7) go by
   sealed bid per identifier: the highest bid wins (ties: smaller account id)
   and pays the largest of its own min (``Bid.min``, micro-credits per second),
   the second-highest bid and the host's reserve, never more than its bid; a
   bid below the reserve cannot win. Losing bids pay their bid (event
   ``outbid``). A bid on a range is a bid on each offered identifier in it, its
   money split evenly. Losing one identifier never affects the rest.

Charges per account (``charges`` from the fund, ``contingency_charges`` from
the contingency fund) add up exactly to ``revenue`` per resource.
``prices[r]`` is the sum of all bids on ``r`` (root included) in micro-credits
per second: what a buyer's best response needs as "the others' bids".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from operator import add

from p2pmarket.auction.book import AccountState, Book, build_book
from p2pmarket.auction.model import AllocEvent
from p2pmarket.auction.shares import Clearing, clearing, share_with_drops
from p2pmarket.auction.unique import run_unique
from p2pmarket.core.clock import US_PER_S

DAY_US = 24 * 3600 * US_PER_S
DEFAULT_LONG_INTERVAL_US = 30 * DAY_US


@dataclass(frozen=True)
class AllocationInput:
    capacities: Mapping[str, int]
    accounts: tuple[AccountState, ...]
    now_us: int
    tick_us: int
    root_bid: int
    root_bids: Mapping[str, int] = field(default_factory=dict)
    unique: Mapping[str, int] = field(default_factory=dict)
    disk_usage: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    long_interval_us: int = DEFAULT_LONG_INTERVAL_US


def tick_spend(fund: int, interval_end_us: int, now_us: int, tick_us: int) -> int:
    """What an account spends this tick: ``ceil(fund * tick / remaining)``, at most ``fund``."""
    if fund <= 0:
        return 0
    remaining = max(interval_end_us - now_us, tick_us)
    return min(fund, -(-fund * tick_us // remaining))


def split_by_weight(amount: int, weights: Mapping[str, int]) -> dict[str, int]:
    """``amount * w // total`` per key (rounded down; the parts add up to at most ``amount``)."""
    total = sum(weights.values())
    if total <= 0 or amount <= 0:
        return {k: 0 for k in weights}
    return {k: amount * w // total for k, w in weights.items()}


@dataclass(frozen=True)
class AllocationResult:
    book: Book
    columns: Mapping[str, list[int]]          # divisible allocations, aligned with book.ids
    unique_won: Mapping[str, Mapping[str, int]]   # account -> unique key -> ids won
    charges: Mapping[str, int]                # from the expected-value fund
    contingency_charges: Mapping[str, int]    # from the contingency fund (only non-zero)
    events: tuple[AllocEvent, ...]
    prices: Mapping[str, int]                 # micro-credits per second, per resource / id
    revenue: Mapping[str, int]
    free: Mapping[str, int]
    interval_ends: Mapping[str, int]          # new interval ends (expired accounts)
    winners: Mapping[str, str]                # unique id key -> winning account

    def allocation(self, account_id: str) -> dict[str, int]:
        """The account's allocation on every resource it bids on."""
        i = self.book.index[account_id]
        won = self.unique_won.get(account_id, {})
        out: dict[str, int] = {}
        for key in self.book.keys.get(i, ()):
            col = self.columns.get(key)
            if col is not None and i in self.book.bidders[key]:
                out[key] = col[i]
            else:
                out[key] = won.get(key, 0)
        return out

    @cached_property
    def allocations(self) -> dict[str, dict[str, int]]:
        return {aid: self.allocation(aid) for aid in self.book.ids}

    def total_charged(self) -> int:
        return sum(self.charges.values()) + sum(self.contingency_charges.values())


def allocate(inp: AllocationInput) -> AllocationResult:
    """Allocate one tick. Same input, same output: a witness can replay it."""
    book = build_book(inp.capacities, inp.accounts, inp.unique)
    by_id = {a.account_id: a for a in inp.accounts}
    accs = [by_id[aid] for aid in book.ids]
    return run_tick(book, [a.fund for a in accs], [a.contingency for a in accs],
                    [a.interval_end_us for a in accs], inp.now_us, inp.tick_us,
                    {r: inp.root_bids.get(r, inp.root_bid) for r in book.resources},
                    inp.disk_usage, inp.long_interval_us)


def run_tick(book: Book, funds: list[int], contingencies: list[int], ends: list[int],
             now_us: int, tick_us: int, root_bids: Mapping[str, int],
             disk_usage: Mapping[str, tuple[int, int]] | None = None,
             long_interval_us: int = DEFAULT_LONG_INTERVAL_US) -> AllocationResult:
    """One tick on prepared columns; ``funds``, ``contingencies`` and ``ends`` are
    aligned with ``book.ids``. The phases are the rules of the module docstring."""
    assert tick_us > 0 and all(v > 0 for v in root_bids.values())
    assert min(funds, default=0) >= 0 and min(contingencies, default=0) >= 0
    ids = book.ids
    events: list[AllocEvent] = list(book.not_offered)
    ends, new_ends = _expire(ids, funds, contingencies, ends, now_us, long_interval_us,
                             events)
    spend = _spend(funds, ends, now_us, tick_us)
    base = _split_spend(book, spend)
    fills, short_of = _first_fill(book, base, contingencies, root_bids)
    topups = _top_ups(book, base, contingencies, fills, short_of, events)
    usage = disk_usage or {}
    shares: dict[str, _ResourceTick] = {}
    for r in book.resources:
        shares[r] = _final_share(book, r, base[r], topups.get(r, {}), fills[r], root_bids[r],
                                 tick_us, usage, events)
    total = _fund_charges([s.pay for s in shares.values()], len(ids))
    uout = run_unique(book.unique, spend, book.total_weight, tick_us)
    for i, amount in uout.charges.items():
        total[i] += amount
    events.extend(uout.events)
    cont_pay: dict[int, int] = {}
    for s in shares.values():
        for i, v in s.from_contingency.items():
            cont_pay[i] = cont_pay.get(i, 0) + v
    events.sort(key=lambda e: (e.account_id, e.resource, e.kind))
    return AllocationResult(
        book=book, columns={r: s.alloc for r, s in shares.items()}, unique_won=uout.won,
        charges=dict(zip(ids, total, strict=True)),
        contingency_charges={ids[i]: v for i, v in sorted(cont_pay.items()) if v},
        events=tuple(events),
        prices={**{r: s.price for r, s in shares.items()}, **uout.prices},
        revenue={**{r: s.revenue for r, s in shares.items()}, **uout.revenue},
        free={r: s.free for r, s in shares.items()}, interval_ends=new_ends,
        winners=uout.winners)


def _expire(ids: tuple[str, ...], funds: list[int], contingencies: list[int],
            ends: list[int], now_us: int, long_interval_us: int, events: list[AllocEvent]
            ) -> tuple[list[int], dict[str, int]]:
    """Rule 1: the interval ends after expiry, and the new ends of the expired."""
    new_ends: dict[str, int] = {}
    ends = list(ends)
    for i in [i for i, e in enumerate(ends) if e <= now_us]:
        if funds[i] + contingencies[i] > 0:
            ends[i] = now_us + long_interval_us
            new_ends[ids[i]] = ends[i]
            events.append(AllocEvent(ids[i], "", "expired", funds[i] + contingencies[i],
                                     ends[i]))
    return ends, new_ends


def _spend(funds: list[int], ends: list[int], now_us: int, tick_us: int) -> list[int]:
    """Rule 2: what each account spends this tick (:func:`tick_spend`, inlined)."""
    if not ends or min(ends) - now_us > tick_us:   # the usual case: no interval ends now
        return [-(-f * tick_us // (e - now_us)) for f, e in zip(funds, ends, strict=True)]
    return [min(f, -(-f * tick_us // (e - now_us if e - now_us > tick_us else tick_us)))
            for f, e in zip(funds, ends, strict=True)]


def _split_spend(book: Book, spend: list[int]) -> dict[str, list[int]]:
    """Rule 2: each account's spend split over its offered bids by weight (the bids
    on the divisible resources, per resource)."""
    total_w = book.total_weight
    return {r: [s * w // t for s, w, t in zip(spend, book.weights[r], total_w, strict=True)]
            for r in book.resources}


def _first_fill(book: Book, base: Mapping[str, list[int]], contingencies: list[int],
                root_bids: Mapping[str, int]
                ) -> tuple[dict[str, Clearing], dict[int, list[str]]]:
    """Rule 3, first pass: each resource's clearing at the plain bids, and the
    resources each account with a contingency fund is short of its min on."""
    fills: dict[str, Clearing] = {}
    short_of: dict[int, list[str]] = {}
    for r in book.resources:
        fill = clearing(book.capacities[r], base[r], book.maxes[r], book.cappable[r],
                        root_bids[r])
        fills[r] = fill
        capped, c, b = fill
        mins, bids = book.mins[r], base[r]
        for i in book.with_min[r]:
            if contingencies[i] > 0 and bids[i] * c // b < mins[i] and i not in capped:
                short_of.setdefault(i, []).append(r)
    return fills, short_of


def _top_ups(book: Book, base: Mapping[str, list[int]], contingencies: list[int],
             fills: Mapping[str, Clearing], short_of: Mapping[int, list[str]],
             events: list[AllocEvent]) -> dict[str, dict[int, int]]:
    """Rule 4: contingency top-ups (resource -> account -> amount), priced at the first
    pass, granted by weight while the account's contingency fund covers them."""
    topups: dict[str, dict[int, int]] = {}
    for i in sorted(short_of):
        pool = contingencies[i]
        for r in book.order[i]:
            if r not in short_of[i]:
                continue
            (_capped, cap_total, bids_total), m = fills[r], book.mins[r][i]
            if cap_total <= m:
                continue
            others = bids_total - base[r][i]
            need = -(-m * others // (cap_total - m)) - base[r][i]
            if 0 < need <= pool:
                pool -= need
                topups.setdefault(r, {})[i] = need
                events.append(AllocEvent(book.ids[i], r, "topped_up", need, m))
    return topups


@dataclass(frozen=True)
class _ResourceTick:
    """One divisible resource's final outcome this tick."""

    alloc: list[int]                  # per account
    pay: list[int]                    # charged to each account's fund
    from_contingency: dict[int, int]  # charged to contingency funds (the top-ups kept)
    revenue: int
    price: int
    free: int


def _final_share(book: Book, r: str, base: list[int], extra: Mapping[int, int],
                 fill: Clearing, root: int, tick_us: int,
                 usage: Mapping[str, tuple[int, int]], events: list[AllocEvent]
                 ) -> _ResourceTick:
    """Rules 5 and 6 on resource ``r``: the shares with the top-ups ``extra``, the
    bidders below their min dropped, and the charges."""
    cap, maxes, mins = book.capacities[r], book.maxes[r], book.mins[r]
    bids = base
    if extra:
        bids = list(bids)
        for i, t in extra.items():
            bids[i] += t
    share, dropped, first = share_with_drops(cap, bids, maxes, mins, book.cappable[r],
                                             book.with_min[r], root,
                                             None if extra else fill)
    pay = list(base)
    for i in dropped:
        pay[i] = 0
        events.append(AllocEvent(book.ids[i], r, "below_min", first[i], mins[i]))
    gone = set(dropped)
    cont: dict[int, int] = {}
    paid_extra = 0
    for i, t in extra.items():
        if i not in gone:
            cont[i] = t
            paid_extra += t
    for i in share.capped:
        full = bids[i]
        cost = min(full, -(-maxes[i] * share.bids_total // share.cap_total)
                   if share.cap_total > 0 else full)
        from_fund = min(cost, base[i])
        pay[i] = from_fund
        if i in extra:
            over = extra[i] - (cost - from_fund)
            cont[i] -= over
            paid_extra -= over
    if r == "disk" and usage:
        _disk_events(book, share.alloc, gone, usage, events)
    live_bids = sum(bids) - sum(bids[i] for i in dropped)
    return _ResourceTick(share.alloc, pay, cont, sum(pay) + paid_extra,
                         (root + live_bids) * US_PER_S // tick_us, cap - sum(share.alloc))


def _disk_events(book: Book, alloc: list[int], gone: set[int],
                 usage: Mapping[str, tuple[int, int]], events: list[AllocEvent]) -> None:
    """Rule 5 for disk: a claim kept below the account's usage shrinks or deletes it."""
    for aid, (used, floor) in sorted(usage.items()):
        i = book.index.get(aid, -1)
        if i < 0 or i not in book.bidders["disk"] or i in gone or alloc[i] >= used:
            continue
        kind = "disk_shrink" if alloc[i] >= floor else "disk_delete"
        events.append(AllocEvent(aid, "disk", kind, alloc[i], used))


def _fund_charges(pays: list[list[int]], n: int) -> list[int]:
    """Each account's charges to its fund, over the divisible resources."""
    if not pays:
        return [0] * n
    total = pays[0]
    for col in pays[1:]:
        total = list(map(add, total, col))
    return total


__all__ = ["AllocationInput", "AllocationResult", "allocate", "run_tick", "split_by_weight",
           "tick_spend"]
