"""Fixtures for the audit tests: hosts and witnesses in one process
(:mod:`audit_world`), and the pure ledger fixtures the payment cases need."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from audit_world import World

from tests.support.chains import Chain, Net


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    """Hosts and witnesses in one process (``audit_world``)."""
    w = World(tmp_path)
    yield w
    w.close()


@pytest.fixture
def net() -> Net:
    return Net.generate()


@pytest.fixture
def chain_of() -> type[Chain]:
    return Chain
