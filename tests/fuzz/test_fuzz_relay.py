"""Fuzz target 4: the relay's framing (p2pmarket/nat/frames.py) and its websocket
handling (p2pmarket/nat/relay.py), on the fuzzed node's own relay.

* frames: the seeds (one real encoding of each frame type) mutated, and random bytes,
  into ``decode_frame``: a frame or a :class:`RelayError`, never another exception;
  a frame decoded encodes again to a message that decodes to the same frame;
* a host's socket: a relayed host connects to ``/relay/reserve``, opens with a fuzzed
  frame (it must be refused with RESET on circuit 0) or a valid RESERVE, then sends
  fuzzed frames; the relay must still answer a valid refresh with RESERVED (or, after
  a fuzzed RESERVE, have refused with RESET and closed);
* a circuit: a buyer's request is relayed to the host, which answers its OPEN with
  fuzzed frames for that circuit and then RESET; the buyer gets an answer or a cut
  connection, never a traceback, and the relay holds no circuit afterwards.

And for all: nothing is logged as an error, the reservation is released once the
host's socket closes.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from hypothesis import strategies as st

from p2pmarket.core.clock import now_us
from p2pmarket.core.identity import Identity
from p2pmarket.nat.frames import (
    Open,
    RelayError,
    Reserve,
    Reserved,
    Reset,
    decode_frame,
    encode_frame,
)
from p2pmarket.nat.reservation import make_reserve_request
from tests.fuzz.fuzzlib import (
    budget_s,
    error_log,
    fuzz,
    mutated,
    no_errors_logged,
    no_traceback,
    raw,
    seeds,
)
from tests.fuzz.nodestate import fuzzed_node

WAIT_S = 5.0


def decoded(data: bytes) -> Any:
    try:
        return decode_frame(data)
    except RelayError:
        return None


def on_circuit(data: bytes, circuit: int) -> bytes:
    """``data`` with its header naming ``circuit`` (when it has a header)."""
    if len(data) < 5:
        return data
    return data[:1] + struct.pack(">I", circuit) + data[5:]


class RelayFuzz:
    def __init__(self, runner: Any, node: Any) -> None:
        self.runner, self.node = runner, node
        self.relay = node.relay
        assert self.relay is not None
        self.base = f"http://127.0.0.1:{node.peer_site.port}"
        self.host = Identity.generate()
        self.ts = now_us()
        self.frames = seeds("relay")
        self.session = runner.run(self._session())
        self.outcomes: dict[str, int] = {}

    @staticmethod
    async def _session() -> aiohttp.ClientSession:
        return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT_S * 2))

    def close(self) -> None:
        self.runner.run(self.session.close())

    def count(self, what: str) -> None:
        self.outcomes[what] = self.outcomes.get(what, 0) + 1

    def reserve_frame(self) -> bytes:
        self.ts = max(now_us(), self.ts + 1)
        return encode_frame(Reserve(make_reserve_request(self.host, self.node.identity.node_id,
                                                         self.ts)))

    # -- the codec -------------------------------------------------------------

    def frame(self, data: bytes) -> None:
        try:
            frame = decode_frame(data)
        except RelayError as exc:
            assert isinstance(exc.message, str) and exc.message
            return
        again = encode_frame(frame)
        assert decode_frame(again) == frame, (frame, again)

    # -- a host's socket ----------------------------------------------------------

    async def _next(self, ws: aiohttp.ClientWebSocketResponse) -> Any:
        msg = await ws.receive(timeout=WAIT_S)
        if msg.type is aiohttp.WSMsgType.BINARY:
            return decode_frame(msg.data)
        return msg.type

    async def _released(self) -> None:
        async with asyncio.timeout(WAIT_S):
            while self.relay.links or self.relay.book.circuits:
                await asyncio.sleep(0.005)

    async def _link(self, hello: bytes | None, sent: list[bytes]) -> None:
        async with self.session.ws_connect(self.base + "/relay/reserve",
                                           max_msg_size=0) as ws:
            await ws.send_bytes(self.reserve_frame() if hello is None else hello)
            first = await self._next(ws)
            if hello is not None and not isinstance(first, Reserved):
                assert isinstance(first, Reset) and first.circuit == 0, first
                self.count("hello refused")
                return
            assert isinstance(first, Reserved), first
            for data in sent:
                await ws.send_bytes(data)
            await ws.send_bytes(self.reserve_frame())
            answer = await self._next(ws)
            if isinstance(answer, Reset):   # only a fuzzed RESERVE may end the link
                assert answer.circuit == 0 and any(
                    isinstance(decoded(d), Reserve) for d in sent), (answer, sent)
                self.count("link refused")
            else:
                assert isinstance(answer, Reserved), answer
                self.count("link kept")
        await self._released()

    def link(self, case: tuple[bytes | None, list[bytes]]) -> None:
        with error_log() as log:
            self.runner.run(self._link(*case))
        no_errors_logged(log, case)

    def links(self) -> st.SearchStrategy[tuple[bytes | None, list[bytes]]]:
        hello = st.integers(0, 3).flatmap(   # a valid RESERVE three times in four
            lambda i: raw(self.frames, 256) if i == 0 else st.none())
        return st.tuples(hello, st.lists(raw(self.frames, 256), min_size=1, max_size=4))

    # -- a circuit --------------------------------------------------------------

    async def _buyer(self) -> tuple[int, bytes] | str:
        url = f"{self.base}/relay/{self.host.node_id.hex()}/rpc"
        try:
            async with self.session.post(url, data=b"\x80" * 100) as resp:
                return resp.status, await resp.read()
        except (TimeoutError, aiohttp.ClientError) as exc:
            return type(exc).__name__

    async def _circuit(self, answers: list[bytes]) -> None:
        async with self.session.ws_connect(self.base + "/relay/reserve",
                                           max_msg_size=0) as ws:
            await ws.send_bytes(self.reserve_frame())
            assert isinstance(await self._next(ws), Reserved)
            buyer = asyncio.create_task(self._buyer())
            opened = await self._next(ws)
            assert isinstance(opened, Open), opened
            for data in answers:
                await ws.send_bytes(on_circuit(data, opened.circuit))
            await ws.send_bytes(encode_frame(Reset(opened.circuit, "fuzzed host is done")))
            got = await asyncio.wait_for(buyer, WAIT_S * 2)
            if isinstance(got, tuple):
                status, body = got
                no_traceback(body, "relayed answer")
                assert 100 <= status <= 599
                self.count(f"answered {status // 100}xx")
            else:
                self.count(f"cut ({got})")
            async with asyncio.timeout(WAIT_S):
                while self.relay.book.circuits:
                    await asyncio.sleep(0.005)
        await self._released()

    def circuit(self, answers: list[bytes]) -> None:
        with error_log() as log:
            self.runner.run(self._circuit(answers))
        no_errors_logged(log, answers)


@pytest.fixture(scope="module")
def relay_fuzz() -> Iterator[RelayFuzz]:
    with fuzzed_node() as (runner, node):
        f = RelayFuzz(runner, node)
        try:
            yield f
        finally:
            f.close()


def test_the_seed_frames(relay_fuzz: RelayFuzz) -> None:
    for data in relay_fuzz.frames:
        relay_fuzz.frame(data)
        assert decoded(data) is not None
    relay_fuzz.link((None, relay_fuzz.frames))
    relay_fuzz.circuit(relay_fuzz.frames)


def test_fuzz_frames(relay_fuzz: RelayFuzz) -> None:
    assert fuzz(raw(relay_fuzz.frames, 512), relay_fuzz.frame,
                seconds=budget_s() * 0.3) > 0


def test_fuzz_host_socket(relay_fuzz: RelayFuzz) -> None:
    assert fuzz(relay_fuzz.links(), relay_fuzz.link, seconds=budget_s() * 0.35) > 0
    assert relay_fuzz.relay.bad_frames > 0


def test_fuzz_circuit_answers(relay_fuzz: RelayFuzz) -> None:
    answers = st.lists(st.one_of(mutated(relay_fuzz.frames), st.sampled_from(relay_fuzz.frames)),
                       min_size=1, max_size=5)
    assert fuzz(answers, relay_fuzz.circuit, seconds=budget_s() * 0.35) > 0
