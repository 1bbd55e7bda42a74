"""Shared fixtures for the ledger tests: a pure committee and a chain builder."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from audit_world import World

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
from tests.support.local_committee import LocalCommittee


@dataclass
class Net:
    """A genesis (f=1, 4 notaries) with all private keys, for pure tests."""

    genesis: Genesis
    mint: Identity
    notaries: list[Identity]

    def certify(self, entry: Entry, owner: Identity,
                signers: list[Identity] | None = None) -> Certificate:
        signers = self.notaries[:self.genesis.quorum] if signers is None else signers
        sig = Authenticator.sign(owner, entry).sig
        return Certificate(entry, sig, tuple((n.public_key, notary_sign(n, entry))
                                             for n in signers))


@pytest.fixture
def net() -> Net:
    mint = Identity.generate()
    notaries = [Identity.generate() for _ in range(4)]
    genesis = Genesis(network="t", mint_key=mint.public_key, f=1,
                      notaries=tuple(NotaryInfo(n.public_key, f"n{i}")
                                     for i, n in enumerate(notaries)))
    return Net(genesis, mint, notaries)


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


@pytest.fixture
def chain_of() -> type[Chain]:
    return Chain


@pytest.fixture
def committee(tmp_path: Path) -> Iterator[LocalCommittee]:
    """One in-process notary (f=0)."""
    c = LocalCommittee.create(tmp_path / "notaries", f=0)
    yield c
    c.close()


@pytest.fixture
def committee4(tmp_path: Path) -> Iterator[LocalCommittee]:
    """Four in-process notaries (f=1, quorum 3)."""
    c = LocalCommittee.create(tmp_path / "notaries", f=1)
    yield c
    c.close()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    """Hosts and witnesses in one process (``audit_world``); test modules with another
    kind of world define their own fixture of that name."""
    w = World(tmp_path)
    yield w
    w.close()
