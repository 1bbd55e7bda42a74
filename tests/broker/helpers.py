"""A loopback market with brokers: real nodes (HTTP + UDP on 127.0.0.1) in one loop, a
site's anchor to the first broker, money for brokers and buyers."""

from __future__ import annotations

import os
from collections.abc import Sequence

from p2pmarket.broker.policy import Item
from p2pmarket.broker.purchase import Bought, buy_tickets
from p2pmarket.client.buyer import open_wallet
from p2pmarket.client.walletdir import WalletDir
from p2pmarket.core.clock import now_us
from p2pmarket.node.service import Node
from p2pmarket.sharp.claims import Rset, Term, Ticket, anchor
from tests.market_helpers import LocalMarket

FUNDS = 50_000_000
PRICE = 1_000          # µc per unit-hour
HOUR_US = 3600 * 1_000_000


def key(node: Node) -> bytes:
    return node.identity.public_key


def hour_term(start: int | None = None) -> Term:
    start = now_us() if start is None else start
    return Term(start, start + HOUR_US)


async def mint_to(m: LocalMarket, keys: Sequence[bytes], amount: int = FUNDS) -> None:
    async with open_wallet(m.mint) as (mint, _):
        await mint.mint(amount * len(keys))
        for k in keys:
            await mint.send(k, amount, "mint")


async def funded_wallet(m: LocalMarket, name: str) -> WalletDir:
    wdir = m.wallet(name)
    await mint_to(m, [wdir.identity().public_key])
    async with open_wallet(wdir) as (wallet, _):
        await wallet.sync()
    return wdir


async def funded_broker(m: LocalMarket, node: Node, oversub_ppm: int = 0,
                        types: Sequence[str] = ("cpu",)) -> None:
    """``node`` as a broker with money (for buying upstream) and posted prices."""
    await mint_to(m, [key(node)])
    await node.wallet.sync()
    node.broker.enable()
    for t in types:
        node.broker.set_price(t, PRICE)
    node.broker.set_oversubscription(oversub_ppm)


def site_anchor(site: Node, holder: Node, count: int, term: Term, rtype: str = "cpu"
                ) -> Ticket:
    """What the site's owner policy hands a broker (``host delegate``)."""
    return anchor(site.identity, key(holder), Rset(rtype, count), term, os.urandom(16))


async def buy_from(wdir: WalletDir, broker: Node, site: Node, count: int, term: Term,
                   rtype: str = "cpu") -> Bought:
    async with open_wallet(wdir) as (wallet, client):
        return await buy_tickets(client, wallet.send, broker.url, key(broker),
                                 [Item(key(site), rtype, count)], term)
