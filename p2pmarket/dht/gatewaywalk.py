"""A market walk through a gateway in one request (docs/design.md section 3).

A walk over the sharded offer index reads tens of shards (:mod:`p2pmarket.dht.offerquery`);
through a gateway that would be tens of requests. So the gateway walks itself and
sends what it read, and the client replays the same walk over that answer,
verifying every set; it trusts the gateway only for availability, as for single
shards:

- ``GET /dht/offer-walk/<type>?need=<n>[&min_capacity=<c>][&max_price=<p>]`` ->
  msgpack ``{read: [key name, ...], sets: [offer set, ...]}``: every shard key the
  gateway's walk read (in order) and the non-empty merged sets among them (the
  containers the DHT stores, as much as fits one value each), at most
  :data:`MAX_WALK_ANSWER` bytes (keys whose sets would not fit are left out of
  both lists). ``need`` is from 1 to :data:`MAX_NEED`.

A key the answer does not list the client reads with a single-shard request
(``GET /dht/offers/<key>``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from p2pmarket.core.wire import WireError, pack, unpack
from p2pmarket.dht.checks import DhtError
from p2pmarket.dht.offerquery import MAX_RECORD_LOOKUPS, ReadShard, ShardRead, Walk
from p2pmarket.dht.offers import OfferEntry, fit_offer_set, merge_offers, parse_offer_set
from p2pmarket.dht.offershards import parse_shard_key
from p2pmarket.dht.records import check_type_name

MAX_WALK_ANSWER = 1024 * 1024
MAX_NEED = 2 * MAX_RECORD_LOOKUPS
WALK_COST = 4.0
"""Rate-limit tokens a walk request takes."""
MAX_INT_ARG = 2**62

WalkOf = Callable[[str, int, int | None], Walk]
"""``(type, min_capacity, max_price)`` -> a walk over the gateway node's DHT."""


def _int_arg(request: web.Request, name: str, default: int | None, lo: int,
             hi: int) -> int | None:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not lo <= int(raw) <= hi:
        raise DhtError(f"{name} must be an integer from {lo} to {hi}", "malformed")
    return int(raw)


def walk_answer(walk: Walk) -> bytes:
    """The answer to a walk request, after ``walk`` ran (see the module docstring)."""
    read: list[str] = []
    sets: list[bytes] = []
    size = 64
    for key, got in walk.reads.items():
        value = fit_offer_set(key, got.entries)[0] if got.entries else b""
        if size + len(key) + len(value) + 16 > MAX_WALK_ANSWER:
            break
        size += len(key) + len(value) + 16
        read.append(key)
        if value:
            sets.append(value)
    return pack({"read": read, "sets": sets})


def walk_route(walk_of: WalkOf, limited: Callable[[web.Request, float], bool]
               ) -> web.RouteDef:
    """``GET /dht/offer-walk/<type>`` over the walks ``walk_of`` makes."""
    async def serve(request: web.Request) -> web.StreamResponse:
        if limited(request, WALK_COST):
            return web.Response(status=429, text="slow down")
        try:
            rtype = check_type_name(request.match_info["type"])
            need = _int_arg(request, "need", 10, 1, MAX_NEED)
            min_capacity = _int_arg(request, "min_capacity", 0, 0, MAX_INT_ARG)
            max_price = _int_arg(request, "max_price", None, 1, MAX_INT_ARG)
        except DhtError as exc:
            return web.Response(status=400, text=exc.message)
        assert need is not None and min_capacity is not None
        walk = walk_of(rtype, min_capacity, max_price)
        await walk.top(need)
        return web.Response(body=walk_answer(walk), content_type="application/octet-stream")
    return web.get("/dht/offer-walk/{type}", serve)


def parse_walk_answer(raw: bytes, now_us: int, puzzle_bits: int = 0
                      ) -> tuple[dict[str, ShardRead], int]:
    """The verified shard reads in a walk answer (keys read empty map to an empty
    read), and how many sets or entries were rejected. A malformed answer raises
    :class:`DhtError` ``gateway``."""
    try:
        doc: Any = unpack(raw, MAX_WALK_ANSWER)
    except WireError:
        raise DhtError("gateway sent a malformed walk", "gateway") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("read"), list) \
            or not isinstance(doc.get("sets"), list):
        raise DhtError("gateway sent a malformed walk", "gateway")
    out: dict[str, ShardRead] = {}
    for key in doc["read"]:
        try:
            parse_shard_key(key)
        except DhtError:
            raise DhtError("gateway sent a malformed walk", "gateway") from None
        out[key] = ShardRead(())
    rejected = 0
    for value in doc["sets"]:
        try:
            offer_set = parse_offer_set(value, now_us)
        except DhtError:
            rejected += 1
            continue
        if offer_set.key not in out:
            rejected += 1
            continue
        rejected += offer_set.dropped
        entries = merge_offers(offer_set.entries, now_us, puzzle_bits)
        out[offer_set.key] = ShardRead(tuple(entries), len(value))
    return out, rejected


class GatewayWalk(Walk):
    """A walk replayed over a gateway's walk answers (see the module docstring);
    ``fetch(path)`` gets a raw answer, ``read`` reads single shards it lacks."""

    def __init__(self, resource_type: str, read: ReadShard, now_us: int, *,
                 fetch: Callable[[str], Awaitable[bytes | None]],
                 on_rejected: Callable[[int], None], min_capacity: int = 0,
                 max_price: int | None = None, puzzle_bits: int = 0) -> None:
        super().__init__(resource_type, self._served_read, now_us,
                         min_capacity=min_capacity, max_price=max_price,
                         puzzle_bits=puzzle_bits)
        self.fallback = read
        self.fetch = fetch
        self.on_rejected = on_rejected
        self.served: dict[str, ShardRead] = {}
        self.asked = 0

    async def _served_read(self, key: str) -> ShardRead:
        got = self.served.get(key)
        return got if got is not None else await self.fallback(key)

    async def top(self, need: int) -> list[OfferEntry]:
        if need > self.asked and not self.exhausted:
            self.asked = min(need, MAX_NEED)
            query = f"need={self.asked}&min_capacity={self.min_capacity}"
            if self.max_price is not None:
                query += f"&max_price={self.max_price}"
            raw = await self.fetch(f"/dht/offer-walk/{self.resource_type}?{query}")
            if raw is not None:
                served, rejected = parse_walk_answer(raw, self.now_us, self.puzzle_bits)
                self.served.update(served)
                self.on_rejected(rejected)
        return await super().top(need)
