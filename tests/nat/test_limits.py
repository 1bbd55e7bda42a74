"""AutoNAT v2's rate limits and dial data, on an explicit monotonic clock."""

import bisect

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pmarket.nat.limits import (
    DIAL_DATA_MAX,
    DIAL_DATA_MIN,
    MAX_DIAL_CHUNK,
    DialLimiter,
    DialLimits,
    dial_data_needed,
)


def test_the_thirteenth_request_of_a_peer_within_a_minute_is_refused() -> None:
    lim = DialLimiter()
    for i in range(12):
        assert lim.admit("198.18.0.1", 100.0 + i) is None
        lim.done("198.18.0.1")
    assert lim.admit("198.18.0.1", 159.9) == "peer_rate"
    assert lim.admit("198.18.0.2", 159.9) is None      # another peer is not affected
    assert lim.admit("198.18.0.1", 160.0) is None      # the first one left the window
    assert lim.admit("198.18.0.1", 160.5) == "peer_rate"


def test_total_rate() -> None:
    lim = DialLimiter(DialLimits(per_peer_per_min=100, total_per_min=5))
    for i in range(5):
        assert lim.admit(f"198.18.0.{i}", 0.0) is None
        lim.done(f"198.18.0.{i}")
    assert lim.admit("198.18.1.1", 59.0) == "total_rate"
    assert lim.admit("198.18.1.1", 60.0) is None


def test_concurrency_per_peer() -> None:
    lim = DialLimiter()
    assert lim.admit("p", 0.0) is None
    assert lim.admit("p", 0.0) is None
    assert lim.admit("p", 0.0) == "peer_concurrency"
    assert lim.running("p") == 2
    assert lim.admit("q", 0.0) is None
    lim.done("p")
    assert lim.admit("p", 1.0) is None
    for _ in range(5):                       # done without admit never goes negative
        lim.done("p")
    assert lim.running("p") == 0


def test_refusals_count_for_nothing() -> None:
    lim = DialLimiter(DialLimits(per_peer_per_min=1))
    assert lim.admit("p", 0.0) is None
    for t in range(59):
        assert lim.admit("p", float(t)) == "peer_rate"
    assert lim.admit("p", 60.0) is None


def test_memory_is_bounded_by_the_last_minute() -> None:
    lim = DialLimiter(DialLimits(total_per_min=10_000, per_peer_per_min=1))
    for i in range(1000):
        assert lim.admit(f"peer{i}", float(i)) is None
        lim.done(f"peer{i}")
    assert lim.tracked_peers() <= 61


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([0.0, 0.2, 1.0, 7.0]), st.integers(0, 9),
                          st.booleans()), max_size=400))
def test_never_more_than_the_limits_in_any_minute(
        steps: list[tuple[float, int, bool]]) -> None:
    lim = DialLimiter()
    now = 0.0
    admitted: dict[str, list[float]] = {}
    every: list[float] = []
    running: dict[str, int] = {}
    for gap, who, finish in steps:
        now += gap
        peer = f"198.18.0.{who}"
        reason = lim.admit(peer, now)
        if reason is None:
            admitted.setdefault(peer, []).append(now)
            every.append(now)
            running[peer] = running.get(peer, 0) + 1
        assert running.get(peer, 0) <= 2
        if finish and running.get(peer, 0):
            lim.done(peer)
            running[peer] -= 1

    def most_in_a_minute(times: list[float]) -> int:   # any window [t, t + 60)
        return max((bisect.bisect_left(times, t + 60) - i for i, t in enumerate(times)),
                   default=0)

    assert all(most_in_a_minute(times) <= 12 for times in admitted.values())
    assert most_in_a_minute(every) <= 60


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 30), min_size=1, max_size=300))
def test_a_busy_peer_gets_its_twelve(whens: list[int]) -> None:
    """A lone peer asking at least once a second is admitted exactly when fewer than 12
    of its requests lie in the last minute."""
    lim = DialLimiter()
    now, taken = 0.0, list[float]()
    for step in whens:
        now += step / 10
        expect = len([t for t in taken if t > now - 60]) < 12
        got = lim.admit("p", now) is None
        assert got == expect
        if got:
            taken.append(now)
            lim.done("p")


def test_dial_data_size() -> None:
    assert dial_data_needed(0) == DIAL_DATA_MIN == 30_000
    assert dial_data_needed(DIAL_DATA_MAX - DIAL_DATA_MIN) == DIAL_DATA_MAX == 100_000
    assert dial_data_needed(DIAL_DATA_MAX - DIAL_DATA_MIN + 1) == DIAL_DATA_MIN
    assert MAX_DIAL_CHUNK == 4096
    with pytest.raises(ValueError):
        dial_data_needed(-1)


@given(st.integers(0, 2**64))
def test_dial_data_always_in_range(value: int) -> None:
    assert DIAL_DATA_MIN <= dial_data_needed(value) <= DIAL_DATA_MAX
