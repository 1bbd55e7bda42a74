"""Durable chains on sqlite (WAL, synchronous=FULL via :func:`files.open_db`).

One store holds the chains of any number of owners; a wallet keeps its own.
Each entry is stored with its owner's signature the moment it is appended
(committed before the caller sends anything that depends on it) and later gets
its notary signatures attached. The uncertified (*pending*) entries of a chain
are a suffix of it: a wallet may append several and have them certified in one
batch, in order.

The rows are compact (:mod:`p2pmarket.ledger.storeformat`: the schema and the
row encoding); ``chain_owner`` also keeps the head and the certified and total
balances, so the hot path never scans a chain. Every entry read back is rebuilt
and its hash checked against the stored one.

Notary signatures are kept only where still needed (``notary_sigs``: NULL while
pending, an empty blob once certified and pruned): the certified head, every
CHECKPOINT and every entry whose seq is a multiple of :data:`KEEP_EVERY`, so a
catch-up batch of at most that many entries always ends on an entry with its
certificate (whose quorum covers the entries before it). A pruned certificate
is recovered from the notaries (:meth:`p2pmarket.ledger.wallet.Wallet.certificate`).

``chain_recv`` indexes received SENDs by ``(payer's party id, seq)``;
``chain_receipt`` holds the SEND certificate of each pending RECV (needed to
certify it, also after a crash) and drops it once the RECV is certified.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from p2pmarket.core.files import open_db
from p2pmarket.ledger.certificate import Certificate
from p2pmarket.ledger.chain import (
    CHECKPOINT,
    RECV,
    ZERO_HASH,
    Authenticator,
    Entry,
    check_link,
)
from p2pmarket.ledger.errors import LedgerError
from p2pmarket.ledger.storeformat import (
    KIND_CODES,
    PRUNED,
    SCHEMA,
    RowCodec,
    check_format,
)

KEEP_EVERY = 64  # entries whose seq is a multiple of this keep their notary signatures


class ChainStore:
    """Chains of several owners in one sqlite file."""

    def __init__(self, path: Path | str) -> None:
        self.path = path
        self.conn: sqlite3.Connection = open_db(path)
        self._depth = 0
        self._oids: dict[bytes, int] = {}
        self.rows = RowCodec(self.conn)
        check_format(self.conn)
        with self.transaction() as conn:
            conn.executescript(SCHEMA)

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic, durable transaction; nested uses join the outer one."""
        if self._depth:
            self._depth += 1
            try:
                yield self.conn
            finally:
                self._depth -= 1
            return
        self._depth = 1
        try:
            with self.conn:
                yield self.conn
        except BaseException:
            self._oids.clear()  # ids made in the rolled-back transaction are gone
            self.rows.clear()
            raise
        finally:
            self._depth = 0

    # -- writing ---------------------------------------------------------------

    def append(self, entry: Entry, owner_sig: bytes, check_sig: bool = True) -> bool:
        """Durably append ``entry`` with its owner's signature.

        Returns False (and changes nothing) if this very entry is already stored.
        Raises :class:`LedgerError` for a bad signature, a broken link, or a
        different entry at the same seq (value: the stored authenticator, which
        with ``owner_sig`` proves the owner equivocated).
        """
        return self.append_many([(entry, owner_sig)], check_sig) == 1

    def append_many(self, items: Sequence[tuple[Entry, bytes]], check_sig: bool = True,
                    receipts: Mapping[int, bytes] | None = None) -> int:
        """Append consecutive entries in one durable transaction; all or nothing.

        ``check_sig=False`` skips verifying owner signatures the caller just made.
        ``receipts`` maps the seq of a RECV to its SEND certificate (encoded), kept
        until the RECV is certified. Returns how many were new (already stored
        identical ones are skipped).
        """
        added = 0
        with self.transaction() as conn:
            for entry, owner_sig in items:
                auth = Authenticator.of(entry, owner_sig)
                if check_sig:
                    auth.check()
                oid, head_seq, head_hash = self._head_row(entry.owner, create=True)
                if entry.seq <= head_seq:
                    stored = self.authenticator(entry.owner, entry.seq)
                    assert stored is not None
                    if stored.hash == entry.hash():
                        continue
                    raise LedgerError("a different entry is stored at this seq",
                                      {"authenticator": stored.to_wire()})
                check_link(entry, head_seq, head_hash)
                conn.execute(
                    "INSERT INTO chain_entry (oid, seq, hash, kind, ts, body, owner_sig, "
                    "notary_sigs) VALUES (?, ?, ?, ?, ?, ?, ?, NULL)",
                    (oid, entry.seq, entry.hash(), KIND_CODES[entry.kind], entry.ts,
                     self.rows.pack_body(entry), owner_sig))
                conn.execute("UPDATE chain_owner SET head_seq = ?, head_hash = ?, "
                             "total = total + ? WHERE id = ?",
                             (entry.seq, entry.hash(), entry.delta, oid))
                if entry.receipt is not None:
                    payer, seq = entry.receipt
                    conn.execute("INSERT INTO chain_recv (oid, payer, seq) VALUES (?, ?, ?)",
                                 (oid, self.rows.party_id(payer), seq))
                    receipt = None if receipts is None else receipts.get(entry.seq)
                    if receipt is not None:
                        conn.execute("INSERT INTO chain_receipt (oid, seq, cert) "
                                     "VALUES (?, ?, ?)", (oid, entry.seq, receipt))
                added += 1
        return added

    def attach(self, cert: Certificate) -> None:
        """Store ``cert``'s notary signatures with its (already appended) entry.

        Signatures merge with any stored before (one per notary key). The caller
        checks the certificate's validity; this only checks it is for the stored entry.
        Then the signatures no longer needed are dropped (see the module doc).
        """
        self.attach_many([cert])

    def attach_many(self, certs: Sequence[Certificate]) -> None:
        lowest: dict[int, int] = {}  # oid -> lowest seq attached
        last: dict[bytes, int] = {}  # owner -> highest seq attached (the new head, usually)
        for cert in certs:
            last[cert.entry.owner] = max(last.get(cert.entry.owner, -1), cert.entry.seq)
        with self.transaction() as conn:
            for cert in certs:
                entry = cert.entry
                oid = self._oid(entry.owner)
                row = None if oid is None else conn.execute(
                    "SELECT hash, notary_sigs FROM chain_entry WHERE oid = ? AND seq = ?",
                    (oid, entry.seq)).fetchone()
                if oid is None or row is None or bytes(row[0]) != entry.hash():
                    raise LedgerError("certificate is for an entry this store does not hold",
                                      {"owner": entry.owner, "seq": entry.seq})
                if entry.seq == last[entry.owner] or _kept(entry.seq, entry.kind):
                    by_key = dict(self.rows.sigs(row[1]) or ())  # one per notary key, first kept
                    for key, sig in cert.notary_sigs:
                        by_key.setdefault(key, sig)
                    sigs = self.rows.pack_sigs(sorted(by_key.items()))
                else:  # pruned at once: writing them first would leave half-empty pages
                    sigs = PRUNED
                conn.execute("UPDATE chain_entry SET notary_sigs = ? WHERE oid = ? AND seq = ?",
                             (sigs, oid, entry.seq))
                if row[1] is None:
                    conn.execute("UPDATE chain_owner SET balance = balance + ? WHERE id = ?",
                                 (entry.delta, oid))
                    if entry.kind == RECV:
                        conn.execute("DELETE FROM chain_receipt WHERE oid = ? AND seq = ?",
                                     (oid, entry.seq))
                lowest[oid] = min(lowest.get(oid, entry.seq), entry.seq)
            for oid, low in lowest.items():
                self._prune(conn, oid, low)

    def _prune(self, conn: sqlite3.Connection, oid: int, low: int) -> None:
        """Drop the notary signatures of certified entries from ``low - 1`` up to (not
        including) the certified head, except CHECKPOINTs and every KEEP_EVERY-th."""
        row = conn.execute("SELECT MIN(seq) FROM chain_entry WHERE oid = ? "
                           "AND notary_sigs IS NULL", (oid,)).fetchone()
        if row is None or row[0] is None:
            row = conn.execute("SELECT head_seq + 1 FROM chain_owner WHERE id = ?",
                               (oid,)).fetchone()
        conn.execute(
            "UPDATE chain_entry SET notary_sigs = ? WHERE oid = ? AND seq >= ? AND seq < ? "
            "AND length(notary_sigs) > 0 AND seq % ? != 0 AND kind != ?",
            (PRUNED, oid, low - 1, int(row[0]) - 1, KEEP_EVERY, KIND_CODES[CHECKPOINT]))

    # -- reading ---------------------------------------------------------------

    def head(self, owner: bytes) -> Entry | None:
        """The chain's last entry, certified or not."""
        seq = self.head_seq(owner)
        return None if seq < 0 else self.entry(owner, seq)

    def head_seq(self, owner: bytes) -> int:
        """The seq of the chain's last entry, -1 for an empty chain."""
        return self._head_row(owner)[1]

    def entry(self, owner: bytes, seq: int) -> Entry | None:
        got = self.segment(owner, seq, seq)
        return got[0][0] if got else None

    def authenticator(self, owner: bytes, seq: int) -> Authenticator | None:
        oid = self._oid(owner)
        row = None if oid is None else self.conn.execute(
            "SELECT hash, owner_sig FROM chain_entry WHERE oid = ? AND seq = ?",
            (oid, seq)).fetchone()
        return None if row is None else Authenticator(owner, seq, bytes(row[0]), bytes(row[1]))

    def certificate(self, owner: bytes, seq: int) -> Certificate | None:
        """The entry at ``seq`` with all notary signatures stored: None if it is
        uncertified or its signatures were pruned (:meth:`certified` tells which)."""
        got = self.segment(owner, seq, seq)
        if not got:
            return None
        entry, sig, sigs = got[0]
        return Certificate(entry, sig, sigs) if sigs else None

    def certified(self, owner: bytes, seq: int) -> bool:
        """Whether the entry at ``seq`` is stored and certified (signatures kept or not)."""
        oid = self._oid(owner)
        row = None if oid is None else self.conn.execute(
            "SELECT notary_sigs IS NOT NULL FROM chain_entry WHERE oid = ? AND seq = ?",
            (oid, seq)).fetchone()
        return row is not None and bool(row[0])

    def receipts(self, owner: bytes, first: int, last: int) -> dict[int, bytes]:
        """The SEND certificates (encoded) of the pending RECVs in ``first..last``, by seq."""
        oid = self._oid(owner)
        if oid is None:
            return {}
        rows = self.conn.execute("SELECT seq, cert FROM chain_receipt WHERE oid = ? AND "
                                 "seq >= ? AND seq <= ?", (oid, first, last)).fetchall()
        return {int(r[0]): bytes(r[1]) for r in rows}

    def pending(self, owner: bytes) -> tuple[Entry, bytes] | None:
        """The first appended but uncertified entry and its owner signature, if any."""
        got = self.pending_entries(owner, limit=1)
        return got[0] if got else None

    def pending_entries(self, owner: bytes, limit: int = -1) -> list[tuple[Entry, bytes]]:
        """The uncertified entries (a suffix of the chain) with their owner signatures."""
        oid = self._oid(owner)
        if oid is None:
            return []
        row = self.conn.execute(
            "SELECT MIN(seq) FROM chain_entry WHERE oid = ? AND notary_sigs IS NULL",
            (oid,)).fetchone()
        if row is None or row[0] is None:
            return []
        first = int(row[0])
        last = self.head_seq(owner) if limit < 0 else first + limit - 1
        return [(e, s) for e, s, _ in self.segment(owner, first, last)]

    def segment(self, owner: bytes, first: int, last: int
                ) -> list[tuple[Entry, bytes, tuple[tuple[bytes, bytes], ...] | None]]:
        """Entries ``first..last`` (those stored): entry, owner signature, notary
        signatures (None while pending, empty once pruned)."""
        oid = self._oid(owner)
        if oid is None or last < first:
            return []
        rows = self.conn.execute(
            "SELECT seq, hash, kind, ts, body, owner_sig, notary_sigs FROM chain_entry "
            "WHERE oid = ? AND seq >= ? AND seq <= ? ORDER BY seq",
            (oid, max(0, first - 1), last)).fetchall()
        out = []
        prev = ZERO_HASH
        for row in rows:
            seq = int(row[0])
            if seq < first:
                prev = bytes(row[1])
                continue
            entry = self.rows.rebuild(owner, prev, row)
            out.append((entry, bytes(row[5]), self.rows.sigs(row[6])))
            prev = entry.hash()
        return out

    def entries(self, owner: bytes) -> list[Entry]:
        return [e for e, _, _ in self.segment(owner, 0, self.head_seq(owner))]

    def authenticators(self, owner: bytes) -> list[Authenticator]:
        oid = self._oid(owner)
        if oid is None:
            return []
        rows = self.conn.execute(
            "SELECT seq, hash, owner_sig FROM chain_entry WHERE oid = ? ORDER BY seq",
            (oid,)).fetchall()
        return [Authenticator(owner, int(r[0]), bytes(r[1]), bytes(r[2])) for r in rows]

    def owners(self) -> list[bytes]:
        rows = self.conn.execute("SELECT key FROM chain_owner WHERE head_seq >= 0 ORDER BY key")
        return [bytes(r[0]) for r in rows]

    def balance(self, owner: bytes, include_pending: bool = False) -> int:
        """Replay of the chain's certified entries (and the pending ones if asked)."""
        row = self.conn.execute("SELECT balance, total FROM chain_owner WHERE key = ?",
                                (owner,)).fetchone()
        if row is None:
            return 0
        return int(row[1] if include_pending else row[0])

    def has_received(self, owner: bytes, payer: bytes, seq: int) -> bool:
        """Whether ``owner``'s chain holds a RECV (pending or certified) of SEND (payer, seq)."""
        oid = self._oid(owner)
        pid = self.rows.party_id(payer, create=False)
        return oid is not None and pid is not None and self.conn.execute(
            "SELECT 1 FROM chain_recv WHERE oid = ? AND payer = ? AND seq = ?",
            (oid, pid, seq)).fetchone() is not None

    def last_checkpoint(self, owner: bytes) -> Certificate | None:
        """The certificate of the chain's latest certified CHECKPOINT, if any."""
        oid = self._oid(owner)
        row = None if oid is None else self.conn.execute(
            "SELECT MAX(seq) FROM chain_entry WHERE oid = ? AND kind = ? "
            "AND notary_sigs IS NOT NULL", (oid, KIND_CODES[CHECKPOINT])).fetchone()
        if row is None or row[0] is None:
            return None
        return self.certificate(owner, int(row[0]))

    def history(self, owner: bytes) -> list[dict[str, Any]]:
        """One JSON-friendly map per entry (keys and hashes as hex).

        ``seq, kind, ts, hash, amount, delta, balance`` (after the entry),
        ``counterparty`` (payee of a SEND, payer of a RECV, else None), ``memo``,
        ``certified``; a RECV adds ``send_seq``.
        """
        out: list[dict[str, Any]] = []
        balance = 0
        for entry, _, sigs in self.segment(owner, 0, self.head_seq(owner)):
            balance += entry.delta
            party = entry.counterparty
            item: dict[str, Any] = {
                "seq": entry.seq, "kind": entry.kind, "ts": entry.ts,
                "hash": entry.hash().hex(), "amount": entry.amount, "delta": entry.delta,
                "balance": balance, "counterparty": None if party is None else party.hex(),
                "memo": entry.body.get("memo", ""), "certified": sigs is not None}
            if entry.kind == RECV:
                item["send_seq"] = entry.body["seq"]
            out.append(item)
        return out

    def stats(self) -> dict[str, int]:
        """``entries`` stored and ``bytes`` used by the database (pages in use, and the
        files on disk including the WAL)."""
        conn = self.conn
        entries = int(conn.execute("SELECT COUNT(*) FROM chain_entry").fetchone()[0])
        pages = int(conn.execute("PRAGMA page_count").fetchone()[0])
        free = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
        size = int(conn.execute("PRAGMA page_size").fetchone()[0])
        return {"entries": entries, "bytes": (pages - free) * size,
                "file_bytes": _file_bytes(self.path)}

    # -- internals -------------------------------------------------------------

    def _oid(self, owner: bytes) -> int | None:
        oid = self._oids.get(owner)
        if oid is None:
            row = self.conn.execute("SELECT id FROM chain_owner WHERE key = ?",
                                    (owner,)).fetchone()
            if row is None:
                return None
            oid = self._oids[owner] = int(row[0])
        return oid

    def _head_row(self, owner: bytes, create: bool = False) -> tuple[int, int, bytes]:
        row = self.conn.execute("SELECT id, head_seq, head_hash FROM chain_owner WHERE key = ?",
                                (owner,)).fetchone()
        if row is None:
            if not create:
                return -1, -1, ZERO_HASH
            cur = self.conn.execute(
                "INSERT INTO chain_owner (key, head_seq, head_hash, balance, total) "
                "VALUES (?, -1, ?, 0, 0)", (owner, ZERO_HASH))
            assert cur.lastrowid is not None
            return int(cur.lastrowid), -1, ZERO_HASH
        return int(row[0]), int(row[1]), bytes(row[2])


def _kept(seq: int, kind: str) -> bool:
    """Whether a certified entry keeps its notary signatures even when not the head."""
    return seq % KEEP_EVERY == 0 or kind == CHECKPOINT


def _file_bytes(path: Path | str) -> int:
    total = 0
    for suffix in ("", "-wal"):
        with suppress(OSError):
            total += os.path.getsize(f"{path}{suffix}")
    return total
