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
after the entry is durable.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from p2pmarket.audit.entry import AuditAuthenticator, AuditEntry, encode_entry, sign_entry
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
            "ORDER BY seq LIMIT ?", (since, max(0, limit))).fetchall()
        out = []
        for seq, prev, kind, body, ts, h, sig in rows:
            entry = AuditEntry(int(seq), bytes(prev), str(kind), unpack(bytes(body)), int(ts))
            out.append((entry, AuditAuthenticator(self.identity.public_key, int(seq),
                                                  bytes(h), bytes(sig))))
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

    def authenticator(self, seq: int) -> AuditAuthenticator | None:
        row = self.conn.execute("SELECT hash, sig FROM audit WHERE seq = ?",
                                (seq,)).fetchone()
        if row is None:
            return None
        return AuditAuthenticator(self.identity.public_key, seq, bytes(row[0]), bytes(row[1]))

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


__all__ = ["AuditLog"]
