"""The relay's circuit framing (docs/design.md section 7), after libp2p circuit relay v2.

A relayed host keeps one websocket to its relay; every binary websocket message on it
is one frame, both ways::

    type u8 | circuit u32 (big-endian) | payload (at most MAX_PAYLOAD bytes)

Circuit 0 is the reservation itself; circuits 1 .. 2**32-1 are opened by the relay,
each an HTTP exchange (OPEN: one request and its response) or a TCP stream (STREAM: a
buyer's byte stream to a leased port, :mod:`p2pmarket.nat.streams`). The types, and
their payloads
(``msgpack`` = canonical msgpack, :mod:`p2pmarket.core.wire`):

==========  =======  =====  ==============================================================
type        value    circ.  payload
==========  =======  =====  ==============================================================
OPEN        1        >= 1   msgpack ``{method, path, query, headers, body, peer}``: the
                            request; ``path`` the raw (percent-encoded) path after
                            ``/relay/<node id>``, starting with ``/``; ``query`` the raw
                            query string without ``?``; ``headers`` ``[[name, value],
                            ...]``, end-to-end headers only (:func:`end_to_end`);
                            ``body`` whether the request has a body (DATA frames,
                            then END; neither when false); ``peer``
                            ``[ip, port]`` the relay saw the caller at, or nil
DATA        2        >= 1   1 .. MAX_DATA bytes of the body (request or response)
END         3        >= 1   empty: this direction's body is complete
RESPONSE    4        >= 1   msgpack ``{status, headers}`` (host to relay), status 200..599
RESET       5        any    msgpack ``{error}``: the circuit is dropped; on circuit 0 the
                            reservation is refused or over (relay to host)
WINDOW      6        >= 1   u32 (big-endian) >= 1: the receiver has consumed that many
                            more DATA bytes of this circuit
RESERVE     7        0      a signed envelope (domain ENVELOPE, kind ``nat.reserve``, to
                            the relay's node id, body ``{}``): reserve or refresh
RESERVED    8        0      msgpack ``{reservation, expires}``: the relay's voucher
                            (:mod:`p2pmarket.nat.reservation`) and its expiry (µs)
STREAM      9        >= 1   msgpack ``{request, peer}``: open a TCP stream; ``request``
                            the buyer's signed stream request (bytes,
                            :mod:`p2pmarket.nat.streamreq`), ``peer`` as for OPEN
==========  =======  =====  ==============================================================

A stream circuit: the host answers STREAM with RESPONSE ``{status: 200, headers: []}``
(accepted: it connected the port's target) or RESET ``{error}`` (refused); then DATA
flows both ways, END closes one direction (a TCP half-close), and the circuit ends
when both directions have ended or either side sends RESET.

Flow control is per circuit and per direction, in DATA bytes: a sender may have at most
:data:`WINDOW_BYTES` bytes sent and not yet granted back by WINDOW frames; a receiver
that gets more resets the circuit. So a reader never waits for one slow circuit (no
head-of-line blocking) and buffers at most a window per circuit. :class:`Inflow` is the
receiving side's count; a sender keeps its credit as a plain integer.

Bounds: a DATA payload is at most :data:`MAX_DATA` (256 KiB), any other payload at most
:data:`MAX_META_BYTES` (32 KiB), a window :data:`WINDOW_BYTES` (1 MiB, four full DATA
frames); at most :data:`MAX_HEADERS` (64) headers. Every decoding check raises
:class:`RelayError`: a short header, an unknown type, a payload over its bound,
malformed msgpack, a field of the wrong shape. Pure.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from p2pmarket.core.errors import P2PMarketError
from p2pmarket.core.wire import WireError, pack, unpack


class RelayError(P2PMarketError):
    """A malformed relay frame or voucher, a refused reservation or circuit."""


class FrameType(IntEnum):
    OPEN = 1
    DATA = 2
    END = 3
    RESPONSE = 4
    RESET = 5
    WINDOW = 6
    RESERVE = 7
    RESERVED = 8
    STREAM = 9


HEADER = struct.Struct(">BI")
HEADER_BYTES = HEADER.size
MAX_DATA = 256 * 1024            # body bytes in one DATA frame
MAX_META_BYTES = 32 * 1024       # an OPEN, RESPONSE, RESET, RESERVE or RESERVED payload
MAX_PAYLOAD = MAX_DATA
MAX_FRAME_BYTES = HEADER_BYTES + MAX_PAYLOAD   # the websocket's max_msg_size
WINDOW_BYTES = 4 * MAX_DATA      # DATA bytes in flight per circuit and direction
MAX_CIRCUIT = 2**32 - 1
MAX_HEADERS = 64
MAX_HEADER_VALUE = 8192
MAX_PATH = 4096
MAX_ERROR_TEXT = 1024

# RFC 9110 section 7.6.1 hop-by-hop fields, plus what each hop sets for itself
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-connection", "proxy-authenticate",
    "proxy-authorization", "te", "trailer", "transfer-encoding", "upgrade", "host",
    "expect", "date", "server"})
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,128}")
_METHOD = re.compile(r"[A-Z]{1,16}")
_PATH = re.compile(rf"/[!-~]{{0,{MAX_PATH - 1}}}")   # printable ASCII, no space
_QUERY = re.compile(rf"[!-~]{{0,{MAX_PATH}}}")
_VALUE_BAD = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")

Headers = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Open:
    circuit: int
    method: str
    path: str
    query: str = ""
    headers: Headers = ()
    body: bool = False
    peer: tuple[str, int] | None = None


@dataclass(frozen=True)
class Data:
    circuit: int
    data: bytes


@dataclass(frozen=True)
class End:
    circuit: int


@dataclass(frozen=True)
class Response:
    circuit: int
    status: int
    headers: Headers = ()


@dataclass(frozen=True)
class Reset:
    circuit: int
    error: str


@dataclass(frozen=True)
class Window:
    circuit: int
    increment: int


@dataclass(frozen=True)
class Reserve:
    envelope: bytes
    circuit: int = 0


@dataclass(frozen=True)
class Reserved:
    reservation: bytes
    expires: int
    circuit: int = 0


@dataclass(frozen=True)
class Stream:
    circuit: int
    request: bytes
    peer: tuple[str, int] | None = None


Frame = Open | Data | End | Response | Reset | Window | Reserve | Reserved | Stream


def end_to_end(headers: Iterable[tuple[str, str]]) -> Headers:
    """``headers`` without the hop-by-hop ones (:data:`HOP_BY_HOP` and those the
    ``Connection`` header names), names lower-cased."""
    pairs = [(str(k).lower(), str(v)) for k, v in headers]
    named = {t.strip().lower() for k, v in pairs if k == "connection" for t in v.split(",")}
    return tuple((k, v) for k, v in pairs if k not in HOP_BY_HOP and k not in named)


def encode_frame(frame: Frame) -> bytes:
    """The websocket message for ``frame``; :class:`RelayError` if it breaks a bound."""
    payload: bytes
    if isinstance(frame, Data):
        payload = frame.data
        if not 0 < len(payload) <= MAX_DATA:
            raise RelayError("DATA frame must carry 1 .. MAX_DATA bytes", len(payload))
        _check_circuit(frame.circuit, FrameType.DATA)
        return HEADER.pack(FrameType.DATA, frame.circuit) + payload
    if isinstance(frame, Open):
        kind, meta = FrameType.OPEN, {
            "method": frame.method, "path": frame.path, "query": frame.query,
            "headers": [list(h) for h in frame.headers], "body": frame.body,
            "peer": list(frame.peer) if frame.peer else None}
        _check_open(meta)
    elif isinstance(frame, End):
        kind, meta = FrameType.END, None
    elif isinstance(frame, Response):
        kind, meta = FrameType.RESPONSE, {"status": frame.status,
                                          "headers": [list(h) for h in frame.headers]}
        _check_response(meta)
    elif isinstance(frame, Reset):
        kind, meta = FrameType.RESET, {"error": frame.error[:MAX_ERROR_TEXT]}
    elif isinstance(frame, Window):
        if not 0 < frame.increment <= MAX_CIRCUIT:
            raise RelayError("WINDOW increment must be 1 .. 2**32-1", frame.increment)
        _check_circuit(frame.circuit, FrameType.WINDOW)
        return HEADER.pack(FrameType.WINDOW, frame.circuit) + struct.pack(">I",
                                                                           frame.increment)
    elif isinstance(frame, Reserve):
        kind, meta = FrameType.RESERVE, None
        payload = frame.envelope
    elif isinstance(frame, Stream):
        kind, meta = FrameType.STREAM, {"request": frame.request,
                                        "peer": list(frame.peer) if frame.peer else None}
        _check_stream(meta)
    else:
        kind, meta = FrameType.RESERVED, {"reservation": frame.reservation,
                                          "expires": frame.expires}
        _check_reserved(meta)
    _check_circuit(frame.circuit, kind)
    if kind is not FrameType.RESERVE:
        payload = b"" if meta is None else pack(meta)
    if len(payload) > MAX_META_BYTES:
        raise RelayError(f"{kind.name} payload too large",
                         {"size": len(payload), "max": MAX_META_BYTES})
    return HEADER.pack(kind, frame.circuit) + payload


def peek_circuit(data: bytes) -> int | None:
    """The circuit a message names, if its header can be read at all (to reset the
    circuit of a frame that fails :func:`decode_frame`)."""
    if len(data) < HEADER_BYTES:
        return None
    return int(HEADER.unpack_from(data)[1])


def decode_frame(data: bytes) -> Frame:
    """The frame in one websocket message, checked; :class:`RelayError` if it is not
    one."""
    if not isinstance(data, bytes | bytearray):
        raise RelayError("a frame must be bytes", type(data).__name__)
    if len(data) < HEADER_BYTES:
        raise RelayError("frame shorter than its header", len(data))
    if len(data) > MAX_FRAME_BYTES:
        raise RelayError("frame too large", {"size": len(data), "max": MAX_FRAME_BYTES})
    code, circuit = HEADER.unpack_from(data)
    try:
        kind = FrameType(code)
    except ValueError:
        raise RelayError("unknown frame type", code) from None
    _check_circuit(circuit, kind)
    payload = bytes(data[HEADER_BYTES:])
    if kind is FrameType.DATA:
        if not payload:
            raise RelayError("empty DATA frame", circuit)
        return Data(circuit, payload)
    if len(payload) > MAX_META_BYTES:
        raise RelayError(f"{kind.name} payload too large",
                         {"size": len(payload), "max": MAX_META_BYTES})
    if kind is FrameType.END:
        if payload:
            raise RelayError("END frame must be empty", len(payload))
        return End(circuit)
    if kind is FrameType.WINDOW:
        if len(payload) != 4:
            raise RelayError("WINDOW payload must be 4 bytes", len(payload))
        (increment,) = struct.unpack(">I", payload)
        if increment == 0:
            raise RelayError("WINDOW increment must be positive", 0)
        return Window(circuit, increment)
    if kind is FrameType.RESERVE:
        if not payload:
            raise RelayError("empty RESERVE frame")
        return Reserve(payload)
    meta = _unpack_map(payload, kind)
    if kind is FrameType.OPEN:
        _check_open(meta)
        peer = meta["peer"]
        return Open(circuit, meta["method"], meta["path"], meta["query"],
                    _headers(meta["headers"]), meta["body"],
                    None if peer is None else (peer[0], peer[1]))
    if kind is FrameType.RESPONSE:
        _check_response(meta)
        return Response(circuit, meta["status"], _headers(meta["headers"]))
    if kind is FrameType.STREAM:
        _check_stream(meta)
        peer = meta["peer"]
        return Stream(circuit, meta["request"], None if peer is None else (peer[0], peer[1]))
    if kind is FrameType.RESET:
        if set(meta) != {"error"} or not isinstance(meta["error"], str) \
                or len(meta["error"]) > MAX_ERROR_TEXT:
            raise RelayError("RESET payload must be {error: short text}")
        return Reset(circuit, meta["error"])
    _check_reserved(meta)
    return Reserved(meta["reservation"], meta["expires"])


class Inflow:
    """The receiving side of one circuit's flow control: DATA bytes buffered (received,
    not yet consumed) and consumed but not yet granted back."""

    def __init__(self, window: int = WINDOW_BYTES) -> None:
        self.window = window
        self.buffered = 0
        self.unacked = 0

    def receive(self, n: int) -> bool:
        """Count ``n`` bytes arriving; False if the sender overran its window."""
        if self.buffered + self.unacked + n > self.window:
            return False
        self.buffered += n
        return True

    def consume(self, n: int) -> int:
        """Count ``n`` buffered bytes passed on; the WINDOW increment to send now (0:
        none yet; grants are batched to a quarter of the window)."""
        self.buffered -= n
        self.unacked += n
        if self.unacked < self.window // 4:
            return 0
        grant, self.unacked = self.unacked, 0
        return grant


def _check_circuit(circuit: Any, kind: FrameType) -> None:
    if not isinstance(circuit, int) or not 0 <= circuit <= MAX_CIRCUIT:
        raise RelayError("circuit id must be a u32", circuit)
    control = kind in (FrameType.RESERVE, FrameType.RESERVED)
    if control and circuit != 0:
        raise RelayError(f"{kind.name} belongs on circuit 0", circuit)
    if not control and kind is not FrameType.RESET and circuit == 0:
        raise RelayError(f"{kind.name} needs a circuit id >= 1", circuit)


def _unpack_map(payload: bytes, kind: FrameType) -> dict[str, Any]:
    try:
        meta = unpack(payload, MAX_META_BYTES)
    except WireError as exc:
        raise RelayError(f"malformed {kind.name} payload: {exc.message}", exc.value) from None
    if not isinstance(meta, dict):
        raise RelayError(f"{kind.name} payload must be a map", type(meta).__name__)
    return meta


def _check_open(meta: dict[str, Any]) -> None:
    if set(meta) != {"method", "path", "query", "headers", "body", "peer"}:
        raise RelayError("OPEN fields wrong", sorted(map(str, meta)))
    if not isinstance(meta["method"], str) or not _METHOD.fullmatch(meta["method"]):
        raise RelayError("OPEN method must be an upper-case token", str(meta["method"])[:20])
    if not isinstance(meta["path"], str) or not _PATH.fullmatch(meta["path"]):
        raise RelayError("OPEN path must be a raw path starting with /", str(meta["path"])[:80])
    if not isinstance(meta["query"], str) or not _QUERY.fullmatch(meta["query"]) \
            or "#" in meta["query"]:
        raise RelayError("OPEN query must be a raw query string", str(meta["query"])[:80])
    if not isinstance(meta["body"], bool):
        raise RelayError("OPEN body must be a boolean")
    _check_peer(meta["peer"], "OPEN")
    _headers(meta["headers"])


def _check_peer(peer: Any, kind: str) -> None:
    if peer is not None and not (
            isinstance(peer, list) and len(peer) == 2 and isinstance(peer[0], str)
            and 0 < len(peer[0]) <= 64 and isinstance(peer[1], int)
            and not isinstance(peer[1], bool) and 0 <= peer[1] <= 65535):
        raise RelayError(f"{kind} peer must be [ip, port] or nil")


def _check_stream(meta: dict[str, Any]) -> None:
    if set(meta) != {"request", "peer"} or not isinstance(meta["request"], bytes) \
            or not meta["request"]:
        raise RelayError("STREAM payload must be {request: bytes, peer}")
    _check_peer(meta["peer"], "STREAM")


def _check_response(meta: dict[str, Any]) -> None:
    if set(meta) != {"status", "headers"}:
        raise RelayError("RESPONSE fields wrong", sorted(map(str, meta)))
    status = meta["status"]
    if not isinstance(status, int) or isinstance(status, bool) or not 200 <= status <= 599:
        raise RelayError("RESPONSE status must be 200 .. 599", status)
    _headers(meta["headers"])


def _check_reserved(meta: dict[str, Any]) -> None:
    if set(meta) != {"reservation", "expires"} or not isinstance(meta["reservation"], bytes) \
            or not isinstance(meta["expires"], int) or isinstance(meta["expires"], bool) \
            or not 0 <= meta["expires"] < 2**63:
        raise RelayError("RESERVED payload must be {reservation: bytes, expires: int}")


def _headers(value: Any) -> Headers:
    if not isinstance(value, list | tuple) or len(value) > MAX_HEADERS:
        raise RelayError(f"headers must be a list of at most {MAX_HEADERS} pairs")
    out = []
    for pair in value:
        if not isinstance(pair, list | tuple) or len(pair) != 2:
            raise RelayError("a header must be a [name, value] pair")
        name, text = pair
        if not isinstance(name, str) or not _TOKEN.fullmatch(name):
            raise RelayError("bad header name", str(name)[:40])
        if not isinstance(text, str) or len(text) > MAX_HEADER_VALUE \
                or _VALUE_BAD.search(text):
            raise RelayError("bad header value", name)
        if name.lower() in HOP_BY_HOP:
            raise RelayError("hop-by-hop header in a frame", name)
        out.append((name, text))
    return tuple(out)
