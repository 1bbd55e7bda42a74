"""The buyers' requests the auctioneer has taken, pure (docs/design.md sections 2, 5).

A buyer's signed request ``(from, ts)`` must be taken at most once, also across a
host restart (the RPC layer's :class:`~p2pmarket.core.wire.ReplayGuard` lives in memory
only) and in a witness's replay (a host that logs a genuine request twice is caught).
The record keeps, per caller key, the low-water mark and the timestamps of its
last :data:`MEMORY` requests, like the replay guard; and at every tick it forgets
what is more than :data:`WINDOW_US` older than the tick, so it stays bounded by the
requests of the last few minutes. A request is refused when its timestamp is

- already in its caller's record (``duplicate request``),
- at or below its caller's low-water mark (older than its last :data:`MEMORY`), or
- :data:`WINDOW_US` or more before the input's own time (such a timestamp may have
  been forgotten; the RPC layer refuses requests 60 s off the clock long before).

Entry timestamps never decrease in a log (:mod:`p2pmarket.audit.replay` checks
it), which is what makes forgetting sound. The record is a map ``caller key ->
(low-water mark, sorted timestamps)``; -1 is "no mark".
"""

from __future__ import annotations

from bisect import insort
from collections.abc import Mapping
from typing import Any

MEMORY = 64                      # requests remembered per caller (ReplayGuard's size)
WINDOW_US = 300_000_000          # five times the RPC layer's clock tolerance

Record = Mapping[bytes, tuple[int, tuple[int, ...]]]


def refusal(record: Record, sender: bytes, ts: int, now: int) -> str | None:
    """Why the request ``(sender, ts)`` must not be taken by an input at ``now`` (None
    if it may be)."""
    if ts <= now - WINDOW_US:
        return (f"stale request: more than {WINDOW_US // 1_000_000} s older than the input "
                "(it may have been taken and forgotten)")
    got = record.get(sender)
    if got is not None:
        low, seen = got
        if ts in seen:
            return "duplicate request: this caller's request with this timestamp was taken"
        if ts <= low:
            return (f"stale request: older than this caller's last {MEMORY} requests "
                    "(it may have been taken and forgotten)")
    return None


def recorded(record: Record, sender: bytes, ts: int) -> Record:
    """``record`` with the request ``(sender, ts)`` taken (unchanged if it is already
    there or at or below the caller's low-water mark)."""
    low, seen = record.get(sender, (-1, ()))
    if ts <= low or ts in seen:
        return record
    stamps = list(seen)
    insort(stamps, ts)
    if len(stamps) > MEMORY:
        low = max(low, stamps.pop(0))
    return {**record, sender: (low, tuple(stamps))}


def pruned(record: Record, now: int) -> Record:
    """``record`` without what the time check at ``now`` covers (timestamps, marks and
    callers at or before ``now - WINDOW_US``)."""
    floor = now - WINDOW_US
    if all(seen[0] > floor for _, seen in record.values()):
        return record
    out: dict[bytes, tuple[int, tuple[int, ...]]] = {}
    for sender, (low, seen) in record.items():
        if seen[0] > floor:
            out[sender] = (low, seen)
            continue
        kept = tuple(t for t in seen if t > floor)
        if kept:
            out[sender] = (low if low > floor else -1, kept)
    return out


def to_rows(record: Record) -> list[list[Any]]:
    """``[[caller key, low-water mark, [timestamps]], ...]`` sorted by key (no maps:
    plain msgpack is canonical for it)."""
    return [[sender, low, list(seen)] for sender, (low, seen) in sorted(record.items())]


def from_rows(rows: Any) -> dict[bytes, tuple[int, tuple[int, ...]]]:
    """A record from :func:`to_rows`' form; raises ValueError/TypeError if malformed."""
    out: dict[bytes, tuple[int, tuple[int, ...]]] = {}
    for sender, low, seen in rows:
        stamps = tuple(int(t) for t in seen)
        if not stamps or len(stamps) > MEMORY or list(stamps) != sorted(set(stamps)) \
                or int(low) >= stamps[0]:
            raise ValueError("malformed request record")
        out[bytes(sender)] = (int(low), stamps)
    return out


__all__ = ["MEMORY", "WINDOW_US", "Record", "from_rows", "pruned", "recorded", "refusal",
           "to_rows"]
