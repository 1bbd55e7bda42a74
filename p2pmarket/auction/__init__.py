"""The auction, pure (docs/design.md §6): Tycoon's proportional-share allocator, unique
resources, the host's state machine and its steps, snapshots and digests, bid and
resource syntax, and the lease format.

Nothing here does I/O: every step takes the state, an input and ``now`` and returns
the new state and its outputs. :mod:`p2pmarket.host` runs it against sqlite and
libvirt; :mod:`p2pmarket.audit` replays it. Every expected failure raises
:class:`HostError`.
"""

from __future__ import annotations

from p2pmarket.core.errors import P2PMarketError


class HostError(P2PMarketError):
    """Bad bid, unknown account, refused operation or VMM failure on a host."""


__all__ = ["HostError"]
