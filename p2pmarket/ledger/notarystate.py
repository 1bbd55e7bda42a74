"""A notary's durable state and the per-batch rules that need no signing key.

Split out of :mod:`p2pmarket.ledger.notary`: the schema, :class:`Item` (one
entry to certify, with its quorum certificate when caught up and the SEND
certificate of a fresh RECV), the group transaction :class:`Tx`, and
:func:`coverage`.

*Coverage*: a quorum certificate of entry n proves that the entries before it,
linked to it by ``prev``, were certified too (an honest notary signs n only
after n-1 with that hash). So in one batch an item without its own certificate
is *covered* when a later item of the same owner carries a valid quorum
certificate and every item between them links to the next by ``prev``; a
lagging notary replays covered items (balance, double receive) but needs no
SEND certificate for a covered RECV and applies no ``shun`` policy to them.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from p2pmarket.ledger.certificate import Certificate
from p2pmarket.ledger.chain import ZERO_HASH, Entry
from p2pmarket.ledger.merkle import OwnerProof, batch_paths, leaf_hash

SCHEMA = """
CREATE TABLE IF NOT EXISTS nt_chain (
    id INTEGER PRIMARY KEY,
    key BLOB NOT NULL UNIQUE,
    seq INTEGER NOT NULL,
    hash BLOB NOT NULL,
    balance INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS nt_entry (
    cid INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    hash BLOB NOT NULL,
    owner_sig BLOB NOT NULL,
    idx INTEGER NOT NULL DEFAULT 0,
    size INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (cid, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS nt_inbox (
    payer INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    payee INTEGER NOT NULL,
    amount INTEGER NOT NULL,
    counted INTEGER NOT NULL,
    cert BLOB NOT NULL,
    PRIMARY KEY (payer, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS nt_inbox_payee ON nt_inbox (payee, payer, seq);
CREATE TABLE IF NOT EXISTS nt_recv (
    payer INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    payee INTEGER NOT NULL,
    amount INTEGER NOT NULL,
    early INTEGER NOT NULL,
    PRIMARY KEY (payer, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS nt_evidence (
    cid INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    hash BLOB NOT NULL,
    owner_sig BLOB NOT NULL,
    PRIMARY KEY (cid, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS nt_totals (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    minted INTEGER NOT NULL
);
INSERT OR IGNORE INTO nt_totals (id, minted) VALUES (1, 0);
"""


def add_batch_columns(conn: sqlite3.Connection) -> None:
    """Give a store made before batch roots its ``idx`` and ``size`` columns: its
    entries were each signed alone (a batch of one), as the defaults say."""
    names = {r[1] for r in conn.execute("PRAGMA table_info(nt_entry)")}
    for name, default in (("idx", 0), ("size", 1)):
        if names and name not in names:
            conn.execute(f"ALTER TABLE nt_entry ADD COLUMN {name} INTEGER NOT NULL "
                         f"DEFAULT {default}")


@dataclass(frozen=True)
class Item:
    """One entry to certify; ``notaries`` non-empty: it comes with its certificate;
    ``send``: the SEND certificate a fresh RECV receives."""

    entry: Entry
    owner_sig: bytes
    notaries: tuple[tuple[bytes, bytes], ...] = ()
    send: Certificate | None = None


@dataclass
class Head:
    cid: int
    seq: int
    hash: bytes
    balance: int
    dirty: bool = False


class Tx:
    """What one group transaction knows beyond the database: chain heads it touched and
    the entries it certified (written together, with ``executemany``, at :meth:`flush`)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.heads: dict[bytes, Head] = {}
        self.entries: dict[tuple[int, int], tuple[bytes, OwnerProof]] = {}
        self.minted = int(conn.execute("SELECT minted FROM nt_totals WHERE id = 1"
                                       ).fetchone()[0])
        self.minted_dirty = False

    def head(self, key: bytes, create: bool = False) -> Head | None:
        head = self.heads.get(key)
        if head is not None:
            return head
        row = self.conn.execute("SELECT id, seq, hash, balance FROM nt_chain WHERE key = ?",
                                (key,)).fetchone()
        if row is None:
            if not create:
                return None
            cur = self.conn.execute("INSERT INTO nt_chain (key, seq, hash, balance) "
                                    "VALUES (?, -1, ?, 0)", (key, ZERO_HASH))
            assert cur.lastrowid is not None
            row = (cur.lastrowid, -1, ZERO_HASH, 0)
        head = self.heads[key] = Head(int(row[0]), int(row[1]), bytes(row[2]), int(row[3]))
        return head

    def entry(self, cid: int, seq: int) -> bytes | None:
        """The hash of the entry certified at ``(cid, seq)``, if any."""
        got = self.entries.get((cid, seq))
        if got is not None:
            return got[0]
        row = self.conn.execute("SELECT hash FROM nt_entry WHERE cid = ? AND seq = ?",
                                (cid, seq)).fetchone()
        return None if row is None else bytes(row[0])

    def proof(self, owner: bytes, cid: int, seq: int) -> bytes | None:
        """The owner's proof (signature, or batch root signature and Merkle path) of
        the entry certified at ``(cid, seq)``, rebuilt from the batch's stored hashes."""
        got = self.entries.get((cid, seq))
        if got is not None:
            return got[1].encode()
        row = self.conn.execute("SELECT owner_sig, idx, size FROM nt_entry WHERE cid = ? "
                                "AND seq = ?", (cid, seq)).fetchone()
        if row is None:
            return None
        sig, index, size = bytes(row[0]), int(row[1]), int(row[2])
        if size == 1:
            return sig
        leaves = self.batch_leaves(owner, cid, seq - index, size)
        if leaves is None:  # a batch's entries are stored together
            return None
        _, paths = batch_paths(leaves)
        return OwnerProof(sig, index, size, tuple(paths[index])).encode()

    def batch_leaves(self, owner: bytes, cid: int, first: int, size: int
                     ) -> list[bytes] | None:
        """The Merkle leaves of ``owner``'s batch of ``size`` entries from seq ``first``,
        from the hashes certified here; None while one of them is not."""
        hashes = [self.entry(cid, s) for s in range(first, first + size)]
        if any(h is None for h in hashes):
            return None
        return [leaf_hash(owner, first + i, h) for i, h in enumerate(hashes) if h]

    def flush(self) -> None:
        self.conn.executemany("INSERT INTO nt_entry (cid, seq, hash, owner_sig, idx, size) "
                              "VALUES (?, ?, ?, ?, ?, ?)",
                              [(c, q, h, p.sig, p.index, p.size)
                               for (c, q), (h, p) in self.entries.items()])
        self.conn.executemany(
            "UPDATE nt_chain SET seq = ?, hash = ?, balance = ? WHERE id = ?",
            [(h.seq, h.hash, h.balance, h.cid) for h in self.heads.values() if h.dirty])
        if self.minted_dirty:
            self.conn.execute("UPDATE nt_totals SET minted = ? WHERE id = 1", (self.minted,))




def coverage(items: Sequence[Item], valid: Callable[[Certificate], bool]) -> list[bool]:
    """For each item, whether a later item's quorum certificate covers it (module doc).

    ``valid`` judges a certificate (a quorum of committee signatures, owner's too).
    """
    covered = [False] * len(items)
    expect: dict[bytes, tuple[int, bytes]] = {}  # owner -> (seq, hash) the next one back
    for i in range(len(items) - 1, -1, -1):
        item = items[i]
        entry = item.entry
        if item.notaries:
            if valid(Certificate(entry, item.owner_sig, item.notaries)):
                expect[entry.owner] = (entry.seq - 1, entry.prev)
            else:
                expect.pop(entry.owner, None)
            continue
        want = expect.get(entry.owner)
        if want is not None and want == (entry.seq, entry.hash()):
            covered[i] = True
            expect[entry.owner] = (entry.seq - 1, entry.prev)
        else:
            expect.pop(entry.owner, None)
    return covered
