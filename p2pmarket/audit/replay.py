"""Replaying a host's audit log through the auctioneer's pure code (docs/design.md section 5).

:class:`Replayer` takes a host's log entries one at a time, as their canonical
bytes (what ``host.audit_log`` serves), and checks:

- the chain: consecutive seqs, each entry's ``prev`` is the hash of the one
  before (the host's signature on the last entry of a run then commits it to the
  whole run: only that one needs checking);
- conformance: the log starts with ``in.genesis`` (the state), every input is
  replayed with :func:`p2pmarket.auction.steps.step` and must be followed at once by
  exactly the outputs the replay gives, byte for byte (same kind, body and
  timestamp); read-only entries (``out.status``, uploads) are skipped; anything
  else is a fault;
- signed inputs: every buyer's input (``in.<rpc>``) carries the caller's signed
  request, which must verify and match the input exactly
  (:func:`p2pmarket.auction.steps.check_signed`; addressed to ``host``'s node id when
  the replayer knows the host's key); one that does not is the fault ``unsigned
  input: <why>`` (the host invented or altered a buyer's input);
- requests taken once: a buyer's input whose ``(from, ts)`` the state has already
  taken, or may have and forgotten (:mod:`p2pmarket.auction.seen`), is the fault
  ``duplicate request: ...`` or ``stale request: ...`` (the host ran a buyer's
  request twice);
- time: entries' ``ts`` never decrease (``entry timestamps must not decrease``),
  and an ``in.tick``'s ``now`` is its entry's ``ts`` (``an in.tick's now must be its
  entry's timestamp``);
- payments: a ``create_account``/``fund`` input whose payment the host credited must
  credit exactly the certificate the buyer signed into the request
  (:func:`payment_mismatch`): else the fault ``the payment credited ...`` (the host
  kept part of a buyer's payment);
- refunds paid: an ``in.refund_paid`` must carry the host's SEND that pays a refund
  the state holds and has not marked paid, exactly: to its holder, of its amount,
  with its memo (:func:`p2pmarket.audit.refunds.refund_payment_fault`); with the
  network's ``genesis``, the SEND's certificate must carry a notary quorum too.

Signed requests may be checked ahead, in bulk and off the replay (across cores:
:mod:`p2pmarket.audit.sigpool`): :func:`signed_verdict` is the answer of
:func:`~p2pmarket.auction.steps.check_signed` for one entry from its bytes alone
(with the host's node id given, that check reads nothing of the state), and a
replayer given those answers (:attr:`Replayer.verdicts`, :class:`Verdicts`) uses them
instead of checking again: the same faults for the same log either way.

The first fault stops the replay (:attr:`Replayer.fault`). The replayer keeps the
state at the last *anchor* (``in.genesis``, or an ``out.tick``/``out.settings``
entry, whose body commits to the state digest) and the entries since, which is
what a proof of non-conformance needs (:mod:`p2pmarket.audit.evidence`).
Pure: no clock, socket or file.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from p2pmarket.auction.machine import SNAPSHOT_VERSION, HostState, MissingState
from p2pmarket.auction.snapshot import from_snapshot, state_digest
from p2pmarket.auction.steps import (
    GENESIS,
    INFO,
    INPUTS,
    REFUND_PAID,
    RPCS,
    check_signed,
    request_refusal,
    step,
)
from p2pmarket.audit.entry import MAX_ENTRY_BYTES, encode_entry
from p2pmarket.audit.refunds import refund_payment_fault
from p2pmarket.core.errors import P2PMarketError
from p2pmarket.core.genesis import Genesis
from p2pmarket.core.identity import node_id_of
from p2pmarket.core.wire import WireError, pack, unpack
from p2pmarket.ledger.certificate import Certificate
from p2pmarket.ledger.chain import SEND, ZERO_HASH

ANCHORS = frozenset({"out.tick", "out.settings"})


@dataclass(frozen=True)
class Fault:
    """The first entry that does not follow the host's own rules."""

    seq: int
    rule: str


@dataclass(frozen=True)
class Verdicts:
    """:func:`signed_verdict` answers for entries of a log whose requests must be
    addressed to ``host_id``: entry hash -> why its signed request does not hold (None:
    it holds). Entries not in it are checked as the replay goes."""

    host_id: bytes
    by_hash: Mapping[bytes, str | None] = field(default_factory=dict)


# check_signed reads the state only for the host's id, which the verdicts are given
_NO_STATE = cast(HostState, None)


def signed_verdict(raw: bytes, host_id: bytes) -> tuple[bytes, str | None] | None:
    """``(entry hash, check_signed's answer)`` for the entry ``raw`` if it is a buyer's
    input; None if it is not (or is not an entry at all: the replay says why). Pure."""
    try:
        doc = decode_entry(raw)
    except WireError:
        return None
    kind = doc["kind"]
    if kind not in INPUTS or not kind.startswith("in.") or kind[3:] not in RPCS:
        return None
    return hashlib.sha256(raw).digest(), check_signed(_NO_STATE, kind, doc["body"], host_id)


def verdicts_of(raws: Iterable[bytes], host_id: bytes) -> list[tuple[bytes, str | None]]:
    """:func:`signed_verdict` of each buyer's input among ``raws``. Pure."""
    return [v for v in (signed_verdict(raw, host_id) for raw in raws) if v is not None]


def decode_entry(raw: bytes) -> dict[str, Any]:
    """An entry map from its bytes (shape checked, not its meaning)."""
    doc = unpack(raw, MAX_ENTRY_BYTES)
    if (not isinstance(doc, dict) or set(doc) != {"seq", "prev", "kind", "body", "ts"}
            or not isinstance(doc["seq"], int) or not isinstance(doc["prev"], bytes)
            or not isinstance(doc["kind"], str) or not isinstance(doc["ts"], int)):
        raise WireError("malformed audit entry", None)
    return doc


class Replayer:
    """Incremental conformance check of one host's log (see the module docstring).

    Start it empty (the log from seq 0) or from an anchor: a state whose digest the
    anchor entry (given as ``anchor_raw``) commits to. ``host`` (the host's public
    key), if given, is who buyers' requests must be addressed to and who pays the
    refunds; without it, the node id the state names. ``genesis``, if given, is the
    notary committee whose quorum the certificates of refunds paid must carry.
    """

    def __init__(self, state: HostState | None = None, anchor_raw: bytes | None = None,
                 host: bytes | None = None, genesis: Genesis | None = None) -> None:
        self.state = state
        self.host = host
        self.genesis = genesis
        self.host_id = None if host is None else node_id_of(host)
        self.seq = -1
        self.head = ZERO_HASH
        self.fault: Fault | None = None
        self._expect: list[tuple[str, bytes]] = []
        self._expect_ts = 0
        self._last_ts = 0
        self.anchor_state: HostState | None = None
        self.anchor_entries: list[bytes] = []
        self.entries = 0
        # signed requests checked ahead (None: each is checked as it comes)
        self.verdicts: Verdicts | None = None
        if anchor_raw is not None:
            assert state is not None
            doc = decode_entry(anchor_raw)
            self.seq, self.head = doc["seq"], hashlib.sha256(anchor_raw).digest()
            self._last_ts = doc["ts"]
            body = doc["body"]
            if doc["kind"] not in ANCHORS or not isinstance(body, dict) or \
                    body.get("state") != state_digest(state):
                self.fault = Fault(doc["seq"], "the snapshot does not match the state "
                                               "the anchor entry commits to")
            self.anchor_state, self.anchor_entries = state, [anchor_raw]

    @property
    def pending(self) -> bool:
        """An input whose outputs have not all been seen yet."""
        return bool(self._expect)

    def take(self, raw: bytes) -> Fault | None:
        """Take the next entry; return the fault it shows, if any (after a fault nothing
        more is taken). Raises :class:`WireError`, taking nothing, if ``raw`` is not the
        next link of the chain (unsigned garbage is no proof of anything)."""
        if self.fault is not None:
            return self.fault
        seq = self.seq + 1
        if self._expect:
            kind, body_bytes = self._expect[0]
            if raw == encode_entry(seq, self.head, kind, body_bytes, self._expect_ts):
                self._advance(seq, hashlib.sha256(raw).digest(), raw)
                self._expect.pop(0)
                if kind in ANCHORS and not self._expect:
                    assert self.state is not None
                    self.anchor_state, self.anchor_entries = self.state, [raw]
                return None
            self._check_link(raw)
            self._advance(seq, hashlib.sha256(raw).digest(), raw)
            return self._fail(seq, f"entry {seq} should be the {kind} the rules give "
                                   "for the input before it")
        doc = self._check_link(raw)
        if seq == 0 and doc["kind"] == GENESIS:
            check_log_version(doc["body"])
        h = hashlib.sha256(raw).digest()
        self._advance(seq, h, raw)
        kind = doc["kind"]
        if doc["ts"] < self._last_ts:
            return self._fail(seq, f"entry timestamps must not decrease ({doc['ts']} after "
                                   f"{self._last_ts})")
        self._last_ts = doc["ts"]
        if seq == 0 or kind == GENESIS:
            if seq != 0 or kind != GENESIS:
                return self._fail(seq, "the log must start with in.genesis, and only there")
            try:
                self.state = from_snapshot(doc["body"])
            except P2PMarketError:
                return self._fail(seq, "malformed in.genesis state")
            self.anchor_state, self.anchor_entries = self.state, [raw]
            return None
        if kind in INFO:
            return None
        if kind not in INPUTS:
            return self._fail(seq, f"unexpected entry {kind!r} (not an input, or an output "
                                   "no input asked for)")
        assert self.state is not None
        v = self.verdicts
        if v is not None and v.host_id == self.host_id and h in v.by_hash:
            unsigned = v.by_hash[h]
        else:
            unsigned = check_signed(self.state, kind, doc["body"], self.host_id)
        if unsigned is not None:
            return self._fail(seq, f"unsigned input: {unsigned}")
        repeated = request_refusal(self.state, kind, doc["body"], doc["ts"])
        if repeated is not None:
            return self._fail(seq, repeated)
        underpaid = payment_mismatch(kind, doc["body"], self.host_id or self.state.host_id)
        if underpaid is not None:
            return self._fail(seq, underpaid)
        if kind == REFUND_PAID:
            wrong = refund_payment_fault(self.state, doc["body"], self.host, self.genesis)
            if wrong is not None:
                return self._fail(seq, wrong)
        if kind == "in.tick" and (not isinstance(doc["body"], dict)
                                  or doc["body"].get("now") != doc["ts"]):
            return self._fail(seq, "an in.tick's now must be its entry's timestamp")
        try:
            st = step(self.state, kind, doc["body"], doc["ts"])
            expect = [(k, pack(b)) for k, b in st.outputs]
        except MissingState:
            raise
        except P2PMarketError as exc:
            return self._fail(seq, f"malformed input: {exc.message}")
        except (KeyError, TypeError, ValueError, AttributeError, AssertionError):
            return self._fail(seq, "malformed input")
        self.state = st.state
        self._expect, self._expect_ts = expect, doc["ts"]
        return None

    def _check_link(self, raw: bytes) -> dict[str, Any]:
        doc = decode_entry(raw)
        if doc["seq"] != self.seq + 1 or doc["prev"] != self.head:
            raise WireError("audit entries do not link", doc["seq"])
        return doc

    def _advance(self, seq: int, h: bytes, raw: bytes) -> None:
        self.seq, self.head = seq, h
        self.anchor_entries.append(raw)

    def _fail(self, seq: int, rule: str) -> Fault:
        self.fault = Fault(seq, rule)
        return self.fault


def check_log_version(genesis_body: Any) -> None:
    """Raise :class:`WireError` if an ``in.genesis`` body is a state snapshot of another
    version than this code replays: a log of an older format is refused, not taken as
    evidence (its host broke no rule; it runs older code)."""
    v = genesis_body.get("v") if isinstance(genesis_body, dict) else None
    if isinstance(v, int) and not isinstance(v, bool) and v != SNAPSHOT_VERSION:
        raise WireError(f"the log starts with a state snapshot of version {v}; this "
                        f"version replays only version {SNAPSHOT_VERSION} (older logs are "
                        "refused; the host must start a new log)",
                        {"version": v, "expected": SNAPSHOT_VERSION})


PAID = frozenset({"in.create_account", "in.fund", "in.buy_anchor"})


def payment_mismatch(kind: str, body: Any, host_id: bytes) -> str | None:
    """Why the payment a host credited for a ``create_account``/``fund``/``buy_anchor``
    input is not
    the one in the buyer's signed arguments: the credit must be the certificate's SEND
    (id = the SEND entry's hash, amount = its amount), from the caller to this host.
    None if it is, if nothing was credited, or if what the buyer sent is no
    certificate at all (crediting that harms only the host). Signatures are not
    checked here: the buyer signed the certificate into its request, and the host
    checked the notaries' signatures before crediting. Pure."""
    if kind not in PAID or not isinstance(body, dict):
        return None
    credit = body.get("payment")
    args = body.get("args")
    if not isinstance(credit, dict) or not isinstance(args, dict):
        return None
    try:
        entry = Certificate.from_wire(args.get("payment")).entry
    except (P2PMarketError, KeyError, TypeError, ValueError, AttributeError):
        return None
    to = entry.body.get("to") if isinstance(entry.body, dict) else None
    if entry.kind != SEND or entry.owner != body.get("from") or not isinstance(to, bytes) \
            or node_id_of(to) != host_id:
        return "the payment credited is not a transfer from the caller to this host"
    if credit.get("id") != entry.hash() or credit.get("amount") != entry.amount:
        return (f"the payment credited ({credit.get('amount')!r}) differs from the buyer's "
                f"certificate ({entry.amount})")
    return None


def replay(entries: list[bytes], state: HostState | None = None,
           anchor_raw: bytes | None = None, host: bytes | None = None,
           genesis: Genesis | None = None) -> Replayer:
    """Link and replay ``entries`` (from seq 0, or after ``anchor_raw``); stops at the
    first fault. Raises :class:`WireError` if the entries do not form a chain."""
    r = Replayer(state, anchor_raw, host, genesis)
    for raw in entries:
        if r.take(raw) is not None:
            break
    return r


__all__ = ["ANCHORS", "Fault", "Replayer", "Verdicts", "check_log_version", "decode_entry",
           "payment_mismatch", "replay", "signed_verdict", "verdicts_of"]
