"""TCP streams through a relay (docs/design.md section 7, "Streams"): a buyer reaches
the leased port of a host behind NAT over the host's relay websocket.

Three ends, one circuit (frames: :mod:`p2pmarket.nat.frames`, STREAM; the buyer's
websocket and its request: :mod:`p2pmarket.nat.streamreq`)::

    buyer --websocket GET <relay>/relay/<node id>--> relay ==circuit==> host --TCP--> guest:22

- the relay (:func:`relay_stream`, called by :class:`~p2pmarket.nat.relay.RelayService`
  for a websocket upgrade at a host's URL) reads the buyer's signed request, opens a
  circuit to the host (the relay's limits: circuits per host, and per circuit a time
  and a byte count, both directions counted), sends STREAM and, once the host answers
  RESPONSE 200, tells the buyer ``{"stream": "open"}`` and pipes: each binary message a
  DATA frame (sent when the host's window has room), each DATA frame a binary message
  (granted back once written), END as ``{"stream": "end"}`` and back;
- the host (:class:`StreamGate`, the relay client's ``on_stream``) checks the request
  (signature, addressed to it, replay guard) and asks its ``admit`` function (the
  node's :meth:`p2pmarket.host.portfwd.PortForwards.admit`) where the holder's port
  goes; it connects there and pipes, or resets the circuit with the reason;
- the buyer (:func:`open_stream`, :func:`pipe_stream`) sends the request, waits for
  ``open`` (or raises :class:`~p2pmarket.nat.streamreq.StreamRefused` with the error),
  and pipes a local reader and writer (e.g. ssh's ProxyCommand stdin and stdout).

Every direction moves at most one DATA frame (or websocket message, or read of
``MAX_DATA``) at a time and waits for the next hop to take it: bounded buffers end to
end. A side that breaks resets the circuit; the others close.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import WSMsgType, web

from p2pmarket.api.server import transport_peer
from p2pmarket.core.clock import Clock, now_us
from p2pmarket.core.errors import P2PMarketError
from p2pmarket.core.identity import Identity
from p2pmarket.core.wire import ReplayGuard, WireError
from p2pmarket.nat.circuit import WS_MAX_MSG_SIZE, CircuitEnd, Send
from p2pmarket.nat.frames import MAX_DATA, Data, End, RelayError, Reset, Response, Stream
from p2pmarket.nat.relaylimits import CIRCUIT_TIME, NO_RESERVATION, Refusal, RelayBook
from p2pmarket.nat.streamreq import (
    ENDED,
    HOST_RESET,
    MALFORMED,
    MAX_STREAM_REQUEST_BYTES,
    OPENED,
    REFUSED,
    STREAM_HELLO_S,
    StreamRefused,
    control_text,
    error_message,
    open_stream_request,
    parse_control,
    raise_if_error,
)
from p2pmarket.nat.tunnel import connect_tunnel

HEARTBEAT_S = 30.0
CONNECT_TIMEOUT_S = 10.0
Admit = Callable[[bytes, str, int], Awaitable[tuple[str, int]]]
Pipe = tuple[asyncio.StreamReader, asyncio.StreamWriter]


# -- the relay ---------------------------------------------------------------------------

async def relay_stream(request: web.Request, node_id: bytes, send: Send | None,
                       circuits: dict[int, CircuitEnd], book: RelayBook,
                       book_now: Callable[[], int]) -> web.WebSocketResponse:
    """Serve one buyer's stream websocket to the host ``node_id`` (``send`` puts frames on
    its link, None when it holds no reservation; ``circuits`` are the link's)."""
    ws = web.WebSocketResponse(max_msg_size=WS_MAX_MSG_SIZE, compress=False,
                               heartbeat=HEARTBEAT_S)
    await ws.prepare(request)
    try:
        hello = await ws.receive(timeout=STREAM_HELLO_S)
    except TimeoutError:
        return await _refuse(ws, error_message("no stream request in time", None, MALFORMED))
    if hello.type is not WSMsgType.BINARY or len(hello.data) > MAX_STREAM_REQUEST_BYTES:
        return await _refuse(ws, error_message("the first message must be a stream request",
                                               None, MALFORMED))
    got = book.open_circuit(node_id, book_now()) if send is not None \
        else Refusal(NO_RESERVATION)
    if isinstance(got, Refusal):
        return await _refuse(ws, error_message(got.message, got.value, got.reason))
    assert send is not None
    end = CircuitEnd(got, send)
    circuits[got] = end
    relayed = _RelayedStream(ws, end, book, book_now)
    try:
        async with asyncio.timeout(book.limits.circuit_seconds):
            await relayed.run(Stream(got, hello.data, transport_peer(request)))
    except TimeoutError:
        await relayed.stop(error_message(Refusal(CIRCUIT_TIME).message, book.limits.circuit_us,
                                         CIRCUIT_TIME))
    except (ConnectionError, RelayError):
        await relayed.stop(error_message("the relay lost the host's connection", None,
                                         HOST_RESET))
    finally:
        circuits.pop(got, None)
        book.close_circuit(got)
        await ws.close()
    return ws


class _RelayedStream:
    def __init__(self, ws: web.WebSocketResponse, end: CircuitEnd, book: RelayBook,
                 book_now: Callable[[], int]) -> None:
        self.ws, self.end, self.book, self.book_now = ws, end, book, book_now

    def account(self, n: int) -> Refusal | None:
        return self.book.account(self.end.circuit, n, self.book_now())

    async def stop(self, error: dict[str, Any]) -> None:
        await self.end.reset(error["error"])
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.ws.send_str(control_text(error))

    async def run(self, opening: Stream) -> None:
        end = self.end
        await end.send(opening)
        answer = await end.receive()
        if isinstance(answer, Reset):
            await self.ws.send_str(control_text(error_message(
                f"the host refused the stream: {answer.error}", None, REFUSED)))
            return
        if not isinstance(answer, Response) or answer.status != 200:
            await self.stop(error_message("the host answered the stream wrongly", None,
                                          MALFORMED))
            return
        await self.ws.send_str(control_text(OPENED))
        up = asyncio.ensure_future(self.up())
        down = asyncio.ensure_future(self.down())
        try:
            await _both(up, down)
        finally:
            up.cancel()
            down.cancel()
            await asyncio.gather(up, down, return_exceptions=True)

    async def up(self) -> bool:
        """Buyer to host; False if the stream is to end now."""
        async for msg in self.ws:
            if msg.type is WSMsgType.BINARY and msg.data:
                cut = self.account(len(msg.data))
                if cut is not None:
                    await self.stop(error_message(cut.message, cut.value, cut.reason))
                    return False
                await self.end.send_data(msg.data)
            elif msg.type is WSMsgType.TEXT and _is_end(msg.data):
                await self.end.send(End(self.end.circuit))
                return True
            else:
                await self.stop(error_message("unexpected message on a stream", None,
                                              MALFORMED))
                return False
        await self.end.reset("the buyer closed the stream")
        return False

    async def down(self) -> bool:
        """Host to buyer; False if the stream is to end now."""
        while True:
            frame = await self.end.receive()
            if isinstance(frame, Data):
                cut = self.account(len(frame.data))
                if cut is not None:
                    await self.stop(error_message(cut.message, cut.value, cut.reason))
                    return False
                await self.ws.send_bytes(frame.data)
                await self.end.consumed(len(frame.data))
            elif isinstance(frame, End):
                await self.ws.send_str(control_text(ENDED))
                return True
            else:
                why = frame.error if isinstance(frame, Reset) else "unexpected frame"
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await self.ws.send_str(control_text(error_message(
                        f"the host dropped the stream: {why}", None, HOST_RESET)))
                return False


async def _refuse(ws: web.WebSocketResponse, error: dict[str, Any]) -> web.WebSocketResponse:
    with contextlib.suppress(ConnectionError, RuntimeError):
        await ws.send_str(control_text(error))
    await ws.close()
    return ws


async def _both(a: asyncio.Future[bool], b: asyncio.Future[bool]) -> None:
    """Wait until both directions ended well, or either says stop (or raises)."""
    pending: set[asyncio.Future[bool]] = {a, b}
    while pending:
        done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task.exception() is not None or not task.result():
                return


def _is_end(text: str) -> bool:
    try:
        return parse_control(text) == ENDED
    except StreamRefused:
        return False


# -- the host ----------------------------------------------------------------------------

class StreamGate:
    """The relayed host's side: :meth:`serve` is the relay client's ``on_stream``."""

    def __init__(self, identity: Identity, admit: Admit, *, clock: Clock = now_us,
                 guard: ReplayGuard | None = None,
                 connect_timeout_s: float = CONNECT_TIMEOUT_S) -> None:
        self.identity = identity
        self.admit = admit
        self.clock = clock
        self.guard = guard or ReplayGuard()
        self.connect_timeout_s = connect_timeout_s
        self.refused = 0
        self.served = 0

    async def serve(self, end: CircuitEnd, opened: Stream) -> None:
        try:
            req = open_stream_request(opened.request, self.identity.node_id)
            try:
                self.guard.accept(req.sender, req.ts, self.clock())
            except WireError as exc:
                raise StreamRefused(f"bad stream request: {exc.message}", exc.value) from None
            host, port = await self.admit(req.sender, req.account_id, req.port)
            async with asyncio.timeout(self.connect_timeout_s):
                target = await asyncio.open_connection(host, port, limit=MAX_DATA)
        except P2PMarketError as exc:
            self.refused += 1
            await end.reset(exc.message)
            return
        except (OSError, TimeoutError) as exc:
            self.refused += 1
            await end.reset(f"the port's guest did not answer: {type(exc).__name__}")
            return
        self.served += 1
        try:
            await end.send(Response(end.circuit, 200))
            await _splice_circuit(end, target)
        except asyncio.CancelledError:
            await end.reset("the port is no longer leased to this account")
            raise
        finally:
            target[1].close()


async def _splice_circuit(end: CircuitEnd, target: Pipe) -> None:
    reader, writer = target

    async def up() -> bool:        # circuit to TCP
        while True:
            frame = await end.receive()
            if isinstance(frame, Data):
                writer.write(frame.data)
                await writer.drain()
                await end.consumed(len(frame.data))
            elif isinstance(frame, End):
                if writer.can_write_eof():
                    writer.write_eof()
                return True
            else:
                return False

    async def down() -> bool:      # TCP to circuit
        while data := await reader.read(MAX_DATA):
            await end.send_data(data)
        await end.send(End(end.circuit))
        return True

    ups, downs = asyncio.ensure_future(up()), asyncio.ensure_future(down())
    try:
        await _both(ups, downs)
        failed = [t for t in (ups, downs) if t.done() and (t.exception() is not None
                                                           or not t.result())]
        if failed and end.error is None:
            await end.reset("the port's connection broke")
    finally:
        ups.cancel()
        downs.cancel()
        await asyncio.gather(ups, downs, return_exceptions=True)


# -- the buyer ---------------------------------------------------------------------------

@contextlib.asynccontextmanager
async def open_stream(host_url: str, request: bytes, *, proxy: str | None = None,
                      timeout_s: float = CONNECT_TIMEOUT_S
                      ) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
    """``async with open_stream(url, request) as ws``: a stream opened at the relayed
    host's URL (through ``proxy`` if given: a CONNECT tunnel for a plain-http relay).
    Raises :class:`StreamRefused` with the relay's or host's reason."""
    async with contextlib.AsyncExitStack() as stack:
        session = await stack.enter_async_context(aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=timeout_s)))
        url, headers, via = host_url, {}, proxy
        target = urlsplit(host_url)
        if proxy and target.scheme == "http" and target.hostname:
            local = await stack.enter_async_context(
                connect_tunnel(proxy, target.hostname, target.port or 80))
            url = local + target.path
            headers, via = {"Host": target.netloc}, None
        try:
            ws = await stack.enter_async_context(session.ws_connect(
                url, headers=headers, proxy=via, max_msg_size=WS_MAX_MSG_SIZE, compress=0,
                heartbeat=HEARTBEAT_S))
            await ws.send_bytes(request)
            msg = await ws.receive(timeout=timeout_s + STREAM_HELLO_S)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise StreamRefused(f"cannot open a stream at {host_url}: {type(exc).__name__}",
                                host_url) from None
        if msg.type is not WSMsgType.TEXT:
            raise StreamRefused("the relay closed the stream before answering",
                                str(msg.type), code=MALFORMED)
        doc = parse_control(msg.data)
        raise_if_error(doc)
        if doc != OPENED:
            raise StreamRefused("the relay's answer is not an open stream", doc,
                                code=MALFORMED)
        yield ws


async def pipe_stream(ws: aiohttp.ClientWebSocketResponse, local: Pipe) -> None:
    """Pipe an open stream and a local reader/writer until both directions ended, the
    stream closed, or either side broke; :class:`StreamRefused` if the relay ended it
    with an error. Closes the local writer."""
    reader, writer = local
    error: list[StreamRefused] = []

    async def up() -> bool:        # local to stream
        while data := await reader.read(MAX_DATA):
            await ws.send_bytes(data)
        await ws.send_str(control_text(ENDED))
        return True

    async def down() -> bool:      # stream to local
        async for msg in ws:
            if msg.type is WSMsgType.BINARY:
                writer.write(msg.data)
                await writer.drain()
            elif msg.type is WSMsgType.TEXT:
                doc = parse_control(msg.data)
                if doc == ENDED:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return True
                error.append(StreamRefused(doc["error"], doc["error_value"], code=doc["code"]))
                return False
        return False

    ups, downs = asyncio.ensure_future(up()), asyncio.ensure_future(down())
    try:
        await _both(ups, downs)
    finally:
        ups.cancel()
        downs.cancel()
        await asyncio.gather(ups, downs, return_exceptions=True)
        writer.close()
        with contextlib.suppress(OSError, RuntimeError, TimeoutError):
            await asyncio.wait_for(writer.wait_closed(), 1.0)
    if error:
        raise error[0]


__all__ = ["Admit", "StreamGate", "open_stream", "pipe_stream", "relay_stream"]
