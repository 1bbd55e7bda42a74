"""The site's claim tree over redeemed claims, and redemption; pure (docs/design.md
section 10; slides 21-24).

The site authority keeps every claim of every ticket it redeemed, by claim id, with
each claim's children (the redeemed claims whose parent it is; the anchors hang under
the site itself). A ticket is redeemed **first come first served**: each of its claims
not in the tree yet is checked against its parent, and the redemption is refused if,
at any time of the claim's term from now on, the claim and its redeemed siblings of
the same resource together hold more than the parent does (for an anchor: more than
the site lets reservations hold, ``capacity``). Claims already in the tree were
checked when they came.

A refusal under an agent's claim is the agent's fault: it signed subclaims whose sum
exceeds what it held at some time ``t``. :class:`Rejected` then carries the proof
(:func:`p2pmarket.sharp.proof.conflict_proof`: the chain to the agent's claim and the
subclaims it signed that are active at ``t``), verifiable offline by anyone. An
anchor-level refusal is the site's own business (it issued more anchors than it can
hold) and carries no proof.

A claim redeemed as a ticket's final claim is used by its holder in full: it may not
also have redeemed children, and a claim with redeemed children may not be redeemed
as a final claim (``rule: consumed``; no proof: the holder's use is its redemption
request, not a claim it signed).

The tree forgets claims whose term has ended (:meth:`ClaimTree.pruned`): a claim
redeemed later has a term ending after ``now``, and a child's term lies within its
parent's, so an ended claim can never conflict again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from p2pmarket.sharp.claims import (
    RULE_TEXT,
    SignedClaim,
    Term,
    Ticket,
    TicketError,
    ticket_fault,
)
from p2pmarket.sharp.proof import conflict_proof

ROOT = b""          # the children key of the anchors (parent None)
MAX_BUNDLE = 16


@dataclass(frozen=True)
class ClaimTree:
    """Redeemed claims by id, the children of each (``ROOT``: the anchors) and which
    claims were redeemed as final claims."""

    claims: Mapping[bytes, SignedClaim] = field(default_factory=dict)
    children: Mapping[bytes, tuple[bytes, ...]] = field(default_factory=dict)
    finals: frozenset[bytes] = frozenset()

    @classmethod
    def empty(cls) -> ClaimTree:
        return cls()

    def reserved(self, now: int) -> dict[str, int]:
        """What the final claims active at ``now`` hold, per resource key."""
        out: dict[str, int] = {}
        for cid in self.finals:
            c = self.claims[cid].claim
            if c.term.holds(now):
                out[c.rset.key] = out.get(c.rset.key, 0) + c.rset.count
        return dict(sorted(out.items()))

    def pruned(self, now: int) -> ClaimTree:
        """The tree without the claims whose term ended at or before ``now``."""
        gone = {cid for cid, sc in self.claims.items() if sc.claim.term.end <= now}
        if not gone:
            return self
        claims = {cid: sc for cid, sc in self.claims.items() if cid not in gone}
        children = {p: kept for p, ids in self.children.items() if p not in gone
                    if (kept := tuple(i for i in ids if i not in gone))}
        return ClaimTree(claims, children, self.finals - gone)

    def to_doc(self) -> dict[str, Any]:
        return {"claims": [self.claims[cid].to_wire() for cid in sorted(self.claims)],
                "finals": sorted(self.finals)}

    @classmethod
    def from_doc(cls, doc: Any) -> ClaimTree:
        """A tree from :meth:`to_doc` (a state the host committed to: shapes checked,
        rules not re-checked)."""
        if not isinstance(doc, dict) or set(doc) != {"claims", "finals"} \
                or not isinstance(doc["claims"], list) or not isinstance(doc["finals"], list):
            raise TicketError("a claim tree is {claims, finals}", {"rule": "shape"})
        tree = ClaimTree()
        for w in doc["claims"]:
            tree = tree.with_claim(SignedClaim.from_wire(w))
        finals = frozenset(doc["finals"])
        if not finals <= set(tree.claims):
            raise TicketError("a claim tree's finals are its claims", {"rule": "shape"})
        return ClaimTree(tree.claims, tree.children, finals)

    def digest(self) -> bytes:
        h = hashlib.sha256(b"p2pmarket/claimtree/1\x00")
        for cid in sorted(self.claims):
            h.update(cid + (b"\x01" if cid in self.finals else b"\x00"))
        return h.digest()

    def with_claim(self, sc: SignedClaim, final: bool = False) -> ClaimTree:
        cid = sc.claim_id
        parent = sc.claim.parent or ROOT
        claims = {**self.claims, cid: sc}
        children = {**self.children, parent: (*self.children.get(parent, ()), cid)}
        return ClaimTree(claims, children, self.finals | {cid} if final else self.finals)

    def siblings(self, sc: SignedClaim) -> list[SignedClaim]:
        """The redeemed claims with ``sc``'s parent and resource (``sc`` left out)."""
        key = sc.claim.rset.key
        out = []
        for cid in self.children.get(sc.claim.parent or ROOT, ()):
            other = self.claims[cid]
            if cid != sc.claim_id and other.claim.rset.key == key:
                out.append(other)
        return out


@dataclass(frozen=True)
class Redeemed:
    tree: ClaimTree
    finals: tuple[SignedClaim, ...]


@dataclass(frozen=True)
class Rejected:
    error: str
    value: dict[str, Any]
    proof: bytes | None = None
    agent: bytes | None = None   # the accountable agent's key (with a proof)


def peak(claims: Iterable[tuple[Term, int]], lo: int, hi: int) -> tuple[int, int]:
    """The largest total count held at one time of ``[lo, hi)`` by claims ``(term,
    count)``, and the earliest such time (``(0, lo)`` if none overlaps)."""
    points: list[tuple[int, int]] = []
    for term, count in claims:
        s, e = max(term.start, lo), min(term.end, hi)
        if s < e:
            points += [(s, count), (e, -count)]
    points.sort(key=lambda p: (p[0], p[1]))   # ends (negative) before starts at one time
    best, at, total = 0, lo, 0
    for t, d in points:
        total += d
        if total > best:
            best, at = total, t
    return best, at


def redeem(tree: ClaimTree, tickets: Sequence[Ticket], site_key: bytes,
           capacity: Mapping[str, int], now: int) -> Redeemed | Rejected:
    """Redeem a bundle of tickets, all or none, first come first served (module
    docstring). ``capacity``: what the site lets reservations hold per resource key."""
    if not 1 <= len(tickets) <= MAX_BUNDLE:
        return Rejected(f"redeem 1..{MAX_BUNDLE} tickets at once", {"rule": "bundle"})
    finals = [t.final.claim_id for t in tickets]
    if len(set(finals)) != len(finals):
        return Rejected("the bundle holds one ticket twice", {"rule": "bundle"})
    work = tree.pruned(now)
    for k, ticket in enumerate(tickets):
        got = _redeem_one(work, ticket, k, site_key, capacity, now)
        if isinstance(got, Rejected):
            return got
        work = got
    return Redeemed(work, tuple(t.final for t in tickets))


def _redeem_one(tree: ClaimTree, ticket: Ticket, k: int, site_key: bytes,
                capacity: Mapping[str, int], now: int) -> ClaimTree | Rejected:
    fault = ticket_fault(ticket.claims, site_key)
    if fault is not None:
        i, rule = fault
        return Rejected(f"claim {i} of ticket {k} {RULE_TEXT[rule]}",
                        {"rule": rule, "ticket": k, "index": i})
    final = ticket.final
    if ticket.term.end <= now:
        return Rejected(f"ticket {k}'s term is over", {"rule": "expired", "ticket": k})
    if final.claim_id in tree.finals:
        return Rejected(f"ticket {k} is already redeemed", {"rule": "redeemed", "ticket": k})
    n = len(ticket.claims)
    for i, sc in enumerate(ticket.claims):
        cid = sc.claim_id
        last = i == n - 1
        if cid in tree.claims:
            if last and tree.children.get(cid):
                return Rejected(f"claim {i} of ticket {k} is delegated further and cannot "
                                "be redeemed as a final claim",
                                {"rule": "consumed", "ticket": k, "index": i})
            continue
        if i > 0 and ticket.claims[i - 1].claim_id in tree.finals:
            return Rejected(f"claim {i - 1} of ticket {k} was redeemed for its holder's own "
                            "use and cannot be delegated further",
                            {"rule": "consumed", "ticket": k, "index": i - 1})
        held = (capacity.get(sc.claim.rset.key, 0) if i == 0
                else ticket.claims[i - 1].claim.rset.count)
        siblings = tree.siblings(sc)
        term = sc.claim.term
        total, at = peak([(o.claim.term, o.claim.rset.count) for o in (*siblings, sc)],
                         max(term.start, now), term.end)
        if total > held:
            return _conflict(ticket, k, i, siblings, at, total, held)
        tree = tree.with_claim(sc, final=last)
    return tree


def _conflict(ticket: Ticket, k: int, i: int, siblings: list[SignedClaim], at: int,
              total: int, held: int) -> Rejected:
    sc = ticket.claims[i]
    value: dict[str, Any] = {"rule": "conflict", "ticket": k, "index": i, "at": at,
                             "total": total, "held": held, "resource": sc.claim.rset.key}
    if i == 0:
        return Rejected(f"the site cannot hold ticket {k}'s {sc.claim.rset.key} at {at} "
                        f"({total} asked of {held} reservable)", {**value, "rule": "capacity"})
    active = sorted((o for o in siblings if o.claim.term.holds(at)),
                    key=lambda o: (-o.claim.rset.count, o.claim_id))
    chosen, held_sum = [sc], sc.claim.rset.count
    for o in active:   # the fewest redeemed claims that, with this one, exceed the parent
        if held_sum > held:
            break
        chosen.append(o)
        held_sum += o.claim.rset.count
    agent = ticket.claims[i - 1].claim.holder
    proof = conflict_proof(ticket.claims[:i], chosen, at)
    return Rejected(f"ticket {k} conflicts: its issuer promised {total} of "
                    f"{sc.claim.rset.key} at {at} while holding {held}",
                    {**value, "agent": agent}, proof, agent)


__all__ = ["MAX_BUNDLE", "ROOT", "ClaimTree", "Redeemed", "Rejected", "peak", "redeem"]
