"""The event-driven allocator's records and refusals (:mod:`p2pmarket.auction.livebook`,
which re-exports them): an account as stored, its row for the digest, and
:class:`Refused`. Pure."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from p2pmarket.auction.model import AllocEvent, Bid
from p2pmarket.core.wire import pack_plain

MOD = 1 << 256


class Refused(Exception):
    """An event refused by rule 4 (6/27): the account would lose a claim (``below_min``)
    or its disk (``disk_delete``)."""

    def __init__(self, event: AllocEvent) -> None:
        super().__init__(f"{event.resource}: {event.kind} ({event.amount} < {event.limit})")
        self.event = event


@dataclass(frozen=True)
class Record:
    """One account of the book as stored: money as of tick ``since``."""

    fund: int
    contingency: int
    since: int
    end_us: int
    bids: Mapping[str, Bid]
    spend: int
    topups: Mapping[str, int]
    split_total: int = 1   # the weight total the spend was split by

    def row(self, aid: str) -> list[object]:
        return [aid, self.fund, self.contingency, self.since, self.end_us, self.spend,
                self.split_total,
                [[r, b.weight_ppm, b.min, b.max] for r, b in sorted(self.bids.items())],
                sorted(self.topups.items())]


def row_hash(aid: str, rec: Record) -> int:
    return int.from_bytes(hashlib.sha256(pack_plain(rec.row(aid))).digest(), "big")


__all__ = ["MOD", "Record", "Refused", "row_hash"]
