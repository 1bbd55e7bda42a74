"""One host as a witness watches it (pure): what the witness holds and has audited,
and the decisions of an audit (docs/design.md section 5).

:class:`Watched` is the bookkeeping: the :class:`~p2pmarket.audit.replay.Replayer`
at the audited head, the authenticators buyers pushed (``held``) and those audited
but not yet stored (``unsaved``), the open challenge and the proofs. Its methods
decide, without I/O:

- :meth:`Watched.hold` -- take one pushed authenticator, or return the proof of
  inconsistency it makes with one held or audited before (one audited whose kept
  signature is not valid is *rechecked*: the next audit fetches the log from there
  again, and the chain proves it);
- :meth:`Watched.check_segment` -- take one segment of the host's log (the
  ``host.audit_log`` answer, read by :func:`read_segment`), or return the proof it
  shows (inconsistency, fork, non-conformance); a segment that proves nothing but
  is not the next part of a signed chain, or is dated too far ahead of ``now``,
  raises :class:`WitnessError`. Of the host's signatures it checks the segment's
  last (the hash chain makes it commit the host to the whole segment) and only
  those others a proof needs; a proof whose entry's own signature is not valid is
  built from the chain linking it to the signed last entry;
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
    Commitment,
    EvidenceError,
    chain_doc,
    chain_fork_proof,
    conflict_proof,
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


class _Chain:
    """A fetched segment as the witness checks it: entries' hashes and maps, which of
    them link to the one before, and their signatures, each checked once and only
    when asked (:meth:`valid`)."""

    def __init__(self, key: bytes, since: int, raws: list[Any], sigs: list[Any]) -> None:
        for raw, sig in zip(raws, sigs, strict=True):
            if not isinstance(raw, bytes) or not isinstance(sig, bytes):
                raise WitnessError("entries and sigs must be bytes")
            if len(sig) != SIGNATURE_SIZE:
                raise WitnessError("a signature must be 64 bytes")
        self.key, self.since, self.raws, self.sigs = key, since, raws, sigs
        self.hashes = [hashlib.sha256(raw).digest() for raw in raws]
        self.docs = [decode_entry(raw) for raw in raws]
        self._valid: dict[int, bool] = {}

    def links(self, i: int) -> bool:
        """Entry ``i`` is at its seq and links to entry ``i - 1``."""
        d = self.docs[i]
        return bool(d["seq"] == self.since + i and d["prev"] == self.hashes[i - 1])

    def run_end(self, i: int) -> int:
        """The last index of the run of linked entries from ``i``."""
        j = i
        while j + 1 < len(self.raws) and self.links(j + 1):
            j += 1
        return j

    def valid(self, i: int) -> bool:
        """The host's signature of entry ``i`` is valid."""
        if i not in self._valid:
            self._valid[i] = AuditAuthenticator(self.key, self.since + i, self.hashes[i],
                                                self.sigs[i]).verify()
        return self._valid[i]

    def commitment(self, i: int) -> Commitment | None:
        """What commits the host to entry ``i``: its own authenticator if valid, else
        the chain from it to the end of its run if that one is signed; None if
        neither."""
        if self.valid(i):
            return AuditAuthenticator(self.key, self.since + i, self.hashes[i],
                                      self.sigs[i])
        end = self.run_end(i)
        if not self.valid(end):
            return None
        return chain_doc(list(self.raws[i:end + 1]), self.sigs[end])


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
    # pushed authenticators that differ from an entry audited whose own signature is
    # not valid: the next audit fetches the log from the first again (see hold)
    recheck: dict[int, AuditAuthenticator] = field(default_factory=dict)

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
                if mine.verify():
                    return inconsistency_proof(mine, auth)
                # the host's signature of that entry was not checked (only its
                # segment's last one was) and is not valid: the next audit fetches the
                # log from there again, and the chain to a signed entry proves it
                if len(self.recheck) < MAX_HELD:
                    self.recheck.setdefault(auth.seq, auth)
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
        :class:`WitnessError` or :class:`WireError` for a segment that proves nothing.

        Signatures: the hash chain links every entry to the next, so the host's
        signature of the last entry taken commits it to all of them; that one is
        checked, and any other only where a proof needs it (an entry that differs
        from an authenticator held or audited; the offending entry of a proof). A
        proof whose entry's own signature is not valid is built from the chain that
        links it to the signed last entry instead (:mod:`p2pmarket.audit.evidence`)."""
        seg = _Chain(self.key, since, entries, sigs)
        r = self.replayer
        first = r.seq + 1 - since   # index of the first entry not audited yet
        if first < 0:
            raise WitnessError("the segment does not start where asked", since)
        overlap = min(first, len(entries))
        diverged = -1
        for i in range(overlap):   # the overlap: audited before
            proof, differs = self._overlap(seg, i, stored)
            if proof is not None:
                return proof
            if differs and diverged < 0:
                diverged = since + i
        if diverged >= 0:   # an honest host never shows another log than it did
            raise WitnessError("the host's log differs from the one audited, and no valid "
                               "signature proves it here", diverged)
        for seq in range(since, since + overlap):
            self.recheck.pop(seq, None)
        if first >= len(entries):
            return None
        seq = since + first
        if r.seq >= 0 and seg.docs[first]["prev"] != r.head and \
                seg.docs[first]["seq"] == seq:
            last = self.audited(r.seq, stored)
            assert last is not None, "every audited entry's authenticator is kept"
            proof = self._fork(seg, first, last)
            if proof is not None:
                return proof
        stop = seg.run_end(first)
        if not seg.valid(stop):
            raise WitnessError("the segment's last entry is not signed by the host",
                               since + stop)
        horizon = now + DEFAULT_CLOCK_TOLERANCE_US
        for i in range(first, stop + 1):
            seq = since + i
            held = self.held.get(seq)
            if held is not None and held.hash != seg.hashes[i]:
                side = seg.commitment(i)
                assert side is not None   # the run ends at a valid signature
                return conflict_proof(self.key, held, side)
            ts = seg.docs[i]["ts"]
            if ts > horizon:
                raise WitnessError("an entry is dated in the future", {
                    "seq": seq, "ts": ts, "now": horizon - DEFAULT_CLOCK_TOLERANCE_US})
            fault = r.take(entries[i])
            self.unsaved[seq] = AuditAuthenticator(self.key, seq, seg.hashes[i], sigs[i])
            if fault is not None:
                if seg.valid(i):
                    return self.nonconformance(sigs[i], fault.seq, fault.rule)
                return self.nonconformance(sigs[stop], fault.seq, fault.rule,
                                           list(entries[i + 1:stop + 1]))
        if stop + 1 < len(entries):   # the chain breaks after the part taken
            nxt = seg.docs[stop + 1]
            if nxt["seq"] == since + stop + 1:
                proof = self._fork(seg, stop + 1, self.unsaved[since + stop])
                if proof is not None:
                    return proof
            raise WireError("audit entries do not link", nxt["seq"])
        return None

    def _overlap(self, seg: _Chain, i: int, stored: AuditedLookup
                 ) -> tuple[bytes | None, bool]:
        """Entry ``i`` of ``seg``, audited before: the proof it makes with the one audited
        (if that one's signature is valid: the witness checks only the last of each
        segment, and a log that differs at one entry differs at all those after it, up
        to that last one) or with a pushed authenticator it is rechecked against; and
        whether it differs from either."""
        seq, h = seg.since + i, seg.hashes[i]
        differs = False
        for other in (self.audited(seq, stored), self.recheck.get(seq)):
            if other is None or other.hash == h:
                continue
            differs = True
            side = seg.commitment(i) if other.verify() else None
            if side is not None:
                return conflict_proof(self.key, other, side), True
        return None, differs

    def _fork(self, seg: _Chain, i: int, last: AuditAuthenticator) -> bytes | None:
        """Entry ``i`` follows ``last`` (a valid authenticator) but links to another entry:
        the proof, if the host committed to entry ``i``."""
        if seg.docs[i]["prev"] == last.hash or not last.verify():
            return None
        if seg.valid(i):
            return fork_proof(last, seg.raws[i], seg.sigs[i])
        end = seg.run_end(i)
        if not seg.valid(end):
            return None
        return chain_fork_proof(last, list(seg.raws[i:end + 1]), seg.sigs[end])

    def nonconformance(self, sig: bytes, seq: int, rule: str,
                       tail: list[bytes] | None = None) -> bytes:
        """The proof of the replay's fault at ``seq`` (``sig`` signs it, or the last of
        ``tail``, the entries that link it to a signed one): with the anchor state's
        payment and refund records left out if it verifies without them."""
        r = self.replayer
        first = decode_entry(r.anchor_entries[0])
        proof = b""
        for full in (False, True):
            snap = None if first["seq"] == 0 or r.anchor_state is None else \
                snapshot(r.anchor_state, payments=full, refunds=full)
            proof = nonconformance_proof(self.key, snap, r.anchor_entries, sig, seq, rule,
                                         tail)
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
