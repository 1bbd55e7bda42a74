"""Payments: hash chains with notary certificates (docs/design.md section 4).

Only the payments are here: the host audit is :mod:`p2pmarket.audit`, and the
in-process committee and the notary processes that tests and benchmarks use are
in ``tests/support``.

- Pure, no I/O: :mod:`.chain` (entries, authenticators, the balance rules, chain
  verification), :mod:`.certificate` above it (notary certificates, receipts,
  verification of segments and certified chains), :mod:`.sigcache` below both
  (signatures already checked).
- A wallet's side: :mod:`.store` keeps chains in sqlite, in the rows of
  :mod:`.storeformat`; :mod:`.committee` has a wallet's ordered lanes to the
  notaries; :mod:`.collect` gathers notary signatures into certificates;
  :mod:`.wallet` drives one owner's chain.
- A notary's side: :mod:`.notary` holds the certification rules, on the durable
  state of :mod:`.notarystate`, run through :mod:`.groupcommit`;
  :mod:`.notaryrpc` is its RPC handlers.
- :mod:`.supply` checks the total supply against all mints; :mod:`.errors` and
  :mod:`.keyids` are shared helpers.
"""

from p2pmarket.ledger.certificate import (
    Certificate,
    committee_quorum,
    verify_certificate,
    verify_certified,
    verify_segment,
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
    verify_chain,
)
from p2pmarket.ledger.errors import LedgerError
from p2pmarket.ledger.sigcache import SigCache

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
