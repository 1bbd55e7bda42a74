"""Host records and offers of :class:`~p2pmarket.dht.node.DhtNode` (docs/design.md
section 3): the owner signs and publishes them; anyone finds them.

Host lookups keep the highest ``seq`` and stop after ``host_quorum`` valid copies
(with at most ``get_alpha`` queries in flight; other lookups use ``alpha``),
shard lookups (:meth:`RecordsMixin.read_shard`) merge the sets of every close node
and the market walks the shards (:mod:`p2pmarket.dht.offerquery`); both repair the close nodes
that lacked the result (:meth:`~p2pmarket.dht.node_base.NodeBase._repair`).
Re-signed records take a seq (host) or ts (offer) that never goes backwards, even
across restarts (kept in the state db). The multi-type market query is
:mod:`p2pmarket.dht.offerquery`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kademlia.node import Node

from p2pmarket.core.identity import meets_puzzle
from p2pmarket.dht import offerquery
from p2pmarket.dht.checks import DhtError
from p2pmarket.dht.node_base import NodeBase
from p2pmarket.dht.offerkeep import repair_value
from p2pmarket.dht.offers import (
    OfferEntry,
    fit_offer_set,
    make_offer_entries,
    merge_offers,
    parse_offer_set,
    shard_order,
)
from p2pmarket.dht.offershards import band_of, parse_shard_key
from p2pmarket.dht.records import (
    MAX_DOC_BYTES,
    PPM,
    DocRef,
    HostRecord,
    ImageAd,
    ResourceAd,
    VmAd,
    host_key,
    key_digest,
    make_host_record,
    newer_host,
)


@dataclass(frozen=True)
class HostFields:
    """What this node's host record says, kept to re-sign it on every republish (saved
    in the state db as its ``host`` record; ``dht`` None: the address we listen on)."""

    resources: Mapping[str, ResourceAd]
    availability_ppm: int
    url: str
    dht: tuple[str, int] | None
    doc: DocRef | None = None
    reach: tuple[bytes, ...] = field(default=())
    images: tuple[ImageAd, ...] = field(default=())
    vm: VmAd | None = None

    def to_doc(self) -> dict[str, Any]:
        return {"resources": {t: [a.capacity, a.price, a.hour_avg]
                              for t, a in self.resources.items()},
                "availability_ppm": self.availability_ppm, "url": self.url,
                "dht": list(self.dht) if self.dht else None,
                "doc": self.doc.to_doc() if self.doc else None, "reach": list(self.reach),
                "images": [i.to_doc() for i in self.images],
                "vm": None if self.vm is None else self.vm.to_doc()}

    @classmethod
    def from_doc(cls, doc: Any) -> HostFields:
        dht = doc["dht"]
        ref = doc["doc"]
        return cls({str(t): ResourceAd(*map(int, v)) for t, v in doc["resources"].items()},
                   int(doc["availability_ppm"]), str(doc["url"]),
                   (str(dht[0]), int(dht[1])) if dht else None,
                   DocRef(ref["sha256"], ref["size"]) if ref else None,
                   tuple(doc["reach"]),
                   tuple(ImageAd(str(i["name"]), str(i["format"]), int(i["virtual_size"]),
                                 bytes(i["sha256"])) for i in doc.get("images", ())),
                   VmAd(**doc["vm"]) if doc.get("vm") else None)


class RecordsMixin(NodeBase):
    """Publishing and finding ``host/<id>`` records and the offer index's entries."""

    ttl_us: int
    host_quorum: int
    get_alpha: int
    _host: HostFields | None
    _offers: dict[str, tuple[int, int]]
    _docs: dict[bytes, bytes]
    _seq: int
    _ts: int

    # -- publishing --------------------------------------------------------------

    def _next_seq(self) -> int:
        self._seq = max(self.clock(), self._seq + 1)
        if self.state is not None:
            self.state.set_meta("seq", self._seq)
        return self._seq

    def _next_ts(self) -> int:
        self._ts = max(self.clock(), self._ts + 1)
        if self.state is not None:
            self.state.set_meta("ts", self._ts)
        return self._ts

    async def publish_host(self, resources: Mapping[str, ResourceAd],
                           availability_ppm: int = PPM, url: str | None = None,
                           dht: tuple[str, int] | None = None, document: bytes | None = None,
                           reach: Iterable[bytes] | None = None,
                           images: Iterable[ImageAd] | None = None,
                           vm: VmAd | None = None) -> HostRecord:
        """Sign and store this node's host record with a fresh seq (the clock in µs, so a
        restart does not go backwards). ``url`` defaults to (and updates) :attr:`url`,
        ``dht`` to the address we listen on. ``document`` (up to 4 MiB) is not put in
        the DHT: the record carries its hash and the node serves it over HTTP
        (:func:`p2pmarket.dht.gateway.gateway_routes`). ``document``/``reach``/
        ``images`` (the base images offered)/``vm`` left out keep their previous values."""
        if url is not None:
            self.url = url
        old = self._host
        ref = old.doc if old is not None else None
        if document is not None:
            if len(document) > MAX_DOC_BYTES:
                raise DhtError(f"document larger than {MAX_DOC_BYTES} bytes", "too_large")
            ref = DocRef.of(document)
        attest = tuple(reach) if reach is not None else (old.reach if old else ())
        offered = tuple(images) if images is not None else (old.images if old else ())
        fields = HostFields(dict(resources), availability_ppm, self.url, dht, ref, attest,
                            offered, vm if vm is not None else (old.vm if old else None))
        record = self._sign_host(fields)
        self._host = fields
        if document is not None and ref is not None:
            self._docs = {ref.sha256: document}
            if self.state is not None:
                self.state.put_doc(ref.sha256, document)
        if self.state is not None:
            self.state.put_own("host", fields.to_doc())
        await self._put(record.key, record.value)
        return record

    def document(self, sha256: bytes) -> bytes | None:
        """The document our host record names, by its hash (None if not ours)."""
        return self._docs.get(sha256)

    def _sign_host(self, fields: HostFields) -> HostRecord:
        if not fields.url:
            raise DhtError("a host record needs the node's RPC url", "no_url")
        return make_host_record(
            self.identity, url=fields.url, dht=fields.dht or self.address,
            resources=fields.resources, availability_ppm=fields.availability_ppm,
            seq=self._next_seq(), now_us=self.clock(), ttl_us=self.ttl_us,
            doc=fields.doc, reach=fields.reach, images=fields.images, vm=fields.vm)

    async def publish_offer(self, resource_type: str, capacity: int, price: int) -> OfferEntry:
        """Sign and store an offer in its band and sub-shard of ``offers/<resource_type>``
        (:mod:`p2pmarket.dht.offershards`); if our last offer of the type was in another
        band, a withdrawal (signed first) goes there. Returns the band's entry."""
        jobs = []
        old = self._offers.get(resource_type)
        if old is not None and band_of(*old) != band_of(capacity, price):
            gone = self._sign_offer(resource_type, 0, old[1], band=band_of(*old))
            jobs += [self._put(e.key, fit_offer_set(e.key, [e])[0]) for e in gone]
        entries = self._sign_offer(resource_type, capacity, price)
        self._offers[resource_type] = (capacity, price)
        if self.state is not None:
            self.state.put_own(f"offer/{resource_type}", [capacity, price])
        jobs += [self._put(e.key, fit_offer_set(e.key, [e])[0]) for e in entries]
        await asyncio.gather(*jobs)
        return entries[0]

    def withdraw_offer(self, resource_type: str) -> None:
        """Stop republishing an offer; it leaves query results within one expiry."""
        self._offers.pop(resource_type, None)
        if self.state is not None:
            self.state.drop_own(f"offer/{resource_type}")

    def _sign_offer(self, resource_type: str, capacity: int, price: int,
                    band: int | None = None) -> list[OfferEntry]:
        """The band's and the sub-shard's entries (a withdrawal from ``band`` when
        ``capacity`` is 0)."""
        if not self.url:
            raise DhtError("an offer needs the node's RPC url", "no_url")
        now = self._next_ts()
        return make_offer_entries(self.identity, resource_type=resource_type, url=self.url,
                                  capacity=capacity, price=price, now_us=now,
                                  ttl_us=self.ttl_us, band=band)

    # -- finding -----------------------------------------------------------------

    async def get_host(self, node_id: bytes) -> HostRecord | None:
        """The newest valid host record of ``node_id``, or None (always for an id that
        misses the genesis puzzle)."""
        if not meets_puzzle(node_id, self.puzzle_bits):
            return None
        key = host_key(node_id)
        dkey = key_digest(key)
        now = self.clock()
        best = self.storage.host_record(dkey)
        checked: dict[bytes, HostRecord | None] = {}  # each distinct answer checked once
        seen: dict[bytes, int] = {}

        def accept(peer: Node, value: bytes) -> bool:
            if value not in checked:
                checked[value] = self._check_host(peer, value, key, now)
            record = checked[value]
            if record is not None:
                seen[peer.id] = record.seq
            return record is not None

        quorum = max(1, self.host_quorum - (best is not None))
        # a quorum lookup stops early: fewer queries in flight waste fewer of them
        found = await self.lookup(dkey, find_value=True, accept=accept, quorum=quorum,
                                  alpha=self.get_alpha)
        for _peer, value in found.values:
            record = checked.get(value)
            if record is not None:
                best = record if best is None else newer_host(best, record)
        if best is not None:
            target = Node(dkey)
            holders = [n.distance_to(target) for n in found.closest if n.id in seen]
            # repair only inside the replica set seen: nodes closer than the farthest
            # holder that lack the newest copy (stale ones, or replacements after churn)
            edge = max(holders) if holders else None
            stale = [n for n in found.closest if seen.get(n.id, -1) < best.seq
                     and (edge is None or n.distance_to(target) < edge)]
            self._repair(stale, dkey, best.value)
        return best

    def _check_host(self, peer: Node, value: bytes, key: str, now: int) -> HostRecord | None:
        try:
            record = HostRecord.from_bytes(value, now)
        except DhtError as exc:
            self._refused(peer, str(exc.value))
            return None
        if record.key != key:
            self._refused(peer, "wrong_key")
            return None
        return record

    def walk(self, resource_type: str, min_capacity: int = 0,
             max_price: int | None = None) -> offerquery.Walk:
        """A walk over the bands of ``offers/<resource_type>/...`` (see
        :mod:`p2pmarket.dht.offerquery`) through :meth:`read_shard`."""
        return offerquery.Walk(resource_type, self.read_shard, self.clock(),
                               min_capacity=min_capacity, max_price=max_price,
                               puzzle_bits=self.puzzle_bits)

    async def find_offers(self, types: Sequence[str], n: int = 10, min_capacity: int = 0,
                          max_price: int | None = None) -> list[OfferEntry]:
        """For each type in order, its top ``n`` offers by capacity/price (see
        :func:`rank_offers`) over the whole index, concatenated."""
        return await offerquery.top_offers_each(
            [self.walk(t, min_capacity, max_price) for t in types], n)

    async def market(self, types: Sequence[str], n: int = 10, min_capacity: int = 0,
                     max_price: int | None = None, min_availability_ppm: int = 0
                     ) -> list[offerquery.MarketHost]:
        """Hosts offering every type in ``types`` within the filters (and with at least
        ``min_availability_ppm`` availability), best cost efficiency first (see
        :mod:`p2pmarket.dht.offerquery`), each with its verified host record."""
        if not types:
            return []
        return await offerquery.query(types, n, self.walk(types[0], min_capacity, max_price),
                                      self.get_host, min_availability_ppm=min_availability_ppm)

    async def read_shard(self, key: str) -> offerquery.ShardRead:
        """Every live entry of the shard ``key`` the closest nodes hold, merged (one per
        signer, from signers that meet the genesis puzzle; withdrawals included), best
        first, and the largest set a storer gave; repairs close nodes that lacked some."""
        parse_shard_key(key)
        dkey = key_digest(key)
        now = self.clock()
        held: dict[bytes, set[bytes]] = {}
        known = {e.value: e for e in self.storage.offer_entries(dkey)}
        local = self.storage.get(dkey)
        largest = len(local) if local is not None else 0
        parsed: dict[bytes, set[bytes] | None] = {}

        def accept(peer: Node, value: bytes) -> bool:
            nonlocal largest
            if value not in parsed:
                parsed[value] = self._check_offer_set(peer, value, key, now, known)
            sigs = parsed[value]
            if sigs is not None:
                held[peer.id] = sigs
                largest = max(largest, len(value))
            return sigs is not None

        found = await self.lookup(dkey, find_value=True, accept=accept)
        merged = merge_offers(known.values(), now, self.puzzle_bits)
        ranked = shard_order(merged)
        if ranked:
            value, kept = repair_value(key, ranked, cap=self.storage.max_offers,
                                       policy=self.storage.policy)
            sigs = {e.envelope.sig for e in kept}
            lacking = [p for p in found.closest if not sigs <= held.get(p.id, set())]
            self._repair(lacking, dkey, value)
        support = {e.node_id: sum(1 for sigs in held.values() if e.envelope.sig in sigs)
                   for e in ranked}
        return offerquery.ShardRead(tuple(ranked), largest, support)

    def _check_offer_set(self, peer: Node, value: bytes, key: str, now: int,
                         known: dict[bytes, OfferEntry]) -> set[bytes] | None:
        """Verify a returned set; add its entries to ``known``; return their signatures."""
        try:
            offer_set = parse_offer_set(value, now, known)
        except DhtError as exc:
            self._refused(peer, str(exc.value))
            return None
        if offer_set.key != key:
            self._refused(peer, "wrong_key")
            return None
        self._count("lookup_dropped_entries", offer_set.dropped)
        if offer_set.forged:
            self._refused(peer, "forged")
            return None
        for entry in offer_set.entries:
            known.setdefault(entry.value, entry)
        return {e.envelope.sig for e in offer_set.entries}
