"""Market queries over the sharded offer index: the walk over a type's bands and the
multi-type query (docs/design.md section 3).

The ranking and selection are pure; :class:`Walk` and :func:`query` only sequence
the reads they are given (a node's or a gateway client's ``read_shard`` and
``get_host``).

:class:`Walk` reads a type's bands best first (:mod:`p2pmarket.dht.offershards`),
a window at a time (the group keys :data:`GROUP_LOOKAHEAD` at a time, so empty
groups above the market cost one round trip together), a crowded band again
through its sub-shards, until it holds
enough eligible offers or has read every band an eligible offer can be in; it
keeps the newest entry per signer across shards and drops withdrawals. Entries
of a band it has read rank above every entry of a band it has not, so the top
``n`` of what it holds are the true top ``n`` of the index (as long as no
sub-shard of a band it read held more signers than its storers keep).

A host qualifies when it offers every asked type with at least ``min_capacity``
and at most ``max_price`` per unit, and (``min_availability_ppm``) its record
shows at least that availability. The first type's offer comes from the walk;
the others (and the current prices, hour averages and availability shown by
``p2pmarket hosts``) from the host record, fetched and verified separately. Hosts
are ranked by the cost efficiency (capacity / price) of the first asked type,
then of the next ones, then by node id, as the SLS ranked one resource. An offer
whose host record is not found does not count: :func:`query` fetches records in
rank order, the first ``2 n + 4``, then ``2 (n - found) + 4`` at a time, walking
further while it lacks hosts, up to :data:`MAX_RECORD_LOOKUPS` records; after the
first batch it takes the signers most storers held first (then in rank order), so
entries with no host behind them, however cheap they claim to be and however many
a lying storer makes up, cost a bounded number of lookups and cannot crowd out
hosts most storers hold.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from p2pmarket.dht.offers import (
    MAX_OFFERS,
    OfferEntry,
    efficiency,
    live_offers,
    offer_doc,
    rank_offers,
)
from p2pmarket.dht.offershards import (
    band_key,
    bands,
    group_key,
    group_of,
    is_crowded,
    sub_keys,
)
from p2pmarket.dht.records import HostRecord, ResourceAd, host_doc

MAX_RECORD_LOOKUPS = 4 * MAX_OFFERS
"""Host records one query fetches at most (beyond the first ``2 n + 4``)."""


@dataclass(frozen=True)
class ShardRead:
    """What a reader found under one shard key: its live entries (withdrawals
    included, one per signer) and the size of the largest set a storer gave."""

    entries: tuple[OfferEntry, ...]
    largest: int = 0
    support: Mapping[bytes, int] = field(default_factory=dict)
    """Per signer, how many storers' sets held it (absent: 1)."""


ReadShard = Callable[[str], Awaitable[ShardRead]]


GROUP_LOOKAHEAD = 4
"""Group keys a walk step reads at once (the current one and the next ones): the
extra lookups buy fewer round trips down a sparse index."""


class Walk:
    """One walk over a type's bands, best first (see the module docstring)."""

    def __init__(self, resource_type: str, read: ReadShard, now_us: int, *,
                 min_capacity: int = 0, max_price: int | None = None,
                 puzzle_bits: int = 0) -> None:
        self.resource_type = resource_type
        self.read = read
        self.now_us = now_us
        self.min_capacity = min_capacity
        self.max_price = max_price
        self.puzzle_bits = puzzle_bits
        self.pending = bands(resource_type, min_capacity, max_price)
        self.found: list[OfferEntry] = []
        self.support: dict[bytes, int] = {}
        """Per signer, the most storers that held it in any shard read."""
        self.lookups = 0
        self.bands_read = 0
        """Bands read completely."""
        self._cache: dict[str, ShardRead] = {}

    @property
    def reads(self) -> dict[str, ShardRead]:
        """Every shard read so far, in the order read."""
        return dict(self._cache)

    @property
    def exhausted(self) -> bool:
        return not self.pending

    async def _read(self, keys: list[str]) -> list[ShardRead]:
        todo = [k for k in keys if k not in self._cache]
        for key, got in zip(todo, await asyncio.gather(*(self.read(k) for k in todo)),
                            strict=True):
            self._cache[key] = got
        self.lookups += len(todo)
        return [self._cache[k] for k in keys]

    async def step(self, want: int = 0) -> None:
        """Read the next group: its key, and if that set is crowded its bands (crowded
        ones through their sub-shards), best first; once ``want`` eligible offers are
        held, the group's lower bands are left for the next step (their band reads
        kept, their sub-shards not read). A group set that is not crowded holds all
        its bands' entries (empty ones included): it is the whole window."""
        group = group_of(self.pending[0])
        window = [b for b in self.pending if group_of(b) == group]
        # the next few group keys at once: an empty group costs no round trip of its own
        ahead = list(dict.fromkeys(group_of(b) for b in self.pending))[:GROUP_LOOKAHEAD]
        (head, *_) = await self._read([group_key(self.resource_type, g) for g in ahead])
        if not is_crowded(len(head.entries), head.largest):
            # the group's set is whole (empty, or with room left at its storers): it
            # holds every entry of its bands, so they need no reads of their own
            self._take(head)
            for band in window:
                self.pending.remove(band)
            self.bands_read += len(window)
            return
        reads = await self._read([band_key(self.resource_type, b) for b in window])
        for band, got in zip(window, reads, strict=True):
            parts = [got]
            if is_crowded(len(got.entries), got.largest):
                parts = await self._read(sub_keys(self.resource_type, band))
            self.pending.remove(band)
            self.bands_read += 1
            for r in (got, *parts):
                self._take(r)
            if want and len(self.offers()) >= want:
                return

    def _take(self, read: ShardRead) -> None:
        self.found.extend(read.entries)
        for e in read.entries:
            self.support[e.node_id] = max(self.support.get(e.node_id, 0),
                                          read.support.get(e.node_id, 1))

    def offers(self) -> list[OfferEntry]:
        """The eligible offers found, newest per signer, best first."""
        live = live_offers(self.found, self.now_us, self.puzzle_bits)
        return rank_offers(live, len(live), self.min_capacity, self.max_price)

    async def top(self, need: int) -> list[OfferEntry]:
        """Walk until at least ``need`` eligible offers are held (or every band is
        read); all of them, best first."""
        ranked = self.offers()
        while len(ranked) < need and not self.exhausted:
            await self.step(need)
            ranked = self.offers()
        return ranked


@dataclass(frozen=True)
class MarketHost:
    """One host of a market query: its verified record and its offer of the first asked
    type (the other types are in the record)."""

    record: HostRecord
    offers: Mapping[str, OfferEntry]

    @property
    def node_id(self) -> bytes:
        return self.record.node_id


def _ad_efficiency(ad: ResourceAd) -> tuple[int, Fraction]:
    return (0, Fraction(ad.capacity, ad.price)) if ad.price else (1, Fraction(ad.capacity))


def host_order(types: Sequence[str], entry: OfferEntry, record: HostRecord) -> tuple[Any, ...]:
    """The ranking key of a host: the first type's offer, then the record's other
    types, then the node id."""
    keys: list[Any] = []
    tier, ratio = efficiency(entry)
    keys += [-tier, -ratio]
    for rtype in types[1:]:
        tier, ratio = _ad_efficiency(record.resources[rtype])
        keys += [-tier, -ratio]
    return (*keys, entry.node_id)


def qualifies(types: Sequence[str], record: HostRecord | None, min_capacity: int,
              max_price: int | None, min_availability_ppm: int) -> bool:
    """Whether a found record lists every type within the filters."""
    if record is None or record.availability_ppm < min_availability_ppm:
        return False
    for rtype in types:
        ad = record.resources.get(rtype)
        if ad is None or ad.capacity < min_capacity or (
                max_price is not None and ad.price > max_price):
            return False
    return True


def select(types: Sequence[str], ranked: Sequence[OfferEntry],
           records: Mapping[bytes, HostRecord | None], n: int, min_capacity: int = 0,
           max_price: int | None = None, min_availability_ppm: int = 0) -> list[MarketHost]:
    """The top ``n`` of ``ranked`` (first-type offers, best first) whose records were
    found and qualify, by :func:`host_order`."""
    hosts = [MarketHost(r, {types[0]: e}) for e in ranked
             if (r := records.get(e.node_id)) is not None
             and qualifies(types, r, min_capacity, max_price, min_availability_ppm)]
    hosts.sort(key=lambda h: host_order(types, h.offers[types[0]], h.record))
    return hosts[:n]


def market_doc(host: MarketHost) -> dict[str, Any]:
    """JSON-friendly row for ``p2pmarket hosts --json`` and the control API."""
    doc = host_doc(host.record)
    doc["offers"] = {t: offer_doc(e) for t, e in host.offers.items()}
    return doc


async def top_offers_each(walks: Sequence[Walk], n: int) -> list[OfferEntry]:
    """For each walk in order, its top ``n`` by capacity/price, concatenated."""
    tops = await asyncio.gather(*(w.top(n) for w in walks))
    return [e for top in tops for e in top[:n]]


async def query(types: Sequence[str], n: int, walk: Walk,
                get_host: Callable[[bytes], Awaitable[HostRecord | None]], *,
                min_availability_ppm: int = 0) -> list[MarketHost]:
    """The market query over any reader: walk the first type's bands, fetch the best
    offers' host records in rank order, select (see the module docstring)."""
    if not types or n <= 0:
        return []
    records: dict[bytes, HostRecord | None] = {}
    first = 2 * n + 4
    ranked = await walk.top(first)
    while True:
        chosen = select(types, ranked, records, n, walk.min_capacity, walk.max_price,
                        min_availability_ppm)
        if len(chosen) >= n:
            nth = efficiency(chosen[-1].offers[types[0]])
            nxt = next((e for e in ranked if e.node_id not in records), None)
            if nxt is None or efficiency(nxt) < nth:
                return chosen
        budget = max(first, MAX_RECORD_LOOKUPS) - len(records)
        if budget <= 0:
            return chosen
        if len(records) >= first and len(chosen) < n and not walk.exhausted:
            await walk.step(len(ranked) + 1)   # short of hosts: look further first
            ranked = walk.offers()
        todo = [e.node_id for e in ranked if e.node_id not in records]
        if len(records) >= first:   # past the first batch: best supported first
            todo.sort(key=lambda i: -walk.support.get(i, 1))
        if not todo:
            if walk.exhausted:
                return chosen
            ranked = await walk.top(len(ranked) + 1)
            continue
        batch = todo[: min(budget, first if not records else 2 * max(0, n - len(chosen)) + 4)]
        found = await asyncio.gather(*(get_host(i) for i in batch))
        records.update(zip(batch, found, strict=True))
