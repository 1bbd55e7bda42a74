"""One host as a witness watches it (pure): what the witness holds and has audited,
and the decisions of an audit (docs/design.md section 5).

:class:`Watched` is the bookkeeping: the :class:`~p2pmarket.audit.replay.Replayer`
at the audited head, the authenticators buyers pushed (``held``) and those audited
but not yet stored (``unsaved``), the open challenge and the proofs. Its methods
decide, without I/O:

- :meth:`Watched.hold` -- take one pushed authenticator, or return the proof of
  inconsistency it makes with one held or audited before;
- :meth:`Watched.check_segment` -- take one segment of the host's log (the
  ``host.audit_log`` answer, read by :func:`read_segment`), or return the proof it
  shows (inconsistency, fork, non-conformance); a segment that proves nothing but
  is not the next part of a signed chain, or is dated too far ahead of ``now``,
  raises :class:`WitnessError`;
- :meth:`Watched.conclude` -- after the fetch, open, extend or close the challenge,
  and note the refunds overdue (recorded long ago and still unpaid: the host is
  suspected while there are any; a complaint, not a proof);
- :meth:`Watched.refund_received` -- a certified SEND of the host a buyer pushed
  (``witness.refund``): the proof it makes with the audited log if it names a refund
  of the log and does not pay it exactly.

The authenticators of entries audited in earlier segments live in the witness's
store; the methods that need them take the look-up (:data:`AuditedLookup`). The
caller (:class:`~p2pmarket.audit.witness.WitnessService`) keeps the proofs and
publishes them, stores the progress and gossips the audited head.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from p2pmarket.auction.snapshot import snapshot
from p2pmarket.audit.entry import AuditAuthenticator
from p2pmarket.audit.errors import AuditError
from p2pmarket.audit.evidence import (
    EvidenceError,
    fork_proof,
    inconsistency_proof,
    nonconformance_proof,
    refund_payment_proof,
    verify_proof,
)
from p2pmarket.audit.refunds import overdue_refunds, received_refund_fault
from p2pmarket.audit.replay import Replayer, decode_entry
from p2pmarket.core.genesis import Genesis
from p2pmarket.core.identity import PUBLIC_KEY_SIZE, SIGNATURE_SIZE
from p2pmarket.core.wire import DEFAULT_CLOCK_TOLERANCE_US, WireError
from p2pmarket.ledger.certificate import Certificate
from p2pmarket.ledger.chain import HASH_SIZE

MAX_PUSH = 256      # authenticators in one witness.push
MAX_HELD = 4096     # pushed authenticators held per host, ahead of the audit
TRUSTED, SUSPECTED, EXPOSED = "trusted", "suspected", "exposed"

AuditedLookup = Callable[[bytes, int], AuditAuthenticator | None]
"""``(host key, seq)`` -> the host's authenticator of an entry audited in an earlier
segment (:meth:`p2pmarket.audit.witnessstore.WitnessStore.audited`)."""


class WitnessError(AuditError):
    """A refused witness request, or a host's answer the witness cannot take."""


def check_auths(host: bytes, items: Any) -> list[AuditAuthenticator]:
    """Pushed ``[[seq, hash, sig], ...]``: at most :data:`MAX_PUSH`, all the host's valid
    signatures, or :class:`WitnessError`."""
    if not isinstance(items, list) or not 0 < len(items) <= MAX_PUSH:
        raise WitnessError(f"auths must be a list of 1 to {MAX_PUSH} authenticators")
    out = []
    for item in items:
        if not isinstance(item, list) or len(item) != 3:
            raise WitnessError("an authenticator is [seq, hash, sig]")
        seq, h, sig = item
        if isinstance(seq, bool) or not isinstance(seq, int) or not isinstance(h, bytes) \
                or len(h) != HASH_SIZE or not isinstance(sig, bytes) \
                or len(sig) != SIGNATURE_SIZE:
            raise WitnessError("an authenticator is [seq, hash, sig]")
        auth = AuditAuthenticator(host, seq, h, sig)
        if not auth.verify():
            raise WitnessError("an authenticator is not signed by the host", seq)
        out.append(auth)
    return out


def check_host_key(value: Any) -> bytes:
    if not isinstance(value, bytes) or len(value) != PUBLIC_KEY_SIZE:
        raise WitnessError("host must be a 32-byte public key")
    return value


@dataclass(frozen=True)
class Segment:
    """One ``host.audit_log`` answer: entries (canonical bytes) with their signatures,
    and the seq of the host's head (-1 if it gave none)."""

    entries: list[Any]
    sigs: list[Any]
    head_seq: int


def read_segment(resp: dict[str, Any], limit: int) -> Segment:
    """Read a ``host.audit_log`` answer of at most ``limit`` entries; raises
    :class:`WitnessError` if malformed, KeyError or TypeError if it is not a map with
    ``entries`` and ``sigs``."""
    entries, sigs = resp["entries"], resp["sigs"]
    if not isinstance(entries, list) or not isinstance(sigs, list) or \
            len(entries) != len(sigs) or len(entries) > limit:
        raise WitnessError("malformed audit log answer")
    head = resp.get("head")
    head_seq = head[0] if isinstance(head, list) and head and \
        isinstance(head[0], int) else -1
    return Segment(entries, sigs, head_seq)


@dataclass
class Watched:
    key: bytes
    url: str | None = None
    replayer: Replayer = field(default_factory=Replayer)
    held: dict[int, AuditAuthenticator] = field(default_factory=dict)
    confirmed: int = 0   # pushed authenticators an audit has since matched (then dropped)
    # audited in the segment being checked, not yet in the store (older ones are there)
    unsaved: dict[int, AuditAuthenticator] = field(default_factory=dict)
    saved_anchor: int = -1   # first seq of the replay entries the store holds
    challenge: dict[str, Any] | None = None
    proofs: list[bytes] = field(default_factory=list)
    last_audit: int = 0
    error: str = ""
    genesis: Genesis | None = None   # the network's: refund certificates are checked
    overdue: list[str] = field(default_factory=list)   # refunds unpaid for too long

    def __post_init__(self) -> None:
        if self.replayer.host_id is None and self.replayer.seq < 0:
            # buyers' signed requests must be addressed to this host
            self.replayer = Replayer(host=self.key, genesis=self.genesis)

    @property
    def state(self) -> str:
        if self.proofs:
            return EXPOSED
        return SUSPECTED if self.challenge is not None or self.overdue else TRUSTED

    def anchor_seq(self) -> int:
        return self.replayer.seq - len(self.replayer.anchor_entries) + 1

    def audited(self, seq: int, stored: AuditedLookup) -> AuditAuthenticator | None:
        """The host's authenticator of an entry we audited."""
        return self.unsaved.get(seq) or stored(self.key, seq)

    def hold(self, auth: AuditAuthenticator, stored: AuditedLookup) -> bytes | None:
        """Take one (verified) authenticator of the host; return the proof of
        inconsistency it makes, if any."""
        if auth.seq <= self.replayer.seq:
            mine = self.audited(auth.seq, stored)
            if mine is not None and mine.hash != auth.hash:
                return inconsistency_proof(mine, auth)
            return None
        other = self.held.get(auth.seq)
        if other is not None and other.hash != auth.hash:
            return inconsistency_proof(other, auth)
        if other is None and len(self.held) < MAX_HELD:
            self.held[auth.seq] = auth
        return None

    def check_segment(self, since: int, entries: list[Any], sigs: list[Any], now: int,
                      stored: AuditedLookup) -> bytes | None:
        """Take the entries from seq ``since`` on; return the proof the first bad one
        shows (nothing after it is taken), or None when all were taken. Raises
        :class:`WitnessError` or :class:`WireError` for a segment that proves nothing."""
        r = self.replayer
        horizon = now + DEFAULT_CLOCK_TOLERANCE_US
        for i, (raw, sig) in enumerate(zip(entries, sigs, strict=True)):
            if not isinstance(raw, bytes) or not isinstance(sig, bytes):
                raise WitnessError("entries and sigs must be bytes")
            seq = since + i
            h = hashlib.sha256(raw).digest()
            auth = AuditAuthenticator(self.key, seq, h, sig) if len(sig) == SIGNATURE_SIZE \
                else None
            if auth is None or not auth.verify():
                raise WitnessError("an entry is not signed by the host", seq)
            if seq <= r.seq:   # the overlap: an entry audited before
                mine = self.audited(seq, stored)
                if mine is not None and mine.hash != h:
                    return inconsistency_proof(mine, auth)
                continue
            if seq != r.seq + 1:
                raise WitnessError("the segment does not start where asked", seq)
            held = self.held.get(seq)
            if held is not None and held.hash != h:
                return inconsistency_proof(held, auth)
            doc = decode_entry(raw)
            if doc["ts"] > horizon:
                raise WitnessError("an entry is dated in the future", {
                    "seq": seq, "ts": doc["ts"], "now": horizon - DEFAULT_CLOCK_TOLERANCE_US})
            try:
                fault = r.take(raw)
            except WireError:
                if r.seq >= 0 and doc["seq"] == seq and doc["prev"] != r.head:
                    last = self.audited(r.seq, stored)
                    assert last is not None
                    return fork_proof(last, raw, sig)
                raise
            self.unsaved[seq] = auth
            if fault is not None:
                return self.nonconformance(sig, fault.seq, fault.rule)
        return None

    def nonconformance(self, sig: bytes, seq: int, rule: str) -> bytes:
        """The proof of the replay's fault at ``seq``: with the anchor state's payment
        and refund records left out if it verifies without them."""
        r = self.replayer
        first = decode_entry(r.anchor_entries[0])
        proof = b""
        for full in (False, True):
            snap = None if first["seq"] == 0 or r.anchor_state is None else \
                snapshot(r.anchor_state, payments=full, refunds=full)
            proof = nonconformance_proof(self.key, snap, r.anchor_entries, sig, seq, rule)
            try:
                verify_proof(proof, genesis=self.genesis)
                return proof
            except EvidenceError:
                continue
        return proof

    def refund_received(self, cert: Certificate, stored: AuditedLookup) -> bytes | None:
        """The proof that ``cert`` (a certified SEND of the host, its notary quorum
        checked by the caller) names a refund of the audited log and does not pay it
        exactly; None if it does not (or names no refund audited yet)."""
        r = self.replayer
        if r.state is None or r.seq < 0 or r.fault is not None or \
                received_refund_fault(r.state, cert, self.key) is None:
            return None
        last = self.audited(r.seq, stored)
        assert last is not None, "every audited entry's authenticator is kept"
        first = decode_entry(r.anchor_entries[0])
        snap = None if first["seq"] == 0 or r.anchor_state is None else \
            snapshot(r.anchor_state, payments=False, refunds=True)
        return refund_payment_proof(self.key, snap, r.anchor_entries, last.sig,
                                    cert.to_wire())

    def conclude(self, now: int, target: int, answered: bool) -> bool:
        """After fetching (``answered``: the host gave its log) toward ``target`` (the
        highest seq held when the audit began): a log short of it, or no answer, opens
        or extends the challenge; reaching it closes the challenge and drops the held
        authenticators now audited. Returns whether it was reached. The refunds the
        audited log recorded more than :data:`~p2pmarket.audit.refunds.REFUND_GRACE_US`
        before ``now`` and has not marked paid are :attr:`overdue` (the host stays
        suspected while there are any)."""
        state = self.replayer.state
        if answered and state is not None:
            self.overdue = [r.refund_id for r in overdue_refunds(state, now)][:100]
        if not answered or self.replayer.seq < target:
            if self.challenge is None:
                self.challenge = {"since": max(0, self.replayer.seq), "target": target,
                                  "opened": now, "attempts": 0}
            self.challenge["attempts"] += 1
            self.challenge["target"] = max(target, self.challenge["target"])
            if answered:
                self.error = f"the log stops at {self.replayer.seq}, before seq {target}"
            return False
        self.challenge = None
        self.error = ""
        for seq in [s for s in self.held if s <= self.replayer.seq]:
            del self.held[seq]
            self.confirmed += 1
        return True


__all__ = ["EXPOSED", "MAX_HELD", "MAX_PUSH", "SUSPECTED", "TRUSTED", "AuditedLookup",
           "Segment", "Watched", "WitnessError", "check_auths", "check_host_key",
           "read_segment"]
