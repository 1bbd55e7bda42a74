"""SHARP claims and tickets, pure (docs/design.md section 10; the slides, seed 004).

A **claim** says: ``holder`` may have ``rset`` (a count of one resource type, or one
unique identifier) during ``term``, as delegated by ``issuer`` from its own claim
``parent``. It is signed by its issuer in the ticket signature domain
(:data:`p2pmarket.core.domains.TICKET`). Its body::

    {v: 1, issuer: key, holder: key, parent: claim id | None,
     rset: {type: str, count: int, ident: str | None}, term: [start µs, end µs],
     serial: bytes (1..32, the issuer's; two claims that differ only in it differ)}

The **claim id** is derived: the first 16 bytes of SHA-256 of ``"p2pmarket/claim/1\\0"``
and the canonical msgpack of the body. So an issuer cannot give two different claims
one id, and a child names exactly one parent.

A **ticket** is a chain of claims ``c0 .. cn``; the rules, as the slides write them:

- ``anchor(c0)``: ``c0.parent`` is None and its issuer is the site (the site's key:
  the site holds the resources and delegates them; the holder may be the site itself);
- ``subclaim(c, p)``: ``c.issuer = p.holder``, ``c.parent = p.claim_id``,
  ``contains(p.rset, c.rset)`` (same type and identifier, ``c.count <= p.count``) and
  ``subinterval(c.term, p.term)`` (``p.start <= c.start`` and ``c.end <= p.end``);
- ``ticket(c0..cn)``: ``anchor(c0)`` and ``subclaim(c(i+1), c(i))`` for every ``i``,
  and every claim's signature verifies under its issuer's key.

Nothing in a valid ticket says that its resources are free: an agent may sign more
subclaims than it holds (oversubscription). The site finds out at redemption
(:mod:`p2pmarket.sharp.tree`) and can prove it (:mod:`p2pmarket.sharp.proof`).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from p2pmarket.core.domains import TICKET
from p2pmarket.core.errors import P2PMarketError
from p2pmarket.core.identity import PUBLIC_KEY_SIZE, Identity, verify
from p2pmarket.core.wire import pack

CLAIM_VERSION = 1
CLAIM_ID_SIZE = 16
MAX_CLAIMS = 16          # delegation hops in one ticket
MAX_COUNT = (1 << 62)
MAX_TIME = (1 << 62)
SIG_SIZE = 64
ID_PREFIX = b"p2pmarket/claim/1\x00"
_TYPE = re.compile(r"[a-z][a-z0-9_]{0,31}")
_IDENT = re.compile(r"[0-9A-Za-z.:_-]{1,64}")
BODY_FIELDS = frozenset({"v", "issuer", "holder", "parent", "rset", "term", "serial"})


class TicketError(P2PMarketError):
    """A claim or ticket that is malformed or breaks a rule; ``value`` names the rule."""


def _nat(v: Any, limit: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= limit


@dataclass(frozen=True)
class Rset:
    """A count of one resource type, or one unique identifier (count 1)."""

    rtype: str
    count: int
    ident: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.rtype, str) or not _TYPE.fullmatch(self.rtype):
            raise TicketError("a resource type is 1..32 of [a-z0-9_]", {"rule": "rset"})
        if not _nat(self.count, MAX_COUNT) or self.count < 1:
            raise TicketError("a resource count is a positive integer", {"rule": "rset"})
        if self.ident is not None:
            if not isinstance(self.ident, str) or not _IDENT.fullmatch(self.ident):
                raise TicketError("a unique identifier is 1..64 of [0-9A-Za-z.:_-]",
                                  {"rule": "rset"})
            if self.count != 1:
                raise TicketError("a unique identifier has count 1", {"rule": "rset"})

    @property
    def key(self) -> str:
        """The resource key: the type, or ``type,ident`` for a unique identifier."""
        return self.rtype if self.ident is None else f"{self.rtype},{self.ident}"

    def to_doc(self) -> dict[str, Any]:
        return {"type": self.rtype, "count": self.count, "ident": self.ident}

    @classmethod
    def from_doc(cls, doc: Any) -> Rset:
        if not isinstance(doc, dict) or set(doc) != {"type", "count", "ident"}:
            raise TicketError("an rset is {type, count, ident}", {"rule": "shape"})
        return cls(doc["type"], doc["count"], doc["ident"])


@dataclass(frozen=True)
class Term:
    """A half-open interval of wall-clock time ``[start, end)`` in µs."""

    start: int
    end: int

    def __post_init__(self) -> None:
        if not _nat(self.start, MAX_TIME) or not _nat(self.end, MAX_TIME) \
                or self.start >= self.end:
            raise TicketError("a term is [start, end) with 0 <= start < end",
                              {"rule": "term"})

    def holds(self, t: int) -> bool:
        return self.start <= t < self.end


def contains(p: Rset, c: Rset) -> bool:
    """``contains(p.rset, c.rset)``: same type (and identifier), ``c.count <= p.count``."""
    return c.rtype == p.rtype and c.ident == p.ident and c.count <= p.count


def subinterval(c: Term, p: Term) -> bool:
    """``subinterval(c.term, p.term)``: ``p.start <= c.start`` and ``c.end <= p.end``
    (then ``c.start <= p.end`` and ``p.start <= c.end`` follow, as ``c.start < c.end``)."""
    return p.start <= c.start and c.end <= p.end


@dataclass(frozen=True)
class Claim:
    issuer: bytes
    holder: bytes
    parent: bytes | None
    rset: Rset
    term: Term
    serial: bytes
    _packed: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("issuer", "holder"):
            key = getattr(self, name)
            if not isinstance(key, bytes) or len(key) != PUBLIC_KEY_SIZE:
                raise TicketError(f"a claim's {name} is a 32-byte public key",
                                  {"rule": "shape"})
        if self.parent is not None and (not isinstance(self.parent, bytes)
                                        or len(self.parent) != CLAIM_ID_SIZE):
            raise TicketError("a claim's parent is a 16-byte claim id or null",
                              {"rule": "shape"})
        if not isinstance(self.serial, bytes) or not 1 <= len(self.serial) <= 32:
            raise TicketError("a claim's serial is 1..32 bytes", {"rule": "shape"})
        if not isinstance(self.rset, Rset) or not isinstance(self.term, Term):
            raise TicketError("a claim has an rset and a term", {"rule": "shape"})
        object.__setattr__(self, "_packed", pack(self.body()))

    def body(self) -> dict[str, Any]:
        return {"v": CLAIM_VERSION, "issuer": self.issuer, "holder": self.holder,
                "parent": self.parent, "rset": self.rset.to_doc(),
                "term": [self.term.start, self.term.end], "serial": self.serial}

    @property
    def packed(self) -> bytes:
        """The canonical msgpack of the body: what the issuer signs."""
        return self._packed

    @property
    def claim_id(self) -> bytes:
        return hashlib.sha256(ID_PREFIX + self.packed).digest()[:CLAIM_ID_SIZE]

    @classmethod
    def from_body(cls, doc: Any) -> Claim:
        if not isinstance(doc, dict) or set(doc) != BODY_FIELDS:
            raise TicketError("a claim body has the fields " + ", ".join(sorted(BODY_FIELDS)),
                              {"rule": "shape"})
        if doc["v"] != CLAIM_VERSION:
            raise TicketError(f"claim version {doc['v']!r} is not read here",
                              {"rule": "shape"})
        term = doc["term"]
        if not isinstance(term, list) or len(term) != 2:
            raise TicketError("a claim's term is [start, end]", {"rule": "shape"})
        return cls(doc["issuer"], doc["holder"], doc["parent"], Rset.from_doc(doc["rset"]),
                   Term(term[0], term[1]), doc["serial"])


@dataclass(frozen=True)
class SignedClaim:
    claim: Claim
    sig: bytes

    @property
    def claim_id(self) -> bytes:
        return self.claim.claim_id

    def signature_ok(self) -> bool:
        return isinstance(self.sig, bytes) and len(self.sig) == SIG_SIZE and verify(
            self.claim.issuer, TICKET, self.claim.packed, self.sig)

    def to_wire(self) -> dict[str, Any]:
        return {"claim": self.claim.body(), "sig": self.sig}

    @classmethod
    def from_wire(cls, doc: Any) -> SignedClaim:
        if not isinstance(doc, dict) or set(doc) != {"claim", "sig"}:
            raise TicketError("a signed claim is {claim, sig}", {"rule": "shape"})
        if not isinstance(doc["sig"], bytes) or len(doc["sig"]) != SIG_SIZE:
            raise TicketError("a claim's signature is 64 bytes", {"rule": "shape"})
        return cls(Claim.from_body(doc["claim"]), doc["sig"])


def sign_claim(identity: Identity, claim: Claim) -> SignedClaim:
    """``claim`` signed by its issuer ``identity``."""
    if identity.public_key != claim.issuer:
        raise TicketError("only a claim's issuer signs it", {"rule": "issuer"})
    return SignedClaim(claim, identity.sign(TICKET, claim.packed))


def subclaim(c: Claim, p: Claim) -> str | None:
    """Why ``c`` is not a subclaim of ``p`` (the rule's name), or None if it is."""
    if c.issuer != p.holder:
        return "issuer"
    if c.parent != p.claim_id:
        return "parent"
    if not contains(p.rset, c.rset):
        return "contains"
    if not subinterval(c.term, p.term):
        return "subinterval"
    return None


RULE_TEXT = {
    "issuer": "is not issued by the holder of the claim before it",
    "parent": "does not name the claim before it as its parent",
    "contains": "holds more than, or another resource than, the claim before it",
    "subinterval": "has a term outside the term of the claim before it",
    "anchor": "is not an anchor (its parent is not null)",
    "site": "is not issued by the site",
    "signature": "has a signature that does not verify under its issuer's key",
}


@dataclass(frozen=True)
class Ticket:
    """A chain of signed claims from an anchor (``claims[0]``) to the final holder."""

    claims: tuple[SignedClaim, ...]

    def __post_init__(self) -> None:
        if not 1 <= len(self.claims) <= MAX_CLAIMS:
            raise TicketError(f"a ticket has 1..{MAX_CLAIMS} claims", {"rule": "shape"})

    @property
    def site(self) -> bytes:
        return self.claims[0].claim.issuer

    @property
    def final(self) -> SignedClaim:
        return self.claims[-1]

    @property
    def holder(self) -> bytes:
        return self.final.claim.holder

    @property
    def rset(self) -> Rset:
        return self.final.claim.rset

    @property
    def term(self) -> Term:
        return self.final.claim.term

    def to_wire(self) -> list[dict[str, Any]]:
        return [c.to_wire() for c in self.claims]

    @classmethod
    def from_wire(cls, doc: Any) -> Ticket:
        """The ticket's shape checked (not its rules: :func:`check_ticket`)."""
        if not isinstance(doc, list) or not 1 <= len(doc) <= MAX_CLAIMS:
            raise TicketError(f"a ticket is a list of 1..{MAX_CLAIMS} signed claims",
                              {"rule": "shape"})
        return cls(tuple(SignedClaim.from_wire(c) for c in doc))

    def delegate(self, identity: Identity, holder: bytes, rset: Rset, term: Term,
                 serial: bytes) -> Ticket:
        """This ticket extended by a subclaim from its holder ``identity`` to ``holder``
        (raises :class:`TicketError` if it would not be one)."""
        if identity.public_key != self.holder:
            raise TicketError("only a ticket's holder delegates it", {"rule": "issuer"})
        claim = Claim(identity.public_key, holder, self.final.claim_id, rset, term, serial)
        why = subclaim(claim, self.final.claim)
        if why is not None:
            raise TicketError(f"the new claim {RULE_TEXT[why]}",
                              {"index": len(self.claims), "rule": why})
        return Ticket((*self.claims, sign_claim(identity, claim)))


def anchor(site: Identity, holder: bytes, rset: Rset, term: Term, serial: bytes) -> Ticket:
    """The site's anchor claim to ``holder``: a ticket of one claim."""
    return Ticket((sign_claim(site, Claim(site.public_key, holder, None, rset, term,
                                          serial)),))


def check_ticket(ticket: Ticket, site_key: bytes | None = None) -> None:
    """Every rule of a ticket (module docstring), and its anchor issued by ``site_key``
    if given. Raises :class:`TicketError` with ``value = {index, rule}`` for the first
    claim that breaks one."""
    fault = ticket_fault(ticket.claims, site_key)
    if fault is not None:
        index, rule = fault
        raise TicketError(f"claim {index} of the ticket {RULE_TEXT[rule]}",
                          {"index": index, "rule": rule})


def ticket_fault(claims: Sequence[SignedClaim], site_key: bytes | None = None
                 ) -> tuple[int, str] | None:
    """``(index, rule)`` of the first claim of a chain that breaks a rule, or None."""
    first = claims[0].claim
    if first.parent is not None:
        return 0, "anchor"
    if site_key is not None and first.issuer != site_key:
        return 0, "site"
    for i, sc in enumerate(claims):
        if i > 0:
            why = subclaim(sc.claim, claims[i - 1].claim)
            if why is not None:
                return i, why
        if not sc.signature_ok():
            return i, "signature"
    return None


__all__ = ["CLAIM_ID_SIZE", "MAX_CLAIMS", "RULE_TEXT", "Claim", "Rset", "SignedClaim", "Term",
           "Ticket", "TicketError", "anchor", "check_ticket", "contains", "sign_claim",
           "subclaim", "subinterval", "ticket_fault"]
