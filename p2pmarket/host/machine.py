"""The auctioneer's state, pure (DESIGN.md sections 1, 5, 6): what a witness replays.

:class:`HostState` is everything the host's decisions depend on: its settings
(capacities, minimum prices, unique offers, tick length, long interval), the
live accounts, the digest of the lease terms last handed out per account, the
payments already used (payment id -> account), the refunds made, the disk usage
the VMM reported, and the time of the last tick. It is a frozen value; the
transitions in :mod:`p2pmarket.host.steps` return a new one.

This module holds the allocation helpers the transitions share (evaluate,
reallocate with the 6/27 refusal, settle, garbage collection, lease terms) and
the state's canonical snapshot and digest:

- ``snapshot(state)`` is a plain map (the body of the ``in.genesis`` entry that
  starts every host log, and the starting point of a proof of non-conformance);
- ``state_digest(state)`` is SHA-256 over the settings, the accounts, the disk
  usage and two running hashes (payments and refunds are append-only, so each
  is a hash chain: ``h' = H(h || pack(record))``). ``out.tick`` and
  ``out.settings`` entries carry it: the host commits to its whole state there.
  A snapshot may leave the payment or refund records out (``None``) when a
  proof does not need them; the digest still covers them through the chains.

No clock, socket, file or randomness here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import msgpack

from p2pmarket.host import HostError
from p2pmarket.host.accounts import ACTIVE, CLOSED, EXPIRED, Account, Refund
from p2pmarket.host.allocator import (
    US_PER_S,
    AccountState,
    AllocationResult,
    Bid,
    Book,
    build_book,
    run_tick,
)
from p2pmarket.host.enforce import domain_spec
from p2pmarket.host.hostconfig import HostConfig
from p2pmarket.host.lease import Lease, ResourceTerm
from p2pmarket.host.resources import BidSpec, BidTerm, apply_spec

SNAPSHOT_VERSION = 1
ZERO = bytes(32)
HARMFUL = ("below_min", "disk_delete")


class MissingState(HostError):
    """A replay needed part of the state that a (trimmed) snapshot left out."""


def _p(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]


def _h(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


@dataclass(frozen=True)
class HostState:
    host_id: bytes
    config: HostConfig
    tick_us: int
    long_us: int
    accounts: Mapping[str, Account] = field(default_factory=dict)   # live (lease=None)
    leased: Mapping[str, bytes] = field(default_factory=dict)       # aid -> terms digest
    payments: Mapping[bytes, tuple[str, int]] | None = field(default_factory=dict)
    payments_hash: bytes = ZERO
    refunds: Mapping[str, Refund] | None = field(default_factory=dict)
    refunds_hash: bytes = ZERO
    usage: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    last_tick: int = -1
    book: Book | None = field(default=None, compare=False, repr=False)

    # -- derived -----------------------------------------------------------------------

    @property
    def capacities(self) -> dict[str, int]:
        return {r: c for r, c in self.config.capacities.items() if c > 0}

    def payment_account(self, payment_id: bytes) -> str | None:
        if self.payments is None:
            raise MissingState("the snapshot leaves out the payments", "payments")
        got = self.payments.get(payment_id)
        return None if got is None else got[0]

    def refund(self, refund_id: str) -> Refund | None:
        if self.refunds is None:
            raise MissingState("the snapshot leaves out the refunds", "refunds")
        return self.refunds.get(refund_id)

    def with_payment(self, payment_id: bytes, account_id: str, amount: int) -> HostState:
        return self.with_payments([(payment_id, account_id, amount)])

    def with_payments(self, records: list[tuple[bytes, str, int]]) -> HostState:
        if not records:
            return self
        if self.payments is None:
            raise MissingState("the snapshot leaves out the payments", "payments")
        table, chain = dict(self.payments), self.payments_hash
        for pid, aid, amount in records:
            table[pid] = (aid, amount)
            chain = _h(chain + _p([pid, aid, amount]))
        return replace(self, payments=table, payments_hash=chain)

    def with_refunds(self, refunds: list[Refund]) -> HostState:
        if not refunds:
            return self
        if self.refunds is None:
            raise MissingState("the snapshot leaves out the refunds", "refunds")
        table, chain = dict(self.refunds), self.refunds_hash
        for r in refunds:
            table[r.refund_id] = r
            chain = _h(chain + _p(refund_row(r)))
        return replace(self, refunds=table, refunds_hash=chain)


def refund_row(r: Refund) -> list[Any]:
    return [r.refund_id, r.account_id, r.holder, r.amount, r.memo, r.created_us]


def resolved(state: HostState, a: Account) -> dict[str, Bid]:
    caps = state.config.capacities
    return {k: t.resolve(k, caps.get(k, 0)) for k, t in a.bids.items()}


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
    states = tuple(AccountState(a.account_id, a.fund, a.interval_end_us, resolved(state, a),
                                a.contingency)
                   for a in sorted(accounts.values(), key=lambda a: a.account_id)
                   if a.state != CLOSED)
    return build_book(state.capacities, states, state.config.reserves(state.tick_us))


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
    """Apply an allocation (and, at a tick, its charges and expiries) to copies."""
    dropped = {(e.account_id, e.resource) for e in result.events if e.kind == "below_min"}
    expired = {e.account_id for e in result.events if e.kind == "expired"}
    index = result.book.index
    out: dict[str, Account] = {}
    for aid, acc in accounts.items():
        if acc.state == CLOSED or aid not in index:
            out[aid] = acc
            continue
        bids = acc.bids if not dropped else \
            {r: t for r, t in acc.bids.items() if (aid, r) not in dropped}
        alloc = result.allocation(aid)
        if len(alloc) != len(bids):
            alloc = {r: v for r, v in alloc.items() if r in bids}
        if not charge and alloc == acc.allocation and len(bids) == len(acc.bids):
            out[aid] = acc
            continue
        new = replace(acc, bids=bids, allocation=alloc)
        if charge:
            fund = acc.fund - result.charges.get(aid, 0)
            cont = acc.contingency - result.contingency_charges.get(aid, 0)
            assert fund >= 0 and cont >= 0, "allocator charged more than the funds"
            new = replace(new, fund=fund, contingency=cont,
                          interval_end_us=result.interval_ends.get(aid, acc.interval_end_us),
                          state=EXPIRED if aid in expired else acc.state)
        out[aid] = new
    return out


def collect_garbage(accounts: dict[str, Account], now: int) -> list[Refund]:
    """Expired accounts that lost all their claims are closed; their money is refunded
    (6/20: "may still be garbage collected if outbid")."""
    refunds = []
    for aid, acc in list(accounts.items()):
        if acc.state == EXPIRED and not acc.bids:
            accounts[aid] = replace(acc, state=CLOSED, fund=0, contingency=0)
            if acc.money > 0:
                rid = _h(_p(["gc", aid, now]))[:8].hex()
                refunds.append(Refund(rid, aid, acc.holder, acc.money,
                                      f"p2pmarket refund {rid} of account {aid}",
                                      created_us=now))
    return refunds


def with_accounts(state: HostState, accounts: Mapping[str, Account]) -> HostState:
    """``state`` with ``accounts`` (closed ones dropped); the book cache is kept only
    if no account's bids or state changed."""
    book = state.book
    live: dict[str, Account] = {}
    for aid, a in accounts.items():
        old = state.accounts.get(aid)
        if old is None or old.bids != a.bids or old.state != a.state:
            book = None
        if a.state != CLOSED:
            live[aid] = a
    if len(live) != len(accounts):
        book = None
    leased = state.leased
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
    from p2pmarket.wire import pack

    return _h(pack(dict(body)))


# -- snapshot and digest -------------------------------------------------------------

def account_row(a: Account, leased: bytes | None) -> list[Any]:
    return [a.account_id, a.holder, a.fund, a.contingency, a.contingency_ppm,
            a.interval_end_us, a.created_us, a.state,
            [[k, a.bids[k].to_wire()] for k in sorted(a.bids)],
            [[k, a.allocation[k]] for k in sorted(a.allocation)], leased or b""]


def _core(state: HostState, accounts_hash: bytes) -> list[Any]:
    return [SNAPSHOT_VERSION, state.host_id, _config_rows(state.config), state.tick_us,
            state.long_us, state.last_tick,
            [[k, u, f] for k, (u, f) in sorted(state.usage.items())], accounts_hash,
            state.payments_hash, state.refunds_hash]


def _config_rows(config: HostConfig) -> list[Any]:
    return [[[k, v] for k, v in sorted(d.items())]
            for d in (config.capacities, config.min_prices, config.unique)]


def accounts_digest(state: HostState) -> bytes:
    return _h(_p([account_row(state.accounts[aid], state.leased.get(aid))
                  for aid in sorted(state.accounts)]))


def state_digest(state: HostState) -> bytes:
    """SHA-256 committing to the whole state (see the module docstring)."""
    return _h(_p(_core(state, accounts_digest(state))))


def snapshot(state: HostState, payments: bool = True, refunds: bool = True
             ) -> dict[str, Any]:
    """The state as a plain map; ``payments``/``refunds`` False leaves those records
    out (their chain hashes stay)."""
    return {
        "v": SNAPSHOT_VERSION, "host_id": state.host_id, "config": state.config.to_doc(),
        "tick_us": state.tick_us, "long_us": state.long_us, "last_tick": state.last_tick,
        "usage": [[k, u, f] for k, (u, f) in sorted(state.usage.items())],
        "accounts": [account_row(state.accounts[aid], state.leased.get(aid))
                     for aid in sorted(state.accounts)],
        "payments": None if not payments or state.payments is None else
        [[pid, aid, amount] for pid, (aid, amount) in state.payments.items()],
        "payments_hash": state.payments_hash,
        "refunds": None if not refunds or state.refunds is None else
        [refund_row(r) for r in state.refunds.values()],
        "refunds_hash": state.refunds_hash,
    }


def from_snapshot(doc: Any) -> HostState:
    """A state from :func:`snapshot`'s map; raises :class:`HostError` if malformed or if
    the payment or refund records do not match their hashes."""
    try:
        return _from_snapshot(doc)
    except HostError:
        raise
    except (KeyError, TypeError, ValueError, AssertionError, AttributeError) as exc:
        raise HostError("malformed state snapshot", type(exc).__name__) from None


def _from_snapshot(doc: Any) -> HostState:
    if not isinstance(doc, dict) or doc.get("v") != SNAPSHOT_VERSION:
        raise HostError("not a state snapshot", "snapshot")
    cfg = doc["config"]
    config = HostConfig({str(k): int(v) for k, v in cfg["capacities"].items()},
                        {str(k): int(v) for k, v in cfg["min_prices"].items()},
                        {str(k): int(v) for k, v in cfg["unique"].items()})
    accounts: dict[str, Account] = {}
    leased: dict[str, bytes] = {}
    for row in doc["accounts"]:
        aid, holder, fund, cont, cppm, end, created, st, bids, alloc, lease = row
        accounts[str(aid)] = Account(
            account_id=str(aid), holder=bytes(holder), fund=int(fund),
            interval_end_us=int(end), created_us=int(created),
            bids={str(k): BidTerm.from_wire(str(k), v) for k, v in bids},
            allocation={str(k): int(v) for k, v in alloc}, contingency=int(cont),
            contingency_ppm=int(cppm), state=str(st))
        if lease:
            leased[str(aid)] = bytes(lease)
    payments: dict[bytes, tuple[str, int]] | None = None
    if doc["payments"] is not None:
        payments, chain = {}, ZERO
        for pid, aid, amount in doc["payments"]:
            payments[bytes(pid)] = (str(aid), int(amount))
            chain = _h(chain + _p([bytes(pid), str(aid), int(amount)]))
        if chain != doc["payments_hash"]:
            raise HostError("snapshot payments do not match their hash", "payments")
    refunds: dict[str, Refund] | None = None
    if doc["refunds"] is not None:
        refunds, chain = {}, ZERO
        for rid, aid, holder, amount, memo, created in doc["refunds"]:
            r = Refund(str(rid), str(aid), bytes(holder), int(amount), str(memo),
                       created_us=int(created))
            refunds[r.refund_id] = r
            chain = _h(chain + _p(refund_row(r)))
        if chain != doc["refunds_hash"]:
            raise HostError("snapshot refunds do not match their hash", "refunds")
    return HostState(
        host_id=bytes(doc["host_id"]), config=config, tick_us=int(doc["tick_us"]),
        long_us=int(doc["long_us"]), accounts=accounts, leased=leased, payments=payments,
        payments_hash=bytes(doc["payments_hash"]), refunds=refunds,
        refunds_hash=bytes(doc["refunds_hash"]),
        usage={str(k): (int(u), int(f)) for k, u, f in doc["usage"]},
        last_tick=int(doc["last_tick"]))


def new_state(host_id: bytes, config: HostConfig, tick_us: int, long_us: int) -> HostState:
    return HostState(host_id, config, max(1, tick_us), long_us)


__all__ = [
    "US_PER_S", "HostState", "MissingState", "account_row", "build", "collect_garbage",
    "evaluate", "from_snapshot", "lease_terms", "new_state", "reallocate", "resolved",
    "running", "settle", "snapshot", "state_digest", "terms", "terms_digest",
    "with_accounts",
]
