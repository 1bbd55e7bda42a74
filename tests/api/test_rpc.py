"""Peer RPC over real HTTP on loopback: good calls and every kind of bad input."""

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from p2pmarket.api.client import PeerClient, PeerUnreachable
from p2pmarket.api.rpc import CallContext, RpcDispatcher, make_request, open_reply
from p2pmarket.api.server import Site, peer_app
from p2pmarket.core.clock import now_us
from p2pmarket.core.domains import DHT_RECORD, ENVELOPE, LEASE
from p2pmarket.core.errors import P2PMarketError, RemoteError
from p2pmarket.core.identity import Identity
from p2pmarket.core.wire import WireError, pack, seal, unpack

SERVER = Identity(b"\x05" * 32)
CALLER = Identity(b"\x06" * 32)


class Counter:
    def __init__(self) -> None:
        self.value = 0

    async def add(self, ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        n = args.get("n")
        if not isinstance(n, int) or n <= 0 or n > 1000:
            raise P2PMarketError("n must be an integer in 1..1000", n)
        self.value += n
        return {"value": self.value, "caller": ctx.sender}

    async def crash(self, ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        raise RuntimeError("secret internal detail")


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, Counter]]:
    counter = Counter()
    dispatcher = RpcDispatcher(SERVER)
    dispatcher.register_all("counter", {"add": counter.add, "crash": counter.crash})
    site = Site(peer_app(dispatcher))
    port = await site.start("127.0.0.1", 0)
    yield f"http://127.0.0.1:{port}", counter
    await site.stop()


async def raw_post(url: str, data: bytes) -> bytes:
    async with aiohttp.ClientSession() as s, s.post(url + "/rpc", data=data) as r:
        return await r.read()


async def test_call_round_trip(server: tuple[str, Counter]) -> None:
    url, counter = server
    async with PeerClient(CALLER) as client:
        result = await client.call(url, SERVER.public_key, "counter.add", {"n": 5})
    assert result == {"value": 5, "caller": CALLER.public_key}
    assert counter.value == 5


async def test_handler_error_is_signed_error_dict(server: tuple[str, Counter]) -> None:
    url, counter = server
    async with PeerClient(CALLER) as client:
        with pytest.raises(RemoteError, match="n must be an integer") as info:
            await client.call(url, SERVER.public_key, "counter.add", {"n": -3})
    assert info.value.value == -3
    assert counter.value == 0


async def test_unexpected_exception_does_not_leak(server: tuple[str, Counter]) -> None:
    url, _ = server
    async with PeerClient(CALLER) as client:
        with pytest.raises(RemoteError, match="internal error") as info:
            await client.call(url, SERVER.public_key, "counter.crash", {})
    assert "secret" not in str(info.value) and "secret" not in str(info.value.value)


async def error_of(url: str, data: bytes) -> str:
    reply = unpack(await raw_post(url, data))
    assert reply["kind"] == "reply"
    return str(reply["body"]["result"]["error"])


async def test_bad_requests_get_error_dicts_and_change_nothing(
        server: tuple[str, Counter]) -> None:
    url, counter = server
    good = make_request(CALLER, SERVER.node_id, "counter.add", {"n": 1})
    tampered = unpack(good)
    tampered["body"] = {"n": 999}
    cases = {
        b"\xc1garbage": "malformed msgpack",
        pack([1, 2, 3]): "envelope must be a map",
        pack(tampered): "bad signature",
        make_request(CALLER, CALLER.node_id, "counter.add", {"n": 1}): "addressed to another",
        make_request(CALLER, SERVER.node_id, "counter.nope", {}): "unknown RPC",
        seal(CALLER, ENVELOPE, "rpc.counter.add", [1], ts=good and 1, to=SERVER.node_id).encode():
            "arguments must be a map",
        seal(CALLER, ENVELOPE, "notrpc", {}, ts=2, to=SERVER.node_id).encode(): "not an RPC",
        make_request(CALLER, SERVER.node_id, "counter.add", {"n": 1}, ts=10): "too old",
        # the caller's signature of a request in another domain (a lease, a DHT record)
        seal(CALLER, LEASE, "rpc.counter.add", {"n": 1}, ts=now_us(),
             to=SERVER.node_id).encode(): "bad signature",
        seal(CALLER, DHT_RECORD, "rpc.counter.add", {"n": 1}, ts=now_us() + 1,
             to=SERVER.node_id).encode(): "bad signature",
    }
    for data, message in cases.items():
        assert message in await error_of(url, data), message
    assert counter.value == 0


async def test_replayed_request_is_refused(server: tuple[str, Counter]) -> None:
    url, counter = server
    request = make_request(CALLER, SERVER.node_id, "counter.add", {"n": 2})
    first = await raw_post(url, request)
    assert open_reply(request, first, CALLER, SERVER.public_key)["value"] == 2
    assert "replayed" in await error_of(url, request)
    assert counter.value == 2


async def test_reply_from_wrong_key_or_for_other_request_is_refused(
        server: tuple[str, Counter]) -> None:
    url, _ = server
    request = make_request(CALLER, SERVER.node_id, "counter.add", {"n": 1})
    reply = await raw_post(url, request)
    with pytest.raises(WireError, match="unexpected key"):
        open_reply(request, reply, CALLER, CALLER.public_key)
    other = make_request(CALLER, SERVER.node_id, "counter.add", {"n": 1})
    with pytest.raises(WireError, match="does not answer"):
        open_reply(other, reply, CALLER, SERVER.public_key)


async def test_unreachable_peer() -> None:
    async with PeerClient(CALLER, timeout_s=2) as client:
        with pytest.raises(PeerUnreachable):
            await client.call("http://127.0.0.1:1", SERVER.public_key, "counter.add", {"n": 1})


async def test_handler_gets_the_verified_request() -> None:
    seen: list[CallContext] = []

    async def keep(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        seen.append(ctx)
        return {}

    dispatcher = RpcDispatcher(SERVER)
    dispatcher.register("keep.it", keep)
    request = make_request(CALLER, SERVER.node_id, "keep.it", {"n": 1})
    open_reply(request, await dispatcher.dispatch(request), CALLER, SERVER.public_key)
    env = seen[0].request
    assert env is not None and env.encode() == request
    env.verify_signature(ENVELOPE)
    assert env.sender == seen[0].sender and env.ts == seen[0].ts and env.body == {"n": 1}
    # handlers called directly still work without one
    assert CallContext(sender=CALLER.public_key, ts=1).request is None


async def test_reply_tells_the_caller_where_it_was_seen() -> None:
    """The handler gets the TCP source address, and the signed reply carries it back."""
    seen_by_handler: list[tuple[str, int] | None] = []

    async def where(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        seen_by_handler.append(ctx.peer)
        return {}

    dispatcher = RpcDispatcher(SERVER)
    dispatcher.register("where", where)
    site = Site(peer_app(dispatcher))
    port = await site.start("127.0.0.1", 0)
    try:
        async with PeerClient(CALLER) as client:
            reply = await client.call_seen(f"http://127.0.0.1:{port}", SERVER.public_key,
                                           "where", {})
    finally:
        await site.stop()
    assert reply.seen is not None and reply.seen[0] == "127.0.0.1"
    assert 0 < reply.seen[1] < 65536 and reply.seen[1] != port
    assert seen_by_handler == [reply.seen]


async def test_seen_is_signed_and_absent_when_unknown() -> None:
    dispatcher = RpcDispatcher(SERVER)

    async def nothing(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        return {"peer": list(ctx.peer) if ctx.peer else None}

    dispatcher.register("nothing", nothing)
    req = make_request(CALLER, SERVER.node_id, "nothing", {})
    reply = await dispatcher.dispatch(req)
    assert "seen" not in unpack(reply)["body"]
    assert open_reply(req, reply, CALLER, SERVER.public_key) == {"peer": None}
    req = make_request(CALLER, SERVER.node_id, "nothing", {})
    env = unpack(await dispatcher.dispatch(req, ("198.18.0.7", 4242)))
    assert env["body"]["seen"] == ["198.18.0.7", 4242]
    env["body"]["seen"] = ["198.18.0.8", 4242]   # changed in transit: the signature fails
    with pytest.raises(WireError):
        open_reply(req, pack(env), CALLER, SERVER.public_key)
