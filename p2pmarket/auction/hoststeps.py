"""The host's own inputs, pure: ticks, settings changes, disk-usage reports and
refunds paid.

- ``in.tick {now}`` -> ``out.tick {charges, contingency_charges, events, prices,
  interval_ends, allocations, refunds, state}``, or ``out.tick {error, error_value}``
  for a tick before :func:`next_tick_at` (``tick too early``). A tick allocates and
  charges, expires and garbage-collects accounts, and forgets the requests taken
  long enough ago (:func:`p2pmarket.auction.seen.pruned`).
- ``in.settings`` (:class:`SettingsChange`) -> ``out.settings {allocations, state}``:
  new capacities, minimum prices, unique offers or tick lengths, and a reallocation
  without charges.
- ``in.usage`` (:class:`UsageReport`): the disk usage the VMM reports; it changes the
  disk events of the next allocations. No output.
- ``in.refund_paid`` (:class:`~p2pmarket.auction.accounts.RefundPaid`): the host paid
  a refund it recorded, with the certified SEND in the body; the refund is marked
  paid (once). No output. The step checks only that the refund exists and is not
  paid yet (it raises otherwise: no honest host logs that); the replay checks the
  SEND against the refund (:mod:`p2pmarket.audit.refunds`).

``allocations`` is :func:`allocations_digest`, ``state`` the
:func:`~p2pmarket.auction.snapshot.state_digest` of the state after the input.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from p2pmarket.auction import HostError
from p2pmarket.auction.accounts import RefundPaid
from p2pmarket.auction.allocation import build, collect_garbage, evaluate, settle, with_accounts
from p2pmarket.auction.allocator import AllocationResult, run_tick
from p2pmarket.auction.hostconfig import HostConfig
from p2pmarket.auction.machine import HostState, plain_digest
from p2pmarket.auction.outcome import Step, error_doc
from p2pmarket.auction.seen import pruned
from p2pmarket.auction.snapshot import state_digest


@dataclass(frozen=True)
class SettingsChange:
    """The body of ``in.settings``: ``{capacities, min_prices, unique, tick_us,
    long_us}``."""

    config: HostConfig
    tick_us: int
    long_us: int

    @classmethod
    def from_body(cls, body: Any) -> SettingsChange:
        config = HostConfig({str(k): int(v) for k, v in body["capacities"].items()},
                            {str(k): int(v) for k, v in body["min_prices"].items()},
                            {str(k): int(v) for k, v in body["unique"].items()})
        return cls(config, int(body["tick_us"]), int(body["long_us"]))

    def body(self) -> dict[str, Any]:
        return {**self.config.to_doc(), "tick_us": self.tick_us, "long_us": self.long_us}


@dataclass(frozen=True)
class UsageReport:
    """The body of ``in.usage``: ``{usage: [[account_id, used_kib, floor_kib], ...]}``."""

    usage: Mapping[str, tuple[int, int]]   # account -> (used, what it can shrink to)

    @classmethod
    def from_body(cls, body: Any) -> UsageReport:
        return cls({str(k): (int(u), int(f)) for k, u, f in body["usage"]})

    def body(self) -> dict[str, Any]:
        return {"usage": [[k, u, f] for k, (u, f) in sorted(self.usage.items())]}


# -- ticks -------------------------------------------------------------------------

def next_tick_at(state: HostState) -> int | None:
    """When the next tick is due: the earliest ``now`` an ``in.tick`` is taken at, one
    tick length after the last tick; None before the first tick (due at any time).
    The auctioneer sleeps until then (aioquic's ``get_timer``); :func:`tick` refuses
    an earlier tick."""
    return None if state.last_tick < 0 else state.last_tick + state.tick_us


def tick(state: HostState, now: object) -> Step:
    """``in.tick {now}``: allocate and charge one tick at ``now``."""
    due = next_tick_at(state)
    if not isinstance(now, int) or isinstance(now, bool) or (due is not None and now < due):
        exc = HostError("tick too early", {"now": now, "last": state.last_tick})
        return Step(state, [("out.tick", error_doc(exc))], error=exc)
    live = state.accounts
    book = state.book or build(state, live)
    accs = [live[aid] for aid in book.ids]
    result = run_tick(book, [a.fund for a in accs], [a.contingency for a in accs],
                      [a.interval_end_us for a in accs], now, state.tick_us,
                      state.config.root_bids(state.tick_us), dict(state.usage), state.long_us)
    new = settle(live, result, charge=True)
    refunds = collect_garbage(new, now)
    after = with_accounts(replace(state, book=book, last_tick=now,
                                  requests=pruned(state.requests, now)), new
                          ).with_refunds(refunds)
    doc = tick_doc(result)
    doc["refunds"] = [[r.refund_id, r.account_id, r.amount] for r in refunds]
    doc["state"] = state_digest(after)
    return Step(after, [("out.tick", doc)], result=doc, tick=result, refunds=refunds)


def tick_doc(result: AllocationResult) -> dict[str, Any]:
    return {"charges": {k: v for k, v in result.charges.items() if v},
            "contingency_charges": dict(result.contingency_charges),
            "events": [[e.account_id, e.resource, e.kind, e.amount, e.limit]
                       for e in result.events],
            "prices": dict(result.prices), "interval_ends": dict(result.interval_ends),
            "allocations": allocations_digest(result)}


def allocations_digest(result: AllocationResult) -> bytes:
    """SHA-256 of ``[account ids, [[resource, column], ...], [[account, [[key, ids won],
    ...]], ...]]`` (msgpack; ids and resources in the book's order, unique wins sorted):
    the divisible allocations as the allocator's columns (an account's entry is 0 where
    it does not bid) and the unique identifiers won. It commits to every account's
    allocation (the book, which says who bids on what, follows from the state)."""
    book = result.book
    won = result.unique_won
    return plain_digest([list(book.ids), [[r, result.columns[r]] for r in book.resources],
                         [[aid, sorted(won[aid].items())] for aid in sorted(won)]])


# -- settings and usage ----------------------------------------------------------------

def settings(state: HostState, change: SettingsChange, ts: int) -> Step:
    """``in.settings``: the new settings, and everyone reallocated (no charges)."""
    changed = replace(state, config=change.config, tick_us=max(1, change.tick_us),
                      long_us=change.long_us, book=None)
    result = evaluate(changed, changed.accounts, ts)
    after = with_accounts(changed, settle(changed.accounts, result))
    after = replace(after, book=None)
    doc = {"allocations": allocations_digest(result), "state": state_digest(after)}
    return Step(after, [("out.settings", doc)], result=doc)


def usage(state: HostState, report: UsageReport) -> Step:
    """``in.usage``: the disk usage the VMM reported."""
    return Step(replace(state, usage=dict(report.usage)), [])


def refund_paid(state: HostState, paid: RefundPaid) -> Step:
    """``in.refund_paid``: refund ``paid.refund_id`` is paid by the SEND whose entry hash
    is ``paid.payment_id``. Raises :class:`HostError` for a refund the state does not
    hold or has already marked paid."""
    if state.refund(paid.refund_id) is None:
        raise HostError("no such refund", paid.refund_id)
    if state.refund_paid(paid.refund_id) is not None:
        raise HostError("refund already paid", paid.refund_id)
    return Step(state.with_paid([(paid.refund_id, paid.payment_id)]), [], paid=[paid])


__all__ = ["SettingsChange", "UsageReport", "allocations_digest", "next_tick_at",
           "refund_paid", "settings", "tick", "tick_doc", "usage"]
