"""SHARP end to end on a loopback market (slides 22-23; docs/design.md section 10): a
site delegates 40 units (of 10 MHz) to agent A; A gives 8 to B and 25 to C; C
oversubscribes, selling 9, 10 and 7 to the buyers F, G and H. Whatever the order of
their redemptions the site serves them first come first served: the late one is
refused with a proof naming C, which verifies offline and is found in the DHT at
``evidence/<C>``; C refunds it, or replaces it from real room it holds elsewhere."""

from __future__ import annotations

from pathlib import Path

import pytest

from p2pmarket.audit.evidence import verify_proof
from p2pmarket.broker.policy import Item
from p2pmarket.client.buyer import open_wallet
from p2pmarket.client.reserve import ReserveError, redeem, reserve
from p2pmarket.client.reservepick import Candidate
from p2pmarket.client.ticketbook import TicketBook
from p2pmarket.client.walletdir import WalletDir
from p2pmarket.core.wire import unpack
from p2pmarket.host.control import control_handlers
from p2pmarket.node.service import Node
from p2pmarket.sharp.claims import Term, check_ticket
from p2pmarket.sharp.proof import verify_conflict
from tests.broker.helpers import (
    FUNDS,
    PRICE,
    buy_from,
    funded_broker,
    funded_wallet,
    hour_term,
    key,
)
from tests.market_helpers import LocalMarket, local_market

UNIT = 10   # MHz: the slides' unit

SPLITS = {"f": 9, "g": 10, "h": 7}   # 26 units promised by C from the 25 it holds:
# any two fit, all three do not, so the third to redeem is the late one


async def chain(m: LocalMarket, term: Term) -> tuple[Node, Node, Node]:
    """The slides' delegation tree up to C (site, A, C)."""
    for node in m.nodes:
        await node.announced.wait()
    site, a, b, c = m.nodes[1:5]
    control = control_handlers(site.auctioneer)
    await control["host_set_reservable"]({"resource": "cpu", "amount": f"{40 * UNIT}MHz"})
    got = await control["host_delegate"]({"to": key(a).hex(), "start": term.start,
                                          "end": term.end,
                                          "resources": {"cpu": f"{40 * UNIT}MHz"}})
    [anchor_wire] = got["tickets"]
    await funded_broker(m, a)
    await funded_broker(m, b)
    await funded_broker(m, c, oversub_ppm=40_000)   # 104 %: 26 of 25 may be promised
    a.broker.add_ticket(unpack(bytes.fromhex(anchor_wire)))
    for holder, units in ((b, 8), (c, 25)):
        [t] = await holder.broker.buy_upstream(
            a.url, key(a), [Item(key(site), "cpu", units * UNIT)], term.start, term.end)
        check_ticket(t, key(site))
        assert [x.claim.holder for x in t.claims] == [key(a), key(holder)]
    return site, a, c


async def reserve_from(wdir: WalletDir, c: Node, site: Node, units: int, term: Term,
                       via_dht: bool = False) -> object:
    broker = None if via_dht else (c.url, key(c))
    return await reserve(wdir, {"cpu": units * UNIT}, term, broker=broker,
                         site=None if via_dht else key(site),
                         site_url=None if via_dht else site.url)


@pytest.mark.parametrize("order", [("f", "g", "h"), ("h", "f", "g"), ("g", "h", "f")])
async def test_the_late_redemption_is_refused_with_a_proof_naming_c(
        tmp_path: Path, order: tuple[str, str, str]) -> None:
    async with local_market(tmp_path / "m", n=5) as m:
        term = hour_term()
        site, a, c = await chain(m, term)
        wallets = {n: await funded_wallet(m, n) for n in SPLITS}
        first, second, late = order
        for name in (first, second):
            got = await reserve_from(wallets[name], c, site, SPLITS[name], term)
            [t] = got.tickets   # type: ignore[attr-defined]
            assert [x.claim.holder for x in t.claims] == [
                key(a), key(c), wallets[name].identity().public_key]
        with pytest.raises(ReserveError, match="refunded") as info:
            await reserve_from(wallets[late], c, site, SPLITS[late], term)

        [rejection] = info.value.value["rejections"]
        assert rejection["value"]["rule"] == "conflict"
        assert rejection["value"]["agent"] == key(c)
        proof = rejection["value"]["proof"]
        summary = verify_conflict(unpack(proof))        # offline, with nothing else
        assert summary.agent == key(c)
        assert summary.held == 25 * UNIT and summary.promised > summary.held
        assert verify_proof(proof, key(c)).type == "ticket_conflict"
        await site.auctioneer.published()
        assert proof in await a.records.get_evidence(c.identity.node_id)

        # the site holds what came first: the two earlier ones, reserved as accounts
        reserved = site.auctioneer.reservations_doc()
        held = sorted(r["resources"]["cpu"] for r in reserved)
        assert held == sorted(SPLITS[n] * UNIT for n in (first, second))
        # the late buyer got its money back from C; its ticket book says so
        book = TicketBook(wallets[late]).all()
        assert [r["state"] for r in book.values()] == ["refunded"]
        async with open_wallet(wallets[late]) as (wallet, _):
            await wallet.sync()
            assert wallet.balance() == FUNDS


async def test_a_rejected_ticket_is_replaced_from_real_room(tmp_path: Path) -> None:
    async with local_market(tmp_path / "m", n=5) as m:
        term = hour_term()
        site, a, c = await chain(m, term)
        wallets = {n: await funded_wallet(m, n) for n in SPLITS}
        c.broker.advertised.clear()
        c.broker.changed.set()
        await c.broker.advertised.wait()
        got_f = await reserve_from(wallets["f"], c, site, 9, term, via_dht=True)
        # A has nothing left to sell and B too little: the adverts lead to C
        assert got_f.broker == key(c)   # type: ignore[attr-defined]
        await reserve_from(wallets["g"], c, site, 10, term)
        h = wallets["h"]
        bought = await buy_from(h, c, site, 7 * UNIT, term)   # C's 26th unit
        # C restocks: 7 more units from A (8 + 25 + 7 = A's 40), real room for H
        [spare] = await c.broker.buy_upstream(a.url, key(a), [Item(key(site), "cpu", 7 * UNIT)],
                                              term.start, term.end)
        book = TicketBook(h)
        [ticket] = bought.tickets
        book.add(ticket, key(c), c.url)
        cand = Candidate(key(c), c.url, key(site), (Item(key(site), "cpu", 7 * UNIT),),
                         bought.price)
        async with open_wallet(h) as (wallet, client):
            got = await redeem(client, h, book, cand, site.url, [ticket], bought.price)
            [rejection] = got.rejections
            assert rejection["value"]["agent"] == key(c)
            [new] = got.tickets
            assert new.claims[1].claim.claim_id == spare.final.claim_id
            assert sorted(r["state"] for r in book.all().values()) == ["redeemed", "replaced"]
            await wallet.sync()
            assert wallet.balance() == FUNDS - 7 * UNIT * PRICE   # paid once
        reserved = site.auctioneer.reservations_doc()
        assert sum(r["resources"]["cpu"] for r in reserved) == (9 + 10 + 7) * UNIT
