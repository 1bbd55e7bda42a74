#!/usr/bin/env python3
"""Market outcomes: buyers best-responding to each other (issue 12, Zhang ICALP'05).

Each random market has ``--buyers`` buyers and ``--hosts`` hosts offering ``R``
divisible resources (R cycles through ``--resources``; capacities random). Buyer
``i`` has a budget ``X_i`` (random, µcredits for an interval of one second), bid
weights ``w_ir`` (random, its bundle) and a preference ``π_ij`` per host (random):
its utility is linear, the planner's rule 4 (p2pmarket/client/planner.py),
normalised so that the whole market is worth 1 to every buyer (Zhang's balanced
game)::

    u_i(alloc) = Σ_j π_ij Σ_r a_ir alloc_jr / Cref_r  /  Σ_j π_ij Σ_r a_ir C_jr / Cref_r

Round after round every buyer in turn (Gauss-Seidel) best-responds with
:func:`plan_bundle` to the others' current bids: the price it sees at host ``j`` on
``r`` is the host's root bid (1 µcredit/s) plus the others' bids, each split by
weight and rounded down as the allocator does. Rounds stop when no buyer's best
response differs from its bids by more than 0.1 % of its budget (Σ_j |Δx_ij| / X_i
<= 0.001: an equilibrium within that tolerance) or after ``--max-rounds``. Best
responses can cycle; after 20 rounds a buyer moves only halfway to its best
response, which damps a cycle.

Two games: ``bundle`` (one account per buyer and host with the buyer's weights:
what p2pmarket buyers do) gives the headline figures; ``split`` (one account per
buyer, host and resource: each (host, resource) a good of its own, Zhang's game)
is reported with the prefix ``split_``. With one resource they are the same game.
Zhang's bounds are for balanced games (equal budgets): ``--budgets equal``.

The allocation is then the project's pure allocator's
(:func:`p2pmarket.auction.allocator.allocate`, one tick per host with every buyer's
account), and:

- ``efficiency`` = Σ_i u_i / the social optimum, which is computed independently as
  a linear programme over the shares (scipy's HiGHS): each (host, resource) split
  among the buyers to maximise Σ_i u_i;
- ``envy`` = min over ordered pairs i != j of ``(u_i(x_i) / X_i) / (u_i(x_j) / X_j)``:
  the classical ``u_i(x_i) / u_i(x_j)`` with j's bundle scaled to i's budget
  (Zhang's extension of envy-freeness to budgets; the same when budgets are equal).

Reported over ``--markets`` random markets (seeded): ``rounds_p50``, ``rounds_max``,
``converged`` (fraction), ``efficiency_min``, ``efficiency_p50``, ``envy_min``,
``envy_p50``, and the same per resource count with a suffix ``_r1``, ``_r2``, ...

Usage: scripts/bench/market_sim.py [--markets 100] [--buyers 6] [--hosts 5]
       [--resources 1 2 3] [--max-rounds 200] [--seed 0] [--json]
The last line with --json is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from p2pmarket.auction.allocator import AllocationInput, allocate
from p2pmarket.auction.book import AccountState
from p2pmarket.auction.model import Bid
from p2pmarket.auction.resources import DIVISIBLE, PPM
from p2pmarket.client.planner import HostTerms, Want, plan_bundle

TICK_US = 10**6
INTERVAL_S = 1
ROOT_BID = 1
TOLERANCE = 0.001
PLAIN_ROUNDS = 20


@dataclass(frozen=True)
class Market:
    resources: tuple[str, ...]
    capacity: list[dict[str, int]]          # per host
    budgets: list[int]                      # per buyer
    weights: list[dict[str, int]]           # per buyer, ppm
    prefs: list[list[float]]                # buyer x host

    @property
    def cref(self) -> dict[str, int]:
        return {r: max(c[r] for c in self.capacity) for r in self.resources}

    def value(self, i: int, j: int, r: str) -> float:
        """Buyer i's utility of one unit of r at host j, before normalisation."""
        w = self.weights[i]
        return self.prefs[i][j] * w[r] / sum(w.values()) / self.cref[r]

    def norm(self, i: int) -> float:
        return sum(self.value(i, j, r) * c[r] for j, c in enumerate(self.capacity)
                   for r in self.resources)

    def utility(self, i: int, alloc: list[dict[str, int]]) -> float:
        """u_i of an allocation given per host (resource -> amount)."""
        return sum(self.value(i, j, r) * a.get(r, 0) for j, a in enumerate(alloc)
                   for r in self.resources) / self.norm(i)


def random_market(rng: random.Random, buyers: int, hosts: int, nres: int) -> Market:
    res = DIVISIBLE[:nres]
    return Market(res,
                  [{r: rng.randint(1000, 100_000) for r in res} for _ in range(hosts)],
                  [rng.randint(10**5, 10**7) for _ in range(buyers)],
                  [{r: rng.randint(1, 10) * PPM for r in res} for _ in range(buyers)],
                  [[rng.uniform(0.1, 1.0) for _ in range(hosts)] for _ in range(buyers)])


def split(x: int, weights: dict[str, int]) -> dict[str, int]:
    """The allocator's rule 2: a spend split by weight, rounded down."""
    total = sum(weights.values())
    return {r: x * w // total for r, w in weights.items()}


Good = tuple[int, str]   # (host, resource) in split mode; (host, "") in bundle mode


def goods(m: Market, mode: str) -> list[Good]:
    k = len(m.capacity)
    return [(j, "") for j in range(k)] if mode == "bundle" else \
        [(j, r) for j in range(k) for r in m.resources]


def spends(m: Market, i: int, bids: dict[Good, int]) -> dict[tuple[int, str], int]:
    """What buyer i bids per second on each (host, resource)."""
    out: dict[tuple[int, str], int] = {}
    for (j, r), x in bids.items():
        if not x:
            continue
        parts = split(x, m.weights[i]) if r == "" else {r: x}
        for res, v in parts.items():
            out[j, res] = out.get((j, res), 0) + v // INTERVAL_S
    return out


def best_response(m: Market, mode: str, i: int, others: dict[tuple[int, str], int]
                  ) -> dict[Good, int]:
    """Buyer i's plan against the others' spends (the host's root bid added)."""
    gs = goods(m, mode)
    terms = []
    if mode == "bundle":
        for j, _ in gs:
            price = {r: ROOT_BID + others.get((j, r), 0) for r in m.resources}
            terms.append(HostTerms(bytes([j]), m.capacity[j], price, m.prefs[i][j]))
        want = Want(m.weights[i])
    else:   # one account per (host, resource): the value rides on the preference
        cref = max(m.capacity[j][r] for j, r in gs)
        for n, (j, r) in enumerate(gs):
            terms.append(HostTerms(n.to_bytes(2, "big"), {"cpu": m.capacity[j][r]},
                                   {"cpu": ROOT_BID + others.get((j, r), 0)},
                                   m.value(i, j, r) * cref))
        want = Want({"cpu": PPM})
    plan = plan_bundle(terms, want, m.budgets[i], INTERVAL_S, len(terms))
    return {g: plan.bids.get(t.host_id, 0) for g, t in zip(gs, terms, strict=True)}


def mix(old: dict[Good, int], new: dict[Good, int], budget: int) -> dict[Good, int]:
    """Halfway from ``old`` to ``new``, in integers summing to ``budget``."""
    keys = sorted(set(old) | set(new))
    out = {g: (old.get(g, 0) + new.get(g, 0)) // 2 for g in keys}
    top = max(keys, key=lambda g: (new.get(g, 0), g))
    out[top] += budget - sum(out.values())
    return out


def equilibrium(m: Market, mode: str, max_rounds: int
                ) -> tuple[list[dict[Good, int]], int, bool]:
    """Best responses until every buyer's bids are within 0.1 % of its best response
    (Σ_g |BR_g - x_g| <= 0.001 X_i). Plain best responses for :data:`PLAIN_ROUNDS`
    rounds, then halfway steps (best responses can cycle; the steps damp a cycle)."""
    n = len(m.budgets)
    bids: list[dict[Good, int]] = [{} for _ in range(n)]
    spent = [spends(m, i, b) for i, b in enumerate(bids)]
    for rounds in range(1, max_rounds + 1):
        moved = 0.0
        for i in range(n):
            others: dict[tuple[int, str], int] = {}
            for o in range(n):
                if o != i:
                    for key, v in spent[o].items():
                        others[key] = others.get(key, 0) + v
            new = best_response(m, mode, i, others)
            gap = sum(abs(v - bids[i].get(g, 0)) for g, v in new.items()) / m.budgets[i]
            moved = max(moved, gap)
            if rounds > PLAIN_ROUNDS and gap > TOLERANCE:
                new = mix(bids[i], new, m.budgets[i])
            bids[i], spent[i] = new, spends(m, i, new)
        if moved <= TOLERANCE:
            return bids, rounds, True
    return bids, max_rounds, False


def allocations(m: Market, bids: list[dict[Good, int]]) -> list[list[dict[str, int]]]:
    """Per buyer, per host: the pure allocator's allocation of one tick (one account
    per buyer and host, or per buyer, host and resource in split mode)."""
    out: list[list[dict[str, int]]] = [[{} for _ in m.capacity] for _ in m.budgets]
    for j, cap in enumerate(m.capacity):
        accounts = []
        for i, b in enumerate(bids):
            for (h, r), x in sorted(b.items()):
                if h != j or x <= 0:
                    continue
                ws = m.weights[i] if r == "" else {r: PPM}
                accounts.append(AccountState(f"b{i:04d}{r}", x, INTERVAL_S * 10**6,
                                             {q: Bid(w, 0, cap[q]) for q, w in ws.items()}))
        res = allocate(AllocationInput(cap, tuple(accounts), 0, TICK_US, ROOT_BID))
        for a in accounts:
            mine = out[int(a.account_id[1:5])][j]
            for q, v in res.allocation(a.account_id).items():
                mine[q] = mine.get(q, 0) + v
    return out


def social_optimum(m: Market) -> float:
    """max Σ_i u_i over the allocations of the whole market: a linear programme."""
    from scipy.optimize import linprog
    n = len(m.budgets)
    cells = [(j, r) for j in range(len(m.capacity)) for r in m.resources]
    cost = [-m.value(i, j, r) * m.capacity[j][r] / m.norm(i)
            for i in range(n) for j, r in cells]
    a_ub = [[1.0 if c == q else 0.0 for _i in range(n) for q in range(len(cells))]
            for c in range(len(cells))]
    got = linprog(cost, A_ub=a_ub, b_ub=[1.0] * len(cells), bounds=(0, 1), method="highs")
    assert got.status == 0, got.message
    return float(-got.fun)


def outcome(m: Market, mode: str, max_rounds: int) -> dict[str, Any]:
    bids, rounds, converged = equilibrium(m, mode, max_rounds)
    alloc = allocations(m, bids)
    n = len(m.budgets)
    own = [m.utility(i, alloc[i]) for i in range(n)]
    pairs = [(i, j, m.utility(i, alloc[j])) for i in range(n) for j in range(n) if i != j]
    envy = min((own[i] / u for i, _j, u in pairs if u > 0), default=1.0)
    scaled = min((own[i] / m.budgets[i] / (u / m.budgets[j]) for i, j, u in pairs if u > 0),
                 default=1.0)
    return {"rounds": rounds, "converged": converged,
            "efficiency": sum(own) / social_optimum(m), "envy": min(1.0, envy),
            "envy_budget": min(1.0, scaled), "resources": len(m.resources)}


def summary(rows: list[dict[str, Any]], suffix: str = "") -> dict[str, Any]:
    rounds = [r["rounds"] for r in rows]
    out: dict[str, Any] = {
        f"rounds_p50{suffix}": statistics.median(rounds), f"rounds_max{suffix}": max(rounds),
        f"converged{suffix}": sum(r["converged"] for r in rows) / len(rows)}
    for name in ("efficiency", "envy", "envy_budget"):
        vals = [r[name] for r in rows]
        out[f"{name}_min{suffix}"] = round(min(vals), 4)
        out[f"{name}_p50{suffix}"] = round(statistics.median(vals), 4)
    return out


def markets_of(count: int, buyers: int, hosts: int, resources: list[int], budgets: str,
               seed: int) -> list[Market]:
    out = []
    for k in range(count):
        m = random_market(random.Random(seed * 1_000_003 + k), buyers, hosts,
                          resources[k % len(resources)])
        if budgets == "equal":
            m = Market(m.resources, m.capacity, [10**6] * buyers, m.weights, m.prefs)
        out.append(m)
    return out


def run(markets: int, buyers: int, hosts: int, resources: list[int], max_rounds: int,
        seed: int, budgets: str = "random", modes: tuple[str, ...] = ("bundle", "split")
        ) -> dict[str, Any]:
    """Headline figures from the first mode; the others prefixed with their name."""
    out: dict[str, Any] = {"markets": markets, "buyers": buyers, "hosts": hosts,
                           "budgets": budgets}
    ms = markets_of(markets, buyers, hosts, resources, budgets, seed)
    for n, mode in enumerate(modes):
        rows = [outcome(m, mode, max_rounds) for m in ms]
        pre = "" if n == 0 else f"{mode}_"
        part = {f"{pre}{k}": v for k, v in summary(rows).items()}
        for nres in sorted(set(resources)):
            some = [r for r in rows if r["resources"] == nres]
            if some:
                part.update({f"{pre}{k}": v for k, v in summary(some, f"_r{nres}").items()})
        out.update(part)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--markets", type=int, default=100)
    ap.add_argument("--buyers", type=int, default=6)
    ap.add_argument("--hosts", type=int, default=5)
    ap.add_argument("--resources", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--max-rounds", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--budgets", choices=["random", "equal"], default="random")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    res = run(args.markets, args.buyers, args.hosts, args.resources, args.max_rounds,
              args.seed, args.budgets)
    if args.json:
        print(json.dumps(res))
    else:
        for k, v in res.items():
            print(f"{k:24} {v}")


if __name__ == "__main__":
    main()
