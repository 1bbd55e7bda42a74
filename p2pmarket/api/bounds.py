"""How big a peer's request and our reply may be, and error values cut down to a
form that can always be sealed (docs/design.md section 2).

- A request is at most :data:`MAX_REQUEST_BYTES` on the wire (the HTTP body), and
  at most its RPC's own bound (:data:`DEFAULT_REQUEST_BYTES` unless the room
  registers another); the dispatcher checks both before the signature, so nothing
  of an oversize request is verified, run, logged or stored.
- A reply's result is at most :data:`MAX_RESULT_BYTES` encoded, an error result at
  most :data:`MAX_ERROR_BYTES`; so every reply envelope fits
  :data:`p2pmarket.core.wire.MAX_MESSAGE_BYTES`, which is what a caller reads.
- :func:`sealable` turns any value into one canonical msgpack can encode (no
  floats, ext types, odd map keys or integers beyond 64 bits), bounded in depth,
  length and size: what an error's ``error_value`` becomes when the handler's
  value cannot be sealed or is too large.

Pure: no I/O.
"""

from __future__ import annotations

from typing import Any

from p2pmarket.core.wire import MAX_MESSAGE_BYTES

MAX_REQUEST_BYTES = MAX_MESSAGE_BYTES        # any request, whatever its RPC
DEFAULT_REQUEST_BYTES = 64 * 1024            # an RPC's bound unless its room gives one
REPLY_OVERHEAD = 1024                        # envelope fields around the result
MAX_RESULT_BYTES = MAX_MESSAGE_BYTES - REPLY_OVERHEAD
MAX_ERROR_BYTES = 16 * 1024
MAX_ERROR_MESSAGE = 512                      # characters of an error's message

_DEPTH = 3          # nesting kept in a sanitized value
_ITEMS = 8          # list items / map entries kept per level
_TEXT = 200         # characters of a string, bytes of a bytes value
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1     # what msgpack encodes


def sealable(value: Any, depth: int = 0) -> Any:
    """``value`` in a bounded form canonical msgpack always encodes: scalars kept
    (strings and bytes cut to 200), lists, tuples (ext types among them) and maps cut
    to 8 items and 3 levels, anything else (floats, huge integers, objects) as a short
    repr; map keys that are not str, bytes or int become their repr."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value) if _INT_MIN <= value <= _INT_MAX else _short(value)
    if isinstance(value, str):
        return str(value[:_TEXT])
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value[:_TEXT])
    if isinstance(value, list | tuple):
        if depth >= _DEPTH:
            return f"<{len(value)} items>"
        return [sealable(x, depth + 1) for x in value[:_ITEMS]]
    if isinstance(value, dict):
        if depth >= _DEPTH:
            return f"<{len(value)} entries>"
        out: dict[Any, Any] = {}
        for k, v in list(value.items())[:_ITEMS]:
            out[_key(k)] = sealable(v, depth + 1)
        return out
    return _short(value)


def sealable_error(result: Any) -> dict[str, Any]:
    """The error map ``{error, error_value}`` of ``result`` (an error map whose value
    may not be sealable), bounded: see :func:`sealable`."""
    message = result.get("error") if isinstance(result, dict) else None
    value = result.get("error_value") if isinstance(result, dict) else None
    text = message if isinstance(message, str) else _short(message)
    return {"error": text[:MAX_ERROR_MESSAGE], "error_value": sealable(value)}


def _key(key: Any) -> Any:
    if isinstance(key, bool):
        return _short(key)
    if type(key) is str or type(key) is bytes:
        return key[:_TEXT]
    if type(key) is int and _INT_MIN <= key <= _INT_MAX:
        return key
    return _short(key)


def _short(value: Any) -> str:
    if value is None or isinstance(value, float | bool):
        return repr(value)
    if not isinstance(value, int):   # an object's repr may be long or fail: its type
        return f"<{type(value).__name__}>"
    try:
        return repr(value)[:_TEXT]
    except ValueError:   # too many digits to print
        return "<int>"


__all__ = ["DEFAULT_REQUEST_BYTES", "MAX_ERROR_BYTES", "MAX_ERROR_MESSAGE",
           "MAX_REQUEST_BYTES", "MAX_RESULT_BYTES", "REPLY_OVERHEAD", "sealable",
           "sealable_error"]
