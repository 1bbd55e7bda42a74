"""No money moves to a host before it has signed an acceptable quote (issue 10, item 2).

Each test runs a small in-process market (real nodes on 127.0.0.1) and buys through
the client code: a record-only phantom, a host that advertises one price and quotes
another, and bids no host accepts must each leave the buyer's money where it was
(or send it only to an honest host that opens the account)."""

from __future__ import annotations

import asyncio
import secrets
import socket
from pathlib import Path
from typing import Any

import pytest

from p2pmarket.api.client import PeerClient
from p2pmarket.api.rpc import CallContext
from p2pmarket.auction import HostError
from p2pmarket.auction.quote import bids_digest, verify_quote
from p2pmarket.audit.evidence import proof_host_id
from p2pmarket.client.buyer import BuyError, buy, open_wallet, resume_pending
from p2pmarket.client.discovery import MarketView
from p2pmarket.client.walletdir import WalletDir
from p2pmarket.core.identity import Identity
from p2pmarket.core.limits import MAX_CAPACITY
from p2pmarket.dht.node import DhtNode
from p2pmarket.dht.records import ResourceAd
from tests.market_helpers import LocalMarket, local_market

BIDS = ["cpu:1,0.1,1", "memory:1,128MiB,256MiB"]
FUNDS = 50_000_000
BUDGET = 5_000_000


async def funded(m: LocalMarket, name: str = "buyer") -> WalletDir:
    buyer = m.wallet(name)
    async with open_wallet(m.mint) as (mint, _):
        await mint.mint(FUNDS)
        await mint.send(buyer.identity().public_key, FUNDS, "mint")
    async with open_wallet(buyer) as (wallet, _):
        await wallet.sync()
        assert wallet.balance() == FUNDS
    return buyer


async def sends(buyer: WalletDir) -> list[tuple[bytes, int]]:
    """(payee key, amount) of every payment the buyer made, and its balance check."""
    async with open_wallet(buyer) as (wallet, _):
        paid = [(e.body["to"], e.body["amount"]) for e in wallet.store.entries(wallet.key)
                if e.kind == "SEND"]
        assert wallet.balance() == FUNDS - sum(a for _, a in paid)
    return paid


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def ranked_first(m: LocalMarket, node_id: bytes) -> None:
    """Wait until the market in the DHT ranks ``node_id`` first for cpu and memory."""
    for _ in range(100):
        async with MarketView(m.genesis) as market:
            hosts = await market.hosts(["cpu", "memory"], limit=20)
        if hosts and hosts[0].node_id == node_id:
            return
        await asyncio.sleep(0.1)
    raise AssertionError("the host is never ranked first")


@pytest.mark.parametrize("where", ["closed port", "a live host's url"])
async def test_a_record_only_phantom_is_never_paid(tmp_path: Path, where: str) -> None:
    async with local_market(tmp_path / "m") as m:
        for node in m.nodes:
            await node.announced.wait()
        buyer = await funded(m)
        # a throw-away key signs a record and offers with the largest capacity the DHT
        # takes, at the lowest price (ranked first), for a URL on a closed port or the
        # URL of a real host (which does not hold the phantom's key)
        url = (f"http://127.0.0.1:{closed_port()}" if where == "closed port"
               else m.nodes[1].url)
        phantom = DhtNode(Identity.generate(m.genesis.puzzle_bits), m.genesis,
                          proof_verifier=proof_host_id, url=url)
        await phantom.start("127.0.0.1", 0)
        try:
            assert await phantom.bootstrap([(b.host, b.dht_port) for b in m.genesis.bootstrap])
            cpu, mem = MAX_CAPACITY["cpu"], MAX_CAPACITY["memory"]
            await phantom.publish_host({"cpu": ResourceAd(cpu, 1, 1),
                                        "memory": ResourceAd(mem, 1, 1)})
            await phantom.publish_offer("cpu", cpu, 1)
            await phantom.publish_offer("memory", mem, 1)
            await ranked_first(m, phantom.node_id)

            report = await buy(buyer, BIDS, BUDGET, 3600, max_hosts=1)
        finally:
            await phantom.close()
        # the phantom was asked for a quote, could not give one, and got nothing
        assert [s.host.node_id for s in report.skipped] == [phantom.node_id]
        reason = "cannot reach" if where == "closed port" else "unexpected key"
        assert reason in report.skipped[0].reason and report.skipped[0].amount == 0
        [purchase] = report.purchases
        real = {n.identity.node_id: n for n in m.nodes}
        assert purchase.host.node_id in real and report.unfinished == []
        host = real[purchase.host.node_id]
        assert await sends(buyer) == [(host.identity.public_key, BUDGET)]
        assert [a.account_id for a in host.auctioneer.accounts()] == [purchase.account_id]
        assert buyer.pending() == {}


async def test_a_host_quoting_far_above_its_advertised_price_is_skipped(
        tmp_path: Path) -> None:
    async with local_market(tmp_path / "m") as m:
        honest, liar = m.nodes
        for node in m.nodes:
            await node.announced.wait()
        buyer = await funded(m)
        # the liar charges 100 µcredits/s per resource (its root bid) ...
        config = liar.auctioneer.config.with_min_price("cpu", 100).with_min_price("memory", 100)
        await liar.auctioneer.set_config(config)
        await liar.publish_if_moved(force=True)
        real = liar.auctioneer.market_summary()
        assert real["cpu"]["price"] == 100
        # ... but advertises 1, so it ranks above the honest host
        lie = {r: ResourceAd(info["capacity"], 1, 1) for r, info in real.items()}
        await liar.dht.publish_host(lie)
        for r, ad in lie.items():
            await liar.dht.publish_offer(r, ad.capacity, ad.price)
        await ranked_first(m, liar.identity.node_id)

        report = await buy(buyer, BIDS, BUDGET, 3600, max_hosts=1)
        [skipped] = report.skipped
        assert skipped.host.node_id == liar.identity.node_id and skipped.amount == 0
        assert "more than 2 times" in skipped.reason
        assert [p.host.node_id for p in report.purchases] == [honest.identity.node_id]
        assert await sends(buyer) == [(honest.identity.public_key, BUDGET)]
        assert liar.auctioneer.accounts() == []


async def test_bids_no_host_accepts_move_no_money(tmp_path: Path) -> None:
    async with local_market(tmp_path / "m") as m:
        for node in m.nodes:
            await node.announced.wait()
        buyer = await funded(m)
        # every host offers 4 GiB: create_account would refuse this before looking at
        # the payment, and the host would have the money all the same
        with pytest.raises(BuyError) as err:
            await buy(buyer, ["cpu:1,0.1,1", "memory:1,100GiB,200GiB"], BUDGET, 3600,
                      max_hosts=2)
        assert "nothing was paid" in err.value.message
        assert await sends(buyer) == []
        assert all(n.auctioneer.accounts() == [] for n in m.nodes)


async def test_the_quote_rpc_is_signed_by_the_host_and_changes_nothing(
        tmp_path: Path) -> None:
    async with local_market(tmp_path / "m") as m:
        host = m.nodes[1]
        await host.announced.wait()
        buyer = Identity.generate()
        head, state = host.audit.head, host.auctioneer.state
        bids = {"cpu": "1,0.1,1"}
        nonce = secrets.token_bytes(16)
        async with PeerClient(buyer) as client:
            reply = await client.call(host.url, host.identity.public_key,
                                      "host.quote", {"bids": bids, "interval_s": 60,
                                                     "nonce": nonce, "amount": 1_000_000})
        quote = verify_quote(reply["quote"], host.identity.public_key)
        assert (quote.holder, quote.nonce, quote.bids) == (buyer.public_key, nonce,
                                                           bids_digest(bids))
        assert quote.resources["cpu"].price == host.auctioneer.market_summary()["cpu"]["price"]
        # not an input: nothing logged, nothing changed
        assert host.audit.head == head and host.auctioneer.state == state


async def test_a_purchase_recorded_before_paying_is_finished_or_dropped(
        tmp_path: Path) -> None:
    async with local_market(tmp_path / "m") as m:
        host = m.nodes[1]
        buyer = await funded(m)
        key = host.identity.public_key
        record = {"host_key": key.hex(), "url": host.url, "amount": 7_000_000,
                  "payment": None, "bids": {"cpu": "1,0.1,1"}, "interval_s": 600}
        paid = {**record, "memo": f"fund account at {host.identity.node_id.hex()} quote aa"}
        unpaid = {**record, "memo": f"fund account at {host.identity.node_id.hex()} quote bb"}
        buyer.set_pending("aa", paid)
        buyer.set_pending("bb", unpaid)
        # the buyer crashed after paying "aa", before recording the certificate
        async with open_wallet(buyer) as (wallet, _):
            await wallet.send(key, 7_000_000, paid["memo"])

        outcomes = dict(await resume_pending(buyer))
        assert outcomes["bb"] == "never paid: nothing to finish"
        assert outcomes["aa"].startswith("account ")
        assert buyer.pending() == {}
        [lease] = buyer.leases().values()
        assert [a.account_id for a in host.auctioneer.accounts()] == [lease["account_id"]]
        assert await sends(buyer) == [(key, 7_000_000)]


async def test_a_host_that_takes_the_payment_but_opens_no_account_is_reported(
        tmp_path: Path) -> None:
    """What a quote cannot stop: the host quotes, is paid, and refuses the account. The
    buy says so, keeps the purchase pending with the host's signed quote and the
    certificate, and finishes it once the host opens accounts again."""
    async with local_market(tmp_path / "m") as m:
        for node in m.nodes:
            await node.announced.wait()
        buyer = await funded(m)
        real = {n: n.dispatcher.handlers["host.create_account"] for n in m.nodes}

        async def refuse(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
            raise HostError("not today")
        for node in m.nodes:
            node.dispatcher.handlers["host.create_account"] = refuse

        report = await buy(buyer, BIDS, BUDGET, 3600, max_hosts=1)
        assert report.purchases == [] and report.skipped == []
        [unfinished] = report.unfinished
        assert (unfinished.amount, unfinished.reason) == (BUDGET, "not today")
        host_key = unfinished.host.key
        assert await sends(buyer) == [(host_key, BUDGET)]
        [(qid, record)] = buyer.pending().items()
        quote = verify_quote(bytes.fromhex(record["quote"]), host_key)
        assert quote.amount == BUDGET and quote.holder == buyer.identity().public_key
        assert record["memo"].endswith(f"quote {qid}") and record["payment"]

        for node, handler in real.items():
            node.dispatcher.handlers["host.create_account"] = handler
        [(key, outcome)] = await resume_pending(buyer)
        assert key == qid and outcome.startswith("account ")
        assert buyer.pending() == {} and len(buyer.leases()) == 1
