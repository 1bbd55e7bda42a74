"""The host's audit log (DESIGN.md section 5): PeerReview-style, tamper-evident.

Every input to the auctioneer (RPC arguments, ticks with their time, settings)
and every output (results, allocations, charges, leases, refunds) is appended as
an entry ``{seq, prev, kind, body, ts}``: ``prev`` is the hash of entry
``seq - 1`` (all zeros for seq 0), the entry's hash is SHA-256 of its canonical
msgpack, and the host signs ``auth_message(host key, seq, hash)`` -- the same
*authenticator* as on payment chains (:class:`p2pmarket.ledger.chain.Authenticator`).
A reply that carries an authenticator commits the host to the whole log up to
that entry: two different hashes signed for one seq are a proof of
inconsistency, checked with :func:`verify_segment`.

Storage: sqlite (WAL, synchronous=FULL); :meth:`AuditLog.append` returns only
after the entry is durable.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack

from p2pmarket.core.files import open_db
from p2pmarket.core.identity import Identity
from p2pmarket.core.wire import WireError, digest, pack, unpack
from p2pmarket.ledger.chain import HASH_SIZE, ZERO_HASH, Authenticator
from p2pmarket.ledger.errors import LedgerError, check_bytes, check_int, check_map, check_str

MAX_KIND = 64
MAX_TS = 2**63 - 1
ENTRY_FIELDS = frozenset({"seq", "prev", "kind", "body", "ts"})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY,
    prev BLOB NOT NULL,
    kind TEXT NOT NULL,
    body BLOB NOT NULL,
    ts INTEGER NOT NULL,
    hash BLOB NOT NULL,
    sig BLOB NOT NULL
);
"""


@dataclass(frozen=True)
class AuditEntry:
    seq: int
    prev: bytes
    kind: str
    body: Any
    ts: int

    def __post_init__(self) -> None:
        check_int(self.seq, "seq", 0, 2**62)
        check_bytes(self.prev, "prev", HASH_SIZE)
        check_str(self.kind, "kind", MAX_KIND)
        check_int(self.ts, "ts", 0, MAX_TS)
        if self.seq == 0 and self.prev != ZERO_HASH:
            raise LedgerError("the entry at seq 0 must have an all-zero prev", "prev")

    def to_wire(self) -> dict[str, Any]:
        return {"seq": self.seq, "prev": self.prev, "kind": self.kind, "body": self.body,
                "ts": self.ts}

    def encode(self) -> bytes:
        return pack(self.to_wire())

    def hash(self) -> bytes:
        return digest(self.encode())

    @classmethod
    def from_wire(cls, doc: Any) -> AuditEntry:
        doc = check_map(doc, "audit entry", ENTRY_FIELDS)
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


def sign_entry(identity: Identity, entry: AuditEntry) -> Authenticator:
    from p2pmarket.ledger.chain import auth_message

    h = entry.hash()
    return Authenticator(identity.public_key, entry.seq, h,
                         identity.sign(auth_message(identity.public_key, entry.seq, h)))


def verify_segment(entries: Sequence[AuditEntry], auths: Sequence[Authenticator],
                   host_key: bytes, prev_hash: bytes | None = None) -> bytes:
    """Check a contiguous run of entries: links, hashes and the host's signatures.

    ``prev_hash`` is the hash of the entry before the first (None: the run must start
    at seq 0). Returns the hash of the last entry. Pure.
    """
    if len(entries) != len(auths):
        raise LedgerError("need one authenticator per audit entry",
                          {"entries": len(entries), "auths": len(auths)})
    head = ZERO_HASH if prev_hash is None else prev_hash
    if entries and prev_hash is None and entries[0].seq != 0:
        raise LedgerError("audit segment does not start at seq 0", entries[0].seq)
    for k, (entry, auth) in enumerate(zip(entries, auths, strict=True)):
        if k and entry.seq != entries[k - 1].seq + 1:
            raise LedgerError("audit entries are not consecutive", entry.seq)
        if entry.prev != head:
            raise LedgerError("audit entry does not link to the previous one", entry.seq)
        if auth.owner != host_key or auth.seq != entry.seq or auth.hash != entry.hash():
            raise LedgerError("authenticator does not match the audit entry", entry.seq)
        auth.check()
        head = entry.hash()
    return head


def conflicting(a: Authenticator, b: Authenticator) -> bool:
    """Two valid authenticators of one host for one seq with different hashes: a proof
    that the host keeps two logs."""
    return (a.owner == b.owner and a.seq == b.seq and a.hash != b.hash
            and a.verify() and b.verify())


class AuditLog:
    """One host's audit log in sqlite."""

    def __init__(self, path: Path | str, identity: Identity) -> None:
        self.identity = identity
        self.conn = open_db(path)
        with self.conn:
            self.conn.executescript(_SCHEMA)
        row = self.conn.execute(
            "SELECT seq, hash, ts FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        self._head: tuple[int, bytes] = (-1, ZERO_HASH) if row is None else \
            (int(row[0]), bytes(row[1]))
        self._last_ts = 0 if row is None else int(row[2])

    def close(self) -> None:
        self.conn.close()

    @property
    def head(self) -> tuple[int, bytes]:
        """``(seq, hash)`` of the last entry; ``(-1, zeros)`` when empty."""
        return self._head

    @property
    def last_ts(self) -> int:
        """The timestamp of the last entry (0 when empty): the next one's must not be
        smaller (witnesses check that timestamps never decrease)."""
        return self._last_ts

    def append(self, kind: str, body: Any, ts: int) -> Authenticator:
        """Append one entry durably and return its authenticator."""
        return self.append_many([(kind, body, ts)])[-1]

    def append_many(self, items: Iterable[tuple[str, Any, int]]) -> list[Authenticator]:
        """Append several entries in one durable transaction."""
        seq, prev = self._head
        rows: list[tuple[int, bytes, str, bytes, int, bytes, bytes]] = []
        auths: list[Authenticator] = []
        for kind, body, ts in items:
            try:
                entry = AuditEntry(seq + 1, prev, kind, unpack(pack(body)), ts)
                data = pack(entry.body)
            except WireError as exc:
                raise LedgerError("audit entry body cannot be encoded", exc.value) from None
            auth = sign_entry(self.identity, entry)
            rows.append((entry.seq, entry.prev, kind, data, ts, auth.hash, auth.sig))
            auths.append(auth)
            seq, prev = entry.seq, auth.hash
        if rows:
            with self.conn:
                self.conn.executemany(
                    "INSERT INTO audit (seq, prev, kind, body, ts, hash, sig) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
            self._head = (seq, prev)
            self._last_ts = rows[-1][4]
        return auths

    def entries(self, since: int = 0, limit: int = 1000
                ) -> list[tuple[AuditEntry, Authenticator]]:
        """Entries with ``seq >= since``, oldest first, at most ``limit``."""
        rows = self.conn.execute(
            "SELECT seq, prev, kind, body, ts, hash, sig FROM audit WHERE seq >= ? "
            "ORDER BY seq LIMIT ?", (since, max(0, limit))).fetchall()
        out = []
        for seq, prev, kind, body, ts, h, sig in rows:
            entry = AuditEntry(int(seq), bytes(prev), str(kind), unpack(bytes(body)), int(ts))
            out.append((entry, Authenticator(self.identity.public_key, int(seq), bytes(h),
                                             bytes(sig))))
        return out

    def raw(self, since: int = 0, limit: int = 1000
            ) -> list[tuple[int, bytes, bytes, bytes]]:
        """``(seq, canonical entry bytes, hash, sig)`` from ``since``, oldest first: what
        a witness fetches (it hashes the bytes itself; no re-encoding needed)."""
        rows = self.conn.execute(
            "SELECT seq, prev, kind, body, ts, hash, sig FROM audit WHERE seq >= ? "
            "ORDER BY seq LIMIT ?", (since, max(0, limit))).fetchall()
        return [(int(seq), encode_entry(int(seq), bytes(prev), str(kind), bytes(body),
                                        int(ts)), bytes(h), bytes(sig))
                for seq, prev, kind, body, ts, h, sig in rows]

    def authenticator(self, seq: int) -> Authenticator | None:
        row = self.conn.execute("SELECT hash, sig FROM audit WHERE seq = ?",
                                (seq,)).fetchone()
        if row is None:
            return None
        return Authenticator(self.identity.public_key, seq, bytes(row[0]), bytes(row[1]))

    def segment(self, since: int = 0, limit: int = 1000) -> dict[str, Any]:
        """Wire form for a witness: ``{entries: [...], auths: [...], prev: hash | None}``."""
        got = self.entries(since, limit)
        prev = None
        if since > 0:
            row = self.conn.execute("SELECT hash FROM audit WHERE seq = ?",
                                    (since - 1,)).fetchone()
            prev = None if row is None else bytes(row[0])
        return {"entries": [e.to_wire() for e, _ in got],
                "auths": [a.to_wire() for _, a in got], "prev": prev}


__all__ = ["AuditEntry", "AuditLog", "conflicting", "encode_entry", "sign_entry",
           "verify_segment"]
