"""Signed DHT records: key names, shared validators and host records (DESIGN.md
section 3). Pure: no I/O, no clock.

Key names and the values stored under them (kademlia stores ``sha1(key name)``):

- ``host/<node id hex>``: one signed envelope of kind ``dht.host``, encoded
  (:meth:`Envelope.encode`). Body ``{key, node_id, url, dht: [host, port],
  resources: {type: {capacity, price, hour_avg}}, availability_ppm, seq,
  expires}`` plus, optionally, ``doc: {sha256, size}`` (a larger document the
  owner serves over HTTP at ``<url>/dht/doc/<sha256 hex>``; readers check it
  against the hash) and ``reach: [attestation bytes, ...]`` (registrars'
  reachability attestations, section 7, carried opaquely). Only the key whose
  node id is ``node_id`` may sign it; a higher ``seq`` replaces a lower one.
- ``offers/<resource type>``: a multi-writer set of signed offer entries
  (:mod:`p2pmarket.dht.offers`).
- ``evidence/<node id hex>``: a multi-writer set of proofs of misbehaviour
  (:mod:`p2pmarket.dht.evidence_records`).

Both sets are stored as a container ``{kind, key, entries}`` (canonical msgpack);
the checks they share (container, :data:`INNOCENT` refusals, :func:`url_host`)
live here. All times are integer microseconds; ``now_us`` always comes in as an
argument.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from p2pmarket.core.errors import P2PMarketError
from p2pmarket.core.identity import NODE_ID_SIZE, Identity
from p2pmarket.core.wire import Envelope, WireError, seal, unpack

HOST_KIND = "dht.host"

MAX_VALUE_BYTES = 7 * 1024
"""Largest stored value: rpcudp refuses datagrams over 8 KB, and a store RPC
wraps the value with its name, node id and key."""
MAX_TTL_US = 24 * 3600 * 1_000_000
"""A record may not claim to live longer than this from now (bounds a one-shot
publish that would otherwise never go away)."""
MAX_SKEW_US = 60 * 1_000_000
"""A record signed further than this in the future (by its ``ts``) is refused, so no
entry can stay "newest" by claiming a future time."""
MAX_RESOURCES = 16
MAX_URL = 256
MAX_HOSTNAME = 253
PPM = 1_000_000
MAX_INT = 2**63 - 1

_TYPE_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,31}$")

HOST_FIELDS = frozenset(
    {"key", "node_id", "url", "dht", "resources", "availability_ppm", "seq", "expires"})
HOST_OPTIONAL = frozenset({"doc", "reach"})
DOC_FIELDS = frozenset({"sha256", "size"})
MAX_DOC_BYTES = 4 * 1024 * 1024
"""Largest document a host record may point to (fetched over HTTP, not the DHT)."""
MAX_REACH = 4
MAX_ATTESTATION = 512
RESOURCE_FIELDS = frozenset({"capacity", "price", "hour_avg"})


class DhtError(P2PMarketError):
    """A refused DHT record or operation. ``value`` is a short reason code."""


def _fail(reason: str, message: str) -> DhtError:
    return DhtError(message, reason)


# -- key names ---------------------------------------------------------------

def host_key(node_id: bytes) -> str:
    return f"host/{node_id.hex()}"


def offers_key(resource_type: str) -> str:
    check_type_name(resource_type)
    return f"offers/{resource_type}"


def evidence_key(node_id: bytes) -> str:
    return f"evidence/{node_id.hex()}"


def key_digest(key: str) -> bytes:
    """The 160-bit kademlia key of a key name (what ``kademlia.utils.digest`` computes)."""
    return hashlib.sha1(key.encode("utf-8")).digest()


def check_type_name(resource_type: object) -> str:
    if not isinstance(resource_type, str) or not _TYPE_RE.match(resource_type):
        raise _fail("bad_type", f"bad resource type name {resource_type!r:.40}")
    return resource_type


# -- small validators --------------------------------------------------------

def _int(value: object, name: str, low: int = 0, high: int = MAX_INT) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise _fail("malformed", f"{name} must be an integer in [{low}, {high}]")
    return value


def _str(value: object, name: str, max_len: int) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= max_len:
        raise _fail("malformed", f"{name} must be a string of 1..{max_len} characters")
    return value


def _body(env: Envelope, kind: str, fields: frozenset[str],
          optional: frozenset[str] = frozenset()) -> dict[str, Any]:
    if env.kind != kind:
        raise _fail("wrong_kind", f"expected a {kind} record, got {env.kind!r:.40}")
    if env.to is not None:
        raise _fail("malformed", "records are not addressed")
    body = env.body
    if not isinstance(body, dict) or not fields <= set(body) <= fields | optional:
        raise _fail("malformed", f"{kind} body fields wrong")
    return body


def _check_owner(env: Envelope, body: dict[str, Any]) -> bytes:
    node_id = body["node_id"]
    if not isinstance(node_id, bytes) or len(node_id) != NODE_ID_SIZE:
        raise _fail("malformed", "node_id must be 20 bytes")
    if node_id != env.sender_id:
        raise _fail("wrong_signer", "record not signed by the node it names")
    return node_id


def _check_times(env: Envelope, expires: object, now_us: int) -> int:
    if env.ts > now_us + MAX_SKEW_US:
        raise _fail("future", "record signed in the future")
    return _check_expiry(expires, now_us)


def _check_expiry(expires: object, now_us: int, max_ttl_us: int = MAX_TTL_US,
                  what: str = "record") -> int:
    expires = _int(expires, "expires")
    if expires <= now_us:
        raise _fail("expired", f"{what} expired")
    if expires > now_us + max_ttl_us:
        raise _fail("too_long", f"{what} expiry too far in the future")
    return expires


def _verify(env: Envelope) -> None:
    try:
        env.verify_signature()
    except WireError:
        raise _fail("bad_signature", "bad record signature") from None


def _envelope(value: object) -> Envelope:
    if not isinstance(value, bytes):
        raise _fail("malformed", "record must be bytes")
    if len(value) > MAX_VALUE_BYTES:
        raise _fail("too_large", f"record larger than {MAX_VALUE_BYTES} bytes")
    try:
        return Envelope.from_wire(unpack(value, MAX_VALUE_BYTES))
    except WireError as exc:
        raise _fail("malformed", f"record is not an envelope: {exc.message}") from None


# -- host records ------------------------------------------------------------

@dataclass(frozen=True)
class ResourceAd:
    """One advertised resource type: capacity in base units, prices in µcredits."""

    capacity: int
    price: int
    hour_avg: int

    def to_doc(self) -> dict[str, int]:
        return {"capacity": self.capacity, "price": self.price, "hour_avg": self.hour_avg}


@dataclass(frozen=True)
class DocRef:
    """A document too large for a DHT value: its SHA-256 and size in bytes."""

    sha256: bytes
    size: int

    def to_doc(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "size": self.size}

    @classmethod
    def of(cls, data: bytes) -> DocRef:
        return cls(hashlib.sha256(data).digest(), len(data))

    def check(self, data: bytes) -> bytes:
        """``data`` if it is the document named here, else :class:`DhtError`."""
        if len(data) != self.size or hashlib.sha256(data).digest() != self.sha256:
            raise _fail("doc_mismatch", "document does not match the hash in its record")
        return data


def _doc_ref(value: object) -> DocRef | None:
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) != DOC_FIELDS:
        raise _fail("malformed", "doc must be {sha256, size}")
    digest = value["sha256"]
    if not isinstance(digest, bytes) or len(digest) != 32:
        raise _fail("malformed", "doc sha256 must be 32 bytes")
    return DocRef(digest, _int(value["size"], "doc size", 0, MAX_DOC_BYTES))


def _reach(value: object) -> tuple[bytes, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > MAX_REACH or not all(
            isinstance(a, bytes) and 0 < len(a) <= MAX_ATTESTATION for a in value):
        raise _fail("malformed", f"reach must be at most {MAX_REACH} attestations")
    return tuple(value)


@dataclass(frozen=True)
class HostRecord:
    """A verified ``host/<id>`` record. ``resources`` must not be mutated."""

    key: str
    node_id: bytes
    url: str
    dht: tuple[str, int]
    resources: Mapping[str, ResourceAd]
    availability_ppm: int
    seq: int
    expires: int
    envelope: Envelope
    doc: DocRef | None = None
    reach: tuple[bytes, ...] = ()

    @cached_property
    def value(self) -> bytes:
        """The bytes stored in the DHT."""
        return self.envelope.encode()

    @property
    def doc_url(self) -> str | None:
        """Where the owner serves the document named in ``doc``."""
        if self.doc is None:
            return None
        return f"{self.url.rstrip('/')}/dht/doc/{self.doc.sha256.hex()}"

    @classmethod
    def from_envelope(cls, env: Envelope, now_us: int) -> HostRecord:
        body = _body(env, HOST_KIND, HOST_FIELDS, HOST_OPTIONAL)
        node_id = _check_owner(env, body)
        if body["key"] != host_key(node_id):
            raise _fail("wrong_key", "host record key does not name its node")
        url = _str(body["url"], "url", MAX_URL)
        dht = body["dht"]
        if not isinstance(dht, list) or len(dht) != 2:
            raise _fail("malformed", "dht must be [host, port]")
        dht_addr = (_str(dht[0], "dht host", MAX_HOSTNAME), _int(dht[1], "dht port", 1, 65535))
        resources_doc = body["resources"]
        if not isinstance(resources_doc, dict) or len(resources_doc) > MAX_RESOURCES:
            raise _fail("malformed", f"resources must be a map of at most {MAX_RESOURCES}")
        resources: dict[str, ResourceAd] = {}
        for rtype, ad in resources_doc.items():
            check_type_name(rtype)
            if not isinstance(ad, dict) or set(ad) != RESOURCE_FIELDS:
                raise _fail("malformed", "resource must be {capacity, price, hour_avg}")
            resources[rtype] = ResourceAd(
                _int(ad["capacity"], "capacity"), _int(ad["price"], "price"),
                _int(ad["hour_avg"], "hour_avg"))
        availability = _int(body["availability_ppm"], "availability_ppm", 0, PPM)
        seq = _int(body["seq"], "seq")
        doc = _doc_ref(body.get("doc"))
        reach = _reach(body.get("reach"))
        expires = _check_times(env, body["expires"], now_us)
        _verify(env)
        return cls(key=body["key"], node_id=node_id, url=url, dht=dht_addr,
                   resources=resources, availability_ppm=availability, seq=seq,
                   expires=expires, envelope=env, doc=doc, reach=reach)

    @classmethod
    def from_bytes(cls, value: object, now_us: int) -> HostRecord:
        return cls.from_envelope(_envelope(value), now_us)


def make_host_record(identity: Identity, *, url: str, dht: tuple[str, int],
                     resources: Mapping[str, ResourceAd], availability_ppm: int, seq: int,
                     now_us: int, ttl_us: int, doc: DocRef | None = None,
                     reach: Iterable[bytes] = ()) -> HostRecord:
    """Sign a host record valid from ``now_us`` for ``ttl_us``; validated like a received one."""
    body: dict[str, Any] = {
        "key": host_key(identity.node_id),
        "node_id": identity.node_id,
        "url": url,
        "dht": [dht[0], dht[1]],
        "resources": {t: ad.to_doc() for t, ad in resources.items()},
        "availability_ppm": availability_ppm,
        "seq": seq,
        "expires": now_us + ttl_us,
    }
    if doc is not None:
        body["doc"] = doc.to_doc()
    reach = list(reach)
    if reach:
        body["reach"] = reach
    record = HostRecord.from_envelope(seal(identity, HOST_KIND, body, ts=now_us), now_us)
    _check_size(record.value)
    return record


def _check_size(value: bytes) -> None:
    if len(value) > MAX_VALUE_BYTES:
        raise _fail("too_large", f"record larger than {MAX_VALUE_BYTES} bytes")


def newer_host(a: HostRecord, b: HostRecord) -> HostRecord:
    """The record that wins: higher seq, then (same seq) the larger encoding, for determinism."""
    if a.seq != b.seq:
        return a if a.seq > b.seq else b
    return a if a.value >= b.value else b


def host_doc(record: HostRecord) -> dict[str, Any]:
    """A plain, JSON-friendly view of a host record (for the CLI and the control API)."""
    doc: dict[str, Any] = {
        "node_id": record.node_id.hex(), "url": record.url, "dht": list(record.dht),
        "resources": {t: ad.to_doc() for t, ad in record.resources.items()},
        "availability_ppm": record.availability_ppm, "seq": record.seq,
        "expires": record.expires, "attestations": len(record.reach)}
    if record.doc is not None:
        doc["doc"] = {"sha256": record.doc.sha256.hex(), "size": record.doc.size,
                      "url": record.doc_url}
    return doc


# -- multi-writer sets (offers, evidence) ------------------------------------

def _open_container(value: object, kind: str, what: str) -> tuple[Any, Any]:
    """The ``(key, entries)`` of a multi-writer set's container ``{kind, key, entries}``,
    after checking its type, size, encoding, fields and kind (not the key or entries)."""
    if not isinstance(value, bytes):
        raise _fail("malformed", f"{what} must be bytes")
    if len(value) > MAX_VALUE_BYTES:
        raise _fail("too_large", f"{what} larger than {MAX_VALUE_BYTES} bytes")
    try:
        doc = unpack(value, MAX_VALUE_BYTES)
    except WireError:
        raise _fail("malformed", f"{what} is not msgpack") from None
    if not isinstance(doc, dict) or set(doc) != {"kind", "key", "entries"}:
        raise _fail("malformed", f"{what} fields wrong")
    if doc["kind"] != kind:
        raise _fail("wrong_kind", f"not an {what}")
    return doc["key"], doc["entries"]


INNOCENT = frozenset({"expired", "future", "too_long"})
"""Refusals an honest relay may cause (clocks differ, time passes)."""


def url_host(url: str) -> str:
    """The host part of an ``http://host:port/...`` URL (for per-prefix caps)."""
    rest = url.split("://", 1)[-1].split("/", 1)[0]
    if rest.startswith("["):
        return rest[1:].split("]", 1)[0]
    return rest.rsplit(":", 1)[0] if ":" in rest else rest
