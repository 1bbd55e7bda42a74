"""The bids as columns, pure: what the allocator's per-tick work runs on.

:func:`build_book` turns the accounts' bids (:class:`AccountState`) into a
:class:`Book`: per divisible resource the weights, mins, maxes and bidders aligned
with the account ids (sorted), each account's resources by weight, the unique
offers and bids (:mod:`p2pmarket.auction.unique`) and the bids on what the host
does not offer. It depends only on bids and capacities, so the auctioneer builds it
again only when they change; :func:`p2pmarket.auction.allocator.run_tick` does the
money work on it every tick.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from itertools import pairwise

from p2pmarket.auction.model import AllocEvent, Bid
from p2pmarket.auction.unique import UniqueBook, build_unique


@dataclass(frozen=True)
class AccountState:
    account_id: str
    fund: int
    interval_end_us: int
    bids: Mapping[str, Bid] = field(default_factory=dict)
    contingency: int = 0


@dataclass(frozen=True)
class Book:
    """The bids as columns (index = position in ``ids``, sorted by account id)."""

    ids: tuple[str, ...]
    resources: tuple[str, ...]             # offered divisible resources, sorted
    capacities: Mapping[str, int]
    weights: Mapping[str, list[int]]       # per resource; 0 where the account does not bid
    total_weight: list[int]                # per account, over offered bids (at least 1)
    mins: Mapping[str, list[int]]
    maxes: Mapping[str, list[int]]
    bidders: Mapping[str, frozenset[int]]  # who bids on the resource
    cappable: Mapping[str, list[int]]      # bidders with max < capacity
    with_min: Mapping[str, list[int]]      # bidders with min > 0
    order: Mapping[int, tuple[str, ...]]   # an account's divisible resources, by weight desc
    keys: Mapping[int, tuple[str, ...]]    # every key an account bids on (for reports)
    unique: UniqueBook
    not_offered: tuple[AllocEvent, ...]

    @cached_property
    def index(self) -> dict[str, int]:
        return {aid: i for i, aid in enumerate(self.ids)}


def _sorted_accounts(accounts: tuple[AccountState, ...]) -> list[AccountState]:
    ids = [a.account_id for a in accounts]
    if any(x >= y for x, y in pairwise(ids)):
        accounts = tuple(sorted(accounts, key=lambda a: a.account_id))
        ids = [a.account_id for a in accounts]
        assert all(x < y for x, y in pairwise(ids)), "duplicate account ids"
    return list(accounts)


def build_book(capacities: Mapping[str, int], accounts: tuple[AccountState, ...],
               unique: Mapping[str, int] | None = None) -> Book:
    """Columns for :func:`run_tick`; depends only on bids and capacities."""
    accs = _sorted_accounts(accounts)
    n = len(accs)
    resources = tuple(sorted(r for r, c in capacities.items() if c > 0 and "," not in r))
    offered = set(resources)
    weights = {r: [0] * n for r in resources}
    mins = {r: [0] * n for r in resources}
    maxes = {r: [0] * n for r in resources}
    bidders: dict[str, set[int]] = {r: set() for r in resources}
    total = [1] * n
    order: dict[int, tuple[str, ...]] = {}
    keys: dict[int, tuple[str, ...]] = {}
    not_offered: list[AllocEvent] = []
    ubook = build_unique(unique or {}, accs)
    for i, acc in enumerate(accs):
        tw = 0
        mine: list[tuple[int, str]] = []
        for key, bid in acc.bids.items():
            if key in offered:
                weights[key][i] = bid.weight_ppm
                mins[key][i] = min(bid.min, bid.max)
                maxes[key][i] = bid.max
                bidders[key].add(i)
                tw += bid.weight_ppm
                mine.append((-bid.weight_ppm, key))
            elif "," in key and ubook.offered_in(key):
                tw += bid.weight_ppm
            else:
                not_offered.append(AllocEvent(acc.account_id, key, "not_offered", 0, 0))
        total[i] = max(1, tw)
        if mine:
            order[i] = tuple(k for _, k in sorted(mine))
        keys[i] = tuple(sorted(acc.bids))
    cap = {r: capacities[r] for r in resources}
    return Book(
        ids=tuple(a.account_id for a in accs), resources=resources, capacities=cap,
        weights=weights, total_weight=total, mins=mins, maxes=maxes,
        bidders={r: frozenset(s) for r, s in bidders.items()},
        cappable={r: sorted(i for i in bidders[r] if maxes[r][i] < cap[r]) for r in resources},
        with_min={r: sorted(i for i in bidders[r] if mins[r][i] > 0) for r in resources},
        order=order, keys=keys, unique=ubook, not_offered=tuple(not_offered))


__all__ = ["AccountState", "Book", "build_book"]
