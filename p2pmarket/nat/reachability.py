"""What a node believes about its own reachability (docs/design.md section 7).

The node registers with a few registrars each round and :meth:`Reachability.add`\\ s
every attestation it gets back. It keeps the last answer of each of the last
:data:`KEEP_REGISTRARS` (5) distinct registrars (answers older than
:data:`~p2pmarket.nat.attestation.ATTESTATION_TTL_US` are dropped). The
:meth:`~Reachability.verdict` names a class and an address only when at least
:data:`AGREEMENT` (3) of them agree on both; otherwise it is unknown (None), since a
single registrar may lie or be wrong (AutoNAT's confidence rule).

When to check again (:meth:`~Reachability.next_check_at`, µs): now before the first
round and after :meth:`~Reachability.address_changed` reports a new address; after
a round that left fewer than 3 answers, after a backoff (:data:`BACKOFF_US`: 10 s,
30 s, 60 s, 2 min, 5 min, then every 10 min); else :data:`RECHECK_US` (an hour)
after the last round. The caller reports each round's end with
:meth:`~Reachability.round_done`. Time comes in as ``now`` (µs). Pure.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass

from p2pmarket.core.clock import US_PER_S
from p2pmarket.nat.attestation import ATTESTATION_TTL_US, Attestation
from p2pmarket.nat.table import ReachClass

KEEP_REGISTRARS = 5
AGREEMENT = 3
RECHECK_US = 3600 * US_PER_S
BACKOFF_US = tuple(s * US_PER_S for s in (10, 30, 60, 120, 300, 600))
DIRECT = frozenset({ReachClass.PUBLIC, ReachClass.FORWARDED})
"""Classes at which a node can be dialled from anywhere, at its external address."""


@dataclass(frozen=True)
class Verdict:
    """The class and address at least ``AGREEMENT`` registrars agree on (None when
    they do not), how many agree (the largest group), of how many ``answers``;
    ``verified``: every agreeing registrar reached the node at that address."""

    reach_class: ReachClass | None
    host: str | None
    port: int | None
    agreeing: int
    answers: int
    verified: bool = False


class Reachability:
    """The last answers of the last registrars, and when to ask again."""

    def __init__(self) -> None:
        self._answers: OrderedDict[bytes, tuple[Attestation, int]] = OrderedDict()
        self._last_round: int | None = None
        self._short_rounds = 0     # rounds in a row that left fewer than AGREEMENT answers
        self._due = True           # check now: no round yet, or the address changed
        self._host: str | None = None   # the address last reported

    @property
    def answers(self) -> tuple[Attestation, ...]:
        """The answers kept, oldest registrar first."""
        return tuple(att for att, _ in self._answers.values())

    def add(self, attestation: Attestation, now: int) -> None:
        """Keep ``attestation`` (already opened and checked for this node) as its
        registrar's last answer, received at ``now``."""
        self._answers.pop(attestation.registrar, None)
        self._answers[attestation.registrar] = (attestation, now)
        while len(self._answers) > KEEP_REGISTRARS:
            self._answers.popitem(last=False)
        self._expire(now)

    def round_done(self, now: int) -> None:
        """A round of registrations ended at ``now`` (whatever came of it)."""
        self._expire(now)
        self._last_round = now
        self._due = False
        self._short_rounds = self._short_rounds + 1 if len(self._answers) < AGREEMENT else 0

    def address_changed(self, host: str) -> bool:
        """Report the node's address (a reply's ``seen`` host, a new interface address):
        True, and a check is due now with the old answers forgotten, if it differs from
        the one reported before (the first report only sets it)."""
        before, self._host = self._host, host
        if before is None or before == host:
            return False
        self._answers.clear()
        self._due = True
        self._short_rounds = 0
        return True

    def verdict(self) -> Verdict:
        groups = Counter((att.reach_class, att.host, att.port) for att in self.answers)
        answers = len(self._answers)
        if not groups:
            return Verdict(None, None, None, 0, 0)
        (cls, host, port), agreeing = groups.most_common(1)[0]
        if agreeing < AGREEMENT:
            return Verdict(None, None, None, agreeing, answers)
        verified = all(att.verified for att in self.answers
                       if (att.reach_class, att.host, att.port) == (cls, host, port))
        return Verdict(cls, host, port, agreeing, answers, verified)

    @property
    def public(self) -> bool:
        """Whether the verdict is a class in :data:`DIRECT` (public, or forwarded):
        others can dial this node at its external address without a relay."""
        return self.verdict().reach_class in DIRECT

    def next_check_at(self, now: int) -> int:
        """When the next round of registrations is due (µs); see the module docstring."""
        if self._due or self._last_round is None:
            return now
        if len(self._answers) < AGREEMENT:
            step = BACKOFF_US[min(max(self._short_rounds, 1), len(BACKOFF_US)) - 1]
            return self._last_round + step
        return self._last_round + RECHECK_US

    def _expire(self, now: int) -> None:
        for key in [k for k, (_, at) in self._answers.items() if at <= now - ATTESTATION_TTL_US]:
            del self._answers[key]


__all__ = ["AGREEMENT", "BACKOFF_US", "DIRECT", "KEEP_REGISTRARS", "RECHECK_US",
           "Reachability", "Verdict"]
