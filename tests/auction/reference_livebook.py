"""A plain reference implementation of the event-driven allocation rules (docs/design.md
§6; p2pmarket.auction.livebook's docstring): everything recomputed from scratch at every
step, money charged eagerly at every tick, the water-filling done by the allocator's own
:func:`p2pmarket.auction.shares.clearing`. Slow and obviously the rules; the
hypothesis test runs it beside :class:`LiveBook` and requires equal outputs."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction

from p2pmarket.auction.livebook import Refused
from p2pmarket.auction.model import AllocEvent, Bid
from p2pmarket.auction.shares import clearing


@dataclass
class RefAccount:
    fund: int
    contingency: int
    end_us: int
    bids: dict[str, Bid]
    spend: int = 0
    topups: dict[str, int] = field(default_factory=dict)


class ReferenceBook:
    def __init__(self, capacities: Mapping[str, int], root_bids: Mapping[str, int],
                 tick_us: int, long_interval_us: int) -> None:
        self.caps = {r: c for r, c in sorted(capacities.items()) if c > 0}
        self.root = dict(root_bids)
        self.tick_us, self.long_us = tick_us, long_interval_us
        self.accounts: dict[str, RefAccount] = {}
        self.ticks = 0

    # -- derived, from scratch ---------------------------------------------------------

    def claim(self, aid: str, r: str) -> tuple[int, int, int, int]:
        """(base, topup, min, max)"""
        a = self.accounts[aid]
        total = max(1, sum(b.weight_ppm for b in a.bids.values()))
        b = a.bids[r]
        return a.spend * b.weight_ppm // total, a.topups.get(r, 0), min(b.min, b.max), b.max

    def clear(self, r: str) -> tuple[list[str], set[str], int, int]:
        ids = sorted(aid for aid, a in self.accounts.items() if r in a.bids)
        cl = [self.claim(aid, r) for aid in ids]
        bids = [c[0] + c[1] for c in cl]
        maxes = [c[3] for c in cl]
        cappable = [i for i, m in enumerate(maxes) if m < self.caps[r]]
        capped, cap, b = clearing(self.caps[r], bids, maxes, cappable, self.root[r])
        return ids, {ids[i] for i in capped}, cap, b

    def allocation(self, aid: str) -> dict[str, int]:
        out = {}
        for r in sorted(self.accounts[aid].bids):
            _, capped, cap, b = self.clear(r)
            base, top, _, mx = self.claim(aid, r)
            out[r] = mx if aid in capped else (base + top) * cap // b
        return out

    def rates(self, aid: str) -> tuple[int, int]:
        fund = cont = 0
        for r in self.accounts[aid].bids:
            _, capped, cap, b = self.clear(r)
            base, top, _, mx = self.claim(aid, r)
            if aid in capped:
                cost = min(base + top, -(-mx * b // cap))
                fund += min(cost, base)
                cont += cost - min(cost, base)
            else:
                fund, cont = fund + base, cont + top
        return fund, cont

    def money(self, aid: str) -> tuple[int, int]:
        a = self.accounts[aid]
        return a.fund, a.contingency

    def price(self, r: str) -> int:
        return self.root[r] + sum(sum(self.claim(aid, r)[:2])
                                  for aid, a in self.accounts.items() if r in a.bids)

    def worst_short(self) -> tuple[str, str] | None:
        for r in self.caps:
            ids, capped, cap, b = self.clear(r)
            short = []
            for aid in ids:
                base, top, mn, _ = self.claim(aid, r)
                if aid not in capped and mn > 0 and (base + top) * cap < mn * b:
                    short.append((Fraction(base + top, mn), aid))
            if short:
                return r, min(short)[1]
        return None

    # -- changes -------------------------------------------------------------------

    def freeze(self, aid: str, now_us: int) -> None:
        a = self.accounts[aid]
        remaining = max(a.end_us - now_us, self.tick_us)
        a.spend = min(a.fund, -(-a.fund * self.tick_us // remaining)) if a.fund > 0 else 0
        a.topups = {}

    def cascade(self, actor: str | None, events: list[AllocEvent]) -> None:
        topped: set[tuple[str, str]] = set()
        while (got := self.worst_short()) is not None:
            r, aid = got
            a = self.accounts[aid]
            base, top0, mn, _ = self.claim(aid, r)
            _, _, cap, b = self.clear(r)
            top = None
            if cap > mn:
                top = -(-mn * (b - base - top0) // (cap - mn)) - base
            if top is not None and a.contingency > 0 and (r, aid) not in topped and \
                    sum(a.topups.values()) - top0 + top <= a.contingency:
                topped.add((r, aid))
                a.topups[r] = top
                events.append(AllocEvent(aid, r, "topped_up", top, mn))
                continue
            event = AllocEvent(aid, r, "below_min", self.allocation(aid)[r], mn)
            if aid == actor:
                raise Refused(event)
            events.append(event)
            del a.bids[r]
            a.topups.pop(r, None)

    def _event(self, actor: str | None, change: object) -> list[AllocEvent]:
        saved = copy.deepcopy(self.accounts)
        events: list[AllocEvent] = []
        try:
            change()   # type: ignore[operator]
            self.cascade(actor, events)
        except BaseException:
            self.accounts = saved
            raise
        return sorted(events, key=lambda e: (e.account_id, e.resource, e.kind))

    def put(self, aid: str, fund: int, contingency: int, end_us: int,
            bids: Mapping[str, Bid], now_us: int) -> list[AllocEvent]:
        def change() -> None:
            self.accounts[aid] = RefAccount(fund, contingency, end_us,
                                            {r: b for r, b in bids.items() if r in self.caps})
            self.freeze(aid, now_us)
        return self._event(aid, change)

    def add_money(self, aid: str, fund: int, contingency: int, now_us: int
                  ) -> list[AllocEvent]:
        def change() -> None:
            a = self.accounts[aid]
            if a.fund + fund < 0 or a.contingency + contingency < 0:
                raise ValueError("not that much money in the account")
            a.fund += fund
            a.contingency += contingency
            self.freeze(aid, now_us)
        return self._event(aid, change)

    def remove(self, aid: str) -> tuple[int, int]:
        a = self.accounts.pop(aid)
        events: list[AllocEvent] = []
        self.cascade(None, events)
        return a.fund, a.contingency

    def tick(self, now_us: int) -> list[AllocEvent]:
        events: list[AllocEvent] = []
        done = set()
        for aid, a in sorted(self.accounts.items()):
            if a.end_us <= now_us and a.fund + a.contingency > 0:
                done.add(aid)
                a.end_us = now_us + self.long_us
                events.append(AllocEvent(aid, "", "expired", a.fund + a.contingency,
                                         a.end_us))
                self.freeze(aid, now_us)
        for aid, a in sorted(self.accounts.items()):
            if aid in done:
                continue
            if a.fund < a.spend:
                events.append(AllocEvent(aid, "", "exhausted", a.fund, a.spend))
                self.freeze(aid, now_us)
            elif a.contingency < sum(a.topups.values()):
                events.append(AllocEvent(aid, "", "topup_ended", a.contingency,
                                         sum(a.topups.values())))
                a.topups = {}
        self.cascade(None, events)
        rates = {aid: self.rates(aid) for aid in self.accounts}
        for aid, (f, c) in rates.items():
            a = self.accounts[aid]
            a.fund -= f
            a.contingency -= c
            assert a.fund >= 0 and a.contingency >= 0
        self.ticks += 1
        return sorted(events, key=lambda e: (e.account_id, e.resource, e.kind))
