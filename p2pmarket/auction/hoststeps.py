"""The host's own inputs, pure: ticks, settings changes, disk-usage reports and
refunds paid.

- ``in.tick {now}`` -> ``out.tick {events, prices, interval_ends, refunds, state}``,
  or ``out.tick {error, error_value}`` for a tick before :func:`next_tick_at` (``tick
  too early``). A tick takes what the event-driven allocator has due (interval ends,
  funds run out: :mod:`p2pmarket.auction.livebook`; the standing charges are taken
  lazily), garbage-collects accounts, and forgets the requests taken long enough ago
  (:func:`p2pmarket.auction.seen.pruned`).
- ``in.settings`` (:class:`SettingsChange`) -> ``out.settings {events, state}``:
  new capacities, minimum prices, unique offers or tick lengths; every account is put
  in the book again (a new spend each, claims the new capacities cannot hold dropped).
- ``in.usage`` (:class:`UsageReport`): the disk usage the VMM reports; it changes the
  disk events of the next allocations. No output.
- ``in.refund_paid`` (:class:`~p2pmarket.auction.accounts.RefundPaid`): the host paid
  a refund it recorded, with the certified SEND in the body; the refund is marked
  paid (once). No output. The step checks only that the refund exists and is not
  paid yet (it raises otherwise: no honest host logs that); the replay checks the
  SEND against the refund (:mod:`p2pmarket.audit.refunds`).

``state`` is the :func:`~p2pmarket.auction.snapshot.state_digest` of the state after
the input.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from p2pmarket.auction import HostError
from p2pmarket.auction.accounts import EXPIRED, RefundPaid
from p2pmarket.auction.allocation import (
    applied,
    book_of,
    collect_garbage,
    owning,
    rebooked,
    with_accounts,
)
from p2pmarket.auction.hostconfig import HostConfig
from p2pmarket.auction.machine import HostState
from p2pmarket.auction.model import AllocEvent
from p2pmarket.auction.outcome import Step, error_doc
from p2pmarket.auction.reserve import boundaries
from p2pmarket.auction.seen import pruned
from p2pmarket.auction.snapshot import state_digest
from p2pmarket.core.clock import US_PER_S


@dataclass(frozen=True)
class SettingsChange:
    """The body of ``in.settings``: ``{capacities, min_prices, unique, tick_us,
    long_us}``."""

    config: HostConfig
    tick_us: int
    long_us: int

    @classmethod
    def from_body(cls, body: Any) -> SettingsChange:
        return cls(HostConfig.from_doc(body), int(body["tick_us"]), int(body["long_us"]))

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
    """``in.tick {now}``: take one tick at ``now`` (what is due; charges are lazy)."""
    due = next_tick_at(state)
    if not isinstance(now, int) or isinstance(now, bool) or (due is not None and now < due):
        exc = HostError("tick too early", {"now": now, "last": state.last_tick})
        return Step(state, [("out.tick", error_doc(exc))], error=exc)
    state, reserved = boundaries(state, now)   # reservations started or ended (§10)
    book = book_of(state)
    events = reserved + book.tick(now)
    updates = applied(state, book, events)
    ends: dict[str, int] = {}
    for e in events:
        if e.kind == "expired":
            ends[e.account_id] = e.limit
            a = updates.get(e.account_id) or state.accounts[e.account_id]
            updates[e.account_id] = replace(a, state=EXPIRED)
    moved = with_accounts(owning(replace(state, last_tick=now, ticks=book.ticks,
                                         requests=pruned(state.requests, now)), book), updates)
    closed, refunds = collect_garbage(moved, book, now)
    after = with_accounts(owning(moved, book), closed).with_refunds(refunds)
    doc = tick_doc(after, events, ends)
    doc["refunds"] = [[r.refund_id, r.account_id, r.amount] for r in refunds]
    doc["state"] = state_digest(after)
    return Step(after, [("out.tick", doc)], result=doc, tick=tuple(events), refunds=refunds,
                events=tuple(events))


def tick_doc(state: HostState, events: list[AllocEvent], ends: Mapping[str, int]
             ) -> dict[str, Any]:
    """What a tick did: its events, the new interval ends and the prices (micro-credits
    per second, all bids, root included). Charges are not listed: each account pays its
    standing rate, which follows from the state (the witnesses replay it)."""
    book = book_of(state)
    return {"events": [[e.account_id, e.resource, e.kind, e.amount, e.limit]
                       for e in events],
            "prices": {r: book.price(r) * US_PER_S // state.tick_us
                       for r in sorted(book.resources)},
            "interval_ends": dict(sorted(ends.items()))}


# -- settings and usage ----------------------------------------------------------------

def settings(state: HostState, change: SettingsChange, ts: int) -> Step:
    """``in.settings``: the new settings, and every account put in the book again (a new
    spend each; a claim the new capacities cannot meet is dropped, not refused)."""
    changed = replace(state, config=change.config, tick_us=max(1, change.tick_us),
                      long_us=change.long_us)
    after, events = rebooked(state, changed, ts)
    doc = {"events": [[e.account_id, e.resource, e.kind, e.amount, e.limit] for e in events],
           "state": state_digest(after)}
    return Step(after, [("out.settings", doc)], result=doc)


def usage(state: HostState, report: UsageReport) -> Step:
    """``in.usage``: the disk usage the VMM reported (disk claims below it shrink or go:
    the events, no output)."""
    moved = replace(state, usage=dict(report.usage))
    book = book_of(state)
    events = book.set_usage(dict(report.usage))
    after = with_accounts(owning(moved, book), applied(moved, book, events))
    return Step(after, [], events=tuple(events))


def refund_paid(state: HostState, paid: RefundPaid) -> Step:
    """``in.refund_paid``: refund ``paid.refund_id`` is paid by the SEND whose entry hash
    is ``paid.payment_id``. Raises :class:`HostError` for a refund the state does not
    hold or has already marked paid."""
    if state.refund(paid.refund_id) is None:
        raise HostError("no such refund", paid.refund_id)
    if state.refund_paid(paid.refund_id) is not None:
        raise HostError("refund already paid", paid.refund_id)
    return Step(state.with_paid([(paid.refund_id, paid.payment_id)]), [], paid=[paid])


__all__ = ["SettingsChange", "UsageReport", "next_tick_at",
           "refund_paid", "settings", "tick", "tick_doc", "usage"]
