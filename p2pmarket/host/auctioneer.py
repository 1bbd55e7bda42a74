"""The auctioneer (DESIGN.md §6): RPCs, argument checks and money around the pure allocator.

RPCs (register with ``dispatcher.register_all("host", auctioneer.handlers())``);
only the account's holder (``ctx.sender``) may act on an account:

- ``create_account {payment: cert wire, bids: BIDS, interval_s: int}``
  -> ``{account_id, lease}``
- ``bid {account_id, bids: BIDS, interval_s?: int, replace?: bool}`` -> ``{account_id, lease}``
  (patch: listed resources change, fields left out keep their value; ``replace``
  drops the bids not listed; ``interval_s`` restarts the interval from now;
  an identical bid changes nothing, not even the lease signature)
- ``fund {account_id, payment}`` -> ``{account_id, amount, balance, lease}``
- ``status {}`` -> ``{accounts: [ACCOUNT...]}``, the caller's accounts
- ``lease {account_id}`` -> ``{account_id, lease}``

``BIDS`` is ``{"cpu": [weight_ppm, min, max] | "w,min,max", ...}`` (see
:mod:`p2pmarket.host.resources`); ``lease`` is the signed lease envelope's wire
map; ``ACCOUNT`` is ``{account_id, fund, interval_end, created, bids: {res:
[weight_ppm, min, max]}, allocation: {res: amount}, lease}``.

Money rules (seed 1/17, 1/25, 6/27): the new state is computed on copies and
committed (sqlite, durable) only when every check passed, so a refused bid or
fund leaves balance and allocation exactly as they were. A bid whose min the
market cannot meet right now is refused. A payment, once accepted, cannot be
undone: if ``create_account``'s bids are then refused, the account is still
opened with the money and no bids, and the error names it.

Allocation runs on every accepted create/bid/fund (no charge: charges happen
per tick) and every tick (``tick_seconds``), which charges each account for the
coming tick. ``settings.min_price`` is the root account's bid in micro-credits
per second per resource.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import replace
from typing import Any

from p2pmarket.api.rpc import CallContext, Handler, now_us
from p2pmarket.config import Settings
from p2pmarket.host import HostError
from p2pmarket.host.accounts import Account, AccountStore, Payment, bids_to_doc
from p2pmarket.host.allocator import (
    US_PER_S,
    AccountState,
    AllocationInput,
    AllocationResult,
    Bid,
    allocate,
)
from p2pmarket.host.lease import Lease, ResourceTerm, sign_lease
from p2pmarket.host.resources import BidSpec, bids_from_wire, resolve_bid
from p2pmarket.host.vmm.base import VMM, VmmError
from p2pmarket.identity import Identity
from p2pmarket.wire import pack

log = logging.getLogger(__name__)

# Verifies a payment certificate and credits the host's own chain. It must be
# idempotent (the same certificate twice gives the same Payment and credits once):
# single use per account is enforced here, through the store's payments table.
AcceptPayment = Callable[[bytes, dict[str, Any]], Awaitable[Payment]]
OFFERED: tuple[str, ...] = ("cpu", "memory")
MAX_INTERVAL_S = 10 * 365 * 24 * 3600
WEIGHT_SCALE = 10_000   # cpu weight = allocated share of the host in 1/10000


def domain_prefix(identity: Identity) -> str:
    """The host-specific prefix of its domain names."""
    return f"p2pm-{identity.node_id.hex()[:12]}-"


def _args(args: dict[str, Any], required: AbstractSet[str],
          optional: AbstractSet[str] = frozenset()) -> None:
    missing = sorted(required - set(args))
    if missing:
        raise HostError(f"missing argument {missing[0]!r}", missing)
    unknown = sorted(str(k) for k in set(args) - required - optional)
    if unknown:
        raise HostError(f"unknown argument {unknown[0]!r}", unknown)


def _interval(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_INTERVAL_S:
        raise HostError(f"interval_s must be an integer from 1 to {MAX_INTERVAL_S}",
                        repr(value)[:40])
    return value * US_PER_S


def _account_id(value: Any) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= 64:
        raise HostError("account_id must be a short string", repr(value)[:40])
    return value


class Auctioneer:
    def __init__(self, identity: Identity, settings: Settings, store: AccountStore, vmm: VMM,
                 accept_payment: AcceptPayment, clock: Callable[[], int] = now_us) -> None:
        self.identity = identity
        self.settings = settings
        self.store = store
        self.vmm = vmm
        self.accept_payment = accept_payment
        self.clock = clock
        self.capacities: dict[str, int] = {"cpu": settings.cpu_mhz,
                                           "memory": settings.memory_kib}
        self.tick_us = max(1, int(settings.tick_seconds * US_PER_S))
        self.root_bid = max(1, settings.min_price * self.tick_us // US_PER_S)
        self._accounts: dict[str, Account] = {a.account_id: a for a in store.all()}
        self._lock = asyncio.Lock()
        self._vmm_lock = asyncio.Lock()
        self._applied: dict[str, tuple[int, int, int, int] | None] = {}
        self._last: AllocationResult | None = None

    # -- RPC handlers ----------------------------------------------------------------

    def handlers(self) -> dict[str, Handler]:
        return {"create_account": self.create_account, "bid": self.bid, "fund": self.fund,
                "status": self.status, "lease": self.lease}

    async def create_account(self, ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        _args(args, {"payment", "bids", "interval_s"})
        interval_us = _interval(args["interval_s"])
        if not isinstance(args["payment"], dict):
            raise HostError("payment must be a certificate map", type(args["payment"]).__name__)
        bids = self._resolve(bids_from_wire(args["bids"]), {})
        async with self._lock:
            payment = await self._checked_payment(ctx, args["payment"])
            funded = self.store.payment_account(payment.payment_id)
            if funded is not None:  # a retry (e.g. after our crash): answer it again
                self._own(ctx, funded, "payment already used for another account")
                return {"account_id": funded, "lease": self._lease_of(funded)}
            now = self.clock()
            account = Account(account_id=secrets.token_hex(8), holder=ctx.sender,
                              fund=payment.amount, interval_end_us=now + interval_us,
                              created_us=now, bids=bids)
            try:
                new = self._reallocate(account, now)
            except HostError as exc:
                # the money is ours now: keep it in a bid-less account for the buyer
                account = replace(account, bids={})
                self._commit(self._reallocate(account, now), now,
                             (payment, account.account_id))
                raise HostError(f"{exc.message}; the payment is kept in account "
                                f"{account.account_id}, which has no bids",
                                {"account_id": account.account_id, "cause": exc.value}) from None
            self._commit(new, now, (payment, account.account_id))
        await self.sync_vmm()
        return {"account_id": account.account_id, "lease": self._lease_of(account.account_id)}

    async def bid(self, ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        _args(args, {"account_id", "bids"}, {"interval_s", "replace"})
        account_id = _account_id(args["account_id"])
        interval_us = None if args.get("interval_s") is None else _interval(args["interval_s"])
        replace_all = args.get("replace", False)
        if not isinstance(replace_all, bool):
            raise HostError("replace must be true or false", repr(replace_all)[:40])
        specs = bids_from_wire(args["bids"])
        async with self._lock:
            account = self._own(ctx, account_id)
            bids = self._resolve(specs, {} if replace_all else dict(account.bids))
            if not replace_all:
                bids = {**account.bids, **bids}
            now = self.clock()
            end = account.interval_end_us if interval_us is None else now + interval_us
            if bids == dict(account.bids) and end == account.interval_end_us:
                return {"account_id": account_id, "lease": self._lease_of(account_id)}
            new = self._reallocate(replace(account, bids=bids, interval_end_us=end), now)
            self._commit(new, now)
        await self.sync_vmm()
        return {"account_id": account_id, "lease": self._lease_of(account_id)}

    async def fund(self, ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        _args(args, {"account_id", "payment"})
        account_id = _account_id(args["account_id"])
        if not isinstance(args["payment"], dict):
            raise HostError("payment must be a certificate map", type(args["payment"]).__name__)
        async with self._lock:
            account = self._own(ctx, account_id)
            payment = await self._checked_payment(ctx, args["payment"])
            funded = self.store.payment_account(payment.payment_id)
            if funded == account_id:  # a retry: the money is already in
                return {"account_id": account_id, "amount": payment.amount,
                        "balance": account.fund, "lease": self._lease_of(account_id)}
            if funded is not None:
                raise HostError("payment already used for another account", "used")
            amount = payment.amount
            now = self.clock()
            # more money never lowers the funder's share: nothing here can refuse it
            accounts = {**self._accounts, account_id: replace(account, fund=account.fund + amount)}
            self._commit(self._settle(accounts, self._run_allocator(accounts, now), now,
                                      charge=False), now, (payment, account_id))
        await self.sync_vmm()
        return {"account_id": account_id, "amount": amount,
                "balance": self._accounts[account_id].fund, "lease": self._lease_of(account_id)}

    async def status(self, ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        _args(args, set())
        accounts = [a for a in self._accounts.values() if a.holder == ctx.sender]
        return {"accounts": [self.account_doc(a) for a in sorted(
            accounts, key=lambda a: a.account_id)]}

    async def lease(self, ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        _args(args, {"account_id"})
        account = self._own(ctx, _account_id(args["account_id"]))
        return {"account_id": account.account_id, "lease": self._lease_of(account.account_id)}

    # -- ticks -----------------------------------------------------------------------

    async def tick(self, now_us: int) -> AllocationResult:
        """Allocate and charge one tick, re-sign changed leases, then update the VMs."""
        async with self._lock:
            result = self._run_allocator(self._accounts, now_us)
            self._commit(self._settle(self._accounts, result, now_us, charge=True), now_us)
            self._last = result
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

    def market_summary(self) -> dict[str, dict[str, int]]:
        """``{res: {capacity, price (micro-credits/s, all bids), free}}`` for the DHT."""
        result = self._last or self._run_allocator(self._accounts, self.clock())
        return {res: {"capacity": cap, "price": result.prices[res], "free": result.free[res]}
                for res, cap in sorted(self.capacities.items())}

    async def vm_list(self) -> list[dict[str, Any]]:
        """This host's domains for the control API."""
        return [info.to_doc() for info in await asyncio.to_thread(self.vmm.list)]

    def accounts(self) -> list[Account]:
        return sorted(self._accounts.values(), key=lambda a: a.account_id)

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

    def _resolve(self, specs: Mapping[str, BidSpec], current: Mapping[str, Bid]
                 ) -> dict[str, Bid]:
        out: dict[str, Bid] = {}
        for key, spec in specs.items():
            if spec.ident is not None or key not in self.capacities:
                raise HostError(f"{key} is not offered by this host",
                                {"resource": key, "offered": sorted(self.capacities)})
            out[key] = resolve_bid(spec, current.get(key), self.capacities[key])
        return out

    def _run_allocator(self, accounts: Mapping[str, Account], now: int) -> AllocationResult:
        states: tuple[AccountState, ...] = tuple(a.state() for a in accounts.values())
        return allocate(AllocationInput(self.capacities, states, now, self.tick_us,
                                        self.root_bid))

    def _reallocate(self, changed: Account, now: int) -> dict[str, Account]:
        """Everyone's state with ``changed`` in it; refuses if it loses a claim at once."""
        accounts = {**self._accounts, changed.account_id: changed}
        result = self._run_allocator(accounts, now)
        lost = [e for e in result.events if e.account_id == changed.account_id]
        if lost:
            e = lost[0]
            raise HostError(f"{e.resource}: the min of this bid cannot be met at current "
                            f"prices (would get {e.amount}, min {e.limit})",
                            {"resource": e.resource, "would_get": e.amount, "min": e.limit,
                             "price": result.prices.get(e.resource)})
        return self._settle(accounts, result, now, charge=False)

    def _settle(self, accounts: Mapping[str, Account], result: AllocationResult, now: int,
                charge: bool) -> dict[str, Account]:
        """Apply an allocation (and, at a tick, its charges) to copies of ``accounts``."""
        dropped = {(e.account_id, e.resource) for e in result.events}
        out: dict[str, Account] = {}
        for aid, acc in accounts.items():
            bids = {r: b for r, b in acc.bids.items() if (aid, r) not in dropped}
            alloc = {r: v for r, v in result.allocations[aid].items() if r in bids}
            fund = acc.fund - result.charges[aid] if charge else acc.fund
            assert fund >= 0, "allocator charged more than the fund"
            new = replace(acc, bids=bids, allocation=alloc, fund=fund)
            out[aid] = self._resign(new, now)
        for e in result.events:
            log.info("account %s lost its claim on %s (%s: %d < %d)", e.account_id,
                     e.resource, e.kind, e.amount, e.limit)
        return out

    def _lease_terms(self, account: Account) -> Lease:
        return Lease(
            lease_id=account.account_id, host_id=self.identity.node_id, holder=account.holder,
            resources={r: ResourceTerm(b.min, b.max, account.allocation.get(r, 0))
                       for r, b in account.bids.items()},
            start=account.created_us, end=account.interval_end_us, balance=account.fund,
            audit=None)

    def _resign(self, account: Account, now: int) -> Account:
        body = self._lease_terms(account).body()
        if account.lease is not None and pack(account.lease.get("body")) == pack(body):
            return account
        return replace(account, lease=sign_lease(self.identity, self._lease_terms(account),
                                                 ts=now).to_wire())

    def _commit(self, accounts: Mapping[str, Account], now: int,
                payment: tuple[Payment, str] | None = None) -> None:
        """Persist what changed, with the payment that funded it, in one durable
        transaction; then make it current."""
        changed = [a for aid, a in accounts.items() if self._accounts.get(aid) != a]
        if changed or payment is not None:
            self.store.put_many(changed, payment)
            self._last = None   # market_summary recomputes from the new bids
        for a in changed:
            self._accounts[a.account_id] = a

    def _lease_of(self, account_id: str) -> dict[str, Any]:
        lease = self._accounts[account_id].lease
        assert lease is not None
        return dict(lease)

    def account_doc(self, a: Account) -> dict[str, Any]:
        return {"account_id": a.account_id, "fund": a.fund, "interval_end": a.interval_end_us,
                "created": a.created_us, "bids": bids_to_doc(a.bids),
                "allocation": dict(a.allocation), "lease": None if a.lease is None
                else dict(a.lease)}

    def desired_vm(self, account: Account) -> tuple[int, int, int, int] | None:
        """``(vcpus, memory_kib, cpu_weight, max_memory_kib)``, None when it cannot run."""
        cpu, mem = account.allocation.get("cpu", 0), account.allocation.get("memory", 0)
        if cpu <= 0 or mem <= 0:
            return None
        cap = self.capacities["cpu"]
        top = self.vmm.max_vcpus
        vcpus = min(top, max(1, -(-cpu * top // cap)))
        weight = max(1, cpu * WEIGHT_SCALE // cap)
        max_mem = max(mem, account.bids["memory"].max)
        return vcpus, mem, weight, max_mem

    async def sync_vmm(self) -> None:
        """Bring the domains in line with the current allocations (only where changed)."""
        async with self._vmm_lock:
            for aid, account in sorted(self._accounts.items()):
                want = self.desired_vm(account)
                if aid in self._applied and self._applied[aid] == want:
                    continue
                try:
                    if want is None:
                        await asyncio.to_thread(self.vmm.shutdown, aid)
                    else:
                        vcpus, mem, weight, max_mem = want
                        await asyncio.to_thread(self.vmm.ensure_domain, aid, vcpus, mem, weight,
                                                max_mem)
                except VmmError as exc:
                    log.warning("VMM failed for account %s: %s", aid, exc.message)
                    continue
                self._applied[aid] = want
