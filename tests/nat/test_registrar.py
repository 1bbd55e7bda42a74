"""Registration by callback on real loopback sockets: a node's peer app with the echo
RPC, a registrar's peer app, and the ways a registration goes right and wrong."""

import asyncio
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from typing import Any

import aiohttp
import pytest

from p2pmarket.api.rpc import CallContext, RpcDispatcher
from p2pmarket.api.server import Site, peer_app
from p2pmarket.core.clock import now_us
from p2pmarket.core.domains import ENVELOPE
from p2pmarket.core.identity import Identity
from p2pmarket.core.urls import http_url
from p2pmarket.core.wire import decode, digest, pack, seal, unpack
from p2pmarket.nat.addresses import may_dial, rate_key
from p2pmarket.nat.attestation import open_attestation
from p2pmarket.nat.errors import NatError
from p2pmarket.nat.limits import DIAL_DATA_MAX, DIAL_DATA_MIN, MAX_DIAL_CHUNK, DialLimits
from p2pmarket.nat.registrar import REGISTER_KIND, REGISTER_PATH, REGISTERED_KIND, Registrar
from p2pmarket.nat.registration import Registration, echo_handlers, register
from p2pmarket.nat.table import Callback, ReachClass

REG = Identity(b"\x41" * 32)
A = Identity(b"\x42" * 32)
B = Identity(b"\x43" * 32)
C = Identity(b"\x44" * 32)


# -- helpers -------------------------------------------------------------------------

class EchoNode:
    """A node's peer app (on ``host``) whose ``nat.echo`` calls are recorded."""

    def __init__(self, identity: Identity, wrong_nonce: bool = False) -> None:
        self.identity = identity
        self.calls: list[tuple[str, int] | None] = []   # the callers' addresses
        self.called = asyncio.Event()
        dispatcher = RpcDispatcher(identity)
        echo = echo_handlers(identity)["echo"]

        async def recorded(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
            self.calls.append(ctx.peer)
            self.called.set()
            result = await echo(ctx, args)
            return {"nonce": bytes(32)} if wrong_nonce else result

        dispatcher.register_all("nat", {"echo": recorded})
        self.site = Site(peer_app(dispatcher))
        self.port = 0

    async def start(self, host: str, port: int = 0) -> int:
        self.port = await self.site.start(host, port)
        return self.port


@asynccontextmanager
async def echo_node(identity: Identity, host: str = "127.0.0.1", port: int = 0,
                    wrong_nonce: bool = False) -> AsyncIterator[EchoNode]:
    node = EchoNode(identity, wrong_nonce)
    await node.start(host, port)
    try:
        yield node
    finally:
        await node.site.stop()


@contextmanager
def dead_port() -> Iterator[int]:
    """A port held bound on 127.0.0.1 but not listening: a connection there is refused
    (a TCP reset), so a callback there is ``failed``, as at a NAT router's own address."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


@contextmanager
def unreachable_port(host: str = "127.0.0.1", port: int = 0) -> Iterator[int]:
    """A port on ``host`` where no connection is ever made: a listening socket (backlog
    0) whose accept queue one never-accepted connection holds full, so Linux drops every
    further SYN, as a firewalled address does. A callback there waits out the
    registrar's ``dial_timeout_s``: ``none``."""
    sock = socket.socket()
    sock.bind((host, port))
    sock.listen(0)
    port = sock.getsockname()[1]
    try:
        with socket.create_connection((host, port), timeout=1.0):   # fills the queue
            yield port
    finally:
        sock.close()


@asynccontextmanager
async def behind_silence(identity: Identity, host: str = "127.0.0.2"
                         ) -> AsyncIterator[tuple[EchoNode, "Listener"]]:
    """A node on ``host``:p while 127.0.0.1:p accepts and never answers (the second
    item counts the connections), so a registrar calling back the external address
    (127.0.0.1, p) waits out its ``dial_timeout_s``: ``none``."""
    gate = Listener(None)
    port = await gate.start("127.0.0.1")
    try:
        async with echo_node(identity, host, port) as node:
            yield node, gate
    finally:
        await gate.stop()


@asynccontextmanager
async def behind_router(identity: Identity, host: str = "127.0.0.2"
                        ) -> AsyncIterator[EchoNode]:
    """A node on ``host``:p while 127.0.0.1:p is a dead port, so a registrar calling back
    the external address (127.0.0.1, p) is refused: ``failed``."""
    with dead_port() as port:
        async with echo_node(identity, host, port) as node:
            yield node


class Listener:
    """A raw TCP listener that counts connections and answers ``reply`` (or nothing)."""

    def __init__(self, reply: bytes | None = None) -> None:
        self.reply = reply
        self.connections = 0
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        if self.reply is None:          # never answer: the dialler times out
            await reader.read()
        else:
            await reader.read(1)
            writer.write(self.reply)
            await writer.drain()
        writer.close()

    async def start(self, host: str, port: int = 0) -> int:
        self.server = await asyncio.start_server(self._handle, host, port)
        self.port = self.server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            writer.close()
        await self.server.wait_closed()


class RegistrarSite:
    def __init__(self, registrar: Registrar, site: Site, port: int) -> None:
        self.registrar, self.site, self.port = registrar, site, port
        self.url = f"http://127.0.0.1:{port}"


@asynccontextmanager
async def registrar_site(**kwargs: Any) -> AsyncIterator[RegistrarSite]:
    kwargs.setdefault("delay_s", (0.0, 0.0))
    kwargs.setdefault("dial_timeout_s", 5.0)
    registrar = Registrar(REG, **kwargs)
    site = Site(peer_app(RpcDispatcher(REG), extra_routes=registrar.routes()))
    port = await site.start("127.0.0.1", 0)
    try:
        yield RegistrarSite(registrar, site, port)
    finally:
        await registrar.close()
        await site.stop()


DIAL_TIMEOUT_S = 0.3    # how long the ``quick`` registrar waits for a silent address


@pytest.fixture
async def reg() -> AsyncIterator[RegistrarSite]:
    async with registrar_site() as r:
        yield r


@pytest.fixture
async def quick() -> AsyncIterator[RegistrarSite]:
    """A registrar that gives a silent address up after :data:`DIAL_TIMEOUT_S`."""
    async with registrar_site(dial_timeout_s=DIAL_TIMEOUT_S) as r:
        yield r


def hello(identity: Identity, addr: Any, *, kind: str = REGISTER_KIND,
          to: bytes | None = REG.node_id, ts: int | None = None) -> bytes:
    return seal(identity, ENVELOPE, kind, {"addr": addr}, ts=now_us() if ts is None else ts,
                to=to).encode()


@asynccontextmanager
async def session(r: RegistrarSite) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
    async with aiohttp.ClientSession() as s, s.ws_connect(r.url + REGISTER_PATH) as ws:
        yield ws


async def answer(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    """The registrar's final answer's body (checked to be its signed reply)."""
    msg = await ws.receive()
    assert msg.type == aiohttp.WSMsgType.BINARY, msg
    env = decode(msg.data, ENVELOPE)
    assert env.kind == REGISTERED_KIND and env.sender == REG.public_key
    body: dict[str, Any] = env.body
    return body


async def need_data(ws: aiohttp.ClientWebSocketResponse) -> int:
    msg = await ws.receive()
    assert msg.type == aiohttp.WSMsgType.BINARY
    doc = unpack(msg.data)
    assert set(doc) == {"need_data"}
    n: int = doc["need_data"]
    assert DIAL_DATA_MIN <= n <= DIAL_DATA_MAX
    return n


async def refused(r: RegistrarSite, data: bytes | str) -> dict[str, Any]:
    async with session(r) as ws:
        if isinstance(data, str):
            await ws.send_str(data)
        else:
            await ws.send_bytes(data)
        body = await answer(ws)
    assert "error" in body, body
    return body


def registered(r: RegistrarSite) -> int:
    return len(r.registrar.registry)


# -- good registrations --------------------------------------------------------------

async def test_a_public_node_gets_a_verified_public_attestation(reg: RegistrarSite) -> None:
    async with echo_node(A) as node:
        result = await register(A, reg.url, REG.public_key, ("127.0.0.1", node.port))
        assert isinstance(result, Registration)
        att = result.attestation
        assert (att.reach_class, att.verified, att.host, att.port) == (
            ReachClass.PUBLIC, True, "127.0.0.1", node.port)
        assert (result.external, result.self_known) == (Callback.OK, Callback.OK)
        assert result.seen[0] == "127.0.0.1"
        assert open_attestation(result.raw, node_id=A.node_id, now=now_us()) == att
        assert att.registrar == REG.public_key and att.node_id == A.node_id
        # one call back, on a fresh connection from an ephemeral port
        assert len(node.calls) == 1
        caller = node.calls[0]
        assert caller is not None and caller[0] == "127.0.0.1"
        assert caller[1] not in (reg.port, result.seen[1], node.port)
    assert reg.registrar.registry.holder("127.0.0.1", node.port, now_us()) == A.node_id
    await reg.registrar.idle()
    status = reg.registrar.status()
    assert status["registered"] == 1 and status["dial_ok"] == 1 and status["running"] == 0


async def test_dial_data_is_asked_and_paid_before_the_self_known_address_is_dialled(
        quick: RegistrarSite) -> None:
    async with behind_silence(A) as (node, gate):
        async with session(quick) as ws:
            await ws.send_bytes(hello(A, ["127.0.0.2", node.port]))
            n = await need_data(ws)
            assert node.calls == []               # nothing dialled before the data
            assert gate.connections == 0
            data = bytes(n)
            for start in range(0, n, MAX_DIAL_CHUNK):
                await ws.send_bytes(data[start:start + MAX_DIAL_CHUNK])
            body = await answer(ws)
        assert len(node.calls) == 1 and gate.connections == 1
    assert (body["external"], body["self"]) == ("none", "ok")
    att = open_attestation(body["attestation"], node_id=A.node_id)
    assert (att.reach_class, att.verified, att.address) == (
        ReachClass.PROXIED, True, ("127.0.0.2", node.port))
    assert body["seen"][0] == "127.0.0.1"
    assert quick.registrar.status()["dial_data_bytes"] == n


async def test_register_pays_the_dial_data_itself(reg: RegistrarSite) -> None:
    async with behind_router(A) as node:
        result = await register(A, reg.url, REG.public_key, ("127.0.0.2", node.port))
        assert len(node.calls) == 1
    assert (result.external, result.self_known) == (Callback.FAILED, Callback.OK)
    assert result.attestation.reach_class is ReachClass.PROXIED
    assert DIAL_DATA_MIN <= reg.registrar.status()["dial_data_bytes"] <= DIAL_DATA_MAX


async def test_external_ok_self_failed_is_forwarded(reg: RegistrarSite) -> None:
    async with echo_node(A) as node, echo_node(B, "127.0.0.2", node.port) as other:
        result = await register(A, reg.url, REG.public_key, ("127.0.0.2", node.port))
        assert len(other.calls) == 0     # B's dispatcher refuses a request for A unread
    assert (result.external, result.self_known) == (Callback.OK, Callback.FAILED)
    att = result.attestation
    assert (att.reach_class, att.verified, att.address) == (
        ReachClass.FORWARDED, True, ("127.0.0.1", node.port))


# -- dial data: never dial another IP unpaid ---------------------------------------

async def test_without_the_data_the_other_address_is_never_dialled(
        quick: RegistrarSite) -> None:
    listener = Listener(b"HTTP/1.1 200 OK\r\n\r\n")
    gate = Listener(None)                 # the external address: silent
    port = await gate.start("127.0.0.1")
    try:
        await listener.start("127.0.0.3", port)
        # declined: the self-known address is not dialled, its outcome is none
        result = await register(A, quick.url, REG.public_key, ("127.0.0.3", port),
                                send_dial_data=False)
        assert (result.external, result.self_known) == (Callback.NONE, Callback.NONE)
        assert (result.attestation.reach_class, result.attestation.verified) == (
            ReachClass.PROXIED, False)
        assert gate.connections == 1
        # the node goes away after being asked
        async with session(quick) as ws:
            await ws.send_bytes(hello(A, ["127.0.0.3", port]))
            await need_data(ws)
        await quick.registrar.idle()
        # half the data, then gone
        async with session(quick) as ws:
            await ws.send_bytes(hello(A, ["127.0.0.3", port]))
            n = await need_data(ws)
            await ws.send_bytes(bytes(MAX_DIAL_CHUNK))
            assert n > MAX_DIAL_CHUNK
        await quick.registrar.idle()
    finally:
        if listener.server is not None:
            await listener.stop()
        await gate.stop()
    assert listener.connections == 0 and gate.connections == 1
    status = quick.registrar.status()
    assert status["refused_closed"] == 2 and status["dial_ok"] == 0
    assert (status["dial_none"], status["dial_failed"]) == (1, 0)


async def test_dial_data_in_time_or_nothing() -> None:
    listener = Listener(b"HTTP/1.1 200 OK\r\n\r\n")
    port = await listener.start("127.0.0.3")
    try:
        async with registrar_site(data_timeout_s=0.2) as r, session(r) as ws:
            await ws.send_bytes(hello(A, ["127.0.0.3", port]))
            await need_data(ws)
            body = await answer(ws)
            assert body["code"] == "timeout" and registered(r) == 0
    finally:
        await listener.stop()
    assert listener.connections == 0


async def test_a_private_or_loopback_claim_from_afar_is_not_dialled() -> None:
    assert may_dial("127.0.0.1", "127.0.0.2") and may_dial("198.18.0.1", "198.18.0.2")
    assert may_dial("198.51.100.1", "8.8.8.8") and may_dial("127.0.0.1", "8.8.8.8")
    assert not may_dial("8.8.8.8", "127.0.0.1")          # the registrar's own host
    assert not may_dial("8.8.8.8", "198.18.0.1")         # the registrar's own LAN
    assert not may_dial("198.18.0.1", "127.0.0.1")
    for bad in ("0.0.0.0", "224.0.0.1", "169.254.0.1", "240.0.0.1", "::", "fe80::1"):
        assert not may_dial("127.0.0.1", bad)
    assert may_dial("::1", "::1") and not may_dial("2001:4860::1", "::1")
    assert rate_key("198.18.0.1") == "198.18.0.1"
    assert rate_key("2001:db8:1:2:3::4") == rate_key("2001:db8:1:2::9") == "2001:db8:1:2::/64"
    assert http_url("::1", 80) == "http://[::1]:80"
    assert http_url("127.0.0.1", 80) == "http://127.0.0.1:80"


@pytest.mark.parametrize("case", ["oversized chunk", "too much", "text", "empty later"])
async def test_bad_dial_data_is_an_error_and_nothing_is_registered(
        reg: RegistrarSite, case: str) -> None:
    async with behind_silence(A) as (node, gate):
        async with session(reg) as ws:
            await ws.send_bytes(hello(A, ["127.0.0.2", node.port]))
            n = await need_data(ws)
            if case == "oversized chunk":
                await ws.send_bytes(bytes(MAX_DIAL_CHUNK + 1))
            elif case == "too much":
                for _ in range(n // MAX_DIAL_CHUNK):
                    await ws.send_bytes(bytes(MAX_DIAL_CHUNK))
                await ws.send_bytes(bytes(n % MAX_DIAL_CHUNK + 1))
            elif case == "text":
                await ws.send_str("x" * 100)
            else:
                await ws.send_bytes(bytes(100))
                await ws.send_bytes(b"")
            body = await answer(ws)
        assert node.calls == [] and gate.connections == 0
    expected = {"oversized chunk": "chunk", "too much": "too_much", "text": "malformed",
                "empty later": "malformed"}[case]
    assert body["code"] == expected, body
    assert registered(reg) == 0


# -- squatting -------------------------------------------------------------------------

async def test_a_squatter_cannot_take_a_verified_nodes_address(reg: RegistrarSite) -> None:
    async with behind_router(A) as node:
        first = await register(A, reg.url, REG.public_key, ("127.0.0.2", node.port))
        assert first.attestation.verified
        assert first.attestation.address == ("127.0.0.2", node.port)
        # unverified (declines the data; external refused, self none: plain NAT):
        # refused by the registry
        with pytest.raises(NatError) as info:
            await register(C, reg.url, REG.public_key, ("127.0.0.2", node.port),
                           send_dial_data=False)
        assert info.value.code == "held"
        assert "verified registration of another node" in info.value.message
        assert (info.value.value["external"], info.value.value["self"]) == ("failed", "none")
        # paid: the callback reaches A, whose answer is no echo for C: rejected
        with pytest.raises(NatError) as info:
            await register(C, reg.url, REG.public_key, ("127.0.0.2", node.port))
        assert info.value.code == "rejected"
        assert info.value.value == {"external": "failed", "self": "failed"}
    registry = reg.registrar.registry
    assert registry.holder("127.0.0.2", node.port, now_us()) == A.node_id
    assert registry.claimants("127.0.0.2", node.port, now_us()) == frozenset()


# -- malformed requests ------------------------------------------------------------------

def _tampered() -> bytes:
    doc = unpack(hello(A, ["127.0.0.1", 8000]))
    doc["body"]["addr"] = ["127.0.0.1", 8001]
    return pack(doc)


MALFORMED: dict[str, tuple[Callable[[], bytes], str]] = {
    "not msgpack": (lambda: b"\xc1\xc1", "malformed"),
    "not an envelope": (lambda: pack({"addr": ["127.0.0.1", 8000]}), "malformed"),
    "wrong kind": (lambda: hello(A, ["127.0.0.1", 8000], kind="rpc.nat.register"), "kind"),
    "bad signature": (_tampered, "signature"),
    "other node": (lambda: hello(A, ["127.0.0.1", 8000], to=B.node_id), "to"),
    "no addressee": (lambda: hello(A, ["127.0.0.1", 8000], to=None), "to"),
    "stale": (lambda: hello(A, ["127.0.0.1", 8000], ts=now_us() - 120_000_000), "replay"),
    "name not ip": (lambda: hello(A, ["localhost", 8000]), "malformed"),
    "port 0": (lambda: hello(A, ["127.0.0.1", 0]), "malformed"),
    "port text": (lambda: hello(A, ["127.0.0.1", "8000"]), "malformed"),
    "addr short": (lambda: hello(A, ["127.0.0.1"]), "malformed"),
    "addr map": (lambda: hello(A, {"host": "127.0.0.1"}), "malformed"),
    "too long": (lambda: hello(A, ["127.0.0.1", 8000]) + bytes(2000), "malformed"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
async def test_a_malformed_request_is_refused_clearly(reg: RegistrarSite, case: str) -> None:
    make, code = MALFORMED[case]
    data = make()
    body = await refused(reg, data)
    assert body["code"] == code, body
    assert isinstance(body["error"], str) and body["error"]
    assert body["re"] == digest(data)[:16]
    assert registered(reg) == 0
    status = reg.registrar.status()
    assert (status["dial_ok"], status["dial_failed"], status["dial_none"]) == (0, 0, 0)


async def test_other_bodies_text_and_replays(quick: RegistrarSite) -> None:
    body = await refused(quick, "hello")
    assert body["code"] == "malformed" and "re" not in body
    extra = seal(A, ENVELOPE, REGISTER_KIND, {"addr": ["127.0.0.1", 8000], "x": 1},
                 ts=now_us(), to=REG.node_id).encode()
    assert (await refused(quick, extra))["code"] == "malformed"
    # a replayed request is refused (the first one was accepted: its callback found
    # nothing answering, so unverified)
    with unreachable_port() as port:
        data = hello(A, ["127.0.0.1", port])
        async with session(quick) as ws:
            await ws.send_bytes(data)
            first = await answer(ws)
        assert (first["external"], first["self"]) == ("none", "none")
        assert "attestation" in first
        again = await refused(quick, data)
        assert again["code"] == "replay" and again["re"] == digest(data)[:16]
    assert quick.registrar.status()["dial_none"] == 1      # the replay dialled nothing


async def test_a_session_without_a_request_times_out() -> None:
    async with registrar_site(hello_timeout_s=0.2) as r, session(r) as ws:
        body = await answer(ws)
        assert body["code"] == "timeout" and "re" not in body


async def test_close_ends_running_sessions() -> None:
    async with registrar_site() as r, session(r) as ws:
        for _ in range(100):            # until the session runs
            if r.registrar.status()["running"]:
                break
            await asyncio.sleep(0)
        assert r.registrar.status()["running"] == 1
        receiving = asyncio.create_task(ws.receive())   # answers the close frame
        await r.registrar.close()
        msg = await receiving
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert r.registrar.status()["running"] == 0


# -- rate limits -------------------------------------------------------------------------

class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_the_thirteenth_request_within_a_minute_is_refused() -> None:
    clock = FakeMonotonic()
    async with registrar_site(monotonic=clock) as r, echo_node(A) as node:
        for i in range(12):
            clock.now += 4.0
            result = await register(A, r.url, REG.public_key, ("127.0.0.1", node.port))
            assert result.attestation.reach_class is ReachClass.PUBLIC, i
        clock.now += 4.0 - 0.001                 # 48 s after the first one
        with pytest.raises(NatError) as info:
            await register(A, r.url, REG.public_key, ("127.0.0.1", node.port))
        assert info.value.code == "peer_rate" and info.value.value == "127.0.0.1"
        assert len(node.calls) == 12              # the refused one dialled nothing
        clock.now += 60.0 - 48.0 + 0.01
        await register(A, r.url, REG.public_key, ("127.0.0.1", node.port))
        assert r.registrar.status()["refused_peer_rate"] == 1


async def test_total_rate_and_concurrency() -> None:
    limits = DialLimits(per_peer_per_min=100, total_per_min=2, concurrent_per_peer=2)
    async with registrar_site(limits=limits) as r, session(r) as one, session(r) as two:
        for _ in range(100):
            if r.registrar.status()["running"] == 2:
                break
            await asyncio.sleep(0)
        body = await refused(r, hello(A, ["127.0.0.1", 8000]))
        assert body["code"] == "peer_concurrency"
        await one.close()
        await two.close()
        await r.registrar.idle()
        body = await refused(r, hello(A, ["127.0.0.1", 8000]))
        assert body["code"] == "total_rate", body


# -- callback outcomes ---------------------------------------------------------------------

async def test_an_echo_signed_by_another_key_fails(reg: RegistrarSite) -> None:
    async with echo_node(B) as impostor:
        with pytest.raises(NatError) as info:
            await register(A, reg.url, REG.public_key, ("127.0.0.1", impostor.port))
    assert info.value.code == "rejected"
    assert info.value.value == {"external": "failed", "self": "failed"}
    assert registered(reg) == 0


async def test_an_echo_of_another_nonce_fails(reg: RegistrarSite) -> None:
    async with echo_node(A, wrong_nonce=True) as node:
        with pytest.raises(NatError) as info:
            await register(A, reg.url, REG.public_key, ("127.0.0.1", node.port))
        assert len(node.calls) == 1
    assert info.value.code == "rejected"


@pytest.mark.parametrize("reply", [b"garbage\r\n\r\n", b"HTTP/1.1 500 Oops\r\n\r\n",
                                   b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc"])
async def test_garbage_answers_fail(reg: RegistrarSite, reply: bytes) -> None:
    listener = Listener(reply)
    port = await listener.start("127.0.0.1")
    try:
        with pytest.raises(NatError) as info:
            await register(A, reg.url, REG.public_key, ("127.0.0.1", port))
    finally:
        await listener.stop()
    assert info.value.value == {"external": "failed", "self": "failed"}
    assert listener.connections == 1


async def test_nothing_answering_is_none_and_accepted_unverified(
        quick: RegistrarSite) -> None:
    with unreachable_port() as port:       # no connection is ever made
        result = await register(A, quick.url, REG.public_key, ("127.0.0.1", port))
    assert (result.external, result.self_known) == (Callback.NONE, Callback.NONE)
    att = result.attestation
    assert (att.reach_class, att.verified) == (ReachClass.PROXIED, False)
    assert quick.registrar.registry.claimants("127.0.0.1", port, now_us()) == {A.node_id}
    assert quick.registrar.registry.holder("127.0.0.1", port, now_us()) is None
    status = quick.registrar.status()
    assert (status["dial_none"], status["dial_failed"]) == (1, 0)


async def test_nothing_listening_is_failed(reg: RegistrarSite) -> None:
    """A refused connection (a TCP reset) is "connected, hash failed": something is at
    the address, but not this node."""
    with dead_port() as port, pytest.raises(NatError) as info:
        await register(A, reg.url, REG.public_key, ("127.0.0.1", port))
    assert info.value.code == "rejected"          # one address, failed: the table rejects
    assert info.value.value == {"external": "failed", "self": "failed"}
    assert registered(reg) == 0
    status = reg.registrar.status()
    assert (status["dial_failed"], status["dial_none"]) == (1, 0)


@pytest.mark.parametrize("self_known", ["silent", "unreachable", "declined"])
async def test_external_refused_and_self_known_none_is_plain_nat(
        quick: RegistrarSite, self_known: str) -> None:
    """The seed's row 6: the external address is a NAT router's own (it resets), and
    nothing answers at the self-known one (or it is not dialled): the node is behind
    NAT, accepted unverified at its self-known address."""
    with dead_port() as port:
        async with AsyncExitStack() as stack:
            silent = Listener(None)
            if self_known == "silent":            # accepts, never answers
                await silent.start("127.0.0.2", port)
                stack.push_async_callback(silent.stop)
            elif self_known == "unreachable":     # never connects
                stack.enter_context(unreachable_port("127.0.0.2", port))
            result = await register(A, quick.url, REG.public_key, ("127.0.0.2", port),
                                    send_dial_data=self_known != "declined")
    assert (result.external, result.self_known) == (Callback.FAILED, Callback.NONE)
    att = result.attestation
    assert (att.reach_class, att.verified, att.address) == (
        ReachClass.NAT, False, ("127.0.0.2", port))
    assert silent.connections == (1 if self_known == "silent" else 0)
    registry = quick.registrar.registry
    assert registry.claimants("127.0.0.2", port, now_us()) == {A.node_id}
    assert registry.holder("127.0.0.2", port, now_us()) is None
    status = quick.registrar.status()
    assert status["dial_failed"] == 1
    assert status["dial_none"] == (0 if self_known == "declined" else 1)


async def test_no_answer_in_time_is_none() -> None:
    listener = Listener(None)
    port = await listener.start("127.0.0.1")
    try:
        async with registrar_site(dial_timeout_s=0.3) as r:
            result = await register(A, r.url, REG.public_key, ("127.0.0.1", port))
    finally:
        await listener.stop()
    assert (result.external, result.self_known) == (Callback.NONE, Callback.NONE)
    assert listener.connections == 1


# -- the node's side ---------------------------------------------------------------------

async def test_echo_checks_its_nonce() -> None:
    echo = echo_handlers(A)["echo"]
    ctx = CallContext(sender=REG.public_key, ts=0)
    assert await echo(ctx, {"nonce": bytes(16)}) == {"nonce": bytes(16)}
    for bad in ({"nonce": bytes(15)}, {"nonce": bytes(65)}, {"nonce": "x" * 32}, {},
                {"nonce": bytes(32), "more": 1}):
        with pytest.raises(NatError):
            await echo(ctx, bad)


async def test_register_refuses_an_answer_from_another_registrar(reg: RegistrarSite) -> None:
    async with echo_node(A) as node:
        with pytest.raises(NatError) as info:
            # the request is addressed to B's id, so the registrar refuses it (to);
            # and the refusal is signed by REG, not B: the client refuses that
            await register(A, reg.url, B.public_key, ("127.0.0.1", node.port))
    assert info.value.code == "malformed"
    assert "registration reply" in info.value.message


async def test_register_without_a_registrar_is_unreachable() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    try:
        with pytest.raises(NatError) as info:
            await register(A, f"http://127.0.0.1:{port}", REG.public_key, ("127.0.0.1", 1))
    finally:
        sock.close()
    assert info.value.code == "unreachable"
    with pytest.raises(NatError):
        await register(A, "http://127.0.0.1:1", REG.public_key, ("localhost", 1))
