"""Payments: hash chains with notary certificates (DESIGN.md section 4).

``chain`` and ``certificate`` are pure (entries, authenticators, certificates,
chain and segment verification); ``store`` keeps a wallet's chain in sqlite;
``notary`` holds the certification rules and state, ``notaryrpc`` its RPC
handlers; ``committee`` is a wallet's ordered lanes to the notaries; ``wallet``
drives one owner's chain; ``supply`` checks the total supply against all
mints; ``local`` is an in-process committee for tests; ``serve`` and
``cluster`` run notaries as processes (fault tests, benchmark).
"""

from p2pmarket.ledger.certificate import (
    Certificate,
    SigCache,
    committee_quorum,
    verify_certificate,
)
from p2pmarket.ledger.chain import (
    CHECKPOINT,
    MINT,
    OPEN,
    RECV,
    SEND,
    Authenticator,
    Entry,
    apply,
    equivocation,
    verify_certified,
    verify_chain,
    verify_segment,
)
from p2pmarket.ledger.errors import LedgerError

__all__ = [
    "CHECKPOINT",
    "MINT",
    "OPEN",
    "RECV",
    "SEND",
    "Authenticator",
    "Certificate",
    "Entry",
    "LedgerError",
    "SigCache",
    "apply",
    "committee_quorum",
    "equivocation",
    "verify_certificate",
    "verify_certified",
    "verify_chain",
    "verify_segment",
]
