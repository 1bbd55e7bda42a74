"""The host's audit log (docs/design.md section 5): PeerReview-style, tamper-evident.

Every input to the auctioneer (RPC arguments, ticks with their time, settings)
and every output (results, allocations, charges, leases, refunds) is appended as
an entry ``{seq, prev, kind, body, ts}``: ``prev`` is the hash of entry
``seq - 1`` (all zeros for seq 0), the entry's hash is SHA-256 of its canonical
msgpack, and the host signs it with an *authenticator* (:mod:`p2pmarket.audit.entry`).
A reply that carries an authenticator commits the host to the whole log up to
that entry: two different hashes signed for one seq are a proof of
inconsistency, checked with :func:`p2pmarket.audit.entry.verify_segment`.

Storage: sqlite (WAL, synchronous=FULL); :meth:`AuditLog.append` returns only
after the entry is durable. An entry longer than
:data:`~p2pmarket.audit.entry.MAX_ENTRY_BYTES` encoded is refused (no witness would
take it). Reads for the wire are bounded in bytes as well as in entries:
:meth:`AuditLog.raw` given ``max_bytes`` (:meth:`AuditLog.segment` and the host's
``audit_log`` RPC give :data:`SEGMENT_BYTES`) stops before the entry that would take
a segment past it, but always gives the first one, so a reader paging through the
log always makes progress.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from p2pmarket.audit.entry import (
    MAX_ENTRY_BYTES,
    MAX_SEQ,
    AuditAuthenticator,
    AuditEntry,
    encode_entry,
    sign_entry,
)
from p2pmarket.audit.errors import AuditError
from p2pmarket.core.files import open_db, require_format
from p2pmarket.core.identity import Identity
from p2pmarket.core.wire import WireError, pack, unpack
from p2pmarket.ledger.chain import ZERO_HASH

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
STORE_FORMAT = 2
"""The audit log store's format: 2 since signatures have domains (docs/design.md §2)."""

SEGMENT_BYTES = 1 << 20   # entry bytes in one segment read, unless the first is longer
_SQL_MAX = 2**63 - 1


def _range(since: int, limit: int) -> tuple[int, int]:
    """``since`` and ``limit`` clamped to what sqlite takes (no OverflowError)."""
    return max(0, min(since, MAX_SEQ + 1)), max(0, min(limit, _SQL_MAX))


class AuditLog:
    """One host's audit log in sqlite."""

    def __init__(self, path: Path | str, identity: Identity) -> None:
        self.identity = identity
        self.conn = open_db(path)
        require_format(self.conn, "audit log", STORE_FORMAT, ("audit",),
                       "signatures have domains")
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

    def append(self, kind: str, body: Any, ts: int) -> AuditAuthenticator:
        """Append one entry durably and return its authenticator."""
        return self.append_many([(kind, body, ts)])[-1]

    def append_many(self, items: Iterable[tuple[str, Any, int]]) -> list[AuditAuthenticator]:
        """Append several entries in one durable transaction."""
        seq, prev = self._head
        rows: list[tuple[int, bytes, str, bytes, int, bytes, bytes]] = []
        auths: list[AuditAuthenticator] = []
        for kind, body, ts in items:
            try:
                entry = AuditEntry(seq + 1, prev, kind, unpack(pack(body)), ts)
                data = pack(entry.body)
            except WireError as exc:
                raise AuditError("audit entry body cannot be encoded", exc.value) from None
            size = len(encode_entry(entry.seq, entry.prev, kind, data, ts))
            if size > MAX_ENTRY_BYTES:
                raise AuditError("audit entry too large", {"kind": kind, "size": size,
                                                           "max": MAX_ENTRY_BYTES})
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
                ) -> list[tuple[AuditEntry, AuditAuthenticator]]:
        """Entries with ``seq >= since``, oldest first, at most ``limit``."""
        rows = self.conn.execute(
            "SELECT seq, prev, kind, body, ts, hash, sig FROM audit WHERE seq >= ? "
            "ORDER BY seq LIMIT ?", _range(since, limit)).fetchall()
        out = []
        for seq, prev, kind, body, ts, h, sig in rows:
            entry = AuditEntry(int(seq), bytes(prev), str(kind), unpack(bytes(body)), int(ts))
            out.append((entry, AuditAuthenticator(self.identity.public_key, int(seq),
                                                  bytes(h), bytes(sig))))
        return out

    def raw(self, since: int = 0, limit: int = 1000, max_bytes: int | None = None
            ) -> list[tuple[int, bytes, bytes, bytes]]:
        """``(seq, canonical entry bytes, hash, sig)`` from ``since``, oldest first: what
        a witness fetches (it hashes the bytes itself; no re-encoding needed). At most
        ``limit`` entries, and, given ``max_bytes`` (a segment for the wire, e.g.
        :data:`SEGMENT_BYTES`), no more than that many entry bytes unless the first
        entry alone is longer (it is given anyway)."""
        cur = self.conn.execute(
            "SELECT seq, prev, kind, body, ts, hash, sig FROM audit WHERE seq >= ? "
            "ORDER BY seq LIMIT ?", _range(since, limit))
        out: list[tuple[int, bytes, bytes, bytes]] = []
        size = 0
        for seq, prev, kind, body, ts, h, sig in cur:
            raw = encode_entry(int(seq), bytes(prev), str(kind), bytes(body), int(ts))
            size += len(raw) + len(sig)
            if out and max_bytes is not None and size > max_bytes:
                break
            out.append((int(seq), raw, bytes(h), bytes(sig)))
        cur.close()
        return out

    def authenticator(self, seq: int) -> AuditAuthenticator | None:
        if not 0 <= seq <= MAX_SEQ:
            return None
        row = self.conn.execute("SELECT hash, sig FROM audit WHERE seq = ?",
                                (seq,)).fetchone()
        if row is None:
            return None
        return AuditAuthenticator(self.identity.public_key, seq, bytes(row[0]), bytes(row[1]))

    def segment(self, since: int = 0, limit: int = 1000, max_bytes: int = SEGMENT_BYTES
                ) -> dict[str, Any]:
        """Wire form for a witness: ``{entries: [...], auths: [...], prev: hash | None}``,
        bounded like :meth:`raw`."""
        since, limit = _range(since, limit)
        n = len(self.raw(since, limit, max_bytes))
        got = self.entries(since, n)
        prev = None
        if since > 0:
            row = self.conn.execute("SELECT hash FROM audit WHERE seq = ?",
                                    (since - 1,)).fetchone()
            prev = None if row is None else bytes(row[0])
        return {"entries": [e.to_wire() for e, _ in got],
                "auths": [a.to_wire() for _, a in got], "prev": prev}


__all__ = ["SEGMENT_BYTES", "AuditLog"]
