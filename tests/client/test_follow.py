"""``buy --follow`` (issue 12): the pure decisions, and an in-process market of 3 nodes
where another buyer bids heavily on one host and the follower moves money away from it
within the budget, the summary matching the wallet to the micro-credit."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from p2pmarket.cli.main import parser
from p2pmarket.client.buyer import buy, open_wallet
from p2pmarket.client.follow import Move, controlled, decide, follow, others_price
from p2pmarket.core.clock import now_us
from p2pmarket.core.identity import node_id_of
from tests.client.test_lease_money import ready
from tests.client.test_quote_before_pay import FUNDS, funded
from tests.market_helpers import LocalMarket, local_market

A, B, C = b"\x0a" * 20, b"\x0b" * 20, b"\x0c" * 20
# no max below the capacity: money past a cap would be wasted, and best response then
# rightly moves money *towards* a contested host
BIDS = ["cpu:1,0.1,1", "memory:1,64MiB,1"]


def test_decide_moves_only_past_the_threshold() -> None:
    leases = {A: "la", B: "lb"}
    # within the threshold: nothing moves
    assert decide({A: 500, B: 500}, leases, {A: 540, B: 460}, 0, 50) == []
    # A loses 300 (a refund), B gains it, C (new) gets the unspent 100
    assert decide({A: 500, B: 500}, leases, {A: 200, B: 800, C: 100}, 100, 50) == [
        Move(A, "refund", 300, "la"), Move(B, "topup", 300, "lb"), Move(C, "buy", 100)]
    # the plan drops A: cancelled; money added never exceeds what was freed plus unspent
    assert decide({A: 500}, {A: "la"}, {B: 900}, 0, 50) == [Move(A, "cancel", 500, "la"),
                                                        Move(B, "buy", 500)]


def test_controlled_money_and_own_price() -> None:
    assert controlled({A: 300, B: 200}, 1000, 900, 100) == 700
    assert controlled({A: 2000}, 1000, 1000, 0) == 1000   # never above the budget
    assert others_price(1000, 250, 1000) == 750   # a quarter of it is ours
    assert others_price(10, 1000, 1000) == 1      # all ours: at least 1
    assert others_price(10, 0, 0) == 10


async def balance(m: LocalMarket, name: str) -> int:
    async with open_wallet(m.wallet(name)) as (wallet, _):
        await wallet.sync()
        return wallet.balance()


def supply_ok(m: LocalMarket) -> None:
    s = m.nodes[0].notary.supply()   # type: ignore[union-attr]
    assert s["ok"], s


async def test_follow_moves_money_away_from_a_host_whose_price_rises(tmp_path: Path) -> None:
    budget, duration = 6_000_000, 600
    async with local_market(tmp_path / "m", n=3, tick_seconds=0.1) as m:
        await ready(m)
        crowd = await funded(m, "crowd")   # the others' bids: every host has a price
        assert len((await buy(crowd, BIDS, budget, duration, max_hosts=3)).purchases) == 3
        wallet = await funded(m)
        first = await buy(wallet, BIDS, budget, duration, max_hosts=3)
        assert len(first.purchases) == 3
        start = now_us()
        shares = {p.host.node_id: p.amount for p in first.purchases}
        target = max(shares, key=lambda h: (shares[h], h))
        stop = asyncio.Event()
        seen: list[str] = []
        task = asyncio.create_task(follow(
            wallet, BIDS, budget, duration, 3, {p.lease.lease_id for p in first.purchases},
            stop, every_s=0.3, progress=seen.append, start_us=start))
        try:
            whale = await funded(m, "whale")
            got = await buy(whale, BIDS, 40_000_000, duration, max_hosts=1,
                            only=frozenset({target}))
            assert len(got.purchases) == 1

            def refunded_at_target() -> int:
                return sum(int(r.get("refunded", "0")) for r in wallet.leases().values()
                           if node_id_of(bytes.fromhex(r["host_key"])) == target)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 15
            while refunded_at_target() == 0 and loop.time() < deadline and not task.done():
                await asyncio.sleep(0.1)
            assert refunded_at_target() > 0, seen
            supply_ok(m)
        finally:
            stop.set()
            report = await asyncio.wait_for(task, 30)
        assert report.rounds >= 1 and report.errors == [], report.errors
        assert any(mv.host_id == target and mv.kind in ("refund", "cancel")
                   for mv in report.moves)
        net_at = {h: report.paid[h] - report.refunded.get(h, 0) for h in report.paid}
        assert net_at[target] < shares[target] - budget // 20
        assert 0 < report.spent <= budget
        assert sum(report.paid.values()) - sum(report.refunded.values()) == report.spent
        assert await balance(m, "buyer") == FUNDS - report.spent
        supply_ok(m)


async def test_buy_follow_json_is_one_object_matching_the_wallet(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async with local_market(tmp_path / "m", n=3, tick_seconds=0.1) as m:
        await ready(m)
        wallet = await funded(m)
        args = parser().parse_args(["buy", "--wallet", str(wallet.root), "--budget", "6",
                                    "--duration", "10m", "--hosts", "3", "--follow",
                                    "--every", "0.2", "--follow-for", "1s", "--json", *BIDS])
        code = await args.run(args)
        doc = json.loads(capsys.readouterr().out)
        assert code == 0, doc
        assert set(doc) == {"purchase", "follow"}
        assert len(doc["purchase"]["purchases"]) >= 1
        f = doc["follow"]
        assert f["rounds"] >= 1 and f["errors"] == []
        assert f["spent"] == sum(h["spent"] for h in f["per_host"]) <= 6_000_000
        assert sorted(f["leases"]) == sorted(p["lease"]["lease_id"]
                                             for p in doc["purchase"]["purchases"])
        assert await balance(m, "buyer") == FUNDS - f["spent"]
        supply_ok(m)
