"""Every reply is a signed, bounded envelope, whatever a peer sends (issue 10, item 8):
error values that cannot be sealed (floats, ext types, odd keys, huge integers), huge
error values and results, oversize requests; over real HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import msgpack
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2pmarket.api.bounds import (
    DEFAULT_REQUEST_BYTES,
    MAX_ERROR_BYTES,
    MAX_REQUEST_BYTES,
    sealable,
    sealable_error,
)
from p2pmarket.api.client import PeerClient, PeerUnreachable
from p2pmarket.api.rpc import CallContext, RpcDispatcher, make_request, open_reply
from p2pmarket.api.server import Site, peer_app
from p2pmarket.core.domains import ENVELOPE
from p2pmarket.core.errors import P2PMarketError, RemoteError
from p2pmarket.core.identity import Identity
from p2pmarket.core.wire import MAX_MESSAGE_BYTES, decode, pack

SERVER = Identity(b"\x07" * 32)
CALLER = Identity(b"\x08" * 32)
MIB = 1024 * 1024

NESTED: list[Any] = [1]
for _ in range(40):
    NESTED = [NESTED]

# error values no canonical encoding takes, and ones too large for an error reply
ODD_VALUES: dict[str, Any] = {
    "float": 1.5,
    "nan": float("nan"),
    "ext type": msgpack.ExtType(5, b"\x00" * 10),
    "ext type key": {msgpack.ExtType(5, b"k"): 1},
    "float key": {1.5: "x"},
    "none key": {None: 1},
    "tuple key": {(1, 2): 3},
    "int beyond 64 bits": 2**70,
    "negative beyond 64 bits": -(2**64),
    "nested deep": NESTED,
    "huge string": "x" * (5 * MIB),
    "huge bytes": b"\x01" * (5 * MIB),
    "long list": list(range(200_000)),
    "object": object(),
    "set": {1, 2, 3},
}


class Rooms:
    async def fail(self, ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        raise P2PMarketError("refused", ODD_VALUES[args["case"]])

    async def result(self, ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        if args["case"] == "oversize":
            return {"blob": b"\x02" * (MAX_MESSAGE_BYTES + 1)}
        return {"value": ODD_VALUES[args["case"]]}

    async def echo(self, ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        return {"n": len(args)}


@pytest.fixture
async def server() -> AsyncIterator[str]:
    dispatcher = RpcDispatcher(SERVER)
    rooms = Rooms()
    dispatcher.register_all("t", {"fail": rooms.fail, "result": rooms.result,
                                  "echo": rooms.echo})
    dispatcher.register("t.big", rooms.echo, max_bytes=MAX_REQUEST_BYTES)
    site = Site(peer_app(dispatcher))
    port = await site.start("127.0.0.1", 0)
    yield f"http://127.0.0.1:{port}"
    await site.stop()


async def post(url: str, data: bytes) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as s, s.post(url + "/rpc", data=data) as r:
        return r.status, await r.read()


def signed_error(status: int, reply: bytes, request: bytes | None = None) -> dict[str, Any]:
    """The error map of a reply that must be a signed, bounded envelope from SERVER."""
    assert status == 200
    assert len(reply) <= MAX_MESSAGE_BYTES
    env = decode(reply, ENVELOPE)   # checks the signature
    assert env.kind == "reply" and env.sender == SERVER.public_key
    if request is not None:
        with pytest.raises(RemoteError) as info:
            open_reply(request, reply, CALLER, SERVER.public_key)
        assert isinstance(info.value.message, str)
    result = env.body["result"]
    assert isinstance(result["error"], str)
    assert len(pack(result)) <= MAX_ERROR_BYTES
    return dict(result)


@pytest.mark.parametrize("case", sorted(ODD_VALUES))
async def test_unsealable_error_values_get_a_signed_error(server: str, case: str) -> None:
    request = make_request(CALLER, SERVER.node_id, "t.fail", {"case": case})
    result = signed_error(*await post(server, request), request)
    assert result["error"] == "refused"


@pytest.mark.parametrize("case", ["float", "float key", "set", "int beyond 64 bits",
                                  "oversize"])
async def test_unsealable_or_oversize_result_becomes_a_signed_error(server: str,
                                                                    case: str) -> None:
    request = make_request(CALLER, SERVER.node_id, "t.result", {"case": case})
    result = signed_error(*await post(server, request), request)
    assert result["error"] in {"internal error", "reply too large"}


@pytest.mark.parametrize("case", ["float", "ext type", "float key", "none key",
                                  "huge bytes", "long list"])
async def test_request_fields_that_cannot_be_sealed_get_a_signed_error(
        server: str, case: str) -> None:
    """The value lands in the refusal's error_value (unsupported version, bad kind)."""
    good = msgpack.unpackb(make_request(CALLER, SERVER.node_id, "t.echo", {}), raw=False)
    for field in ("v", "kind", "ts"):
        doc = dict(good, **{field: ODD_VALUES[case]})
        data = msgpack.packb(doc, use_bin_type=True)
        if len(data) > MAX_REQUEST_BYTES:
            continue
        signed_error(*await post(server, data))


async def test_requests_over_their_bound_are_refused_before_anything_runs(
        server: str) -> None:
    pad = b"\x00" * DEFAULT_REQUEST_BYTES
    request = make_request(CALLER, SERVER.node_id, "t.echo", {"pad": pad})
    result = signed_error(*await post(server, request), request)
    assert "too large" in result["error"] and result["error_value"]["max"] == \
        DEFAULT_REQUEST_BYTES
    # an RPC registered with a larger bound takes it
    request = make_request(CALLER, SERVER.node_id, "t.big", {"pad": pad})
    _, reply = await post(server, request)
    assert open_reply(request, reply, CALLER, SERVER.public_key) == {"n": 1}
    # a body over the transport's bound: a signed refusal, not HTTP 413
    result = signed_error(*await post(server, b"\x00" * (MAX_REQUEST_BYTES + 10)))
    assert "too large" in result["error"]


def test_sealable_is_bounded_and_encodable() -> None:
    for value in ODD_VALUES.values():
        doc = sealable_error({"error": "x" * 10_000, "error_value": value})
        assert len(pack(doc)) <= MAX_ERROR_BYTES
        assert len(doc["error"]) <= 512
    assert sealable({"a": [1, b"x", None, True]}) == {"a": [1, b"x", None, True]}
    assert sealable(1.5) == "1.5"


# -- fuzz: random argument maps to the RPCs; the reply is always signed -----------------

SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(),
    st.text(max_size=20), st.binary(max_size=20),
    st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=8)))
KEYS = st.one_of(st.text(max_size=8), st.binary(max_size=4), st.integers(-5, 5),
                 st.floats(), st.none(), st.booleans())
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(KEYS, inner, max_size=4)), max_leaves=12)
ARGS = st.dictionaries(KEYS, VALUES, max_size=6)


def raw_request(identity: Identity, to: bytes, kind: str, body: Any, ts: int) -> bytes:
    """An envelope as a peer may send it: signed when the body can be, else with a
    signature over nothing in particular."""
    try:
        return make_request(identity, to, kind[4:], body, ts=ts)
    except P2PMarketError:
        doc = {"v": 2, "kind": kind, "from": identity.public_key, "to": to, "ts": ts,
               "body": body, "sig": b"\x00" * 64}
        return msgpack.packb(doc, use_bin_type=True)  # type: ignore[no-any-return]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(args=ARGS, name=st.sampled_from(["t.fail", "t.result", "t.echo", "t.nope",
                                        "host.bid"]),
       n=st.integers(0, 10**6))
async def test_any_argument_map_gets_a_signed_reply(args: dict[Any, Any], name: str,
                                                    n: int) -> None:
    dispatcher = RpcDispatcher(SERVER)
    rooms = Rooms()

    async def strict(ctx: CallContext, a: dict[str, Any]) -> dict[str, Any]:
        raise P2PMarketError("bad arguments", a)   # echoes whatever was sent

    dispatcher.register_all("t", {"fail": strict, "result": strict, "echo": rooms.echo})
    dispatcher.register("host.bid", strict)
    from p2pmarket.core.clock import now_us
    data = raw_request(CALLER, SERVER.node_id, "rpc." + name, args, now_us() + n)
    reply = await dispatcher.dispatch(data)
    env = decode(reply, ENVELOPE)
    assert env.sender == SERVER.public_key and len(reply) <= MAX_MESSAGE_BYTES
    assert isinstance(env.body["result"], dict)


# -- the caller's side: a reply is read only up to the bound ---------------------------

async def test_a_reply_over_the_bound_is_not_read_whole() -> None:
    never = asyncio.Event()

    async def flood(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        chunk = b"\x00" * (256 * 1024)
        for _ in range(MAX_MESSAGE_BYTES // len(chunk) + 4):
            await resp.write(chunk)
        await never.wait()   # and then never ends
        return resp

    app = web.Application()
    app.add_routes([web.post("/rpc", flood)])
    site = Site(app)
    port = await site.start("127.0.0.1", 0)
    try:
        async with PeerClient(CALLER, timeout_s=30) as client:
            with pytest.raises(PeerUnreachable, match="reply over"):
                await asyncio.wait_for(client.call(f"http://127.0.0.1:{port}",
                                                   SERVER.public_key, "t.echo", {}), 20)
    finally:
        never.set()
        await site.stop()


async def test_the_transport_reads_no_more_than_the_largest_rpc_bound() -> None:
    dispatcher = RpcDispatcher(SERVER)
    dispatcher.register("t.echo", Rooms().echo, max_bytes=128 * 1024)
    site = Site(peer_app(dispatcher))
    port = await site.start("127.0.0.1", 0)
    try:
        url = f"http://127.0.0.1:{port}"
        result = signed_error(*await post(url, b"\x00" * (256 * 1024)))
        assert result["error_value"] == {"max": 128 * 1024}

        async def chunked() -> AsyncIterator[bytes]:   # no Content-Length
            for _ in range(64):
                yield b"\x00" * 4096

        async with aiohttp.ClientSession() as s, s.post(url + "/rpc", data=chunked()) as r:
            result = signed_error(r.status, await r.read())
        assert result["error_value"] == {"max": 128 * 1024}
    finally:
        await site.stop()


async def test_a_request_body_trickling_in_is_cut_off() -> None:
    dispatcher = RpcDispatcher(SERVER)
    dispatcher.register("t.echo", Rooms().echo)
    site = Site(peer_app(dispatcher, body_timeout_s=0.2))
    port = await site.start("127.0.0.1", 0)
    never = asyncio.Event()

    async def trickle() -> AsyncIterator[bytes]:
        yield b"\x87"
        await never.wait()   # and the rest never comes
        yield b""

    try:
        async with aiohttp.ClientSession() as s, s.post(
                f"http://127.0.0.1:{port}/rpc", data=trickle(),
                timeout=aiohttp.ClientTimeout(total=10)) as r:
            result = signed_error(r.status, await r.read())
        assert "too slow" in result["error"]
    finally:
        never.set()
        await site.stop()
