"""A relay's reservation voucher (docs/design.md section 7): the relay's signed word that
it relays a host, which the host puts in its record's ``reach`` list.

A voucher is a signed envelope (:mod:`p2pmarket.core.wire`) in the
:data:`~p2pmarket.core.domains.RESERVATION` domain, kind ``nat.reservation``, from the
relay's key, ``to`` the relayed host's node id, body ::

    {relay: <relay public key, 32 bytes>, url: <relay's public base URL>,
     node_id: <host node id, 20 bytes>, expires: <µs>, ts: <µs>}

``relay`` is the envelope's sender and ``node_id`` its ``to`` (both repeated so the body
reads alone); the host is reached at ``<url>/relay/<node id hex>``. Encoded, a voucher
is at most :data:`MAX_RESERVATION_BYTES`; its lifetime (``expires - ts``) at most
:data:`MAX_LIFETIME_S`.

The host asks for it (and refreshes it) with a reserve request: a signed envelope in
the :data:`~p2pmarket.core.domains.ENVELOPE` domain, kind ``nat.reserve``, ``to`` the
relay's node id, body ``{}`` (:func:`make_reserve_request`, :func:`open_reserve_request`;
the relay's replay guard checks its ``ts``). Pure.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from p2pmarket.core.clock import US_PER_S
from p2pmarket.core.domains import ENVELOPE, RESERVATION
from p2pmarket.core.identity import NODE_ID_SIZE, PUBLIC_KEY_SIZE, Identity
from p2pmarket.core.wire import DEFAULT_CLOCK_TOLERANCE_US, Envelope, WireError, decode, seal
from p2pmarket.nat.frames import RelayError

RESERVATION_KIND = "nat.reservation"
RESERVE_KIND = "nat.reserve"
MAX_RESERVE_BYTES = 1024
RESERVATION_S = 3600
MAX_LIFETIME_S = 24 * 3600
MAX_RESERVATION_BYTES = 512
MAX_URL = 200
_URL = re.compile(r"https?://[!-~]+")


@dataclass(frozen=True)
class Reservation:
    """An opened, checked voucher."""

    relay: bytes       # the relay's public key
    url: str           # the relay's public base URL
    node_id: bytes     # the relayed host
    expires: int       # µs
    ts: int            # µs, when the relay granted it

    @property
    def relayed_url(self) -> str:
        """Where buyers reach the host: ``<url>/relay/<node id hex>``."""
        return relayed_url(self.url, self.node_id)


def relayed_url(relay_url: str, node_id: bytes) -> str:
    """The URL a host relayed by ``relay_url`` advertises."""
    return f"{relay_url.rstrip('/')}/relay/{node_id.hex()}"


def make_reservation(relay_identity: Identity, *, url: str, node_id: bytes, expires: int,
                     ts: int) -> bytes:
    """The encoded voucher; :class:`RelayError` if a field is out of bounds."""
    _check_url(url)
    if not isinstance(node_id, bytes) or len(node_id) != NODE_ID_SIZE:
        raise RelayError("node id must be 20 bytes", None)
    _check_times(expires, ts)
    body = {"relay": relay_identity.public_key, "url": url, "node_id": node_id,
            "expires": expires, "ts": ts}
    data = seal(relay_identity, RESERVATION, RESERVATION_KIND, body, ts=ts,
                to=node_id).encode()
    if len(data) > MAX_RESERVATION_BYTES:
        raise RelayError("reservation over its size bound",
                         {"size": len(data), "max": MAX_RESERVATION_BYTES})
    return data


def open_reservation(data: Any, *, node_id: bytes | None = None,
                     now: int | None = None) -> Reservation:
    """The voucher in ``data``, checked: signed by the relay it names, for ``node_id``
    (if given), not expired and not from the future at ``now`` (µs, if given).
    :class:`RelayError` otherwise."""
    if not isinstance(data, bytes | bytearray):
        raise RelayError("a reservation must be bytes", type(data).__name__)
    if len(data) > MAX_RESERVATION_BYTES:
        raise RelayError("reservation over its size bound",
                         {"size": len(data), "max": MAX_RESERVATION_BYTES})
    try:
        env = decode(bytes(data), RESERVATION, MAX_RESERVATION_BYTES)
    except WireError as exc:
        raise RelayError(f"bad reservation: {exc.message}", exc.value) from None
    body = env.body
    if env.kind != RESERVATION_KIND:
        raise RelayError("not a reservation", env.kind)
    if not isinstance(body, dict) or set(body) != {"relay", "url", "node_id", "expires", "ts"}:
        raise RelayError("reservation body must be {relay, url, node_id, expires, ts}")
    relay, url, host = body["relay"], body["url"], body["node_id"]
    if not isinstance(relay, bytes) or len(relay) != PUBLIC_KEY_SIZE or relay != env.sender:
        raise RelayError("reservation names a relay other than its signer")
    if not isinstance(host, bytes) or len(host) != NODE_ID_SIZE or host != env.to:
        raise RelayError("reservation node id differs from its addressee")
    _check_url(url)
    _check_times(body["expires"], body["ts"])
    if body["ts"] != env.ts:
        raise RelayError("reservation ts differs from its envelope's")
    if node_id is not None and host != node_id:
        raise RelayError("reservation is for another node", host.hex())
    if now is not None:
        if now >= body["expires"]:
            raise RelayError("reservation expired", {"expires": body["expires"], "now": now})
        if body["ts"] > now + DEFAULT_CLOCK_TOLERANCE_US:
            raise RelayError("reservation from the future", {"ts": body["ts"], "now": now})
    return Reservation(relay=relay, url=url, node_id=host, expires=body["expires"],
                       ts=body["ts"])


def make_reserve_request(identity: Identity, relay_id: bytes, ts: int) -> bytes:
    """The host's signed request to the relay with node id ``relay_id``."""
    return seal(identity, ENVELOPE, RESERVE_KIND, {}, ts=ts, to=relay_id).encode()


def open_reserve_request(data: bytes, relay_id: bytes) -> Envelope:
    """The reserve request in ``data``, its signature and addressing checked (not its
    ``ts``: that is for the relay's replay guard); :class:`RelayError` otherwise."""
    try:
        env = decode(data, ENVELOPE, MAX_RESERVE_BYTES)
    except WireError as exc:
        raise RelayError(f"bad reserve request: {exc.message}", exc.value) from None
    if env.kind != RESERVE_KIND:
        raise RelayError("not a reserve request", env.kind)
    if env.to != relay_id:
        raise RelayError("reserve request is addressed to another relay",
                         env.to.hex() if env.to else None)
    if env.body != {}:
        raise RelayError("reserve request body must be {}")
    return env


def _check_url(url: Any) -> None:
    if not isinstance(url, str) or len(url) > MAX_URL or not _URL.fullmatch(url):
        raise RelayError("relay url must be an http(s) URL of at most 200 characters",
                         str(url)[:80])


def _check_times(expires: Any, ts: Any) -> None:
    for value in (expires, ts):
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**63:
            raise RelayError("reservation times must be integer µs", repr(value)[:40])
    if not ts < expires <= ts + MAX_LIFETIME_S * US_PER_S:
        raise RelayError("reservation lifetime must be 0 .. MAX_LIFETIME_S",
                         {"ts": ts, "expires": expires})
