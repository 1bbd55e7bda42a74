"""The price history in sqlite (``history.sqlite`` in the node's data dir, via
:func:`~p2pmarket.core.files.open_db`): one row per (scope, name, step, bucket start),
with the bucket's count, total, low, high, last and last_ts
(:class:`~p2pmarket.history.buckets.Bucket`).

:meth:`HistoryStore.record` takes one batch of samples (one tick's), merges it into the
open buckets (:func:`~p2pmarket.history.buckets.absorb`, kept in memory: the store reads
a bucket back only for the first sample of a series after a restart) and writes the
touched rows in one transaction; once a minute it prunes what the retention rules drop
(:func:`~p2pmarket.history.buckets.cutoff`). History is a convenience, not a record
anything depends on: the database runs with ``synchronous=NORMAL`` (WAL still keeps
it consistent; a power loss may lose the last batches), so a sample each tick costs no
fsync.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from p2pmarket.core.files import open_db, require_format
from p2pmarket.history.buckets import (
    MINUTE,
    STEP_US,
    STEPS,
    Bucket,
    OpenKey,
    Sample,
    SeriesKey,
    absorb,
    bucket_start,
    cutoff,
    latest_of,
)

STORE = "history"
VERSION = 1
PRUNE_EVERY_US = 60_000_000
MAX_POINTS = 2200   # a query's rows at most (a day of minutes is 1440, 90 days of hours 2160)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS buckets (
    scope TEXT NOT NULL,
    name TEXT NOT NULL,
    step TEXT NOT NULL,
    start INTEGER NOT NULL,
    count INTEGER NOT NULL,
    total INTEGER NOT NULL,
    low INTEGER NOT NULL,
    high INTEGER NOT NULL,
    last INTEGER NOT NULL,
    last_ts INTEGER NOT NULL,
    PRIMARY KEY (scope, name, step, start)
) WITHOUT ROWID;
"""
_COLUMNS = "start, count, total, low, high, last, last_ts"


class HistoryStore:
    def __init__(self, path: Path | str) -> None:
        self.conn = open_db(path)
        self.conn.execute("PRAGMA synchronous=NORMAL")
        require_format(self.conn, STORE, VERSION, ["buckets"], "the first format")
        with self.conn:
            self.conn.executescript(_SCHEMA)
        self._open: dict[OpenKey, Bucket] = {}
        self._pruned = 0

    def close(self) -> None:
        self.conn.close()

    def _bucket(self, key: SeriesKey, step: str, start: int) -> Bucket | None:
        row = self.conn.execute(
            f"SELECT {_COLUMNS} FROM buckets WHERE scope = ? AND name = ? AND step = ? "
            "AND start = ?", (key.scope, key.name, step, start)).fetchone()
        return None if row is None else Bucket(*map(int, row))

    def record(self, samples: Sequence[Sample], now: int) -> None:
        """Add one batch of samples (one transaction); prune at most once a minute."""
        if samples:
            for s in samples:   # after a restart: the bucket as stored
                for step in STEPS:
                    k = (s.key, step)
                    start = bucket_start(s.ts, step)
                    held = self._open.get(k)
                    if held is None or held.start != start:
                        found = self._bucket(s.key, step, start)
                        if found is not None:
                            self._open[k] = found
                        else:
                            self._open.pop(k, None)
            touched = absorb(self._open, samples)
            with self.conn:
                self.conn.executemany(
                    f"INSERT OR REPLACE INTO buckets (scope, name, step, {_COLUMNS}) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [(k.scope, k.name, step, b.start, b.count, b.total, b.low, b.high,
                      b.last, b.last_ts) for (k, step, _), b in touched.items()])
            self._open.update(latest_of(touched))
        if now - self._pruned >= PRUNE_EVERY_US:
            self.prune(now)

    def prune(self, now: int) -> int:
        """Drop the buckets past their retention (and forget open buckets of series no
        sample reached for a step: they are closed); the rows dropped."""
        self._pruned = now
        with self.conn:
            dropped = sum(self.conn.execute(
                "DELETE FROM buckets WHERE step = ? AND start < ?",
                (step, cutoff(now, step))).rowcount for step in STEPS)
        self._open = {k: b for k, b in self._open.items()
                      if b.start + STEP_US[k[1]] > now - STEP_US[MINUTE]}
        return dropped

    def series(self, key: SeriesKey, step: str, since: int, until: int | None = None
               ) -> list[Bucket]:
        """The buckets of ``key`` at ``step`` that end after ``since`` (and start before
        ``until``), oldest first; at most :data:`MAX_POINTS` (the newest)."""
        rows = self.conn.execute(
            f"SELECT {_COLUMNS} FROM buckets WHERE scope = ? AND name = ? AND step = ? "
            "AND start > ? AND start < ? ORDER BY start DESC LIMIT ?",
            (key.scope, key.name, step, since - STEP_US[step],
             until if until is not None else 2**62, MAX_POINTS)).fetchall()
        return [Bucket(*map(int, r)) for r in reversed(rows)]

    def keys(self, scope_prefix: str = "", since: int = 0) -> list[SeriesKey]:
        """The series whose scope starts with ``scope_prefix`` with a minute or hour
        bucket ending after ``since``."""
        rows = self.conn.execute(
            "SELECT DISTINCT scope, name FROM buckets WHERE substr(scope, 1, ?) = ? AND "
            "start > ? - CASE step WHEN 'minute' THEN ? ELSE ? END ORDER BY scope, name",
            (len(scope_prefix), scope_prefix, since, STEP_US["minute"],
             STEP_US["hour"])).fetchall()
        return [SeriesKey(str(s), str(n)) for s, n in rows]

    def rows(self) -> int:
        return int(self.conn.execute("SELECT COUNT(*) FROM buckets").fetchone()[0])


__all__ = ["MAX_POINTS", "HistoryStore"]
