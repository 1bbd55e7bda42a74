"""The node's witness gets a signature pool only where it pays (setting
``witness_workers``: -1 auto, 0 none, n workers)."""

from __future__ import annotations

import pytest

from p2pmarket.core.config import ConfigError, Settings
from p2pmarket.node import service
from p2pmarket.node.service import signature_pool


@pytest.mark.parametrize(("cores", "setting", "workers"), [
    (2, -1, None), (1, -1, None), (4, -1, 3), (8, -1, 7), (8, 0, None), (2, 2, 2)])
def test_a_pool_on_machines_with_spare_cores(monkeypatch: pytest.MonkeyPatch, cores: int,
                                             setting: int, workers: int | None) -> None:
    monkeypatch.setattr(service.os, "cpu_count", lambda: cores)
    pool = signature_pool(setting)
    assert (None if pool is None else pool.workers) == workers
    if pool is not None:
        pool.close()   # never started: nothing to stop


def test_the_setting_is_read_from_the_overrides() -> None:
    assert Settings().witness_workers == -1
    assert Settings().with_overrides({"witness_workers": "3"}).witness_workers == 3
    with pytest.raises(ConfigError):
        Settings().with_overrides({"witness_workers": "many"})
