"""The relayed host's side of a relay (docs/design.md section 7): keep a reservation at a
public relay and serve the circuits it opens against the host's own peer app.

:class:`RelayClient` connects a websocket to ``<relay url>/relay/reserve`` (through an
HTTP proxy when given one: aiohttp's CONNECT for https relays, a
:func:`~p2pmarket.nat.tunnel.connect_tunnel` for plain http), sends its signed reserve
request, checks the voucher the relay answers with (signed by the relay key it was
given, for this node, not expired) and keeps it in :attr:`RelayClient.reservation`
for the host record's ``reach`` list; it refreshes the reservation at
:data:`REFRESH_AT` of its lifetime. Each OPEN the relay sends starts a request to the
host's local peer app at ``local_url + path`` (the relay's end-to-end headers, plus
:data:`~p2pmarket.nat.relay.RELAYED_FROM_HEADER` naming where the relay saw the caller)
with the body streamed from the circuit's frames (at most a window of them buffered:
:mod:`p2pmarket.nat.frames`), and its response goes back as RESPONSE, DATA and END.
Each STREAM starts ``on_stream`` (a :class:`~p2pmarket.nat.streams.StreamGate`'s
``serve``) on its circuit; a host without one resets it.
:meth:`RelayClient.run` raises :class:`RelayLost` when the relay refuses, closes or
cannot be reached; it returns only after :meth:`RelayClient.close`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from urllib.parse import urlsplit

import aiohttp
from yarl import URL

from p2pmarket.core.clock import Clock, now_us
from p2pmarket.core.identity import Identity, node_id_of
from p2pmarket.nat.circuit import WS_MAX_MSG_SIZE, CircuitEnd
from p2pmarket.nat.frames import (
    MAX_DATA,
    Data,
    End,
    Frame,
    Open,
    RelayError,
    Reserve,
    Reserved,
    Reset,
    Response,
    Stream,
    Window,
    decode_frame,
    encode_frame,
    end_to_end,
    peek_circuit,
)
from p2pmarket.nat.relay import HEARTBEAT_S, HELLO_TIMEOUT_S, RELAYED_FROM_HEADER
from p2pmarket.nat.reservation import (
    Reservation,
    make_reserve_request,
    open_reservation,
    relayed_url,
)
from p2pmarket.nat.tunnel import connect_tunnel

REFRESH_AT = 0.75          # refresh when this fraction of the reservation's life is gone
CONNECT_TIMEOUT_S = 10.0
CLOSE_TIMEOUT_S = 2.0      # how long closing waits for the relay's close frame
_SKIP_AUTO = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")
OnStream = Callable[[CircuitEnd, Stream], Awaitable[None]]


class RelayLost(RelayError):
    """The relay refused the reservation, ended it, or its connection closed."""


class RelayClient:
    """Holds a reservation at the relay ``relay_url`` (public key ``relay_key``) for
    ``identity`` and serves its circuits against ``local_url``; see the module
    docstring. ``on_reservation`` is called with each new voucher."""

    def __init__(self, identity: Identity, relay_url: str, relay_key: bytes, local_url: str,
                 *, proxy: str | None = None, clock: Clock = now_us,
                 on_reservation: Callable[[bytes], None] | None = None,
                 on_stream: OnStream | None = None) -> None:
        self.identity = identity
        self.relay_url = relay_url.rstrip("/")
        self.relay_key = relay_key
        self.relay_id = node_id_of(relay_key)
        self.local_url = local_url.rstrip("/")
        self.proxy = proxy
        self.clock = clock
        self.on_reservation = on_reservation
        self.on_stream = on_stream
        self.reserved = asyncio.Event()
        self.reservation: bytes | None = None
        self.voucher: Reservation | None = None
        self.bad_frames = 0
        self.stray_frames = 0
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._session: aiohttp.ClientSession | None = None
        self._circuits: dict[int, tuple[CircuitEnd, asyncio.Task[None]]] = {}
        self._renewed = asyncio.Event()
        self._closing = False

    @property
    def url(self) -> str:
        """The URL the host advertises: ``<relay url>/relay/<node id hex>``."""
        return relayed_url(self.relay_url, self.identity.node_id)

    async def close(self) -> None:
        """End the reservation: :meth:`run` returns."""
        self._closing = True
        if self._ws is not None:
            await self._ws.close()

    async def refresh(self) -> Reservation:
        """Ask the relay for a new voucher now and wait for it."""
        self._renewed.clear()
        await self._send(Reserve(make_reserve_request(self.identity, self.relay_id,
                                                      self.clock())))
        await self._renewed.wait()
        assert self.voucher is not None
        return self.voucher

    async def run(self) -> None:
        """Reserve, refresh and serve until the relay connection ends: :class:`RelayLost`
        then, unless :meth:`close` ended it (for good: a closed client does not run)."""
        try:
            why = await self._run()
        finally:
            self._session = self._ws = None
            self.reserved.clear()
        if not self._closing:
            raise RelayLost(why, self.relay_url)

    async def _run(self) -> str:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT_S)
        async with contextlib.AsyncExitStack() as stack:
            session = self._session = await stack.enter_async_context(
                aiohttp.ClientSession(timeout=timeout, auto_decompress=False))
            ws = self._ws = await self._connect(stack, session)
            stack.push_async_callback(ws.close)
            if self._closing:
                return "closed"
            stack.callback(self._drop_circuits)
            await self._send(Reserve(make_reserve_request(self.identity, self.relay_id,
                                                          self.clock())))
            try:
                first = await ws.receive(timeout=HELLO_TIMEOUT_S)
            except TimeoutError:
                raise RelayLost("the relay did not answer the reservation",
                                self.relay_url) from None
            frame = self._frame(first)
            if not isinstance(frame, Reserved):
                raise RelayLost(_lost_why(frame, first), self.relay_url)
            self._take(frame)
            refresher = asyncio.ensure_future(self._refresh_loop())
            stack.callback(refresher.cancel)
            return await self._serve(ws)

    async def _connect(self, stack: contextlib.AsyncExitStack,
                       session: aiohttp.ClientSession) -> aiohttp.ClientWebSocketResponse:
        target = urlsplit(self.relay_url)
        url, headers, proxy = self.relay_url + "/relay/reserve", {}, self.proxy
        if self.proxy and target.scheme == "http" and target.hostname:
            port = target.port or 80
            local = await stack.enter_async_context(
                connect_tunnel(self.proxy, target.hostname, port))
            url, headers, proxy = local + "/relay/reserve", {"Host": target.netloc}, None
        try:
            return await session.ws_connect(url, headers=headers, proxy=proxy,
                                            max_msg_size=WS_MAX_MSG_SIZE, compress=0,
                                            heartbeat=HEARTBEAT_S,
                                            timeout=aiohttp.ClientWSTimeout(
                                                ws_close=CLOSE_TIMEOUT_S))
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise RelayLost(f"cannot reach the relay at {self.relay_url}: "
                            f"{type(exc).__name__}", self.relay_url) from None

    def _frame(self, msg: aiohttp.WSMessage) -> Frame | None:
        if msg.type is not aiohttp.WSMsgType.BINARY:
            return None
        try:
            return decode_frame(msg.data)
        except RelayError:
            self.bad_frames += 1
            return None

    def _take(self, frame: Reserved) -> None:
        try:
            voucher = open_reservation(frame.reservation, node_id=self.identity.node_id,
                                       now=self.clock())
        except RelayError as exc:
            raise RelayLost(f"the relay sent a bad voucher: {exc.message}",
                            exc.value) from None
        if voucher.relay != self.relay_key:
            raise RelayLost("the voucher is signed by another relay", voucher.relay.hex())
        self.voucher, self.reservation = voucher, frame.reservation
        self.reserved.set()
        self._renewed.set()
        if self.on_reservation is not None:
            self.on_reservation(frame.reservation)

    async def _refresh_loop(self) -> None:
        while True:
            voucher = self.voucher
            assert voucher is not None
            due = voucher.ts + int((voucher.expires - voucher.ts) * REFRESH_AT)
            await asyncio.sleep(max(0.0, (due - self.clock()) / 1e6))
            try:
                await self.refresh()
            except (ConnectionError, RelayError):
                return      # the socket is closing: run() says why

    async def _send(self, frame: Frame) -> None:
        if self._ws is None:
            raise RelayError("not connected to the relay")
        await self._ws.send_bytes(encode_frame(frame))

    async def _serve(self, ws: aiohttp.ClientWebSocketResponse) -> str:
        """Serve frames until the socket ends; why it ended."""
        async for msg in ws:
            if msg.type is not aiohttp.WSMsgType.BINARY:
                if msg.type is aiohttp.WSMsgType.ERROR:
                    return f"the relay connection failed: {msg.data!r}"
                self.bad_frames += 1
                continue
            try:
                frame = decode_frame(msg.data)
            except RelayError as exc:
                self.bad_frames += 1
                held = self._circuits.get(peek_circuit(msg.data) or 0)
                if held is not None:
                    await held[0].reset(f"the relay sent a malformed frame: {exc.message}")
                    held[1].cancel()
                continue
            if isinstance(frame, Reserved):
                self._take(frame)
            elif isinstance(frame, Reset) and frame.circuit == 0:
                return f"the relay ended the reservation: {frame.error}"
            elif isinstance(frame, Open | Stream):
                if frame.circuit in self._circuits:
                    self.bad_frames += 1
                    continue
                end = CircuitEnd(frame.circuit, self._send)
                task = asyncio.ensure_future(self._serve_circuit(end, frame)
                                             if isinstance(frame, Open)
                                             else self._serve_stream(end, frame))
                self._circuits[frame.circuit] = (end, task)
            elif isinstance(frame, Data | End | Reset | Window):
                held = self._circuits.get(frame.circuit)
                if held is None:
                    self.stray_frames += 1
                    continue
                error = held[0].deliver(frame)
                if error is not None:
                    await held[0].reset(error)
                if held[0].error is not None:
                    held[1].cancel()
            else:
                self.bad_frames += 1
        return f"the relay closed the connection (code {ws.close_code})"

    def _drop_circuits(self) -> None:
        for end, task in self._circuits.values():
            end.fail("the relay connection closed")
            task.cancel()
        self._circuits.clear()

    async def _serve_circuit(self, end: CircuitEnd, opened: Open) -> None:
        url = URL(self.local_url + opened.path + (f"?{opened.query}" if opened.query else ""),
                  encoded=True)
        headers = list(opened.headers)
        if opened.peer is not None:
            headers.append((RELAYED_FROM_HEADER, f"{opened.peer[0]}:{opened.peer[1]}"))
        session = self._session
        assert session is not None
        try:
            async with session.request(opened.method, url, headers=headers,
                                       data=_body(end) if opened.body else None,
                                       allow_redirects=False,
                                       skip_auto_headers=_SKIP_AUTO) as resp:
                await end.send(Response(end.circuit, resp.status,
                                        end_to_end(resp.headers.items())))
                while chunk := await resp.content.read(MAX_DATA):
                    await end.send_data(chunk)
                await end.send(End(end.circuit))
        except RelayError as exc:
            if end.error is None:   # else reset by the relay, or the link is gone
                await end.reset(f"the host's response cannot be relayed: {exc.message}")
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            if end.error is None:
                await end.reset(f"the host's peer app did not answer: {type(exc).__name__}")
        finally:
            held = self._circuits.get(end.circuit)
            if held is not None and held[0] is end:
                del self._circuits[end.circuit]


    async def _serve_stream(self, end: CircuitEnd, opened: Stream) -> None:
        try:
            if self.on_stream is None:
                await end.reset("this host takes no streams")
            else:
                await self.on_stream(end, opened)
        finally:
            held = self._circuits.get(end.circuit)
            if held is not None and held[0] is end:
                del self._circuits[end.circuit]


async def _body(end: CircuitEnd) -> AsyncIterator[bytes]:
    """The request body from a circuit's DATA frames, each granted back once taken."""
    while True:
        frame = await end.receive()
        if isinstance(frame, Data):
            yield frame.data
            await end.consumed(len(frame.data))
        elif isinstance(frame, End):
            return
        else:
            error = frame.error if isinstance(frame, Reset) else "unexpected frame"
            raise RelayError(f"the relay reset the circuit: {error}", end.circuit)


def _lost_why(frame: Frame | None, msg: aiohttp.WSMessage) -> str:
    if isinstance(frame, Reset):
        return f"the relay refused the reservation: {frame.error}"
    if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
        return "the relay closed the connection before reserving"
    return "the relay's answer to the reservation is not a voucher"
