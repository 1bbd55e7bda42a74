"""Market queries over the offer index: several resource types at once.

The ranking and selection are pure; :func:`query` only sequences the reads it is
given (a node's or a gateway client's ``offers_of`` and ``get_host``).

A host qualifies when it offers every asked type with at least ``min_capacity``
and at most ``max_price`` per unit. Hosts are ranked by the cost efficiency
(capacity / price) of the first asked type, then of the next ones, then by
node id, as the SLS ranked one resource; the caller keeps the top ``n``. The
host record (fetched and verified separately) supplies the current price, the
hour average and the availability shown by ``p2pmarket hosts``. An offer whose
host record is not found does not count: :func:`query` fetches the records of the
best ``2 n + 4`` and, while it has fewer than ``n`` hosts, goes on through the rest
in the order the reader gave the first type's offers (a node's reader: the signers
most close nodes hold first), up to :data:`MAX_RECORD_LOOKUPS` records. So entries
with no host behind them, however cheap they claim to be and however many a lying
storer makes up, cannot crowd established hosts out of the answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from p2pmarket.dht.offers import (
    MAX_OFFERS,
    OfferEntry,
    efficiency,
    eligible,
    offer_doc,
    rank_offers,
)
from p2pmarket.dht.records import HostRecord, host_doc

MAX_RECORD_LOOKUPS = 4 * MAX_OFFERS
"""Host records one query fetches at most (beyond the first ``2 n + 4``)."""


@dataclass(frozen=True)
class MarketHost:
    """One host of a market query: its verified record and its offer per asked type."""

    record: HostRecord
    offers: Mapping[str, OfferEntry]

    @property
    def node_id(self) -> bytes:
        return self.record.node_id


def candidates(types: Sequence[str], offers: Mapping[str, Iterable[OfferEntry]],
               min_capacity: int = 0, max_price: int | None = None
               ) -> list[dict[str, OfferEntry]]:
    """Per host (offering every type within the filters), its offer per type, best first."""
    per_host: dict[bytes, dict[str, OfferEntry]] = {}
    for rtype in types:
        for entry in offers.get(rtype, ()):
            if entry.type == rtype and eligible(entry, min_capacity, max_price):
                per_host.setdefault(entry.node_id, {})[rtype] = entry
    full = [o for o in per_host.values() if len(o) == len(types)]

    def order(o: dict[str, OfferEntry]) -> tuple[Any, ...]:
        keys: list[Any] = []
        for rtype in types:
            tier, ratio = efficiency(o[rtype])
            keys += [-tier, -ratio]
        return (*keys, o[types[0]].node_id)

    return sorted(full, key=order)


def select(types: Sequence[str], ranked: Sequence[dict[str, OfferEntry]],
           records: Mapping[bytes, HostRecord | None], n: int,
           max_price: int | None = None) -> list[MarketHost]:
    """The top ``n`` ranked hosts whose records were found and list every type (and,
    with ``max_price``, whose current record prices are within it too)."""
    out = []
    for offers in ranked:
        node_id = offers[types[0]].node_id
        record = records.get(node_id)
        if record is None or not all(t in record.resources for t in types):
            continue
        if max_price is not None and any(record.resources[t].price > max_price
                                         for t in types):
            continue
        out.append(MarketHost(record, dict(offers)))
        if len(out) >= n:
            break
    return out


def market_doc(host: MarketHost) -> dict[str, Any]:
    """JSON-friendly row for ``p2pmarket hosts --json`` and the control API."""
    doc = host_doc(host.record)
    doc["offers"] = {t: offer_doc(e) for t, e in host.offers.items()}
    return doc


def top_offers_each(sets: Sequence[Iterable[OfferEntry]], n: int, min_capacity: int,
                    max_price: int | None) -> list[OfferEntry]:
    """For each offer set in order, its top ``n`` by capacity/price, concatenated."""
    out: list[OfferEntry] = []
    for entries in sets:
        out.extend(rank_offers(entries, n, min_capacity, max_price))
    return out


async def query(types: Sequence[str], n: int, min_capacity: int, max_price: int | None,
                offers_of: Callable[[str], Awaitable[list[OfferEntry]]],
                get_host: Callable[[bytes], Awaitable[HostRecord | None]]
                ) -> list[MarketHost]:
    """The market query over any DHT reader (a node, or a gateway client): fetch each
    type's offers, rank the candidates, fetch the best ones' host records, select."""
    if not types or n <= 0:
        return []
    sets = await asyncio.gather(*(offers_of(t) for t in types))
    ranked = candidates(types, dict(zip(types, sets, strict=True)), min_capacity, max_price)
    records: dict[bytes, HostRecord | None] = {}
    first = ranked[: 2 * n + 4]
    given = {e.node_id: i for i, e in reversed(list(enumerate(sets[0])))}
    rest = sorted(ranked[len(first):],
                  key=lambda o: given.get(o[types[0]].node_id, len(given)))
    order = [*first, *rest][: max(len(first), MAX_RECORD_LOOKUPS)]
    done = 0
    while True:
        fetched = {o[types[0]].node_id for o in order[:done]}
        chosen = select(types, [o for o in ranked if o[types[0]].node_id in fetched],
                        records, n, max_price)
        if len(chosen) >= n or done >= len(order):
            return chosen
        batch = order[done: done + 2 * (n - len(chosen)) + 4]
        ids = [o[types[0]].node_id for o in batch]
        found = await asyncio.gather(*(get_host(i) for i in ids))
        records.update(zip(ids, found, strict=True))
        done += len(batch)
