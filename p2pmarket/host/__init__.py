"""The host room: auctioneer, pure allocator, accounts, leases and the VMM (DESIGN.md §6).

Every expected failure in this package raises :class:`HostError`.
"""

from __future__ import annotations

from p2pmarket.errors import P2PMarketError


class HostError(P2PMarketError):
    """Bad bid, unknown account, refused operation or VMM failure on a host."""


__all__ = ["HostError"]
