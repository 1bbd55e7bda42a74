"""The auctioneer (DESIGN.md §6): RPCs, argument checks and money around the pure allocator.

RPCs (register with ``dispatcher.register_all("host", auctioneer.handlers())``);
only the account's holder (``ctx.sender``) may act on an account. Every result
carries ``audit``: the authenticator of the audit-log entry that recorded it.

- ``create_account {payment: cert, bids: BIDS, interval_s: int, contingency?: RATIO}``
  -> ``{account_id, lease}``
- ``bid {account_id, bids: BIDS, interval_s?, contingency?, replace?: bool}``
  -> ``{account_id, lease}``. A patch: fields left out keep their value (12/18);
  ``replace`` drops the bids not listed; ``interval_s`` restarts the interval
  (and wakes an expired account). A bid that changes anything re-splits the
  account's money into fund and contingency by the ratio (1/17); an identical
  bid changes nothing at all, not even the lease signature.
- ``fund {account_id, payment}`` -> ``{account_id, amount, balance, lease}``; new
  money is split by the contingency ratio.
- ``refund {account_id, amount?: int, close?: bool, refund_id?: str}`` ->
  ``{account_id, refund: {refund_id, amount, status, payment}, balance}``. Money
  comes from the fund first, then the contingency fund. ``close`` refunds
  everything and deletes the account (its VM and volume are undefined). The
  refund is recorded durably with the account change, then paid with the
  injected ``refund_payment``; if paying fails the refund stays ``pending`` and
  is retried every tick. A retry with the same ``refund_id`` answers again.
- ``status {}`` -> ``{accounts: [ACCOUNT...]}``; ``lease {account_id}`` -> ``{lease}``.

``BIDS`` is ``{"cpu": [weight_ppm, min, max] | "w,min,max", "tcp_port,30000": ...}``
(see :mod:`p2pmarket.host.resources`); ``RATIO`` a decimal string (``"0.2"``) or
ppm. Rules (seed 1/17, 1/25, 6/27, 2/7): new state is computed on copies and
committed (sqlite, durable) only when every check passed, so a refused bid,
fund or refund leaves balance, contingency and allocation exactly as they were.
A bid or refund after which the bidder would at once lose a claim (below its
min, or its disk) or have its running VM shut down is refused; losing a unique
resource never is. Allocation runs on every accepted change (no charge) and
every tick (charges).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from typing import Any

from p2pmarket.api.rpc import CallContext, Handler, now_us
from p2pmarket.config import Settings
from p2pmarket.errors import P2PMarketError
from p2pmarket.host import HostError
from p2pmarket.host.accounts import (
    ACTIVE,
    CLOSED,
    EXPIRED,
    Account,
    AccountStore,
    Payment,
    Refund,
)
from p2pmarket.host.allocator import (
    DEFAULT_LONG_INTERVAL_US,
    US_PER_S,
    AccountState,
    AllocationResult,
    Bid,
    Book,
    build_book,
    run_tick,
)
from p2pmarket.host.hostconfig import HostConfig
from p2pmarket.host.lease import Lease, ResourceTerm, sign_lease
from p2pmarket.host.resources import PPM, BidSpec, BidTerm, apply_spec, bids_from_wire
from p2pmarket.host.rpcargs import account_id_arg, check_args, interval_arg, ratio_arg
from p2pmarket.host.vmm.base import VMM
from p2pmarket.host.vmmsync import VmmSync
from p2pmarket.identity import Identity
from p2pmarket.ledger.auditlog import AuditLog
from p2pmarket.wire import digest, pack

log = logging.getLogger(__name__)

# Verifies a payment certificate and credits the host's own chain. It must be
# idempotent (the same certificate twice gives the same Payment and credits once):
# single use per account is enforced here, through the store's payments table.
AcceptPayment = Callable[[bytes, dict[str, Any]], Awaitable[Payment]]
# Pays ``amount`` back to ``holder`` with a certified transfer and returns the
# certificate's wire form. Must be idempotent per ``memo`` (it names the refund).
RefundPayment = Callable[[bytes, int, str], Awaitable[dict[str, Any]]]


def domain_prefix(identity: Identity) -> str:
    """The host-specific prefix of its domain names."""
    return f"p2pm-{identity.node_id.hex()[:12]}-"


class Auctioneer:
    def __init__(self, identity: Identity, settings: Settings, store: AccountStore, vmm: VMM,
                 accept_payment: AcceptPayment, clock: Callable[[], int] = now_us,
                 audit: AuditLog | None = None, refund_payment: RefundPayment | None = None,
                 long_interval_us: int = DEFAULT_LONG_INTERVAL_US) -> None:
        self.identity = identity
        self.settings = settings
        self.store = store
        self.vmm = vmm
        self.accept_payment = accept_payment
        self.refund_payment = refund_payment
        self.clock = clock
        self.audit = audit if audit is not None else AuditLog(":memory:", identity)
        self.long_interval_us = long_interval_us
        self.config = HostConfig.load(store, settings)
        self.tick_us = max(1, int(settings.tick_seconds * US_PER_S))
        self._accounts: dict[str, Account] = {a.account_id: a for a in store.all()
                                              if a.state != CLOSED}
        self._lock = asyncio.Lock()
        self._book: Book | None = None
        self._last: AllocationResult | None = None
        self._events: dict[str, list[dict[str, Any]]] = {}
        self._paying: set[str] = set()
        self.sync = VmmSync(vmm)

    @property
    def capacities(self) -> dict[str, int]:
        return {r: c for r, c in self.config.capacities.items() if c > 0}

    # -- RPC handlers ----------------------------------------------------------------

    def handlers(self) -> dict[str, Handler]:
        return {"create_account": self.create_account, "bid": self.bid, "fund": self.fund,
                "refund": self.refund, "status": self.status, "lease": self.lease}

    async def create_account(self, ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        self._log_in("create_account", ctx, args)
        check_args(args, {"payment", "bids", "interval_s"}, {"contingency"})
        interval_us = interval_arg(args["interval_s"])
        cr = ratio_arg(args.get("contingency", 0))
        if not isinstance(args["payment"], dict):
            raise HostError("payment must be a certificate map", type(args["payment"]).__name__)
        terms = self._terms(bids_from_wire(args["bids"]), {})
        async with self._lock:
            payment = await self._checked_payment(ctx, args["payment"])
            funded = self.store.payment_account(payment.payment_id)
            if funded is not None:  # a retry (e.g. after our crash): answer it again
                self._own(ctx, funded, "payment already used for another account")
                return self._reply("create_account", {"account_id": funded,
                                                      "lease": self._lease(funded)})
            now = self.clock()
            cont = payment.amount * cr // PPM
            account = Account(account_id=secrets.token_hex(8), holder=ctx.sender,
                              fund=payment.amount - cont, contingency=cont, contingency_ppm=cr,
                              interval_end_us=now + interval_us, created_us=now, bids=terms)
            try:
                new = self._reallocate(account, now, was_running=False)
            except HostError as exc:
                # the money is ours now: keep it in a bid-less account for the buyer
                account = replace(account, bids={})
                self._commit(self._reallocate(account, now, was_running=False),
                             (payment, account.account_id))
                self._log_out("create_account", {"error": exc.message,
                                                 "account_id": account.account_id})
                raise HostError(f"{exc.message}; the payment is kept in account "
                                f"{account.account_id}, which has no bids",
                                {"account_id": account.account_id, "cause": exc.value}) from None
            self._commit(new, (payment, account.account_id))
            lease = self._lease(account.account_id)
        await self.sync_vmm()
        return self._reply("create_account", {"account_id": account.account_id, "lease": lease})

    async def bid(self, ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        self._log_in("bid", ctx, args)
        check_args(args, {"account_id", "bids"}, {"interval_s", "replace", "contingency"})
        account_id = account_id_arg(args["account_id"])
        interval_us = None if args.get("interval_s") is None else interval_arg(args["interval_s"])
        cr_arg = args.get("contingency")
        cr = None if cr_arg is None else ratio_arg(cr_arg)
        replace_all = args.get("replace", False)
        if not isinstance(replace_all, bool):
            raise HostError("replace must be true or false", repr(replace_all)[:40])
        specs = bids_from_wire(args["bids"])
        async with self._lock:
            account = self._own(ctx, account_id)
            terms = self._terms(specs, {} if replace_all else dict(account.bids))
            if not replace_all:
                terms = {**account.bids, **terms}
            now = self.clock()
            end = account.interval_end_us if interval_us is None else now + interval_us
            ratio = account.contingency_ppm if cr is None else cr
            state = ACTIVE if interval_us is not None else account.state
            if (terms == dict(account.bids) and end == account.interval_end_us
                    and ratio == account.contingency_ppm and state == account.state):
                # identical bid (1/17): nothing changes, contingency included
                return self._reply("bid", {"account_id": account_id,
                                           "lease": self._lease(account_id)})
            total = account.money
            cont = total * ratio // PPM   # recomputed on every bid change (1/17)
            changed = replace(account, bids=terms, interval_end_us=end, contingency_ppm=ratio,
                              fund=total - cont, contingency=cont, state=state)
            new = self._reallocate(changed, now, was_running=self._running(account))
            self._commit(new)
            lease = self._lease(account_id)
        await self.sync_vmm()
        return self._reply("bid", {"account_id": account_id, "lease": lease})

    async def fund(self, ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        self._log_in("fund", ctx, args)
        check_args(args, {"account_id", "payment"})
        account_id = account_id_arg(args["account_id"])
        if not isinstance(args["payment"], dict):
            raise HostError("payment must be a certificate map", type(args["payment"]).__name__)
        async with self._lock:
            account = self._own(ctx, account_id)
            payment = await self._checked_payment(ctx, args["payment"])
            funded = self.store.payment_account(payment.payment_id)
            if funded == account_id:  # a retry: the money is already in
                return self._reply("fund", {"account_id": account_id, "amount": payment.amount,
                                            "balance": account.money,
                                            "lease": self._lease(account_id)})
            if funded is not None:
                raise HostError("payment already used for another account", "used")
            amount = payment.amount
            now = self.clock()
            cont = amount * account.contingency_ppm // PPM
            richer = replace(account, fund=account.fund + amount - cont,
                             contingency=account.contingency + cont)
            # more money never lowers the funder's share: nothing here can refuse it
            accounts = {**self._accounts, account_id: richer}
            self._commit(self._settle(accounts, self._evaluate(accounts, now)),
                         (payment, account_id))
            lease = self._lease(account_id)
        await self.sync_vmm()
        return self._reply("fund", {"account_id": account_id, "amount": amount,
                                    "balance": self._accounts[account_id].money, "lease": lease})

    async def refund(self, ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        self._log_in("refund", ctx, args)
        check_args(args, {"account_id"}, {"amount", "close", "refund_id"})
        account_id = account_id_arg(args["account_id"])
        close = args.get("close", False)
        if not isinstance(close, bool):
            raise HostError("close must be true or false", repr(close)[:40])
        refund_id = args.get("refund_id") or secrets.token_hex(8)
        if not isinstance(refund_id, str) or not 0 < len(refund_id) <= 64 or not all(
                c.isalnum() or c in "-_" for c in refund_id):
            raise HostError("refund_id must be a short string of letters, digits, - or _",
                            repr(refund_id)[:40])
        amount = args.get("amount")
        if amount is not None and (isinstance(amount, bool) or not isinstance(amount, int)
                                   or amount <= 0):
            raise HostError("amount must be a positive integer (micro-credits)",
                            repr(amount)[:40])
        if amount is None and not close:
            raise HostError("give an amount, or close the account", "amount")
        async with self._lock:
            old = self.store.refund(refund_id)
            if old is not None:
                if old.account_id != account_id or old.holder != ctx.sender:
                    raise HostError("refund_id already used", refund_id)
                refund: Refund | None = old
            else:
                account = self._own(ctx, account_id)
                now = self.clock()
                total = account.money
                take = total if close else int(amount or 0)
                if take > total:
                    raise HostError("refund is larger than the account's money",
                                    {"amount": take, "balance": total})
                from_fund = min(take, account.fund)
                poorer = replace(account, fund=account.fund - from_fund,
                                 contingency=account.contingency - (take - from_fund))
                if close:
                    poorer = replace(poorer, state=CLOSED, bids={}, allocation={})
                    accounts = {**self._accounts, account_id: poorer}
                    new = self._settle(accounts, self._evaluate(accounts, now))
                else:
                    new = self._reallocate(poorer, now, was_running=self._running(account))
                refund = None if take == 0 else Refund(
                    refund_id, account_id, account.holder, take,
                    f"p2pmarket refund {refund_id} of account {account_id}", created_us=now)
                self._commit(new, refund=refund)
        if refund is not None and refund.status == "pending":
            await self._pay(refund)
            refund = self.store.refund(refund.refund_id)
        await self.sync_vmm()
        acc = self._accounts.get(account_id) or self.store.get(account_id)
        return self._reply("refund", {
            "account_id": account_id, "refund": None if refund is None else refund.to_doc(),
            "balance": 0 if acc is None else acc.money,
            "state": CLOSED if acc is None else acc.state})

    async def status(self, ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        check_args(args, set())
        accounts = [a for a in self._accounts.values() if a.holder == ctx.sender]
        docs = [self.account_doc(a) for a in sorted(accounts, key=lambda a: a.account_id)]
        return self._reply("status", {"accounts": docs}, log_body=False)

    async def lease(self, ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        check_args(args, {"account_id"})
        account = self._own(ctx, account_id_arg(args["account_id"]))
        async with self._lock:
            lease = self._lease(account.account_id)
        return self._reply("lease", {"account_id": account.account_id, "lease": lease},
                           log_body=False)

    # -- ticks -----------------------------------------------------------------------

    async def tick(self, now_us: int) -> AllocationResult:
        """Allocate and charge one tick, then pay pending refunds and update the VMs."""
        async with self._lock:
            self.audit.append("in.tick", {"now": now_us}, now_us)
            live = {aid: a for aid, a in self._accounts.items() if a.state != CLOSED}
            if self._book is None:
                self._book = self._build(live)
            book = self._book
            accs = [live[aid] for aid in book.ids]
            result = run_tick(book, [a.fund for a in accs], [a.contingency for a in accs],
                              [a.interval_end_us for a in accs], now_us, self.tick_us,
                              self.config.root_bids(self.tick_us), self.sync.disk_usage(),
                              self.long_interval_us)
            new = self._settle(live, result, charge=True)
            refunds = self._collect_garbage(new, now_us)
            self._commit(new, refunds=refunds)
            self._last = result
            self.audit.append("out.tick", self._tick_doc(result), now_us)
        for refund in self.store.pending_refunds():
            await self._pay(refund)
        await self.sync_vmm()
        return result

    async def run(self) -> None:
        """Tick every ``settings.tick_seconds`` until cancelled."""
        while True:
            await asyncio.sleep(self.settings.tick_seconds)
            try:
                await self.tick(self.clock())
            except Exception:
                log.exception("auctioneer tick failed")

    # -- host owner ------------------------------------------------------------------

    async def set_config(self, config: HostConfig) -> None:
        """Apply new capacities / min prices / unique offers (persisted), reallocate."""
        async with self._lock:
            now = self.clock()
            self.audit.append("in.settings", config.to_doc(), now)
            config.save(self.store)
            self.config = config
            self._book = None
            live = {aid: a for aid, a in self._accounts.items() if a.state != CLOSED}
            self._commit(self._settle(live, self._evaluate(live, now)))
            self._book = None
        await self.sync_vmm()

    def market_summary(self) -> dict[str, dict[str, int]]:
        """``{res: {capacity, price (micro-credits/s, all bids), free}}`` for the DHT;
        unique types count identifiers and sum their prices."""
        result = self._last or self._evaluate(self._accounts, self.clock())
        out = {res: {"capacity": cap, "price": result.prices[res], "free": result.free[res]}
               for res, cap in sorted(self.capacities.items())}
        book = result.book.unique
        for kind, ranges in sorted(book.offered.items()):
            count = sum(hi - lo + 1 for lo, hi, _ in ranges)
            sold = sum(1 for k in result.winners if k.startswith(kind + ","))
            price = sum(p for k, p in result.prices.items() if k.startswith(kind + ","))
            reserve = min(r for _, _, r in ranges) * US_PER_S // self.tick_us
            out[kind] = {"capacity": count, "price": max(price, reserve),
                         "free": count - sold}
        return out

    async def vm_list(self) -> list[dict[str, Any]]:
        """This host's domains for the control API."""
        return [info.to_doc() for info in await asyncio.to_thread(self.vmm.list)]

    def accounts(self) -> list[Account]:
        return sorted(self._accounts.values(), key=lambda a: a.account_id)

    def accounts_by_id(self) -> dict[str, Account]:
        return dict(self._accounts)

    def account_doc(self, a: Account) -> dict[str, Any]:
        vm = self.sync.info.get(a.account_id)
        return {"account_id": a.account_id, "holder": a.holder, "state": a.state,
                "fund": a.fund,
                "contingency": a.contingency, "contingency_ppm": a.contingency_ppm,
                "balance": a.money, "interval_end": a.interval_end_us, "created": a.created_us,
                "bids": {k: t.to_wire() for k, t in sorted(a.bids.items())},
                "resolved": {k: [b.weight_ppm, b.min, b.max]
                             for k, b in sorted(self._resolved(a).items())},
                "allocation": dict(a.allocation),
                "events": self._events.get(a.account_id, []),
                "vm": None if vm is None else vm.to_doc(),
                "notes": [] if vm is None else list(vm.notes),
                "lease": None if a.lease is None else dict(a.lease)}

    # -- internals -------------------------------------------------------------------

    async def _checked_payment(self, ctx: CallContext, cert: dict[str, Any]) -> Payment:
        payment = await self.accept_payment(ctx.sender, cert)
        amount = payment.amount
        if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
            raise HostError("payment has no value", amount)
        return payment

    def _own(self, ctx: CallContext, account_id: str,
             message: str = "no such account of yours") -> Account:
        account = self._accounts.get(account_id)
        if account is None or account.holder != ctx.sender:
            # same answer for "absent" and "not yours": do not reveal other buyers' ids
            raise HostError(message, account_id)
        return account

    def _terms(self, specs: Mapping[str, BidSpec], current: Mapping[str, BidTerm]
               ) -> dict[str, BidTerm]:
        out: dict[str, BidTerm] = {}
        for key, spec in specs.items():
            if spec.ident is None and self.config.capacities.get(key, 0) <= 0:
                raise HostError(f"{key} is not offered by this host",
                                {"resource": key, "offered": self.config.offered()})
            if spec.ident is not None and not self._unique_offered(key):
                raise HostError(f"{key} is not offered by this host",
                                {"resource": key, "offered": self.config.offered()})
            out[key] = apply_spec(spec, current.get(key), self.config.capacities.get(key, 0))
        return out

    def _unique_offered(self, key: str) -> bool:
        book = build_book({}, (), self.config.reserves(self.tick_us)).unique
        return book.offered_in(key)

    def _resolved(self, a: Account) -> dict[str, Bid]:
        caps = self.config.capacities
        return {k: t.resolve(k, caps.get(k, 0)) for k, t in a.bids.items()}

    def _build(self, accounts: Mapping[str, Account]) -> Book:
        states = tuple(AccountState(a.account_id, a.fund, a.interval_end_us, self._resolved(a),
                                    a.contingency)
                       for a in sorted(accounts.values(), key=lambda a: a.account_id)
                       if a.state != CLOSED)
        return build_book(self.capacities, states, self.config.reserves(self.tick_us))

    def _evaluate(self, accounts: Mapping[str, Account], now: int) -> AllocationResult:
        """This moment's allocation for ``accounts``, without charging anyone."""
        book = self._build(accounts)
        accs = [accounts[aid] for aid in book.ids]
        return run_tick(book, [a.fund for a in accs], [a.contingency for a in accs],
                        [max(a.interval_end_us, now + self.tick_us) for a in accs], now,
                        self.tick_us, self.config.root_bids(self.tick_us),
                        self.sync.disk_usage(), self.long_interval_us)

    def _running(self, account: Account) -> bool:
        return account.state == ACTIVE and self.sync.wanted(account, self._resolved(account),
                                                            self.capacities)

    def _reallocate(self, changed: Account, now: int, was_running: bool) -> dict[str, Account]:
        """Everyone's state with ``changed`` in it; refuses a change that would at once
        drop one of its claims or shut down its running VM (6/27)."""
        accounts = {**self._accounts, changed.account_id: changed}
        result = self._evaluate(accounts, now)
        harm = [e for e in result.events if e.account_id == changed.account_id
                and e.kind in ("below_min", "disk_delete")]
        if harm:
            e = harm[0]
            raise HostError(f"{e.resource}: the min of this bid cannot be met at current "
                            f"prices (would get {e.amount}, min {e.limit})"
                            if e.kind == "below_min" else
                            f"{e.resource}: the account's disk would be deleted "
                            f"(would get {e.amount}, uses {e.limit})",
                            {"resource": e.resource, "would_get": e.amount, "min": e.limit,
                             "price": result.prices.get(e.resource)})
        out = self._settle(accounts, result)
        after = out[changed.account_id]
        if was_running and not self._running(after):
            raise HostError("this would shut down the account's VM (it needs cpu and memory)",
                            {"allocation": dict(after.allocation)})
        return out

    def _settle(self, accounts: Mapping[str, Account], result: AllocationResult,
                charge: bool = False) -> dict[str, Account]:
        """Apply an allocation (and, at a tick, its charges and expiries) to copies."""
        dropped = {(e.account_id, e.resource) for e in result.events if e.kind == "below_min"}
        expired = {e.account_id for e in result.events if e.kind == "expired"}
        events: dict[str, list[dict[str, Any]]] = {}
        for e in result.events:
            events.setdefault(e.account_id, []).append(
                {"resource": e.resource, "kind": e.kind, "amount": e.amount, "limit": e.limit})
        index = result.book.index
        out: dict[str, Account] = {}
        for aid, acc in accounts.items():
            if acc.state == CLOSED or aid not in index:
                out[aid] = acc
                continue
            bids = {r: t for r, t in acc.bids.items() if (aid, r) not in dropped}
            alloc = {r: v for r, v in result.allocation(aid).items() if r in bids}
            new = replace(acc, bids=bids, allocation=alloc)
            if charge:
                fund = acc.fund - result.charges.get(aid, 0)
                cont = acc.contingency - result.contingency_charges.get(aid, 0)
                assert fund >= 0 and cont >= 0, "allocator charged more than the funds"
                new = replace(new, fund=fund, contingency=cont,
                              interval_end_us=result.interval_ends.get(aid, acc.interval_end_us),
                              state=EXPIRED if aid in expired else acc.state)
            out[aid] = new
        if charge:
            self._events = events
        for e in result.events:
            if e.kind in ("below_min", "expired", "disk_delete", "disk_shrink"):
                log.info("account %s %s on %s (%d / %d)", e.account_id, e.kind, e.resource,
                         e.amount, e.limit)
        return out

    def _collect_garbage(self, accounts: dict[str, Account], now: int) -> list[Refund]:
        """Expired accounts that lost all their claims are closed; their money is refunded
        (6/20: "may still be garbage collected if outbid")."""
        refunds = []
        for aid, acc in list(accounts.items()):
            if acc.state == EXPIRED and not acc.bids:
                accounts[aid] = replace(acc, state=CLOSED, fund=0, contingency=0)
                if acc.money > 0:
                    rid = digest(pack(["gc", aid, now]))[:8].hex()
                    refunds.append(Refund(rid, aid, acc.holder, acc.money,
                                          f"p2pmarket refund {rid} of account {aid}",
                                          created_us=now))
        return refunds

    def _commit(self, accounts: Mapping[str, Account],
                payment: tuple[Payment, str] | None = None, refund: Refund | None = None,
                refunds: list[Refund] | None = None) -> None:
        """Persist what changed, with the payment or refund that goes with it, in one
        durable transaction; then make it current."""
        changed = [a for aid, a in accounts.items()
                   if aid not in self._accounts or self._accounts[aid].persistent()
                   != a.persistent()]
        pending = ([refund] if refund is not None else []) + (refunds or [])
        if changed or payment is not None or pending:
            self.store.put_many(changed, payment, pending[0] if pending else None)
            for extra in pending[1:]:
                self.store.put_many([], None, extra)
        for aid, a in accounts.items():
            old = self._accounts.get(aid)
            if old is None or old.bids != a.bids or old.state != a.state:
                self._book = None
            if a.state == CLOSED:
                self._accounts.pop(aid, None)
                self.sync.closed.add(aid)
            else:
                self._accounts[aid] = a
        if changed:
            self._last = None

    async def _pay(self, refund: Refund) -> None:
        """Pay a pending refund; on failure it stays pending for the next tick."""
        if self.refund_payment is None or refund.refund_id in self._paying:
            return
        self._paying.add(refund.refund_id)
        try:
            result = await self.refund_payment(refund.holder, refund.amount, refund.memo)
            self.store.refund_done(refund.refund_id, result)
            self.audit.append("out.refund_paid", {"refund_id": refund.refund_id,
                                                  "amount": refund.amount, "payment": result},
                              self.clock())
        except P2PMarketError as exc:
            log.warning("refund %s not paid yet: %s", refund.refund_id, exc.message)
        except Exception:
            log.exception("refund %s not paid yet", refund.refund_id)
        finally:
            self._paying.discard(refund.refund_id)

    # -- leases and the audit log ----------------------------------------------------

    def _lease_terms(self, account: Account) -> Lease:
        resolved = self._resolved(account)
        return Lease(
            lease_id=account.account_id, host_id=self.identity.node_id, holder=account.holder,
            resources={r: ResourceTerm(b.min, b.max, account.allocation.get(r, 0))
                       for r, b in resolved.items()},
            start=account.created_us, end=account.interval_end_us, balance=account.money,
            audit=None)

    def _lease(self, account_id: str) -> dict[str, Any]:
        """The account's current signed lease, re-signed (and logged) only if its terms
        changed since the last one handed out."""
        account = self._accounts[account_id]
        terms = self._lease_terms(account)
        body = terms.body()
        if account.lease is not None:
            old = dict(account.lease.get("body", {}))
            old["audit"] = None
            if pack(old) == pack(body):
                return dict(account.lease)
        now = self.clock()
        auth = self.audit.append("out.lease", body, now)
        env = sign_lease(self.identity, replace(terms, audit=auth.to_wire()), ts=now)
        signed = replace(account, lease=env.to_wire())
        self.store.put(signed)
        self._accounts[account_id] = signed
        return dict(env.to_wire())

    def _log_in(self, name: str, ctx: CallContext, args: dict[str, Any]) -> None:
        try:
            self.audit.append(f"in.{name}", {"from": ctx.sender, "ts": ctx.ts, "args": args},
                              self.clock())
        except P2PMarketError:
            self.audit.append(f"in.{name}", {"from": ctx.sender, "ts": ctx.ts,
                                             "args": "unencodable"}, self.clock())

    def _log_out(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.audit.append(f"out.{name}", body, self.clock()).to_wire()

    def _reply(self, name: str, result: dict[str, Any], log_body: bool = True
               ) -> dict[str, Any]:
        logged = result if log_body else {"digest": digest(pack(result))}
        return {**result, "audit": self._log_out(name, logged)}

    def _tick_doc(self, result: AllocationResult) -> dict[str, Any]:
        allocs = {aid: result.allocation(aid) for aid in result.book.ids}
        return {"charges": {k: v for k, v in result.charges.items() if v},
                "contingency_charges": dict(result.contingency_charges),
                "events": [[e.account_id, e.resource, e.kind, e.amount, e.limit]
                           for e in result.events],
                "prices": dict(result.prices), "interval_ends": dict(result.interval_ends),
                "allocations": digest(pack(allocs))}

    async def sync_vmm(self) -> None:
        """Bring the domains in line with the current allocations (only where changed)."""
        accounts = dict(self._accounts)
        await self.sync.run(accounts, {aid: self._resolved(a) for aid, a in accounts.items()},
                            self.capacities, self._events)
