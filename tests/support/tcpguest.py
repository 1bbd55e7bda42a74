"""A stand-in guest for the port-forward tests: a TCP server on 127.0.0.1 that echoes,
or holds what it gets until told to read (to test backpressure)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
from dataclasses import dataclass, field

WAIT_S = 10.0
MIB = 1024 * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Guest:
    """``mode`` ``echo``: send back what arrives, then close after EOF; ``sink``: wait
    for ``go``, then read and hash everything until EOF; ``hangup``: wait for ``go``,
    then close."""

    mode: str = "echo"
    server: asyncio.Server | None = None
    port: int = 0
    go: asyncio.Event = field(default_factory=asyncio.Event)
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    eof: asyncio.Event = field(default_factory=asyncio.Event)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    received: int = 0
    sha256: str = ""
    conns: int = 0

    async def start(self) -> Guest:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        self.server = await asyncio.start_server(self._serve, sock=sock)
        self.port = sock.getsockname()[1]
        return self

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.server.wait_closed(), 2)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                     ) -> None:
        self.conns += 1
        self.connected.set()
        h = hashlib.sha256()
        try:
            if self.mode in ("sink", "hangup"):
                await self.go.wait()
            if self.mode == "hangup":
                return
            while data := await reader.read(64 * 1024):
                self.received += len(data)
                h.update(data)
                if self.mode == "echo":
                    writer.write(data)
                    await writer.drain()
            self.sha256 = h.hexdigest()
            self.eof.set()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            self.closed.set()
