"""The auctioneer (docs/design.md §6): RPCs, argument checks and money around the pure allocator.

RPCs (register with ``dispatcher.register_all("host", auctioneer.handlers())``);
only the account's holder (``ctx.sender``) may act on an account. Every result
carries ``audit``: the authenticator of the audit-log entry that recorded it.

- ``create_account {payment: cert, bids: BIDS, interval_s: int, contingency?: RATIO}``
  -> ``{account_id, lease}``. A create refused after its payment verified (bids the
  host does not offer, a min above its capacity, minimums the money cannot meet at
  once: what ``quote`` refuses first) pays the whole payment back at once, a refund
  to the payer paid like any other (retried every tick until certified); the error
  names it (``{refund_id, amount, cause}``) and no account is opened.
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
- ``status {}`` -> ``{accounts: [ACCOUNT...]}`` (logged as ``out.status``, a digest;
  for a caller with no account nothing is logged and ``audit`` is the head's
  authenticator, so strangers cannot grow the log with it); ``lease {account_id}``
  -> ``{lease}``.
- ``quote {bids, interval_s, nonce, amount?, contingency?}`` -> ``{quote}``: the host's
  signed quote for the caller (:mod:`p2pmarket.auction.quote`): its current capacity
  and price per resource type bid on, valid for 30 s; refused with the error
  ``create_account`` would give. Read-only: not an input, so not logged (the audit
  replay never sees it) and no ``audit`` field.
- ``audit_log {since?: int, limit?: int}`` -> ``{since, entries: [bytes], sigs: [bytes],
  head}``: the audit log for the host's witnesses (:func:`audit_log_segment`), from
  ``since`` (0 .. 2^62), at most ``limit`` (default and cap :data:`MAX_SEGMENT`)
  entries and about :data:`~p2pmarket.audit.log.SEGMENT_BYTES` of them, but always
  the first: a witness pages on from the last entry it got up to ``head``.

Requests are bounded (:data:`p2pmarket.auction.rpcargs.REQUEST_LIMITS`; register
the handlers with :meth:`Auctioneer.request_limits` so the RPC layer refuses longer
ones before checking their signature; the auctioneer refuses them too, before
logging anything). What is logged of a refused request: nothing when the refusal
depends on the request alone (too long, arguments malformed: the same request is
refused the same way whenever it comes, so there is nothing to replay, and a
stranger's junk never reaches the log); the whole signed request, bounded, when it
depends on the state (the replay needs it to re-derive the refusal and to record
the request as taken).

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
I/O around them: it refuses a signed request it already took, verifies payments
(``accept_payment``: offline, no network call, since it runs under the auction lock;
the node certifies its RECV later) before the step and logs the outcome as part of the input,
with the caller's signed request (``ctx.request``, set by the RPC layer) so
witnesses can tell it came from the buyer. Logging, committing and signing leases
are the :class:`~p2pmarket.host.journal.Journal`'s; ticks, the owner's settings,
refund payments and the VMM are the :class:`~p2pmarket.host.runner.AuctionRunner`'s.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from p2pmarket.api.bounds import sealable_error
from p2pmarket.api.rpc import CallContext, Handler
from p2pmarket.auction import HostError
from p2pmarket.auction.accounts import Payment
from p2pmarket.auction.allocator import DEFAULT_LONG_INTERVAL_US
from p2pmarket.auction.buyersteps import precheck
from p2pmarket.auction.machine import ZERO
from p2pmarket.auction.outcome import Step, error_doc
from p2pmarket.auction.quote import make_quote, parse_quote_args, sign_quote
from p2pmarket.auction.rpcargs import (
    REQUEST_LIMITS,
    UNENCODABLE,
    check_args,
    parse_args,
    request_limit,
)
from p2pmarket.auction.steps import request_refusal
from p2pmarket.audit.entry import MAX_SEQ, AuditAuthenticator
from p2pmarket.audit.log import SEGMENT_BYTES, AuditLog
from p2pmarket.core.clock import now_us
from p2pmarket.core.config import Settings
from p2pmarket.core.errors import P2PMarketError
from p2pmarket.core.identity import Identity, node_id_of
from p2pmarket.core.wire import WireError, digest, pack
from p2pmarket.host.accountstore import AccountStore
from p2pmarket.host.forwardtable import free_ports
from p2pmarket.host.runner import AuctionRunner, RefundPayment
from p2pmarket.host.vmm.base import VMM

log = logging.getLogger(__name__)

# Verifies a payment certificate and credits the host's own chain, offline: it runs
# under the auction lock, so it must make no network call. It must be idempotent (the
# same certificate twice gives the same Payment and credits once): single use per
# account is enforced here, through the payments table.
AcceptPayment = Callable[[bytes, dict[str, Any]], Awaitable[Payment]]

MAX_SEGMENT = 2000
MAX_PAYMENT_ERROR_BYTES = 1024


def domain_prefix(identity: Identity) -> str:
    """The host-specific prefix of its domain names."""
    return f"p2pm-{identity.node_id.hex()[:12]}-"


class Auctioneer(AuctionRunner):
    """The auction host with its buyers' RPCs (:meth:`handlers`)."""

    def __init__(self, identity: Identity, settings: Settings, store: AccountStore, vmm: VMM,
                 accept_payment: AcceptPayment, clock: Callable[[], int] = now_us,
                 audit: AuditLog | None = None, refund_payment: RefundPayment | None = None,
                 long_interval_us: int = DEFAULT_LONG_INTERVAL_US) -> None:
        self.accept_payment = accept_payment
        self.access_of: Callable[[str], dict[str, Any]] | None = None
        """The way in to an account's machine, for the lease replies (the node's
        :meth:`~p2pmarket.host.access.AccessKeeper.access`)."""
        self.publish_evidence: Callable[[bytes, bytes], Coroutine[Any, Any, None]] | None \
            = None
        """Where a redemption's conflict proof goes: ``(agent node id, proof)`` (the
        node's DHT evidence sink)."""
        self._publishing: set[asyncio.Task[None]] = set()
        super().__init__(identity, settings, store, vmm, clock, audit, refund_payment,
                         long_interval_us)

    # -- RPC handlers ----------------------------------------------------------------

    def handlers(self) -> dict[str, Handler]:
        return {"create_account": self.create_account, "bid": self.bid, "fund": self.fund,
                "refund": self.refund, "status": self.status, "lease": self.lease,
                "audit_log": self.audit_log, "quote": self.quote, "redeem": self.redeem,
                "buy_anchor": self.buy_anchor}

    @staticmethod
    def request_limits() -> dict[str, int]:
        """Each RPC's request bound, for ``dispatcher.register_all("host", ...,
        limits=...)``."""
        return dict(REQUEST_LIMITS)

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

    async def redeem(self, ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        """``{tickets}`` -> ``{account_id, reservation, lease}`` (section 10); a conflict's
        proof is published at ``evidence/<agent>`` as the refusal goes back."""
        try:
            st, auth = await self._call("redeem", ctx, args)
        except HostError as exc:
            value = exc.value if isinstance(exc.value, dict) else {}
            proof, agent = value.get("proof"), value.get("agent")
            if isinstance(proof, bytes) and isinstance(agent, bytes):
                self._publish(agent, proof)
            raise
        return self._leased_reply(st, auth)

    async def buy_anchor(self, ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        """``{payment, rset, term}`` -> ``{ticket, price}``: an anchor the host signs."""
        st, auth = await self._call("buy_anchor", ctx, args, payment=True,
                                    extra={"site": self.identity.public_key})
        assert st.result is not None
        return {"ticket": self.signed_anchor(st.result["anchor"]).to_wire(),
                "price": st.result["price"], "audit": auth.to_wire()}

    async def published(self) -> None:
        """Until every conflict proof handed out so far has gone to its sink."""
        while self._publishing:
            await asyncio.gather(*self._publishing, return_exceptions=True)

    def _publish(self, agent: bytes, proof: bytes) -> None:
        """Hand a conflict proof to :attr:`publish_evidence` without waiting for it."""
        if self.publish_evidence is None:
            return
        task: asyncio.Task[None] = asyncio.create_task(
            self.publish_evidence(node_id_of(agent), proof))
        self._publishing.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self._publishing.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.warning("could not publish the conflict proof against %s: %s",
                            node_id_of(agent).hex()[:12], t.exception(),
                            extra={"event": "sharp.proof_unpublished"})
        task.add_done_callback(done)

    async def status(self, ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        check_args(args, set())
        accounts = [a for a in self.accounts() if a.holder == ctx.sender]
        result = {"accounts": [self.account_doc(a) for a in accounts]}
        head = None if accounts else self.audit.authenticator(self.audit.head[0])
        if head is not None:   # nothing to record: the head commits the host as well
            return {**result, "audit": head.to_wire()}
        auth = self.audit.append("out.status", {"digest": digest(pack(result))}, self.now())
        return {**result, "audit": auth.to_wire()}

    async def quote(self, ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        """``{bids, interval_s, nonce, amount?, contingency?}`` -> ``{quote}``: read-only
        (no await between reading the state and signing, so no lock is needed)."""
        terms = make_quote(self.state, ctx.sender, parse_quote_args(args), self.now())
        # which leased ports are free now (a buyer wanting one bids on one of them)
        return {"quote": sign_quote(self.identity, terms).to_wire(),
                "free_ports": free_ports(self.config.unique, self.winners())}

    async def audit_log(self, ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        """``{since?, limit?}`` -> the log from ``since`` for a witness."""
        check_args(args, set(), {"since", "limit"})
        since, limit = args.get("since", 0), args.get("limit", MAX_SEGMENT)
        if isinstance(since, bool) or not isinstance(since, int) or not 0 <= since <= MAX_SEQ:
            raise HostError(f"since must be an integer from 0 to {MAX_SEQ}", repr(since)[:40])
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise HostError("limit must be a non-negative integer", repr(limit)[:40])
        return audit_log_segment(self.audit, since, min(limit, MAX_SEGMENT))

    def _leased_reply(self, st: Step, auth: AuditAuthenticator) -> dict[str, Any]:
        assert st.result is not None
        aid = st.result["account_id"]
        reply = {**st.result, "lease": dict(self.journal.leases[aid]), "audit": auth.to_wire()}
        if self.access_of is not None:
            reply["access"] = self.access_of(aid)
        return reply

    async def _call(self, name: str, ctx: CallContext, args: dict[str, Any],
                    payment: bool = False, extra: dict[str, Any] | None = None
                    ) -> tuple[Step, AuditAuthenticator]:
        """Run one RPC through the pure step; log it; raise its error if it failed.
        Refused before anything is logged: a request over its bound, or whose arguments
        are malformed (see the module docstring)."""
        if ctx.request is not None:
            size, limit = len(ctx.request.encode()), request_limit(name)
            if size > limit:
                raise HostError(f"request too large for host.{name}",
                                {"size": size, "max": limit})
        try:
            logged: Any = dict(args)
            pack(logged)
        except WireError:
            logged = UNENCODABLE
        parse_args(name, logged)   # raises the very refusal the step would log
        body: dict[str, Any] = {"from": ctx.sender, "ts": ctx.ts, "args": logged,
                                **(extra or {})}
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
                try:   # a refused create_account refunds its payment: always take it
                    if name != "create_account":
                        precheck(self.state, name, ctx.sender, logged)
                except HostError:
                    pass   # the step refuses it the same way, without looking at the payment
                else:
                    try:
                        paid = await self._checked_payment(ctx, args["payment"])
                    except P2PMarketError as exc:
                        body["payment_error"] = payment_error_doc(exc)
                        self.journal.apply(f"in.{name}", body, self.now())
                        raise
                    body["payment"] = {"id": paid.payment_id, "amount": paid.amount}
                    # entries logged while we waited (status, uploads) may be later
                    now = self.now()
            st, auths = self.journal.apply(f"in.{name}", body, now)
        if st.error is not None:
            for made in st.refunds:   # a refused create's payment goes back at once
                await self._pay(made)
            if st.state.accounts is not before.accounts:
                await self.sync_vmm()
            raise st.error
        if name != "refund":
            await self.sync_vmm()
        return st, auths[-1]

    async def _checked_payment(self, ctx: CallContext, cert: dict[str, Any]) -> Payment:
        payment = await self.accept_payment(ctx.sender, cert)
        amount = payment.amount
        if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
            raise HostError("payment has no value", amount)
        return payment


def payment_error_doc(exc: P2PMarketError) -> dict[str, Any]:
    """Why a payment was refused, as logged: its error doc, in the bounded form
    (:func:`~p2pmarket.api.bounds.sealable_error`) when that is over
    :data:`MAX_PAYMENT_ERROR_BYTES` (a refused certificate's value may echo it)."""
    doc = error_doc(exc)
    return doc if len(pack(doc)) <= MAX_PAYMENT_ERROR_BYTES else sealable_error(doc)


def audit_log_segment(audit: AuditLog, since: int, limit: int,
                      max_bytes: int = SEGMENT_BYTES) -> dict[str, Any]:
    """``{since, entries: [canonical entry bytes], sigs: [signature], head: [seq, hash]}``
    from ``since``: the host's signature of ``(key, seq, SHA-256(entry))`` for each
    entry; at most ``limit`` entries and ``max_bytes`` of them, but at least one if
    there is one (:meth:`AuditLog.raw`)."""
    rows = audit.raw(since, limit, max_bytes)
    seq, h = audit.head
    return {"since": since, "entries": [r[1] for r in rows], "sigs": [r[3] for r in rows],
            "head": [seq, h if seq >= 0 else ZERO]}


__all__ = ["MAX_PAYMENT_ERROR_BYTES", "MAX_SEGMENT", "AcceptPayment", "Auctioneer",
           "audit_log_segment", "domain_prefix", "payment_error_doc"]
