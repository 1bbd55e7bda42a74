"""What the node samples into its price history, pure: the values of the ``own``,
``alloc:<account>`` and ``market`` series (:mod:`~p2pmarket.history.buckets`) from
plain docs the node hands over, and the market's price statistics.

- ``own/<type>``: this host's price for the whole resource (µcredits per second, all
  bids with the owner's root bid: what it advertises), one sample per tick;
- ``alloc:<account>/<type>``: the account's allocation of a divisible resource as a
  share of its capacity, in ppm (0 when it holds none), one sample per tick for each
  account the host has (so only accounts alive in a window have rows in it);
- ``market/<type>`` and ``market/<type>.low``: the lower median and the lowest of the
  whole-resource prices of the hosts the node read from the DHT (as ``p2pmarket top``
  shows them), one sample per market read. At most :data:`MAX_MARKET_TYPES` types.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from p2pmarket.history.buckets import (
    ALLOC,
    MARKET,
    OWN,
    HistoryError,
    Sample,
    SeriesKey,
    series_key,
)

PPM = 1_000_000
MAX_MARKET_TYPES = 16
MAX_ACCOUNTS = 256


def _key(scope: str, name: str) -> SeriesKey | None:
    try:
        return series_key(scope, name)
    except HistoryError:
        return None


def own_samples(summary: Mapping[str, Mapping[str, int]], now: int) -> list[Sample]:
    """``summary``: the host's ``market_summary()`` (``{type: {capacity, price,
    free}}``)."""
    return [Sample(k, now, int(info["price"])) for res, info in sorted(summary.items())
            if (k := _key(OWN, res)) is not None]


def alloc_samples(allocations: Mapping[str, Mapping[str, int]],
                  capacities: Mapping[str, int], now: int) -> list[Sample]:
    """``allocations``: account id -> its allocation ``{type: amount}``; ``capacities``:
    the divisible types to sample, with their capacities. Every account gets a sample
    of every such type, 0 where it holds none (so a share that ends shows as ending)."""
    out = []
    for account, alloc in sorted(allocations.items())[:MAX_ACCOUNTS]:
        for res, capacity in sorted(capacities.items()):
            k = _key(ALLOC + account, res)
            if k is not None and capacity > 0:
                out.append(Sample(k, now, min(PPM, int(alloc.get(res, 0)) * PPM // capacity)))
    return out


def lower_median(values: Sequence[int]) -> int:
    ordered = sorted(values)
    return ordered[(len(ordered) - 1) // 2]


def market_prices(hosts: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, int]]:
    """Per type, over ``hosts`` (each ``{resources: {type: {capacity, price, ...}}}``):
    ``{hosts, capacity, low, median, high}`` (whole-resource prices, µcredits/s)."""
    offers: dict[str, list[tuple[int, int]]] = {}
    for host in hosts:
        for res, ad in host["resources"].items():
            offers.setdefault(res, []).append((int(ad["capacity"]), int(ad["price"])))
    out = {}
    for res in sorted(offers)[:MAX_MARKET_TYPES]:
        prices = [p for _, p in offers[res]]
        out[res] = {"hosts": len(prices), "capacity": sum(c for c, _ in offers[res]),
                    "low": min(prices), "median": lower_median(prices), "high": max(prices)}
    return out


def market_samples(prices: Mapping[str, Mapping[str, int]], now: int) -> list[Sample]:
    out = []
    for res, p in sorted(prices.items())[:MAX_MARKET_TYPES]:
        for name, value in ((res, p["median"]), (f"{res}.low", p["low"])):
            k = _key(MARKET, name)
            if k is not None:
                out.append(Sample(k, now, value))
    return out


__all__ = ["alloc_samples", "lower_median", "market_prices", "market_samples", "own_samples"]
