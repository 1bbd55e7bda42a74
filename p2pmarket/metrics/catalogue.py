"""Every metric family a node exposes at ``/metrics``: name, type, labels, help.

This is the one list: the instruments are made from it (:mod:`~p2pmarket.metrics.events`,
:mod:`~p2pmarket.metrics.state` look their help text up here, so a family missing
from it cannot be built), and docs/monitoring.md's table must be it, row for row (a
test compares them). Names follow Prometheus' conventions: a ``p2pmarket_`` prefix,
base units in the name (``_seconds``, ``_bytes``, ``_credits_per_second``), counters
ending in ``_total`` (the name given here is the sample's; the family's drops the
``_total``). Labels are bounded: RPC names are the registered ones, resources the
auction's types, states and outcomes short fixed sets; only ``host`` (the witness's
audited hosts, a handful) grows with the network, and no family has a series per
account. Pure: no I/O, no Prometheus.
"""

from __future__ import annotations

from dataclasses import dataclass

COUNTER, GAUGE, HISTOGRAM = "counter", "gauge", "histogram"


@dataclass(frozen=True)
class MetricDoc:
    """One family: its exposed name, Prometheus type, label names and help text."""

    name: str
    kind: str
    labels: tuple[str, ...]
    help: str

    @property
    def family(self) -> str:
        """The family name the text format's ``# TYPE`` line gives (a counter's
        without its ``_total``)."""
        return self.name.removesuffix("_total") if self.kind == COUNTER else self.name


def _m(name: str, kind: str, labels: str, text: str) -> MetricDoc:
    return MetricDoc(name, kind, tuple(labels.split()), text)


METRICS: tuple[MetricDoc, ...] = (
    _m("p2pmarket_node_info", GAUGE, "node_id notary",
       "Always 1; the labels name the node (its id in hex) and whether it is a notary."),
    # peer RPCs (the dispatcher's observe hook)
    _m("p2pmarket_rpc_requests_total", COUNTER, "rpc outcome",
       "Peer RPC requests handled, by RPC name (unknown when unreadable or not "
       "registered) and outcome (ok, error: the handler refused, refused: a check "
       "before the handler failed, internal: the handler broke)."),
    _m("p2pmarket_rpc_duration_seconds", HISTOGRAM, "rpc",
       "Time from a request's bytes to its signed reply, by RPC name."),
    # DHT
    _m("p2pmarket_dht_lookup_duration_seconds", HISTOGRAM, "kind",
       "Iterative DHT lookups' duration, by kind (find_node, find_value)."),
    _m("p2pmarket_dht_lookup_hops", HISTOGRAM, "kind",
       "The longest referral chain a DHT lookup followed (0: nobody to ask)."),
    _m("p2pmarket_dht_lookup_failures_total", COUNTER, "kind",
       "DHT lookups that asked peers and got no answer from any."),
    _m("p2pmarket_dht_records_stored", GAUGE, "",
       "DHT records this node stores (its own and others')."),
    _m("p2pmarket_dht_contacts", GAUGE, "", "Contacts in the DHT routing table."),
    # the auction
    _m("p2pmarket_auction_tick_duration_seconds", HISTOGRAM, "",
       "Auction ticks' duration: the step, its commit, refunds paid and the VMM sync."),
    _m("p2pmarket_auction_tick_events_total", COUNTER, "kind",
       "Allocator events the ticks produced, by kind (below_min, expired, ...)."),
    _m("p2pmarket_auction_accounts", GAUGE, "state",
       "Accounts on this host, by state."),
    _m("p2pmarket_auction_price_credits_per_second", GAUGE, "resource",
       "The resource's price now: all bids per second, the root bid included."),
    _m("p2pmarket_auction_price_hour_average_credits_per_second", GAUGE, "resource",
       "The resource's price averaged over the last hour (as advertised in the DHT)."),
    _m("p2pmarket_auction_capacity", GAUGE, "resource",
       "The capacity offered, in the resource's base unit (cpu MHz, memory and disk "
       "KiB, net_in and net_out bit/s, unique types identifiers)."),
    _m("p2pmarket_auction_allocated", GAUGE, "resource",
       "What the accounts hold of the capacity now, in the same units."),
    _m("p2pmarket_vms", GAUGE, "state",
       "The buyers' virtual machines as the VMM last reported them, by state."),
    # payments
    _m("p2pmarket_ledger_certify_duration_seconds", HISTOGRAM, "",
       "Time for this node's wallet to get a quorum of notary signatures for a batch."),
    _m("p2pmarket_ledger_certifications_total", COUNTER, "outcome",
       "Certification rounds of this node's wallet, by outcome (ok, failed: some "
       "entry of the batch was not certified)."),
    _m("p2pmarket_notary_queue_depth", GAUGE, "",
       "Notary requests waiting for the next group commit (0 on a node that is no "
       "notary)."),
    # the audit
    _m("p2pmarket_witness_lag_entries", GAUGE, "host",
       "Audit-log entries of an audited host (node id in hex) not audited yet: the "
       "head the host or its buyers last named, less the last entry audited."),
    _m("p2pmarket_witness_audits_total", COUNTER, "outcome",
       "Audits this node ran as a witness, by the host's state after it (trusted, "
       "suspected, exposed)."),
    _m("p2pmarket_witness_hosts", GAUGE, "state", "Hosts this node witnesses, by state."),
    # reachability
    _m("p2pmarket_nat_registrations_total", COUNTER, "outcome",
       "Registration sessions this node served as a registrar, by outcome "
       "(registered, refused, lost, internal_error)."),
    _m("p2pmarket_nat_relay_reservations", GAUGE, "",
       "Relayed hosts holding a reservation at this node's relay."),
    _m("p2pmarket_nat_relay_circuits", GAUGE, "", "Circuits open through this node's relay."),
    _m("p2pmarket_nat_relay_bytes_total", COUNTER, "",
       "Bytes this node's relay carried, both ways."),
    # the process
    _m("p2pmarket_process_resident_memory_bytes", GAUGE, "",
       "The process's resident memory (/proc/self/statm)."),
    _m("p2pmarket_process_open_fds", GAUGE, "", "File descriptors the process holds open."),
    _m("p2pmarket_process_open_sockets", GAUGE, "",
       "Of those, sockets (TCP, UDP and Unix)."),
    _m("p2pmarket_event_loop_lag_seconds", HISTOGRAM, "",
       "How late the event loop ran a callback scheduled every second."),
)

BY_NAME: dict[str, MetricDoc] = {m.name: m for m in METRICS}


def doc(name: str) -> MetricDoc:
    """The catalogue's entry for ``name`` (a KeyError names a family not listed)."""
    return BY_NAME[name]
