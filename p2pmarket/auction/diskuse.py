"""Disk claims below their account's usage, kept up to date (docs/design.md §6,
"event-driven allocation"; the per-tick allocator's rule 5 for disk). Pure, mutable;
used by :mod:`p2pmarket.auction.livebook`.

The host reports each account's disk usage ``(used, floor)`` (``floor``: what its file
system can shrink to). An account whose disk claim gets less than ``used`` is
*below*: ``disk_shrink`` if it gets at least ``floor``, else ``disk_delete`` (amount:
its allocation, limit: ``used``). A capped claim gets its max; an uncapped one
``floor(e * C / B)``, which is below a level ``u`` exactly when ``e / u < B / C``. So
an uncapped claim's kind changes only with its own bid or usage or when ``B / C``
crosses its ``e / used`` or ``e / floor``: with the claims kept in those two orders,
a change of the clearing from ``B0 / C0`` to ``B1 / C1`` re-examines the claims
between the two (O(log n) each, plus those that cross), the claims changed, and those
capped before or after but not both.
"""

from __future__ import annotations

from collections.abc import Iterable
from fractions import Fraction

from sortedcontainers import SortedKeyList

from p2pmarket.auction.model import AllocEvent
from p2pmarket.auction.standing import Claim, Standing

_TOP = "\U0010ffff"


def _ratio(item: tuple[str, int, int]) -> tuple[float, Fraction, str]:
    """``bid / level``: the float first (correctly rounded, so never out of order), the
    exact ratio on ties, as in :mod:`p2pmarket.auction.standing`."""
    aid, bid, level = item
    return (bid / level, Fraction(bid, level), aid)


class DiskUse:
    """The usage reports, the disk claims that have one, and who is below."""

    def __init__(self, usage: dict[str, tuple[int, int]] | None = None) -> None:
        self.usage: dict[str, tuple[int, int]] = dict(usage or {})
        self.kinds: dict[str, str] = {}                 # who is below, as of the last call
        self._entries: dict[str, tuple[int, int, int]] = {}   # aid -> (bid, used, floor)
        self._by_used = SortedKeyList(key=_ratio)      # (aid, bid, used)
        self._by_floor = SortedKeyList(key=_ratio)     # (aid, bid, floor), floor > 0

    def sync(self, aid: str, claim: Claim | None) -> None:
        """Follow ``aid``'s disk claim (None: it has none) and its usage."""
        used, floor = self.usage.get(aid, (0, 0))
        new = (claim.bid, used, floor) if claim is not None and used > 0 else None
        old = self._entries.get(aid)
        if old == new:
            return
        if old is not None:
            del self._entries[aid]
            self._by_used.remove((aid, old[0], old[1]))
            if old[2] > 0:
                self._by_floor.remove((aid, old[0], old[2]))
        if new is not None:
            self._entries[aid] = new
            self._by_used.add((aid, new[0], new[1]))
            if new[2] > 0:
                self._by_floor.add((aid, new[0], new[2]))

    def kind(self, st: Standing, aid: str) -> str | None:
        """``aid``'s kind at ``st``'s clearing (None: not below)."""
        if aid not in self._entries:
            return None
        got = st.allocation(aid)
        used, floor = self.usage[aid]
        return None if got >= used else "disk_shrink" if got >= floor else "disk_delete"

    def event(self, st: Standing, aid: str, kind: str) -> AllocEvent:
        return AllocEvent(aid, "disk", kind, st.allocation(aid), self.usage[aid][0])

    def changes(self, st: Standing, aids: Iterable[str],
                before: tuple[int, int, frozenset[str]] | None) -> dict[str, str | None]:
        """:meth:`sync` ``aids`` on ``st``; then the accounts whose kind differs from
        :attr:`kinds`, with their kind now. ``before``: the clearing (C, B, capped) when
        :attr:`kinds` was right (None: look at every claim)."""
        aids = set(aids)
        for aid in aids:
            self.sync(aid, st.claims.get(aid))
        if not self._entries and not self.kinds:
            return {}
        if before is None or before[0] <= 0 or st.cap_left <= 0:
            look = set(self._entries) | set(self.kinds)
        else:
            was, now = before[2], st.capped
            look = aids | ({aid for aid in self._entries if (aid in was) != (aid in now)}
                           if len(self._entries) < len(was) + len(now)
                           else (was ^ now) & self._entries.keys())
            lo, hi = sorted((Fraction(before[1], before[0]),
                             Fraction(st.bids_left, st.cap_left)))
            if lo != hi:
                bounds = ((float(lo), lo, ""), (float(hi), hi, _TOP))
                for order in (self._by_used, self._by_floor):
                    look.update(aid for aid, _, _ in order.irange_key(*bounds))
        out: dict[str, str | None] = {}
        for aid in sorted(look):
            kind = self.kind(st, aid)
            if kind != self.kinds.get(aid):
                out[aid] = kind
        return out

    def apply(self, changes: dict[str, str | None]) -> None:
        for aid, kind in changes.items():
            if kind is None:
                self.kinds.pop(aid, None)
            else:
                self.kinds[aid] = kind


__all__ = ["DiskUse"]
