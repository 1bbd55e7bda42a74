"""SHARP on the host, pure: redemptions, anchors, and reservations sharing the host with
the auction (docs/design.md section 10)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from p2pmarket.auction.allocation import allocation_now, book_of, lease_terms, running
from p2pmarket.auction.reserve import ANCHOR_PREFIX, HOUR_US, reservation_id
from p2pmarket.auction.snapshot import from_snapshot, snapshot, state_digest
from p2pmarket.core.identity import Identity
from p2pmarket.core.wire import unpack
from p2pmarket.sharp.claims import Claim, Rset, Term, Ticket, anchor, sign_claim
from p2pmarket.sharp.proof import verify_conflict
from tests.support.auction_harness import T0, AuctionHarness, S

SITE, AGENT, BUYER, OTHER, X, Y = (Identity(bytes([n]) * 32) for n in range(31, 37))
CPU, MEM = 1000, 1_000_000
TERM = Term(T0, T0 + HOUR_US)


def site(**reservable: int) -> AuctionHarness:
    h = AuctionHarness.new(cpu_mhz=CPU, memory_kib=MEM, host_id=SITE.node_id)
    cfg = replace(h.state.config, reservable=reservable or {"cpu": 400, "memory": 400_000})
    h.settings(cfg)
    h.tick()
    return h


def tickets(cpu: int = 200, mem: int = 100_000, term: Term = TERM, to: Identity = BUYER,
            agent_cpu: int = 300) -> list[Ticket]:
    """Site -> agent -> buyer, a cpu ticket and a memory ticket of one term."""
    out = []
    for rtype, n, held in (("cpu", cpu, agent_cpu), ("memory", mem, 300_000)):
        a = anchor(SITE, AGENT.public_key, Rset(rtype, held), Term(T0 - S, T0 + 2 * HOUR_US),
                   rtype.encode())
        out.append(a.delegate(AGENT, to.public_key, Rset(rtype, n), term,
                              b"%s-%d" % (to.public_key[:2], n)))
    return out


def redeem(h: AuctionHarness, ts: list[Ticket], who: Identity = BUYER) -> Any:
    return h.call(who.public_key, "redeem", {"tickets": [t.to_wire() for t in ts]})


def open_bidder(h: AuctionHarness, who: Identity, money: int, pid: bytes) -> str:
    st = h.call(who.public_key, "create_account",
                {"payment": {}, "bids": {"cpu": "1", "memory": "1"}, "interval_s": 3600},
                payment=(pid, money))
    assert st.error is None, st.result
    return str(st.result["account_id"])  # type: ignore[index]


def test_a_redeemed_bundle_reserves_its_amounts_and_gets_a_lease_and_a_vm() -> None:
    h = site()
    st = redeem(h, tickets())
    assert st.error is None
    aid = reservation_id([t.final.claim_id for t in tickets()])
    assert st.result == {"account_id": aid, "reservation": {
        "start": TERM.start, "end": TERM.end, "resources": {"cpu": 200, "memory": 100_000}}}
    assert [k for k, _ in st.outputs] == ["out.lease", "out.redeem"]
    assert h.state.capacities == {"cpu": CPU - 200, "memory": MEM - 100_000}
    assert book_of(h.state).resources["cpu"].capacity == CPU - 200
    assert allocation_now(h.state, aid) == {"cpu": 200, "memory": 100_000}
    acc = h.state.accounts[aid]
    assert running(h.state, acc)
    lease = lease_terms(h.state, acc)
    assert (lease.start, lease.end, lease.holder) == (TERM.start, TERM.end, BUYER.public_key)
    assert {r: (t.min, t.max, t.alloc) for r, t in lease.resources.items()} == {
        "cpu": (200, 200, 200), "memory": (100_000, 100_000, 100_000)}
    # a retry of the same bundle answers the same, changing nothing
    again = redeem(h, tickets())
    assert again.result == st.result and again.state.reservations == h.state.reservations


def test_reservations_hold_while_bidders_raise_prices_tenfold() -> None:
    h = site()
    aid = redeem(h, tickets()).result["account_id"]
    x = open_bidder(h, X, 36_000, b"x" * 32)
    y = open_bidder(h, Y, 36_000, b"y" * 32)
    for _ in range(3):
        h.tick(h.now + S)
    before = {a: allocation_now(h.state, a) for a in (aid, x, y)}
    p0 = book_of(h.state).price("cpu")
    for who, acc, pid in ((X, x, b"X"), (Y, y, b"Y")):   # ten times the money: 10x bids
        st = h.call(who.public_key, "fund", {"account_id": acc, "payment": {}},
                    payment=(pid * 32, 9 * 36_000))
        assert st.error is None
    for _ in range(3):
        h.tick(h.now + S)
    after = {a: allocation_now(h.state, a) for a in (aid, x, y)}
    assert book_of(h.state).price("cpu") >= 9 * p0
    assert before[aid] == after[aid] == {"cpu": 200, "memory": 100_000}
    cpu = book_of(h.state).resources["cpu"]
    # the auction shares only the rest: the bidders' shares and what the root keeps
    ax, ay = after[x]["cpu"], after[y]["cpu"]
    assert cpu.capacity == CPU - 200
    assert ax == ay and ax + ay + cpu.free() == CPU - 200
    # ten times the bids take more of the rest from the root, none of the reservation
    assert ax + ay > before[x]["cpu"] + before[y]["cpu"]


def test_a_future_term_starts_and_ends_at_ticks() -> None:
    h = site()
    later = Term(T0 + 10 * S, T0 + 20 * S)
    aid = redeem(h, tickets(term=later)).result["account_id"]
    assert h.state.capacities == {"cpu": CPU, "memory": MEM}
    assert allocation_now(h.state, aid) == {}
    h.tick(T0 + 9 * S)
    assert h.state.capacities["cpu"] == CPU
    h.tick(T0 + 10 * S)
    assert h.state.capacities == {"cpu": CPU - 200, "memory": MEM - 100_000}
    assert allocation_now(h.state, aid) == {"cpu": 200, "memory": 100_000}
    h.tick(T0 + 20 * S)
    assert h.state.capacities == {"cpu": CPU, "memory": MEM}
    assert aid not in h.state.accounts and aid not in h.state.reservations
    # the ended final claims are forgotten; the anchors (until T0 + 2h) are kept
    assert h.state.claims.finals == frozenset() and len(h.state.claims.claims) == 2


def test_a_conflict_is_refused_with_a_proof_and_changes_nothing_else() -> None:
    h = site()
    assert redeem(h, tickets(cpu=200)).error is None
    before = h.state
    # the agent (holding 300) promised another 200 to OTHER: 400 > 300 at once
    st = redeem(h, tickets(cpu=200, mem=1000, to=OTHER), who=OTHER)
    assert st.error is not None and st.result is None
    value = st.outputs[-1][1]["error_value"]
    assert value["rule"] == "conflict" and value["agent"] == AGENT.public_key
    summary = verify_conflict(unpack(value["proof"]))
    assert (summary.agent, summary.held, summary.promised) == (AGENT.public_key, 300, 400)
    assert replace(st.state, requests=before.requests) == before
    assert state_digest(replace(st.state, requests=before.requests)) == state_digest(before)


@pytest.mark.parametrize(("why", "rule"), [
    ("another site", "site"), ("another holder", "holder"), ("a unique id", "resource"),
    ("two terms", "term"), ("two of one type", "bundle"), ("over capacity", "capacity"),
])
def test_each_refusal_names_its_rule(why: str, rule: str) -> None:
    h = site(cpu=100, memory=400_000)
    ts = tickets()
    if why == "another site":
        ts = [anchor(OTHER, BUYER.public_key, Rset("cpu", 1), TERM, b"o")]
    elif why == "another holder":
        ts = tickets(to=OTHER)
    elif why == "a unique id":
        ts = [anchor(SITE, BUYER.public_key, Rset("tcp_port", 1, "30000"), TERM, b"u")]
    elif why == "two terms":
        ts = [tickets()[0], tickets(term=Term(T0, T0 + 2 * S))[1]]
    elif why == "two of one type":
        ts = [tickets()[0], tickets(cpu=5)[0]]
    st = redeem(h, ts)
    assert st.error is not None and st.error.value["rule"] == rule, st.error.message
    assert st.state.reservations == {} and st.state.claims == h.state.claims


def buy(h: AuctionHarness, pid: bytes, amount: int, count: int = 100,
        term: Term = TERM, who: Identity = AGENT) -> Any:
    body = {"from": who.public_key, "ts": h.now, "site": SITE.public_key,
            "args": {"payment": {}, "rset": {"type": "cpu", "count": count, "ident": None},
                     "term": [term.start, term.end]},
            "payment": {"id": pid, "amount": amount}}
    return h.step("in.buy_anchor", body)


def test_an_anchor_is_sold_at_its_posted_price_once_per_payment() -> None:
    h = site()
    h.settings(h.state.config.with_anchor_price("cpu", 10))   # 10 µcredits per MHz-hour
    st = buy(h, b"p" * 32, 1000)
    assert st.error is None, st.error
    body = st.result["anchor"]
    claim = Claim.from_body(body)
    assert (claim.issuer, claim.holder, claim.parent, claim.rset) == (
        SITE.public_key, AGENT.public_key, None, Rset("cpu", 100))
    assert st.result["price"] == 1000
    assert h.state.payment_account(b"p" * 32) == ANCHOR_PREFIX + claim.claim_id.hex()
    # signed by the host, the anchor is a ticket the agent can delegate and redeem
    t = Ticket((sign_claim(SITE, claim),)).delegate(AGENT, BUYER.public_key,
                                                     Rset("cpu", 50), TERM, b"b")
    assert redeem(h, [t]).error is None
    assert buy(h, b"p" * 32, 1000).result == st.result            # a retry: the same
    used = h.call(AGENT.public_key, "create_account", {
        "payment": {}, "bids": {"cpu": "1"}, "interval_s": 60}, payment=(b"p" * 32, 1000))
    assert used.error is not None and "already used" in used.error.message


@pytest.mark.parametrize(("amount", "count", "why"), [
    (999, 100, "costs 1000"), (4000, 400, "would hold 500"),
])
def test_a_refused_anchor_refunds_the_payment(amount: int, count: int, why: str) -> None:
    h = site()
    h.settings(h.state.config.with_anchor_price("cpu", 10))
    assert buy(h, b"q" * 32, 1000).error is None
    st = buy(h, b"r" * 32, amount, count)
    assert st.error is not None and why in st.error.message
    assert [r.amount for r in st.refunds] == [amount]
    assert st.refunds[0].holder == AGENT.public_key
    assert len(h.state.anchors) == 1


def test_the_owner_delegates_within_what_reservations_may_hold() -> None:
    h = site()
    body = {"site": SITE.public_key, "holder": AGENT.public_key,
            "rset": {"type": "cpu", "count": 400, "ident": None},
            "term": [TERM.start, TERM.end], "serial": b"friends"}
    st = h.step("in.delegate", body)
    assert st.error is None and Claim.from_body(st.result["anchor"]).rset.count == 400
    again = h.step("in.delegate", body)
    assert again.error is not None and "already issued" in again.error.message
    more = h.step("in.delegate", {**body, "serial": b"more",
                                  "rset": {"type": "cpu", "count": 1, "ident": None}})
    assert more.error is not None and "hold 401" in more.error.message
    later = h.step("in.delegate", {**body, "serial": b"later", "term": [TERM.end,
                                                                      TERM.end + HOUR_US]})
    assert later.error is None   # after the first one's term: room again
    wrong = h.step("in.delegate", {**body, "serial": b"w", "site": OTHER.public_key})
    assert wrong.error is not None and "not this host's" in wrong.error.message


def test_the_sharp_state_is_in_the_snapshot_and_the_digest() -> None:
    h = site()
    d0 = state_digest(h.state)
    redeem(h, tickets())
    assert state_digest(h.state) != d0
    back = from_snapshot(snapshot(h.state))
    assert back.reservations == h.state.reservations and back.claims == h.state.claims
    assert back.anchors == h.state.anchors
    assert state_digest(back) == state_digest(h.state)
    assert back.capacities == h.state.capacities
