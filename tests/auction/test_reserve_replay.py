"""Redemptions and anchors are audited inputs: a witness replays a host's log with them
and finds a host that changed a redemption's outcome (docs/design.md sections 5, 10)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from p2pmarket.auction.hostconfig import HostConfig
from p2pmarket.auction.machine import new_state
from p2pmarket.auction.snapshot import snapshot
from p2pmarket.auction.steps import step
from p2pmarket.audit.entry import AuditEntry
from p2pmarket.audit.replay import replay
from p2pmarket.core.domains import ENVELOPE
from p2pmarket.core.identity import Identity
from p2pmarket.core.wire import seal
from p2pmarket.ledger.chain import ZERO_HASH
from p2pmarket.sharp.claims import Rset, Term, Ticket, anchor

SITE, AGENT, BUYER, LATE = (Identity(bytes([n]) * 32) for n in range(41, 45))
S = 1_000_000
T0 = 1_700_000_000 * S
TERM = Term(T0, T0 + 3600 * S)


class Host:
    """The pure auctioneer writing its log as the real one does (signed buyer inputs)."""

    def __init__(self) -> None:
        config = replace(HostConfig.defaults(1000, 1_000_000, 1),
                         reservable={"cpu": 500, "memory": 500_000})
        self.state = new_state(SITE.node_id, config, S, 3600 * S)
        self.docs: list[dict[str, Any]] = [{"kind": "in.genesis",
                                            "body": snapshot(self.state), "ts": T0}]

    def take(self, kind: str, body: Any, ts: int) -> Any:
        st = step(self.state, kind, body, ts)
        self.state = st.state
        self.docs.append({"kind": kind, "body": body, "ts": ts})
        self.docs.extend({"kind": k, "body": b, "ts": ts} for k, b in st.outputs)
        return st

    def call(self, who: Identity, name: str, args: dict[str, Any], ts: int) -> Any:
        env = seal(who, ENVELOPE, f"rpc.host.{name}", args, ts=ts, to=SITE.node_id)
        return self.take(f"in.{name}", {"from": who.public_key, "ts": ts, "args": args,
                                        "request": env.to_wire()}, ts)

    def raw(self) -> list[bytes]:
        out, prev = [], ZERO_HASH
        for seq, d in enumerate(self.docs):
            e = AuditEntry(seq, prev, d["kind"], d["body"], d["ts"])
            out.append(e.encode())
            prev = e.hash()
        return out


def bundle(to: Identity, cpu: int) -> list[dict[str, Any]]:
    a = anchor(SITE, AGENT.public_key, Rset("cpu", 300), TERM, b"a")
    m = anchor(SITE, AGENT.public_key, Rset("memory", 300_000), TERM, b"m")
    return [t.delegate(AGENT, to.public_key, r, TERM, to.public_key[:4]).to_wire()
            for t, r in ((a, Rset("cpu", cpu)), (m, Rset("memory", 100_000)))]


def honest() -> Host:
    h = Host()
    h.take("in.tick", {"now": T0}, T0)
    assert h.call(BUYER, "redeem", {"tickets": bundle(BUYER, 200)}, T0 + 1).error is None
    late = h.call(LATE, "redeem", {"tickets": bundle(LATE, 200)}, T0 + 2)
    assert late.error is not None and late.error.value["rule"] == "conflict"
    h.take("in.delegate", {"site": SITE.public_key, "holder": AGENT.public_key,
                           "rset": {"type": "cpu", "count": 100, "ident": None},
                           "term": [TERM.start, TERM.end], "serial": b"d"}, T0 + 3)
    h.take("in.tick", {"now": T0 + S}, T0 + S)
    return h


def test_a_log_with_redemptions_replays_clean() -> None:
    h = honest()
    r = replay(h.raw(), host=SITE.public_key)
    assert r.fault is None
    assert r.state.reservations == h.state.reservations and r.state.claims == h.state.claims
    assert r.state.anchors == h.state.anchors


def test_a_host_that_turns_a_rejection_into_a_reservation_is_caught() -> None:
    h = honest()
    k = next(i for i, d in enumerate(h.docs) if d["kind"] == "out.redeem"
             and "error" in d["body"])
    h.docs[k] = {**h.docs[k], "body": {"account_id": "0" * 16, "reservation": {}}}
    fault = replay(h.raw(), host=SITE.public_key).fault
    assert fault is not None and fault.seq == k


def test_a_redemption_the_buyer_did_not_sign_is_caught() -> None:
    h = honest()
    k = next(i for i, d in enumerate(h.docs) if d["kind"] == "in.redeem")
    body = dict(h.docs[k]["body"])
    other = Ticket.from_wire(bundle(BUYER, 150)[0]).to_wire()
    body["args"] = {"tickets": [other, body["args"]["tickets"][1]]}
    h.docs[k] = {**h.docs[k], "body": body}
    fault = replay(h.raw(), host=SITE.public_key).fault
    assert fault is not None and fault.seq == k and "unsigned" in fault.rule
