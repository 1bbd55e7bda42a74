"""The relay on real loopback sockets: a host's peer app reached through a relay it holds
a reservation at, exactly as if called directly; streamed bodies; the refusals and
limits, each with its clear error and nothing else changed."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import tracemalloc
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from relay_helpers import (
    WAIT_S,
    RawHost,
    digest_of,
    relay_world,
    reserve_frame,
    start_host,
    start_relay,
    stream_of,
)

from p2pmarket.api.client import PeerClient
from p2pmarket.api.rpc import make_request, open_reply_seen
from p2pmarket.api.server import Site, observed
from p2pmarket.core.clock import now_us
from p2pmarket.core.errors import RemoteError
from p2pmarket.core.identity import Identity
from p2pmarket.nat.circuit import WS_MAX_MSG_SIZE, CircuitEnd
from p2pmarket.nat.frames import (
    Data,
    End,
    Frame,
    Open,
    RelayError,
    Reserve,
    Reserved,
    Reset,
    Response,
    Window,
    decode_frame,
    encode_frame,
)
from p2pmarket.nat.relayclient import RelayClient, RelayLost
from p2pmarket.nat.relaylimits import RelayLimits
from p2pmarket.nat.reservation import make_reservation, open_reservation, open_reserve_request

MIB = 1024 * 1024


async def test_an_rpc_through_the_relay_is_a_direct_call() -> None:
    async with relay_world() as w, PeerClient(w.buyer) as peers:
        key = w.host.identity.public_key
        direct = await peers.call(w.host.url, key, "test.echo", {"x": [1, b"\x00"]})
        relayed = await peers.call(w.client.url, key, "test.echo", {"x": [1, b"\x00"]})
        assert relayed == direct == {"echo": {"x": [1, b"\x00"]}, "from": w.buyer.public_key}
        with pytest.raises(RemoteError, match="refused on purpose") as err:
            await peers.call(w.client.url, key, "test.fail", {"why": "test"})
        assert err.value.value == "test"
        assert w.client.url == f"{w.relay.url}/relay/{w.host.identity.node_id.hex()}"
        voucher = open_reservation(w.client.reservation, node_id=w.host.identity.node_id)
        assert voucher.relay == w.relay.identity.public_key and voucher.url == w.relay.url
        assert voucher.relayed_url == w.client.url
        status = w.relay.service.status()
        assert status["reservations"] == 1 and status["circuits"] == 0
        assert status["bytes_relayed"] > 0


async def test_a_relayed_reply_tells_the_buyer_where_the_relay_saw_it() -> None:
    """The host's handlers see the caller as the relay saw it (not the loopback replay
    hop), and the signed reply's ``seen`` says so; a caller's own copy of the header
    is dropped by the relay."""
    async with relay_world() as w, aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))) as http:
        key = w.host.identity.public_key
        request = make_request(w.buyer, w.host.identity.node_id, "test.echo", {})
        async with http.post(w.client.url + "/rpc", data=request) as resp:
            reply = open_reply_seen(request, await resp.read(), w.buyer, key)
        # the buyer (from 127.0.0.2) as the relay saw it, not the replay hop (127.0.0.1)
        assert reply.seen is not None and reply.seen[0] == "127.0.0.2"
    assert observed_of({"X-P2PM-Relayed-From": "198.18.0.31:5555"}, "127.0.0.1") == (
        "198.18.0.31", 5555)
    assert observed_of({"X-P2PM-Relayed-From": "198.18.0.31:5555"}, "198.18.0.9") == (
        "198.18.0.9", 4444)                              # believed on loopback only
    assert observed_of({"X-P2PM-Relayed-From": "junk"}, "127.0.0.1") is None


def observed_of(headers: dict[str, str], remote: str) -> tuple[str, int] | None:
    from aiohttp.test_utils import make_mocked_request

    class Transport:
        def get_extra_info(self, name: str) -> object:
            return (remote, 4444) if name == "peername" else None

    return observed(make_mocked_request("POST", "/rpc", headers=headers,
                                        transport=Transport()))


async def test_a_20_mb_upload_streams_through_intact_and_is_never_held_whole() -> None:
    size = 20 * MIB
    async with relay_world() as w, aiohttp.ClientSession() as http:
        tracemalloc.start()
        try:
            async with http.put(w.client.url + "/upload", data=stream_of(size),
                                headers={"Content-Length": str(size),
                                         "X-P2PM-Auth": "abc",
                                         "X-P2PM-Relayed-From": "6.6.6.6:1"}) as resp:
                got = await resp.json()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert resp.status == 200
        assert got["n"] == size and got["sha256"] == digest_of(size)
        assert got["content_length"] == size        # Content-Length went end to end
        assert got["auth"] == "abc"                 # so did the upload's auth header
        assert got["relayed_from"].startswith("127.0.0.1:")   # the relay's, not the forgery
        # buyer, relay and host together never held more than a few frames of it
        assert peak < 8 * MIB, peak
        assert w.relay.service.status()["bytes_relayed"] >= size


async def test_a_streamed_response_comes_back_intact() -> None:
    size = 5 * MIB + 123
    async with relay_world() as w, aiohttp.ClientSession() as http:
        async with http.get(w.client.url + f"/stream?n={size}") as resp:
            assert resp.status == 200 and resp.content_length == size
            data = await resp.read()
        assert len(data) == size and hashlib.sha256(data).hexdigest() == digest_of(size)


async def test_no_reservation_is_a_clear_404_and_a_bad_node_id_a_400() -> None:
    relay = await start_relay()
    try:
        async with aiohttp.ClientSession() as http:
            nobody = Identity.generate().node_id.hex()
            async with http.post(f"{relay.url}/relay/{nobody}/rpc", data=b"x") as resp:
                assert resp.status == 404
                assert await resp.json() == {"error": "no reservation for this node",
                                             "error_value": nobody}
            async with http.get(f"{relay.url}/relay/zz{nobody[2:]}/health") as resp:
                assert resp.status == 400
                assert (await resp.json())["error"] == "bad node id in the relay path"
            async with http.get(f"{relay.url}/relay/reserve") as resp:
                assert resp.status == 400
                assert (await resp.json())["error"] == "a relay reservation takes a websocket"
        assert relay.service.status()["circuits"] == 0
    finally:
        await relay.site.stop()


async def test_a_request_the_frames_cannot_carry_is_a_400() -> None:
    async with relay_world() as w, aiohttp.ClientSession() as http:
        headers = [(f"x-h{i}", "v") for i in range(70)]
        async with http.get(w.client.url + "/health", headers=headers) as resp:
            assert resp.status == 400
            assert (await resp.json())["error"] == (
                "this request cannot be relayed: headers must be a list of at most 64 pairs")
        assert w.relay.service.status()["circuits"] == 0


async def test_a_byte_limit_cuts_the_upload_and_the_relay_stays_up() -> None:
    limits = RelayLimits(circuit_bytes=2 * MIB)
    async with relay_world(limits) as w, aiohttp.ClientSession() as http:
        size = 8 * MIB
        try:
            async with http.put(w.client.url + "/upload", data=stream_of(size),
                                headers={"Content-Length": str(size)}) as resp:
                status, body = resp.status, await resp.json()
        except aiohttp.ClientError as exc:
            status, body = 0, {"error": repr(exc)}
        assert status == 413, body
        assert body["error"] == "relay circuit byte limit exceeded"
        assert body["error_value"] == {"reason": "circuit_bytes", "limit": 2 * MIB}
        assert not any(u.get("n") == size for u in w.host.uploads)
        async with PeerClient(w.buyer) as peers:
            got = await peers.call(w.client.url, w.host.identity.public_key, "test.echo", {})
        assert got["echo"] == {}
        status_now = w.relay.service.status()
        assert status_now["reservations"] == 1 and status_now["circuits"] == 0


async def reserved_raw(relay: object, identity: Identity) -> RawHost:
    raw = await RawHost.connect(relay)  # type: ignore[arg-type]
    await raw.send(reserve_frame(identity, relay.identity))  # type: ignore[attr-defined]
    got = await raw.receive()
    assert isinstance(got, Reserved), got
    return raw


async def relayed_get(http: aiohttp.ClientSession, url: str) -> tuple[int, bytes]:
    async with http.get(url) as resp:
        return resp.status, await resp.read()


async def test_frames_for_circuits_that_are_not_open_are_ignored() -> None:
    relay = await start_relay()
    host = Identity.generate()
    raw = await reserved_raw(relay, host)
    try:
        for frame in (Data(999, b"x"), End(999), Response(999, 200), Reset(999, "no")):
            await raw.send(frame)
        async with aiohttp.ClientSession() as http:
            url = f"{relay.url}/relay/{host.node_id.hex()}/hello?a=1"

            async def get() -> tuple[int, bytes, list[str]]:
                async with http.get(url) as resp:
                    return resp.status, await resp.read(), resp.headers.getall("set-cookie")

            call = asyncio.ensure_future(get())
            opened = await raw.receive()
            assert isinstance(opened, Open)
            assert (opened.method, opened.path, opened.query, opened.body) == (
                "GET", "/hello", "a=1", False)
            assert opened.peer is not None and opened.peer[0] == "127.0.0.1"
            assert all(k not in ("host", "connection") for k, _ in opened.headers)
            c = opened.circuit
            await raw.send(Data(c + 1, b"stray"))   # a neighbour that is not open
            await raw.send(Response(c, 201, (("content-type", "text/plain"),
                                             ("set-cookie", "a=1"), ("set-cookie", "b=2"))))
            await raw.send(Data(c, b"hi there"))
            await raw.send(End(c))
            assert await asyncio.wait_for(call, WAIT_S) == (201, b"hi there", ["a=1", "b=2"])
        status = relay.service.status()
        assert status["stray_frames"] == 5 and status["bad_frames"] == 0
        assert status["reservations"] == 1 and status["circuits"] == 0
    finally:
        await raw.close()
        await relay.site.stop()


async def test_malformed_frames_are_counted_and_reset_only_their_circuit() -> None:
    relay = await start_relay()
    host = Identity.generate()
    raw = await reserved_raw(relay, host)
    try:
        bad = [b"\x04", b"\x09\x00\x00\x00\x01", b"\x04\x00\x00\x00\x05\xc1",
               b"\x02\x00\x00\x00\x00data", b"\x03\x00\x00\x00\x05extra"]
        for data in bad:
            await raw.send(data)
        await raw.ws.send_str("not a frame")
        async with aiohttp.ClientSession() as http:
            url = f"{relay.url}/relay/{host.node_id.hex()}/x"
            call = asyncio.ensure_future(relayed_get(http, url))
            opened = await raw.receive()
            assert isinstance(opened, Open)
            # a RESPONSE whose payload is no msgpack map, for this open circuit
            head = encode_frame(Response(opened.circuit, 200))[:5]
            await raw.send(head + b"\x93\x01\x02\x03")
            status, body = await asyncio.wait_for(call, WAIT_S)
            assert status == 502
            assert b"the host sent a malformed frame: RESPONSE payload must be a map" in body
            reset = await raw.receive()
            assert isinstance(reset, Reset) and reset.circuit == opened.circuit
            # the reservation itself is untouched: the next request goes through
            call = asyncio.ensure_future(relayed_get(http, url))
            opened = await raw.receive()
            assert isinstance(opened, Open)
            await raw.send(Response(opened.circuit, 204))
            await raw.send(End(opened.circuit))
            assert await asyncio.wait_for(call, WAIT_S) == (204, b"")
        status_now = relay.service.status()
        assert status_now["bad_frames"] == len(bad) + 2
        assert status_now["reservations"] == 1 and status_now["circuits"] == 0
    finally:
        await raw.close()
        await relay.site.stop()


@pytest.mark.parametrize("forgery", ["signature", "other_relay", "kind", "replay", "stale",
                                     "not_reserve"])
async def test_a_forged_reserve_request_is_refused(forgery: str) -> None:
    relay = await start_relay()
    host = Identity.generate()
    frame = reserve_frame(host, relay.identity)
    if forgery == "signature":
        frame = frame[:-40] + bytes([frame[-40] ^ 1]) + frame[-39:]
    elif forgery == "other_relay":
        frame = reserve_frame(host, relay.identity, to=Identity.generate().node_id)
    elif forgery == "kind":
        frame = reserve_frame(host, relay.identity, kind="nat.reservez")
    elif forgery == "stale":
        frame = reserve_frame(host, relay.identity, ts=1)
    elif forgery == "not_reserve":
        frame = encode_frame(Data(1, b"hello"))
    expected = {"signature": "bad reserve request: bad signature",
                "other_relay": "reserve request is addressed to another relay",
                "kind": "not a reserve request", "replay": "bad reserve request: replayed",
                "stale": "bad reserve request: timestamp too old",
                "not_reserve": "expected a RESERVE frame"}[forgery]
    try:
        if forgery == "replay":
            first = await RawHost.connect(relay)
            await first.send(frame)
            assert isinstance(await first.receive(), Reserved)
            await first.close()     # and the very same bytes again, on a new socket
        raw = await RawHost.connect(relay)
        refused_before = relay.service.status()["refused"]
        await raw.send(frame)
        reset = await raw.receive()
        assert isinstance(reset, Reset) and reset.circuit == 0
        assert reset.error.startswith(expected), reset.error
        assert await raw.receive() is None     # and the relay closed the socket
        await raw.close()
        status = relay.service.status()
        assert status["reservations"] == 0 and status["refused"] == refused_before + 1
    finally:
        await relay.site.stop()


async def test_a_newer_reservation_of_a_host_replaces_the_older_socket() -> None:
    relay = await start_relay(RelayLimits(max_reservations=1))
    host = Identity.generate()
    first = await reserved_raw(relay, host)
    second = await reserved_raw(relay, host)
    try:
        assert await first.receive() == Reset(0, "replaced by a newer reservation")
        assert await first.receive() is None
        async with aiohttp.ClientSession() as http:
            call = asyncio.ensure_future(relayed_get(
                http, f"{relay.url}/relay/{host.node_id.hex()}/x"))
            opened = await second.receive()
            assert isinstance(opened, Open)
            await second.send(Response(opened.circuit, 204))
            await second.send(End(opened.circuit))
            assert await asyncio.wait_for(call, WAIT_S) == (204, b"")
        assert relay.service.status()["reservations"] == 1
    finally:
        await first.close()
        await second.close()
        await relay.site.stop()


async def test_per_ip_and_total_reservation_limits() -> None:
    for limits, reason in ((RelayLimits(per_ip=1), "ip_limit"),
                           (RelayLimits(max_reservations=1, per_ip=5), "relay_full")):
        async with relay_world(limits) as w:
            other = await start_host(Identity.generate())
            second = RelayClient(other.identity, w.relay.url, w.relay.identity.public_key,
                                 other.url)
            with pytest.raises(RelayLost, match=f"the relay refused the reservation: .*"
                                                f"\\({reason}\\)"):
                await asyncio.wait_for(second.run(), WAIT_S)
            await other.site.stop()
            # a refresh by the host already there is no new reservation
            fresh = await asyncio.wait_for(w.client.refresh(), WAIT_S)
            assert fresh.node_id == w.host.identity.node_id
            status = w.relay.service.status()
            assert status["reservations"] == 1 and status["refused"] == 1


async def test_too_many_circuits_to_one_host_get_a_429() -> None:
    async with relay_world(RelayLimits(circuits_per_peer=1)) as w, \
            aiohttp.ClientSession() as http:
        held = asyncio.ensure_future(relayed_get(http, w.client.url + "/hold"))
        await asyncio.wait_for(w.host.held.wait(), WAIT_S)
        async with http.get(w.client.url + "/health") as resp:
            assert resp.status == 429
            body = await resp.json()
        assert body == {"error": "too many circuits open to this node",
                        "error_value": {"reason": "circuit_limit", "limit": 1}}
        w.host.release.set()
        status, data = await asyncio.wait_for(held, WAIT_S)
        assert status == 200 and b"released" in data
        async with http.get(w.client.url + "/health") as resp:
            assert resp.status == 200


async def test_the_relay_closing_ends_run_with_relay_lost_and_fails_open_circuits() -> None:
    async with relay_world() as w, aiohttp.ClientSession() as http:
        held = asyncio.ensure_future(relayed_get(http, w.client.url + "/hold"))
        await asyncio.wait_for(w.host.held.wait(), WAIT_S)
        await w.relay.service.close()
        with pytest.raises(RelayLost, match="the relay ended the reservation: the relay is "
                                            "closing"):
            await asyncio.wait_for(w.task, WAIT_S)
        status, body = await asyncio.wait_for(held, WAIT_S)
        assert status == 502 and b"the relay is closing" in body
        assert not w.client.reserved.is_set()
        w.host.release.set()


async def test_the_host_going_away_fails_its_circuits_with_a_502() -> None:
    async with relay_world() as w, aiohttp.ClientSession() as http:
        held = asyncio.ensure_future(relayed_get(http, w.client.url + "/hold"))
        await asyncio.wait_for(w.host.held.wait(), WAIT_S)
        await w.client.close()
        await asyncio.wait_for(w.task, WAIT_S)      # closed on purpose: run returns
        status, body = await asyncio.wait_for(held, WAIT_S)
        assert status == 502 and b"the relay lost the host's connection" in body
        async with http.get(w.client.url + "/health") as resp:
            assert resp.status == 404
        w.host.release.set()


async def test_a_dead_local_app_is_a_502_from_the_relay() -> None:
    async with relay_world() as w, aiohttp.ClientSession() as http:
        w.client.local_url = "http://127.0.0.1:9"    # discard port: nothing listens
        status, body = await relayed_get(http, w.client.url + "/health")
        assert status == 502
        assert b"the host's peer app did not answer: ClientConnectorError" in body


async def test_a_reservation_not_refreshed_expires() -> None:
    relay = await start_relay(RelayLimits(reservation_s=0.2))
    raw = await reserved_raw(relay, Identity.generate())
    try:
        reset = await raw.receive()
        assert reset == Reset(0, "reservation expired")
        assert await raw.receive() is None
        assert relay.service.status()["reservations"] == 0
    finally:
        await raw.close()
        await relay.site.stop()


async def test_a_refresh_gives_a_newer_voucher() -> None:
    async with relay_world() as w:
        seen: list[bytes] = []
        w.client.on_reservation = seen.append
        first = w.client.voucher
        fresh = await asyncio.wait_for(w.client.refresh(), WAIT_S)
        assert first is not None and fresh.ts > first.ts and fresh.expires > first.expires
        assert seen == [w.client.reservation]


class FakeRelay:
    """A relay speaking frames by hand to a real :class:`RelayClient`: it grants the
    vouchers ``voucher`` makes, then lets the test drive the socket."""

    def __init__(self, identity: Identity) -> None:
        self.identity = identity
        self.voucher = lambda node_id: make_reservation(
            identity, url="http://127.0.0.1:1", node_id=node_id, expires=now_us() + 10**9,
            ts=now_us())
        self.sockets: asyncio.Queue[web.WebSocketResponse] = asyncio.Queue()
        self.done = asyncio.Event()

    async def handler(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=WS_MAX_MSG_SIZE)
        await ws.prepare(request)
        msg = await ws.receive(timeout=WAIT_S)
        frame = decode_frame(msg.data)
        assert isinstance(frame, Reserve)
        env = open_reserve_request(frame.envelope, self.identity.node_id)
        await ws.send_bytes(encode_frame(Reserved(self.voucher(env.sender_id), 1)))
        await self.sockets.put(ws)
        await self.done.wait()
        await ws.close()
        return ws

    async def frames(self, ws: web.WebSocketResponse, circuit: int) -> list[Frame]:
        """The frames of ``circuit`` up to its END or RESET (others are dropped)."""
        got: list[Frame] = []
        while not got or not isinstance(got[-1], End | Reset):
            frame = decode_frame((await ws.receive(timeout=WAIT_S)).data)
            if frame.circuit == circuit and not isinstance(frame, Window):
                got.append(frame)
        return got


@contextlib.asynccontextmanager
async def fake_relay(voucher_key: Identity | None = None,
                     ) -> AsyncIterator[tuple[FakeRelay, RelayClient, asyncio.Task[None]]]:
    relay_identity = Identity.generate()
    fake = FakeRelay(voucher_key or relay_identity)
    fake.identity = relay_identity
    if voucher_key is not None:
        fake.voucher = lambda node_id: make_reservation(
            voucher_key, url="http://127.0.0.1:1", node_id=node_id,
            expires=now_us() + 10**9, ts=now_us())
    app = web.Application()
    app.add_routes([web.get("/relay/reserve", fake.handler)])
    site = Site(app)
    port = await site.start("127.0.0.1", 0)
    host = await start_host(Identity.generate())
    client = RelayClient(host.identity, f"http://127.0.0.1:{port}",
                         relay_identity.public_key, host.url)
    task = asyncio.ensure_future(client.run())
    try:
        yield fake, client, task
    finally:
        fake.done.set()
        await client.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, WAIT_S)
        await site.stop()
        await host.site.stop()


async def test_the_host_ignores_stray_and_malformed_frames_and_serves_circuits() -> None:
    async with fake_relay() as (fake, client, _task):
        ws = await asyncio.wait_for(fake.sockets.get(), WAIT_S)
        for frame in (Data(77, b"x"), End(66), Reset(55, "gone"), Window(88, 10)):
            await ws.send_bytes(encode_frame(frame))
        for data in (b"\x01", b"\x02\x00\x00\x00\x05", b"\x63\x00\x00\x00\x05"):
            await ws.send_bytes(data)
        await ws.send_bytes(encode_frame(Open(5, "GET", "/health")))
        got = await fake.frames(ws, 5)
        assert isinstance(got[0], Response) and got[0].status == 200
        assert b"".join(f.data for f in got if isinstance(f, Data)).startswith(b'{"ok": true')
        assert isinstance(got[-1], End)
        # a streamed body, within the window
        size = 300_000
        await ws.send_bytes(encode_frame(Open(6, "PUT", "/upload", "", (
            ("content-length", str(size)),), True)))
        async for chunk in stream_of(size):
            await ws.send_bytes(encode_frame(Data(6, chunk)))
        await ws.send_bytes(encode_frame(End(6)))
        got = await fake.frames(ws, 6)
        assert isinstance(got[0], Response) and got[0].status == 200
        body = json.loads(b"".join(f.data for f in got if isinstance(f, Data)))
        assert body["n"] == size and body["sha256"] == digest_of(size)
        assert body["relayed_from"] is None     # no peer in that OPEN
        assert client.stray_frames == 4 and client.bad_frames == 3
        assert client.reserved.is_set()


async def test_a_bad_voucher_ends_run_with_relay_lost() -> None:
    async with fake_relay(voucher_key=Identity.generate()) as (fake, _client, task):
        ws = await asyncio.wait_for(fake.sockets.get(), WAIT_S)
        assert (await ws.receive(timeout=WAIT_S)).type is aiohttp.WSMsgType.CLOSE
        with pytest.raises(RelayLost, match="the voucher is signed by another relay"):
            await asyncio.wait_for(task, WAIT_S)


async def test_a_voucher_for_another_node_ends_run_with_relay_lost() -> None:
    async with fake_relay() as (fake, _client, task):
        other = Identity.generate().node_id
        make = fake.voucher
        fake.voucher = lambda node_id: make(other)
        ws = await asyncio.wait_for(fake.sockets.get(), WAIT_S)
        assert (await ws.receive(timeout=WAIT_S)).type is aiohttp.WSMsgType.CLOSE
        with pytest.raises(RelayLost, match="bad voucher: reservation is for another node"):
            await asyncio.wait_for(task, WAIT_S)


async def test_a_relay_key_that_is_not_the_relay_s_is_refused_by_the_relay() -> None:
    host = await start_host(Identity.generate())
    relay = await start_relay()
    try:
        client = RelayClient(host.identity, relay.url, Identity.generate().public_key,
                             host.url)
        with pytest.raises(RelayLost, match="reserve request is addressed to another relay"):
            await asyncio.wait_for(client.run(), WAIT_S)
    finally:
        await relay.site.stop()
        await host.site.stop()


async def test_a_circuit_end_resets_a_sender_overrunning_its_window() -> None:
    sent: list[Frame] = []

    async def send(frame: Frame) -> None:
        sent.append(frame)

    end = CircuitEnd(3, send, window=1000)
    assert end.deliver(Data(3, b"x" * 600)) is None
    assert end.deliver(Data(3, b"x" * 400)) is None
    assert end.deliver(Data(3, b"x")) == "flow control window exceeded"
    assert end.deliver(Window(3, 1)) == "WINDOW grant beyond the window"
    got = await end.receive()
    assert isinstance(got, Data) and len(got.data) == 600
    await end.consumed(600)                 # over a quarter of the window: granted
    assert sent == [Window(3, 600)]
    assert end.deliver(Data(3, b"y" * 600)) is None
    await end.reset("flow control window exceeded")
    assert sent[-1] == Reset(3, "flow control window exceeded")
    # what had arrived is still taken in order, then the reset
    assert [type(await end.receive()) for _ in range(3)] == [Data, Data, Reset]
    with pytest.raises(RelayError, match="flow control window exceeded"):
        await end.send_data(b"z")


async def test_a_byte_limit_passed_while_the_response_streams_cuts_the_connection() -> None:
    async with relay_world(RelayLimits(circuit_bytes=1 * MIB)) as w, \
            aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientPayloadError):
            async with http.get(w.client.url + f"/stream?n={4 * MIB}") as resp:
                assert resp.status == 200 and resp.content_length == 4 * MIB
                await resp.read()
        status, _ = await relayed_get(http, w.client.url + "/health")
        assert status == 200
        assert w.relay.service.status()["circuits"] == 0


async def test_a_circuit_over_its_time_is_a_504() -> None:
    # /hold answers only once released, so it always overruns; 1 s (not less) leaves
    # the /health circuit after it room on a loaded machine (0.2 s failed once in CI)
    async with relay_world(RelayLimits(circuit_seconds=1.0)) as w, \
            aiohttp.ClientSession() as http:
        status, body = await relayed_get(http, w.client.url + "/hold")
        assert status == 504
        assert json.loads(body) == {"error": "relay circuit time limit exceeded",
                                    "error_value": {"reason": "circuit_time",
                                                    "limit": 1_000_000}}
        w.host.release.set()
        assert (await relayed_get(http, w.client.url + "/health"))[0] == 200


async def test_the_client_refreshes_its_reservation_before_it_expires() -> None:
    async with relay_world(RelayLimits(reservation_s=0.4)) as w:
        renewed = asyncio.Event()
        vouchers: list[bytes] = []

        def on_reservation(data: bytes) -> None:
            vouchers.append(data)
            if len(vouchers) == 3:
                renewed.set()

        w.client.on_reservation = on_reservation
        await asyncio.wait_for(renewed.wait(), WAIT_S)   # at 3/4 of each 0.4 s life
        assert not w.task.done() and w.relay.service.status()["reservations"] == 1
        assert len(set(vouchers)) == 3
        async with PeerClient(w.buyer) as peers:
            got = await peers.call(w.client.url, w.host.identity.public_key, "test.echo", {})
        assert got["echo"] == {}


async def test_a_client_closed_before_it_runs_does_not_reserve() -> None:
    host = await start_host(Identity.generate())
    relay = await start_relay()
    try:
        client = RelayClient(host.identity, relay.url, relay.identity.public_key, host.url)
        await client.close()
        await asyncio.wait_for(client.run(), WAIT_S)
        assert client.reservation is None and relay.service.status()["reservations"] == 0
    finally:
        await relay.site.stop()
        await host.site.stop()
