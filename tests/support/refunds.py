"""A host's refund payments for tests: certified SENDs from the host's own chain (the
pure ledger fixtures of :mod:`tests.support.chains`), idempotent per memo like the
node's wallet (:meth:`p2pmarket.node.payments.NodePayments.refund`). A payer told to
``skim``, pay ``to`` another key, use another ``memo`` or skip the notaries stands in
for a cheating host."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from p2pmarket.core.identity import Identity
from p2pmarket.ledger.certificate import Certificate
from tests.support.chains import Chain, Net


@dataclass
class RefundPayer:
    host: Identity
    net: Net = field(default_factory=Net.generate)
    skim: int = 0                  # pay this much less than asked
    to: bytes | None = None        # pay this key instead of the holder
    memo: str | None = None        # with this memo instead of the refund's
    certified: bool = True         # False: the notaries' signatures are forged
    chain: Chain = field(init=False)
    sent: dict[str, Certificate] = field(default_factory=dict)   # memo asked -> SEND
    calls: list[tuple[bytes, int, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.chain = Chain(self.host)
        self.chain.open()

    async def __call__(self, holder: bytes, amount: int, memo: str) -> dict[str, Any]:
        self.calls.append((holder, amount, memo))
        cert = self.sent.get(memo)
        if cert is None:
            entry = self.chain.send(self.to or holder, amount - self.skim, self.memo or memo)
            signers = None if self.certified else [Identity.generate()
                                                   for _ in range(self.net.genesis.quorum)]
            cert = self.net.certify(entry, self.host, signers)
            self.sent[memo] = cert
        return cert.to_wire()


__all__ = ["RefundPayer"]
