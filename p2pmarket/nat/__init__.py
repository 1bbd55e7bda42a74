"""Reachability for nodes behind NAT routers and HTTP proxies (docs/design.md §7):
registration by callback (the seed's decision table, attestations, the registrar and
the node's side, AutoNAT v2's limits), what a node believes about itself, and relays
after circuit relay v2 (frames, vouchers, limits, the relay and a relayed host's
client, CONNECT tunnels through proxies)."""
