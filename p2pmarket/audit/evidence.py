"""Proofs against hosts, verifiable offline by anyone (docs/design.md section 5).

A proof is the canonical msgpack of a map ``{v: 2, type, host (public key), ...}``.
Every signature in it is the host's, checked in the audit log's signature domain
(:data:`p2pmarket.core.domains.AUDIT_ENTRY`): a proof's parts must all belong to the
host's one audit log. The host's payment chain is signed with the same key, in
another domain, so none of its signatures counts here (issue 10: version 1 proofs,
whose signatures had no domain, let a buyer pair the host's refund ledger entry at
seq s with its audit entry at seq s, and frame an honest host). Version 1 proofs are
refused.

- ``type: "inconsistency"`` -- the host signed two different logs.
  ``{a: [seq, hash, sig], b: [seq, hash, sig]}``: two audit log authenticators of
  the host for one seq with different hashes; or ``{a: [seq, hash, sig], entry:
  bytes, sig: bytes}``: the host signed audit entry ``seq + 1`` (``entry``, its
  canonical bytes, an audit entry's shape, and its audit log signature) whose
  ``prev`` is not ``a``'s hash. About 300 bytes.

  Where the host's signature of the entry itself is not at hand (a witness checks
  only the signature of the last entry of each segment it fetches: the hash chain
  makes it commit the host to the whole segment), a side is a *chain* instead:
  ``{entries: [bytes], sig: bytes}``, consecutive entries each linking to the one
  before, ``sig`` the host's audit log signature of the last; it commits the host to
  the hash of ``entries[0]`` at its seq. So ``{a, b}`` may pair an authenticator or
  a chain with an authenticator or a chain, and ``{a, chain}`` (``chain[0]`` at seq
  ``a.seq + 1`` whose ``prev`` is not ``a``'s hash) is the fork form with a chain.
  A chain is as long as the segment it came from (at most about 1 MiB).
- ``type: "nonconformance"`` -- the host's own log shows it broke its rules.
  ``{snapshot: map | None, entries: [bytes], sig: bytes, seq: int, rule: str}``:
  ``entries`` are consecutive log entries (canonical bytes) ending with the
  offending one, whose audit log signature ``sig`` commits the host to all of them
  (each links to the one before). Either ``entries[0]`` is the log's ``in.genesis``
  (seq 0) and ``snapshot`` is None, or ``entries[0]`` is an ``out.tick`` /
  ``out.settings`` entry whose body commits to the digest of ``snapshot`` (the
  auctioneer's state there, :func:`p2pmarket.auction.snapshot.snapshot`; its payment
  and refund records may be left out when the replay does not need them).
  Instead of signing the offending entry, ``sig`` may sign the last of ``tail``
  (an optional field): entries following the offending one, each linking to the one
  before, so the chain commits the host to the offending entry (what a witness has
  when the host's signature of the offending entry is not valid but the one of its
  segment's end is). Replaying the entries through :mod:`p2pmarket.auction.steps`
  must reach a fault at ``seq`` (for a buyer's input whose signed request is
  missing, not the caller's, not addressed to this host or not exactly the input:
  rule ``unsigned input: ...``).
  The size grows with the host's accounts (about 150 bytes an account
  in the snapshot, plus the tick entries' per-account charges): a few KB for a
  small host, tens of KB for a large one. Verified with the network's genesis, the
  replay also checks the notary quorum of every refund payment logged
  (:func:`p2pmarket.audit.refunds.refund_payment_fault`): a proof that a logged
  payment is not certified verifies only with the genesis.
- ``type: "refund_payment"`` -- the host paid a refund it recorded with a certified
  SEND that does not pay it exactly. ``{snapshot, entries, sig, payment}``:
  ``snapshot``, ``entries`` and ``sig`` as for non-conformance (the snapshot keeps
  its refund records), except that the entries replay without a fault; ``payment``
  is the certificate's wire form of a SEND of the host whose memo names a refund
  the replayed state holds, and whose payee, amount or memo is not that refund's
  (:func:`p2pmarket.audit.refunds.received_refund_fault`). The certificate must carry
  a quorum of the genesis's notaries, so this proof verifies only with the genesis
  (anyone holding the network's genesis file can check it offline). ``seq`` is the
  last entry's. What a buyer's ``witness.refund`` push exposes.
- ``type: "ticket_conflict"`` -- an agent (broker), ``host`` here, signed SHARP
  subclaims that together hold more than the claim it held, at one time: the format
  and its checks are :mod:`p2pmarket.sharp.proof`'s (section 10). ``seq`` is 0 and
  the rule ``oversubscribed``. Its signatures are in the ticket domain, not the
  audit's: they are the agent's claims.

:func:`verify_proof` checks one; :class:`p2pmarket.audit.evidencestore.EvidenceStore`
keeps the valid ones and answers ``is_exposed``. Every node of a network holds its
genesis and passes it (:func:`proof_verifier`); without it, a proof that needs the
genesis is refused.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from p2pmarket.auction.snapshot import from_snapshot
from p2pmarket.audit.entry import AuditAuthenticator
from p2pmarket.audit.errors import AuditError
from p2pmarket.audit.refunds import received_refund_fault
from p2pmarket.audit.replay import ANCHORS, Replayer, decode_entry
from p2pmarket.core.domains import AUDIT_ENTRY
from p2pmarket.core.errors import P2PMarketError
from p2pmarket.core.genesis import Genesis
from p2pmarket.core.identity import NODE_ID_SIZE, PUBLIC_KEY_SIZE, node_id_of, verify
from p2pmarket.core.wire import WireError, pack, unpack
from p2pmarket.ledger.certificate import Certificate, verify_certificate
from p2pmarket.ledger.chain import HASH_SIZE, auth_message
from p2pmarket.sharp.proof import CONFLICT, verify_conflict

PROOF_VERSION = 2   # 2: signatures have domains (issue 10); 1 is refused
INCONSISTENCY = "inconsistency"
NONCONFORMANCE = "nonconformance"
REFUND_PAYMENT = "refund_payment"
MAX_PROOF_BYTES = 4 * 1024 * 1024
COMPACT_PROOF_BYTES = 7 * 1024


class EvidenceError(AuditError):
    """Not a valid proof (malformed, wrong host, or it proves nothing)."""


@dataclass(frozen=True)
class Proof:
    host: bytes        # the host's public key
    type: str
    seq: int
    rule: str
    data: bytes        # the proof's canonical bytes

    @property
    def host_id(self) -> bytes:
        return node_id_of(self.host)

    @property
    def proof_id(self) -> bytes:
        return hashlib.sha256(self.data).digest()[:16]

    def summary(self) -> dict[str, Any]:
        return {"host": self.host, "host_id": self.host_id, "type": self.type,
                "seq": self.seq, "rule": self.rule, "id": self.proof_id,
                "bytes": len(self.data)}


class EvidenceSink(Protocol):
    """Where proofs go (the DHT's ``evidence/<host id>`` records)."""

    async def publish(self, host_id: bytes, proof: bytes) -> None: ...


# -- building ----------------------------------------------------------------------

def _auth_doc(auth: AuditAuthenticator) -> list[Any]:
    if type(auth) is not AuditAuthenticator:
        raise EvidenceError("a proof is made of audit log authenticators")
    return [auth.seq, auth.hash, auth.sig]


def inconsistency_proof(a: AuditAuthenticator, b: AuditAuthenticator) -> bytes:
    """Two audit log authenticators of one host, one seq, two hashes."""
    if a.owner != b.owner:
        raise EvidenceError("the authenticators are of two hosts")
    return pack({"v": PROOF_VERSION, "type": INCONSISTENCY, "host": a.owner,
                 "a": _auth_doc(a), "b": _auth_doc(b)})


def fork_proof(a: AuditAuthenticator, next_entry: bytes, next_sig: bytes) -> bytes:
    """The host signed entry ``a.seq + 1`` linking to another entry than ``a``'s."""
    return pack({"v": PROOF_VERSION, "type": INCONSISTENCY, "host": a.owner,
                 "a": _auth_doc(a), "entry": next_entry, "sig": next_sig})


def chain_doc(entries: list[bytes], sig: bytes) -> dict[str, Any]:
    """A chain commitment: consecutive entries, ``sig`` the host's signature of the last
    (it commits the host to the hash of ``entries[0]``)."""
    return {"entries": list(entries), "sig": sig}


Commitment = AuditAuthenticator | dict[str, Any]
"""One side of an inconsistency proof: an authenticator, or a :func:`chain_doc`."""


def _side(c: Commitment) -> Any:
    return c if isinstance(c, dict) else _auth_doc(c)


def conflict_proof(host: bytes, a: Commitment, b: Commitment) -> bytes:
    """Two commitments of ``host`` (authenticators or chains) to different hashes at one
    seq; two authenticators give :func:`inconsistency_proof`'s form."""
    return pack({"v": PROOF_VERSION, "type": INCONSISTENCY, "host": host,
                 "a": _side(a), "b": _side(b)})


def chain_fork_proof(a: AuditAuthenticator, chain: list[bytes], sig: bytes) -> bytes:
    """The host's chain from entry ``a.seq + 1`` (signed at its end) links to another
    entry than ``a``'s; one entry signed itself gives :func:`fork_proof`'s form."""
    if len(chain) == 1:
        return fork_proof(a, chain[0], sig)
    return pack({"v": PROOF_VERSION, "type": INCONSISTENCY, "host": a.owner,
                 "a": _auth_doc(a), "chain": chain_doc(chain, sig)})


def nonconformance_proof(host: bytes, snapshot: dict[str, Any] | None, entries: list[bytes],
                         sig: bytes, seq: int, rule: str, tail: list[bytes] | None = None
                         ) -> bytes:
    """``sig`` signs ``entries[-1]``, or, given ``tail``, the last of ``tail``."""
    doc = {"v": PROOF_VERSION, "type": NONCONFORMANCE, "host": host,
           "snapshot": snapshot, "entries": list(entries), "sig": sig, "seq": seq,
           "rule": rule}
    if tail:
        doc["tail"] = list(tail)
    return pack(doc)


def refund_payment_proof(host: bytes, snapshot: dict[str, Any] | None, entries: list[bytes],
                         sig: bytes, payment: dict[str, Any]) -> bytes:
    return pack({"v": PROOF_VERSION, "type": REFUND_PAYMENT, "host": host,
                 "snapshot": snapshot, "entries": list(entries), "sig": sig,
                 "payment": payment})


# -- verifying ---------------------------------------------------------------------

def verify_proof(data: bytes, host: bytes | None = None, genesis: Genesis | None = None
                 ) -> Proof:
    """Check a proof offline; ``host`` (a public key or node id), if given, must be the
    host it accuses; ``genesis`` is the network's (a proof about certificates needs
    it). Raises :class:`EvidenceError` unless the proof is valid."""
    try:
        return _verify(data, host, genesis)
    except EvidenceError:
        raise
    except P2PMarketError as exc:
        raise EvidenceError(f"invalid proof: {exc.message}", exc.value) from None
    except (KeyError, TypeError, ValueError, IndexError, AssertionError) as exc:
        raise EvidenceError("malformed proof", type(exc).__name__) from None


def proof_host_id(data: bytes, genesis: Genesis | None = None) -> bytes:
    """The node id of the host a valid proof exposes; :class:`EvidenceError` if the
    proof is invalid."""
    return verify_proof(data, genesis=genesis).host_id


def proof_verifier(genesis: Genesis) -> Callable[[bytes], bytes]:
    """:func:`proof_host_id` under the network's ``genesis``: what the DHT checks
    evidence with (:data:`p2pmarket.dht.evidence_records.ProofVerifier`)."""
    def verifier(data: bytes) -> bytes:
        return proof_host_id(data, genesis)
    return verifier


def _verify(data: bytes, want: bytes | None, genesis: Genesis | None) -> Proof:
    if not isinstance(data, bytes) or len(data) > MAX_PROOF_BYTES:
        raise EvidenceError("a proof is at most 4 MiB of bytes")
    doc = unpack(data, MAX_PROOF_BYTES)
    if not isinstance(doc, dict) or not isinstance(doc.get("v"), int):
        raise EvidenceError("not a proof", "v")
    if doc["v"] != PROOF_VERSION:
        raise EvidenceError(f"proof version {doc['v']} is not read here (version "
                            f"{PROOF_VERSION}: signatures with domains)", doc["v"])
    if pack(doc) != data:
        raise EvidenceError("proof is not canonically encoded")
    host = doc["host"]
    if not isinstance(host, bytes) or len(host) != PUBLIC_KEY_SIZE:
        raise EvidenceError("proof host must be a public key")
    if want is not None and want not in (host, node_id_of(host)):
        raise EvidenceError("the proof is about another host", node_id_of(host).hex())
    if want is not None and len(want) not in (PUBLIC_KEY_SIZE, NODE_ID_SIZE):
        raise EvidenceError("give a host key or node id")
    if doc["type"] == INCONSISTENCY:
        seq, rule = _check_inconsistency(host, doc)
    elif doc["type"] == NONCONFORMANCE:
        seq, rule = _check_nonconformance(host, doc, genesis)
    elif doc["type"] == REFUND_PAYMENT:
        seq, rule = _check_refund_payment(host, doc, genesis)
    elif doc["type"] == CONFLICT:
        verify_conflict(doc)
        seq, rule = 0, "oversubscribed"
    else:
        raise EvidenceError("unknown proof type", doc["type"])
    return Proof(host, doc["type"], seq, rule, data)


def _auth(host: bytes, item: Any) -> AuditAuthenticator:
    """An authenticator of the proof, which must be one of ``host``'s audit log."""
    seq, h, sig = item
    auth = AuditAuthenticator(host, seq, h, sig)
    if not auth.verify():
        raise EvidenceError("an authenticator in the proof is not the host's audit log "
                            "signature", seq)
    return auth


def _signed_entry(host: bytes, raw: bytes, sig: Any, what: str) -> dict[str, Any]:
    """The audit entry ``raw`` (its map), which ``sig`` must sign as the host's audit
    log entry."""
    e = decode_entry(raw)
    if not isinstance(sig, bytes) or not verify(
            host, AUDIT_ENTRY, auth_message(host, e["seq"], hashlib.sha256(raw).digest()), sig):
        raise EvidenceError(f"{what} is not signed by the host as an entry of its audit log")
    return e


def _linked(entries: Any, after: bytes | None = None) -> list[dict[str, Any]]:
    """The maps of ``entries`` (a non-empty list of entry bytes), which must be
    consecutive, each linking to the one before (the first to the entry whose hash is
    ``after``, if given)."""
    if not isinstance(entries, list) or not entries or \
            not all(isinstance(e, bytes) for e in entries):
        raise EvidenceError("a chain is a non-empty list of entry bytes")
    docs = [decode_entry(raw) for raw in entries]
    prev = after
    for k, (raw, d) in enumerate(zip(entries, docs, strict=True)):
        if (k and d["seq"] != docs[k - 1]["seq"] + 1) or (prev is not None
                                                           and d["prev"] != prev):
            raise EvidenceError("the chain's entries do not link", d["seq"])
        prev = hashlib.sha256(raw).digest()
    return docs


def _chain(host: bytes, item: Any) -> tuple[int, bytes, dict[str, Any]]:
    """A chain commitment: ``(seq, hash, map)`` of its first entry, which the host's
    signature of its last entry commits it to through the links."""
    if not isinstance(item, dict) or set(item) != {"entries", "sig"}:
        raise EvidenceError("a chain is {entries, sig}")
    docs = _linked(item["entries"])
    _signed_entry(host, item["entries"][-1], item["sig"], "the chain's last entry")
    return docs[0]["seq"], hashlib.sha256(item["entries"][0]).digest(), docs[0]


def _commitment(host: bytes, item: Any) -> tuple[int, bytes]:
    """``(seq, hash)`` the host is committed to by an authenticator or a chain."""
    if isinstance(item, dict):
        seq, h, _ = _chain(host, item)
        return seq, h
    auth = _auth(host, item)
    return auth.seq, auth.hash


def _check_inconsistency(host: bytes, doc: dict[str, Any]) -> tuple[int, str]:
    if "b" in doc:
        if set(doc) != {"v", "type", "host", "a", "b"}:
            raise EvidenceError("proof has the wrong fields")
        (sa, ha), (sb, hb) = _commitment(host, doc["a"]), _commitment(host, doc["b"])
        if sa != sb or ha == hb:
            raise EvidenceError("the authenticators do not conflict")
        return sa, f"two different entries signed for seq {sa}"
    a = _auth(host, doc["a"])
    if "chain" in doc:
        if set(doc) != {"v", "type", "host", "a", "chain"}:
            raise EvidenceError("proof has the wrong fields")
        _, _, e = _chain(host, doc["chain"])
    else:
        if set(doc) != {"v", "type", "host", "a", "entry", "sig"}:
            raise EvidenceError("proof has the wrong fields")
        e = _signed_entry(host, doc["entry"], doc["sig"], "the entry")
    if e["seq"] != a.seq + 1 or e["prev"] == a.hash or len(e["prev"]) != HASH_SIZE:
        raise EvidenceError("the entry does not contradict the authenticator")
    return a.seq, f"entry {e['seq']} links to another entry {a.seq} than the one signed"


def _replayed(host: bytes, doc: dict[str, Any], genesis: Genesis | None
              ) -> tuple[Replayer, Any]:
    """Replay a proof's ``entries`` (from ``in.genesis``, or from the anchor that
    ``snapshot`` is the state of) up to the first fault; with the last entry's map."""
    entries = doc["entries"]
    if not isinstance(entries, list) or not entries or \
            not all(isinstance(e, bytes) for e in entries):
        raise EvidenceError("proof entries must be a list of entry bytes")
    if "tail" in doc:   # the signature is of the tail's end, linked to the last entry
        _linked(doc["tail"], hashlib.sha256(entries[-1]).digest())
        if decode_entry(doc["tail"][0])["seq"] != decode_entry(entries[-1])["seq"] + 1:
            raise EvidenceError("the tail does not follow the entries")
        _signed_entry(host, doc["tail"][-1], doc["sig"], "the tail's last entry")
        last = decode_entry(entries[-1])
    else:
        last = _signed_entry(host, entries[-1], doc["sig"], "the last entry")
    first = decode_entry(entries[0])
    if doc["snapshot"] is None:
        if first["seq"] != 0:
            raise EvidenceError("without a snapshot the entries start at seq 0")
        replayer = Replayer(host=host, genesis=genesis)
        rest = entries
    else:
        if first["kind"] not in ANCHORS:
            raise EvidenceError("the entries start at an out.tick or out.settings entry")
        replayer = Replayer(from_snapshot(doc["snapshot"]), entries[0], host, genesis)
        if replayer.fault is not None:
            raise EvidenceError(replayer.fault.rule)
        rest = entries[1:]
    try:
        for raw in rest:
            if replayer.take(raw) is not None:
                break
    except WireError as exc:
        raise EvidenceError(f"proof entries do not form a chain: {exc.message}") from None
    except P2PMarketError as exc:   # a trimmed snapshot that left out what was needed
        raise EvidenceError(f"the snapshot is incomplete: {exc.message}") from None
    return replayer, last


def _check_nonconformance(host: bytes, doc: dict[str, Any], genesis: Genesis | None
                          ) -> tuple[int, str]:
    if set(doc) - {"tail"} != {"v", "type", "host", "snapshot", "entries", "sig", "seq",
                               "rule"}:
        raise EvidenceError("proof has the wrong fields")
    replayer, last = _replayed(host, doc, genesis)
    fault = replayer.fault
    if fault is None or fault.seq != doc["seq"] or fault.seq != last["seq"]:
        raise EvidenceError("the replay does not show the claimed fault",
                            None if fault is None else fault.seq)
    return fault.seq, fault.rule


def _check_refund_payment(host: bytes, doc: dict[str, Any], genesis: Genesis | None
                          ) -> tuple[int, str]:
    if set(doc) - {"tail"} != {"v", "type", "host", "snapshot", "entries", "sig",
                               "payment"}:
        raise EvidenceError("proof has the wrong fields")
    if genesis is None:
        raise EvidenceError("a refund_payment proof needs the network's genesis (it checks "
                            "the notaries' certificate)")
    cert = Certificate.from_wire(doc["payment"])
    verify_certificate(cert, genesis)
    replayer, last = _replayed(host, doc, genesis)
    if replayer.fault is not None:
        raise EvidenceError("the entries replay with a fault (prove that instead)",
                            replayer.fault.seq)
    assert replayer.state is not None
    try:
        found = received_refund_fault(replayer.state, cert, host)
    except P2PMarketError as exc:
        raise EvidenceError(f"the snapshot is incomplete: {exc.message}") from None
    if found is None:
        raise EvidenceError("the payment pays a refund of the host's log exactly, or none")
    return int(last["seq"]), found[1]


__all__ = ["COMPACT_PROOF_BYTES", "REFUND_PAYMENT", "Commitment", "EvidenceError",
           "EvidenceSink", "Proof", "chain_doc", "chain_fork_proof", "conflict_proof",
           "fork_proof", "inconsistency_proof", "nonconformance_proof", "proof_host_id",
           "proof_verifier", "refund_payment_proof", "verify_proof"]
