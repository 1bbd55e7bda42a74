"""Payments: hash chains with notary certificates (DESIGN.md section 4).

``chain`` and ``certificate`` are pure (entries, authenticators, certificates
and their verification); ``store`` keeps chains in sqlite; ``notary`` holds the
certification rules and RPC handlers; ``wallet`` drives one owner's chain;
``local`` is an in-process committee for tests.
"""

from p2pmarket.ledger.certificate import Certificate, verify_certificate
from p2pmarket.ledger.chain import (
    MINT,
    OPEN,
    RECV,
    SEND,
    Authenticator,
    Entry,
    apply,
    verify_chain,
)
from p2pmarket.ledger.errors import LedgerError

__all__ = [
    "MINT",
    "OPEN",
    "RECV",
    "SEND",
    "Authenticator",
    "Certificate",
    "Entry",
    "LedgerError",
    "apply",
    "verify_certificate",
    "verify_chain",
]
