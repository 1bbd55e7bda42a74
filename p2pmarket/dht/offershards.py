"""The shards of the offer index (docs/design.md section 3). Pure: no I/O, no clock.

Format 2 of the index. An offer of ``capacity`` units at ``price`` belongs to the
*efficiency band* ``b = floor(log2(capacity / price))`` (exact, in integers;
:func:`band_of`; capacity 0 is band :data:`LOWEST_BAND`), and its host publishes
it under three key names:

- ``offers/<type>/<b>`` (the band, ``b`` a decimal integer, e.g. ``offers/cpu/12``,
  ``offers/cpu/-3``),
- ``offers/<type>/<b>/<h>`` (its sub-shard, ``h`` the first hex digit of the host's
  node id, ``0`` to ``f``), and
- ``offers/<type>/g<G>`` (its group, ``G = floor(b / WINDOW)``).

Every entry of a band ranks strictly above every entry of a lower band, so a reader
walks the bands from the type's top (:func:`top_band`: its largest plausible
capacity at price 1) down to the lowest an eligible offer can fall in
(:func:`bottom_band`), a group (:data:`WINDOW` bands) at a time, and stops after the
first group that leaves it with enough eligible hosts. A group set that is not
crowded (:func:`is_crowded`) holds every entry of its bands; a crowded one (storers
may have left some of its signers out) is read again through its bands, and a
crowded band through its :data:`SUB_SHARDS` sub-shards. So one walk costs at most
:func:`max_lookups` lookups, in practice one per group above the market plus, where
the market is dense, a group's bands and a crowded band's sub-shards.

A host whose offer moves to another band first publishes a *withdrawal* in the old
band and sub-shard: an entry with capacity 0 (allowed under any band of its type),
signed before its new entry. Readers keep the newest entry per signer across every
band they read and then drop withdrawals (:func:`~p2pmarket.dht.offers.live_offers`),
so a stale entry in a higher band never outranks a host's current offer.
"""

from __future__ import annotations

from p2pmarket.core.limits import MAX_PRICE, MIN_PRICE, max_capacity
from p2pmarket.dht.checks import MAX_VALUE_BYTES, refusal
from p2pmarket.dht.records import check_type_name

SHARD_FORMAT = 2
"""The index format: 1 was the single key ``offers/<type>``."""
SUB_SHARDS = 16
"""Sub-shards per band (the first hex digit of the node id)."""
LOWEST_BAND = -63
"""The band of capacity 0 (below ``log2(1 / MAX_PRICE)``, the lowest real band)."""
WINDOW = 8
"""Bands a reader reads at once."""
CROWDED_ENTRIES = 24
"""A band's merged sets holding this many signers may be missing some: read its
sub-shards (a storer keeps :data:`~p2pmarket.dht.offers.MAX_OFFERS`, and refuses
newcomers only when full)."""
CROWDED_BYTES = MAX_VALUE_BYTES - 1024
"""A band set this large may be full by size (long URLs) and missing some too."""


def floor_log2_ratio(a: int, b: int) -> int:
    """``floor(log2(a / b))`` for positive integers, exactly."""
    if a <= 0 or b <= 0:
        raise ValueError("floor_log2_ratio needs positive integers")
    k = a.bit_length() - b.bit_length()
    # 2^k <= a/b < 2^(k+1) or one less: correct by comparing exactly
    if (a << max(0, -k)) < (b << max(0, k)):
        k -= 1
    return k


def band_of(capacity: int, price: int) -> int:
    """The efficiency band of an offer (see the module docstring)."""
    if capacity <= 0:
        return LOWEST_BAND
    return max(LOWEST_BAND + 1, floor_log2_ratio(capacity, max(MIN_PRICE, price)))


def top_band(resource_type: str) -> int:
    """The highest band a plausible offer of the type can be in."""
    return band_of(max_capacity(resource_type), MIN_PRICE)


def bottom_band(min_capacity: int = 0, max_price: int | None = None) -> int:
    """The lowest band an offer with at least ``min_capacity`` at most at ``max_price``
    can be in."""
    if min_capacity <= 0:
        return LOWEST_BAND
    return band_of(min_capacity, MAX_PRICE if max_price is None else max(MIN_PRICE, max_price))


def bands(resource_type: str, min_capacity: int = 0, max_price: int | None = None
          ) -> list[int]:
    """The bands a walk reads, best first."""
    return list(range(top_band(resource_type), bottom_band(min_capacity, max_price) - 1, -1))


def group_of(band: int) -> int:
    """The group of a band (:data:`WINDOW` bands to a group, rounded down)."""
    return band // WINDOW


def group_key(resource_type: str, group: int) -> str:
    return f"offers/{check_type_name(resource_type)}/g{group}"


def sub_of(node_id: bytes) -> str:
    """The sub-shard of a node id: its first hex digit."""
    return node_id[:1].hex()[:1] if node_id else "0"


def band_key(resource_type: str, band: int) -> str:
    return f"offers/{check_type_name(resource_type)}/{band}"


def sub_key(resource_type: str, band: int, sub: str) -> str:
    return f"{band_key(resource_type, band)}/{sub}"


def sub_keys(resource_type: str, band: int) -> list[str]:
    return [sub_key(resource_type, band, f"{i:x}") for i in range(SUB_SHARDS)]


def offer_keys(resource_type: str, node_id: bytes, band: int) -> tuple[str, str, str]:
    """The three key names a host's offer in ``band`` is published under."""
    return (band_key(resource_type, band), sub_key(resource_type, band, sub_of(node_id)),
            group_key(resource_type, group_of(band)))


def _int(raw: str) -> int | None:
    try:
        value = int(raw)
    except ValueError:
        return None
    return value if str(value) == raw else None


def parse_shard_key(key: object) -> tuple[str, int, str | None]:
    """``(type, band, sub or None)`` of a format-2 band or sub-shard key name, or
    ``(type, group, "g")`` of a group key; the old single key ``offers/<type>`` is
    refused as ``old_format``, anything else as ``wrong_key``."""
    if not isinstance(key, str) or not key.startswith("offers/"):
        raise refusal("wrong_key", "offer set key must be offers/<type>/<band>[/<hex>]")
    parts = key.split("/")
    if len(parts) == 2:
        raise refusal("old_format", f"{key!r:.60} is the format-1 single key; the offer index "
                      f"is sharded (format {SHARD_FORMAT}: offers/<type>/<band>[/<hex>])")
    if len(parts) not in (3, 4):
        raise refusal("wrong_key", "offer set key must be offers/<type>/<band>[/<hex>]")
    rtype = check_type_name(parts[1])
    raw = parts[2]
    if raw.startswith("g") and len(parts) == 3:
        group = _int(raw[1:])
        if group is None or not group_of(LOWEST_BAND) <= group <= group_of(top_band(rtype)):
            raise refusal("wrong_key", f"bad offer group {raw!r:.20}")
        return rtype, group, "g"
    band = _int(raw)
    if band is None or not LOWEST_BAND <= band <= top_band(rtype):
        raise refusal("wrong_key", f"bad offer band {raw!r:.20}")
    sub = parts[3] if len(parts) == 4 else None
    if sub is not None and (len(sub) != 1 or sub not in "0123456789abcdef"):
        raise refusal("wrong_key", f"bad offer sub-shard {sub!r:.20}")
    return rtype, band, sub


def key_fits(key: str, resource_type: str, node_id: bytes, capacity: int, price: int) -> bool:
    """Whether an entry of these fields may sit under ``key``: its own band, sub-shard or
    group (any of its type for a withdrawal, capacity 0)."""
    rtype, place, sub = parse_shard_key(key)
    if sub == "g":
        return rtype == resource_type and (
            capacity == 0 or place == group_of(band_of(capacity, price)))
    if rtype != resource_type or (sub is not None and sub != sub_of(node_id)):
        return False
    return capacity == 0 or place == band_of(capacity, price)


def is_crowded(signers: int, largest_value: int) -> bool:
    """Whether a band read this way may lack signers (read its sub-shards then)."""
    return signers >= CROWDED_ENTRIES or largest_value >= CROWDED_BYTES


def max_lookups(resource_type: str, min_capacity: int = 0,
                max_price: int | None = None) -> int:
    """The most set lookups one walk of a type can make."""
    walked = bands(resource_type, min_capacity, max_price)
    return len({group_of(b) for b in walked}) + len(walked) * (1 + SUB_SHARDS)
