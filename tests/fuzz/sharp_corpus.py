"""SHARP's part of the seed corpus (called by :mod:`tests.fuzz.make_corpus`): node0 as
a broker holding the host's anchor, a buyer that asks for its offers and a quote,
buys two oversubscribed tickets, redeems them at the host (the second refused with
a conflict proof), asks the broker for a replacement and buys an anchor. Every
request goes through the recording dispatchers; the ticket adverts end up in the
DHT records."""

from __future__ import annotations

import contextlib
import os

from p2pmarket.broker.policy import Item
from p2pmarket.broker.purchase import buy_tickets
from p2pmarket.client.buyer import open_wallet
from p2pmarket.client.walletdir import WalletDir
from p2pmarket.core.clock import now_us
from p2pmarket.core.errors import P2PMarketError, RemoteError
from p2pmarket.host.control import control_handlers
from p2pmarket.node.service import Node
from p2pmarket.sharp.claims import Rset, Term, anchor

HOUR = 3_600_000_000


async def sharp_seeds(broker: Node, host: Node, buyer: WalletDir) -> None:
    control = control_handlers(host.auctioneer)
    await control["host_set_reservable"]({"resource": "cpu", "amount": "10%"})
    await control["host_set_anchor_price"]({"resource": "cpu", "price": 1})
    now = now_us()
    term = Term(now, now + HOUR)
    broker.broker.enable()
    broker.broker.set_price("cpu", 1)
    broker.broker.set_oversubscription(1_000_000)     # 200 %: a conflict to seed
    broker.broker.add_ticket(anchor(host.identity, broker.identity.public_key,
                                    Rset("cpu", 100), term, os.urandom(16)).to_wire())
    site, bkey = host.identity.public_key, broker.identity.public_key
    async with open_wallet(buyer) as (wallet, client):
        await wallet.sync()
        await client.call(broker.url, bkey, "broker.offers", {})
        bought = [await buy_tickets(client, wallet.send, broker.url, bkey,
                                    [Item(site, "cpu", 80)], term) for _ in range(2)]
        proof = None
        for b in bought:
            try:
                await client.call(host.url, site, "host.redeem",
                                  {"tickets": [t.to_wire() for t in b.tickets]})
            except RemoteError as exc:
                proof = exc.value.get("proof") if isinstance(exc.value, dict) else None
        if proof is not None:
            with contextlib.suppress(P2PMarketError):
                await client.call(broker.url, bkey, "broker.replace",
                                  {"ticket": bought[1].tickets[0].to_wire(), "proof": proof})
        cert = await wallet.send(site, 50, "anchor")   # 50 MHz for 1 h at 1 µc
        with contextlib.suppress(P2PMarketError):
            await client.call(host.url, site, "host.buy_anchor",
                              {"payment": cert.to_wire(), "rset": Rset("cpu", 50).to_doc(),
                               "term": [term.start, term.end]})
