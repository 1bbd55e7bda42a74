"""Fixtures more than one test folder uses: the pure ledger fixtures of
:mod:`tests.support.chains` (the ledger tests and the audit tests' payment cases)."""

from __future__ import annotations

import pytest

from tests.support.chains import Chain, Net


@pytest.fixture
def net() -> Net:
    """A genesis (f=1, 4 notaries) with all its private keys."""
    return Net.generate()


@pytest.fixture
def chain_of() -> type[Chain]:
    """The builder of correctly linked, signed chains."""
    return Chain
