"""Shared fixtures for the ledger tests: in-process notaries (the pure committee and
the chain builder are in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.local_committee import LocalCommittee


@pytest.fixture
def committee(tmp_path: Path) -> Iterator[LocalCommittee]:
    """One in-process notary (f=0)."""
    c = LocalCommittee.create(tmp_path / "notaries", f=0)
    yield c
    c.close()


@pytest.fixture
def committee4(tmp_path: Path) -> Iterator[LocalCommittee]:
    """Four in-process notaries (f=1, quorum 3)."""
    c = LocalCommittee.create(tmp_path / "notaries", f=1)
    yield c
    c.close()
