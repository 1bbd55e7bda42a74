"""The offer index: entries and sets of its shards, ranking (docs/design.md section 3).
Pure: no I/O, no clock.

- ``offers/<type>/<band>`` and ``offers/<type>/<band>/<hex>`` (the shards,
  :mod:`p2pmarket.dht.offershards`): a container ``{kind: "dht.offers2", key,
  entries: [encoded envelope, ...]}`` (canonical msgpack) of offer entries, kind
  ``dht.offer2``, body ``{key, node_id, url, type, capacity, price, expires}``,
  each signed by its host, ``key`` the shard it is published under (its own band
  and sub-shard; a withdrawal, capacity 0, may name any band of its type), the
  whole container at most :data:`~p2pmarket.dht.checks.MAX_VALUE_BYTES`. Format 1
  (kinds ``dht.offer``/``dht.offers``, the single key ``offers/<type>``) is refused
  as ``old_format``, with a message saying so. One entry per signer (the newest
  envelope ``ts`` wins: a signer's clock orders only its own entries), expired ones
  dropped. Which entries a storer keeps, at most :data:`MAX_OFFERS`, and in which
  order it lists them, is :mod:`p2pmarket.dht.offerkeep`'s rule. ``capacity`` and
  ``price`` must be within the plausibility bounds of :mod:`p2pmarket.core.limits`
  (else the entry is refused: ``implausible``).

All times are integer microseconds; ``now_us`` always comes in as an argument.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from functools import cached_property
from typing import Any

from p2pmarket.core.domains import DHT_RECORD
from p2pmarket.core.identity import Identity, meets_puzzle
from p2pmarket.core.wire import Envelope, pack, seal, unpack
from p2pmarket.dht.checks import (
    INNOCENT,
    MAX_VALUE_BYTES,
    DhtError,
    check_body,
    check_owner,
    check_signature,
    check_size,
    check_str,
    check_times,
    open_container,
    open_envelope,
    refusal,
)
from p2pmarket.dht.offershards import band_of, key_fits, offer_keys, parse_shard_key
from p2pmarket.dht.records import (
    MAX_URL,
    check_capacity,
    check_price,
    check_type_name,
)

OFFER_KIND = "dht.offer2"
OFFER_SET_KIND = "dht.offers2"
OLD_KINDS = frozenset({"dht.offer", "dht.offers"})
"""Format 1 kinds: refused as ``old_format``."""

MAX_OFFERS = 24
"""Entries kept per ``offers/<type>`` key."""
OFFER_FIELDS = frozenset({"key", "node_id", "url", "type", "capacity", "price", "expires"})


# -- offer entries -----------------------------------------------------------

@dataclass(frozen=True)
class OfferEntry:
    """A verified entry of an ``offers/<type>`` set."""

    key: str
    node_id: bytes
    url: str
    type: str
    capacity: int
    price: int
    expires: int
    envelope: Envelope

    @property
    def ts(self) -> int:
        return self.envelope.ts

    @cached_property
    def value(self) -> bytes:
        return self.envelope.encode()

    @property
    def withdrawn(self) -> bool:
        """A withdrawal (capacity 0): the signer left this band."""
        return self.capacity == 0

    @classmethod
    def from_envelope(cls, env: Envelope, now_us: int) -> OfferEntry:
        old_format(env.kind)
        body = check_body(env, OFFER_KIND, OFFER_FIELDS)
        node_id = check_owner(env, body)
        rtype = check_type_name(body["type"])
        url = check_str(body["url"], "url", MAX_URL)
        capacity = check_capacity(rtype, body["capacity"])
        price = check_price(body["price"])
        if not key_fits(body["key"], rtype, node_id, capacity, price):
            raise refusal("wrong_key", "offer key does not match its type, band and id")
        expires = check_times(env, body["expires"], now_us)
        check_signature(env)
        return cls(key=body["key"], node_id=node_id, url=url, type=rtype, capacity=capacity,
                   price=price, expires=expires, envelope=env)

    @classmethod
    def from_bytes(cls, value: object, now_us: int) -> OfferEntry:
        return cls.from_envelope(open_envelope(value), now_us)


def old_format(kind: object) -> None:
    """Refuse a format-1 offer kind with a clear message."""
    if kind in OLD_KINDS:
        raise refusal("old_format", f"{kind} is offer index format 1; this network uses the "
                      "sharded format 2 (dht.offers2 under offers/<type>/<band>[/<hex>])")


def make_offer_entry(identity: Identity, *, resource_type: str, url: str, capacity: int,
                     price: int, now_us: int, ttl_us: int, key: str | None = None
                     ) -> OfferEntry:
    """Sign an offer entry for shard ``key`` (default: its band); ``now_us`` is also its
    ``ts`` (newest per signer wins)."""
    if key is None:
        key = offer_keys(resource_type, identity.node_id, band_of(capacity, price))[0]
    body = {
        "key": key,
        "node_id": identity.node_id,
        "url": url,
        "type": resource_type,
        "capacity": capacity,
        "price": price,
        "expires": now_us + ttl_us,
    }
    entry = OfferEntry.from_envelope(seal(identity, DHT_RECORD, OFFER_KIND, body, ts=now_us),
                                     now_us)
    check_size(pack_offer_set(entry.key, [entry]))
    return entry


def _newer_offer(a: OfferEntry, b: OfferEntry) -> OfferEntry:
    if a.ts != b.ts:
        return a if a.ts > b.ts else b
    return a if a.value >= b.value else b


def make_offer_entries(identity: Identity, *, resource_type: str, url: str, capacity: int,
                       price: int, now_us: int, ttl_us: int, band: int | None = None
                       ) -> list[OfferEntry]:
    """The entries of one offer: for its band, its sub-shard and its group (``band``
    given and ``capacity`` 0: a withdrawal from that band's keys). All carry ``ts``
    ``now_us``."""
    band = band_of(capacity, price) if band is None else band
    return [make_offer_entry(identity, resource_type=resource_type, url=url, capacity=capacity,
                             price=price, now_us=now_us, ttl_us=ttl_us, key=key)
            for key in offer_keys(resource_type, identity.node_id, band)]


def live_offers(entries: Iterable[OfferEntry], now_us: int,
                puzzle_bits: int = 0) -> list[OfferEntry]:
    """The newest entry per signer across shards (:func:`merge_offers`), withdrawals
    dropped: what a reader ranks."""
    return [e for e in merge_offers(entries, now_us, puzzle_bits) if not e.withdrawn]


def merge_offers(entries: Iterable[OfferEntry], now_us: int,
                 puzzle_bits: int = 0) -> list[OfferEntry]:
    """One entry per signer (newest wins), unexpired, from signers whose id meets the
    puzzle, in the order each signer first appears."""
    best: dict[bytes, OfferEntry] = {}
    for entry in entries:
        if entry.expires <= now_us or not meets_puzzle(entry.node_id, puzzle_bits):
            continue
        old = best.get(entry.node_id)
        best[entry.node_id] = entry if old is None else _newer_offer(old, entry)
    return list(best.values())


def fit_offer_set(key: str, entries: Iterable[OfferEntry]) -> tuple[bytes, list[OfferEntry]]:
    """The stored container and the entries it holds. Entries that would push it over
    :data:`MAX_VALUE_BYTES` are left out, so give them best ranked first."""
    def encode(items: list[bytes]) -> bytes:
        return pack({"kind": OFFER_SET_KIND, "key": key, "entries": items})

    items: list[bytes] = []
    kept: list[OfferEntry] = []
    size = len(encode([]))
    for entry in entries:
        if entry.key != key:
            raise refusal("wrong_key", "offer entry for another key")
        raw = entry.value
        # msgpack bin header (<= 3 bytes) + array header growth (<= 2 bytes)
        if size + len(raw) + 5 > MAX_VALUE_BYTES:
            continue
        items.append(raw)
        kept.append(entry)
        size += len(raw) + 5
    return encode(items), kept


def pack_offer_set(key: str, entries: Iterable[OfferEntry]) -> bytes:
    return fit_offer_set(key, entries)[0]


@dataclass(frozen=True)
class OfferSet:
    """A parsed shard value: its valid entries and how many were dropped."""

    key: str
    entries: tuple[OfferEntry, ...]
    dropped: int
    forged: int = 0
    """Dropped entries that no honest node would pass on (bad signature, wrong key...)."""

def parse_offer_set(value: object, now_us: int,
                    known: Mapping[bytes, OfferEntry] | None = None) -> OfferSet:
    """Decode a container; invalid or expired entries are dropped and counted, a
    malformed container raises :class:`DhtError`. ``known`` maps encodings to entries
    already verified (their signatures are not checked again; expiry still is)."""
    try:
        key, raw_entries = open_container(value, OFFER_SET_KIND, "offer set")
    except DhtError as exc:
        if exc.value == "wrong_kind" and isinstance(value, bytes):
            old_format(unpack(value, MAX_VALUE_BYTES).get("kind"))
        raise
    parse_shard_key(key)
    if not isinstance(raw_entries, list):
        raise refusal("malformed", "offer set entries must be a list")
    entries: list[OfferEntry] = []
    dropped = forged = 0
    for raw in raw_entries:
        entry = known.get(raw) if known is not None and isinstance(raw, bytes) else None
        if entry is None or entry.expires <= now_us:
            try:
                entry = OfferEntry.from_bytes(raw, now_us)
            except DhtError as exc:
                dropped += 1
                forged += exc.value not in INNOCENT
                continue
        if entry.key != key:
            dropped += 1
            forged += 1
            continue
        entries.append(entry)
    return OfferSet(key=key, entries=tuple(entries), dropped=dropped, forged=forged)


# -- ranking -----------------------------------------------------------------

def efficiency(entry: OfferEntry) -> tuple[int, Fraction]:
    """Capacity per unit price, exact; a zero price ranks above every positive one."""
    if entry.price == 0:
        return (1, Fraction(entry.capacity))
    return (0, Fraction(entry.capacity, entry.price))


def eligible(entry: OfferEntry, min_capacity: int, max_price: int | None) -> bool:
    """Whether ``entry`` offers at least ``min_capacity`` at most at ``max_price``."""
    return entry.capacity >= min_capacity and (max_price is None or entry.price <= max_price)


def rank_offers(entries: Iterable[OfferEntry], n: int, min_capacity: int = 0,
                max_price: int | None = None) -> list[OfferEntry]:
    """The top ``n`` entries by cost efficiency (capacity / price), best first.

    Ties go to the larger capacity, then the lower price, then the lower node id,
    so the order is total and deterministic.
    """
    if n <= 0:
        return []
    kept = [e for e in entries if eligible(e, min_capacity, max_price)]

    def order(e: OfferEntry) -> tuple[int, Fraction, int, int, bytes]:
        tier, ratio = efficiency(e)
        return (-tier, -ratio, -e.capacity, e.price, e.node_id)

    return sorted(kept, key=order)[:n]


def shard_order(entries: Iterable[OfferEntry]) -> list[OfferEntry]:
    """How a reader hands a shard on (read repair, the gateway): withdrawals first (few
    and small; they must not be cut), then the offers best first."""
    items = list(entries)
    return [e for e in items if e.withdrawn] + rank_offers(
        [e for e in items if not e.withdrawn], len(items))


def offer_doc(entry: OfferEntry) -> dict[str, Any]:
    return {"node_id": entry.node_id.hex(), "url": entry.url, "type": entry.type,
            "capacity": entry.capacity, "price": entry.price, "expires": entry.expires}
