"""The claim tree over time: first come first served, the slides' example (22-23),
conflicts and their proofs, and a property test against a plain recount."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from p2pmarket.audit.evidence import verify_proof
from p2pmarket.core.identity import Identity
from p2pmarket.core.wire import unpack
from p2pmarket.sharp.claims import Rset, Term, Ticket, anchor
from p2pmarket.sharp.proof import verify_conflict
from p2pmarket.sharp.tree import ClaimTree, Redeemed, Rejected, peak, redeem

SITE, A, B, C, D, E, F, G, H = (Identity(bytes([n]) * 32) for n in range(1, 10))
T0, HOUR = 10_000_000, 3_600_000_000
CAP = {"cpu": 100}


def slides() -> dict[str, Ticket]:
    """Slide 22: the site gives A 40; A gives B 8 and C 25; B gives D 3 and E 3; C gives
    F 9, G 10 and H 7 (26 of its 25: C oversubscribes)."""
    term = Term(T0, T0 + 10 * HOUR)
    a = anchor(SITE, A.public_key, Rset("cpu", 40), term, b"a")
    b = a.delegate(A, B.public_key, Rset("cpu", 8), term, b"b")
    c = a.delegate(A, C.public_key, Rset("cpu", 25), term, b"c")
    out = {"B": b, "C": c}
    for name, parent, holder, n, who in (("D", b, D, 3, B), ("E", b, E, 3, B),
                                         ("F", c, F, 9, C), ("G", c, G, 10, C),
                                         ("H", c, H, 7, C)):
        out[name] = parent.delegate(who, holder.public_key, Rset("cpu", n), term,
                                    name.encode())
    return out


def run(order: list[str], now: int = T0) -> tuple[ClaimTree, dict[str, Redeemed | Rejected]]:
    t = slides()
    tree, got = ClaimTree.empty(), {}
    for name in order:
        r = redeem(tree, [t[name]], SITE.public_key, CAP, now)
        got[name] = r
        if isinstance(r, Redeemed):
            tree = r.tree
    return tree, got


def test_the_slides_example_first_come_first_served_in_every_order() -> None:
    for order in itertools.permutations(["D", "E", "F", "G", "H"]):
        tree, got = run(list(order))
        rejected = [n for n, r in got.items() if isinstance(r, Rejected)]
        # the last of F, G and H to come is the one that does not fit
        last = [n for n in order if n in "FGH"][-1]
        assert rejected == [last], order
        assert tree.reserved(T0) == {"cpu": 3 + 3 + 26 - {"F": 9, "G": 10, "H": 7}[last]}


def test_the_rejection_names_c_and_its_proof_verifies_offline() -> None:
    _, got = run(["F", "G", "H"])
    r = got["H"]
    assert isinstance(r, Rejected)
    assert r.agent == C.public_key
    assert r.value["rule"] == "conflict" and r.value["held"] == 25 and r.value["total"] == 26
    assert r.proof is not None
    summary = verify_conflict(unpack(r.proof))
    assert (summary.agent, summary.site, summary.held, summary.promised) == (
        C.public_key, SITE.public_key, 25, 26)
    assert summary.parent == slides()["C"].final.claim_id
    # the audit's verifier (audit verify, the DHT's evidence screen) takes it, accusing C
    proof = verify_proof(r.proof)
    assert (proof.host, proof.type, proof.rule) == (C.public_key, "ticket_conflict",
                                                    "oversubscribed")


def test_the_proof_lists_the_fewest_claims_that_exceed_the_parent() -> None:
    _, got = run(["F", "H", "G"])
    r = got["G"]
    assert isinstance(r, Rejected) and r.proof is not None
    summary = verify_conflict(unpack(r.proof))
    # G (10) + F (9) = 19 <= 25: H (7) is needed too
    assert summary.promised == 26 and len(summary.claim_ids) == 3


def test_a_redeemed_ticket_cannot_be_redeemed_again_nor_a_used_claim_delegated() -> None:
    t = slides()
    r = redeem(ClaimTree.empty(), [t["D"]], SITE.public_key, CAP, T0)
    assert isinstance(r, Redeemed)
    again = redeem(r.tree, [t["D"]], SITE.public_key, CAP, T0)
    assert isinstance(again, Rejected) and again.value["rule"] == "redeemed"
    # B's own claim, redeemed as final after D came under it: delegated, so refused
    used = redeem(r.tree, [t["B"]], SITE.public_key, CAP, T0)
    assert isinstance(used, Rejected) and used.value["rule"] == "consumed"
    # and the other way: C's claim used by C itself, then H's under it
    r2 = redeem(ClaimTree.empty(), [t["C"]], SITE.public_key, CAP, T0)
    assert isinstance(r2, Redeemed)
    h = redeem(r2.tree, [t["H"]], SITE.public_key, CAP, T0)
    assert isinstance(h, Rejected) and h.value["rule"] == "consumed"


def test_a_bundle_is_all_or_none() -> None:
    t = slides()
    tree, _ = run(["F", "G"])
    r = redeem(tree, [t["D"], t["H"]], SITE.public_key, CAP, T0)
    assert isinstance(r, Rejected) and r.value["ticket"] == 1
    assert tree.reserved(T0) == {"cpu": 19}   # D was not taken either
    ok = redeem(tree, [t["D"], t["E"]], SITE.public_key, CAP, T0)
    assert isinstance(ok, Redeemed) and ok.tree.reserved(T0) == {"cpu": 25}
    twice = redeem(tree, [t["D"], t["D"]], SITE.public_key, CAP, T0)
    assert isinstance(twice, Rejected) and twice.value["rule"] == "bundle"


def test_the_site_capacity_bounds_the_anchors_without_a_proof() -> None:
    term = Term(T0, T0 + HOUR)
    a1 = anchor(SITE, A.public_key, Rset("cpu", 60), term, b"1")
    a2 = anchor(SITE, B.public_key, Rset("cpu", 50), term, b"2")
    r = redeem(ClaimTree.empty(), [a1], SITE.public_key, CAP, T0)
    assert isinstance(r, Redeemed)
    r2 = redeem(r.tree, [a2], SITE.public_key, CAP, T0)
    assert isinstance(r2, Rejected) and r2.value["rule"] == "capacity" and r2.proof is None
    none = redeem(ClaimTree.empty(), [a1], SITE.public_key, {}, T0)
    assert isinstance(none, Rejected) and none.value["rule"] == "capacity"


def test_claims_that_do_not_overlap_in_time_do_not_conflict() -> None:
    term = Term(T0, T0 + 4 * HOUR)
    a = anchor(SITE, A.public_key, Rset("cpu", 10), term, b"a")
    early = a.delegate(A, B.public_key, Rset("cpu", 10), Term(T0, T0 + 2 * HOUR), b"1")
    late = a.delegate(A, C.public_key, Rset("cpu", 10), Term(T0 + 2 * HOUR, T0 + 4 * HOUR), b"2")
    r = redeem(ClaimTree.empty(), [early], SITE.public_key, CAP, T0)
    assert isinstance(r, Redeemed)
    r2 = redeem(r.tree, [late], SITE.public_key, CAP, T0)
    assert isinstance(r2, Redeemed)
    assert r2.tree.reserved(T0) == {"cpu": 10} and r2.tree.reserved(T0 + 3 * HOUR) == {"cpu": 10}
    assert r2.tree.reserved(T0 + 4 * HOUR) == {}
    # once the early term is over, its claim is pruned: the tree forgets it
    assert early.final.claim_id not in r2.tree.pruned(T0 + 2 * HOUR).claims
    assert late.final.claim_id in r2.tree.pruned(T0 + 2 * HOUR).claims


def test_a_ticket_over_or_from_another_site_is_refused() -> None:
    t = slides()["D"]
    over = redeem(ClaimTree.empty(), [t], SITE.public_key, CAP, T0 + 10 * HOUR)
    assert isinstance(over, Rejected) and over.value["rule"] == "expired"
    other = redeem(ClaimTree.empty(), [t], A.public_key, CAP, T0)
    assert isinstance(other, Rejected) and other.value["rule"] == "site"


def test_the_tree_round_trips_and_its_digest_follows_it() -> None:
    tree, _ = run(["D", "F", "G"])
    back = ClaimTree.from_doc(tree.to_doc())
    assert back.claims == tree.claims and back.finals == tree.finals
    assert back.digest() == tree.digest()
    assert back.reserved(T0) == tree.reserved(T0)
    assert ClaimTree.empty().digest() != tree.digest()


def test_peak_is_the_largest_total_at_one_time() -> None:
    assert peak([], 0, 10) == (0, 0)
    assert peak([(Term(0, 5), 3), (Term(5, 10), 4)], 0, 10) == (4, 5)   # half-open
    assert peak([(Term(0, 6), 3), (Term(5, 10), 4)], 0, 10) == (7, 5)
    assert peak([(Term(0, 6), 3), (Term(5, 10), 4)], 6, 10) == (4, 6)   # window


intervals = st.lists(st.tuples(st.integers(0, 20), st.integers(1, 10), st.integers(1, 6)),
                     min_size=1, max_size=12)


@settings(max_examples=60, deadline=None)
@given(intervals)
def test_fcfs_accepts_exactly_what_fits_at_every_time(items: list[tuple[int, int, int]]
                                                      ) -> None:
    """Subclaims of one agent's 10 units with random terms and counts, redeemed in
    order: each is accepted iff, at every time of its term, it fits with those accepted
    before it (a plain recount, time step by time step)."""
    term = Term(0, 40)
    a = anchor(SITE, A.public_key, Rset("cpu", 10), term, b"a")
    tree, accepted = ClaimTree.empty(), list[tuple[Term, int]]()
    for n, (start, length, count) in enumerate(items):
        sub = Term(start, start + length)
        t = a.delegate(A, B.public_key, Rset("cpu", count), sub, n.to_bytes(2, "big"))
        fits = all(count + sum(c for s, c in accepted if s.holds(x)) <= 10
                   for x in range(sub.start, sub.end))
        r = redeem(tree, [t], SITE.public_key, CAP, 0)
        assert isinstance(r, Redeemed) == fits
        if isinstance(r, Redeemed):
            tree = r.tree
            accepted.append((sub, count))
        else:
            assert r.proof is not None and verify_conflict(unpack(r.proof)).agent == A.public_key
    for x in range(0, 40):
        assert tree.reserved(x).get("cpu", 0) == sum(c for s, c in accepted if s.holds(x))
