"""Disk claims below their account's usage, kept up to date (docs/design.md §6,
"event-driven allocation"; the per-tick allocator's rule 5 for disk). Pure, mutable;
used by :mod:`p2pmarket.auction.livebook`.

The host reports each account's disk usage ``(used, floor)`` (``floor``: what its file
system can shrink to). An account whose disk claim gets less than ``used`` is
*below*: ``disk_shrink`` if it gets at least ``floor``, else ``disk_delete`` (amount:
its allocation, limit: ``used``). A capped claim gets its max; an uncapped one
``floor(e * C / B)``, which is below ``used`` exactly when ``e * C < used * B``, so
(as for mins in :mod:`p2pmarket.auction.standing`) the uncapped claims below their
usage are a prefix of the claims with a usage ordered by ``e / used`` (ties by account
id): finding them costs that prefix, plus the capped claims with a usage.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from fractions import Fraction

from sortedcontainers import SortedKeyList

from p2pmarket.auction.model import AllocEvent
from p2pmarket.auction.standing import Claim, Standing


def _order(item: tuple[str, int, int]) -> tuple[Fraction, str]:
    aid, bid, used = item
    return (Fraction(bid, used), aid)


class DiskUse:
    """The usage reports, the disk claims that have one, and who is below now."""

    def __init__(self, usage: Mapping[str, tuple[int, int]] | None = None) -> None:
        self.usage: dict[str, tuple[int, int]] = dict(usage or {})
        self.below: dict[str, AllocEvent] = {}         # as of the last call
        self._entries: dict[str, tuple[int, int]] = {}  # aid -> (bid, used > 0)
        self._order = SortedKeyList(key=_order)

    def sync(self, aid: str, claim: Claim | None) -> None:
        """Follow ``aid``'s disk claim (None: it has none) and its usage."""
        used = self.usage.get(aid, (0, 0))[0]
        new = (claim.bid, used) if claim is not None and used > 0 else None
        old = self._entries.pop(aid, None)
        if old == new and new is not None:
            self._entries[aid] = new
            return
        if old is not None:
            self._order.remove((aid, *old))
        if new is not None:
            self._entries[aid] = new
            self._order.add((aid, *new))

    def follow(self, st: Standing | None, aids: Iterable[str], find: bool = True
               ) -> dict[str, AllocEvent] | None:
        """:meth:`sync` the disk claims of ``aids`` on ``st`` and (unless not ``find``)
        :meth:`find` who is below now; None if there is no disk or no ``aids``."""
        if st is None or not aids:
            return None
        for aid in aids:
            self.sync(aid, st.claims.get(aid))
        return self.find(st) if find else None

    def find(self, st: Standing) -> dict[str, AllocEvent]:
        """Who is below their usage at ``st``'s clearing, and the event each would get."""
        cap, bids = st.cap_left, st.bids_left
        out: dict[str, AllocEvent] = {}
        for aid, bid, used in self._order:
            if aid in st.capped:
                continue
            if bid * cap >= used * bids:
                break
            out[aid] = self._event(aid, bid * cap // bids)
        few = self._entries if len(self._entries) < len(st.capped) else st.capped
        for aid in few:
            if aid in st.capped and aid in self._entries:
                got = st.claims[aid].max
                if got < self.usage[aid][0]:
                    out[aid] = self._event(aid, got)
        return dict(sorted(out.items()))

    def _event(self, aid: str, got: int) -> AllocEvent:
        used, floor = self.usage[aid]
        return AllocEvent(aid, "disk", "disk_shrink" if got >= floor else "disk_delete",
                          got, used)

    def news(self, now: Mapping[str, AllocEvent]) -> list[AllocEvent]:
        """The events of going from :attr:`below` to ``now``: each account that is below
        now and was not, or was below in the other kind."""
        return [e for aid, e in now.items()
                if (old := self.below.get(aid)) is None or old.kind != e.kind]


__all__ = ["DiskUse"]
