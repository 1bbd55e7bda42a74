"""The invariants' rules (pure; no testnet): each one fires on a planted fault."""

from __future__ import annotations

from typing import Any

from p2pmarket.testnet.invariants import Link, Observation, Transfer, violations

MINT, BUYER, HOST = "aa" * 32, "bb" * 32, "cc" * 32
SUPPLY = {"minted": 10, "balances": 8, "pending": 2, "early": 0}


def chains(recv_amount: int = 4, certified: bool = True) -> dict[str, tuple[Link, ...]]:
    return {
        MINT: (Link(0, "OPEN", 0, None, None, True), Link(1, "MINT", 10, None, None, True),
               Link(2, "SEND", 10, BUYER, None, True)),
        BUYER: (Link(0, "OPEN", 0, None, None, True), Link(1, "RECV", 10, MINT, 2, True),
                Link(2, "SEND", 4, HOST, None, certified)),
        HOST: (Link(0, "OPEN", 0, None, None, True),
               Link(1, "RECV", recv_amount, BUYER, 2, True)),
    }


def obs(**kw: Any) -> Observation:
    base: dict[str, Any] = dict(
        minted=10, supplies={"n1": SUPPLY, "n2": SUPPLY}, chains=chains(),
        completed=(Transfer(MINT, BUYER, 10), Transfer(BUYER, HOST, 4)),
        audits={"n1": {"hosts": [{"host_id": "h", "state": "trusted", "proofs": []}]}},
        honest=frozenset({"h"}))
    return Observation(**{**base, **kw})


def rules(o: Observation) -> list[tuple[str, str]]:
    return [(v.rule, v.subject) for v in violations(o)]


def test_a_healthy_market_breaks_no_rule() -> None:
    assert violations(obs()) == []


def test_supply_rules() -> None:
    lagging = {**SUPPLY, "minted": 7, "balances": 5}
    assert rules(obs(supplies={"n1": SUPPLY, "n2": lagging})) == [("supply", "n2")]
    assert rules(obs(supplies={"n1": {**SUPPLY, "pending": 3}})) == [("supply", "n1")]
    assert rules(obs(supplies={"n1": {"error": "timeout"}})) == [("supply", "n1")]


def test_a_completed_transfer_missing_from_a_chain() -> None:
    c = chains()
    c[HOST] = c[HOST][:1]
    assert rules(obs(chains=c)) == [("completed", f"{BUYER[:12]}->{HOST[:12]} 4")]


def test_half_applied_transfers() -> None:
    assert ("half", HOST) in rules(obs(chains=chains(recv_amount=5)))
    c = chains()
    c[HOST] = (*c[HOST], Link(2, "RECV", 4, BUYER, 2, True))
    assert ("half", BUYER) in rules(obs(chains=c))          # received twice
    assert ("half", BUYER) in rules(obs(chains=chains(certified=False)))
    assert ("half", BUYER) not in rules(obs(chains=chains(certified=False), settled=False))


def test_an_honest_host_suspected_or_with_proofs() -> None:
    audits = {"n1": {"hosts": [{"host_id": "h", "state": "suspected", "proofs": []}]},
              "n2": {"hosts": [{"host_id": "h", "state": "trusted", "proofs": [{}]}]},
              "n3": {"hosts": [{"host_id": "x", "state": "exposed", "proofs": [{}]}]}}
    assert rules(obs(audits=audits)) == [("audit", "h"), ("audit", "h")]


def test_link_from_a_history_entry() -> None:
    doc = {"seq": 3, "kind": "RECV", "amount": 5, "counterparty": BUYER, "send_seq": 2,
           "certified": True, "hash": "00"}
    assert Link.of(doc) == Link(3, "RECV", 5, BUYER, 2, True)
