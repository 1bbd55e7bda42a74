"""A bounded cache of signatures already found valid (pure: no I/O).

Owner signatures (:class:`p2pmarket.ledger.chain.Authenticator`) and notary
signatures (:class:`p2pmarket.ledger.certificate.Certificate`) are checked
through it, so a notary or a wallet that sees the same certificate twice
(delivered, then received) checks its signatures once.
"""

from __future__ import annotations

from collections import OrderedDict

from p2pmarket.core.domains import Domain
from p2pmarket.core.identity import verify


class SigCache:
    """A bounded set of ``(key, domain, message, signature)`` found valid: a signature
    is remembered with its domain, so one valid in one domain is not taken as valid in
    another (:mod:`p2pmarket.core.domains`)."""

    def __init__(self, size: int = 1 << 16) -> None:
        self.size = size
        self._seen: OrderedDict[tuple[bytes, str, bytes, bytes], None] = OrderedDict()
        self.hits = 0
        self.checks = 0

    def add(self, key: bytes, domain: Domain, message: bytes, sig: bytes) -> None:
        """Remember a signature known to be valid (e.g. one we just made)."""
        self._seen[(key, domain.tag, message, sig)] = None
        if len(self._seen) > self.size:
            self._seen.popitem(last=False)

    def verify(self, key: bytes, domain: Domain, message: bytes, sig: bytes) -> bool:
        item = (key, domain.tag, message, sig)
        if item in self._seen:
            self.hits += 1
            return True
        self.checks += 1
        if not verify(key, domain, message, sig):
            return False
        self.add(key, domain, message, sig)
        return True
