"""Reading an HTTP body (a request's or a response's) without holding more of it than
its bound: the one loop the peer API, the RPC client and the DHT's fetches share."""

from __future__ import annotations

import aiohttp


async def read_at_most(stream: aiohttp.StreamReader, limit: int,
                       length: int | None = None) -> bytes | None:
    """All of ``stream``, or None (the rest unread) as soon as it passes ``limit`` bytes;
    a declared ``length`` (Content-Length) over ``limit`` is refused without reading."""
    if length is not None and length > limit:
        return None
    data = bytearray()
    while chunk := await stream.read(limit + 1 - len(data)):
        data += chunk
        if len(data) > limit:
            return None
    return bytes(data)
