"""One divisible resource's standing claims and their clearing, kept up to date claim by
claim (docs/design.md §6, "event-driven allocation"). Pure, mutable, O(log n) per change.

A claim is an account's standing per-tick bid on the resource: ``base`` (from its
expected-value fund) plus ``topup`` (from its contingency fund), its ``min`` and
``max``. The clearing is the water-filling of :func:`p2pmarket.auction.shares.clearing`
on the effective bids ``e = base + topup``, the root bid included:

- **The capped set is a prefix.** Sort the cappable claims (``max < capacity``) by
  ``e / max``, highest first. With the first ``k`` capped, the uncapped set has
  capacity ``C_k = capacity - sum(max)`` and bids ``B_k = root + sum(e) - sum(e of the
  capped)``; claim ``k`` (0-based) *qualifies* when ``e * C_k > max * B_k``. Capping a
  qualifying claim only lowers ``B / C``, so "claim k qualifies at prefix k" is true
  for a prefix of the ``k`` and false after it, and the water-filling's capped set is
  the prefix up to the first ``k`` that does not qualify. After a change the boundary
  is found again by walking from where it was (each step O(log n)); the result does
  not depend on where the walk starts.
- **The worst claim is first in line.** An uncapped claim is *short* when its share
  ``floor(e * C / B)`` is below its min, i.e. ``e * C < min * B``: the claims with a
  min, ordered by ``e / min`` (ties by account id), are short in a prefix of that
  order (capped claims, which get their max >= min, skipped).

Allocation: a capped claim gets its max, an uncapped one ``floor(e * C / B)``; the
root keeps the rest. Cost per tick: an uncapped claim pays ``e``; a capped one
``min(e, ceil(max * B / C))``, from ``base`` first, the rest from ``topup``.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from sortedcontainers import SortedKeyList


@dataclass(frozen=True)
class Claim:
    """One account's standing bid on one resource (per tick)."""

    base: int    # from the expected-value fund
    topup: int   # from the contingency fund
    min: int
    max: int

    @property
    def bid(self) -> int:
        return self.base + self.topup


# The sort keys compare ratios exactly: a ratio's float first (correctly rounded, so
# monotonic: x < y gives float(x) <= float(y)), the exact Fraction only on a tie.

def _cap_key(item: tuple[str, Claim]) -> tuple[int, float, Fraction, str]:
    aid, c = item
    if c.max == 0:   # a max of nothing: capped (at 0) by any positive bid, first
        return (0 if c.bid > 0 else 2, 0.0, Fraction(0), aid)
    return (1, -(c.bid / c.max), -Fraction(c.bid, c.max), aid)


def _min_key(item: tuple[str, Claim]) -> tuple[float, Fraction, str]:
    aid, c = item
    return (c.bid / c.min, Fraction(c.bid, c.min), aid)


class Standing:
    """The standing claims on one resource and their clearing (see the module docstring)."""

    def __init__(self, capacity: int, root_bid: int) -> None:
        assert capacity > 0 and root_bid > 0
        self.capacity = capacity
        self.root_bid = root_bid
        self.claims: dict[str, Claim] = {}
        self.bid_total = root_bid          # root + every claim's e
        self._cappable = SortedKeyList(key=_cap_key)
        self._with_min = SortedKeyList(key=_min_key)
        self.capped: set[str] = set()      # the first ``len(capped)`` of ``_cappable``
        self._capped_bids = 0
        self._capped_max = 0

    # -- the clearing --------------------------------------------------------------

    @property
    def cap_left(self) -> int:
        """C: the capacity left for the uncapped set."""
        return self.capacity - self._capped_max

    @property
    def bids_left(self) -> int:
        """B: the uncapped set's bids, root included."""
        return self.bid_total - self._capped_bids

    def allocation(self, aid: str) -> int:
        c = self.claims[aid]
        if aid in self.capped:
            return c.max
        return c.bid * self.cap_left // self.bids_left

    def cost(self, aid: str) -> tuple[int, int]:
        """The claim's charge per tick: (from the fund, from the contingency fund)."""
        c = self.claims[aid]
        if aid not in self.capped:
            return c.base, c.topup
        b, cap = self.bids_left, self.cap_left
        cost = min(c.bid, -(-c.max * b // cap) if cap > 0 else c.bid)
        fund = min(cost, c.base)
        return fund, cost - fund

    def free(self) -> int:
        """What the root keeps."""
        c, b = self.cap_left, self.bids_left
        return self.capacity - self._capped_max - sum(
            cl.bid * c // b for aid, cl in self.claims.items() if aid not in self.capped)

    # -- changes -----------------------------------------------------------------

    def put(self, aid: str, claim: Claim | None) -> None:
        """Set (or with None remove) ``aid``'s claim, and find the capped set again."""
        old = self.claims.pop(aid, None)
        if old is not None:
            self.bid_total -= old.bid
            if old.max < self.capacity:
                if aid in self.capped:
                    self.capped.discard(aid)
                    self._capped_bids -= old.bid
                    self._capped_max -= old.max
                self._cappable.remove((aid, old))
            if old.min > 0:
                self._with_min.remove((aid, old))
        if claim is not None:
            self.claims[aid] = claim
            self.bid_total += claim.bid
            if claim.max < self.capacity:
                item = (aid, claim)
                self._cappable.add(item)
                if self._cappable.index(item) < len(self.capped):   # inside the prefix
                    self.capped.add(aid)
                    self._capped_bids += claim.bid
                    self._capped_max += claim.max
            if claim.min > 0:
                self._with_min.add((aid, claim))
        self._walk()

    def _qualifies(self, k: int) -> bool:
        """Whether cappable claim ``k`` qualifies with the first ``k`` capped (those are
        exactly the capped set when called)."""
        _, c = self._cappable[k]
        return bool(c.bid * (self.capacity - self._capped_max) > c.max * (
            self.bid_total - self._capped_bids))

    def _walk(self) -> None:
        k = len(self.capped)
        while k > 0:   # down while the last capped one would not qualify without itself
            aid, c = self._cappable[k - 1]
            self.capped.discard(aid)
            self._capped_bids -= c.bid
            self._capped_max -= c.max
            if self._qualifies(k - 1):
                self.capped.add(aid)
                self._capped_bids += c.bid
                self._capped_max += c.max
                break
            k -= 1
        n = len(self._cappable)
        while k < n and self._qualifies(k):   # up while the next one qualifies
            aid, c = self._cappable[k]
            self.capped.add(aid)
            self._capped_bids += c.bid
            self._capped_max += c.max
            k += 1

    # -- the min checks --------------------------------------------------------------

    def worst_short(self) -> str | None:
        """The uncapped claim furthest below its min (smallest e/min, ties by account
        id), or None if every claim meets its min."""
        cap, bids = self.cap_left, self.bids_left
        for aid, c in self._with_min:
            if aid in self.capped:
                continue
            return aid if c.bid * cap < c.min * bids else None
        return None

    def needed_bid(self, aid: str) -> int | None:
        """The smallest effective bid that meets ``aid``'s min at the current clearing,
        the others' bids held fixed: ``ceil(min * others / (C - min))``; None if the
        min is the whole capacity left or more."""
        c = self.claims[aid]
        cap = self.cap_left
        if cap <= c.min:
            return None
        others = self.bids_left - c.bid
        return -(-c.min * others // (cap - c.min))


__all__ = ["Claim", "Standing"]
