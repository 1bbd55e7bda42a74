"""The one clock: wall-clock time in integer microseconds since the epoch.

Every timestamp on the wire, in a log or in a store is one of these. Pure code
never reads it: it takes ``now`` (or a :data:`Clock`) as an argument, so tests
drive time explicitly.
"""

from __future__ import annotations

import time
from collections.abc import Callable

US_PER_S = 1_000_000
"""Microseconds in a second: every time and duration in the system is in µs."""

Clock = Callable[[], int]
"""A source of :func:`now_us` readings (tests pass their own)."""


def now_us() -> int:
    """Wall-clock time in integer microseconds."""
    return time.time_ns() // 1000
