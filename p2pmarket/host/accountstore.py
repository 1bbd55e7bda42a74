"""Host accounts, refunds and host settings in sqlite (WAL + synchronous=FULL via
:func:`open_db`).

An account is the buyer's money and bids at one host: its holder's public key,
expected-value fund and contingency fund (micro-credits), contingency ratio
(ppm), interval end (µs), state (``active``, ``expired``: shut down and reset
with a long interval, ``closed``), standing bids per resource
(:class:`BidTerm`, fractions kept as fractions), the last allocation and the
last signed lease. Every write commits before returning, so a change is durable
before the RPC that made it is acknowledged; a payment or a refund is recorded
in the same transaction as the account it changes, and a refund's payment (its
row in ``refunds_paid``, in the order paid, and the refund ``done`` with the SEND's
certificate as its result) in the same transaction as the state record of the
``in.refund_paid`` that logged it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from p2pmarket.auction import HostError
from p2pmarket.auction.accounts import (
    Account,
    Refund,
    RefundPaid,
    terms_from_doc,
    terms_to_doc,
)
from p2pmarket.core.files import open_db
from p2pmarket.core.wire import pack, unpack

_SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (
    id TEXT PRIMARY KEY,
    holder BLOB NOT NULL,
    fund INTEGER NOT NULL CHECK (fund >= 0),
    interval_end_us INTEGER NOT NULL,
    bids BLOB NOT NULL,
    allocation BLOB NOT NULL,
    created_us INTEGER NOT NULL,
    lease BLOB
);
CREATE INDEX IF NOT EXISTS accounts_holder ON accounts (holder);
CREATE TABLE IF NOT EXISTS payments (
    id BLOB PRIMARY KEY,
    account_id TEXT NOT NULL,
    amount INTEGER NOT NULL CHECK (amount > 0)
);
CREATE TABLE IF NOT EXISTS refunds (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL,
    holder BLOB NOT NULL,
    amount INTEGER NOT NULL CHECK (amount > 0),
    memo TEXT NOT NULL,
    status TEXT NOT NULL,
    result BLOB,
    created_us INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS refunds_paid (
    refund_id TEXT PRIMARY KEY,
    payment_id BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS settings (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
"""
# columns added after the first release: name -> definition
_NEW_COLUMNS = {
    "contingency": "INTEGER NOT NULL DEFAULT 0 CHECK (contingency >= 0)",
    "contingency_ppm": "INTEGER NOT NULL DEFAULT 0",
    "state": "TEXT NOT NULL DEFAULT 'active'",
    "since": "INTEGER NOT NULL DEFAULT 0",      # the event-driven allocator's record
    "spend": "INTEGER NOT NULL DEFAULT 0",
    "topups": "BLOB",
    "split_total": "INTEGER NOT NULL DEFAULT 1",
}
_COLUMNS = ("id, holder, fund, interval_end_us, bids, allocation, created_us, lease, "
            "contingency, contingency_ppm, state, since, spend, topups, split_total")


class AccountStore:
    """Accounts, payments, refunds and host settings; one transaction per change."""

    def __init__(self, path: Path | str) -> None:
        self.conn = open_db(path)
        with self.conn:
            self.conn.executescript(_SCHEMA)
            have = {r[1] for r in self.conn.execute("PRAGMA table_info(accounts)")}
            for name, definition in _NEW_COLUMNS.items():
                if name not in have:
                    self.conn.execute(f"ALTER TABLE accounts ADD COLUMN {name} {definition}")

    def close(self) -> None:
        self.conn.close()

    def get(self, account_id: str) -> Account | None:
        row = self.conn.execute(f"SELECT {_COLUMNS} FROM accounts WHERE id = ?",
                                (account_id,)).fetchone()
        return None if row is None else _from_row(row)

    def all(self) -> list[Account]:
        rows = self.conn.execute(f"SELECT {_COLUMNS} FROM accounts ORDER BY id").fetchall()
        return [_from_row(r) for r in rows]

    def by_holder(self, holder: bytes) -> list[Account]:
        rows = self.conn.execute(f"SELECT {_COLUMNS} FROM accounts WHERE holder = ? "
                                 "ORDER BY id", (holder,)).fetchall()
        return [_from_row(r) for r in rows]

    def commit(self, accounts: Iterable[Account], payments: Iterable[tuple[bytes, str, int]],
               refunds: Iterable[Refund], settings: Mapping[str, Any],
               paid: Iterable[RefundPaid] = ()) -> None:
        """Write a whole auctioneer step (accounts, new payments, new refunds, settings,
        refunds paid: ``done``, with the payment's certificate as their result) in one
        durable transaction."""
        rows = [_row(a) for a in accounts]
        done = list(paid)
        try:
            with self.conn:
                self.conn.executemany(
                    f"INSERT OR REPLACE INTO accounts ({_COLUMNS}) "
                    f"VALUES ({', '.join('?' * len(_COLUMNS.split(',')))})", rows)
                self.conn.executemany(
                    "INSERT INTO payments (id, account_id, amount) VALUES (?, ?, ?)",
                    list(payments))
                self.conn.executemany(
                    "INSERT INTO refunds (id, account_id, holder, amount, memo, status, "
                    "result, created_us) VALUES (?, ?, ?, ?, ?, ?, NULL, ?)",
                    [(r.refund_id, r.account_id, r.holder, r.amount, r.memo, r.status,
                      r.created_us) for r in refunds])
                self.conn.executemany(
                    "INSERT INTO refunds_paid (refund_id, payment_id) VALUES (?, ?)",
                    [(p.refund_id, p.payment_id) for p in done])
                self.conn.executemany(
                    "UPDATE refunds SET status = 'done', result = ? WHERE id = ?",
                    [(pack(dict(p.payment)), p.refund_id) for p in done])
                self.conn.executemany(
                    "INSERT OR REPLACE INTO settings (key, value) VALUES (?, ?)",
                    [(k, pack(v)) for k, v in settings.items()])
        except sqlite3.IntegrityError as exc:
            raise HostError("account store refused the change", str(exc)) from None

    def payments(self) -> list[tuple[bytes, str, int]]:
        """Every payment ``(id, account_id, amount)`` in the order they were recorded."""
        return _ordered_payments(self.conn)

    def refunds(self) -> list[Refund]:
        """Every refund in the order they were recorded."""
        return _ordered_refunds(self.conn)

    def refunds_paid(self) -> list[tuple[str, bytes]]:
        """Every refund paid ``(refund id, SEND entry hash)``, in the order they were."""
        rows = self.conn.execute(
            "SELECT refund_id, payment_id FROM refunds_paid ORDER BY rowid").fetchall()
        return [(str(r), bytes(p)) for r, p in rows]

    def delete(self, account_id: str) -> None:
        with self.conn:
            self.conn.execute("DELETE FROM accounts WHERE id = ?", (account_id,))

    # -- refunds -------------------------------------------------------------------

    def refund(self, refund_id: str) -> Refund | None:
        row = self.conn.execute(
            "SELECT id, account_id, holder, amount, memo, status, result, created_us "
            "FROM refunds WHERE id = ?", (refund_id,)).fetchone()
        return None if row is None else _refund(row)

    def pending_refunds(self) -> list[Refund]:
        rows = self.conn.execute(
            "SELECT id, account_id, holder, amount, memo, status, result, created_us "
            "FROM refunds WHERE status = 'pending' ORDER BY created_us, id").fetchall()
        return [_refund(r) for r in rows]

    # -- host settings -------------------------------------------------------------

    def settings(self) -> dict[str, Any]:
        return {str(k): unpack(bytes(v)) for k, v in
                self.conn.execute("SELECT key, value FROM settings ORDER BY key")}


def _refund(row: tuple[Any, ...]) -> Refund:
    rid, account_id, holder, amount, memo, status, result, created = row
    return Refund(str(rid), str(account_id), bytes(holder), int(amount), str(memo),
                  str(status), None if result is None else unpack(bytes(result)),
                  int(created))


def _row(a: Account) -> tuple[Any, ...]:
    """An account as the values of ``_COLUMNS``."""
    return (a.account_id, a.holder, a.fund, a.interval_end_us, pack(terms_to_doc(a.bids)),
            pack(dict(a.allocation)), a.created_us,
            None if a.lease is None else pack(dict(a.lease)), a.contingency,
            a.contingency_ppm, a.state, a.since, a.spend,
            pack(dict(a.topups)) if a.topups else None, a.split_total)


def _from_row(row: tuple[Any, ...]) -> Account:
    (account_id, holder, fund, end, bids, allocation, created, lease, contingency, cppm,
     state, since, spend, topups, split_total) = row
    return Account(
        account_id=account_id, holder=bytes(holder), fund=int(fund),
        interval_end_us=int(end), created_us=int(created),
        bids=terms_from_doc(unpack(bids)),
        allocation={str(k): int(v) for k, v in unpack(allocation).items()},
        lease=None if lease is None else unpack(lease), contingency=int(contingency),
        contingency_ppm=int(cppm), state=str(state), since=int(since), spend=int(spend),
        topups={} if topups is None else {str(k): int(v) for k, v in unpack(topups).items()},
        split_total=int(split_total))


def _ordered_payments(conn: sqlite3.Connection) -> list[tuple[bytes, str, int]]:
    rows = conn.execute("SELECT id, account_id, amount FROM payments ORDER BY rowid").fetchall()
    return [(bytes(i), str(a), int(n)) for i, a, n in rows]


def _ordered_refunds(conn: sqlite3.Connection) -> list[Refund]:
    rows = conn.execute(
        "SELECT id, account_id, holder, amount, memo, status, result, created_us "
        "FROM refunds ORDER BY rowid").fetchall()
    return [_refund(r) for r in rows]
