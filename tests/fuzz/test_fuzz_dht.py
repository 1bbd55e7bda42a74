"""Fuzz target 3: the DHT's datagram parser, its RPC handlers and its record parser.

The fuzzed node's own DHT protocol (p2pmarket/dht/rpc.py, protocol.py, contacts.py),
its socket's sends captured (nothing leaves the process), and its record storage:

* datagrams: the seeds (real requests and replies two nodes exchanged, recorded by
  make_corpus) mutated, and random bytes, into ``datagram_received``;
* RPC calls: each RPC the protocol answers (``_rpc_names``), called with the arity it
  takes and fuzzed arguments (the seeds' arguments mutated, random values): the
  datagram layer drops a request whose handler raises, so the handlers are called
  directly to see it;
* answers: a fuzzed reply to a ``find_node``/``find_value`` the node sent (the
  contact checks and the routing table's update run on it);
* records: the seed records (real host records and offer sets) mutated into
  ``parse_record`` and the storage.

For each: nothing raises (but a refusal, :class:`~p2pmarket.dht.checks.DhtError`),
nothing is logged as an error, every datagram sent is a well-formed reply within
:data:`~p2pmarket.dht.rpc.MAX_DATAGRAM`, and a refused store leaves the storage as it
was.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
from hypothesis import strategies as st

from p2pmarket.core.clock import now_us
from p2pmarket.core.errors import P2PMarketError
from p2pmarket.dht.records import key_digest
from p2pmarket.dht.rpc import MAX_DATAGRAM, encode
from p2pmarket.dht.storage import parse_record
from tests.fuzz.fuzzlib import (
    budget_s,
    error_log,
    fuzz,
    mutated,
    mutated_doc,
    no_errors_logged,
    raw,
    seeds,
    values,
)
from tests.fuzz.nodestate import fuzzed_node

SENDER = ("127.0.0.1", 40001)


class Wire:
    """A transport that keeps what is sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, tuple[str, int]]] = []

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        self.sent.append((bytes(data), addr))

    def close(self) -> None:
        pass


def unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


class DhtFuzz:
    def __init__(self, runner: Any, node: Any) -> None:
        self.runner, self.node = runner, node
        self.proto = node.dht.protocol
        self.storage = node.dht.storage
        self.wire = Wire()
        self.real_transport = self.proto.transport
        self.proto.transport = self.wire
        self.datagrams = seeds("dht")
        self.records = seeds("dht_record")
        self.requests = [unpack(d[21:]) for d in self.datagrams if d[:1] == b"\x00"]
        self.answers = [unpack(d[21:]) for d in self.datagrams if d[:1] == b"\x01"]
        self.names = sorted(self.proto._rpc_names)
        self.keys = ["id", "nodes", "value"]

    def close(self) -> None:
        self.proto.transport = self.real_transport

    def held(self) -> str:
        h = hashlib.sha256()
        for key, value in sorted(self.storage):
            h.update(key + value)
        return h.hexdigest()

    def _check_sent(self, msg_id: bytes | None) -> list[Any]:
        out = []
        for data, _ in self.wire.sent:
            assert len(data) <= MAX_DATAGRAM, len(data)
            if data[:1] == b"\x01":
                assert msg_id is None or data[1:21] == msg_id, "a reply to another request"
                out.append(unpack(data[21:]))
            else:   # a call of our own (an ident handshake with the new contact)
                assert data[:1] == b"\x00" and isinstance(unpack(data[21:]), list)
        self.wire.sent.clear()
        return out

    async def _in_loop(self, fn: Any, *args: Any) -> Any:
        """``fn(*args)`` called in the loop (as asyncio calls a protocol), then the
        tasks it spawned given a few turns."""
        out = fn(*args)
        for _ in range(3):
            await asyncio.sleep(0)
        return out

    def datagram(self, data: bytes) -> None:
        before = self.held()
        with error_log() as log:
            self.runner.run(self._in_loop(self.proto.datagram_received, data, SENDER))
        no_errors_logged(log, data)
        answers = self._check_sent(data[1:21] if len(data) >= 21 else None)
        if not any(a is True for a in answers):   # nothing was stored
            assert self.held() == before, f"the storage changed on {data!r:.300}"

    def calls(self) -> st.SearchStrategy[tuple[str, list[Any]]]:
        @st.composite
        def call(draw: st.DrawFn) -> tuple[str, list[Any]]:
            name = draw(st.sampled_from(self.names))
            arity = len(inspect.signature(getattr(self.proto, f"rpc_{name}")).parameters) - 1
            same = [r[1] for r in self.requests if r[0] == name.removesuffix("_c")
                    and len(r[1]) == arity]
            if same and draw(st.booleans()):
                args = draw(mutated_doc(draw(st.sampled_from(same)), self.keys))
                if len(args) == arity:
                    return name, args
            return name, [draw(values(self.keys)) for _ in range(arity)]
        return call()

    def call(self, call: tuple[str, list[Any]]) -> None:
        name, args = call
        before = self.held()
        with error_log() as log:
            answer = self.runner.run(self._in_loop(getattr(self.proto, f"rpc_{name}"),
                                                   SENDER, *args))
            encode(answer)
        no_errors_logged(log, call)
        self._check_sent(None)
        if answer is not True:
            assert self.held() == before, f"the storage changed on {call!r:.300}"

    def answer(self, doc: Any) -> None:
        """A fuzzed answer to a find_value the node sent to a contact."""
        from kademlia.node import Node

        peer = Node(b"\x07" * 20, SENDER[0], SENDER[1])
        with error_log() as log:
            async def ask() -> Any:
                fut = self.proto.query(peer, b"\x09" * 20, find_value=True)
                [(request, _)] = self.wire.sent
                self.wire.sent.clear()
                answer = {**doc, "id": peer.id} if isinstance(doc, dict) and "id" in doc \
                    else doc
                try:
                    payload = encode(answer)
                except Exception:
                    payload = b"\xc1"
                self.proto.datagram_received(b"\x01" + request[1:21] + payload, SENDER)
                return await asyncio.wait_for(fut, 5)
            self.runner.run(ask())
            self.runner.run(self._in_loop(lambda: None))
        no_errors_logged(log, doc)
        self._check_sent(None)

    def record(self, value: bytes) -> None:
        keys = [b"\x00" * 20]
        with error_log() as log:
            try:
                parsed = parse_record(value, now_us(), self.storage.proof_verifier)
                keys.append(key_digest(parsed.key))
            except P2PMarketError:
                pass
            for dkey in keys:
                before = self.held()
                if self.storage.put_reason(dkey, value) is not None:
                    assert self.held() == before, "a refused record changed the storage"
        no_errors_logged(log, value)


@pytest.fixture(scope="module")
def dht_fuzz() -> Iterator[DhtFuzz]:
    with fuzzed_node() as (runner, node):
        f = DhtFuzz(runner, node)
        try:
            yield f
        finally:
            f.close()


def test_the_seeds_are_taken(dht_fuzz: DhtFuzz) -> None:
    for data in dht_fuzz.datagrams:
        dht_fuzz.datagram(data)
    for value in dht_fuzz.records:
        dht_fuzz.record(value)
    for doc in dht_fuzz.answers:
        dht_fuzz.answer(doc)


def test_fuzz_datagrams(dht_fuzz: DhtFuzz) -> None:
    assert fuzz(raw(dht_fuzz.datagrams, 1024), dht_fuzz.datagram,
                seconds=budget_s() * 0.3) > 0


def test_fuzz_rpc_handlers(dht_fuzz: DhtFuzz) -> None:
    assert fuzz(dht_fuzz.calls(), dht_fuzz.call, seconds=budget_s() * 0.25) > 0


def test_fuzz_answers(dht_fuzz: DhtFuzz) -> None:
    docs = st.one_of(st.sampled_from(dht_fuzz.answers).flatmap(
        lambda d: mutated_doc(d, dht_fuzz.keys)), values(dht_fuzz.keys))
    assert fuzz(docs, dht_fuzz.answer, seconds=budget_s() * 0.2) > 0


def test_fuzz_records(dht_fuzz: DhtFuzz) -> None:
    assert fuzz(mutated(dht_fuzz.records), dht_fuzz.record, seconds=budget_s() * 0.25) > 0
    counters = dht_fuzz.storage.counters
    assert counters.get("rpc_in", 0) > 0 and counters.get("rejected", 0) > 0, counters
