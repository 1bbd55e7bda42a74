"""Pure ledger fixtures shared by the ledger and audit tests: a genesis with all its
private keys (:class:`Net`) and a builder of correctly linked, signed chains
(:class:`Chain`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from p2pmarket.core.genesis import Genesis, NotaryInfo
from p2pmarket.core.identity import Identity
from p2pmarket.ledger.certificate import Certificate, notary_sign
from p2pmarket.ledger.chain import (
    MINT,
    OPEN,
    RECV,
    SEND,
    Authenticator,
    Entry,
    next_entry,
    recv_body,
)


@dataclass
class Net:
    """A genesis (f=1, 4 notaries) with all private keys, for pure tests."""

    genesis: Genesis
    mint: Identity
    notaries: list[Identity]

    @classmethod
    def generate(cls) -> Net:
        mint = Identity.generate()
        notaries = [Identity.generate() for _ in range(4)]
        genesis = Genesis(network="t", mint_key=mint.public_key, f=1,
                          notaries=tuple(NotaryInfo(n.public_key, f"n{i}")
                                         for i, n in enumerate(notaries)))
        return cls(genesis, mint, notaries)

    def certify(self, entry: Entry, owner: Identity,
                signers: list[Identity] | None = None) -> Certificate:
        signers = self.notaries[:self.genesis.quorum] if signers is None else signers
        sig = Authenticator.sign(owner, entry).sig
        return Certificate(entry, sig, tuple((n.public_key, notary_sign(n, entry))
                                             for n in signers))


@dataclass
class Chain:
    """Builds a correctly linked, signed chain for one identity."""

    ident: Identity
    entries: list[Entry] = field(default_factory=list)
    auths: list[Authenticator] = field(default_factory=list)
    sends: dict[int, Certificate] = field(default_factory=dict)  # RECV seq -> SEND cert

    @property
    def key(self) -> bytes:
        return self.ident.public_key

    def make(self, kind: str, body: dict[str, Any], ts: int = 1) -> Entry:
        head = self.entries[-1] if self.entries else None
        return next_entry(self.key, head, kind, body, ts)

    def add(self, kind: str, body: dict[str, Any] | None = None, ts: int = 1) -> Entry:
        entry = self.make(kind, body or {}, ts)
        self.entries.append(entry)
        self.auths.append(Authenticator.sign(self.ident, entry))
        return entry

    def open(self) -> Entry:
        return self.add(OPEN)

    def mint(self, amount: int) -> Entry:
        return self.add(MINT, {"amount": amount})

    def send(self, to: bytes, amount: int, memo: str = "") -> Entry:
        return self.add(SEND, {"to": to, "amount": amount, "memo": memo})

    def recv(self, cert: Certificate) -> Entry:
        entry = self.add(RECV, recv_body(cert.entry))
        self.sends[entry.seq] = cert
        return entry
