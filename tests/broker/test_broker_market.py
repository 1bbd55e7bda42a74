"""Brokers on a loopback market: a site's anchor delegated through agents, posted
prices paid with certified transfers, the oversubscription degree enforced, a payment
used twice refused, adverts in the DHT (in-process nodes on 127.0.0.1)."""

from __future__ import annotations

from pathlib import Path

import pytest

from p2pmarket.broker.policy import Item
from p2pmarket.broker.purchase import buy_tickets, hand_over, quote
from p2pmarket.broker.requests import memo_for, request_digest
from p2pmarket.client.buyer import open_wallet
from p2pmarket.client.discovery import MarketView
from p2pmarket.client.reserve import resume_purchases
from p2pmarket.client.ticketbook import TicketBook
from p2pmarket.core.errors import RemoteError
from p2pmarket.core.wire import pack
from p2pmarket.dht.ticketquery import read_ticket_ads
from p2pmarket.sharp.claims import check_ticket
from tests.broker.helpers import (
    FUNDS,
    PRICE,
    buy_from,
    funded_broker,
    funded_wallet,
    hour_term,
    key,
    site_anchor,
)
from tests.market_helpers import local_market


async def test_a_chain_of_agents_sells_within_its_degree(tmp_path: Path) -> None:
    async with local_market(tmp_path / "m", n=4) as m:
        site, a, c = m.nodes[1], m.nodes[2], m.nodes[3]
        for node in m.nodes:
            await node.announced.wait()
        await funded_broker(m, a)
        await funded_broker(m, c, oversub_ppm=40_000)   # 25 held: 26 may be promised
        term = hour_term()
        a.broker.add_ticket(site_anchor(site, a, 40, term).to_wire())
        [held] = await c.broker.buy_upstream(a.url, key(a), [Item(key(site), "cpu", 25)],
                                             term.start, term.end)
        check_ticket(held, key(site))
        assert [sc.claim.holder for sc in held.claims] == [key(a), key(c)]
        assert c.wallet.balance() == FUNDS - 25 * PRICE   # 25 units for one hour

        buyers = [await funded_wallet(m, n) for n in ("f", "g", "h")]
        got = [await buy_from(w, c, site, n, term) for w, n in zip(buyers, (9, 10, 7),
                                                                  strict=True)]
        for w, b in zip(buyers, got, strict=True):
            [t] = b.tickets
            check_ticket(t, key(site))
            assert t.holder == w.identity().public_key and len(t.claims) == 3
        # 26 promised of 25 held (104 %): the 27th unit is over the degree
        i = await funded_wallet(m, "i")
        with pytest.raises(RemoteError, match="no ticket held"):
            await buy_from(i, c, site, 1, term)
        async with open_wallet(i) as (wallet, _):
            assert wallet.balance() == FUNDS   # the quote refused it before any payment
        status = c.broker.status()
        assert status["holdings"][0]["promised_peak"] == 26

        # the same payment again: the same tickets for the same request, else refused
        f = buyers[0]
        async with open_wallet(f) as (_, client):
            again = await hand_over(client, c.url, key(c), [Item(key(site), "cpu", 9)],
                                    term, got[0].payment, got[0].price)
            assert again.tickets == got[0].tickets
            with pytest.raises(RemoteError, match=r"memo|used"):
                await hand_over(client, c.url, key(c), [Item(key(site), "cpu", 8)], term,
                                got[0].payment, got[0].price)


async def test_adverts_name_broker_sites_amounts_and_price(tmp_path: Path) -> None:
    async with local_market(tmp_path / "m", n=3) as m:
        site, a = m.nodes[1], m.nodes[2]
        for node in m.nodes:
            await node.announced.wait()
        await funded_broker(m, a, oversub_ppm=250_000)
        term = hour_term()
        a.broker.advertised.clear()
        a.broker.add_ticket(site_anchor(site, a, 40, term).to_wire())
        await a.broker.advertised.wait()   # published at the k closest nodes
        async with MarketView(m.genesis) as market:
            ads = await read_ticket_ads(market.dht, "cpu")
        [ad] = ads
        assert ad.broker == key(a) and ad.price == 1_000 and ad.url == a.url
        [s] = ad.sites
        assert s.site == key(site) and s.amount == 50 and s.end == term.end


async def test_a_bundle_across_two_sites_is_sold_all_or_none(tmp_path: Path) -> None:
    async with local_market(tmp_path / "m", n=4) as m:
        s1, s2, a = m.nodes[1], m.nodes[2], m.nodes[3]
        for node in m.nodes:
            await node.announced.wait()
        await funded_broker(m, a)
        term = hour_term()
        for s in (s1, s2):
            a.broker.add_ticket(site_anchor(s, a, 40, term).to_wire())
        buyer = await funded_wallet(m, "b")
        items = [Item(key(s1), "cpu", 30), Item(key(s2), "cpu", 20)]
        async with open_wallet(buyer) as (wallet, client):
            got = await buy_tickets(client, wallet.send, a.url, key(a), items, term)
            assert [t.site for t in got.tickets] == [key(s1), key(s2)]
            for t, it in zip(got.tickets, items, strict=True):
                check_ticket(t, it.site)
                assert t.rset.count == it.count
            # 30 more at s2 does not fit (20 left): nothing of the bundle is sold
            with pytest.raises(RemoteError, match="item 1"):
                await buy_tickets(client, wallet.send, a.url, key(a),
                                  [Item(key(s1), "cpu", 5), Item(key(s2), "cpu", 30)], term)
        peaks = {h["site"]: h["promised_peak"] for h in a.broker.status()["holdings"]}
        assert peaks == {key(s1): 30, key(s2): 20}


async def test_a_paid_purchase_interrupted_is_handed_over_again(tmp_path: Path) -> None:
    async with local_market(tmp_path / "m", n=3) as m:
        site, a = m.nodes[1], m.nodes[2]
        for node in m.nodes:
            await node.announced.wait()
        await funded_broker(m, a)
        term = hour_term()
        a.broker.add_ticket(site_anchor(site, a, 40, term).to_wire())
        buyer = await funded_wallet(m, "b")
        items = [Item(key(site), "cpu", 6)]
        book = TicketBook(buyer)
        async with open_wallet(buyer) as (wallet, client):
            # what reserve writes before and after paying, then a crash before buy
            memo = memo_for(request_digest(client.identity.public_key, items, term))
            price = await quote(client, a.url, key(a), items, term)
            cert = await wallet.send(key(a), price, memo)
            book.set_pending(memo, {
                "broker": key(a).hex(), "url": a.url, "start": term.start, "end": term.end,
                "items": [{"site": key(site).hex(), "type": "cpu", "count": 6}],
                "payment": pack(cert.to_wire()).hex(), "price": price})
            [t] = await resume_purchases(client, book)
            assert t.holder == client.identity.public_key and t.rset.count == 6
            assert book.pending() == {}
            assert book.all()[t.final.claim_id.hex()]["state"] == "held"
            assert await resume_purchases(client, book) == []   # nothing left to resume
        assert a.broker.store.counts() == {"sold": 1}
