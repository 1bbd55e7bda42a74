"""What a relay allows, and its book of reservations and circuits (docs/design.md
section 7), after libp2p circuit relay v2's resource limits.

:class:`RelayLimits` bounds the reservations (in all, and per IP address), the circuits
open per relayed host, and each circuit's duration and bytes (both directions counted
together). :class:`RelayBook` is the state machine the relay service asks before it
grants a reservation, opens a circuit or relays more bytes; time is given as an argument
(integer µs on a monotonic axis: durations only), and a refused step changes nothing
and says why with a :class:`Refusal`. Pure.
"""

from __future__ import annotations

from dataclasses import dataclass

from p2pmarket.core.clock import US_PER_S
from p2pmarket.nat.frames import MAX_CIRCUIT

GIB = 1024**3

RELAY_FULL = "relay_full"
IP_LIMIT = "ip_limit"
NO_RESERVATION = "no_reservation"
CIRCUIT_LIMIT = "circuit_limit"
CIRCUIT_BYTES = "circuit_bytes"
CIRCUIT_TIME = "circuit_time"
NO_CIRCUIT = "no_circuit"

MESSAGES = {
    RELAY_FULL: "the relay holds as many reservations as it takes",
    IP_LIMIT: "too many reservations from this IP address",
    NO_RESERVATION: "no reservation for this node",
    CIRCUIT_LIMIT: "too many circuits open to this node",
    CIRCUIT_BYTES: "relay circuit byte limit exceeded",
    CIRCUIT_TIME: "relay circuit time limit exceeded",
    NO_CIRCUIT: "no such circuit",
}


@dataclass(frozen=True)
class RelayLimits:
    max_reservations: int = 128
    per_ip: int = 8
    circuits_per_peer: int = 16
    circuit_seconds: float = 3600.0
    circuit_bytes: int = 4 * GIB
    reservation_s: float = 3600.0

    @property
    def circuit_us(self) -> int:
        return int(self.circuit_seconds * US_PER_S)

    @property
    def reservation_us(self) -> int:
        return int(self.reservation_s * US_PER_S)


@dataclass(frozen=True)
class Refusal:
    """Why a step was refused: ``reason`` one of the constants above, ``value`` the
    limit passed."""

    reason: str
    value: int | None = None

    @property
    def message(self) -> str:
        return MESSAGES[self.reason]


@dataclass(frozen=True)
class Slot:
    """One reservation: who, from which IP, until when (book time, µs)."""

    node_id: bytes
    ip: str
    expires: int


@dataclass(frozen=True)
class Circuit:
    """One circuit's account: whose, since when (book time), bytes so far."""

    node_id: bytes
    opened: int
    nbytes: int = 0


class RelayBook:
    """Reservations and circuits, by :class:`RelayLimits`."""

    def __init__(self, limits: RelayLimits | None = None) -> None:
        self.limits = limits or RelayLimits()
        self.slots: dict[bytes, Slot] = {}
        self.circuits: dict[int, Circuit] = {}
        self.bytes_relayed = 0
        self.next_circuit = 1

    def expire(self, now: int) -> list[bytes]:
        """Drop the reservations expired at ``now`` (and their circuits); the node ids
        dropped."""
        gone = [n for n, s in self.slots.items() if s.expires <= now]
        for node_id in gone:
            self.release(node_id)
        return gone

    def reserve(self, node_id: bytes, ip: str, now: int) -> int | Refusal:
        """A reservation (or its refresh: the same node id is no new one) for ``node_id``
        coming from ``ip``; its expiry, or why not."""
        self.expire(now)
        old = self.slots.get(node_id)
        if old is None and len(self.slots) >= self.limits.max_reservations:
            return Refusal(RELAY_FULL, self.limits.max_reservations)
        moved = old is None or old.ip != ip
        if moved and sum(s.ip == ip for s in self.slots.values()) >= self.limits.per_ip:
            return Refusal(IP_LIMIT, self.limits.per_ip)
        expires = now + self.limits.reservation_us
        self.slots[node_id] = Slot(node_id, ip, expires)
        return expires

    def release(self, node_id: bytes) -> list[int]:
        """Drop ``node_id``'s reservation and its circuits; the circuit ids dropped."""
        self.slots.pop(node_id, None)
        ids = [c for c, circ in self.circuits.items() if circ.node_id == node_id]
        for cid in ids:
            del self.circuits[cid]
        return ids

    def open_circuit(self, node_id: bytes, now: int) -> int | Refusal:
        """A new circuit to ``node_id``: its id, or why not."""
        slot = self.slots.get(node_id)
        if slot is None or slot.expires <= now:
            return Refusal(NO_RESERVATION)
        if sum(c.node_id == node_id for c in self.circuits.values()) \
                >= self.limits.circuits_per_peer:
            return Refusal(CIRCUIT_LIMIT, self.limits.circuits_per_peer)
        cid = self.next_circuit
        while cid in self.circuits:   # at most len(circuits) steps
            cid = cid % MAX_CIRCUIT + 1
        self.next_circuit = cid % MAX_CIRCUIT + 1
        self.circuits[cid] = Circuit(node_id, now)
        return cid

    def account(self, circuit: int, nbytes: int, now: int) -> Refusal | None:
        """Count ``nbytes`` more through ``circuit`` at ``now``; None if allowed, else why
        not (the bytes are then not counted)."""
        circ = self.circuits.get(circuit)
        if circ is None:
            return Refusal(NO_CIRCUIT)
        if now - circ.opened > self.limits.circuit_us:
            return Refusal(CIRCUIT_TIME, self.limits.circuit_us)
        if circ.nbytes + nbytes > self.limits.circuit_bytes:
            return Refusal(CIRCUIT_BYTES, self.limits.circuit_bytes)
        self.circuits[circuit] = Circuit(circ.node_id, circ.opened, circ.nbytes + nbytes)
        self.bytes_relayed += nbytes
        return None

    def close_circuit(self, circuit: int) -> None:
        self.circuits.pop(circuit, None)

    def circuits_of(self, node_id: bytes) -> int:
        return sum(c.node_id == node_id for c in self.circuits.values())
