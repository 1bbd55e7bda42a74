"""A broker's decisions, pure (docs/design.md section 10): what it may sell from the
tickets it holds, at what price, and what it gives for a rejected ticket.

- **Posted prices**, not an auction: the broker sets a price per resource type in
  micro-credits per unit-hour (a unit is the type's base unit: cpu MHz, memory KiB,
  ...); a sub-ticket of ``count`` units for ``d`` µs costs
  ``ceil(count * price * d / 3600e6)``, at least 1 per item (:func:`price_of`).
- **Oversubscription degree** ``oversub_ppm`` (parts per million): from a held ticket
  of ``n`` units the broker promises at most ``floor(n * (1e6 + oversub_ppm) / 1e6)``
  at any instant (0: never more than it holds; 250000: 125 %). The instant that
  matters is the peak of its live sales over the asked term (:func:`sharp.tree.peak`,
  the site's own sweep).
- **Bundles** (slide 26): a purchase is 1..:data:`MAX_ITEMS` items ``(site, type,
  count)`` for one term, served all or none, each from a held ticket of its site and
  type whose term covers the asked one (the one with the most room left, ties to the
  lower claim id).
- **Replacements**: a buyer whose ticket a site rejected with a proof naming this
  broker gets a new ticket from another held ticket with real room (counted without
  oversubscription, the rejected one's parent excluded) or, failing that, its money
  back (the payment's share of the rejected item).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from p2pmarket.core.errors import P2PMarketError
from p2pmarket.sharp.claims import Rset, Term, Ticket
from p2pmarket.sharp.tree import peak

PPM = 1_000_000
HOUR_US = 3600 * 1_000_000
MAX_ITEMS = 8
MAX_OVERSUB_PPM = 10 * PPM   # 1000 %: a broker may be reckless, not absurd


class BrokerError(P2PMarketError):
    """A purchase, replacement or setting the broker refuses (``value``: a reason)."""


@dataclass(frozen=True)
class Holding:
    """A ticket the broker holds (its final holder is the broker)."""

    ticket: Ticket

    @property
    def claim_id(self) -> bytes:
        return self.ticket.final.claim_id

    @property
    def site(self) -> bytes:
        return self.ticket.site

    @property
    def rset(self) -> Rset:
        return self.ticket.rset

    @property
    def term(self) -> Term:
        return self.ticket.term


@dataclass(frozen=True)
class Sale:
    """A sub-ticket sold from holding ``parent`` (live unless replaced or refunded)."""

    claim_id: bytes
    parent: bytes
    count: int
    term: Term
    live: bool = True


@dataclass(frozen=True)
class Item:
    """One part of a purchase: ``count`` units of ``rtype`` at ``site``."""

    site: bytes
    rtype: str
    count: int


@dataclass(frozen=True)
class BrokerSettings:
    prices: Mapping[str, int]       # µc per unit-hour, per resource type
    oversub_ppm: int = 0


def limit(count: int, oversub_ppm: int) -> int:
    """What may be promised at one instant from a ticket of ``count`` units."""
    return count * (PPM + oversub_ppm) // PPM


def promised(holding: Holding, sales: Sequence[Sale], term: Term) -> int:
    """The peak of the live sales from ``holding`` over ``term``."""
    return peak([(s.term, s.count) for s in sales if s.live and s.parent == holding.claim_id],
                term.start, term.end)[0]


def room(holding: Holding, sales: Sequence[Sale], term: Term, oversub_ppm: int) -> int:
    """How many more units of ``holding`` may be promised for all of ``term`` (0 when
    its term does not cover ``term``)."""
    if not (holding.term.start <= term.start and term.end <= holding.term.end):
        return 0
    return max(0, limit(holding.rset.count, oversub_ppm) - promised(holding, sales, term))


def price_of(items: Sequence[Item], term: Term, prices: Mapping[str, int]) -> int:
    """The posted price of a purchase (module docstring); :class:`BrokerError` for a type
    without a price."""
    total = 0
    duration = term.end - term.start
    for item in items:
        price = prices.get(item.rtype)
        if price is None:
            raise BrokerError(f"this broker does not sell {item.rtype}", "no_price")
        total += max(1, -(-item.count * price * duration // HOUR_US))
    return total


def allocate(holdings: Sequence[Holding], sales: Sequence[Sale], items: Sequence[Item],
             term: Term, oversub_ppm: int, exclude: frozenset[bytes] = frozenset()
             ) -> list[Holding]:
    """The holding each item is cut from (in item order), all or none; raises
    :class:`BrokerError` (``sold_out``) naming the first item that does not fit."""
    if not 1 <= len(items) <= MAX_ITEMS:
        raise BrokerError(f"a purchase has 1..{MAX_ITEMS} items", "items")
    work = list(sales)
    chosen = []
    for i, item in enumerate(items):
        fits = [(room(h, work, term, oversub_ppm), h) for h in holdings
                if h.site == item.site and h.rset.rtype == item.rtype and h.rset.ident is None
                and h.claim_id not in exclude]
        fits = [(r, h) for r, h in fits if r >= item.count]
        if not fits:
            raise BrokerError(f"item {i}: no ticket held has {item.count} {item.rtype} left "
                              "at that site for that term", "sold_out")
        best = min(fits, key=lambda rh: (-rh[0], rh[1].claim_id))[1]
        chosen.append(best)
        # a placeholder sale, so the next item of the bundle sees this one
        work.append(Sale(b"\0" * 16, best.claim_id, item.count, term))
    return chosen


@dataclass(frozen=True)
class SiteOffer:
    """What an advert says of one site and type: the most one purchase can get from
    now to the end of ``term`` (the held ticket's term, so a buyer's term that began a
    moment ago still falls within it)."""

    site: bytes
    rtype: str
    amount: int
    term: Term


def offers(holdings: Sequence[Holding], sales: Sequence[Sale], oversub_ppm: int,
           now: int) -> list[SiteOffer]:
    """Per (site, type) the held ticket with the most room from ``now`` (or its start)
    to its end, with its term; held tickets ended or full left out. Sorted by type,
    then site."""
    best: dict[tuple[bytes, str], SiteOffer] = {}
    for h in holdings:
        if h.rset.ident is not None or h.term.end <= now:
            continue
        term = Term(max(h.term.start, now), h.term.end)
        amount = room(h, sales, term, oversub_ppm)
        key = (h.site, h.rset.rtype)
        if amount > 0 and (key not in best or amount > best[key].amount):
            best[key] = SiteOffer(h.site, h.rset.rtype, amount, h.term)
    return [best[k] for k in sorted(best, key=lambda k: (k[1], k[0]))]


def replacement(holdings: Sequence[Holding], sales: Sequence[Sale], rejected: Sale,
                conflicted: bytes) -> Holding | None:
    """Where a replacement for the rejected sale comes from: a held ticket of the same
    site and type with real room (no oversubscription) for its term, the conflicted
    claim ``conflicted`` (the parent the proof names) excluded; None: refund."""
    parent = next((h for h in holdings if h.claim_id == rejected.parent), None)
    if parent is None:
        return None
    others = [s for s in sales if s.claim_id != rejected.claim_id]
    try:
        [h] = allocate(holdings, others,
                       [Item(parent.site, parent.rset.rtype, rejected.count)],
                       rejected.term, 0, exclude=frozenset({conflicted, rejected.parent}))
    except BrokerError:
        return None
    return h


def refund_share(paid: int, items: Sequence[Item], term: Term, prices: Mapping[str, int],
                 index: int) -> int:
    """The part of ``paid`` for item ``index`` of a purchase, in proportion to the
    posted prices (the whole payment for a one-item purchase)."""
    if len(items) == 1:
        return paid
    parts = [price_of([it], term, prices) if it.rtype in prices else 1 for it in items]
    return paid * parts[index] // sum(parts)


def check_oversub(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) \
            or not 0 <= value <= MAX_OVERSUB_PPM:
        raise BrokerError(f"an oversubscription degree is 0..{MAX_OVERSUB_PPM} ppm",
                          "oversubscription")
    return value


__all__ = ["HOUR_US", "MAX_ITEMS", "PPM", "BrokerError", "BrokerSettings", "Holding", "Item",
           "Sale", "SiteOffer", "allocate", "check_oversub", "limit", "offers", "price_of",
           "promised", "refund_share", "replacement", "room"]
