"""Canonical msgpack, signed envelopes and the replay guard (docs/design.md section 2).

Canonical encoding: maps are written with their keys sorted by the keys' own
encoding, tuples become lists, floats are refused, so one value always gives the
same bytes and a signature over them is well defined.

A signed envelope is ``{v, kind, from, to, ts, body, sig}``, ``v`` = 2; ``sig`` is
the sender's signature, in a signature domain (:mod:`p2pmarket.core.domains`), of the
canonical encoding of all other fields. ``to`` (a node id or None) binds the message
to its receiver, ``ts`` (integer microseconds) feeds the replay guard. The domain is
not on the wire: who signs and who checks name it (:data:`~p2pmarket.core.domains.
ENVELOPE` for RPC requests, replies and upload authorizations,
:data:`~p2pmarket.core.domains.DHT_RECORD` for DHT records,
:data:`~p2pmarket.core.domains.LEASE` for leases), so an envelope signed for one
purpose does not verify for another. Version 1 envelopes (signed without a domain)
are refused.
"""

from __future__ import annotations

import hashlib
import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import msgpack

from p2pmarket.core.domains import Domain
from p2pmarket.core.errors import P2PMarketError
from p2pmarket.core.identity import (
    NODE_ID_SIZE,
    PUBLIC_KEY_SIZE,
    SIGNATURE_SIZE,
    Identity,
    node_id_of,
    verify,
)

VERSION = 2   # 2: signatures have a domain (issue 10); 1 signed the bare encoding
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
MAX_DEPTH = 32
DEFAULT_CLOCK_TOLERANCE_US = 60_000_000
DEFAULT_GUARD_SIZE = 64


class WireError(P2PMarketError):
    """Malformed, unsigned, misaddressed or replayed message."""


_SCALARS = frozenset({type(None), bool, int, str, bytes})
_local = threading.local()


def _canonical(obj: Any, depth: int = 0) -> Any:
    t = type(obj)
    if t in _SCALARS:
        return obj
    if depth > MAX_DEPTH:
        raise WireError("value nested too deeply", MAX_DEPTH)
    if t is list or t is tuple:
        return [x if type(x) in _SCALARS else _canonical(x, depth + 1) for x in obj]
    if t is dict:
        if all(type(k) is str for k in obj):
            # a str key's encoding is a header growing with the UTF-8 length, then the
            # bytes: ordering by (length, bytes) is ordering by the encoding
            return {k: _canonical(obj[k], depth + 1) for k in sorted(obj, key=_str_order)}
        items = [(_pack_key(k), k, _canonical(v, depth + 1)) for k, v in obj.items()]
        items.sort(key=lambda item: item[0])
        return {k: v for _, k, v in items}
    return _canonical_other(obj, depth)


def _str_order(key: str) -> tuple[int, bytes]:
    data = key.encode()
    return len(data), data


def _canonical_other(obj: Any, depth: int) -> Any:
    """Subclasses of the plain types, buffers, and what cannot be encoded."""
    if isinstance(obj, bool | int | str | bytes):
        return obj
    if isinstance(obj, float):
        raise WireError("floats are not allowed in signed content", obj)
    if isinstance(obj, list | tuple):
        return [_canonical(x, depth + 1) for x in obj]
    if isinstance(obj, dict):
        items = [(_pack_key(k), k, _canonical(v, depth + 1)) for k, v in obj.items()]
        items.sort(key=lambda item: item[0])
        return {k: v for _, k, v in items}
    if isinstance(obj, bytearray | memoryview):
        return bytes(obj)
    raise WireError(f"cannot encode {type(obj).__name__}", type(obj).__name__)


def _pack_key(key: Any) -> bytes:
    if not isinstance(key, str | bytes | int) or isinstance(key, bool):
        raise WireError("map keys must be str, bytes or int", repr(key)[:40])
    return pack_plain(key)


def pack_plain(obj: Any) -> bytes:
    """msgpack of ``obj`` exactly as given (maps in their own key order): canonical only
    for scalars and values built in canonical order. A reused packer per thread, several
    times cheaper than ``msgpack.packb`` for small values."""
    packer = getattr(_local, "packer", None)
    if packer is None:
        packer = _local.packer = msgpack.Packer(use_bin_type=True)
    return packer.pack(obj)  # type: ignore[no-any-return]


def pack(obj: Any) -> bytes:
    """Canonical msgpack encoding of ``obj``."""
    return pack_plain(_canonical(obj))


def unpack(data: bytes, max_bytes: int = MAX_MESSAGE_BYTES) -> Any:
    """Decode msgpack from the network, refusing oversize or malformed input."""
    if not isinstance(data, bytes | bytearray):
        raise WireError("message must be bytes", type(data).__name__)
    if len(data) > max_bytes:
        raise WireError("message too large", {"size": len(data), "max": max_bytes})
    try:
        return msgpack.unpackb(
            data, raw=False, strict_map_key=False, use_list=True)
    except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError,
            ValueError, TypeError) as exc:
        raise WireError("malformed msgpack", type(exc).__name__) from None


def digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


@dataclass(frozen=True)
class Envelope:
    """A signed message. ``sender`` is the ``from`` field: the signer's public key."""

    kind: str
    sender: bytes
    to: bytes | None
    ts: int
    body: Any
    sig: bytes
    v: int = VERSION
    # set by seal() only (not an init field: replace() drops it): the body's canonical
    # bytes, so encoding never walks the body again
    _body_bytes: bytes | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def sender_id(self) -> bytes:
        return node_id_of(self.sender)

    def signed_part(self) -> dict[str, Any]:
        return {"v": self.v, "kind": self.kind, "from": self.sender, "to": self.to,
                "ts": self.ts, "body": self.body}

    def to_wire(self) -> dict[str, Any]:
        doc = self.signed_part()
        doc["sig"] = self.sig
        return doc

    def encode(self) -> bytes:
        if self._body_bytes is None:
            return pack(self.to_wire())
        return _spliced(self.v, self.kind, self.sender, self.to, self.ts, self._body_bytes,
                        self.sig)

    def verify_signature(self, domain: Domain) -> None:
        """Raise :class:`WireError` unless ``sig`` is the sender's signature of this
        envelope in ``domain``."""
        if not verify(self.sender, domain, pack(self.signed_part()), self.sig):
            raise WireError(f"bad signature (for a {domain.tag})", self.kind)

    @classmethod
    def from_wire(cls, doc: Any) -> Envelope:
        """Check the shape of a decoded envelope (not its signature)."""
        if not isinstance(doc, dict):
            raise WireError("envelope must be a map", type(doc).__name__)
        expected = {"v", "kind", "from", "to", "ts", "body", "sig"}
        if set(doc) != expected:
            raise WireError("envelope fields wrong", sorted(map(str, doc)))
        v, kind, sender, to, ts, sig = (doc[k] for k in ("v", "kind", "from", "to", "ts", "sig"))
        if v != VERSION:
            raise WireError(f"unsupported envelope version (this node speaks version "
                            f"{VERSION}: signatures with a domain)", v)
        if not isinstance(kind, str) or not 0 < len(kind) <= 64:
            raise WireError("envelope kind must be a short string", None)
        if not isinstance(sender, bytes) or len(sender) != PUBLIC_KEY_SIZE:
            raise WireError("envelope 'from' must be a 32-byte public key", None)
        if to is not None and (not isinstance(to, bytes) or len(to) != NODE_ID_SIZE):
            raise WireError("envelope 'to' must be a 20-byte node id or null", None)
        if not isinstance(ts, int) or isinstance(ts, bool) or not 0 <= ts < 2**63:
            raise WireError("envelope 'ts' must be a non-negative integer", None)
        if not isinstance(sig, bytes) or len(sig) != SIGNATURE_SIZE:
            raise WireError("envelope 'sig' must be 64 bytes", None)
        return cls(kind=kind, sender=sender, to=to, ts=ts, body=doc["body"], sig=sig, v=v)


def seal(identity: Identity, domain: Domain, kind: str, body: Any, ts: int,
         to: bytes | None = None) -> Envelope:
    """Sign ``body`` as an envelope of ``kind`` from ``identity``, in ``domain``."""
    # Encode the body once: canonicalises it (tuples -> lists), checks it is encodable;
    # the signed bytes and the wire bytes splice these bytes in.
    body_bytes = pack(body)
    if not isinstance(kind, str) or (to is not None and not isinstance(to, bytes)) \
            or not isinstance(ts, int):
        raise WireError("bad envelope header", kind)
    sig = identity.sign(domain, _spliced(VERSION, kind, identity.public_key, to, ts,
                                         body_bytes))
    env = Envelope(kind=kind, sender=identity.public_key, to=to, ts=ts,
                   body=unpack(body_bytes), sig=sig)
    object.__setattr__(env, "_body_bytes", body_bytes)
    return env


# canonical key order of an envelope: v < to < ts < sig < body < from < kind
_K_V, _K_TO, _K_TS, _K_SIG, _K_BODY, _K_FROM, _K_KIND = (
    pack_plain(k) for k in ("v", "to", "ts", "sig", "body", "from", "kind"))


def _spliced(v: int, kind: str, sender: bytes, to: bytes | None, ts: int, body: bytes,
             sig: bytes | None = None) -> bytes:
    """``pack(signed_part)`` (``sig`` None) or ``pack(to_wire())`` from the body's
    canonical bytes (a test checks both against :func:`pack`)."""
    head = (b"\x86" if sig is None else b"\x87") + _K_V + pack_plain(v) + _K_TO \
        + pack_plain(to) + _K_TS + pack_plain(ts)
    if sig is not None:
        head += _K_SIG + pack_plain(sig)
    return head + _K_BODY + body + _K_FROM + pack_plain(sender) + _K_KIND + pack_plain(kind)


def decode(data: bytes, domain: Domain, max_bytes: int = MAX_MESSAGE_BYTES) -> Envelope:
    """Decode an envelope from the network and check its signature in ``domain``."""
    env = Envelope.from_wire(unpack(data, max_bytes))
    env.verify_signature(domain)
    return env


def open_signed(data: bytes | bytearray | Mapping[Any, Any] | Envelope, domain: Domain
                ) -> Envelope:
    """An envelope given as its bytes, its wire map or itself, with its signature checked
    in ``domain``; :class:`WireError` if it is not one."""
    if isinstance(data, bytes | bytearray):
        return decode(bytes(data), domain)
    env = data if isinstance(data, Envelope) else Envelope.from_wire(dict(data))
    env.verify_signature(domain)
    return env


class ReplayGuard:
    """Per-sender buffer of recent timestamps (Tycoon note 6/15/2007).

    A timestamp is accepted when it lies after the oldest one in the sender's
    buffer, is not already in it, and is at most ``tolerance_us`` ahead of our
    clock. State per sender is constant; duplicates are caught within the skew
    horizon. ``max_senders`` bounds the number of senders remembered; the least
    recently heard-from is forgotten first (a forgotten sender's old messages are
    then still refused by the clock tolerance check on the past side).
    """

    def __init__(self, size: int = DEFAULT_GUARD_SIZE,
                 tolerance_us: int = DEFAULT_CLOCK_TOLERANCE_US,
                 max_senders: int = 100_000) -> None:
        self.size = size
        self.tolerance_us = tolerance_us
        self.max_senders = max_senders
        self._seen: dict[bytes, deque[int]] = {}

    def check(self, sender: bytes, ts: int, now_us: int) -> None:
        """Raise :class:`WireError` if (sender, ts) is a replay or out of the window."""
        if ts > now_us + self.tolerance_us:
            raise WireError("timestamp too far in the future", {"ts": ts, "now": now_us})
        if ts < now_us - self.tolerance_us:
            raise WireError("timestamp too old", {"ts": ts, "now": now_us})
        buf = self._seen.get(sender)
        if buf is None:
            return
        if ts in buf:
            raise WireError("replayed message", ts)
        if len(buf) >= self.size and ts <= buf[0]:
            raise WireError("timestamp older than replay window", ts)

    def record(self, sender: bytes, ts: int) -> None:
        buf = self._seen.pop(sender, None)
        if buf is None:
            buf = deque()
            if len(self._seen) >= self.max_senders:
                del self._seen[next(iter(self._seen))]
        # keep the buffer sorted so buf[0] is the oldest
        if not buf or ts > buf[-1]:
            buf.append(ts)
        else:
            items = sorted([*buf, ts])
            buf = deque(items)
        while len(buf) > self.size:
            buf.popleft()
        self._seen[sender] = buf

    def accept(self, sender: bytes, ts: int, now_us: int) -> None:
        self.check(sender, ts, now_us)
        self.record(sender, ts)
