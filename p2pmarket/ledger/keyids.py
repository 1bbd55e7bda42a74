"""Small integer ids for public keys, kept in a sqlite table (used by the chain store).

A table ``(id INTEGER PRIMARY KEY, key BLOB UNIQUE)`` names each key once; rows
elsewhere store the id (one or two bytes) instead of 32 bytes of key. Ids are
cached both ways; :meth:`KeyIds.clear` drops the cache when a transaction that
may have made ids rolls back.
"""

from __future__ import annotations

import sqlite3

from p2pmarket.ledger.errors import LedgerError


class KeyIds:
    """Small integer ids for keys, in a table ``(id INTEGER PRIMARY KEY, key UNIQUE)``."""

    def __init__(self, table: str) -> None:
        self.table = table
        self.ids: dict[bytes, int] = {}
        self.keys: dict[int, bytes] = {}

    def clear(self) -> None:
        self.ids.clear()
        self.keys.clear()

    def id(self, conn: sqlite3.Connection, key: bytes, create: bool = True) -> int | None:
        got = self.ids.get(key)
        if got is None:
            row = conn.execute(f"SELECT id FROM {self.table} WHERE key = ?", (key,)).fetchone()
            if row is None and not create:
                return None
            if row is None:
                cur = conn.execute(f"INSERT INTO {self.table} (key) VALUES (?)", (key,))
                assert cur.lastrowid is not None
                row = (cur.lastrowid,)
            got = self.ids[key] = int(row[0])
            self.keys[got] = key
        return got

    def key(self, conn: sqlite3.Connection, ident: int) -> bytes:
        got = self.keys.get(ident)
        if got is None:
            row = conn.execute(f"SELECT key FROM {self.table} WHERE id = ?",
                               (ident,)).fetchone()
            if row is None:
                raise LedgerError("stored chain is damaged", {self.table: ident})
            got = self.keys[ident] = bytes(row[0])
            self.ids[got] = ident
        return got
