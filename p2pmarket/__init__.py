"""p2pmarket: a peer-to-peer market for compute resources.

See DESIGN.md (shared with the team) for the architecture. The rooms:
``dht`` (discovery), ``ledger`` (payments and audit), ``host`` (auction and
VMs), ``client`` (buying), ``nat`` (reachability), ``api`` (HTTP transport).
"""

__version__ = "0.1.0"
