"""Reaching a host:port through an HTTP proxy's CONNECT method (docs/design.md section 7).

aiohttp tunnels through a proxy with CONNECT only for https and wss; for plain http
it sends the request to the proxy, and proxies such as tinyproxy do not pass a
websocket upgrade on. So a node behind a proxy reaches a plain-http relay through
:func:`connect_tunnel`: a forwarder on ``127.0.0.1:<ephemeral port>``, each accepted
connection of which opens a CONNECT tunnel at the proxy::

    CONNECT host:port HTTP/1.1
    Host: host:port
    [Proxy-Authorization: Basic ...]      (when the proxy URL has user:password)

and, on a 2xx answer (its head read up to asyncio's 64 KiB bound), pipes bytes both
ways (:data:`PIPE_CHUNK` at a time, waiting for each side to drain: bounded buffers)
until either side closes, then closes both. A refused or failed CONNECT gets the local
client a ``502 Bad Gateway`` naming the reason, and the connection closed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator
from urllib.parse import unquote, urlsplit

from p2pmarket.nat.frames import RelayError

PIPE_CHUNK = 64 * 1024
CONNECT_TIMEOUT_S = 10.0


class ProxyAddress:
    """A proxy URL split into what CONNECT needs."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise RelayError("the proxy must be an http://host:port URL", url)
        self.host = parts.hostname
        self.port = parts.port or 80
        self.auth: str | None = None
        if parts.username is not None:
            pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            self.auth = "Basic " + base64.b64encode(pair.encode()).decode()


async def open_connect(proxy: ProxyAddress, host: str, port: int,
                       timeout_s: float = CONNECT_TIMEOUT_S
                       ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A stream to ``host:port`` through ``proxy``'s CONNECT; :class:`RelayError` if the
    proxy cannot be reached or refuses."""
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
            try:
                head = f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n"
                if proxy.auth:
                    head += f"Proxy-Authorization: {proxy.auth}\r\n"
                writer.write((head + "\r\n").encode())
                reply = await reader.readuntil(b"\r\n\r\n")
            except BaseException:
                writer.close()
                raise
    except (OSError, TimeoutError, asyncio.IncompleteReadError,
            asyncio.LimitOverrunError) as exc:
        raise RelayError(f"proxy CONNECT to {target} failed: {type(exc).__name__}",
                         target) from None
    status_line = reply.split(b"\r\n", 1)[0].decode("latin-1")
    fields = status_line.split(" ", 2)
    if len(fields) < 2 or not fields[0].startswith("HTTP/") or not fields[1].startswith("2"):
        writer.close()
        raise RelayError(f"proxy refused CONNECT to {target}: {status_line[:120]}", target)
    return reader, writer


async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    """Copy ``src`` to ``dst`` until ``src`` ends or either side breaks."""
    with contextlib.suppress(OSError, asyncio.IncompleteReadError):
        while chunk := await src.read(PIPE_CHUNK):
            dst.write(chunk)
            await dst.drain()


@contextlib.asynccontextmanager
async def connect_tunnel(proxy_url: str, host: str, port: int) -> AsyncIterator[str]:
    """``async with connect_tunnel(proxy, host, port) as local_url``: ``local_url``
    (``http://127.0.0.1:<port>``) reaches ``host:port`` through the proxy's CONNECT,
    one tunnel per connection, while the block runs."""
    proxy = ProxyAddress(proxy_url)
    tasks: set[asyncio.Task[None]] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await open_connect(proxy, host, port)
        except RelayError as exc:
            body = exc.message.encode()
            writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain\r\n"
                         b"Connection: close\r\nContent-Length: %d\r\n\r\n%s"
                         % (len(body), body))
            with contextlib.suppress(OSError):
                await writer.drain()
            writer.close()
            return
        ups = asyncio.ensure_future(pipe(reader, up_writer))
        downs = asyncio.ensure_future(pipe(up_reader, writer))
        try:
            await asyncio.wait({ups, downs}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ups.cancel()
            downs.cancel()
            for w in (writer, up_writer):
                w.close()

    def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.ensure_future(serve(reader, writer))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    server = await asyncio.start_server(accepted, "127.0.0.1", 0)
    local_port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{local_port}"
    finally:
        server.close()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()
