"""The records of a host's books (pure): an account (the buyer's money and bids at
one host), a payment that funded one, a refund owed back to a holder, and the
payment that paid a refund (:class:`RefundPaid`, the body of ``in.refund_paid``).

An account holds its holder's public key, expected-value fund and contingency
fund (micro-credits) as of tick ``since`` (the event-driven allocator charges them
lazily: :mod:`p2pmarket.auction.livebook`), its frozen per-tick ``spend`` and
contingency ``topups``, contingency ratio (ppm), interval end (µs), state
(``active``, ``expired``: shut down and reset with a long interval, ``closed``),
standing bids per resource (:class:`BidTerm`, fractions kept as fractions) and the
last signed lease. ``allocation`` is empty in the state (it moves for everyone at
every event: :func:`p2pmarket.auction.allocation.current` fills it, with the money as
of the last tick, for those who show or enforce it).
:mod:`p2pmarket.host.accountstore` keeps them in sqlite.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from p2pmarket.auction import HostError
from p2pmarket.auction.resources import BidTerm
from p2pmarket.core.wire import pack

ACTIVE, EXPIRED, CLOSED = "active", "expired", "closed"


@dataclass(frozen=True)
class Account:
    account_id: str
    holder: bytes
    fund: int
    interval_end_us: int
    created_us: int
    bids: Mapping[str, BidTerm] = field(default_factory=dict)
    allocation: Mapping[str, int] = field(default_factory=dict)
    lease: Mapping[str, Any] | None = None   # the lease envelope's wire form
    contingency: int = 0
    contingency_ppm: int = 0
    state: str = ACTIVE
    since: int = 0                                        # tick the money is as of
    spend: int = 0                                        # frozen, per tick
    topups: Mapping[str, int] = field(default_factory=dict)   # per tick, per resource
    split_total: int = 1                                  # weights the spend is split by

    @property
    def money(self) -> int:
        return self.fund + self.contingency

    def persistent(self) -> tuple[Any, ...]:
        """What must be written when it changes (the allocation is derived state)."""
        return (self.holder, self.fund, self.interval_end_us, self.created_us,
                tuple(sorted((k, t.to_wire().__repr__()) for k, t in self.bids.items())),
                None if self.lease is None else pack(dict(self.lease)), self.contingency,
                self.contingency_ppm, self.state, self.since, self.spend,
                tuple(sorted(self.topups.items())), self.split_total)


@dataclass(frozen=True)
class Payment:
    """A verified payment to this host: its unique id (e.g. the SEND entry's hash) and
    amount. The store records which account each payment funded, in the same
    transaction as the account itself, so a payment funds exactly one account once and
    a retry after a crash finds out what happened to it."""

    payment_id: bytes
    amount: int


@dataclass(frozen=True)
class Refund:
    """Money owed back to an account's holder: recorded (``pending``) in the same
    transaction that takes it out of the account, ``done`` once the transfer is made."""

    refund_id: str
    account_id: str
    holder: bytes
    amount: int
    memo: str
    status: str = "pending"
    result: Mapping[str, Any] | None = None
    created_us: int = 0

    def to_doc(self) -> dict[str, Any]:
        return {"refund_id": self.refund_id, "account_id": self.account_id,
                "amount": self.amount, "memo": self.memo, "status": self.status,
                "payment": None if self.result is None else dict(self.result)}


def refund_memo(refund_id: str, account_id: str) -> str:
    """The memo of the SEND that pays a refund: ``p2pmarket refund <refund id> of account
    <account id>`` (the refund's ``memo``; witnesses find the refund a payment names by
    it, :func:`memo_refund_id`)."""
    return f"p2pmarket refund {refund_id} of account {account_id}"


def memo_refund_id(memo: object) -> str | None:
    """The refund id a SEND's memo names (:func:`refund_memo`), or None."""
    if not isinstance(memo, str):
        return None
    parts = memo.split(" ")
    if len(parts) != 6 or parts[:2] != ["p2pmarket", "refund"] or parts[3:5] != [
            "of", "account"] or not parts[2] or not parts[5]:
        return None
    return parts[2]


@dataclass(frozen=True)
class RefundPaid:
    """The body of ``in.refund_paid``: the host paid refund ``refund_id`` with the
    certified SEND ``payment`` (a certificate's wire form ``{entry, owner_sig,
    notaries}``) whose entry hash is ``payment_id``. The pure step records ``refund_id
    -> payment_id`` (a refund is paid once); the replay checks the certificate
    (:func:`p2pmarket.audit.refunds.refund_payment_fault`): a SEND of this host to the
    refund's holder, of its amount, with its memo."""

    refund_id: str
    payment_id: bytes
    payment: Mapping[str, Any]

    @classmethod
    def from_body(cls, body: Any) -> RefundPaid:
        """Raises :class:`p2pmarket.auction.HostError` for a wrong shape."""
        if not isinstance(body, dict) or set(body) != {"refund_id", "payment_id", "payment"}:
            raise HostError("in.refund_paid is {refund_id, payment_id, payment}")
        rid, pid, pay = body["refund_id"], body["payment_id"], body["payment"]
        if not isinstance(rid, str) or not isinstance(pid, bytes) or len(pid) != 32 or \
                not isinstance(pay, dict):
            raise HostError("in.refund_paid is {refund_id: str, payment_id: 32 bytes, "
                            "payment: certificate}")
        return cls(rid, pid, pay)

    def body(self) -> dict[str, Any]:
        return {"refund_id": self.refund_id, "payment_id": self.payment_id,
                "payment": dict(self.payment)}


def terms_to_doc(bids: Mapping[str, BidTerm]) -> dict[str, list[int | str]]:
    """``{res: [weight_ppm, min, max]}``: ints are absolute, decimal strings fractions."""
    return {res: t.to_wire() for res, t in sorted(bids.items())}


def terms_from_doc(doc: Any) -> dict[str, BidTerm]:
    return {str(res): BidTerm.from_wire(str(res), v) for res, v in doc.items()}
