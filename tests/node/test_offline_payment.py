"""A host takes a certified payment offline (issue 12, host side).

In-process markets (real nodes on 127.0.0.1, node0 the only notary): the buyer's SEND
is certified while the notary answers, then the notary is stopped (unreachable) or
stalled (slow) before the host sees the payment. The purchase completes as soon as the
host has checked the certificate itself; ticks run meanwhile; the host's RECV waits
on its chain, uncertified, and is certified once the notary answers again, after
which the notaries' supply balances. The same certificate never credits twice."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from p2pmarket.api.rpc import CallContext
from p2pmarket.client.buyer import open_wallet, resume_pending
from p2pmarket.client.walletdir import WalletDir
from p2pmarket.core.clock import now_us
from p2pmarket.core.config import DataDir, Settings
from p2pmarket.core.keyfile import load_key
from p2pmarket.core.wire import pack
from p2pmarket.ledger.committee import PeerTransport
from p2pmarket.ledger.supply import network_supply
from p2pmarket.node.service import Node
from tests.market_helpers import LocalMarket, local_market

BIDS = {"cpu": "1,0.1,1", "memory": "1,128MiB,256MiB"}
FUNDS = 50_000_000
PRICE = 7_000_000


async def paid(m: LocalMarket, host: Node, name: str = "buyer") -> tuple[WalletDir, Any]:
    """A buyer with FUNDS whose certified SEND of PRICE to ``host`` is recorded as a
    pending purchase (not yet handed to the host)."""
    buyer = m.wallet(name)
    async with open_wallet(m.mint) as (mint, _):
        await mint.mint(FUNDS)
        await mint.send(buyer.identity().public_key, FUNDS, "mint")
    async with open_wallet(buyer) as (wallet, _):
        await wallet.sync()
        cert = await wallet.send(host.identity.public_key, PRICE, "fund")
    buyer.set_pending(cert.entry.hash().hex(), {
        "host_key": host.identity.public_key.hex(), "url": host.url,
        "payment": pack(cert.to_wire()).hex(), "bids": BIDS, "interval_s": 600})
    return buyer, cert


def pending_recvs(host: Node) -> list[str]:
    return [e.kind for e, _ in host.wallet.store.pending_entries(host.identity.public_key)]


async def certified(host: Node, timeout_s: float = 20.0) -> None:
    """Wait (bounded) until the host's chain has no uncertified entry left."""
    async with asyncio.timeout(timeout_s):
        while pending_recvs(host):
            await asyncio.sleep(0.05)


async def supply_balances(m: LocalMarket) -> dict[str, Any]:
    async with open_wallet(m.mint) as (_, client):
        report = await network_supply(m.genesis, PeerTransport(client))
    assert report["ok"] is True and report["errors"] == 0, report
    [row] = report["notaries"]
    assert row["balances"] + row["pending"] - row["early"] == row["minted"], row
    return report


async def restart(m: LocalMarket, index: int) -> Node:
    data = DataDir(m.root / f"node{index}")
    node = Node(data, Settings.load(data.config, env={}), m.genesis, load_key(data.key))
    await node.start()
    m.nodes.insert(index, node)   # local_market stops it on exit
    await node.payments.ready.wait()
    return node


async def test_purchase_completes_with_the_notary_stopped(tmp_path: Path) -> None:
    async with local_market(tmp_path / "m") as m:
        host = m.nodes[1]
        before = host.wallet.balance()
        buyer, cert = await paid(m, host)
        await m.nodes.pop(0).stop()   # the only notary: the committee is unreachable

        async with asyncio.timeout(5):   # no notary to wait for: done once verified
            [(_, outcome)] = await resume_pending(buyer)
            assert outcome.startswith("account ") and outcome.endswith(" opened"), outcome
            await host.auctioneer.tick(now_us())   # ticks go on too
        [account] = [a for a in host.auctioneer.accounts()
                     if a.holder == buyer.identity().public_key]
        assert host.auctioneer.state.payment_account(cert.entry.hash()) == account.account_id
        assert 0 < account.money <= PRICE   # the tick may have charged it already
        assert pending_recvs(host) == ["RECV"]          # credited, not certified yet
        assert host.wallet.balance() == before          # the certified balance
        # the same certificate again: the same payment, credited once
        again = await host.payments.accept(buyer.identity().public_key, cert.to_wire())
        assert again.amount == PRICE and pending_recvs(host) == ["RECV"]

        await restart(m, 0)   # the notary is back: the host certifies its RECV alone
        await certified(host)
        assert host.wallet.balance() == before + PRICE
        await supply_balances(m)


async def test_a_tick_proceeds_while_the_notary_stalls(tmp_path: Path) -> None:
    async with local_market(tmp_path / "m") as m:
        host, notary = m.nodes[1], m.nodes[0]
        buyer, _ = await paid(m, host)
        release = asyncio.Event()
        stalled = asyncio.Event()
        name = "notary.certify_batch"
        real = notary.dispatcher.handlers[name]

        async def slow(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
            stalled.set()
            await release.wait()
            return await real(ctx, args)

        notary.dispatcher.handlers[name] = slow
        try:
            async with asyncio.timeout(5):
                purchase = asyncio.create_task(resume_pending(buyer))
                await stalled.wait()   # the host's RECV is at the notary, which stalls
                await host.auctioneer.tick(now_us())   # the auction lock is free
                [(_, outcome)] = await purchase
            assert outcome.endswith(" opened"), outcome
            assert pending_recvs(host) == ["RECV"]
        finally:
            release.set()
            notary.dispatcher.handlers[name] = real
        await certified(host)
        await supply_balances(m)


async def test_one_certificate_never_funds_two_accounts(tmp_path: Path) -> None:
    async with local_market(tmp_path / "m") as m:
        host = m.nodes[1]
        buyer, cert = await paid(m, host)
        [(_, outcome)] = await resume_pending(buyer)
        assert outcome.endswith(" opened")
        await certified(host)
        ctx = CallContext(sender=buyer.identity().public_key, ts=now_us())
        reused: dict[str, Any] = {"payment": cert.to_wire(), "bids": BIDS, "interval_s": 60}
        [first] = [a for a in host.auctioneer.accounts()
                   if a.holder == buyer.identity().public_key]
        # presented again (a retry): the same account, nothing more credited
        got = await host.auctioneer.create_account(ctx, reused)
        assert got["account_id"] == first.account_id
        assert [a.account_id for a in host.auctioneer.accounts()
                if a.holder == buyer.identity().public_key] == [first.account_id]
        assert dict(host.auctioneer.state.payments or {})[cert.entry.hash()] == (
            first.account_id, PRICE)
        recvs = [e for e in host.wallet.store.entries(host.identity.public_key)
                 if e.kind == "RECV" and e.receipt == (cert.entry.owner, cert.entry.seq)]
        assert len(recvs) == 1
        await supply_balances(m)


async def test_a_create_refused_after_payment_is_refunded_to_the_payer(
        tmp_path: Path) -> None:
    """Issue 12: bids the host must refuse (min above its capacity), paid anyway (no
    quote asked): the host takes the payment and pays it straight back, certified; the
    buyer's wallet has all its money again and the supply balances."""
    async with local_market(tmp_path / "m") as m:
        host = m.nodes[1]
        buyer, cert = await paid(m, host)
        key = cert.entry.hash().hex()
        record = buyer.pending()[key]
        buyer.set_pending(key, {**record, "bids": {"memory": "1,100TiB,200TiB"}})
        [(_, outcome)] = await resume_pending(buyer)
        assert "is refunded" in outcome and outcome.startswith("refused by the host"), outcome
        # nothing stays pending: later `leases` and `buy` do not repeat it
        assert buyer.pending() == {} and await resume_pending(buyer) == []
        assert [a for a in host.auctioneer.accounts()
                if a.holder == buyer.identity().public_key] == []
        [made] = [r for r in host.auctioneer.store.refunds()
                  if r.holder == buyer.identity().public_key]
        assert (made.amount, made.status) == (PRICE, "done")
        async with open_wallet(buyer) as (wallet, _):
            assert await wallet.sync() == PRICE
            assert wallet.balance() == FUNDS
        await certified(host)
        await supply_balances(m)
