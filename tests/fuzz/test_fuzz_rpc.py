"""Fuzz target 1: every peer RPC the node registers (p2pmarket/api/rpc.py).

The RPCs are the node's own registrations (``node.dispatcher.handlers``), so a new
RPC is fuzzed as soon as the node registers it. Two kinds of input go through the
dispatcher (what ``POST /rpc`` calls with the body it read):

* raw bytes: the seed requests (real ones, recorded by make_corpus) mutated, and
  random bytes: the envelope decoder, the size bounds, the signature check;
* well-formed signed requests, addressed to the node with a fresh timestamp, whose
  bodies are the seeds' bodies mutated structurally or random maps over the argument
  names the RPCs take: the handlers' own checks.

For each: a signed reply comes back (never an exception), its result is a map with no
traceback in it and is not the internal error (an exception that escaped a handler),
nothing was logged as an error, and an error reply left the node's durable state as
it was (:mod:`tests.fuzz.nodestate`; only a host RPC may append to the audit trail).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import strategies as st

from p2pmarket.core.clock import now_us
from p2pmarket.core.domains import ENVELOPE
from p2pmarket.core.errors import INTERNAL_ERROR
from p2pmarket.core.identity import Identity
from p2pmarket.core.wire import Envelope, decode, seal, unpack
from p2pmarket.sharp.claims import Rset, Term, anchor
from tests.fuzz.fuzzlib import (
    budget_s,
    error_log,
    fuzz,
    mutated_doc,
    no_errors_logged,
    no_traceback,
    raw,
    seeds,
    values,
)
from tests.fuzz.nodestate import audit_grew_only, audit_head, fuzzed_node, state, walk

PEER = ("127.0.0.1", 40000)
ARG_NAMES = ["account_id", "amount", "auths", "bids", "cert", "certs", "close",
             "contingency", "entries", "entry", "host", "interval_s", "limit", "name",
             "nonce", "owner", "payment", "refund_id", "replace", "send", "sends", "sig",
             "sigs", "since", "ssh_key", "url", "items", "start", "end", "ticket",
             "tickets", "proof", "rset", "term"]


def kind_of(data: bytes) -> str:
    try:
        return str(Envelope.from_wire(unpack(data)).kind)
    except Exception:
        return ""


def make_broker(node: Any) -> None:
    """The node as a broker holding a ticket, so ``broker.*`` get past ``not_broker``."""
    now = now_us()
    node.broker.enable()
    node.broker.set_price("cpu", 1)
    node.broker.add_ticket(anchor(Identity.generate(), node.identity.public_key,
                                  Rset("cpu", 100), Term(now, now + 3_600_000_000),
                                  b"fuzz").to_wire())


class RpcFuzz:
    def __init__(self, runner: Any, node: Any) -> None:
        self.runner, self.node = runner, node
        self.identity = Identity.generate()
        self.ts = now_us()
        self.seeds = seeds("rpc")
        self.bodies: dict[str, list[Any]] = {}
        for data in self.seeds:
            env = Envelope.from_wire(unpack(data))
            self.bodies.setdefault(env.kind.removeprefix("rpc."), []).append(env.body)
        keys = {str(k) for b in self.bodies.values() for body in b for k in walk(body)
                if isinstance(k, str) and len(k) < 20}
        self.keys = sorted(keys | set(ARG_NAMES))
        self.names = sorted(node.dispatcher.handlers)
        make_broker(node)
        self.before, self.head = state(node), audit_head(node)
        self.replies = {"ok": 0, "error": 0}

    def fresh_ts(self) -> int:
        self.ts = max(now_us(), self.ts + 1)
        return self.ts

    def send(self, data: bytes) -> None:
        node = self.node
        with error_log() as log:
            reply = self.runner.run(node.dispatcher.dispatch(data, PEER))
        no_errors_logged(log, data)
        env = decode(reply, ENVELOPE)   # a signed reply, whatever came in
        assert env.kind == "reply" and env.sender == node.identity.public_key
        assert isinstance(env.body, dict) and isinstance(env.body.get("result"), dict)
        result = env.body["result"]
        no_traceback(result)
        assert result != INTERNAL_ERROR, f"a handler raised on {data!r:.400}"
        after, head = state(node), audit_head(node)
        if "error" in result:
            self.replies["error"] += 1
            assert isinstance(result["error"], str) and result["error"], result
            assert after == self.before, f"refused, yet the state changed: {result}"
            assert audit_grew_only(node, self.head), "the audit trail was rewritten"
            if head != self.head:
                assert kind_of(data).startswith("rpc.host."), (kind_of(data), result)
        else:
            self.replies["ok"] += 1
        self.before, self.head = after, head

    def send_sealed(self, request: tuple[str, Any]) -> None:
        name, body = request
        try:
            data = seal(self.identity, ENVELOPE, "rpc." + name, body, ts=self.fresh_ts(),
                        to=self.node.identity.node_id).encode()
        except Exception:   # a body the canonical encoding refuses is no request
            return
        self.send(data)

    def requests(self) -> st.SearchStrategy[tuple[str, Any]]:
        @st.composite
        def request(draw: st.DrawFn) -> tuple[str, Any]:
            name = draw(st.sampled_from(self.names))
            pool = self.bodies.get(name, [])
            pick = draw(st.integers(0, 9))
            if pool and pick < 8:
                body = draw(mutated_doc(draw(st.sampled_from(pool)), self.keys))
            elif pick < 9:
                body = draw(st.dictionaries(st.sampled_from(self.keys), values(self.keys),
                                            max_size=6))
            else:
                body = draw(values(self.keys))
            return name, body
        return request()


@pytest.fixture(scope="module")
def rpc_fuzz() -> Iterator[RpcFuzz]:
    with fuzzed_node() as (runner, node):
        yield RpcFuzz(runner, node)


def test_the_seeds_are_answered(rpc_fuzz: RpcFuzz) -> None:
    """The corpus replayed: as recorded (addressed to another node, long ago), then each
    body re-sealed for this node."""
    for data in rpc_fuzz.seeds:
        rpc_fuzz.send(data)
    for name, bodies in sorted(rpc_fuzz.bodies.items()):
        if name in rpc_fuzz.node.dispatcher.handlers:
            for body in bodies:
                rpc_fuzz.send_sealed((name, body))
    assert rpc_fuzz.replies["error"] >= len(rpc_fuzz.seeds)


def test_fuzz_request_bytes(rpc_fuzz: RpcFuzz) -> None:
    n = fuzz(raw(rpc_fuzz.seeds, 2048), rpc_fuzz.send, seconds=budget_s() * 0.3)
    assert n > 0


def test_fuzz_request_bodies(rpc_fuzz: RpcFuzz) -> None:
    """Every registered RPC, with signed requests whose bodies are fuzzed."""
    n = fuzz(rpc_fuzz.requests(), rpc_fuzz.send_sealed, seconds=budget_s() * 0.7)
    assert n > 0 and rpc_fuzz.replies["error"] > 0
