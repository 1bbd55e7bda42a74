"""Peer RPC dispatch, independent of HTTP.

A request is a signed envelope of kind ``rpc.<name>`` whose body is the argument
map, addressed (``to``) to the receiving node. The reply is a signed envelope of
kind ``reply`` addressed to the caller, body ``{"re": <request digest>,
"result": <map>}``; an error result is ``{"error": ..., "error_value": ...}``. Both
are signed in the ``envelope`` signature domain
(:data:`p2pmarket.core.domains.ENVELOPE`).
Every check (decoding, signature, address, replay guard, handler name, handler
arguments) happens before a handler runs; a refused request changes nothing.

A handler is ``async def h(ctx: CallContext, args: dict) -> dict``. It raises a
:class:`P2PMarketError` for expected failures.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from p2pmarket.core.clock import now_us
from p2pmarket.core.domains import ENVELOPE
from p2pmarket.core.errors import INTERNAL_ERROR, P2PMarketError, RemoteError
from p2pmarket.core.identity import Identity
from p2pmarket.core.wire import Envelope, ReplayGuard, WireError, decode, digest, seal

log = logging.getLogger(__name__)

RPC_PREFIX = "rpc."
REPLY_KIND = "reply"


@dataclass(frozen=True)
class CallContext:
    """Who called: the verified sender key and the request's timestamp; ``request`` is
    the verified request envelope itself (None when a handler is called directly), so
    a handler can keep the caller's signature (the auctioneer logs it for audits)."""

    sender: bytes
    ts: int
    request: Envelope | None = None

    @property
    def sender_id(self) -> bytes:
        from p2pmarket.core.identity import node_id_of

        return node_id_of(self.sender)


Handler = Callable[[CallContext, dict[str, Any]], Awaitable[dict[str, Any]]]


class RpcDispatcher:
    """Routes verified requests to handlers and signs every reply."""

    def __init__(self, identity: Identity, guard: ReplayGuard | None = None,
                 clock: Callable[[], int] = now_us) -> None:
        self.identity = identity
        self.guard = guard or ReplayGuard()
        self.clock = clock
        self.handlers: dict[str, Handler] = {}
        self.rejected = 0

    def register(self, name: str, handler: Handler) -> None:
        if name in self.handlers:
            raise ValueError(f"handler {name} registered twice")
        self.handlers[name] = handler

    def register_all(self, prefix: str, handlers: dict[str, Handler]) -> None:
        for name, handler in handlers.items():
            self.register(f"{prefix}.{name}", handler)

    async def dispatch(self, data: bytes) -> bytes:
        """Handle one request's bytes; always returns a signed reply's bytes."""
        re = digest(data)[:16]
        to: bytes | None = None
        try:
            env = decode(data, ENVELOPE)
            to = env.sender_id
            result = await self._run(env)
        except P2PMarketError as exc:
            self.rejected += 1
            result = exc.to_dict()
        except Exception:
            log.exception("RPC handler failed")
            result = dict(INTERNAL_ERROR)
        reply = seal(self.identity, ENVELOPE, REPLY_KIND, {"re": re, "result": result},
                     ts=self.clock(), to=to)
        return reply.encode()

    async def _run(self, env: Envelope) -> dict[str, Any]:
        if env.to != self.identity.node_id:
            raise WireError("message is addressed to another node",
                            env.to.hex() if env.to else None)
        if not env.kind.startswith(RPC_PREFIX):
            raise WireError("not an RPC request", env.kind)
        name = env.kind[len(RPC_PREFIX):]
        handler = self.handlers.get(name)
        if handler is None:
            raise WireError(f"unknown RPC {name!r}", name)
        if not isinstance(env.body, dict):
            raise WireError("RPC arguments must be a map", type(env.body).__name__)
        self.guard.accept(env.sender, env.ts, self.clock())
        result = await handler(CallContext(sender=env.sender, ts=env.ts, request=env), env.body)
        if not isinstance(result, dict):
            raise TypeError(f"handler {name} returned {type(result).__name__}")
        return result


def make_request(identity: Identity, to: bytes, name: str, args: dict[str, Any],
                 ts: int | None = None) -> bytes:
    return seal(identity, ENVELOPE, RPC_PREFIX + name, args, ts=now_us() if ts is None else ts,
                to=to).encode()


def open_reply(request: bytes, reply: bytes, identity: Identity,
               server_key: bytes | None) -> dict[str, Any]:
    """Check a reply belongs to ``request`` and comes from ``server_key``; raise on error."""
    env = decode(reply, ENVELOPE)
    if env.kind != REPLY_KIND:
        raise WireError("not a reply", env.kind)
    if server_key is not None and env.sender != server_key:
        raise WireError("reply signed by an unexpected key", env.sender.hex())
    body = env.body
    if (not isinstance(body, dict) or body.get("re") != digest(request)[:16]
            or not isinstance(body.get("result"), dict)):
        raise WireError("reply does not answer this request")
    if env.to is not None and env.to != identity.node_id:
        raise WireError("reply addressed to another node")
    result: dict[str, Any] = body["result"]
    if "error" in result:
        raise RemoteError(str(result["error"]), result.get("error_value"))
    return result
