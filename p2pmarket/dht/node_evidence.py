"""Evidence (``evidence/<node id>``, docs/design.md sections 3 and 5) for
:class:`~p2pmarket.dht.node.DhtNode`.

:meth:`EvidenceMixin.publish_evidence` stores a proof inline when small, else as
``{sha256, size, url}`` with the body served by this node's gateway
(``/dht/evidence/<sha256 hex>``); as a storer the node fetches and checks such
bodies before keeping the entry
(:class:`~p2pmarket.dht.evidence.EvidenceFetcher`). Bodies it published or
fetched are kept (and persisted); its own are republished with a fresh 30-day
expiry. :meth:`EvidenceMixin.get_evidence` returns the checked proof bodies.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from dataclasses import dataclass

import aiohttp
from kademlia.node import Node

from p2pmarket.dht.checks import DhtError
from p2pmarket.dht.evidence import EvidenceFetcher, fetch_proof
from p2pmarket.dht.evidence_records import (
    MAX_EVIDENCE,
    EvidenceEntry,
    EvidenceSet,
    ProofVerifier,
    evidence_node_id,
    fit_evidence_set,
    make_evidence_entry,
    merge_evidence,
    parse_evidence_set,
)
from p2pmarket.dht.node_base import NodeBase
from p2pmarket.dht.records import evidence_key, key_digest

log = logging.getLogger(__name__)

MAX_HELD_PROOFS = 256
"""Evidence bodies fetched as a storer kept at most (the oldest go first; bodies this
node published are always kept)."""
READ_FETCHES = 2 * MAX_EVIDENCE
"""Hash-only proofs one :meth:`DhtNode.get_evidence` fetches at most."""


@dataclass(frozen=True)
class HeldProof:
    """An evidence body this node holds (checked): published by it or fetched."""

    node_id: bytes
    data: bytes
    own: bool
    expires: int


class EvidenceMixin(NodeBase):
    """Publishing, storing and finding proofs of misbehaviour."""

    proof_verifier: ProofVerifier
    evidence_fetcher: EvidenceFetcher
    _proofs: OrderedDict[bytes, HeldProof]
    _session: aiohttp.ClientSession | None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    def evidence_body(self, sha256: bytes) -> bytes | None:
        """A checked proof this node holds (published or fetched), by its SHA-256."""
        proof = self._proofs.get(sha256)
        return None if proof is None else proof.data

    def _keep_proof(self, sha256: bytes, node_id: bytes, data: bytes, own: bool,
                    expires: int) -> None:
        old = self._proofs.pop(sha256, None)
        if old is not None:
            own, expires = own or old.own, max(expires, old.expires)
        self._proofs[sha256] = HeldProof(node_id, data, own, expires)
        if self.state is not None:
            self.state.put_proof(sha256, node_id, data, own, expires)
        fetched = [h for h, p in self._proofs.items() if not p.own]
        drop = fetched[: max(0, len(fetched) - MAX_HELD_PROOFS)]
        for h in drop:
            del self._proofs[h]
        if drop and self.state is not None:
            self.state.drop_proofs(drop)

    def _schedule_evidence(self, dkey: bytes, key: str, entries: list[EvidenceEntry]) -> int:
        """The storage's hook: hash-only entries it has not checked are fetched first."""
        return self.evidence_fetcher.schedule(dkey, key, evidence_node_id(key), entries)

    def _proof_checked(self, dkey: bytes, key: str, node_id: bytes, entry: EvidenceEntry,
                       body: bytes) -> None:
        self._keep_proof(entry.sha256, node_id, body, False, entry.expires)
        try:
            self.storage.put_evidence(dkey, key, [entry])
        except DhtError as exc:
            self.storage.count_reject(str(exc.value))

    async def publish_evidence(self, host_id: bytes, proof: bytes) -> int:
        """Add ``proof`` (checked here first, with :attr:`proof_verifier`:
        :class:`DhtError` ``bad_proof`` or ``wrong_host`` if it is no valid proof
        against ``host_id``) to
        ``evidence/<host_id>``; return how many storers accepted it. A proof over
        :data:`~p2pmarket.dht.evidence_records.INLINE_PROOF_BYTES` goes as
        ``{sha256, size, url}`` with this node's :attr:`url`, whose gateway must serve it
        (storers accept it for checking and store it once they fetched it). The body is
        kept (and persisted) and republished with a fresh expiry on every republish."""
        entry = make_evidence_entry(host_id, proof, self.proof_verifier, now_us=self.clock(),
                                    url=self.url or None)
        self._keep_proof(entry.sha256, host_id, proof, True, entry.expires)
        key = evidence_key(host_id)
        dkey = key_digest(key)
        self.storage.put_evidence(dkey, key, [entry])   # our own copy
        value, _ = fit_evidence_set(key, [entry])
        acks = await self.store_digest(dkey, value)
        if acks == 0 and self.contact_count() > 0:
            log.warning("no peer accepted evidence against %s", host_id.hex()[:12])
        return acks

    async def get_evidence(self, host_id: bytes) -> list[bytes]:
        """Every valid proof against ``host_id`` the closest nodes hold, checked here:
        inline ones as they come, hash-only ones fetched from their url (or taken from
        the bodies this node holds) and checked against their hash. Inline proofs
        first, then by size."""
        key = evidence_key(host_id)
        dkey = key_digest(key)
        now = self.clock()
        local = self.storage.evidence_entries(dkey)
        verified = {e.sha256 for e in local if e.inline}
        held: dict[bytes, set[tuple[bytes, str]]] = {}
        parsed: dict[bytes, EvidenceSet | None] = {}

        def accept(peer: Node, value: bytes) -> bool:
            if value not in parsed:
                parsed[value] = self._check_evidence_set(peer, value, key, now, verified)
            evidence = parsed[value]
            if evidence is not None:
                held[peer.id] = {e.ident for e in evidence.entries}
            return evidence is not None

        found = await self.lookup(dkey, find_value=True, accept=accept)
        candidates = list(local)
        for evidence in parsed.values():
            if evidence is not None:
                candidates.extend(evidence.entries)
        checked = await self._check_entries(host_id, candidates, now)
        if checked:
            merged = merge_evidence(checked, now)
            value, kept = fit_evidence_set(key, self.storage.cap_evidence_prefixes(merged))
            idents = {e.ident for e in kept}
            lacking = [p for p in found.closest if not idents <= held.get(p.id, set())]
            self._repair(lacking, dkey, value)
        bodies: dict[bytes, bytes] = {}
        for entry in sorted(checked, key=EvidenceEntry.priority):
            if entry.sha256 not in bodies:
                body = entry.proof if entry.proof is not None else self.evidence_body(
                    entry.sha256)
                if body is not None:
                    bodies[entry.sha256] = body
        return list(bodies.values())

    async def _check_entries(self, host_id: bytes, entries: list[EvidenceEntry], now: int
                             ) -> list[EvidenceEntry]:
        """The entries whose proof checked out (inline ones already have); a hash-only
        proof is taken from the bodies we hold or fetched from one of its urls."""
        out: list[EvidenceEntry] = []
        refs: dict[bytes, list[EvidenceEntry]] = {}
        for entry in entries:
            if entry.expires <= now:
                continue
            if entry.inline:
                out.append(entry)
                continue
            held = self._proofs.get(entry.sha256)
            if held is not None and held.node_id == host_id:
                out.append(entry)
            else:
                urls = refs.setdefault(entry.sha256, [])
                if all(e.url != entry.url for e in urls):
                    urls.append(entry)

        async def fetch(options: list[EvidenceEntry]) -> EvidenceEntry | None:
            for entry in options[:3]:
                try:
                    body = await fetch_proof(self._http(), entry, host_id, self.proof_verifier,
                                             timeout=self.evidence_fetcher.timeout)
                except DhtError as exc:
                    self._count(f"lookup_rejected.evidence_{exc.value}")
                    continue
                self._keep_proof(entry.sha256, host_id, body, False, entry.expires)
                return entry
            return None

        wanted = sorted(refs.values(), key=lambda es: es[0].priority())[:READ_FETCHES]
        for got in await asyncio.gather(*(fetch(options) for options in wanted)):
            if got is not None:
                out.append(got)
        return out

    def _check_evidence_set(self, peer: Node, value: bytes, key: str, now: int,
                            verified: set[bytes]) -> EvidenceSet | None:
        try:
            evidence = parse_evidence_set(value, now, self.proof_verifier, verified)
        except DhtError as exc:
            self._refused(peer, str(exc.value))
            return None
        if evidence.key != key:
            self._refused(peer, "wrong_key")
            return None
        self._count("lookup_dropped_entries", evidence.dropped)
        if evidence.forged:
            self._refused(peer, "forged")
            return None
        verified.update(e.sha256 for e in evidence.entries if e.inline)
        return evidence
