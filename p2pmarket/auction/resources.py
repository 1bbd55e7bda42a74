"""Resource types, base units and Tycoon's bid syntax (docs/design.md §6).

Base units (integers everywhere): cpu in MHz, memory and disk in KiB, net_in and
net_out in bit/s. Weights and fractions are integer parts-per-million (ppm).

Bid syntax, as on Tycoon's command line: ``RESOURCE[,ID]:WEIGHT,MIN,MAX``::

    cpu:1,0.1,1              weight 1, min 10 % of the host's cpu, max all of it
    cpu:2,500MHz,2GHz        absolute amounts
    memory:1,256MiB,1GiB     KiB, MiB, GiB, TiB (also B, KB, MB, GB, TB: decimal bytes)
    net_in:1,10Mbps,1Gbps    bps, kbps, Mbps, Gbps (also bit/s, kbit/s, ...)
    tcp_port,30000:1         a unique resource and its identifier
    tcp_port,30000-30009:1,50   a range; 50: own minimum price (micro-credits/s)
    ipv4_address,198.18.0.5:2

For a unique resource (ipv4_address, tcp_port) MIN is the bidder's own minimum
price in micro-credits per second (the winner pays at least that, seed
5/23/2007) and MAX is unused.

A number without a unit is a fraction (0..1) of the host's capacity. A field
left out (``cpu:1,,0.5``, ``cpu:2``) is ``None``: the current value is kept
(seed note 12/18).

Wire form of one bid (an RPC argument): either the text after the colon
(``"1,0.1,1"``) or a list ``[weight, min, max]`` whose items are ``None`` (keep),
an ``int`` (weight in ppm, min/max in base units) or a ``str`` in the syntax
above (``"0.1"``, ``"256MiB"``, ``"1.5"`` for a weight). :meth:`BidSpec.to_wire`
writes the list form with ints for absolute amounts and decimal strings for
fractions, so no float is ever needed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from p2pmarket.auction import HostError
from p2pmarket.auction.model import Bid
from p2pmarket.auction.unique import MAX_RANGE, UniqueKeyError, canonical_key, parse_key

PPM = 1_000_000
DIVISIBLE: tuple[str, ...] = ("cpu", "memory", "disk", "net_in", "net_out")
UNIQUE: tuple[str, ...] = ("ipv4_address", "tcp_port")
RESOURCE_TYPES: tuple[str, ...] = DIVISIBLE + UNIQUE
BASE_UNITS: dict[str, str] = {
    "cpu": "MHz", "memory": "KiB", "disk": "KiB", "net_in": "bit/s", "net_out": "bit/s",
    "ipv4_address": "µcr/s", "tcp_port": "µcr/s",
}
MAX_WEIGHT_PPM = 10**12 * PPM
MAX_AMOUNT = 2**62

# Tycoon's own names, accepted on input (matched case-insensitively).
_ALIASES = {
    "networkinterfaceincoming": "net_in", "networkinterfaceoutgoing": "net_out",
    "ipv4address": "ipv4_address", "tcpv4port": "tcp_port", "tcp": "tcp_port",
    "mem": "memory",
}

# unit (lower case) -> base units per unit, as a Decimal (may be fractional)
_KIB = Decimal(1024)
_UNITS: dict[str, dict[str, Decimal]] = {
    "cpu": {"mhz": Decimal(1), "ghz": Decimal(1000), "khz": Decimal(1) / 1000},
    "memory": {
        "kib": Decimal(1), "mib": _KIB, "gib": _KIB**2, "tib": _KIB**3,
        "b": Decimal(1) / _KIB, "kb": Decimal(1000) / _KIB, "mb": Decimal(10**6) / _KIB,
        "gb": Decimal(10**9) / _KIB, "tb": Decimal(10**12) / _KIB,
    },
    "net": {
        "bps": Decimal(1), "kbps": Decimal(10**3), "mbps": Decimal(10**6),
        "gbps": Decimal(10**9), "bit/s": Decimal(1), "kbit/s": Decimal(10**3),
        "mbit/s": Decimal(10**6), "gbit/s": Decimal(10**9),
    },
}
_UNIT_TABLE = {"cpu": "cpu", "memory": "memory", "disk": "memory",
               "net_in": "net", "net_out": "net"}
_NUMBER = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([A-Za-z/]*)\s*$")


def resource_type(name: str) -> str:
    """The canonical resource type for ``name`` (case-insensitive, Tycoon aliases ok)."""
    if not isinstance(name, str):
        raise HostError("resource type must be a string", repr(name)[:40])
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in RESOURCE_TYPES:
        raise HostError(f"unknown resource type {name!r}", name[:40])
    return key


def _decimal(text: str, what: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise HostError(f"bad number {text!r} for {what}", text[:40]) from None
    if not value.is_finite():
        raise HostError(f"bad number {text!r} for {what}", text[:40])
    if value < 0:
        raise HostError(f"{what} must not be negative", text[:40])
    return value


def parse_weight(text: str) -> int:
    """A weight (``1``, ``2.5``) as integer parts-per-million (rounded down)."""
    value = _decimal(text.strip(), "weight")
    ppm = int(value * PPM)
    if ppm > MAX_WEIGHT_PPM:
        raise HostError("weight too large", text[:40])
    return ppm


@dataclass(frozen=True)
class Quantity:
    """An amount in base units, or (``fraction=True``) ppm of the host's capacity."""

    value: int
    fraction: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.value, bool) or not isinstance(self.value, int) or self.value < 0:
            raise HostError("amount must be a non-negative integer", repr(self.value)[:40])
        if self.fraction and self.value > PPM:
            raise HostError("a fraction of capacity must be between 0 and 1", self.value)
        if self.value > MAX_AMOUNT:
            raise HostError("amount too large", self.value)

    def resolve(self, capacity: int) -> int:
        """Absolute base units on a host with ``capacity``."""
        return capacity * self.value // PPM if self.fraction else self.value

    def to_wire(self) -> int | str:
        if not self.fraction:
            return self.value
        whole, part = divmod(self.value, PPM)
        return f"{whole}.{part:06d}".rstrip("0").rstrip(".") if part else str(whole)


def parse_quantity(resource: str, text: str) -> Quantity:
    """``"0.1"`` (fraction of capacity), ``"256MiB"``, ``"2GHz"``, ``"10Mbps"``..."""
    resource = resource_type(resource)
    m = _NUMBER.match(text)
    if m is None:
        raise HostError(f"bad amount {text!r} for {resource}", text[:40])
    number, unit = m.group(1), m.group(2)
    value = _decimal(number, f"{resource} amount")
    if not unit:
        if value > 1:
            raise HostError(f"{resource}: a plain number is a fraction of capacity (0..1); "
                            f"give a unit ({BASE_UNITS[resource]}) for absolute amounts",
                            text[:40])
        return Quantity(int(value * PPM), fraction=True)
    if unit.lower() == "ppm":
        return Quantity(int(value), fraction=True)
    table = _UNITS.get(_UNIT_TABLE.get(resource, ""), {})
    factor = table.get(unit.lower())
    if factor is None:
        raise HostError(f"unknown unit {unit!r} for {resource}",
                        {"unit": unit[:20], "known": sorted(table)})
    amount = int(value * factor)
    if amount > MAX_AMOUNT:
        raise HostError(f"{resource} amount too large", text[:40])
    return Quantity(amount)


def _check_ident(resource: str, ident: str) -> str:
    """The canonical identifier (or ``LO-HI`` range) of a unique resource."""
    if resource not in UNIQUE:
        raise HostError(f"{resource} is divisible and takes no identifier", ident[:40])
    try:
        kind, lo, hi = parse_key(f"{resource},{ident.strip()}")
    except UniqueKeyError as exc:
        raise HostError(f"bad {resource} identifier: {exc}", ident[:40]) from None
    if hi - lo + 1 > MAX_RANGE:
        raise HostError(f"a {resource} range may hold at most {MAX_RANGE} identifiers",
                        ident[:40])
    return canonical_key(f"{kind},{ident.strip()}").partition(",")[2]


@dataclass(frozen=True)
class BidSpec:
    """One parsed bid; ``None`` fields keep the account's current value."""

    resource: str
    ident: str | None = None
    weight_ppm: int | None = None
    min: Quantity | None = None
    max: Quantity | None = None

    @property
    def key(self) -> str:
        return self.resource if self.ident is None else f"{self.resource},{self.ident}"

    def to_wire(self) -> list[int | str | None]:
        return [self.weight_ppm,
                None if self.min is None else self.min.to_wire(),
                None if self.max is None else self.max.to_wire()]

    def check(self) -> BidSpec:
        lo, hi = self.min, self.max
        if self.ident is None and lo is not None and hi is not None \
                and lo.fraction == hi.fraction \
                and lo.value > hi.value:
            raise HostError(f"{self.key}: min is larger than max",
                            {"min": lo.to_wire(), "max": hi.to_wire()})
        return self


def _split_key(key: str) -> tuple[str, str | None]:
    name, sep, ident = key.partition(",")
    resource = resource_type(name)
    if not sep:
        return resource, None
    return resource, _check_ident(resource, ident)


def parse_bid(text: str) -> BidSpec:
    """Parse ``RESOURCE[,ID]:WEIGHT,MIN,MAX``."""
    if not isinstance(text, str):
        raise HostError("bid must be a string", repr(text)[:40])
    key, _, fields = text.partition(":")
    return bid_from_wire(key, fields)


def parse_bids(texts: list[str] | tuple[str, ...]) -> dict[str, BidSpec]:
    """Several bids, keyed by ``RESOURCE[,ID]``; a resource given twice is an error."""
    out: dict[str, BidSpec] = {}
    for text in texts:
        spec = parse_bid(text)
        if spec.key in out:
            raise HostError(f"{spec.key} is bid twice", spec.key)
        out[spec.key] = spec
    return out


def _field(resource: str, item: Any, weight: bool) -> Any:
    if item is None or (isinstance(item, str) and not item.strip()):
        return None
    if isinstance(item, bool):
        raise HostError(f"{resource}: bad bid field {item!r}", repr(item))
    if isinstance(item, int):
        if item < 0:
            raise HostError(f"{resource}: bid values must not be negative", item)
        if weight and item > MAX_WEIGHT_PPM:
            raise HostError("weight too large", item)
        return item if weight else Quantity(item)
    if isinstance(item, str):
        if weight:
            return parse_weight(item)
        if resource in UNIQUE:
            return _price(resource, item)
        return parse_quantity(resource, item)
    raise HostError(f"{resource}: bad bid field of type {type(item).__name__}",
                    type(item).__name__)


def _price(resource: str, text: str) -> Quantity:
    """A unique resource's own minimum price: micro-credits per second (an integer)."""
    text = text.strip()
    if not text.isdigit():
        raise HostError(f"{resource}: the min of a unique resource is a price in "
                        "micro-credits per second (an integer)", text[:40])
    return Quantity(int(text))


def bid_from_wire(key: str, value: Any) -> BidSpec:
    """One bid from its wire form (see the module docstring)."""
    if not isinstance(key, str):
        raise HostError("bid keys must be strings", repr(key)[:40])
    resource, ident = _split_key(key)
    if isinstance(value, str):
        items: list[Any] = value.split(",") if value.strip() else []
    elif isinstance(value, list | tuple):
        items = list(value)
    else:
        raise HostError(f"{key}: bid must be a string or [weight, min, max]",
                        type(value).__name__)
    if len(items) > 3:
        raise HostError(f"{key}: a bid has at most three fields (weight, min, max)",
                        len(items))
    items += [None] * (3 - len(items))
    spec = BidSpec(resource, ident, _field(resource, items[0], True),
                   _field(resource, items[1], False), _field(resource, items[2], False))
    return spec.check()


def bids_from_wire(doc: Any) -> dict[str, BidSpec]:
    """A bid map ``{"cpu": [w, min, max] | "w,min,max", ...}`` from RPC arguments."""
    if not isinstance(doc, dict):
        raise HostError("bids must be a map of resource to bid", type(doc).__name__)
    if len(doc) > 64:
        raise HostError("too many bids", len(doc))
    out: dict[str, BidSpec] = {}
    for key, value in doc.items():
        spec = bid_from_wire(key, value)
        if spec.key in out:
            raise HostError(f"{spec.key} is bid twice", spec.key)
        out[spec.key] = spec
    return out


def bids_to_wire(specs: dict[str, BidSpec]) -> dict[str, list[int | str | None]]:
    return {key: spec.to_wire() for key, spec in specs.items()}


@dataclass(frozen=True)
class BidTerm:
    """An account's standing bid on one resource, as the buyer gave it.

    ``min`` and ``max`` keep whether they were fractions of capacity or absolute
    amounts, so a fraction follows the host's capacity when it changes, and the
    last one given wins (seed 12/18). For a unique resource ``min`` is the own
    minimum price (micro-credits per second) and ``max`` is unused.
    """

    weight_ppm: int
    min: Quantity
    max: Quantity

    def resolve(self, resource: str, capacity: int) -> Bid:
        """The allocator's absolute bid on a host with ``capacity`` (max capped at it)."""
        if "," in resource:
            return Bid(self.weight_ppm, self.min.value, 1)
        hi = min(self.max.resolve(capacity), capacity)
        return Bid(self.weight_ppm, min(self.min.resolve(capacity), hi), hi)

    def to_wire(self) -> list[int | str]:
        return [self.weight_ppm, self.min.to_wire(), self.max.to_wire()]

    @classmethod
    def from_wire(cls, resource: str, doc: Any) -> BidTerm:
        spec = bid_from_wire(resource, list(doc))
        assert spec.weight_ppm is not None and spec.min is not None and spec.max is not None
        return cls(spec.weight_ppm, spec.min, spec.max)


NEW_TERM = BidTerm(PPM, Quantity(0), Quantity(PPM, fraction=True))


def apply_spec(spec: BidSpec, current: BidTerm | None, capacity: int) -> BidTerm:
    """Apply ``spec`` to the account's ``current`` term on a resource of ``capacity``.

    Fields left out keep the current value (a new bid: weight 1, min 0, max all of
    it); a min or max given replaces the old one whichever form either had (seed
    12/18). Refused if the min, resolved on this host, is above the max or above
    the capacity.
    """
    cur = current or NEW_TERM
    term = BidTerm(cur.weight_ppm if spec.weight_ppm is None else spec.weight_ppm,
                   cur.min if spec.min is None else spec.min,
                   cur.max if spec.max is None else spec.max)
    if spec.ident is None:
        lo, hi = term.min.resolve(capacity), term.max.resolve(capacity)
        if lo > min(hi, capacity):
            raise HostError(f"{spec.key}: min is larger than max (max is at most the capacity, "
                            f"{capacity} {BASE_UNITS[spec.resource]})",
                            {"resource": spec.key, "min": lo, "max": min(hi, capacity),
                             "capacity": capacity})
    return term


def resolve_bid(spec: BidSpec, current: Bid | None, capacity: int) -> Bid:
    """Apply ``spec`` to a resolved bid (absolute amounts) and resolve the result."""
    cur = None if current is None else BidTerm(current.weight_ppm, Quantity(current.min),
                                               Quantity(current.max))
    return apply_spec(spec, cur, capacity).resolve(spec.key, capacity)
