"""A broker's state in sqlite (``broker.sqlite`` in the node's data dir; WAL and
synchronous=FULL via :func:`~p2pmarket.core.files.open_db`): its settings, the tickets
it holds, the sub-tickets it sold and the payments it took.

Every write commits before it returns, so what the broker acknowledges is durable: a
held ticket before ``broker add-ticket`` answers, a sale with its payment (one
transaction) before ``broker.buy`` hands out the tickets, a replacement or refund
before ``broker.replace`` answers. A payment (the SEND entry's hash) is recorded once:
the same request paid by it again gets the same tickets; any other use is refused.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from p2pmarket.broker.policy import BrokerError, Holding, Sale
from p2pmarket.core.files import open_db, require_format
from p2pmarket.core.wire import pack, unpack
from p2pmarket.sharp.claims import Term, Ticket

STORE = "broker"
VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS settings (name TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS holdings (
    claim_id BLOB PRIMARY KEY,
    ticket BLOB NOT NULL,
    added_us INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS sales (
    claim_id BLOB PRIMARY KEY,
    parent BLOB NOT NULL,
    buyer BLOB NOT NULL,
    count INTEGER NOT NULL,
    start_us INTEGER NOT NULL,
    end_us INTEGER NOT NULL,
    ticket BLOB NOT NULL,
    payment BLOB NOT NULL,
    item INTEGER NOT NULL,
    state TEXT NOT NULL,
    outcome BLOB
);
CREATE TABLE IF NOT EXISTS payments (
    id BLOB PRIMARY KEY,
    payer BLOB NOT NULL,
    amount INTEGER NOT NULL,
    digest BLOB NOT NULL,
    request BLOB NOT NULL,
    tickets BLOB NOT NULL,
    created_us INTEGER NOT NULL
);
"""


@dataclass(frozen=True)
class SaleRow:
    sale: Sale
    buyer: bytes
    ticket: Ticket
    payment: bytes
    item: int
    state: str           # sold, replaced, refunded
    outcome: Any         # the replacement ticket's wire, or the refund certificate


@dataclass(frozen=True)
class PaymentRow:
    payment_id: bytes
    payer: bytes
    amount: int
    digest: bytes
    request: Any
    tickets: list[Any]


class BrokerStore:
    def __init__(self, path: Path | str) -> None:
        self.conn = open_db(path)
        require_format(self.conn, STORE, VERSION, ("holdings", "sales"),
                       "the broker store is new")
        with self.conn:
            self.conn.executescript(_SCHEMA)

    def close(self) -> None:
        self.conn.close()

    # -- settings ------------------------------------------------------------------

    def setting(self, name: str, default: Any = None) -> Any:
        row = self.conn.execute("SELECT value FROM settings WHERE name = ?",
                                (name,)).fetchone()
        return default if row is None else unpack(row[0])

    def set_setting(self, name: str, value: Any) -> None:
        with self.conn:
            self.conn.execute("INSERT OR REPLACE INTO settings (name, value) VALUES (?, ?)",
                              (name, pack(value)))

    def prices(self) -> dict[str, int]:
        doc = self.setting("prices", {})
        return {str(k): int(v) for k, v in doc.items()}

    # -- holdings ------------------------------------------------------------------

    def add_holding(self, ticket: Ticket, now: int) -> bool:
        """Record a held ticket; False if it was held already."""
        with self.conn:
            cur = self.conn.execute(
                "INSERT OR IGNORE INTO holdings (claim_id, ticket, added_us) VALUES (?, ?, ?)",
                (ticket.final.claim_id, pack(ticket.to_wire()), now))
        return cur.rowcount == 1

    def holdings(self) -> list[Holding]:
        rows = self.conn.execute("SELECT ticket FROM holdings ORDER BY added_us, claim_id")
        return [Holding(Ticket.from_wire(unpack(r[0]))) for r in rows]

    # -- sales and payments --------------------------------------------------------

    def payment(self, payment_id: bytes) -> PaymentRow | None:
        row = self.conn.execute(
            "SELECT id, payer, amount, digest, request, tickets FROM payments WHERE id = ?",
            (payment_id,)).fetchone()
        if row is None:
            return None
        return PaymentRow(row[0], row[1], row[2], row[3], unpack(row[4]), unpack(row[5]))

    def record_sale(self, payment: PaymentRow, sold: Sequence[tuple[Sale, Ticket]],
                    buyer: bytes, now: int) -> None:
        """The payment and its sub-tickets, in one transaction; :class:`BrokerError`
        (``payment_used``) if the payment is recorded already."""
        try:
            with self.conn:
                self.conn.execute(
                    "INSERT INTO payments (id, payer, amount, digest, request, tickets, "
                    "created_us) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (payment.payment_id, payment.payer, payment.amount, payment.digest,
                     pack(payment.request), pack(payment.tickets), now))
                for i, (sale, ticket) in enumerate(sold):
                    self._insert_sale(sale, ticket, buyer, payment.payment_id, i)
        except sqlite3.IntegrityError:
            raise BrokerError("this payment was used already", "payment_used") from None

    def _insert_sale(self, sale: Sale, ticket: Ticket, buyer: bytes, payment: bytes,
                     item: int) -> None:
        self.conn.execute(
            "INSERT INTO sales (claim_id, parent, buyer, count, start_us, end_us, ticket, "
            "payment, item, state) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'sold')",
            (sale.claim_id, sale.parent, buyer, sale.count, sale.term.start, sale.term.end,
             pack(ticket.to_wire()), payment, item))

    def sales(self) -> list[Sale]:
        rows = self.conn.execute(
            "SELECT claim_id, parent, count, start_us, end_us, state FROM sales")
        return [Sale(r[0], r[1], r[2], Term(r[3], r[4]), r[5] == "sold") for r in rows]

    def sale(self, claim_id: bytes) -> SaleRow | None:
        row = self.conn.execute(
            "SELECT claim_id, parent, count, start_us, end_us, state, buyer, ticket, payment, "
            "item, outcome FROM sales WHERE claim_id = ?", (claim_id,)).fetchone()
        if row is None:
            return None
        sale = Sale(row[0], row[1], row[2], Term(row[3], row[4]), row[5] == "sold")
        return SaleRow(sale, row[6], Ticket.from_wire(unpack(row[7])), row[8], row[9],
                       row[5], None if row[10] is None else unpack(row[10]))

    def replace_sale(self, old: bytes, new: Sale, ticket: Ticket, buyer: bytes,
                     payment: bytes, item: int) -> None:
        """The rejected sale ``old`` replaced by ``new``, in one transaction."""
        with self.conn:
            self.conn.execute("UPDATE sales SET state = 'replaced', outcome = ? "
                              "WHERE claim_id = ? AND state = 'sold'",
                              (pack(ticket.to_wire()), old))
            self._insert_sale(new, ticket, buyer, payment, item)

    def refund_sale(self, old: bytes, cert: Any) -> None:
        with self.conn:
            self.conn.execute("UPDATE sales SET state = 'refunded', outcome = ? "
                              "WHERE claim_id = ?", (pack(cert), old))

    def mark_refunding(self, old: bytes) -> None:
        """The rejected sale stops counting before its refund is paid (a crash between
        the two is finished by the buyer's retry: the refund is idempotent per memo)."""
        with self.conn:
            self.conn.execute("UPDATE sales SET state = 'refunding' WHERE claim_id = ? "
                              "AND state = 'sold'", (old,))

    def counts(self) -> Mapping[str, int]:
        rows = self.conn.execute("SELECT state, COUNT(*) FROM sales GROUP BY state")
        return {str(r[0]): int(r[1]) for r in rows}
