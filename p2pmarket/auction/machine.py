"""The auctioneer's state, pure (docs/design.md sections 1, 5, 6): what a witness replays.

:class:`HostState` is everything the host's decisions depend on: its settings
(capacities, minimum prices, unique offers, tick length, long interval), the
live accounts, the digest of the lease terms last handed out per account, the
payments already used (payment id -> account), the refunds made and which of them
are paid (refund id -> the paying SEND's entry hash), the disk usage
the VMM reported, the time of the last tick and the buyers' requests recently
taken (:mod:`p2pmarket.auction.seen`) and the number of ticks taken. It is a frozen
value; the transitions in :mod:`p2pmarket.auction.steps` return a new one. Its
``book`` (the event-driven allocator, :class:`~p2pmarket.auction.livebook.LiveBook`,
with the generation it was at for this state), ``host_sum`` and ``memo`` fields are
caches of values derived from it (outside equality, snapshot and digest): a book is
mutable and moves on with the newest state, so a state stepped again after it (a
replay from an anchor) gets a book restored from its own records.

The allocation helpers the transitions share (evaluate, reallocate with the 6/27
refusal, settle, garbage collection, lease terms) are in
:mod:`p2pmarket.auction.allocation`; the state's canonical snapshot and digest are
in :mod:`p2pmarket.auction.snapshot`.

No clock, socket, file or randomness here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import msgpack

from p2pmarket.auction import HostError
from p2pmarket.auction.accounts import Account, Refund
from p2pmarket.auction.hostconfig import HostConfig
from p2pmarket.auction.livebook import LiveBook
from p2pmarket.auction.model import Bid
from p2pmarket.auction.resources import BidTerm
from p2pmarket.auction.seen import Record
from p2pmarket.sharp.claims import Claim
from p2pmarket.sharp.tree import ClaimTree

SNAPSHOT_VERSION = 5   # 5: SHARP reservations (4: the event-driven allocator)
ZERO = bytes(32)


class MissingState(HostError):
    """A replay needed part of the state that a (trimmed) snapshot left out."""


class Memo:
    """Values derived from accounts, remembered across the states that share it (a pure
    cache: it never changes a result). Each entry names the fields it was derived from
    (by identity: the transitions keep an account's ``bids`` map while it does not
    change) and is used only while they are still the account's.

    - ``resolved``: account -> (bids, capacities, the resolved bids);
    """

    __slots__ = ("resolved",)

    def __init__(self) -> None:
        self.resolved: dict[str, tuple[Mapping[str, BidTerm], Mapping[str, int],
                                       dict[str, Bid]]] = {}


def _p(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]


def _h(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def plain_digest(value: Any) -> bytes:
    """SHA-256 of the msgpack of a value without maps (lists, ints, str, bytes): such a
    value has one encoding, so no canonical sorting is needed."""
    return _h(_p(value))


@dataclass(frozen=True)
class Reservation:
    """A redeemed bundle of tickets (docs/design.md section 10): its account holds
    ``amounts`` (resource type -> base units) during ``[start, end)``; ``active`` says
    whether the book's capacities leave them out now (set at the first tick at or after
    ``start``, the reservation gone at the first at or after ``end``)."""

    account_id: str
    holder: bytes
    start: int
    end: int
    amounts: Mapping[str, int]
    claims: tuple[bytes, ...]     # the final claim ids
    active: bool = False

    def row(self) -> list[Any]:
        return [self.account_id, self.holder, self.start, self.end,
                sorted(self.amounts.items()), list(self.claims), self.active]

    @classmethod
    def from_row(cls, row: Any) -> Reservation:
        aid, holder, start, end, amounts, claims, active = row
        return cls(str(aid), bytes(holder), int(start), int(end),
                   {str(k): int(v) for k, v in amounts}, tuple(bytes(c) for c in claims),
                   bool(active))


@dataclass(frozen=True)
class HostState:
    host_id: bytes
    config: HostConfig
    tick_us: int
    long_us: int
    accounts: Mapping[str, Account] = field(default_factory=dict)   # live (lease=None)
    leased: Mapping[str, bytes] = field(default_factory=dict)       # aid -> terms digest
    payments: Mapping[bytes, tuple[str, int]] | None = field(default_factory=dict)
    payments_hash: bytes = ZERO
    refunds: Mapping[str, Refund] | None = field(default_factory=dict)
    refunds_hash: bytes = ZERO
    paid: Mapping[str, bytes] | None = field(default_factory=dict)   # refund -> SEND hash
    paid_hash: bytes = ZERO
    usage: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    last_tick: int = -1
    requests: Record = field(default_factory=dict)   # buyers' requests taken (seen.py)
    ticks: int = 0                                   # ticks taken
    # SHARP (section 10): the claim tree over redeemed claims, the anchors the host issued
    # (by claim id, until their term ends) and the reservations (by account id)
    claims: ClaimTree = field(default_factory=ClaimTree)
    anchors: Mapping[bytes, Claim] = field(default_factory=dict)
    reservations: Mapping[str, Reservation] = field(default_factory=dict)
    book: LiveBook | None = field(default=None, compare=False, repr=False)
    book_gen: int = field(default=-1, compare=False, repr=False)
    host_sum: int = field(default=-1, compare=False, repr=False)   # -1: not known
    # expired accounts without bids, for the next tick to collect (None: not known)
    collectable: frozenset[str] | None = field(default=None, compare=False, repr=False)
    memo: Memo = field(default_factory=Memo, compare=False, repr=False)

    # -- derived -----------------------------------------------------------------------

    @property
    def capacities(self) -> dict[str, int]:
        """What the auction shares: each offered capacity less the active reservations'
        amounts (section 10)."""
        held = self.reserved()
        return {r: c - held.get(r, 0) for r, c in self.config.capacities.items()
                if c - held.get(r, 0) > 0}

    @property
    def machine_capacities(self) -> dict[str, int]:
        """The host's whole capacities (a VM's share of the machine is of these)."""
        return {r: c for r, c in self.config.capacities.items() if c > 0}

    def reserved(self) -> dict[str, int]:
        """What the active reservations hold, per resource."""
        out: dict[str, int] = {}
        for r in self.reservations.values():
            if r.active:
                for k, v in r.amounts.items():
                    out[k] = out.get(k, 0) + v
        return out

    def payment_account(self, payment_id: bytes) -> str | None:
        if self.payments is None:
            raise MissingState("the snapshot leaves out the payments", "payments")
        got = self.payments.get(payment_id)
        return None if got is None else got[0]

    def refund(self, refund_id: str) -> Refund | None:
        if self.refunds is None:
            raise MissingState("the snapshot leaves out the refunds", "refunds")
        return self.refunds.get(refund_id)

    def refund_paid(self, refund_id: str) -> bytes | None:
        """The entry hash of the SEND that paid refund ``refund_id`` (None: unpaid)."""
        if self.paid is None:
            raise MissingState("the snapshot leaves out the refunds paid", "paid")
        return self.paid.get(refund_id)

    def unpaid(self) -> list[Refund]:
        """The refunds not paid yet, oldest first."""
        if self.refunds is None or self.paid is None:
            raise MissingState("the snapshot leaves out the refunds", "refunds")
        paid = self.paid
        return [r for rid, r in self.refunds.items() if rid not in paid]

    def with_payment(self, payment_id: bytes, account_id: str, amount: int) -> HostState:
        return self.with_payments([(payment_id, account_id, amount)])

    def with_payments(self, records: list[tuple[bytes, str, int]]) -> HostState:
        if not records:
            return self
        if self.payments is None:
            raise MissingState("the snapshot leaves out the payments", "payments")
        table, chain = dict(self.payments), self.payments_hash
        for pid, aid, amount in records:
            table[pid] = (aid, amount)
            chain = _h(chain + _p([pid, aid, amount]))
        return replace(self, payments=table, payments_hash=chain)

    def with_refunds(self, refunds: list[Refund]) -> HostState:
        if not refunds:
            return self
        if self.refunds is None:
            raise MissingState("the snapshot leaves out the refunds", "refunds")
        table, chain = dict(self.refunds), self.refunds_hash
        for r in refunds:
            table[r.refund_id] = r
            chain = _h(chain + _p(refund_row(r)))
        return replace(self, refunds=table, refunds_hash=chain)

    def with_paid(self, records: list[tuple[str, bytes]]) -> HostState:
        """The refunds ``(refund id, SEND entry hash)`` marked paid (a hash chain, like
        the payments and refunds)."""
        if not records:
            return self
        if self.paid is None:
            raise MissingState("the snapshot leaves out the refunds paid", "paid")
        table, chain = dict(self.paid), self.paid_hash
        for rid, pid in records:
            table[rid] = pid
            chain = _h(chain + _p([rid, pid]))
        return replace(self, paid=table, paid_hash=chain)


def refund_row(r: Refund) -> list[Any]:
    return [r.refund_id, r.account_id, r.holder, r.amount, r.memo, r.created_us]


def new_state(host_id: bytes, config: HostConfig, tick_us: int, long_us: int) -> HostState:
    return HostState(host_id, config, max(1, tick_us), long_us)


__all__ = ["SNAPSHOT_VERSION", "ZERO", "HostState", "Memo", "MissingState", "Reservation",
           "new_state",
           "plain_digest", "refund_row"]
