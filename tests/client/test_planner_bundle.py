"""plan_bundle: against a numerical optimiser, worked examples, minimums, the real allocator."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2pmarket.auction.resources import PPM, Quantity, parse_bids
from p2pmarket.client.planner import (
    HostTerms,
    PlanError,
    Want,
    plan_bundle,
    want_from_bids,
)

optimize = pytest.importorskip("scipy.optimize")
np = pytest.importorskip("numpy")


def model_utility(hosts: list[HostTerms], want: Want, bids: dict[bytes, float],
                  interval_s: int) -> float:
    """The planner's rule 4, written out again: Σ_j Σ_r (a_r / Cref_r) C_jr
    min(x a_r / (x a_r + p_jr T), max_r / C_jr)."""
    total_w = sum(want.weights.values())
    out = 0.0
    for r, w in want.weights.items():
        cref = max(h.capacity[r] for h in hosts)
        for h in hosts:
            x = bids.get(h.host_id, 0.0)
            c = h.capacity[r]
            mx = want.maxs.get(r, c)
            assert isinstance(mx, int)
            bid_r = x * w / total_w
            share = c * bid_r / (bid_r + h.price[r] * interval_s) if x > 0 else 0.0
            out += w / total_w / cref * min(share, min(mx, c))
    return out


def optimum(hosts: list[HostTerms], want: Want, budget: int, interval_s: int) -> float:
    """SLSQP from several starts on the simplex (variables: fractions of the budget)."""
    n = len(hosts)

    def neg(t: object) -> float:
        v = np.asarray(t)
        return -model_utility(hosts, want, {h.host_id: budget * max(0.0, float(v[i]))
                                            for i, h in enumerate(hosts)}, interval_s)

    best = -math.inf
    rng = random.Random(1)
    starts = [[1 / n] * n] + [[1.0 if i == k else 0.0 for i in range(n)] for k in range(n)]
    starts += [[rng.random() for _ in range(n)] for _ in range(3)]
    for s in starts:
        t0 = np.array(s) / sum(s)
        res = optimize.minimize(neg, t0, method="SLSQP", bounds=[(0, 1)] * n,
                                constraints=[{"type": "eq", "fun": lambda t: sum(t) - 1}],
                                options={"ftol": 1e-14, "maxiter": 500})
        t = np.clip(res.x, 0, None)
        t = t / t.sum()
        best = max(best, -neg(t))
    return best


instances = st.builds(
    lambda n, r, seed: _instance(n, r, seed),
    st.integers(1, 5), st.integers(1, 3), st.integers(0, 10**9))


def _instance(n: int, nres: int, seed: int) -> tuple[list[HostTerms], Want, int]:
    rng = random.Random(seed)
    rs = ["cpu", "memory", "disk"][:nres]
    hosts = [HostTerms(bytes([i]), {r: rng.randint(1000, 100_000) for r in rs},
                       {r: rng.randint(1, 5_000) for r in rs}) for i in range(n)]
    weights = {r: rng.randint(1, 5) * PPM for r in rs}
    maxs: dict[str, int | Quantity] = {}
    if rng.random() < 0.4:
        r = rng.choice(rs)
        maxs[r] = rng.randint(100, 60_000)
    return hosts, Want(weights, {}, maxs), rng.randint(10_000, 10**8)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(instances)
def test_never_worse_than_the_optimiser(inst: tuple[list[HostTerms], Want, int]) -> None:
    hosts, want, budget = inst
    plan = plan_bundle(hosts, want, budget, 60, len(hosts))
    assert sum(plan.bids.values()) == budget and all(b > 0 for b in plan.bids.values())
    mine = model_utility(hosts, want, {k: float(v) for k, v in plan.bids.items()}, 60)
    assert mine == pytest.approx(plan.utility, rel=1e-9)
    assert mine >= optimum(hosts, want, budget, 60) * (1 - 1e-6)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10**9), st.integers(1, 8), st.integers(1, 8))
def test_minimums_hold_and_bids_sum(seed: int, n: int, cap: int) -> None:
    rng = random.Random(seed)
    hosts = [HostTerms(bytes([i]), {"cpu": rng.randint(100, 10_000),
                                    "memory": rng.randint(10**5, 10**7)},
                       {"cpu": rng.randint(1, 1000), "memory": rng.randint(1, 1000)})
             for i in range(n)]
    want = Want({"cpu": 2 * PPM, "memory": PPM},
                {"cpu": rng.randint(0, 3000), "memory": Quantity(rng.randint(0, PPM // 2), True)})
    budget = rng.randint(1, 10**7)
    try:
        plan = plan_bundle(hosts, want, budget, 30, cap)
    except PlanError:
        return
    assert sum(plan.bids.values()) == budget and len(plan.bids) <= cap
    for h in hosts:
        if h.host_id in plan.bids:
            got = plan.predicted[h.host_id]
            assert got["cpu"] >= want.mins["cpu"]  # type: ignore[operator]
            assert got["memory"] >= h.capacity["memory"] * want.mins["memory"].value // PPM  # type: ignore[union-attr]
            assert h.host_id not in plan.dropped


def test_one_host_takes_the_budget_and_predicts_its_share() -> None:
    """cpu 1000 MHz at 9 µcr/s, T = 10 s: y = 90; weight cpu only, X = 10:
    share = 1000 * 10 / (10 + 90) = 100 MHz."""
    h = HostTerms(b"a", {"cpu": 1000}, {"cpu": 9})
    plan = plan_bundle([h], Want({"cpu": PPM}), 10, 10, 8)
    assert plan.bids == {b"a": 10} and plan.predicted == {b"a": {"cpu": 100}}
    assert plan.utility == pytest.approx(0.1)


def test_bundle_worked_example() -> None:
    """Two equal weights, so a_cpu = a_mem = 1/2 and z = 2 y. Host a: cpu 100 @ y 50,
    memory 100 @ y 50 (z = 100 on both); host b: same capacities, y = 200 (z = 400).
    Both hosts are 'one price', u_a = u_b = 1 + 1 = 2 (Cref = 100). X = 300:
    sqrt(u z) = (sqrt 200, sqrt 800) = (14.14, 28.28); c = (300 + 500) / 42.43 = 18.86;
    x_a = 14.14 * 18.86 - 100 = 166.67, x_b = 28.28 * 18.86 - 400 = 133.33.
    Predicted on a (bid 167): floor(100 * 167 / (167 + 100)) = 62 on each resource."""
    hosts = [HostTerms(b"a", {"cpu": 100, "memory": 100}, {"cpu": 5, "memory": 5}),
             HostTerms(b"b", {"cpu": 100, "memory": 100}, {"cpu": 20, "memory": 20})]
    plan = plan_bundle(hosts, Want({"cpu": PPM, "memory": PPM}), 300, 10, 8)
    assert plan.bids == {b"a": 167, b"b": 133}
    assert plan.predicted[b"a"] == {"cpu": 62, "memory": 62}


def test_bundle_prices_differ_per_resource() -> None:
    """Host a is cheap on cpu and dear on memory, b the reverse; the buyer weighs cpu 3:1,
    so a ranks first: U'(0) = Σ u/z with u = w/Cref * C (= 3 for cpu, 1 for memory) and
    z = y W / w: a: 3/(10*4/3) + 1/(1000*4) = 0.2253, b: 3/(1000*4/3) + 1/(10*4) = 0.0273."""
    hosts = [HostTerms(b"a", {"cpu": 10, "memory": 10}, {"cpu": 1, "memory": 100}),
             HostTerms(b"b", {"cpu": 10, "memory": 10}, {"cpu": 100, "memory": 1})]
    plan = plan_bundle(hosts, Want({"cpu": 3 * PPM, "memory": PPM}), 50, 10, 8)
    assert plan.bids[b"a"] > plan.bids.get(b"b", 0) and sum(plan.bids.values()) == 50


def test_a_host_short_of_a_min_is_dropped_and_the_plan_recomputed() -> None:
    """min cpu 500 of 1000: need = ceil(500 * y / 500) = y. Host a: y = 100; b: y = 1000.
    X = 600 split by the closed form would give b less than its need of 1000 (the
    whole budget is under it: dropped as 'budget'); c: y = 200, need 200. Best response
    over a and c: sqrt(u z) = (10 sqrt 10, 10 sqrt 20), c = 900 / 76.0 = 11.84,
    x_a = 374.5 >= 100, x_c = 329.6 >= 200 - both kept."""
    hosts = [HostTerms(b"a", {"cpu": 1000}, {"cpu": 10}),
             HostTerms(b"b", {"cpu": 1000}, {"cpu": 100}),
             HostTerms(b"c", {"cpu": 1000}, {"cpu": 20})]
    want = Want({"cpu": PPM}, {"cpu": 500})
    plan = plan_bundle(hosts, want, 600, 10, 8)
    assert plan.dropped == {b"b": "budget"}
    assert set(plan.bids) == {b"a", b"c"}
    assert all(a["cpu"] >= 500 for a in plan.predicted.values())
    # with X = 350 the split gives c (need 200) less than its need: dropped, a gets it all
    plan = plan_bundle(hosts, want, 350, 10, 8)
    assert plan.bids == {b"a": 350} and plan.dropped[b"c"] == "below_min"


def test_max_caps_send_the_money_elsewhere() -> None:
    """Host a is cheaper, but the buyer's max (10 MHz) is reached at x = z 10 / 90 with
    z = 100: 11.1 µcr, rounded up to 12 so the max is reached; the rest of the budget
    goes to b (10 MHz in all: the max does not bind there)."""
    hosts = [HostTerms(b"a", {"cpu": 100}, {"cpu": 10}),
             HostTerms(b"b", {"cpu": 10}, {"cpu": 1})]
    plan = plan_bundle(hosts, Want({"cpu": PPM}, {}, {"cpu": 10}), 1000, 10, 8)
    assert plan.bids[b"a"] == 12 and plan.bids[b"b"] == 1000 - plan.bids[b"a"]
    assert plan.predicted[b"a"] == {"cpu": 10}


def test_max_hosts_caps_the_hosts_used() -> None:
    hosts = [HostTerms(bytes([i]), {"cpu": 100}, {"cpu": 1}) for i in range(20)]
    plan = plan_bundle(hosts, Want({"cpu": PPM}), 10**6, 10, 8)
    assert len(plan.bids) == 8 and sum(plan.bids.values()) == 10**6
    assert max(plan.bids.values()) - min(plan.bids.values()) <= 1


def test_bad_inputs() -> None:
    h = HostTerms(b"a", {"cpu": 100}, {"cpu": 1})
    for args in [([h], Want({"cpu": PPM}), 0, 10, 8), ([h], Want({"cpu": PPM}), 10, 0, 8),
                 ([h], Want({"cpu": 0}), 10, 10, 8),
                 ([h], Want({"cpu": PPM}, {"memory": 5}), 10, 10, 8),
                 ([h], Want({"memory": PPM}), 10, 10, 8)]:
        with pytest.raises(PlanError):
            plan_bundle(*args)  # type: ignore[arg-type]
    with pytest.raises(PlanError):   # min above capacity: every host dropped
        plan_bundle([h], Want({"cpu": PPM}, {"cpu": 100}), 10, 10, 8)


def test_want_from_bids_and_the_real_allocator() -> None:
    """The predicted allocation is what the host's allocator gives (up to the
    per-tick rounding of the spend)."""
    from p2pmarket.auction.allocator import AllocationInput, allocate
    from p2pmarket.auction.book import AccountState
    from p2pmarket.auction.model import Bid

    want = want_from_bids(parse_bids(["cpu:2,0.1,1", "memory:1,1GiB,4GiB"]))
    assert want.weights == {"cpu": 2 * PPM, "memory": PPM}
    caps = {"cpu": 4000, "memory": 16 * 2**20}
    tick_us, interval_s = 10**6, 100
    other = AccountState("other", 300 * 100, 100 * 10**6,
                         {"cpu": Bid(PPM, 0, 4000), "memory": Bid(PPM, 0, 2**24)})
    inp = AllocationInput(caps, (other,), 0, tick_us, root_bid=1)
    price = allocate(inp).prices
    h = HostTerms(b"h", caps, price)
    plan = plan_bundle([h], want, 90_000, interval_s, 8)
    got = plan.predicted[b"h"]
    me = AccountState("me", 90_000, interval_s * 10**6,
                      {"cpu": Bid(2 * PPM, 400, 4000), "memory": Bid(PPM, 2**20, 2**22)})
    real = allocate(AllocationInput(caps, (other, me), 0, tick_us, root_bid=1)).allocation("me")
    for r in ("cpu", "memory"):
        assert abs(real[r] - got[r]) <= caps[r] // 100


def test_hosts_lacking_a_resource_are_dropped_and_preferences_rank() -> None:
    """Host b offers no memory: dropped as not_offered. a and c are alike but the
    buyer prefers c twice as much, so c gets more."""
    hosts = [HostTerms(b"a", {"cpu": 100, "memory": 100}, {"cpu": 5, "memory": 5}),
             HostTerms(b"b", {"cpu": 100}, {"cpu": 1}),
             HostTerms(b"c", {"cpu": 100, "memory": 100}, {"cpu": 5, "memory": 5}, 2.0)]
    plan = plan_bundle(hosts, Want({"cpu": PPM, "memory": PPM}), 1000, 10, 8)
    assert plan.dropped == {b"b": "not_offered"}
    assert plan.bids[b"c"] > plan.bids[b"a"] and sum(plan.bids.values()) == 1000


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 10**5), st.integers(1, 10**4)), min_size=1,
                max_size=40), st.integers(1, 10**9), st.integers(1, 40))
def test_one_resource_plan_is_the_closed_form(spec: list, budget: int, cap: int) -> None:
    """plan_bundle on one resource = best_response on (capacity, price * T) over the
    first ``cap`` hosts in rank order."""
    from p2pmarket.client.planner import Candidate, best_response
    hosts = [HostTerms(i.to_bytes(2, "big"), {"cpu": c}, {"cpu": p})
             for i, (c, p) in enumerate(spec)]
    plan = plan_bundle(hosts, Want({"cpu": PPM}), budget, 7, cap)
    ranked = sorted(hosts, key=lambda h: (-h.capacity["cpu"] / h.price["cpu"], h.host_id))
    cands = [Candidate(h.host_id, h.capacity["cpu"], h.price["cpu"] * 7) for h in ranked[:cap]]
    assert plan.bids == best_response(cands, budget)
