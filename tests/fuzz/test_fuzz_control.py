"""Fuzz target 2: the control API (``POST /v1/<name>``, p2pmarket/api/server.py).

Real HTTP to the node's control site on 127.0.0.1: the calls are the node's own
control handlers (so a new one is fuzzed at once) and made-up names; paths, query
strings and methods are fuzzed, the token is right most of the time (so the handlers
are reached) and wrong or missing otherwise; bodies are the seed calls' arguments
mutated structurally, random JSON, or the seeds' bytes mutated.

For each: the status is one the API means (200, 400, 401, 404, 405 or 413; never 500),
a JSON answer other than 200 is an error map, nothing in the answer looks like a
traceback, nothing was logged as an error, and a refused call left the node's durable
state and audit trail as they were.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from hypothesis import strategies as st
from yarl import URL

from tests.fuzz.fuzzlib import (
    INTS,
    budget_s,
    error_log,
    fuzz,
    mutated,
    mutated_doc,
    no_errors_logged,
    no_traceback,
    seeds,
)
from tests.fuzz.nodestate import audit_head, fuzzed_node, state

ALLOWED = {200, 400, 401, 404, 405, 413}
JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), INTS, st.floats(), st.text(max_size=24),
              st.sampled_from(["cpu", "memory", "disk", "00" * 20, "00" * 32])),
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.text(max_size=10), inner, max_size=4)),
    max_leaves=10)


def _hex(value: Any) -> str:
    return value.hex() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    query: str
    token: str | None
    body: bytes


class ControlFuzz:
    def __init__(self, runner: Any, node: Any) -> None:
        self.runner, self.node = runner, node
        self.token = node.data_dir.token.read_text().strip()
        self.base = f"http://127.0.0.1:{node.control_site.port}"
        self.seeds = seeds("control", ".json")
        self.docs = [json.loads(s) for s in self.seeds]
        self.names = sorted(node.control_handlers())
        self.keys = sorted({k for d in self.docs for k in d["args"]} | {"host", "since"})
        self.session = runner.run(self._session())
        self.before, self.head = state(node), audit_head(node)
        self.statuses: dict[int, int] = {}

    @staticmethod
    async def _session() -> aiohttp.ClientSession:
        return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))

    def close(self) -> None:
        self.runner.run(self.session.close())

    def calls(self) -> st.SearchStrategy[Call]:
        @st.composite
        def call(draw: st.DrawFn) -> Call:
            name = draw(st.one_of(st.sampled_from(self.names), st.sampled_from(self.names),
                                  st.text(max_size=20)))
            pick = draw(st.integers(0, 9))
            if pick < 7:
                path = "/v1/" + quote(name, safe="")
            elif pick == 7:
                path = "/v1/" + quote(name, safe="") + draw(st.sampled_from(
                    ["/", "/x", "//", "/..", "%00", "%2F..%2F"]))
            else:
                path = "/" + draw(st.text(st.characters(min_codepoint=33, max_codepoint=126),
                                          max_size=30))
            doc = draw(st.sampled_from(self.docs))
            form = draw(st.integers(0, 9))
            if form < 5:
                body = json.dumps(draw(mutated_doc(doc["args"], self.keys)), default=_hex).encode()
            elif form < 7:
                body = json.dumps(draw(JSON)).encode()
            elif form < 9:
                body = draw(mutated([json.dumps(d["args"]).encode() for d in self.docs]))
            else:
                body = b""
            token = draw(st.sampled_from([self.token] * 8 + [None, self.token[:-1] + "x"]))
            method = draw(st.sampled_from(["POST"] * 8 + ["GET", "PUT", "DELETE", "PATCH"]))
            query = draw(st.sampled_from(["", "", "a=1", "token=x&%zz", "x=" + "y" * 300]))
            return Call(method, path, query, token, body)
        return call()

    async def _send(self, call: Call) -> tuple[int, str, bytes]:
        headers = {"Content-Type": "application/json"}
        if call.token is not None:
            headers["Authorization"] = f"Bearer {call.token}"
        url = URL(self.base + call.path + ("?" + call.query if call.query else ""),
                  encoded=True)
        async with self.session.request(call.method, url, data=call.body,
                                        headers=headers) as resp:
            return resp.status, resp.content_type, await resp.read()

    def send(self, call: Call) -> None:
        with error_log() as log:
            status, ctype, body = self.runner.run(self._send(call))
        no_errors_logged(log, call)
        self.statuses[status] = self.statuses.get(status, 0) + 1
        no_traceback(body, f"{call.path} answer")
        assert status in ALLOWED, (status, body[:400], call)
        if ctype == "application/json":
            doc = json.loads(body)
            assert isinstance(doc, dict), doc
            if status != 200:
                assert isinstance(doc.get("error"), str) and doc["error"], doc
        after, head = state(self.node), audit_head(self.node)
        if status != 200:
            assert after == self.before and head == self.head, f"refused {call}, yet changed"
        self.before, self.head = after, head


@pytest.fixture(scope="module")
def control_fuzz() -> Iterator[ControlFuzz]:
    with fuzzed_node() as (runner, node):
        f = ControlFuzz(runner, node)
        try:
            yield f
        finally:
            f.close()


def test_the_seed_calls_are_answered(control_fuzz: ControlFuzz) -> None:
    for doc in control_fuzz.docs:
        control_fuzz.send(Call("POST", "/v1/" + doc["name"], "", control_fuzz.token,
                               json.dumps(doc["args"]).encode()))
    assert control_fuzz.statuses.get(200, 0) >= len(control_fuzz.docs) - 1


def test_fuzz_control_calls(control_fuzz: ControlFuzz) -> None:
    n = fuzz(control_fuzz.calls(), control_fuzz.send, seconds=budget_s())
    assert n > 0 and control_fuzz.statuses.get(400, 0) > 0
