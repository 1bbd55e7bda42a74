"""Plausibility bounds on what a host may advertise (docs/design.md sections 3 and 6).

The one place these limits live: the DHT refuses host records and offer entries
outside them at store time (:mod:`p2pmarket.dht.records`, :mod:`p2pmarket.dht.offers`),
and a host owner cannot set a capacity above them (:mod:`p2pmarket.auction.hostconfig`),
so an honest host never publishes a record the DHT refuses.

A capacity is in the type's base units (cpu MHz, memory and disk KiB, net_in and
net_out bit/s; unique types count identifiers). Each maximum is a generous
physical limit for one machine, far above any real host, so that the bound
refuses only lies (a record claiming 2^62 MHz) and never a large honest host. A
type this version does not know gets :data:`DEFAULT_MAX_CAPACITY`. Prices are
micro-credits per second for the whole resource (the sum of everyone's bids,
root account included), so an offered resource's price is at least
:data:`MIN_PRICE`: a price of 0 would rank above every honest offer.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

MAX_CAPACITY: Mapping[str, int] = MappingProxyType({
    "cpu": 2**27,           # MHz: 134 THz, e.g. 26,000 cores at 5 GHz
    "memory": 2**36,        # KiB: 64 TiB
    "disk": 2**44,          # KiB: 16 PiB
    "net_in": 2**44,        # bit/s: 17.6 Tbit/s
    "net_out": 2**44,       # bit/s
    "ipv4_address": 2**32,  # identifiers: all of IPv4
    "tcp_port": 2**16,      # identifiers: every port
})
"""The largest capacity one host may advertise, per resource type (base units)."""
DEFAULT_MAX_CAPACITY = 2**44
"""The largest capacity of a resource type not in :data:`MAX_CAPACITY`."""
MIN_PRICE = 1
"""The lowest price an offered resource may advertise (micro-credits per second)."""
MAX_PRICE = 2**62
"""The highest price (micro-credits per second; every credit there is, in one second)."""


def max_capacity(resource_type: str) -> int:
    """The largest capacity a host may advertise for ``resource_type``."""
    return MAX_CAPACITY.get(resource_type, DEFAULT_MAX_CAPACITY)


def capacity_problem(resource_type: str, capacity: int) -> str | None:
    """Why ``capacity`` of ``resource_type`` is implausible (None if it is not)."""
    top = max_capacity(resource_type)
    if not 0 <= capacity <= top:
        return f"{resource_type} capacity must be from 0 to {top} base units"
    return None


def price_problem(price: int, what: str = "price") -> str | None:
    """Why ``price`` is implausible (None if it is not)."""
    if not MIN_PRICE <= price <= MAX_PRICE:
        return f"{what} must be from {MIN_PRICE} to {MAX_PRICE} micro-credits per second"
    return None


__all__ = ["DEFAULT_MAX_CAPACITY", "MAX_CAPACITY", "MAX_PRICE", "MIN_PRICE",
           "capacity_problem", "max_capacity", "price_problem"]
