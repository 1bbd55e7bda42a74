"""A buyer's request for a TCP stream to its leased port, and the control messages of a
stream's websocket (docs/design.md section 7, "Streams"). Pure.

**The request** is a signed envelope (:mod:`p2pmarket.core.wire`) in the
:data:`~p2pmarket.core.domains.ENVELOPE` domain, kind ``nat.stream``, from the account
holder's key, ``to`` the host's node id, body ``{account_id: str, port: int}``: "connect
me to the port ``port`` my account ``account_id`` holds". At most
:data:`MAX_STREAM_REQUEST_BYTES` encoded. The host checks the signature, that it is
addressed to itself, its ``ts`` (its replay guard), and that the port is forwarded for
that account and that the account's holder is the signer; only then it connects.

**The websocket** a buyer opens at the relayed host's URL (``GET <relay>/relay/<node id
hex>`` with a websocket upgrade, :mod:`p2pmarket.nat.streams`) carries:

- buyer to relay, first: one binary message, the request (within
  :data:`STREAM_HELLO_S`);
- then binary messages both ways: the stream's bytes (1 .. ``MAX_DATA`` each);
- text messages, JSON objects, both ways: :data:`OPENED` ``{"stream": "open"}``
  (relay to buyer: the host accepted; bytes may flow), :data:`ENDED`
  ``{"stream": "end"}`` (this direction is complete: a half-close), and, relay to
  buyer, an error ``{"error": text, "error_value": value, "code": code}`` (the stream
  was refused or dropped; the relay then closes). ``code`` is a relay limit's reason
  (:mod:`p2pmarket.nat.relaylimits`), ``refused`` (the host said no), ``host_reset``
  (the host dropped an open stream), or ``malformed``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from p2pmarket.core.domains import ENVELOPE
from p2pmarket.core.identity import Identity
from p2pmarket.core.wire import WireError, decode, seal
from p2pmarket.nat.frames import RelayError

STREAM_KIND = "nat.stream"
MAX_STREAM_REQUEST_BYTES = 1024
MAX_CONTROL_BYTES = 2048
STREAM_HELLO_S = 10.0
OPENED = {"stream": "open"}
ENDED = {"stream": "end"}
REFUSED = "refused"
HOST_RESET = "host_reset"
MALFORMED = "malformed"
_ACCOUNT = re.compile(r"[0-9A-Za-z_.:-]{1,64}")


class StreamRefused(RelayError):
    """A stream the relay or the host refused or dropped; ``code`` says which rule."""

    def __init__(self, message: str, value: Any = None, *, code: str = REFUSED) -> None:
        super().__init__(message, value)
        self.code = code


@dataclass(frozen=True)
class StreamRequest:
    """An opened, checked stream request (its ``ts`` not yet checked for replay)."""

    sender: bytes       # the signer's public key: the account holder
    account_id: str
    port: int
    ts: int


def make_stream_request(identity: Identity, host_id: bytes, account_id: str, port: int,
                        ts: int) -> bytes:
    """The holder's signed request for a stream to ``port`` of ``account_id`` at the host
    with node id ``host_id``."""
    _check_body(account_id, port)
    return seal(identity, ENVELOPE, STREAM_KIND, {"account_id": account_id, "port": port},
                ts=ts, to=host_id).encode()


def open_stream_request(data: Any, host_id: bytes) -> StreamRequest:
    """The stream request in ``data``, its signature, addressing and shape checked;
    :class:`StreamRefused` (code ``malformed``) otherwise."""
    if not isinstance(data, bytes | bytearray) or len(data) > MAX_STREAM_REQUEST_BYTES:
        raise StreamRefused("a stream request must be bytes, at most 1 KiB",
                            None, code=MALFORMED)
    try:
        env = decode(bytes(data), ENVELOPE, MAX_STREAM_REQUEST_BYTES)
    except WireError as exc:
        raise StreamRefused(f"bad stream request: {exc.message}", exc.value,
                            code=MALFORMED) from None
    if env.kind != STREAM_KIND:
        raise StreamRefused("not a stream request", env.kind, code=MALFORMED)
    if env.to != host_id:
        raise StreamRefused("the stream request is addressed to another host",
                            env.to.hex() if env.to else None, code=MALFORMED)
    body = env.body
    if not isinstance(body, dict) or set(body) != {"account_id", "port"}:
        raise StreamRefused("stream request body must be {account_id, port}",
                            code=MALFORMED)
    _check_body(body["account_id"], body["port"])
    return StreamRequest(env.sender, body["account_id"], body["port"], env.ts)


def _check_body(account_id: Any, port: Any) -> None:
    if not isinstance(account_id, str) or not _ACCOUNT.fullmatch(account_id):
        raise StreamRefused("bad account id in a stream request", str(account_id)[:40],
                            code=MALFORMED)
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise StreamRefused("bad port in a stream request", repr(port)[:20], code=MALFORMED)


def control_text(message: dict[str, Any]) -> str:
    """A control message's text."""
    return json.dumps(message, sort_keys=True, default=repr)


def error_message(message: str, value: Any = None, code: str = REFUSED) -> dict[str, Any]:
    return {"error": message, "error_value": value, "code": code}


def parse_control(text: Any) -> dict[str, Any]:
    """A control message, checked: :data:`OPENED`, :data:`ENDED` or an error;
    :class:`StreamRefused` (``malformed``) for anything else."""
    if not isinstance(text, str) or len(text) > MAX_CONTROL_BYTES:
        raise StreamRefused("a stream control message must be short text", code=MALFORMED)
    try:
        doc = json.loads(text)
    except ValueError:
        raise StreamRefused("a stream control message must be JSON", text[:80],
                            code=MALFORMED) from None
    if doc in (OPENED, ENDED):
        return dict(doc)
    if isinstance(doc, dict) and set(doc) == {"error", "error_value", "code"} \
            and isinstance(doc["error"], str) and isinstance(doc["code"], str):
        return doc
    raise StreamRefused("unknown stream control message", text[:80], code=MALFORMED)


def raise_if_error(doc: dict[str, Any]) -> None:
    """Raise the error a control message carries, as :class:`StreamRefused`."""
    if "error" in doc:
        raise StreamRefused(doc["error"], doc["error_value"], code=doc["code"])


__all__ = ["ENDED", "HOST_RESET", "MALFORMED", "MAX_STREAM_REQUEST_BYTES", "OPENED",
           "REFUSED", "STREAM_HELLO_S", "STREAM_KIND", "StreamRefused", "StreamRequest",
           "control_text", "error_message", "make_stream_request", "open_stream_request",
           "parse_control", "raise_if_error"]
