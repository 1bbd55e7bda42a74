"""Prometheus metrics of a node (docs/monitoring.md).

The rooms know nothing of Prometheus: they offer plain observation hooks (the RPC
dispatcher's ``observe``, the DHT's ``on_lookup``, the auction runner's ``on_tick``,
the wallet's ``on_certify``, the witness's ``on_audit``) and plain readings (the
auction state, the notary's queue, the witness's lag, the relay's book). This folder
turns them into metric families, in a registry of each node's own (many nodes share
one process in tests): :mod:`~p2pmarket.metrics.catalogue` names every family (the
one list docs/monitoring.md's table must match), :mod:`~p2pmarket.metrics.events`
holds the counters and histograms the hooks move, :mod:`~p2pmarket.metrics.state`
reads the state-like values at scrape time, :mod:`~p2pmarket.metrics.process` the
process's memory, sockets and event-loop lag, :mod:`~p2pmarket.metrics.http` serves
``GET /metrics``. :mod:`p2pmarket.node.monitor` wires them to a node.
"""
