"""The process's own readings: resident memory, open descriptors and sockets, and
the event loop's lag.

Memory and descriptors are read from ``/proc/self`` at scrape time (Linux; elsewhere
they read 0). The lag is measured by :class:`LoopLag`, a task that asks the loop to
wake it every :data:`LAG_PERIOD_S` and reports how late it woke: a handler that
blocks the loop (a long sqlite commit, a big signature check) shows there. It needs
no thread (prometheus-client's own process collector is not used: it reads more than
this and the default registry is shared by every node of a process).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import dataclass

LAG_PERIOD_S = 1.0
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def resident_bytes() -> int:
    """The resident set size now (``/proc/self/statm``'s second field, in pages)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


@dataclass(frozen=True)
class Descriptors:
    """The open file descriptors and, of them, sockets."""

    fds: int
    sockets: int


def descriptors() -> Descriptors:
    """Count ``/proc/self/fd``'s entries and those that link to ``socket:[...]``."""
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return Descriptors(0, 0)
    sockets = 0
    for name in names:
        try:
            if os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                sockets += 1
        except OSError:   # closed meanwhile (the listdir's own descriptor is)
            continue
    return Descriptors(len(names), sockets)


class LoopLag:
    """Reports ``lateness`` (seconds past the asked wake-up) every ``period_s``."""

    def __init__(self, report: Callable[[float], None], period_s: float = LAG_PERIOD_S
                 ) -> None:
        self.report = report
        self.period_s = period_s
        self.last = 0.0

    async def run(self) -> None:
        """Measure until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            asked = loop.time() + self.period_s
            await asyncio.sleep(self.period_s)
            self.last = max(0.0, loop.time() - asked)
            self.report(self.last)
