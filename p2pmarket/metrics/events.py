"""The counters and histograms the rooms' observation hooks move.

:class:`EventMetrics` makes them in a node's own :class:`CollectorRegistry` (never
the process's default one: many nodes run in one process in tests) from the
:mod:`~p2pmarket.metrics.catalogue`, and its methods have the signatures of the hooks,
so the node assigns them directly: ``dispatcher.observe = m.rpc``,
``dht.on_lookup = m.dht_lookup``, ``auctioneer.on_tick = m.tick``,
``wallet.on_certify = m.certify``, ``witness.on_audit = m.audit``,
``loop lag -> m.loop_lag``. Each is a few dictionary lookups and additions: cheap
enough for every RPC.

The ``_created`` series prometheus-client adds to counters and histograms are turned
off (process-wide: :func:`prometheus_client.disable_created_metrics`): they double
the output and no dashboard here reads them.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import disable_created_metrics
from prometheus_client.metrics import Counter, Histogram
from prometheus_client.registry import CollectorRegistry

from p2pmarket.metrics.catalogue import doc

disable_created_metrics()  # type: ignore[no-untyped-call]

UNKNOWN_RPC = "unknown"
RPC_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LOOKUP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
HOP_BUCKETS = (0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 15.0)
TICK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
CERTIFY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


def _counter(name: str, registry: CollectorRegistry) -> Counter:
    d = doc(name)
    return Counter(d.family, d.help, d.labels, registry=registry)


def _histogram(name: str, buckets: Iterable[float], registry: CollectorRegistry
               ) -> Histogram:
    d = doc(name)
    return Histogram(d.name, d.help, d.labels, registry=registry, buckets=tuple(buckets))


class EventMetrics:
    """The event-driven families of one node, in ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.rpc_requests = _counter("p2pmarket_rpc_requests_total", registry)
        self.rpc_seconds = _histogram("p2pmarket_rpc_duration_seconds", RPC_BUCKETS,
                                      registry)
        self.lookup_seconds = _histogram("p2pmarket_dht_lookup_duration_seconds",
                                         LOOKUP_BUCKETS, registry)
        self.lookup_hops = _histogram("p2pmarket_dht_lookup_hops", HOP_BUCKETS, registry)
        self.lookup_failures = _counter("p2pmarket_dht_lookup_failures_total", registry)
        self.tick_seconds = _histogram("p2pmarket_auction_tick_duration_seconds",
                                       TICK_BUCKETS, registry)
        self.tick_events = _counter("p2pmarket_auction_tick_events_total", registry)
        self.certify_seconds = _histogram("p2pmarket_ledger_certify_duration_seconds",
                                          CERTIFY_BUCKETS, registry)
        self.certifications = _counter("p2pmarket_ledger_certifications_total", registry)
        self.audits = _counter("p2pmarket_witness_audits_total", registry)
        self.lag_seconds = _histogram("p2pmarket_event_loop_lag_seconds", LAG_BUCKETS,
                                      registry)

    def rpc(self, name: str, outcome: str, seconds: float) -> None:
        """One peer RPC handled (``RpcDispatcher.observe``); a request whose name is
        unknown is counted but not timed."""
        self.rpc_requests.labels(name, outcome).inc()
        if name != UNKNOWN_RPC:
            self.rpc_seconds.labels(name).observe(seconds)

    def dht_lookup(self, kind: str, seconds: float, hops: int, ok: bool) -> None:
        """One iterative lookup (``NodeBase.on_lookup``)."""
        self.lookup_seconds.labels(kind).observe(seconds)
        self.lookup_hops.labels(kind).observe(hops)
        if not ok:
            self.lookup_failures.labels(kind).inc()

    def tick(self, seconds: float, event_kinds: Iterable[str]) -> None:
        """One auction tick that ran (``AuctionRunner.on_tick``) and its events' kinds."""
        self.tick_seconds.observe(seconds)
        counts: dict[str, int] = {}
        for kind in event_kinds:
            counts[kind] = counts.get(kind, 0) + 1
        for kind, n in counts.items():
            self.tick_events.labels(kind).inc(n)

    def certify(self, seconds: float, ok: bool) -> None:
        """One certification round of the node's wallet (``Wallet.on_certify``)."""
        self.certify_seconds.observe(seconds)
        self.certifications.labels("ok" if ok else "failed").inc()

    def audit(self, outcome: str) -> None:
        """One witness audit and the host's state after it (``WitnessService.on_audit``)."""
        self.audits.labels(outcome).inc()

    def loop_lag(self, seconds: float) -> None:
        """One event-loop lag measurement (:class:`~p2pmarket.metrics.process.LoopLag`)."""
        self.lag_seconds.observe(seconds)
