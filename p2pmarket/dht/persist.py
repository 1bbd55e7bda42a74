"""What a DHT node keeps across restarts (sqlite through :func:`p2pmarket.core.files.open_db`).

- ``contacts``: the routing table (node id, address), rewritten on save; a
  restarted node pings them to rejoin, and they enter the table again only
  after proving their ids like any new contact.
- ``own``: the records this node publishes, as the inputs it signs them from
  (host fields, one row per offered type), so a restarted node republishes
  them without its owner asking.
- ``docs``: the documents its host record points to (served over HTTP).
- ``proofs``: evidence bodies (``evidence/<id>``) it published (``own``: it
  republishes them) or fetched and checked as a storer; served over HTTP at
  ``/dht/evidence/<sha256 hex>``.
- ``meta``: the last seq and ts used, so re-signed records never go backwards
  even if the clock does.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from p2pmarket.core.files import open_db, require_format
from p2pmarket.core.wire import WireError, pack, unpack

SCHEMA = """
CREATE TABLE IF NOT EXISTS contacts (node_id BLOB PRIMARY KEY, ip TEXT NOT NULL,
                                     port INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS own (name TEXT PRIMARY KEY, doc BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS docs (sha256 BLOB PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS proofs (sha256 BLOB PRIMARY KEY, node_id BLOB NOT NULL,
                                   data BLOB NOT NULL, own INTEGER NOT NULL,
                                   expires INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""
MAX_SAVED_CONTACTS = 2000
STORE_FORMAT = 2
"""The DHT state's format: 2 since signatures have domains (docs/design.md §2)."""


class DhtState:
    """One node's persisted DHT state. All writes are single transactions."""

    def __init__(self, path: Path | str) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = open_db(path)
        require_format(self._db, "DHT", STORE_FORMAT, ("own", "proofs"),
                       "records are envelopes of version 2, proofs of version 2")
        with self._db:
            self._db.executescript(SCHEMA)

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("DHT state closed")
        return self._db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    # -- contacts -------------------------------------------------------------------

    def save_contacts(self, contacts: list[tuple[bytes, str, int]]) -> None:
        with self.db:
            self.db.execute("DELETE FROM contacts")
            self.db.executemany("INSERT OR REPLACE INTO contacts VALUES (?, ?, ?)",
                                contacts[:MAX_SAVED_CONTACTS])

    def contacts(self) -> list[tuple[bytes, str, int]]:
        rows = self.db.execute("SELECT node_id, ip, port FROM contacts").fetchall()
        return [(bytes(r[0]), str(r[1]), int(r[2])) for r in rows]

    # -- own records ------------------------------------------------------------------

    def put_own(self, name: str, doc: Any) -> None:
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO own VALUES (?, ?)", (name, pack(doc)))

    def drop_own(self, name: str) -> None:
        with self.db:
            self.db.execute("DELETE FROM own WHERE name = ?", (name,))

    def own(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, blob in self.db.execute("SELECT name, doc FROM own").fetchall():
            try:
                out[str(name)] = unpack(bytes(blob))
            except WireError:
                continue  # a damaged row is skipped, the owner publishes it again
        return out

    def put_doc(self, sha256: bytes, data: bytes) -> None:
        with self.db:
            self.db.execute("DELETE FROM docs")  # one document per host record
            self.db.execute("INSERT INTO docs VALUES (?, ?)", (sha256, data))

    def docs(self) -> dict[bytes, bytes]:
        rows = self.db.execute("SELECT sha256, data FROM docs").fetchall()
        return {bytes(r[0]): bytes(r[1]) for r in rows}

    # -- evidence bodies ----------------------------------------------------------------

    def put_proof(self, sha256: bytes, node_id: bytes, data: bytes, own: bool,
                  expires: int) -> None:
        with self.db:
            self.db.execute(
                "INSERT INTO proofs VALUES (?, ?, ?, ?, ?) ON CONFLICT (sha256) DO UPDATE "
                "SET own = max(own, excluded.own), expires = max(expires, excluded.expires)",
                (sha256, node_id, data, int(own), expires))

    def drop_proofs(self, sha256s: list[bytes]) -> None:
        with self.db:
            self.db.executemany("DELETE FROM proofs WHERE sha256 = ?",
                                [(h,) for h in sha256s])

    def proofs(self) -> list[tuple[bytes, bytes, bytes, bool, int]]:
        """``(sha256, node id, body, own, expires)`` rows, oldest first."""
        rows = self.db.execute(
            "SELECT sha256, node_id, data, own, expires FROM proofs ORDER BY rowid").fetchall()
        return [(bytes(r[0]), bytes(r[1]), bytes(r[2]), bool(r[3]), int(r[4])) for r in rows]

    # -- counters -----------------------------------------------------------------------

    def set_meta(self, name: str, value: int) -> None:
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (name, value))

    def meta(self, name: str) -> int:
        row = self.db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else 0
