"""TCP streams through a real relay on loopback: a buyer reaches its leased port of a
relayed host; bytes both ways, half-close, a large transfer with bounded memory; the
refusals (another key, another host, a replay, no such port, no reservation, a host
taking no streams, the relay's byte limit) each with its clear error; a lost port
drops its streams."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
import time
import tracemalloc

import aiohttp
import pytest
from relay_helpers import PORT, Leased, leased

from p2pmarket.core.identity import Identity
from p2pmarket.nat.relaylimits import CIRCUIT_BYTES, NO_RESERVATION, RelayLimits
from p2pmarket.nat.streamreq import (
    ENDED,
    MALFORMED,
    REFUSED,
    StreamRefused,
    control_text,
    make_stream_request,
    open_stream_request,
    parse_control,
)
from p2pmarket.nat.streams import open_stream, pipe_stream
from tests.support.tcpguest import MIB, WAIT_S


async def test_bytes_go_both_ways_through_the_relay_and_eof_is_passed_on() -> None:
    async with leased() as lz, open_stream(lz.world.client.url, lz.request()) as ws:
        await ws.send_bytes(b"hello over the relay")
        msg = await ws.receive(timeout=WAIT_S)
        assert msg.type is aiohttp.WSMsgType.BINARY and msg.data == b"hello over the relay"
        await ws.send_str(control_text(ENDED))          # half-close: the guest sees EOF
        await asyncio.wait_for(lz.guest.eof.wait(), WAIT_S)
        msg = await ws.receive(timeout=WAIT_S)          # and closes: END comes back
        assert parse_control(msg.data) == ENDED
        msg = await ws.receive(timeout=WAIT_S)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert lz.gate.served == 1
        assert lz.world.relay.service.status()["bytes_relayed"] >= 40
    assert lz.world.relay.service.status()["circuits"] == 0


async def test_pipe_stream_connects_a_local_pipe_like_ssh_proxycommand() -> None:
    async with leased() as lz, open_stream(lz.world.client.url, lz.request()) as ws:
        ours, theirs = socket.socketpair()
        local = await asyncio.open_connection(sock=theirs)
        reader, writer = await asyncio.open_connection(sock=ours)
        piping = asyncio.ensure_future(pipe_stream(ws, local))
        writer.write(b"ls /\n")
        await writer.drain()
        assert await asyncio.wait_for(reader.readexactly(5), WAIT_S) == b"ls /\n"
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), WAIT_S) == b""
        await asyncio.wait_for(piping, WAIT_S)
        writer.close()


async def test_a_large_upload_through_the_relay_is_held_back_not_buffered() -> None:
    total, block = 64 * MIB, bytes(range(256)) * 1024      # 256 KiB blocks
    async with leased("sink") as lz, open_stream(lz.world.client.url, lz.request()) as ws:
        sent = 0

        async def send() -> None:
            nonlocal sent
            while sent < total:
                await ws.send_bytes(block)
                sent += len(block)
            await ws.send_str(control_text(ENDED))

        tracemalloc.start()
        try:
            sender = asyncio.ensure_future(send())
            done, _ = await asyncio.wait({sender}, timeout=3.0)
            assert not done and sent < total
            held, _ = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert held < 16 * MIB, held
        start = time.monotonic()
        lz.guest.go.set()
        await asyncio.wait_for(sender, 120)
        await asyncio.wait_for(lz.guest.eof.wait(), 120)
        seconds = time.monotonic() - start
        h = hashlib.sha256()
        for _ in range(total // len(block)):
            h.update(block)
        assert lz.guest.received == total and lz.guest.sha256 == h.hexdigest()
        print(f"relayed {total // MIB} MiB in {seconds:.2f} s: "
              f"{total / MIB / seconds:.0f} MiB/s; held at most {held / MIB:.1f} MiB")


async def refused(lz: Leased, request: bytes) -> StreamRefused:
    with pytest.raises(StreamRefused) as err:
        async with open_stream(lz.world.client.url, request):
            pass
    return err.value


async def test_only_the_account_holder_may_open_a_stream_to_its_port() -> None:
    async with leased() as lz:
        other = await refused(lz, lz.request(who=Identity.generate()))
        assert other.code == REFUSED
        assert "the host refused the stream: the port is not leased to this account" \
            in other.message
        assert "not leased" in (await refused(lz, lz.request(account_id="someone"))).message
        assert "no such port" in (await refused(lz, lz.request(port=PORT + 1))).message
        wrong_host = await refused(lz, lz.request(host_id=Identity.generate().node_id))
        assert "addressed to another host" in wrong_host.message
        once = lz.request()
        async with open_stream(lz.world.client.url, once):
            pass
        assert "replay" in (await refused(lz, once)).message
        assert "bad stream request" in (await refused(lz, b"\x00garbage")).message
        assert lz.gate.refused == 6 and lz.gate.served == 1
        assert lz.guest.conns == 1
        assert lz.forwards.connections() == 0


async def test_no_reservation_and_no_stream_service_are_refused() -> None:
    async with leased(streams=False) as lz:
        no_service = await refused(lz, lz.request())
        assert "this host takes no streams" in no_service.message
        url = lz.world.relay.url + "/relay/" + Identity.generate().node_id.hex()
        with pytest.raises(StreamRefused) as err:
            async with open_stream(url, lz.request()):
                pass
        assert err.value.code == NO_RESERVATION
        assert "no reservation" in err.value.message


async def test_a_lost_port_drops_its_relayed_streams() -> None:
    async with leased() as lz, open_stream(lz.world.client.url, lz.request()) as ws:
        await ws.send_bytes(b"x")
        assert (await ws.receive(timeout=WAIT_S)).data == b"x"
        assert lz.forwards.connections() == 1
        await lz.forwards.sync({})                     # outbid, or the lease cancelled
        msg = await ws.receive(timeout=WAIT_S)
        doc = parse_control(msg.data)
        assert "no longer leased" in doc["error"] and doc["code"] == "host_reset"
        assert lz.forwards.connections() == 0


async def test_the_relays_byte_limit_cuts_a_stream_with_its_reason() -> None:
    async with leased("sink", RelayLimits(circuit_bytes=MIB)) as lz, \
            open_stream(lz.world.client.url, lz.request()) as ws:
        lz.guest.go.set()
        ours, theirs = socket.socketpair()
        local = await asyncio.open_connection(sock=theirs)
        _, writer = await asyncio.open_connection(sock=ours)
        piping = asyncio.ensure_future(pipe_stream(ws, local))
        with contextlib.suppress(ConnectionError):
            for _ in range(8):
                writer.write(bytes(512 * 1024))
                await writer.drain()
        with pytest.raises(StreamRefused) as err:
            await asyncio.wait_for(piping, WAIT_S)
        assert err.value.code == CIRCUIT_BYTES and "byte limit" in err.value.message
        writer.close()
        assert lz.guest.received <= MIB


def test_the_stream_request_is_checked_whole() -> None:
    buyer, host = Identity.generate(), Identity.generate()
    data = make_stream_request(buyer, host.node_id, "abc123", 2222, 5)
    req = open_stream_request(data, host.node_id)
    assert (req.sender, req.account_id, req.port, req.ts) == (buyer.public_key, "abc123",
                                                               2222, 5)
    for bad in (b"", b"x" * 2000, "text", data[:-1]):
        with pytest.raises(StreamRefused) as err:
            open_stream_request(bad, host.node_id)
        assert err.value.code == MALFORMED
    for account, port in (("", 22), ("a" * 65, 22), ("ok", 0), ("ok", 65536), ("ok", True)):
        with pytest.raises(StreamRefused):
            make_stream_request(buyer, host.node_id, account, port, 5)  # type: ignore[arg-type]
    for text in ("{}", "[1]", "nope", '{"stream": "later"}', "x" * 3000):
        with pytest.raises(StreamRefused):
            parse_control(text)


def test_the_stream_frame_round_trips_and_is_checked() -> None:
    from p2pmarket.core.wire import pack
    from p2pmarket.nat.frames import (
        HEADER,
        FrameType,
        RelayError,
        Stream,
        decode_frame,
        encode_frame,
    )
    frame = Stream(7, b"request", ("198.18.0.9", 4000))
    assert decode_frame(encode_frame(frame)) == frame
    assert decode_frame(encode_frame(Stream(7, b"r"))) == Stream(7, b"r", None)
    for meta in ({"request": b"", "peer": None}, {"request": "text", "peer": None},
                 {"request": b"r", "peer": ["x", 99999]}, {"request": b"r"}):
        with pytest.raises(RelayError, match="STREAM"):
            decode_frame(HEADER.pack(FrameType.STREAM, 7) + pack(meta))
    with pytest.raises(RelayError, match="circuit id"):
        encode_frame(Stream(0, b"r"))
