"""The host owner's settings: capacities, minimum prices and unique resources offered.

Persisted in the account store's ``settings`` table (``set-capacity`` and
``set-min-price`` survive restarts); defaults come from the node's
:class:`p2pmarket.core.config.Settings` (``cpu_mhz``, ``memory_kib``, ``min_price``).
Disk, net_in and net_out are offered once the owner sets a capacity for them; no
capacity may exceed the plausible maximum of :mod:`p2pmarket.core.limits` (the DHT
would refuse the advertisement).
Minimum prices are micro-credits per second: for a divisible resource the root
account's bid (seed 6/13), for a unique identifier its reserve price.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from p2pmarket.auction import HostError
from p2pmarket.auction.resources import DIVISIBLE, UNIQUE, parse_quantity, resource_type
from p2pmarket.auction.unique import UniqueKeyError, canonical_key, parse_key
from p2pmarket.core.clock import US_PER_S
from p2pmarket.core.limits import capacity_problem

MAX_PRICE = 2**40
# what a reservation may hold (disk needs a volume of its own: not yet)
RESERVABLE = ("cpu", "memory", "net_in", "net_out")


@dataclass(frozen=True)
class HostConfig:
    capacities: dict[str, int] = field(default_factory=dict)
    min_prices: dict[str, int] = field(default_factory=dict)
    unique: dict[str, int] = field(default_factory=dict)      # key or range -> reserve/s
    # SHARP (section 10): what reservations may hold of each divisible resource (base
    # units), and the price of an anchor (micro-credits per unit-hour; none: not sold)
    reservable: dict[str, int] = field(default_factory=dict)
    anchor_prices: dict[str, int] = field(default_factory=dict)

    @classmethod
    def defaults(cls, cpu_mhz: int, memory_kib: int, min_price: int,
                 tcp_ports: str = "") -> HostConfig:
        """A host offering ``cpu_mhz`` and ``memory_kib`` at ``min_price`` per unit·s,
        and the ``tcp_ports`` (one port or a range, e.g. ``30000-30099``; "" none) at
        ``min_price`` per second each."""
        caps = {r: 0 for r in DIVISIBLE}
        caps.update(cpu=cpu_mhz, memory=memory_kib)
        unique = {canonical_key(f"tcp_port,{tcp_ports}"): max(1, min_price)} if tcp_ports \
            else {}
        return cls(caps, {r: max(1, min_price) for r in DIVISIBLE}, unique)

    def updated(self, saved: Mapping[str, Any]) -> HostConfig:
        """These defaults overridden by the saved settings ``capacities``, ``min_prices``
        and ``unique`` (each a map, as :meth:`to_saved` gives them; a saved ``unique``
        replaces the default one whole)."""
        caps = {**self.capacities, **{str(k): int(v) for k, v in
                                      dict(saved.get("capacities", {})).items()}}
        prices = {**self.min_prices, **{str(k): int(v) for k, v in
                                        dict(saved.get("min_prices", {})).items()}}
        unique = {str(k): int(v) for k, v in dict(saved["unique"]).items()} \
            if "unique" in saved else dict(self.unique)
        reservable = {**self.reservable, **{str(k): int(v) for k, v in
                                            dict(saved.get("reservable", {})).items()}}
        anchor = {**self.anchor_prices, **{str(k): int(v) for k, v in
                                           dict(saved.get("anchor_prices", {})).items()}}
        return HostConfig(caps, prices, unique, reservable, anchor)

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> HostConfig:
        """The inverse of :meth:`to_doc` (the ``in.settings`` body, a snapshot's)."""
        def ints(key: str) -> dict[str, int]:
            return {str(k): int(v) for k, v in dict(doc.get(key, {})).items()}
        return cls(ints("capacities"), ints("min_prices"), ints("unique"), ints("reservable"),
                   ints("anchor_prices"))

    def root_bids(self, tick_us: int) -> dict[str, int]:
        """The root account's bid per tick on each offered divisible resource."""
        return {r: max(1, self.min_prices.get(r, 1) * tick_us // US_PER_S)
                for r, c in self.capacities.items() if c > 0}

    def reserves(self, tick_us: int) -> dict[str, int]:
        """Reserve price per tick of each offered unique key or range."""
        return {k: -(-p * tick_us // US_PER_S) for k, p in self.unique.items()}

    def offered(self) -> list[str]:
        return sorted([r for r, c in self.capacities.items() if c > 0] + list(self.unique))

    def with_capacity(self, resource: str, amount: Any) -> HostConfig:
        """``("disk", "100GiB")``, ``("cpu", 8000)``; ``("tcp_port", "30000-30099")``
        offers identifiers (``amount`` ``"0"``/None withdraws them)."""
        res, _, ident = str(resource).partition(",")
        kind = resource_type(res)
        if kind in UNIQUE:
            ids = ident or (str(amount) if amount not in (None, "", 0, "0") else "")
            if not ids:
                raise HostError("give the identifiers to offer, e.g. tcp_port 30000-30099",
                                resource)
            try:
                key = canonical_key(f"{kind},{ids}")
                parse_key(key)
            except UniqueKeyError as exc:
                raise HostError(str(exc), ids[:40]) from None
            unique = dict(self.unique)
            if ident and amount in ("0", 0, None):
                unique.pop(key, None)
            else:
                unique[key] = unique.get(key, self.min_prices.get(kind, 1))
            return replace(self, unique=unique)
        if isinstance(amount, bool):
            raise HostError("capacity must be an amount", repr(amount))
        if isinstance(amount, int):
            value = amount
        elif isinstance(amount, str):
            q = parse_quantity(kind, amount)
            if q.fraction:
                raise HostError("a capacity needs a unit (or an integer in base units)",
                                amount[:40])
            value = q.value
        else:
            raise HostError("capacity must be an amount", repr(amount)[:40])
        if value < 0:
            raise HostError("capacity must not be negative", value)
        problem = capacity_problem(kind, value)
        if problem is not None:   # the DHT would refuse the advertisement
            raise HostError(f"{problem}: more than one machine can have", value)
        return replace(self, capacities={**self.capacities, kind: value})

    def with_min_price(self, resource: str, price: Any) -> HostConfig:
        """Minimum price in micro-credits per second (an integer)."""
        if isinstance(price, str) and price.strip().isdigit():
            price = int(price.strip())
        if isinstance(price, bool) or not isinstance(price, int) or not 0 < price <= MAX_PRICE:
            raise HostError(f"min price must be an integer from 1 to {MAX_PRICE} "
                            "micro-credits per second", repr(price)[:40])
        res, _, ident = str(resource).partition(",")
        kind = resource_type(res)
        if ident:
            key = canonical_key(f"{kind},{ident}") if kind in UNIQUE else ""
            if key not in self.unique:
                raise HostError(f"{resource} is not offered", resource)
            return replace(self, unique={**self.unique, key: price})
        if kind in UNIQUE:   # every offered identifier of that type
            return replace(self, min_prices={**self.min_prices, kind: price},
                           unique={k: (price if k.startswith(kind + ",") else v)
                                   for k, v in self.unique.items()})
        return replace(self, min_prices={**self.min_prices, kind: price})

    def with_reservable(self, resource: str, amount: Any) -> HostConfig:
        """What reservations may hold of a divisible resource: an amount with a unit, an
        integer in base units, or a percentage of the capacity (``"20%"``); 0 takes
        none."""
        kind = resource_type(str(resource))
        if kind not in RESERVABLE:
            raise HostError(f"reservations hold {', '.join(RESERVABLE)} only", resource)
        cap = self.capacities.get(kind, 0)
        if isinstance(amount, str) and amount.strip().endswith("%"):
            try:
                pct = float(amount.strip()[:-1])
            except ValueError:
                raise HostError("a percentage is a number and %", amount[:40]) from None
            if not 0 <= pct <= 100:
                raise HostError("a percentage is from 0 to 100", amount[:40])
            value = int(cap * pct / 100)
        else:
            value = replace(self, capacities={}).with_capacity(kind, amount).capacities[kind]
        if value > cap:
            raise HostError(f"reservations cannot hold more {kind} than the capacity ({cap})",
                            value)
        return replace(self, reservable={**self.reservable, kind: value})

    def with_anchor_price(self, resource: str, price: Any) -> HostConfig:
        """The price of an anchor in micro-credits per unit-hour (0: not for sale)."""
        kind = resource_type(str(resource))
        if isinstance(price, str) and price.strip().isdigit():
            price = int(price.strip())
        if kind not in RESERVABLE or isinstance(price, bool) or not isinstance(price, int) \
                or not 0 <= price <= MAX_PRICE:
            raise HostError(f"an anchor price is an integer from 0 to {MAX_PRICE} "
                            f"micro-credits per unit-hour of {', '.join(RESERVABLE)}",
                            repr(price)[:40])
        prices = {**self.anchor_prices, kind: price}
        return replace(self, anchor_prices={k: v for k, v in prices.items() if v > 0})

    def to_doc(self) -> dict[str, Any]:
        return {"capacities": dict(sorted(self.capacities.items())),
                "min_prices": dict(sorted(self.min_prices.items())),
                "unique": dict(sorted(self.unique.items())),
                "reservable": dict(sorted(self.reservable.items())),
                "anchor_prices": dict(sorted(self.anchor_prices.items()))}
