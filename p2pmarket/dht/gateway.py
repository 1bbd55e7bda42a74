"""The DHT over HTTP: a gateway on public nodes, its client, and document fetches.

Proxied nodes cannot send UDP (docs/design.md sections 3 and 7); a public node
mounts :func:`gateway_routes` on its peer app and answers with the *raw signed
record bytes*, so the caller verifies every record itself and trusts the
gateway for nothing but availability:

- ``GET /dht/host/<node id hex>`` -> the host record (``application/octet-stream``),
  404 if none is found;
- ``GET /dht/offers/<type>/<band>`` and ``GET /dht/offers/<type>/<band>/<hex>`` ->
  the merged set of that shard of the offer index (the same container the DHT
  stores, msgpack, withdrawals first, then best first, as much as fits one value;
  :mod:`p2pmarket.dht.offershards`); ``GET /dht/offers/<type>`` (format 1) -> 410
  with a message saying the index is sharded;
- ``GET /dht/offer-walk/<type>?need=...`` -> a whole market walk in one answer
  (:mod:`p2pmarket.dht.gatewaywalk`);
- ``POST /dht/store/<key name>`` (body: a signed host record or offer set) ->
  validated like any DHT store, then stored at the k closest nodes;
  ``{"accepted": n}`` (JSON), 400 with the reason if refused;
- ``GET /dht/doc/<sha256 hex>`` -> the document this node's host record names
  (documents too large for a DHT value travel over HTTP; readers check them
  against the hash in the signed record, :func:`fetch_document`).
- ``GET /dht/evidence/<sha256 hex>`` -> a proof body this node holds (it published
  it, or fetched and checked it as a storer): what hash-only ``evidence/<id>``
  entries point to (:func:`evidence_route`, also mountable on its own);
- ``GET /dht/evidence-of/<node id hex>`` -> the checked proofs against a node
  (:meth:`DhtNode.get_evidence`), a msgpack list of proof bodies; the client
  checks each one again (:meth:`GatewayClient.get_evidence`).
- ``GET /dht/closest/<20-byte key hex>`` -> the ids of the nodes closest to the key
  that a lookup found (:meth:`DhtNode.closest_ids`), a msgpack list of at most
  :data:`MAX_CLOSEST` ids: how a proxied node finds a host's witnesses. The caller
  trusts the gateway for this list (it cannot check it), as for availability.

Requests are rate limited per client address (a shard read counts as
:data:`SHARD_READ_COST` of a request; on the node's
:attr:`~p2pmarket.dht.node.DhtNode.monotonic` clock). :class:`GatewayClient` is the
proxied node's reader, :class:`GatewayDht` its publisher (same calls as
:class:`~p2pmarket.dht.node.DhtNode` for publishing and finding).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import aiohttp
from aiohttp import web

from p2pmarket.core.clock import Clock, now_us
from p2pmarket.core.identity import NODE_ID_SIZE, Identity, meets_puzzle
from p2pmarket.core.wire import WireError, pack, unpack
from p2pmarket.dht import offerquery
from p2pmarket.dht.checks import MAX_VALUE_BYTES, DhtError
from p2pmarket.dht.evidence import read_capped
from p2pmarket.dht.evidence_records import (
    MAX_EVIDENCE,
    MAX_EVIDENCE_PROOF_BYTES,
    ProofVerifier,
    check_proof,
    fit_evidence_set,
    make_evidence_entry,
)
from p2pmarket.dht.gatewaywalk import MAX_WALK_ANSWER, GatewayWalk, walk_route
from p2pmarket.dht.node import DEFAULT_REPUBLISH_S, EXPIRY_FACTOR, DhtNode
from p2pmarket.dht.offers import (
    OfferEntry,
    fit_offer_set,
    make_offer_entries,
    merge_offers,
    parse_offer_set,
)
from p2pmarket.dht.offershards import band_of, parse_shard_key
from p2pmarket.dht.ratelimit import RateLimiter
from p2pmarket.dht.records import (
    MAX_DOC_BYTES,
    PPM,
    DocRef,
    HostRecord,
    ImageAd,
    ResourceAd,
    VmAd,
    evidence_key,
    host_key,
    make_host_record,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

OCTETS = "application/octet-stream"
MAX_EVIDENCE_ANSWER = MAX_EVIDENCE * (MAX_EVIDENCE_PROOF_BYTES + 8) + 8
MAX_CLOSEST = 40
SHARD_READ_COST = 0.25
"""Rate-limit tokens one shard read takes (a market walk reads a window of bands at
once, and crowded bands' sub-shards)."""
NO_DHT_ADDRESS = ("0.0.0.0", 1)
"""What a proxied host advertises as its DHT address: it has none."""


RouteHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _hex_arg(request: web.Request, name: str, size: int, what: str) -> bytes | web.Response:
    """Path argument ``name`` as bytes from hex (of ``size`` bytes unless 0), or the
    400 answer saying what is wrong with it."""
    try:
        raw = bytes.fromhex(request.match_info[name])
    except ValueError:
        return web.Response(status=400, text=f"{what} must be hex")
    if size and len(raw) != size:
        return web.Response(status=400, text=f"{what} must be {size} bytes")
    return raw


def gateway_routes(node: DhtNode, *, rate: float = 20.0, burst: float = 60.0,
                   allow_store: bool = True) -> list[web.RouteDef]:
    """aiohttp routes for the node's public peer app (see the module docstring)."""
    limiter = RateLimiter(rate, burst)

    def limited(request: web.Request, cost: float = 1.0) -> bool:
        ok = limiter.allow(request.remote or "?", node.monotonic(), cost)
        if not ok:
            node._count("gateway_limited")
        return not ok

    async def get_host(request: web.Request) -> web.StreamResponse:
        node_id = _hex_arg(request, "node_id", NODE_ID_SIZE, "node id")
        if isinstance(node_id, web.Response):
            return node_id
        node._count("gateway_get_host")
        record = await node.get_host(node_id)
        if record is None:
            return web.Response(status=404, text="no such host")
        return web.Response(body=record.value, content_type=OCTETS)

    async def get_offers(request: web.Request) -> web.StreamResponse:
        key = "offers/" + request.match_info["shard"]
        try:
            parse_shard_key(key)
        except DhtError as exc:
            return web.Response(status=410 if exc.value == "old_format" else 400,
                                text=exc.message)
        node._count("gateway_offers")
        found = await node.read_shard(key)
        value, _ = fit_offer_set(key, found.entries)
        return web.Response(body=value, content_type=OCTETS)

    async def store(request: web.Request) -> web.StreamResponse:
        key = request.match_info["key"]
        if request.content_length is not None and request.content_length > MAX_VALUE_BYTES:
            return web.Response(status=413, text="value too large")
        value = await request.read()  # client_max_size of the app bounds it too
        if len(value) > MAX_VALUE_BYTES:
            return web.Response(status=413, text="value too large")
        node._count("gateway_store")
        try:
            accepted = await node.store_value(key, value)
        except DhtError as exc:
            return web.json_response({"error": exc.message, "error_value": exc.value},
                                     status=400)
        return web.json_response({"accepted": accepted})

    async def document(request: web.Request) -> web.StreamResponse:
        digest = _hex_arg(request, "sha256", 0, "hash")
        if isinstance(digest, web.Response):
            return digest
        data = node.document(digest)
        if data is None:
            return web.Response(status=404, text="no such document")
        return web.Response(body=data, content_type=OCTETS)

    async def evidence_of(request: web.Request) -> web.StreamResponse:
        node_id = _hex_arg(request, "node_id", NODE_ID_SIZE, "node id")
        if isinstance(node_id, web.Response):
            return node_id
        node._count("gateway_evidence")
        proofs = await node.get_evidence(node_id)
        return web.Response(body=pack(proofs[:MAX_EVIDENCE]), content_type=OCTETS)

    async def closest(request: web.Request) -> web.StreamResponse:
        target = _hex_arg(request, "key", NODE_ID_SIZE, "key")
        if isinstance(target, web.Response):
            return target
        node._count("gateway_closest")
        ids = await node.closest_ids(target)
        return web.Response(body=pack(ids[:MAX_CLOSEST]), content_type=OCTETS)

    def guarded(handler: RouteHandler) -> RouteHandler:
        async def run(request: web.Request) -> web.StreamResponse:
            if limited(request):
                return web.Response(status=429, text="slow down")
            return await handler(request)
        return run

    async def shard_read(request: web.Request) -> web.StreamResponse:
        if limited(request, SHARD_READ_COST):
            return web.Response(status=429, text="slow down")
        return await get_offers(request)

    routes = [web.get("/dht/host/{node_id}", guarded(get_host)),
              web.get("/dht/offers/{shard:.+}", shard_read),
              walk_route(node.walk, limited),
              web.get("/dht/doc/{sha256}", guarded(document)),
              evidence_route(node.evidence_body, limited),
              web.get("/dht/evidence-of/{node_id}", guarded(evidence_of)),
              web.get("/dht/closest/{key}", guarded(closest))]
    if allow_store:
        routes.append(web.post("/dht/store/{key:.+}", guarded(store)))
    return routes


def evidence_route(bodies: Callable[[bytes], bytes | None],
                   limited: Callable[[web.Request], bool] | None = None) -> web.RouteDef:
    """``GET /dht/evidence/<sha256 hex>``: the proof body ``bodies(sha256)`` gives
    (404 if None); for any app that publishes large proofs (e.g. a proxied node's)."""
    async def serve(request: web.Request) -> web.StreamResponse:
        if limited is not None and limited(request):
            return web.Response(status=429, text="slow down")
        digest = _hex_arg(request, "sha256", 32, "hash")
        if isinstance(digest, web.Response):
            return digest
        data = bodies(digest)
        if data is None:
            return web.Response(status=404, text="no such proof")
        return web.Response(body=data, content_type=OCTETS)
    return web.get("/dht/evidence/{sha256}", serve)



async def fetch_document(record: HostRecord, session: aiohttp.ClientSession, *,
                         proxy: str | None = None, timeout: float = 20.0) -> bytes:
    """The document ``record`` names, fetched from its owner and checked against the
    hash in the signed record (:class:`DhtError` ``doc_mismatch`` if it differs)."""
    if record.doc is None or record.doc_url is None:
        raise DhtError("host record names no document", "no_doc")
    try:
        async with session.get(record.doc_url, proxy=proxy,
                               timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            if resp.status != 200:
                raise DhtError(f"document fetch failed: HTTP {resp.status}", "unavailable")
            data = await read_capped(resp, min(record.doc.size, MAX_DOC_BYTES))
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise DhtError(f"document fetch failed: {exc}", "unavailable") from None
    return record.doc.check(data)


def checked_proofs(raw: bytes, host_id: bytes, proof_verifier: ProofVerifier,
                   rejected: int = 0) -> tuple[list[bytes], int]:
    """The valid (by ``proof_verifier``), distinct proofs against ``host_id`` in a
    gateway's ``evidence-of`` answer (a msgpack list of bodies), and ``rejected`` plus
    how many were not."""
    try:
        doc = unpack(raw, MAX_EVIDENCE_ANSWER)
    except WireError:
        return [], rejected + 1
    if not isinstance(doc, list):
        return [], rejected + 1
    out: list[bytes] = []
    for proof in doc[:MAX_EVIDENCE]:
        try:
            if not isinstance(proof, bytes) or len(proof) > MAX_EVIDENCE_PROOF_BYTES:
                raise DhtError("not a proof", "malformed")
            check_proof(proof, host_id, proof_verifier)
        except DhtError:
            rejected += 1
            continue
        if proof not in out:
            out.append(proof)
    return out, rejected


class GatewayUnreachable(DhtError):
    """The gateway did not answer (a connection error or a timeout)."""


class GatewayClient:
    """Reads the DHT through a public node's gateway; verifies every record it gets
    (proofs with ``proof_verifier``; node ids against the genesis ``puzzle_bits``).

    ``fallbacks`` are other gateways' base URLs: a request the current gateway does
    not answer is tried at the next one, which stays current (a gateway cut off must
    not cut a proxied node off the DHT: it could not publish that it moved)."""

    def __init__(self, base_url: str, *, proof_verifier: ProofVerifier,
                 session: aiohttp.ClientSession | None = None, proxy: str | None = None,
                 clock: Clock = now_us, timeout: float = 20.0, puzzle_bits: int = 0,
                 fallbacks: Sequence[str] = ()) -> None:
        self.bases = list(dict.fromkeys(u.rstrip("/") for u in (base_url, *fallbacks)))
        self.base_url = self.bases[0]
        self.proof_verifier = proof_verifier
        self.puzzle_bits = puzzle_bits
        self.proxy = proxy
        self.clock = clock
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self._session = session
        self._own_session = session is None
        self.rejected = 0

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            # through a proxy, a connection per request: proxies (tinyproxy) may close
            # a kept-alive one between requests
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(
                force_close=self.proxy is not None))
        return self._session

    async def close(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def _failover(self, attempt: Callable[[str], Awaitable[T]]) -> T:
        """``attempt(base_url)`` at the current gateway, then at each other one while
        they are unreachable; the one that answered becomes current."""
        start = self.bases.index(self.base_url)   # always one of them
        last = GatewayUnreachable("no gateway", "gateway")
        for i in range(len(self.bases)):
            base = self.bases[(start + i) % len(self.bases)]
            try:
                result = await attempt(base)
            except (aiohttp.ClientError, TimeoutError) as exc:
                last = GatewayUnreachable(f"gateway unreachable: {base}: "
                                          f"{type(exc).__name__} {exc}", "gateway")
                if len(self.bases) > 1:
                    log.warning("%s; trying another gateway", last.message)
                continue
            self.base_url = base
            return result
        raise last

    async def _get(self, path: str, cap: int = MAX_VALUE_BYTES) -> bytes | None:
        async def attempt(base: str) -> bytes | None:
            async with self.session.get(base + path, proxy=self.proxy,
                                        timeout=self.timeout) as resp:
                if resp.status == 404:
                    return None
                if resp.status != 200:
                    raise DhtError(f"gateway answered HTTP {resp.status}", "gateway")
                return await read_capped(resp, cap)
        return await self._failover(attempt)

    async def get_host(self, node_id: bytes) -> HostRecord | None:
        raw = await self._get(f"/dht/host/{node_id.hex()}")
        if raw is None:
            return None
        try:
            record = HostRecord.from_bytes(raw, self.clock())
        except DhtError:
            self.rejected += 1
            return None
        if record.key != host_key(node_id) or not meets_puzzle(node_id, self.puzzle_bits):
            self.rejected += 1
            return None
        return record

    async def read_shard(self, key: str) -> offerquery.ShardRead:
        """One shard of the offer index as the gateway merged it, verified here."""
        parse_shard_key(key)
        raw = await self._get("/dht/" + key)
        if raw is None:
            return offerquery.ShardRead(())
        now = self.clock()
        try:
            offer_set = parse_offer_set(raw, now)
        except DhtError:
            self.rejected += 1
            return offerquery.ShardRead(())
        if offer_set.key != key:
            self.rejected += 1
            return offerquery.ShardRead(())
        self.rejected += offer_set.dropped
        return offerquery.ShardRead(
            tuple(merge_offers(offer_set.entries, now, self.puzzle_bits)), len(raw))

    def walk(self, resource_type: str, min_capacity: int = 0,
             max_price: int | None = None) -> offerquery.Walk:
        """A walk the gateway runs for us in one request (:mod:`.gatewaywalk`), replayed
        and verified here."""
        def rejected(n: int) -> None:
            self.rejected += n
        return GatewayWalk(resource_type, self.read_shard, self.clock(),
                           fetch=lambda path: self._get(path, MAX_WALK_ANSWER),
                           on_rejected=rejected, min_capacity=min_capacity,
                           max_price=max_price, puzzle_bits=self.puzzle_bits)

    async def get_evidence(self, host_id: bytes) -> list[bytes]:
        """The proofs against ``host_id`` the gateway found, each checked here (proofs
        that do not check out are dropped and counted in :attr:`rejected`)."""
        async def attempt(base: str) -> bytes:
            async with self.session.get(f"{base}/dht/evidence-of/{host_id.hex()}",
                                        proxy=self.proxy, timeout=self.timeout) as resp:
                if resp.status != 200:
                    raise DhtError(f"gateway answered HTTP {resp.status}", "gateway")
                return await read_capped(resp, MAX_EVIDENCE_ANSWER)
        raw = await self._failover(attempt)
        proofs, self.rejected = checked_proofs(raw, host_id, self.proof_verifier,
                                               self.rejected)
        return proofs

    async def closest_ids(self, target: bytes) -> list[bytes]:
        """The ids of the nodes closest to ``target`` the gateway's lookup found (valid
        ids only, at most :data:`MAX_CLOSEST`)."""
        raw = await self._get(f"/dht/closest/{target.hex()}")
        try:
            ids = unpack(raw) if raw is not None else []
        except WireError:
            ids = None
        if not isinstance(ids, list):
            raise DhtError("gateway sent a malformed node list", "gateway")
        return [i for i in ids[:MAX_CLOSEST] if isinstance(i, bytes) and len(i) == NODE_ID_SIZE
                and meets_puzzle(i, self.puzzle_bits)]

    async def find_offers(self, types: Sequence[str], n: int = 10, min_capacity: int = 0,
                          max_price: int | None = None) -> list[OfferEntry]:
        return await offerquery.top_offers_each(
            [self.walk(t, min_capacity, max_price) for t in types], n)

    async def market(self, types: Sequence[str], n: int = 10, min_capacity: int = 0,
                     max_price: int | None = None, min_availability_ppm: int = 0
                     ) -> list[offerquery.MarketHost]:
        if not types:
            return []
        return await offerquery.query(types, n, self.walk(types[0], min_capacity, max_price),
                                      self.get_host, min_availability_ppm=min_availability_ppm)

    async def store(self, key: str, value: bytes) -> int:
        async def attempt(base: str) -> Any:
            async with self.session.post(f"{base}/dht/store/{key}", data=value,
                                         proxy=self.proxy, timeout=self.timeout) as resp:
                try:
                    return await resp.json(content_type=None)
                except ValueError as exc:
                    raise DhtError(f"gateway sent no JSON: {exc}", "gateway") from None
        doc = await self._failover(attempt)
        if not isinstance(doc, dict) or "accepted" not in doc:
            reason = doc.get("error_value", "gateway") if isinstance(doc, dict) else "gateway"
            raise DhtError(f"gateway refused the record: {doc}", str(reason))
        return int(doc["accepted"])


class GatewayDht(GatewayClient):
    """A proxied node's DHT: signs its own records and publishes them through a
    gateway, republishing every ``republish_s`` (call :meth:`start_republishing`)."""

    def __init__(self, identity: Identity, base_url: str, *, proof_verifier: ProofVerifier,
                 url: str, republish_s: float = DEFAULT_REPUBLISH_S, **kw: Any) -> None:
        super().__init__(base_url, proof_verifier=proof_verifier, **kw)
        self.identity = identity
        self.url = url
        self.republish_s = republish_s
        self.ttl_us = int(EXPIRY_FACTOR * republish_s * 1_000_000)
        self._vm: VmAd | None = None
        self._host: tuple[dict[str, ResourceAd], int, DocRef | None, tuple[bytes, ...],
                          tuple[ImageAd, ...]] | None = None
        self._offers: dict[str, tuple[int, int]] = {}
        self._docs: dict[bytes, bytes] = {}
        self._proofs: dict[bytes, tuple[bytes, bytes]] = {}
        self._seq = 0
        self._ts = 0
        self._loop_task: asyncio.Task[None] | None = None

    def _next(self, last: int) -> int:
        return max(self.clock(), last + 1)

    def document(self, sha256: bytes) -> bytes | None:
        return self._docs.get(sha256)

    def evidence_body(self, sha256: bytes) -> bytes | None:
        """A proof this node published (mount :func:`evidence_route` with this on the
        app behind :attr:`url` to publish proofs over the inline size)."""
        held = self._proofs.get(sha256)
        return None if held is None else held[1]

    async def publish_evidence(self, host_id: bytes, proof: bytes) -> int:
        """Add ``proof`` to ``evidence/<host_id>`` through the gateway (republished with
        the other records); see :meth:`DhtNode.publish_evidence`."""
        entry = make_evidence_entry(host_id, proof, self.proof_verifier, now_us=self.clock(),
                                    url=self.url)
        self._proofs[entry.sha256] = (host_id, proof)
        key = evidence_key(host_id)
        return await self.store(key, fit_evidence_set(key, [entry])[0])

    async def publish_host(self, resources: Mapping[str, ResourceAd],
                           availability_ppm: int = PPM, url: str | None = None,
                           dht: tuple[str, int] | None = None, document: bytes | None = None,
                           reach: Iterable[bytes] | None = None,
                           images: Iterable[ImageAd] | None = None,
                           vm: VmAd | None = None) -> HostRecord:
        """As :meth:`DhtNode.publish_host`; the record's DHT address is always
        :data:`NO_DHT_ADDRESS` (a proxied node has none), whatever ``dht`` says."""
        if url is not None:
            self.url = url
        ref = self._host[2] if self._host is not None else None
        attest = tuple(reach) if reach is not None else (
            self._host[3] if self._host is not None else ())
        offered = tuple(images) if images is not None else (
            self._host[4] if self._host is not None else ())
        if document is not None:
            if len(document) > MAX_DOC_BYTES:
                raise DhtError(f"document larger than {MAX_DOC_BYTES} bytes", "too_large")
            ref = DocRef.of(document)
            self._docs = {ref.sha256: document}
        self._vm = vm if vm is not None else self._vm
        self._host = (dict(resources), availability_ppm, ref, attest, offered)
        record = self._sign_host()
        await self.store(record.key, record.value)
        return record

    def _sign_host(self) -> HostRecord:
        assert self._host is not None
        resources, availability, ref, reach, images = self._host
        self._seq = self._next(self._seq)
        return make_host_record(self.identity, url=self.url, dht=NO_DHT_ADDRESS,
                                resources=resources, availability_ppm=availability,
                                seq=self._seq, now_us=self.clock(), ttl_us=self.ttl_us,
                                doc=ref, reach=reach, images=images, vm=self._vm)

    async def publish_offer(self, resource_type: str, capacity: int, price: int) -> OfferEntry:
        """As :meth:`DhtNode.publish_offer` (band, sub-shard, withdrawal)."""
        old = self._offers.get(resource_type)
        entries = []
        if old is not None and band_of(*old) != band_of(capacity, price):
            entries += self._sign_offer(resource_type, (0, old[1]), band_of(*old))
        self._offers[resource_type] = (capacity, price)
        new = self._sign_offer(resource_type)
        for entry in [*entries, *new]:
            await self.store(entry.key, fit_offer_set(entry.key, [entry])[0])
        return new[0]

    def _sign_offer(self, resource_type: str, ad: tuple[int, int] | None = None,
                    band: int | None = None) -> list[OfferEntry]:
        capacity, price = ad if ad is not None else self._offers[resource_type]
        self._ts = self._next(self._ts)
        return make_offer_entries(self.identity, resource_type=resource_type, url=self.url,
                                  capacity=capacity, price=price, now_us=self._ts,
                                  ttl_us=self.ttl_us, band=band)

    async def republish(self) -> None:
        if self._host is not None:
            record = self._sign_host()
            await self.store(record.key, record.value)
        for rtype in list(self._offers):
            for entry in self._sign_offer(rtype):
                await self.store(entry.key, fit_offer_set(entry.key, [entry])[0])
        for host_id, proof in list(self._proofs.values()):
            await self.publish_evidence(host_id, proof)

    def start_republishing(self) -> None:
        async def loop() -> None:
            while True:
                await asyncio.sleep(self.republish_s)
                try:
                    await self.republish()
                except DhtError as exc:
                    log.warning("republish through the gateway failed: %s", exc.message)
        if self._loop_task is None:
            self._loop_task = asyncio.create_task(loop())

    async def close(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
            self._loop_task = None
        await super().close()
