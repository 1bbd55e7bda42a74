"""What a witness must not forget across restarts (docs/design.md section 5).

Per watched host, in one sqlite file under the node's data dir:

- ``hosts``: the host's URL, how far the audit got (seq and head hash), the open
  challenge, the last error and audit time, and where the replay resumes: the
  state at the last anchor (:func:`p2pmarket.auction.snapshot.snapshot`, canonical
  msgpack; NULL when the anchor is the log's ``in.genesis``) and the entries
  since that anchor (``replay_entries``). Re-taking those entries rebuilds the
  :class:`~p2pmarket.audit.replay.Replayer` exactly, mid-input included. The
  state's payment, refund and refund-paid records only grow, so they are kept apart
  (``anchor_records``, one row each, in order) and only new ones are written when
  the anchor moves; the snapshot blob leaves them out.
- ``audited``: the host's authenticator (hash, signature) of every entry the
  witness audited. These are what later inconsistency proofs are built from (a
  pushed authenticator, or a re-fetched entry, that disagrees with one), so
  they are kept for good, on disk and not in memory.
- ``held``: authenticators buyers pushed that the audit has not reached yet.

A restarted witness therefore resumes each audit where it stopped instead of
from seq 0, still holds what it was pushed (stored before ``witness.push``
answers), and keeps its challenges. Progress is saved after every checked
segment, in one transaction with the segment's authenticators.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from p2pmarket.auction.snapshot import from_snapshot, snapshot
from p2pmarket.audit.entry import AuditAuthenticator
from p2pmarket.audit.errors import AuditError
from p2pmarket.audit.replay import Replayer
from p2pmarket.core.files import open_db, require_format
from p2pmarket.core.genesis import Genesis
from p2pmarket.core.wire import pack, unpack

log = logging.getLogger(__name__)

_AUDITED = "INSERT OR REPLACE INTO audited (key, seq, hash, sig) VALUES (?, ?, ?, ?)"

MAX_SNAPSHOT_BYTES = 64 << 20
RECORDS = ("payments", "refunds", "paid")   # a snapshot's append-only records

STORE_FORMAT = 2
"""The witness store's format: 2 since signatures have domains (docs/design.md §2)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS hosts (
    key BLOB PRIMARY KEY,
    url TEXT,
    seq INTEGER NOT NULL,
    challenge BLOB,
    error TEXT NOT NULL DEFAULT '',
    last_audit INTEGER NOT NULL DEFAULT 0,
    anchor_seq INTEGER NOT NULL DEFAULT -1,
    anchor_state BLOB
);
CREATE TABLE IF NOT EXISTS anchor_records (
    key BLOB NOT NULL,
    kind TEXT NOT NULL,
    n INTEGER NOT NULL,
    row BLOB NOT NULL,
    PRIMARY KEY (key, kind, n)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS replay_entries (
    key BLOB NOT NULL,
    seq INTEGER NOT NULL,
    raw BLOB NOT NULL,
    PRIMARY KEY (key, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS audited (
    key BLOB NOT NULL,
    seq INTEGER NOT NULL,
    hash BLOB NOT NULL,
    sig BLOB NOT NULL,
    PRIMARY KEY (key, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS held (
    key BLOB NOT NULL,
    seq INTEGER NOT NULL,
    hash BLOB NOT NULL,
    sig BLOB NOT NULL,
    PRIMARY KEY (key, seq)
) WITHOUT ROWID;
"""


class WitnessStoreError(AuditError):
    """The witness's own store failed or holds something unreadable."""


@dataclass(frozen=True)
class SavedHost:
    """One watched host as :meth:`WitnessStore.hosts` loads it."""

    key: bytes
    url: str | None
    replayer: Replayer
    held: tuple[AuditAuthenticator, ...]
    challenge: dict[str, Any] | None
    error: str
    last_audit: int


class WitnessStore:
    """The witness's durable state (sqlite; ``:memory:`` for tests)."""

    def __init__(self, path: Path | str = ":memory:") -> None:
        self.conn = open_db(path)
        require_format(self.conn, "witness", STORE_FORMAT, ("hosts", "audited", "held"),
                       "signatures have domains")
        with self.conn:
            self.conn.executescript(_SCHEMA)

    def close(self) -> None:
        self.conn.close()

    # -- loading ------------------------------------------------------------------------

    def hosts(self, genesis: Genesis | None = None) -> list[SavedHost]:
        """Every watched host, its replay rebuilt (checking refund certificates against
        ``genesis`` when given)."""
        out = []
        rows = self.conn.execute("SELECT key, url, seq, challenge, error, last_audit "
                                 "FROM hosts ORDER BY key").fetchall()
        for key, url, seq, challenge, error, last_audit in rows:
            key = bytes(key)
            try:
                replayer = self._replayer(key, genesis)
                if replayer.seq != seq:
                    raise WitnessStoreError("saved replay does not reach the saved seq",
                                            {"seq": seq, "got": replayer.seq})
            except WitnessStoreError as exc:
                # never trust a replay we cannot rebuild: audit that host again from 0
                log.error("witness store, host %s: %s (%s); auditing it again from seq 0",
                          key.hex()[:12], exc.message, exc.value)
                replayer = Replayer(host=key, genesis=genesis)
                error = f"{exc.message}; re-auditing"
            held = tuple(AuditAuthenticator(key, s, bytes(h), bytes(sig)) for s, h, sig in
                         self.conn.execute("SELECT seq, hash, sig FROM held WHERE key = ? "
                                           "ORDER BY seq", (key,)))
            out.append(SavedHost(key, url, replayer, held,
                                 None if challenge is None else unpack(bytes(challenge)),
                                 str(error), int(last_audit)))
        return out

    def _replayer(self, key: bytes, genesis: Genesis | None) -> Replayer:
        row = self.conn.execute("SELECT anchor_state FROM hosts WHERE key = ?",
                                (key,)).fetchone()
        entries = [bytes(r[0]) for r in self.conn.execute(
            "SELECT raw FROM replay_entries WHERE key = ? ORDER BY seq", (key,))]
        if not entries:
            return Replayer(host=key, genesis=genesis)
        try:
            if row is None or row[0] is None:   # anchored at the log's in.genesis
                r = Replayer(host=key, genesis=genesis)
                rest = entries
            else:
                doc = unpack(bytes(row[0]), MAX_SNAPSHOT_BYTES)
                for kind in RECORDS:
                    doc[kind] = [unpack(bytes(r[0])) for r in self.conn.execute(
                        "SELECT row FROM anchor_records WHERE key = ? AND kind = ? "
                        "ORDER BY n", (key, kind))]
                state = from_snapshot(doc)
                r = Replayer(state, entries[0], host=key, genesis=genesis)
                rest = entries[1:]
            for raw in rest:
                if r.take(raw) is not None:
                    break
        except Exception as exc:   # our own file: unreadable means a bug or a bad disk
            raise WitnessStoreError("saved replay state is unreadable",
                                    {"host": key.hex(), "cause": repr(exc)[:200]}) from None
        if r.fault is not None:
            raise WitnessStoreError("saved replay state replays with a fault",
                                    {"host": key.hex(), "fault": r.fault.rule})
        return r

    # -- lookups ------------------------------------------------------------------------

    def audited(self, key: bytes, seq: int) -> AuditAuthenticator | None:
        row = self.conn.execute("SELECT hash, sig FROM audited WHERE key = ? AND seq = ?",
                                (key, seq)).fetchone()
        return None if row is None else AuditAuthenticator(key, seq, bytes(row[0]), bytes(row[1]))

    def audited_count(self, key: bytes) -> int:
        row = self.conn.execute("SELECT COUNT(*) FROM audited WHERE key = ?", (key,)).fetchone()
        return int(row[0])

    # -- saving -------------------------------------------------------------------------

    def save_held(self, key: bytes, auths: Iterable[AuditAuthenticator]) -> None:
        """Keep pushed authenticators (call before acknowledging the push)."""
        self._write("INSERT OR IGNORE INTO held (key, seq, hash, sig) VALUES (?, ?, ?, ?)",
                    [(key, a.seq, a.hash, a.sig) for a in auths], key)

    def drop_held(self, key: bytes, upto: int, keep: Iterable[int] = ()) -> None:
        """Forget the pushed authenticators up to seq ``upto`` but those at ``keep`` (to
        be checked against the log again)."""
        stmts: list[tuple[str, Any]] = [("DELETE FROM held WHERE key = ? AND seq <= ?",
                                         (key, upto))]
        kept = [(key, a[0], a[1], a[2]) for a in self.conn.execute(
            "SELECT seq, hash, sig FROM held WHERE key = ? AND seq <= ?", (key, upto))
            if a[0] in set(keep)]
        if kept:
            stmts.append(("INSERT INTO held (key, seq, hash, sig) VALUES (?, ?, ?, ?)", kept))
        self._run(stmts)

    def save_progress(self, key: bytes, url: str | None, replayer: Replayer,
                      audited: list[AuditAuthenticator], anchor_changed: bool) -> None:
        """One checked segment: its authenticators, and where the replay resumes (not
        for a replay that found a fault: the host is exposed, nothing resumes)."""
        rows = [(key, a.seq, a.hash, a.sig) for a in audited]
        if replayer.fault is not None:
            self._write(_AUDITED, rows, key)
            return
        stmts: list[tuple[str, Any]] = [(_AUDITED, rows)]
        if anchor_changed:
            stmts.append(("DELETE FROM replay_entries WHERE key = ?", (key,)))
        first = replayer.anchor_entries[0] if replayer.anchor_entries else None
        first_seq = replayer.seq - len(replayer.anchor_entries) + 1
        stmts.append(("INSERT OR IGNORE INTO replay_entries (key, seq, raw) VALUES (?, ?, ?)",
                      [(key, first_seq + i, raw)
                       for i, raw in enumerate(replayer.anchor_entries)]))
        stmts.append(("INSERT INTO hosts (key, url, seq) VALUES (?, ?, ?) ON CONFLICT (key) "
                      "DO UPDATE SET url = excluded.url, seq = excluded.seq",
                      (key, url, replayer.seq)))
        if anchor_changed and first is not None:
            state = replayer.anchor_state if first_seq > 0 else None
            doc = None if state is None else snapshot(state)
            # the blob leaves the records out; anchor_records holds them
            stmts.append(("UPDATE hosts SET anchor_seq = ?, anchor_state = ? WHERE key = ?",
                          (first_seq, None if doc is None else
                           pack({**doc, **dict.fromkeys(RECORDS)}), key)))
            if doc is not None:
                stmts.extend(self._new_records(key, doc))
        self._run(stmts)

    def _new_records(self, key: bytes, doc: dict[str, Any]) -> list[tuple[str, Any]]:
        """Statements adding the payment, refund and refund-paid records of the
        snapshot ``doc`` that the store lacks (all of them again if the store holds
        more: a replay started over)."""
        stmts: list[tuple[str, Any]] = []
        for kind in RECORDS:
            rows = doc[kind]
            if rows is None:
                raise WitnessStoreError("an anchor state without its records", kind)
            have = self.conn.execute("SELECT COUNT(*) FROM anchor_records WHERE key = ? "
                                     "AND kind = ?", (key, kind)).fetchone()[0]
            if have > len(rows):
                stmts.append(("DELETE FROM anchor_records WHERE key = ? AND kind = ?",
                              (key, kind)))
                have = 0
            stmts.append(("INSERT INTO anchor_records (key, kind, n, row) VALUES (?, ?, ?, ?)",
                          [(key, kind, n, pack(rows[n])) for n in range(have, len(rows))]))
        return stmts

    def save_meta(self, key: bytes, url: str | None, seq: int,
                  challenge: dict[str, Any] | None, error: str, last_audit: int) -> None:
        self._run([("INSERT INTO hosts (key, url, seq, challenge, error, last_audit) "
                    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO UPDATE SET "
                    "url = excluded.url, challenge = excluded.challenge, "
                    "error = excluded.error, last_audit = excluded.last_audit",
                    (key, url, seq, None if challenge is None else pack(challenge),
                     error[:500], last_audit))])

    def _write(self, sql: str, rows: list[tuple[Any, ...]], key: bytes) -> None:
        self._run([("INSERT OR IGNORE INTO hosts (key, seq) VALUES (?, -1)", (key,)),
                   (sql, rows)])

    def _run(self, stmts: list[tuple[str, Any]]) -> None:
        try:
            with self.conn:
                for sql, params in stmts:
                    if isinstance(params, list):
                        self.conn.executemany(sql, params)
                    else:
                        self.conn.execute(sql, params)
        except sqlite3.Error as exc:
            raise WitnessStoreError("witness store failed", str(exc)) from None


__all__ = ["SavedHost", "WitnessStore", "WitnessStoreError"]
