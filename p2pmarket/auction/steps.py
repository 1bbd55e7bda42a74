"""The auctioneer's transitions, pure: ``step(state, kind, body, ts) -> Step``.

One logged input entry in, the new state and the output entries out. The
auctioneer runs every input through here and logs the input and its outputs
in one durable append; a witness replays the same inputs through the same code
and must get the same outputs byte for byte (DESIGN.md section 5).

Inputs (``kind``: body; ``ts`` is the host's clock when it took the input):

- ``in.settings``: ``{capacities, min_prices, unique, tick_us, long_us}`` ->
  ``out.settings {allocations, state}``
- ``in.usage``: ``{usage: [[account_id, used_kib, floor_kib], ...]}`` (what the VMM
  reports about disks; it changes the disk events) -> no output
- ``in.tick``: ``{now}`` (``now`` is the entry's ``ts``) -> ``out.tick {charges,
  contingency_charges, events, prices, interval_ends, allocations, refunds, state}``
  (``allocations`` is :func:`allocations_digest`, ``state`` the
  :func:`~p2pmarket.auction.snapshot.state_digest` after the tick). A tick less than
  one tick length after the previous one is refused. A tick also forgets the
  requests taken long enough ago (:func:`p2pmarket.auction.seen.pruned`).
- ``in.<rpc>`` for ``create_account``, ``bid``, ``fund``, ``refund``, ``lease``:
  ``{from, ts, args}`` (caller key, request timestamp, arguments), plus for
  ``create_account`` and ``fund`` the verified payment ``payment: {id, amount}``
  or the reason it was refused ``payment_error: {error, error_value}`` -> zero or
  one ``out.lease`` (the lease terms, when they changed since the last lease
  handed out) then ``out.<rpc>`` (the result, or ``{error, error_value}``; for the
  ``lease`` RPC the result entry is ``out.lease_reply``). The body also carries
  ``request``: the caller's signed request envelope in its wire form ``{v, kind,
  from, to, ts, body, sig}``; :func:`check_signed` (run by the replay, not by
  :func:`step`) requires its signature to verify, its ``from``/``ts`` to be the
  body's ``from``/``ts``, ``to`` the host's node id, ``kind`` ``rpc.host.<rpc>`` and
  its ``body`` exactly ``args``: a host cannot invent a buyer's input. Every such
  input records ``(from, ts)`` in the state's request record, whatever its outcome;
  :func:`request_refusal` (run by the auctioneer before it takes a request, and by
  the replay) says whether a request repeats one already taken: a host cannot run
  a buyer's input twice either.

Account ids are derived from the payment that opens the account and refund ids
(when the buyer gives none) from the request, so nothing here is random.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from p2pmarket.auction import HostError
from p2pmarket.auction.accounts import ACTIVE, CLOSED, Account, Refund
from p2pmarket.auction.allocator import AllocationResult, run_tick
from p2pmarket.auction.hostconfig import HostConfig
from p2pmarket.auction.machine import (
    HostState,
    MissingState,
    build,
    collect_garbage,
    evaluate,
    lease_terms,
    plain_digest,
    reallocate,
    running,
    settle,
    terms,
    terms_digest,
    with_accounts,
)
from p2pmarket.auction.resources import PPM, bids_from_wire
from p2pmarket.auction.rpcargs import account_id_arg, check_args, interval_arg, ratio_arg
from p2pmarket.auction.seen import pruned, recorded, refusal
from p2pmarket.auction.snapshot import state_digest
from p2pmarket.core.errors import P2PMarketError
from p2pmarket.core.wire import Envelope, WireError, digest, pack

RPCS = ("create_account", "bid", "fund", "refund", "lease")
INPUTS = frozenset({"in.settings", "in.usage", "in.tick", *(f"in.{n}" for n in RPCS)})
GENESIS = "in.genesis"
# logged but not replayed: read-only replies and I/O reports
INFO = frozenset({"out.status", "in.upload", "out.upload", "out.refund_paid"})
UNENCODABLE = "unencodable"
REQUEST_PREFIX = "rpc.host."   # the auctioneer's RPCs are registered under "host"


def reply_kind(name: str) -> str:
    """The kind of the entry recording an RPC's result: ``out.<rpc>``, except for the
    ``lease`` RPC (``out.lease`` holds lease terms): ``out.lease_reply``."""
    return "out.lease_reply" if name == "lease" else f"out.{name}"


@dataclass(frozen=True)
class Step:
    state: HostState
    outputs: list[tuple[str, Any]]
    result: dict[str, Any] | None = None        # the out.<rpc> body on success
    error: HostError | None = None
    tick: AllocationResult | None = None
    refunds: list[Refund] = field(default_factory=list)   # new refunds to pay
    leases: list[str] = field(default_factory=list)        # account of each out.lease


def error_doc(exc: P2PMarketError) -> dict[str, Any]:
    value = exc.value
    try:
        pack(value)
    except WireError:
        value = repr(value)[:200]
    return {"error": exc.message, "error_value": value}


def step(state: HostState, kind: str, body: Any, ts: int) -> Step:
    """Apply one input. Raises only for inputs no honest host logs (a wrong shape)."""
    if kind == "in.tick":
        return tick(state, body, ts)
    if kind == "in.settings":
        return settings(state, body, ts)
    if kind == "in.usage":
        usage = {str(k): (int(u), int(f)) for k, u, f in body["usage"]}
        return Step(replace(state, usage=usage), [])
    name = kind[3:]
    if name not in RPCS or not isinstance(body, dict):
        raise HostError("not an auctioneer input", kind)
    st = _rpc(state, name, body, ts)
    sender, req_ts = body.get("from"), body.get("ts")
    if isinstance(sender, bytes) and isinstance(req_ts, int) and not isinstance(req_ts, bool):
        # taken, whatever its outcome: the host may not run it again (seen.py)
        st = replace(st, state=replace(st.state,
                                       requests=recorded(st.state.requests, sender, req_ts)))
    return st


def request_refusal(state: HostState, kind: str, body: Any, ts: int) -> str | None:
    """Why the buyer's input ``body`` of ``kind`` at ``ts`` repeats (or may repeat) a
    request already taken (None if it does not, or if ``kind`` is not a buyer's RPC).
    The auctioneer refuses such a request without logging it; in a log it is a fault."""
    if not kind.startswith("in.") or kind[3:] not in RPCS or not isinstance(body, dict):
        return None
    sender, req_ts = body.get("from"), body.get("ts")
    if not isinstance(sender, bytes) or not isinstance(req_ts, int):
        return None
    return refusal(state.requests, sender, req_ts, ts)


def check_signed(state: HostState, kind: str, body: Any, host_id: bytes | None = None
                 ) -> str | None:
    """Why the ``in.<rpc>`` input ``body`` is not a request its caller signed (None if
    it is, or if ``kind`` is not a buyer's RPC). ``host_id`` is the host's node id the
    request must be addressed to (default: the state's). Pure."""
    if not kind.startswith("in.") or kind[3:] not in RPCS:
        return None
    if not isinstance(body, dict) or body.get("request") is None:
        return "no signed request"
    try:
        env = Envelope.from_wire(body["request"])
        env.verify_signature()
    except WireError as exc:
        return f"the request is not validly signed ({exc.message})"
    if env.sender != body.get("from"):
        return "the request is signed by another key than the caller's"
    if env.ts != body.get("ts"):
        return "the request has another timestamp than the input"
    if env.to != (state.host_id if host_id is None else host_id):
        return "the request is addressed to another node"
    if env.kind != REQUEST_PREFIX + kind[3:]:
        return f"the request is {env.kind!r}, not {REQUEST_PREFIX + kind[3:]!r}"
    try:
        same = pack(body.get("args")) == pack(env.body)
    except WireError:
        same = False
    if not same:
        return "the arguments differ from the signed request"
    return None


# -- ticks and settings ------------------------------------------------------------

def tick(state: HostState, body: Any, ts: int) -> Step:
    now = body["now"]
    if not isinstance(now, int) or isinstance(now, bool) or (
            state.last_tick >= 0 and now < state.last_tick + state.tick_us):
        exc = HostError("tick too early", {"now": now, "last": state.last_tick})
        return Step(state, [("out.tick", error_doc(exc))], error=exc)
    live = state.accounts
    book = state.book or build(state, live)
    accs = [live[aid] for aid in book.ids]
    result = run_tick(book, [a.fund for a in accs], [a.contingency for a in accs],
                      [a.interval_end_us for a in accs], now, state.tick_us,
                      state.config.root_bids(state.tick_us), dict(state.usage), state.long_us)
    new = settle(live, result, charge=True)
    refunds = collect_garbage(new, now)
    after = with_accounts(replace(state, book=book, last_tick=now,
                                  requests=pruned(state.requests, now)), new
                          ).with_refunds(refunds)
    doc = tick_doc(result)
    doc["refunds"] = [[r.refund_id, r.account_id, r.amount] for r in refunds]
    doc["state"] = state_digest(after)
    return Step(after, [("out.tick", doc)], result=doc, tick=result, refunds=refunds)


def tick_doc(result: AllocationResult) -> dict[str, Any]:
    return {"charges": {k: v for k, v in result.charges.items() if v},
            "contingency_charges": dict(result.contingency_charges),
            "events": [[e.account_id, e.resource, e.kind, e.amount, e.limit]
                       for e in result.events],
            "prices": dict(result.prices), "interval_ends": dict(result.interval_ends),
            "allocations": allocations_digest(result)}


def allocations_digest(result: AllocationResult) -> bytes:
    """SHA-256 of ``[account ids, [[resource, column], ...], [[account, [[key, ids won],
    ...]], ...]]`` (msgpack; ids and resources in the book's order, unique wins sorted):
    the divisible allocations as the allocator's columns (an account's entry is 0 where
    it does not bid) and the unique identifiers won. It commits to every account's
    allocation (the book, which says who bids on what, follows from the state)."""
    book = result.book
    won = result.unique_won
    return plain_digest([list(book.ids), [[r, result.columns[r]] for r in book.resources],
                         [[aid, sorted(won[aid].items())] for aid in sorted(won)]])


def settings_body(config: HostConfig, tick_us: int, long_us: int) -> dict[str, Any]:
    return {**config.to_doc(), "tick_us": tick_us, "long_us": long_us}


def settings(state: HostState, body: Any, ts: int) -> Step:
    config = HostConfig({str(k): int(v) for k, v in body["capacities"].items()},
                        {str(k): int(v) for k, v in body["min_prices"].items()},
                        {str(k): int(v) for k, v in body["unique"].items()})
    changed = replace(state, config=config, tick_us=max(1, int(body["tick_us"])),
                      long_us=int(body["long_us"]), book=None)
    result = evaluate(changed, changed.accounts, ts)
    after = with_accounts(changed, settle(changed.accounts, result))
    after = replace(after, book=None)
    doc = {"allocations": allocations_digest(result), "state": state_digest(after)}
    return Step(after, [("out.settings", doc)], result=doc)


# -- RPCs --------------------------------------------------------------------------

@dataclass
class _Out:
    state: HostState
    result: dict[str, Any]
    leases: list[str] = field(default_factory=list)
    refunds: list[Refund] = field(default_factory=list)


def _rpc(state: HostState, name: str, body: dict[str, Any], ts: int) -> Step:
    sender = body.get("from")
    args = body.get("args")
    kind = reply_kind(name)
    try:
        if not isinstance(sender, bytes) or not isinstance(body.get("ts"), int):
            raise HostError("malformed input", name)
        if args == UNENCODABLE:
            raise HostError("arguments must not contain floats", UNENCODABLE)
        if not isinstance(args, dict):
            raise HostError("RPC arguments must be a map", type(args).__name__)
        parsed = PARSERS[name](state, sender, args)
        out = APPLIERS[name](state, parsed, body, ts)
    except MissingState:
        raise
    except _Kept as kept:   # an error that still changed the state (money kept)
        return _finish(state, kind, kept.out, ts, kept.error)
    except HostError as exc:
        return Step(state, [(kind, error_doc(exc))], error=exc)
    return _finish(state, kind, out, ts, None)


class _Kept(HostError):
    def __init__(self, out: _Out, error: HostError) -> None:
        super().__init__(error.message, error.value)
        self.out, self.error = out, error


def _finish(before: HostState, kind: str, out: _Out, ts: int, error: HostError | None
            ) -> Step:
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
            state = replace(state, leased={**state.leased, aid: d})
            outputs.append(("out.lease", body))
            leases.append(aid)
    outputs.append((kind, error_doc(error) if error is not None else out.result))
    return Step(state, outputs, None if error else out.result, error, refunds=out.refunds,
                leases=leases)


def own(state: HostState, sender: bytes, account_id: str,
        message: str = "no such account of yours") -> Account:
    account = state.accounts.get(account_id)
    if account is None or account.holder != sender:
        # same answer for "absent" and "not yours": do not reveal other buyers' ids
        raise HostError(message, account_id)
    return account


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


def account_id_for(payment_id: bytes) -> str:
    """The account a payment opens: derived from the payment, not random."""
    return digest(b"account" + payment_id)[:8].hex()


# create_account ------------------------------------------------------------------

def parse_create(state: HostState, sender: bytes, args: dict[str, Any]) -> Any:
    check_args(args, {"payment", "bids", "interval_s"}, {"contingency"})
    interval_us = interval_arg(args["interval_s"])
    cr = ratio_arg(args.get("contingency", 0))
    if not isinstance(args["payment"], dict):
        raise HostError("payment must be a certificate map", type(args["payment"]).__name__)
    return interval_us, cr, terms(state, bids_from_wire(args["bids"]), {})


def apply_create(state: HostState, parsed: Any, body: dict[str, Any], now: int) -> _Out:
    interval_us, cr, bid_terms = parsed
    sender: bytes = body["from"]
    payment_id, amount = _payment(body)
    funded = state.payment_account(payment_id)
    if funded is not None:  # a retry (e.g. after our crash): answer it again
        own(state, sender, funded, "payment already used for another account")
        return _Out(state, {"account_id": funded}, [funded])
    aid = account_id_for(payment_id)
    if aid in state.accounts:
        raise HostError("account id collision; pay again", aid)
    cont = amount * cr // PPM
    account = Account(account_id=aid, holder=sender, fund=amount - cont, contingency=cont,
                      contingency_ppm=cr, interval_end_us=now + interval_us, created_us=now,
                      bids=bid_terms)
    paid = state.with_payment(payment_id, aid, amount)
    try:
        new = reallocate(paid, account, now, was_running=False)
    except HostError as exc:
        # the money is ours now: keep it in a bid-less account for the buyer
        account = replace(account, bids={})
        kept = with_accounts(paid, reallocate(paid, account, now, was_running=False))
        err = HostError(f"{exc.message}; the payment is kept in account {aid}, which has "
                        "no bids", {"account_id": aid, "cause": exc.value})
        raise _Kept(_Out(kept, {}), err) from None
    return _Out(with_accounts(paid, new), {"account_id": aid}, [aid])


# bid ------------------------------------------------------------------------------

def parse_bid(state: HostState, sender: bytes, args: dict[str, Any]) -> Any:
    check_args(args, {"account_id", "bids"}, {"interval_s", "replace", "contingency"})
    account_id = account_id_arg(args["account_id"])
    interval_us = None if args.get("interval_s") is None else interval_arg(args["interval_s"])
    cr_arg = args.get("contingency")
    cr = None if cr_arg is None else ratio_arg(cr_arg)
    replace_all = args.get("replace", False)
    if not isinstance(replace_all, bool):
        raise HostError("replace must be true or false", repr(replace_all)[:40])
    specs = bids_from_wire(args["bids"])
    account = own(state, sender, account_id)
    new_terms = terms(state, specs, {} if replace_all else dict(account.bids))
    if not replace_all:
        new_terms = {**account.bids, **new_terms}
    return account, interval_us, cr, new_terms


def apply_bid(state: HostState, parsed: Any, body: dict[str, Any], now: int) -> _Out:
    account, interval_us, cr, new_terms = parsed
    aid = account.account_id
    end = account.interval_end_us if interval_us is None else now + interval_us
    ratio = account.contingency_ppm if cr is None else cr
    st = ACTIVE if interval_us is not None else account.state
    if (new_terms == dict(account.bids) and end == account.interval_end_us
            and ratio == account.contingency_ppm and st == account.state):
        # identical bid (1/17): nothing changes, contingency included
        return _Out(state, {"account_id": aid}, [aid])
    total = account.money
    cont = total * ratio // PPM   # recomputed on every bid change (1/17)
    changed = replace(account, bids=new_terms, interval_end_us=end, contingency_ppm=ratio,
                      fund=total - cont, contingency=cont, state=st)
    new = reallocate(state, changed, now, was_running=running(state, account))
    return _Out(with_accounts(state, new), {"account_id": aid}, [aid])


# fund -----------------------------------------------------------------------------

def parse_fund(state: HostState, sender: bytes, args: dict[str, Any]) -> Any:
    check_args(args, {"account_id", "payment"})
    account_id = account_id_arg(args["account_id"])
    if not isinstance(args["payment"], dict):
        raise HostError("payment must be a certificate map", type(args["payment"]).__name__)
    return own(state, sender, account_id)


def apply_fund(state: HostState, parsed: Any, body: dict[str, Any], now: int) -> _Out:
    account: Account = parsed
    aid = account.account_id
    payment_id, amount = _payment(body)
    funded = state.payment_account(payment_id)
    if funded == aid:  # a retry: the money is already in
        return _Out(state, {"account_id": aid, "amount": amount, "balance": account.money},
                    [aid])
    if funded is not None:
        raise HostError("payment already used for another account", "used")
    cont = amount * account.contingency_ppm // PPM
    richer = replace(account, fund=account.fund + amount - cont,
                     contingency=account.contingency + cont)
    # more money never lowers the funder's share: nothing here can refuse it
    accounts = {**state.accounts, aid: richer}
    paid = state.with_payment(payment_id, aid, amount)
    after = with_accounts(paid, settle(accounts, evaluate(paid, accounts, now)))
    return _Out(after, {"account_id": aid, "amount": amount,
                        "balance": after.accounts[aid].money}, [aid])


# refund ---------------------------------------------------------------------------

def parse_refund(state: HostState, sender: bytes, args: dict[str, Any]) -> Any:
    check_args(args, {"account_id"}, {"amount", "close", "refund_id"})
    account_id = account_id_arg(args["account_id"])
    close = args.get("close", False)
    if not isinstance(close, bool):
        raise HostError("close must be true or false", repr(close)[:40])
    refund_id = args.get("refund_id")
    if not isinstance(refund_id, str) or not 0 < len(refund_id) <= 64 or not all(
            c.isalnum() or c in "-_" for c in refund_id):
        if refund_id:
            raise HostError("refund_id must be a short string of letters, digits, - or _",
                            repr(refund_id)[:40])
        refund_id = None
    amount = args.get("amount")
    if amount is not None and (isinstance(amount, bool) or not isinstance(amount, int)
                               or amount <= 0):
        raise HostError("amount must be a positive integer (micro-credits)",
                        repr(amount)[:40])
    if amount is None and not close:
        raise HostError("give an amount, or close the account", "amount")
    return account_id, close, refund_id, amount


def apply_refund(state: HostState, parsed: Any, body: dict[str, Any], now: int) -> _Out:
    account_id, close, refund_id, amount = parsed
    sender: bytes = body["from"]
    if refund_id is None:
        refund_id = digest(pack(["refund", sender, body["ts"], account_id]))[:8].hex()
    old = state.refund(refund_id)
    refund: Refund | None
    if old is not None:
        if old.account_id != account_id or old.holder != sender:
            raise HostError("refund_id already used", refund_id)
        refund, after = old, state
    else:
        account = own(state, sender, account_id)
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
            accounts = {**state.accounts, account_id: poorer}
            new = settle(accounts, evaluate(state, accounts, now))
        else:
            new = reallocate(state, poorer, now, was_running=running(state, account))
        refund = None if take == 0 else Refund(
            refund_id, account_id, account.holder, take,
            f"p2pmarket refund {refund_id} of account {account_id}", created_us=now)
        after = with_accounts(state, new).with_refunds([] if refund is None else [refund])
    acc = after.accounts.get(account_id)
    result = {"account_id": account_id,
              "refund": None if refund is None else {
                  "refund_id": refund.refund_id, "account_id": refund.account_id,
                  "amount": refund.amount, "memo": refund.memo},
              "balance": 0 if acc is None else acc.money,
              "state": CLOSED if acc is None else acc.state}
    return _Out(after, result, refunds=[] if refund is None or old is not None else [refund])


# lease ----------------------------------------------------------------------------

def parse_lease(state: HostState, sender: bytes, args: dict[str, Any]) -> Any:
    check_args(args, {"account_id"})
    return own(state, sender, account_id_arg(args["account_id"]))


def apply_lease(state: HostState, parsed: Any, body: dict[str, Any], now: int) -> _Out:
    aid = parsed.account_id
    return _Out(state, {"account_id": aid}, [aid])


Parser = Callable[[HostState, bytes, dict[str, Any]], Any]
Applier = Callable[[HostState, Any, dict[str, Any], int], _Out]
PARSERS: dict[str, Parser] = {"create_account": parse_create, "bid": parse_bid,
                              "fund": parse_fund, "refund": parse_refund,
                              "lease": parse_lease}
APPLIERS: dict[str, Applier] = {"create_account": apply_create, "bid": apply_bid,
                                "fund": apply_fund, "refund": apply_refund,
                                "lease": apply_lease}


def precheck(state: HostState, name: str, sender: bytes, args: Any) -> None:
    """The checks an RPC passes before the host looks at its payment (raises
    :class:`HostError`)."""
    if not isinstance(args, dict):
        raise HostError("RPC arguments must be a map", type(args).__name__)
    PARSERS[name](state, sender, args)


__all__ = ["GENESIS", "INFO", "INPUTS", "REQUEST_PREFIX", "RPCS", "Step", "account_id_for",
           "allocations_digest", "check_signed", "error_doc", "precheck", "reply_kind",
           "request_refusal", "settings_body", "step", "tick_doc"]
