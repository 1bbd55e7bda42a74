"""The event-driven allocator (docs/design.md §6, "event-driven allocation"): a tick costs
what changed, an event O(log n). Pure (no clock, I/O or randomness), mutable.

Between events nothing in the auction moves, so nothing is recomputed between them:

1. **Frozen spend.** At each of its events (put, fund, take, expiry, exhaustion) an
   account's per-tick spend is fixed at ``spend = min(fund, ceil(fund * tick /
   max(end - now, tick)))`` and split by weight over its claims and its unique bids,
   each part rounded down (``base``); it stays until the account's next event. A bid
   on what the host does not offer (a divisible resource without capacity, a unique
   key that covers no offered identifier) is left out of the book and the split, with
   event ``not_offered`` (a report: the host's terms refuse such keys earlier). An
   account's events change its own claims only, so between events every bid, price,
   allocation and charge per tick is constant, and what an account has paid after
   ``n`` ticks at a constant charge ``c`` is exactly ``n * c``.
2. **Clearing and charges** are those of :mod:`p2pmarket.auction.standing` per
   resource (water-filled max caps; uncapped pay their bid, capped ``min(bid,
   ceil(max * B / C))``). A capped claim's charge moves with its resource's ``B / C``,
   so a change of the clearing settles the accounts capped there (the only part of an
   event that is not O(log n): O(capped claims of the resources it changes)).
3. **Mins.** After every change, while some claim is short of its min (the resource
   first in name order that has one, its claim furthest below: smallest bid/min, ties
   by account id): if the account has a contingency fund and was not topped up on
   this resource in this event, its top-up becomes ``needed - base`` (``needed`` from
   :meth:`Standing.needed_bid`, the others' bids held fixed) if its contingency fund
   covers all its top-ups for one tick (event ``topped_up``); otherwise the claim is
   dropped (event ``below_min``, amount = its share then, limit = its min), the
   account no longer bids on the resource and its spend is split again over its
   other claims. A top-up stands until the account's next event.
4. **6/27.** An event (put, fund, take) after which its own account loses a claim, or
   would have its disk deleted (rule 7), is refused: :class:`Refused`, and nothing
   changed (an undo log restores the claims).
5. **Unique resources** (tcp_port, ipv4_address; the rules of
   :mod:`p2pmarket.auction.unique`, kept bid by bid in :mod:`p2pmarket.auction.sealed`):
   a unique bid's part of the spend is split evenly over the offered identifiers it
   covers (rounded down); per identifier the highest bid wins if it reaches the
   reserve (ties: smaller account id) and pays ``min(bid, max(own min per tick,
   second bid, reserve))``, the losers pay their bid, all from the fund. Between
   events these charges are constant too; a change of an identifier's bids re-rates
   the bid changed and the winners before and after. Losing an identifier is never
   refused and drops nothing (2/7). Per call, on each identifier whose bids changed:
   ``won`` for an account winning it now and not before the call, ``outbid`` for one
   losing it now that was winning it or had no bid on it before the call (the exact
   rule and the amounts: :mod:`p2pmarket.auction.sealed`).
6. **Ticks.** ``tick(now)`` counts one tick. First the accounts whose interval ended
   (``now >= end``) with money left get ``end = now + long_interval`` and a new
   spend (event ``expired``); then those whose fund is below their spend before this
   tick's charge get a new spend (event ``exhausted``), and those whose contingency
   fund no longer covers their top-ups lose them (event ``topup_ended``), both found
   in heaps at the tick they are due; then every standing charge is taken for the
   tick (lazily: an account's money is brought up to date when it is read or
   changes).
7. **Disk usage** (:mod:`p2pmarket.auction.diskuse`): with the usage the host reports
   (:meth:`LiveBook.set_usage`), an account whose disk claim gets less than it uses
   is below: ``disk_shrink`` (it gets at least what its file system can shrink to)
   or ``disk_delete``. The event comes at the call after which the account is below
   and was not, or is below in the other kind (not at every tick).

Money: fund and contingency are integers charged per tick at constant rates between
settlements, never below zero; what is charged is what the accounts lose.

State: each account is a :class:`Record` (its money as of tick ``since``, its interval
end, standing bids, frozen spend and top-ups); :meth:`LiveBook.records` and
:meth:`LiveBook.restore` give and take the whole book as records and the tick count,
and after every call ``changed`` names the accounts whose record changed, so a host
writes only those, and ``events`` holds the call's events (those of :meth:`remove`
too, which returns the money). The unique auctions are not in the records: they
follow from the bids and frozen spends, and restore finds them again; nor is the disk
usage, which the host keeps apart (as its snapshot does) and restore takes.
:meth:`LiveBook.digest` commits to the tick count and every record: the sum modulo
2^256 of the SHA-256 of each record's row (:meth:`Record.row`), kept up to date
record by record (a multiset hash: the order of accounts does not matter and one
change costs one hash).
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace

from p2pmarket.auction.diskuse import DiskUse
from p2pmarket.auction.liverecords import MOD, Record, Refused, row_hash
from p2pmarket.auction.model import AllocEvent, Bid
from p2pmarket.auction.sealed import Uniques
from p2pmarket.auction.standing import Claim, Standing
from p2pmarket.core.wire import pack_plain


@dataclass
class _Account:
    fund: int           # as of tick ``since`` (charged up to and including it)
    contingency: int
    since: int
    end_us: int
    bids: dict[str, Bid]              # the standing ones (dropped claims leave)
    spend: int = 0
    split_total: int = 1              # the weight total the spend is split by
    rate_fund: int = 0                # charge per tick
    rate_cont: int = 0
    topups: dict[str, int] = field(default_factory=dict)
    version: int = 0                  # heap entries of older versions are stale


class LiveBook:
    """Accounts, their claims on each divisible resource, their bids on the unique
    identifiers, and the heaps of what is due."""

    def __init__(self, capacities: Mapping[str, int], root_bids: Mapping[str, int],
                 tick_us: int, long_interval_us: int,
                 unique: Mapping[str, int] | None = None,
                 usage: Mapping[str, tuple[int, int]] | None = None) -> None:
        """``unique``: the host's unique offers, key (single or range) -> reserve per
        tick (:meth:`HostConfig.reserves`); ``usage``: the disk usage reported,
        account -> (used, floor) (:meth:`set_usage`)."""
        assert tick_us > 0
        self.tick_us = tick_us
        self.long_us = long_interval_us
        self.resources = {r: Standing(c, root_bids[r]) for r, c in sorted(capacities.items())
                          if c > 0 and "," not in r}
        self.unique = Uniques(unique or {}, tick_us)
        self.generation = 0   # changes committed: a state names the one it was made at
        self.dry_allocation: dict[str, int] = {}
        self.disk = DiskUse(dict(usage or {}))
        self._disk_touched: set[str] = set()
        self._disk_moved: dict[str, str | None] = {}
        self.accounts: dict[str, _Account] = {}
        self.ticks = 0
        self._ends: list[tuple[int, int, str]] = []    # (end_us, version, aid)
        self._due: list[tuple[int, int, str]] = []     # (tick, version, aid)
        self._serial = 0
        # what one change did so far (between _begin and _end)
        self._undo: list[tuple[str, str, Claim | None]] | None = None
        self._saved: dict[str, _Account | None] = {}
        self._events: list[AllocEvent] = []
        self._dirty: set[str] = set()
        self._changed: set[str] = set()
        self._topped: set[tuple[str, str]] = set()
        self._before: dict[str, tuple[int, int, frozenset[str]]] = {}
        self.changed: set[str] = set()   # accounts whose record the last call changed
        self.events: list[AllocEvent] = []   # the last call's events (remove's too)
        self._hashes: dict[str, int] = {}
        self._sum = 0

    # -- reading -------------------------------------------------------------------

    def money(self, aid: str) -> tuple[int, int]:
        """(fund, contingency) as of the last tick."""
        a = self.accounts[aid]
        n = self.ticks - a.since
        return a.fund - n * a.rate_fund, a.contingency - n * a.rate_cont

    def record(self, aid: str) -> Record:
        a = self.accounts[aid]
        return Record(a.fund, a.contingency, a.since, a.end_us, dict(a.bids), a.spend,
                      dict(a.topups), a.split_total)

    def records(self) -> dict[str, Record]:
        return {aid: self.record(aid) for aid in sorted(self.accounts)}

    def digest(self) -> bytes:
        """SHA-256 of ``[ticks, sum of the records' row hashes mod 2^256]``."""
        return hashlib.sha256(pack_plain([self.ticks, self._sum.to_bytes(32, "big")])
                              ).digest()

    def allocation(self, aid: str) -> dict[str, int]:
        """Per key bid on: the divisible share, or how many identifiers it wins."""
        a = self.accounts[aid]
        return {r: self.resources[r].allocation(aid) if r in self.resources else
                self.unique.won(aid, r) for r in sorted(a.bids)}

    def won(self, aid: str) -> dict[str, int]:
        """The account's unique keys that win identifiers, and how many each."""
        a = self.accounts[aid]
        return {k: n for k in sorted(a.bids) if k not in self.resources
                and (n := self.unique.won(aid, k))}

    def winners(self) -> dict[str, str]:
        """Identifier key (``tcp_port,30000``) -> the account that wins it."""
        return self.unique.winners()

    def id_prices(self) -> dict[str, int]:
        """Per identifier bid on, per second: what its winner pays, or its reserve."""
        return self.unique.prices()

    def below_usage(self) -> dict[str, AllocEvent]:
        """The accounts whose disk claim is below their usage now (rule 7), each with
        the event it got."""
        st = self.resources.get("disk")
        return {} if st is None else {aid: self.disk.event(st, aid, kind)
                                      for aid, kind in sorted(self.disk.kinds.items())}

    def offered(self, key: str) -> bool:
        """Whether the host offers ``key``: a divisible resource, or a unique key that
        covers an offered identifier."""
        return key in self.resources or bool(self.unique.covered(key))

    def rates(self, aid: str) -> tuple[int, int]:
        """What the account is charged per tick: (from the fund, from the contingency)."""
        a = self.accounts[aid]
        return a.rate_fund, a.rate_cont

    def price(self, r: str) -> int:
        """The sum of the bids on ``r`` per tick, root included."""
        return self.resources[r].bid_total

    def claims(self) -> Iterator[tuple[str, str, Claim]]:
        for r, st in self.resources.items():
            for aid, c in st.claims.items():
                yield r, aid, c

    @classmethod
    def restore(cls, capacities: Mapping[str, int], root_bids: Mapping[str, int],
                tick_us: int, long_interval_us: int, ticks: int,
                records: Mapping[str, Record],
                unique: Mapping[str, int] | None = None,
                usage: Mapping[str, tuple[int, int]] | None = None) -> LiveBook:
        """The book as :meth:`records` gave it (nothing re-frozen, no cascade, no
        events; the unique auctions found again from the bids). Raises ValueError for
        records no book could have held: a claim short of its min, a top-up on a
        divisible resource not bid on, money charged below zero."""
        book = cls(capacities, root_bids, tick_us, long_interval_us, unique, usage)
        book.ticks = ticks
        book._begin()
        for aid, rec in sorted(records.items()):
            bids = {r: b for r, b in sorted(rec.bids.items()) if book.offered(r)}
            if rec.since > ticks or set(rec.topups) - (set(bids) & set(book.resources)) \
                    or rec.spend < 0 or rec.fund < 0 or rec.contingency < 0 \
                    or rec.split_total < 1:
                raise ValueError(f"account {aid}: not a record of this book")
            book.accounts[aid] = _Account(rec.fund, rec.contingency, rec.since, rec.end_us,
                                          bids, rec.spend, rec.split_total,
                                          topups=dict(rec.topups))
            book._saved[aid] = None
            book._split(aid)
        book._undo = None
        book.unique.begin()
        if (disk := book.resources.get("disk")) is not None:
            book.disk.apply(book.disk.changes(disk, book._disk_touched, None))
        for r, st in book.resources.items():
            if st.worst_short() is not None:
                raise ValueError(f"{r}: a claim below its min")
        for aid, a in book.accounts.items():
            book._rate(aid)
            if a.fund - (ticks - a.since) * a.rate_fund < 0 or \
                    a.contingency - (ticks - a.since) * a.rate_cont < 0:
                raise ValueError(f"account {aid}: charged below zero")
            book._schedule(aid)
            book._hashes[aid] = h = row_hash(aid, book.record(aid))
            book._sum = (book._sum + h) % MOD
        return book

    # -- events --------------------------------------------------------------------

    def put(self, aid: str, fund: int, contingency: int, end_us: int,
            bids: Mapping[str, Bid], now_us: int, refusable: bool = True,
            dry: bool = False) -> list[AllocEvent]:
        """Open or replace an account (its money as of the last tick, its interval end and
        its bids). A bid on what the host does not offer (:meth:`offered`) is left out
        of the book and of the split, with event ``not_offered``. Raises
        :class:`Refused` (6/27)."""
        def change() -> None:
            self._save(aid)
            old = self.accounts.get(aid)
            a = _Account(fund, contingency, self.ticks, end_us,
                         {r: b for r, b in sorted(bids.items()) if self.offered(r)})
            self._events.extend(AllocEvent(aid, r, "not_offered", 0, 0)
                                for r in sorted(bids) if r not in a.bids)
            if old is not None:
                a.version = old.version
                for r in old.bids:
                    if r not in a.bids:
                        self._drop(r, aid)
            self.accounts[aid] = a
            self._freeze(aid, now_us)
        return self._event(aid, change, refusable, dry)

    def add_money(self, aid: str, fund: int, contingency: int, now_us: int,
                  dry: bool = False) -> list[AllocEvent]:
        """Credit (or with negative amounts take) money; a new spend. Raises
        :class:`Refused` (6/27) or ValueError if a fund would go below zero."""
        def change() -> None:
            self._settle(aid)
            a = self.accounts[aid]
            if a.fund + fund < 0 or a.contingency + contingency < 0:
                raise ValueError("not that much money in the account")
            a.fund += fund
            a.contingency += contingency
            self._freeze(aid, now_us)
        return self._event(aid, change, True, dry)

    def remove(self, aid: str) -> tuple[int, int]:
        """Close an account; returns its money (as of the last tick). Never refused."""
        self._begin()
        self._settle(aid)
        a = self.accounts.pop(aid)
        for r in a.bids:
            self._drop(r, aid)
        self._cascade(None)
        self._check_disk(None)
        self._end(commit=True)
        return a.fund, a.contingency

    def set_usage(self, usage: Mapping[str, tuple[int, int]]) -> list[AllocEvent]:
        """The host's disk usage report, account -> (used, floor), in place of the last;
        its events (rule 7; never refused)."""
        self._begin()
        old = self.disk.usage
        self._disk_touched = {aid for aid in old.keys() | usage.keys()
                              if old.get(aid) != usage.get(aid)}
        self.disk.usage = dict(usage)
        self._check_disk(None)
        return self._end(commit=True)

    def tick(self, now_us: int) -> list[AllocEvent]:
        """Take tick ``ticks + 1`` at ``now`` (rule 6); the events, sorted."""
        self._begin()
        k = self.ticks + 1
        seen: set[str] = set()
        while self._ends and self._ends[0][0] <= now_us:
            _, version, aid = heapq.heappop(self._ends)
            a = self.accounts.get(aid)
            if a is None or a.version != version or aid in seen:
                continue
            self._settle(aid)
            if a.fund + a.contingency == 0:
                continue
            seen.add(aid)
            a.end_us = now_us + self.long_us
            self._events.append(AllocEvent(aid, "", "expired", a.fund + a.contingency,
                                           a.end_us))
            self._freeze(aid, now_us)
        while self._due and self._due[0][0] <= k:
            _, version, aid = heapq.heappop(self._due)
            a = self.accounts.get(aid)
            if a is None or a.version != version or aid in seen:
                continue
            seen.add(aid)
            self._settle(aid)
            if a.fund < a.spend:
                self._events.append(AllocEvent(aid, "", "exhausted", a.fund, a.spend))
                self._freeze(aid, now_us)
            elif a.contingency < sum(a.topups.values()):
                self._events.append(AllocEvent(aid, "", "topup_ended", a.contingency,
                                               sum(a.topups.values())))
                a.topups.clear()
                self._split(aid)
        self._cascade(None)
        self._check_disk(None)
        events = self._end(commit=True)
        self.ticks = k
        return events

    # -- the machinery ---------------------------------------------------------------

    def _event(self, aid: str, change: Callable[[], None], refusable: bool = True,
               dry: bool = False) -> list[AllocEvent]:
        """Run one change: with ``refusable``, one that drops its own account's claim
        or disk is refused (6/27); ``dry`` takes it back after, leaving
        :attr:`dry_allocation` (its account's allocation had it been made) and
        returning its events (a quote's dry run, the host's check that a running VM
        keeps cpu and memory)."""
        self._begin()
        try:
            change()
            self._cascade(aid if refusable else None)
            self._check_disk(aid if refusable else None)
            if dry:
                self.dry_allocation = self.allocation(aid) if aid in self.accounts else {}
                events = sorted(self._events, key=lambda e: (e.account_id, e.resource,
                                                             e.kind))
        except BaseException:
            self._end(commit=False)
            raise
        if dry:
            self._end(commit=False)
            return events
        return self._end(commit=True)

    def _begin(self) -> None:
        assert self._undo is None, "one change at a time"
        self._undo, self._saved, self._events = [], {}, []
        self._dirty, self._changed, self._topped = set(), set(), set()
        self.unique.begin()
        self._disk_touched, self._disk_moved = set(), {}
        self._before = {r: (st.cap_left, st.bids_left, frozenset(st.capped))
                        for r, st in self.resources.items()}

    def _end(self, commit: bool) -> list[AllocEvent]:
        undo, saved = self._undo, self._saved
        assert undo is not None
        self._undo = None
        if not commit:
            for r, aid, claim in reversed(undo):
                self.resources[r].put(aid, claim)
            self.unique.end(commit=False)
            if (disk := self.resources.get("disk")) is not None:
                for aid in self._disk_touched:
                    self.disk.sync(aid, disk.claims.get(aid))
            for aid, acc in saved.items():
                if acc is None:
                    self.accounts.pop(aid, None)
                else:
                    self.accounts[aid] = acc
            self.changed, self.events = set(), []
            return []
        # rule 2: new charges for the accounts whose claims changed, for those capped
        # (before or now) on a resource whose clearing moved and for those whose
        # status on an identifier may have moved (rule 5)
        self.disk.apply(self._disk_moved)
        uevents, touched = self.unique.end(commit=True)
        self._events.extend(uevents)
        touched |= self._changed | set(saved)
        for r, st in self.resources.items():
            cap, bids, capped = self._before[r]
            if (cap, bids) != (st.cap_left, st.bids_left) or capped != st.capped:
                touched |= capped
                touched |= st.capped
        for aid in sorted(touched):
            if aid in self.accounts:
                self._settle(aid)
                self._rate(aid)
                self._schedule(aid)
        self.changed = set()
        for aid in touched | set(saved):
            old = self._hashes.pop(aid, 0)
            new = row_hash(aid, self.record(aid)) if aid in self.accounts else 0
            if new:
                self._hashes[aid] = new
            if new != old:
                self._sum = (self._sum - old + new) % MOD
                self.changed.add(aid)
        self.generation += 1
        self.events = sorted(self._events, key=lambda e: (e.account_id, e.resource, e.kind))
        return self.events

    def _save(self, aid: str) -> None:
        if aid not in self._saved:
            a = self.accounts.get(aid)
            self._saved[aid] = None if a is None else replace(
                a, bids=dict(a.bids), topups=dict(a.topups))

    def _drop(self, r: str, aid: str) -> None:
        if r in self.resources:
            self._put_claim(r, aid, None)
        else:
            self.unique.bid(aid, r, None)

    def _put_claim(self, r: str, aid: str, claim: Claim | None) -> None:
        st = self.resources[r]
        assert self._undo is not None
        old = st.claims.get(aid)
        if old == claim:
            return
        self._undo.append((r, aid, old))
        if r == "disk":
            self._disk_touched.add(aid)
        self._dirty.add(r)
        self._changed.add(aid)
        st.put(aid, claim)

    def _settle(self, aid: str) -> None:
        """Charge the account's standing rates up to the last tick taken."""
        self._save(aid)
        a = self.accounts[aid]
        n = self.ticks - a.since
        if n > 0:
            a.fund -= n * a.rate_fund
            a.contingency -= n * a.rate_cont
            assert a.fund >= 0 and a.contingency >= 0, "charged more than the funds"
        a.since = self.ticks

    def _freeze(self, aid: str, now_us: int) -> None:
        """Rule 1: a new spend, split over the claims (top-ups end)."""
        a = self.accounts[aid]
        remaining = max(a.end_us - now_us, self.tick_us)
        a.spend = min(a.fund, -(-a.fund * self.tick_us // remaining)) if a.fund > 0 else 0
        a.split_total = max(1, sum(b.weight_ppm for b in a.bids.values()))
        a.topups.clear()
        self._split(aid)

    def _split(self, aid: str) -> None:
        a = self.accounts[aid]
        total = a.split_total
        for r, b in a.bids.items():
            if r in self.resources:
                self._put_claim(r, aid, Claim(a.spend * b.weight_ppm // total,
                                              a.topups.get(r, 0), min(b.min, b.max), b.max))
            else:
                self.unique.bid(aid, r, a.spend * b.weight_ppm // total, b.min)

    def _rate(self, aid: str) -> None:
        a = self.accounts[aid]
        fund = cont = 0
        unique = []
        for r in a.bids:
            if r not in self.resources:
                unique.append(r)
                continue
            f, c = self.resources[r].cost(aid)
            fund += f
            cont += c
        a.rate_fund, a.rate_cont = fund + self.unique.charge(aid, unique), cont

    def _schedule(self, aid: str) -> None:
        """Heap entries for the account's interval end (if it has money to expire with)
        and for the first tick before whose charge its fund is below its spend or its
        contingency fund below its top-ups (rule 6)."""
        a = self.accounts[aid]
        self._serial += 1
        a.version = self._serial
        if a.fund + a.contingency > 0:
            heapq.heappush(self._ends, (a.end_us, a.version, aid))
        due = []
        topups = sum(a.topups.values())
        for money, need, rate in ((a.fund, a.spend, a.rate_fund),
                                  (a.contingency, topups, a.rate_cont)):
            # money before tick since+1+n is money - n * rate: due at the first such
            # tick where it is below need (at the next tick if it already is)
            if money < need:
                due.append(a.since + 1)
            elif rate > 0:
                due.append(a.since + 2 + (money - need) // rate)
        if due:
            heapq.heappush(self._due, (min(due), a.version, aid))
        if len(self._ends) + len(self._due) > 4 * len(self.accounts) + 64:
            self._compact()

    def _compact(self) -> None:
        """Drop the stale heap entries (amortised O(1) per entry pushed)."""
        live = self.accounts
        self._ends = [e for e in self._ends if (a := live.get(e[2])) and a.version == e[1]]
        self._due = [e for e in self._due if (a := live.get(e[2])) and a.version == e[1]]
        heapq.heapify(self._ends)
        heapq.heapify(self._due)

    def _check_disk(self, actor: str | None) -> None:
        """Rule 7, and rule 4 for it."""
        st = self.resources.get("disk")
        if st is None:
            return
        moved = self.disk.changes(st, self._disk_touched, self._before["disk"]) \
            if self._disk_touched else {}
        if actor is not None and self.disk.kind(st, actor) == "disk_delete":
            raise Refused(self.disk.event(st, actor, "disk_delete"))
        self._events.extend(self.disk.event(st, aid, k) for aid, k in moved.items() if k)
        self._disk_moved = moved

    def _cascade(self, actor: str | None) -> None:
        """Rules 3 and 4 on the resources whose claims changed."""
        dirty = self._dirty
        while dirty:
            r = min(dirty)
            st = self.resources[r]
            aid = st.worst_short()
            if aid is None:
                dirty.discard(r)
                continue
            self._settle(aid)
            a, c = self.accounts[aid], st.claims[aid]
            need = st.needed_bid(aid)
            top = None if need is None else need - c.base
            if top is not None and a.contingency > 0 and (r, aid) not in self._topped and \
                    sum(a.topups.values()) - c.topup + top <= a.contingency:
                self._topped.add((r, aid))
                a.topups[r] = top
                self._put_claim(r, aid, replace(c, topup=top))
                self._events.append(AllocEvent(aid, r, "topped_up", top, c.min))
                continue
            event = AllocEvent(aid, r, "below_min", st.allocation(aid), c.min)
            if aid == actor:
                raise Refused(event)
            self._events.append(event)
            del a.bids[r]
            a.topups.pop(r, None)
            self._put_claim(r, aid, None)   # its part of the spend stays unspent


__all__ = ["LiveBook", "Record", "Refused"]
