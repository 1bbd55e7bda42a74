"""The downsampling rules of the price history, pure (docs/design.md, price history).

A *series* is named by ``(scope, name)``: scope ``own`` (this host's price per resource
type), ``market`` (market prices the node read from the DHT: ``<type>`` the median of
the hosts' whole-resource prices, ``<type>.low`` the cheapest) and ``alloc:<account>``
(an account's share of each resource, in ppm). Values are integers (µcredits per
second, ppm).

Each sample ``(ts, value)`` (``ts`` in µs) goes into two buckets of its series: the
minute bucket and the hour bucket starting at ``ts`` rounded down to a multiple of
the step (:func:`bucket_start`; steps count from the Unix epoch, so every series
shares its bucket edges). A bucket keeps ``count``, ``total`` (the sum: the mean is
``total / count``), ``low``, ``high``, ``last`` and ``last_ts`` (the value of the
latest sample and its time). Two buckets of the same start merge (:func:`merge`):
counts and totals add, low/high are the min/max, last is the later sample's (the
second bucket's on a tie). Merging is associative, so an hour bucket built sample by
sample equals the :func:`rollup` of its minute buckets, and equals one built from the
samples in any grouping: the store updates both steps per batch with :func:`absorb`.

Retention (:func:`cutoff`): minute buckets are kept while they start less than one
day before ``now``, hour buckets less than 90 days before; older ones are pruned.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from p2pmarket.core.errors import P2PMarketError

MINUTE = "minute"
HOUR = "hour"
STEP_US: dict[str, int] = {MINUTE: 60_000_000, HOUR: 3_600_000_000}
DAY_US = 86_400_000_000
KEEP_US: dict[str, int] = {MINUTE: DAY_US, HOUR: 90 * DAY_US}
STEPS = (MINUTE, HOUR)
OWN = "own"
MARKET = "market"
ALLOC = "alloc:"
MAX_KEY = 80
_KEY_RE = re.compile(r"^[A-Za-z0-9_.,:-]{1,80}$")


class HistoryError(P2PMarketError):
    """A bad series name or step."""


@dataclass(frozen=True, order=True)
class SeriesKey:
    scope: str
    name: str


def series_key(scope: object, name: object) -> SeriesKey:
    """A checked key: scope and name of 1..80 characters from ``[A-Za-z0-9_.,:-]``."""
    for what, value in (("scope", scope), ("name", name)):
        if not isinstance(value, str) or not _KEY_RE.match(value):
            raise HistoryError(f"history {what} must be 1..{MAX_KEY} characters of "
                               "letters, digits and _.,:-", repr(value)[:60])
    assert isinstance(scope, str) and isinstance(name, str)
    return SeriesKey(scope, name)


def check_step(step: object) -> str:
    if step not in STEPS:
        raise HistoryError("history step is minute or hour", repr(step)[:20])
    assert isinstance(step, str)
    return step


@dataclass(frozen=True)
class Sample:
    key: SeriesKey
    ts: int      # µs
    value: int


@dataclass(frozen=True)
class Bucket:
    start: int   # µs, a multiple of the step
    count: int
    total: int
    low: int
    high: int
    last: int
    last_ts: int

    @property
    def mean(self) -> float:
        return self.total / self.count

    def to_doc(self) -> dict[str, int | float]:
        return {"t": self.start, "n": self.count, "mean": self.mean, "min": self.low,
                "max": self.high, "last": self.last, "last_ts": self.last_ts}


def bucket_start(ts: int, step: str) -> int:
    """The start of the ``step`` bucket ``ts`` falls in."""
    return ts - ts % STEP_US[step]


def single(ts: int, value: int, step: str) -> Bucket:
    """The bucket of one sample."""
    return Bucket(bucket_start(ts, step), 1, value, value, value, value, ts)


def merge(a: Bucket, b: Bucket) -> Bucket:
    """Both buckets' samples in one (same start)."""
    if a.start != b.start:
        raise ValueError("merging buckets of different starts")
    later = b if b.last_ts >= a.last_ts else a
    return Bucket(a.start, a.count + b.count, a.total + b.total, min(a.low, b.low),
                  max(a.high, b.high), later.last, later.last_ts)


def add(bucket: Bucket | None, ts: int, value: int, step: str) -> Bucket:
    """``bucket`` with one more sample, or the sample's own bucket when ``bucket`` is
    None or another bucket (a sample starts a new bucket at each step edge)."""
    one = single(ts, value, step)
    if bucket is None or bucket.start != one.start:
        return one
    return merge(bucket, one)


def rollup(buckets: Iterable[Bucket], step: str = HOUR) -> list[Bucket]:
    """Finer buckets merged into ``step`` buckets, in time order."""
    out: dict[int, Bucket] = {}
    for b in sorted(buckets, key=lambda b: (b.start, b.last_ts)):
        start = bucket_start(b.start, step)
        moved = replace(b, start=start)
        out[start] = merge(out[start], moved) if start in out else moved
    return [out[s] for s in sorted(out)]


OpenKey = tuple[SeriesKey, str]
"""A series and a step: the bucket a store keeps open for them (its latest)."""
BucketKey = tuple[SeriesKey, str, int]
"""A series, a step and a bucket start: one row of the store."""


def absorb(open_buckets: Mapping[OpenKey, Bucket], samples: Sequence[Sample]
           ) -> dict[BucketKey, Bucket]:
    """One batch: every bucket the samples touched, after them (a bucket continues the
    open bucket given for its series and step when that is the same bucket). The store
    writes these in one transaction; the latest of each series and step stays open."""
    out: dict[BucketKey, Bucket] = {}
    latest: dict[OpenKey, Bucket] = dict(open_buckets)
    for s in sorted(samples, key=lambda s: s.ts):
        for step in STEPS:
            start = bucket_start(s.ts, step)
            held = out.get((s.key, step, start))
            if held is None:
                before = latest.get((s.key, step))
                held = before if before is not None and before.start == start else None
            out[(s.key, step, start)] = latest[(s.key, step)] = add(held, s.ts, s.value, step)
    return out


def latest_of(touched: Mapping[BucketKey, Bucket]) -> dict[OpenKey, Bucket]:
    """The newest bucket per series and step among ``touched``."""
    out: dict[OpenKey, Bucket] = {}
    for (key, step, _start), b in sorted(touched.items(), key=lambda kv: kv[0][2]):
        out[(key, step)] = b
    return out


def cutoff(now: int, step: str) -> int:
    """Buckets of ``step`` starting before this are pruned."""
    return now - KEEP_US[step]


def kept(bucket: Bucket, now: int, step: str) -> bool:
    return bucket.start >= cutoff(now, step)


def default_since(now: int, step: str) -> int:
    """What a query without ``since`` covers: the whole retention of its step."""
    return cutoff(now, step)


__all__ = [
    "ALLOC",
    "HOUR",
    "MARKET",
    "MINUTE",
    "OWN",
    "STEPS",
    "STEP_US",
    "Bucket",
    "BucketKey",
    "HistoryError",
    "OpenKey",
    "Sample",
    "SeriesKey",
    "absorb",
    "add",
    "bucket_start",
    "check_step",
    "cutoff",
    "kept",
    "latest_of",
    "merge",
    "rollup",
    "series_key",
    "single",
]
