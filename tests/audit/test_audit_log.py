"""The host's audit log: hash chain, authenticators, durability, proofs of two logs."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from p2pmarket.audit.entry import AuditAuthenticator, AuditEntry, conflicting, verify_segment
from p2pmarket.audit.errors import AuditError
from p2pmarket.audit.log import AuditLog
from p2pmarket.core.identity import Identity
from p2pmarket.ledger.chain import ZERO_HASH

HOST = Identity(bytes(range(32)))


def test_append_links_and_signs(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.sqlite", HOST)
    a0 = log.append("in.bid", {"from": b"x" * 32, "args": {"cpu": [1, 2, 3]}}, 10)
    a1, a2 = log.append_many([("out.bid", {"ok": True}, 11), ("in.tick", {"now": 12}, 12)])
    assert (a0.seq, a1.seq, a2.seq) == (0, 1, 2) and all(a.verify() for a in (a0, a1, a2))
    got = log.entries()
    assert [e.kind for e, _ in got] == ["in.bid", "out.bid", "in.tick"]
    assert got[0][0].prev == ZERO_HASH and got[1][0].prev == a0.hash
    assert verify_segment([e for e, _ in got], [a for _, a in got], HOST.public_key) == a2.hash
    assert log.head == (2, a2.hash)
    log.close()
    again = AuditLog(tmp_path / "audit.sqlite", HOST)    # durable, continues the chain
    assert again.head == (2, a2.hash)
    a3 = again.append("out.tick", {}, 13)
    assert again.entries(3)[0][0].prev == a2.hash and again.authenticator(3) == a3
    seg = again.segment(since=2)
    entries = [AuditEntry.from_wire(e) for e in seg["entries"]]
    auths = [AuditAuthenticator.from_wire(a) for a in seg["auths"]]
    verify_segment(entries, auths, HOST.public_key, prev_hash=seg["prev"])
    again.close()


def test_tampering_is_detected(tmp_path: Path) -> None:
    log = AuditLog(":memory:", HOST)
    for i in range(3):
        log.append("in.tick", {"now": i}, i)
    got = log.entries()
    entries, auths = [e for e, _ in got], [a for _, a in got]
    forged = [*entries]
    forged[1] = replace(entries[1], body={"now": 99})
    with pytest.raises(AuditError):
        verify_segment(forged, auths, HOST.public_key)
    with pytest.raises(AuditError):
        verify_segment(entries[1:], auths[1:], HOST.public_key)      # no start
    with pytest.raises(AuditError):
        verify_segment(entries, auths, Identity(bytes(32)).public_key)
    with pytest.raises(AuditError):
        log.append("in.x", {"f": 1.5}, 1)                              # floats refused


def test_two_logs_prove_themselves() -> None:
    one, two = AuditLog(":memory:", HOST), AuditLog(":memory:", HOST)
    x = one.append("out.lease", {"balance": 5}, 1)
    y = two.append("out.lease", {"balance": 6}, 1)
    assert conflicting(x, y) and not conflicting(x, x)
