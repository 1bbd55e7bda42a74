"""The market's invariants after a fault (pure): what the nodes report in, the
violations out.

What the fault harness (:mod:`.faults`) gathers, in the shapes the CLI prints:

- each notary's supply figures (``p2pmarket status --what supply`` at the notary:
  ``{minted, balances, pending, early, ok, ...}``, or an error) and the credits the
  harness minted;
- whole chains by owner key (hex): a wallet's ``p2pmarket wallet history --json`` or a
  node's ``status --what history`` (``{seq, kind, amount, counterparty, send_seq,
  certified, ...}`` per entry);
- the transfers the harness saw complete (a mint the mint paid, a purchase or top-up a
  host accepted): payer, payee, amount;
- each witness's audit status of each host (``status --what``-less ``audit_status``:
  ``{hosts: [{host_id, state, proofs}]}``) and the hosts known honest.

The rules (:func:`violations`; each :class:`Violation` names its rule):

``supply``      a notary that does not answer, whose own figures do not add up
                (``balances + pending - early != minted``), or whose ``minted`` is not
                what was minted;
``completed``   a completed transfer that is not a certified SEND on the payer's chain
                and a RECV of that SEND on the payee's (each side checked when its
                chain was gathered);
``half``        a transfer half applied: a RECV whose SEND is not on the payer's chain
                (or differs in amount or payee), a SEND received twice, or (``settled``)
                an entry left uncertified;
``audit``       an honest host that some witness holds suspected or exposed, or holds a
                proof against.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from p2pmarket.audit.watched import EXPOSED, SUSPECTED
from p2pmarket.ledger.chain import RECV, SEND

RULES = ("supply", "completed", "half", "audit")


@dataclass(frozen=True)
class Violation:
    rule: str        # one of RULES
    subject: str     # the notary, chain owner, transfer or host it is about
    detail: str

    def to_doc(self) -> dict[str, str]:
        return {"rule": self.rule, "subject": self.subject, "detail": self.detail}


@dataclass(frozen=True)
class Link:
    """One chain entry, as far as the invariants care."""

    seq: int
    kind: str
    amount: int
    counterparty: str | None     # payee of a SEND, payer of a RECV (hex key)
    send_seq: int | None         # the SEND a RECV receives
    certified: bool

    @classmethod
    def of(cls, doc: Mapping[str, Any]) -> Link:
        """From one entry of ``wallet history --json`` / ``status --what history``."""
        party = doc.get("counterparty")
        send_seq = doc.get("send_seq")
        return cls(int(doc["seq"]), str(doc["kind"]), int(doc.get("amount") or 0),
                   party if isinstance(party, str) else None,
                   int(send_seq) if isinstance(send_seq, int) else None,
                   bool(doc.get("certified")))


@dataclass(frozen=True)
class Transfer:
    """A transfer the harness saw complete."""

    payer: str       # hex keys
    payee: str
    amount: int      # micro-credits
    what: str = ""   # "mint", "buy", "topup" (for the report)


@dataclass(frozen=True)
class Observation:
    minted: int | None                                   # what the harness minted
    supplies: Mapping[str, Mapping[str, Any]]            # notary -> figures or {"error"}
    chains: Mapping[str, Sequence[Link]] = field(default_factory=dict)   # owner -> chain
    completed: Sequence[Transfer] = ()
    audits: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # witness -> doc
    honest: frozenset[str] = frozenset()                 # honest hosts' node ids (hex)
    settled: bool = True                                 # no transfer may be in progress


def chains_of(docs: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[str, tuple[Link, ...]]:
    return {owner: tuple(Link.of(d) for d in entries) for owner, entries in docs.items()}


def violations(obs: Observation) -> list[Violation]:
    """Every rule broken in ``obs`` (empty: the invariants hold)."""
    return [*supply_violations(obs), *transfer_violations(obs), *audit_violations(obs)]


def supply_violations(obs: Observation) -> list[Violation]:
    out = []
    for notary, row in sorted(obs.supplies.items()):
        if "error" in row:
            out.append(Violation("supply", notary, f"no figures: {row['error']}"))
            continue
        try:
            minted, balances = int(row["minted"]), int(row["balances"])
            pending, early = int(row["pending"]), int(row["early"])
        except (KeyError, TypeError, ValueError):
            out.append(Violation("supply", notary, f"figures missing: {dict(row)}"))
            continue
        if balances + pending - early != minted:
            out.append(Violation("supply", notary, f"balances {balances} + pending {pending} "
                                 f"- early {early} != minted {minted}"))
        if obs.minted is not None and minted != obs.minted:
            out.append(Violation("supply", notary,
                                 f"minted {minted} != {obs.minted} minted by the harness"))
    return out


def _sends(chain: Sequence[Link]) -> dict[int, Link]:
    return {e.seq: e for e in chain if e.kind == SEND}


def transfer_violations(obs: Observation) -> list[Violation]:
    out: list[Violation] = []
    received: Counter[tuple[str, int]] = Counter()
    for owner, chain in sorted(obs.chains.items()):
        for e in chain:
            if obs.settled and not e.certified:
                out.append(Violation("half", owner, f"{e.kind} #{e.seq} not certified"))
            if e.kind != RECV or e.counterparty is None or e.send_seq is None:
                continue
            received[(e.counterparty, e.send_seq)] += 1
            paying = obs.chains.get(e.counterparty)
            if paying is None:
                continue
            send = _sends(paying).get(e.send_seq)
            if send is None or send.counterparty != owner or send.amount != e.amount:
                out.append(Violation("half", owner, f"RECV #{e.seq} of {e.counterparty[:12]}"
                                     f"#{e.send_seq} has no matching SEND on its chain"))
    for (payer, seq), n in sorted(received.items()):
        if n > 1:
            out.append(Violation("half", payer, f"SEND #{seq} received {n} times"))
    want = Counter((t.payer, t.payee, t.amount) for t in obs.completed)
    for (payer, payee, amount), n in sorted(want.items()):
        subject = f"{payer[:12]}->{payee[:12]} {amount}"
        if payer in obs.chains:
            sends = [e for e in obs.chains[payer] if e.kind == SEND and e.certified
                     and e.counterparty == payee and e.amount == amount]
            if len(sends) < n:
                out.append(Violation("completed", subject, f"{n} completed, {len(sends)} "
                                     "certified SENDs on the payer's chain"))
        if payee in obs.chains:
            recvs = [e for e in obs.chains[payee] if e.kind == RECV and e.certified
                     and e.counterparty == payer and e.amount == amount]
            if len(recvs) < n:
                out.append(Violation("completed", subject, f"{n} completed, {len(recvs)} "
                                     "certified RECVs on the payee's chain"))
    return out


def audit_violations(obs: Observation) -> list[Violation]:
    out = []
    for witness, doc in sorted(obs.audits.items()):
        if "error" in doc:
            out.append(Violation("audit", witness, f"no audit status: {doc['error']}"))
            continue
        for row in doc.get("hosts", []):
            host = str(row.get("host_id", ""))
            if host not in obs.honest:
                continue
            if row.get("state") in (SUSPECTED, EXPOSED):
                out.append(Violation("audit", host, f"{row['state']} by {witness}"))
            if row.get("proofs"):
                out.append(Violation("audit", host, f"{len(row['proofs'])} proofs at "
                                     f"{witness}"))
    return out
