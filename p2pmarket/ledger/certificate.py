"""Notary certificates: a receipt anyone verifies offline (DESIGN.md section 4).

A certificate is an entry, its owner's signature, and notary signatures of
``pack(["cert", owner, seq, hash])``. It is valid when the owner's signature is
good and at least ``genesis.quorum`` (2f+1) DISTINCT committee keys signed it
correctly. Unknown keys and bad signatures are ignored, never counted; one key
never counts twice. Wire form: ``{entry, owner_sig, notaries: [[key, sig], ...]}``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from p2pmarket.config import Genesis
from p2pmarket.identity import PUBLIC_KEY_SIZE, SIGNATURE_SIZE, Identity, verify
from p2pmarket.ledger.chain import Authenticator, Entry, auth_message
from p2pmarket.ledger.errors import LedgerError, check_bytes, check_map
from p2pmarket.wire import pack

MAX_NOTARY_SIGS = 128
CERT_FIELDS = frozenset({"entry", "owner_sig", "notaries"})


def cert_message(owner: bytes, seq: int, entry_hash: bytes) -> bytes:
    """What a notary signs to certify entry ``(owner, seq, hash)``."""
    return pack(["cert", owner, seq, entry_hash])


def notary_sign(identity: Identity, entry: Entry) -> bytes:
    return identity.sign(cert_message(entry.owner, entry.seq, entry.hash()))


def notary_sig_valid(entry: Entry, key: bytes, sig: bytes) -> bool:
    return verify(key, cert_message(entry.owner, entry.seq, entry.hash()), sig)


@dataclass(frozen=True)
class Certificate:
    entry: Entry
    owner_sig: bytes
    notary_sigs: tuple[tuple[bytes, bytes], ...]

    def __post_init__(self) -> None:
        if not isinstance(self.entry, Entry):
            raise LedgerError("certificate entry must be an Entry", "entry")
        check_bytes(self.owner_sig, "owner_sig", SIGNATURE_SIZE)
        if not isinstance(self.notary_sigs, tuple) or len(self.notary_sigs) > MAX_NOTARY_SIGS:
            raise LedgerError(f"at most {MAX_NOTARY_SIGS} notary signatures", "notaries")
        for pair in self.notary_sigs:
            if not isinstance(pair, tuple) or len(pair) != 2:
                raise LedgerError("notary signature must be a (key, sig) pair", "notaries")
            check_bytes(pair[0], "notary key", PUBLIC_KEY_SIZE)
            check_bytes(pair[1], "notary sig", SIGNATURE_SIZE)

    @property
    def authenticator(self) -> Authenticator:
        return Authenticator.of(self.entry, self.owner_sig)

    @property
    def keys(self) -> frozenset[bytes]:
        return frozenset(k for k, _ in self.notary_sigs)

    def valid_signers(self, genesis: Genesis) -> frozenset[bytes]:
        """Committee keys with a valid signature on this certificate."""
        committee = genesis.notary_keys
        return frozenset(key for key, sig in self.notary_sigs
                         if key in committee and notary_sig_valid(self.entry, key, sig))

    def merged(self, sigs: Iterable[tuple[bytes, bytes]]) -> Certificate:
        """This certificate with ``sigs`` added: one per key (first kept), sorted by key."""
        by_key: dict[bytes, bytes] = {}
        for key, sig in (*self.notary_sigs, *sigs):
            by_key.setdefault(key, sig)
        return Certificate(self.entry, self.owner_sig, tuple(sorted(by_key.items())))

    def to_wire(self) -> dict[str, Any]:
        return {"entry": self.entry.to_wire(), "owner_sig": self.owner_sig,
                "notaries": [[k, s] for k, s in self.notary_sigs]}

    @classmethod
    def from_wire(cls, doc: Any) -> Certificate:
        doc = check_map(doc, "certificate", CERT_FIELDS)
        notaries = doc["notaries"]
        if not isinstance(notaries, list | tuple) or len(notaries) > MAX_NOTARY_SIGS:
            raise LedgerError(f"notaries must be a list of at most {MAX_NOTARY_SIGS}",
                              "notaries")
        pairs: list[tuple[bytes, bytes]] = []
        for pair in notaries:
            if not isinstance(pair, list | tuple) or len(pair) != 2:
                raise LedgerError("notary signature must be a [key, sig] pair", "notaries")
            pairs.append((pair[0], pair[1]))
        return cls(Entry.from_wire(doc["entry"]), doc["owner_sig"], tuple(pairs))


def verify_certificate(cert: Certificate, genesis: Genesis) -> None:
    """Raise :class:`LedgerError` unless ``cert`` is valid under ``genesis`` (offline)."""
    if not verify(cert.entry.owner, auth_message(cert.entry.owner, cert.entry.seq,
                                                 cert.entry.hash()), cert.owner_sig):
        raise LedgerError("certificate has a bad owner signature",
                          {"owner": cert.entry.owner, "seq": cert.entry.seq})
    signers = cert.valid_signers(genesis)
    if len(signers) < genesis.quorum:
        raise LedgerError("certificate lacks a notary quorum",
                          {"valid": len(signers), "quorum": genesis.quorum})


def is_valid(cert: Certificate, genesis: Genesis) -> bool:
    try:
        verify_certificate(cert, genesis)
    except LedgerError:
        return False
    return True
