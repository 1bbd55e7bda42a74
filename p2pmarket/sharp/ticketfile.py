"""The ticket file, pure: tickets as a user keeps and hands them on (docs/design.md
section 10).

JSON, so it can be mailed and read::

    {"format": "p2pmarket-tickets/1",
     "tickets": ["<hex of the canonical msgpack of a ticket's wire form>", ...]}

``p2pmarket host delegate --out FILE`` writes one; ``p2pmarket broker add-ticket FILE``
reads one. Reading checks the shape of every ticket (:meth:`Ticket.from_wire`), not
its rules: :func:`p2pmarket.sharp.claims.check_ticket` does that with the site's key.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from p2pmarket.core.wire import WireError, pack, unpack
from p2pmarket.sharp.claims import Ticket, TicketError

FORMAT = "p2pmarket-tickets/1"
MAX_FILE_BYTES = 4 * 1024 * 1024


def encode_tickets(tickets: Sequence[Ticket]) -> bytes:
    doc = {"format": FORMAT, "tickets": [pack(t.to_wire()).hex() for t in tickets]}
    return json.dumps(doc, indent=2).encode() + b"\n"


def decode_tickets(data: bytes) -> list[Ticket]:
    """The tickets of a ticket file (raises :class:`TicketError` if it is not one)."""
    if len(data) > MAX_FILE_BYTES:
        raise TicketError("a ticket file is at most 4 MiB", {"rule": "shape"})
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise TicketError("a ticket file is JSON", {"rule": "shape"}) from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT \
            or not isinstance(doc.get("tickets"), list):
        raise TicketError(f"not a ticket file (format {FORMAT})", {"rule": "shape"})
    out = []
    for n, text in enumerate(doc["tickets"]):
        try:
            out.append(Ticket.from_wire(unpack(bytes.fromhex(text))))
        except (TypeError, ValueError, WireError):
            raise TicketError(f"ticket {n} of the file is not hex msgpack",
                              {"rule": "shape", "ticket": n}) from None
    return out


__all__ = ["FORMAT", "decode_tickets", "encode_tickets"]
