"""A relayed host, its relay and their link on 127.0.0.1, for the relay tests.

The host runs a real peer app (an :class:`RpcDispatcher` with test RPCs) plus routes
that stream: ``PUT /upload`` hashes its body as it arrives, ``GET /stream?n=`` sends
``n`` bytes made by :func:`pattern`, ``GET /hold`` answers once the test releases it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from p2pmarket.api.rpc import CallContext, RpcDispatcher
from p2pmarket.api.server import Site, peer_app
from p2pmarket.core.clock import now_us
from p2pmarket.core.domains import ENVELOPE
from p2pmarket.core.identity import Identity
from p2pmarket.core.wire import seal
from p2pmarket.host.forwardtable import Forward
from p2pmarket.host.portfwd import PortForwards
from p2pmarket.nat.circuit import WS_MAX_MSG_SIZE
from p2pmarket.nat.frames import Frame, Reserve, decode_frame, encode_frame
from p2pmarket.nat.relay import RelayService
from p2pmarket.nat.relayclient import OnStream, RelayClient
from p2pmarket.nat.relaylimits import RelayLimits
from p2pmarket.nat.reservation import RESERVE_KIND
from p2pmarket.nat.streamreq import make_stream_request
from p2pmarket.nat.streams import StreamGate
from tests.support.tcpguest import Guest

BLOCK = 256 * 1024
WAIT_S = 10.0


def pattern(i: int) -> bytes:
    """The ``i``-th block of test bodies (cheap, not constant)."""
    return i.to_bytes(4, "big") * (BLOCK // 4)


def blocks(nbytes: int) -> Iterator[bytes]:
    """``nbytes`` of test body, a block at a time."""
    i = 0
    while nbytes > 0:
        chunk = pattern(i)[:nbytes]
        nbytes -= len(chunk)
        i += 1
        yield chunk


def digest_of(nbytes: int) -> str:
    h = hashlib.sha256()
    for chunk in blocks(nbytes):
        h.update(chunk)
    return h.hexdigest()


async def stream_of(nbytes: int) -> AsyncIterator[bytes]:
    for chunk in blocks(nbytes):
        yield chunk


@dataclass
class HostApp:
    identity: Identity
    site: Site
    url: str
    uploads: list[dict[str, Any]] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    held: asyncio.Event = field(default_factory=asyncio.Event)
    upload_started: asyncio.Event = field(default_factory=asyncio.Event)


async def start_host(identity: Identity) -> HostApp:
    dispatcher = RpcDispatcher(identity)

    async def echo(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        return {"echo": args, "from": ctx.sender}

    async def fail(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        from p2pmarket.core.errors import P2PMarketError
        raise P2PMarketError("refused on purpose", args.get("why"))

    dispatcher.register("test.echo", echo)
    dispatcher.register("test.fail", fail)
    holder: list[HostApp] = []

    async def upload(request: web.Request) -> web.Response:
        host = holder[0]
        host.upload_started.set()
        h, n, biggest = hashlib.sha256(), 0, 0
        try:
            async for chunk in request.content.iter_chunked(BLOCK):
                h.update(chunk)
                n += len(chunk)
                biggest = max(biggest, len(chunk))
        except (ConnectionError, aiohttp.ClientPayloadError) as exc:
            host.uploads.append({"broken": type(exc).__name__, "n": n})
            return web.json_response({"broken": type(exc).__name__}, status=400)
        record = {"n": n, "sha256": h.hexdigest(), "content_length": request.content_length,
                  "biggest": biggest, "auth": request.headers.get("X-P2PM-Auth"),
                  "relayed_from": request.headers.get("X-P2PM-Relayed-From")}
        host.uploads.append(record)
        return web.json_response(record)

    async def stream(request: web.Request) -> web.StreamResponse:
        n = int(request.query["n"])
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        resp.content_length = n
        await resp.prepare(request)
        async for chunk in stream_of(n):
            await resp.write(chunk)
        await resp.write_eof()
        return resp

    async def hold(request: web.Request) -> web.Response:
        holder[0].held.set()
        await holder[0].release.wait()
        return web.json_response({"released": True})

    site = Site(peer_app(dispatcher, [web.put("/upload", upload), web.get("/stream", stream),
                                      web.get("/hold", hold)]))
    port = await site.start("127.0.0.1", 0)
    host = HostApp(identity, site, f"http://127.0.0.1:{port}")
    holder.append(host)
    return host


@dataclass
class Relay:
    identity: Identity
    service: RelayService
    site: Site
    url: str


async def start_relay(limits: RelayLimits | None = None, **kw: Any) -> Relay:
    identity = Identity.generate()
    box: list[str] = []
    service = RelayService(identity, lambda: box[0], limits=limits, **kw)
    app = web.Application()
    app.add_routes(service.routes())
    site = Site(app)
    port = await site.start("127.0.0.1", 0)
    box.append(f"http://127.0.0.1:{port}")
    return Relay(identity, service, site, box[0])


@dataclass
class World:
    host: HostApp
    relay: Relay
    client: RelayClient
    task: asyncio.Task[None]
    buyer: Identity


@contextlib.asynccontextmanager
async def relay_world(limits: RelayLimits | None = None, proxy: str | None = None,
                      relay_url: str | None = None, on_stream: OnStream | None = None,
                      host_identity: Identity | None = None) -> AsyncIterator[World]:
    """A host reserved at a relay (through ``proxy`` if given; serving streams with
    ``on_stream`` if given)."""
    host = await start_host(host_identity or Identity.generate())
    relay = await start_relay(limits)
    client = RelayClient(host.identity, relay_url or relay.url, relay.identity.public_key,
                         host.url, proxy=proxy, on_stream=on_stream)
    task = asyncio.ensure_future(client.run())
    try:
        done, _ = await asyncio.wait({task, asyncio.ensure_future(client.reserved.wait())},
                                     timeout=WAIT_S, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            task.result()
        assert client.reserved.is_set()
        yield World(host, relay, client, task, Identity.generate())
    finally:
        await client.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, WAIT_S)
        await relay.service.close()
        await relay.site.stop()
        await host.site.stop()


def reserve_frame(identity: Identity, relay: Identity, ts: int | None = None,
                  kind: str = RESERVE_KIND, to: bytes | None = None) -> bytes:
    env = seal(identity, ENVELOPE, kind, {}, ts=now_us() if ts is None else ts,
               to=relay.node_id if to is None else to)
    return encode_frame(Reserve(env.encode()))


class RawHost:
    """A host speaking frames by hand on a websocket to the relay."""

    def __init__(self, session: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse,
                 ) -> None:
        self.session = session
        self.ws = ws

    @classmethod
    async def connect(cls, relay: Relay) -> RawHost:
        session = aiohttp.ClientSession()
        ws = await session.ws_connect(relay.url + "/relay/reserve",
                                      max_msg_size=WS_MAX_MSG_SIZE)
        return cls(session, ws)

    async def send(self, frame: Frame | bytes) -> None:
        await self.ws.send_bytes(frame if isinstance(frame, bytes) else encode_frame(frame))

    async def receive(self) -> Frame | None:
        """The next frame, or None once the socket has closed."""
        msg = await self.ws.receive(timeout=WAIT_S)
        if msg.type is not aiohttp.WSMsgType.BINARY:
            return None
        return decode_frame(msg.data)

    async def close(self) -> None:
        await self.ws.close()
        await self.session.close()


PORT = 30022


@dataclass
class Leased:
    world: World
    guest: Guest
    forwards: PortForwards
    gate: StreamGate
    buyer: Identity

    def request(self, who: Identity | None = None, port: int = PORT,
                account_id: str = "acc", host_id: bytes | None = None) -> bytes:
        return make_stream_request(who or self.buyer,
                                   host_id or self.world.host.identity.node_id,
                                   account_id, port, now_us())


@contextlib.asynccontextmanager
async def leased(mode: str = "echo", limits: RelayLimits | None = None,
                 streams: bool = True, guest_port: int | None = None
                 ) -> AsyncIterator[Leased]:
    """A relayed host forwarding PORT to a stand-in guest (or to ``guest_port`` on
    127.0.0.1) for the buyer's account."""
    guest = await Guest(mode).start()
    host_id = Identity.generate()
    buyer = Identity.generate()
    forwards = PortForwards(None)
    await forwards.sync({PORT: Forward(PORT, "acc", buyer.public_key, "127.0.0.1",
                                       guest_port or guest.port)})
    gate = StreamGate(host_id, forwards.admit)
    try:
        async with relay_world(limits, on_stream=gate.serve if streams else None,
                               host_identity=host_id) as world:
            yield Leased(world, guest, forwards, gate, buyer)
    finally:
        await forwards.close()
        await guest.stop()
