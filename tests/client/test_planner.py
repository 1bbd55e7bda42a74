"""Best response: worked examples and properties."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pmarket.client.planner import Candidate, PlanError, best_response


def utility(cands: list[Candidate], bids: dict[bytes, int]) -> float:
    return sum(c.weight * bids.get(c.host_id, 0) / (bids.get(c.host_id, 0) + c.price)
               for c in cands)


def test_single_host_gets_everything() -> None:
    assert best_response([Candidate(b"a", 10, 5)], 100) == {b"a": 100}


def test_two_equal_hosts_split_evenly() -> None:
    bids = best_response([Candidate(b"a", 10, 50), Candidate(b"b", 10, 50)], 100)
    assert bids == {b"a": 50, b"b": 50}


def test_worked_example_by_hand() -> None:
    # w = (4, 1), y = (1, 1), X = 2: sqrt(w y) = (2, 1), (X + Σy) / Σ sqrt = 4 / 3
    # x_a = 2 * 4/3 - 1 = 5/3, x_b = 1 * 4/3 - 1 = 1/3 (in units of 1e6 micro-credits)
    bids = best_response([Candidate(b"a", 4, 1_000_000), Candidate(b"b", 1, 1_000_000)],
                         2_000_000)
    assert bids == {b"a": 1_666_667, b"b": 333_333}


def test_expensive_host_is_left_out() -> None:
    bids = best_response([Candidate(b"cheap", 10, 1), Candidate(b"dear", 10, 10_000)], 10)
    assert bids == {b"cheap": 10}


def test_bad_input() -> None:
    with pytest.raises(PlanError):
        best_response([Candidate(b"a", 1, 1)], 0)
    with pytest.raises(PlanError):
        best_response([Candidate(b"a", 0, 1), Candidate(b"b", 5, 0)], 10)


hosts = st.lists(
    st.tuples(st.integers(1, 10_000), st.integers(1, 10_000_000)), min_size=1, max_size=8,
)


@given(hosts, st.integers(1, 100_000_000))
def test_spends_exactly_the_budget_on_positive_bids(spec: list, budget: int) -> None:
    cands = [Candidate(bytes([i]), w, y) for i, (w, y) in enumerate(spec)]
    bids = best_response(cands, budget)
    assert sum(bids.values()) == budget
    assert all(x > 0 for x in bids.values())


big_hosts = st.lists(
    st.tuples(st.integers(1, 10_000), st.integers(10_000, 10_000_000)), min_size=1, max_size=8,
)


@given(big_hosts, st.integers(100_000, 100_000_000), st.integers(0, 7), st.integers(1, 999))
def test_no_small_shift_improves_utility(spec: list, budget: int, i: int, frac: int) -> None:
    # prices well above one micro-credit, so integer rounding cannot matter
    cands = [Candidate(bytes([k]), w, y) for k, (w, y) in enumerate(spec)]
    bids = best_response(cands, budget)
    best = utility(cands, bids)
    # moving a slice of budget from one chosen host to any other host never helps
    src = sorted(bids)[i % len(bids)]
    delta = max(1, bids[src] * frac // 1000)
    for c in cands:
        if c.host_id == src:
            continue
        moved = dict(bids)
        moved[src] -= delta
        moved[c.host_id] = moved.get(c.host_id, 0) + delta
        assert utility(cands, moved) <= best * (1 + 1e-7)


def quadratic_reference(candidates: list[Candidate], budget: int) -> dict[bytes, float]:
    """The planner before issue 12, verbatim in its loop: every prefix recomputed, O(m^2)."""
    import math
    ranked = sorted(candidates, key=lambda c: (-c.weight / c.price, c.host_id))
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
    return {c.host_id: b for c, b in zip(chosen, bids, strict=True)}


@given(st.lists(st.tuples(st.integers(1, 10**6), st.integers(1, 10**7)), min_size=1,
                max_size=60), st.integers(1, 10**9))
def test_running_sums_match_the_quadratic_loop(spec: list, budget: int) -> None:
    cands = [Candidate(i.to_bytes(2, "big"), w, y) for i, (w, y) in enumerate(spec)]
    ref = quadratic_reference(cands, budget)
    got = best_response(cands, budget)
    assert sum(got.values()) == budget
    assert set(got) <= set(ref)
    for host, x in ref.items():   # rounding: within one micro-credit of the real bid
        assert abs(got.get(host, 0) - x) <= 1 + 1e-9 * budget
