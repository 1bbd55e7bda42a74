"""Peer RPC dispatch, independent of HTTP.

A request is a signed envelope of kind ``rpc.<name>`` whose body is the argument
map, addressed (``to``) to the receiving node. The reply is a signed envelope of
kind ``reply`` addressed to the caller, body ``{"re": <request digest>,
"result": <map>}`` plus ``"seen": [ip, port]``, the address the request came from as
the transport observed it (docs/design.md section 7: how a node behind NAT learns its
external address), when the transport knows it; an error result is
``{"error": ..., "error_value": ...}``. Both
are signed in the ``envelope`` signature domain
(:data:`p2pmarket.core.domains.ENVELOPE`).
Every check (size, decoding, signature, address, replay guard, handler name,
handler arguments) happens before a handler runs; a refused request changes nothing.

Sizes (:mod:`p2pmarket.api.bounds`): a request longer than its RPC's bound (given
when the RPC is registered; :data:`~p2pmarket.api.bounds.DEFAULT_REQUEST_BYTES`
otherwise) is refused before its signature is checked. Every reply is signed and
bounded, error or not: an error whose value cannot be sealed (a float, an ext type,
an odd map key, an integer beyond 64 bits) or is too large is sealed in the bounded
form of :func:`~p2pmarket.api.bounds.sealable_error`, and a result too large (or
unencodable) to seal becomes an error.

A handler is ``async def h(ctx: CallContext, args: dict) -> dict``. It raises a
:class:`P2PMarketError` for expected failures.

Monitoring: when :attr:`RpcDispatcher.observe` is set, every request handled is
reported to it as ``observe(name, outcome, seconds)``: the RPC's name (``unknown``
unless a registered one), the outcome (``ok``; ``error``: the handler raised a
:class:`P2PMarketError`; ``refused``: a check before the handler failed;
``internal``: the handler broke) and the time from the bytes to the signed reply.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from p2pmarket.api.bounds import (
    DEFAULT_REQUEST_BYTES,
    MAX_ERROR_BYTES,
    MAX_REQUEST_BYTES,
    MAX_RESULT_BYTES,
    sealable_error,
)
from p2pmarket.core.clock import now_us
from p2pmarket.core.domains import ENVELOPE
from p2pmarket.core.errors import (
    DISK_FULL,
    INTERNAL_ERROR,
    P2PMarketError,
    RemoteError,
    error_dict,
    is_disk_full,
)
from p2pmarket.core.identity import Identity
from p2pmarket.core.wire import (
    Envelope,
    ReplayGuard,
    WireError,
    decode,
    digest,
    pack,
    seal,
    unpack,
)

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
    peer: tuple[str, int] | None = None
    """The address (ip, port) the request came from, as the transport saw it; None
    when unknown (called directly, or through a relay)."""

    @property
    def sender_id(self) -> bytes:
        from p2pmarket.core.identity import node_id_of

        return node_id_of(self.sender)


Handler = Callable[[CallContext, dict[str, Any]], Awaitable[dict[str, Any]]]
Observer = Callable[[str, str, float], None]
"""``observe(rpc name, outcome, seconds)``: see the module docstring."""
UNKNOWN_RPC = "unknown"
# what packing a value can raise besides WireError (an int beyond 64 bits, ...)
_UNPACKABLE = (WireError, OverflowError, ValueError, TypeError, RecursionError)


class RpcDispatcher:
    """Routes verified requests to handlers and signs every reply."""

    def __init__(self, identity: Identity, guard: ReplayGuard | None = None,
                 clock: Callable[[], int] = now_us,
                 default_request_bytes: int = DEFAULT_REQUEST_BYTES) -> None:
        self.identity = identity
        self.guard = guard or ReplayGuard()
        self.clock = clock
        self.handlers: dict[str, Handler] = {}
        self.request_bytes: dict[str, int] = {}   # RPC name -> its bound, if not the default
        self.default_request_bytes = default_request_bytes
        self.rejected = 0
        self.observe: Observer | None = None
        """Told of every request handled (monitoring); see the module docstring."""

    def register(self, name: str, handler: Handler, max_bytes: int | None = None) -> None:
        """Route RPC ``name`` to ``handler``; its requests may be at most ``max_bytes``
        long (default: the dispatcher's ``default_request_bytes``)."""
        if name in self.handlers:
            raise ValueError(f"handler {name} registered twice")
        if max_bytes is not None and not 0 < max_bytes <= MAX_REQUEST_BYTES:
            raise ValueError(f"request bound of {name} must be 1 .. {MAX_REQUEST_BYTES}")
        self.handlers[name] = handler
        if max_bytes is not None:
            self.request_bytes[name] = max_bytes

    def register_all(self, prefix: str, handlers: dict[str, Handler],
                     limits: Mapping[str, int] | None = None) -> None:
        """Register ``handlers`` as ``<prefix>.<name>``, each bounded by ``limits[name]``
        where given."""
        for name, handler in handlers.items():
            self.register(f"{prefix}.{name}", handler, (limits or {}).get(name))

    def request_limit(self, name: str) -> int:
        """How long a request of RPC ``name`` may be."""
        return self.request_bytes.get(name, self.default_request_bytes)

    def max_request_bytes(self) -> int:
        """The longest request any registered RPC takes: what a transport need read."""
        return max([self.default_request_bytes, *self.request_bytes.values()])

    async def dispatch(self, data: bytes, peer: tuple[str, int] | None = None) -> bytes:
        """Handle one request's bytes that came from ``peer`` (as the transport observed
        it, if known); always returns a signed reply's bytes."""
        started = time.perf_counter()
        re = digest(data)[:16]
        to: bytes | None = None
        name, outcome = UNKNOWN_RPC, "refused"
        try:
            if len(data) > MAX_REQUEST_BYTES:
                raise WireError("request too large", {"size": len(data),
                                                      "max": MAX_REQUEST_BYTES})
            env = Envelope.from_wire(unpack(data, MAX_REQUEST_BYTES))
            if env.kind.startswith(RPC_PREFIX):
                limit = self.request_limit(env.kind[len(RPC_PREFIX):])
                if len(data) > limit:
                    raise WireError(f"request too large for {env.kind}",
                                    {"size": len(data), "max": limit})
            env.verify_signature(ENVELOPE)
            to = env.sender_id
            name, handler = self._admit(env)
            outcome = "error"   # from here on a P2PMarketError is the handler's
            result = await handler(CallContext(sender=env.sender, ts=env.ts, request=env,
                                               peer=peer), env.body)
            if not isinstance(result, dict):
                raise TypeError(f"handler {name} returned {type(result).__name__}")
            outcome = "ok"
        except P2PMarketError as exc:
            self.rejected += 1
            result = exc.to_dict()
        except Exception as exc:
            outcome = "internal"
            if is_disk_full(exc):   # a clear error for the caller; the handler's
                log.error("RPC handler failed: %s", exc)   # transaction rolled back
                result = dict(DISK_FULL)
            else:
                log.exception("RPC handler failed")
                result = dict(INTERNAL_ERROR)
        reply = self.reply(re, result, to, peer)
        if self.observe is not None:
            self.observe(name, outcome, time.perf_counter() - started)
        return reply

    def refusal(self, message: str, value: Any = None) -> bytes:
        """A signed error reply to a request that could not even be read (its body too
        long for the transport): addressed to no one, ``re`` empty."""
        self.rejected += 1
        if self.observe is not None:
            self.observe(UNKNOWN_RPC, "refused", 0.0)
        return self.reply(b"", error_dict(message, value), None)

    def reply(self, re: bytes, result: dict[str, Any], to: bytes | None,
              peer: tuple[str, int] | None = None) -> bytes:
        """The signed reply envelope's bytes for ``result``, bounded, telling the caller
        the address ``peer`` it was seen at: see the module docstring."""
        body: dict[str, Any] = {"re": re, "result": bounded_result(result)}
        if peer is not None:
            body["seen"] = [peer[0], peer[1]]
        return seal(self.identity, ENVELOPE, REPLY_KIND, body, ts=self.clock(),
                    to=to).encode()

    def _admit(self, env: Envelope) -> tuple[str, Handler]:
        """The RPC's name and handler, once the request passed every check left
        (address, kind, name, argument map, replay guard)."""
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
        return name, handler


def bounded_result(result: Any) -> dict[str, Any]:
    """``result`` if it can be sealed within the bounds; an error result in its
    bounded form (:func:`sealable_error`) if it cannot, or is over
    :data:`MAX_ERROR_BYTES`; an error instead of a result over
    :data:`MAX_RESULT_BYTES` or that cannot be encoded."""
    is_error = isinstance(result, dict) and "error" in result
    try:
        size = len(pack(result)) if isinstance(result, dict) else -1
    except _UNPACKABLE:
        size = -1
    if is_error:
        if 0 <= size <= MAX_ERROR_BYTES:
            return dict(result)
        bounded = sealable_error(result)
        if len(pack(bounded)) > MAX_ERROR_BYTES:   # cannot happen with sealable's caps
            bounded["error_value"] = None
        return bounded
    if 0 <= size <= MAX_RESULT_BYTES:
        return dict(result)
    if size < 0:
        log.error("an RPC result cannot be encoded")
        return dict(INTERNAL_ERROR)
    return error_dict("reply too large", {"size": size, "max": MAX_RESULT_BYTES})


def make_request(identity: Identity, to: bytes, name: str, args: dict[str, Any],
                 ts: int | None = None) -> bytes:
    return seal(identity, ENVELOPE, RPC_PREFIX + name, args, ts=now_us() if ts is None else ts,
                to=to).encode()


@dataclass(frozen=True)
class Reply:
    """An opened reply: the result map and the address the callee saw the request come
    from (None if it did not say, or said something malformed)."""

    result: dict[str, Any]
    seen: tuple[str, int] | None


def open_reply(request: bytes, reply: bytes, identity: Identity,
               server_key: bytes | None) -> dict[str, Any]:
    """Check a reply belongs to ``request`` and comes from ``server_key``; raise on error."""
    return open_reply_seen(request, reply, identity, server_key).result


def open_reply_seen(request: bytes, reply: bytes, identity: Identity,
                    server_key: bytes | None) -> Reply:
    """:func:`open_reply`, also giving the signed ``seen`` address."""
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
    return Reply(result, _seen(body.get("seen")))


def _seen(value: object) -> tuple[str, int] | None:
    if (isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)
            and 0 < len(value[0]) <= 64 and isinstance(value[1], int)
            and 0 <= value[1] < 65536):
        return value[0], value[1]
    return None
