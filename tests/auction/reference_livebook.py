"""A plain reference implementation of the event-driven allocation rules (docs/design.md
§6; p2pmarket.auction.livebook's docstring): everything recomputed from scratch at every
step, money charged eagerly at every tick, the water-filling done by the allocator's own
:func:`p2pmarket.auction.shares.clearing`, the unique identifiers' sealed bids by the
allocator's own :func:`p2pmarket.auction.unique.run_unique` and their events from the
statuses before and after each call. Slow and obviously the rules; the hypothesis test
runs it beside :class:`LiveBook` and requires equal outputs."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction

from p2pmarket.auction.book import AccountState
from p2pmarket.auction.livebook import Refused
from p2pmarket.auction.model import AllocEvent, Bid
from p2pmarket.auction.shares import clearing
from p2pmarket.auction.unique import UniqueOutcome, build_unique, id_key, run_unique


@dataclass
class RefAccount:
    fund: int
    contingency: int
    end_us: int
    bids: dict[str, Bid]
    spend: int = 0
    topups: dict[str, int] = field(default_factory=dict)
    split_total: int = 1   # the weight total the spend was split by (at its event)


class ReferenceBook:
    def __init__(self, capacities: Mapping[str, int], root_bids: Mapping[str, int],
                 tick_us: int, long_interval_us: int,
                 unique: Mapping[str, int] | None = None,
                 usage: Mapping[str, tuple[int, int]] | None = None) -> None:
        self.caps = {r: c for r, c in sorted(capacities.items()) if c > 0}
        self.usage = dict(usage or {})
        self.root = dict(root_bids)
        self.tick_us, self.long_us = tick_us, long_interval_us
        self.unique = dict(unique or {})
        self.table = build_unique(self.unique, ())   # the offers alone
        self._memo: tuple[object, tuple[list[str], UniqueOutcome]] | None = None
        self.accounts: dict[str, RefAccount] = {}
        self.ticks = 0
        self.events: list[AllocEvent] = []

    def offered(self, key: str) -> bool:
        return key in self.caps or ("," in key and self.table.offered_in(key))

    # -- disk usage, from scratch ----------------------------------------------------------

    def below_usage(self) -> dict[str, AllocEvent]:
        out = {}
        for aid, a in sorted(self.accounts.items()):
            used, floor = self.usage.get(aid, (0, 0))
            if "disk" in a.bids and "disk" in self.caps:
                got = self.allocation(aid)["disk"]
                if got < used:
                    out[aid] = AllocEvent(aid, "disk", "disk_shrink" if got >= floor
                                          else "disk_delete", got, used)
        return out

    def disk_events(self, before: Mapping[str, AllocEvent]) -> list[AllocEvent]:
        return [e for aid, e in self.below_usage().items()
                if aid not in before or before[aid].kind != e.kind]

    def set_usage(self, usage: Mapping[str, tuple[int, int]]) -> list[AllocEvent]:
        before, disk = self.statuses(), self.below_usage()
        self.usage = dict(usage)
        return self._done([], before, disk)

    # -- unique identifiers, from scratch by run_unique ----------------------------------

    def outcome(self) -> tuple[list[str], UniqueOutcome]:
        """run_unique on the standing bids and spends (remembered while they stand)."""
        state = tuple((aid, a.spend, a.split_total, tuple(sorted(a.bids.items())))
                      for aid, a in sorted(self.accounts.items()))
        if self._memo is None or self._memo[0] != state:
            self._memo = (state, self._outcome())
        return self._memo[1]

    def _outcome(self) -> tuple[list[str], UniqueOutcome]:
        ids = sorted(self.accounts)
        accs = [AccountState(aid, 0, 0, self.accounts[aid].bids) for aid in ids]
        weights = [self.accounts[aid].split_total for aid in ids]
        return ids, run_unique(build_unique(self.unique, accs),
                               [self.accounts[aid].spend for aid in ids], weights,
                               self.tick_us)

    def entries(self) -> dict[str, list[tuple[int, str]]]:
        """Identifier key -> every (amount, account) bid on it."""
        table = self.table
        out: dict[str, list[tuple[int, str]]] = {}
        for aid, a in sorted(self.accounts.items()):
            total = a.split_total
            for key, b in sorted(a.bids.items()):
                ids = table.covered(key) if key not in self.caps else ()
                for ident in ids:
                    money = a.spend * b.weight_ppm // total // len(ids)
                    out.setdefault(id_key(*ident), []).append((money, aid))
        return out

    def statuses(self) -> dict[tuple[str, str], tuple[str, int, int]]:
        """(identifier key, account) -> (win or lose, amount, price) for every account
        bidding on an identifier: the amount its best entry there, the price what the
        winner pays per tick (the reserve if nobody wins)."""
        _, out = self.outcome()
        losers: dict[str, int] = {}
        reserve: dict[str, int] = {}
        for e in out.events:
            losers[e.resource] = losers.get(e.resource, 0) + e.amount
            reserve[e.resource] = e.limit
        got = {}
        for name, offers in self.entries().items():
            winner = out.winners.get(name)
            price = out.revenue[name] - losers.get(name, 0) if winner else reserve[name]
            for amount, aid in offers:
                old = got.get((name, aid))
                if aid == winner:
                    got[(name, aid)] = ("win", max(o[0] for o in offers), price)
                elif old is None or (old[0] == "lose" and old[1] < amount):
                    got[(name, aid)] = ("lose", amount, price)
        return got

    def unique_events(self, before: Mapping[tuple[str, str], tuple[str, int, int]]
                      ) -> list[AllocEvent]:
        out = []
        for (name, aid), (now, amount, price) in sorted(self.statuses().items()):
            was = before.get((name, aid), ("",))[0]
            if now != was:
                out.append(AllocEvent(aid, name, "won" if now == "win" else "outbid",
                                      amount, price))
        return out

    def won(self, aid: str) -> dict[str, int]:
        return dict(sorted(self.outcome()[1].won.get(aid, {}).items()))

    def winners(self) -> dict[str, str]:
        return dict(sorted(self.outcome()[1].winners.items()))

    def id_prices(self) -> dict[str, int]:
        return dict(sorted(self.outcome()[1].prices.items()))

    # -- derived, from scratch ---------------------------------------------------------

    def claim(self, aid: str, r: str) -> tuple[int, int, int, int]:
        """(base, topup, min, max)"""
        a = self.accounts[aid]
        b = a.bids[r]
        return (a.spend * b.weight_ppm // a.split_total, a.topups.get(r, 0),
                min(b.min, b.max), b.max)

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
        won = self.outcome()[1].won.get(aid, {})
        for r in sorted(self.accounts[aid].bids):
            if r not in self.caps:
                out[r] = won.get(r, 0)
                continue
            _, capped, cap, b = self.clear(r)
            base, top, _, mx = self.claim(aid, r)
            out[r] = mx if aid in capped else (base + top) * cap // b
        return out

    def rates(self, aid: str) -> tuple[int, int]:
        ids, out = self.outcome()
        fund = out.charges.get(ids.index(aid), 0)
        cont = 0
        for r in self.accounts[aid].bids:
            if r not in self.caps:
                continue
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
        a.split_total = max(1, sum(b.weight_ppm for b in a.bids.values()))
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
        before, disk = self.statuses(), self.below_usage()
        events: list[AllocEvent] = []
        try:
            change(events)   # type: ignore[operator]
            self.cascade(actor, events)
            mine = self.below_usage().get(actor or "")
            if mine is not None and mine.kind == "disk_delete":
                raise Refused(mine)
        except BaseException:
            self.accounts = saved
            self.events = []
            raise
        return self._done(events, before, disk)

    def _done(self, events: list[AllocEvent],
              before: Mapping[tuple[str, str], tuple[str, int, int]],
              disk: Mapping[str, AllocEvent]) -> list[AllocEvent]:
        events += self.unique_events(before) + self.disk_events(disk)
        self.events = sorted(events, key=lambda e: (e.account_id, e.resource, e.kind))
        return self.events

    def put(self, aid: str, fund: int, contingency: int, end_us: int,
            bids: Mapping[str, Bid], now_us: int) -> list[AllocEvent]:
        def change(events: list[AllocEvent]) -> None:
            self.accounts[aid] = RefAccount(fund, contingency, end_us,
                                            {r: b for r, b in bids.items() if self.offered(r)})
            events.extend(AllocEvent(aid, r, "not_offered", 0, 0)
                          for r in sorted(bids) if not self.offered(r))
            self.freeze(aid, now_us)
        return self._event(aid, change)

    def add_money(self, aid: str, fund: int, contingency: int, now_us: int
                  ) -> list[AllocEvent]:
        def change(events: list[AllocEvent]) -> None:
            a = self.accounts[aid]
            if a.fund + fund < 0 or a.contingency + contingency < 0:
                raise ValueError("not that much money in the account")
            a.fund += fund
            a.contingency += contingency
            self.freeze(aid, now_us)
        return self._event(aid, change)

    def remove(self, aid: str) -> tuple[int, int]:
        before, disk = self.statuses(), self.below_usage()
        a = self.accounts.pop(aid)
        events: list[AllocEvent] = []
        self.cascade(None, events)
        self._done(events, before, disk)
        return a.fund, a.contingency

    def tick(self, now_us: int) -> list[AllocEvent]:
        events: list[AllocEvent] = []
        before, disk = self.statuses(), self.below_usage()
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
        events = self._done(events, before, disk)
        rates = {aid: self.rates(aid) for aid in self.accounts}
        for aid, (f, c) in rates.items():
            a = self.accounts[aid]
            a.fund -= f
            a.contingency -= c
            assert a.fund >= 0 and a.contingency >= 0
        self.ticks += 1
        return events
