"""Host accounts and their sqlite store (WAL + synchronous=FULL via :func:`open_db`).

An account is the buyer's money and bids at one host: its holder's public key,
fund (micro-credits), interval end (µs), bids per resource (absolute base
units, weight in ppm), the current allocation and the current signed lease.
:meth:`AccountStore.put_many` commits before returning, so a change is durable
before the RPC that made it is acknowledged.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from p2pmarket.files import open_db
from p2pmarket.host import HostError
from p2pmarket.host.allocator import AccountState, Bid
from p2pmarket.wire import pack, unpack

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
"""


@dataclass(frozen=True)
class Account:
    account_id: str
    holder: bytes
    fund: int
    interval_end_us: int
    created_us: int
    bids: Mapping[str, Bid] = field(default_factory=dict)
    allocation: Mapping[str, int] = field(default_factory=dict)
    lease: Mapping[str, Any] | None = None   # the lease envelope's wire form

    def state(self) -> AccountState:
        """What the pure allocator needs."""
        return AccountState(self.account_id, self.fund, self.interval_end_us, self.bids)


@dataclass(frozen=True)
class Payment:
    """A verified payment to this host: its unique id (e.g. the SEND entry's hash) and
    amount. The store records which account each payment funded, in the same
    transaction as the account itself, so a payment funds exactly one account once and
    a retry after a crash finds out what happened to it."""

    payment_id: bytes
    amount: int


def bids_to_doc(bids: Mapping[str, Bid]) -> dict[str, list[int]]:
    """``{res: [weight_ppm, min, max]}``: the stored (and wire) form of resolved bids."""
    return {res: [b.weight_ppm, b.min, b.max] for res, b in sorted(bids.items())}


def bids_from_doc(doc: Any) -> dict[str, Bid]:
    return {str(res): Bid(int(v[0]), int(v[1]), int(v[2])) for res, v in doc.items()}


class AccountStore:
    """Accounts in sqlite, one transaction per logical change."""

    def __init__(self, path: Path | str) -> None:
        self.conn = open_db(path)
        with self.conn:
            self.conn.executescript(_SCHEMA)

    def close(self) -> None:
        self.conn.close()

    def get(self, account_id: str) -> Account | None:
        row = self.conn.execute(
            "SELECT id, holder, fund, interval_end_us, bids, allocation, created_us, lease "
            "FROM accounts WHERE id = ?", (account_id,)).fetchone()
        return None if row is None else _from_row(row)

    def all(self) -> list[Account]:
        rows = self.conn.execute(
            "SELECT id, holder, fund, interval_end_us, bids, allocation, created_us, lease "
            "FROM accounts ORDER BY id").fetchall()
        return [_from_row(r) for r in rows]

    def by_holder(self, holder: bytes) -> list[Account]:
        rows = self.conn.execute(
            "SELECT id, holder, fund, interval_end_us, bids, allocation, created_us, lease "
            "FROM accounts WHERE holder = ? ORDER BY id", (holder,)).fetchall()
        return [_from_row(r) for r in rows]

    def put(self, account: Account) -> None:
        self.put_many([account])

    def payment_account(self, payment_id: bytes) -> str | None:
        """The account that ``payment_id`` funded, if any."""
        row = self.conn.execute("SELECT account_id FROM payments WHERE id = ?",
                                (payment_id,)).fetchone()
        return None if row is None else str(row[0])

    def put_many(self, accounts: Iterable[Account],
                 payment: tuple[Payment, str] | None = None) -> None:
        """Insert or replace ``accounts`` (and record ``payment`` as funding the named
        account) in one durable transaction."""
        rows = [(a.account_id, a.holder, a.fund, a.interval_end_us,
                 pack(bids_to_doc(a.bids)), pack(dict(a.allocation)), a.created_us,
                 None if a.lease is None else pack(dict(a.lease))) for a in accounts]
        try:
            with self.conn:
                self.conn.executemany(
                    "INSERT OR REPLACE INTO accounts (id, holder, fund, interval_end_us, bids, "
                    "allocation, created_us, lease) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
                if payment is not None:
                    pay, account_id = payment
                    self.conn.execute(
                        "INSERT INTO payments (id, account_id, amount) VALUES (?, ?, ?)",
                        (pay.payment_id, account_id, pay.amount))
        except sqlite3.IntegrityError as exc:
            raise HostError("account store refused the change", str(exc)) from None

    def delete(self, account_id: str) -> None:
        with self.conn:
            self.conn.execute("DELETE FROM accounts WHERE id = ?", (account_id,))


def _from_row(row: tuple[Any, ...]) -> Account:
    account_id, holder, fund, end, bids, allocation, created, lease = row
    return Account(
        account_id=account_id, holder=bytes(holder), fund=int(fund),
        interval_end_us=int(end), created_us=int(created),
        bids=bids_from_doc(unpack(bids)),
        allocation={str(k): int(v) for k, v in unpack(allocation).items()},
        lease=None if lease is None else unpack(lease))
