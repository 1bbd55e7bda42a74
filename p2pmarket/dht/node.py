"""DhtNode: one node's DHT service (DESIGN.md section 3).

Wraps a ``kademlia.network.Server`` whose node id is the identity's node id and
whose protocol (:class:`~p2pmarket.dht.protocol.DhtProtocol`) stores through
:class:`RecordStorage`. Lookups (:func:`~p2pmarket.dht.lookup.lookup`) verify
every value they receive and ban peers that answer forged ones; host lookups
keep the highest ``seq`` and stop after ``host_quorum`` valid copies (with at most
``get_alpha`` queries in flight; other lookups use ``alpha``),
offer lookups merge the sets of every close node. After a lookup the close
nodes that lacked the result (or held an older one) are sent it (read repair).
The owner republishes its records every ``republish_s`` seconds, re-signed with
a new expiry of 2.5 x ``republish_s``. With ``db_path`` the routing table and
the owner's records survive a restart (:class:`~p2pmarket.dht.persist.DhtState`).

Evidence (``evidence/<node id>``): :meth:`DhtNode.publish_evidence` stores a
proof inline when small, else as ``{sha256, size, url}`` with the body served by
this node's gateway (``/dht/evidence/<sha256 hex>``); as a storer the node
fetches and checks such bodies before keeping the entry
(:class:`~p2pmarket.dht.evidence.EvidenceFetcher`). Bodies it published or
fetched are kept (and persisted); its own are republished with a fresh 30-day
expiry. :meth:`DhtNode.get_evidence` returns the checked proof bodies.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import OrderedDict
from collections.abc import Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from kademlia.network import Server
from kademlia.node import Node

from p2pmarket.config import Genesis
from p2pmarket.dht import market as mkt
from p2pmarket.dht.evidence import EvidenceFetcher, fetch_proof
from p2pmarket.dht.lookup import Accept, LookupResult, LookupStats, lookup
from p2pmarket.dht.persist import DhtState
from p2pmarket.dht.protocol import MALICIOUS, DhtProtocol, ProtocolConfig, valid_id
from p2pmarket.dht.records import (
    MAX_DOC_BYTES,
    MAX_EVIDENCE,
    MAX_OFFERS,
    PPM,
    DhtError,
    DocRef,
    EvidenceEntry,
    EvidenceSet,
    HostRecord,
    OfferEntry,
    ResourceAd,
    evidence_key,
    evidence_node_id,
    fit_evidence_set,
    fit_offer_set,
    host_key,
    key_digest,
    make_evidence_entry,
    make_host_record,
    make_offer_entry,
    merge_evidence,
    merge_offers,
    newer_host,
    offers_key,
    parse_evidence_set,
    parse_offer_set,
)
from p2pmarket.dht.routing import PrefixPolicy
from p2pmarket.dht.storage import Clock, RecordStorage, wall_clock_us
from p2pmarket.identity import Identity

log = logging.getLogger(__name__)

DEFAULT_REPUBLISH_S = 600.0
EXPIRY_FACTOR = 2.5
REFRESH_S = 3600.0
VERIFY_WAIT_S = 2.0
REPAIR_MAX = 4
MAX_HELD_PROOFS = 256
"""Evidence bodies fetched as a storer kept at most (the oldest go first; bodies this
node published are always kept)."""
READ_FETCHES = 2 * MAX_EVIDENCE
"""Hash-only proofs one :meth:`DhtNode.get_evidence` fetches at most."""


@dataclass
class _Proof:
    """An evidence body this node holds (checked): published by it or fetched."""

    node_id: bytes
    data: bytes
    own: bool
    expires: int


class _Server(Server):  # type: ignore[misc]
    """The stock server with our protocol, tracked tasks and our own lookups."""

    def __init__(self, node: DhtNode, ksize: int, alpha: int) -> None:
        super().__init__(ksize=ksize, alpha=alpha, node_id=node.node_id, storage=node.storage)
        self.storage = node.storage  # the stock code writes `storage or ForgetfulStorage()`
        self._owner = node

    def _create_protocol(self) -> DhtProtocol:
        return DhtProtocol(self.node, self.storage, self.ksize, identity=self._owner.identity,
                           config=self._owner.protocol_config, spawn=self._owner.spawn)

    def refresh_table(self, interval: float = REFRESH_S) -> None:
        self._owner.spawn(self._refresh_table())
        self.refresh_loop = asyncio.get_running_loop().call_later(
            interval, self.refresh_table, interval)

    async def _refresh_table(self) -> None:
        """Refresh buckets idle for an hour, then pass on what we hold (unexpired only:
        the storage never yields an expired record, so nothing is resurrected)."""
        await asyncio.gather(*(self._owner.lookup(rid, find_value=False)
                               for rid in self.protocol.get_refresh_ids()))
        for dkey, value in self.storage.iter_older_than(REFRESH_S):
            await self._owner.store_digest(dkey, value)


@dataclass(frozen=True)
class _HostFields:
    resources: Mapping[str, ResourceAd]
    availability_ppm: int
    url: str
    dht: tuple[str, int] | None
    doc: DocRef | None = None
    reach: tuple[bytes, ...] = field(default=())

    def to_doc(self) -> dict[str, Any]:
        return {"resources": {t: [a.capacity, a.price, a.hour_avg]
                              for t, a in self.resources.items()},
                "availability_ppm": self.availability_ppm, "url": self.url,
                "dht": list(self.dht) if self.dht else None,
                "doc": self.doc.to_doc() if self.doc else None, "reach": list(self.reach)}

    @classmethod
    def from_doc(cls, doc: Any) -> _HostFields:
        dht = doc["dht"]
        ref = doc["doc"]
        return cls({str(t): ResourceAd(*map(int, v)) for t, v in doc["resources"].items()},
                   int(doc["availability_ppm"]), str(doc["url"]),
                   (str(dht[0]), int(dht[1])) if dht else None,
                   DocRef(ref["sha256"], ref["size"]) if ref else None,
                   tuple(doc["reach"]))


class DhtNode:
    """A DHT participant that publishes and finds signed host and offer records."""

    def __init__(self, identity: Identity, genesis: Genesis, *, clock: Clock = wall_clock_us,
                 url: str = "", republish_s: float = DEFAULT_REPUBLISH_S, ksize: int = 20,
                 alpha: int = 3, rpc_timeout: float = 5.0,
                 storage: RecordStorage | None = None, client_mode: bool = False,
                 policy: PrefixPolicy | None = None, db_path: Path | str | None = None,
                 max_failures: int = 3, host_quorum: int = 2, get_alpha: int = 2) -> None:
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
        self.host_quorum = max(1, host_quorum)
        self.get_alpha = max(1, min(alpha, get_alpha))
        self.policy = policy if policy is not None else PrefixPolicy()
        self.storage = storage if storage is not None else RecordStorage(clock,
                                                                         policy=self.policy)
        self.protocol_config = ProtocolConfig(
            puzzle_bits=genesis.puzzle_bits, timeout=rpc_timeout, client_mode=client_mode,
            policy=self.policy, max_failures=max_failures,
            handoff_interval=max(1.0, republish_s))
        self.db_path = db_path
        self.state: DhtState | None = None
        self.stats = LookupStats()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._server = _Server(self, ksize, alpha)
        self._host: _HostFields | None = None
        self._offers: dict[str, tuple[int, int]] = {}
        self._docs: dict[bytes, bytes] = {}
        self._proofs: OrderedDict[bytes, _Proof] = OrderedDict()
        self._session: aiohttp.ClientSession | None = None
        self.evidence_fetcher = EvidenceFetcher(self.spawn, self._http, self._proof_checked,
                                                self._count, self.storage.count_reject)
        self.storage.on_evidence = self._schedule_evidence
        self._saved_contacts: list[tuple[bytes, str, int]] = []
        self._restored = False
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
        return self.address[1]

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
        """Listen for UDP on ``host:port`` (0: any free port), restore the saved state and
        start the republish loop."""
        if self._address is not None:
            raise DhtError("DHT node already started", "started")
        if self.db_path is not None:
            self._load_state(DhtState(self.db_path))
        await self._server.listen(port, interface=host)
        sockname = self._server.transport.get_extra_info("sockname")
        self._address = (host, int(sockname[1]))
        self.spawn(self._republish_loop())

    def _load_state(self, state: DhtState) -> None:
        self.state = state
        self._saved_contacts = state.contacts()
        self._seq = max(self._seq, state.meta("seq"))
        self._ts = max(self._ts, state.meta("ts"))
        self._docs = state.docs()
        now = self.clock()
        stale = []
        for sha, node_id, data, own, expires in state.proofs():
            if own or expires > now:
                self._proofs[sha] = _Proof(node_id, data, own, expires)
            else:
                stale.append(sha)
        if stale:
            state.drop_proofs(stale)
        for name, doc in state.own().items():
            try:
                if name == "host":
                    self._host = _HostFields.from_doc(doc)
                elif name.startswith("offer/"):
                    self._offers[name.removeprefix("offer/")] = (int(doc[0]), int(doc[1]))
            except (KeyError, TypeError, ValueError, IndexError):
                log.warning("skipping damaged saved DHT record %s", name)
        if not self.url and self._host is not None:
            self.url = self._host.url
        self._restored = self._host is not None or bool(self._offers) or any(
            p.own for p in self._proofs.values())

    def save_state(self) -> None:
        """Write the routing table to the state db (also done on close and republish)."""
        if self.state is not None and self._server.protocol is not None:
            contacts = [(n.id, n.ip, n.port) for n in self.protocol.router.contacts()]
            if contacts:
                self.state.save_contacts(contacts)

    def stop(self) -> None:
        """Close the socket and cancel every task this node started."""
        self._server.stop()
        if self._server.protocol is not None:
            self.protocol.close()
        for task in list(self._tasks):
            task.cancel()
        if self._session is not None:   # close() awaits it; here, best effort
            session, self._session = self._session, None
            self.spawn(session.close())

    async def close(self) -> None:
        """:meth:`stop`, then wait for the cancelled tasks; save and close the state."""
        if self.state is not None:
            self.save_state()
        self.stop()
        tasks = list(self._tasks)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self.state is not None:
            self.state.close()
            self.state = None

    async def bootstrap(self, peers: Sequence[tuple[str, int]] | None = None) -> int:
        """Join through ``peers`` (IP, port) or the genesis bootstrap peers, plus the
        contacts saved by an earlier run; return how many contacts the routing table
        holds afterwards. A node restored from its state republishes its records."""
        if peers is None:
            peers = [(b.host, b.dht_port) for b in self.genesis.bootstrap]
        wanted = [*peers, *((ip, port) for _, ip, port in self._saved_contacts)]
        addrs = list(dict.fromkeys(a for a in wanted if a != self._address))
        proto = self.protocol
        answers = await asyncio.gather(*(proto.call_ping_addr(a) for a in addrs))
        seeds = [Node(nid, a[0], a[1]) for a, (ok, nid) in zip(addrs, answers, strict=True)
                 if ok and valid_id(nid, self.puzzle_bits) and nid != self.node_id]
        if seeds:
            for seed in seeds:
                proto.welcome_if_new(seed)
            await self.lookup(self.node_id, find_value=False, seeds=seeds)
            await proto.verified(VERIFY_WAIT_S)
            if self.contact_count() < self.ksize:  # a thin answer (e.g. a seed still
                await self.lookup(self.node_id, find_value=False)  # joining): once more
                await proto.verified(VERIFY_WAIT_S)
            self.save_state()
            if self._restored:
                self._restored = False
                self.spawn(self.republish())
        return self.contact_count()

    def contact_count(self) -> int:
        return len(self.protocol.router)

    def metrics(self) -> dict[str, int | float]:
        """Counters for the control API / monitoring (names are stable)."""
        out: dict[str, int | float] = dict(sorted(self.storage.counters.items()))
        proto = self._server.protocol
        rtt = proto.rtt.overall if proto is not None else None
        out.update({
            "contacts": len(proto.router) if proto is not None else 0,
            "stored_keys": len(self.storage),
            "lookups": self.stats.lookups, "lookup_rpcs": self.stats.rpcs,
            "lookup_hops": self.stats.hops, "lookup_slow": self.stats.slow,
            "lookup_failed": self.stats.failed,
            "rtt_ms": round(rtt.srtt * 1000, 3) if rtt is not None else 0.0,
            "own_records": (self._host is not None) + len(self._offers),
            "evidence_held": len(self._proofs),
            "evidence_own": sum(1 for p in self._proofs.values() if p.own),
            "evidence_pending": self.evidence_fetcher.pending,
        })
        return out

    # -- storing -----------------------------------------------------------------

    async def lookup(self, dkey: bytes, find_value: bool, seeds: list[Node] | None = None,
                     accept: Accept | None = None, quorum: int = 0,
                     alpha: int | None = None) -> LookupResult:
        result = await lookup(self.protocol, dkey, self.ksize, alpha or self.alpha,
                              self.puzzle_bits, find_value, seeds, accept, quorum)
        self.stats.add(result)
        return result

    async def store_digest(self, dkey: bytes, value: bytes) -> int:
        """Store ``value`` at the k closest nodes; return how many accepted it."""
        found = await self.lookup(dkey, find_value=False)
        answers = await asyncio.gather(
            *(self.protocol.call_store(n, dkey, value) for n in found.closest))
        return sum(1 for ok, accepted in answers if ok and accepted is True)

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
                           reach: Iterable[bytes] | None = None) -> HostRecord:
        """Sign and store this node's host record with a fresh seq (the clock in µs, so a
        restart does not go backwards). ``url`` defaults to (and updates) :attr:`url`,
        ``dht`` to the address we listen on. ``document`` (up to 4 MiB) is not put in
        the DHT: the record carries its hash and the node serves it over HTTP
        (:func:`p2pmarket.dht.gateway.gateway_routes`). ``document``/``reach`` left
        out keep their previous values."""
        if url is not None:
            self.url = url
        old = self._host
        ref = old.doc if old is not None else None
        if document is not None:
            if len(document) > MAX_DOC_BYTES:
                raise DhtError(f"document larger than {MAX_DOC_BYTES} bytes", "too_large")
            ref = DocRef.of(document)
        attest = tuple(reach) if reach is not None else (old.reach if old else ())
        fields = _HostFields(dict(resources), availability_ppm, self.url, dht, ref, attest)
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

    def _sign_host(self, fields: _HostFields) -> HostRecord:
        if not fields.url:
            raise DhtError("a host record needs the node's RPC url", "no_url")
        return make_host_record(
            self.identity, url=fields.url, dht=fields.dht or self.address,
            resources=fields.resources, availability_ppm=fields.availability_ppm,
            seq=self._next_seq(), now_us=self.clock(), ttl_us=self.ttl_us,
            doc=fields.doc, reach=fields.reach)

    async def publish_offer(self, resource_type: str, capacity: int, price: int) -> OfferEntry:
        """Sign and store an entry in ``offers/<resource_type>``."""
        entry = self._sign_offer(resource_type, capacity, price)
        self._offers[resource_type] = (capacity, price)
        if self.state is not None:
            self.state.put_own(f"offer/{resource_type}", [capacity, price])
        value, _ = fit_offer_set(entry.key, [entry])
        await self._put(entry.key, value)
        return entry

    def withdraw_offer(self, resource_type: str) -> None:
        """Stop republishing an offer; it leaves query results within one expiry."""
        self._offers.pop(resource_type, None)
        if self.state is not None:
            self.state.drop_own(f"offer/{resource_type}")

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

    async def store_value(self, key: str, value: bytes) -> int:
        """Store someone else's signed value (the HTTP gateway's publish path); it is
        validated like any received store. Returns how many peers accepted it."""
        return await self._put(key, value)

    async def republish(self) -> None:
        """Re-sign and store every record this node owns."""
        jobs: list[Coroutine[Any, Any, int]] = []
        if self._host is not None:
            record = self._sign_host(self._host)
            jobs.append(self._put(record.key, record.value))
        for rtype, (capacity, price) in self._offers.items():
            entry = self._sign_offer(rtype, capacity, price)
            jobs.append(self._put(entry.key, fit_offer_set(entry.key, [entry])[0]))
        for proof in [p for p in self._proofs.values() if p.own]:
            jobs.append(self.publish_evidence(proof.node_id, proof.data))
        for outcome in await asyncio.gather(*jobs, return_exceptions=True):
            if isinstance(outcome, BaseException):
                log.warning("DHT republish of one record failed: %s", outcome)
        self.save_state()

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

    def _refused(self, peer: Node, reason: str) -> None:
        self._count(f"lookup_rejected.{reason}")
        if reason in MALICIOUS:
            self.protocol.ban(peer.id, (peer.ip, peer.port), reason)

    async def get_host(self, node_id: bytes) -> HostRecord | None:
        """The newest valid host record of ``node_id``, or None."""
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

    async def find_offers(self, types: Sequence[str], n: int = 10, min_capacity: int = 0,
                          max_price: int | None = None) -> list[OfferEntry]:
        """For each type in order, its top ``n`` offers by capacity/price (see
        :func:`rank_offers`), concatenated."""
        sets = await asyncio.gather(*(self.offers_of(t) for t in types))
        return mkt.top_offers_each(sets, n, min_capacity, max_price)

    async def market(self, types: Sequence[str], n: int = 10, min_capacity: int = 0,
                     max_price: int | None = None) -> list[mkt.MarketHost]:
        """Hosts offering every type in ``types`` within the filters, best cost efficiency
        first (see :mod:`p2pmarket.dht.market`), each with its verified host record."""
        return await mkt.query(types, n, min_capacity, max_price, self.offers_of,
                               self.get_host)

    async def offers_of(self, resource_type: str) -> list[OfferEntry]:
        """Every live entry of ``offers/<resource_type>`` the closest nodes hold, merged."""
        key = offers_key(resource_type)
        dkey = key_digest(key)
        now = self.clock()
        held: dict[bytes, set[bytes]] = {}
        known = {e.value: e for e in self.storage.offer_entries(dkey)}
        parsed: dict[bytes, set[bytes] | None] = {}

        def accept(peer: Node, value: bytes) -> bool:
            if value not in parsed:
                parsed[value] = self._check_offer_set(peer, value, key, now, known)
            sigs = parsed[value]
            if sigs is not None:
                held[peer.id] = sigs
            return sigs is not None

        found = await self.lookup(dkey, find_value=True, accept=accept)
        entries = list(known.values())
        merged = merge_offers(entries, now, cap=len(entries))
        if merged:
            value, kept = fit_offer_set(key, self.storage.cap_prefixes(merged)[:MAX_OFFERS])
            sigs = {e.envelope.sig for e in kept}
            lacking = [p for p in found.closest if not sigs <= held.get(p.id, set())]
            self._repair(lacking, dkey, value)
        return merged

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

    def _repair(self, peers: list[Node], dkey: bytes, value: bytes) -> None:
        """Send the close nodes that lacked (or held an older) value the best one; at most
        :data:`REPAIR_MAX`, closest first (``peers`` come closest first)."""
        for peer in peers[:REPAIR_MAX]:
            self.spawn(self.protocol.call_store(peer, dkey, value))

    # -- evidence ------------------------------------------------------------------

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    def evidence_body(self, sha256: bytes) -> bytes | None:
        """A checked proof this node holds (published or fetched), by its SHA-256."""
        proof = self._proofs.get(sha256)
        return None if proof is None else proof.data

    def _keep_proof(self, sha256: bytes, node_id: bytes, data: bytes, own: bool,
                    expires: int) -> None:
        old = self._proofs.pop(sha256, None)
        if old is not None:
            own, expires = own or old.own, max(expires, old.expires)
        self._proofs[sha256] = _Proof(node_id, data, own, expires)
        if self.state is not None:
            self.state.put_proof(sha256, node_id, data, own, expires)
        fetched = [h for h, p in self._proofs.items() if not p.own]
        drop = fetched[: max(0, len(fetched) - MAX_HELD_PROOFS)]
        for h in drop:
            del self._proofs[h]
        if drop and self.state is not None:
            self.state.drop_proofs(drop)

    def _schedule_evidence(self, dkey: bytes, key: str, entries: list[EvidenceEntry]) -> int:
        """The storage's hook: hash-only entries it has not checked are fetched first."""
        return self.evidence_fetcher.schedule(dkey, key, evidence_node_id(key), entries)

    def _proof_checked(self, dkey: bytes, key: str, node_id: bytes, entry: EvidenceEntry,
                       body: bytes) -> None:
        self._keep_proof(entry.sha256, node_id, body, False, entry.expires)
        try:
            self.storage.put_evidence(dkey, key, [entry])
        except DhtError as exc:
            self.storage.count_reject(str(exc.value))

    async def publish_evidence(self, host_id: bytes, proof: bytes) -> int:
        """Add ``proof`` (checked here first: :class:`DhtError` ``bad_proof`` or
        ``wrong_host`` if it is no valid proof against ``host_id``) to
        ``evidence/<host_id>``; return how many storers accepted it. A proof over
        :data:`~p2pmarket.dht.records.INLINE_PROOF_BYTES` goes as ``{sha256, size, url}``
        with this node's :attr:`url`, whose gateway must serve it (storers accept it
        for checking and store it once they fetched it). The body is kept (and
        persisted) and republished with a fresh expiry on every republish."""
        entry = make_evidence_entry(host_id, proof, now_us=self.clock(),
                                    url=self.url or None)
        self._keep_proof(entry.sha256, host_id, proof, True, entry.expires)
        key = evidence_key(host_id)
        dkey = key_digest(key)
        self.storage.put_evidence(dkey, key, [entry])   # our own copy
        value, _ = fit_evidence_set(key, [entry])
        acks = await self.store_digest(dkey, value)
        if acks == 0 and self.contact_count() > 0:
            log.warning("no peer accepted evidence against %s", host_id.hex()[:12])
        return acks

    async def get_evidence(self, host_id: bytes) -> list[bytes]:
        """Every valid proof against ``host_id`` the closest nodes hold, checked here:
        inline ones as they come, hash-only ones fetched from their url (or taken from
        the bodies this node holds) and checked against their hash. Inline proofs
        first, then by size."""
        key = evidence_key(host_id)
        dkey = key_digest(key)
        now = self.clock()
        local = self.storage.evidence_entries(dkey)
        verified = {e.sha256 for e in local if e.inline}
        held: dict[bytes, set[tuple[bytes, str]]] = {}
        parsed: dict[bytes, EvidenceSet | None] = {}

        def accept(peer: Node, value: bytes) -> bool:
            if value not in parsed:
                parsed[value] = self._check_evidence_set(peer, value, key, now, verified)
            evidence = parsed[value]
            if evidence is not None:
                held[peer.id] = {e.ident for e in evidence.entries}
            return evidence is not None

        found = await self.lookup(dkey, find_value=True, accept=accept)
        candidates = list(local)
        for evidence in parsed.values():
            if evidence is not None:
                candidates.extend(evidence.entries)
        checked = await self._check_entries(host_id, candidates, now)
        if checked:
            merged = merge_evidence(checked, now)
            value, kept = fit_evidence_set(key, self.storage.cap_evidence_prefixes(merged))
            idents = {e.ident for e in kept}
            lacking = [p for p in found.closest if not idents <= held.get(p.id, set())]
            self._repair(lacking, dkey, value)
        bodies: dict[bytes, bytes] = {}
        for entry in sorted(checked, key=EvidenceEntry.priority):
            if entry.sha256 not in bodies:
                body = entry.proof if entry.proof is not None else self.evidence_body(
                    entry.sha256)
                if body is not None:
                    bodies[entry.sha256] = body
        return list(bodies.values())

    async def _check_entries(self, host_id: bytes, entries: list[EvidenceEntry], now: int
                             ) -> list[EvidenceEntry]:
        """The entries whose proof checked out (inline ones already have); a hash-only
        proof is taken from the bodies we hold or fetched from one of its urls."""
        out: list[EvidenceEntry] = []
        refs: dict[bytes, list[EvidenceEntry]] = {}
        for entry in entries:
            if entry.expires <= now:
                continue
            if entry.inline:
                out.append(entry)
                continue
            held = self._proofs.get(entry.sha256)
            if held is not None and held.node_id == host_id:
                out.append(entry)
            else:
                urls = refs.setdefault(entry.sha256, [])
                if all(e.url != entry.url for e in urls):
                    urls.append(entry)

        async def fetch(options: list[EvidenceEntry]) -> EvidenceEntry | None:
            for entry in options[:3]:
                try:
                    body = await fetch_proof(self._http(), entry, host_id,
                                             timeout=self.evidence_fetcher.timeout)
                except DhtError as exc:
                    self._count(f"lookup_rejected.evidence_{exc.value}")
                    continue
                self._keep_proof(entry.sha256, host_id, body, False, entry.expires)
                return entry
            return None

        wanted = sorted(refs.values(), key=lambda es: es[0].priority())[:READ_FETCHES]
        for got in await asyncio.gather(*(fetch(options) for options in wanted)):
            if got is not None:
                out.append(got)
        return out

    def _check_evidence_set(self, peer: Node, value: bytes, key: str, now: int,
                            verified: set[bytes]) -> EvidenceSet | None:
        try:
            evidence = parse_evidence_set(value, now, verified)
        except DhtError as exc:
            self._refused(peer, str(exc.value))
            return None
        if evidence.key != key:
            self._refused(peer, "wrong_key")
            return None
        self._count("lookup_dropped_entries", evidence.dropped)
        if evidence.forged:
            self._refused(peer, "forged")
            return None
        verified.update(e.sha256 for e in evidence.entries if e.inline)
        return evidence

    def random_contacts(self, n: int) -> list[Node]:
        contacts = self.protocol.router.contacts()
        return random.sample(contacts, min(n, len(contacts)))
