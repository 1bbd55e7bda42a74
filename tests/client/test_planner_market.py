"""Market outcomes of buyers best-responding with the planner (Zhang, ICALP'05).

Zhang's bounds are for his balanced game: equal budgets, each buyer bidding on each
divisible good on its own. Here that is ``split`` mode (one account per host and
resource) on markets with equal budgets, and ``bundle`` mode (one account per host
with the buyer's weights, what p2pmarket buyers do) where there is one resource, in
which case the two games are the same. Asserted on fixed seeds: efficiency at least
3/4 on one-resource markets and envy-freeness at least 0.828 (2 sqrt 2 - 2) on
every market of Zhang's game. Bundles over several resources restrict a buyer to one
split per host, so the bounds need not hold there: scripts/bench/market_sim.py
reports them as measured."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytest.importorskip("scipy")
ZHANG_ENVY = 2 * 2 ** 0.5 - 2   # 0.8284


def _sim() -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "scripts" / "bench" / "market_sim.py"
    spec = importlib.util.spec_from_file_location("market_sim", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["market_sim"] = mod
    spec.loader.exec_module(mod)
    return mod


SIM = _sim()


@pytest.mark.parametrize("nres", [1, 2, 3])
def test_zhang_bounds_on_balanced_markets(nres: int) -> None:
    markets = SIM.markets_of(12, 4, 4, [nres], "equal", seed=7)
    modes = ["split", "bundle"] if nres == 1 else ["split"]
    for mode in modes:
        rows = [SIM.outcome(m, mode, 200) for m in markets]
        done = [r for r in rows if r["converged"]]
        assert len(done) >= len(rows) - 1, rows
        for r in done:
            assert r["envy"] >= ZHANG_ENVY, (mode, r)
            if nres == 1:
                assert r["efficiency"] >= 0.75, (mode, r)
            assert 0 < r["efficiency"] <= 1 + 1e-9


def test_equilibrium_is_a_best_response_for_everyone() -> None:
    """At the end no buyer gains by planning again (within the 0.1 % tolerance)."""
    (m,) = SIM.markets_of(1, 3, 3, [2], "random", seed=3)
    bids, _rounds, converged = SIM.equilibrium(m, "bundle", 200)
    assert converged
    spent = [SIM.spends(m, i, b) for i, b in enumerate(bids)]
    for i in range(len(bids)):
        others: dict[tuple[int, str], int] = {}
        for o, s in enumerate(spent):
            if o != i:
                for k, v in s.items():
                    others[k] = others.get(k, 0) + v
        again = SIM.best_response(m, "bundle", i, others)
        assert sum(abs(v - bids[i].get(g, 0)) for g, v in again.items()) <= 0.002 * m.budgets[i]
    assert sum(sum(b.values()) for b in bids) == sum(m.budgets)
