"""Audit log entries (pure): their format, canonical encoding, signing and checks.

An entry is ``{seq, prev, kind, body, ts}``: ``prev`` is the hash of entry
``seq - 1`` (all zeros for seq 0), the entry's hash is SHA-256 of its canonical
msgpack, and the host signs ``auth_message(host key, seq, hash)`` in the signature
domain ``audit.entry`` (:data:`p2pmarket.core.domains.AUDIT_ENTRY`): an
:class:`AuditAuthenticator`. It has the form of a payment chain's authenticator
(:class:`p2pmarket.ledger.chain.Authenticator`) but not its domain, so the host's
ledger signatures, made with the same key, never pass for audit log ones (issue 10:
a buyer holding a refund's ledger entry at seq s framed the host with it). Two
different hashes signed for one seq in this domain are a proof of inconsistency
(:func:`conflicting`); :func:`verify_segment` checks a contiguous run. Refusals are
:class:`~p2pmarket.audit.errors.AuditError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import msgpack

from p2pmarket.audit.errors import AuditError
from p2pmarket.core.domains import AUDIT_ENTRY, Domain
from p2pmarket.core.identity import Identity
from p2pmarket.core.wire import digest, pack
from p2pmarket.ledger.chain import HASH_SIZE, ZERO_HASH, LogAuthenticator, auth_message
from p2pmarket.ledger.errors import LedgerError, check_bytes, check_int, check_map, check_str

MAX_KIND = 64
MAX_TS = 2**63 - 1
MAX_SEQ = 2**62
# the most an entry's canonical bytes may be: a host never logs a longer one and a
# witness takes none (a host.audit_log reply always has room for one)
MAX_ENTRY_BYTES = 1 << 20
ENTRY_FIELDS = frozenset({"seq", "prev", "kind", "body", "ts"})


@dataclass(frozen=True)
class AuditAuthenticator(LogAuthenticator):
    """The host's signature of ``(host key, seq, hash)`` of an entry of its audit log."""

    DOMAIN: ClassVar[Domain] = AUDIT_ENTRY


@dataclass(frozen=True)
class AuditEntry:
    seq: int
    prev: bytes
    kind: str
    body: Any
    ts: int

    def __post_init__(self) -> None:
        try:
            check_int(self.seq, "seq", 0, MAX_SEQ)
            check_bytes(self.prev, "prev", HASH_SIZE)
            check_str(self.kind, "kind", MAX_KIND)
            check_int(self.ts, "ts", 0, MAX_TS)
        except LedgerError as exc:
            raise AuditError(exc.message, exc.value) from None
        if self.seq == 0 and self.prev != ZERO_HASH:
            raise AuditError("the entry at seq 0 must have an all-zero prev", "prev")

    def to_wire(self) -> dict[str, Any]:
        return {"seq": self.seq, "prev": self.prev, "kind": self.kind, "body": self.body,
                "ts": self.ts}

    def encode(self) -> bytes:
        return pack(self.to_wire())

    def hash(self) -> bytes:
        return digest(self.encode())

    @classmethod
    def from_wire(cls, doc: Any) -> AuditEntry:
        try:
            doc = check_map(doc, "audit entry", ENTRY_FIELDS)
        except LedgerError as exc:
            raise AuditError(exc.message, exc.value) from None
        return cls(doc["seq"], doc["prev"], doc["kind"], doc["body"], doc["ts"])


def _k(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]


# canonical key order (by encoded key): "ts" < "seq" < "body" < "kind" < "prev"
_HEAD, _K_SEQ, _K_BODY, _K_KIND, _K_PREV = (b"\x85" + _k("ts"), _k("seq"), _k("body"),
                                            _k("kind"), _k("prev"))


def encode_entry(seq: int, prev: bytes, kind: str, body_bytes: bytes, ts: int) -> bytes:
    """The canonical encoding of an entry whose body is already canonically packed: the
    bytes of ``AuditEntry(...).encode()`` without re-encoding the body."""
    return (_HEAD + _k(ts) + _K_SEQ + _k(seq) + _K_BODY + body_bytes
            + _K_KIND + _k(kind) + _K_PREV + _k(prev))


def sign_entry(identity: Identity, entry: AuditEntry) -> AuditAuthenticator:
    h = entry.hash()
    return AuditAuthenticator(identity.public_key, entry.seq, h, identity.sign(
        AUDIT_ENTRY, auth_message(identity.public_key, entry.seq, h)))


def verify_segment(entries: Sequence[AuditEntry], auths: Sequence[AuditAuthenticator],
                   host_key: bytes, prev_hash: bytes | None = None) -> bytes:
    """Check a contiguous run of entries: links, hashes and the host's signatures.

    ``prev_hash`` is the hash of the entry before the first (None: the run must start
    at seq 0). Returns the hash of the last entry. Pure.
    """
    if len(entries) != len(auths):
        raise AuditError("need one authenticator per audit entry",
                          {"entries": len(entries), "auths": len(auths)})
    head = ZERO_HASH if prev_hash is None else prev_hash
    if entries and prev_hash is None and entries[0].seq != 0:
        raise AuditError("audit segment does not start at seq 0", entries[0].seq)
    for k, (entry, auth) in enumerate(zip(entries, auths, strict=True)):
        if k and entry.seq != entries[k - 1].seq + 1:
            raise AuditError("audit entries are not consecutive", entry.seq)
        if entry.prev != head:
            raise AuditError("audit entry does not link to the previous one", entry.seq)
        if auth.owner != host_key or auth.seq != entry.seq or auth.hash != entry.hash():
            raise AuditError("authenticator does not match the audit entry", entry.seq)
        try:
            auth.check()
        except LedgerError as exc:
            raise AuditError(exc.message, exc.value) from None
        head = entry.hash()
    return head


def conflicting(a: AuditAuthenticator, b: AuditAuthenticator) -> bool:
    """Two valid audit log authenticators of one host for one seq with different
    hashes: a proof that the host keeps two logs."""
    return (type(a) is AuditAuthenticator and type(b) is AuditAuthenticator
            and a.owner == b.owner and a.seq == b.seq and a.hash != b.hash
            and a.verify() and b.verify())
