"""A conflict proof verifies offline; every tampered or incomplete one does not."""

from __future__ import annotations

from typing import Any

import pytest

from p2pmarket.audit.evidence import EvidenceError, verify_proof
from p2pmarket.core.identity import Identity
from p2pmarket.core.wire import pack, unpack
from p2pmarket.sharp.claims import Rset, SignedClaim, Term, TicketError, anchor
from p2pmarket.sharp.proof import conflict_proof, verify_conflict

SITE, A, B, C, X = (Identity(bytes([n]) * 32) for n in range(11, 16))
TERM = Term(0, 1000)


def proof_doc() -> dict[str, Any]:
    a = anchor(SITE, A.public_key, Rset("cpu", 10), TERM, b"a")
    b = a.delegate(A, B.public_key, Rset("cpu", 6), Term(0, 500), b"b")
    c = a.delegate(A, C.public_key, Rset("cpu", 5), Term(400, 900), b"c")
    return unpack(conflict_proof(a.claims, [b.final, c.final], 450))  # type: ignore[no-any-return]


def test_a_proof_verifies_and_names_the_agent() -> None:
    s = verify_conflict(proof_doc())
    assert (s.agent, s.site, s.held, s.promised, s.at, s.resource) == (
        A.public_key, SITE.public_key, 10, 11, 450, "cpu")
    assert verify_proof(pack(proof_doc()), A.public_key).host == A.public_key
    with pytest.raises(EvidenceError, match="another host"):
        verify_proof(pack(proof_doc()), B.public_key)


def tampered() -> list[tuple[str, dict[str, Any]]]:
    out = []
    d = proof_doc()
    out.append(("a time when the claims do not overlap", {**d, "at": 100}))
    out.append(("a time outside the agent's claim", {**d, "at": 2000}))
    out.append(("another accused", {**d, "host": B.public_key}))
    out.append(("one subclaim only", {**d, "claims": d["claims"][:1]}))
    out.append(("the same subclaim twice", {**d, "claims": [d["claims"][0]] * 2}))
    out.append(("subclaims out of order", {**d, "claims": d["claims"][::-1]}))
    c0 = d["claims"][0]
    bigger = {**c0, "claim": {**c0["claim"], "rset": {**c0["claim"]["rset"], "count": 9}}}
    out.append(("a count changed after signing", {**d, "claims": sorted(
        [bigger, d["claims"][1]], key=lambda w: SignedClaim.from_wire(w).claim_id)}))
    out.append(("a bad signature", {**d, "claims": [{**c0, "sig": bytes(64)}, d["claims"][1]]}))
    out.append(("no chain", {**d, "chain": []}))
    forged_chain = [{**d["chain"][0], "sig": bytes(64)}]
    out.append(("a forged anchor", {**d, "chain": forged_chain}))
    out.append(("an extra field", {**d, "x": 1}))
    out.append(("an old version", {**d, "v": 1}))
    # an honest agent's two subclaims that fit: 6 + 4 <= 10
    a = anchor(SITE, A.public_key, Rset("cpu", 10), TERM, b"a")
    fits = unpack(conflict_proof(a.claims, [
        a.delegate(A, B.public_key, Rset("cpu", 6), TERM, b"1").final,
        a.delegate(A, C.public_key, Rset("cpu", 4), TERM, b"2").final], 10))
    out.append(("claims that fit", fits))
    # subclaims signed by someone else under the agent's claim id: not the agent's
    other = anchor(SITE, X.public_key, Rset("cpu", 10), TERM, b"x")
    theirs = unpack(conflict_proof(a.claims, [
        other.delegate(X, B.public_key, Rset("cpu", 6), TERM, b"1").final,
        other.delegate(X, C.public_key, Rset("cpu", 6), TERM, b"2").final], 10))
    out.append(("another issuer's subclaims", theirs))
    return out


@pytest.mark.parametrize(("why", "doc"), tampered(), ids=[w for w, _ in tampered()])
def test_a_tampered_proof_does_not_verify(why: str, doc: dict[str, Any]) -> None:
    with pytest.raises(TicketError):
        verify_conflict(doc)
    with pytest.raises(EvidenceError):
        verify_proof(pack(doc))
