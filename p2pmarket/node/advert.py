"""Price statistics for the market advertisement (pure).

A host advertises, per resource, its current price (the sum of bid rates) and
the price averaged over the last hour, as Tycoon's SLS did. The average is
time-weighted over the samples seen in the window.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

HOUR_US = 3600 * 1_000_000


@dataclass
class PriceHistory:
    window_us: int = HOUR_US
    samples: deque[tuple[int, int]] = field(default_factory=deque)

    def add(self, now_us: int, price: int) -> None:
        self.samples.append((now_us, price))
        while len(self.samples) > 1 and self.samples[1][0] <= now_us - self.window_us:
            self.samples.popleft()

    def average(self, now_us: int) -> int:
        """Time-weighted mean price over the window (each sample holds until the next)."""
        if not self.samples:
            return 0
        start = now_us - self.window_us
        total = weight = 0
        items = list(self.samples)
        for (t, price), nxt in zip(items, [*items[1:], (now_us, 0)], strict=True):
            begin, end = max(t, start), max(nxt[0], start)
            total += price * (end - begin)
            weight += end - begin
        return total // weight if weight else items[-1][1]


def moved(old: int, new: int, fraction_ppm: int) -> bool:
    """True if ``new`` differs from ``old`` by more than ``fraction_ppm`` of ``old``."""
    if old == 0:
        return new != 0
    return abs(new - old) * 1_000_000 > fraction_ppm * old


@dataclass(frozen=True)
class Availability:
    """SLS-style availability: time up / time since first registration (pure).

    ``up_before_us`` is the uptime of earlier runs; the current run counts from
    ``session_start_us``.
    """

    first_us: int
    up_before_us: int
    session_start_us: int

    def uptime(self, now_us: int) -> int:
        return self.up_before_us + max(0, now_us - self.session_start_us)

    def ppm(self, now_us: int) -> int:
        span = now_us - self.first_us
        if span <= 0:
            return 1_000_000
        return min(1_000_000, self.uptime(now_us) * 1_000_000 // span)

    def to_doc(self, now_us: int) -> dict[str, int]:
        """What to persist so the next run continues the count."""
        return {"first_us": self.first_us, "up_us": self.uptime(now_us)}

    @classmethod
    def resume(cls, doc: dict[str, int] | None, now_us: int) -> Availability:
        if not doc:
            return cls(now_us, 0, now_us)
        return cls(int(doc["first_us"]), int(doc["up_us"]), now_us)
