"""The allocation on the host's state, pure: the helpers the transitions share.

- an account's bids resolved on this host (:func:`resolved`), whether its VM runs
  (:func:`running`), a bid patch checked against what the host offers (:func:`terms`);
- the book of everyone's bids (:func:`build`, cached in the state's memo) and this
  moment's allocation, without charges (:func:`evaluate`);
- a change to one account re-allocated, refused when it would at once drop one of
  its claims or shut down its running VM (:func:`reallocate`, 6/27);
- an allocation applied to the accounts, with its charges and expiries at a tick
  (:func:`settle`), expired accounts without claims closed and refunded
  (:func:`collect_garbage`), and the state with new accounts (:func:`with_accounts`);
- the lease terms an account is handed (:func:`lease_terms`, :func:`terms_digest`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from p2pmarket.auction import HostError
from p2pmarket.auction.accounts import ACTIVE, CLOSED, EXPIRED, Account, Refund, refund_memo
from p2pmarket.auction.allocator import AllocationResult, run_tick
from p2pmarket.auction.book import AccountState, Book, build_book
from p2pmarket.auction.enforce import domain_spec
from p2pmarket.auction.lease import Lease, ResourceTerm
from p2pmarket.auction.machine import HostState, plain_digest
from p2pmarket.auction.model import Bid
from p2pmarket.auction.resources import BidSpec, BidTerm, apply_spec
from p2pmarket.core.wire import pack

HARMFUL = ("below_min", "disk_delete")
NONE: Mapping[str, int] = {}


def resolved(state: HostState, a: Account) -> Mapping[str, Bid]:
    """The account's bids in absolute amounts on this host (do not modify the map)."""
    caps = state.config.capacities
    hit = state.memo.resolved.get(a.account_id)
    if hit is not None and hit[0] is a.bids and hit[1] is caps:
        return hit[2]
    out = {k: t.resolve(k, caps.get(k, 0)) for k, t in a.bids.items()}
    state.memo.resolved[a.account_id] = (a.bids, caps, out)
    return out


def running(state: HostState, a: Account) -> bool:
    """Whether the account's VM runs (active, with cpu and memory): pure, no VMM."""
    return a.state == ACTIVE and domain_spec(a.allocation, resolved(state, a),
                                             state.capacities, 1) is not None


def terms(state: HostState, specs: Mapping[str, BidSpec], current: Mapping[str, BidTerm]
          ) -> dict[str, BidTerm]:
    out: dict[str, BidTerm] = {}
    caps = state.config.capacities
    for key, spec in specs.items():
        if (spec.ident is None and caps.get(key, 0) <= 0) or (
                spec.ident is not None and not unique_offered(state, key)):
            raise HostError(f"{key} is not offered by this host",
                            {"resource": key, "offered": state.config.offered()})
        out[key] = apply_spec(spec, current.get(key), caps.get(key, 0))
    return out


def unique_offered(state: HostState, key: str) -> bool:
    return build_book({}, (), state.config.reserves(state.tick_us)).unique.offered_in(key)


def build(state: HostState, accounts: Mapping[str, Account]) -> Book:
    """The book of ``accounts``' bids (the last one built again if nobody's bids changed
    since: the transitions keep an account's ``bids`` map while it does not change)."""
    live = sorted((a for a in accounts.values() if a.state != CLOSED),
                  key=lambda a: a.account_id)
    hit = state.memo.book
    if hit is not None and hit[0] is state.config and hit[1] == state.tick_us and \
            len(hit[2]) == len(live) and all(
                a.bids is b.bids and a.account_id == b.account_id
                for a, b in zip(hit[2], live, strict=True)):
        return hit[3]
    states = tuple(AccountState(a.account_id, a.fund, a.interval_end_us, resolved(state, a),
                                a.contingency) for a in live)
    book = build_book(state.capacities, states, state.config.reserves(state.tick_us))
    state.memo.book = (state.config, state.tick_us, live, book)
    return book


def same_bids(state: HostState, accounts: Mapping[str, Account]) -> bool:
    """Whether ``accounts`` bid exactly like the state's (so its book still fits)."""
    old = state.accounts
    if len(accounts) != len(old):
        return False
    for aid, a in accounts.items():
        b = old.get(aid)
        if b is None or a.state != b.state or (a.bids is not b.bids and a.bids != b.bids):
            return False
    return True


def book_for(state: HostState, accounts: Mapping[str, Account]) -> Book:
    if state.book is not None and same_bids(state, accounts):
        return state.book
    return build(state, accounts)


def evaluate(state: HostState, accounts: Mapping[str, Account], now: int,
             book: Book | None = None) -> AllocationResult:
    """This moment's allocation for ``accounts``, without charging anyone."""
    book = book or book_for(state, accounts)
    accs = [accounts[aid] for aid in book.ids]
    return run_tick(book, [a.fund for a in accs], [a.contingency for a in accs],
                    [max(a.interval_end_us, now + state.tick_us) for a in accs], now,
                    state.tick_us, state.config.root_bids(state.tick_us), dict(state.usage),
                    state.long_us)


def reallocate(state: HostState, changed: Account, now: int, was_running: bool
               ) -> dict[str, Account]:
    """Everyone's accounts with ``changed`` in it; refuses a change that would at once
    drop one of its claims or shut down its running VM (6/27)."""
    accounts = {**state.accounts, changed.account_id: changed}
    result = evaluate(state, accounts, now)
    harm = [e for e in result.events if e.account_id == changed.account_id
            and e.kind in HARMFUL]
    if harm:
        e = harm[0]
        raise HostError(f"{e.resource}: the min of this bid cannot be met at current "
                        f"prices (would get {e.amount}, min {e.limit})"
                        if e.kind == "below_min" else
                        f"{e.resource}: the account's disk would be deleted "
                        f"(would get {e.amount}, uses {e.limit})",
                        {"resource": e.resource, "would_get": e.amount, "min": e.limit,
                         "price": result.prices.get(e.resource)})
    out = settle(accounts, result)
    after = out[changed.account_id]
    if was_running and not running(state, after):
        raise HostError("this would shut down the account's VM (it needs cpu and memory)",
                        {"allocation": dict(after.allocation)})
    return out


def settle(accounts: Mapping[str, Account], result: AllocationResult,
           charge: bool = False) -> dict[str, Account]:
    """Apply an allocation (and, at a tick, its charges and expiries) to copies. An
    account nothing changes for is kept as it is, and so are the ``bids`` and
    ``allocation`` maps of one whose other fields change."""
    drops: dict[str, set[str]] = {}
    expired: set[str] = set()
    for e in result.events:
        if e.kind == "below_min":
            drops.setdefault(e.account_id, set()).add(e.resource)
        elif e.kind == "expired":
            expired.add(e.account_id)
    book = result.book
    # an account's allocation as AllocationResult.allocation gives it, inlined
    index, keys, bidders = book.index, book.keys, book.bidders
    columns, won = result.columns, result.unique_won
    charges, cont_charges = result.charges, result.contingency_charges
    ends = result.interval_ends
    out: dict[str, Account] = {}
    for aid, acc in accounts.items():
        if acc.state == CLOSED or aid not in index:
            out[aid] = acc
            continue
        bids = acc.bids
        gone = drops.get(aid)
        if gone:
            bids = {r: t for r, t in bids.items() if r not in gone}
        i = index[aid]
        alloc: Mapping[str, int] = {
            key: col[i] if (col := columns.get(key)) is not None and i in bidders[key]
            else won.get(aid, NONE).get(key, 0) for key in keys.get(i, ())}
        if len(alloc) != len(bids):
            alloc = {r: v for r, v in alloc.items() if r in bids}
        if alloc == acc.allocation:
            alloc = acc.allocation
        fund, cont, end, st = acc.fund, acc.contingency, acc.interval_end_us, acc.state
        if charge:
            fund -= charges.get(aid, 0)
            cont -= cont_charges.get(aid, 0)
            assert fund >= 0 and cont >= 0, "allocator charged more than the funds"
            end = ends.get(aid, end)
            if aid in expired:
                st = EXPIRED
        if (alloc is acc.allocation and bids is acc.bids and fund == acc.fund
                and cont == acc.contingency and end == acc.interval_end_us
                and st == acc.state):
            out[aid] = acc
            continue
        out[aid] = _moved(acc, bids=bids, allocation=alloc, fund=fund, contingency=cont,
                          interval_end_us=end, state=st)
    return out


def _moved(acc: Account, **changes: Any) -> Account:
    """``dataclasses.replace(acc, **changes)`` for the settle loop, which runs for every
    account at every tick: a copy of the instance's fields (Account has no
    ``__post_init__``), several times faster than ``replace``."""
    new = object.__new__(Account)
    fields = vars(new)
    fields.update(vars(acc))
    fields.update(changes)
    return new


def collect_garbage(accounts: dict[str, Account], now: int) -> list[Refund]:
    """Expired accounts that lost all their claims are closed; their money is refunded
    (6/20: "may still be garbage collected if outbid")."""
    refunds = []
    for aid, acc in list(accounts.items()):
        if acc.state == EXPIRED and not acc.bids:
            accounts[aid] = replace(acc, state=CLOSED, fund=0, contingency=0)
            if acc.money > 0:
                rid = plain_digest(["gc", aid, now])[:8].hex()
                refunds.append(Refund(rid, aid, acc.holder, acc.money, refund_memo(rid, aid),
                                      created_us=now))
    return refunds


def with_accounts(state: HostState, accounts: Mapping[str, Account]) -> HostState:
    """``state`` with ``accounts`` (closed ones dropped); the book cache is kept only
    if no account's bids or state changed."""
    book = state.book
    before = state.accounts
    for aid, a in accounts.items():
        old = before.get(aid)
        if old is None or (old.bids is not a.bids and old.bids != a.bids) or \
                old.state != a.state:
            book = None
            break
    live = {aid: a for aid, a in accounts.items() if a.state != CLOSED}
    leased = state.leased
    if len(live) != len(accounts):
        book = None
        memo = state.memo
        for aid in accounts:
            if aid not in live:   # closed: forget what was derived from it
                memo.resolved.pop(aid, None)
                memo.rows.pop(aid, None)
        if any(aid not in live for aid in leased):
            leased = {aid: d for aid, d in leased.items() if aid in live}
    return replace(state, accounts=live, leased=leased, book=book)


# -- leases --------------------------------------------------------------------------

def lease_terms(state: HostState, account: Account) -> Lease:
    res = resolved(state, account)
    return Lease(
        lease_id=account.account_id, host_id=state.host_id, holder=account.holder,
        resources={r: ResourceTerm(b.min, b.max, account.allocation.get(r, 0))
                   for r, b in res.items()},
        start=account.created_us, end=account.interval_end_us, balance=account.money,
        audit=None)


def terms_digest(body: Mapping[str, Any]) -> bytes:
    return hashlib.sha256(pack(dict(body))).digest()


__all__ = [
    "book_for", "build", "collect_garbage", "evaluate", "lease_terms", "reallocate",
    "resolved", "running", "same_bids", "settle", "terms", "terms_digest", "unique_offered",
    "with_accounts",
]
