"""The audit's error class: :class:`AuditError` and its subclasses (one a module:
:class:`~p2pmarket.audit.evidence.EvidenceError`,
:class:`~p2pmarket.audit.watched.WitnessError`,
:class:`~p2pmarket.audit.witnessstore.WitnessStoreError`)."""

from __future__ import annotations

from p2pmarket.core.errors import P2PMarketError


class AuditError(P2PMarketError):
    """A refused audit operation or malformed audit data (a log entry, a segment).

    The audit shares the ledger's authenticators and strict field checks; their
    refusals reach the audit's callers as an :class:`AuditError` with the same
    message and value.
    """


__all__ = ["AuditError"]
