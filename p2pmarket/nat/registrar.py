"""The registrar: registration by callback, on a public node's peer app (docs/design.md
section 7, seed note of 9/12/2007, with libp2p AutoNAT v2's defences).

``GET /nat/register`` is a websocket; one session registers one node. Messages are
binary msgpack (:mod:`p2pmarket.core.wire`); a text message is an error.

1. The node sends a signed envelope (domain :data:`~p2pmarket.core.domains.ENVELOPE`),
   kind ``nat.register``, ``to`` the registrar's node id, ``ts`` now, body
   ``{addr: [host, port]}``: its self-known address (an IP literal and a port), at
   most :data:`MAX_REGISTER_BYTES`. The registrar checks it whole (signature,
   addressee, :class:`~p2pmarket.core.wire.ReplayGuard`, fields) and admits it under
   :class:`~p2pmarket.nat.limits.DialLimiter` on the observed IP (every session
   counts, whatever comes of it).
2. If the claimed host is not the observed IP and the registrar may dial it
   (:func:`~p2pmarket.nat.addresses.may_dial`), it sends ``{need_data: N}``
   (:func:`~p2pmarket.nat.limits.dial_data_needed`); the node sends N bytes in binary
   messages of 1..:data:`~p2pmarket.nat.limits.MAX_DIAL_CHUNK` bytes within
   ``data_timeout_s``, or declines with one empty message (the self-known address is
   then not dialled: its outcome is ``none``). A larger message, more than N bytes in
   all, or a text message is an error.
3. After a short random delay (``delay_s``) the registrar calls the node back at the
   external address (observed IP, claimed port) and, if different and paid for, at the
   self-known one (claimed host and port); the two at once, each on a fresh TCP
   connection (ephemeral source port, never our listening port). A call back is the
   node's peer RPC ``nat.echo`` with ``{nonce: <32 random bytes>}``: ``ok`` if the
   reply is signed by the requester's key and echoes the nonce, ``failed`` if any
   other answer came (an error reply, another key, another nonce, not HTTP 200,
   garbage, or a refused connection: the address answered with a TCP reset, so
   something is there, but not this node, as at a NAT router's own address),
   ``none`` if nothing answered (unreachable, or silent until ``dial_timeout_s``).
4. :func:`~p2pmarket.nat.table.decide` decides; an accepted address is claimed in the
   :class:`~p2pmarket.nat.registry.Registry` (an unverified claim on an address a
   verified registration of another node holds is refused: code ``held``).
5. The registrar sends a signed envelope (ENVELOPE), kind ``nat.registered``, ``to``
   the requester (null when the request could not be read), body ``{re: <first 16
   bytes of SHA-256 of the request>, attestation: <bytes>
   (:mod:`p2pmarket.nat.attestation`), seen: [ip, port], external: <callback>,
   self: <callback>}``, or on refusal ``{re, error, error_value, code}`` (``re``
   absent when no request arrived), and closes.

Refusal codes: ``malformed``, ``signature``, ``kind``, ``to``, ``replay``,
``peer_rate``, ``total_rate``, ``peer_concurrency``, ``chunk`` (a dial data message
over the limit), ``too_much`` (more dial data than asked), ``timeout``, ``closed``,
``rejected`` (the table's reject), ``held``.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import Counter
from typing import Any

import aiohttp
from aiohttp import web

from p2pmarket.api.bounds import sealable
from p2pmarket.api.client import MSGPACK
from p2pmarket.api.rpc import make_request, open_reply
from p2pmarket.api.server import transport_peer
from p2pmarket.core.clock import Clock, Monotonic, now_us
from p2pmarket.core.domains import ENVELOPE
from p2pmarket.core.errors import INTERNAL_ERROR, P2PMarketError
from p2pmarket.core.identity import Identity, node_id_of
from p2pmarket.core.streams import read_at_most
from p2pmarket.core.urls import http_url
from p2pmarket.core.wire import Envelope, ReplayGuard, WireError, digest, pack, seal, unpack
from p2pmarket.nat.addresses import (
    Address,
    canonical_ip,
    may_dial,
    parse_address,
    rate_key,
)
from p2pmarket.nat.attestation import ATTESTATION_TTL_US, make_attestation
from p2pmarket.nat.errors import NatError
from p2pmarket.nat.limits import (
    DEFAULT_LIMITS,
    MAX_DIAL_CHUNK,
    DialLimiter,
    DialLimits,
    dial_data_needed,
)
from p2pmarket.nat.registry import Registry
from p2pmarket.nat.table import Callback, decide

log = logging.getLogger(__name__)

REGISTER_PATH = "/nat/register"
REGISTER_KIND = "nat.register"
REGISTERED_KIND = "nat.registered"
ECHO_RPC = "nat.echo"
NONCE_BYTES = 32
MAX_REGISTER_BYTES = 1024
MAX_WS_MESSAGE = 64 * 1024       # aiohttp closes (1009) on a larger message
MAX_ECHO_REPLY_BYTES = 16 * 1024
CLOSE_TIMEOUT_S = 2.0            # how long closing waits for the node's close frame


class Registrar:
    """The registrar service; mount :meth:`routes` on the peer app, :meth:`close` on
    shutdown."""

    def __init__(self, identity: Identity, *, registry: Registry | None = None,
                 limits: DialLimits = DEFAULT_LIMITS, dial_timeout_s: float = 10.0,
                 clock: Clock = now_us, monotonic: Monotonic = time.monotonic,
                 delay_s: tuple[float, float] = (0.05, 0.25), hello_timeout_s: float = 10.0,
                 data_timeout_s: float = 30.0) -> None:
        self.identity = identity
        self.registry = registry if registry is not None else Registry(ATTESTATION_TTL_US)
        self.limiter = DialLimiter(limits)
        self.guard = ReplayGuard()
        self.dial_timeout_s = dial_timeout_s
        self.clock = clock
        self.monotonic = monotonic
        self.delay_s = delay_s
        self.hello_timeout_s = hello_timeout_s
        self.data_timeout_s = data_timeout_s
        self.counts: Counter[str] = Counter(dict.fromkeys(
            ("sessions", "registered", "refused", "dial_ok", "dial_failed", "dial_none",
             "dial_data_bytes"), 0))
        self._rng = secrets.SystemRandom()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    def routes(self) -> list[web.RouteDef]:
        return [web.get(REGISTER_PATH, self._handle)]

    def status(self) -> dict[str, Any]:
        """Counters: sessions, registered, refused (and per refusal code), dials per
        outcome, dial data bytes; sessions running and addresses in the registry."""
        return {**dict(self.counts), "running": len(self._tasks), "registry": len(self.registry)}

    async def idle(self) -> None:
        """Wait until the sessions running now have ended."""
        if self._tasks:
            await asyncio.wait(set(self._tasks))

    async def close(self) -> None:
        """Refuse new sessions and end the running ones."""
        self._closed = True
        tasks = set(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if self._closed:
            return web.Response(status=503, text="registrar closed")
        ws = web.WebSocketResponse(max_msg_size=MAX_WS_MESSAGE, compress=False,
                                   timeout=CLOSE_TIMEOUT_S)
        if not ws.can_prepare(request).ok:
            return web.Response(status=400, text="a websocket upgrade is expected")
        await ws.prepare(request)
        task = asyncio.create_task(self._session(ws, transport_peer(request)))
        self._tasks.add(task)
        try:
            await asyncio.wait({task})
        except asyncio.CancelledError:
            task.cancel()
            raise
        finally:
            self._tasks.discard(task)
        return ws

    async def _session(self, ws: web.WebSocketResponse, peer: Address | None) -> None:
        self.counts["sessions"] += 1
        state: dict[str, bytes] = {}      # "re": the request's digest, "to": requester id
        admitted: str | None = None
        try:
            try:
                if peer is None:
                    raise NatError("cannot tell where the registration came from",
                                   code="malformed")
                seen = canonical_ip(peer[0]), peer[1]
                key = rate_key(seen[0])
                reason = self.limiter.admit(key, self.monotonic())
                if reason is not None:
                    raise NatError(f"too many registrations ({reason})", key, code=reason)
                admitted = key
                body = await self._register(ws, seen, state)
                self.counts["registered"] += 1
            except NatError as exc:
                self.counts["refused"] += 1
                self.counts[f"refused_{exc.code}"] += 1
                body = {"error": exc.message, "error_value": sealable(exc.value),
                        "code": exc.code}
            except (ConnectionError, aiohttp.ClientError):
                raise
            except Exception:
                log.exception("registration session failed")
                self.counts["internal_errors"] += 1
                body = {**INTERNAL_ERROR, "code": "internal"}
            if "re" in state:
                body["re"] = state["re"]
            reply = seal(self.identity, ENVELOPE, REGISTERED_KIND, body, ts=self.clock(),
                         to=state.get("to"))
            if not ws.closed:
                await ws.send_bytes(reply.encode())
        except (ConnectionError, RuntimeError, aiohttp.ClientError):
            self.counts["lost"] += 1       # the node went away before the answer
        finally:
            if admitted is not None:
                self.limiter.done(admitted)
            await ws.close()

    async def _register(self, ws: web.WebSocketResponse, seen: Address,
                        state: dict[str, bytes]) -> dict[str, Any]:
        try:
            data = await _receive(ws, self.hello_timeout_s)
        except TimeoutError:
            raise NatError("no registration request in time", self.hello_timeout_s,
                           code="timeout") from None
        state["re"] = digest(data)[:16]
        env = self._open_request(data)
        state["to"] = node_id = env.sender_id
        host, port = parse_address(env.body["addr"])
        self.guard.record(env.sender, env.ts)      # checked in _open_request
        external, self_known = (seen[0], port), (host, port)
        same = external == self_known
        dial_self = not same and may_dial(seen[0], host)
        if dial_self:
            need = dial_data_needed(secrets.randbits(32))
            await ws.send_bytes(pack({"need_data": need}))
            dial_self = await self._dial_data(ws, need)
        low, high = self.delay_s
        if high > 0:
            await asyncio.sleep(self._rng.uniform(low, high))
        if same:
            ext = own = await self._dial(external, env.sender)
        elif dial_self:
            ext, own = await asyncio.gather(self._dial(external, env.sender),
                                            self._dial(self_known, env.sender))
        else:
            ext, own = await self._dial(external, env.sender), Callback.NONE
        outcomes = {"external": str(ext), "self": str(own)}
        decision = decide(ext, own, same)
        if decision is None:
            raise NatError("registration rejected: the callbacks did not verify", outcomes,
                           code="rejected")
        addr = external if decision.accept == "external" else self_known
        now = self.clock()
        if not self.registry.claim(addr[0], addr[1], node_id, decision.verified, now):
            raise NatError("address held by a verified registration of another node",
                           {"addr": list(addr), **outcomes}, code="held")
        attestation = make_attestation(
            self.identity, node_id=node_id, host=addr[0], port=addr[1],
            reach_class=decision.reach_class, verified=decision.verified, ts=now)
        return {"attestation": attestation, "seen": list(seen), **outcomes}

    def _open_request(self, data: bytes) -> Envelope:
        """The registration request in ``data``, checked but for the replay guard."""
        try:
            env = Envelope.from_wire(unpack(data, MAX_REGISTER_BYTES))
        except WireError as exc:
            raise NatError(f"not a registration request: {exc.message}",
                           sealable(exc.value)) from None
        try:
            env.verify_signature(ENVELOPE)
        except WireError:
            raise NatError("bad signature on the registration request", None,
                           code="signature") from None
        if env.kind != REGISTER_KIND:
            raise NatError("not a registration request", env.kind, code="kind")
        if env.to != self.identity.node_id:
            raise NatError("registration addressed to another node",
                           env.to.hex() if env.to else None, code="to")
        if not isinstance(env.body, dict) or set(env.body) != {"addr"}:
            raise NatError("registration body must be {addr: [host, port]}", None)
        try:
            self.guard.check(env.sender, env.ts, self.clock())
        except WireError as exc:
            raise NatError(exc.message, sealable(exc.value), code="replay") from None
        return env

    async def _dial_data(self, ws: web.WebSocketResponse, need: int) -> bool:
        """Read ``need`` bytes of dial data; False if the node declined."""
        got = 0
        try:
            async with asyncio.timeout(self.data_timeout_s):
                while got < need:
                    chunk = await _receive(ws, None)
                    if not chunk:
                        if got == 0:
                            return False
                        raise NatError("empty dial data message", got)
                    if len(chunk) > MAX_DIAL_CHUNK:
                        raise NatError("dial data message too long",
                                       {"size": len(chunk), "max": MAX_DIAL_CHUNK},
                                       code="chunk")
                    got += len(chunk)
                    if got > need:
                        raise NatError("more dial data than asked",
                                       {"got": got, "need": need}, code="too_much")
        except TimeoutError:
            raise NatError("dial data not sent in time", {"got": got, "need": need},
                           code="timeout") from None
        finally:
            self.counts["dial_data_bytes"] += got
        return True

    async def _dial(self, address: Address, key: bytes) -> Callback:
        outcome = await self._call_back(address, key)
        self.counts[f"dial_{outcome}"] += 1
        return outcome

    async def _call_back(self, address: Address, key: bytes) -> Callback:
        """Call ``nat.echo`` at ``address`` on a fresh connection; see the docstring."""
        nonce = secrets.token_bytes(NONCE_BYTES)
        request = make_request(self.identity, node_id_of(key), ECHO_RPC, {"nonce": nonce},
                               ts=self.clock())
        timeout = aiohttp.ClientTimeout(total=self.dial_timeout_s)
        connector = aiohttp.TCPConnector(force_close=True)
        try:
            async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session, \
                    session.post(http_url(*address) + "/rpc", data=request,
                                 headers={"Content-Type": MSGPACK}) as resp:
                if resp.status != 200:
                    return Callback.FAILED
                reply = await read_at_most(resp.content, MAX_ECHO_REPLY_BYTES,
                                           resp.content_length)
        except aiohttp.ClientConnectorError as exc:
            # refused: the address answered (a TCP reset) but holds no node of this key
            # (e.g. a NAT router's own address); unreachable or silent: no connection
            refused = isinstance(exc.os_error, ConnectionRefusedError)
            return Callback.FAILED if refused else Callback.NONE
        except TimeoutError:
            return Callback.NONE
        except (aiohttp.ClientError, OSError, ValueError):
            return Callback.FAILED
        if reply is None:
            return Callback.FAILED
        try:
            result = open_reply(request, reply, self.identity, key)
        except P2PMarketError:
            return Callback.FAILED
        return Callback.OK if result == {"nonce": nonce} else Callback.FAILED


async def _receive(ws: web.WebSocketResponse, timeout_s: float | None) -> bytes:
    """The next binary message's bytes; :class:`NatError` for anything else."""
    msg = await ws.receive(timeout=timeout_s)
    if msg.type == aiohttp.WSMsgType.BINARY:
        data: bytes = msg.data
        return data
    if msg.type == aiohttp.WSMsgType.TEXT:
        raise NatError("messages must be binary", None)
    if msg.type == aiohttp.WSMsgType.ERROR:
        raise NatError("bad websocket message", str(msg.data)[:200])
    raise NatError("the node closed the session", None, code="closed")


__all__ = ["ECHO_RPC", "MAX_REGISTER_BYTES", "MAX_WS_MESSAGE", "NONCE_BYTES",
           "REGISTERED_KIND", "REGISTER_KIND", "REGISTER_PATH", "Registrar"]
