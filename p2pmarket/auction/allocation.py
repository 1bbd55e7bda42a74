"""The allocation on the host's state, pure: the helpers the transitions share.

- an account's bids resolved on this host (:func:`resolved`), whether its VM runs
  (:func:`running`), a bid patch checked against what the host offers (:func:`terms`);
- the event-driven allocator of the state (:func:`book_of`: the state's own, or one
  restored from its records), an account as it is now, with its money as of the last
  tick and its allocation (:func:`current`), and the accounts a call of the book
  changed written back into the state (:func:`applied`, :func:`with_accounts`, which
  keeps the multiset digest of the accounts' host rows up to date, :func:`host_sum`);
- a 6/27 refusal in the host's words (:func:`refusal`), a change refused when it would
  shut down a running VM (:func:`keeps_running`, on the book's dry run);
- expired accounts without claims closed and refunded (:func:`collect_garbage`);
- the lease terms an account is handed (:func:`lease_terms`, :func:`terms_digest`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from p2pmarket.auction import HostError
from p2pmarket.auction.accounts import ACTIVE, CLOSED, EXPIRED, Account, Refund, refund_memo
from p2pmarket.auction.book import build_book
from p2pmarket.auction.enforce import domain_spec
from p2pmarket.auction.lease import Lease, ResourceTerm
from p2pmarket.auction.livebook import LiveBook, Record, Refused
from p2pmarket.auction.machine import HostState, plain_digest
from p2pmarket.auction.model import AllocEvent, Bid
from p2pmarket.auction.resources import BidSpec, BidTerm, apply_spec
from p2pmarket.core.clock import US_PER_S
from p2pmarket.core.wire import pack, pack_plain

MOD = 1 << 256


def resolved(state: HostState, a: Account) -> Mapping[str, Bid]:
    """The account's bids in absolute amounts on this host (do not modify the map)."""
    caps = state.config.capacities
    hit = state.memo.resolved.get(a.account_id)
    if hit is not None and hit[0] is a.bids and hit[1] is caps:
        return hit[2]
    out = {k: t.resolve(k, caps.get(k, 0)) for k, t in a.bids.items()}
    state.memo.resolved[a.account_id] = (a.bids, caps, out)
    return out


def terms(state: HostState, specs: Mapping[str, BidSpec], current_terms: Mapping[str, BidTerm]
          ) -> dict[str, BidTerm]:
    out: dict[str, BidTerm] = {}
    caps = state.config.capacities
    for key, spec in specs.items():
        if (spec.ident is None and caps.get(key, 0) <= 0) or (
                spec.ident is not None and not unique_offered(state, key)):
            raise HostError(f"{key} is not offered by this host",
                            {"resource": key, "offered": state.config.offered()})
        out[key] = apply_spec(spec, current_terms.get(key), caps.get(key, 0))
    return out


def unique_offered(state: HostState, key: str) -> bool:
    return build_book({}, (), state.config.reserves(state.tick_us)).unique.offered_in(key)


# -- the book --------------------------------------------------------------------------

def record_of(state: HostState, a: Account) -> Record:
    return Record(a.fund, a.contingency, a.since, a.interval_end_us, dict(resolved(state, a)),
                  a.spend, dict(a.topups), a.split_total)


def empty_book(state: HostState) -> LiveBook:
    book = LiveBook(state.capacities, state.config.root_bids(state.tick_us), state.tick_us,
                    state.long_us, state.config.reserves(state.tick_us), dict(state.usage))
    book.ticks = state.ticks
    return book


def book_of(state: HostState) -> LiveBook:
    """The state's book: its own while no later state moved it on, else one restored
    from the state's records (and kept as the state's)."""
    book = state.book
    if book is not None and book.generation == state.book_gen and book.ticks == state.ticks:
        return book
    try:
        book = LiveBook.restore(state.capacities, state.config.root_bids(state.tick_us),
                                state.tick_us, state.long_us, state.ticks,
                                {aid: record_of(state, a) for aid, a in state.accounts.items()},
                                state.config.reserves(state.tick_us), dict(state.usage))
    except ValueError as exc:
        raise HostError(f"the accounts are not a state of the auction: {exc}",
                        "accounts") from None
    object.__setattr__(state, "book", book)
    object.__setattr__(state, "book_gen", book.generation)
    return book


def owning(state: HostState, book: LiveBook) -> HostState:
    """``state`` as the owner of ``book`` at its current generation."""
    return replace(state, book=book, book_gen=book.generation)


def current(state: HostState, a: Account) -> Account:
    """The account now: money as of the last tick, allocation filled in (an active
    reservation's amounts included)."""
    book = book_of(state)
    if a.account_id not in book.accounts:
        return a
    fund, cont = book.money(a.account_id)
    return replace(a, fund=fund, contingency=cont,
                   allocation=allocation_now(state, a.account_id))


def allocation_now(state: HostState, aid: str) -> dict[str, int]:
    """What the account gets now: its share of the auction plus what its active
    reservation holds (section 10)."""
    book = book_of(state)
    alloc = book.allocation(aid) if aid in book.accounts else {}
    r = state.reservations.get(aid)
    if r is not None and r.active:
        alloc = {k: alloc.get(k, 0) + r.amounts.get(k, 0)
                 for k in sorted(alloc.keys() | r.amounts.keys())}
    return alloc


def vm_bids(state: HostState, a: Account) -> dict[str, Bid]:
    """The bids a VM is sized by: the resolved bids, with an active reservation's
    amounts added to their min and max (a reserved resource without a bid gets a bid of
    exactly the amount), so a reservation's VM has at least what it reserved."""
    bids = dict(resolved(state, a))
    r = state.reservations.get(a.account_id)
    if r is not None and r.active:
        for k, v in r.amounts.items():
            b = bids.get(k)
            bids[k] = Bid(0, v, v) if b is None else Bid(b.weight_ppm, b.min + v, b.max + v)
    return bids


def rebooked(state: HostState, changed: HostState, ts: int
             ) -> tuple[HostState, list[AllocEvent]]:
    """``changed`` (``state`` with new settings or reservations) with a new book: every
    account of ``state`` put again at ``ts`` with its money (a new spend each; a claim
    the new capacities cannot meet is dropped, not refused). The events, sorted."""
    old = book_of(state)
    changed = replace(changed, book=None, book_gen=-1)
    changed.memo.resolved.clear()
    book = empty_book(changed)
    events: list[AllocEvent] = []
    for aid, a in sorted(state.accounts.items()):
        fund, cont = old.money(aid)
        events += book.put(aid, fund, cont, a.interval_end_us, resolved(changed, a), ts,
                           refusable=False)
    dropped: dict[str, set[str]] = {}
    for e in events:
        if e.kind == "below_min":
            dropped.setdefault(e.account_id, set()).add(e.resource)
    updates: dict[str, Account | None] = {
        aid: with_record(a, book.record(aid), dropped.get(aid, ()))
        for aid, a in state.accounts.items()}
    events.sort(key=lambda e: (e.account_id, e.resource, e.kind))
    return with_accounts(owning(changed, book), updates), events


def applied(state: HostState, book: LiveBook, events: Iterable[AllocEvent],
            new: Mapping[str, Account] | None = None) -> dict[str, Account | None]:
    """The accounts the book's last call changed (``new``: accounts not in the state
    yet), as records: money, spend, top-ups and interval end from the book, the bids it
    dropped (``below_min``) left out; None for one it no longer holds."""
    dropped: dict[str, set[str]] = {}
    for e in events:
        if e.kind == "below_min":
            dropped.setdefault(e.account_id, set()).add(e.resource)
    out: dict[str, Account | None] = {}
    for aid in sorted(book.changed | set(dropped)):
        a = (new or {}).get(aid) or state.accounts.get(aid)
        if a is None:
            continue
        if aid not in book.accounts:
            out[aid] = None
            continue
        out[aid] = with_record(a, book.record(aid), dropped.get(aid, set()))
    for aid, a in (new or {}).items():
        if aid not in out and aid in book.accounts:
            out[aid] = a
    return out


def with_record(a: Account, rec: Record, dropped: Iterable[str] = ()) -> Account:
    """``a`` with the book's record ``rec`` (money, spend, top-ups, weight total,
    interval end) and without the bids in ``dropped``."""
    gone = set(dropped)
    bids = {k: t for k, t in a.bids.items() if k not in gone} if gone else a.bids
    return replace(a, fund=rec.fund, contingency=rec.contingency, since=rec.since,
                   interval_end_us=rec.end_us, spend=rec.spend, topups=dict(rec.topups),
                   split_total=rec.split_total, bids=bids)


def host_row(a: Account, leased: bytes | None) -> list[Any]:
    """What the state holds of an account besides its book record."""
    return [a.account_id, a.holder, a.created_us, a.contingency_ppm, a.state,
            [[k, a.bids[k].to_wire()] for k in sorted(a.bids)], leased or b""]


def _row_hash(a: Account, leased: bytes | None) -> int:
    return int.from_bytes(hashlib.sha256(pack_plain(host_row(a, leased))).digest(), "big")


def host_sum(state: HostState) -> int:
    """The sum mod 2^256 of the accounts' host-row hashes (kept up to date by
    :func:`with_accounts`; computed once when not known)."""
    if state.host_sum < 0:
        total = sum(_row_hash(a, state.leased.get(aid)) for aid, a in state.accounts.items())
        object.__setattr__(state, "host_sum", total % MOD)
    return state.host_sum


def with_accounts(state: HostState, updates: Mapping[str, Account | None],
                  leased: Mapping[str, bytes] | None = None) -> HostState:
    """``state`` with ``updates`` (None or closed: the account leaves) and new lease
    digests ``leased``; the host-row digest follows, one hash per account changed."""
    if not updates and not leased:
        return state
    if not updates:
        return _with_leased(state, leased or {})
    accounts = dict(state.accounts)
    removed = any(a is None or a.state == CLOSED for a in updates.values())
    # copied only if it changes (as large as the accounts)
    lease_map = dict(state.leased) if leased or removed else state.leased
    total = state.host_sum
    known = total >= 0   # -1: not known (computed when first needed)
    memo = state.memo
    gc = None if state.collectable is None else set(state.collectable)
    for aid in sorted(set(updates) | set(leased or {})):
        old = accounts.get(aid)
        new = updates.get(aid, old) if aid in updates else old
        if new is not None and new.state == CLOSED:
            new = None
        if known and old is not None:
            total = (total - _row_hash(old, lease_map.get(aid))) % MOD
        if gc is not None:
            gc.discard(aid)
        if new is None:
            accounts.pop(aid, None)
            if aid in lease_map:
                assert isinstance(lease_map, dict)
                lease_map.pop(aid)
            memo.resolved.pop(aid, None)
            continue
        accounts[aid] = new
        if gc is not None and new.state == EXPIRED and not new.bids:
            gc.add(aid)
        if leased and aid in leased:
            assert isinstance(lease_map, dict)
            lease_map[aid] = leased[aid]
        if known:
            total = (total + _row_hash(new, lease_map.get(aid))) % MOD
    return replace(state, accounts=accounts, leased=lease_map,
                   host_sum=total if known else -1,
                   collectable=None if gc is None else frozenset(gc))


def _with_leased(state: HostState, leased: Mapping[str, bytes]) -> HostState:
    """``state`` with new lease digests only (the accounts map is shared)."""
    lease_map = dict(state.leased)
    total, known = state.host_sum, state.host_sum >= 0
    for aid, d in sorted(leased.items()):
        a = state.accounts[aid]
        if known:
            total = (total - _row_hash(a, lease_map.get(aid)) + _row_hash(a, d)) % MOD
        lease_map[aid] = d
    return replace(state, leased=lease_map, host_sum=total if known else -1)


def collectable(state: HostState) -> frozenset[str]:
    """The expired accounts without bids (kept up to date by :func:`with_accounts`)."""
    if state.collectable is None:
        found = frozenset(aid for aid, a in state.accounts.items()
                          if a.state == EXPIRED and not a.bids)
        object.__setattr__(state, "collectable", found)
        return found
    return state.collectable


# -- refusals ----------------------------------------------------------------------------

def refusal(state: HostState, exc: Refused) -> HostError:
    """The 6/27 refusal of a change after which its account would lose a claim."""
    e = exc.event
    book = book_of(state)
    price = book.price(e.resource) * US_PER_S // state.tick_us \
        if e.resource in book.resources else None
    if e.kind == "disk_delete":
        return HostError(f"{e.resource}: the account's disk would be deleted "
                         f"(would get {e.amount}, uses {e.limit})",
                         {"resource": e.resource, "would_get": e.amount, "min": e.limit,
                          "price": price})
    return HostError(f"{e.resource}: the min of this bid cannot be met at current "
                     f"prices (would get {e.amount}, min {e.limit})",
                     {"resource": e.resource, "would_get": e.amount, "min": e.limit,
                      "price": price})


def running(state: HostState, a: Account) -> bool:
    """Whether the account's VM runs (active, with cpu and memory): pure, no VMM."""
    return a.state == ACTIVE and domain_spec(allocation_now(state, a.account_id),
                                             resolved(state, a), state.capacities,
                                             1) is not None


def keeps_running(state: HostState, after: Account, alloc: Mapping[str, int]) -> None:
    """Refuse a change after which the account's running VM would shut down (6/27):
    ``alloc`` is its allocation had the change been made (the book's dry run)."""
    if after.state != ACTIVE or domain_spec(alloc, resolved(state, after), state.capacities,
                                            1) is None:
        raise HostError("this would shut down the account's VM (it needs cpu and memory)",
                        {"allocation": dict(alloc)})


# -- ticks -------------------------------------------------------------------------------

def collect_garbage(state: HostState, book: LiveBook, now: int
                    ) -> tuple[dict[str, Account | None], list[Refund]]:
    """Expired accounts that lost all their claims are closed; their money is refunded
    (6/20: "may still be garbage collected if outbid")."""
    closed: dict[str, Account | None] = {}
    refunds = []
    for aid in sorted(collectable(state)):
        acc = state.accounts.get(aid)
        if acc is None or acc.state != EXPIRED or acc.bids or aid not in book.accounts:
            continue
        fund, cont = book.remove(aid)
        closed[aid] = None
        if fund + cont > 0:
            rid = plain_digest(["gc", aid, now])[:8].hex()
            refunds.append(Refund(rid, aid, acc.holder, fund + cont, refund_memo(rid, aid),
                                  created_us=now))
    return closed, refunds


# -- leases --------------------------------------------------------------------------

def lease_terms(state: HostState, account: Account) -> Lease:
    """The lease of an account; a reservation's (section 10) adds its amounts to the min
    and max of each resource and gives the term as start and end."""
    res = resolved(state, account)
    now = current(state, account)
    r = state.reservations.get(account.account_id)
    extra = r.amounts if r is not None else {}
    resources = {k: ResourceTerm(b.min + extra.get(k, 0), b.max + extra.get(k, 0),
                                 now.allocation.get(k, 0)) for k, b in res.items()}
    for k, v in extra.items():
        if k not in resources:
            resources[k] = ResourceTerm(v, v, now.allocation.get(k, 0))
    return Lease(
        lease_id=account.account_id, host_id=state.host_id, holder=account.holder,
        resources=dict(sorted(resources.items())),
        start=account.created_us if r is None else r.start,
        end=account.interval_end_us if r is None else r.end, balance=now.money, audit=None)


def terms_digest(body: Mapping[str, Any]) -> bytes:
    return hashlib.sha256(pack(dict(body))).digest()


__all__ = [
    "allocation_now",
    "applied",
    "book_of",
    "collect_garbage",
    "collectable",
    "current",
    "empty_book",
    "host_row",
    "host_sum",
    "keeps_running",
    "lease_terms",
    "owning",
    "rebooked",
    "record_of",
    "refusal",
    "resolved",
    "running",
    "terms",
    "terms_digest",
    "unique_offered",
    "vm_bids",
    "with_accounts",
    "with_record",
]
