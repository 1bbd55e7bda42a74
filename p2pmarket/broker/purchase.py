"""Buying tickets from a broker: what a buyer (``p2pmarket reserve``) and a broker buying
upstream both do. Ask ``broker.quote``, pay the price with a certified SEND whose memo
names the request, hand the payment to ``broker.buy``, and verify every ticket received
offline against its site's key (:func:`sharp.claims.check_ticket`): ours as the final
holder, the rset and term asked.

``on_paid`` is called with the payment before it is handed over, so a caller can keep
it durably (a broker's retry with the same payment gets the same tickets).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from p2pmarket.api.client import PeerClient
from p2pmarket.broker.policy import BrokerError, Item
from p2pmarket.broker.requests import memo_for, request_args, request_digest
from p2pmarket.ledger.certificate import Certificate
from p2pmarket.sharp.claims import Term, Ticket, TicketError, check_ticket

Pay = Callable[[bytes, int, str], Awaitable[Certificate]]


@dataclass(frozen=True)
class Bought:
    tickets: list[Ticket]
    price: int
    payment: Certificate


def verify_bought(tickets_wire: Any, holder: bytes, items: Sequence[Item], term: Term
                  ) -> list[Ticket]:
    """The tickets a broker answered, each checked against its item (raises
    :class:`BrokerError`, value ``bad_ticket``)."""
    if not isinstance(tickets_wire, list) or len(tickets_wire) != len(items):
        raise BrokerError("the broker answered another number of tickets", "bad_ticket")
    out = []
    for item, wire in zip(items, tickets_wire, strict=True):
        try:
            ticket = Ticket.from_wire(wire)
            check_ticket(ticket, item.site)
        except TicketError as exc:
            raise BrokerError(f"the broker's ticket is invalid: {exc.message}",
                              "bad_ticket") from None
        if ticket.holder != holder or ticket.rset.rtype != item.rtype \
                or ticket.rset.count != item.count or ticket.term != term:
            raise BrokerError("the broker's ticket is not the one asked for", "bad_ticket")
        out.append(ticket)
    return out


async def quote(client: PeerClient, url: str, broker: bytes, items: Sequence[Item],
                term: Term) -> int:
    got = await client.call(url, broker, "broker.quote", request_args(items, term))
    price = got.get("price")
    if not isinstance(price, int) or isinstance(price, bool) or price < 1:
        raise BrokerError("the broker quoted no price", "bad_quote")
    return price


async def buy_tickets(client: PeerClient, pay: Pay, url: str, broker: bytes,
                      items: Sequence[Item], term: Term, max_price: int | None = None,
                      on_paid: Callable[[Certificate, int], None] | None = None) -> Bought:
    """Quote, pay, buy and verify (module docstring)."""
    price = await quote(client, url, broker, items, term)
    if max_price is not None and price > max_price:
        raise BrokerError(f"the broker asks {price} µc, more than {max_price}", "too_dear")
    memo = memo_for(request_digest(client.identity.public_key, items, term))
    cert = await pay(broker, price, memo)
    if on_paid is not None:
        on_paid(cert, price)
    return await hand_over(client, url, broker, items, term, cert, price)


async def hand_over(client: PeerClient, url: str, broker: bytes, items: Sequence[Item],
                    term: Term, cert: Certificate, price: int) -> Bought:
    """``broker.buy`` with a payment made already (also the retry after a crash)."""
    got = await client.call(url, broker, "broker.buy",
                            {**request_args(items, term), "payment": cert.to_wire()})
    tickets = verify_bought(got.get("tickets"), client.identity.public_key, items, term)
    return Bought(tickets, price, cert)


__all__ = ["Bought", "Pay", "buy_tickets", "hand_over", "quote", "verify_bought"]
