"""Plain records shared by the pure allocator and the unique-resource auction."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Bid:
    """An account's bid on one resource: weight in ppm, min and max in base units.

    For a unique resource ``min`` is the bidder's own minimum price in micro-credits
    per second and ``max`` is unused.
    """

    weight_ppm: int
    min: int
    max: int


@dataclass(frozen=True)
class AllocEvent:
    """Something the auctioneer must act on or report.

    ``kind``: ``below_min``, ``not_offered``, ``expired``, ``topped_up``, ``outbid``,
    ``disk_shrink``, ``disk_delete``; the event-driven allocator's also ``won``,
    ``exhausted`` and ``topup_ended`` (:mod:`p2pmarket.auction.livebook`).
    """

    account_id: str
    resource: str
    kind: str
    amount: int
    limit: int
