"""The node's side of registration by callback (docs/design.md section 7): the
``nat.echo`` RPC a registrar calls back, and :func:`register`, one session with one
registrar (the protocol is in :mod:`p2pmarket.nat.registrar`).

``nat.echo`` takes ``{nonce: <16..64 bytes>}`` and answers ``{nonce: <the same>}``;
the proof is the reply's signature by the node's key (the dispatcher signs every
reply). Register it as ``dispatcher.register_all("nat", echo_handlers(identity))``.

:func:`register` sends the signed request, pays the dial data the registrar asks for
(random bytes, :data:`~p2pmarket.nat.limits.MAX_DIAL_CHUNK` a message; or declines
it with ``send_dial_data=False``), and checks the answer: an envelope of kind
``nat.registered`` signed by ``registrar_key``, for this request (``re``), carrying
an attestation for this node from that registrar, fresh. A refusal is raised as a
:class:`~p2pmarket.nat.errors.NatError` with the registrar's message, value and code;
no answer is code ``unreachable`` or ``timeout``; a bad answer ``malformed``.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from p2pmarket.api.rpc import CallContext, Handler
from p2pmarket.core.clock import Clock, now_us
from p2pmarket.core.domains import ENVELOPE
from p2pmarket.core.identity import Identity, node_id_of
from p2pmarket.core.wire import WireError, decode, digest, seal, unpack
from p2pmarket.nat.addresses import Address, canonical_ip, check_port, parse_address
from p2pmarket.nat.attestation import Attestation, open_attestation
from p2pmarket.nat.errors import NatError
from p2pmarket.nat.limits import DIAL_DATA_MAX, DIAL_DATA_MIN, MAX_DIAL_CHUNK
from p2pmarket.nat.registrar import (
    MAX_WS_MESSAGE,
    REGISTER_KIND,
    REGISTER_PATH,
    REGISTERED_KIND,
)
from p2pmarket.nat.table import Callback

NONCE_MIN, NONCE_MAX = 16, 64
MAX_CODE_CHARS = 32
_CALLBACKS = frozenset(c.value for c in Callback)


def echo_handlers(identity: Identity) -> dict[str, Handler]:
    """``{"echo": ...}``: the handler a registrar calls back (see the module docstring).
    ``identity`` is the node's: the dispatcher it is registered with signs as it."""

    async def echo(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        nonce = args.get("nonce")
        if set(args) != {"nonce"} or not isinstance(nonce, bytes) \
                or not NONCE_MIN <= len(nonce) <= NONCE_MAX:
            raise NatError(f"echo takes {{nonce: {NONCE_MIN}..{NONCE_MAX} bytes}}", None)
        return {"nonce": nonce}

    del identity   # the proof is the dispatcher's signature
    return {"echo": echo}


@dataclass(frozen=True)
class Registration:
    """A registrar's answer: the opened attestation and its bytes (to publish in the
    host record's ``reach``), the address the registrar saw us at, and how its two
    callbacks ended."""

    attestation: Attestation
    raw: bytes
    seen: Address
    external: Callback
    self_known: Callback


async def register(identity: Identity, registrar_url: str, registrar_key: bytes,
                   self_known: tuple[str, int], *, proxy: str | None = None,
                   timeout_s: float = 20.0,
                   rng: Callable[[int], bytes] = secrets.token_bytes,
                   send_dial_data: bool = True, clock: Clock = now_us) -> Registration:
    """Register ``identity`` at ``self_known`` with the registrar at ``registrar_url``
    (its peer API's base URL) whose key is ``registrar_key``; see the module docstring.
    ``rng(n)`` gives the ``n`` bytes of dial data."""
    addr = [canonical_ip(self_known[0]), check_port(self_known[1])]
    request = seal(identity, ENVELOPE, REGISTER_KIND, {"addr": addr}, ts=clock(),
                   to=node_id_of(registrar_key)).encode()
    url = registrar_url.rstrip("/") + REGISTER_PATH
    try:
        async with asyncio.timeout(timeout_s), aiohttp.ClientSession() as session, \
                session.ws_connect(url, proxy=proxy, max_msg_size=MAX_WS_MESSAGE) as ws:
            await ws.send_bytes(request)
            data = await _receive(ws)
            asked = _need_data(data)
            if asked is not None:
                await _pay(ws, asked, rng, send_dial_data)
                data = await _receive(ws)
    except TimeoutError:
        raise NatError("registration timed out", timeout_s, code="timeout") from None
    except (aiohttp.ClientError, OSError) as exc:
        raise NatError(f"cannot reach the registrar: {type(exc).__name__}", registrar_url,
                       code="unreachable") from None
    return _answer(identity, request, data, registrar_key, clock())


async def _receive(ws: aiohttp.ClientWebSocketResponse) -> bytes:
    msg = await ws.receive()
    if msg.type != aiohttp.WSMsgType.BINARY:
        raise NatError("the registrar closed the session without an answer", None,
                       code="unreachable")
    data: bytes = msg.data
    return data


def _need_data(data: bytes) -> int | None:
    """N if ``data`` is the registrar's ``{need_data: N}``, None if it is something else."""
    try:
        doc = unpack(data, MAX_WS_MESSAGE)
    except WireError:
        return None
    if not isinstance(doc, dict) or set(doc) != {"need_data"}:
        return None
    need = doc["need_data"]
    if not isinstance(need, int) or isinstance(need, bool) \
            or not DIAL_DATA_MIN <= need <= DIAL_DATA_MAX:
        raise NatError("the registrar asked for an implausible amount of dial data",
                       need if isinstance(need, int) else None)
    return need


async def _pay(ws: aiohttp.ClientWebSocketResponse, need: int,
               rng: Callable[[int], bytes], send: bool) -> None:
    if not send:
        await ws.send_bytes(b"")
        return
    data = rng(need)
    for start in range(0, need, MAX_DIAL_CHUNK):
        await ws.send_bytes(data[start:start + MAX_DIAL_CHUNK])


def _answer(identity: Identity, request: bytes, data: bytes, registrar_key: bytes,
            now: int) -> Registration:
    try:
        env = decode(data, ENVELOPE, MAX_WS_MESSAGE)
    except WireError as exc:
        raise NatError(f"bad answer from the registrar: {exc.message}", None) from None
    body = env.body
    if env.kind != REGISTERED_KIND or env.sender != registrar_key \
            or env.to not in (identity.node_id, None) or not isinstance(body, dict):
        raise NatError("the answer is not the registrar's registration reply", env.kind)
    re = body.get("re")
    if re is not None and re != digest(request)[:16]:
        raise NatError("the registrar's answer is for another request", None)
    if "error" in body:
        code = body.get("code")
        raise NatError(str(body["error"])[:512], body.get("error_value"),
                       code=code if isinstance(code, str) and 0 < len(code) <= MAX_CODE_CHARS
                       else "refused")
    if set(body) != {"re", "attestation", "seen", "external", "self"} \
            or env.to != identity.node_id:
        raise NatError("the registrar's answer has the wrong fields", sorted(map(str, body)))
    raw = body["attestation"]
    attestation = open_attestation(raw, node_id=identity.node_id, now=now)
    if attestation.registrar != registrar_key:
        raise NatError("the attestation is not the registrar's", None)
    external, own = body["external"], body["self"]
    if not isinstance(external, str) or not isinstance(own, str) \
            or external not in _CALLBACKS or own not in _CALLBACKS:
        raise NatError("the registrar's callback outcomes are malformed", None)
    return Registration(attestation=attestation, raw=raw, seen=parse_address(body["seen"]),
                        external=Callback(external), self_known=Callback(own))


__all__ = ["NONCE_MAX", "NONCE_MIN", "Registration", "echo_handlers", "register"]
