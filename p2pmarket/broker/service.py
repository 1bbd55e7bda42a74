"""A node as a broker (agent, docs/design.md section 10): its peer RPCs, control calls
and ticket adverts. Decisions are :mod:`p2pmarket.broker.policy`'s; state is
:mod:`p2pmarket.broker.store`'s; this module only checks inputs, moves money and
bytes.

Peer RPCs (``broker.*``; a node that is not a broker answers ``not_broker``):

- ``offers {}``: its key, prices, oversubscription degree and what it sells now.
- ``quote {items, start, end}``: the posted price of a purchase, and the memo its
  payment must carry; refused (``sold_out``) if it does not fit now.
- ``buy {items, start, end, payment}``: the payment (a certified SEND to the broker)
  is checked first (memo, amount, payer), then taken like a host takes a buyer's
  (``accept_payment``: certificate verified offline, RECV appended durably), the
  sub-tickets delegated (:meth:`sharp.claims.Ticket.delegate`, holder: the caller) and
  recorded with the payment before they are returned. The same payment again for the
  same request gives the same tickets; for anything else it is refused
  (``payment_used``). A valid payment for a purchase that no longer fits is refunded
  at once (the error's value carries the refund's certificate).
- ``replace {ticket, proof}``: a site's conflict proof naming this broker, and the
  rejected ticket (one this broker sold to the caller, whose final claim the proof
  holds): a new ticket from real room elsewhere, or the money back (``refund``).

Adverts: while enabled, per priced resource type an advert in ``tickets/<type>``
(:mod:`p2pmarket.dht.ticketads`), republished when a sale or setting changes it and
before it expires.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

from p2pmarket.api.client import PeerClient
from p2pmarket.api.rpc import CallContext, Handler
from p2pmarket.broker import policy
from p2pmarket.broker.policy import BrokerError, Item, Sale
from p2pmarket.broker.purchase import Pay, buy_tickets
from p2pmarket.broker.requests import (
    items_wire,
    memo_for,
    parse_items,
    parse_request,
    parse_term,
    request_digest,
)
from p2pmarket.broker.store import BrokerStore, PaymentRow
from p2pmarket.core.clock import now_us
from p2pmarket.core.errors import P2PMarketError
from p2pmarket.core.identity import Identity
from p2pmarket.core.wire import unpack
from p2pmarket.dht.node import DhtNode
from p2pmarket.dht.ticketads import MAX_SITES, SiteAmount
from p2pmarket.dht.ticketquery import publish_ticket_ad
from p2pmarket.ledger.certificate import Certificate
from p2pmarket.sharp.claims import Rset, Ticket, TicketError, check_ticket
from p2pmarket.sharp.proof import verify_conflict

log = logging.getLogger(__name__)

AcceptPayment = Callable[[bytes, dict[str, Any]], Awaitable[Any]]
RefundPayment = Callable[[bytes, int, str], Awaitable[dict[str, Any]]]
REQUEST_LIMITS = {"buy": 64 * 1024, "replace": 64 * 1024, "quote": 8 * 1024,
                  "offers": 1024}
ADVERT_RETRY_S = 5.0


class Broker:
    def __init__(self, identity: Identity, store: BrokerStore, *,
                 accept_payment: AcceptPayment, refund_payment: RefundPayment, pay: Pay,
                 peers: PeerClient, dht: DhtNode | None,
                 clock: Callable[[], int] = now_us) -> None:
        self.identity = identity
        self.store = store
        self.accept_payment = accept_payment
        self.refund_payment = refund_payment
        self.pay = pay
        self.peers = peers
        self.dht = dht
        self.clock = clock
        self.changed = asyncio.Event()
        self.advertised = asyncio.Event()
        self._lock = asyncio.Lock()

    # -- settings -------------------------------------------------------------------

    @property
    def enabled(self) -> bool:
        return bool(self.store.setting("enabled", False))

    @property
    def oversub_ppm(self) -> int:
        return int(self.store.setting("oversub_ppm", 0))

    def enable(self, on: bool = True) -> None:
        self.store.set_setting("enabled", on)
        self.changed.set()

    def set_price(self, rtype: str, price: int) -> None:
        if not isinstance(price, int) or isinstance(price, bool) or not 1 <= price <= 1 << 62:
            raise BrokerError("a price is 1..2^62 µc per unit-hour", "price")
        try:
            Rset(rtype, 1)
        except TicketError:
            raise BrokerError(f"bad resource type {rtype!r:.40}", "type") from None
        self.store.set_setting("prices", {**self.store.prices(), rtype: price})
        self.changed.set()

    def set_oversubscription(self, ppm: int) -> None:
        self.store.set_setting("oversub_ppm", policy.check_oversub(ppm))
        self.changed.set()

    def add_ticket(self, wire: Any) -> Ticket:
        """Hold a ticket whose final holder is this broker (checked offline)."""
        try:
            ticket = Ticket.from_wire(wire)
            check_ticket(ticket)
        except TicketError as exc:
            raise BrokerError(f"invalid ticket: {exc.message}", exc.value) from None
        if ticket.holder != self.identity.public_key:
            raise BrokerError("the ticket is held by another key than this broker's",
                              "not_holder")
        if ticket.term.end <= self.clock():
            raise BrokerError("the ticket's term is over", "expired")
        self.store.add_holding(ticket, self.clock())
        self.changed.set()
        return ticket

    def _require(self) -> None:
        if not self.enabled:
            raise BrokerError("this node is not a broker", "not_broker")

    # -- peer RPCs ------------------------------------------------------------------

    def handlers(self) -> dict[str, Handler]:
        return {"offers": self._offers, "quote": self._quote, "buy": self._buy,
                "replace": self._replace}

    async def _offers(self, ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        self._require()
        return {"broker": self.identity.public_key, "prices": self.store.prices(),
                "oversubscription_ppm": self.oversub_ppm, "offers": self._offer_docs()}

    def _offer_docs(self) -> list[dict[str, Any]]:
        return [{"site": o.site, "type": o.rtype, "amount": o.amount, "start": o.term.start,
                 "end": o.term.end}
                for o in policy.offers(self.store.holdings(), self.store.sales(),
                                       self.oversub_ppm, self.clock())]

    async def _quote(self, ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        self._require()
        items, term = parse_request(args)
        price = policy.price_of(items, term, self.store.prices())
        policy.allocate(self.store.holdings(), self.store.sales(), items, term,
                        self.oversub_ppm)
        return {"price": price, "memo": memo_for(request_digest(ctx.sender, items, term))}

    async def _buy(self, ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        self._require()
        items, term = parse_request(args)
        doc = args.get("payment")
        if not isinstance(doc, dict):
            raise BrokerError("payment must be a certificate", "payment")
        cert = Certificate.from_wire(doc)
        digest = request_digest(ctx.sender, items, term)
        async with self._lock:
            pid = cert.entry.hash()
            prev = self.store.payment(pid)
            if prev is not None:
                if prev.digest == digest and prev.payer == ctx.sender:
                    return {"tickets": prev.tickets, "price": prev.amount}
                raise BrokerError("this payment was used already", "payment_used")
            body = cert.entry.body
            if cert.entry.kind != "SEND" or body.get("to") != self.identity.public_key:
                raise BrokerError("the payment is not a transfer to this broker", "payment")
            if body.get("memo") != memo_for(digest):
                raise BrokerError("the payment's memo does not name this purchase", "memo")
            price = policy.price_of(items, term, self.store.prices())
            amount = body.get("amount")
            if not isinstance(amount, int) or isinstance(amount, bool):
                raise BrokerError("the payment's amount is not an integer", "payment")
            if amount < price:
                raise BrokerError(f"the payment ({amount} µc) is below the price ({price} µc)",
                                  {"price": price})
            if term.end <= self.clock():
                raise BrokerError("the term is over", "expired")
            await self.accept_payment(ctx.sender, doc)   # verified, recorded: ours now
            try:
                chosen = policy.allocate(self.store.holdings(), self.store.sales(), items,
                                         term, self.oversub_ppm)
            except BrokerError as exc:
                refund = await self.refund_payment(ctx.sender, amount,
                                                   f"broker-refund:{pid.hex()}")
                raise BrokerError(f"{exc.message}; the payment is refunded",
                                  {"reason": exc.value, "refund": refund}) from None
            sold = []
            for item, holding in zip(items, chosen, strict=True):
                ticket = holding.ticket.delegate(self.identity, ctx.sender,
                                                 Rset(item.rtype, item.count), term,
                                                 os.urandom(16))
                sold.append((Sale(ticket.final.claim_id, holding.claim_id, item.count, term),
                             ticket))
            wires = [t.to_wire() for _, t in sold]
            self.store.record_sale(
                PaymentRow(pid, ctx.sender, amount, digest,
                           {"items": items_wire(items), "start": term.start, "end": term.end},
                           wires), sold, ctx.sender, self.clock())
        self.changed.set()
        return {"tickets": wires, "price": amount}

    async def _replace(self, ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        self._require()
        proof = args.get("proof")
        if not isinstance(proof, bytes) or len(proof) > 60_000:
            raise BrokerError("proof must be the site's conflict proof (bytes)", "proof")
        try:
            summary = verify_conflict(unpack(proof))
            ticket = Ticket.from_wire(args.get("ticket"))
        except P2PMarketError as exc:   # TicketError, or unpack's WireError
            raise BrokerError(f"invalid proof or ticket: {exc.message}", "proof") from None
        if summary.agent != self.identity.public_key:
            raise BrokerError("the proof names another agent", "not_ours")
        final = ticket.final.claim_id
        if final not in summary.claim_ids:
            raise BrokerError("the proof is not about this ticket", "not_in_proof")
        async with self._lock:
            row = self.store.sale(final)
            if row is None or row.buyer != ctx.sender:
                raise BrokerError("this broker sold no such ticket to the caller", "not_sold")
            if row.sale.parent != summary.parent:
                raise BrokerError("the proof is about another claim", "not_in_proof")
            if row.state == "replaced":
                return {"tickets": [row.outcome]}
            if row.state == "refunded":
                return {"refund": row.outcome}
            if row.state == "sold":
                holding = policy.replacement(self.store.holdings(), self.store.sales(),
                                             row.sale, summary.parent)
                if holding is not None:
                    new = holding.ticket.delegate(self.identity, ctx.sender,
                                                  row.ticket.rset, row.ticket.term,
                                                  os.urandom(16))
                    self.store.replace_sale(final, Sale(new.final.claim_id, holding.claim_id,
                                                        row.sale.count, row.sale.term),
                                            new, ctx.sender, row.payment, row.item)
                    self.changed.set()
                    return {"tickets": [new.to_wire()]}
                self.store.mark_refunding(final)
            paid = self.store.payment(row.payment)
            assert paid is not None
            items = parse_items(paid.request["items"])
            amount = policy.refund_share(paid.amount, items, parse_term(paid.request),
                                         self.store.prices(), row.item)
            cert = await self.refund_payment(ctx.sender, amount,
                                             f"broker-refund:{final.hex()}")
            self.store.refund_sale(final, cert)
        self.changed.set()
        return {"refund": cert}

    # -- buying upstream ------------------------------------------------------------

    async def buy_upstream(self, url: str, broker: bytes, items: list[Item],
                           start: int, end: int) -> list[Ticket]:
        """Buy tickets from another broker with this node's money and hold them."""
        term = parse_term({"start": start, "end": end})
        bought = await buy_tickets(self.peers, self.pay, url, broker, items, term)
        for ticket in bought.tickets:
            self.store.add_holding(ticket, self.clock())
        self.changed.set()
        return bought.tickets

    # -- adverts --------------------------------------------------------------------

    async def publish(self) -> int:
        """Publish an advert per priced type that has something on sale; returns how
        many were published."""
        if self.dht is None or not self.enabled:
            return 0
        prices = self.store.prices()
        by_type: dict[str, list[SiteAmount]] = {}
        for o in policy.offers(self.store.holdings(), self.store.sales(), self.oversub_ppm,
                               self.clock()):
            if o.rtype in prices:
                by_type.setdefault(o.rtype, []).append(
                    SiteAmount(o.site, o.amount, o.term.start, o.term.end))
        for rtype, sites in by_type.items():
            await publish_ticket_ad(self.dht, rtype, sites[:MAX_SITES], prices[rtype])
        self.advertised.set()
        return len(by_type)

    async def run(self) -> None:
        """Keep the adverts current: at once, on every change, and before they expire
        (a failed publication is retried after :data:`ADVERT_RETRY_S`)."""
        loop = asyncio.get_running_loop()
        every = (self.dht.ttl_us / 2.5 / 1e6) if self.dht is not None else 600.0
        due = loop.time()
        while True:
            if self.changed.is_set() or loop.time() >= due:
                self.changed.clear()
                try:
                    await self.publish()
                    due = loop.time() + every
                except Exception as exc:
                    log.warning("publishing ticket adverts failed: %s", exc,
                                extra={"event": "broker.advert_failed"})
                    due = loop.time() + ADVERT_RETRY_S
            # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancel that
            # lands as the event is set, and the node's stop would wait forever
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(due):
                    await self.changed.wait()

    # -- control API ----------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        now = self.clock()
        sales = self.store.sales()
        return {
            "enabled": self.enabled, "key": self.identity.public_key,
            "prices": self.store.prices(), "oversubscription_ppm": self.oversub_ppm,
            "pricing": "posted prices per unit-hour (no auction)",
            "holdings": [{"claim_id": h.claim_id, "site": h.site, "type": h.rset.rtype,
                          "count": h.rset.count, "start": h.term.start, "end": h.term.end,
                          "promised_peak": policy.promised(h, sales, h.term),
                          "hops": len(h.ticket.claims)}
                         for h in self.store.holdings()],
            "offers": self._offer_docs(), "sales": dict(self.store.counts()), "now": now}

    def control_handlers(self) -> dict[str, Any]:
        async def status(args: dict[str, Any]) -> dict[str, Any]:
            return self.status()

        async def add_ticket(args: dict[str, Any]) -> dict[str, Any]:
            ticket = self.add_ticket(unpack(_hex(args.get("ticket"), "ticket")))
            return {"claim_id": ticket.final.claim_id, "site": ticket.site,
                    "type": ticket.rset.rtype, "count": ticket.rset.count}

        async def set_price(args: dict[str, Any]) -> dict[str, Any]:
            self.set_price(str(args.get("type")), args.get("price"))  # type: ignore[arg-type]
            return {"prices": self.store.prices()}

        async def set_oversub(args: dict[str, Any]) -> dict[str, Any]:
            self.set_oversubscription(args.get("ppm"))  # type: ignore[arg-type]
            return {"oversubscription_ppm": self.oversub_ppm}

        async def enable(args: dict[str, Any]) -> dict[str, Any]:
            self.enable(bool(args.get("on", True)))
            return {"enabled": self.enabled}

        async def upstream(args: dict[str, Any]) -> dict[str, Any]:
            key = _hex(args.get("broker"), "broker")
            raw = args.get("items")
            items = parse_items([{**i, "site": _hex(i.get("site"), "site")}
                                 for i in raw if isinstance(i, dict)]
                                if isinstance(raw, list) else raw)
            tickets = await self.buy_upstream(str(args.get("url")), key, items,
                                              args.get("start"), args.get("end"))  # type: ignore[arg-type]
            return {"tickets": [t.to_wire() for t in tickets]}

        return {"broker_status": status, "broker_add_ticket": add_ticket,
                "broker_set_price": set_price, "broker_set_oversubscription": set_oversub,
                "broker_enable": enable, "broker_buy_upstream": upstream}


def _hex(value: object, name: str) -> bytes:
    """A control argument given in hex (the control API speaks JSON)."""
    try:
        return bytes.fromhex(str(value))
    except ValueError:
        raise BrokerError(f"{name} must be hex", name) from None


__all__ = ["REQUEST_LIMITS", "Broker"]
