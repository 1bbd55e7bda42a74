"""Unique resources' standing sealed bids, kept up to date bid by bid (docs/design.md §6,
"event-driven allocation"; the rules are those of :mod:`p2pmarket.auction.unique`).
Pure, mutable; used by :mod:`p2pmarket.auction.livebook`.

An account's bid on a unique key (single or range) is, on each offered identifier the
key covers, an *entry* ``(account, key)`` with a per-tick ``amount`` (the bid's money
split evenly over those identifiers, rounded down) and ``own_min`` (the bid's min per
second as a per-tick price, rounded up). Per identifier the entries are kept in order
of amount, highest first (ties: smaller account id, then key: the order of
:func:`~p2pmarket.auction.unique.run_unique`); the first wins if its amount is
positive and at least the reserve, and pays ``min(amount, max(own_min, second
amount, reserve))``; every other entry pays its amount. A change is O(log n) on its
identifier, and the charges it can move are those of the entry changed, the winner
before and the winner after.

Events, per call of the book (between :meth:`Uniques.begin` and :meth:`Uniques.end`).
An account's *status* on an identifier is ``winning`` (one of its entries wins),
``losing`` (it has entries there and none wins) or none. At the end of the call, on
each identifier whose entries changed and for each account whose status there may
have changed: ``won`` if it is winning now and was not before the call (amount: the
winning entry's amount, limit: the price it pays per tick); ``outbid`` if it is
losing now and was winning or had no entry there before the call (amount: its
highest entry there, limit: the winner's price per tick, or the reserve if nobody
wins). What happened in between (a cascade's steps) does not count.

An identifier the host offers twice (overlapping ranges) counts once, at the reserve
of the first range that holds it (run_unique would count it twice for a bid).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from sortedcontainers import SortedKeyList

from p2pmarket.auction.model import AllocEvent
from p2pmarket.auction.unique import build_unique, id_key
from p2pmarket.core.clock import US_PER_S

Entry = tuple[str, str]    # (account, its bid key)
Ident = tuple[str, int]    # (type, identifier)
_CACHE = 4096


@dataclass(frozen=True)
class Offer:
    amount: int    # per tick, on one identifier
    own_min: int   # per tick


def _order(item: tuple[Entry, Offer]) -> tuple[int, str, str]:
    (aid, key), offer = item
    return (-offer.amount, aid, key)


class Sealed:
    """One identifier's entries and their sealed-bid outcome."""

    def __init__(self, reserve: int) -> None:
        self.reserve = reserve
        self.offers: dict[Entry, Offer] = {}
        self.by_account: dict[str, set[str]] = {}
        self._order = SortedKeyList(key=_order)

    def put(self, entry: Entry, offer: Offer | None) -> None:
        aid, key = entry
        old = self.offers.pop(entry, None)
        if old is not None:
            self._order.remove((entry, old))
            keys = self.by_account[aid]
            keys.discard(key)
            if not keys:
                del self.by_account[aid]
        if offer is not None:
            self.offers[entry] = offer
            self._order.add((entry, offer))
            self.by_account.setdefault(aid, set()).add(key)

    def winner(self) -> Entry | None:
        if not self._order:
            return None
        entry, top = self._order[0]
        return entry if top.amount > 0 and top.amount >= self.reserve else None

    def price(self) -> int:
        """What the winner pays per tick; the reserve if nobody wins."""
        if self.winner() is None:
            return self.reserve
        top: Offer = self._order[0][1]
        second = self._order[1][1].amount if len(self._order) > 1 else 0
        return min(top.amount, max(top.own_min, second, self.reserve))

    def cost(self, entry: Entry) -> int:
        return self.price() if entry == self.winner() else self.offers[entry].amount

    def best(self, aid: str) -> int:
        return max(self.offers[(aid, k)].amount for k in self.by_account[aid])


class Uniques:
    """Every offered identifier's entries, with the undo and the events of one call."""

    def __init__(self, offered: Mapping[str, int], tick_us: int) -> None:
        self.table = build_unique(offered, ())
        self.tick_us = tick_us
        self.idents: dict[Ident, Sealed] = {}      # those with entries
        self._covered: dict[str, tuple[Ident, ...]] = {}
        self._undo: list[tuple[Ident, Entry, Offer | None]] = []
        self._before: dict[Ident, Entry | None] = {}     # winner before the call
        self._had: dict[Ident, dict[str, bool]] = {}     # account had entries there

    def covered(self, key: str) -> tuple[Ident, ...]:
        """The offered identifiers in ``key`` (none if it is not a unique key)."""
        got = self._covered.get(key)
        if got is None:
            if len(self._covered) >= _CACHE:
                self._covered.clear()
            got = self._covered[key] = tuple(dict.fromkeys(self.table.covered(key))) \
                if "," in key else ()
        return got

    # -- changes -------------------------------------------------------------------

    def bid(self, aid: str, key: str, money: int | None, own_min_per_s: int = 0) -> None:
        """Set the entries of ``aid``'s bid on ``key`` (``money`` per tick over all the
        identifiers it covers), or with None remove them."""
        ids = self.covered(key)
        offer = None if money is None or not ids else Offer(
            money // len(ids), -(-own_min_per_s * self.tick_us // US_PER_S))
        for ident in ids:
            self._put(ident, (aid, key), offer)

    def _put(self, ident: Ident, entry: Entry, offer: Offer | None) -> None:
        sealed = self.idents.get(ident)
        if sealed is None:
            if offer is None:
                return
            sealed = self.idents[ident] = Sealed(self.table.reserve(*ident))
        old = sealed.offers.get(entry)
        if old == offer:
            return
        if ident not in self._before:
            self._before[ident] = sealed.winner()
        had = self._had.setdefault(ident, {})
        if entry[0] not in had:
            had[entry[0]] = entry[0] in sealed.by_account
        self._undo.append((ident, entry, old))
        self._raw(ident, entry, offer)

    def _raw(self, ident: Ident, entry: Entry, offer: Offer | None) -> None:
        sealed = self.idents.get(ident)
        if sealed is None:
            sealed = self.idents[ident] = Sealed(self.table.reserve(*ident))
        sealed.put(entry, offer)
        if not sealed.offers:
            del self.idents[ident]

    def begin(self) -> None:
        self._undo, self._before, self._had = [], {}, {}

    def end(self, commit: bool) -> tuple[list[AllocEvent], set[str]]:
        """Commit (the events and the accounts whose charges may have moved) or undo."""
        undo, before, had_all = self._undo, self._before, self._had
        self.begin()
        if not commit:
            for ident, entry, old in reversed(undo):
                self._raw(ident, entry, old)
            return [], set()
        events: list[AllocEvent] = []
        touched: set[str] = set()
        for ident, old_w in before.items():
            sealed = self.idents.get(ident)
            new_w = sealed.winner() if sealed is not None else None
            had = had_all.get(ident, {})
            names = set(had) | {w[0] for w in (old_w, new_w) if w is not None}
            touched |= names
            if sealed is None:
                continue
            price = sealed.price()
            for aid in sorted(names):
                was = "win" if old_w is not None and old_w[0] == aid else \
                    "lose" if had.get(aid, True) else ""
                if new_w is not None and new_w[0] == aid:
                    if was != "win":
                        events.append(AllocEvent(aid, id_key(*ident), "won",
                                                 sealed.offers[new_w].amount, price))
                elif aid in sealed.by_account and was != "lose":
                    events.append(AllocEvent(aid, id_key(*ident), "outbid",
                                             sealed.best(aid), price))
        return events, touched

    # -- reading -------------------------------------------------------------------

    def charge(self, aid: str, keys: Iterable[str]) -> int:
        """What ``aid``'s bids on ``keys`` pay per tick."""
        total = 0
        for key in keys:
            for ident in self.covered(key):
                total += self.idents[ident].cost((aid, key))
        return total

    def won(self, aid: str, key: str) -> int:
        """How many identifiers ``aid``'s bid on ``key`` wins."""
        return sum(1 for ident in self.covered(key)
                   if self.idents[ident].winner() == (aid, key))

    def winners(self) -> dict[str, str]:
        return {id_key(*ident): w[0] for ident, s in sorted(self.idents.items())
                if (w := s.winner()) is not None}

    def prices(self) -> dict[str, int]:
        """Per identifier bid on: the winner's price (or the reserve) per second."""
        return {id_key(*ident): s.price() * US_PER_S // self.tick_us
                for ident, s in sorted(self.idents.items())}


__all__ = ["Offer", "Sealed", "Uniques"]
