"""The ticket rules of the slides, one by one, and each way a ticket can be malformed."""

from __future__ import annotations

from typing import Any

import pytest

from p2pmarket.core.domains import LEASE, TICKET
from p2pmarket.core.identity import Identity
from p2pmarket.sharp.claims import (
    Claim,
    Rset,
    SignedClaim,
    Term,
    Ticket,
    TicketError,
    anchor,
    check_ticket,
    contains,
    sign_claim,
    subclaim,
    subinterval,
)

SITE, A, B, C = (Identity(bytes([n]) * 32) for n in (1, 2, 3, 4))
T0, HOUR = 1_000_000_000, 3_600_000_000
TERM = Term(T0, T0 + 4 * HOUR)


def cpu(n: int) -> Rset:
    return Rset("cpu", n)


def chain() -> Ticket:
    """Site -> A 40 -> B 8 -> C 3, each within its parent's term."""
    t = anchor(SITE, A.public_key, cpu(40), TERM, b"a")
    t = t.delegate(A, B.public_key, cpu(8), Term(T0, T0 + 2 * HOUR), b"b")
    return t.delegate(B, C.public_key, cpu(3), Term(T0 + HOUR, T0 + 2 * HOUR), b"c")


def forged(t: Ticket, index: int, signer: Identity | None = None, **changes: Any
           ) -> Ticket:
    """``t`` with claim ``index`` rebuilt with ``changes`` and signed by ``signer``
    (default: its issuer, when the test holds that key)."""
    old = t.claims[index].claim
    fields = {"issuer": old.issuer, "holder": old.holder, "parent": old.parent,
              "rset": old.rset, "term": old.term, "serial": old.serial, **changes}
    claim = Claim(**fields)
    keys = {k.public_key: k for k in (SITE, A, B, C)}
    sc = sign_claim(signer or keys[claim.issuer], claim)
    return Ticket((*t.claims[:index], sc, *t.claims[index + 1:]))


def rule_of(t: Ticket, site: bytes | None = SITE.public_key) -> tuple[int, str]:
    with pytest.raises(TicketError) as info:
        check_ticket(t, site)
    return info.value.value["index"], info.value.value["rule"]


def test_a_valid_chain_verifies_offline_with_the_sites_key() -> None:
    t = chain()
    check_ticket(t, SITE.public_key)
    assert (t.site, t.holder, t.rset, t.term) == (
        SITE.public_key, C.public_key, cpu(3), Term(T0 + HOUR, T0 + 2 * HOUR))
    assert [sc.claim.parent for sc in t.claims] == [None, t.claims[0].claim_id,
                                                    t.claims[1].claim_id]


def test_the_wire_form_round_trips_and_the_claim_id_is_the_bodys() -> None:
    t = chain()
    back = Ticket.from_wire(t.to_wire())
    assert back == t
    assert [sc.claim_id for sc in back.claims] == [sc.claim_id for sc in t.claims]
    assert len({sc.claim_id for sc in t.claims}) == 3
    other = forged(t, 2, serial=b"d")   # only the serial differs: another claim
    assert other.final.claim_id != t.final.claim_id


def test_subclaim_rules_each_named() -> None:
    p = chain().claims[1].claim   # B's 8 cpu, T0 .. T0 + 2h
    ok = Claim(B.public_key, C.public_key, p.claim_id, cpu(8), Term(T0, T0 + 2 * HOUR), b"x")
    assert subclaim(ok, p) is None
    cases = {
        "issuer": Claim(A.public_key, C.public_key, p.claim_id, cpu(1), p.term, b"x"),
        "parent": Claim(B.public_key, C.public_key, bytes(16), cpu(1), p.term, b"x"),
        "contains": Claim(B.public_key, C.public_key, p.claim_id, cpu(9), p.term, b"x"),
        "subinterval": Claim(B.public_key, C.public_key, p.claim_id, cpu(1),
                             Term(T0 - 1, T0 + HOUR), b"x"),
    }
    for rule, c in cases.items():
        assert subclaim(c, p) == rule
    late = Claim(B.public_key, C.public_key, p.claim_id, cpu(1),
                 Term(T0 + HOUR, T0 + 2 * HOUR + 1), b"x")
    assert subclaim(late, p) == "subinterval"


def test_contains_needs_the_same_type_and_identifier() -> None:
    assert contains(cpu(5), cpu(5)) and not contains(cpu(5), cpu(6))
    assert not contains(cpu(5), Rset("memory", 1))
    port = Rset("tcp_port", 1, "30000")
    assert contains(port, Rset("tcp_port", 1, "30000"))
    assert not contains(port, Rset("tcp_port", 1, "30001"))
    assert subinterval(Term(2, 3), Term(1, 4)) and subinterval(Term(1, 4), Term(1, 4))
    assert not subinterval(Term(0, 3), Term(1, 4)) and not subinterval(Term(2, 5), Term(1, 4))


@pytest.mark.parametrize(("index", "rule", "changes"), [
    (0, "anchor", {"parent": bytes(16)}),
    (1, "issuer", {"issuer": C.public_key}),
    (1, "parent", {"parent": bytes(16)}),
    (1, "contains", {"rset": cpu(41)}),
    (1, "contains", {"rset": Rset("memory", 8)}),
    (1, "subinterval", {"term": Term(T0, T0 + 5 * HOUR)}),
    (2, "subinterval", {"term": Term(T0 - 1, T0 + HOUR)}),
])
def test_each_malformed_chain_names_its_claim_and_rule(index: int, rule: str,
                                                       changes: dict[str, Any]) -> None:
    t = forged(chain(), index, **changes)
    got = rule_of(t)
    # a changed claim also changes its id, so its child no longer names it: the first
    # fault is the changed claim's own
    assert got == (index, rule)


def test_a_signature_by_another_key_or_over_other_bytes_is_refused() -> None:
    t = chain()
    sc = t.claims[1]
    wrong_key = Ticket((t.claims[0], SignedClaim(sc.claim, C.sign(TICKET, sc.claim.packed)),
                        t.claims[2]))
    assert rule_of(wrong_key) == (1, "signature")
    other_domain = Ticket((t.claims[0], SignedClaim(sc.claim, A.sign(LEASE, sc.claim.packed)),
                           t.claims[2]))
    assert rule_of(other_domain) == (1, "signature")
    flipped = bytes([sc.sig[0] ^ 1]) + sc.sig[1:]
    assert rule_of(Ticket((t.claims[0], SignedClaim(sc.claim, flipped), t.claims[2]))) == (
        1, "signature")


def test_an_anchor_from_another_site_is_refused_but_valid_on_its_own() -> None:
    t = anchor(A, B.public_key, cpu(4), TERM, b"s")
    assert rule_of(t) == (0, "site")
    check_ticket(t, A.public_key)
    check_ticket(t)   # without a site key: the chain's own rules only


def test_delegate_refuses_what_would_not_be_a_subclaim() -> None:
    t = chain()
    with pytest.raises(TicketError, match="holder"):
        t.delegate(A, B.public_key, cpu(1), t.term, b"n")
    with pytest.raises(TicketError) as info:
        t.delegate(C, A.public_key, cpu(4), t.term, b"n")
    assert info.value.value == {"index": 3, "rule": "contains"}


@pytest.mark.parametrize("doc", [
    None, [], {}, [{"claim": {}, "sig": b""}], "x",
    [{"claim": None, "sig": bytes(64)}],
    [{"sig": bytes(64)}],
])
def test_malformed_wire_forms_are_refused(doc: object) -> None:
    with pytest.raises(TicketError):
        Ticket.from_wire(doc)


def test_malformed_bodies_are_refused() -> None:
    good = chain().to_wire()[0]
    body = good["claim"]
    bad_bodies = [
        {**body, "v": 2}, {**body, "extra": 1}, {k: v for k, v in body.items() if k != "serial"},
        {**body, "issuer": b"x"}, {**body, "parent": b"x"}, {**body, "serial": b""},
        {**body, "rset": {"type": "CPU", "count": 1, "ident": None}},
        {**body, "rset": {"type": "cpu", "count": 0, "ident": None}},
        {**body, "rset": {"type": "cpu", "count": True, "ident": None}},
        {**body, "rset": {"type": "tcp_port", "count": 2, "ident": "30000"}},
        {**body, "rset": {"type": "tcp_port", "count": 1, "ident": "<b>"}},
        {**body, "term": [5, 5]}, {**body, "term": [-1, 5]}, {**body, "term": [1]},
    ]
    for b in bad_bodies:
        with pytest.raises(TicketError):
            Ticket.from_wire([{"claim": b, "sig": good["sig"]}])
    too_long = chain().to_wire() * 6
    with pytest.raises(TicketError):
        Ticket.from_wire(too_long)
