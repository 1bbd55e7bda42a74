"""The port forwarder on loopback: bytes both ways, a large transfer under backpressure,
EOF and close passed on, connection limits, and a stop that frees the port."""

from __future__ import annotations

import asyncio
import hashlib
import time
import tracemalloc

import pytest

from p2pmarket.host.forwardtable import Forward
from p2pmarket.host.portfwd import PortForwardError, PortForwards, PortLimits
from tests.support.tcpguest import MIB, WAIT_S, Guest, free_port

HOLDER = b"H" * 32


def fwd(port: int, guest: Guest, account_id: str = "acc", holder: bytes = HOLDER) -> Forward:
    return Forward(port, account_id, holder, "127.0.0.1", guest.port)


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), WAIT_S)


async def test_bytes_go_both_ways_and_eof_is_passed_on() -> None:
    guest = await Guest().start()
    forwards = PortForwards("127.0.0.1")
    port = free_port()
    try:
        changes = await forwards.sync({port: fwd(port, guest)})
        assert [f.port for f in changes.start] == [port] and not changes.stop
        reader, writer = await connect(port)
        writer.write(b"hello guest")
        await writer.drain()
        assert await asyncio.wait_for(reader.readexactly(11), WAIT_S) == b"hello guest"
        writer.write_eof()                      # half-close: the guest sees EOF ...
        await asyncio.wait_for(guest.eof.wait(), WAIT_S)
        assert await asyncio.wait_for(reader.read(), WAIT_S) == b""   # ... and closes
        writer.close()
        status = forwards.status()
        assert status[0]["port"] == port and status[0]["listening"]
        assert status[0]["accepted"] == 1
    finally:
        await forwards.close()
        await guest.stop()


async def test_a_guest_that_closes_closes_the_buyers_connection() -> None:
    guest = await Guest("hangup").start()
    forwards = PortForwards("127.0.0.1")
    port = free_port()
    try:
        await forwards.sync({port: fwd(port, guest)})
        reader, writer = await connect(port)
        await asyncio.wait_for(guest.connected.wait(), WAIT_S)
        guest.go.set()
        assert await asyncio.wait_for(reader.read(), WAIT_S) == b""
        writer.close()
        await asyncio.wait_for(_until(lambda: forwards.connections() == 0), WAIT_S)
    finally:
        await forwards.close()
        await guest.stop()


async def test_a_large_transfer_is_held_back_not_buffered() -> None:
    """The guest reads nothing at first: the buyer's writes stall (backpressure
    reaches it) with little memory held in between; then all of it arrives intact."""
    guest = await Guest("sink").start()
    forwards = PortForwards("127.0.0.1", PortLimits(chunk=64 * 1024))
    port = free_port()
    total, block = 128 * MIB, bytes(range(256)) * 4096          # 1 MiB blocks
    try:
        await forwards.sync({port: fwd(port, guest)})
        _reader, writer = await connect(port)
        sent = 0

        async def send() -> None:
            nonlocal sent
            while sent < total:
                writer.write(block)
                await writer.drain()
                sent += len(block)
            writer.write_eof()

        tracemalloc.start()
        try:
            sender = asyncio.ensure_future(send())
            done, _ = await asyncio.wait({sender}, timeout=3.0)
            assert not done, "the whole transfer went through a guest that reads nothing"
            assert sent < total
            held, _ = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert held < 8 * MIB, held
        start = time.monotonic()
        guest.go.set()
        await asyncio.wait_for(sender, 60)
        await asyncio.wait_for(guest.eof.wait(), 60)
        seconds = time.monotonic() - start
        h = hashlib.sha256()
        for _ in range(total // len(block)):
            h.update(block)
        assert guest.received == total and guest.sha256 == h.hexdigest()
        print(f"forwarded {total // MIB} MiB in {seconds:.2f} s: "
              f"{total / MIB / seconds:.0f} MiB/s; held at most {held / MIB:.1f} MiB")
        writer.close()
    finally:
        await forwards.close()
        await guest.stop()


async def test_connections_over_the_limit_are_closed_at_once() -> None:
    guest = await Guest().start()
    forwards = PortForwards("127.0.0.1", PortLimits(per_port=2))
    port = free_port()
    try:
        await forwards.sync({port: fwd(port, guest)})
        conns = [await connect(port) for _ in range(2)]
        for r, w in conns:
            w.write(b"x")
            await w.drain()
            assert await asyncio.wait_for(r.readexactly(1), WAIT_S) == b"x"
        r3, w3 = await connect(port)
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
            got = await asyncio.wait_for(r3.read(1), WAIT_S)
            if not got:
                raise ConnectionResetError
        assert forwards.status()[0]["refused"] == 1
        for _, w in [*conns, (r3, w3)]:
            w.close()
    finally:
        await forwards.close()
        await guest.stop()


async def test_stop_closes_connections_and_frees_the_port_for_the_next_winner() -> None:
    old_guest, new_guest = await Guest().start(), await Guest().start()
    forwards = PortForwards("127.0.0.1")
    port = free_port()
    try:
        await forwards.sync({port: fwd(port, old_guest, "old")})
        reader, writer = await connect(port)
        writer.write(b"ping")
        assert await asyncio.wait_for(reader.readexactly(4), WAIT_S) == b"ping"
        changes = await forwards.sync({})                # the lease is cancelled
        assert changes.stop == (port,) and forwards.table == {}
        assert await asyncio.wait_for(reader.read(), WAIT_S) == b""
        assert forwards.connections() == 0
        with pytest.raises(OSError):
            await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), WAIT_S)
        # the port can be bound at once: by anything, and by the next winner's forward
        probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", port)
        probe.close()
        await probe.wait_closed()
        await forwards.sync({port: fwd(port, new_guest, "new")})
        reader, writer = await connect(port)
        writer.write(b"pong")
        assert await asyncio.wait_for(reader.readexactly(4), WAIT_S) == b"pong"
        assert new_guest.conns == 1 and old_guest.conns == 1
        writer.close()
    finally:
        await forwards.close()
        await old_guest.stop()
        await new_guest.stop()


async def test_a_port_taken_by_another_program_is_retried_at_the_next_sync() -> None:
    guest = await Guest().start()
    port = free_port()
    squatter = await asyncio.start_server(lambda r, w: None, "127.0.0.1", port)
    forwards = PortForwards("127.0.0.1")
    try:
        await forwards.sync({port: fwd(port, guest)})
        status = forwards.status()[0]
        assert not status["listening"] and "cannot listen" in str(status["error"])
        squatter.close()
        await squatter.wait_closed()
        await forwards.sync({port: fwd(port, guest)})
        assert forwards.status()[0]["listening"]
        reader, writer = await connect(port)
        writer.write(b"ok")
        assert await asyncio.wait_for(reader.readexactly(2), WAIT_S) == b"ok"
        writer.close()
    finally:
        await forwards.close()
        await guest.stop()


async def test_admit_lets_only_the_holder_in_and_counts_it() -> None:
    guest = await Guest().start()
    forwards = PortForwards(None, PortLimits(per_port=1))
    port = free_port()
    try:
        await forwards.sync({port: fwd(port, guest)})
        assert forwards.status()[0]["listening"] is False     # a relayed host: no listener
        with pytest.raises(PortForwardError, match="no such port"):
            await forwards.admit(HOLDER, "acc", port + 1)
        with pytest.raises(PortForwardError, match="not leased to this account"):
            await forwards.admit(b"X" * 32, "acc", port)
        with pytest.raises(PortForwardError, match="not leased to this account"):
            await forwards.admit(HOLDER, "other", port)
        release = asyncio.Event()

        async def stream() -> tuple[str, int]:
            target = await forwards.admit(HOLDER, "acc", port)
            await release.wait()
            return target

        first = asyncio.ensure_future(stream())
        await asyncio.wait_for(_until(lambda: forwards.connections() == 1), WAIT_S)
        with pytest.raises(PortForwardError, match="too many connections"):
            await forwards.admit(HOLDER, "acc", port)
        await forwards.sync({})                           # the port is lost: cancelled
        with pytest.raises(asyncio.CancelledError):
            await first
    finally:
        await forwards.close()
        await guest.stop()


async def _until(cond: object) -> None:
    """Wait (bounded by the caller's timeout) until ``cond()`` holds."""
    assert callable(cond)
    for _ in range(1000):
        if cond():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition never held")
