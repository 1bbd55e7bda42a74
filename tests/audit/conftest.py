"""Fixtures for the audit tests: hosts and witnesses in one process
(:mod:`audit_world`); the pure ledger fixtures are in tests/conftest.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from audit_world import World


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    """Hosts and witnesses in one process (``audit_world``)."""
    w = World(tmp_path)
    yield w
    w.close()
