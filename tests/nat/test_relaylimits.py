"""The relay's book: reservations, circuits and their limits, step by step on explicit
time; every refusal says why and changes nothing."""

from __future__ import annotations

from p2pmarket.nat.frames import MAX_CIRCUIT
from p2pmarket.nat.relaylimits import (
    CIRCUIT_BYTES,
    CIRCUIT_LIMIT,
    CIRCUIT_TIME,
    GIB,
    IP_LIMIT,
    NO_CIRCUIT,
    NO_RESERVATION,
    RELAY_FULL,
    Circuit,
    Refusal,
    RelayBook,
    RelayLimits,
    Slot,
)

S = 1_000_000
A, B, C = b"a" * 20, b"b" * 20, b"c" * 20
IP1, IP2 = "198.18.0.1", "198.18.0.2"


def test_the_defaults() -> None:
    assert RelayLimits() == RelayLimits(max_reservations=128, per_ip=8, circuits_per_peer=16,
                                        circuit_seconds=3600.0, circuit_bytes=4 * GIB,
                                        reservation_s=3600.0)
    assert RelayLimits().reservation_us == 3600 * S


def test_reservations_per_ip_and_in_all() -> None:
    book = RelayBook(RelayLimits(max_reservations=2, per_ip=1, reservation_s=10))
    assert book.reserve(A, IP1, 0) == 10 * S
    assert book.reserve(B, IP1, 1) == Refusal(IP_LIMIT, 1)
    assert book.reserve(A, IP1, 2 * S) == 12 * S          # a refresh: no new one
    assert book.reserve(B, IP2, 3) == 10 * S + 3
    assert book.reserve(C, "198.18.0.3", 4) == Refusal(RELAY_FULL, 2)
    assert book.reserve(A, IP2, 5) == Refusal(IP_LIMIT, 1)  # moving onto a full IP
    assert book.slots == {A: Slot(A, IP1, 12 * S), B: Slot(B, IP2, 10 * S + 3)}
    assert Refusal(RELAY_FULL).message == "the relay holds as many reservations as it takes"


def test_expired_reservations_free_their_places_and_circuits() -> None:
    book = RelayBook(RelayLimits(max_reservations=1, reservation_s=10))
    assert book.reserve(A, IP1, 0) == 10 * S
    assert book.open_circuit(A, 1) == 1
    assert book.open_circuit(A, 10 * S) == Refusal(NO_RESERVATION)   # expired
    assert book.reserve(B, IP1, 10 * S) == 20 * S                    # A's place is free
    assert book.slots == {B: Slot(B, IP1, 20 * S)} and book.circuits == {}
    assert book.expire(20 * S) == [B] and book.slots == {}


def test_circuits_per_peer_and_release() -> None:
    book = RelayBook(RelayLimits(circuits_per_peer=2))
    assert book.open_circuit(A, 0) == Refusal(NO_RESERVATION)
    book.reserve(A, IP1, 0)
    book.reserve(B, IP1, 0)
    assert [book.open_circuit(A, 1), book.open_circuit(A, 2)] == [1, 2]
    assert book.open_circuit(A, 3) == Refusal(CIRCUIT_LIMIT, 2)
    assert book.open_circuit(B, 4) == 3
    book.close_circuit(1)
    assert book.open_circuit(A, 5) == 4
    assert book.circuits_of(A) == 2
    assert book.release(A) == [2, 4]
    assert book.circuits == {3: Circuit(B, 4)} and set(book.slots) == {B}
    assert book.open_circuit(A, 6) == Refusal(NO_RESERVATION)


def test_circuit_ids_wrap_and_skip_those_in_use() -> None:
    book = RelayBook()
    book.reserve(A, IP1, 0)
    book.next_circuit = MAX_CIRCUIT
    assert book.open_circuit(A, 0) == MAX_CIRCUIT
    assert book.open_circuit(A, 0) == 1
    book.next_circuit = MAX_CIRCUIT
    assert book.open_circuit(A, 0) == 2


def test_bytes_and_time_of_a_circuit() -> None:
    book = RelayBook(RelayLimits(circuit_bytes=100, circuit_seconds=5))
    book.reserve(A, IP1, 0)
    cid = book.open_circuit(A, S)
    assert isinstance(cid, int)
    assert book.account(cid, 60, 2 * S) is None
    assert book.account(cid, 41, 2 * S) == Refusal(CIRCUIT_BYTES, 100)
    assert book.circuits[cid].nbytes == 60                  # the refused bytes not counted
    assert book.account(cid, 40, 6 * S) is None              # exactly at the limits
    assert book.account(cid, 0, 6 * S + 1) == Refusal(CIRCUIT_TIME, 5 * S)
    assert book.account(999, 1, 0) == Refusal(NO_CIRCUIT)
    assert book.bytes_relayed == 100
    assert Refusal(CIRCUIT_BYTES).message == "relay circuit byte limit exceeded"
