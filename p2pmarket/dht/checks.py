"""The checks every signed DHT value shares (docs/design.md section 3). Pure: no I/O, no
clock.

:class:`DhtError` is the one refusal (its ``value`` is the short reason code that
storers count and the gateway answers); :func:`refusal` builds one. The rest check
what host records (:mod:`p2pmarket.dht.records`), offer entries
(:mod:`p2pmarket.dht.offers`) and evidence entries
(:mod:`p2pmarket.dht.evidence_records`) have in common: size and encoding
(:func:`open_envelope`, :func:`open_container` for the multi-writer sets
``{kind, key, entries}``, :func:`check_size`), fields (:func:`check_body`,
:func:`check_int`, :func:`check_str`), owner and signature (:func:`check_owner`,
:func:`check_signature`) and times (:func:`check_times`, :func:`check_expiry`).
All times are integer microseconds; ``now_us`` always comes in as an argument.
"""

from __future__ import annotations

from typing import Any

from p2pmarket.core.domains import DHT_RECORD
from p2pmarket.core.errors import P2PMarketError
from p2pmarket.core.identity import NODE_ID_SIZE
from p2pmarket.core.wire import Envelope, WireError, unpack

MAX_VALUE_BYTES = 7 * 1024
"""Largest stored value: rpcudp refuses datagrams over 8 KB, and a store RPC
wraps the value with its name, node id and key."""
MAX_TTL_US = 24 * 3600 * 1_000_000
"""A record may not claim to live longer than this from now (bounds a one-shot
publish that would otherwise never go away)."""
MAX_SKEW_US = 60 * 1_000_000
"""A record signed further than this in the future (by its ``ts``) is refused, so no
entry can stay "newest" by claiming a future time."""
MAX_INT = 2**63 - 1

INNOCENT = frozenset({"expired", "future", "too_long"})
"""Refusals an honest relay may cause (clocks differ, time passes)."""
MALICIOUS = frozenset({"bad_signature", "wrong_signer", "wrong_key", "malformed",
                       "wrong_kind", "too_large", "unsupported", "bad_type", "forged",
                       "implausible"})
"""Refusal reasons that an honest node never causes (expiry and seq races it may):
the sender is banned."""


class DhtError(P2PMarketError):
    """A refused DHT record or operation. ``value`` is a short reason code."""


def refusal(reason: str, message: str) -> DhtError:
    """The :class:`DhtError` to raise for ``reason`` (a short code) and ``message``."""
    return DhtError(message, reason)


def check_int(value: object, name: str, low: int = 0, high: int = MAX_INT) -> int:
    """``value`` if it is an integer (not a bool) in ``[low, high]``, else ``malformed``."""
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise refusal("malformed", f"{name} must be an integer in [{low}, {high}]")
    return value


def check_str(value: object, name: str, max_len: int) -> str:
    """``value`` if it is a string of 1..``max_len`` characters, else ``malformed``."""
    if not isinstance(value, str) or not 0 < len(value) <= max_len:
        raise refusal("malformed", f"{name} must be a string of 1..{max_len} characters")
    return value


def check_size(value: bytes) -> None:
    """``too_large`` past :data:`MAX_VALUE_BYTES`."""
    if len(value) > MAX_VALUE_BYTES:
        raise refusal("too_large", f"record larger than {MAX_VALUE_BYTES} bytes")


def open_envelope(value: object) -> Envelope:
    """The signed envelope a stored value encodes (signature not checked yet)."""
    if not isinstance(value, bytes):
        raise refusal("malformed", "record must be bytes")
    if len(value) > MAX_VALUE_BYTES:
        raise refusal("too_large", f"record larger than {MAX_VALUE_BYTES} bytes")
    try:
        return Envelope.from_wire(unpack(value, MAX_VALUE_BYTES))
    except WireError as exc:
        raise refusal("malformed", f"record is not an envelope: {exc.message}") from None


def check_body(env: Envelope, kind: str, fields: frozenset[str],
               optional: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The body of an unaddressed record of ``kind`` with exactly ``fields`` (plus any
    of ``optional``)."""
    if env.kind != kind:
        raise refusal("wrong_kind", f"expected a {kind} record, got {env.kind!r:.40}")
    if env.to is not None:
        raise refusal("malformed", "records are not addressed")
    body = env.body
    if not isinstance(body, dict) or not fields <= set(body) <= fields | optional:
        raise refusal("malformed", f"{kind} body fields wrong")
    return body


def check_owner(env: Envelope, body: dict[str, Any]) -> bytes:
    """The body's ``node_id``, which must be the signer's."""
    node_id = body["node_id"]
    if not isinstance(node_id, bytes) or len(node_id) != NODE_ID_SIZE:
        raise refusal("malformed", "node_id must be 20 bytes")
    if node_id != env.sender_id:
        raise refusal("wrong_signer", "record not signed by the node it names")
    return node_id


def check_times(env: Envelope, expires: object, now_us: int) -> int:
    """``expires``, checked (:func:`check_expiry`), of a record not signed in the future."""
    if env.ts > now_us + MAX_SKEW_US:
        raise refusal("future", "record signed in the future")
    return check_expiry(expires, now_us)


def check_expiry(expires: object, now_us: int, max_ttl_us: int = MAX_TTL_US,
                 what: str = "record") -> int:
    """``expires`` if it is after ``now_us`` and at most ``max_ttl_us`` beyond it."""
    expires = check_int(expires, "expires")
    if expires <= now_us:
        raise refusal("expired", f"{what} expired")
    if expires > now_us + max_ttl_us:
        raise refusal("too_long", f"{what} expiry too far in the future")
    return expires


def check_signature(env: Envelope) -> None:
    """``bad_signature`` unless the envelope's signature verifies as a DHT record's
    (:data:`~p2pmarket.core.domains.DHT_RECORD`: a lease or an RPC signed by the same
    key does not)."""
    try:
        env.verify_signature(DHT_RECORD)
    except WireError:
        raise refusal("bad_signature", "bad record signature") from None


def open_container(value: object, kind: str, what: str) -> tuple[Any, Any]:
    """The ``(key, entries)`` of a multi-writer set's container ``{kind, key, entries}``,
    after checking its type, size, encoding, fields and kind (not the key or entries)."""
    if not isinstance(value, bytes):
        raise refusal("malformed", f"{what} must be bytes")
    if len(value) > MAX_VALUE_BYTES:
        raise refusal("too_large", f"{what} larger than {MAX_VALUE_BYTES} bytes")
    try:
        doc = unpack(value, MAX_VALUE_BYTES)
    except WireError:
        raise refusal("malformed", f"{what} is not msgpack") from None
    if not isinstance(doc, dict) or set(doc) != {"kind", "key", "entries"}:
        raise refusal("malformed", f"{what} fields wrong")
    if doc["kind"] != kind:
        raise refusal("wrong_kind", f"not an {what}")
    return doc["key"], doc["entries"]
