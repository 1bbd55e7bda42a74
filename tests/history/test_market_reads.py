"""The node's market reads for the price history: the period is a setting (0: none on
its own), and a read asked for happens at once and is recorded."""

from __future__ import annotations

from pathlib import Path

import pytest

from p2pmarket.core.config import Settings
from p2pmarket.core.errors import P2PMarketError
from tests.market_helpers import local_market


async def test_a_read_asked_for_is_recorded_with_no_period(tmp_path: Path) -> None:
    async with local_market(tmp_path / "m", n=2,
                            overrides={1: {"history_market_seconds": 0}}) as m:
        for node in m.nodes:
            await node.announced.wait()
        sampler = m.nodes[1].sampler
        assert sampler.market_every_s == 0 and sampler.last_market["at"] is None
        sampler.read_now.set()
        await sampler.market_read.wait()
        market = sampler.last_market
        assert market["at"] is not None and len(market["hosts"]) == 2
        points = sampler.history({"scope": "market", "name": "cpu"})["points"]
        assert len(points) == 1 and points[0]["last"] == market["prices"]["cpu"]["median"]


def test_the_period_is_not_negative() -> None:
    with pytest.raises(P2PMarketError, match="history_market_seconds"):
        Settings().with_overrides({"history_market_seconds": -1}).check()
