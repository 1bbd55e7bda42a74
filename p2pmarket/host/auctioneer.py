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
- ``audit_log {since?: int, limit?: int}`` -> ``{entries: [bytes], sigs: [bytes], head}``:
  the audit log for the host's witnesses (:func:`audit_log_segment`).

``BIDS`` is ``{"cpu": [weight_ppm, min, max] | "w,min,max", "tcp_port,30000": ...}``
(see :mod:`p2pmarket.auction.resources`); ``RATIO`` a decimal string (``"0.2"``) or
ppm. Rules (seed 1/17, 1/25, 6/27, 2/7): new state is computed on copies and
committed (sqlite, durable) only when every check passed, so a refused bid,
fund or refund leaves balance, contingency and allocation exactly as they were.
A bid or refund after which the bidder would at once lose a claim (below its
min, or its disk) or have its running VM shut down is refused; losing a unique
resource never is. Allocation runs on every accepted change (no charge) and
every tick (charges).

Every decision is made by the pure transitions of :mod:`p2pmarket.auction.steps` on
the :class:`~p2pmarket.auction.machine.HostState` value; this class only does the
I/O around them: it verifies payments (``accept_payment``) before the step and
logs the outcome as part of the input, with the caller's signed request
(``ctx.request``, set by the RPC layer) so witnesses can tell it came from the
buyer; logs each input with its outputs in one durable append to the audit log
(a write-ahead log: the store records the last applied seq in the same
transaction as the state, and a restart replays what the store missed); signs
leases with the authenticator of their ``out.lease`` entry, pays refunds and
drives the VMM. The log starts with ``in.genesis`` (the state snapshot), so a
witness can replay it from seq 0 (DESIGN.md section 5).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from p2pmarket.api.rpc import CallContext, Handler
from p2pmarket.auction import HostError
from p2pmarket.auction.accounts import CLOSED, Account, Payment, Refund
from p2pmarket.auction.allocation import evaluate, lease_terms, resolved, terms_digest
from p2pmarket.auction.allocator import DEFAULT_LONG_INTERVAL_US, US_PER_S, AllocationResult
from p2pmarket.auction.buyersteps import precheck
from p2pmarket.auction.hostconfig import HostConfig
from p2pmarket.auction.hoststeps import SettingsChange, UsageReport
from p2pmarket.auction.lease import sign_lease
from p2pmarket.auction.machine import ZERO, HostState, new_state
from p2pmarket.auction.outcome import Step, error_doc
from p2pmarket.auction.rpcargs import UNENCODABLE, check_args
from p2pmarket.auction.seen import from_rows, to_rows
from p2pmarket.auction.snapshot import snapshot
from p2pmarket.auction.steps import GENESIS, INPUTS, request_refusal, step
from p2pmarket.audit.log import AuditLog
from p2pmarket.core.clock import now_us
from p2pmarket.core.config import Settings
from p2pmarket.core.errors import P2PMarketError
from p2pmarket.core.identity import Identity
from p2pmarket.core.wire import WireError, digest, pack
from p2pmarket.host.accountstore import AccountStore
from p2pmarket.host.vmm.base import VMM
from p2pmarket.host.vmmsync import VmmSync
from p2pmarket.ledger.chain import Authenticator

log = logging.getLogger(__name__)

# Verifies a payment certificate and credits the host's own chain. It must be
# idempotent (the same certificate twice gives the same Payment and credits once):
# single use per account is enforced here, through the payments table.
AcceptPayment = Callable[[bytes, dict[str, Any]], Awaitable[Payment]]
# Pays ``amount`` back to ``holder`` with a certified transfer and returns the
# certificate's wire form. Must be idempotent per ``memo`` (it names the refund).
RefundPayment = Callable[[bytes, int, str], Awaitable[dict[str, Any]]]

STATE_KEY = "audit.state"
MAX_SEGMENT = 2000


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
        self._lock = asyncio.Lock()
        self._last: AllocationResult | None = None
        self._events: dict[str, list[dict[str, Any]]] = {}
        self._paying: set[str] = set()
        self._leases: dict[str, dict[str, Any]] = {}
        self.sync = VmmSync(vmm)
        self.state = self._restore(settings, long_interval_us)
        self._start(saved_config(store, settings),
                    max(1, int(settings.tick_seconds * US_PER_S)), long_interval_us)

    @property
    def config(self) -> HostConfig:
        return self.state.config

    @property
    def tick_us(self) -> int:
        return self.state.tick_us

    @property
    def long_interval_us(self) -> int:
        return self.state.long_us

    @property
    def capacities(self) -> dict[str, int]:
        return self.state.capacities

    # -- RPC handlers ----------------------------------------------------------------

    def handlers(self) -> dict[str, Handler]:
        return {"create_account": self.create_account, "bid": self.bid, "fund": self.fund,
                "refund": self.refund, "status": self.status, "lease": self.lease,
                "audit_log": self.audit_log}

    async def create_account(self, ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        st, auth = await self._call("create_account", ctx, args, payment=True)
        return self._leased_reply(st, auth)

    async def bid(self, ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        st, auth = await self._call("bid", ctx, args)
        return self._leased_reply(st, auth)

    async def fund(self, ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        st, auth = await self._call("fund", ctx, args, payment=True)
        return self._leased_reply(st, auth)

    async def lease(self, ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        st, auth = await self._call("lease", ctx, args)
        return self._leased_reply(st, auth)

    async def refund(self, ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        st, auth = await self._call("refund", ctx, args)
        assert st.result is not None
        result = dict(st.result)
        if result["refund"] is not None:   # a new refund, or a retry of one not paid yet
            stored = self.store.refund(result["refund"]["refund_id"])
            if stored is not None and stored.status == "pending":
                await self._pay(stored)
                stored = self.store.refund(stored.refund_id)
            result["refund"] = None if stored is None else stored.to_doc()
        await self.sync_vmm()
        return {**result, "audit": auth.to_wire()}

    async def status(self, ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        check_args(args, set())
        accounts = [a for a in self.accounts() if a.holder == ctx.sender]
        result = {"accounts": [self.account_doc(a) for a in accounts]}
        auth = self.audit.append("out.status", {"digest": digest(pack(result))}, self.now())
        return {**result, "audit": auth.to_wire()}

    async def audit_log(self, ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        """``{since?, limit?}`` -> the log from ``since`` for a witness."""
        check_args(args, set(), {"since", "limit"})
        since, limit = args.get("since", 0), args.get("limit", MAX_SEGMENT)
        for v in (since, limit):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise HostError("since and limit must be non-negative integers")
        return audit_log_segment(self.audit, since, min(limit, MAX_SEGMENT))

    def _leased_reply(self, st: Step, auth: Authenticator) -> dict[str, Any]:
        assert st.result is not None
        aid = st.result["account_id"]
        return {**st.result, "lease": dict(self._leases[aid]), "audit": auth.to_wire()}

    async def _call(self, name: str, ctx: CallContext, args: dict[str, Any],
                    payment: bool = False) -> tuple[Step, Authenticator]:
        """Run one RPC through the pure step; log it; raise its error if it failed."""
        try:
            logged: Any = dict(args)
            pack(logged)
        except WireError:
            logged = UNENCODABLE
        body: dict[str, Any] = {"from": ctx.sender, "ts": ctx.ts, "args": logged}
        if ctx.request is not None:   # the caller's signature, for the witnesses
            body["request"] = ctx.request.to_wire()
        async with self._lock:
            now = self.now()
            if ctx.request is not None:   # a signed request is taken once (seen.py)
                refused = request_refusal(self.state, f"in.{name}", body, now)
                if refused is not None:
                    raise HostError(refused, {"ts": ctx.ts})
            self._sync_usage(now)
            before = self.state
            if payment:
                try:
                    precheck(self.state, name, ctx.sender, logged)
                except HostError:
                    pass   # the step refuses it the same way, without looking at the payment
                else:
                    try:
                        paid = await self._checked_payment(ctx, args["payment"])
                    except P2PMarketError as exc:
                        body["payment_error"] = error_doc(exc)
                        self._apply(f"in.{name}", body, self.now())
                        raise
                    body["payment"] = {"id": paid.payment_id, "amount": paid.amount}
                    # entries logged while we waited (status, uploads) may be later
                    now = self.now()
            st, auths = self._apply(f"in.{name}", body, now)
        if st.error is not None:
            if st.state.accounts is not before.accounts:   # a refused create that kept money
                await self.sync_vmm()
            raise st.error
        if name != "refund":
            await self.sync_vmm()
        return st, auths[-1]

    # -- ticks -----------------------------------------------------------------------

    async def tick(self, now_us: int) -> AllocationResult:
        """Allocate and charge one tick, then pay pending refunds and update the VMs.

        A tick less than one tick length after the last one is not run (the witnesses
        would refuse it): the last result is returned."""
        async with self._lock:
            now_us = max(now_us, self.audit.last_ts)   # the log's time never goes back
            self._sync_usage(now_us)
            last = self.state.last_tick
            if last >= 0 and now_us < last + self.state.tick_us:
                return self._last or evaluate(self.state, self.state.accounts, now_us)
            st, _ = self._apply("in.tick", {"now": now_us}, now_us)
            assert st.tick is not None
            result = st.tick
            events: dict[str, list[dict[str, Any]]] = {}
            for e in result.events:
                events.setdefault(e.account_id, []).append(
                    {"resource": e.resource, "kind": e.kind, "amount": e.amount,
                     "limit": e.limit})
                if e.kind in ("below_min", "expired", "disk_delete", "disk_shrink"):
                    log.info("account %s %s on %s (%d / %d)", e.account_id, e.kind,
                             e.resource, e.amount, e.limit)
            self._events = events
            self._last = result
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
            now = self.now()
            self._sync_usage(now)
            change = SettingsChange(config, self.tick_us, self.long_interval_us)
            self._apply("in.settings", change.body(), now)
        await self.sync_vmm()

    def market_summary(self) -> dict[str, dict[str, int]]:
        """``{res: {capacity, price (micro-credits/s, all bids), free}}`` for the DHT;
        unique types count identifiers and sum their prices."""
        result = self._last or evaluate(self.state, self.state.accounts, self.clock())
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
        return [self.accounts_by_id()[aid] for aid in sorted(self.state.accounts)]

    def accounts_by_id(self) -> dict[str, Account]:
        return {aid: replace(a, lease=self._leases.get(aid))
                for aid, a in self.state.accounts.items()}

    def account_doc(self, a: Account) -> dict[str, Any]:
        vm = self.sync.info.get(a.account_id)
        lease = self._leases.get(a.account_id)
        return {"account_id": a.account_id, "holder": a.holder, "state": a.state,
                "fund": a.fund,
                "contingency": a.contingency, "contingency_ppm": a.contingency_ppm,
                "balance": a.money, "interval_end": a.interval_end_us, "created": a.created_us,
                "bids": {k: t.to_wire() for k, t in sorted(a.bids.items())},
                "resolved": {k: [b.weight_ppm, b.min, b.max]
                             for k, b in sorted(resolved(self.state, a).items())},
                "allocation": dict(a.allocation),
                "events": self._events.get(a.account_id, []),
                "vm": None if vm is None else vm.to_doc(),
                "notes": [] if vm is None else list(vm.notes),
                "lease": None if lease is None else dict(lease)}

    def now(self) -> int:
        """The time for the next audit-log entry: the clock, but never before the last
        entry's (witnesses require entry timestamps not to decrease; a wall clock may
        step back, and entries may be logged while an RPC waits for its payment)."""
        return max(self.clock(), self.audit.last_ts)

    # -- the write-ahead step ----------------------------------------------------------

    def _apply(self, kind: str, body: Any, now: int) -> tuple[Step, list[Authenticator]]:
        """Step, log input and outputs in one durable append, then commit the state."""
        st = step(self.state, kind, body, now)
        auths = self.audit.append_many([(kind, body, now)]
                                       + [(k, b, now) for k, b in st.outputs])
        self._commit(st, auths, now)
        return st, auths

    def _commit(self, st: Step, auths: list[Authenticator], now: int) -> None:
        old, new = self.state, st.state
        leases = dict(self._leases)
        lease_auths = [a for (k, _), a in zip(st.outputs, auths[1:], strict=True)
                       if k == "out.lease"]
        for aid, auth in zip(st.leases, lease_auths, strict=True):
            terms = replace(lease_terms(new, new.accounts[aid]), audit=auth.to_wire())
            leases[aid] = sign_lease(self.identity, terms, ts=now).to_wire()
        rows: list[Account] = []
        for aid, a in new.accounts.items():
            if old.accounts.get(aid) != a or leases.get(aid) is not self._leases.get(aid):
                rows.append(replace(a, lease=leases.get(aid)))
        closed = [aid for aid in old.accounts if aid not in new.accounts]
        for aid in closed:
            a = old.accounts[aid]
            rows.append(replace(a, state=CLOSED, fund=0, contingency=0, bids={},
                                allocation={}, lease=leases.pop(aid, None)))
            self.sync.closed.add(aid)
        payments = [] if new.payments_hash == old.payments_hash or new.payments is None \
            or old.payments is None else \
            [(pid, aid, amount) for pid, (aid, amount)
             in list(new.payments.items())[len(old.payments):]]
        refunds = [] if new.refunds_hash == old.refunds_hash or new.refunds is None \
            or old.refunds is None else list(new.refunds.values())[len(old.refunds):]
        settings: dict[str, Any] = {STATE_KEY: _state_doc(new, auths[-1].seq)}
        if new.config != old.config:
            settings.update(capacities=new.config.capacities,
                            min_prices=new.config.min_prices, unique=new.config.unique)
        self.store.commit(rows, payments, refunds, settings)
        self._leases = leases
        if new.accounts != old.accounts or new.config != old.config:
            self._last = None
        self.state = new

    def _sync_usage(self, now: int) -> None:
        """Log the VMM's disk usage as an input when it changed (it moves disk events)."""
        usage = {aid: u for aid, u in self.sync.disk_usage().items()
                 if aid in self.state.accounts}
        if usage != dict(self.state.usage):
            self._apply("in.usage", UsageReport(usage).body(), now)

    # -- restart -----------------------------------------------------------------------

    def _restore(self, settings: Settings, long_us: int) -> HostState:
        """The state as the store last committed it."""
        saved = self.store.settings().get(STATE_KEY)
        rows = self.store.all()
        live = {a.account_id: a for a in rows if a.state != CLOSED}
        self._leases = {aid: dict(a.lease) for aid, a in live.items() if a.lease is not None}
        leased = {}
        for aid, env in self._leases.items():
            body = dict(env.get("body", {}))
            body["audit"] = None
            leased[aid] = terms_digest(body)
        config = saved_config(self.store, settings)
        tick_us = max(1, int(settings.tick_seconds * US_PER_S))
        state = new_state(self.identity.node_id, config, tick_us, long_us)
        if isinstance(saved, dict):
            state = replace(state, tick_us=int(saved["tick_us"]), long_us=int(saved["long_us"]),
                            last_tick=int(saved["last_tick"]),
                            usage={str(k): (int(u), int(f)) for k, u, f in saved["usage"]},
                            requests=from_rows(saved.get("requests", [])))
        state = replace(state, accounts={aid: replace(a, lease=None) for aid, a in live.items()},
                        leased=leased, payments={}, refunds={})
        return state.with_payments(self.store.payments()).with_refunds(
            [replace(r, status="pending", result=None) for r in self.store.refunds()])

    def _start(self, config: HostConfig, tick_us: int, long_us: int) -> None:
        """Start a new log with the state, or replay what the store missed; then log
        changed settings."""
        saved = self.store.settings().get(STATE_KEY)
        applied = int(saved["seq"]) if isinstance(saved, dict) else -1
        head = self.audit.head[0]
        if head < 0:
            auth = self.audit.append(GENESIS, snapshot(self.state), self.now())
            self.store.commit([], [], [], {STATE_KEY: _state_doc(self.state, auth.seq)})
        elif applied < head and saved is None:
            log.warning("the audit log predates write-ahead logging (no in.genesis): "
                        "witnesses cannot replay it; move audit.sqlite aside to start anew")
        elif applied < head:
            self._catch_up(applied + 1)
        elif applied > head:
            log.warning("the audit log (head %d) is behind the account store (%d)",
                        head, applied)
        if (config, tick_us, long_us) != (self.state.config, self.state.tick_us,
                                          self.state.long_us):
            self._apply("in.settings", SettingsChange(config, tick_us, long_us).body(), self.now())

    def _catch_up(self, since: int) -> None:
        """Re-apply the logged inputs the store missed (a crash between log and store)."""
        entries = self.audit.entries(since, 1 << 30)
        k = 0
        while k < len(entries):
            entry, _ = entries[k]
            if entry.kind not in INPUTS:
                k += 1
                continue
            st = step(self.state, entry.kind, entry.body, entry.ts)
            outs = entries[k + 1:k + 1 + len(st.outputs)]
            if [(e.kind, pack(e.body)) for e, _ in outs] != \
                    [(kd, pack(b)) for kd, b in st.outputs]:
                log.error("audit log entry %d does not replay to its logged outputs",
                          entry.seq)
            auths = [a for _, a in entries[k:k + 1 + len(st.outputs)]]
            if len(auths) == 1 + len(st.outputs):
                self._commit(st, auths, entry.ts)
            k += 1 + len(st.outputs)

    # -- payments --------------------------------------------------------------------

    async def _checked_payment(self, ctx: CallContext, cert: dict[str, Any]) -> Payment:
        payment = await self.accept_payment(ctx.sender, cert)
        amount = payment.amount
        if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
            raise HostError("payment has no value", amount)
        return payment

    async def _pay(self, refund: Refund) -> None:
        """Pay a pending refund; on failure it stays pending for the next tick."""
        if self.refund_payment is None or refund.refund_id in self._paying:
            return
        stored = self.store.refund(refund.refund_id)
        if stored is not None and stored.status != "pending":
            return
        self._paying.add(refund.refund_id)
        try:
            result = await self.refund_payment(refund.holder, refund.amount, refund.memo)
            self.store.refund_done(refund.refund_id, result)
            self.audit.append("out.refund_paid", {"refund_id": refund.refund_id,
                                                  "amount": refund.amount, "payment": result},
                              self.now())
        except P2PMarketError as exc:
            log.warning("refund %s not paid yet: %s", refund.refund_id, exc.message)
        except Exception:
            log.exception("refund %s not paid yet", refund.refund_id)
        finally:
            self._paying.discard(refund.refund_id)

    async def sync_vmm(self) -> None:
        """Bring the domains in line with the current allocations (only where changed)."""
        accounts = self.accounts_by_id()
        await self.sync.run(accounts, {aid: resolved(self.state, a)
                                       for aid, a in accounts.items()},
                            self.capacities, self._events)


def _state_doc(state: HostState, seq: int) -> dict[str, Any]:
    return {"seq": seq, "last_tick": state.last_tick, "tick_us": state.tick_us,
            "long_us": state.long_us,
            "usage": [[k, u, f] for k, (u, f) in sorted(state.usage.items())],
            "requests": to_rows(state.requests)}


def audit_log_segment(audit: AuditLog, since: int, limit: int) -> dict[str, Any]:
    """``{entries: [canonical entry bytes], sigs: [signature], head: [seq, hash]}`` from
    ``since``: the host's signature of ``(key, seq, SHA-256(entry))`` for each entry."""
    rows = audit.raw(since, limit)
    seq, h = audit.head
    return {"since": since, "entries": [r[1] for r in rows], "sigs": [r[3] for r in rows],
            "head": [seq, h if seq >= 0 else ZERO]}


def saved_config(store: AccountStore, settings: Settings) -> HostConfig:
    """The host's settings: the node's defaults, overridden by those saved in the store."""
    return HostConfig.defaults(settings.cpu_mhz, settings.memory_kib,
                               settings.min_price).updated(store.settings())
