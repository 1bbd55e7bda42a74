"""A wallet's tickets (``tickets.json`` in the wallet dir, beside ``leases.json``).

One record per ticket, keyed by its final claim id (hex)::

    {state, broker (key hex), broker_url, site (key hex), type, count, start, end,
     ticket (hex msgpack of the wire form), lease_id?, proof (hex)?, refund?}

``state``: ``held`` (bought, not redeemed), ``redeemed`` (a lease came back:
``lease_id``), ``rejected`` (the site refused it: ``proof`` when it named an agent),
``replaced`` (the broker gave another ticket for it), ``refunded`` (the broker paid it
back). :func:`ticket_state` adds ``expired`` for a held or rejected ticket past its
term. A purchase paid but not answered yet is kept under ``pending`` with its payment,
so the next ``reserve`` hands it to the broker again (same payment: same tickets).
Every change is written (atomically) before the next step.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from p2pmarket.client.walletdir import WalletDir, read_map, write_map
from p2pmarket.core.wire import pack
from p2pmarket.sharp.claims import Ticket


def tickets_path(wdir: WalletDir) -> Path:
    return wdir.root / "tickets.json"


@dataclass(frozen=True)
class TicketBook:
    wdir: WalletDir

    def all(self) -> dict[str, dict[str, Any]]:
        doc = read_map(tickets_path(self.wdir))
        return {k: v for k, v in doc.items() if k != "pending" and isinstance(v, dict)}

    def pending(self) -> dict[str, dict[str, Any]]:
        doc = read_map(tickets_path(self.wdir)).get("pending", {})
        return doc if isinstance(doc, dict) else {}

    def _write(self, tickets: dict[str, Any], pending: dict[str, Any]) -> None:
        write_map(tickets_path(self.wdir), {**tickets, "pending": pending})

    def set_pending(self, memo: str, record: dict[str, Any] | None) -> None:
        pending = self.pending()
        if record is None:
            pending.pop(memo, None)
        else:
            pending[memo] = record
        self._write(self.all(), pending)

    def add(self, ticket: Ticket, broker: bytes, broker_url: str) -> str:
        key = ticket.final.claim_id.hex()
        self.update(key, {"state": "held", "broker": broker.hex(), "broker_url": broker_url,
                          "site": ticket.site.hex(), "type": ticket.rset.rtype,
                          "count": ticket.rset.count, "start": ticket.term.start,
                          "end": ticket.term.end, "ticket": pack(ticket.to_wire()).hex()})
        return key

    def update(self, key: str, fields: dict[str, Any]) -> None:
        tickets = self.all()
        tickets[key] = {**tickets.get(key, {}), **fields}
        self._write(tickets, self.pending())


def ticket_state(record: dict[str, Any], now: int) -> str:
    state = str(record.get("state", "held"))
    if state in ("held", "rejected") and int(record.get("end", 0)) <= now:
        return "expired"
    return state


__all__ = ["TicketBook", "ticket_state", "tickets_path"]
