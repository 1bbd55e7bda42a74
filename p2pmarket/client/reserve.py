"""The buyer's reservation (``p2pmarket reserve``, docs/design.md section 10): find
tickets in the DHT, pay a broker, verify the tickets, redeem them at the site, keep the
lease.

1. Read the ``tickets/<type>`` adverts of every wanted type and rank (broker, site)
   candidates (:mod:`p2pmarket.client.reservepick`; or use the broker given).
2. Buy from the first that sells (:func:`p2pmarket.broker.purchase.buy_tickets`: quote,
   a certified SEND whose memo names the request, ``broker.buy``, every ticket checked
   offline against the site's key). The purchase is kept in the wallet's ticket book
   (``tickets.json``) before paying and with its payment after, so an interrupted
   ``reserve`` hands the same payment to the broker again (same tickets).
3. Redeem the bundle at the site (host RPC ``redeem``, signed by us, the final holder).
   A refusal with a conflict proof is shown, the ticket marked ``rejected`` with the
   proof, and the broker asked for a replacement (``broker.replace``); a new ticket is
   redeemed again (at most :data:`MAX_REPLACEMENTS` times), a refund ends it.
4. Verify the lease against the site's key and store it with the wallet's leases.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from p2pmarket.api.client import PeerClient
from p2pmarket.auction.lease import Lease, verify_lease
from p2pmarket.broker.policy import BrokerError, Item
from p2pmarket.broker.purchase import buy_tickets, hand_over, verify_bought
from p2pmarket.broker.requests import memo_for, parse_items, request_digest
from p2pmarket.client.buyer import open_wallet
from p2pmarket.client.discovery import MarketView
from p2pmarket.client.netopts import ClientNet
from p2pmarket.client.reservepick import Candidate, candidates
from p2pmarket.client.ticketbook import TicketBook
from p2pmarket.client.walletdir import WalletDir
from p2pmarket.core.errors import P2PMarketError, RemoteError
from p2pmarket.core.identity import node_id_of
from p2pmarket.core.wire import pack, unpack
from p2pmarket.dht.ticketquery import read_ticket_ads
from p2pmarket.ledger.certificate import Certificate
from p2pmarket.sharp.claims import Term, Ticket

MAX_CANDIDATES = 4
MAX_REPLACEMENTS = 3


class ReserveError(P2PMarketError):
    """A reservation could not be made (``value`` says what happened to the money)."""


@dataclass(frozen=True)
class Reservation:
    broker: bytes
    site: bytes
    site_url: str
    tickets: list[Ticket]
    lease: Lease
    envelope: bytes
    price: int
    rejections: list[dict[str, Any]] = field(default_factory=list)


async def find_candidates(market: MarketView, wants: Mapping[str, int], term: Term
                          ) -> list[Candidate]:
    """Ranked (broker, site) candidates from the DHT's ticket adverts."""
    if market.gateway is not None:
        raise ReserveError("reading ticket adverts needs the DHT (not a gateway) for now")
    ads = {t: await read_ticket_ads(market.dht, t) for t in wants}
    return candidates(ads, wants, term)


async def site_url_of(market: MarketView, site: bytes) -> str:
    record = await market.reader.get_host(node_id_of(site))
    if record is None:
        raise ReserveError(f"no host record for site {node_id_of(site).hex()[:12]}")
    return record.url


async def reserve(wdir: WalletDir, wants: Mapping[str, int], term: Term, *,
                  net: ClientNet | None = None, max_price: int | None = None,
                  broker: tuple[str, bytes] | None = None, site: bytes | None = None,
                  site_url: str | None = None) -> Reservation:
    """Reserve ``wants`` (type -> count in base units) for ``term`` (module docstring).
    ``broker`` (url, key) and ``site`` skip the DHT's adverts; ``site_url`` its host
    record."""
    if not wants:
        raise ReserveError("a reservation wants at least one resource")
    if broker is not None:
        if site is None:
            raise ReserveError("a broker given needs the site too")
        items = tuple(Item(site, t, c) for t, c in wants.items())
        cands = [Candidate(broker[1], broker[0], site, items, 0)]
    if broker is None or site_url is None:
        async with MarketView(wdir.genesis(), net) as market:
            if broker is None:
                cands = (await find_candidates(market, wants, term))[:MAX_CANDIDATES]
                if not cands:
                    raise ReserveError("no broker advertises tickets for all of that",
                                       dict(wants))
            urls = {c.site: await site_url_of(market, c.site) for c in cands}
    else:
        urls = {site: site_url} if site is not None else {}
    book = TicketBook(wdir)
    async with open_wallet(wdir, net) as (wallet, client):
        await wallet.sync()   # incoming payments (and brokers' refunds) first, like buy
        await resume_purchases(client, book)
        tried: list[str] = []
        for cand in cands:
            try:
                tickets, price = await _buy(client, wallet.send, book, cand, term, max_price)
            except (BrokerError, RemoteError) as exc:
                tried.append(f"{cand.url}: {exc.message}")
                continue
            return await redeem(client, wdir, book, cand, urls[cand.site], tickets, price)
        raise ReserveError("no broker sold the reservation: " + "; ".join(tried), tried)


async def _buy(client: PeerClient, pay: Any, book: TicketBook, cand: Candidate, term: Term,
               max_price: int | None) -> tuple[list[Ticket], int]:
    memo = memo_for(request_digest(client.identity.public_key, cand.items, term))
    record = {"broker": cand.broker.hex(), "url": cand.url, "start": term.start,
              "end": term.end, "payment": None,
              "items": [{"site": i.site.hex(), "type": i.rtype, "count": i.count}
                        for i in cand.items]}
    book.set_pending(memo, record)

    def paid(cert: Certificate, price: int) -> None:
        book.set_pending(memo, {**record, "payment": pack(cert.to_wire()).hex(),
                                "price": price})

    try:
        bought = await buy_tickets(client, pay, cand.url, cand.broker, cand.items, term,
                                   max_price=max_price, on_paid=paid)
    except BaseException:
        if book.pending().get(memo, {}).get("payment") is None:
            book.set_pending(memo, None)   # nothing was paid
        raise
    for ticket in bought.tickets:
        book.add(ticket, cand.broker, cand.url)
    book.set_pending(memo, None)
    return bought.tickets, bought.price


async def resume_purchases(client: PeerClient, book: TicketBook) -> list[Ticket]:
    """Hand every paid, unanswered purchase to its broker again (same payment, same
    tickets); returns the tickets got."""
    got: list[Ticket] = []
    for memo, rec in book.pending().items():
        if rec.get("payment") is None:
            book.set_pending(memo, None)
            continue
        items = parse_items([{**i, "site": bytes.fromhex(i["site"])} for i in rec["items"]])
        cert = Certificate.from_wire(unpack(bytes.fromhex(rec["payment"])))
        broker = bytes.fromhex(rec["broker"])
        try:
            bought = await hand_over(client, rec["url"], broker, items,
                                     Term(rec["start"], rec["end"]), cert, int(rec["price"]))
        except P2PMarketError:
            continue   # tried again next time
        for ticket in bought.tickets:
            book.add(ticket, broker, rec["url"])
        book.set_pending(memo, None)
        got += bought.tickets
    return got


async def redeem(client: PeerClient, wdir: WalletDir, book: TicketBook, cand: Candidate,
                 site_url: str, tickets: list[Ticket], price: int) -> Reservation:
    """Redeem the bundle at its site; replacements on conflicts (module docstring)."""
    rejections: list[dict[str, Any]] = []
    for _ in range(MAX_REPLACEMENTS + 1):
        try:
            got = await client.call(site_url, cand.site, "host.redeem",
                                    {"tickets": [t.to_wire() for t in tickets]})
        except RemoteError as exc:
            value = exc.value if isinstance(exc.value, dict) else {}
            proof = value.get("proof")
            k = value.get("ticket", 0)
            k = k if isinstance(k, int) and 0 <= k < len(tickets) else 0
            key = tickets[k].final.claim_id.hex()
            book.update(key, {"state": "rejected", "reason": exc.message,
                              **({"proof": proof.hex()} if isinstance(proof, bytes) else {})})
            rejections.append({"ticket": key, "error": exc.message, "value": value})
            if not isinstance(proof, bytes):
                raise ReserveError(f"the site refused the tickets: {exc.message}",
                                   {"rejections": rejections}) from None
            new = await replace(client, book, cand, tickets[k], proof)
            if new is None:
                raise ReserveError(f"the site refused a ticket ({exc.message}); the broker "
                                   "refunded it", {"rejections": rejections}) from None
            tickets = [*tickets[:k], new, *tickets[k + 1:]]
            continue
        return _keep_lease(wdir, book, cand, site_url, tickets, price, got, rejections)
    raise ReserveError("the site kept refusing the replacements", {"rejections": rejections})


async def replace(client: PeerClient, book: TicketBook, cand: Candidate, rejected: Ticket,
                  proof: bytes) -> Ticket | None:
    """Ask the broker for a replacement of ``rejected``: the new ticket, or None when it
    refunded instead (the refund's certificate is kept in the ticket book)."""
    key = rejected.final.claim_id.hex()
    got = await client.call(cand.url, cand.broker, "broker.replace",
                            {"ticket": rejected.to_wire(), "proof": proof})
    if "refund" in got:
        book.update(key, {"state": "refunded",
                          "refund": pack(got["refund"]).hex()})
        return None
    item = Item(rejected.site, rejected.rset.rtype, rejected.rset.count)
    [new] = verify_bought(got.get("tickets"), client.identity.public_key, [item],
                          rejected.term)
    new_key = book.add(new, cand.broker, cand.url)
    book.update(key, {"state": "replaced", "replaced_by": new_key})
    return new


def _keep_lease(wdir: WalletDir, book: TicketBook, cand: Candidate, site_url: str,
                tickets: list[Ticket], price: int, got: dict[str, Any],
                rejections: list[dict[str, Any]]) -> Reservation:
    lease_doc = got.get("lease")
    if lease_doc is None:
        raise ReserveError("the site answered no lease")
    lease = verify_lease(lease_doc, cand.site)
    envelope = lease_doc if isinstance(lease_doc, bytes) else pack(lease_doc)
    wdir.save_lease(lease.lease_id, {
        "host_key": cand.site.hex(), "url": site_url, "account_id": lease.lease_id,
        "lease": envelope.hex(), "paid": str(price),
        "tickets": ",".join(t.final.claim_id.hex() for t in tickets)})
    for t in tickets:
        book.update(t.final.claim_id.hex(), {"state": "redeemed", "lease_id": lease.lease_id})
    return Reservation(cand.broker, cand.site, site_url, tickets, lease, envelope, price,
                       rejections)


__all__ = ["MAX_CANDIDATES", "Reservation", "ReserveError", "find_candidates", "redeem",
           "replace", "reserve", "resume_purchases"]
