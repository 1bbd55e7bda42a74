"""The pure Tycoon allocator (DESIGN.md §6): integers in, integers out, no clocks or I/O.

One call allocates one tick:

1. Each account spends ``ceil(fund * tick / remaining)`` this tick (never more
   than its fund), where ``remaining = max(interval_end - now, tick)``: a funded
   account always bids at least one micro-credit, and the last tick of the
   interval spends what is left.
2. The spend is split across the account's bids by weight (largest remainder,
   ties by resource name), so the parts add up exactly to the spend.
3. Each divisible resource is shared in proportion to the bids. The host's root
   account always bids ``root_bid`` (so no price is ever zero, seed 6/13) and
   has no max. Max caps are enforced by water-filling: a capped bidder gets its
   max and the rest is shared again among the others. Shares are rounded down;
   the root takes what is left, so allocations add up exactly to capacity.
4. A bidder whose share is below its min loses its claim on that resource
   (event ``below_min``, allocation 0, no charge); the one furthest below its
   min is dropped first and the resource is shared again, until everyone left
   meets its min.
5. An uncapped bidder pays its bid; a capped one pays its max at the final
   clearing price ``B/C`` (bids and capacity of the uncapped set, root
   included), rounded up but never more than its bid. The rest stays in the
   fund. ``charges`` are the sums per account; ``revenue`` the sums per
   resource; both add up to the same total.

``prices[r]`` is the sum of all bids on ``r`` (root included) in micro-credits
per second: the price of the whole resource, what a buyer's best response
needs as "the others' bids".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

US_PER_S = 1_000_000


@dataclass(frozen=True)
class Bid:
    """An account's bid on one resource: weight in ppm, min and max in base units."""

    weight_ppm: int
    min: int
    max: int


@dataclass(frozen=True)
class AccountState:
    account_id: str
    fund: int
    interval_end_us: int
    bids: Mapping[str, Bid] = field(default_factory=dict)


@dataclass(frozen=True)
class AllocationInput:
    capacities: Mapping[str, int]
    accounts: tuple[AccountState, ...]
    now_us: int
    tick_us: int
    root_bid: int


@dataclass(frozen=True)
class AllocEvent:
    """Something the auctioneer must act on. ``kind``: ``below_min`` or ``not_offered``."""

    account_id: str
    resource: str
    kind: str
    amount: int
    limit: int


@dataclass(frozen=True)
class AllocationResult:
    allocations: Mapping[str, Mapping[str, int]]
    charges: Mapping[str, int]
    events: tuple[AllocEvent, ...]
    prices: Mapping[str, int]
    revenue: Mapping[str, int]
    free: Mapping[str, int]


def tick_spend(fund: int, interval_end_us: int, now_us: int, tick_us: int) -> int:
    """What an account spends this tick: ``ceil(fund * tick / remaining)``, at most ``fund``."""
    if fund <= 0:
        return 0
    remaining = max(interval_end_us - now_us, tick_us)
    return min(fund, -(-fund * tick_us // remaining))


def split_by_weight(amount: int, weights: Mapping[str, int]) -> dict[str, int]:
    """Split ``amount`` in proportion to ``weights``; the parts add up to ``amount``."""
    total = sum(weights.values())
    if total <= 0 or amount <= 0:
        return {k: 0 for k in weights}
    parts = {k: amount * w // total for k, w in weights.items()}
    left = amount - sum(parts.values())
    order = sorted(weights, key=lambda k: (-(amount * weights[k] % total), k))
    for k in order[:left]:
        parts[k] += 1
    return parts


@dataclass(frozen=True)
class _Share:
    """One resource's outcome among a fixed set of bidders."""

    alloc: dict[str, int]
    capped: frozenset[str]
    bids_total: int   # B of the uncapped set (root included)
    cap_total: int    # C left for the uncapped set


def water_fill(capacity: int, bids: Mapping[str, int], maxes: Mapping[str, int],
               root_bid: int) -> _Share:
    """Proportional share with max caps; the root (not in ``bids``) takes the rest."""
    capped: set[str] = set()
    cap_left, bid_left = capacity, root_bid + sum(bids.values())
    while True:
        newly = [a for a, b in bids.items()
                 if a not in capped and b * cap_left > maxes[a] * bid_left]
        if not newly:
            break
        for a in newly:
            capped.add(a)
            cap_left -= maxes[a]
            bid_left -= bids[a]
    alloc = {a: maxes[a] if a in capped else bids[a] * cap_left // bid_left for a in bids}
    return _Share(alloc, frozenset(capped), bid_left, cap_left)


def _share_resource(capacity: int, bids: dict[str, int], mins: dict[str, int],
                    maxes: dict[str, int], root_bid: int,
                    ) -> tuple[_Share, dict[str, int]]:
    """Water-fill, dropping bidders below their min one at a time (worst first).

    Returns the final share and ``{dropped account: its share when dropped}``.
    """
    active = dict(bids)
    dropped: dict[str, int] = {}
    while True:
        share = water_fill(capacity, active, maxes, root_bid)
        short = [a for a in active if share.alloc[a] < mins[a]]
        if not short:
            return share, dropped
        # furthest below min: smallest alloc/min, compared exactly; ties by id
        worst = short[0]
        for a in short[1:]:
            lhs, rhs = share.alloc[a] * mins[worst], share.alloc[worst] * mins[a]
            if lhs < rhs or (lhs == rhs and a < worst):
                worst = a
        dropped[worst] = share.alloc[worst]
        del active[worst]


def allocate(inp: AllocationInput) -> AllocationResult:
    """Allocate one tick. Same input, same output: a witness can replay it."""
    assert inp.tick_us > 0 and inp.root_bid > 0
    accounts = sorted(inp.accounts, key=lambda a: a.account_id)
    assert len({a.account_id for a in accounts}) == len(accounts), "duplicate account ids"
    events: list[AllocEvent] = []
    allocations: dict[str, dict[str, int]] = {a.account_id: {} for a in accounts}
    charges = {a.account_id: 0 for a in accounts}

    # 1-2: spend per account, split by weight over offered resources
    per_resource: dict[str, dict[str, int]] = {r: {} for r in sorted(inp.capacities)}
    for acc in accounts:
        weights: dict[str, int] = {}
        for res in sorted(acc.bids):
            if res in inp.capacities:
                weights[res] = acc.bids[res].weight_ppm
            else:
                allocations[acc.account_id][res] = 0
                events.append(AllocEvent(acc.account_id, res, "not_offered", 0, 0))
        spend = tick_spend(acc.fund, acc.interval_end_us, inp.now_us, inp.tick_us)
        for res, part in split_by_weight(spend, weights).items():
            per_resource[res][acc.account_id] = part

    # 3-5: share each resource
    prices: dict[str, int] = {}
    revenue: dict[str, int] = {}
    free: dict[str, int] = {}
    by_id = {a.account_id: a for a in accounts}
    for res, bids in per_resource.items():
        capacity = inp.capacities[res]
        mins = {a: by_id[a].bids[res].min for a in bids}
        maxes = {a: max(0, by_id[a].bids[res].max) for a in bids}
        share, dropped = _share_resource(max(0, capacity), bids, mins, maxes, inp.root_bid)
        earned = 0
        for a in bids:
            if a in share.alloc:
                amount = share.alloc[a]
                if a in share.capped:
                    pay = min(bids[a], -(-amount * share.bids_total // share.cap_total)
                              if share.cap_total > 0 else bids[a])
                else:
                    pay = bids[a]
            else:
                amount, pay = 0, 0
            allocations[a][res] = amount
            charges[a] += pay
            earned += pay
        for a, had in dropped.items():
            events.append(AllocEvent(a, res, "below_min", had, mins[a]))
        revenue[res] = earned
        free[res] = max(0, capacity) - sum(share.alloc.values())
        total_bids = inp.root_bid + sum(bids[a] for a in share.alloc)
        prices[res] = total_bids * US_PER_S // inp.tick_us
    events.sort(key=lambda e: (e.account_id, e.resource, e.kind))
    return AllocationResult(allocations, charges, tuple(events), prices, revenue, free)
