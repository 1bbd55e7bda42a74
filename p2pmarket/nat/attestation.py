"""A registrar's reachability attestation (docs/design.md section 7).

Wire: a signed envelope (:mod:`p2pmarket.core.wire`) in the
:data:`~p2pmarket.core.domains.ATTESTATION` signature domain, kind
``nat.attestation``, from the registrar, ``to`` the attested node's id, ``ts`` the
time of the registration (µs, equal to the body's ``ts``), body ::

    {node_id: <20 bytes>, addr: [host, port], class: "public" | "forwarded" | "nat" |
     "proxied", verified: bool, registrar: <registrar's 32-byte key>, ts: <µs>}

``host`` is a canonical IP literal (:mod:`p2pmarket.nat.addresses`), ``class`` a
:class:`~p2pmarket.nat.table.ReachClass`, ``verified`` whether the address answered
the callback (so it can be dialled directly), ``registrar`` the signer's key. The
encoded envelope is at most :data:`MAX_ATTESTATION_BYTES` (the bound host records
carry attestations with, :data:`p2pmarket.dht.records.MAX_ATTESTATION`).

An attestation is good for :data:`ATTESTATION_TTL_US` (3 h; nodes re-register
hourly). :func:`open_attestation` refuses with a :class:`~p2pmarket.nat.errors.
NatError` whose code is ``malformed`` (not bytes, bad envelope or body), ``too_long``,
``signature``, ``kind``, ``node_id`` (another node's), ``future`` (more than
:data:`FUTURE_TOLERANCE_US` ahead) or ``expired``. Pure.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from p2pmarket.core.clock import US_PER_S
from p2pmarket.core.domains import ATTESTATION
from p2pmarket.core.identity import NODE_ID_SIZE, PUBLIC_KEY_SIZE, Identity
from p2pmarket.core.wire import Envelope, WireError, seal, unpack
from p2pmarket.nat.addresses import canonical_ip, check_port
from p2pmarket.nat.errors import NatError
from p2pmarket.nat.table import ReachClass

ATTESTATION_KIND = "nat.attestation"
MAX_ATTESTATION_BYTES = 512
ATTESTATION_TTL_US = 3 * 3600 * US_PER_S
FUTURE_TOLERANCE_US = 60 * US_PER_S
_FIELDS = frozenset({"node_id", "addr", "class", "verified", "registrar", "ts"})
_CLASSES = frozenset(c.value for c in ReachClass)


@dataclass(frozen=True)
class Attestation:
    """An opened attestation: ``registrar`` says ``node_id`` is reachable as
    ``reach_class`` at (``host``, ``port``), ``verified`` or not, as of ``ts``."""

    node_id: bytes
    host: str
    port: int
    reach_class: ReachClass
    verified: bool
    registrar: bytes
    ts: int
    envelope: Envelope = field(repr=False)

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    def encode(self) -> bytes:
        return self.envelope.encode()


def make_attestation(registrar: Identity, *, node_id: bytes, host: str, port: int,
                     reach_class: ReachClass, verified: bool, ts: int) -> bytes:
    """The encoded attestation ``registrar`` signs for ``node_id``."""
    if not isinstance(node_id, bytes) or len(node_id) != NODE_ID_SIZE:
        raise NatError("node id must be 20 bytes", None)
    body = {"node_id": node_id, "addr": [canonical_ip(host), check_port(port)],
            "class": str(ReachClass(reach_class)), "verified": bool(verified),
            "registrar": registrar.public_key, "ts": ts}
    data = seal(registrar, ATTESTATION, ATTESTATION_KIND, body, ts=ts, to=node_id).encode()
    if len(data) > MAX_ATTESTATION_BYTES:   # cannot happen: every field is bounded
        raise NatError("attestation too long", len(data), code="too_long")
    return data


def open_attestation(data: object, *, node_id: bytes | None = None, now: int | None = None,
                     max_age_us: int = ATTESTATION_TTL_US) -> Attestation:
    """Check ``data`` is an attestation (for ``node_id`` if given, fresh at ``now`` if
    given: at most ``max_age_us`` old) and open it; see the module docstring."""
    if not isinstance(data, bytes):
        raise NatError("attestation must be bytes", type(data).__name__)
    if len(data) > MAX_ATTESTATION_BYTES:
        raise NatError("attestation too long", {"size": len(data),
                                                "max": MAX_ATTESTATION_BYTES},
                       code="too_long")
    try:
        env = Envelope.from_wire(unpack(data, MAX_ATTESTATION_BYTES))
    except WireError as exc:
        raise NatError(f"not an attestation envelope: {exc.message}", exc.value) from None
    try:
        env.verify_signature(ATTESTATION)
    except WireError:
        raise NatError("bad attestation signature", env.kind, code="signature") from None
    if env.kind != ATTESTATION_KIND:
        raise NatError("not an attestation", env.kind, code="kind")
    att = _body(env)
    if node_id is not None and att.node_id != node_id:
        raise NatError("attestation for another node", att.node_id.hex(), code="node_id")
    if now is not None:
        if att.ts > now + FUTURE_TOLERANCE_US:
            raise NatError("attestation from the future", {"ts": att.ts, "now": now},
                           code="future")
        if att.ts < now - max_age_us:
            raise NatError("attestation expired", {"ts": att.ts, "now": now},
                           code="expired")
    return att


def _body(env: Envelope) -> Attestation:
    body: Any = env.body
    if not isinstance(body, dict) or set(body) != _FIELDS:
        got = sorted(map(str, body))[:8] if isinstance(body, dict) else type(body).__name__
        raise NatError("attestation body has the wrong fields", got)
    node_id, addr, cls = body["node_id"], body["addr"], body["class"]
    verified, registrar, ts = body["verified"], body["registrar"], body["ts"]
    if not isinstance(node_id, bytes) or len(node_id) != NODE_ID_SIZE:
        raise NatError("attestation node_id must be 20 bytes", "node_id")
    if env.to != node_id:
        raise NatError("attestation not addressed to its node", "to")
    if not isinstance(addr, list) or len(addr) != 2:
        raise NatError("attestation addr must be [host, port]", "addr")
    host, port = canonical_ip(addr[0]), check_port(addr[1])
    if host != addr[0]:
        raise NatError("attestation host not in canonical form", addr[0])
    if not isinstance(cls, str) or cls not in _CLASSES:
        raise NatError("attestation class unknown", cls if isinstance(cls, str) else None)
    if not isinstance(verified, bool):
        raise NatError("attestation verified must be a bool", "verified")
    if not isinstance(registrar, bytes) or len(registrar) != PUBLIC_KEY_SIZE:
        raise NatError("attestation registrar must be a 32-byte key", "registrar")
    if registrar != env.sender:
        raise NatError("attestation registrar is not its signer", "registrar")
    if not isinstance(ts, int) or isinstance(ts, bool) or ts != env.ts:
        raise NatError("attestation ts must equal the envelope's", "ts")
    return Attestation(node_id=node_id, host=host, port=port, reach_class=ReachClass(cls),
                       verified=verified, registrar=registrar, ts=ts, envelope=env)


__all__ = ["ATTESTATION_KIND", "ATTESTATION_TTL_US", "FUTURE_TOLERANCE_US",
           "MAX_ATTESTATION_BYTES", "Attestation", "make_attestation", "open_attestation"]
