"""Proofs that an agent promised the same resources twice; pure (docs/design.md
section 10; slide 24: "a cryptographically secure proof of its guilt ...
independently verifiable by a third party").

The canonical msgpack of ::

    {v: 2, type: "ticket_conflict", host: <the agent's public key>,
     chain: [signed claim, ...],   # a valid ticket c0 .. p from the site to the agent
     claims: [signed claim, ...],  # two or more subclaims of p, signed by the agent
     at: int}                      # a time (µs) all of them hold

It proves that the agent (``p``'s holder) signed, under the claim ``p`` it held,
subclaims whose counts at time ``at`` add up to more than ``p``'s count. Everything in
it is signed: the chain by the site and the agents before, the subclaims by the
accused agent. It needs nothing else to check (the site's key is the chain's anchor
issuer; who that site is, is a node id derived from it). ``v: 2`` and ``host`` follow
the audit's proofs (:mod:`p2pmarket.audit.evidence`), which verifies this type too, so
it is kept at ``evidence/<agent node id>`` in the DHT like them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from p2pmarket.core.identity import node_id_of
from p2pmarket.core.wire import pack
from p2pmarket.sharp.claims import (
    RULE_TEXT,
    SignedClaim,
    TicketError,
    contains,
    ticket_fault,
)

CONFLICT = "ticket_conflict"
PROOF_VERSION = 2
MAX_CONFLICT_CLAIMS = 256
FIELDS = frozenset({"v", "type", "host", "chain", "claims", "at"})


@dataclass(frozen=True)
class ConflictSummary:
    agent: bytes          # the accused agent's public key
    site: bytes           # the site's public key (the chain's anchor issuer)
    parent: bytes         # the claim id the agent held
    resource: str
    at: int
    held: int
    promised: int
    claim_ids: tuple[bytes, ...]

    def to_doc(self) -> dict[str, Any]:
        return {"agent": self.agent, "agent_id": node_id_of(self.agent), "site": self.site,
                "site_id": node_id_of(self.site), "parent": self.parent,
                "resource": self.resource, "at": self.at, "held": self.held,
                "promised": self.promised, "claims": list(self.claim_ids)}


def conflict_proof(chain: Sequence[SignedClaim], claims: Sequence[SignedClaim], at: int
                   ) -> bytes:
    """The proof that ``chain[-1]``'s holder over-promised with ``claims`` at ``at``."""
    agent = chain[-1].claim.holder
    return pack({"v": PROOF_VERSION, "type": CONFLICT, "host": agent,
                 "chain": [c.to_wire() for c in chain],
                 "claims": [c.to_wire() for c in sorted(claims, key=lambda c: c.claim_id)],
                 "at": at})


def verify_conflict(doc: Any) -> ConflictSummary:
    """Check a decoded conflict proof offline; raises :class:`TicketError` unless it
    proves its ``host`` over-promised."""
    if not isinstance(doc, dict) or set(doc) != FIELDS:
        raise TicketError("a conflict proof has the fields " + ", ".join(sorted(FIELDS)),
                          {"rule": "shape"})
    if doc["v"] != PROOF_VERSION or doc["type"] != CONFLICT:
        raise TicketError("not a ticket conflict proof", {"rule": "shape"})
    at = doc["at"]
    if not isinstance(at, int) or isinstance(at, bool) or at < 0:
        raise TicketError("a conflict proof's time is a natural number", {"rule": "shape"})
    if not isinstance(doc["chain"], list) or not 1 <= len(doc["chain"]) <= 16:
        raise TicketError("a conflict proof's chain is a ticket", {"rule": "shape"})
    if not isinstance(doc["claims"], list) or not 2 <= len(doc["claims"]) \
            <= MAX_CONFLICT_CLAIMS:
        raise TicketError("a conflict proof names 2.. subclaims", {"rule": "shape"})
    chain = [SignedClaim.from_wire(c) for c in doc["chain"]]
    fault = ticket_fault(chain)
    if fault is not None:
        i, rule = fault
        raise TicketError(f"claim {i} of the proof's chain {RULE_TEXT[rule]}",
                          {"rule": rule, "index": i})
    held = chain[-1].claim
    if doc["host"] != held.holder:
        raise TicketError("the proof accuses another key than the holder of its claim",
                          {"rule": "host"})
    if not held.term.holds(at):
        raise TicketError("the agent's claim does not hold at the proof's time",
                          {"rule": "at"})
    subs = [SignedClaim.from_wire(c) for c in doc["claims"]]
    ids = [s.claim_id for s in subs]
    if len(set(ids)) != len(ids) or ids != sorted(ids):
        raise TicketError("the proof's subclaims are distinct, in claim id order",
                          {"rule": "shape"})
    for n, s in enumerate(subs):
        c = s.claim
        if c.issuer != held.holder or c.parent != held.claim_id:
            raise TicketError(f"subclaim {n} is not one the agent issued under its claim",
                              {"rule": "parent", "index": n})
        if not contains(held.rset, c.rset) or not c.term.holds(at):
            raise TicketError(f"subclaim {n} is not of the claim's resource at the time",
                              {"rule": "contains", "index": n})
        if not s.signature_ok():
            raise TicketError(f"subclaim {n}'s signature does not verify",
                              {"rule": "signature", "index": n})
    promised = sum(s.claim.rset.count for s in subs)
    if promised <= held.rset.count:
        raise TicketError(f"the subclaims hold {promised}, not more than the agent's "
                          f"{held.rset.count}", {"rule": "no conflict"})
    return ConflictSummary(held.holder, chain[0].claim.issuer, held.claim_id, held.rset.key,
                           at, held.rset.count, promised, tuple(ids))


__all__ = ["CONFLICT", "ConflictSummary", "conflict_proof", "verify_conflict"]
