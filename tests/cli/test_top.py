"""``p2pmarket top``: frames from samples under a fake clock (pure), the live loop on
a terminal and the one plain frame when stdout is not one, and a real sample of a
loopback market."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

from p2pmarket.cli.top import market_sampler, run_top
from p2pmarket.client.netopts import ClientNet
from p2pmarket.client.topview import LeaseSample, Offer, PriceRow, frame
from tests.market_helpers import local_market

S = 1_000_000
T0 = 1_800_000_000 * S


def offers(*cpu: int) -> dict[str, list[Offer]]:
    return {"cpu": [Offer(f"h{i}", 1000 * (i + 1), p, p // 2) for i, p in enumerate(cpu)],
            "memory": []}


LEASE = LeaseSample("ab12", "http://127.0.0.1:1", "active", {"cpu": 500}, 40, 60,
                    T0 + 90 * S)


def test_a_frame_summarises_each_resource_and_counts_down_each_lease() -> None:
    f = frame(offers(30, 10, 20), [LEASE], T0)
    assert f.prices == (PriceRow("cpu", 3, 6000, 10, 20, 30, 10, "new"),)
    [row] = f.leases
    assert row.seconds_left == 90 and row.spent == 40 and row.left == 60
    later = frame(offers(30, 10, 20), [LEASE], T0 + 100 * S, f)
    assert later.leases[0].seconds_left == 0 and later.prices[0].move == "same"
    assert frame(offers(11), [], T0, f).prices[0].move == "up"
    assert frame(offers(9, 50), [], T0, f).prices[0].move == "down"
    ended = LeaseSample("cd34", "u", "ended", {}, None, 0, T0 + 90 * S)
    assert frame({}, [ended], T0).leases[0].seconds_left == 0


class FakeTime:
    def __init__(self) -> None:
        self.now = T0
        self.slept: list[float] = []
        self.sampled: list[int] = []
        self.prices = [10, 12, 9]

    def clock(self) -> int:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += int(seconds * S)

    async def sample(self, now: int) -> tuple[dict[str, list[Offer]], list[LeaseSample]]:
        self.sampled.append(now)
        return offers(self.prices[len(self.sampled) - 1]), [LEASE]


async def test_not_a_terminal_gets_one_plain_frame() -> None:
    t, buf = FakeTime(), io.StringIO()
    console = Console(file=buf, force_terminal=False, width=120)
    assert await run_top(t.sample, console, 5.0, None, False, t.clock, t.sleep) == 1
    text = buf.getvalue()
    assert t.sampled == [T0] and t.slept == []
    assert "cpu" in text and "0.00001" in text and "1m 30s" in text and "\x1b[" not in text


async def test_a_terminal_is_redrawn_every_few_seconds() -> None:
    t, buf = FakeTime(), io.StringIO()
    console = Console(file=buf, force_terminal=True, width=120)
    assert await run_top(t.sample, console, 5.0, 3, False, t.clock, t.sleep) == 3
    assert t.sampled == [T0, T0 + 5 * S, T0 + 10 * S] and t.slept == [5.0, 5.0]
    text = buf.getvalue()
    assert "↑" in text and "↓" in text       # 10 -> 12 -> 9
    assert "1m 20s" in text and "1m 30s" in text   # the lease counts down


async def test_a_real_sample_of_a_loopback_market(tmp_path: Path) -> None:
    async with local_market(tmp_path / "m", n=3) as m:
        for node in m.nodes:
            await node.announced.wait()
        buyer = m.wallet("buyer")
        sample = market_sampler(m.genesis, buyer, ["cpu", "memory"], ClientNet(), 50)
        got, leases = await sample(T0)
        f = frame(got, leases, T0)
        [cpu, mem] = f.prices
        assert cpu.resource == "cpu" and cpu.hosts == len(m.nodes)
        caps = [n.auctioneer.state.config.capacities["cpu"] for n in m.nodes]
        assert cpu.capacity == sum(caps) and mem.hosts == len(m.nodes)
        assert f.leases == ()
