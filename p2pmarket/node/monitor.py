"""A node's metrics: its own registry, the rooms' hooks and readings wired to it.

:func:`node_monitor` makes a :class:`~prometheus_client.registry.CollectorRegistry`
for one node (never the process's default: tests run many nodes in one process),
assigns the event families' methods to the rooms' observation hooks and gives the
state collector its readings (docs/monitoring.md lists the families). Nothing here
decides anything; the service calls it once, serves :attr:`NodeMonitor.registry` at
``GET /metrics`` and runs :attr:`NodeMonitor.lag` as a task.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from prometheus_client.registry import CollectorRegistry

from p2pmarket.api.rpc import RpcDispatcher
from p2pmarket.auction.accounts import ACTIVE, CLOSED, EXPIRED
from p2pmarket.audit.watched import EXPOSED, SUSPECTED, TRUSTED
from p2pmarket.audit.witness import WitnessService
from p2pmarket.core.clock import now_us
from p2pmarket.core.identity import node_id_of
from p2pmarket.dht.node import DhtNode
from p2pmarket.host.auctioneer import Auctioneer
from p2pmarket.ledger.notary import NotaryService
from p2pmarket.ledger.wallet import Wallet
from p2pmarket.metrics.events import EventMetrics
from p2pmarket.metrics.process import LoopLag
from p2pmarket.metrics.state import RelayReading, Sources, StateCollector
from p2pmarket.nat.registrar import Registrar
from p2pmarket.nat.relay import RelayService
from p2pmarket.node.advert import PriceHistory

# the registrar's counters (Registrar.counts) -> the outcome label
REGISTRAR_OUTCOMES = {"registered": "registered", "refused": "refused", "lost": "lost",
                      "internal_errors": "internal_error"}
ACCOUNT_STATES = (ACTIVE, EXPIRED, CLOSED)
WITNESS_STATES = (TRUSTED, SUSPECTED, EXPOSED)


def counted(values: Iterable[str], known: Iterable[str] = ()) -> dict[str, int]:
    """How many of each value; the ``known`` ones always there (at 0 if none), so a
    dashboard's sum has data before the first account."""
    out = dict.fromkeys(known, 0)
    for value in values:
        out[value] = out.get(value, 0) + 1
    return out


@dataclass(frozen=True)
class NodeMonitor:
    """What :func:`node_monitor` made: the registry to serve, the event families, and
    the event-loop lag task to run."""

    registry: CollectorRegistry
    events: EventMetrics
    lag: LoopLag


def node_monitor(node_id: bytes, dispatcher: RpcDispatcher, dht: DhtNode,
                 auctioneer: Auctioneer, wallet: Wallet, witness: WitnessService,
                 prices: Mapping[str, PriceHistory], notary: NotaryService | None = None,
                 registrar: Registrar | None = None, relay: RelayService | None = None
                 ) -> NodeMonitor:
    """Wire a node's parts to a registry of its own (``prices``: the node's price
    histories, read at each scrape)."""
    registry = CollectorRegistry()
    events = EventMetrics(registry)
    dispatcher.observe = events.rpc
    dht.on_lookup = events.dht_lookup
    auctioneer.on_tick = lambda seconds, evs: events.tick(seconds, (e.kind for e in evs))
    wallet.on_certify = events.certify
    witness.on_audit = events.audit

    def relay_reading() -> RelayReading:
        if relay is None:
            return RelayReading()
        book = relay.book
        return RelayReading(len(book.slots), len(book.circuits), book.bytes_relayed)

    def registrations() -> dict[str, int]:
        if registrar is None:
            return {}
        return {label: registrar.counts[key] for key, label in REGISTRAR_OUTCOMES.items()}

    registry.register(StateCollector(Sources(
        node_id=node_id.hex(), notary=notary is not None,
        accounts=lambda: counted((a.state for a in auctioneer.state.accounts.values()),
                                 ACCOUNT_STATES),
        market=auctioneer.market_summary,
        hour_averages=lambda: {res: h.average(now_us()) for res, h in prices.items()},
        vms=lambda: counted(info.state for info in auctioneer.sync.info.values()),
        dht_records=lambda: len(dht.storage),
        dht_contacts=lambda: int(dht.metrics()["contacts"]),
        notary_queue=lambda: notary.group.waiting if notary is not None else 0,
        witness_lag=lambda: {node_id_of(k).hex(): lag for k, lag in witness.lags().items()},
        witness_hosts=lambda: counted((w.state for w in witness.hosts.values()),
                                      WITNESS_STATES),
        registrations=registrations, relay=relay_reading)))
    return NodeMonitor(registry, events, LoopLag(events.loop_lag))
