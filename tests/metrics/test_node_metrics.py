"""``/metrics`` on real in-process nodes (tests/market_helpers.py, 127.0.0.1), fetched
over HTTP and read with prometheus-client's parser: every family docs/monitoring.md
lists is there with its type, and the counters move after an RPC, an auction tick and
a purchase; the ``metrics_port`` listener serves the same."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from pathlib import Path

from p2pmarket.api.client import PeerClient
from p2pmarket.auction.model import AllocEvent
from p2pmarket.client.buyer import buy, open_wallet
from p2pmarket.core.identity import Identity
from p2pmarket.node.service import Node
from tests.market_helpers import local_market
from tests.metrics.helpers import Scrape, documented, scrape

FUNDS = 50_000_000
BUDGET = 5_000_000


def assert_every_family(got: Scrape) -> None:
    rows = documented()
    assert len(rows) >= 25
    for row in rows:
        family = row.name.removesuffix("_total") if row.kind == "counter" else row.name
        assert got.types.get(family) == row.kind, (row.name, got.types.get(family))


def next_tick(node: Node) -> asyncio.Event:
    """An event set by the node's next auction tick (its ``on_tick`` hook, chained)."""
    ticked = asyncio.Event()
    runner = node.auctioneer
    chained: Callable[[float, tuple[AllocEvent, ...]], None] | None = runner.on_tick

    def hook(seconds: float, events: tuple[AllocEvent, ...]) -> None:
        if chained is not None:
            chained(seconds, events)
        ticked.set()
        runner.on_tick = chained

    runner.on_tick = hook
    return ticked


async def test_every_family_is_there_and_counters_move(tmp_path: Path) -> None:
    async with local_market(tmp_path / "m") as m:
        for node in m.nodes:
            await node.announced.wait()
        notary, host = m.nodes
        before = await scrape(host.url)
        assert_every_family(before)
        assert_every_family(await scrape(notary.url))
        info = before.total("p2pmarket_node_info", node_id=host.identity.node_id.hex())
        assert info == 1
        assert before.value("p2pmarket_process_resident_memory_bytes") > 10 * 2**20
        assert before.value("p2pmarket_process_open_sockets") >= 2
        assert before.value("p2pmarket_auction_capacity", resource="cpu") == \
            host.settings.cpu_mhz
        assert before.total("p2pmarket_dht_lookup_duration_seconds_count") >= 1

        # an RPC
        async with PeerClient(Identity.generate()) as client:
            await client.call(host.url, host.identity.public_key, "host.status", {})
        after_rpc = await scrape(host.url)
        ok = {"rpc": "host.status", "outcome": "ok"}
        assert after_rpc.value("p2pmarket_rpc_requests_total", **ok) == \
            before.value("p2pmarket_rpc_requests_total", **ok) + 1
        assert after_rpc.value("p2pmarket_rpc_duration_seconds_count", rpc="host.status") \
            == before.value("p2pmarket_rpc_duration_seconds_count", rpc="host.status") + 1

        # an auction tick
        ticks = "p2pmarket_auction_tick_duration_seconds_count"
        counted = (await scrape(host.url)).value(ticks)
        await next_tick(host).wait()
        assert (await scrape(host.url)).value(ticks) >= counted + 1

        # a purchase
        buyer = m.wallet("buyer")
        async with open_wallet(m.mint) as (mint, _):
            await mint.mint(FUNDS)
            await mint.send(buyer.identity().public_key, FUNDS, "mint")
        async with open_wallet(buyer) as (wallet, _):
            await wallet.sync()
        certified = (await scrape(notary.url)).total("p2pmarket_rpc_requests_total",
                                                     rpc="notary.certify_batch")
        hosts = {n.identity.node_id: n for n in m.nodes}
        opened = {n.identity.node_id: (await scrape(n.url)).total(
            "p2pmarket_rpc_requests_total", rpc="host.create_account", outcome="ok")
            for n in m.nodes}
        report = await buy(buyer, ["cpu:1,0.1,1", "memory:1,128MiB,256MiB"], BUDGET, 3600,
                           max_hosts=1)
        [purchase] = report.purchases
        seller = hosts[purchase.host.node_id]
        sold = await scrape(seller.url)
        assert sold.total("p2pmarket_rpc_requests_total", rpc="host.create_account",
                          outcome="ok") == opened[seller.identity.node_id] + 1
        assert sold.total("p2pmarket_auction_accounts") == len(seller.auctioneer.accounts())
        assert sold.total("p2pmarket_auction_accounts") >= 1
        assert (await scrape(notary.url)).total(
            "p2pmarket_rpc_requests_total", rpc="notary.certify_batch") > certified


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_the_metrics_port_serves_the_same(tmp_path: Path) -> None:
    port = free_port()
    async with local_market(tmp_path / "m", overrides={1: {"metrics_port": port}}) as m:
        host = m.nodes[1]
        assert host.metrics_site is not None and host.metrics_site.port == port
        assert m.nodes[0].metrics_site is None
        own = await scrape(f"http://127.0.0.1:{port}")
        assert_every_family(own)
        node_id = host.identity.node_id.hex()
        assert own.total("p2pmarket_node_info", node_id=node_id) == 1
        assert (await scrape(host.url)).total("p2pmarket_node_info", node_id=node_id) == 1
