"""What a registrar remembers of the registrations it accepted, so that no one can
squat on another node's address (docs/design.md section 7, seed note of 9/12/2007).

Per address (host, port) the registry holds at most one *verified* holder (a node
whose callback at that address answered with its signed echo) and a few
*unverified* claimants (accepted without such an answer). A verified claim always
wins: it replaces whatever the address held, since the callback proved the node is
there now. An unverified claim is refused while another node holds the address
verified, and otherwise sits next to other unverified ones. Every entry lives
``ttl_us``; expired ones are dropped. The registry is bounded: at most ``capacity``
addresses (the least recently claimed dropped first) and
:data:`MAX_UNVERIFIED_PER_ADDRESS` unverified claimants per address (the oldest
dropped). Time comes in as ``now`` (µs). Pure.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from p2pmarket.nat.addresses import Address

DEFAULT_CAPACITY = 10_000
MAX_UNVERIFIED_PER_ADDRESS = 8


@dataclass
class _Slot:
    holder: bytes | None = None           # the verified node id
    holder_expires: int = 0
    unverified: dict[bytes, int] = field(default_factory=dict)   # node id -> expiry

    def expire(self, now: int) -> None:
        if self.holder is not None and self.holder_expires <= now:
            self.holder = None
        self.unverified = {n: t for n, t in self.unverified.items() if t > now}


class Registry:
    """Registrations per address; see the module docstring."""

    def __init__(self, ttl_us: int, capacity: int = DEFAULT_CAPACITY) -> None:
        if ttl_us <= 0 or capacity <= 0:
            raise ValueError("ttl and capacity must be positive")
        self.ttl_us = ttl_us
        self.capacity = capacity
        self._slots: OrderedDict[Address, _Slot] = OrderedDict()

    def __len__(self) -> int:
        return len(self._slots)

    def claim(self, host: str, port: int, node_id: bytes, verified: bool, now: int) -> bool:
        """Record that ``node_id`` registered at (``host``, ``port``) at ``now``; False
        (nothing changed) if the claim is unverified and another node holds the address
        verified."""
        key = (host, port)
        slot = self._slots.get(key)
        if slot is not None:
            slot.expire(now)
        if verified:
            self._put(key, _Slot(holder=node_id, holder_expires=now + self.ttl_us))
            return True
        if slot is None:
            slot = _Slot()
        elif slot.holder is not None:
            if slot.holder != node_id:
                return False
            self._put(key, slot)   # the holder itself: its verified entry stays as it is
            return True
        slot.unverified.pop(node_id, None)
        slot.unverified[node_id] = now + self.ttl_us
        while len(slot.unverified) > MAX_UNVERIFIED_PER_ADDRESS:
            del slot.unverified[next(iter(slot.unverified))]
        self._put(key, slot)
        return True

    def holder(self, host: str, port: int, now: int) -> bytes | None:
        """The node id holding (``host``, ``port``) verified at ``now``, if any."""
        slot = self._slots.get((host, port))
        if slot is None or slot.holder is None or slot.holder_expires <= now:
            return None
        return slot.holder

    def claimants(self, host: str, port: int, now: int) -> frozenset[bytes]:
        """The node ids with a live unverified claim on (``host``, ``port``)."""
        slot = self._slots.get((host, port))
        if slot is None:
            return frozenset()
        return frozenset(n for n, t in slot.unverified.items() if t > now)

    def _put(self, key: Address, slot: _Slot) -> None:
        self._slots.pop(key, None)
        self._slots[key] = slot
        while len(self._slots) > self.capacity:
            self._slots.popitem(last=False)


__all__ = ["DEFAULT_CAPACITY", "MAX_UNVERIFIED_PER_ADDRESS", "Registry"]
