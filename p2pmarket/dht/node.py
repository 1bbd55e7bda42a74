"""DhtNode: one node's DHT service (DESIGN.md section 3).

Wraps a ``kademlia.network.Server`` whose node id is the identity's node id and
whose protocol stores through :class:`RecordStorage`. Lookups verify every
value they receive; host lookups keep the highest ``seq``, offer lookups merge
the sets of every close node. After a lookup the close nodes that lacked the
result (or held an older one) are sent it (read repair). The owner republishes
its records every ``republish_s`` seconds, re-signed with a new expiry of
2.5 x ``republish_s``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kademlia.network import Server
from kademlia.node import Node

from p2pmarket.config import Genesis
from p2pmarket.dht.protocol import DhtProtocol, LookupResult, lookup, valid_id
from p2pmarket.dht.records import (
    MAX_OFFERS,
    PPM,
    DhtError,
    HostRecord,
    OfferEntry,
    ResourceAd,
    fit_offer_set,
    host_key,
    key_digest,
    make_host_record,
    make_offer_entry,
    merge_offers,
    newer_host,
    offers_key,
    parse_offer_set,
    rank_offers,
)
from p2pmarket.dht.storage import Clock, RecordStorage, wall_clock_us
from p2pmarket.identity import Identity

log = logging.getLogger(__name__)

DEFAULT_REPUBLISH_S = 600.0
EXPIRY_FACTOR = 2.5
REFRESH_S = 3600.0


class _Server(Server):  # type: ignore[misc]
    """The stock server with our protocol, tracked tasks and our own store path."""

    def __init__(self, node: DhtNode, ksize: int, alpha: int) -> None:
        super().__init__(ksize=ksize, alpha=alpha, node_id=node.node_id, storage=node.storage)
        self.storage = node.storage  # the stock code writes `storage or ForgetfulStorage()`
        self._owner = node

    def _create_protocol(self) -> DhtProtocol:
        return DhtProtocol(self.node, self.storage, self.ksize,
                           puzzle_bits=self._owner.puzzle_bits,
                           timeout=self._owner.rpc_timeout, spawn=self._owner.spawn,
                           client_mode=self._owner.client_mode)

    def refresh_table(self, interval: float = REFRESH_S) -> None:
        self._owner.spawn(self._refresh_table())
        self.refresh_loop = asyncio.get_running_loop().call_later(
            interval, self.refresh_table, interval)

    async def set_digest(self, dkey: bytes, value: bytes) -> bool:
        # used by the stock refresh to republish what we store
        return await self._owner.store_digest(dkey, value) > 0


@dataclass(frozen=True)
class _HostFields:
    resources: Mapping[str, ResourceAd]
    availability_ppm: int
    url: str
    dht: tuple[str, int] | None


class DhtNode:
    """A DHT participant that publishes and finds signed host and offer records."""

    def __init__(self, identity: Identity, genesis: Genesis, *, clock: Clock = wall_clock_us,
                 url: str = "", republish_s: float = DEFAULT_REPUBLISH_S, ksize: int = 20,
                 alpha: int = 3, rpc_timeout: float = 5.0,
                 storage: RecordStorage | None = None, client_mode: bool = False) -> None:
        if not valid_id(identity.node_id, genesis.puzzle_bits):
            raise DhtError("node id does not meet the genesis puzzle", "puzzle")
        self.client_mode = client_mode
        self.identity = identity
        self.genesis = genesis
        self.clock = clock
        self.url = url
        self.republish_s = republish_s
        self.ttl_us = int(EXPIRY_FACTOR * republish_s * 1_000_000)
        self.ksize = ksize
        self.alpha = alpha
        self.rpc_timeout = rpc_timeout
        self.storage = storage if storage is not None else RecordStorage(clock)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._server = _Server(self, ksize, alpha)
        self._host: _HostFields | None = None
        self._offers: dict[str, tuple[int, int]] = {}
        self._seq = 0
        self._ts = 0
        self._address: tuple[str, int] | None = None

    # -- lifecycle ---------------------------------------------------------------

    @property
    def node_id(self) -> bytes:
        return self.identity.node_id

    @property
    def puzzle_bits(self) -> int:
        return self.genesis.puzzle_bits

    @property
    def port(self) -> int:
        if self._address is None:
            raise DhtError("DHT node not started", "not_started")
        return self._address[1]

    @property
    def address(self) -> tuple[str, int]:
        if self._address is None:
            raise DhtError("DHT node not started", "not_started")
        return self._address

    @property
    def protocol(self) -> DhtProtocol:
        if self._server.protocol is None:
            raise DhtError("DHT node not started", "not_started")
        proto: DhtProtocol = self._server.protocol
        return proto

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run ``coro`` as a task that :meth:`stop` cancels."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("DHT background task failed", exc_info=task.exception())

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Listen for UDP on ``host:port`` (0: any free port) and start the republish loop."""
        if self._address is not None:
            raise DhtError("DHT node already started", "started")
        await self._server.listen(port, interface=host)
        sockname = self._server.transport.get_extra_info("sockname")
        self._address = (host, int(sockname[1]))
        self.spawn(self._republish_loop())

    def stop(self) -> None:
        """Close the socket and cancel every task this node started."""
        self._server.stop()
        if self._server.protocol is not None:
            self.protocol.close()
        for task in list(self._tasks):
            task.cancel()

    async def close(self) -> None:
        """:meth:`stop`, then wait for the cancelled tasks to finish."""
        self.stop()
        tasks = list(self._tasks)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def bootstrap(self, peers: Sequence[tuple[str, int]] | None = None) -> int:
        """Join through ``peers`` (IP, port) or the genesis bootstrap peers; return how
        many contacts the routing table holds afterwards."""
        if peers is None:
            peers = [(b.host, b.dht_port) for b in self.genesis.bootstrap]
        addrs = [(h, p) for h, p in peers if (h, p) != self._address]
        proto = self.protocol
        answers = await asyncio.gather(*(proto.call_ping_addr(a) for a in addrs))
        seeds = [Node(nid, a[0], a[1]) for a, (ok, nid) in zip(addrs, answers, strict=True)
                 if ok and valid_id(nid, self.puzzle_bits) and nid != self.node_id]
        if seeds:
            await self._lookup(self.node_id, find_value=False, seeds=seeds)
        return self.contact_count()

    def contact_count(self) -> int:
        return sum(len(b) for b in self.protocol.router.buckets)

    # -- storing -----------------------------------------------------------------

    async def _lookup(self, dkey: bytes, find_value: bool,
                      seeds: list[Node] | None = None) -> LookupResult:
        return await lookup(self.protocol, dkey, self.ksize, self.alpha, self.puzzle_bits,
                            find_value, seeds)

    async def store_digest(self, dkey: bytes, value: bytes) -> int:
        """Store ``value`` at the k closest nodes; return how many accepted it."""
        found = await self._lookup(dkey, find_value=False)
        answers = await asyncio.gather(
            *(self.protocol.call_store(n, dkey, value) for n in found.closest))
        return sum(1 for ok, accepted in answers if ok and accepted is True)

    def _next_seq(self) -> int:
        self._seq = max(self.clock(), self._seq + 1)
        return self._seq

    def _next_ts(self) -> int:
        self._ts = max(self.clock(), self._ts + 1)
        return self._ts

    async def publish_host(self, resources: Mapping[str, ResourceAd],
                           availability_ppm: int = PPM, url: str | None = None,
                           dht: tuple[str, int] | None = None) -> HostRecord:
        """Sign and store this node's host record with a fresh seq (the clock in µs, so a
        restart does not go backwards). ``url`` defaults to (and updates) :attr:`url`,
        ``dht`` to the address we listen on."""
        if url is not None:
            self.url = url
        fields = _HostFields(dict(resources), availability_ppm, self.url, dht)
        record = self._sign_host(fields)
        self._host = fields
        await self._put(record.key, record.value)
        return record

    def _sign_host(self, fields: _HostFields) -> HostRecord:
        if not fields.url:
            raise DhtError("a host record needs the node's RPC url", "no_url")
        return make_host_record(
            self.identity, url=fields.url, dht=fields.dht or self.address,
            resources=fields.resources, availability_ppm=fields.availability_ppm,
            seq=self._next_seq(), now_us=self.clock(), ttl_us=self.ttl_us)

    async def publish_offer(self, resource_type: str, capacity: int, price: int) -> OfferEntry:
        """Sign and store an entry in ``offers/<resource_type>``."""
        entry = self._sign_offer(resource_type, capacity, price)
        self._offers[resource_type] = (capacity, price)
        value, _ = fit_offer_set(entry.key, [entry])
        await self._put(entry.key, value)
        return entry

    def _sign_offer(self, resource_type: str, capacity: int, price: int) -> OfferEntry:
        if not self.url:
            raise DhtError("an offer needs the node's RPC url", "no_url")
        now = self._next_ts()
        return make_offer_entry(self.identity, resource_type=resource_type, url=self.url,
                                capacity=capacity, price=price, now_us=now,
                                ttl_us=self.ttl_us)

    async def _put(self, key: str, value: bytes) -> int:
        dkey = key_digest(key)
        if not self.storage.put(dkey, value):  # our own copy; also a last validity check
            raise DhtError(f"own record for {key} refused by local storage", "refused")
        acks = await self.store_digest(dkey, value)
        if acks == 0 and self.contact_count() > 0:
            log.warning("no peer accepted %s", key)
        return acks

    async def republish(self) -> None:
        """Re-sign and store every record this node owns."""
        jobs: list[Coroutine[Any, Any, int]] = []
        if self._host is not None:
            record = self._sign_host(self._host)
            jobs.append(self._put(record.key, record.value))
        for rtype, (capacity, price) in self._offers.items():
            entry = self._sign_offer(rtype, capacity, price)
            jobs.append(self._put(entry.key, fit_offer_set(entry.key, [entry])[0]))
        for outcome in await asyncio.gather(*jobs, return_exceptions=True):
            if isinstance(outcome, BaseException):
                log.warning("DHT republish of one record failed: %s", outcome)

    async def _republish_loop(self) -> None:
        while True:
            await asyncio.sleep(self.republish_s)
            try:
                await self.republish()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("DHT republish failed")

    # -- finding -----------------------------------------------------------------

    def _count(self, name: str, n: int = 1) -> None:
        if n:
            self.storage.counters[name] = self.storage.counters.get(name, 0) + n

    async def get_host(self, node_id: bytes) -> HostRecord | None:
        """The newest valid host record of ``node_id``, or None."""
        key = host_key(node_id)
        dkey = key_digest(key)
        found = await self._lookup(dkey, find_value=True)
        now = self.clock()
        best = self.storage.host_record(dkey)
        seen: dict[bytes, int] = {}
        verified: dict[bytes, HostRecord | None] = {}  # each distinct answer checked once
        for peer, value in found.values:
            if value not in verified:
                verified[value] = self._check_host(value, key, now)
            record = verified[value]
            if record is None:
                continue
            seen[peer.id] = record.seq
            best = record if best is None else newer_host(best, record)
        if best is not None:
            stale = [n for n in found.closest if seen.get(n.id, -1) < best.seq]
            self._repair(stale, dkey, best.value)
        return best

    def _check_host(self, value: bytes, key: str, now: int) -> HostRecord | None:
        try:
            record = HostRecord.from_bytes(value, now)
        except DhtError as exc:
            self._count(f"lookup_rejected.{exc.value}")
            return None
        if record.key != key:
            self._count("lookup_rejected.wrong_key")
            return None
        return record

    async def find_offers(self, types: Sequence[str], n: int = 10, min_capacity: int = 0,
                          max_price: int | None = None) -> list[OfferEntry]:
        """For each type in order, its top ``n`` offers by capacity/price (see
        :func:`rank_offers`), concatenated."""
        sets = await asyncio.gather(*(self._offers_of(t) for t in types))
        out: list[OfferEntry] = []
        for entries in sets:
            out.extend(rank_offers(entries, n, min_capacity, max_price))
        return out

    async def _offers_of(self, resource_type: str) -> list[OfferEntry]:
        key = offers_key(resource_type)
        dkey = key_digest(key)
        found = await self._lookup(dkey, find_value=True)
        now = self.clock()
        entries = self.storage.offer_entries(dkey)
        held: dict[bytes, set[bytes]] = {}
        known = {e.value: e for e in entries}  # verified entries are not verified again
        parsed: dict[bytes, set[bytes] | None] = {}
        for peer, value in found.values:
            if value not in parsed:
                parsed[value] = self._check_offer_set(value, key, now, known)
            sigs = parsed[value]
            if sigs is not None:
                held[peer.id] = sigs
        entries = list(known.values())
        merged = merge_offers(entries, now, cap=len(entries))
        if merged:
            value, kept = fit_offer_set(key, merged[:MAX_OFFERS])
            sigs = {e.envelope.sig for e in kept}
            lacking = [p for p in found.closest if not sigs <= held.get(p.id, set())]
            self._repair(lacking, dkey, value)
        return merged

    def _check_offer_set(self, value: bytes, key: str, now: int,
                         known: dict[bytes, OfferEntry]) -> set[bytes] | None:
        """Verify a returned set; add its entries to ``known``; return their signatures."""
        try:
            offer_set = parse_offer_set(value, now, known)
        except DhtError as exc:
            self._count(f"lookup_rejected.{exc.value}")
            return None
        if offer_set.key != key:
            self._count("lookup_rejected.wrong_key")
            return None
        self._count("lookup_dropped_entries", offer_set.dropped)
        for entry in offer_set.entries:
            known.setdefault(entry.value, entry)
        return {e.envelope.sig for e in offer_set.entries}

    def _repair(self, peers: list[Node], dkey: bytes, value: bytes) -> None:
        for peer in peers:
            self.spawn(self.protocol.call_store(peer, dkey, value))
