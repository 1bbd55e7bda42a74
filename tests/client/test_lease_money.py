"""Money never stranded, from the buyer's side (issue 12): cancel, top up and rebid a
lease, a top-up cut short finished later, a dead host never paid, and a host failing
mid-buy leaving the leases already bought reported (in-process markets on 127.0.0.1)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from p2pmarket.api.rpc import CallContext
from p2pmarket.auction import HostError
from p2pmarket.client import buyer as buyer_mod
from p2pmarket.client.buyer import BuyError, buy, open_wallet, resume_pending
from p2pmarket.client.leases import cancel, rebid, refresh_leases, topup
from p2pmarket.core.clock import now_us
from p2pmarket.node.service import Node
from tests.client.test_quote_before_pay import BIDS, BUDGET, FUNDS, funded, sends
from tests.market_helpers import LocalMarket, local_market


async def ready(m: LocalMarket) -> None:
    for node in m.nodes:
        await node.announced.wait()


async def kill(m: LocalMarket, node: Node) -> None:
    """The host's process is gone (its DHT record stays live at the others)."""
    m.nodes.remove(node)
    await node.stop()


def by_key(m: LocalMarket, key: bytes) -> Node:
    return next(n for n in m.nodes if n.identity.public_key == key)


async def test_cancel_brings_the_money_left_back_to_the_micro_credit(tmp_path: Path) -> None:
    async with local_market(tmp_path / "m", n=3) as m:
        await ready(m)
        wallet = await funded(m)
        [p] = (await buy(wallet, BIDS, BUDGET, 3600, max_hosts=1)).purchases
        got = await cancel(wallet, p.lease.lease_id)
        assert got.status == "done" and got.amount > 0
        refunded = sum(c.entry.body["amount"] for c in got.payments)
        assert refunded == got.amount
        async with open_wallet(wallet) as (w, _):
            assert w.balance() == FUNDS - BUDGET + refunded
        host = by_key(m, p.host.key)
        assert host.auctioneer.accounts() == []
        [view] = await refresh_leases(wallet, now_us())
        assert view.status == "cancelled" and view.paid == BUDGET
        assert view.spent == BUDGET - refunded
        with pytest.raises(BuyError, match="cancelled"):
            await topup(wallet, p.lease.lease_id, 1_000_000)


async def test_topup_and_rebid_change_the_account(tmp_path: Path) -> None:
    async with local_market(tmp_path / "m", n=3) as m:
        await ready(m)
        wallet = await funded(m)
        [p] = (await buy(wallet, BIDS, BUDGET, 3600, max_hosts=1)).purchases
        host = by_key(m, p.host.key)
        got = await topup(wallet, p.lease.lease_id, 2_000_000)
        assert got.lease.balance > p.lease.balance
        [account] = host.auctioneer.accounts()
        # the lease states the balance when signed; ticks since may have spent a little,
        # never the top-up itself
        assert 0 <= got.lease.balance - account.money < 2_000_000, (account.money,
                                                                   got.lease.balance)
        assert wallet.pending() == {}
        assert wallet.leases()[p.lease.lease_id]["paid"] == str(BUDGET + 2_000_000)
        assert sorted(a for _, a in await sends(wallet)) == [2_000_000, BUDGET]

        changed = await rebid(wallet, p.lease.lease_id, ["cpu:2,0.1,1",
                                                          "memory:1,128MiB,192MiB"],
                              interval_s=7200)
        assert set(changed.lease.resources) == {"cpu", "memory"}
        assert changed.lease.resources["memory"].max == 192 * 1024
        assert changed.lease.end > p.lease.end
        with pytest.raises(BuyError, match="no such lease"):
            await rebid(wallet, "nope", ["memory:1,64MiB,128MiB"])


async def test_a_topup_the_host_did_not_take_stays_pending_and_is_finished(
        tmp_path: Path) -> None:
    async with local_market(tmp_path / "m", n=3) as m:
        await ready(m)
        wallet = await funded(m)
        [p] = (await buy(wallet, BIDS, BUDGET, 3600, max_hosts=1)).purchases
        host = by_key(m, p.host.key)
        real = host.dispatcher.handlers["host.fund"]

        async def refuse(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
            raise HostError("not today")
        host.dispatcher.handlers["host.fund"] = refuse
        with pytest.raises(Exception, match="not today"):
            await topup(wallet, p.lease.lease_id, 1_000_000)
        [(key, record)] = wallet.pending().items()
        assert record["rpc"] == "fund" and record["payment"]
        host.dispatcher.handlers["host.fund"] = real
        [(done, outcome)] = await resume_pending(wallet)
        assert done == key and outcome.endswith("topped up")
        assert wallet.pending() == {}
        assert host.auctioneer.accounts()[0].money > p.lease.balance


async def test_a_dead_host_with_a_live_record_is_never_paid(tmp_path: Path) -> None:
    async with local_market(tmp_path / "m", n=3) as m:
        await ready(m)
        wallet = await funded(m)
        dead, alive = m.nodes[2], m.nodes[1]
        await kill(m, dead)
        with pytest.raises(BuyError, match="nothing was paid") as err:
            await buy(wallet, BIDS, BUDGET, 3600, max_hosts=1,
                      only=frozenset({dead.identity.node_id}))
        assert "cannot reach" in err.value.message
        report = await buy(wallet, BIDS, BUDGET, 3600, max_hosts=2,
                           only=frozenset({dead.identity.node_id, alive.identity.node_id}))
        assert [s.host.node_id for s in report.skipped] == [dead.identity.node_id]
        assert "cannot reach" in report.skipped[0].reason
        assert await sends(wallet) == [(alive.identity.public_key, BUDGET)]
        # a topup of a lease whose host died moves no money either
        [p] = report.purchases
        await kill(m, alive)
        with pytest.raises(Exception, match="cannot reach"):
            await topup(wallet, p.lease.lease_id, 1_000_000)
        assert await sends(wallet) == [(alive.identity.public_key, BUDGET)]
        assert wallet.pending() == {}


Wrap = Callable[..., Awaitable[Any]]


@pytest.mark.parametrize("when", ["before its quote", "after its payment", "disk error"])
async def test_a_host_failing_mid_buy_leaves_the_leases_bought_reported(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, when: str) -> None:
    async with local_market(tmp_path / "m", n=3) as m:
        await ready(m)
        wallet = await funded(m)
        calls: list[bytes] = []
        real_pay, real_open = buyer_mod.pay_one, buyer_mod.open_account

        async def pay(*args: Any) -> Any:
            host = args[4]
            calls.append(host.key)
            if len(calls) == 2 and when == "before its quote":
                await kill(m, by_key(m, host.key))
            return await real_pay(*args)

        async def open_(*args: Any) -> Any:
            if len(calls) == 2 and when == "after its payment":
                await kill(m, by_key(m, bytes.fromhex(args[4]["host_key"])))
            if len(calls) == 2 and when == "disk error":
                raise OSError("no space left on device")
            return await real_open(*args)

        monkeypatch.setattr(buyer_mod, "pay_one", pay)
        monkeypatch.setattr(buyer_mod, "open_account", open_)
        hosts = frozenset(n.identity.node_id for n in m.nodes[1:])   # never the notary
        report = await buy(wallet, BIDS, BUDGET, 3600, max_hosts=2, only=hosts)
        assert len(calls) == 2
        [bought] = report.purchases
        assert bought.host.key == calls[0]
        if when == "before its quote":   # the fresh quote fails: nothing paid
            [skipped] = report.skipped
            assert skipped.host.key == calls[1] and skipped.amount > 0
            assert [k for k, _ in await sends(wallet)] == [calls[0]]
            assert wallet.pending() == {}
        else:   # paid: listed as unfinished and kept pending for recovery
            [unfinished] = report.unfinished
            assert unfinished.host.key == calls[1]
            assert sorted(k for k, _ in await sends(wallet)) == sorted(calls)
            [record] = wallet.pending().values()
            assert record["host_key"] == calls[1].hex() and record["payment"]
        assert report.errors == []
