"""Calling a peer's RPC over HTTP: ``POST <url>/rpc`` with a signed envelope.

A reply is read up to :data:`~p2pmarket.core.wire.MAX_MESSAGE_BYTES` (the most any
signed reply can be, :mod:`p2pmarket.api.bounds`); a peer that sends more is
refused (:class:`PeerUnreachable`) without the rest being read."""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import Any

import aiohttp

from p2pmarket.api.rpc import Reply, make_request, open_reply_seen
from p2pmarket.core.errors import P2PMarketError
from p2pmarket.core.identity import Identity, node_id_of
from p2pmarket.core.streams import read_at_most
from p2pmarket.core.wire import MAX_MESSAGE_BYTES

MSGPACK = "application/msgpack"


class PeerUnreachable(P2PMarketError):
    """No HTTP answer from a peer."""


class PeerClient:
    """Signs requests as ``identity`` and checks that replies are signed by the callee."""

    def __init__(self, identity: Identity, timeout_s: float = 10.0,
                 proxy: str | None = None) -> None:
        self.identity = identity
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.proxy = proxy
        self.route: Callable[[str], str] = lambda url: url
        """Where a URL is really called (a node sets it to reach its own public URL
        from inside: :func:`p2pmarket.core.urls.own_route`)."""
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> PeerClient:
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # through a proxy, a connection per request: proxies (tinyproxy) may close
            # a kept-alive one between requests
            self._session = aiohttp.ClientSession(
                timeout=self.timeout,
                connector=aiohttp.TCPConnector(force_close=self.proxy is not None))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def call(self, url: str, server_key: bytes, name: str,
                   args: dict[str, Any]) -> dict[str, Any]:
        """Call RPC ``name`` on the node at ``url`` whose public key is ``server_key``.

        Returns the result map; raises :class:`RemoteError` for an error reply,
        :class:`PeerUnreachable` when there is no reply, ``WireError`` for a forged one.
        """
        return (await self.call_seen(url, server_key, name, args)).result

    async def call_seen(self, url: str, server_key: bytes, name: str,
                        args: dict[str, Any]) -> Reply:
        """:meth:`call`, also giving the address the callee saw us at (signed)."""
        request = make_request(self.identity, node_id_of(server_key), name, args)
        try:
            async with self.session.post(
                self.route(url).rstrip("/") + "/rpc", data=request,
                headers={"Content-Type": MSGPACK}, proxy=self.proxy,
            ) as resp:
                reply = await read_at_most(resp.content, MAX_MESSAGE_BYTES,
                                             resp.content_length)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise PeerUnreachable(f"cannot reach {url}: {type(exc).__name__}", url) from None
        if reply is None:
            raise PeerUnreachable(f"{url} sent a reply over {MAX_MESSAGE_BYTES} bytes", url)
        return open_reply_seen(request, reply, self.identity, server_key)
