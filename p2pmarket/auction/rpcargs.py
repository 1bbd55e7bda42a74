"""The buyers' RPC arguments, checked once into one frozen record per RPC (seed 5/2).

:func:`parse_args` turns the ``args`` map of an ``in.<rpc>`` input into a
:class:`CreateAccountArgs`, :class:`BidArgs`, :class:`FundArgs`, :class:`RefundArgs`
or :class:`LeaseArgs`, or raises :class:`HostError` with the message and value the
caller gets back (the first problem found, in a fixed order). Only the arguments'
shape is checked here; what depends on the host's state (whose account it is, what
is offered) is checked by the steps in :mod:`p2pmarket.auction.buyersteps`.

:func:`check_args` and the value checkers are shared with the auctioneer's
read-only RPCs.

:data:`REQUEST_LIMITS` bounds each RPC's signed request (its wire bytes, as the RPC
layer checks them, and its canonical encoding, as the auctioneer logs it): the
largest legitimate requests are a ``create_account``/``fund`` whose certificate
carries a large committee's signatures (about 13 KiB at 128 notaries) and a ``bid``
on 64 unique resources (about 6 KiB); the bound leaves a wide margin. The bound is
enforced at the RPC layer and by the auctioneer before anything is logged, not by
:func:`parse_args`: the pure steps, hence the replay of logs written before it,
are unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from p2pmarket.auction import HostError
from p2pmarket.auction.resources import PPM, BidSpec, bids_from_wire
from p2pmarket.core.clock import US_PER_S
from p2pmarket.sharp.claims import Rset, Term, Ticket, TicketError
from p2pmarket.sharp.tree import MAX_BUNDLE

MAX_INTERVAL_S = 10 * 365 * 24 * 3600
MAX_REQUEST_BYTES = 64 * 1024      # create_account, fund, bid
SMALL_REQUEST_BYTES = 4 * 1024     # the RPCs whose arguments are a few short fields
REDEEM_REQUEST_BYTES = 320 * 1024  # 16 tickets of 16 claims: about 74 KiB
REQUEST_LIMITS: dict[str, int] = {
    "create_account": MAX_REQUEST_BYTES, "fund": MAX_REQUEST_BYTES,
    "bid": MAX_REQUEST_BYTES, "refund": SMALL_REQUEST_BYTES,
    "lease": SMALL_REQUEST_BYTES, "status": SMALL_REQUEST_BYTES,
    "audit_log": SMALL_REQUEST_BYTES, "redeem": REDEEM_REQUEST_BYTES,
    "buy_anchor": MAX_REQUEST_BYTES}
# what the auctioneer logs as the arguments when msgpack cannot encode them (floats)
UNENCODABLE = "unencodable"


@dataclass(frozen=True)
class CreateAccountArgs:
    """``create_account {payment, bids, interval_s, contingency?}``."""

    payment: Mapping[str, Any]          # the payment certificate, for the host to verify
    bids: Mapping[str, BidSpec]
    interval_us: int
    contingency_ppm: int


@dataclass(frozen=True)
class BidArgs:
    """``bid {account_id, bids, interval_s?, contingency?, replace?}``: a patch."""

    account_id: str
    bids: Mapping[str, BidSpec]
    interval_us: int | None        # None: the interval is kept
    contingency_ppm: int | None    # None: the ratio is kept
    replace_all: bool              # ``replace``: the bids not listed are dropped


@dataclass(frozen=True)
class FundArgs:
    """``fund {account_id, payment}``."""

    account_id: str
    payment: Mapping[str, Any]


@dataclass(frozen=True)
class RefundArgs:
    """``refund {account_id, amount?, close?, refund_id?}``."""

    account_id: str
    amount: int | None             # micro-credits; None only when closing
    close: bool
    refund_id: str | None          # None: derived from the request


@dataclass(frozen=True)
class LeaseArgs:
    """``lease {account_id}``."""

    account_id: str


@dataclass(frozen=True)
class RedeemArgs:
    """``redeem {tickets: [ticket, ...]}``: a bundle of SHARP tickets (section 10)."""

    tickets: tuple[Ticket, ...]


@dataclass(frozen=True)
class BuyAnchorArgs:
    """``buy_anchor {payment, rset: {type, count, ident}, term: [start, end]}``."""

    payment: Mapping[str, Any]
    rset: Rset
    term: Term


RpcArgs = CreateAccountArgs | BidArgs | FundArgs | RefundArgs | LeaseArgs | RedeemArgs \
    | BuyAnchorArgs


def request_limit(name: str) -> int:
    """How long (bytes) a signed request of the host's RPC ``name`` may be."""
    return REQUEST_LIMITS.get(name, SMALL_REQUEST_BYTES)


def parse_args(name: str, args: object) -> RpcArgs:
    """The arguments of the buyer's RPC ``name`` (one of the auctioneer's RPCs)."""
    if args == UNENCODABLE:
        raise HostError("arguments must not contain floats", UNENCODABLE)
    if not isinstance(args, dict):
        raise HostError("RPC arguments must be a map", type(args).__name__)
    return PARSERS[name](args)


def parse_create(args: dict[str, Any]) -> CreateAccountArgs:
    check_args(args, {"payment", "bids", "interval_s"}, {"contingency"})
    interval_us = interval_arg(args["interval_s"])
    cr = ratio_arg(args.get("contingency", 0))
    payment = payment_arg(args["payment"])
    return CreateAccountArgs(payment, bids_from_wire(args["bids"]), interval_us, cr)


def parse_bid(args: dict[str, Any]) -> BidArgs:
    check_args(args, {"account_id", "bids"}, {"interval_s", "replace", "contingency"})
    account_id = account_id_arg(args["account_id"])
    interval_us = None if args.get("interval_s") is None else interval_arg(args["interval_s"])
    cr_arg = args.get("contingency")
    cr = None if cr_arg is None else ratio_arg(cr_arg)
    replace_all = args.get("replace", False)
    if not isinstance(replace_all, bool):
        raise HostError("replace must be true or false", repr(replace_all)[:40])
    return BidArgs(account_id, bids_from_wire(args["bids"]), interval_us, cr, replace_all)


def parse_fund(args: dict[str, Any]) -> FundArgs:
    check_args(args, {"account_id", "payment"})
    account_id = account_id_arg(args["account_id"])
    return FundArgs(account_id, payment_arg(args["payment"]))


def parse_refund(args: dict[str, Any]) -> RefundArgs:
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
    return RefundArgs(account_id, amount, close, refund_id)


def parse_lease(args: dict[str, Any]) -> LeaseArgs:
    check_args(args, {"account_id"})
    return LeaseArgs(account_id_arg(args["account_id"]))


def parse_redeem(args: dict[str, Any]) -> RedeemArgs:
    check_args(args, {"tickets"})
    tickets = args["tickets"]
    if not isinstance(tickets, list) or not 1 <= len(tickets) <= MAX_BUNDLE:
        raise HostError(f"tickets must be a list of 1..{MAX_BUNDLE} tickets", "tickets")
    try:
        return RedeemArgs(tuple(Ticket.from_wire(t) for t in tickets))
    except TicketError as exc:
        raise HostError(exc.message, exc.value) from None


def parse_buy_anchor(args: dict[str, Any]) -> BuyAnchorArgs:
    check_args(args, {"payment", "rset", "term"})
    payment = payment_arg(args["payment"])
    term = args["term"]
    try:
        if not isinstance(term, list) or len(term) != 2:
            raise TicketError("term must be [start, end] in µs", {"rule": "term"})
        return BuyAnchorArgs(payment, Rset.from_doc(args["rset"]), Term(term[0], term[1]))
    except TicketError as exc:
        raise HostError(exc.message, exc.value) from None


PARSERS: dict[str, Callable[[dict[str, Any]], RpcArgs]] = {
    "create_account": parse_create, "bid": parse_bid, "fund": parse_fund,
    "refund": parse_refund, "lease": parse_lease, "redeem": parse_redeem,
    "buy_anchor": parse_buy_anchor}


# -- checkers ----------------------------------------------------------------------

def check_args(args: dict[str, Any], required: AbstractSet[str],
               optional: AbstractSet[str] = frozenset()) -> None:
    missing = sorted(required - set(args))
    if missing:
        raise HostError(f"missing argument {missing[0]!r}", missing)
    unknown = sorted(str(k) for k in set(args) - required - optional)
    if unknown:
        raise HostError(f"unknown argument {unknown[0]!r}", unknown)


def interval_arg(value: Any) -> int:
    """``interval_s`` (whole seconds) in µs."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_INTERVAL_S:
        raise HostError(f"interval_s must be an integer from 1 to {MAX_INTERVAL_S}",
                        repr(value)[:40])
    return value * US_PER_S


def account_id_arg(value: Any) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= 64:
        raise HostError("account_id must be a short string", repr(value)[:40])
    return value


def payment_arg(value: Any) -> dict[str, Any]:
    """A payment certificate's wire form: only its being a map is checked here."""
    if not isinstance(value, dict):
        raise HostError("payment must be a certificate map", type(value).__name__)
    return value


def ratio_arg(value: Any) -> int:
    """A contingency ratio: ppm (int) or a decimal string ``"0.25"``; 0 .. 1."""
    if isinstance(value, bool):
        raise HostError("contingency must be a ratio from 0 to 1", repr(value))
    if isinstance(value, int):
        ppm = value
    elif isinstance(value, str):
        try:
            ppm = int(Decimal(value.strip()) * PPM)
        except (InvalidOperation, ValueError):
            raise HostError("contingency must be a ratio from 0 to 1", value[:40]) from None
    else:
        raise HostError("contingency must be a ratio from 0 to 1", type(value).__name__)
    if not 0 <= ppm <= PPM:
        raise HostError("contingency must be a ratio from 0 to 1", value)
    return ppm
