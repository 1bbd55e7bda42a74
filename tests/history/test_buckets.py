"""The price history's downsampling (pure, with hypothesis) and its sqlite store:
buckets hold what their samples say, minute buckets roll up into the hour buckets the
store keeps, batches do not matter, retention prunes what it says, a restart goes on
with the stored bucket."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from p2pmarket.history.buckets import (
    DAY_US,
    HOUR,
    MINUTE,
    STEP_US,
    Bucket,
    HistoryError,
    Sample,
    SeriesKey,
    absorb,
    add,
    bucket_start,
    cutoff,
    latest_of,
    merge,
    rollup,
    series_key,
)
from p2pmarket.history.samples import alloc_samples, market_prices, market_samples, own_samples
from p2pmarket.history.store import HistoryStore

T0 = 1_800_000_000_000_000   # µs, on an hour edge
KEY = SeriesKey("own", "cpu")
samples_st = st.lists(st.tuples(st.integers(0, 3 * 3600 * 10**6), st.integers(-10**9, 10**12)),
                      min_size=1, max_size=60)


def direct(samples: list[tuple[int, int]], step: str) -> dict[int, Bucket]:
    """The buckets by definition: group by start, then count, sum, min, max, last."""
    groups: dict[int, list[tuple[int, int]]] = {}
    for ts, v in samples:
        groups.setdefault(bucket_start(ts, step), []).append((ts, v))
    out = {}
    for start, group in groups.items():
        values = [v for _, v in group]
        last_ts = max(ts for ts, _ in group)
        last = [v for ts, v in group if ts == last_ts][-1]
        out[start] = Bucket(start, len(values), sum(values), min(values), max(values),
                            last, last_ts)
    return out


@given(samples_st)
def test_buckets_hold_what_their_samples_say(raw: list[tuple[int, int]]) -> None:
    samples = sorted(((T0 + t, v) for t, v in raw), key=lambda s: s[0])
    for step in (MINUTE, HOUR):
        built: dict[int, Bucket] = {}
        for ts, v in samples:
            start = bucket_start(ts, step)
            assert start % STEP_US[step] == 0 and start <= ts < start + STEP_US[step]
            built[start] = add(built.get(start), ts, v, step)
        assert built == direct(samples, step)
        for b in built.values():
            assert b.low <= b.mean <= b.high


@given(samples_st)
def test_minute_buckets_roll_up_into_the_hour_buckets(raw: list[tuple[int, int]]) -> None:
    samples = sorted(((T0 + t, v) for t, v in raw), key=lambda s: s[0])
    minutes = direct(samples, MINUTE).values()
    assert {b.start: b for b in rollup(minutes)} == direct(samples, HOUR)


@given(samples_st, st.lists(st.integers(1, 10), min_size=1, max_size=10))
@settings(max_examples=60)
def test_batches_do_not_change_the_buckets(raw: list[tuple[int, int]], cuts: list[int]
                                           ) -> None:
    samples = sorted((Sample(KEY, T0 + t, v) for t, v in raw), key=lambda s: s.ts)
    held: dict[tuple[SeriesKey, str], Bucket] = {}
    rows: dict[tuple[str, int], Bucket] = {}
    i = 0
    for n in cuts * 10:
        if i >= len(samples):
            break
        touched = absorb(held, samples[i:i + n])
        held.update(latest_of(touched))
        rows.update({(step, start): b for (_, step, start), b in touched.items()})
        i += n
    pairs = [(s.ts, s.value) for s in samples[:i]]
    for step in (MINUTE, HOUR):
        assert {s: b for (st_, s), b in rows.items() if st_ == step} == direct(pairs, step)


@given(st.lists(st.tuples(st.integers(0, 59_999_999), st.integers(0, 100)), min_size=3,
                max_size=3))
def test_merging_is_associative(three: list[tuple[int, int]]) -> None:
    a, b, c = (add(None, T0 + t, v, MINUTE) for t, v in three)
    assert merge(merge(a, b), c) == merge(a, merge(b, c))


def test_series_keys_are_checked() -> None:
    assert series_key("alloc:ab12", "cpu") == SeriesKey("alloc:ab12", "cpu")
    for bad in ("", "a b", "<b>", "x" * 81, 3):
        try:
            series_key("own", bad)
        except HistoryError:
            continue
        raise AssertionError(bad)


def test_the_store_keeps_minutes_a_day_hours_90_days(tmp_path: Path) -> None:
    store = HistoryStore(tmp_path / "history.sqlite")
    old = T0 - 100 * DAY_US
    store.record([Sample(KEY, old, 5)], old)
    store.record([Sample(KEY, T0 - 2 * DAY_US, 6)], T0 - 2 * DAY_US)
    store.record([Sample(KEY, T0 - 60 * 10**6, 7), Sample(KEY, T0 + 10**6, 8)], T0 + 10**6)
    # the 100-day-old hour and the 2-day-old minute went; the rest stays
    hours = store.series(KEY, HOUR, 0)
    minutes = store.series(KEY, MINUTE, 0)
    assert [b.last for b in hours] == [6, 7, 8]
    assert [b.last for b in minutes] == [7, 8]
    assert all(b.start >= cutoff(T0, MINUTE) for b in minutes)
    store.close()


def test_a_restart_goes_on_with_the_stored_bucket(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite"
    store = HistoryStore(path)
    store.record([Sample(KEY, T0 + 1, 10), Sample(KEY, T0 + 2, 20)], T0 + 2)
    store.close()
    store = HistoryStore(path)
    store.record([Sample(KEY, T0 + 3, 30)], T0 + 3)
    [minute] = store.series(KEY, MINUTE, T0)
    [hour] = store.series(KEY, HOUR, T0)
    assert minute == hour == Bucket(T0, 3, 60, 10, 30, 30, T0 + 3)
    assert minute.to_doc()["mean"] == 20
    assert store.keys("own") == [KEY] and store.keys("alloc:") == []
    store.close()


def test_the_sampled_values() -> None:
    summary = {"cpu": {"capacity": 4000, "price": 12, "free": 1000},
               "tcp_port": {"capacity": 10, "price": 3, "free": 10}}
    assert [(s.key.name, s.value) for s in own_samples(summary, T0)] == [("cpu", 12),
                                                                        ("tcp_port", 3)]
    alloc = alloc_samples({"acc1": {"cpu": 1000, "tcp_port,30000": 1}, "acc2": {}},
                          {"cpu": 4000, "memory": 0}, T0)
    assert alloc == [Sample(SeriesKey("alloc:acc1", "cpu"), T0, 250_000),
                     Sample(SeriesKey("alloc:acc2", "cpu"), T0, 0)]
    hosts = [{"resources": {"cpu": {"capacity": c, "price": p}}}
             for c, p in ((1000, 30), (2000, 10), (3000, 20), (500, 40))]
    prices = market_prices(hosts)
    assert prices == {"cpu": {"hosts": 4, "capacity": 6500, "low": 10, "median": 20,
                              "high": 40}}
    assert [(s.key.name, s.value) for s in market_samples(prices, T0)] == [("cpu", 20),
                                                                           ("cpu.low", 10)]
