#!/usr/bin/env python3
"""Planner benchmark: the buyer's best response (p2pmarket/client/planner.py) over m hosts.

For each m in ``--hosts`` (default 1,000 and 10,000), random hosts (cpu 1-64 GHz,
memory 1-256 GiB, prices 1-10,000 µcredits/s per resource), a budget of 100 credits
over an hour, median of ``--repeat`` runs:

- ``before_ms_M``: the planner before issue 12 (every prefix recomputed, O(m^2)),
  copied here verbatim in its loop, on the same one-resource input;
- ``plan_ms_M``: :func:`plan_bundle` on one resource (cpu), every host allowed
  (``max_hosts = m``): the closed form with running sums, O(m log m);
- ``best_response_ms_M``: the old API, :func:`best_response`, on the same input;
- ``bundle_ms_M``: :func:`plan_bundle` on cpu + memory with their own prices, every
  host allowed: the multiplier found by false position (O(m) per step);
- ``bundle8_ms_M``: the same bundle with ``max_hosts = 8`` (the command line's default);
- ``hosts_used_M``: how many hosts the one-resource best response used;
- ``before_wide_ms_M``, ``plan_wide_ms_M``, ``hosts_used_wide_M``: the same two
  planners on a wide market (prices 1-10 µcredits/s, a budget of 1,000 credits),
  where every host gets a bid: the old loop's O(m^2) worst case.

Usage: scripts/bench/planner.py [--hosts 1000 10000] [--repeat 5] [--no-before] [--json]
The last line with --json is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from p2pmarket.auction.resources import PPM
from p2pmarket.client.planner import Candidate, HostTerms, Want, best_response, plan_bundle

BUDGET = 100 * 10**6
WIDE_BUDGET = 1000 * 10**6
INTERVAL_S = 3600


def before(candidates: list[Candidate], budget: int) -> dict[bytes, int]:
    """The planner as it was before issue 12 (its loop, verbatim)."""
    usable = [c for c in candidates if c.weight > 0 and c.price > 0]
    ranked = sorted(usable, key=lambda c: (-c.weight / c.price, c.host_id))
    chosen: list[Candidate] = []
    bids: list[float] = []
    for k in range(1, len(ranked) + 1):
        prefix = ranked[:k]
        total_y = sum(c.price for c in prefix)
        root_sum = sum(math.sqrt(c.weight * c.price) for c in prefix)
        trial = [math.sqrt(c.weight * c.price) * (budget + total_y) / root_sum - c.price
                 for c in prefix]
        if min(trial) <= 0:
            break
        chosen, bids = prefix, trial
    if not chosen:
        chosen, bids = ranked[:1], [float(budget)]
    ints = [max(0, math.floor(b)) for b in bids]
    ints[0] += budget - sum(ints)
    return {c.host_id: x for c, x in zip(chosen, ints, strict=True) if x > 0}


def market(m: int, seed: int, top_price: int = 10_000) -> list[HostTerms]:
    rng = random.Random(seed)
    return [HostTerms(i.to_bytes(4, "big"),
                      {"cpu": rng.randint(1000, 64_000), "memory": rng.randint(2**20, 2**28)},
                      {"cpu": rng.randint(1, top_price), "memory": rng.randint(1, top_price)})
            for i in range(m)]


def timed(fn: Callable[[], object], repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times), out


def run(sizes: list[int], repeat: int, with_before: bool) -> dict[str, Any]:
    res: dict[str, Any] = {}
    cpu = Want({"cpu": PPM})
    bundle = Want({"cpu": 2 * PPM, "memory": PPM})
    for m in sizes:
        hosts = market(m, m)
        cands = [Candidate(h.host_id, h.capacity["cpu"], h.price["cpu"] * INTERVAL_S)
                 for h in hosts]
        if with_before:
            res[f"before_ms_{m}"], old = timed(partial(before, cands, BUDGET), 1)
        res[f"plan_ms_{m}"], plan = timed(
            partial(plan_bundle, hosts, cpu, BUDGET, INTERVAL_S, m), repeat)
        res[f"best_response_ms_{m}"], new = timed(partial(best_response, cands, BUDGET), repeat)
        res[f"bundle_ms_{m}"], _ = timed(
            partial(plan_bundle, hosts, bundle, BUDGET, INTERVAL_S, m), max(1, repeat // 2))
        res[f"bundle8_ms_{m}"], _ = timed(
            partial(plan_bundle, hosts, bundle, BUDGET, INTERVAL_S, 8), repeat)
        res[f"hosts_used_{m}"] = len(plan.bids)  # type: ignore[attr-defined]
        if with_before:
            assert isinstance(old, dict) and isinstance(new, dict) and set(old) == set(new)
        wide = market(m, m + 1, 10)
        wide_cands = [Candidate(h.host_id, h.capacity["cpu"], h.price["cpu"] * INTERVAL_S)
                      for h in wide]
        if with_before:
            res[f"before_wide_ms_{m}"], _ = timed(partial(before, wide_cands, WIDE_BUDGET), 1)
        res[f"plan_wide_ms_{m}"], plan = timed(
            partial(plan_bundle, wide, cpu, WIDE_BUDGET, INTERVAL_S, m), repeat)
        res[f"hosts_used_wide_{m}"] = len(plan.bids)  # type: ignore[attr-defined]
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in res.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hosts", type=int, nargs="+", default=[1000, 10_000])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--no-before", action="store_true", help="skip the O(m^2) planner")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    res = run(args.hosts, args.repeat, not args.no_before)
    if args.json:
        print(json.dumps(res))
    else:
        for k, v in res.items():
            print(f"{k:24} {v}")


if __name__ == "__main__":
    main()
