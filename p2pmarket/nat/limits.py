"""A registrar's defences against being used to attack others, after libp2p AutoNAT v2
(docs/design.md section 7): rate limits on dial-back requests, and the dial data a
requester pays before the registrar dials an IP other than the one it came from.

:class:`DialLimiter` admits a request from ``peer`` (the requester's observed IP) at
monotonic time ``now`` (seconds) unless, within the sliding minute ``(now - 60,
now]``, that peer already had ``per_peer_per_min`` requests admitted (``peer_rate``)
or all peers together ``total_per_min`` (``total_rate``), or the peer has
``concurrent_per_peer`` requests still running (``peer_concurrency``). A refused
request counts for nothing. Memory is bounded: only requests of the last minute are
kept (at most ``total_per_min``), and only peers with such requests or running ones.

Dial data: before dialling a claimed IP other than the observed one, the registrar
asks for :func:`dial_data_needed` bytes (30,000..100,000, chosen at random), sent in
messages of at most :data:`MAX_DIAL_CHUNK` bytes, so that making a registrar dial
a victim costs the requester more bandwidth than it costs the victim. Pure.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

WINDOW_S = 60.0
DIAL_DATA_MIN = 30_000
DIAL_DATA_MAX = 100_000
MAX_DIAL_CHUNK = 4096


@dataclass(frozen=True)
class DialLimits:
    """How many dial-back requests a registrar admits."""

    per_peer_per_min: int = 12
    total_per_min: int = 60
    concurrent_per_peer: int = 2


DEFAULT_LIMITS = DialLimits()

class DialLimiter:
    """Sliding one-minute windows per peer and overall; see the module docstring."""

    def __init__(self, limits: DialLimits = DEFAULT_LIMITS) -> None:
        self.limits = limits
        self._total: deque[float] = deque()
        self._peers: dict[str, deque[float]] = {}
        self._running: dict[str, int] = {}

    def admit(self, peer: str, now: float) -> str | None:
        """None if a request from ``peer`` at ``now`` is admitted (and counted; call
        :meth:`done` when it ends), else the reason it is refused."""
        self._forget(now)
        times = self._peers.get(peer, ())
        if len(times) >= self.limits.per_peer_per_min:
            return "peer_rate"
        if self._running.get(peer, 0) >= self.limits.concurrent_per_peer:
            return "peer_concurrency"
        if len(self._total) >= self.limits.total_per_min:
            return "total_rate"
        self._total.append(now)
        self._peers.setdefault(peer, deque()).append(now)
        self._running[peer] = self._running.get(peer, 0) + 1
        return None

    def done(self, peer: str) -> None:
        """An admitted request of ``peer`` ended."""
        left = self._running.get(peer, 0) - 1
        if left > 0:
            self._running[peer] = left
        else:
            self._running.pop(peer, None)

    def running(self, peer: str) -> int:
        return self._running.get(peer, 0)

    def tracked_peers(self) -> int:
        """Peers remembered (for the bound): those with requests in the last minute."""
        return len(self._peers)

    def _forget(self, now: float) -> None:
        """Drop requests admitted at or before ``now - 60``, and peers left with none
        (every peer kept has a request in ``_total``, so at most ``total_per_min``)."""
        horizon = now - WINDOW_S
        while self._total and self._total[0] <= horizon:
            self._total.popleft()
        for peer in list(self._peers):
            q = self._peers[peer]
            while q and q[0] <= horizon:
                q.popleft()
            if not q:
                del self._peers[peer]


def dial_data_needed(rng_value: int) -> int:
    """The dial data to ask for, from a random non-negative integer ``rng_value``
    (``secrets.randbits(32)``): uniform-ish in ``DIAL_DATA_MIN..DIAL_DATA_MAX``."""
    if not isinstance(rng_value, int) or rng_value < 0:
        raise ValueError("rng_value must be a non-negative integer")
    return DIAL_DATA_MIN + rng_value % (DIAL_DATA_MAX - DIAL_DATA_MIN + 1)


__all__ = ["DEFAULT_LIMITS", "DIAL_DATA_MAX", "DIAL_DATA_MIN", "MAX_DIAL_CHUNK", "WINDOW_S",
           "DialLimiter", "DialLimits", "dial_data_needed"]
