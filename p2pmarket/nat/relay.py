"""The relay service (docs/design.md section 7), after libp2p circuit relay v2: public
nodes relay HTTP to hosts that cannot be called back.

Routes (add them to the relay node's peer app):

* ``GET /relay/reserve``, a websocket. The host's first message is a RESERVE frame
  (:mod:`p2pmarket.nat.frames`) holding its signed reserve request
  (:func:`~p2pmarket.nat.reservation.open_reserve_request`); the relay checks it (the
  signature, the addressing, its replay guard, :class:`~p2pmarket.nat.relaylimits.
  RelayBook`) and answers RESERVED with a voucher
  (:func:`~p2pmarket.nat.reservation.make_reservation`), or RESET on circuit 0 with
  the reason and closes. It keeps the socket: the host sends RESERVE again before the
  reservation expires to refresh it; a reservation not refreshed in time ends with
  RESET ``reservation expired``; when the socket closes the reservation is released.
  A newer reservation of the same host replaces the older socket.
* ``<any method> /relay/<node id hex><tail>``: a buyer's ordinary request to the
  relayed host's URL ``<relay>/relay/<node id hex>``. The relay opens a circuit on that
  host's socket, sends OPEN (method, ``tail``, query, end-to-end headers), the request
  body as DATA frames read in chunks as they arrive (each sent once the host has
  window for it, so nothing is held whole), then END; it answers with the host's
  RESPONSE and streams its DATA until END. Errors are JSON ``{error, error_value}``:
  404 no reservation for the node, 400 a bad node id, 429 too many circuits to it,
  413 the circuit's byte limit passed while the request was still being sent, 504 its
  time limit passed before the response began, 502 the host reset the circuit or its
  socket closed. A limit passed while the response streams cuts the connection.
  A websocket upgrade at the host's URL itself (``tail`` empty) is a TCP stream to one
  of the host's leased ports instead (:func:`~p2pmarket.nat.streams.relay_stream`).

Frames from a host for circuits that are not open are counted (``stray_frames``) and
otherwise ignored; malformed frames are counted (``bad_frames``) and, when the circuit
they name is open, reset that circuit. Nothing else changes. The app serving the
routes calls :meth:`RelayService.close` on shutdown (``app.on_shutdown``), or aiohttp
waits for the hosts' sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from aiohttp import WSMsgType, web

from p2pmarket.api.server import RELAYED_FROM, transport_peer
from p2pmarket.core.clock import US_PER_S, Clock, Monotonic, now_us
from p2pmarket.core.errors import error_dict
from p2pmarket.core.identity import Identity
from p2pmarket.core.wire import ReplayGuard, WireError
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
    Window,
    decode_frame,
    encode_frame,
    end_to_end,
    peek_circuit,
)
from p2pmarket.nat.relaylimits import (
    CIRCUIT_TIME,
    NO_RESERVATION,
    Refusal,
    RelayBook,
    RelayLimits,
)
from p2pmarket.nat.reservation import make_reservation, open_reserve_request
from p2pmarket.nat.streams import relay_stream

HELLO_TIMEOUT_S = 10.0     # the host's first frame must come within this
HEARTBEAT_S = 30.0         # websocket pings, both sides: a dead peer is found in ~this
RELAYED_FROM_HEADER = RELAYED_FROM   # set by the host's side, never forwarded
_DROPPED = frozenset({RELAYED_FROM_HEADER.lower()})
_LINK_FRAMES = (Response, Data, End, Reset, Window)


class HostLink:
    """A relayed host's socket and the circuits open on it."""

    def __init__(self, node_id: bytes, ws: web.WebSocketResponse, ip: str,
                 deadline: float) -> None:
        self.node_id = node_id
        self.ws = ws
        self.ip = ip
        self.deadline = deadline    # monotonic s: the reservation ends unless refreshed
        self.circuits: dict[int, CircuitEnd] = {}

    async def send(self, frame: Frame) -> None:
        await self.ws.send_bytes(encode_frame(frame))

    def drop(self, error: str) -> None:
        for end in self.circuits.values():
            end.fail(error)


class RelayService:
    """Relays HTTP requests to the hosts holding a reservation; see the module
    docstring. ``public_url`` (or a function giving it) is the relay's public base URL,
    written into its vouchers."""

    def __init__(self, identity: Identity, public_url: str | Callable[[], str], *,
                 limits: RelayLimits | None = None, clock: Clock = now_us,
                 monotonic: Monotonic = time.monotonic,
                 guard: ReplayGuard | None = None) -> None:
        self.identity = identity
        self._public_url = public_url
        self.limits = limits or RelayLimits()
        self.book = RelayBook(self.limits)
        self.clock = clock
        self.monotonic = monotonic
        self.guard = guard or ReplayGuard()
        self.links: dict[bytes, HostLink] = {}
        self.refused = 0
        self.bad_frames = 0
        self.stray_frames = 0
        self.closing = False

    @property
    def public_url(self) -> str:
        url = self._public_url
        return url() if callable(url) else url

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/relay/reserve", self.reserve),
                web.route("*", "/relay/{node_id}{tail:.*}", self.forward)]

    def status(self) -> dict[str, Any]:
        return {"reservations": len(self.book.slots), "circuits": len(self.book.circuits),
                "bytes_relayed": self.book.bytes_relayed, "refused": self.refused,
                "bad_frames": self.bad_frames, "stray_frames": self.stray_frames}

    async def close(self) -> None:
        """Tell every host the relay is closing and close their sockets."""
        self.closing = True
        for link in list(self.links.values()):
            link.drop("the relay is closing")
            await _send_quietly(link.ws, Reset(0, "the relay is closing"))
            await link.ws.close()

    def book_now(self) -> int:
        """The book's time: monotonic µs."""
        return int(self.monotonic() * US_PER_S)

    # -- reservations ----------------------------------------------------------------

    async def reserve(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=WS_MAX_MSG_SIZE, compress=False,
                                   heartbeat=HEARTBEAT_S)
        if not ws.can_prepare(request).ok:
            return web.json_response(error_dict("a relay reservation takes a websocket"),
                                     status=400)
        await ws.prepare(request)
        ip = (transport_peer(request) or ("unknown", 0))[0]
        try:
            msg = await ws.receive(timeout=HELLO_TIMEOUT_S)
            if self.closing:
                raise RelayError("the relay is closing")
            node_id, reply = self._grant(msg, ip, None)
        except (RelayError, TimeoutError) as exc:
            self.refused += 1
            text = exc.message if isinstance(exc, RelayError) else "no reserve request in time"
            await _send_quietly(ws, Reset(0, text))
            await ws.close()
            return ws
        link = HostLink(node_id, ws, ip, self.monotonic() + self.limits.reservation_s)
        old = self.links.get(node_id)
        self.links[node_id] = link
        if old is not None:
            old.drop("the host reserved again on another connection")
            await _send_quietly(old.ws, Reset(0, "replaced by a newer reservation"))
            await old.ws.close()
        try:
            await link.send(reply)
            await self._serve_link(link)
        except (ConnectionError, RuntimeError):
            pass
        finally:
            if self.links.get(node_id) is link:
                del self.links[node_id]
                self.book.release(node_id)
            link.drop("the relay lost the host's connection")
            await ws.close()
        return ws

    def _grant(self, msg: Any, ip: str, node: bytes | None) -> tuple[bytes, Reserved]:
        """Check a reserve request (a refresh when ``node`` is the link's host) and
        book it; the host's node id and the RESERVED reply. :class:`RelayError` if
        refused."""
        if msg.type is not WSMsgType.BINARY:
            raise RelayError("expected a RESERVE frame", str(msg.type))
        frame = decode_frame(msg.data)
        if not isinstance(frame, Reserve):
            raise RelayError("expected a RESERVE frame", type(frame).__name__)
        env = open_reserve_request(frame.envelope, self.identity.node_id)
        if node is not None and env.sender_id != node:
            raise RelayError("a refresh must come from the reserved host's key")
        try:
            self.guard.accept(env.sender, env.ts, self.clock())
        except WireError as exc:
            raise RelayError(f"bad reserve request: {exc.message}", exc.value) from None
        wall = self.clock()
        expires = wall + self.limits.reservation_us
        voucher = make_reservation(self.identity, url=self.public_url, node_id=env.sender_id,
                                   expires=expires, ts=wall)
        got = self.book.reserve(env.sender_id, ip, self.book_now())
        if isinstance(got, Refusal):
            raise RelayError(f"{got.message} ({got.reason})",
                             {"reason": got.reason, "limit": got.value})
        return env.sender_id, Reserved(voucher, expires)

    async def _serve_link(self, link: HostLink) -> None:
        ws = link.ws
        while True:
            remaining = link.deadline - self.monotonic()
            try:
                if remaining <= 0:
                    raise TimeoutError
                msg = await ws.receive(timeout=remaining)
            except TimeoutError:
                await link.send(Reset(0, "reservation expired"))
                return
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED,
                            WSMsgType.ERROR):
                return
            if msg.type is not WSMsgType.BINARY:
                self.bad_frames += 1
                continue
            try:
                frame = decode_frame(msg.data)
            except RelayError as exc:
                self.bad_frames += 1
                end = link.circuits.get(peek_circuit(msg.data) or 0)
                if end is not None:
                    await end.reset(f"the host sent a malformed frame: {exc.message}")
                continue
            if isinstance(frame, Reserve):
                try:
                    _, reply = self._grant(msg, link.ip, link.node_id)
                except RelayError as exc:
                    self.refused += 1
                    await link.send(Reset(0, exc.message))
                    return
                link.deadline = self.monotonic() + self.limits.reservation_s
                await link.send(reply)
            elif isinstance(frame, _LINK_FRAMES):
                end = link.circuits.get(frame.circuit)
                if end is None:
                    self.stray_frames += 1
                    continue
                error = end.deliver(frame)
                if error is not None:
                    await end.reset(error)
            else:
                self.bad_frames += 1

    # -- circuits --------------------------------------------------------------------

    async def forward(self, request: web.Request) -> web.StreamResponse:
        text = request.match_info["node_id"]
        try:
            node_id = bytes.fromhex(text)
        except ValueError:
            node_id = b""
        prefix = f"/relay/{text}"
        raw = request.rel_url.raw_path
        if len(node_id) != 20 or not raw.startswith(prefix):
            return web.json_response(error_dict("bad node id in the relay path", text[:80]),
                                     status=400)
        tail = raw[len(prefix):] or "/"
        link = self.links.get(node_id)
        if tail == "/" and request.headers.get("Upgrade", "").lower() == "websocket":
            return await relay_stream(request, node_id, None if link is None else link.send,
                                      {} if link is None else link.circuits, self.book,
                                      self.book_now)
        if link is None:
            return web.json_response(error_dict("no reservation for this node", text),
                                     status=404)
        got = self.book.open_circuit(node_id, self.book_now())
        if isinstance(got, Refusal):
            return web.json_response(error_dict(got.message, {"reason": got.reason,
                                                              "limit": got.value}),
                                     status=404 if got.reason == NO_RESERVATION else 429)
        end = CircuitEnd(got, link.send)
        link.circuits[got] = end
        exchange = Exchange(self, request, end)
        try:
            async with asyncio.timeout(self.limits.circuit_seconds):
                return await exchange.run(tail)
        except TimeoutError:
            await end.reset(Refusal(CIRCUIT_TIME).message)
            return exchange.failed(Refusal(CIRCUIT_TIME, self.limits.circuit_us))
        except ConnectionError:
            await end.reset("the caller's connection closed")
            return exchange.failed(None)
        finally:
            if exchange.pump is not None:
                exchange.pump.cancel()
            link.circuits.pop(got, None)
            self.book.close_circuit(got)


class Exchange:
    """One request relayed through one circuit."""

    def __init__(self, service: RelayService, request: web.Request, end: CircuitEnd) -> None:
        self.service = service
        self.request = request
        self.end = end
        self.cut: Refusal | None = None
        self.response: web.StreamResponse | None = None
        self.pump: asyncio.Task[None] | None = None

    def account(self, n: int) -> bool:
        """Count ``n`` bytes with the book; False (and the circuit cut) if refused."""
        refusal = self.service.book.account(self.end.circuit, n, self.service.book_now())
        if refusal is None:
            return True
        self.cut = refusal
        return False

    async def run(self, tail: str) -> web.StreamResponse:
        request, end = self.request, self.end
        headers = tuple((k, v) for k, v in end_to_end(request.headers.items())
                        if k not in _DROPPED)
        opened = Open(end.circuit, request.method, tail, request.rel_url.raw_query_string,
                      headers, request.body_exists, transport_peer(request))
        try:
            encode_frame(opened)
        except RelayError as exc:
            return web.json_response(error_dict(f"this request cannot be relayed: "
                                                f"{exc.message}", exc.value), status=400)
        await end.send(opened)
        if request.body_exists:
            self.pump = asyncio.create_task(self.send_body())
        frame = await end.receive()
        if not isinstance(frame, Response):
            return self.failed(None, frame)
        response = self.response = web.StreamResponse(status=frame.status,
                                                      headers=frame.headers)
        await response.prepare(request)
        while True:
            frame = await end.receive()
            if isinstance(frame, Data):
                if not self.account(len(frame.data)):
                    await end.reset(self.cut.message if self.cut else "cut")
                    return self.abort()
                await response.write(frame.data)
                await end.consumed(len(frame.data))
            elif isinstance(frame, End):
                await response.write_eof()
                return response
            else:
                return self.abort()

    async def send_body(self) -> None:
        content, end = self.request.content, self.end
        try:
            while chunk := await content.read(MAX_DATA):
                if not self.account(len(chunk)):
                    await end.reset(self.cut.message if self.cut else "cut")
                    return
                await end.send_data(chunk)
            await end.send(End(end.circuit))
        except RelayError:
            pass    # the circuit is gone; the response side says why
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            await end.reset(f"the caller's request body broke off: {type(exc).__name__}")

    def failed(self, cut: Refusal | None, frame: Frame | None = None) -> web.StreamResponse:
        """The error response when the circuit ends before the host's response began."""
        cut = self.cut or cut
        if self.response is not None:
            return self.abort()
        if cut is not None:
            status = 504 if cut.reason == CIRCUIT_TIME else 413
            return web.json_response(error_dict(cut.message, {"reason": cut.reason,
                                                              "limit": cut.value}),
                                     status=status)
        why = frame.error if isinstance(frame, Reset) else "the host sent no response"
        return web.json_response(error_dict(f"relayed host failed: {why}"), status=502)

    def abort(self) -> web.StreamResponse:
        """Cut a response that has begun: the caller sees a broken body."""
        transport = self.request.transport
        if transport is not None:
            transport.close()
        assert self.response is not None
        return self.response


async def _send_quietly(ws: web.WebSocketResponse, frame: Frame) -> None:
    with contextlib.suppress(ConnectionError, RuntimeError):
        await ws.send_bytes(encode_frame(frame))
