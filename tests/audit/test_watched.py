"""The pure part of a witness (:mod:`p2pmarket.audit.watched`), without a service: held
authenticators and the proofs they make, a segment's refusals, the challenge's
bookkeeping and the reading of a ``host.audit_log`` answer."""

from __future__ import annotations

import pytest

from p2pmarket.audit.entry import AuditAuthenticator, AuditEntry, sign_entry
from p2pmarket.audit.evidence import verify_proof
from p2pmarket.audit.watched import (
    MAX_HELD,
    MAX_PUSH,
    SUSPECTED,
    TRUSTED,
    Watched,
    WitnessError,
    check_auths,
    read_segment,
)
from p2pmarket.core.domains import AUDIT_ENTRY
from p2pmarket.core.identity import Identity
from p2pmarket.core.wire import DEFAULT_CLOCK_TOLERANCE_US
from p2pmarket.ledger.chain import ZERO_HASH, auth_message

HOST = Identity.generate()
S = 1_000_000
T0 = 1_700_000_000 * S


def nothing_stored(key: bytes, seq: int) -> AuditAuthenticator | None:
    return None


def auth(seq: int, h: bytes) -> AuditAuthenticator:
    return AuditAuthenticator(HOST.public_key, seq, h,
                              HOST.sign(AUDIT_ENTRY, auth_message(HOST.public_key, seq, h)))


def test_two_hashes_held_for_one_seq_are_a_proof_and_the_first_is_kept() -> None:
    w = Watched(HOST.public_key)
    first, second = auth(5, b"a" * 32), auth(5, b"b" * 32)
    assert w.hold(first, nothing_stored) is None and w.hold(first, nothing_stored) is None
    proof = w.hold(second, nothing_stored)
    assert proof is not None and verify_proof(proof, HOST.public_key).seq == 5
    assert w.held == {5: first} and w.state == TRUSTED   # the service keeps the proof


def test_held_authenticators_are_bounded() -> None:
    w = Watched(HOST.public_key)
    for seq in range(MAX_HELD + 3):
        assert w.hold(auth(seq, bytes(32)), nothing_stored) is None
    assert len(w.held) == MAX_HELD and max(w.held) == MAX_HELD - 1


def test_pushed_authenticators_are_checked() -> None:
    good = auth(1, bytes(32))
    assert check_auths(HOST.public_key, [[1, good.hash, good.sig]]) == [good]
    for items in ([], [[1, good.hash]], [[True, good.hash, good.sig]],
                  [[2, good.hash, good.sig]], [[1, good.hash, good.sig]] * (MAX_PUSH + 1)):
        with pytest.raises(WitnessError):
            check_auths(HOST.public_key, items)


def test_a_segment_dated_ahead_of_the_clock_is_refused_and_nothing_is_taken() -> None:
    w = Watched(HOST.public_key)
    entry = AuditEntry(0, ZERO_HASH, "in.genesis", {}, T0 + DEFAULT_CLOCK_TOLERANCE_US + 1)
    a = sign_entry(HOST, entry)
    with pytest.raises(WitnessError, match="dated in the future"):
        w.check_segment(0, [entry.encode()], [a.sig], T0, nothing_stored)
    assert w.replayer.seq == -1 and not w.unsaved
    with pytest.raises(WitnessError, match="not signed"):
        w.check_segment(0, [entry.encode()], [bytes(64)], T0, nothing_stored)
    with pytest.raises(WitnessError, match="does not start where asked"):
        w.check_segment(3, [entry.encode()], [auth(3, entry.hash()).sig], T0, nothing_stored)


def test_a_challenge_opens_grows_and_closes() -> None:
    w = Watched(HOST.public_key)
    w.held[4] = auth(4, bytes(32))
    assert not w.conclude(T0, 4, answered=False)
    assert w.state == SUSPECTED and w.error == ""
    assert w.challenge == {"since": 0, "target": 4, "opened": T0, "attempts": 1}
    assert not w.conclude(T0 + S, 2, answered=True)
    assert w.challenge == {"since": 0, "target": 4, "opened": T0, "attempts": 2}
    assert w.error == "the log stops at -1, before seq 2"
    assert w.conclude(T0 + 2 * S, -1, answered=True)   # nothing held: nothing to reach
    assert w.state == TRUSTED and w.error == "" and list(w.held) == [4]   # not audited yet


def test_an_audit_log_answer_is_read_strictly() -> None:
    seg = read_segment({"entries": [b"e"], "sigs": [b"s"], "head": [7, b"h"]}, 10)
    assert (seg.entries, seg.sigs, seg.head_seq) == ([b"e"], [b"s"], 7)
    assert read_segment({"entries": [], "sigs": []}, 10).head_seq == -1
    for bad in ({"entries": [b"e"], "sigs": []}, {"entries": b"e", "sigs": [b"s"]},
                {"entries": [b"e"] * 11, "sigs": [b"s"] * 11}):
        with pytest.raises(WitnessError, match="malformed audit log answer"):
            read_segment(bad, 10)
    with pytest.raises(KeyError):
        read_segment({"sigs": []}, 10)
