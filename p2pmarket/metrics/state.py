"""State-like metrics, read at scrape time from callables the node gives.

Nothing is kept between scrapes: :class:`StateCollector` asks its :class:`Sources`
for plain readings (already aggregated: accounts as counts per state, the market
per resource) and turns them into gauge and counter families. A scrape costs one
pass over the accounts (counting their states) and one market summary, so a host
of 1,000 accounts scrapes as fast as an empty one, near enough (scripts/bench/
idle_node.py measures it). A reading that fails leaves its family without samples
(logged), never the scrape without an answer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)

from p2pmarket.core.money import MICRO
from p2pmarket.metrics.catalogue import COUNTER, doc
from p2pmarket.metrics.process import descriptors, resident_bytes

log = logging.getLogger(__name__)

T = TypeVar("T")
Counts = Callable[[], Mapping[str, int]]
_EMPTY: Mapping[str, int] = {}
_NO_MARKET: Mapping[str, Mapping[str, int]] = {}


def _none() -> Mapping[str, int]:
    return {}


def _zero() -> int:
    return 0


@dataclass(frozen=True)
class RelayReading:
    """What a relay's book holds now and has carried."""

    reservations: int = 0
    circuits: int = 0
    bytes_total: int = 0


@dataclass(frozen=True)
class Sources:
    """Where a node's state-like metrics come from; each callable returns what it
    says now (the defaults: nothing, for a part the node does not run)."""

    node_id: str
    notary: bool = False
    accounts: Counts = _none
    """Accounts per state."""
    market: Callable[[], Mapping[str, Mapping[str, int]]] = lambda: {}
    """Per resource ``{capacity, price (micro-credits/s), free}`` (the market summary)."""
    hour_averages: Counts = _none
    """Per resource, the hour's average price (micro-credits/s)."""
    vms: Counts = _none
    """Virtual machines per state."""
    dht_records: Callable[[], int] = _zero
    dht_contacts: Callable[[], int] = _zero
    notary_queue: Callable[[], int] = _zero
    witness_lag: Counts = _none
    """Per audited host (node id in hex), the entries not audited yet."""
    witness_hosts: Counts = _none
    """Watched hosts per state."""
    registrations: Counts = _none
    """Registrar sessions per outcome (counters)."""
    relay: Callable[[], RelayReading] = field(default=RelayReading)


class StateCollector:
    """A prometheus-client collector (``registry.register(StateCollector(sources))``)."""

    def __init__(self, sources: Sources) -> None:
        self.sources = sources

    def describe(self) -> list[Metric]:
        """Nothing: the registry then does not call :meth:`collect` at registration."""
        return []

    def collect(self) -> Iterator[Metric]:
        s = self.sources
        info = _gauge("p2pmarket_node_info")
        info.add_metric([s.node_id, "true" if s.notary else "false"], 1)
        yield info
        yield _by_label("p2pmarket_auction_accounts", _read(s.accounts, _EMPTY))
        market = _read(s.market, _NO_MARKET)
        price = _gauge("p2pmarket_auction_price_credits_per_second")
        capacity = _gauge("p2pmarket_auction_capacity")
        allocated = _gauge("p2pmarket_auction_allocated")
        for res, info_doc in sorted(market.items()):
            price.add_metric([res], info_doc.get("price", 0) / MICRO)
            capacity.add_metric([res], info_doc.get("capacity", 0))
            allocated.add_metric([res], info_doc.get("capacity", 0) - info_doc.get("free", 0))
        yield from (price, capacity, allocated)
        average = _gauge("p2pmarket_auction_price_hour_average_credits_per_second")
        for res, value in sorted(_read(s.hour_averages, _EMPTY).items()):
            average.add_metric([res], value / MICRO)
        yield average
        yield _by_label("p2pmarket_vms", _read(s.vms, _EMPTY))
        yield _single("p2pmarket_dht_records_stored", _read(s.dht_records, 0))
        yield _single("p2pmarket_dht_contacts", _read(s.dht_contacts, 0))
        yield _single("p2pmarket_notary_queue_depth", _read(s.notary_queue, 0))
        yield _by_label("p2pmarket_witness_lag_entries", _read(s.witness_lag, _EMPTY))
        yield _by_label("p2pmarket_witness_hosts", _read(s.witness_hosts, _EMPTY))
        yield _by_label("p2pmarket_nat_registrations_total", _read(s.registrations, _EMPTY))
        relay = _read(s.relay, RelayReading())
        yield _single("p2pmarket_nat_relay_reservations", relay.reservations)
        yield _single("p2pmarket_nat_relay_circuits", relay.circuits)
        yield _single("p2pmarket_nat_relay_bytes_total", relay.bytes_total)
        yield _single("p2pmarket_process_resident_memory_bytes", resident_bytes())
        fds = descriptors()
        yield _single("p2pmarket_process_open_fds", fds.fds)
        yield _single("p2pmarket_process_open_sockets", fds.sockets)


def _read(source: Callable[[], T], default: T) -> T:
    try:
        return source()
    except Exception:
        log.exception("a metrics reading failed")
        return default


def _gauge(name: str) -> GaugeMetricFamily:
    d = doc(name)
    return GaugeMetricFamily(d.name, d.help, labels=d.labels)


def _family(name: str) -> GaugeMetricFamily | CounterMetricFamily:
    d = doc(name)
    if d.kind == COUNTER:
        return CounterMetricFamily(d.family, d.help, labels=d.labels)
    return GaugeMetricFamily(d.name, d.help, labels=d.labels)


def _single(name: str, value: float) -> Metric:
    family = _family(name)
    family.add_metric([], value)
    return family


def _by_label(name: str, values: Mapping[str, int]) -> Metric:
    family = _family(name)
    for label, value in sorted(values.items()):
        family.add_metric([label], value)
    return family
