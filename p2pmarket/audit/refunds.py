"""The refunds a host pays, checked against its log (docs/design.md sections 5 and 6). Pure.

A host pays each refund it recorded with one certified SEND: from the host, to the
refund's holder, of the refund's amount, with the refund's memo
(:func:`p2pmarket.auction.accounts.refund_memo`), and logs the payment as the input
``in.refund_paid {refund_id, payment_id, payment}``. Three checks hold it to that:

- :func:`refund_payment_fault` (a replay rule): the payment the host logged is that
  SEND, for a refund the state holds and has not marked paid; with the network's
  genesis, its certificate must also carry a notary quorum (a host that logs a full
  payment but had a smaller one certified must forge the certificate, and only the
  genesis tells a forged one from a real one);
- :func:`received_refund_fault` (what a witness checks when a buyer pushes the SEND it
  received, ``witness.refund``): a certified SEND of the host whose memo names a
  refund the host recorded must pay exactly that refund; this catches a host that
  short-pays and never logs the payment (or logs another one);
- :func:`overdue_refunds`: refunds recorded but not marked paid long after; a
  complaint (the witness suspects the host), not a proof: an honest host whose
  notaries are unreachable cannot pay either.
"""

from __future__ import annotations

from typing import Any

from p2pmarket.auction import HostError
from p2pmarket.auction.accounts import Refund, RefundPaid, memo_refund_id
from p2pmarket.auction.machine import HostState
from p2pmarket.core.errors import P2PMarketError
from p2pmarket.core.genesis import Genesis
from p2pmarket.core.identity import node_id_of
from p2pmarket.ledger.certificate import Certificate, verify_certificate
from p2pmarket.ledger.chain import SEND

REFUND_GRACE_US = 600_000_000   # a refund unpaid this long after it was recorded: overdue


def _is_host(owner: bytes, host: bytes | None, state: HostState) -> bool:
    """Whether ``owner`` is the host (its key ``host``, or the node id the state names)."""
    return owner == host if host is not None else node_id_of(owner) == state.host_id


def refund_payment_fault(state: HostState, body: Any, host: bytes | None = None,
                         genesis: Genesis | None = None) -> str | None:
    """Why the ``in.refund_paid`` input ``body`` is not the payment of a refund the state
    holds (None if it is). ``host`` is the host's public key (default: any key whose
    node id is the state's); ``genesis``, if given, is the committee whose quorum the
    certificate must carry. Raises :class:`~p2pmarket.auction.machine.MissingState` when
    the state leaves its refunds out."""
    try:
        paid = RefundPaid.from_body(body)
    except HostError as exc:
        return f"malformed refund payment: {exc.message}"
    rid = paid.refund_id
    refund = state.refund(rid)
    if refund is None:
        return f"a payment logged for refund {rid!r}, which the host never recorded"
    if state.refund_paid(rid) is not None:
        return f"refund {rid} is paid twice"
    try:
        cert = Certificate.from_wire(paid.payment)
    except (P2PMarketError, KeyError, TypeError, ValueError, AttributeError):
        return f"the payment of refund {rid} is not a certificate"
    entry = cert.entry
    if entry.kind != SEND or not _is_host(entry.owner, host, state):
        return f"refund {rid} is paid with a SEND that is not the host's"
    if paid.payment_id != entry.hash():
        return f"the payment id logged for refund {rid} is not its SEND's entry hash"
    if not cert.authenticator.verify():
        return f"the SEND paying refund {rid} is not signed by the host"
    mismatch = _mismatch(refund, entry.body)
    if mismatch is not None:
        return f"refund {rid} is paid with a SEND that {mismatch}"
    if genesis is not None:
        try:
            verify_certificate(cert, genesis)
        except P2PMarketError as exc:
            return (f"the SEND paying refund {rid} is not certified by the notaries "
                    f"({exc.message})")
    return None


def _mismatch(refund: Refund, body: Any) -> str | None:
    """How a SEND with ``body`` fails to pay ``refund`` exactly (None if it does not)."""
    if body.get("to") != refund.holder:
        return "pays another key than its holder"
    if body.get("amount") != refund.amount:
        return f"pays {body.get('amount')!r}, not the {refund.amount} recorded"
    if body.get("memo") != refund.memo:
        return "has another memo than the refund's"
    return None


def received_refund_fault(state: HostState, cert: Certificate, host: bytes
                          ) -> tuple[str, str] | None:
    """``(refund id, why)`` if ``cert`` is a SEND of the host ``host`` whose memo names a
    refund the state holds and that does not pay it exactly; None otherwise (not the
    host's SEND, no refund memo, a refund the state does not hold, or an exact
    payment). The certificate's notary quorum is the caller's to check. Raises
    :class:`~p2pmarket.auction.machine.MissingState` when the state leaves its refunds
    out."""
    entry = cert.entry
    if entry.kind != SEND or entry.owner != host:
        return None
    rid = memo_refund_id(entry.body.get("memo"))
    refund = None if rid is None else state.refund(rid)
    if rid is None or refund is None:
        return None
    why = _mismatch(refund, entry.body)
    if why is None:
        return None
    return rid, f"a certified SEND of the host names refund {rid} but {why}"


def overdue_refunds(state: HostState, now: int, grace_us: int = REFUND_GRACE_US
                    ) -> list[Refund]:
    """The refunds recorded more than ``grace_us`` before ``now`` and not paid yet."""
    if state.refunds is None or state.paid is None:
        return []
    return [r for r in state.unpaid() if r.created_us + grace_us < now]


__all__ = ["REFUND_GRACE_US", "overdue_refunds", "received_refund_fault",
           "refund_payment_fault"]
