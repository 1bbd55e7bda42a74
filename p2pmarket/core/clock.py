"""The clocks: wall-clock time in integer microseconds since the epoch (:func:`now_us`),
and monotonic seconds for timers (:data:`Monotonic`).

Every timestamp on the wire, in a log or in a store is a :func:`now_us` reading.
Pure code never reads a clock: it takes ``now`` (or a :data:`Clock` /
:data:`Monotonic`) as an argument, so tests drive time explicitly.
"""

from __future__ import annotations

import time
from collections.abc import Callable

US_PER_S = 1_000_000
"""Microseconds in a second: every time and duration in the system is in µs."""

Clock = Callable[[], int]
"""A source of :func:`now_us` readings (tests pass their own)."""

Monotonic = Callable[[], float]
"""A source of monotonic seconds (``time.monotonic``) for timers, bans and pauses, which
must not jump with the wall clock (tests pass their own)."""


def now_us() -> int:
    """Wall-clock time in integer microseconds."""
    return time.time_ns() // 1000
