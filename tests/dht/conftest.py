"""Fixtures for the DHT tests; helpers live in dht_helpers.py."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from dht_helpers import FakeClock, Swarm, make_genesis

from p2pmarket.core.genesis import Genesis


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def genesis() -> Genesis:
    return make_genesis()


@pytest.fixture
async def swarm(genesis: Genesis) -> AsyncIterator[Swarm]:
    s = Swarm(genesis)
    try:
        yield s
    finally:
        await s.close()
