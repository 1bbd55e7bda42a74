"""The relay's circuit framing: every frame round-trips; every malformed message is a
clear RelayError; hop-by-hop headers never cross; the receiving window's count."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pmarket.core.wire import pack
from p2pmarket.nat.frames import (
    MAX_CIRCUIT,
    MAX_DATA,
    MAX_FRAME_BYTES,
    MAX_META_BYTES,
    Data,
    End,
    Frame,
    FrameType,
    Inflow,
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

circuits = st.integers(1, MAX_CIRCUIT)
names = st.from_regex(r"[a-z][a-z0-9-]{0,20}", fullmatch=True).filter(
    lambda n: n not in {"connection", "keep-alive", "te", "trailer", "upgrade", "host",
                        "expect", "date", "server"})
values = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7e), max_size=40)
headers = st.lists(st.tuples(names, values), max_size=6).map(tuple)
paths = st.from_regex(r"/[!-~]{0,60}", fullmatch=True)
queries = st.from_regex(r"[!-\"$-~]{0,60}", fullmatch=True)
peers = st.none() | st.tuples(st.from_regex(r"[0-9.:a-f]{1,39}", fullmatch=True),
                              st.integers(0, 65535))
frames: st.SearchStrategy[Frame] = st.one_of(
    st.builds(Open, circuits, st.sampled_from(["GET", "POST", "PUT", "HEAD"]), paths,
              queries, headers, st.booleans(), peers),
    st.builds(Data, circuits, st.binary(min_size=1, max_size=2048)),
    st.builds(End, circuits),
    st.builds(Response, circuits, st.integers(200, 599), headers),
    st.builds(Reset, st.integers(0, MAX_CIRCUIT), st.text(max_size=100)),
    st.builds(Window, circuits, st.integers(1, MAX_CIRCUIT)),
    st.builds(Reserve, st.binary(min_size=1, max_size=600)),
    st.builds(Reserved, st.binary(max_size=512), st.integers(0, 2**63 - 1)),
)


@given(frames)
def test_every_frame_round_trips(frame: Frame) -> None:
    data = encode_frame(frame)
    assert decode_frame(data) == frame
    assert data[0] == {Open: 1, Data: 2, End: 3, Response: 4, Reset: 5, Window: 6,
                       Reserve: 7, Reserved: 8}[type(frame)]
    assert peek_circuit(data) == frame.circuit
    assert len(data) <= MAX_FRAME_BYTES


def test_the_wire_format_is_the_documented_one() -> None:
    assert encode_frame(Data(7, b"abc")) == b"\x02\x00\x00\x00\x07abc"
    assert encode_frame(End(2**32 - 1)) == b"\x03\xff\xff\xff\xff"
    assert encode_frame(Window(1, 4096)) == b"\x06\x00\x00\x00\x01" + struct.pack(">I", 4096)
    assert encode_frame(Reset(0, "no")) == b"\x05\x00\x00\x00\x00" + pack({"error": "no"})
    assert encode_frame(Response(3, 200, (("content-type", "x"),))) == \
        b"\x04\x00\x00\x00\x03" + pack({"status": 200, "headers": [["content-type", "x"]]})
    opened = {"method": "GET", "path": "/rpc", "query": "", "headers": [], "body": False,
              "peer": ["1.2.3.4", 5]}
    assert decode_frame(b"\x01\x00\x00\x00\x09" + pack(opened)) == Open(
        9, "GET", "/rpc", "", (), False, ("1.2.3.4", 5))
    assert len(encode_frame(Data(1, b"x" * MAX_DATA))) == MAX_FRAME_BYTES


def meta(kind: FrameType, circuit: int, value: object) -> bytes:
    return bytes([kind]) + circuit.to_bytes(4, "big") + pack(value)


GOOD_OPEN = {"method": "GET", "path": "/x", "query": "", "headers": [], "body": False,
             "peer": None}


@pytest.mark.parametrize(("data", "error"), [
    (b"", "frame shorter than its header"),
    (b"\x02\x00\x00\x01", "frame shorter than its header"),
    (b"\x00\x00\x00\x00\x01", "unknown frame type"),
    (b"\x0a\x00\x00\x00\x01", "unknown frame type"),
    (b"\x02\x00\x00\x00\x01" + b"x" * (MAX_DATA + 1), "frame too large"),
    (b"\x02\x00\x00\x00\x01", "empty DATA frame"),
    (b"\x02\x00\x00\x00\x00x", "DATA needs a circuit id >= 1"),
    (b"\x03\x00\x00\x00\x01x", "END frame must be empty"),
    (b"\x06\x00\x00\x00\x01\x00\x00\x00\x00", "WINDOW increment must be positive"),
    (b"\x06\x00\x00\x00\x01\x00\x01", "WINDOW payload must be 4 bytes"),
    (b"\x07\x00\x00\x00\x01abc", "RESERVE belongs on circuit 0"),
    (b"\x07\x00\x00\x00\x00", "empty RESERVE frame"),
    (b"\x04\x00\x00\x00\x01\xc1", "malformed RESPONSE payload: malformed msgpack"),
    (b"\x04\x00\x00\x00\x01\x92\x01", "malformed RESPONSE payload: malformed msgpack"),
    (b"\x04\x00\x00\x00\x01" + b"\xc4" + b"x" * (MAX_META_BYTES + 5),
     "RESPONSE payload too large"),
    (meta(FrameType.RESPONSE, 1, [200]), "RESPONSE payload must be a map"),
    (meta(FrameType.RESPONSE, 1, {"status": 200}), "RESPONSE fields wrong"),
    (meta(FrameType.RESPONSE, 1, {"status": 101, "headers": []}), "RESPONSE status"),
    (meta(FrameType.RESPONSE, 1, {"status": True, "headers": []}), "RESPONSE status"),
    (meta(FrameType.RESPONSE, 1, {"status": 200, "headers": [["a b", "x"]]}),
     "bad header name"),
    (meta(FrameType.RESPONSE, 1, {"status": 200, "headers": [["a", "x\r\nb: y"]]}),
     "bad header value"),
    (meta(FrameType.RESPONSE, 1, {"status": 200, "headers": [["Connection", "close"]]}),
     "hop-by-hop header in a frame"),
    (meta(FrameType.RESPONSE, 1, {"status": 200, "headers": [["a", "b"]] * 65}),
     "headers must be a list of at most 64"),
    (meta(FrameType.OPEN, 1, {**GOOD_OPEN, "path": "rpc"}), "OPEN path"),
    (meta(FrameType.OPEN, 1, {**GOOD_OPEN, "path": "/a b"}), "OPEN path"),
    (meta(FrameType.OPEN, 1, {**GOOD_OPEN, "query": "a#b"}), "OPEN query"),
    (meta(FrameType.OPEN, 1, {**GOOD_OPEN, "method": "get"}), "OPEN method"),
    (meta(FrameType.OPEN, 1, {**GOOD_OPEN, "body": 1}), "OPEN body must be a boolean"),
    (meta(FrameType.OPEN, 1, {**GOOD_OPEN, "peer": ["1.2.3.4", 70000]}), "OPEN peer"),
    (meta(FrameType.OPEN, 1, {**GOOD_OPEN, "extra": 1}), "OPEN fields wrong"),
    (meta(FrameType.RESET, 1, {"error": 5}), "RESET payload must be {error: short text}"),
    (meta(FrameType.RESERVED, 0, {"reservation": "x", "expires": 1}), "RESERVED payload"),
    (meta(FrameType.RESERVED, 1, {"reservation": b"x", "expires": 1}),
     "RESERVED belongs on circuit 0"),
])
def test_malformed_messages_are_refused_clearly(data: bytes, error: str) -> None:
    with pytest.raises(RelayError, match=error.replace("(", r"\(")):
        decode_frame(data)


@pytest.mark.parametrize(("frame", "error"), [
    (Data(1, b""), "DATA frame must carry"),
    (Data(1, b"x" * (MAX_DATA + 1)), "DATA frame must carry"),
    (Data(0, b"x"), "DATA needs a circuit id"),
    (End(2**32), "circuit id must be a u32"),
    (Window(1, 0), "WINDOW increment"),
    (Reserve(b"x" * (MAX_META_BYTES + 1)), "RESERVE payload too large"),
    (Response(1, 600), "RESPONSE status"),
    (Open(1, "GET", "/x", headers=(("host", "evil"),)), "hop-by-hop header"),
])
def test_frames_out_of_bounds_are_not_encoded(frame: Frame, error: str) -> None:
    with pytest.raises(RelayError, match=error):
        encode_frame(frame)


def test_a_long_reset_error_is_cut_to_its_bound() -> None:
    got = decode_frame(encode_frame(Reset(4, "e" * 5000)))
    assert got == Reset(4, "e" * 1024)


def test_only_end_to_end_headers_cross() -> None:
    given_headers = [("Host", "relay:1"), ("Connection", "keep-alive, X-Hop"),
                     ("X-Hop", "1"), ("Transfer-Encoding", "chunked"), ("TE", "trailers"),
                     ("Content-Length", "12"), ("Content-Type", "application/msgpack"),
                     ("X-P2PM-Auth", "abc"), ("Upgrade", "websocket"), ("Date", "today"),
                     ("Proxy-Authorization", "secret")]
    assert end_to_end(given_headers) == (("content-length", "12"),
                                         ("content-type", "application/msgpack"),
                                         ("x-p2pm-auth", "abc"))
    assert len(end_to_end([("x-a", "1")] * 100)) == 100     # the frame bounds the count
    with pytest.raises(RelayError, match="at most 64"):
        encode_frame(Open(1, "GET", "/", headers=end_to_end([("x-a", "1")] * 65)))


def test_the_inflow_counts_the_window_and_batches_its_grants() -> None:
    flow = Inflow(window=1000)
    assert flow.receive(600) and flow.receive(400)
    assert not flow.receive(1)                  # the sender overran
    assert flow.consume(200) == 0               # under a quarter: not yet
    assert not flow.receive(1)                  # consumed, but not yet granted back
    assert flow.consume(100) == 300             # a quarter reached: grant all of it
    assert flow.receive(300) and not flow.receive(1)
    assert (flow.buffered, flow.unacked) == (1000, 0)
