"""Durable chains on sqlite (WAL, synchronous=FULL via :func:`files.open_db`).

One store holds the chains of any number of owners: a node keeps its own
chain, a notary keeps every entry it certified. Each entry is stored with its
owner's signature the moment it is appended (committed before the caller sends
anything that depends on it) and later gets its notary signatures attached.
At most one entry per chain is *pending* (appended, not yet certified): the
chain's last one.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from p2pmarket.files import open_db
from p2pmarket.ledger.certificate import Certificate
from p2pmarket.ledger.chain import (
    RECV,
    Authenticator,
    Entry,
    check_link,
    received_key,
)
from p2pmarket.ledger.errors import LedgerError
from p2pmarket.wire import pack, unpack

SCHEMA = """
CREATE TABLE IF NOT EXISTS chain_entries (
    owner BLOB NOT NULL,
    seq INTEGER NOT NULL,
    hash BLOB NOT NULL,
    kind TEXT NOT NULL,
    delta INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    entry BLOB NOT NULL,
    owner_sig BLOB NOT NULL,
    notary_sigs BLOB,
    PRIMARY KEY (owner, seq)
);
CREATE TABLE IF NOT EXISTS chain_received (
    owner BLOB NOT NULL,
    payer BLOB NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (owner, payer, seq)
);
"""


class ChainStore:
    """Chains of several owners in one sqlite file."""

    def __init__(self, path: Path | str) -> None:
        self.path = path
        self.conn: sqlite3.Connection = open_db(path)
        self._depth = 0
        with self.conn:
            self.conn.executescript(SCHEMA)

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
        finally:
            self._depth = 0

    # -- writing ---------------------------------------------------------------

    def append(self, entry: Entry, owner_sig: bytes) -> bool:
        """Durably append ``entry`` with its owner's signature.

        Returns False (and changes nothing) if this very entry is already stored.
        Raises :class:`LedgerError` for a bad signature, a broken link, a pending
        predecessor, or a different entry at the same seq (value: the stored
        authenticator, which with ``owner_sig`` proves the owner equivocated).
        """
        auth = Authenticator.of(entry, owner_sig)
        auth.check()
        stored = self.authenticator(entry.owner, entry.seq)
        if stored is not None:
            if stored.hash == entry.hash():
                return False
            raise LedgerError("a different entry is stored at this seq",
                              {"authenticator": stored.to_wire()})
        row = self.conn.execute(
            "SELECT seq, hash, notary_sigs IS NULL FROM chain_entries WHERE owner = ? "
            "ORDER BY seq DESC LIMIT 1", (entry.owner,)).fetchone()
        head_seq, head_hash = (-1, b"") if row is None else (int(row[0]), bytes(row[1]))
        check_link(entry, head_seq, head_hash)
        if row is not None and row[2]:
            raise LedgerError("the previous entry is not certified yet", head_seq)
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO chain_entries (owner, seq, hash, kind, delta, ts, entry, "
                "owner_sig, notary_sigs) VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL)",
                (entry.owner, entry.seq, entry.hash(), entry.kind, entry.delta, entry.ts,
                 entry.encode(), owner_sig))
            if entry.received is not None:
                payer, seq = received_key(entry.received)
                conn.execute("INSERT INTO chain_received (owner, payer, seq) VALUES (?, ?, ?)",
                             (entry.owner, payer, seq))
        return True

    def attach(self, cert: Certificate) -> None:
        """Store ``cert``'s notary signatures with its (already appended) entry.

        Signatures merge with any stored before (one per notary key). The caller
        checks the certificate's validity; this only checks it is for the stored entry.
        """
        entry = cert.entry
        row = self.conn.execute(
            "SELECT hash, notary_sigs FROM chain_entries WHERE owner = ? AND seq = ?",
            (entry.owner, entry.seq)).fetchone()
        if row is None or bytes(row[0]) != entry.hash():
            raise LedgerError("certificate is for an entry this store does not hold",
                              {"owner": entry.owner, "seq": entry.seq})
        merged = cert.merged(_sigs(row[1]))
        with self.transaction() as conn:
            conn.execute("UPDATE chain_entries SET notary_sigs = ? WHERE owner = ? AND seq = ?",
                         (pack([[k, s] for k, s in merged.notary_sigs]), entry.owner,
                          entry.seq))

    # -- reading ---------------------------------------------------------------

    def head(self, owner: bytes) -> Entry | None:
        """The chain's last entry, certified or not."""
        row = self.conn.execute(
            "SELECT entry FROM chain_entries WHERE owner = ? ORDER BY seq DESC LIMIT 1",
            (owner,)).fetchone()
        return None if row is None else Entry.decode(bytes(row[0]))

    def entry(self, owner: bytes, seq: int) -> Entry | None:
        row = self.conn.execute("SELECT entry FROM chain_entries WHERE owner = ? AND seq = ?",
                                (owner, seq)).fetchone()
        return None if row is None else Entry.decode(bytes(row[0]))

    def authenticator(self, owner: bytes, seq: int) -> Authenticator | None:
        row = self.conn.execute(
            "SELECT hash, owner_sig FROM chain_entries WHERE owner = ? AND seq = ?",
            (owner, seq)).fetchone()
        return None if row is None else Authenticator(owner, seq, bytes(row[0]), bytes(row[1]))

    def certificate(self, owner: bytes, seq: int) -> Certificate | None:
        """The entry at ``seq`` with all notary signatures stored (None if uncertified)."""
        row = self.conn.execute(
            "SELECT entry, owner_sig, notary_sigs FROM chain_entries "
            "WHERE owner = ? AND seq = ?", (owner, seq)).fetchone()
        if row is None or row[2] is None:
            return None
        return Certificate(Entry.decode(bytes(row[0])), bytes(row[1]), _sigs(row[2]))

    def pending(self, owner: bytes) -> tuple[Entry, bytes] | None:
        """The appended but uncertified entry and its owner signature, if any."""
        row = self.conn.execute(
            "SELECT entry, owner_sig FROM chain_entries WHERE owner = ? AND notary_sigs IS NULL "
            "ORDER BY seq DESC LIMIT 1", (owner,)).fetchone()
        return None if row is None else (Entry.decode(bytes(row[0])), bytes(row[1]))

    def entries(self, owner: bytes) -> list[Entry]:
        rows = self.conn.execute("SELECT entry FROM chain_entries WHERE owner = ? ORDER BY seq",
                                 (owner,)).fetchall()
        return [Entry.decode(bytes(r[0])) for r in rows]

    def authenticators(self, owner: bytes) -> list[Authenticator]:
        rows = self.conn.execute(
            "SELECT seq, hash, owner_sig FROM chain_entries WHERE owner = ? ORDER BY seq",
            (owner,)).fetchall()
        return [Authenticator(owner, int(r[0]), bytes(r[1]), bytes(r[2])) for r in rows]

    def owners(self) -> list[bytes]:
        rows = self.conn.execute("SELECT DISTINCT owner FROM chain_entries ORDER BY owner")
        return [bytes(r[0]) for r in rows]

    def balance(self, owner: bytes, include_pending: bool = False) -> int:
        """Replay of the chain's certified entries (and the pending one if asked)."""
        sql = "SELECT COALESCE(SUM(delta), 0) FROM chain_entries WHERE owner = ?"
        if not include_pending:
            sql += " AND notary_sigs IS NOT NULL"
        return int(self.conn.execute(sql, (owner,)).fetchone()[0])

    def has_received(self, owner: bytes, payer: bytes, seq: int) -> bool:
        """Whether ``owner``'s chain holds a RECV (pending or certified) of SEND (payer, seq)."""
        row = self.conn.execute(
            "SELECT 1 FROM chain_received WHERE owner = ? AND payer = ? AND seq = ?",
            (owner, payer, seq)).fetchone()
        return row is not None

    def history(self, owner: bytes) -> list[dict[str, Any]]:
        """One JSON-friendly map per entry (keys and hashes as hex).

        ``seq, kind, ts, hash, amount, delta, balance`` (after the entry),
        ``counterparty`` (payee of a SEND, payer of a RECV, else None), ``memo``,
        ``certified``; a RECV adds ``send_seq``.
        """
        out: list[dict[str, Any]] = []
        balance = 0
        rows = self.conn.execute(
            "SELECT entry, notary_sigs IS NOT NULL FROM chain_entries WHERE owner = ? "
            "ORDER BY seq", (owner,)).fetchall()
        for data, certified in rows:
            entry = Entry.decode(bytes(data))
            balance += entry.delta
            party = entry.counterparty
            item: dict[str, Any] = {
                "seq": entry.seq, "kind": entry.kind, "ts": entry.ts,
                "hash": entry.hash().hex(), "amount": entry.amount, "delta": entry.delta,
                "balance": balance, "counterparty": None if party is None else party.hex(),
                "memo": entry.body.get("memo", ""), "certified": bool(certified)}
            if entry.kind == RECV:
                assert entry.received is not None
                item["memo"] = entry.received.entry.body["memo"]
                item["send_seq"] = entry.received.entry.seq
            out.append(item)
        return out


def _sigs(blob: Any) -> tuple[tuple[bytes, bytes], ...]:
    if blob is None:
        return ()
    return tuple((bytes(k), bytes(s)) for k, s in unpack(bytes(blob)))
