"""Running the pure auction on a host: ticks, the owner's settings, refunds and the VMM.

:class:`AuctionRunner` is the I/O around :mod:`p2pmarket.auction`: it keeps the
state in its :class:`~p2pmarket.host.journal.Journal` (every input goes through
the pure step and is logged and committed there), ticks when the core says the next
tick is due (:func:`~p2pmarket.auction.hoststeps.next_tick_at`, aioquic style: the
core gives its deadline, the runner sleeps until then and hands it the time),
applies the host owner's settings, pays the refunds the steps make (and logs each
payment, with its certificate, as ``in.refund_paid``) and brings the VMM in line with
the allocations. The buyers' RPCs are added by
:class:`p2pmarket.host.auctioneer.Auctioneer`.

Monitoring: after each tick that ran, :attr:`AuctionRunner.on_tick` (if set) is told
``on_tick(seconds, events)``: how long the whole tick took (step, commit, refunds,
VMM sync) and the allocator events it produced.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from p2pmarket.auction import HostError
from p2pmarket.auction.accounts import Account, Refund, RefundPaid
from p2pmarket.auction.allocation import book_of, current, resolved, vm_bids
from p2pmarket.auction.allocator import DEFAULT_LONG_INTERVAL_US
from p2pmarket.auction.enforce import VmDefaults
from p2pmarket.auction.hostconfig import HostConfig
from p2pmarket.auction.hoststeps import SettingsChange, UsageReport, next_tick_at
from p2pmarket.auction.machine import HostState
from p2pmarket.auction.model import AllocEvent
from p2pmarket.auction.quote import offered
from p2pmarket.auction.steps import REFUND_PAID
from p2pmarket.audit.log import AuditLog
from p2pmarket.audit.refunds import refund_payment_fault
from p2pmarket.core.clock import US_PER_S, now_us
from p2pmarket.core.config import Settings
from p2pmarket.core.errors import P2PMarketError
from p2pmarket.core.identity import Identity
from p2pmarket.host.accountstore import AccountStore
from p2pmarket.host.journal import Journal, saved_config
from p2pmarket.host.vmm.base import VMM, VmmError
from p2pmarket.host.vmmsync import VmmSync
from p2pmarket.ledger.certificate import Certificate
from p2pmarket.sharp.claims import Claim, Rset, Term, Ticket, sign_claim

log = logging.getLogger(__name__)

# Pays ``amount`` back to ``holder`` with a certified transfer and returns the
# certificate's wire form. Must be idempotent per ``memo`` (it names the refund).
RefundPayment = Callable[[bytes, int, str], Awaitable[dict[str, Any]]]


def paid_body(refund_id: str, cert_doc: dict[str, Any]) -> dict[str, Any]:
    """The ``in.refund_paid`` body for a refund paid with the certificate ``cert_doc``
    (raises :class:`~p2pmarket.ledger.errors.LedgerError` if it is no certificate)."""
    cert = Certificate.from_wire(cert_doc)
    return RefundPaid(refund_id, cert.entry.hash(), cert.to_wire()).body()

NOTED_EVENTS = ("below_min", "expired", "disk_delete", "disk_shrink")


class AuctionRunner:
    def __init__(self, identity: Identity, settings: Settings, store: AccountStore, vmm: VMM,
                 clock: Callable[[], int] = now_us, audit: AuditLog | None = None,
                 refund_payment: RefundPayment | None = None,
                 long_interval_us: int = DEFAULT_LONG_INTERVAL_US) -> None:
        self.identity = identity
        self.settings = settings
        self.store = store
        self.vmm = vmm
        self.refund_payment = refund_payment
        self.clock = clock
        self._lock = asyncio.Lock()
        self._events: dict[str, list[dict[str, Any]]] = {}
        self._paying: set[str] = set()
        self.sync = VmmSync(vmm, VmDefaults(settings.vm_default_memory_kib))
        self.on_synced: Callable[[], Awaitable[None]] | None = None
        """Called after every VMM sync (the node keeps the leased ports with it)."""
        self.on_tick: Callable[[float, tuple[AllocEvent, ...]], None] | None = None
        """Told of every tick that ran (monitoring): see the module docstring."""
        config = saved_config(store, settings)
        tick_us = max(1, int(settings.tick_seconds * US_PER_S))
        self.journal = Journal(identity, store,
                               audit if audit is not None else AuditLog(":memory:", identity),
                               self.now, self._committed, config, tick_us, long_interval_us)
        self.journal.on_events = self.note_events
        self.journal.start(config, tick_us, long_interval_us)

    @property
    def state(self) -> HostState:
        return self.journal.state

    @property
    def audit(self) -> AuditLog:
        return self.journal.audit

    @audit.setter
    def audit(self, audit: AuditLog) -> None:
        self.journal.audit = audit

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
        """The machine's whole capacities (a VM's share is of these; the auction shares
        them less the active reservations: ``state.capacities``)."""
        return self.state.machine_capacities

    def now(self) -> int:
        """The time for the next audit-log entry: the clock, but never before the last
        entry's (witnesses require entry timestamps not to decrease; a wall clock may
        step back, and entries may be logged while an RPC waits for its payment)."""
        return max(self.clock(), self.audit.last_ts)

    # -- ticks -----------------------------------------------------------------------

    async def tick(self, now_us: int) -> tuple[AllocEvent, ...]:
        """Take one tick, then pay pending refunds and update the VMs; its events.

        A tick before the core's :func:`next_tick_at` is not run (the witnesses would
        refuse it): no events."""
        started = time.perf_counter()
        async with self._lock:
            now_us = max(now_us, self.audit.last_ts)   # the log's time never goes back
            self._sync_usage(now_us)
            due = next_tick_at(self.state)
            if due is not None and now_us < due:
                return ()
            st, _ = self.journal.apply("in.tick", {"now": now_us}, now_us)
            assert st.tick is not None
            result = st.tick
        for refund in self.store.pending_refunds():
            await self._pay(refund)
        await self.sync_vmm()
        if self.on_tick is not None:
            self.on_tick(time.perf_counter() - started, result)
        return result

    def seconds_to_next_tick(self) -> float:
        """How long until the core's next tick is due; before the first tick, one
        ``settings.tick_seconds``."""
        due = next_tick_at(self.state)
        if due is None:
            return self.settings.tick_seconds
        return max(0, due - self.now()) / US_PER_S

    async def run(self) -> None:
        """Tick whenever the next tick is due, until cancelled (after a failed tick,
        wait one ``settings.tick_seconds``)."""
        failed = False
        while True:
            await asyncio.sleep(self.settings.tick_seconds if failed
                                else self.seconds_to_next_tick())
            try:
                await self.tick(self.clock())
                failed = False
            except Exception:
                log.exception("auctioneer tick failed", extra={"event": "auction.tick_failed"})
                failed = True

    # -- host owner ------------------------------------------------------------------

    async def set_config(self, config: HostConfig) -> None:
        """Apply new capacities / min prices / unique offers (persisted), reallocate."""
        async with self._lock:
            now = self.now()
            self._sync_usage(now)
            change = SettingsChange(config, self.tick_us, self.long_interval_us)
            self.journal.apply("in.settings", change.body(), now)
        await self.sync_vmm()

    async def delegate(self, holder: bytes, rset: Rset, term: Term) -> Ticket:
        """An anchor to ``holder`` by the owner's policy (``in.delegate``, section 10),
        signed: a ticket of one claim. Raises the step's refusal."""
        body = {"site": self.identity.public_key, "holder": holder, "rset": rset.to_doc(),
                "term": [term.start, term.end], "serial": secrets.token_bytes(16)}
        async with self._lock:
            st, _ = self.journal.apply("in.delegate", body, self.now())
        if st.error is not None:
            raise st.error
        assert st.result is not None
        return self.signed_anchor(st.result["anchor"])

    def signed_anchor(self, body: dict[str, Any]) -> Ticket:
        """The anchor claim ``body`` (an ``out.delegate`` / ``out.buy_anchor``'s) signed
        by this host: a ticket of one claim (Ed25519 is deterministic: the same bytes
        for the same body)."""
        return Ticket((sign_claim(self.identity, Claim.from_body(body)),))

    def reservations_doc(self) -> list[dict[str, Any]]:
        """The reservations (section 10), for the owner's status."""
        return [{"account_id": r.account_id, "holder": r.holder, "start": r.start,
                 "end": r.end, "resources": dict(sorted(r.amounts.items())),
                 "active": r.active, "claims": list(r.claims)}
                for _, r in sorted(self.state.reservations.items())]

    def market_summary(self) -> dict[str, dict[str, int]]:
        """``{res: {capacity, price (micro-credits/s, all bids), free}}`` for the DHT (and
        the quotes: :func:`p2pmarket.auction.quote.offered`); unique types count
        identifiers and sum their prices."""
        return {res: o.to_doc() for res, o in offered(self.state).items()}

    def winners(self) -> dict[str, str]:
        """Unique identifier key -> the account that holds it now."""
        return book_of(self.state).winners()

    async def vm_list(self) -> list[dict[str, Any]]:
        """This host's domains for the control API, each with what it really uses (the
        hypervisor's counters: :meth:`~p2pmarket.host.vmm.base.VMM.usage`) beside the
        allocation's spec."""
        def read() -> list[dict[str, Any]]:
            out = []
            for info in self.vmm.list():
                try:
                    used = self.vmm.usage(info.account_id)
                except VmmError:
                    used = None
                out.append({**info.to_doc(), "usage": used.to_doc() if used else None})
            return out
        return await asyncio.to_thread(read)

    def accounts(self) -> list[Account]:
        by_id = self.accounts_by_id()   # once: it builds every account (O(accounts))
        return [by_id[aid] for aid in sorted(by_id)]

    def accounts_by_id(self) -> dict[str, Account]:
        """The accounts now (money as of the last tick, allocation filled in), with their
        signed leases."""
        leases, state = self.journal.leases, self.state
        return {aid: replace(current(state, a), lease=leases.get(aid))
                for aid, a in state.accounts.items()}

    def account_doc(self, a: Account) -> dict[str, Any]:
        """An account as :meth:`accounts` gives it (its money and allocation now)."""
        vm = self.sync.info.get(a.account_id)
        lease = self.journal.leases.get(a.account_id)
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

    # -- around the journal ------------------------------------------------------------

    def note_events(self, events: tuple[AllocEvent, ...]) -> None:
        """Keep each account's last allocator events (for its doc and the VMM: disk
        actions) and log the notable ones."""
        mine: dict[str, list[dict[str, Any]]] = {}
        for e in events:
            mine.setdefault(e.account_id, []).append(
                {"resource": e.resource, "kind": e.kind, "amount": e.amount,
                 "limit": e.limit})
            if e.kind in NOTED_EVENTS:
                log.info("account %s %s on %s (%d / %d)", e.account_id, e.kind,
                         e.resource, e.amount, e.limit, extra={"event": "auction.account"})
        self._events.update(mine)

    def _committed(self, old: HostState, new: HostState) -> None:
        """After each commit: closed accounts' domains go."""
        self.sync.closed.update(aid for aid in old.accounts if aid not in new.accounts)

    def _sync_usage(self, now: int) -> None:
        """Log the VMM's disk usage as an input when it changed (it moves disk events)."""
        usage = {aid: u for aid, u in self.sync.disk_usage().items()
                 if aid in self.state.accounts}
        if usage != dict(self.state.usage):
            self.journal.apply("in.usage", UsageReport(usage).body(), now)

    # -- refunds and the VMM -------------------------------------------------------------

    async def _pay(self, refund: Refund) -> None:
        """Pay a pending refund and log the payment (``in.refund_paid``, with the SEND's
        certificate: the witnesses check it against the refund); on failure it stays
        pending for the next tick. A payment that does not pay the refund exactly (a
        fault of ``refund_payment``) is not logged: it would expose the host."""
        if self.refund_payment is None or refund.refund_id in self._paying:
            return
        stored = self.store.refund(refund.refund_id)
        if stored is not None and stored.status != "pending":
            return
        self._paying.add(refund.refund_id)
        try:
            cert = await self.refund_payment(refund.holder, refund.amount, refund.memo)
            async with self._lock:
                if self.state.refund_paid(refund.refund_id) is not None:
                    return   # paid meanwhile (a concurrent retry)
                body = paid_body(refund.refund_id, cert)
                wrong = refund_payment_fault(self.state, body, self.identity.public_key)
                if wrong is not None:
                    raise HostError(f"the refund payment is wrong: {wrong}", refund.refund_id)
                self.journal.apply(REFUND_PAID, body, self.now())
        except P2PMarketError as exc:
            log.warning("refund %s not paid yet: %s", refund.refund_id, exc.message,
                        extra={"event": "auction.refund_unpaid"})
        except Exception:
            log.exception("refund %s not paid yet", refund.refund_id,
                          extra={"event": "auction.refund_unpaid"})
        finally:
            self._paying.discard(refund.refund_id)

    async def sync_vmm(self) -> None:
        """Bring the domains in line with the current allocations (only where changed)."""
        accounts = self.accounts_by_id()
        await self.sync.run(accounts, {aid: vm_bids(self.state, a)
                                       for aid, a in accounts.items()},
                            self.capacities, self._events)
        if self.on_synced is not None:
            try:
                await self.on_synced()
            except Exception:   # the ports follow next time; the auction goes on
                log.exception("keeping the leased ports failed",
                              extra={"event": "host.ports_failed"})


__all__ = ["AuctionRunner", "RefundPayment", "paid_body"]
