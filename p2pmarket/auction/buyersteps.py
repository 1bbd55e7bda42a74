"""The buyers' inputs, pure: the steps of ``create_account``, ``bid``, ``fund``,
``refund`` and ``lease``.

An ``in.<rpc>`` body is ``{from, ts, args}`` plus, for ``create_account`` and
``fund``, the payment the host verified (``payment: {id, amount}``) or why it refused
it (``payment_error: {error, error_value}``). :func:`rpc_step` reads who called and
when (:class:`Call`), parses ``args`` once (:func:`p2pmarket.auction.rpcargs.parse_args`),
checks what depends on the state (the caller's account, what the host offers), then
changes the state. Its outputs are zero or one ``out.lease`` per account whose lease
terms changed since the last lease handed out, then the result entry
(:func:`reply_kind`): the result, or ``{error, error_value}``.

Account ids are derived from the payment that opens the account and refund ids
(when the buyer gives none) from the request, so nothing here is random.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, assert_never

from p2pmarket.auction import HostError
from p2pmarket.auction.accounts import ACTIVE, CLOSED, Account, Refund, refund_memo
from p2pmarket.auction.allocation import (
    applied,
    book_of,
    keeps_running,
    lease_terms,
    owning,
    refusal,
    resolved,
    running,
    terms,
    terms_digest,
    with_accounts,
)
from p2pmarket.auction.livebook import Refused
from p2pmarket.auction.machine import HostState, MissingState
from p2pmarket.auction.model import AllocEvent
from p2pmarket.auction.outcome import Step, error_doc
from p2pmarket.auction.reserve import anchor_price, buy_anchor, redeem
from p2pmarket.auction.resources import PPM, BidTerm
from p2pmarket.auction.rpcargs import (
    BidArgs,
    BuyAnchorArgs,
    CreateAccountArgs,
    FundArgs,
    LeaseArgs,
    RedeemArgs,
    RefundArgs,
    RpcArgs,
    parse_args,
)
from p2pmarket.core.wire import digest, pack


def reply_kind(name: str) -> str:
    """The kind of the entry recording an RPC's result: ``out.<rpc>``, except for the
    ``lease`` RPC (``out.lease`` holds lease terms): ``out.lease_reply``."""
    return "out.lease_reply" if name == "lease" else f"out.{name}"


@dataclass(frozen=True)
class Call:
    """Who made a buyer's RPC and when, and what the host made of its payment."""

    sender: bytes
    ts: int
    payment: tuple[bytes, int] | Exception   # (payment id, amount), or why there is none

    def paid(self) -> tuple[bytes, int]:
        """The payment credited for this call (raises why there is none)."""
        if isinstance(self.payment, Exception):
            raise self.payment
        return self.payment


def call_of(name: str, body: dict[str, Any]) -> Call:
    sender, ts = body.get("from"), body.get("ts")
    if not isinstance(sender, bytes) or not isinstance(ts, int):
        raise HostError("malformed input", name)
    try:
        payment: tuple[bytes, int] | Exception = _payment(body)
    except (HostError, AttributeError) as exc:   # raised where the payment is used
        payment = exc
    return Call(sender, ts, payment)


def _payment(body: dict[str, Any]) -> tuple[bytes, int]:
    if "payment_error" in body:
        err = body["payment_error"]
        raise HostError(str(err.get("error")), err.get("error_value"))
    pay = body.get("payment")
    if not isinstance(pay, dict) or not isinstance(pay.get("id"), bytes) or not isinstance(
            pay.get("amount"), int) or isinstance(pay["amount"], bool) or pay["amount"] <= 0:
        raise HostError("payment has no value", None if not isinstance(pay, dict)
                        else pay.get("amount"))
    return pay["id"], pay["amount"]


@dataclass
class _Out:
    state: HostState
    result: dict[str, Any]
    leases: list[str] = field(default_factory=list)
    refunds: list[Refund] = field(default_factory=list)
    events: list[AllocEvent] = field(default_factory=list)   # what the allocator did


class _Kept(HostError):
    """A refusal that still changed the state (a create whose payment is refunded)."""

    def __init__(self, out: _Out, error: HostError) -> None:
        super().__init__(error.message, error.value)
        self.out, self.error = out, error


def rpc_step(state: HostState, name: str, body: dict[str, Any], ts: int) -> Step:
    """One buyer's input ``in.<name>`` taken at ``ts``."""
    kind = reply_kind(name)
    try:
        call = call_of(name, body)
        out = _apply(state, parse_args(name, body.get("args")), call, ts, body.get("site"))
    except MissingState:
        raise
    except _Kept as kept:
        return _finish(kept.out, kind, kept.error)
    except HostError as exc:
        return Step(state, [(kind, error_doc(exc))], error=exc)
    return _finish(out, kind, None)


def _apply(state: HostState, args: RpcArgs, call: Call, now: int, site: Any) -> _Out:
    match args:
        case CreateAccountArgs():
            return create_account(state, args, call, now)
        case BidArgs():
            return bid(state, args, call, now)
        case FundArgs():
            return fund(state, args, call, now)
        case RefundArgs():
            return refund(state, args, call, now)
        case LeaseArgs():
            return lease(state, args, call)
        case RedeemArgs():
            after, result, events = redeem(state, args, call.sender, now)
            return _Out(after, result, [result["account_id"]], events=events)
        case BuyAnchorArgs():
            try:
                after, result = buy_anchor(state, args, call.sender, call.paid(), site, now)
            except HostError as exc:   # after a verified payment: all of it goes back
                raise _refund_refused(state, call, exc, now) from None
            return _Out(after, result)
        case _:
            assert_never(args)


def precheck(state: HostState, name: str, sender: bytes, args: Any) -> None:
    """The checks an RPC passes before the host looks at its payment (raises
    :class:`HostError`)."""
    parsed = parse_args(name, args)
    match parsed:
        case CreateAccountArgs():
            terms(state, parsed.bids, {})
        case BidArgs():
            _bid_terms(state, sender, parsed)
        case FundArgs() | LeaseArgs():
            own(state, sender, parsed.account_id)
        case RefundArgs() | RedeemArgs():
            pass
        case BuyAnchorArgs():
            anchor_price(state, parsed.rset, parsed.term)
        case _:
            assert_never(parsed)


def _finish(out: _Out, kind: str, error: HostError | None) -> Step:
    """The outputs: an ``out.lease`` for each account whose lease terms changed, then
    the result (or the error)."""
    state = out.state
    outputs: list[tuple[str, Any]] = []
    leases: list[str] = []
    for aid in out.leases:
        account = state.accounts.get(aid)
        if account is None:
            continue
        body = lease_terms(state, account).body()
        d = terms_digest(body)
        if state.leased.get(aid) != d:
            state = with_accounts(state, {}, {aid: d})
            outputs.append(("out.lease", body))
            leases.append(aid)
    outputs.append((kind, error_doc(error) if error is not None else out.result))
    return Step(state, outputs, None if error else out.result, error, refunds=out.refunds,
                leases=leases, events=tuple(out.events))


def own(state: HostState, sender: bytes, account_id: str,
        message: str = "no such account of yours") -> Account:
    account = state.accounts.get(account_id)
    if account is None or account.holder != sender:
        # same answer for "absent" and "not yours": do not reveal other buyers' ids
        raise HostError(message, account_id)
    return account


def account_id_for(payment_id: bytes) -> str:
    """The account a payment opens: derived from the payment, not random."""
    return digest(b"account" + payment_id)[:8].hex()


# -- the RPCs ----------------------------------------------------------------------

def refund_id_for(payment_id: bytes) -> str:
    """The refund that pays back a payment whose ``create_account`` was refused."""
    return digest(b"refused" + payment_id)[:8].hex()


def _refund_refused(state: HostState, call: Call, error: HostError, now: int) -> HostError:
    """A ``create_account`` refused after its payment was verified: the whole payment
    goes back to the payer at once (a :class:`Refund` of an account that is never
    opened, paid like any refund), so no money sits in an account without bids. The
    error names the refund; a retry of the same payment changes nothing more."""
    if isinstance(call.payment, Exception):
        return error   # no payment: nothing to give back
    payment_id, amount = call.payment
    aid, rid = account_id_for(payment_id), refund_id_for(payment_id)
    refused = HostError(f"{error.message}; the payment ({amount} µcredits) is refunded "
                        f"(refund {rid})", {"refund_id": rid, "amount": amount,
                                            "cause": error.value})
    if state.payment_account(payment_id) is not None:
        return refused if state.refund(rid) is not None else error
    made = Refund(rid, aid, call.sender, amount, refund_memo(rid, aid), created_us=now)
    after = state.with_payment(payment_id, aid, amount).with_refunds([made])
    return _Kept(_Out(after, {}, refunds=[made]), refused)


def create_account(state: HostState, args: CreateAccountArgs, call: Call, now: int) -> _Out:
    try:
        bid_terms = terms(state, args.bids, {})
    except HostError as exc:
        raise _refund_refused(state, call, exc, now) from None
    payment_id, amount = call.paid()
    funded = state.payment_account(payment_id)
    if funded is not None:  # a retry (e.g. after our crash): answer it again
        if funded not in state.accounts and state.refund(refund_id_for(payment_id)):
            raise HostError("payment already refunded", refund_id_for(payment_id))
        own(state, call.sender, funded, "payment already used for another account")
        return _Out(state, {"account_id": funded}, [funded])
    aid = account_id_for(payment_id)
    if aid in state.accounts:
        raise HostError("account id collision; pay again", aid)
    cont = amount * args.contingency_ppm // PPM
    account = Account(account_id=aid, holder=call.sender, fund=amount - cont, contingency=cont,
                      contingency_ppm=args.contingency_ppm,
                      interval_end_us=now + args.interval_us, created_us=now, bids=bid_terms,
                      since=state.ticks)
    paid = state.with_payment(payment_id, aid, amount)
    book = book_of(paid)
    try:
        events = book.put(aid, account.fund, cont, account.interval_end_us,
                          resolved(paid, account), now)
    except Refused as exc:   # its bids would be dropped: the money goes back
        raise _refund_refused(state, call, refusal(state, exc), now) from None
    after = with_accounts(owning(paid, book), applied(paid, book, events, {aid: account}))
    return _Out(after, {"account_id": aid}, [aid], events=events)


def _bid_terms(state: HostState, sender: bytes, args: BidArgs
               ) -> tuple[Account, dict[str, BidTerm]]:
    """The caller's account and its bids after this patch."""
    account = own(state, sender, args.account_id)
    new_terms = terms(state, args.bids, {} if args.replace_all else dict(account.bids))
    if not args.replace_all:
        new_terms = {**account.bids, **new_terms}
    return account, new_terms


def bid(state: HostState, args: BidArgs, call: Call, now: int) -> _Out:
    account, new_terms = _bid_terms(state, call.sender, args)
    aid = account.account_id
    end = account.interval_end_us if args.interval_us is None else now + args.interval_us
    ratio = account.contingency_ppm if args.contingency_ppm is None else args.contingency_ppm
    st = ACTIVE if args.interval_us is not None else account.state
    if (new_terms == dict(account.bids) and end == account.interval_end_us
            and ratio == account.contingency_ppm and st == account.state):
        # identical bid (1/17): nothing changes, contingency included
        return _Out(state, {"account_id": aid}, [aid])
    book = book_of(state)
    was_running = running(state, account)
    total = sum(book.money(aid))
    cont = total * ratio // PPM   # recomputed on every bid change (1/17)
    changed = replace(account, bids=new_terms, interval_end_us=end, contingency_ppm=ratio,
                      state=st)
    bids = resolved(state, changed)
    try:
        if was_running:   # a dry run first: its VM must keep cpu and memory (6/27)
            book.put(aid, total - cont, cont, end, bids, now, dry=True)
            keeps_running(state, changed, book.dry_allocation)
        events = book.put(aid, total - cont, cont, end, bids, now)
    except Refused as exc:
        raise refusal(state, exc) from None
    after = with_accounts(owning(state, book), applied(state, book, events, {aid: changed}))
    return _Out(after, {"account_id": aid}, [aid], events=events)


def fund(state: HostState, args: FundArgs, call: Call, now: int) -> _Out:
    account = own(state, call.sender, args.account_id)
    aid = account.account_id
    payment_id, amount = call.paid()
    funded = state.payment_account(payment_id)
    if funded == aid:  # a retry: the money is already in
        return _Out(state, {"account_id": aid, "amount": amount, "balance": account.money},
                    [aid])
    if funded is not None:
        raise HostError("payment already used for another account", "used")
    cont = amount * account.contingency_ppm // PPM
    paid = state.with_payment(payment_id, aid, amount)
    book = book_of(paid)
    try:   # more money never lowers the funder's share: this is never refused
        events = book.add_money(aid, amount - cont, cont, now)
    except Refused as exc:
        raise refusal(state, exc) from None
    after = with_accounts(owning(paid, book), applied(paid, book, events))
    return _Out(after, {"account_id": aid, "amount": amount,
                        "balance": sum(book.money(aid))}, [aid], events=events)


def refund(state: HostState, args: RefundArgs, call: Call, now: int) -> _Out:
    account_id = args.account_id
    refund_id = args.refund_id
    if refund_id is None:
        refund_id = digest(pack(["refund", call.sender, call.ts, account_id]))[:8].hex()
    old = state.refund(refund_id)
    made: Refund | None
    if old is not None:
        if old.account_id != account_id or old.holder != call.sender:
            raise HostError("refund_id already used", refund_id)
        made, after = old, state
    else:
        made, after = _take_refund(state, args, call.sender, refund_id, now)
    acc = after.accounts.get(account_id)
    book = book_of(after)
    result = {"account_id": account_id,
              "refund": None if made is None else {
                  "refund_id": made.refund_id, "account_id": made.account_id,
                  "amount": made.amount, "memo": made.memo},
              "balance": 0 if acc is None else sum(book.money(account_id)),
              "state": CLOSED if acc is None else acc.state}
    return _Out(after, result, refunds=[] if made is None or old is not None else [made])


def _take_refund(state: HostState, args: RefundArgs, sender: bytes, refund_id: str,
                 now: int) -> tuple[Refund | None, HostState]:
    """A new refund out of the caller's account (from the fund first, then the
    contingency fund), and the state after it."""
    account_id = args.account_id
    account = own(state, sender, account_id)
    book = book_of(state)
    fund, cont = book.money(account_id)
    total = fund + cont
    take = total if args.close else int(args.amount or 0)
    if take > total:
        raise HostError("refund is larger than the account's money",
                        {"amount": take, "balance": total})
    if args.close:
        book.remove(account_id)
        updates: dict[str, Account | None] = {account_id: None}
        updates.update(applied(state, book, ()))
    elif take == 0:
        updates = {}
    else:
        was_running = running(state, account)
        from_fund = min(take, fund)
        try:
            if was_running:   # a dry run first: its VM must keep cpu and memory (6/27)
                book.add_money(account_id, -from_fund, -(take - from_fund), now, dry=True)
                keeps_running(state, account, book.dry_allocation)
            events = book.add_money(account_id, -from_fund, -(take - from_fund), now)
        except Refused as exc:
            raise refusal(state, exc) from None
        updates = applied(state, book, events)
    made = None if take == 0 else Refund(
        refund_id, account_id, account.holder, take,
        refund_memo(refund_id, account_id), created_us=now)
    return made, with_accounts(owning(state, book), updates).with_refunds(
        [] if made is None else [made])


def lease(state: HostState, args: LeaseArgs, call: Call) -> _Out:
    aid = own(state, call.sender, args.account_id).account_id
    return _Out(state, {"account_id": aid}, [aid])


__all__ = ["Call", "account_id_for", "bid", "call_of", "create_account", "fund", "lease",
           "own", "precheck", "refund", "refund_id_for", "reply_kind", "rpc_step"]
