"""Token buckets, and the monotonic clock they run on. Pure: the time comes in as
an argument.

:data:`p2pmarket.core.clock.Monotonic` is what the DHT's I/O classes are given to read the time for
bans, rate limits and retry pauses (``time.monotonic`` where the node is built;
tests pass their own); :class:`RateLimiter` takes its readings as ``now``.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any


class RateLimiter:
    """Token buckets per key: ``rate`` per second, ``burst`` at most (bounded table)."""

    def __init__(self, rate: float, burst: float, capacity: int = 4096) -> None:
        self.rate, self.burst, self.capacity = rate, burst, capacity
        self._buckets: OrderedDict[Any, tuple[float, float]] = OrderedDict()

    def allow(self, key: Any, now: float, cost: float = 1.0) -> bool:
        """Take ``cost`` tokens from ``key``'s bucket at monotonic time ``now``; False if
        there are not that many."""
        tokens, last = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        ok = tokens >= cost
        self._buckets[key] = (tokens - cost if ok else tokens, now)
        while len(self._buckets) > self.capacity:
            self._buckets.popitem(last=False)
        return ok
