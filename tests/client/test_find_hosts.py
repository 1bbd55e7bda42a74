"""The buyer's host search (:func:`p2pmarket.client.buyer.find_hosts`): a DHT read
that finds no host is made again, a bounded number of times, before "no host offers";
against a stand-in market that answers from a script (no DHT, no sleeping)."""

from __future__ import annotations

from typing import Any, cast

import pytest

from p2pmarket.client.buyer import BuyError, find_hosts
from p2pmarket.client.discovery import HostView, MarketView


class ScriptedMarket:
    """Answers each ``hosts`` read with the next list of its script."""

    def __init__(self, *answers: list[Any]) -> None:
        self.answers = list(answers)
        self.reads: list[tuple[list[str], int]] = []

    async def hosts(self, types: list[str], limit: int = 20, **_: Any) -> list[Any]:
        self.reads.append((types, limit))
        return self.answers.pop(0)


async def test_a_read_that_finds_none_is_made_again_until_one_does() -> None:
    host = cast(HostView, object())
    market = ScriptedMarket([], [], [host])
    said: list[str] = []
    found, port_bid = await find_hosts(cast(MarketView, market), ["cpu", "memory"], 2,
                                       said.append, gap_s=0.0)
    assert found == [host] and port_bid is False
    assert market.reads == [(["cpu", "memory"], 6)] * 3
    assert said == ["discovering: no host found yet; reading the DHT again"] * 2


async def test_no_host_after_the_last_read_is_an_error_naming_what_was_asked() -> None:
    market = ScriptedMarket([], [], [], [])
    said: list[str] = []
    with pytest.raises(BuyError, match=r"^no chosen host offers cpu with the base image x$"):
        await find_hosts(cast(MarketView, market), ["cpu"], 1, said.append,
                         only=frozenset({b"\x01" * 20}), base_image="x", gap_s=0.0)
    assert market.reads == [(["cpu"], 64)] * 3       # SEARCH_TRIES reads, then no more
    assert len(market.answers) == 1 and len(said) == 2


async def test_hosts_found_at_once_are_read_once() -> None:
    host = cast(HostView, object())
    market = ScriptedMarket([host])
    said: list[str] = []
    assert await find_hosts(cast(MarketView, market), ["cpu"], 1, said.append,
                            tries=5) == ([host], False)
    assert len(market.reads) == 1 and said == []
