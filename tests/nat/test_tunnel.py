"""Reaching a relay through an HTTP proxy's CONNECT: a small CONNECT proxy written here,
and a real tinyproxy when it is installed."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from relay_helpers import WAIT_S, digest_of, relay_world, start_host, stream_of

from p2pmarket.api.client import PeerClient
from p2pmarket.core.identity import Identity
from p2pmarket.nat.frames import RelayError
from p2pmarket.nat.tunnel import ProxyAddress, connect_tunnel


class ConnectProxy:
    """A CONNECT-only proxy on 127.0.0.1 that records the targets asked for; it refuses
    with ``refuse`` (a status line) when set, and wants ``auth`` (Basic) when set."""

    def __init__(self, refuse: str | None = None, auth: str | None = None) -> None:
        self.refuse = refuse
        self.auth = auth
        self.targets: list[str] = []
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aenter__(self) -> ConnectProxy:
        self.server = await asyncio.start_server(self.accept, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    def accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.ensure_future(self.handle(reader, writer))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode()
            method, target, _ = head.split("\r\n")[0].split(" ")
            fields = dict(line.split(": ", 1) for line in head.split("\r\n")[1:] if line)
            self.targets.append(target)
            if method != "CONNECT":
                self.refuse = "405 Method Not Allowed"
            wanted = self.auth and fields.get("Proxy-Authorization") != self.auth
            if self.refuse or wanted:
                status = "407 Proxy Authentication Required" if wanted else self.refuse
                writer.write(f"HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n".encode())
                await writer.drain()
                return
            host, port = target.rsplit(":", 1)
            try:
                up_reader, up_writer = await asyncio.open_connection(host, int(port))
            except OSError:
                writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
                return
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")

            async def copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
                dst.close()

            await asyncio.gather(copy(reader, up_writer), copy(up_reader, writer),
                                 return_exceptions=True)
        finally:
            writer.close()


async def test_a_tunnel_reaches_a_plain_http_site() -> None:
    host = await start_host(Identity.generate())
    port = int(host.url.rsplit(":", 1)[1])
    try:
        async with ConnectProxy() as proxy, \
                connect_tunnel(proxy.url, "127.0.0.1", port) as local, \
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
            for _ in range(2):       # a tunnel per connection
                async with http.get(local + "/health") as resp:
                    assert resp.status == 200
                    assert (await resp.json())["node_id"] == host.identity.node_id.hex()
            size = 3 * 1024 * 1024 + 7
            async with http.put(local + "/upload", data=stream_of(size),
                                headers={"Content-Length": str(size)}) as resp:
                assert (await resp.json())["sha256"] == digest_of(size)
            assert proxy.targets == [f"127.0.0.1:{port}"] * 3
    finally:
        await host.site.stop()


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def get_text(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        return resp.status, await resp.text()


async def test_a_refused_connect_is_a_502_naming_why() -> None:
    port = free_port()
    async with ConnectProxy(refuse="403 Forbidden") as proxy, \
            connect_tunnel(proxy.url, "127.0.0.1", port) as local:
        assert await get_text(local + "/health") == (
            502, f"proxy refused CONNECT to 127.0.0.1:{port}: HTTP/1.1 403 Forbidden")
    async with ConnectProxy() as proxy, connect_tunnel(proxy.url, "127.0.0.1", port) as local:
        assert await get_text(local + "/health") == (
            502, f"proxy refused CONNECT to 127.0.0.1:{port}: HTTP/1.1 502 Bad Gateway")


async def test_an_unreachable_proxy_is_a_502_naming_why() -> None:
    proxy_url = f"http://127.0.0.1:{free_port()}"
    async with connect_tunnel(proxy_url, "198.18.0.9", 80) as local:
        assert await get_text(local + "/health") == (
            502, "proxy CONNECT to 198.18.0.9:80 failed: ConnectionRefusedError")


async def test_a_proxy_wanting_credentials_gets_them_from_the_url() -> None:
    host = await start_host(Identity.generate())
    port = int(host.url.rsplit(":", 1)[1])
    auth = "Basic " + base64.b64encode(b"user:p@ss").decode()
    try:
        async with ConnectProxy(auth=auth) as proxy, aiohttp.ClientSession() as http:
            with_auth = proxy.url.replace("http://", "http://user:p%40ss@")
            assert ProxyAddress(with_auth).auth == auth
            async with connect_tunnel(with_auth, "127.0.0.1", port) as local, \
                    http.get(local + "/health") as resp:
                assert resp.status == 200
            async with connect_tunnel(proxy.url, "127.0.0.1", port) as local, \
                    http.get(local + "/health") as resp:
                assert resp.status == 502
                assert "407 Proxy Authentication Required" in await resp.text()
    finally:
        await host.site.stop()


def test_a_proxy_url_must_be_plain_http() -> None:
    with pytest.raises(RelayError, match="the proxy must be an http://host:port URL"):
        ProxyAddress("socks5://127.0.0.1:1080")


async def test_a_host_behind_a_proxy_holds_a_reservation_through_it() -> None:
    async with ConnectProxy() as proxy, relay_world(proxy=proxy.url) as w, \
            PeerClient(w.buyer) as peers, aiohttp.ClientSession() as http:
        relay_target = w.relay.url.removeprefix("http://")
        assert proxy.targets == [relay_target]
        got = await peers.call(w.client.url, w.host.identity.public_key, "test.echo", {"a": 1})
        assert got["echo"] == {"a": 1}
        size = 6 * 1024 * 1024
        async with http.put(w.client.url + "/upload", data=stream_of(size),
                            headers={"Content-Length": str(size)}) as resp:
            assert (await resp.json())["sha256"] == digest_of(size)


@contextlib.asynccontextmanager
async def tinyproxy() -> AsyncIterator[str]:
    """A real tinyproxy on 127.0.0.1 (no ConnectPort lines: CONNECT to any port)."""
    with tempfile.TemporaryDirectory(prefix="p2pm-tinyproxy-") as tmp:
        port = free_port()
        conf = Path(tmp) / "tinyproxy.conf"
        conf.write_text(f"Port {port}\nListen 127.0.0.1\nTimeout 60\nLogLevel Info\n"
                        "MaxClients 20\nAllow 127.0.0.1\n")
        proc = await asyncio.create_subprocess_exec(
            shutil.which("tinyproxy") or "tinyproxy", "-d", "-c", str(conf),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        assert proc.stdout is not None
        drain: asyncio.Task[None] | None = None
        try:
            async with asyncio.timeout(WAIT_S):
                while b"Accepting connections" not in (line := await proc.stdout.readline()):
                    assert line, "tinyproxy ended before listening"

            async def drain_output() -> None:
                assert proc.stdout is not None
                while await proc.stdout.read(65536):
                    pass

            drain = asyncio.ensure_future(drain_output())
            yield f"http://127.0.0.1:{port}"
        finally:
            if proc.returncode is None:
                proc.kill()         # by pid: only the process this test started
            await proc.wait()
            if drain is not None:
                drain.cancel()


@pytest.mark.skipif(shutil.which("tinyproxy") is None, reason="tinyproxy is not installed")
async def test_a_host_behind_tinyproxy_holds_a_reservation_through_it() -> None:
    async with tinyproxy() as proxy, relay_world(proxy=proxy) as w, \
            PeerClient(w.buyer) as peers, aiohttp.ClientSession() as http:
        got = await peers.call(w.client.url, w.host.identity.public_key, "test.echo", {"a": 2})
        assert got["echo"] == {"a": 2}
        size = 4 * 1024 * 1024 + 1
        async with http.put(w.client.url + "/upload", data=stream_of(size),
                            headers={"Content-Length": str(size)}) as resp:
            assert (await resp.json())["sha256"] == digest_of(size)
        fresh = await asyncio.wait_for(w.client.refresh(), WAIT_S)
        assert fresh.node_id == w.host.identity.node_id
