"""The node's two HTTP faces, both aiohttp.

* Peer API (public address): ``POST /rpc`` takes a signed msgpack envelope and
  returns a signed reply (see :mod:`p2pmarket.api.rpc`), whatever it was sent: a
  body longer than the largest bound of the RPCs registered (at most
  :data:`~p2pmarket.api.bounds.MAX_REQUEST_BYTES`) gets a signed error too, and is
  not read further; so does one whose body takes longer than
  :data:`BODY_TIMEOUT_S` to arrive; ``GET /health``.
* Control API (127.0.0.1 only): ``POST /v1/<name>`` with a JSON body, guarded by
  the bearer token in ``<data dir>/api.token``; the CLI talks to it. Error values
  are bounded like the peer API's (:func:`~p2pmarket.api.bounds.sealable`), and a
  result that cannot be written as JSON is an internal error, never a traceback.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from p2pmarket.api.bounds import MAX_ERROR_BYTES, MAX_REQUEST_BYTES, sealable_error
from p2pmarket.api.rpc import RpcDispatcher
from p2pmarket.core.errors import INTERNAL_ERROR, P2PMarketError, error_dict
from p2pmarket.core.files import write_atomic
from p2pmarket.core.streams import read_at_most

log = logging.getLogger(__name__)

MAX_RPC_BYTES = MAX_REQUEST_BYTES
# what the peer app's other routes may read whole (request.read(): a gateway store of
# a 7 KiB DHT value); /rpc reads up to its own bound, uploads stream
MAX_ROUTE_BYTES = 64 * 1024
BODY_TIMEOUT_S = 60.0   # a peer trickling its request body is cut off after this
MAX_CONTROL_BYTES = 1024 * 1024
ControlHandler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


def jsonable(value: Any) -> Any:
    """Turn bytes into hex (recursively) so a result can travel as JSON."""
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {str(k.hex() if isinstance(k, bytes) else k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def peer_app(dispatcher: RpcDispatcher, extra_routes: list[web.RouteDef] | None = None,
             body_timeout_s: float = BODY_TIMEOUT_S) -> web.Application:
    """The peer API; a request body must arrive within ``body_timeout_s``."""
    app = web.Application(client_max_size=MAX_ROUTE_BYTES)

    async def rpc(request: web.Request) -> web.Response:
        limit = dispatcher.max_request_bytes()
        try:
            data = await asyncio.wait_for(
                read_at_most(request.content, limit, request.content_length), body_timeout_s)
        except TimeoutError:
            reply = dispatcher.refusal("request body too slow", {"timeout_s": body_timeout_s})
        else:
            if data is None:
                reply = dispatcher.refusal("request too large", {"max": limit})
            else:
                reply = await dispatcher.dispatch(data, observed(request))
        return web.Response(body=reply, content_type="application/msgpack")

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "node_id": dispatcher.identity.node_id.hex()})

    app.add_routes([web.post("/rpc", rpc), web.get("/health", health), *(extra_routes or [])])
    return app


RELAYED_FROM = "X-P2PM-Relayed-From"
"""Set by a relayed host's relay client when it replays a circuit on loopback: where
the relay saw the caller (docs/design.md section 7). The relay drops any copy a caller
sends, and it is believed only on a loopback connection."""


def transport_peer(request: web.Request) -> tuple[str, int] | None:
    """The (ip, port) a request's TCP connection came from; None if unknown.
    IPv4-mapped IPv6 addresses are given as IPv4."""
    peer = request.transport.get_extra_info("peername") if request.transport else None
    if not isinstance(peer, tuple) or len(peer) < 2:
        return None
    return str(peer[0]).removeprefix("::ffff:"), int(peer[1])


def observed(request: web.Request) -> tuple[str, int] | None:
    """Where a peer RPC came from: :func:`transport_peer`, or for a request replayed from
    a relay circuit on loopback, where the relay saw it come from. (The relay and the
    registrar use :func:`transport_peer`: they believe no header.)"""
    peer = transport_peer(request)
    if peer is None:
        return None
    host = peer[0]
    relayed = request.headers.get(RELAYED_FROM)
    if relayed is not None and host in ("127.0.0.1", "::1"):
        ip, _, port = relayed.rpartition(":")
        if ip and port.isdigit() and int(port) < 65536 and len(ip) <= 45:
            return ip.strip("[]"), int(port)
        return None
    return peer


def json_reply(result: dict[str, Any], status: int) -> web.Response:
    """``result`` as JSON (bytes as hex). An error whose value JSON cannot carry, or
    that is over :data:`~p2pmarket.api.bounds.MAX_ERROR_BYTES`, in its bounded form
    (:func:`~p2pmarket.api.bounds.sealable_error`); a result that is no JSON, an
    internal error."""
    is_error = "error" in result
    try:
        text = json.dumps(jsonable(result))
    except (TypeError, ValueError, RecursionError):
        text = None
    if is_error and (text is None or len(text) > MAX_ERROR_BYTES):
        text = json.dumps(jsonable(sealable_error(result)))
    if text is None:
        log.error("a control result cannot be written as JSON")
        return web.json_response(INTERNAL_ERROR, status=500)
    return web.Response(text=text, status=status, content_type="application/json")


def load_or_create_token(path: Path) -> str:
    if path.exists():
        return path.read_text().strip()
    token = secrets.token_urlsafe(32)
    write_atomic(path, token.encode() + b"\n", mode=0o600)
    return token


def control_app(token: str, handlers: dict[str, ControlHandler]) -> web.Application:
    app = web.Application(client_max_size=MAX_CONTROL_BYTES)

    async def call(request: web.Request) -> web.Response:
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            return web.json_response(error_dict("bad or missing control token"), status=401)
        name = request.match_info["name"]
        handler = handlers.get(name)
        if handler is None:
            return web.json_response(error_dict(f"unknown control call {name!r}", name),
                                     status=404)
        try:
            raw = await request.read()
            args = json.loads(raw) if raw else {}
            if not isinstance(args, dict):
                raise P2PMarketError("control arguments must be a JSON object")
            result = await handler(args)
        except web.HTTPRequestEntityTooLarge:
            return web.json_response(error_dict("control body too large",
                                                MAX_CONTROL_BYTES), status=413)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            return web.json_response(error_dict("control body is not JSON"), status=400)
        except P2PMarketError as exc:
            return json_reply(exc.to_dict(), 400)
        except Exception:
            log.exception("control call %s failed", name)
            return web.json_response(INTERNAL_ERROR, status=500)
        return json_reply(result, 200)

    app.add_routes([web.post("/v1/{name}", call)])
    return app


class Site:
    """A running aiohttp application on one TCP address."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.runner = web.AppRunner(app, access_log=None)
        self.port = 0

    async def start(self, host: str, port: int) -> int:
        await self.runner.setup()
        site = web.TCPSite(self.runner, host, port, reuse_address=True)
        await site.start()
        addresses = self.runner.addresses   # the bound socket names, e.g. for port 0
        self.port = int(addresses[0][1]) if addresses else port
        return self.port

    async def stop(self) -> None:
        await self.runner.cleanup()
