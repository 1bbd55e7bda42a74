"""Signed DHT records and the offer index (DESIGN.md section 3). Pure: no I/O, no clock.

Key names and the values stored under them (kademlia stores ``sha1(key name)``):

- ``host/<node id hex>``: one signed envelope of kind ``dht.host``, encoded
  (:meth:`Envelope.encode`). Body ``{key, node_id, url, dht: [host, port],
  resources: {type: {capacity, price, hour_avg}}, availability_ppm, seq,
  expires}`` plus, optionally, ``doc: {sha256, size}`` (a larger document the
  owner serves over HTTP at ``<url>/dht/doc/<sha256 hex>``; readers check it
  against the hash) and ``reach: [attestation bytes, ...]`` (registrars'
  reachability attestations, section 7, carried opaquely). Only the key whose
  node id is ``node_id`` may sign it; a higher ``seq`` replaces a lower one.
- ``offers/<resource type>``: a container ``{kind: "dht.offers", key, entries:
  [encoded envelope, ...]}`` (canonical msgpack) of offer entries, kind
  ``dht.offer``, body ``{key, node_id, url, type, capacity, price, expires}``,
  each signed by its host. One entry per signer (the newest envelope ``ts``
  wins), expired ones dropped, at most :data:`MAX_OFFERS` kept (the freshest),
  and the whole container at most :data:`MAX_VALUE_BYTES`.
- ``evidence/<node id hex>``: proofs of misbehaviour (section 5), a multi-writer
  set ``{kind: "dht.evidence", key, entries: [entry, ...]}`` (canonical msgpack).
  Entries are not signed by their writer (anyone may add a proof) but are
  self-checking and bound to the key: the proof's host must have the key's node
  id. An entry is either inline, ``{proof: bytes, expires}`` (a proof of at most
  :data:`INLINE_PROOF_BYTES`, checked with
  :func:`p2pmarket.ledger.evidence.verify_proof`), or hash-only, ``{sha256, size,
  url, expires}`` for a larger proof (up to :data:`MAX_EVIDENCE_PROOF_BYTES`)
  served at ``<url>/dht/evidence/<sha256 hex>``; storers keep a hash-only entry
  only after fetching that body and checking it. One entry per proof (by
  sha256; the later expiry wins), inline entries first, then the smaller, at most
  :data:`MAX_EVIDENCE` kept and the container at most :data:`MAX_VALUE_BYTES`.
  Expiry: :data:`EVIDENCE_TTL_US` (30 days), renewed by whoever republishes.

All times are integer microseconds; ``now_us`` always comes in as an argument.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from functools import cached_property
from typing import Any

from p2pmarket.errors import P2PMarketError
from p2pmarket.identity import NODE_ID_SIZE, Identity
from p2pmarket.ledger.evidence import EvidenceError, verify_proof
from p2pmarket.wire import Envelope, WireError, pack, seal, unpack

HOST_KIND = "dht.host"
OFFER_KIND = "dht.offer"
OFFER_SET_KIND = "dht.offers"
EVIDENCE_SET_KIND = "dht.evidence"

MAX_VALUE_BYTES = 7 * 1024
"""Largest stored value: rpcudp refuses datagrams over 8 KB, and a store RPC
wraps the value with its name, node id and key."""
MAX_OFFERS = 24
"""Entries kept per ``offers/<type>`` key."""
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
OFFER_FIELDS = frozenset({"key", "node_id", "url", "type", "capacity", "price", "expires"})
MAX_EVIDENCE = 8
"""Entries kept per ``evidence/<node id>`` key."""
INLINE_PROOF_BYTES = 5 * 1024
"""Proofs up to this size are stored inline; larger ones as ``{sha256, size, url}``."""
MAX_EVIDENCE_PROOF_BYTES = 256 * 1024
"""Largest proof a hash-only evidence entry may name (fetched over HTTP)."""
EVIDENCE_TTL_US = 30 * 24 * 3600 * 1_000_000
"""How long a published proof lives (renewed by whoever republishes it)."""
MAX_EVIDENCE_TTL_US = EVIDENCE_TTL_US + 24 * 3600 * 1_000_000
"""An evidence entry may not claim to live longer than this from now (clock slack)."""
INLINE_FIELDS = frozenset({"proof", "expires"})
REF_FIELDS = frozenset({"sha256", "size", "url", "expires"})
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


def _check_expiry(expires: object, now_us: int) -> int:
    expires = _int(expires, "expires")
    if expires <= now_us:
        raise _fail("expired", "record expired")
    if expires > now_us + MAX_TTL_US:
        raise _fail("too_long", "record expiry too far in the future")
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


# -- offer entries -----------------------------------------------------------

@dataclass(frozen=True)
class OfferEntry:
    """A verified entry of an ``offers/<type>`` set."""

    key: str
    node_id: bytes
    url: str
    type: str
    capacity: int
    price: int
    expires: int
    envelope: Envelope

    @property
    def ts(self) -> int:
        return self.envelope.ts

    @cached_property
    def value(self) -> bytes:
        return self.envelope.encode()

    @classmethod
    def from_envelope(cls, env: Envelope, now_us: int) -> OfferEntry:
        body = _body(env, OFFER_KIND, OFFER_FIELDS)
        node_id = _check_owner(env, body)
        rtype = check_type_name(body["type"])
        if body["key"] != offers_key(rtype):
            raise _fail("wrong_key", "offer key does not match its type")
        url = _str(body["url"], "url", MAX_URL)
        capacity = _int(body["capacity"], "capacity")
        price = _int(body["price"], "price")
        expires = _check_times(env, body["expires"], now_us)
        _verify(env)
        return cls(key=body["key"], node_id=node_id, url=url, type=rtype, capacity=capacity,
                   price=price, expires=expires, envelope=env)

    @classmethod
    def from_bytes(cls, value: object, now_us: int) -> OfferEntry:
        return cls.from_envelope(_envelope(value), now_us)


def make_offer_entry(identity: Identity, *, resource_type: str, url: str, capacity: int,
                     price: int, now_us: int, ttl_us: int) -> OfferEntry:
    """Sign an offer entry; ``now_us`` is also its ``ts`` (newest per signer wins)."""
    body = {
        "key": offers_key(resource_type),
        "node_id": identity.node_id,
        "url": url,
        "type": resource_type,
        "capacity": capacity,
        "price": price,
        "expires": now_us + ttl_us,
    }
    entry = OfferEntry.from_envelope(seal(identity, OFFER_KIND, body, ts=now_us), now_us)
    _check_size(pack_offer_set(entry.key, [entry]))
    return entry


def _newer_offer(a: OfferEntry, b: OfferEntry) -> OfferEntry:
    if a.ts != b.ts:
        return a if a.ts > b.ts else b
    return a if a.value >= b.value else b


def merge_offers(entries: Iterable[OfferEntry], now_us: int,
                 cap: int = MAX_OFFERS) -> list[OfferEntry]:
    """One entry per signer (newest wins), unexpired, the ``cap`` freshest, freshest first."""
    best: dict[bytes, OfferEntry] = {}
    for entry in entries:
        if entry.expires <= now_us:
            continue
        old = best.get(entry.node_id)
        best[entry.node_id] = entry if old is None else _newer_offer(old, entry)
    ordered = sorted(best.values(), key=lambda e: (-e.ts, e.node_id))
    return ordered[:cap]


def fit_offer_set(key: str, entries: Iterable[OfferEntry]) -> tuple[bytes, list[OfferEntry]]:
    """The stored container and the entries it holds. Entries that would push it over
    :data:`MAX_VALUE_BYTES` are left out, so give them freshest first."""
    def encode(items: list[bytes]) -> bytes:
        return pack({"kind": OFFER_SET_KIND, "key": key, "entries": items})

    items: list[bytes] = []
    kept: list[OfferEntry] = []
    size = len(encode([]))
    for entry in entries:
        if entry.key != key:
            raise _fail("wrong_key", "offer entry for another key")
        raw = entry.value
        # msgpack bin header (<= 3 bytes) + array header growth (<= 2 bytes)
        if size + len(raw) + 5 > MAX_VALUE_BYTES:
            continue
        items.append(raw)
        kept.append(entry)
        size += len(raw) + 5
    return encode(items), kept


def pack_offer_set(key: str, entries: Iterable[OfferEntry]) -> bytes:
    return fit_offer_set(key, entries)[0]


@dataclass(frozen=True)
class OfferSet:
    """A parsed ``offers/<type>`` value: its valid entries and how many were dropped."""

    key: str
    entries: tuple[OfferEntry, ...]
    dropped: int
    forged: int = 0
    """Dropped entries that no honest node would pass on (bad signature, wrong key...)."""


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


def parse_offer_set(value: object, now_us: int,
                    known: Mapping[bytes, OfferEntry] | None = None) -> OfferSet:
    """Decode a container; invalid or expired entries are dropped and counted, a
    malformed container raises :class:`DhtError`. ``known`` maps encodings to entries
    already verified (their signatures are not checked again; expiry still is)."""
    key, raw_entries = _open_container(value, OFFER_SET_KIND, "offer set")
    if not isinstance(key, str) or not key.startswith("offers/"):
        raise _fail("wrong_key", "offer set key must be offers/<type>")
    check_type_name(key.removeprefix("offers/"))
    if not isinstance(raw_entries, list):
        raise _fail("malformed", "offer set entries must be a list")
    entries: list[OfferEntry] = []
    dropped = forged = 0
    for raw in raw_entries:
        entry = known.get(raw) if known is not None and isinstance(raw, bytes) else None
        if entry is None or entry.expires <= now_us:
            try:
                entry = OfferEntry.from_bytes(raw, now_us)
            except DhtError as exc:
                dropped += 1
                forged += exc.value not in INNOCENT
                continue
        if entry.key != key:
            dropped += 1
            forged += 1
            continue
        entries.append(entry)
    return OfferSet(key=key, entries=tuple(entries), dropped=dropped, forged=forged)


INNOCENT = frozenset({"expired", "future", "too_long"})
"""Refusals an honest relay may cause (clocks differ, time passes)."""


def parse_record(value: object, now_us: int,
                 known: Mapping[bytes, OfferEntry] | None = None,
                 known_proofs: Container[bytes] = ()) -> HostRecord | OfferSet | EvidenceSet:
    """A stored value of any kind, verified (the key name it claims is in ``.key``);
    for an evidence set, only the inline entries are verified (see
    :func:`parse_evidence_set`)."""
    if not isinstance(value, bytes):
        raise _fail("malformed", "value must be bytes")
    if len(value) > MAX_VALUE_BYTES:
        raise _fail("too_large", f"value larger than {MAX_VALUE_BYTES} bytes")
    try:
        doc = unpack(value, MAX_VALUE_BYTES)
    except WireError:
        raise _fail("malformed", "value is not msgpack") from None
    kind = doc.get("kind") if isinstance(doc, dict) else None
    if kind == OFFER_SET_KIND:
        return parse_offer_set(value, now_us, known)
    if kind == HOST_KIND:
        return HostRecord.from_bytes(value, now_us)
    if kind == EVIDENCE_SET_KIND:
        return parse_evidence_set(value, now_us, known_proofs)
    raise _fail("unsupported", f"unsupported record kind {kind!r:.40}")


# -- evidence ----------------------------------------------------------------

def evidence_node_id(key: object) -> bytes:
    """The node id an ``evidence/<node id hex>`` key name accuses."""
    if not isinstance(key, str) or not key.startswith("evidence/"):
        raise _fail("wrong_key", "evidence key must be evidence/<node id hex>")
    hexid = key.removeprefix("evidence/")
    if len(hexid) != 2 * NODE_ID_SIZE or hexid != hexid.lower():
        raise _fail("wrong_key", "evidence key must name a 20-byte node id in lower hex")
    try:
        return bytes.fromhex(hexid)
    except ValueError:
        raise _fail("wrong_key", "evidence key must name a node id in hex") from None


def check_evidence_url(url: object) -> str:
    url = _str(url, "url", MAX_URL)
    if not url.startswith(("http://", "https://")) or not url_host(url):
        raise _fail("malformed", "evidence url must be http(s)://host[:port]")
    return url


@dataclass(frozen=True)
class EvidenceEntry:
    """One entry of an ``evidence/<id>`` set: an inline proof (``proof`` set, already
    verified when it comes from :func:`parse_evidence_set`) or a hash-only reference
    (``url`` set; verified only once its body was fetched and checked)."""

    sha256: bytes
    size: int
    expires: int
    proof: bytes | None = None
    url: str | None = None

    @property
    def inline(self) -> bool:
        return self.proof is not None

    @property
    def ident(self) -> tuple[bytes, str]:
        """What a storer checked: the proof, and where (hash-only) it is served."""
        return (self.sha256, self.url or "")

    @property
    def fetch_url(self) -> str | None:
        if self.url is None:
            return None
        return f"{self.url.rstrip('/')}/dht/evidence/{self.sha256.hex()}"

    def priority(self) -> tuple[int, int, bytes, str]:
        """Sort key of a set: inline first, then the smaller, then by hash (deterministic,
        so every storer keeps the same entries)."""
        return (0 if self.inline else 1, self.size, self.sha256, self.url or "")

    def to_doc(self) -> dict[str, Any]:
        if self.proof is not None:
            return {"proof": self.proof, "expires": self.expires}
        return {"sha256": self.sha256, "size": self.size, "url": self.url,
                "expires": self.expires}

    def with_expiry(self, expires: int) -> EvidenceEntry:
        return EvidenceEntry(self.sha256, self.size, expires, self.proof, self.url)

    def check(self, data: bytes) -> bytes:
        """``data`` if it is the body this entry names, else ``evidence_mismatch``."""
        if len(data) != self.size or hashlib.sha256(data).digest() != self.sha256:
            raise _fail("evidence_mismatch", "proof does not match the hash in its entry")
        return data


def check_proof(proof: bytes, node_id: bytes) -> bytes:
    """``proof`` if it is a valid proof against ``node_id``, else :class:`DhtError`
    (``bad_proof``, or ``wrong_host`` for a valid proof about another host)."""
    try:
        checked = verify_proof(proof)
    except EvidenceError as exc:
        raise _fail("bad_proof", f"invalid proof: {exc.message}") from None
    if checked.host_id != node_id:
        raise _fail("wrong_host", "proof is about another host than its key names")
    return proof


def make_evidence_entry(node_id: bytes, proof: bytes, *, now_us: int,
                        ttl_us: int = EVIDENCE_TTL_US, url: str | None = None
                        ) -> EvidenceEntry:
    """A checked entry for ``proof`` against ``node_id``: inline if it is small enough,
    else hash-only, served at ``<url>/dht/evidence/<sha256 hex>`` (``url`` required)."""
    if len(proof) > MAX_EVIDENCE_PROOF_BYTES:
        raise _fail("too_large", f"proof larger than {MAX_EVIDENCE_PROOF_BYTES} bytes")
    check_proof(proof, node_id)
    expires = _check_evidence_expiry(now_us + ttl_us, now_us)
    digest = hashlib.sha256(proof).digest()
    if len(proof) <= INLINE_PROOF_BYTES:
        return EvidenceEntry(digest, len(proof), expires, proof=proof)
    if url is None:
        raise _fail("no_url", "a large proof needs the url that serves it")
    return EvidenceEntry(digest, len(proof), expires, url=check_evidence_url(url))


def _check_evidence_expiry(expires: object, now_us: int) -> int:
    expires = _int(expires, "expires")
    if expires <= now_us:
        raise _fail("expired", "evidence entry expired")
    if expires > now_us + MAX_EVIDENCE_TTL_US:
        raise _fail("too_long", "evidence expiry too far in the future")
    return expires


def _evidence_entry(doc: object, node_id: bytes, now_us: int,
                    verified: Container[bytes]) -> EvidenceEntry:
    if not isinstance(doc, dict):
        raise _fail("malformed", "evidence entry must be a map")
    if set(doc) == INLINE_FIELDS:
        proof = doc["proof"]
        if not isinstance(proof, bytes) or not 0 < len(proof) <= INLINE_PROOF_BYTES:
            raise _fail("malformed", f"inline proof must be 1..{INLINE_PROOF_BYTES} bytes")
        expires = _check_evidence_expiry(doc["expires"], now_us)
        digest = hashlib.sha256(proof).digest()
        if digest not in verified:
            check_proof(proof, node_id)
        return EvidenceEntry(digest, len(proof), expires, proof=proof)
    if set(doc) == REF_FIELDS:
        digest = doc["sha256"]
        if not isinstance(digest, bytes) or len(digest) != 32:
            raise _fail("malformed", "evidence sha256 must be 32 bytes")
        size = _int(doc["size"], "size", INLINE_PROOF_BYTES + 1, MAX_EVIDENCE_PROOF_BYTES)
        url = check_evidence_url(doc["url"])
        expires = _check_evidence_expiry(doc["expires"], now_us)
        return EvidenceEntry(digest, size, expires, url=url)
    raise _fail("malformed", "evidence entry fields wrong")


@dataclass(frozen=True)
class EvidenceSet:
    """A parsed ``evidence/<id>`` value. Inline entries are verified proofs against
    ``node_id``; hash-only ones are only well formed (their bodies are not checked)."""

    key: str
    node_id: bytes
    entries: tuple[EvidenceEntry, ...]
    dropped: int
    forged: int = 0
    """Dropped entries no honest node would pass on (invalid proof, wrong host...)."""
    reasons: tuple[str, ...] = ()
    """Why each forged entry was refused."""

    @property
    def inline(self) -> list[EvidenceEntry]:
        return [e for e in self.entries if e.inline]

    @property
    def refs(self) -> list[EvidenceEntry]:
        return [e for e in self.entries if not e.inline]


def parse_evidence_set(value: object, now_us: int, verified: Container[bytes] = ()
                       ) -> EvidenceSet:
    """Decode an evidence container, verifying every inline proof (except those whose
    sha256 is in ``verified``); bad or expired entries are dropped and counted, a
    malformed container raises :class:`DhtError`."""
    key, raw_entries = _open_container(value, EVIDENCE_SET_KIND, "evidence set")
    node_id = evidence_node_id(key)
    if not isinstance(raw_entries, list) or len(raw_entries) > 4 * MAX_EVIDENCE:
        raise _fail("malformed", "evidence set entries must be a short list")
    entries: list[EvidenceEntry] = []
    reasons: list[str] = []
    dropped = 0
    for raw in raw_entries:
        try:
            entries.append(_evidence_entry(raw, node_id, now_us, verified))
        except DhtError as exc:
            dropped += 1
            if exc.value not in INNOCENT:
                reasons.append(str(exc.value))
    return EvidenceSet(key=key, node_id=node_id, entries=tuple(entries), dropped=dropped,
                       forged=len(reasons), reasons=tuple(reasons))


def merge_evidence(entries: Iterable[EvidenceEntry], now_us: int,
                   cap: int = MAX_EVIDENCE) -> list[EvidenceEntry]:
    """One entry per proof (sha256; the later expiry wins, then the lower url),
    unexpired, in :meth:`EvidenceEntry.priority` order, at most ``cap``."""
    best: dict[bytes, EvidenceEntry] = {}
    for entry in entries:
        if entry.expires <= now_us:
            continue
        old = best.get(entry.sha256)
        if old is None or (entry.expires, old.url or "") > (old.expires, entry.url or ""):
            best[entry.sha256] = entry
    return sorted(best.values(), key=EvidenceEntry.priority)[:cap]


def fit_evidence_set(key: str, entries: Iterable[EvidenceEntry]
                     ) -> tuple[bytes, list[EvidenceEntry]]:
    """The stored container and the entries it holds; entries that would push it over
    :data:`MAX_VALUE_BYTES` are left out (give them in priority order)."""
    evidence_node_id(key)
    docs: list[dict[str, Any]] = []
    kept: list[EvidenceEntry] = []
    for entry in entries:
        trial = pack({"kind": EVIDENCE_SET_KIND, "key": key,
                      "entries": [*docs, entry.to_doc()]})
        if len(trial) > MAX_VALUE_BYTES:
            continue
        docs.append(entry.to_doc())
        kept.append(entry)
    return pack({"kind": EVIDENCE_SET_KIND, "key": key, "entries": docs}), kept


def evidence_doc(entry: EvidenceEntry) -> dict[str, Any]:
    """A JSON-friendly view of an entry."""
    doc: dict[str, Any] = {"sha256": entry.sha256.hex(), "size": entry.size,
                           "expires": entry.expires, "inline": entry.inline}
    if entry.fetch_url is not None:
        doc["url"] = entry.fetch_url
    return doc


# -- ranking -----------------------------------------------------------------

def _efficiency(entry: OfferEntry) -> tuple[int, Fraction]:
    """Capacity per unit price, exact; a zero price ranks above every positive one."""
    if entry.price == 0:
        return (1, Fraction(entry.capacity))
    return (0, Fraction(entry.capacity, entry.price))


def rank_offers(entries: Iterable[OfferEntry], n: int, min_capacity: int = 0,
                max_price: int | None = None) -> list[OfferEntry]:
    """The top ``n`` entries by cost efficiency (capacity / price), best first.

    Ties go to the larger capacity, then the lower price, then the lower node id,
    so the order is total and deterministic.
    """
    if n <= 0:
        return []
    eligible = [e for e in entries if e.capacity >= min_capacity
                and (max_price is None or e.price <= max_price)]

    def order(e: OfferEntry) -> tuple[int, Fraction, int, int, bytes]:
        tier, ratio = _efficiency(e)
        return (-tier, -ratio, -e.capacity, e.price, e.node_id)

    return sorted(eligible, key=order)[:n]


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


def url_host(url: str) -> str:
    """The host part of an ``http://host:port/...`` URL (for per-prefix caps)."""
    rest = url.split("://", 1)[-1].split("/", 1)[0]
    if rest.startswith("["):
        return rest[1:].split("]", 1)[0]
    return rest.rsplit(":", 1)[0] if ":" in rest else rest


def offer_doc(entry: OfferEntry) -> dict[str, Any]:
    return {"node_id": entry.node_id.hex(), "url": entry.url, "type": entry.type,
            "capacity": entry.capacity, "price": entry.price, "expires": entry.expires}

