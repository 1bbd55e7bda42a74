"""Sharing one divisible resource among fixed bids, pure (docs/design.md §6, rules 3 and 5).

Proportional shares with max caps, water-filled (:func:`water_fill`; the root
account takes what is left), and the drop of the bidders still below their min,
furthest below first, until everyone left meets it (:func:`share_with_drops`).
:func:`clearing` gives the capped set and the clearing capacity and bids alone,
which is all the allocator's first pass needs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cmp_to_key
from typing import Any

# (capped indices, capacity C left for the uncapped set, their bids B, root included)
Clearing = tuple[list[int], int, int]


@dataclass(frozen=True)
class Share:
    """One divisible resource's outcome among fixed bids."""

    alloc: list[int]
    capped: list[int]
    bids_total: int   # B of the uncapped set (root included)
    cap_total: int    # C left for the uncapped set


def clearing(capacity: int, bids: list[int], maxes: list[int], cappable: list[int],
             root_bid: int) -> Clearing:
    """The capped set and the uncapped set's capacity C and bids B (root included)."""
    return _cap_rounds(cappable, bids, maxes, capacity, root_bid + sum(bids))


def _cap_rounds(cand: list[int], bids: list[int], maxes: list[int], cap_left: int,
                bid_left: int) -> Clearing:
    """Water-filling: cap every candidate whose proportional share would pass its max,
    take its max out of the capacity and its bid out of the bids, repeat until no one
    else passes. Returns the newly capped, and the capacity C and bids B left."""
    capped: list[int] = []
    while cand:
        newly = [i for i in cand if bids[i] * cap_left > maxes[i] * bid_left]
        if not newly:
            break
        capped.extend(newly)
        for i in newly:
            cap_left -= maxes[i]
            bid_left -= bids[i]
        gone = set(newly)
        cand = [i for i in cand if i not in gone]
    return capped, cap_left, bid_left


def water_fill(capacity: int, bids: list[int], maxes: list[int], cappable: list[int],
               root_bid: int) -> Share:
    """Proportional shares of ``capacity`` with max caps; the root takes the rest.

    Only the indices in ``cappable`` (max below capacity) can be capped.
    """
    capped, cap_left, bid_left = clearing(capacity, bids, maxes, cappable, root_bid)
    alloc = [b * cap_left // bid_left for b in bids]
    for i in capped:
        alloc[i] = maxes[i]
    return Share(alloc, capped, bid_left, cap_left)


def _ratio_order(bids: list[int], mins: list[int]) -> Callable[[int], Any]:
    def cmp(i: int, j: int) -> int:
        lhs, rhs = bids[i] * mins[j], bids[j] * mins[i]
        if lhs != rhs:
            return -1 if lhs < rhs else 1
        return -1 if i < j else (1 if i > j else 0)
    return cmp_to_key(cmp)


def share_with_drops(cap: int, bids: list[int], maxes: list[int], mins: list[int],
                     cappable: list[int], with_min: list[int], root: int,
                     first: Clearing | None = None
                     ) -> tuple[Share, list[int], dict[int, int]]:
    """Water-fill, dropping the bidders furthest below their min until all left meet it.

    Returns the final share, the dropped indices and the share each of those would
    have had in the first fill.

    Only uncapped bidders can be short, and for them ``alloc = floor(bid * C / B)``
    with one ``C / B`` for all, so the furthest below (smallest bid/min) is short
    whenever anyone is, and dropping bidders only raises ``C / B``: the drop order is
    a prefix of the first fill's short list sorted by bid/min. The length of the
    prefix is found by binary search; each try updates the capped set from the first
    fill's and checks only the next bidder in line.
    """
    capped0_list, c0, b0 = first or clearing(cap, bids, maxes, cappable, root)
    capped0 = set(capped0_list)
    short = [i for i in with_min if i not in capped0 and bids[i] * c0 // b0 < mins[i]]
    capped: list[int] = []
    cap_left, bid_left, hi = c0, b0, 0
    if short:
        short.sort(key=_ratio_order(bids, mins))  # worst first: smallest bid/min
        free0 = [i for i in cappable if i not in capped0]
        prefix = [0]
        for i in short:
            prefix.append(prefix[-1] + bids[i])

        def attempt(k: int) -> Clearing | None:
            gone = set(short[:k])
            more, c, b = _cap_rounds([i for i in free0 if i not in gone], bids, maxes,
                                     c0, b0 - prefix[k])
            if k < len(short):
                nxt = short[k]
                if nxt not in more and bids[nxt] * c // b < mins[nxt]:
                    return None
            return more, c, b

        lo, hi = 1, len(short)   # dropping every short bidder always works
        best = attempt(hi)
        assert best is not None
        while lo < hi:
            mid = (lo + hi) // 2
            got = attempt(mid)
            if got is None:
                lo = mid + 1
            else:
                hi, best = mid, got
        capped, cap_left, bid_left = best
    dropped = short[:hi]
    had = {i: bids[i] * c0 // b0 for i in dropped}
    alloc = [b * cap_left // bid_left for b in bids]
    for i in dropped:
        alloc[i] = 0
    all_capped = sorted(capped0 | set(capped))
    for i in all_capped:
        alloc[i] = maxes[i]
    return Share(alloc, all_capped, bid_left, cap_left), dropped, had


__all__ = ["Clearing", "Share", "clearing", "share_with_drops", "water_fill"]
