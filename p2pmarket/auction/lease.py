"""SHARP leases: what a host promises one account, signed, verifiable offline.

A lease is a wire envelope of kind ``lease`` (``to`` = None) signed by the host in
the ``lease`` signature domain (:data:`p2pmarket.core.domains.LEASE`: an RPC or a DHT
record of the host's is no lease, whatever its kind), body::

    {lease_id: str, host_id: bytes (node id), holder: bytes (public key),
     resources: {res: {min: int, max: int, alloc: int}},   # base units
     start: int (µs), end: int (µs), balance: int (micro-credits),
     audit: authenticator map or None}

The host re-signs it whenever anything in the body changes; the envelope's
``ts`` tells which of two leases is newer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from p2pmarket.auction import HostError
from p2pmarket.core.domains import LEASE
from p2pmarket.core.identity import PUBLIC_KEY_SIZE, Identity, node_id_of
from p2pmarket.core.wire import Envelope, WireError, open_signed, seal

LEASE_KIND = "lease"


@dataclass(frozen=True)
class ResourceTerm:
    min: int
    max: int
    alloc: int


@dataclass(frozen=True)
class Lease:
    lease_id: str
    host_id: bytes
    holder: bytes
    resources: Mapping[str, ResourceTerm]
    start: int
    end: int
    balance: int
    audit: Mapping[str, Any] | None = None
    signed_at: int = 0   # the envelope's ts; not part of the body

    def body(self) -> dict[str, Any]:
        return {
            "lease_id": self.lease_id, "host_id": self.host_id, "holder": self.holder,
            "resources": {r: {"min": t.min, "max": t.max, "alloc": t.alloc}
                          for r, t in sorted(self.resources.items())},
            "start": self.start, "end": self.end, "balance": self.balance,
            "audit": None if self.audit is None else dict(self.audit),
        }

    @classmethod
    def from_body(cls, body: Any, signed_at: int = 0) -> Lease:
        """Check a lease body's shape (raises :class:`HostError`)."""
        fields = {"lease_id", "host_id", "holder", "resources", "start", "end", "balance",
                  "audit"}
        if not isinstance(body, dict) or set(body) != fields:
            raise HostError("lease body has the wrong fields",
                            sorted(map(str, body)) if isinstance(body, dict) else None)
        if not isinstance(body["lease_id"], str) or not 0 < len(body["lease_id"]) <= 64:
            raise HostError("lease id must be a short string")
        if not isinstance(body["host_id"], bytes) or len(body["host_id"]) != 20:
            raise HostError("lease host_id must be a 20-byte node id")
        if not isinstance(body["holder"], bytes) or len(body["holder"]) != PUBLIC_KEY_SIZE:
            raise HostError("lease holder must be a 32-byte public key")
        for key in ("start", "end", "balance"):
            if not _is_nat(body[key]):
                raise HostError(f"lease {key} must be a non-negative integer")
        if body["audit"] is not None and not isinstance(body["audit"], dict):
            raise HostError("lease audit must be a map or null")
        if not isinstance(body["resources"], dict):
            raise HostError("lease resources must be a map")
        terms: dict[str, ResourceTerm] = {}
        for res, term in body["resources"].items():
            if (not isinstance(res, str) or not isinstance(term, dict)
                    or set(term) != {"min", "max", "alloc"}
                    or not all(_is_nat(term[k]) for k in term)):
                raise HostError("lease resource terms are malformed", str(res)[:40])
            terms[res] = ResourceTerm(term["min"], term["max"], term["alloc"])
        return cls(body["lease_id"], body["host_id"], body["holder"], terms, body["start"],
                   body["end"], body["balance"], body["audit"], signed_at)


def _is_nat(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def sign_lease(identity: Identity, lease: Lease, ts: int) -> Envelope:
    """Sign ``lease`` as the host ``identity`` at time ``ts`` (µs)."""
    if lease.host_id != identity.node_id:
        raise HostError("a lease must name the signing host", lease.host_id.hex())
    return seal(identity, LEASE, LEASE_KIND, lease.body(), ts=ts, to=None)


def verify_lease(data: bytes | Mapping[str, Any] | Envelope, host_key: bytes) -> Lease:
    """Check a lease offline against the host's public key; return its terms."""
    try:
        env = open_signed(data, LEASE)
    except WireError as exc:
        raise HostError(f"invalid lease: {exc.message}", exc.value) from None
    if env.kind != LEASE_KIND:
        raise HostError("not a lease", env.kind)
    if env.sender != host_key:
        raise HostError("lease signed by another key", env.sender.hex())
    if env.to is not None:
        raise HostError("a lease is not addressed to anyone")
    lease = Lease.from_body(env.body, signed_at=env.ts)
    if lease.host_id != node_id_of(host_key):
        raise HostError("lease host_id does not match the signing key")
    return lease
