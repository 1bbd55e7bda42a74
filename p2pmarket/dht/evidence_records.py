"""Evidence records: ``evidence/<node id>`` entries and sets (docs/design.md sections 3
and 5). Pure: no I/O, no clock.

- ``evidence/<node id hex>``: proofs of misbehaviour (section 5), a multi-writer
  set ``{kind: "dht.evidence", key, entries: [entry, ...]}`` (canonical msgpack).
  Entries are not signed by their writer (anyone may add a proof) but are
  self-checking and bound to the key: the proof's host must have the key's node
  id. An entry is either inline, ``{proof: bytes, expires}`` (a proof of at most
  :data:`INLINE_PROOF_BYTES`, checked with the :data:`ProofVerifier` the caller
  gives), or hash-only, ``{sha256, size, url, expires}`` for a larger proof (up
  to :data:`MAX_EVIDENCE_PROOF_BYTES`) served at ``<url>/dht/evidence/<sha256
  hex>``; storers keep a hash-only entry only after fetching that body and
  checking it. One entry per proof (by sha256; the later expiry wins), inline
  entries first, then the smaller, at most :data:`MAX_EVIDENCE` kept and the
  container at most :data:`~p2pmarket.dht.checks.MAX_VALUE_BYTES`.
  Expiry: :data:`EVIDENCE_TTL_US` (30 days), renewed by whoever republishes.

The DHT does not know the proof formats: whoever builds a storer or reader
passes the audit's verifier (:func:`p2pmarket.audit.evidence.proof_host_id`).
All times are integer microseconds; ``now_us`` always comes in as an argument.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Container, Iterable
from dataclasses import dataclass
from typing import Any

from p2pmarket.core.errors import P2PMarketError
from p2pmarket.core.identity import NODE_ID_SIZE
from p2pmarket.core.wire import pack
from p2pmarket.dht.checks import (
    INNOCENT,
    MAX_VALUE_BYTES,
    DhtError,
    check_expiry,
    check_int,
    check_str,
    open_container,
    refusal,
)
from p2pmarket.dht.records import MAX_URL, url_host

EVIDENCE_SET_KIND = "dht.evidence"

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

ProofVerifier = Callable[[bytes], bytes]
"""Checks a proof of misbehaviour and returns the node id of the host it exposes;
raises a :class:`~p2pmarket.core.errors.P2PMarketError` (any subclass) if the proof
is invalid."""


def evidence_node_id(key: object) -> bytes:
    """The node id an ``evidence/<node id hex>`` key name accuses."""
    if not isinstance(key, str) or not key.startswith("evidence/"):
        raise refusal("wrong_key", "evidence key must be evidence/<node id hex>")
    hexid = key.removeprefix("evidence/")
    if len(hexid) != 2 * NODE_ID_SIZE or hexid != hexid.lower():
        raise refusal("wrong_key", "evidence key must name a 20-byte node id in lower hex")
    try:
        return bytes.fromhex(hexid)
    except ValueError:
        raise refusal("wrong_key", "evidence key must name a node id in hex") from None


def check_evidence_url(url: object) -> str:
    url = check_str(url, "url", MAX_URL)
    if not url.startswith(("http://", "https://")) or not url_host(url):
        raise refusal("malformed", "evidence url must be http(s)://host[:port]")
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
            raise refusal("evidence_mismatch", "proof does not match the hash in its entry")
        return data


def check_proof(proof: bytes, node_id: bytes, proof_verifier: ProofVerifier) -> bytes:
    """``proof`` if ``proof_verifier`` finds it a valid proof against ``node_id``, else
    :class:`DhtError` (``bad_proof``, or ``wrong_host`` for a valid proof about another
    host)."""
    try:
        host_id = proof_verifier(proof)
    except P2PMarketError as exc:
        raise refusal("bad_proof", f"invalid proof: {exc.message}") from None
    if host_id != node_id:
        raise refusal("wrong_host", "proof is about another host than its key names")
    return proof


def make_evidence_entry(node_id: bytes, proof: bytes, proof_verifier: ProofVerifier, *,
                        now_us: int, ttl_us: int = EVIDENCE_TTL_US, url: str | None = None
                        ) -> EvidenceEntry:
    """A checked entry for ``proof`` against ``node_id``: inline if it is small enough,
    else hash-only, served at ``<url>/dht/evidence/<sha256 hex>`` (``url`` required)."""
    if len(proof) > MAX_EVIDENCE_PROOF_BYTES:
        raise refusal("too_large", f"proof larger than {MAX_EVIDENCE_PROOF_BYTES} bytes")
    check_proof(proof, node_id, proof_verifier)
    expires = _check_evidence_expiry(now_us + ttl_us, now_us)
    digest = hashlib.sha256(proof).digest()
    if len(proof) <= INLINE_PROOF_BYTES:
        return EvidenceEntry(digest, len(proof), expires, proof=proof)
    if url is None:
        raise refusal("no_url", "a large proof needs the url that serves it")
    return EvidenceEntry(digest, len(proof), expires, url=check_evidence_url(url))


def _check_evidence_expiry(expires: object, now_us: int) -> int:
    return check_expiry(expires, now_us, MAX_EVIDENCE_TTL_US, "evidence entry")


def _evidence_entry(doc: object, node_id: bytes, now_us: int, proof_verifier: ProofVerifier,
                    verified: Container[bytes]) -> EvidenceEntry:
    if not isinstance(doc, dict):
        raise refusal("malformed", "evidence entry must be a map")
    if set(doc) == INLINE_FIELDS:
        proof = doc["proof"]
        if not isinstance(proof, bytes) or not 0 < len(proof) <= INLINE_PROOF_BYTES:
            raise refusal("malformed", f"inline proof must be 1..{INLINE_PROOF_BYTES} bytes")
        expires = _check_evidence_expiry(doc["expires"], now_us)
        digest = hashlib.sha256(proof).digest()
        if digest not in verified:
            check_proof(proof, node_id, proof_verifier)
        return EvidenceEntry(digest, len(proof), expires, proof=proof)
    if set(doc) == REF_FIELDS:
        digest = doc["sha256"]
        if not isinstance(digest, bytes) or len(digest) != 32:
            raise refusal("malformed", "evidence sha256 must be 32 bytes")
        size = check_int(doc["size"], "size", INLINE_PROOF_BYTES + 1, MAX_EVIDENCE_PROOF_BYTES)
        url = check_evidence_url(doc["url"])
        expires = _check_evidence_expiry(doc["expires"], now_us)
        return EvidenceEntry(digest, size, expires, url=url)
    raise refusal("malformed", "evidence entry fields wrong")


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


def parse_evidence_set(value: object, now_us: int, proof_verifier: ProofVerifier,
                       verified: Container[bytes] = ()) -> EvidenceSet:
    """Decode an evidence container, verifying every inline proof with
    ``proof_verifier`` (except those whose sha256 is in ``verified``); bad or expired
    entries are dropped and counted, a malformed container raises :class:`DhtError`."""
    key, raw_entries = open_container(value, EVIDENCE_SET_KIND, "evidence set")
    node_id = evidence_node_id(key)
    if not isinstance(raw_entries, list) or len(raw_entries) > 4 * MAX_EVIDENCE:
        raise refusal("malformed", "evidence set entries must be a short list")
    entries: list[EvidenceEntry] = []
    reasons: list[str] = []
    dropped = 0
    for raw in raw_entries:
        try:
            entries.append(_evidence_entry(raw, node_id, now_us, proof_verifier, verified))
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
