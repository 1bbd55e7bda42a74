"""Brokers' ticket adverts: ``tickets/<type>`` provider sets (docs/design.md section 10).
Pure: no I/O, no clock.

A set is a container ``{kind: "dht.tickets", key, entries: [encoded envelope, ...]}``
(canonical msgpack, at most :data:`~p2pmarket.dht.checks.MAX_VALUE_BYTES`), one per
resource type, of adverts of kind ``dht.ticket``, each signed by its broker in the
``dht.record`` domain (like host records and offers, and checked with the same helpers
of :mod:`p2pmarket.dht.checks`), body::

    {key: "tickets/<type>", node_id, url, type,
     sites: [[site key (32 bytes), amount, start, end], ...]   # 1..8, sites distinct
     price,      # micro-credits per unit-hour (a posted price, not an auction)
     expires}

``amount`` is what the broker still sells of ``type`` at that site for the window
``[start, end)`` (µs), within the plausibility bound of the type
(:mod:`p2pmarket.core.limits`); ``price`` within the price bounds. One advert per
signer (the newest envelope ``ts`` wins), expired ones dropped. A storer keeps at most
:data:`MAX_TICKET_ADS`: signers it already holds keep their places while their adverts
stay live, a newcomer takes only a free one (like the offer index's seniority rule,
:mod:`p2pmarket.dht.offerkeep`, without its prefix caps: a broker's URL is not the
sites'). Invalid entries are dropped and counted; a set with a forged one is refused.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from p2pmarket.core.domains import DHT_RECORD
from p2pmarket.core.identity import Identity, meets_puzzle
from p2pmarket.core.wire import Envelope, pack, seal
from p2pmarket.dht.checks import (
    INNOCENT,
    MAX_VALUE_BYTES,
    DhtError,
    check_body,
    check_int,
    check_owner,
    check_signature,
    check_size,
    check_str,
    check_times,
    open_container,
    open_envelope,
    refusal,
)
from p2pmarket.dht.records import MAX_URL, check_capacity, check_price, check_type_name

TICKET_AD_KIND = "dht.ticket"
TICKET_SET_KIND = "dht.tickets"
MAX_TICKET_ADS = 24
MAX_SITES = 8
KEY_PREFIX = "tickets/"
AD_FIELDS = frozenset({"key", "node_id", "url", "type", "sites", "price", "expires"})


def tickets_key(resource_type: str) -> str:
    return f"{KEY_PREFIX}{resource_type}"


def is_tickets_key(key: object) -> bool:
    return isinstance(key, str) and key.startswith(KEY_PREFIX)


@dataclass(frozen=True)
class SiteAmount:
    """What an advert sells at one site: ``amount`` for ``[start, end)``."""

    site: bytes
    amount: int
    start: int
    end: int

    def to_wire(self) -> list[Any]:
        return [self.site, self.amount, self.start, self.end]


@dataclass(frozen=True)
class TicketAd:
    """A verified advert of a ``tickets/<type>`` set."""

    key: str
    node_id: bytes
    url: str
    type: str
    sites: tuple[SiteAmount, ...]
    price: int
    expires: int
    envelope: Envelope

    @property
    def broker(self) -> bytes:
        """The broker's public key (the advert's signer)."""
        return self.envelope.sender

    @property
    def ts(self) -> int:
        return self.envelope.ts

    @cached_property
    def value(self) -> bytes:
        return self.envelope.encode()

    @classmethod
    def from_envelope(cls, env: Envelope, now_us: int) -> TicketAd:
        body = check_body(env, TICKET_AD_KIND, AD_FIELDS)
        node_id = check_owner(env, body)
        rtype = check_type_name(body["type"])
        if body["key"] != tickets_key(rtype):
            raise refusal("wrong_key", "ticket advert key does not name its type")
        url = check_str(body["url"], "url", MAX_URL)
        sites = _check_sites(rtype, body["sites"])
        price = check_price(body["price"])
        expires = check_times(env, body["expires"], now_us)
        check_signature(env)
        return cls(key=body["key"], node_id=node_id, url=url, type=rtype, sites=sites,
                   price=price, expires=expires, envelope=env)

    @classmethod
    def from_bytes(cls, value: object, now_us: int) -> TicketAd:
        return cls.from_envelope(open_envelope(value), now_us)

    def to_doc(self) -> dict[str, Any]:
        return {"broker": self.broker.hex(), "node_id": self.node_id.hex(), "url": self.url,
                "type": self.type, "price": self.price, "expires": self.expires,
                "sites": [{"site": s.site.hex(), "amount": s.amount, "start": s.start,
                           "end": s.end} for s in self.sites]}


def _check_sites(rtype: str, value: object) -> tuple[SiteAmount, ...]:
    if not isinstance(value, list) or not 0 < len(value) <= MAX_SITES:
        raise refusal("malformed", f"sites must be a list of 1..{MAX_SITES}")
    out = []
    for item in value:
        if not isinstance(item, list) or len(item) != 4:
            raise refusal("malformed", "a site entry is [site key, amount, start, end]")
        site, amount, start, end = item
        if not isinstance(site, bytes) or len(site) != 32:
            raise refusal("malformed", "a site key is 32 bytes")
        amount = check_capacity(rtype, amount)
        start = check_int(start, "start")
        end = check_int(end, "end")
        if end <= start:
            raise refusal("malformed", "a ticket window ends after it starts")
        out.append(SiteAmount(site, amount, start, end))
    if len({s.site for s in out}) != len(out):
        raise refusal("malformed", "sites repeat")
    return tuple(out)


def make_ticket_ad(identity: Identity, *, resource_type: str, url: str,
                   sites: Sequence[SiteAmount], price: int, now_us: int,
                   ttl_us: int) -> TicketAd:
    """Sign an advert (``now_us`` is also its ``ts``: the newest per signer wins)."""
    body = {"key": tickets_key(resource_type), "node_id": identity.node_id, "url": url,
            "type": resource_type, "sites": [s.to_wire() for s in sites], "price": price,
            "expires": now_us + ttl_us}
    ad = TicketAd.from_envelope(seal(identity, DHT_RECORD, TICKET_AD_KIND, body, ts=now_us),
                                now_us)
    check_size(pack_ticket_set(ad.key, [ad]))
    return ad


def newest_ads(ads: Iterable[TicketAd], now_us: int, puzzle_bits: int = 0) -> list[TicketAd]:
    """One advert per signer (the newest ``ts``; ties to the larger encoding), unexpired,
    from signers meeting the puzzle, in the order each signer first appears."""
    best: dict[bytes, TicketAd] = {}
    for ad in ads:
        if ad.expires <= now_us or not meets_puzzle(ad.node_id, puzzle_bits):
            continue
        old = best.get(ad.node_id)
        if old is None or (ad.ts, ad.value) > (old.ts, old.value):
            best[ad.node_id] = ad
    return list(best.values())


def keep_ads(held: Sequence[TicketAd], incoming: Iterable[TicketAd], now_us: int,
             cap: int = MAX_TICKET_ADS, puzzle_bits: int = 0) -> list[TicketAd]:
    """What a storer keeps: the signers it holds first (their newest advert), then
    newcomers in arrival order while there is room."""
    merged = newest_ads([*held, *incoming], now_us, puzzle_bits)
    return merged[:cap]


def fit_ticket_set(key: str, ads: Iterable[TicketAd]) -> tuple[bytes, list[TicketAd]]:
    """The stored container and the adverts it holds (those that would push it over
    :data:`MAX_VALUE_BYTES` are left out)."""
    def encode(items: list[bytes]) -> bytes:
        return pack({"kind": TICKET_SET_KIND, "key": key, "entries": items})

    items: list[bytes] = []
    kept: list[TicketAd] = []
    size = len(encode([]))
    for ad in ads:
        if ad.key != key:
            raise refusal("wrong_key", "ticket advert for another key")
        if size + len(ad.value) + 5 > MAX_VALUE_BYTES:
            continue
        items.append(ad.value)
        kept.append(ad)
        size += len(ad.value) + 5
    return encode(items), kept


def pack_ticket_set(key: str, ads: Iterable[TicketAd]) -> bytes:
    return fit_ticket_set(key, ads)[0]


@dataclass(frozen=True)
class TicketSet:
    """A parsed ``tickets/<type>`` value: its valid adverts and how many were dropped."""

    key: str
    entries: tuple[TicketAd, ...]
    dropped: int
    forged: int = 0


def parse_ticket_set(value: object, now_us: int) -> TicketSet:
    """Decode a container; invalid or expired adverts are dropped and counted (forged
    ones apart), a malformed container raises :class:`DhtError`."""
    key, raw_entries = open_container(value, TICKET_SET_KIND, "ticket set")
    if not is_tickets_key(key):
        raise refusal("wrong_key", "a ticket set lives under tickets/<type>")
    check_type_name(key[len(KEY_PREFIX):])
    if not isinstance(raw_entries, list):
        raise refusal("malformed", "ticket set entries must be a list")
    ads: list[TicketAd] = []
    dropped = forged = 0
    for raw in raw_entries:
        try:
            ad = TicketAd.from_bytes(raw, now_us)
        except DhtError as exc:
            dropped += 1
            forged += exc.value not in INNOCENT
            continue
        if ad.key != key:
            dropped += 1
            forged += 1
            continue
        ads.append(ad)
    return TicketSet(key=key, entries=tuple(ads), dropped=dropped, forged=forged)
