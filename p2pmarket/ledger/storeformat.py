"""The chain store's rows: its sqlite schema and the compact encoding of entries.

The owner is a small integer (``chain_owner``), ``prev`` is not stored (it is
the previous row's hash), the body is the msgpack list of its values in a fixed
order per kind (no field names; a SEND's payee and a RECV's payer as a small
integer naming the key in ``chain_party``), the kind a one-byte code, and
notary signatures name their notary by a small integer too (``chain_notary``).
:class:`RowCodec` packs entries into rows and rebuilds them, checking each
rebuilt entry's hash against the stored one. :func:`check_format` refuses an
older, incompatible store: one whose RECVs embedded certificates, and any store of
format 1 (:data:`STORE_FORMAT`: since format 2 every signature has a domain, so the
signatures of a format 1 store, the first layout's included, no longer verify).
:class:`p2pmarket.ledger.store.ChainStore` does the rest (appending, attaching
and pruning signatures, queries).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from p2pmarket.core.files import require_format
from p2pmarket.core.wire import pack_plain, unpack
from p2pmarket.ledger.chain import (
    CHECKPOINT,
    KINDS,
    MINT,
    OPEN,
    RECV,
    SEND,
    ZERO_HASH,
    Entry,
)
from p2pmarket.ledger.errors import LedgerError
from p2pmarket.ledger.keyids import KeyIds

KIND_CODES = {"OPEN": 0, "MINT": 1, "SEND": 2, "RECV": 3, CHECKPOINT: 4}
CODE_KINDS = {v: k for k, v in KIND_CODES.items()}
assert set(KIND_CODES) == KINDS
# stored body: the values of these fields, in this order (a party key as its chain_party id)
BODY_FIELDS = {OPEN: (), MINT: ("amount",), CHECKPOINT: ("balance",),
               SEND: ("to", "amount", "memo"), RECV: ("from", "seq", "hash", "amount", "memo")}
PRUNED = b""  # notary_sigs of a certified entry whose signatures were dropped

SCHEMA = """
CREATE TABLE IF NOT EXISTS chain_owner (
    id INTEGER PRIMARY KEY,
    key BLOB NOT NULL UNIQUE,
    head_seq INTEGER NOT NULL,
    head_hash BLOB NOT NULL,
    balance INTEGER NOT NULL,
    total INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS chain_notary (
    id INTEGER PRIMARY KEY,
    key BLOB NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS chain_party (
    id INTEGER PRIMARY KEY,
    key BLOB NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS chain_entry (
    oid INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    hash BLOB NOT NULL,
    kind INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    body BLOB NOT NULL,
    owner_sig BLOB NOT NULL,
    notary_sigs BLOB,
    PRIMARY KEY (oid, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS chain_entry_pending ON chain_entry (oid, seq)
    WHERE notary_sigs IS NULL;
CREATE TABLE IF NOT EXISTS chain_recv (
    oid INTEGER NOT NULL,
    payer INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (oid, payer, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS chain_receipt (
    oid INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    cert BLOB NOT NULL,
    PRIMARY KEY (oid, seq)
) WITHOUT ROWID;
"""

Row = tuple[Any, ...]  # a chain_entry row: seq, hash, kind, ts, body, owner_sig, notary_sigs


class RowCodec:
    """Entries to rows and back over one connection, with the key ids of parties and
    notaries (:meth:`clear` forgets ids made in a transaction that rolled back)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.notaries = KeyIds("chain_notary")
        self.parties = KeyIds("chain_party")

    def clear(self) -> None:
        self.notaries.clear()
        self.parties.clear()

    def party_id(self, key: bytes, create: bool = True) -> int | None:
        return self.parties.id(self.conn, key, create)

    def rebuild(self, owner: bytes, prev: bytes, row: Row) -> Entry:
        seq, stored_hash = int(row[0]), bytes(row[1])
        kind = CODE_KINDS[int(row[2])]
        values = unpack(bytes(row[4]))
        fields = BODY_FIELDS[kind]
        if not isinstance(values, list) or len(values) != len(fields):
            raise LedgerError("stored chain is damaged", {"owner": owner, "seq": seq})
        if kind in (SEND, RECV):
            values[0] = self.parties.key(self.conn, int(values[0]))
        entry = Entry(owner, seq, prev if seq else ZERO_HASH, kind,
                      dict(zip(fields, values, strict=True)), int(row[3]))
        if entry.hash() != stored_hash:
            raise LedgerError("stored chain is damaged", {"owner": owner, "seq": seq})
        return entry

    def pack_body(self, entry: Entry) -> bytes:
        values = [entry.body[k] for k in BODY_FIELDS[entry.kind]]
        if entry.kind in (SEND, RECV):
            values[0] = self.parties.id(self.conn, values[0])
        return pack_plain(values)  # ints, bytes and str: canonical

    def pack_sigs(self, sigs: Sequence[tuple[bytes, bytes]]) -> bytes:
        ids = self.notaries
        return pack_plain([[ids.id(self.conn, k), s] for k, s in sigs])  # canonical as is

    def sigs(self, blob: Any) -> tuple[tuple[bytes, bytes], ...] | None:
        if blob is None:
            return None
        if not blob:
            return ()
        ids = self.notaries
        return tuple((ids.key(self.conn, int(n)), bytes(s)) for n, s in unpack(bytes(blob)))


STORE_FORMAT = 2
"""The chain store's format: 2 since signatures have domains (docs/design.md §2)."""


def check_format(conn: sqlite3.Connection) -> None:
    """Refuse a store written before RECVs named their SEND (it had ``delta``), and one
    of another format than :data:`STORE_FORMAT` (:class:`~p2pmarket.core.files.
    FormatError`); mark a new one."""
    columns = {r[1] for r in conn.execute("PRAGMA table_info(chain_entry)")}
    if "delta" in columns:
        raise LedgerError("this chain store has an older format (RECVs embedding "
                          "certificates); start a new network or wallet", str(conn))
    require_format(conn, "chain", STORE_FORMAT, ("chain_entry", "chain_entries", "chain_owner"),
                   "signatures have domains")
