"""Which broker and site a reservation goes to, from the ticket adverts (pure).

A reservation wants ``count`` units of each of some types, for one term, at one site
(a VM's cpu and memory come from one machine). A candidate is a broker whose adverts
name, for every wanted type, that site with at least the count for a window covering
the term; its price is the brokers' posted prices (:func:`broker.policy.price_of`).
Candidates rank by price, then broker key, then site key: the cheapest first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from p2pmarket.broker.policy import Item, price_of
from p2pmarket.dht.ticketads import TicketAd
from p2pmarket.sharp.claims import Term


@dataclass(frozen=True)
class Candidate:
    broker: bytes
    url: str
    site: bytes
    items: tuple[Item, ...]
    price: int


def candidates(ads: Mapping[str, Sequence[TicketAd]], wants: Mapping[str, int],
               term: Term) -> list[Candidate]:
    """Every (broker, site) that advertises all of ``wants`` for ``term``, cheapest
    first (module docstring)."""
    by_broker: dict[bytes, dict[str, TicketAd]] = {}
    for rtype, found in ads.items():
        for ad in found:
            if ad.type == rtype:
                by_broker.setdefault(ad.broker, {})[rtype] = ad
    out = []
    for broker, typed in by_broker.items():
        if not set(wants) <= set(typed):
            continue
        sites: set[bytes] | None = None
        for rtype, count in wants.items():
            fits = {s.site for s in typed[rtype].sites
                    if s.amount >= count and s.start <= term.start and term.end <= s.end}
            sites = fits if sites is None else sites & fits
        prices = {t: typed[t].price for t in wants}
        url = typed[next(iter(wants))].url
        for site in sorted(sites or ()):
            items = tuple(Item(site, t, c) for t, c in wants.items())
            out.append(Candidate(broker, url, site, items, price_of(items, term, prices)))
    return sorted(out, key=lambda c: (c.price, c.broker, c.site))


__all__ = ["Candidate", "candidates"]
