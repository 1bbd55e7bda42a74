"""What ``p2pmarket top`` shows, pure: one frame from a market sample, the wallet's
leases and ``now``, and how prices moved since the previous frame.

A frame has a row per resource type (the hosts offering it, their total capacity,
the cheapest, median and dearest price in µcredits per second for the whole
resource, the median hour average, and the cheapest price's move since the last
frame: ``up``, ``down``, ``same`` or ``new``) and a row per lease (its host, state,
allocation, what it has spent, what is left and the seconds to its end, all as of
``now``). Nothing here reads a clock or the network: the caller samples and passes
``now``, so a test drives frames with a fake clock.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Offer:
    """One host's advertised terms for one resource."""

    host: str        # node id, hex
    capacity: int    # base units
    price: int       # µcredits per second for the whole resource
    hour_avg: int


@dataclass(frozen=True)
class LeaseSample:
    lease_id: str
    host: str        # url
    status: str
    allocation: Mapping[str, int]
    spent: int | None
    left: int
    end: int | None  # µs, None when unknown


@dataclass(frozen=True)
class PriceRow:
    resource: str
    hosts: int
    capacity: int
    low: int
    median: int
    high: int
    hour_avg: int
    move: str        # up, down, same, new


@dataclass(frozen=True)
class LeaseRow:
    lease_id: str
    host: str
    status: str
    allocation: Mapping[str, int]
    spent: int | None
    left: int
    seconds_left: int


@dataclass(frozen=True)
class Frame:
    at: int                      # µs, the ``now`` it was built for
    prices: tuple[PriceRow, ...]
    leases: tuple[LeaseRow, ...]

    def low(self, resource: str) -> int | None:
        return next((p.low for p in self.prices if p.resource == resource), None)


def median(values: Sequence[int]) -> int:
    """The lower median (an offered price, never a mean of two)."""
    ordered = sorted(values)
    return ordered[(len(ordered) - 1) // 2]


def move(now: int, before: int | None) -> str:
    if before is None:
        return "new"
    return "up" if now > before else "down" if now < before else "same"


def frame(offers: Mapping[str, Sequence[Offer]], leases: Sequence[LeaseSample], now: int,
          previous: Frame | None = None) -> Frame:
    """One frame (module docstring); resources with no offer are left out."""
    prices = []
    for resource in sorted(offers):
        got = offers[resource]
        if not got:
            continue
        low = min(o.price for o in got)
        prices.append(PriceRow(
            resource, len(got), sum(o.capacity for o in got), low,
            median([o.price for o in got]), max(o.price for o in got),
            median([o.hour_avg for o in got]),
            move(low, previous.low(resource) if previous else None)))
    rows = tuple(
        LeaseRow(s.lease_id, s.host, s.status, s.allocation, s.spent, s.left,
                 0 if s.end is None or s.status in ("ended", "cancelled")
                 else max(0, (s.end - now) // 1_000_000))
        for s in sorted(leases, key=lambda s: (s.end or 0, s.lease_id)))
    return Frame(now, tuple(prices), rows)


ARROWS = {"up": "↑", "down": "↓", "same": "=", "new": "·"}

__all__ = ["ARROWS", "Frame", "LeaseRow", "LeaseSample", "Offer", "PriceRow", "frame",
           "median", "move"]
