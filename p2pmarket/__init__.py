"""p2pmarket: a peer-to-peer market for compute resources.

The design is docs/design.md; its section 1 describes the rooms and the order in
which they may import each other (checked by tests/test_layout.py): ``core``
(wire, identity, clock, genesis, settings), ``auction`` (the pure Tycoon auction),
``ledger`` (payments), ``audit`` (PeerReview accountability), ``dht`` (discovery),
``host`` (the auctioneer's I/O and the VMMs), ``client`` (buying), ``nat``
(reachability), ``api`` (HTTP transport), ``node`` (one node, wired) and ``cli``.
"""

__version__ = "0.1.0"
